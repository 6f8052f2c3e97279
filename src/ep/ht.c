/*
 * Host entry points of high-throughput dispatch and combine (docs/HT.md):
 * argument checks naming the field, the parity bookkeeping shared with the
 * low-latency calls (a dispatch of either mode takes the next parity; a
 * handle of one mode is refused by the other's calls), and the launches.
 * Nothing here synchronizes with the device.
 */
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "ep/ep.h"

/* A per-expert count (at most R*T < 2^27 rows) rounded up to this stays
 * within an int. */
#define ALIGNMENT_MAX 65536

void vmep_ep_ht_dispatch_args_init(vmep_ep_ht_dispatch_args *args) {
  if (!args)
    return;
  memset(args, 0, sizeof(*args));
  args->struct_size = sizeof(*args);
}

void vmep_ep_ht_combine_args_init(vmep_ep_ht_combine_args *args) {
  if (!args)
    return;
  memset(args, 0, sizeof(*args));
  args->struct_size = sizeof(*args);
}

/* A buffer given. Remote peers (other nodes) are served through the
 * proxy as for the low-latency calls (docs/HT.md, "Across nodes"). */
static vmep_status check_ep(const vmep_ep *ep, const char *call) {
  return ep ? VMEP_OK : vmep__ep_null_arg(call, "ep");
}

static vmep_status check_topk(const vmep_ep *ep, const char *call,
                              int num_topk) {
  if (num_topk < 1 || num_topk > ep->config.max_topk)
    return vmep__fail(VMEP_ERR_INVALID_ARG, VMEP_LOG_ERROR,
                      "%s: num_topk = %d, expected 1..%d (max_topk)", call,
                      num_topk, ep->config.max_topk);
  return VMEP_OK;
}

vmep_status vmep_ep_ht_layout(vmep_ep *ep, const int64_t *topk_idx,
                              int num_tokens, int num_topk,
                              int32_t *tokens_per_rank,
                              int32_t *tokens_per_expert, uint8_t *in_rank,
                              void *stream) {
  const char *call = "vmep_ep_ht_layout";
  if (!ep)
    return vmep__ep_null_arg(call, "ep");
  vmep_status status = check_topk(ep, call, num_topk);
  if (status != VMEP_OK)
    return status;
  /* T bounds the tokens of every call on the buffer (vmep.h), and keeps
   * the launch's block count within an int. */
  if (num_tokens < 0 || num_tokens > ep->config.max_tokens_per_rank)
    return vmep__fail(VMEP_ERR_INVALID_ARG, VMEP_LOG_ERROR,
                      "%s: num_tokens = %d, expected 0..%d "
                      "(max_tokens_per_rank)",
                      call, num_tokens, ep->config.max_tokens_per_rank);
  if (!topk_idx && num_tokens > 0)
    return vmep__ep_null_arg(call, "topk_idx");
  if (vmep__ep_bad_ptr(topk_idx, 8, 1))
    return vmep__ep_bad_arg(call, "topk_idx must be 8-byte aligned");
  if (vmep__ep_bad_ptr(tokens_per_rank, 4, 1) ||
      vmep__ep_bad_ptr(tokens_per_expert, 4, 1))
    return vmep__ep_bad_arg(call, "tokens_per_rank and tokens_per_expert "
                                  "must be NULL or 4-byte aligned");
  status = vmep__ep_device_enter(&ep->dev);
  if (status != VMEP_OK)
    return status;
  status = vmep__ht_layout(topk_idx, num_tokens, num_topk, ep->num_ranks,
                           ep->config.num_experts, tokens_per_rank,
                           tokens_per_expert, in_rank, stream);
  vmep__ep_device_leave(&ep->dev);
  return status;
}

