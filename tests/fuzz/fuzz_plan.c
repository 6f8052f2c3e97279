/*
 * libFuzzer target: the elastic plan parser (tests/elastic/plan.c) on
 * arbitrary bytes. It must parse or refuse with a message, never read
 * outside the input or crash; an accepted plan obeys the plan rules.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "plan.h"

static struct plan plan;

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  char error[256];
  if (plan_parse((const char *)data, size, &plan, error, sizeof(error)) != 0) {
    if (strncmp(error, "plan, byte ", 11) != 0)
      abort();
    return 0;
  }
  if (plan.nphases < 1 || plan.nphases > PLAN_MAX_PHASES)
    abort();
  for (int p = 0; p < plan.nphases; p++) {
    const struct plan_phase *ph = &plan.phases[p];
    if (ph->n - (ph->victim >= 0) < 2)
      abort();
    for (int i = 0; i < ph->n; i++)
      if (ph->ranks[i] < 0 || ph->ranks[i] >= plan.max_ranks ||
          (i > 0 && ph->ranks[i] <= ph->ranks[i - 1]))
        abort();
  }
  return 0;
}
