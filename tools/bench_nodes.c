/*
 * vmep-bench across nodes (pretend nodes from vmep-run --nodes, or real
 * ones): which node each rank is in, the count of bytes the buffer's proxy
 * put (read once it stands still), and, after the timed vmep calls, the
 * byte split by node with the engine ceiling of the same inter-node bytes
 * between the same ranks (bench_engine.c), through the group.
 */
#include <pthread.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#include "bench.h"
#include "bench_engine.h"
#include "ep/ep.h"

#define SETTLE_NS 2000000ull /* the count stood still this long */
#define SETTLE_MAX_NS 1000000000ull

void bench_nodes_of(vmep_group *g, struct bench_result *r) {
  int R = vmep_group_size(g), nodes = 0;
  r->node = vmep_group_node(g, vmep_group_rank(g));
  /* Nodes are numbered from 0 in rank order: count the distinct ones. */
  for (int q = 0; q < R; q++) {
    int n = vmep_group_node(g, q), first = 1;
    for (int p = 0; p < q && first; p++)
      first = vmep_group_node(g, p) != n;
    nodes += first;
  }
  r->nodes = nodes;
}

static uint64_t now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

uint64_t bench_proxy_bytes(const vmep_ep *ep) {
  const struct timespec nap = {0, 100000};
  uint64_t last = vmep__ep_remote_bytes_out(ep), start = now_ns();
  uint64_t still = start;
  for (;;) {
    nanosleep(&nap, NULL);
    uint64_t bytes = vmep__ep_remote_bytes_out(ep), t = now_ns();
    if (bytes != last) {
      last = bytes;
      still = t;
    } else if (t - still >= SETTLE_NS || t - start >= SETTLE_MAX_NS) {
      return last;
    }
  }
}

/* One vmep_group_allgatherv, on a thread of its own, and its error
 * message (the last error is per thread). */
struct gather {
  vmep_group *g;
  const void *send;
  size_t bytes, capacity;
  void *recv;
  size_t *sizes;
  vmep_status status;
  char error[256];
  int done;
};

static void *gather_thread(void *arg) {
  struct gather *c = arg;
  c->status = vmep_group_allgatherv(c->g, c->send, c->bytes, c->recv,
                                    c->capacity, c->sizes);
  if (c->status != VMEP_OK)
    snprintf(c->error, sizeof(c->error), "%s", vmep_last_error());
  __atomic_store_n(&c->done, 1, __ATOMIC_RELEASE);
  return NULL;
}

/* The ceiling's exchange over the group, progressing the engine until it
 * returns: over transports that emulate RMA (UCX's TCP) a put or flush of
 * a peer completes only while we progress, and a peer's flush before the
 * barrier may still wait for us. Without a thread, the exchange alone. */
static vmep_status group_allgatherv(void *ctx, vmep_engine *engine,
                                    const void *send, size_t bytes, void *recv,
                                    size_t capacity, size_t *sizes) {
  struct gather c = {ctx, send, bytes, capacity, recv, sizes, VMEP_OK, "", 0};
  pthread_t thread;
  if (!engine || pthread_create(&thread, NULL, gather_thread, &c) != 0)
    return vmep_group_allgatherv(ctx, send, bytes, recv, capacity, sizes);
  while (!__atomic_load_n(&c.done, __ATOMIC_ACQUIRE)) {
    vmep__engine_progress(engine);
    sched_yield(); /* pretend nodes: as many ranks as cores, and a store */
  }
  pthread_join(thread, NULL);
  return c.status == VMEP_OK
             ? VMEP_OK
             : vmep__fail(c.status, VMEP_LOG_DEBUG, "%s", c.error);
}

/* The ceiling of `split`'s inter-node bytes (none when `ok` is 0: every
 * rank then fails together): medians into r. */
static vmep_status ceiling(vmep_group *g, const struct bench_options *o,
                           const int *node,
                           const struct bench_node_bytes *split, int ok,
                           struct bench_result *r) {
  struct bench_exchange x = {group_allgatherv, g};
  struct bench_engine_job job = {
      &x, r->rank, vmep_group_size(g), node, o->iters, o->warmup, 0};
  double *us = calloc(2 * (size_t)o->iters, sizeof(double));
  /* Dispatch: what we put to each remote rank; combine: what each remote
   * rank's experts put back to us (the ceiling turns it around). A load
   * without bytes or times fails on this rank, inside the collective. */
  struct bench_engine_load loads[2] = {
      {ok ? split->dispatch_to : NULL, 0, us},
      {ok ? split->combine_from : NULL, 1, us ? us + o->iters : NULL}};
  vmep_status st = bench_engine_ceiling(&job, loads, 2);
  if (st == VMEP_OK) {
    r->engine_dispatch_us = bench_median(us, o->iters);
    r->engine_combine_us = bench_median(us + o->iters, o->iters);
  }
  free(us);
  return st;
}

vmep_status bench_nodes_run(vmep_group *g, const struct bench_options *o,
                            int experts, struct bench_result *r) {
  int R = vmep_group_size(g);
  struct bench_inputs in;
  /* NULL only without memory for R ints: this rank then leaves the
   * collective, and the others fail after the group's timeout. */
  int *node = calloc((size_t)R, sizeof(int));
  struct bench_node_bytes split = {0,
                                   0,
                                   0,
                                   0,
                                   calloc((size_t)R, sizeof(double)),
                                   calloc((size_t)R, sizeof(double))};
  vmep_status st = VMEP_OK;
  if (bench_make_inputs(o, r->rank, r->tokens, experts, &in) != 0 || !node ||
      !split.dispatch_to || !split.combine_from)
    st = VMEP_ERR_OUT_OF_MEMORY;
  for (int q = 0; node && q < R; q++)
    node[q] = vmep_group_node(g, q);
  if (st == VMEP_OK) {
    bench_node_bytes(o, R, experts, r->rank, node, &in, &split);
    r->intra_dispatch_bytes = split.intra_dispatch;
    r->intra_combine_bytes = split.intra_combine;
    r->inter_dispatch_bytes = split.inter_dispatch;
    r->inter_combine_bytes = split.inter_combine;
  }
  bench_free_inputs(&in);
  vmep_status ceil = ceiling(g, o, node, &split, st == VMEP_OK, r);
  free(node);
  free(split.dispatch_to);
  free(split.combine_from);
  return st != VMEP_OK ? st : ceil;
}

vmep_status bench_proxy_per_call(vmep_group *g, const vmep_ep *ep,
                                 const struct bench_options *o, uint64_t before,
                                 struct bench_result *r) {
  /* Once every rank has received all its calls, every proxy has posted
   * all its puts. A rank's own calls may end before its proxy serves
   * their last requests, and a proxy may wait longer than the settling
   * time for a flush before it posts the next rank's puts. */
  vmep_status st = vmep_group_barrier(g);
  if (st == VMEP_OK)
    r->proxy_bytes = (double)(bench_proxy_bytes(ep) - before) /
                     (double)(o->warmup + o->iters);
  return st;
}

vmep_status bench_end_run(vmep_group *g, const struct bench_options *o,
                          vmep_ep *ep, int experts, vmep_status st,
                          struct bench_result *r) {
  vmep_status destroyed = vmep_ep_destroy(ep);
  st = st != VMEP_OK ? st : destroyed;
  if (st == VMEP_OK && r->nodes > 1)
    st = bench_nodes_run(g, o, experts, r);
  return st;
}
