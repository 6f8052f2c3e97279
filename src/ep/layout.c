/*
 * Layout of one rank's EP buffer (pure C, the same on every rank): four
 * flag arrays [parity][rank] of uint64 epochs, two send areas (header,
 * expert ids, weights, staged rows), two combine slot areas [T][K][H] bf16,
 * two "where" tables [T][K], and the high-throughput combine's slot marks
 * [T][K], weights [T][K][K] and zero-copy row indices [T][K]. Two of each so
 * that two calls can be in flight. The buffer grows with T, K and H only, not
 * with the number of experts: dispatch is pull-based, so a rank needs room for
 * its own tokens, not for everyone's. Only the optional zero-copy combine
 * buffers ([L][R*T][H] bf16, two) grow with the experts.
 */
#include "ep/ep.h"

#define PART_ALIGN 256

static size_t align_up(size_t v, size_t a) { return (v + a - 1) / a * a; }

void vmep__ep_layout(const vmep_ep_config *c, int num_ranks,
                     struct vmep_ll_layout *out) {
  const size_t T = (size_t)c->max_tokens_per_rank, K = (size_t)c->max_topk;
  const size_t H = (size_t)c->hidden;
  const size_t flags =
      align_up(2 * (size_t)num_ranks * sizeof(uint64_t), PART_ALIGN);
  size_t fp8_row = H + H / VMEP_LL_FP8_GROUP * sizeof(float);
  size_t at = 0;
  out->disp_ready = at;
  out->disp_ack = (at += flags);
  out->comb_ready = (at += flags);
  out->comb_ack = (at += flags);
  out->alive = (at += flags);
  at += PART_ALIGN;
  out->row_bytes = align_up(2 * H > fp8_row ? 2 * H : fp8_row, 16);
  out->send_topk = PART_ALIGN; /* after the header (token count) */
  out->send_weights =
      align_up(out->send_topk + T * K * sizeof(int32_t), PART_ALIGN);
  out->send_rows =
      align_up(out->send_weights + T * K * sizeof(float), PART_ALIGN);
  size_t send_bytes = align_up(out->send_rows + T * out->row_bytes, PART_ALIGN);
  size_t slot_bytes = align_up(T * K * H * 2, PART_ALIGN);
  for (int b = 0; b < 2; b++) {
    out->send[b] = at;
    at += send_bytes;
  }
  for (int b = 0; b < 2; b++) {
    out->slots[b] = at;
    at += slot_bytes;
  }
  for (int b = 0; b < 2; b++) {
    out->where[b] = at;
    at += align_up(T * K * sizeof(int32_t), PART_ALIGN);
  }
  for (int b = 0; b < 2; b++) {
    out->ht_mark[b] = at;
    at += align_up(T * K * sizeof(uint64_t), PART_ALIGN);
  }
  for (int b = 0; b < 2; b++) {
    out->ht_weights[b] = at;
    at += align_up(T * K * K * sizeof(float), PART_ALIGN);
  }
  for (int b = 0; b < 2; b++) {
    out->ht_row[b] = at;
    at += align_up(T * K * sizeof(int32_t), PART_ALIGN);
  }
  const size_t experts_rows =
      (size_t)(c->num_experts / num_ranks) * (size_t)num_ranks * T;
  for (int b = 0; b < 2; b++) {
    out->zero_copy[b] = c->zero_copy ? at : 0;
    if (c->zero_copy)
      at += align_up(experts_rows * H * 2, PART_ALIGN);
  }
  out->total = align_up(at, 4096);
}

/* The size calls' common start: `call`'s arguments checked (NULL ones
 * named) and the caller's config read into *c. */
static vmep_status size_args(const char *call, const vmep_ep_config *config,
                             int num_ranks, const size_t *bytes_out,
                             vmep_ep_config *c) {
  if (!config || !bytes_out)
    return vmep__fail(VMEP_ERR_INVALID_ARG, VMEP_LOG_ERROR, "%s: %s is NULL",
                      call, config ? "bytes_out" : "config");
  vmep_status status = vmep__ep_config_check(config, num_ranks);
  if (status == VMEP_OK)
    status = vmep__ep_config_read(config, c);
  return status;
}

vmep_status vmep_ep_buffer_bytes(const vmep_ep_config *config, int num_ranks,
                                 size_t *bytes_out) {
  struct vmep_ll_layout layout;
  vmep_ep_config c;
  vmep_status status =
      size_args("vmep_ep_buffer_bytes", config, num_ranks, bytes_out, &c);
  if (status != VMEP_OK)
    return status;
  vmep__ep_layout(&c, vmep__ep_ranks(&c, num_ranks), &layout);
  *bytes_out = layout.total;
  return VMEP_OK;
}

/*
 * DeepEP's low-latency buffer (LowLatencyLayout in its csrc/config.hpp, as
 * published): per parity a send buffer max(T * dispatch message, E * T *
 * combine message), a receive buffer max(E * T * dispatch message, E * T *
 * combine message) and E int signalling words; dispatch message = 16 +
 * max(2H, H + 4H/128), combine message = 4H/128 + 2H; rounded up to 128 B.
 */
vmep_status vmep_ep_deepep_bytes(const vmep_ep_config *config, int num_ranks,
                                 size_t *bytes_out) {
  vmep_ep_config c;
  vmep_status status =
      size_args("vmep_ep_deepep_bytes", config, num_ranks, bytes_out, &c);
  if (status != VMEP_OK)
    return status;
  const size_t T = (size_t)c.max_tokens_per_rank;
  const size_t E = (size_t)c.num_experts, H = (size_t)c.hidden;
  const size_t scales = H / VMEP_LL_FP8_GROUP;
  size_t fp8 = H + scales * sizeof(float);
  size_t dispatch_msg = 16 + (2 * H > fp8 ? 2 * H : fp8);
  size_t combine_msg = scales * 4 + 2 * H;
  size_t send = T * dispatch_msg > E * T * combine_msg ? T * dispatch_msg
                                                       : E * T * combine_msg;
  size_t recv =
      E * T * (dispatch_msg > combine_msg ? dispatch_msg : combine_msg);
  size_t total = 2 * (send + recv + E * sizeof(int));
  *bytes_out = align_up(total, 128);
  return VMEP_OK;
}
