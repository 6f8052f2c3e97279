/*
 * vmep-bench's inter-node ceiling: what the RDMA engine alone does with the
 * bytes that vmep's proxies move between nodes. Every rank makes its own
 * engine and one registered host buffer, [counter word][source][one
 * landing slot per remote peer], tells every rank its address, its key and
 * its loads through the exchange callback, connects to the ranks in other
 * nodes, and then, per load and iteration, puts each remote peer its bytes
 * in one put, adds 1 to the peer's counter with a signal-only put + signal
 * (ordered after the put by the engine's fence), and spins on its own
 * counter, progressing the engine, until every remote peer's signal of the
 * iteration has come. Every collective step carries each rank's status, so
 * a rank that failed still joins and all return an error together.
 */
#include <stdint.h>
#include <string.h>
#include <time.h>

#include "bench_engine.h"
#include "core/core.h"

#define RECORD_MAX 16384 /* an engine address + key blob, as remote.c */
#define SLOT_ALIGN 64
/* One signal word per remote peer (room for the group's size on every rank,
 * so that offsets agree): a put sets it to the iteration count, as the
 * proxy sets flags (UCX 1.16 over TCP offers no atomics). */
#define COUNTER_BYTES(ranks)                                                   \
  (((size_t)(ranks)*8 + SLOT_ALIGN - 1) / SLOT_ALIGN * SLOT_ALIGN)

struct ceiling {
  const struct bench_engine_job *job;
  struct bench_engine_load *loads;
  int count;
  double *matrix; /* [size][count][size]: every rank's loads' bytes */
  vmep_engine *engine;
  vmep_engine_mr *mr;
  char *buf; /* [signal words][source: stride][remote slots: stride each] */
  size_t buf_bytes, stride;
  int remote;    /* our peers in other nodes */
  uint64_t seen; /* iterations every signal word should show so far */
  vmep_engine_rkey **keys;
  uint64_t *base; /* [size]: where each remote peer's buffer starts */
};

static int is_remote(const struct ceiling *c, int a, int b) {
  return c->job->node[a] != c->job->node[b];
}

/* The place of `r` among the ranks outside `at`'s node below it: its slot
 * at rank `at`. */
static int slot_of(const struct ceiling *c, int at, int r) {
  int n = 0;
  for (int q = 0; q < r; q++)
    n += is_remote(c, at, q);
  return n;
}

/* What `from` puts to `to` in load l (both ranks see the same matrix). */
static size_t load_bytes(const struct ceiling *c, int l, int from, int to) {
  const int R = c->job->size, count = c->count;
  double b = c->loads[l].incoming
                 ? c->matrix[((size_t)to * count + l) * R + from]
                 : c->matrix[((size_t)from * count + l) * R + to];
  return b > 0 ? (size_t)b : 0;
}

/* ---- the collective steps ------------------------------------------------ */

/* Each frame starts with its rank's status (8 bytes: the payload after it
 * stays aligned). */
typedef int64_t frame_head;

/* What one step gathered: each rank's payload out[r] (lens[r] bytes),
 * pointing into recv. */
struct frames {
  char *recv;
  const char **out;
  size_t *lens;
};

static void frames_free(struct frames *f) {
  vmep__free(f->recv);
  vmep__free(f->out);
  vmep__free(f->lens);
}

/*
 * Allgathers `payload` (len <= capacity bytes; nothing when `status` is
 * not VMEP_OK) behind each rank's status into *f (free it with
 * frames_free either way). Returns our status when it failed, else
 * VMEP_ERR_PEER naming the first rank that could not do `what`, else the
 * exchange's.
 */
