/*
 * The descriptor's wire form as the tests know it, written from the spec
 * in src/mem/desc.c's header rather than from its code, so that a change
 * made on both sides of serialize/parse (an offset, the byte order, the
 * checksum) still fails the tests. Shared by test_desc and test_desc_fuzz.
 */
#ifndef VMEP_TEST_DESC_WIRE_H
#define VMEP_TEST_DESC_WIRE_H

#include "test.h"

#define WIRE_HEADER 34
#define WIRE_CHECKSUM 4
/* The largest size desc.c accepts: 1 PiB. */
#define WIRE_MAX_SIZE ((uint64_t)1 << 50)

static inline void wire_put(unsigned char *p, uint64_t v, int bytes) {
  for (int i = 0; i < bytes; i++)
    p[i] = (unsigned char)(v >> (8 * i));
}

/* FNV-1a over p[0..n). */
static inline uint32_t wire_fnv1a(const unsigned char *p, size_t n) {
  uint32_t h = 2166136261u;
  for (size_t i = 0; i < n; i++)
    h = (h ^ p[i]) * 16777619u;
  return h;
}

/* Handle bytes a strategy carries on the wire. */
static inline int wire_handle_bytes(vmep_mem_strategy s) {
  return s == VMEP_MEM_POSIX_FD ? 0 : VMEP_MEM_HANDLE_BYTES;
}

/* (Re)writes the checksum of an encoding of `len` bytes. */
static inline void wire_seal(unsigned char *p, size_t len) {
  wire_put(p + len - WIRE_CHECKSUM, wire_fnv1a(p, len - WIRE_CHECKSUM), 4);
}

/* Encodes `d` (fd excluded) into p; returns the length. */
static inline size_t wire_encode(const vmep_mem_desc *d, unsigned char *p) {
  int hbytes = wire_handle_bytes(d->strategy);
  size_t len = WIRE_HEADER + (size_t)hbytes + WIRE_CHECKSUM;
  memcpy(p, "VMDS", 4);
  wire_put(p + 4, d->version, 2);
  wire_put(p + 6, (uint64_t)d->strategy, 2);
  wire_put(p + 8, d->size, 8);
  memcpy(p + 16, d->device_uuid, 16);
  wire_put(p + 32, (uint64_t)hbytes, 2);
  memcpy(p + WIRE_HEADER, d->handle, (size_t)hbytes);
  wire_seal(p, len);
  return len;
}

/* A valid descriptor of strategy `s` with random content (and fd). */
static inline vmep_mem_desc wire_random_desc(vmep_mem_strategy s) {
  vmep_mem_desc d;
  memset(&d, 0, sizeof(d));
  d.version = VMEP_MEM_DESC_VERSION;
  d.strategy = s;
  /* Sizes of every magnitude, never 0, up to the bound. */
  d.size = 1 + (test_rand() >> (14 + test_rand() % 50));
  for (int i = 0; i < 16; i++)
    d.device_uuid[i] = (unsigned char)test_rand();
  if (s != VMEP_MEM_POSIX_FD)
    for (int i = 0; i < VMEP_MEM_HANDLE_BYTES; i++)
      d.handle[i] = (unsigned char)test_rand();
  d.fd = (int)(test_rand() % 1024);
  return d;
}

/* Whether parse's result `got` is `sent` as it travels (no fd; a POSIX_FD
 * descriptor carries no handle bytes). */
static inline int wire_same(const vmep_mem_desc *sent,
                            const vmep_mem_desc *got) {
  static const unsigned char zero[VMEP_MEM_HANDLE_BYTES];
  const unsigned char *handle =
      sent->strategy == VMEP_MEM_POSIX_FD ? zero : sent->handle;
  return got->version == sent->version && got->strategy == sent->strategy &&
         got->size == sent->size && got->fd == -1 &&
         memcmp(got->device_uuid, sent->device_uuid, 16) == 0 &&
         memcmp(got->handle, handle, VMEP_MEM_HANDLE_BYTES) == 0;
}

#endif /* VMEP_TEST_DESC_WIRE_H */