/* The receive arrays of `a`, for a dispatch of `use_fp8`. */
static vmep_status check_recv(const char *call,
                              const vmep_ep_ht_dispatch_args *a, int use_fp8,
                              int cached) {
  if (a->capacity < 0)
    return vmep__fail(VMEP_ERR_INVALID_ARG, VMEP_LOG_ERROR,
                      "%s: capacity = %d, expected >= 0", call, a->capacity);
  int none = a->capacity == 0;
  if (vmep__ep_bad_ptr(a->recv_x, 16, none))
    return vmep__ep_bad_arg(call, "recv_x must be a 16-byte aligned pointer");
  if (use_fp8 && vmep__ep_bad_ptr(a->recv_scales, 4, none))
    return vmep__ep_bad_arg(call, "use_fp8 needs recv_scales (4-byte "
                                  "aligned)");
  if (vmep__ep_bad_ptr(a->recv_topk_idx, 8, 1) ||
      vmep__ep_bad_ptr(a->recv_topk_weights, 4, 1))
    return vmep__ep_bad_arg(call, "recv_topk_idx and recv_topk_weights must "
                                  "be NULL or aligned pointers");
  if (!cached && vmep__ep_bad_ptr(a->recv_src, 4, none))
    return vmep__ep_bad_arg(call, "recv_src must be a 4-byte aligned pointer");
  return VMEP_OK;
}

/* Handle `h` (named `name`) has fields a high-throughput dispatch of this
 * buffer could have given it: the launches size what they read by them. */
static vmep_status check_handle_fields(const vmep_ep *ep,
                                       const vmep_ep_ht_handle *h,
                                       const char *call, const char *name) {
  if (h->parity < 0 || h->parity > 1 || h->call == 0 || h->call > ep->calls ||
      !h->num_recv || (h->capacity > 0 && !h->recv_src) || h->capacity < 0 ||
      h->num_topk < 1 || h->num_topk > ep->config.max_topk ||
      h->num_tokens < 0 || h->num_tokens > ep->config.max_tokens_per_rank)
    return vmep__fail(VMEP_ERR_INVALID_ARG, VMEP_LOG_ERROR,
                      "%s: %s is not a handle of this buffer's "
                      "high-throughput dispatches",
                      call, name);
  return VMEP_OK;
}

/* A handle of one of this buffer's high-throughput dispatches whose
 * receive phase was launched. Handles do not expire: a combine or a cached
 * dispatch reads only what the handle names (the caller keeps recv_src and
 * num_recv), not the dispatch's buffer parity. */
static vmep_status check_handle(const vmep_ep *ep, const vmep_ep_ht_handle *h,
                                const char *call, const char *name) {
  if (!h)
    return vmep__ep_null_arg(call, name);
  vmep_status status = check_handle_fields(ep, h, call, name);
  if (status != VMEP_OK)
    return status;
  /* Its records name the ranks of then: a membership change since makes
   * them meaningless to the others. */
  if (h->call <= ep->calls_at_change)
    return vmep__fail(VMEP_ERR_INVALID_ARG, VMEP_LOG_ERROR,
                      "%s: stale %s: made before the last membership change",
                      call, name);
  if (ep->parity_call[h->parity] == h->call && ep->dispatch_pending[h->parity])
    return vmep__fail(VMEP_ERR_INVALID_ARG, VMEP_LOG_ERROR,
                      "%s: %s: the dispatch's receive phase was not launched "
                      "(vmep_ep_ht_dispatch_recv)",
                      call, name);
  return VMEP_OK;
}