static vmep_status collect(struct ceiling *c, vmep_status status,
                           const void *payload, size_t len, size_t capacity,
                           const char *what, struct frames *f) {
  const int R = c->job->size;
  frame_head head = status;
  const size_t cap = (size_t)R * (sizeof(head) + capacity);
  char *send = vmep__malloc(sizeof(head) + len);
  f->recv = vmep__malloc(cap);
  f->out = vmep__calloc((size_t)R, sizeof(char *));
  f->lens = vmep__calloc((size_t)R, sizeof(size_t));
  if (!send || !f->recv || !f->out || !f->lens)
    status = vmep__fail(VMEP_ERR_OUT_OF_MEMORY, VMEP_LOG_ERROR,
                        "engine ceiling: host allocation failed");
  /* A failed rank still joins, with its status alone: a rank left alone
   * in the exchange would wait forever. */
  head = status;
  size_t send_len = sizeof(head);
  if (send) {
    memcpy(send, &head, sizeof(head));
    if (status == VMEP_OK && len)
      memcpy(send + sizeof(head), payload, len);
    send_len += status == VMEP_OK ? len : 0;
  }
  if (!f->lens) { /* no room for the sizes: cannot join (peers time out) */
    vmep__free(send);
    return status;
  }
  vmep_status got = c->job->x->allgatherv(
      c->job->x->ctx, c->engine, send ? (const void *)send : &head, send_len,
      f->recv, f->recv ? cap : 0, f->lens);
  vmep__free(send);
  if (status == VMEP_OK)
    status = got;
  const char *at = f->recv;
  for (int r = 0; status == VMEP_OK && r < R; r++) {
    frame_head h;
    if (f->lens[r] < sizeof(h))
      return vmep__fail(VMEP_ERR_INVALID_ARG, VMEP_LOG_ERROR,
                        "engine ceiling: rank %d's frame is cut short", r);
    memcpy(&h, at, sizeof(h));
    if (h != VMEP_OK)
      status = vmep__fail(VMEP_ERR_PEER, VMEP_LOG_ERROR,
                          "engine ceiling: rank %d could not %s (%s)", r, what,
                          vmep_status_name((vmep_status)h));
    f->out[r] = at + sizeof(h);
    at += f->lens[r];
    f->lens[r] -= sizeof(h);
  }
  return status;
}

/* A barrier that carries the status (and progresses the engine). */
static vmep_status barrier(struct ceiling *c, vmep_status status,
                           const char *what) {
  struct frames f = {NULL, NULL, NULL};
  status = collect(c, status, NULL, 0, 0, what, &f);
  frames_free(&f);
  return status;
}

/* Every rank's loads into c->matrix; the slot stride from the largest. */
static vmep_status gather_loads(struct ceiling *c) {
  const int R = c->job->size, count = c->count;
  const size_t row = (size_t)count * R * sizeof(double);
  double *mine = vmep__calloc((size_t)count * R + 1, sizeof(double));
  c->matrix = vmep__calloc((size_t)R * count * R + 1, sizeof(double));
  vmep_status status = VMEP_OK;
  if (!mine || !c->matrix)
    status = vmep__fail(VMEP_ERR_OUT_OF_MEMORY, VMEP_LOG_ERROR,
                        "engine ceiling: host allocation failed");
  for (int l = 0; status == VMEP_OK && l < count; l++)
    if (!c->loads[l].bytes || !c->loads[l].us)
      status = vmep__fail(VMEP_ERR_INVALID_ARG, VMEP_LOG_ERROR,
                          "engine ceiling: load %d without bytes or times", l);
    else
      memcpy(mine + (size_t)l * R, c->loads[l].bytes,
             (size_t)R * sizeof(double));
  struct frames f = {NULL, NULL, NULL};
  status = collect(c, status, mine, row, row, "give its loads", &f);
  for (int r = 0; status == VMEP_OK && r < R; r++) {
    if (f.lens[r] != row)
      status = vmep__fail(VMEP_ERR_INVALID_ARG, VMEP_LOG_ERROR,
                          "engine ceiling: rank %d gave %zu B of loads, not "
                          "%zu (another rank or load count?)",
                          r, f.lens[r], row);
    else if (row)
      memcpy(c->matrix + (size_t)r * count * R, f.out[r], row);
  }
  size_t largest = 0;
  for (int l = 0; status == VMEP_OK && l < count; l++)
    for (int a = 0; a < R; a++)
      for (int b = 0; b < R; b++)
        if (is_remote(c, a, b) && load_bytes(c, l, a, b) > largest)
          largest = load_bytes(c, l, a, b);
  c->stride = (largest + SLOT_ALIGN - 1) / SLOT_ALIGN * SLOT_ALIGN;
  c->stride = c->stride ? c->stride : SLOT_ALIGN;
  frames_free(&f);
  vmep__free(mine);
  return status;
}

/* Engine, buffer, registration; *record (vmep__malloc'd) our address and
 * key for the peers: u32 address length, u32 key length, both blobs. */
