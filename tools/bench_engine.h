/*
 * vmep-bench's inter-node ceiling (bench_engine.c): plain engine puts of
 * the bytes that vmep's proxies move between ranks in different nodes,
 * timed on the host clock. Plain host code over src/net (no CUDA), with
 * the blob exchange behind a callback, so a CPU test drives it between
 * forked processes (tests/unit/test_bench_engine.c) and vmep-bench through
 * its group (bench_nodes.c).
 */
#ifndef VMEP_BENCH_ENGINE_H
#define VMEP_BENCH_ENGINE_H

#include <stddef.h>

#include "net/net.h"
#include "vmep.h"

/* How the ranks exchange blobs: as vmep_group_allgatherv (recv gets every
 * rank's payload concatenated in rank order, sizes[size] their sizes;
 * bytes may be 0, a barrier then), collective. `engine`, when not NULL,
 * must be progressed while the call waits if the exchange can do that
 * (transports that emulate RMA complete a peer's put only when we do);
 * exchanges that cannot ignore it. */
struct bench_exchange {
  vmep_status (*allgatherv)(void *ctx, vmep_engine *engine, const void *send,
                            size_t bytes, void *recv, size_t capacity,
                            size_t *sizes);
  void *ctx;
};

/* The ranks of a ceiling run and its repetitions. */
struct bench_engine_job {
  const struct bench_exchange *x;
  int rank, size;
  const int *node; /* [size]: each rank's node; same node: not timed */
  int iters, warmup;
  int timeout_ms; /* bound of a wait for the peers' signals; <= 0:
                     VMEP_TIMEOUT_MS */
};

/* One load: what crosses between each pair of ranks in different nodes. */
struct bench_engine_load {
  /* [size]: bytes[r] is what this rank puts to rank r, or with `incoming`
   * what rank r puts to this rank (0: only the signal); entries of ranks
   * in our node are ignored. Ranks may differ; each gives its own. */
  const double *bytes;
  int incoming;
  double *us; /* out, [iters]: each timed iteration on this rank in
                 microseconds (0 without remote peers) */
};

/*
 * Collective over job->size ranks: creates an engine (the default
 * transport, UCX), registers one host buffer (a counter word, the source,
 * one landing slot per remote peer), exchanges address and key blobs
 * through job->x, connects to the ranks in other nodes; then per load,
 * after a barrier, job->warmup + job->iters iterations of: one put of the
 * load's bytes to each remote rank (one put per rank of the whole count,
 * not per row), a signal-only put + signal adding 1 to that rank's
 * counter word, and a wait (progressing the engine) until our counter
 * shows every remote peer's signal of this iteration; after the load, a
 * flush toward every peer (so an exchange that cannot progress the engine
 * is safe). loads[i].us gets the time of each timed iteration
 * (CLOCK_MONOTONIC; the caller takes the median, as bench_median does).
 * Ends with a barrier, and releases everything. VMEP_ERR_UNSUPPORTED
 * without UCX, VMEP_ERR_TIMEOUT when a peer's signal does not come within
 * job->timeout_ms, VMEP_ERR_PEER for a failed peer; vmep_last_error()
 * says more. Every rank joins every exchange, failed or not: a load
 * without bytes or times fails on its rank (VMEP_ERR_INVALID_ARG) and on
 * every other (VMEP_ERR_PEER naming it).
 */
vmep_status bench_engine_ceiling(const struct bench_engine_job *job,
                                 struct bench_engine_load *loads, int count);

#endif /* VMEP_BENCH_ENGINE_H */
