/*
 * The proxy of an EP buffer with remote peers (docs/INTERNODE.md): the
 * kernels write what remote peers must receive into host memory and post
 * one request per phase into a ring; the proxy turns each request into
 * engine puts, then the phase's flag, toward every remote peer. Bytes follow
 * the kernels' rule: a dispatched row goes once to each rank that selected
 * one of its experts, a combined row once per (token, k) to its source
 * (high-throughput: once per (token, rank), with its weights and mark).
 * Plain host code over the engine, so CPU tests drive it with real UCX
 * between processes, playing the kernels' part.
 */
#include <stdint.h>
#include <string.h>
#include <time.h>

#include "ep/ep.h"

#define RECORD_MAGIC 0x52504d56u /* "VMPR" */
#define RECORD_VERSION 1u
#define BEAT_EVERY_NS 100000ull

/* What every rank tells every other, before the engine's blobs. */
struct record_head {
  uint32_t magic, version, rank, num_ranks;
  uint32_t addr_len, key_len;
  uint64_t image;
  struct vmep_ll_rank_set remote;
};

static vmep_status signal(struct vmep_ep_proxy *px, int r, size_t offset,
                          uint64_t value);

/* The position of `r` among the ranks of `set` (those below it). */
static int index_in(const struct vmep_ll_rank_set *set, int r) {
  int n = 0;
  for (int q = 0; q < r; q++)
    n += vmep__rank_set_has(set, q);
  return n;
}

static int set_count(const struct vmep_ll_rank_set *set, int num_ranks) {
  return index_in(set, num_ranks);
}

size_t vmep__ep_proxy_image(const struct vmep_ll_layout *layout) {
  return layout->zero_copy[0] ? layout->zero_copy[0] : layout->total;
}

/* An inbox holds the flags, the heartbeat and the send areas (all before
 * the slots); an outbox the rest of the image: the slots, and the
 * high-throughput combine's marks and weights that go with them. */
static size_t inbox_bytes(const struct vmep_ll_layout *layout) {
  return layout->slots[0];
}

static size_t outbox_bytes(const struct vmep_ll_layout *layout) {
  return vmep__ep_proxy_image(layout) - layout->slots[0];
}

size_t vmep__ep_proxy_host_bytes(const struct vmep_ll_layout *layout,
                                 int num_remote) {
  return vmep__ep_proxy_image(layout) +
         (inbox_bytes(layout) + outbox_bytes(layout)) * (size_t)num_remote +
         sizeof(struct vmep_ll_ring);
}

void vmep__ep_proxy_init(struct vmep_ep_proxy *px, vmep_engine *engine,
                         const vmep_ep_config *config, int rank, int num_ranks,
                         const struct vmep_ll_rank_set *remote, char *host) {
  memset(px, 0, sizeof(*px));
  px->engine = engine;
  px->rank = rank;
  px->num_ranks = num_ranks;
  px->local_experts = config->num_experts / num_ranks;
  px->hidden = config->hidden;
  px->max_tokens = config->max_tokens_per_rank;
  vmep__ep_layout(config, num_ranks, &px->layout);
  px->image = vmep__ep_proxy_image(&px->layout);
  px->remote = *remote;
  int n = set_count(remote, num_ranks);
  const size_t in = inbox_bytes(&px->layout), out = outbox_bytes(&px->layout);
  px->stage = host;
  for (int r = 0; r < num_ranks; r++) {
    if (!vmep__rank_set_has(remote, r))
      continue;
    int i = index_in(remote, r);
    px->inbox[r] = host + px->image + in * (size_t)i;
    px->outbox[r] = host + px->image + in * (size_t)n + out * (size_t)i;
  }
  px->ring = (struct vmep_ll_ring *)(host + px->image + (in + out) * (size_t)n);
}