static vmep_status prepare(struct ceiling *c, char **record, size_t *len) {
  const struct bench_engine_job *j = c->job;
  struct vmep_engine_params params = {j->rank, j->size, j->timeout_ms};
  for (int r = 0; r < j->size; r++)
    c->remote += is_remote(c, j->rank, r);
  c->buf_bytes =
      COUNTER_BYTES(c->job->size) + c->stride * (1 + (size_t)c->remote);
  c->buf = vmep__calloc(1, c->buf_bytes);
  c->keys = vmep__calloc((size_t)j->size, sizeof(*c->keys));
  c->base = vmep__calloc((size_t)j->size, sizeof(*c->base));
  if (!c->buf || !c->keys || !c->base)
    return vmep__fail(VMEP_ERR_OUT_OF_MEMORY, VMEP_LOG_ERROR,
                      "engine ceiling: host allocation of %zu B failed",
                      c->buf_bytes);
  vmep_status status = vmep__engine_create(&params, &c->engine);
  if (status == VMEP_OK)
    status = vmep__engine_mem_reg(c->engine, c->buf, c->buf_bytes, 0, &c->mr);
  const void *addr = NULL, *key = NULL;
  size_t addr_len = 0, key_len = 0;
  if (status == VMEP_OK)
    status = vmep__engine_address(c->engine, &addr, &addr_len);
  if (status == VMEP_OK)
    key = vmep__engine_mr_blob(c->mr, &key_len);
  if (status == VMEP_OK && 8 + addr_len + key_len > RECORD_MAX)
    status = vmep__fail(VMEP_ERR_UNSUPPORTED, VMEP_LOG_ERROR,
                        "engine ceiling: address and key take %zu B, more "
                        "than %d",
                        addr_len + key_len, RECORD_MAX);
  if (status != VMEP_OK)
    return status;
  *len = 8 + addr_len + key_len;
  *record = vmep__malloc(*len);
  if (!*record)
    return vmep__fail(VMEP_ERR_OUT_OF_MEMORY, VMEP_LOG_ERROR,
                      "engine ceiling: host allocation failed");
  uint32_t lens[2] = {(uint32_t)addr_len, (uint32_t)key_len};
  memcpy(*record, lens, 8);
  memcpy(*record + 8, addr, addr_len);
  memcpy(*record + 8 + addr_len, key, key_len);
  return VMEP_OK;
}

/* Rank r's record: its address and key blobs. */
static vmep_status parse_record(int r, const char *rec, size_t len,
                                const char **addr, uint32_t *addr_len,
                                const char **key, uint32_t *key_len) {
  uint32_t l[2] = {0, 0};
  if (len >= sizeof(l))
    memcpy(l, rec, sizeof(l));
  if (len < sizeof(l) || sizeof(l) + (size_t)l[0] + l[1] != len)
    return vmep__fail(VMEP_ERR_INVALID_ARG, VMEP_LOG_ERROR,
                      "engine ceiling: rank %d's record is malformed", r);
  *addr = rec + sizeof(l);
  *addr_len = l[0];
  *key = *addr + l[0];
  *key_len = l[1];
  return VMEP_OK;
}

/* Exchanges the records and connects to every remote peer. */
static vmep_status connect_peers(struct ceiling *c, vmep_status status,
                                 const char *record, size_t len) {
  const struct bench_engine_job *j = c->job;
  struct frames f = {NULL, NULL, NULL};
  status = collect(c, status, record, len, RECORD_MAX, "make its engine", &f);
  for (int r = 0; status == VMEP_OK && r < j->size; r++) {
    const char *addr = NULL, *key = NULL;
    uint32_t addr_len = 0, key_len = 0;
    if (!is_remote(c, j->rank, r))
      continue;
    status =
        parse_record(r, f.out[r], f.lens[r], &addr, &addr_len, &key, &key_len);
    if (status == VMEP_OK)
      status = vmep__engine_connect(c->engine, r, addr, addr_len);
    if (status == VMEP_OK)
      status =
          vmep__engine_rkey_unpack(c->engine, r, key, key_len, &c->keys[r]);
    if (status == VMEP_OK)
      c->base[r] = vmep__engine_rkey_base(c->keys[r]);
  }
  frames_free(&f);
  return barrier(c, status, "connect to its remote peers");
}

/* ---- the timed loads ------------------------------------------------------
 */

static double now_us(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec * 1e6 + (double)ts.tv_nsec / 1e3;
}

