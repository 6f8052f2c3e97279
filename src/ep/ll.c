/*
 * Host entry points of low-latency dispatch and combine: argument checks
 * (struct_size, every pointer, size and alignment, with a message naming
 * the field), the bookkeeping of the two buffer parities (at most two
 * dispatches outstanding; a stale handle is refused, never used), and the
 * launches, one helper for both operations.
 * Nothing here synchronizes with the device, so calls can be captured in
 * a CUDA graph: what replays is decided by device-side epochs.
 */
#include <stddef.h>
#include <string.h>

#include "ep/ep.h"

/* vmep_ep_poll_errors hands the kernels' error word to the caller as it is,
 * so its bits must be the public ones. */
_Static_assert(VMEP_LL_ERR_BAD_EXPERT == VMEP_EP_ERR_BAD_EXPERT,
               "kernel error bit BAD_EXPERT differs from vmep.h's");
_Static_assert(VMEP_LL_ERR_TIMEOUT == VMEP_EP_ERR_TIMEOUT,
               "kernel error bit TIMEOUT differs from vmep.h's");
_Static_assert(VMEP_LL_ERR_OVERFLOW == VMEP_EP_ERR_OVERFLOW,
               "kernel error bit OVERFLOW differs from vmep.h's");

void vmep_ep_dispatch_args_init(vmep_ep_dispatch_args *args) {
  if (!args)
    return;
  memset(args, 0, sizeof(*args));
  args->struct_size = sizeof(*args);
  args->scale_layout = VMEP_EP_SCALES_ROW_MAJOR;
}

void vmep_ep_combine_args_init(vmep_ep_combine_args *args) {
  if (!args)
    return;
  memset(args, 0, sizeof(*args));
  args->struct_size = sizeof(*args);
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
  p->inbox = ep->inbox;
  vmep__ep_remote_params(ep, p);
  p->state = ep->state;
  p->entries = ep->entries;
  p->counts = ep->counts;
  p->begins = ep->begins;
  p->row_map = ep->row_map;
  p->recv_count_copy = ep->recv_count_copy;
  p->sel_weights = ep->sel_weights;
  p->src_weighted = ep->src_weighted;
}

static vmep_status check_dispatch(const vmep_ep *ep,
                                  const vmep_ep_dispatch_args *a, int phases) {
  const char *call = "vmep_ep_dispatch";
  if (phases != VMEP_EP_SEND && phases != VMEP_EP_SEND_RECV)
    return vmep__ep_bad_arg(call,
                            "phases must be VMEP_EP_SEND or VMEP_EP_SEND_RECV");
  if (a->num_tokens < 0 || a->num_tokens > ep->config.max_tokens_per_rank)
    return vmep__fail(VMEP_ERR_INVALID_ARG, VMEP_LOG_ERROR,
                      "%s: num_tokens = %d, expected 0..%d", call,
                      a->num_tokens, ep->config.max_tokens_per_rank);
  if (a->num_topk < 1 || a->num_topk > ep->config.max_topk)
    return vmep__fail(VMEP_ERR_INVALID_ARG, VMEP_LOG_ERROR,
                      "%s: num_topk = %d, expected 1..%d (max_topk)", call,
                      a->num_topk, ep->config.max_topk);
  int none = a->num_tokens == 0;
  if (vmep__ep_bad_ptr(a->x, 16, none))
    return vmep__ep_bad_arg(call, "x must be a 16-byte aligned device pointer");
  if (vmep__ep_bad_ptr(a->topk_idx, 8, none))
    return vmep__ep_bad_arg(
        call, "topk_idx must be an 8-byte aligned device pointer");
  if (vmep__ep_bad_ptr(a->topk_weights, 4, 1))
    return vmep__ep_bad_arg(call,
                            "topk_weights must be NULL or 4-byte aligned");
  if (vmep__ep_bad_ptr(a->recv_x, 16, 0))
    return vmep__ep_bad_arg(call,
                            "recv_x must be a 16-byte aligned device pointer");
  if (a->use_fp8 && vmep__ep_bad_ptr(a->recv_scales, 4, 0))
    return vmep__ep_bad_arg(call, "use_fp8 needs recv_scales (4-byte aligned)");
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
  if (vmep__ep_bad_ptr(a->recv_count, 4, 0) ||
      vmep__ep_bad_ptr(a->src_info, 4, 0))
    return vmep__ep_bad_arg(call,
                            "recv_count and src_info must be 4-byte aligned");
  if (vmep__ep_bad_ptr(a->layout_range, 8, 0))
    return vmep__ep_bad_arg(call,
                            "layout_range must be an 8-byte aligned pointer");
  if (vmep__ep_bad_ptr(a->recv_wait_ns, 8, 1))
    return vmep__ep_bad_arg(call,
                            "recv_wait_ns must be NULL or 8-byte aligned");
  return VMEP_OK;
}

