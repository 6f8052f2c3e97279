/*
 * Byte helpers shared by every layer that writes bytes for another
 * process (store frames, member records, memory descriptors, fd-passing
 * messages): little-endian integers of 1 to 8 bytes, whatever the host's
 * order, and a 64-bit FNV-1a hash for stable names. One set, inline, so
 * that no layer keeps its own twin.
 */
#ifndef VMEP_CORE_BYTES_H
#define VMEP_CORE_BYTES_H

#include <stddef.h>
#include <stdint.h>

/* Writes the low `bytes` (1..8) bytes of v at p, least significant first. */
static inline void vmep__le_put(unsigned char *p, uint64_t v, size_t bytes) {
  for (size_t i = 0; i < bytes; i++)
    p[i] = (unsigned char)(v >> (8 * i));
}

/* Reads a `bytes`-byte (1..8) little-endian unsigned integer at p. */
static inline uint64_t vmep__le_get(const unsigned char *p, size_t bytes) {
  uint64_t v = 0;
  for (size_t i = 0; i < bytes; i++)
    v |= (uint64_t)p[i] << (8 * i);
  return v;
}

/* 64-bit FNV-1a of bytes[0..len): stable names and hash buckets, the same
 * in every process. */
static inline uint64_t vmep__bytes_hash(const void *bytes, size_t len) {
  const unsigned char *p = (const unsigned char *)bytes;
  uint64_t h = 14695981039346656037ull;
  for (size_t i = 0; i < len; i++)
    h = (h ^ p[i]) * 1099511628211ull;
  return h;
}

#endif /* VMEP_CORE_BYTES_H */
