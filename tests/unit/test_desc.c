/*
 * Descriptors: serialize / parse round trips for each strategy with random
 * content (the bytes match the wire spec, the fd never travels), and each
 * way a descriptor can be invalid, on either side, refused with
 * VMEP_ERR_INVALID_ARG and a message that says what is wrong, leaving the
 * output untouched.
 */
#include "desc_wire.h"

static void test_round_trip(void) {
  for (int i = 0; i < 300; i++) {
    vmep_mem_strategy s = (vmep_mem_strategy)(1 + i % 3);
    vmep_mem_desc d = wire_random_desc(s), got;
    unsigned char buf[VMEP_MEM_DESC_MAX_BYTES + 8],
        spec[VMEP_MEM_DESC_MAX_BYTES];
    size_t len = 0, spec_len = wire_encode(&d, spec);
    memset(buf, 0xee, sizeof(buf));
    /* Exactly the space it needs. */
    ASSERT_OK(vmep_mem_desc_serialize(&d, buf, spec_len, &len));
    ASSERT_EQ(len, spec_len);
    ASSERT_EQ(len, s == VMEP_MEM_POSIX_FD ? 38 : 102);
    ASSERT_TRUE(len <= VMEP_MEM_DESC_MAX_BYTES);
    ASSERT_TRUE(memcmp(buf, spec, len) == 0);
    for (size_t b = len; b < sizeof(buf); b++)
      ASSERT_EQ(buf[b], 0xee);
    memset(&got, 0x33, sizeof(got));
    ASSERT_OK(vmep_mem_desc_parse(buf, len, &got));
    if (!wire_same(&d, &got))
      TEST_FAIL("%s descriptor %d does not round-trip",
                vmep_mem_strategy_name(s), i);
  }
}

/* serialize(desc) must fail with a message containing `what`. */
static void serialize_fails(const vmep_mem_desc *d, size_t capacity,
                            const char *what) {
  unsigned char buf[VMEP_MEM_DESC_MAX_BYTES];
  size_t len = 12345;
  ASSERT_STATUS(vmep_mem_desc_serialize(d, buf, capacity, &len),
                VMEP_ERR_INVALID_ARG);
  ASSERT_STR_CONTAINS(vmep_last_error(), what);
  ASSERT_EQ(len, 12345);
}

static void test_serialize_refuses(void) {
  for (int s = VMEP_MEM_FABRIC; s < VMEP_MEM_STRATEGY_COUNT; s++) {
    vmep_mem_desc d = wire_random_desc((vmep_mem_strategy)s), bad;
    size_t need =
        WIRE_HEADER + (size_t)wire_handle_bytes(d.strategy) + WIRE_CHECKSUM;
    serialize_fails(&d, need - 1 - test_rand() % 10, "needs");
    bad = d;
    bad.version = VMEP_MEM_DESC_VERSION + 1 + (uint32_t)(test_rand() % 9);
    serialize_fails(&bad, VMEP_MEM_DESC_MAX_BYTES, "not a valid descriptor");
    bad = d;
    bad.size = 0;
    serialize_fails(&bad, VMEP_MEM_DESC_MAX_BYTES, "not a valid descriptor");
    bad = d;
    bad.strategy = (test_rand() & 1)
                       ? VMEP_MEM_NONE
                       : (vmep_mem_strategy)(4 + test_rand() % 99);
    serialize_fails(&bad, VMEP_MEM_DESC_MAX_BYTES, "not a valid descriptor");
    unsigned char buf[VMEP_MEM_DESC_MAX_BYTES];
    size_t len = 0;
    ASSERT_STATUS(vmep_mem_desc_serialize(NULL, buf, sizeof(buf), &len),
                  VMEP_ERR_INVALID_ARG);
    ASSERT_STR_CONTAINS(vmep_last_error(), "desc is NULL");
    ASSERT_STATUS(vmep_mem_desc_serialize(&d, NULL, sizeof(buf), &len),
                  VMEP_ERR_INVALID_ARG);
    ASSERT_STR_CONTAINS(vmep_last_error(), "buf is NULL");
    ASSERT_STATUS(vmep_mem_desc_serialize(&d, buf, sizeof(buf), NULL),
                  VMEP_ERR_INVALID_ARG);
    ASSERT_STR_CONTAINS(vmep_last_error(), "len_out is NULL");
  }
}

