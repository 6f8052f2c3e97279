/*
 * Fuzzing vmep_mem_desc_parse, which reads bytes from peers and stores:
 * random bytes of random length (half of them behind a valid prefix, to
 * get past the first checks), every truncation and every single-bit flip
 * of random valid encodings, and random valid descriptors. Truncations and
 * flips must all be refused (FNV-1a catches any one-bit change); any other
 * input may only be accepted if it is the exact encoding of what parse
 * returned. At least 100,000 cases; a few seconds under ASan and UBSan.
 */
#include "desc_wire.h"
#include "fake_driver.h"

#define MIN_CASES 100000

static long cases, accepted;

/* parse must refuse p[0..len), say why, and leave its output alone. */
static void must_refuse(const unsigned char *p, size_t len, const char *what,
                        size_t where) {
  vmep_mem_desc got, untouched;
  memset(&got, 0xa5, sizeof(got));
  untouched = got;
  cases++;
  vmep_status st = vmep_mem_desc_parse(p, len, &got);
  if (st != VMEP_ERR_INVALID_ARG)
    TEST_FAIL("%s at %zu (%zu B): parse returned %s", what, where, len,
              vmep_status_name(st));
  if (vmep_last_error()[0] == '\0' ||
      memcmp(&got, &untouched, sizeof(got)) != 0)
    TEST_FAIL("%s at %zu (%zu B): no message, or output touched", what, where,
              len);
}

/* parse may refuse anything; what it accepts must re-encode to p. */
static void refuse_or_canonical(const unsigned char *p, size_t len) {
  vmep_mem_desc got;
  unsigned char again[VMEP_MEM_DESC_MAX_BYTES];
  size_t again_len = 0;
  cases++;
  if (vmep_mem_desc_parse(p, len, &got) != VMEP_OK)
    return;
  accepted++;
  ASSERT_OK(vmep_mem_desc_serialize(&got, again, sizeof(again), &again_len));
  if (again_len != len || memcmp(again, p, len) != 0)
    TEST_FAIL("accepted %zu B that are not the encoding of their result", len);
}

static void fuzz_valid(vmep_mem_strategy s) {
  unsigned char p[VMEP_MEM_DESC_MAX_BYTES], bad[VMEP_MEM_DESC_MAX_BYTES];
  vmep_mem_desc d = wire_random_desc(s), got;
  size_t len = wire_encode(&d, p), out_len = 0;
  ASSERT_OK(vmep_mem_desc_serialize(&d, bad, sizeof(bad), &out_len));
  ASSERT_TRUE(out_len == len && memcmp(bad, p, len) == 0);
  ASSERT_OK(vmep_mem_desc_parse(p, len, &got));
  ASSERT_TRUE(wire_same(&d, &got));
  cases++;
  for (size_t cut = 0; cut < len; cut++)
    must_refuse(p, cut, "truncation", cut);
  for (size_t bit = 0; bit < 8 * len; bit++) {
    memcpy(bad, p, len);
    bad[bit / 8] ^= (unsigned char)(1u << (bit % 8));
    must_refuse(bad, len, "bit flip", bit);
  }
}

static void fuzz_random(void) {
  unsigned char p[VMEP_MEM_DESC_MAX_BYTES + 32];
  size_t len = test_rand() % sizeof(p);
  for (size_t i = 0; i < len; i++)
    p[i] = (unsigned char)test_rand();
  if ((test_rand() & 1) && len >= 34) {
    vmep_mem_strategy s = (vmep_mem_strategy)(1 + test_rand() % 3);
    memcpy(p, "VMDS", 4);
    wire_put(p + 4, VMEP_MEM_DESC_VERSION, 2);
    wire_put(p + 6, (uint64_t)s, 2);
    wire_put(p + 32, (uint64_t)wire_handle_bytes(s), 2);
  }
  refuse_or_canonical(p, len);
}

int main(void) {
  test_seed("test_desc_fuzz");
  fake_quiet_stderr(1); /* each refusal is logged as an error */
  int valid = 0;
  while (cases < MIN_CASES || valid < 30) {
    fuzz_valid((vmep_mem_strategy)(1 + valid % 3));
    valid++;
    for (int i = 0; i < 400; i++)
      fuzz_random();
  }
  fake_quiet_stderr(0);
  printf("test_desc_fuzz: %ld cases (%d valid descriptors with every "
         "truncation and bit flip; %ld random inputs accepted)\n",
         cases, valid, accepted);
  return 0;
}
