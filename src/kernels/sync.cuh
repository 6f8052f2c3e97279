/*
 * Device-side signalling shared by the dispatch and combine kernels: flags
 * are uint64 epochs stored with release and read with acquire semantics at
 * system scope (peers are other processes, possibly other GPUs), waits are
 * bounded by the global nanosecond timer (SM clocks differ between SMs and
 * a preempted block may resume elsewhere), and a rank that does not signal
 * in time is masked instead of hanging the kernel.
 */
#ifndef VMEP_KERNELS_SYNC_CUH
#define VMEP_KERNELS_SYNC_CUH

#include "kernels/kernels.h"

__device__ __forceinline__ uint64_t ll_load_acquire(const uint64_t *p) {
  uint64_t v;
  asm volatile("ld.acquire.sys.global.u64 %0, [%1];"
               : "=l"(v)
               : "l"(p)
               : "memory");
  return v;
}

__device__ __forceinline__ void ll_store_release(uint64_t *p, uint64_t v) {
  asm volatile("st.release.sys.global.u64 [%0], %1;" ::"l"(p), "l"(v)
               : "memory");
}

__device__ __forceinline__ long long ll_now_ns(void) {
  unsigned long long t;
  asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));
  return (long long)t;
}

__device__ __forceinline__ int ll_is_masked(const struct vmep_ll_state *st,
                                            int rank) {
  return *(volatile const int *)&st->masked[rank];
}

/* Masks `rank` after a timeout (idempotent across threads and blocks);
 * with remote peers the proxy's copy of the mask too, so that it stops
 * sending the rank combine rows. */
__device__ __forceinline__ void ll_mask_rank(const struct vmep_ll_params &p,
                                             int rank) {
  atomicExch(&p.state->masked[rank], 1);
  atomicOr(&p.state->errors, VMEP_LL_ERR_TIMEOUT);
  if (p.ring)
    *(volatile uint32_t *)&p.ring->masked[rank] = 1;
}

/* Whether `rank` is reached through the proxy (docs/INTERNODE.md). */
__device__ __forceinline__ int ll_remote(const struct vmep_ll_params &p,
                                         int rank) {
  return p.ring && p.inbox[rank] != p.peers[p.rank];
}

/* Where rank `rank`'s own parts (its send areas, its heartbeat) are read:
 * its mapped buffer, or our inbox of it, where the proxy puts them. */
__device__ __forceinline__ char *ll_src(const struct vmep_ll_params &p,
                                        int rank) {
  return ll_remote(p, rank) ? p.inbox[rank] : p.peers[rank];
}

/* Address of rank `rank`'s heartbeat word. */
__device__ __forceinline__ uint64_t *ll_alive(const struct vmep_ll_params &p,
                                              int rank) {
  return (uint64_t *)(ll_src(p, rank) + p.layout.alive);
}

/* Advances our heartbeat; with remote peers it is mirrored in the staging
 * area too, which the proxy forwards. */
__device__ __forceinline__ void ll_beat(const struct vmep_ll_params &p) {
  unsigned long long v =
      atomicAdd_system((unsigned long long *)ll_alive(p, p.rank), 1ull) + 1;
  if (p.stage)
    *(volatile unsigned long long *)(p.stage + p.layout.alive) = v;
}

/*
 * Waits until *flag >= target. Returns 1 when it got there, 0 when `rank`
 * is (or has just been) masked. A rank is masked only after it showed no
 * sign of life for timeout_ns from `start` (the moment the wait for every
 * peer began, so that a thread that waits for several peers in turn gives
 * all of them one timeout together, not one each): while waiting, a rank
 * advances its own heartbeat every LL_BEAT_SPINS polls, and a waiter whose
 * deadline passes extends it (at most LL_MAX_EXTENSIONS times) when the awaited
 * rank's heartbeat moved. So a rank that is itself held up by a dead peer is
 * not taken for dead by the ranks that wait for it. One thread.
 */