vmep_status vmep__ep_proxy_record(const struct vmep_ep_proxy *px,
                                  const vmep_engine_mr *mr, void **record_out,
                                  size_t *len_out) {
  const void *addr;
  size_t addr_len = 0, key_len = 0;
  vmep_status status = vmep__engine_address(px->engine, &addr, &addr_len);
  if (status != VMEP_OK)
    return status;
  const void *key = vmep__engine_mr_blob(mr, &key_len);
  struct record_head head = {RECORD_MAGIC,       RECORD_VERSION,
                             (uint32_t)px->rank, (uint32_t)px->num_ranks,
                             (uint32_t)addr_len, (uint32_t)key_len,
                             px->image,          px->remote};
  size_t len = sizeof(head) + addr_len + key_len;
  char *record = vmep__malloc(len);
  if (!record)
    return vmep__fail(VMEP_ERR_OUT_OF_MEMORY, VMEP_LOG_ERROR,
                      "vmep_ep_create: host allocation failed");
  memcpy(record, &head, sizeof(head));
  memcpy(record + sizeof(head), addr, addr_len);
  memcpy(record + sizeof(head) + addr_len, key, key_len);
  *record_out = record;
  *len_out = len;
  return VMEP_OK;
}

static vmep_status bad_record(int r, const char *why) {
  return vmep__fail(VMEP_ERR_INVALID_ARG, VMEP_LOG_ERROR,
                    "vmep_ep_create: rank %d's inter-node record: %s", r, why);
}

/* Checks rank r's record (len bytes at rec) against ours; *head_out is a
 * copy of its head. */
static vmep_status check_record(const struct vmep_ep_proxy *px, int r,
                                const char *rec, size_t len,
                                struct record_head *head_out) {
  if (len < sizeof(*head_out))
    return bad_record(r, "cut short");
  memcpy(head_out, rec, sizeof(*head_out));
  const struct record_head *h = head_out;
  if (h->magic != RECORD_MAGIC || h->version != RECORD_VERSION)
    return bad_record(r, "not a record of this vmep version");
  if (h->rank != (uint32_t)r || h->num_ranks != (uint32_t)px->num_ranks)
    return bad_record(r, "of another rank or group size");
  if (len != sizeof(*h) + (size_t)h->addr_len + h->key_len)
    return bad_record(r, "its length disagrees with its blobs");
  if (h->image != px->image)
    return bad_record(r, "its buffer has another shape");
  if (vmep__rank_set_has(&h->remote, px->rank) !=
      vmep__rank_set_has(&px->remote, r))
    return bad_record(r, "it disagrees on whether we are in one node");
  return VMEP_OK;
}

vmep_status vmep__ep_proxy_connect_one(struct vmep_ep_proxy *px, int r,
                                       const void *record, size_t len) {
  struct record_head h;
  vmep_status status = check_record(px, r, record, len, &h);
  if (status == VMEP_OK && !vmep__rank_set_has(&px->remote, r))
    status = bad_record(r, "this buffer has no room for it as a remote peer");
  if (status != VMEP_OK)
    return status;
  const char *addr = (const char *)record + sizeof(h), *key = addr + h.addr_len;
  vmep_engine_rkey *rkey = NULL;
  status = vmep__engine_connect(px->engine, r, addr, h.addr_len);
  if (status == VMEP_OK)
    status = vmep__engine_rkey_unpack(px->engine, r, key, h.key_len, &rkey);
  if (status != VMEP_OK) {
    vmep__engine_disconnect(px->engine, r);
    return status;
  }
  /* Rank r's block starts with its stage, then its inboxes in rank order:
   * ours is at our place among its remote peers. */
  px->peer_stage[r] = vmep__engine_rkey_base(rkey);
  px->peer_inbox[r] =
      px->peer_stage[r] + px->image +
      inbox_bytes(&px->layout) * (uint64_t)index_in(&h.remote, px->rank);
  px->reported[r] = 0;
  px->keys[r] = rkey;
  return VMEP_OK;
}

