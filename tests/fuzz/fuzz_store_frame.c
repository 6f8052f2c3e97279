/*
 * libFuzzer target of the store's frame parsers, the code that faces raw
 * socket bytes. Byte 0 of the input picks the parser (request, or reply to
 * command byte0 % VMEP_STORE_CMD_END); the rest is the frame. A parse that
 * succeeds must stay inside the input, and its entry lists must walk to
 * their end; a FORGET names a rank >= 0 and answers a 0/1 flag; a HELLO
 * avoids at most VMEP_STORE_AVOID_MAX store instances. Built by
 * -DVMEP_FUZZ=ON with clang; run by tests/fuzz/run.sh, which starts from
 * the seeds in tests/fuzz/seeds (one valid frame of each kind).
 */
#include <stdlib.h>
#include <string.h>

#include "boot/boot.h"
#include "store/store.h"

/* Reads every byte of a range, so ASan sees any that lies outside. */
static unsigned touch(struct vmep_store_bytes b, const uint8_t *start,
                      size_t size) {
  unsigned sum = 0;
  if (b.len && (b.data < start || b.data + b.len > start + size))
    abort();
  for (size_t i = 0; i < b.len; i++)
    sum += b.data[i];
  return sum;
}

static unsigned walk(struct vmep_store_bytes list, uint32_t count,
                     const uint8_t *start, size_t size) {
  struct vmep_store_bytes entry;
  unsigned sum = 0;
  for (uint32_t i = 0; i < count; i++) {
    if (!vmep__store_entry_next(&list, &entry))
      abort(); /* the parser promised `count` entries */
    sum += touch(entry, start, size);
  }
  if (list.len != 0)
    abort();
  return sum;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  const char *error = NULL;
  volatile unsigned sink = 0;
  if (size == 0)
    return 0;
  const uint8_t *frame = data + 1;
  size_t len = size - 1;
  if (data[0] < 128) {
    struct vmep_store_request q;
    long n = vmep__store_request_parse(frame, len, &q, &error);
    if (n < -1 || n > (long)len || (n == -1 && !error))
      abort();
    if (n > 0 && q.cmd == VMEP_STORE_FORGET && q.rank < 0)
      abort();
    if (n > 0 && q.navoid > VMEP_STORE_AVOID_MAX)
      abort();
    for (uint32_t i = 0; n > 0 && i < q.navoid; i++)
      sink += (unsigned)q.avoid[i];
    if (n > 0)
      sink += touch(q.token, frame, len) + touch(q.key, frame, len) +
              touch(q.value, frame, len) + touch(q.expected, frame, len) +
              walk(q.keys, q.nkeys, frame, len);
  } else {
    struct vmep_store_reply a;
    unsigned cmd = data[0] % VMEP_STORE_CMD_END;
    long n = vmep__store_reply_parse(frame, len, cmd, &a, &error);
    if (n < -1 || n > (long)len || (n == -1 && !error))
      abort();
    if (n > 0 && cmd == VMEP_STORE_FORGET && a.answer == VMEP_STORE_OK &&
        a.number != 0 && a.number != 1)
      abort();
    if (n > 0) {
      sink += touch(a.message, frame, len);
      if (cmd == VMEP_STORE_GET && a.answer == VMEP_STORE_OK)
        sink += walk(a.values, a.count, frame, len);
    }
  }
  (void)sink;
  return 0;
}
