/*
 * The wire form of the engine's address and remote-key blobs. A
 * transport's own bytes (UCX's worker address, its packed rkey) travel
 * inside vmep's header, so that a truncated, foreign or corrupted blob is
 * refused with a message before the transport parses it:
 *   magic "VMNB" | version u16 | kind u16 | rank u32 | payload length u32 |
 *   base u64 | length u64 | payload | FNV-1a of everything before it u64
 * all little-endian (core/bytes.h). Each FNV-1a step is a bijection of its
 * state, so any one changed byte changes the checksum.
 */
#include <string.h>

#include "net/net.h"

#define BLOB_MAGIC 0x424e4d56u /* "VMNB" read little-endian */
#define BLOB_VERSION 1u
#define BLOB_HEADER 32u
#define BLOB_TRAILER 8u
/* Far above any transport's address or key (UCX's are a few hundred
 * bytes), far below what a length field could claim. */
#define BLOB_MAX_PAYLOAD (1u << 20)

size_t vmep__blob_size(size_t payload_len) {
  return BLOB_HEADER + payload_len + BLOB_TRAILER;
}

void vmep__blob_write(const struct vmep_blob *b, unsigned char *out) {
  vmep__le_put(out, BLOB_MAGIC, 4);
  vmep__le_put(out + 4, BLOB_VERSION, 2);
  vmep__le_put(out + 6, (uint64_t)b->kind, 2);
  vmep__le_put(out + 8, (uint64_t)(uint32_t)b->rank, 4);
  vmep__le_put(out + 12, b->payload_len, 4);
  vmep__le_put(out + 16, b->base, 8);
  vmep__le_put(out + 24, b->length, 8);
  if (b->payload_len)
    memcpy(out + BLOB_HEADER, b->payload, b->payload_len);
  size_t end = BLOB_HEADER + b->payload_len;
  vmep__le_put(out + end, vmep__bytes_hash(out, end), 8);
}

vmep_status vmep__blob_parse(const void *bytes, size_t len,
                             enum vmep_blob_kind kind, const char *what,
                             struct vmep_blob *b_out) {
  const unsigned char *p = (const unsigned char *)bytes;
  if (!p)
    return vmep__fail(VMEP_ERR_INVALID_ARG, VMEP_LOG_ERROR, "%s: blob is NULL",
                      what);
  if (len < BLOB_HEADER + BLOB_TRAILER)
    return vmep__fail(VMEP_ERR_INVALID_ARG, VMEP_LOG_ERROR,
                      "%s: blob of %zu bytes is shorter than its header and "
                      "checksum (%u)",
                      what, len, BLOB_HEADER + BLOB_TRAILER);
  if (vmep__le_get(p, 4) != BLOB_MAGIC)
    return vmep__fail(VMEP_ERR_INVALID_ARG, VMEP_LOG_ERROR,
                      "%s: not an engine blob (bad magic)", what);
  uint64_t version = vmep__le_get(p + 4, 2);
  if (version != BLOB_VERSION)
    return vmep__fail(VMEP_ERR_INVALID_ARG, VMEP_LOG_ERROR,
                      "%s: blob version %llu, this vmep reads %u", what,
                      (unsigned long long)version, BLOB_VERSION);
  uint64_t got_kind = vmep__le_get(p + 6, 2);
  if (got_kind != (uint64_t)kind)
    return vmep__fail(VMEP_ERR_INVALID_ARG, VMEP_LOG_ERROR,
                      "%s: blob of kind %llu where kind %d (%s) was expected",
                      what, (unsigned long long)got_kind, (int)kind,
                      kind == VMEP_BLOB_ADDRESS ? "address" : "remote key");
  uint64_t rank = vmep__le_get(p + 8, 4);
  uint64_t payload_len = vmep__le_get(p + 12, 4);
  if (rank > INT32_MAX)
    return vmep__fail(VMEP_ERR_INVALID_ARG, VMEP_LOG_ERROR,
                      "%s: blob names rank %llu", what,
                      (unsigned long long)rank);
  size_t came = len - BLOB_HEADER - BLOB_TRAILER;
  if (payload_len == 0 || payload_len > BLOB_MAX_PAYLOAD || payload_len != came)
    return vmep__fail(VMEP_ERR_INVALID_ARG, VMEP_LOG_ERROR,
                      "%s: blob says %llu payload bytes, %zu came", what,
                      (unsigned long long)payload_len, came);
  if (vmep__le_get(p + len - BLOB_TRAILER, 8) !=
      vmep__bytes_hash(p, len - BLOB_TRAILER))
    return vmep__fail(VMEP_ERR_INVALID_ARG, VMEP_LOG_ERROR,
                      "%s: blob does not match its checksum (corrupted?)",
                      what);
  uint64_t base = vmep__le_get(p + 16, 8);
  uint64_t length = vmep__le_get(p + 24, 8);
  if (kind == VMEP_BLOB_RKEY && (length == 0 || base + length < base))
    return vmep__fail(VMEP_ERR_INVALID_ARG, VMEP_LOG_ERROR,
                      "%s: blob's range (0x%llx, %llu bytes) is not valid",
                      what, (unsigned long long)base,
                      (unsigned long long)length);
  b_out->kind = kind;
  b_out->rank = (int)rank;
  b_out->base = base;
  b_out->length = length;
  b_out->payload = p + BLOB_HEADER;
  b_out->payload_len = (size_t)payload_len;
  return VMEP_OK;
}
