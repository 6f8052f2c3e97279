/*
 * Helpers of the EP buffer tests on the fake driver: the small buffer
 * shape they share (4 experts, hidden 256, 8 tokens, top-2), which keeps
 * the fake's allocations and the fault loops short.
 */
#ifndef VMEP_TEST_EP_UTIL_H
#define VMEP_TEST_EP_UTIL_H

#include "vmep.h"

/* The small shape, with room for `max_ranks` ranks (0: the group's). */
static inline vmep_ep_config test_small_ep_config(int max_ranks) {
  vmep_ep_config c;
  vmep_ep_config_init(&c);
  c.num_experts = 4;
  c.hidden = 256;
  c.max_tokens_per_rank = 8;
  c.max_topk = 2;
  c.max_ranks = max_ranks;
  return c;
}

#endif /* VMEP_TEST_EP_UTIL_H */