static vmep_status check_dispatch(const vmep_ep *ep,
                                  const vmep_ep_ht_dispatch_args *a,
                                  int phases) {
  const char *call = "vmep_ep_ht_dispatch";
  if (phases != VMEP_EP_SEND && phases != VMEP_EP_SEND_RECV)
    return vmep__ep_bad_arg(call, "phases must be VMEP_EP_SEND or "
                                  "VMEP_EP_SEND_RECV");
  if (a->num_tokens < 0 || a->num_tokens > ep->config.max_tokens_per_rank)
    return vmep__fail(VMEP_ERR_INVALID_ARG, VMEP_LOG_ERROR,
                      "%s: num_tokens = %d, expected 0..%d "
                      "(max_tokens_per_rank)",
                      call, a->num_tokens, ep->config.max_tokens_per_rank);
  vmep_status status = check_topk(ep, call, a->num_topk);
  if (status != VMEP_OK)
    return status;
  int none = a->num_tokens == 0, cached = a->cached != NULL;
  if (vmep__ep_bad_ptr(a->x, 16, none))
    return vmep__ep_bad_arg(call, "x must be a 16-byte aligned pointer");
  if (a->use_fp8 && vmep__ep_bad_ptr(a->x_scales, 4, none))
    return vmep__ep_bad_arg(call, "use_fp8 needs x_scales (4-byte aligned)");
  if (a->expert_alignment < 0 || a->expert_alignment > ALIGNMENT_MAX)
    return vmep__fail(VMEP_ERR_INVALID_ARG, VMEP_LOG_ERROR,
                      "%s: expert_alignment = %d, expected 0..%d", call,
                      a->expert_alignment, ALIGNMENT_MAX);
  if (cached) {
    status = check_handle(ep, a->cached, call, "cached");
    if (status == VMEP_OK && (a->cached->num_topk != a->num_topk ||
                              a->cached->use_fp8 != a->use_fp8))
      return vmep__ep_bad_arg(call, "cached: the handle's num_topk and "
                                    "use_fp8 differ from this dispatch's");
    /* The same routing: its records name this many tokens of ours. */
    if (status == VMEP_OK && a->cached->num_tokens != a->num_tokens)
      return vmep__fail(VMEP_ERR_INVALID_ARG, VMEP_LOG_ERROR,
                        "%s: num_tokens = %d, the cached handle's dispatch "
                        "had %d (a cached dispatch repeats its routing)",
                        call, a->num_tokens, a->cached->num_tokens);
    return status == VMEP_OK && (phases & VMEP_EP_RECV)
               ? check_recv(call, a, a->use_fp8, 1)
               : status;
  }
  if (vmep__ep_bad_ptr(a->topk_idx, 8, none))
    return vmep__ep_bad_arg(call, "topk_idx must be an 8-byte aligned "
                                  "pointer");
  if (vmep__ep_bad_ptr(a->topk_weights, 4, 1))
    return vmep__ep_bad_arg(call, "topk_weights must be NULL or 4-byte "
                                  "aligned");
  if (vmep__ep_bad_ptr(a->num_recv, 4, 0) ||
      vmep__ep_bad_ptr(a->recv_expert_count, 4, 0))
    return vmep__ep_bad_arg(call, "num_recv and recv_expert_count must be "
                                  "4-byte aligned pointers");
  return phases & VMEP_EP_RECV ? check_recv(call, a, a->use_fp8, 0) : VMEP_OK;
}

/* The receive arrays of `a` into `io`; a cached dispatch's positions come
 * from its handle `cached`. */
static void recv_io(const vmep_ep_ht_dispatch_args *a,
                    const vmep_ep_ht_handle *cached,
                    struct vmep_ht_dispatch_io *io) {
  /* A cached dispatch reads no more records than its handle holds. */
  io->capacity =
      cached && cached->capacity < a->capacity ? cached->capacity : a->capacity;
  io->recv_x = a->recv_x;
  io->recv_scales = a->recv_scales;
  io->recv_topk_idx = a->recv_topk_idx;
  io->recv_topk_weights = a->recv_topk_weights;
  if (!io->cached)
    io->recv_src = a->recv_src;
}

/* Launches the phases of dispatch `io` on `parity`. */
static vmep_status launch(const vmep_ep *ep, int parity, int num_topk,
                          const struct vmep_ht_dispatch_io *io, int send,
                          int recv, void *stream) {
  struct vmep_ll_params p;
  vmep__ep_params(ep, parity, num_topk, &p);
  vmep_status status = vmep__ep_device_enter(&ep->dev);
  if (status != VMEP_OK)
    return status;
  if (send)
    status = vmep__ht_dispatch_send(&p, io, stream);
  if (status == VMEP_OK && recv)
    status = vmep__ht_dispatch_recv(&p, io, stream);
  vmep__ep_device_leave(&ep->dev);
  return status;
}

/* The start of both dispatch calls: the buffer and the handle pointer `h`
 * (named `name`) given, and the caller's args in *out. */
