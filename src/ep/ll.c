/*
 * Host entry points of low-latency dispatch and combine: argument checks
 * (every pointer, size and alignment, with a message naming the field),
 * the bookkeeping of the two buffer parities (at most two dispatches
 * outstanding; a stale handle is refused, never used), and the launches.
 * Nothing here synchronizes with the device, so calls can be captured in
 * a CUDA graph: what replays is decided by device-side epochs.
 */
#include <cuda_runtime_api.h>
#include <string.h>

#include "ep/ep.h"

/* vmep_ep_poll_errors hands the kernels' error word to the caller as it is,
 * so its bits must be the public ones. */
_Static_assert(VMEP_LL_ERR_BAD_EXPERT == VMEP_EP_ERR_BAD_EXPERT,
               "kernel error bit BAD_EXPERT differs from vmep.h's");
_Static_assert(VMEP_LL_ERR_TIMEOUT == VMEP_EP_ERR_TIMEOUT,
               "kernel error bit TIMEOUT differs from vmep.h's");

static vmep_status bad_arg(const char *call, const char *what) {
  return vmep__fail(VMEP_ERR_INVALID_ARG, VMEP_LOG_ERROR, "%s: %s", call, what);
}

/* NULL or misaligned pointers are refused; `optional` allows NULL. */
static int bad_ptr(const void *p, size_t align, int optional) {
  if (!p)
    return !optional;
  return ((uintptr_t)p % align) != 0;
}

void vmep__ep_params(const struct vmep_ep *ep, int parity, int num_topk,
                     struct vmep_ll_params *p) {
  memset(p, 0, sizeof(*p));
  p->rank = ep->rank;
  p->num_ranks = ep->num_ranks;
  p->num_experts = ep->config.num_experts;
  p->hidden = ep->config.hidden;
  p->max_tokens = ep->config.max_tokens_per_rank;
  p->num_topk = num_topk;
  p->num_blocks = ep->config.num_sms;
  p->parity = parity;
  p->timeout_ns = ep->timeout_ns;
  p->layout = ep->layout;
  p->peers = ep->peers;
  p->state = ep->state;
  p->entries = ep->entries;
  p->counts = ep->counts;
  p->begins = ep->begins;
  p->row_map = ep->row_map;
  p->recv_count_copy = ep->recv_count_copy;
}

static vmep_status check_dispatch(const vmep_ep *ep,
                                  const vmep_ep_dispatch_args *a, int phases) {
  const char *call = "vmep_ep_dispatch";
  if (phases != VMEP_EP_SEND && phases != VMEP_EP_SEND_RECV)
    return bad_arg(call, "phases must be VMEP_EP_SEND or VMEP_EP_SEND_RECV");
  if (a->num_tokens < 0 || a->num_tokens > ep->config.max_tokens_per_rank)
    return vmep__fail(VMEP_ERR_INVALID_ARG, VMEP_LOG_ERROR,
                      "%s: num_tokens = %d, expected 0..%d", call,
                      a->num_tokens, ep->config.max_tokens_per_rank);
  if (a->num_topk < 1 || a->num_topk > ep->config.max_topk)
    return vmep__fail(VMEP_ERR_INVALID_ARG, VMEP_LOG_ERROR,
                      "%s: num_topk = %d, expected 1..%d (max_topk)", call,
                      a->num_topk, ep->config.max_topk);
  int none = a->num_tokens == 0;
  if (bad_ptr(a->x, 16, none))
    return bad_arg(call, "x must be a 16-byte aligned device pointer");
  if (bad_ptr(a->topk_idx, 8, none))
    return bad_arg(call, "topk_idx must be an 8-byte aligned device pointer");
  if (bad_ptr(a->recv_x, 16, 0))
    return bad_arg(call, "recv_x must be a 16-byte aligned device pointer");
  if (a->use_fp8 && bad_ptr(a->recv_scales, 4, 0))
    return bad_arg(call, "use_fp8 needs recv_scales (4-byte aligned)");
  if (a->use_fp8 && (a->scale_layout < VMEP_EP_SCALES_ROW_MAJOR ||
                     a->scale_layout > VMEP_EP_SCALES_UE8M0))
    return vmep__fail(VMEP_ERR_INVALID_ARG, VMEP_LOG_ERROR,
                      "%s: scale_layout = %d, expected a VMEP_EP_SCALES_* "
                      "value (0..2)",
                      call, a->scale_layout);
  if (a->use_fp8 && a->scale_layout == VMEP_EP_SCALES_UE8M0 &&
      (!a->round_scale || ep->config.hidden % (4 * VMEP_LL_FP8_GROUP) != 0))
    return vmep__fail(VMEP_ERR_INVALID_ARG, VMEP_LOG_ERROR,
                      "%s: UE8M0 scales need round_scale and hidden a "
                      "multiple of 512 (round_scale %d, hidden %d)",
                      call, a->round_scale, ep->config.hidden);
  if (bad_ptr(a->recv_count, 4, 0) || bad_ptr(a->src_info, 4, 0))
    return bad_arg(call, "recv_count and src_info must be 4-byte aligned");
  if (bad_ptr(a->layout_range, 8, 0))
    return bad_arg(call, "layout_range must be an 8-byte aligned pointer");
  if (bad_ptr(a->recv_wait_ns, 8, 1))
    return bad_arg(call, "recv_wait_ns must be NULL or 8-byte aligned");
  return VMEP_OK;
}

