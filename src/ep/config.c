/*
 * The EP buffer's configuration: defaults and validation. Every bad field
 * is reported by name with the accepted range, before anything is
 * allocated.
 */
#include "ep/ep.h"

#define HIDDEN_MAX 32768
#define TOKENS_MAX 65535 /* row indices are packed in 16 bits */

void vmep_ep_config_init(vmep_ep_config *config) {
  if (!config)
    return;
  config->num_experts = 0;
  config->hidden = 0;
  config->max_tokens_per_rank = 0;
  config->max_topk = 8;
  config->device = -1;
  config->num_sms = 0;
  config->timeout_ms = 0;
  config->zero_copy = 0;
  config->max_ranks = 0;
}

int vmep__ep_ranks(const vmep_ep_config *c, int group_size) {
  return c->max_ranks > group_size ? c->max_ranks : group_size;
}

static vmep_status bad_field(const char *field, long long value,
                             const char *expected) {
  return vmep__fail(VMEP_ERR_INVALID_ARG, VMEP_LOG_ERROR,
                    "vmep_ep_config: %s = %lld, expected %s", field, value,
                    expected);
}

vmep_status vmep__ep_config_check(const vmep_ep_config *c, int group_size) {
  if (!c)
    return vmep__fail(VMEP_ERR_INVALID_ARG, VMEP_LOG_ERROR,
                      "vmep_ep_config is NULL");
  if (c->max_ranks < 0 || c->max_ranks > VMEP_LL_MAX_RANKS)
    return bad_field("max_ranks", c->max_ranks,
                     "0 (the group's size) or "
                     "1..1024");
  int num_ranks = vmep__ep_ranks(c, group_size);
  if (num_ranks < 1 || num_ranks > VMEP_LL_MAX_RANKS)
    return bad_field("number of ranks", num_ranks, "1..1024");
  if (c->num_experts < num_ranks || c->num_experts % num_ranks != 0)
    return vmep__fail(VMEP_ERR_INVALID_ARG, VMEP_LOG_ERROR,
                      "vmep_ep_config: num_experts = %d, expected a positive "
                      "multiple of the %d ranks",
                      c->num_experts, num_ranks);
  if (c->num_experts / num_ranks > 32767)
    return bad_field("num_experts", c->num_experts,
                     "at most 32767 local experts per rank");
  if (c->hidden < VMEP_LL_FP8_GROUP || c->hidden > HIDDEN_MAX ||
      c->hidden % VMEP_LL_FP8_GROUP != 0)
    return bad_field("hidden", c->hidden, "a multiple of 128 in 128..32768");
  if (c->max_tokens_per_rank < 1 || c->max_tokens_per_rank > TOKENS_MAX)
    return bad_field("max_tokens_per_rank", c->max_tokens_per_rank, "1..65535");
  if ((long long)c->num_experts * c->max_tokens_per_rank > 0x7fffffffLL)
    return vmep__fail(VMEP_ERR_INVALID_ARG, VMEP_LOG_ERROR,
                      "vmep_ep_config: num_experts * max_tokens_per_rank = "
                      "%lld, expected < 2^31 (rows are 32-bit indices)",
                      (long long)c->num_experts * c->max_tokens_per_rank);
  if (c->max_topk < 1 || c->max_topk > VMEP_LL_MAX_TOPK)
    return bad_field("max_topk", c->max_topk, "1..16");
  if (c->device < -1)
    return bad_field("device", c->device, "-1 (automatic) or a device");
  if (c->num_sms < 0 || c->num_sms > 1024)
    return bad_field("num_sms", c->num_sms, "0 (default) or 1..1024");
  if (c->timeout_ms < 0)
    return bad_field("timeout_ms", c->timeout_ms, "0 (default) or > 0");
  if (c->zero_copy != 0 && c->zero_copy != 1)
    return bad_field("zero_copy", c->zero_copy, "0 or 1");
  return VMEP_OK;
}