static vmep_status dispatch_start(const vmep_ep *ep, const char *call,
                                  const void *h, const char *name,
                                  const vmep_ep_ht_dispatch_args *in,
                                  vmep_ep_ht_dispatch_args *out) {
  vmep_status status = check_ep(ep, call);
  if (status == VMEP_OK && !h)
    status = vmep__ep_null_arg(call, name);
  if (status != VMEP_OK)
    return status;
  vmep_ep_ht_dispatch_args_init(out);
  return vmep__ep_struct_read(call, "vmep_ep_ht_dispatch_args", in,
                              sizeof(*out), sizeof(*out), out);
}

vmep_status vmep_ep_ht_dispatch(vmep_ep *ep,
                                const vmep_ep_ht_dispatch_args *args,
                                int phases, void *stream,
                                vmep_ep_ht_handle *handle_out) {
  const char *call = "vmep_ep_ht_dispatch";
  vmep_ep_ht_dispatch_args a;
  vmep_status status =
      dispatch_start(ep, call, handle_out, "handle_out", args, &a);
  if (status == VMEP_OK)
    status = check_dispatch(ep, &a, phases);
  if (status != VMEP_OK)
    return status;
  int parity;
  status = vmep__ep_next_parity(ep, call, &parity);
  if (status != VMEP_OK)
    return status;
  const vmep_ep_ht_handle *c = a.cached;
  struct vmep_ht_dispatch_io io = {
      .x = a.x,
      .x_scales = a.x_scales,
      .topk_idx = c ? NULL : a.topk_idx,
      .topk_weights = c ? NULL : a.topk_weights,
      .num_tokens = a.num_tokens,
      .use_fp8 = a.use_fp8,
      .expert_alignment = a.expert_alignment,
      .cached = c != NULL,
      .num_recv = c ? c->num_recv : a.num_recv,
      .recv_expert_count = c ? NULL : a.recv_expert_count,
      .recv_src = c ? c->recv_src : a.recv_src,
  };
  int recv = (phases & VMEP_EP_RECV) != 0;
  if (recv)
    recv_io(&a, c, &io);
  status = launch(ep, parity, a.num_topk, &io, 1, recv, stream);
  if (status != VMEP_OK)
    return status;
  ep->pending_ht[parity] = io;
  vmep__ep_dispatched(ep, parity, !recv, 1);
  vmep_ep_ht_handle h = {
      parity,      a.num_tokens,
      a.num_topk,  a.use_fp8,
      ep->calls,   io.num_recv,
      io.recv_src, recv ? io.capacity : (c ? c->capacity : 0)};
  *handle_out = h;
  return VMEP_OK;
}

vmep_status vmep_ep_ht_dispatch_recv(vmep_ep *ep,
                                     const vmep_ep_ht_dispatch_args *args,
                                     vmep_ep_ht_handle *handle, void *stream) {
  const char *call = "vmep_ep_ht_dispatch_recv";
  vmep_ep_ht_dispatch_args a;
  vmep_status status = dispatch_start(ep, call, handle, "handle", args, &a);
  if (status == VMEP_OK)
    status = check_handle_fields(ep, handle, call, "handle");
  if (status != VMEP_OK)
    return status;
  if (ep->parity_call[handle->parity] != handle->call ||
      !ep->parity_ht[handle->parity] || !ep->dispatch_pending[handle->parity])
    return vmep__ep_bad_arg(call, "handle: no high-throughput dispatch of "
                                  "this handle waits for its receive phase");
  struct vmep_ht_dispatch_io *io = &ep->pending_ht[handle->parity];
  status = check_recv(call, &a, io->use_fp8, io->cached);
  if (status != VMEP_OK)
    return status;
  /* The cached handle's records bound a cached receive as at send time. */
  vmep_ep_ht_handle cached = *handle;
  recv_io(&a, io->cached ? &cached : NULL, io);
  status = launch(ep, handle->parity, handle->num_topk, io, 0, 1, stream);
  if (status != VMEP_OK)
    return status;
  ep->dispatch_pending[handle->parity] = 0;
  handle->recv_src = io->recv_src;
  handle->capacity = io->capacity;
  return VMEP_OK;
}