vmep_status vmep__ep_proxy_connect(struct vmep_ep_proxy *px, const void *all,
                                   const size_t *sizes, int count,
                                   const struct vmep_ll_rank_set *which) {
  const char *rec = all;
  vmep_status status = VMEP_OK;
  for (int r = 0; r < count && status == VMEP_OK; rec += sizes[r], r++) {
    struct record_head h;
    status = check_record(px, r, rec, sizes[r], &h);
    if (status == VMEP_OK && vmep__rank_set_has(which, r))
      status = vmep__ep_proxy_connect_one(px, r, rec, sizes[r]);
  }
  return status;
}

void vmep__ep_proxy_forget(struct vmep_ep_proxy *px, int r) {
  px->keys[r] = NULL;
  vmep__engine_disconnect(px->engine, r);
}

vmep_status vmep__ep_proxy_raise(struct vmep_ep_proxy *px, int r,
                                 const size_t *offsets, int n, uint64_t value) {
  if (!px->keys[r])
    return VMEP_OK;
  vmep_status status = VMEP_OK;
  for (int i = 0; i < n && status == VMEP_OK; i++)
    for (int b = 0; b < 2 && status == VMEP_OK; b++)
      status = signal(
          px, r,
          offsets[i] + ((size_t)b * (size_t)px->num_ranks + (size_t)px->rank) *
                           sizeof(uint64_t),
          value);
  return status == VMEP_OK ? vmep__engine_flush(px->engine, r, 0) : status;
}

/* ---- serving requests ---------------------------------------------------- */

static uint64_t now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

/* Counts `bytes` put when the engine took them (a refused put is not). */
static vmep_status counted(struct vmep_ep_proxy *px, vmep_status status,
                           size_t bytes) {
  if (status == VMEP_OK)
    __atomic_fetch_add(&px->bytes_out, bytes, __ATOMIC_RELAXED);
  return status;
}

/* Puts [src, +bytes) at rank r's address raddr (in its registration). */
static vmep_status put_at(struct vmep_ep_proxy *px, int r, const char *src,
                          uint64_t raddr, size_t bytes) {
  return counted(
      px, vmep__engine_put(px->engine, r, src, bytes, px->keys[r], raddr),
      bytes);
}

/* Puts [src, +bytes) into rank r's inbox of us at `offset`. */
static vmep_status put(struct vmep_ep_proxy *px, int r, const char *src,
                       size_t offset, size_t bytes) {
  return put_at(px, r, src, px->peer_inbox[r] + offset, bytes);
}

/* Sets the 8-byte word at `offset` of rank r's inbox of us to `value`,
 * after everything put before it. */
static vmep_status signal(struct vmep_ep_proxy *px, int r, size_t offset,
                          uint64_t value) {
  return counted(px,
                 vmep__engine_put_signal(
                     px->engine, r, NULL, 0, px->keys[r], 0, px->keys[r],
                     px->peer_inbox[r] + offset, VMEP_ENGINE_SIGNAL_SET, value),
                 sizeof(uint64_t));
}

/* The token count of a send area, within the buffer's bounds. */
static int area_tokens(const struct vmep_ep_proxy *px, const char *area) {
  int n = *(const volatile int *)area;
  return n < 0 ? 0 : n > px->max_tokens ? px->max_tokens : n;
}

static int selects(const struct vmep_ep_proxy *px, const int32_t *topk, int K,
                   int t, int rank) {
  const int first = rank * px->local_experts;
  for (int k = 0; k < K; k++)
    if (topk[t * K + k] >= first && topk[t * K + k] < first + px->local_experts)
      return 1;
  return 0;
}

/* Rows [t0, t1) of our staged send area of parity b to rank r: one put
 * when rows are whole, else one per row of row_len bytes. */