/* Makes the buffer's device current; *previous keeps the caller's. */
static vmep_status on_device(const vmep_ep *ep, int *previous) {
  cudaError_t err = cudaGetDevice(previous);
  if (err == cudaSuccess && *previous != ep->config.device)
    err = cudaSetDevice(ep->config.device);
  if (err != cudaSuccess)
    return vmep__fail(VMEP_ERR_CUDA, VMEP_LOG_ERROR, "cudaSetDevice(%d): %s",
                      ep->config.device, cudaGetErrorString(err));
  return VMEP_OK;
}

static void off_device(const vmep_ep *ep, int previous) {
  if (previous != ep->config.device)
    cudaSetDevice(previous);
}

vmep_status vmep_ep_dispatch(vmep_ep *ep, const vmep_ep_dispatch_args *args,
                             int phases, void *stream,
                             vmep_ep_handle *handle_out) {
  struct vmep_ll_params p;
  int previous = 0;
  if (!ep || !args || !handle_out)
    return bad_arg("vmep_ep_dispatch", "ep, args and handle_out are required");
  vmep_status status = check_dispatch(ep, args, phases);
  if (status != VMEP_OK)
    return status;
  int parity = (int)((ep->calls + 1) & 1);
  if (ep->dispatch_pending[parity])
    return bad_arg("vmep_ep_dispatch",
                   "two dispatches already wait for their receive phase "
                   "(vmep_ep_dispatch_recv)");
  struct vmep_ll_dispatch_io io = {args->x,
                                   args->topk_idx,
                                   args->num_tokens,
                                   args->use_fp8,
                                   args->round_scale,
                                   args->recv_x,
                                   args->recv_scales,
                                   args->recv_count,
                                   args->src_info,
                                   args->layout_range,
                                   args->scale_layout,
                                   args->recv_wait_ns};
  vmep__ep_params(ep, parity, args->num_topk, &p);
  status = on_device(ep, &previous);
  if (status != VMEP_OK)
    return status;
  status = vmep__ll_dispatch_send(&p, &io, stream);
  if (status == VMEP_OK && (phases & VMEP_EP_RECV))
    status = vmep__ll_dispatch_recv(&p, &io, stream);
  off_device(ep, previous);
  if (status != VMEP_OK)
    return status;
  ep->calls++;
  ep->parity_call[parity] = ep->calls;
  ep->dispatch_pending[parity] = !(phases & VMEP_EP_RECV);
  ep->pending_dispatch[parity] = io;
  ep->combine_pending[parity] = 0;
  vmep_ep_handle h = {parity, args->num_tokens, args->num_topk, ep->calls};
  *handle_out = h;
  return VMEP_OK;
}

/* A handle from this buffer whose parity no later dispatch reused. */
static vmep_status check_handle(const vmep_ep *ep, const vmep_ep_handle *h,
                                const char *call) {
  if (!ep || !h)
    return bad_arg(call, "ep and handle are required");
  if (h->parity < 0 || h->parity > 1 || h->call == 0 || h->call > ep->calls)
    return bad_arg(call, "not a handle of this buffer's dispatches");
  if (ep->parity_call[h->parity] != h->call)
    return vmep__fail(VMEP_ERR_INVALID_ARG, VMEP_LOG_ERROR,
                      "%s: stale handle: dispatch %llu reused its buffer "
                      "(at most two dispatches may be outstanding)",
                      call, (unsigned long long)ep->parity_call[h->parity]);
  return VMEP_OK;
}

vmep_status vmep_ep_dispatch_recv(vmep_ep *ep, const vmep_ep_handle *h,
                                  void *stream) {
  struct vmep_ll_params p;
  int previous = 0;
  vmep_status status = check_handle(ep, h, "vmep_ep_dispatch_recv");
  if (status != VMEP_OK)
    return status;
  if (!ep->dispatch_pending[h->parity])
    return bad_arg("vmep_ep_dispatch_recv",
                   "this dispatch's receive phase was already launched");
  vmep__ep_params(ep, h->parity, h->num_topk, &p);
  status = on_device(ep, &previous);
  if (status != VMEP_OK)
    return status;
  status = vmep__ll_dispatch_recv(&p, &ep->pending_dispatch[h->parity], stream);
  off_device(ep, previous);
  if (status == VMEP_OK)
    ep->dispatch_pending[h->parity] = 0;
  return status;
}