static vmep_status check_combine(const vmep_ep *ep,
                                 const vmep_ep_ht_combine_args *a,
                                 const vmep_ep_ht_handle *h) {
  const char *call = "vmep_ep_ht_combine";
  if (ep->combine_pending[h->parity])
    return vmep__ep_bad_arg(call, "a low-latency combine on the handle's "
                                  "parity waits for its receive phase");
  int none = h->num_tokens == 0;
  if (vmep__ep_bad_ptr(a->x, 16, h->capacity == 0))
    return vmep__ep_bad_arg(call, "x must be a 16-byte aligned pointer");
  if (vmep__ep_bad_ptr(a->topk_weights, 4, 1))
    return vmep__ep_bad_arg(call, "topk_weights must be NULL or 4-byte "
                                  "aligned");
  if (vmep__ep_bad_ptr(a->bias0, 16, 1) || vmep__ep_bad_ptr(a->bias1, 16, 1))
    return vmep__ep_bad_arg(call, "bias0 and bias1 must be NULL or 16-byte "
                                  "aligned");
  if (vmep__ep_bad_ptr(a->out, 16, none))
    return vmep__ep_bad_arg(call, "out must be a 16-byte aligned pointer");
  if (a->out_topk_weights && !a->topk_weights)
    return vmep__ep_bad_arg(call, "out_topk_weights needs topk_weights");
  if (vmep__ep_bad_ptr(a->out_topk_weights, 4, 1))
    return vmep__ep_bad_arg(call, "out_topk_weights must be NULL or 4-byte "
                                  "aligned");
  return VMEP_OK;
}

/* The zero-copy combine buffer of `parity`: its slots in our window, which
 * a combine in place leaves to us (nobody pushes rows there). */
static void *in_place_buffer(const vmep_ep *ep, int parity) {
  char *base = vmep_window_local(ep->window);
  return base ? base + ep->layout.slots[parity] : NULL;
}

/* Its rows: R*T, all a dispatch can bring, which the slots' T*max_topk
 * hold when R <= max_topk. */
static int in_place_rows(const vmep_ep *ep) {
  return ep->config.max_tokens_per_rank * ep->num_ranks;
}

/* Handle `h` may combine in place: the buffer holds any rank's rows (a
 * shape every rank shares, so no rank refuses alone while the others
 * launch), its dispatch is the last of its parity (a later one may have
 * written the slots since) and its capacity fits. */
static vmep_status check_in_place(const vmep_ep *ep, const char *call,
                                  const vmep_ep_ht_handle *h) {
  if (ep->num_ranks > ep->config.max_topk)
    return vmep__fail(VMEP_ERR_UNSUPPORTED, VMEP_LOG_ERROR,
                      "%s: the zero-copy buffer (the slots, T * max_topk "
                      "rows) cannot hold the R*T rows a rank may receive "
                      "when R = %d > max_topk = %d: combine from the "
                      "caller's memory",
                      call, ep->num_ranks, ep->config.max_topk);
  if (ep->parity_call[h->parity] != h->call)
    return vmep__fail(VMEP_ERR_INVALID_ARG, VMEP_LOG_ERROR,
                      "%s: the zero-copy buffer serves the last dispatch of "
                      "its parity, and dispatch %llu came after the "
                      "handle's: combine from the caller's memory instead",
                      call, (unsigned long long)ep->parity_call[h->parity]);
  if (h->capacity > in_place_rows(ep))
    return vmep__fail(VMEP_ERR_INVALID_ARG, VMEP_LOG_ERROR,
                      "%s: the handle's capacity (%d rows) exceeds the %d "
                      "rows of the zero-copy buffer (R*T)",
                      call, h->capacity, in_place_rows(ep));
  return VMEP_OK;
}

