/*
 * The test harness shared by every vmep test: assertions that print both
 * values and where, a seeded random source whose seed is printed (and can
 * be replayed with VMEP_TEST_SEED), and the skip convention (exit 77, which
 * CTest reports as skipped).
 */
#ifndef VMEP_TEST_H
#define VMEP_TEST_H

#include <inttypes.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "vmep.h"

#define VMEP_TEST_SKIP_CODE 77

#define TEST_FAIL(...)                                                         \
  do {                                                                         \
    fprintf(stderr, "%s:%d: FAIL: ", __FILE__, __LINE__);                      \
    fprintf(stderr, __VA_ARGS__);                                              \
    fprintf(stderr, "\n");                                                     \
    exit(1);                                                                   \
  } while (0)

#define TEST_SKIP(...)                                                         \
  do {                                                                         \
    printf("SKIP: ");                                                          \
    printf(__VA_ARGS__);                                                       \
    printf("\n");                                                              \
    exit(VMEP_TEST_SKIP_CODE);                                                 \
  } while (0)

#define ASSERT_TRUE(cond)                                                      \
  do {                                                                         \
    if (!(cond))                                                               \
      TEST_FAIL("expected %s", #cond);                                         \
  } while (0)

#define ASSERT_EQ(a, b)                                                        \
  do {                                                                         \
    long long va_ = (long long)(a), vb_ = (long long)(b);                      \
    if (va_ != vb_)                                                            \
      TEST_FAIL("%s == %s: %lld != %lld", #a, #b, va_, vb_);                   \
  } while (0)

#define ASSERT_NE(a, b)                                                        \
  do {                                                                         \
    long long va_ = (long long)(a), vb_ = (long long)(b);                      \
    if (va_ == vb_)                                                            \
      TEST_FAIL("%s != %s: both %lld", #a, #b, va_);                           \
  } while (0)

#define ASSERT_STR_EQ(a, b)                                                    \
  do {                                                                         \
    const char *sa_ = (a), *sb_ = (b);                                         \
    if (!sa_ || !sb_ || strcmp(sa_, sb_) != 0)                                 \
      TEST_FAIL("%s == %s: \"%s\" != \"%s\"", #a, #b, sa_ ? sa_ : "(null)",    \
                sb_ ? sb_ : "(null)");                                         \
  } while (0)

#define ASSERT_STR_CONTAINS(haystack, needle)                                  \
  do {                                                                         \
    const char *h_ = (haystack), *n_ = (needle);                               \
    if (!h_ || !strstr(h_, n_))                                                \
      TEST_FAIL("\"%s\" does not contain \"%s\"", h_ ? h_ : "(null)", n_);     \
  } while (0)

/* A vmep call that must succeed; prints the status and last error if not. */
#define ASSERT_OK(call)                                                        \
  do {                                                                         \
    vmep_status st_ = (call);                                                  \
    if (st_ != VMEP_OK)                                                        \
      TEST_FAIL("%s: %s (%s)", #call, vmep_status_name(st_),                   \
                vmep_last_error());                                            \
  } while (0)

/* A vmep call that must fail with `expected`. */
#define ASSERT_STATUS(call, expected)                                          \
  do {                                                                         \
    vmep_status st_ = (call);                                                  \
    if (st_ != (expected))                                                     \
      TEST_FAIL("%s: %s, expected %s (%s)", #call, vmep_status_name(st_),      \
                vmep_status_name(expected), vmep_last_error());                \
  } while (0)

/* xorshift64*: small, fast, and the same on every machine. */
static uint64_t test_rng_state;

static inline uint64_t test_rand(void) {
  test_rng_state ^= test_rng_state >> 12;
  test_rng_state ^= test_rng_state << 25;
  test_rng_state ^= test_rng_state >> 27;
  return test_rng_state * 2685821657736338717ull;
}

/* Seeds from VMEP_TEST_SEED or the clock, prints the seed, returns it. */
static inline uint64_t test_seed(const char *test_name) {
  const char *env = getenv("VMEP_TEST_SEED");
  uint64_t seed = env ? strtoull(env, NULL, 0)
                      : (uint64_t)time(NULL) ^ ((uint64_t)clock() << 32);
  if (seed == 0)
    seed = 1;
  test_rng_state = seed;
  printf("%s: seed %" PRIu64 " (replay with VMEP_TEST_SEED=%" PRIu64 ")\n",
         test_name, seed, seed);
  fflush(stdout);
  return seed;
}

#endif /* VMEP_TEST_H */