#define LL_BEAT_SPINS 1024
/* Ranks that all wait for a flag nobody will raise would keep each other
 * alive forever: a wait ends after this many extensions regardless. */
#define LL_MAX_EXTENSIONS 3
/* The least time a wait gives a rank before its deadline, however late
 * it starts: several heartbeats of a rank that is itself waiting. */
#define LL_BEAT_GRACE_NS 10000000ll
__device__ __forceinline__ int ll_wait_flag(const struct vmep_ll_params &p,
                                            const uint64_t *flag,
                                            uint64_t target, int rank,
                                            long long start) {
  struct vmep_ll_state *st = p.state;
  if (ll_is_masked(st, rank))
    return 0;
  if (ll_load_acquire(flag) >= target)
    return 1;
  const uint64_t *alive = ll_alive(p, rank);
  uint64_t seen = ll_load_acquire(alive);
  /* A wait that begins after others of its thread may already be overdue:
   * give the awaited rank one heartbeat window to show it lives. */
  long long deadline = start + p.timeout_ns;
  if (deadline < ll_now_ns() + LL_BEAT_GRACE_NS)
    deadline = ll_now_ns() + LL_BEAT_GRACE_NS;
  unsigned spins = 0, extensions = 0;
  while (ll_load_acquire(flag) < target) {
    if (ll_is_masked(st, rank))
      return 0;
    if (++spins % LL_BEAT_SPINS == 0)
      ll_beat(p);
    long long now = ll_now_ns();
    if (now > deadline) {
      uint64_t beat_now = ll_load_acquire(alive);
      if (beat_now != seen && extensions++ < LL_MAX_EXTENSIONS) {
        seen = beat_now;
        deadline = now + p.timeout_ns;
        continue;
      }
      ll_mask_rank(p, rank);
      return 0;
    }
  }
  return 1;
}

/* Address of flag [parity][peer] at `offset` in the buffer at `base`. */
__device__ __forceinline__ uint64_t *
ll_flag(char *base, size_t offset, int parity, int num_ranks, int peer) {
  return (uint64_t *)(base + offset) + (size_t)parity * num_ranks + peer;
}

/*
 * Called by every block when its part of a kernel is done: makes the
 * block's writes visible system-wide and counts it in done[slot]. Returns
 * nonzero in exactly one block, the last, after resetting the counter for
 * the next launch. All threads of the block must call it.
 */
__device__ __forceinline__ int ll_last_block(struct vmep_ll_state *st,
                                             int slot) {
  __shared__ int last;
  __syncthreads();
  if (threadIdx.x == 0) {
    __threadfence_system();
    unsigned int prev = atomicAdd(&st->done[slot], 1u);
    last = prev == gridDim.x - 1;
    if (last) {
      st->done[slot] = 0;
      __threadfence();
    }
  }
  __syncthreads();
  return last;
}

/*
 * Hands the proxy one request (one thread): reserves a ring slot once one
 * is free, at most the timeout (a proxy that took nothing for that long is
 * stuck, and its peers mask this rank anyway: the request is then dropped
 * with VMEP_LL_ERR_TIMEOUT, and no slot was taken, so the proxy goes on
 * with the next), writes the entry and publishes it. The caller made the
 * bytes the request names visible system-wide first (ll_last_block does).
 */
__device__ __forceinline__ void ll_post(const struct vmep_ll_params &p,
                                        enum vmep_ll_ship op, size_t offset,
                                        uint64_t epoch, unsigned row_len) {
  long long deadline = ll_now_ns() + p.timeout_ns;
  unsigned long long slot = *(volatile unsigned long long *)&p.state->ring_head;
  for (;;) {
    if (slot - ll_load_acquire(&p.ring->tail) >= VMEP_LL_RING_SLOTS) {
      if (ll_now_ns() > deadline) {
        atomicOr(&p.state->errors, VMEP_LL_ERR_TIMEOUT);
        return;
      }
      slot = *(volatile unsigned long long *)&p.state->ring_head;
      continue;
    }
    unsigned long long seen = atomicCAS(&p.state->ring_head, slot, slot + 1);
    if (seen == slot)
      break;
    slot = seen;
  }
  volatile struct vmep_ll_ring_entry *e =
      &p.ring->entries[slot % VMEP_LL_RING_SLOTS];
  e->op = (uint32_t)op;
  e->parity = (uint32_t)p.parity;
  e->num_topk = (uint32_t)p.num_topk;
  e->row_len = row_len;
  e->offset = offset;
  e->value = epoch;
  ll_store_release((uint64_t *)&e->seq, slot + 1);
}