/* The two operations, told apart where dispatch and combine share a
 * helper. */
enum ll_op { LL_DISPATCH, LL_COMBINE };

/* What differs between the two operations in the shared helpers. */
static const struct ll_op_info {
  const char *call;        /* the send (or send and receive) call */
  const char *args_type;   /* its args struct */
  size_t args_min;         /* the end of that struct's last 0.3.0 field */
  size_t args_size;        /* its sizeof in this library */
  const char *recv_call;   /* the call of the receive phase alone */
  const char *not_pending; /* its refusal when no send phase waits */
} ll_ops[2] = {
    {"vmep_ep_dispatch", "vmep_ep_dispatch_args",
     offsetof(vmep_ep_dispatch_args, recv_wait_ns) + sizeof(int64_t *),
     sizeof(vmep_ep_dispatch_args), "vmep_ep_dispatch_recv",
     "this dispatch's receive phase was already launched"},
    {"vmep_ep_combine", "vmep_ep_combine_args",
     offsetof(vmep_ep_combine_args, recv_wait_ns) + sizeof(int64_t *),
     sizeof(vmep_ep_combine_args), "vmep_ep_combine_recv",
     "no combine of this handle waits for its receive phase"},
};

/* The caller's args `in` of `op` in this library's layout in *out (a
 * vmep_ep_dispatch_args or vmep_ep_combine_args): fields beyond its
 * struct_size at their _init defaults. VMEP_ERR_INVALID_ARG naming the
 * struct for NULL or a struct_size out of range. */
static vmep_status read_args(enum ll_op op, const void *in, void *out) {
  const struct ll_op_info *o = &ll_ops[op];
  if (op == LL_DISPATCH)
    vmep_ep_dispatch_args_init(out);
  else
    vmep_ep_combine_args_init(out);
  return vmep__ep_struct_read(o->call, o->args_type, in, o->args_min,
                              o->args_size, out);
}

/* Launches, on the buffer's device, `op`'s send phase when `send` and its
 * receive phase when `recv` (after a send that succeeded), for buffer
 * `parity`; `io` is the operation's struct vmep_ll_dispatch_io or
 * vmep_ll_combine_io. Returns the first failure. */
static vmep_status launch(const vmep_ep *ep, enum ll_op op, int parity,
                          int num_topk, const void *io, int send, int recv,
                          void *stream) {
  struct vmep_ll_params p;
  vmep__ep_params(ep, parity, num_topk, &p);
  vmep_status status = vmep__ep_device_enter(&ep->dev);
  if (status != VMEP_OK)
    return status;
  if (send)
    status = op == LL_DISPATCH ? vmep__ll_dispatch_send(&p, io, stream)
                               : vmep__ll_combine_send(&p, io, stream);
  if (status == VMEP_OK && recv)
    status = op == LL_DISPATCH ? vmep__ll_dispatch_recv(&p, io, stream)
                               : vmep__ll_combine_recv(&p, io, stream);
  vmep__ep_device_leave(&ep->dev);
  return status;
}

vmep_status vmep_ep_dispatch(vmep_ep *ep, const vmep_ep_dispatch_args *args,
                             int phases, void *stream,
                             vmep_ep_handle *handle_out) {
  const char *call = "vmep_ep_dispatch";
  vmep_ep_dispatch_args a;
  if (!ep || !handle_out)
    return vmep__ep_null_arg(call, ep ? "handle_out" : "ep");
  vmep_status status = read_args(LL_DISPATCH, args, &a);
  if (status == VMEP_OK)
    status = check_dispatch(ep, &a, phases);
  if (status != VMEP_OK)
    return status;
  int parity;
  status = vmep__ep_next_parity(ep, call, &parity);
  if (status != VMEP_OK)
    return status;
  struct vmep_ll_dispatch_io io = {.x = a.x,
                                   .topk_idx = a.topk_idx,
                                   .num_tokens = a.num_tokens,
                                   .use_fp8 = a.use_fp8,
                                   .round_scale = a.round_scale,
                                   .topk_weights = a.topk_weights,
                                   .recv_x = a.recv_x,
                                   .recv_scales = a.recv_scales,
                                   .recv_count = a.recv_count,
                                   .src_info = a.src_info,
                                   .layout_range = a.layout_range,
                                   .scale_layout = a.scale_layout,
                                   .recv_wait_ns = a.recv_wait_ns};
  int recv = (phases & VMEP_EP_RECV) != 0;
  status = launch(ep, LL_DISPATCH, parity, a.num_topk, &io, 1, recv, stream);
  if (status != VMEP_OK)
    return status;
  ep->pending_dispatch[parity] = io;
  vmep__ep_dispatched(ep, parity, !recv, 0);
  vmep_ep_handle h = {parity, a.num_tokens, a.num_topk, ep->calls};
  *handle_out = h;
  return VMEP_OK;
}