static vmep_status put_rows(struct vmep_ep_proxy *px, int r, int b, int t0,
                            int t1, size_t row_len) {
  const struct vmep_ll_layout *l = &px->layout;
  size_t at = l->send[b] + l->send_rows + (size_t)t0 * l->row_bytes;
  if (row_len == l->row_bytes)
    return put(px, r, px->stage + at, at, (size_t)(t1 - t0) * row_len);
  vmep_status status = VMEP_OK;
  for (int t = t0; t < t1 && status == VMEP_OK; t++, at += l->row_bytes)
    status = put(px, r, px->stage + at, at, row_len);
  return status;
}

/* The bytes of each staged row that request `e` ships. */
static size_t ship_row_len(const struct vmep_ep_proxy *px,
                           const struct vmep_ll_ring_entry *e) {
  return e->row_len > px->layout.row_bytes ? px->layout.row_bytes : e->row_len;
}

/* Dispatch: the header and expert ids (and the weights when the request
 * says), then each row rank r selected, runs of consecutive tokens in one
 * put. */
static vmep_status ship_dispatch(struct vmep_ep_proxy *px, int r,
                                 const struct vmep_ll_ring_entry *e) {
  const struct vmep_ll_layout *l = &px->layout;
  const int b = (int)e->parity, K = (int)e->num_topk;
  const char *area = px->stage + l->send[b];
  const int n = area_tokens(px, area);
  const int32_t *topk = (const int32_t *)(area + l->send_topk);
  vmep_status status =
      put(px, r, area, l->send[b], l->send_topk + (size_t)n * K * 4);
  if (status == VMEP_OK && e->op == VMEP_LL_SHIP_DISPATCH_WEIGHTS && n > 0)
    status = put(px, r, area + l->send_weights, l->send[b] + l->send_weights,
                 (size_t)n * K * 4);
  int run = -1;
  for (int t = 0; t <= n && status == VMEP_OK; t++) {
    int want = t < n && selects(px, topk, K, t, r);
    if (want && run < 0)
      run = t;
    if (!want && run >= 0) {
      status = put_rows(px, r, b, run, t, ship_row_len(px, e));
      run = -1;
    }
  }
  return status;
}

/* A cached high-throughput dispatch: the header and every staged row. The
 * staged expert ids are an earlier call's (a cached dispatch gets none), so
 * which ranks take which row is not known here. */
static vmep_status ship_cached(struct vmep_ep_proxy *px, int r,
                               const struct vmep_ll_ring_entry *e) {
  const struct vmep_ll_layout *l = &px->layout;
  const int b = (int)e->parity;
  const char *area = px->stage + l->send[b];
  const int n = area_tokens(px, area);
  vmep_status status = put(px, r, area, l->send[b], l->send_topk);
  if (status == VMEP_OK && n > 0)
    status = put_rows(px, r, b, 0, n, ship_row_len(px, e));
  return status;
}

/* [offset, +bytes) of the layout from our outbox of rank r into r's
 * stage: every slot of r's tokens has one expert rank, so all of r's
 * remote peers share those areas of its stage. */
static vmep_status put_outbox(struct vmep_ep_proxy *px, int r, size_t offset,
                              size_t bytes) {
  return put_at(px, r, px->outbox[r] + (offset - px->layout.slots[0]),
                px->peer_stage[r] + offset, bytes);
}

/* Low-latency slots [i0, i1) of parity b that our experts filled for rank
 * r: one put when slots are whole, else one per slot of len bytes (LogFMT
 * rows fill 41 H / 32 bytes of a 2 H slot). */
static vmep_status put_ll_slots(struct vmep_ep_proxy *px, int r, int b, int i0,
                                int i1, size_t len) {
  const size_t row = 2 * (size_t)px->hidden;
  size_t at = px->layout.slots[b] + (size_t)i0 * row;
  if (len == row)
    return put_outbox(px, r, at, (size_t)(i1 - i0) * row);
  vmep_status status = VMEP_OK;
  for (int i = i0; i < i1 && status == VMEP_OK; i++, at += row)
    status = put_outbox(px, r, at, len);
  return status;
}

/* Whether slot i = t * K + k of a combine carries a row of ours: its
 * expert is ours (reduced: and it is the token's first such slot). */