/* Raises flag [parity][rank] at `offset` to `epoch` in every mapped peer's
 * buffer, one thread per peer, and hands the proxy request `op` for the
 * remote ones (`row_len`: VMEP_LL_SHIP_DISPATCH's row bytes). A masked
 * peer that is still mapped gets its flags too: nobody waits for them
 * while it is masked, and after vmep_ep_clear_mask its epochs and ours are
 * in step again (a window stays mapped until its rank is disconnected,
 * and an unmapped one is NULL). All threads of the last block call it. */
__device__ __forceinline__ void ll_signal_all(const struct vmep_ll_params &p,
                                              size_t offset, uint64_t epoch,
                                              enum vmep_ll_ship op,
                                              unsigned row_len) {
  for (int peer = threadIdx.x; peer < p.num_ranks; peer += blockDim.x)
    if (p.peers[peer] && !ll_remote(p, peer))
      ll_store_release(
          ll_flag(p.peers[peer], offset, p.parity, p.num_ranks, p.rank), epoch);
  if (p.ring && threadIdx.x == 0)
    ll_post(p, op, offset, epoch, row_len);
}

/* The end of a receive phase (the last block of the kernel of done-slot
 * `slot`): acknowledges every peer at flag offset `ack` and makes `epoch`
 * this rank's count of the phase (*counter). All threads call it. */
__device__ __forceinline__ void ll_acknowledge(const struct vmep_ll_params &p,
                                               int slot, size_t ack,
                                               uint64_t epoch,
                                               uint64_t *counter) {
  if (!ll_last_block(p.state, slot))
    return;
  ll_signal_all(p, ack, epoch, VMEP_LL_SHIP_FLAG, 0);
  if (threadIdx.x == 0)
    *counter = epoch;
}

/*
 * Waits until flag [parity][peer] (in our own buffer, or in our inbox of a
 * remote peer) reaches `target` for
 * the peers first, first + stride, ..., one thread per peer, all from one
 * start: k dead peers cost one timeout, not k, and a rank held up by them
 * is not held so long that its own waiters mask it. With wait_ns (else
 * NULL), adds to wait_ns[peer] the nanoseconds from the start until that
 * peer's flag was seen, so each rank is charged its own lateness. All
 * threads of the block call it.
 */
__device__ __forceinline__ void ll_wait_peers(const struct vmep_ll_params &p,
                                              size_t offset, uint64_t target,
                                              int first, int stride,
                                              int64_t *wait_ns) {
  long long start = ll_now_ns();
  for (int peer = first + (int)threadIdx.x * stride; peer < p.num_ranks;
       peer += (int)blockDim.x * stride) {
    ll_wait_flag(p, ll_flag(p.inbox[peer], offset, p.parity, p.num_ranks, peer),
                 target, peer, start);
    if (wait_ns)
      atomicAdd((unsigned long long *)&wait_ns[peer],
                (unsigned long long)(ll_now_ns() - start));
  }
  __syncthreads();
}

/* The block waits until each live peer's flag [parity][peer] in our own
 * buffer reaches `target` (ll_wait_peers over every peer). */
__device__ __forceinline__ void ll_wait_all(const struct vmep_ll_params &p,
                                            size_t offset, uint64_t target,
                                            int64_t *wait_ns) {
  ll_wait_peers(p, offset, target, 0, 1, wait_ns);
}

#endif /* VMEP_KERNELS_SYNC_CUH */