/* parse(p[0..len)) must fail with a message containing `what`. */
static void parse_fails(const unsigned char *p, size_t len, const char *what) {
  vmep_mem_desc got, untouched;
  memset(&got, 0x6b, sizeof(got));
  untouched = got;
  ASSERT_STATUS(vmep_mem_desc_parse(p, len, &got), VMEP_ERR_INVALID_ARG);
  ASSERT_STR_CONTAINS(vmep_last_error(), what);
  ASSERT_TRUE(memcmp(&got, &untouched, sizeof(got)) == 0);
}

/* A valid encoding of strategy `s` with random content in p; the cases
 * below then change one thing and reseal the checksum (but for the
 * checksum case). */
static size_t valid(vmep_mem_strategy s, unsigned char *p) {
  vmep_mem_desc d = wire_random_desc(s);
  return wire_encode(&d, p);
}

static void test_parse_refuses(void) {
  unsigned char p[VMEP_MEM_DESC_MAX_BYTES + 16];
  for (int s = VMEP_MEM_FABRIC; s < VMEP_MEM_STRATEGY_COUNT; s++) {
    vmep_mem_strategy st = (vmep_mem_strategy)s;
    size_t len = valid(st, p);
    vmep_mem_desc got;
    parse_fails(NULL, len, "buf is NULL");
    ASSERT_STATUS(vmep_mem_desc_parse(p, len, NULL), VMEP_ERR_INVALID_ARG);
    ASSERT_STR_CONTAINS(vmep_last_error(), "desc_out is NULL");
    parse_fails(p, test_rand() % (WIRE_HEADER + WIRE_CHECKSUM), "truncated");

    len = valid(st, p);
    p[test_rand() % 4] ^= (unsigned char)(1 + test_rand() % 255);
    wire_seal(p, len);
    parse_fails(p, len, "bad magic");

    len = valid(st, p);
    wire_put(p + 4, (test_rand() & 1) ? 0 : 2 + test_rand() % 1000, 2);
    wire_seal(p, len);
    parse_fails(p, len, "version");

    len = valid(st, p);
    wire_put(p + 6, (test_rand() & 1) ? 0 : 4 + test_rand() % 60000, 2);
    wire_seal(p, len);
    parse_fails(p, len, "unknown strategy");

    len = valid(st, p);
    wire_put(p + 32, st == VMEP_MEM_POSIX_FD ? 64 : test_rand() % 64, 2);
    wire_seal(p, len);
    parse_fails(p, len, "handle length does not match");

    len = valid(st, p); /* one byte more or fewer than the strategy has */
    size_t wrong =
        (st == VMEP_MEM_POSIX_FD || (test_rand() & 1)) ? len + 1 : len - 1;
    wire_seal(p, wrong);
    parse_fails(p, wrong, vmep_mem_strategy_name(st));
    ASSERT_STR_CONTAINS(vmep_last_error(), "descriptor has");

    len = valid(st, p); /* a bit of the size, UUID, handle or checksum */
    size_t at = 8 + test_rand() % (len - 10);
    p[at < 32 ? at : at + 2] ^= (unsigned char)(1u << (test_rand() % 8));
    parse_fails(p, len, "checksum mismatch");

    len = valid(st, p);
    uint64_t sizes[] = {0, WIRE_MAX_SIZE + 1 + test_rand() % 1000, UINT64_MAX};
    for (size_t i = 0; i < sizeof(sizes) / sizeof(sizes[0]); i++) {
      wire_put(p + 8, sizes[i], 8);
      wire_seal(p, len);
      parse_fails(p, len, "implausible size");
    }
    wire_put(p + 8, WIRE_MAX_SIZE, 8);
    wire_seal(p, len);
    ASSERT_OK(vmep_mem_desc_parse(p, len, &got));
    ASSERT_EQ(got.size, WIRE_MAX_SIZE);
  }
}

int main(void) {
  test_seed("test_desc");
  test_round_trip();
  test_serialize_refuses();
  test_parse_refuses();
  printf("test_desc: ok\n");
  return 0;
}