static void *zero_copy_buffer(const vmep_ep *ep, int parity) {
  return (char *)vmep_window_local(ep->window) + ep->layout.zero_copy[parity];
}

vmep_status vmep_ep_combine_buffer(vmep_ep *ep, const vmep_ep_handle *h,
                                   void **buf_out) {
  vmep_status status = check_handle(ep, h, "vmep_ep_combine_buffer");
  if (status != VMEP_OK)
    return status;
  if (!buf_out)
    return bad_arg("vmep_ep_combine_buffer", "buf_out is NULL");
  if (!ep->layout.zero_copy[h->parity])
    return vmep__fail(VMEP_ERR_UNSUPPORTED, VMEP_LOG_ERROR,
                      "vmep_ep_combine_buffer: the buffer was created without "
                      "config.zero_copy");
  *buf_out = zero_copy_buffer(ep, h->parity);
  return VMEP_OK;
}

vmep_status vmep_ep_combine(vmep_ep *ep, const vmep_ep_combine_args *args,
                            const vmep_ep_handle *h, int phases, void *stream) {
  const char *call = "vmep_ep_combine";
  struct vmep_ll_params p;
  int previous = 0;
  vmep_status status = check_handle(ep, h, call);
  if (status != VMEP_OK)
    return status;
  if (!args)
    return bad_arg(call, "args is NULL");
  if (phases != VMEP_EP_SEND && phases != VMEP_EP_SEND_RECV)
    return bad_arg(call, "phases must be VMEP_EP_SEND or VMEP_EP_SEND_RECV");
  if (ep->dispatch_pending[h->parity])
    return bad_arg(call, "the dispatch's receive phase was not launched");
  if (ep->combine_pending[h->parity])
    return bad_arg(call, "a combine of this handle waits for its receive "
                         "phase (vmep_ep_combine_recv)");
  int none = h->num_tokens == 0;
  if (bad_ptr(args->expert_out, 16, 0))
    return bad_arg(call, "expert_out must be a 16-byte aligned pointer");
  if (bad_ptr(args->topk_idx, 8, none) || bad_ptr(args->topk_weights, 4, none))
    return bad_arg(call, "topk_idx and topk_weights must be aligned pointers");
  if (bad_ptr(args->out, 16, none))
    return bad_arg(call, "out must be a 16-byte aligned pointer");
  if (bad_ptr(args->recv_wait_ns, 8, 1))
    return bad_arg(call, "recv_wait_ns must be NULL or 8-byte aligned");
  /* Expert outputs left in this parity's zero-copy buffer are pulled. */
  int zero_copy = ep->layout.zero_copy[h->parity] &&
                  args->expert_out == zero_copy_buffer(ep, h->parity);
  struct vmep_ll_combine_io io = {
      args->expert_out, zero_copy, args->topk_idx,    args->topk_weights,
      h->num_tokens,    args->out, args->recv_wait_ns};
  vmep__ep_params(ep, h->parity, h->num_topk, &p);
  status = on_device(ep, &previous);
  if (status != VMEP_OK)
    return status;
  status = vmep__ll_combine_send(&p, &io, stream);
  if (status == VMEP_OK && (phases & VMEP_EP_RECV))
    status = vmep__ll_combine_recv(&p, &io, stream);
  off_device(ep, previous);
  if (status == VMEP_OK) {
    ep->combine_pending[h->parity] = !(phases & VMEP_EP_RECV);
    ep->pending_combine[h->parity] = io;
  }
  return status;
}

vmep_status vmep_ep_combine_recv(vmep_ep *ep, const vmep_ep_handle *h,
                                 void *stream) {
  struct vmep_ll_params p;
  int previous = 0;
  vmep_status status = check_handle(ep, h, "vmep_ep_combine_recv");
  if (status != VMEP_OK)
    return status;
  if (!ep->combine_pending[h->parity])
    return bad_arg("vmep_ep_combine_recv",
                   "no combine of this handle waits for its receive phase");
  vmep__ep_params(ep, h->parity, h->num_topk, &p);
  status = on_device(ep, &previous);
  if (status != VMEP_OK)
    return status;
  status = vmep__ll_combine_recv(&p, &ep->pending_combine[h->parity], stream);
  off_device(ep, previous);
  if (status == VMEP_OK)
    ep->combine_pending[h->parity] = 0;
  return status;
}