vmep_status vmep__ep_next_parity(const struct vmep_ep *ep, const char *call,
                                 int *parity_out) {
  int parity = (int)((ep->calls + 1) & 1);
  *parity_out = parity;
  if (ep->dispatch_pending[parity])
    return vmep__ep_bad_arg(call, "two dispatches already wait for their "
                                  "receive phase");
  /* Its flags are raised and its epoch not yet counted: a later combine on
   * this parity would take the stale flags for its own. */
  if (ep->combine_pending[parity])
    return vmep__ep_bad_arg(call, "a combine of this parity waits for its "
                                  "receive phase (vmep_ep_combine_recv)");
  return VMEP_OK;
}

void vmep__ep_dispatched(struct vmep_ep *ep, int parity, int pending, int ht) {
  ep->calls++;
  ep->parity_call[parity] = ep->calls;
  ep->dispatch_pending[parity] = pending;
  ep->parity_ht[parity] = ht;
}

/* A handle from this buffer whose parity no later dispatch reused. Its
 * token and top-k counts size the launches: they must be ones a dispatch
 * of this buffer could have had. */
static vmep_status check_handle(const vmep_ep *ep, const vmep_ep_handle *h,
                                const char *call) {
  if (!ep || !h)
    return vmep__ep_null_arg(call, ep ? "handle" : "ep");
  if (h->parity < 0 || h->parity > 1 || h->call == 0 || h->call > ep->calls ||
      h->num_topk < 1 || h->num_topk > ep->config.max_topk ||
      h->num_tokens < 0 || h->num_tokens > ep->config.max_tokens_per_rank)
    return vmep__ep_bad_arg(call, "not a handle of this buffer's dispatches");
  if (ep->parity_call[h->parity] != h->call || ep->parity_ht[h->parity])
    return vmep__fail(VMEP_ERR_INVALID_ARG, VMEP_LOG_ERROR,
                      "%s: stale handle: dispatch %llu reused its buffer "
                      "(at most two dispatches may be outstanding)",
                      call, (unsigned long long)ep->parity_call[h->parity]);
  return VMEP_OK;
}

/* vmep_ep_dispatch_recv and vmep_ep_combine_recv: launches the receive
 * phase that a send-only call of `op` left pending for handle `h`. */
static vmep_status recv_phase(vmep_ep *ep, enum ll_op op,
                              const vmep_ep_handle *h, void *stream) {
  const struct ll_op_info *c = &ll_ops[op];
  vmep_status status = check_handle(ep, h, c->recv_call);
  if (status != VMEP_OK)
    return status;
  int *pending = op == LL_DISPATCH ? ep->dispatch_pending : ep->combine_pending;
  if (!pending[h->parity])
    return vmep__ep_bad_arg(c->recv_call, c->not_pending);
  const void *io = op == LL_DISPATCH
                       ? (const void *)&ep->pending_dispatch[h->parity]
                       : (const void *)&ep->pending_combine[h->parity];
  status = launch(ep, op, h->parity, h->num_topk, io, 0, 1, stream);
  if (status == VMEP_OK)
    pending[h->parity] = 0;
  return status;
}

vmep_status vmep_ep_dispatch_recv(vmep_ep *ep, const vmep_ep_handle *h,
                                  void *stream) {
  return recv_phase(ep, LL_DISPATCH, h, stream);
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
    return vmep__ep_null_arg("vmep_ep_combine_buffer", "buf_out");
  if (!ep->layout.zero_copy[h->parity])
    return vmep__fail(VMEP_ERR_UNSUPPORTED, VMEP_LOG_ERROR,
                      "vmep_ep_combine_buffer: the buffer was created without "
                      "config.zero_copy");
  *buf_out = zero_copy_buffer(ep, h->parity);
  return VMEP_OK;
}

/* Whether the handle's dispatch was given weights: its combine is then
 * reduced at the expert side. */
static int reduced(const vmep_ep *ep, const vmep_ep_handle *h) {
  return ep->pending_dispatch[h->parity].topk_weights != NULL;
}

/* The combine's own checks, after the handle's: phases, the pending
 * state of the handle's parity, and the pointers of `a`. */
