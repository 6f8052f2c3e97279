/*
 * A group that a buffer still uses is not destroyed: vmep__group_hold /
 * vmep__group_release count its users from many threads at once (seeded
 * random counts per thread), vmep_group_destroy refuses with
 * VMEP_ERR_BUSY naming the exact count while any hold is outstanding and
 * leaves the group usable, and succeeds once every hold is released. A
 * release without a hold is ignored rather than driving the count below 0.
 */
#include <pthread.h>
#include <stdio.h>
#include <string.h>

#include "boot/boot.h"
#include "test.h"

#define THREADS 4
#define ROUNDS 20000

struct worker {
  vmep_group *g;
  int keep; /* holds left outstanding at the end */
};

/* Holds and releases ROUNDS times in a burst, then keeps `keep` holds. */
static void *worker_main(void *arg) {
  struct worker *w = arg;
  for (int i = 0; i < ROUNDS; i++) {
    vmep__group_hold(w->g);
    if (i % 3 == 2) {
      vmep__group_hold(w->g);
      vmep__group_release(w->g);
    }
    vmep__group_release(w->g);
  }
  for (int i = 0; i < w->keep; i++)
    vmep__group_hold(w->g);
  return NULL;
}

static void expect_busy(vmep_group *g, int holders) {
  char needle[64];
  ASSERT_STATUS(vmep_group_destroy(g), VMEP_ERR_BUSY);
  snprintf(needle, sizeof(needle), "vmep_group_destroy: %d holder(s)", holders);
  ASSERT_STR_CONTAINS(vmep_last_error(), needle);
  /* Still a working group. */
  int byte = 5, all = 0;
  ASSERT_OK(vmep_group_allgather(g, &byte, sizeof(byte), &all));
  ASSERT_EQ(all, 5);
}

static void test_threads(void) {
  vmep_group *g = NULL;
  pthread_t threads[THREADS];
  struct worker w[THREADS];
  int total = 0;
  ASSERT_OK(vmep_group_create_custom(0, 1, NULL, NULL, NULL, &g));
  for (int t = 0; t < THREADS; t++) {
    w[t] = (struct worker){g, 1 + (int)(test_rand() % 50)};
    total += w[t].keep;
    ASSERT_EQ(pthread_create(&threads[t], NULL, worker_main, &w[t]), 0);
  }
  for (int t = 0; t < THREADS; t++)
    ASSERT_EQ(pthread_join(threads[t], NULL), 0);
  printf("%d holds outstanding after %d threads x %d rounds\n", total, THREADS,
         ROUNDS);
  expect_busy(g, total);
  for (int i = 0; i < total - 1; i++)
    vmep__group_release(g);
  expect_busy(g, 1);
  vmep__group_release(g);
  ASSERT_OK(vmep_group_destroy(g));
}

static void test_unbalanced_release(void) {
  vmep_group *g = NULL;
  ASSERT_OK(vmep_group_create_custom(0, 1, NULL, NULL, NULL, &g));
  vmep__group_release(g); /* no hold: ignored, count stays 0 */
  vmep__group_hold(g);
  expect_busy(g, 1);
  vmep__group_release(g);
  ASSERT_OK(vmep_group_destroy(g));
}

int main(void) {
  test_seed("test_group_busy");
  test_threads();
  test_unbalanced_release();
  printf("test_group_busy: ok\n");
  return 0;
}
