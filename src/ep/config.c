/*
 * The EP buffer's configuration: defaults and validation. Every bad field
 * is reported by name with the accepted range, before anything is
 * allocated. Also the rule of the public structs that grow (struct_size,
 * vmep.h): one reader serves the config and the dispatch / combine args.
 */
#include <stddef.h>
#include <string.h>

#include "ep/ep.h"

#define HIDDEN_MAX 32768
#define TOKENS_MAX 65535 /* row indices are packed in 16 bits */

/* The end of the last field of 0.3.0, the first layout with struct_size:
 * the smallest struct_size accepted. */
#define CONFIG_SIZE_MIN (offsetof(vmep_ep_config, max_ranks) + sizeof(int))

void vmep_ep_config_init(vmep_ep_config *config) {
  if (!config)
    return;
  memset(config, 0, sizeof(*config));
  config->struct_size = sizeof(*config);
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

vmep_status vmep__ep_struct_read(const char *call, const char *type,
                                 const void *in, size_t min_size,
                                 size_t full_size, void *out) {
  size_t size = 0;
  if (!in)
    return vmep__fail(VMEP_ERR_INVALID_ARG, VMEP_LOG_ERROR, "%s%s%s is NULL",
                      call ? call : "", call ? ": " : "", type);
  memcpy(&size, in, sizeof(size));
  if (size < min_size || size > full_size)
    return vmep__fail(VMEP_ERR_INVALID_ARG, VMEP_LOG_ERROR,
                      "%s%s%s.struct_size = %zu, expected %zu..%zu (%s_init "
                      "sets it; a larger one comes from a newer vmep.h than "
                      "this library's %s)",
                      call ? call : "", call ? ": " : "", type, size, min_size,
                      full_size, type, vmep_version());
  memcpy(out, in, size);
  memcpy(out, &full_size, sizeof(full_size));
  return VMEP_OK;
}

vmep_status vmep__ep_config_read(const vmep_ep_config *in,
                                 vmep_ep_config *out) {
  vmep_ep_config_init(out);
  return vmep__ep_struct_read(NULL, "vmep_ep_config", in, CONFIG_SIZE_MIN,
                              sizeof(*out), out);
}

/* The checks of every field of a complete config `c`. */
static vmep_status check_fields(const vmep_ep_config *c, int group_size) {
  if (c->max_ranks < 0 || c->max_ranks > VMEP_LL_MAX_RANKS)
    return bad_field("max_ranks", c->max_ranks,
                     "0 (the group's size) or "
                     "1..1024");
  /* The group's size itself: a capacity does not make a group of no
   * ranks, nor one larger than it, valid. */
  if (group_size < 1 || group_size > VMEP_LL_MAX_RANKS)
    return bad_field("number of ranks", group_size, "1..1024");
  if (c->max_ranks && c->max_ranks < group_size)
    return vmep__fail(VMEP_ERR_INVALID_ARG, VMEP_LOG_ERROR,
                      "vmep_ep_config: max_ranks = %d, expected 0 or at least "
                      "the group's %d ranks",
                      c->max_ranks, group_size);
  int num_ranks = vmep__ep_ranks(c, group_size);
  if (c->num_experts < num_ranks || c->num_experts % num_ranks != 0)
    return vmep__fail(VMEP_ERR_INVALID_ARG, VMEP_LOG_ERROR,
                      "vmep_ep_config: num_experts = %d, expected a positive "
                      "multiple of the %d ranks",
                      c->num_experts, num_ranks);
  if (c->num_experts / num_ranks > VMEP_LL_MAX_LOCAL_EXPERTS)
    return vmep__fail(VMEP_ERR_INVALID_ARG, VMEP_LOG_ERROR,
                      "vmep_ep_config: num_experts = %d, expected at most "
                      "%d local experts on each of the %d ranks",
                      c->num_experts, VMEP_LL_MAX_LOCAL_EXPERTS, num_ranks);
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

vmep_status vmep__ep_config_check(const vmep_ep_config *config,
                                  int group_size) {
  vmep_ep_config c;
  vmep_status status = vmep__ep_config_read(config, &c);
  return status == VMEP_OK ? check_fields(&c, group_size) : status;
}
