/*
 * The engine's blob wire form (src/net/blob.c) without any transport:
 * random blobs round-trip; every one-byte change, every truncation and
 * extension, the wrong kind and random garbage are refused with
 * VMEP_ERR_INVALID_ARG and a message naming the caller.
 */
#include "net/net.h"
#include "test.h"

#define TRIALS 2000

static size_t make_blob(unsigned char *out, struct vmep_blob *b,
                        unsigned char *payload) {
  b->kind = test_rand() % 2 ? VMEP_BLOB_ADDRESS : VMEP_BLOB_RKEY;
  b->rank = (int)(test_rand() % 4096);
  b->payload_len = 1 + test_rand() % 600;
  b->base = test_rand() >> 1;
  b->length = 1 + test_rand() % (1ull << 40);
  for (size_t i = 0; i < b->payload_len; i++)
    payload[i] = (unsigned char)test_rand();
  b->payload = payload;
  vmep__blob_write(b, out);
  return vmep__blob_size(b->payload_len);
}

static void round_trip(void) {
  unsigned char payload[600], blob[1024];
  for (int t = 0; t < TRIALS; t++) {
    struct vmep_blob b, got;
    size_t len = make_blob(blob, &b, payload);
    ASSERT_OK(vmep__blob_parse(blob, len, b.kind, "trial", &got));
    ASSERT_EQ(got.rank, b.rank);
    ASSERT_EQ(got.base, b.base);
    ASSERT_EQ(got.length, b.length);
    ASSERT_EQ(got.payload_len, b.payload_len);
    ASSERT_EQ(memcmp(got.payload, payload, b.payload_len), 0);
    enum vmep_blob_kind other =
        b.kind == VMEP_BLOB_ADDRESS ? VMEP_BLOB_RKEY : VMEP_BLOB_ADDRESS;
    ASSERT_STATUS(vmep__blob_parse(blob, len, other, "kind", &got),
                  VMEP_ERR_INVALID_ARG);
    ASSERT_STR_CONTAINS(vmep_last_error(), "kind");
  }
}

static void one_byte_changes(void) {
  unsigned char payload[600], blob[1024];
  for (int t = 0; t < TRIALS; t++) {
    struct vmep_blob b, got;
    size_t len = make_blob(blob, &b, payload);
    size_t at = test_rand() % len;
    blob[at] ^= (unsigned char)(1 + test_rand() % 255);
    vmep_status st = vmep__blob_parse(blob, len, b.kind, "mutated", &got);
    if (st != VMEP_ERR_INVALID_ARG)
      TEST_FAIL("byte %zu of %zu changed: %s", at, len, vmep_status_name(st));
    ASSERT_STR_CONTAINS(vmep_last_error(), "mutated: ");
  }
}

static void wrong_lengths(void) {
  unsigned char payload[600], blob[1024];
  for (int t = 0; t < TRIALS / 4; t++) {
    struct vmep_blob b, got;
    size_t len = make_blob(blob, &b, payload);
    size_t cut = test_rand() % len;
    ASSERT_STATUS(vmep__blob_parse(blob, cut, b.kind, "cut", &got),
                  VMEP_ERR_INVALID_ARG);
    size_t longer = len + 1 + test_rand() % (sizeof(blob) - len);
    ASSERT_STATUS(vmep__blob_parse(blob, longer, b.kind, "long", &got),
                  VMEP_ERR_INVALID_ARG);
  }
}

static void garbage(void) {
  unsigned char blob[1024];
  for (int t = 0; t < TRIALS; t++) {
    size_t len = test_rand() % sizeof(blob);
    for (size_t i = 0; i < len; i++)
      blob[i] = (unsigned char)test_rand();
    /* Sometimes a right magic and version, so the later checks run. */
    if (len >= 8 && t % 2) {
      vmep__le_put(blob, 0x424e4d56u, 4);
      vmep__le_put(blob + 4, 1, 2);
      vmep__le_put(blob + 6, VMEP_BLOB_RKEY, 2);
    }
    struct vmep_blob got;
    ASSERT_STATUS(vmep__blob_parse(blob, len, VMEP_BLOB_RKEY, "garbage", &got),
                  VMEP_ERR_INVALID_ARG);
  }
  struct vmep_blob got;
  ASSERT_STATUS(vmep__blob_parse(NULL, 64, VMEP_BLOB_RKEY, "null", &got),
                VMEP_ERR_INVALID_ARG);
  ASSERT_STR_CONTAINS(vmep_last_error(), "NULL");
}

int main(void) {
  test_seed("test_net_blob");
  round_trip();
  one_byte_changes();
  wrong_lengths();
  garbage();
  printf("test_net_blob: ok\n");
  return 0;
}