/* Spins until every remote peer's signal word shows c->seen iterations. */
static vmep_status wait_signals(struct ceiling *c) {
  const struct bench_engine_job *j = c->job;
  const int timeout_ms = vmep__engine_timeout_ms(c->engine);
  const uint64_t deadline = vmep__now_ms() + (uint64_t)timeout_ms;
  for (unsigned spin = 1;; spin++) {
    uint64_t got = c->seen;
    for (int i = 0; i < c->remote; i++) {
      uint64_t w =
          __atomic_load_n((const uint64_t *)c->buf + i, __ATOMIC_ACQUIRE);
      got = w < got ? w : got;
    }
    if (got >= c->seen)
      return VMEP_OK;
    vmep__engine_progress(c->engine);
    if (spin % 4096)
      continue;
    for (int r = 0; r < j->size; r++)
      if (is_remote(c, j->rank, r) && vmep__engine_peer_is_failed(c->engine, r))
        return vmep__fail(VMEP_ERR_PEER, VMEP_LOG_ERROR,
                          "engine ceiling: rank %d failed", r);
    if (vmep__now_ms() > deadline)
      return vmep__fail(VMEP_ERR_TIMEOUT, VMEP_LOG_ERROR,
                        "engine ceiling: iteration %llu of %llu within %d ms",
                        (unsigned long long)got, (unsigned long long)c->seen,
                        timeout_ms);
  }
}

/* One iteration of load l: the bytes and a signal to every remote peer,
 * then every remote peer's signal. */
static vmep_status iteration(struct ceiling *c, int l) {
  const struct bench_engine_job *j = c->job;
  const char *src = c->buf + COUNTER_BYTES(c->job->size);
  vmep_status status = VMEP_OK;
  for (int k = 1; k < j->size && status == VMEP_OK; k++) {
    int r = (j->rank + k) % j->size; /* not every rank at rank 0 first */
    if (!is_remote(c, j->rank, r))
      continue;
    size_t bytes = load_bytes(c, l, j->rank, r);
    uint64_t slot = c->base[r] + COUNTER_BYTES(c->job->size) +
                    c->stride * (1 + (uint64_t)slot_of(c, r, j->rank));
    if (bytes)
      status = vmep__engine_put(c->engine, r, src, bytes, c->keys[r], slot);
    if (status == VMEP_OK)
      status = vmep__engine_put_signal(
          c->engine, r, NULL, 0, NULL, 0, c->keys[r],
          c->base[r] + 8 * (uint64_t)slot_of(c, r, j->rank),
          VMEP_ENGINE_SIGNAL_SET, c->seen + 1);
  }
  c->seen++;
  return status == VMEP_OK ? wait_signals(c) : status;
}

static vmep_status run_load(struct ceiling *c, int l) {
  const struct bench_engine_job *j = c->job;
  vmep_status status = VMEP_OK;
  for (int i = 0; i < j->warmup + j->iters && status == VMEP_OK; i++) {
    double t0 = now_us();
    status = c->remote ? iteration(c, l) : VMEP_OK;
    if (i >= j->warmup)
      c->loads[l].us[i - j->warmup] = c->remote ? now_us() - t0 : 0.0;
  }
  /* Our last puts may still sit in our worker (a peer has not got them
   * while we have got all of its): push them out, progressing, before a
   * barrier that may not progress the engine. */
  if (status == VMEP_OK)
    status = vmep__engine_flush(c->engine, -1, 0);
  return status;
}

vmep_status bench_engine_ceiling(const struct bench_engine_job *job,
                                 struct bench_engine_load *loads, int count) {
  if (!job || !job->x || !job->x->allgatherv || !job->node || job->size < 1 ||
      job->rank < 0 || job->rank >= job->size || job->iters < 1 ||
      job->warmup < 0 || count < 0 || (count > 0 && !loads))
    return vmep__fail(VMEP_ERR_INVALID_ARG, VMEP_LOG_ERROR,
                      "engine ceiling: bad job");
  struct ceiling c;
  memset(&c, 0, sizeof(c));
  c.job = job;
  c.loads = loads;
  c.count = count;
  char *record = NULL;
  size_t len = 0;
  /* Each step joins the collective whatever the status before it. */
  vmep_status status = gather_loads(&c);
  if (status == VMEP_OK)
    status = prepare(&c, &record, &len);
  status = connect_peers(&c, status, record, len);
  for (int l = 0; l < count; l++) {
    status = barrier(&c, status, "start a load");
    if (status == VMEP_OK)
      status = run_load(&c, l);
  }
  /* Nobody closes its endpoints while a peer still flushes. */
  status = barrier(&c, status, "finish");
  vmep__engine_destroy(c.engine); /* keys and registration with it */
  vmep__free(c.buf);
  vmep__free(c.keys);
  vmep__free(c.base);
  vmep__free(c.matrix);
  vmep__free(record);
  return status;
}