vmep_status vmep_ep_ht_combine_buffer(vmep_ep *ep, const vmep_ep_ht_handle *h,
                                      void **buf_out, int *rows_out) {
  const char *call = "vmep_ep_ht_combine_buffer";
  vmep_status status = check_ep(ep, call);
  if (status == VMEP_OK)
    status = check_handle(ep, h, call, "handle");
  if (status == VMEP_OK && !buf_out)
    status = vmep__ep_null_arg(call, "buf_out");
  if (status == VMEP_OK)
    status = check_in_place(ep, call, h);
  if (status != VMEP_OK)
    return status;
  ep->ht_in_place[h->parity] = h->call;
  *buf_out = in_place_buffer(ep, h->parity);
  if (rows_out)
    *rows_out = in_place_rows(ep);
  return VMEP_OK;
}

/* x of a combine from the caller's memory: rows pushed into the parity's
 * slots (ours among them) must not be read from them. */
static vmep_status check_outside_slots(const vmep_ep *ep, const char *call,
                                       const vmep_ep_ht_handle *h,
                                       const void *x) {
  uintptr_t slots = (uintptr_t)in_place_buffer(ep, h->parity);
  uintptr_t p = (uintptr_t)x;
  if (!slots)
    return VMEP_OK;
  size_t slot_bytes = (size_t)ep->config.max_tokens_per_rank *
                      (size_t)ep->config.max_topk * ep->config.hidden * 2;
  size_t x_bytes = (size_t)h->capacity * ep->config.hidden * 2;
  if (x_bytes && p < slots + slot_bytes && slots < p + x_bytes)
    return vmep__ep_bad_arg(call, "x overlaps the zero-copy buffer of the "
                                  "handle's parity without being it: pass "
                                  "the buffer itself, or other memory");
  return VMEP_OK;
}

/* A combine of handle `h` from the caller's memory must not push rows into
 * the slots that hold another handle's outputs for a zero-copy combine. */
static vmep_status check_slots_free(const vmep_ep *ep, const char *call,
                                    const vmep_ep_ht_handle *h) {
  uint64_t held = ep->ht_in_place[h->parity];
  if (held != ep->parity_call[h->parity] || held == h->call)
    return VMEP_OK;
  return vmep__fail(VMEP_ERR_INVALID_ARG, VMEP_LOG_ERROR,
                    "%s: the slots of the handle's parity hold the expert "
                    "outputs of dispatch %llu for a zero-copy combine "
                    "(vmep_ep_ht_combine_buffer): combine that first",
                    call, (unsigned long long)held);
}

vmep_status vmep_ep_ht_combine(vmep_ep *ep, const vmep_ep_ht_combine_args *args,
                               const vmep_ep_ht_handle *h, void *stream) {
  const char *call = "vmep_ep_ht_combine";
  vmep_ep_ht_combine_args a;
  vmep_status status = check_ep(ep, call);
  if (status == VMEP_OK)
    status = check_handle(ep, h, call, "handle");
  if (status != VMEP_OK)
    return status;
  vmep_ep_ht_combine_args_init(&a);
  status = vmep__ep_struct_read(call, "vmep_ep_ht_combine_args", args,
                                sizeof(a), sizeof(a), &a);
  if (status == VMEP_OK)
    status = check_combine(ep, &a, h);
  int in_place = status == VMEP_OK && a.x == in_place_buffer(ep, h->parity);
  if (status == VMEP_OK)
    status = in_place ? check_in_place(ep, call, h)
                      : check_outside_slots(ep, call, h, a.x);
  if (status == VMEP_OK && !in_place)
    status = check_slots_free(ep, call, h);
  if (status != VMEP_OK)
    return status;
  struct vmep_ht_combine_io io = {
      a.x,         in_place,    a.topk_weights,    h->num_recv,
      h->recv_src, h->capacity, h->num_tokens,     a.bias0,
      a.bias1,     a.out,       a.out_topk_weights};
  struct vmep_ll_params p;
  vmep__ep_params(ep, h->parity, h->num_topk, &p);
  status = vmep__ep_device_enter(&ep->dev);
  if (status != VMEP_OK)
    return status;
  status = vmep__ht_combine(&p, &io, stream);
  vmep__ep_device_leave(&ep->dev);
  if (status == VMEP_OK && ep->ht_in_place[h->parity] == h->call)
    ep->ht_in_place[h->parity] = 0;
  return status;
}