static vmep_status check_combine(const vmep_ep *ep,
                                 const vmep_ep_combine_args *a,
                                 const vmep_ep_handle *h, int phases) {
  const char *call = "vmep_ep_combine";
  if (phases != VMEP_EP_SEND && phases != VMEP_EP_SEND_RECV)
    return vmep__ep_bad_arg(call,
                            "phases must be VMEP_EP_SEND or VMEP_EP_SEND_RECV");
  if (ep->dispatch_pending[h->parity])
    return vmep__ep_bad_arg(call,
                            "the dispatch's receive phase was not launched");
  if (ep->combine_pending[h->parity])
    return vmep__ep_bad_arg(call,
                            "a combine of this handle waits for its receive "
                            "phase (vmep_ep_combine_recv)");
  int none = h->num_tokens == 0;
  if (vmep__ep_bad_ptr(a->expert_out, 16, 0))
    return vmep__ep_bad_arg(call,
                            "expert_out must be a 16-byte aligned pointer");
  if (vmep__ep_bad_ptr(a->topk_idx, 8, none))
    return vmep__ep_bad_arg(call, "topk_idx must be an 8-byte aligned pointer");
  /* Weights given twice could differ: which would apply? */
  if (reduced(ep, h) && a->topk_weights)
    return vmep__ep_bad_arg(call,
                            "the dispatch was given topk_weights (the combine "
                            "is reduced at the expert side with them): pass "
                            "topk_weights NULL here");
  if (!reduced(ep, h) && vmep__ep_bad_ptr(a->topk_weights, 4, none))
    return vmep__ep_bad_arg(call,
                            "topk_weights must be a 4-byte aligned pointer");
  if (vmep__ep_bad_ptr(a->out, 16, none))
    return vmep__ep_bad_arg(call, "out must be a 16-byte aligned pointer");
  if (vmep__ep_bad_ptr(a->recv_wait_ns, 8, 1))
    return vmep__ep_bad_arg(call,
                            "recv_wait_ns must be NULL or 8-byte aligned");
  if (a->use_logfmt != 0 && a->use_logfmt != 1)
    return vmep__fail(VMEP_ERR_INVALID_ARG, VMEP_LOG_ERROR,
                      "%s: use_logfmt = %d, expected 0 or 1", call,
                      a->use_logfmt);
  return VMEP_OK;
}

vmep_status vmep_ep_combine(vmep_ep *ep, const vmep_ep_combine_args *args,
                            const vmep_ep_handle *h, int phases, void *stream) {
  const char *call = "vmep_ep_combine";
  vmep_ep_combine_args a;
  vmep_status status = check_handle(ep, h, call);
  if (status == VMEP_OK)
    status = read_args(LL_COMBINE, args, &a);
  if (status == VMEP_OK)
    status = check_combine(ep, &a, h, phases);
  if (status != VMEP_OK)
    return status;
  /* Expert outputs left in this parity's zero-copy buffer are pulled. */
  int zero_copy = ep->layout.zero_copy[h->parity] &&
                  a.expert_out == zero_copy_buffer(ep, h->parity);
  /* Sources pull zero-copy rows as the experts wrote them: encoding them
   * would take a pass over the rows on the expert side and overwrite the
   * caller's outputs, for traffic that pulling already cut. */
  if (zero_copy && a.use_logfmt)
    return vmep__fail(VMEP_ERR_UNSUPPORTED, VMEP_LOG_ERROR,
                      "%s: use_logfmt with expert_out in the zero-copy buffer "
                      "(vmep_ep_combine_buffer): its rows are pulled as bf16; "
                      "pass expert_out from other memory to send LogFMT",
                      call);
  struct vmep_ll_combine_io io = {.expert_out = a.expert_out,
                                  .zero_copy = zero_copy,
                                  .topk_idx = a.topk_idx,
                                  .topk_weights = a.topk_weights,
                                  .num_tokens = h->num_tokens,
                                  .out = a.out,
                                  .recv_wait_ns = a.recv_wait_ns,
                                  .use_logfmt = a.use_logfmt,
                                  .expert_reduce = reduced(ep, h)};
  int recv = (phases & VMEP_EP_RECV) != 0;
  status = launch(ep, LL_COMBINE, h->parity, h->num_topk, &io, 1, recv, stream);
  if (status == VMEP_OK) {
    ep->combine_pending[h->parity] = !recv;
    ep->pending_combine[h->parity] = io;
  }
  return status;
}

vmep_status vmep_ep_combine_recv(vmep_ep *ep, const vmep_ep_handle *h,
                                 void *stream) {
  return recv_phase(ep, LL_COMBINE, h, stream);
}