static int ours(const struct vmep_ep_proxy *px, const int32_t *topk, int K,
                int i, int reduced) {
  const int first = px->rank * px->local_experts;
  for (int j = reduced ? i - i % K : i; j <= i; j++)
    if (topk[j] >= first && topk[j] < first + px->local_experts)
      return j == i;
  return 0;
}

/* Combine: every slot [t][k] of rank r's tokens that our experts filled
 * (from r's expert ids in our inbox of it; reduced at the expert side when
 * its header says it staged weights), runs of consecutive slots, into the
 * slots of r's stage. */
static vmep_status ship_combine(struct vmep_ep_proxy *px, int r,
                                const struct vmep_ll_ring_entry *e) {
  const struct vmep_ll_layout *l = &px->layout;
  const int b = (int)e->parity, K = (int)e->num_topk;
  const char *area = px->inbox[r] + l->send[b];
  const int n = area_tokens(px, area);
  const int32_t *topk = (const int32_t *)(area + l->send_topk);
  const int reduced = ((const volatile int *)area)[1];
  const size_t row = 2 * (size_t)px->hidden;
  size_t len = e->row_len && e->row_len < row ? e->row_len : row;
  vmep_status status = VMEP_OK;
  int run = -1;
  for (int i = 0; i <= n * K && status == VMEP_OK; i++) {
    int want = i < n * K && ours(px, topk, K, i, reduced);
    if (want && run < 0)
      run = i;
    if (!want && run >= 0) {
      status = put_ll_slots(px, r, b, run, i, len);
      run = -1;
    }
  }
  return status;
}

/* High-throughput slots [i0, i1) of parity b (K per token): rows, weights,
 * marks. */
static vmep_status put_ht_slots(struct vmep_ep_proxy *px, int r, int b,
                                size_t K, size_t i0, size_t i1) {
  const struct vmep_ll_layout *l = &px->layout;
  const size_t row = 2 * (size_t)px->hidden, n = i1 - i0;
  vmep_status status = put_outbox(px, r, l->slots[b] + i0 * row, n * row);
  if (status == VMEP_OK)
    status = put_outbox(px, r, l->ht_weights[b] + i0 * K * sizeof(float),
                        n * K * sizeof(float));
  if (status == VMEP_OK)
    status = put_outbox(px, r, l->ht_mark[b] + i0 * sizeof(uint64_t),
                        n * sizeof(uint64_t));
  return status;
}

/* High-throughput combine: every slot of rank r's tokens that our experts
 * filled in this call, known by its mark in our outbox of r (the request's
 * epoch; the records of which rows came from r stay on the device), runs
 * of consecutive slots in one put per part. Rows never stay in place
 * across nodes, so the row indices do not travel. */
static vmep_status ship_ht_combine(struct vmep_ep_proxy *px, int r,
                                   const struct vmep_ll_ring_entry *e) {
  const struct vmep_ll_layout *l = &px->layout;
  const int b = (int)e->parity;
  const size_t K = e->num_topk, slots = (size_t)px->max_tokens * K;
  const uint64_t *marks =
      (const uint64_t *)(px->outbox[r] + (l->ht_mark[b] - l->slots[0]));
  vmep_status status = VMEP_OK;
  size_t run = SIZE_MAX;
  for (size_t i = 0; i <= slots && status == VMEP_OK; i++) {
    int want = i < slots && __atomic_load_n(&marks[i], __ATOMIC_RELAXED) >>
                                    VMEP_HT_MARK_EPOCH_SHIFT ==
                                e->value;
    if (want && run == SIZE_MAX)
      run = i;
    if (!want && run != SIZE_MAX) {
      status = put_ht_slots(px, r, b, K, run, i);
      run = SIZE_MAX;
    }
  }
  return status;
}

/* Logs rank r's first failure and `why`: later requests skip it. */
static void report(struct vmep_ep_proxy *px, int r, const char *why) {
  if (px->reported[r])
    return;
  px->reported[r] = 1;
  vmep_log_warn("inter-node proxy: rank %d is unreachable (%s); its peers "
                "mask it after their timeout",
                r, why);
}

