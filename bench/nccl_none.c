/*
 * vmep-bench built without NCCL (nccl.h or libnccl not found when
 * configuring): --compare nccl is refused up front, with this reason.
 */
#include "bench.h"

int bench_nccl_built(void) { return 0; }

vmep_status bench_nccl_run_tokens(vmep_group *g, const struct bench_options *o,
                                  int tokens, struct bench_result *res) {
  (void)g;
  (void)o;
  (void)tokens;
  (void)res;
  return VMEP_ERR_UNSUPPORTED;
}