/* Whether rank r is a remote peer we can put to (masked or not). */
static int reachable(struct vmep_ep_proxy *px, int r) {
  if (!vmep__rank_set_has(&px->remote, r) || !px->keys[r])
    return 0;
  const char *why = vmep__engine_peer_failure(px->engine, r);
  if (why) {
    /* The engine found it while progressing; our last error, if any, is
     * about something else. */
    report(px, r, why);
    return 0;
  }
  return 1;
}

/* The bytes request `e` sends rank r before its flag. */
static vmep_status ship(struct vmep_ep_proxy *px, int r,
                        const struct vmep_ll_ring_entry *e) {
  switch (e->op) {
  case VMEP_LL_SHIP_DISPATCH:
  case VMEP_LL_SHIP_DISPATCH_WEIGHTS:
    return ship_dispatch(px, r, e);
  case VMEP_LL_SHIP_HT_CACHED:
    return ship_cached(px, r, e);
  case VMEP_LL_SHIP_COMBINE:
    return ship_combine(px, r, e);
  case VMEP_LL_SHIP_HT_COMBINE:
    return ship_ht_combine(px, r, e);
  default: /* VMEP_LL_SHIP_FLAG */
    return VMEP_OK;
  }
}

static void serve(struct vmep_ep_proxy *px,
                  const struct vmep_ll_ring_entry *e) {
  const size_t flag =
      e->offset +
      ((size_t)e->parity * (size_t)px->num_ranks + px->rank) * sizeof(uint64_t);
  /* A masked rank gets what a mapped one would: our send area, which it
   * pulls whatever our mask says, no combine rows (the kernels push none
   * to a masked source), and every flag, so that its epochs stay in step
   * for the calls after its mask is cleared. */
  const int rows =
      e->op == VMEP_LL_SHIP_COMBINE || e->op == VMEP_LL_SHIP_HT_COMBINE;
  for (int r = 0; r < px->num_ranks; r++) {
    if (!reachable(px, r))
      continue;
    vmep_status status =
        rows && __atomic_load_n(&px->ring->masked[r], __ATOMIC_ACQUIRE)
            ? VMEP_OK
            : ship(px, r, e);
    if (status == VMEP_OK)
      status = signal(px, r, flag, e->value);
    if (status != VMEP_OK)
      report(px, r, vmep_last_error());
  }
}

/* Forwards our heartbeat when it moved, at most every BEAT_EVERY_NS. */
static void forward_beat(struct vmep_ep_proxy *px) {
  uint64_t beat = __atomic_load_n((uint64_t *)(px->stage + px->layout.alive),
                                  __ATOMIC_ACQUIRE);
  if (beat == px->beat)
    return;
  uint64_t now = now_ns();
  if (now - px->beat_at_ns < BEAT_EVERY_NS)
    return;
  px->beat = beat;
  px->beat_at_ns = now;
  for (int r = 0; r < px->num_ranks; r++)
    if (reachable(px, r) && signal(px, r, px->layout.alive, beat) != VMEP_OK)
      report(px, r, vmep_last_error());
}

int vmep__ep_proxy_step(struct vmep_ep_proxy *px) {
  int served = 0;
  for (;;) {
    struct vmep_ll_ring_entry *e =
        &px->ring->entries[px->tail % VMEP_LL_RING_SLOTS];
    if (__atomic_load_n(&e->seq, __ATOMIC_ACQUIRE) != px->tail + 1)
      break;
    struct vmep_ll_ring_entry copy = *e;
    px->tail++;
    /* The slot is free again once copied. */
    __atomic_store_n(&px->ring->tail, px->tail, __ATOMIC_RELEASE);
    serve(px, &copy);
    served++;
  }
  forward_beat(px);
  vmep__engine_progress(px->engine);
  return served;
}
