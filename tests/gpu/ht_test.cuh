/*
 * Shared pieces of the high-throughput GPU tests (test_ht.cu,
 * test_ht_modes.cu): every rank's inputs derived from one seed (struct
 * world), this rank's device arrays with poisoned guards (struct io), and
 * dispatch and combine calls checked element by element against the
 * reference of the whole group (ep/reference_ht.c). Failure messages name
 * the rank and the running case (case_name).
 */
#ifndef VMEP_HT_TEST_CUH
#define VMEP_HT_TEST_CUH

#include "ep_test.cuh"

#define MAX_TOPK 8
#define POISON 0xff
#define GUARD_BYTES 512

enum routing { UNIFORM, SKEWED, SPECIAL, FULL };
enum path { ONE_CALL, TWO_STEP };

/* What a combine is given besides x. */
#define WITH_WEIGHTS 1
#define WITH_BIAS0 2
#define WITH_BIAS1 4
/* x is the zero-copy buffer (vmep_ep_ht_combine_buffer), combined in place */
#define IN_PLACE 8

struct ht_case {
  int H, T, L, K, fp8, align;
  enum routing how;
  enum path path;
  int weights; /* the dispatch gets topk_weights */
  int combine; /* WITH_* of the first combine; the second gets the rest */
};

/* Every rank's inputs, derived from the seed. */
struct world {
  struct ht_case c;
  int R, me;
  struct vmep_ref_ht_problem p;
  struct vmep_ref_ht_rank_input in[MAX_RANKS];
  uint8_t *x[MAX_RANKS];
  float *scales[MAX_RANKS];
  int64_t *topk[MAX_RANKS];
  float *w[MAX_RANKS];
  int64_t bad; /* this rank's invalid ids */
};

/* This rank's device arrays: inputs, then what dispatch writes (`cap`
 * rows), each followed by GUARD_BYTES. */
struct io {
  void *x;
  float *scales, *w;
  int64_t *topk;
  int32_t *num_recv, *count;
  int cap;
  void *recv_x;
  float *recv_scales, *recv_w;
  int64_t *recv_topk;
  int32_t *recv_src;
  uint64_t last_call; /* the buffer's latest dispatch number */
};

static int me_rank;
/* What the running case is called, for failure messages. */
static const char *case_name = "";

/* ---- inputs ------------------------------------------------------------- */

/* A weight that is never zero, sign * (1 .. 1024) / 512. */
static inline float weight_from_word(uint32_t word) {
  float mag = (float)(1 + word % 1024) / 512.0f;
  return word >> 31 ? -mag : mag;
}

/* The key of the values a rank derives for (tag, a, b, c). */
static inline uint64_t derive(uint64_t seed, int tag, int a, int b, int c) {
  return ((uint64_t)pattern_word(seed, (size_t)tag) << 32 |
          pattern_word(seed ^ (uint64_t)tag,
                       ((size_t)a << 40) ^ ((size_t)b << 20) ^ (size_t)c)) |
         1;
}

/* K distinct experts, three in four from rank 0's when skewed; one slot in
 * ten -1. */
static inline void random_token(int64_t *row, int K, int E, int L, int skew) {
  for (int k = 0; k < K; k++) {
    int64_t e;
    int again;
    do {
      e = skew && test_rand() % 4 ? (int64_t)(test_rand() % L)
                                  : (int64_t)(test_rand() % E);
      again = 0;
      for (int j = 0; j < k; j++)
        again |= row[j] == e;
    } while (again);
    row[k] = test_rand() % 10 == 0 ? -1 : e;
  }
}

/* SPECIAL routing: token t has all its experts on rank t / 4 % R (t % 4
 * == 0), none (1), an invalid id first (2), or its random experts (3). */
static inline void special_token(int64_t *row, int t, int K, int E, int L,
                                 int R) {
  int rank = t / 4 % R;
  for (int k = 0; k < K && t % 4 < 2; k++)
    row[k] = t % 4 == 0 && k < L ? (int64_t)rank * L + k : -1;
  if (t % 4 == 2)
    row[0] = t / 4 % 2 ? E + t % 7 : -2 - t % 5;
}

/* Rows of every rank from `seed`: bf16, or fp8 codes (never NaN) with
 * scales. */
static inline void gen_rows(struct world *w, uint64_t seed) {
  int H = w->c.H, G = H / VMEP_FP8_GROUP;
  uint64_t saved = test_rng_state;
  test_rng_state = seed | 1;
  for (int r = 0; r < w->R; r++) {
    int n = w->in[r].num_tokens;
    for (size_t i = 0; i < (size_t)n * H; i++)
      if (w->c.fp8)
        w->x[r][i] = (uint8_t)((1 + test_rand() % 126) | (test_rand() & 0x80));
      else
        ((uint16_t *)w->x[r])[i] = random_bf16();
    for (size_t i = 0; i < (size_t)n * G; i++)
      w->scales[r][i] = (float)(1 + test_rand() % 4096) / 1024.0f;
  }
  test_rng_state = saved;
}

static inline void gen_world(struct world *w, const struct ht_case *c, int R,
                             int me, uint64_t seed) {
  memset(w, 0, sizeof(*w));
  w->c = *c;
  w->R = R;
  w->me = me;
  int L = c->L, E = L * R, T = c->T, H = c->H;
  w->c.K = c->K < E ? c->K : E;
  int K = w->c.K;
  uint64_t saved = test_rng_state;
  test_rng_state = seed | 1;
  for (int r = 0; r < R; r++) {
    int n = c->how == FULL ? T : 1 + (int)(test_rand() % T);
    if (c->how == SPECIAL && R > 1 && r == R - 1)
      n = 0; /* a rank with no tokens */
    w->x[r] = (uint8_t *)malloc((size_t)T * H * 2 + 1);
    w->scales[r] = (float *)malloc((size_t)T * H / VMEP_FP8_GROUP * 4 + 4);
    w->topk[r] = (int64_t *)malloc((size_t)T * K * 8 + 8);
    w->w[r] = (float *)malloc((size_t)T * K * 4 + 4);
    ASSERT_TRUE(w->x[r] && w->scales[r] && w->topk[r] && w->w[r]);
    for (int t = 0; t < n; t++) {
      random_token(&w->topk[r][t * K], K, E, L, c->how == SKEWED);
      if (c->how == SPECIAL)
        special_token(&w->topk[r][t * K], t, K, E, L, R);
      for (int k = 0; k < K; k++)
        w->w[r][t * K + k] = weight_from_word((uint32_t)(test_rand() >> 32));
    }
    w->in[r] = {n, w->x[r], c->fp8 ? w->scales[r] : NULL, w->topk[r],
                c->weights ? w->w[r] : NULL};
  }
  test_rng_state = saved;
  gen_rows(w, seed + 1);
  w->p = {R, E, T, H, K, c->fp8, c->align, NULL, w->in};
  ASSERT_OK(vmep__ref_ht_bad_experts(&w->p, me, &w->bad));
}

static inline void free_world(struct world *w) {
  for (int r = 0; r < w->R; r++) {
    free(w->x[r]);
    free(w->scales[r]);
    free(w->topk[r]);
    free(w->w[r]);
  }
}

/* N of rank d by the reference, and its recv_src into src (R*T rows) when
 * not NULL; under the world's masks (w->p.masked), or with `masks` 0 as if
 * no rank were masked. */
static inline int ref_rows(const struct world *w, int d, int32_t *src,
                           int masks = 1) {
  int32_t n = 0;
  struct vmep_ref_ht_problem p = w->p;
  struct vmep_ref_ht_recv r;
  memset(&r, 0, sizeof(r));
  r.capacity = src ? w->R * w->c.T : 0;
  r.num_recv = &n;
  r.recv_src = src;
  if (!masks)
    p.masked = NULL;
  ASSERT_OK(vmep__ref_ht_dispatch(&p, d, &r));
  return n;
}

/* ---- device memory with guards ------------------------------------------ */

/* `bytes` of device memory and GUARD_BYTES after them, all poisoned. */
template <typename T> static inline T *dev_alloc(size_t bytes) {
  void *p = NULL;
  CUDA_OK(cudaMalloc(&p, bytes + GUARD_BYTES));
  CUDA_OK(cudaMemset(p, POISON, bytes + GUARD_BYTES));
  return (T *)p;
}

static inline void dev_poison(void *p, size_t bytes) {
  if (p)
    CUDA_OK(cudaMemset(p, POISON, bytes + GUARD_BYTES));
}

template <typename T>
static inline T *dev_upload(const void *host, size_t bytes) {
  T *p = dev_alloc<T>(bytes);
  CUDA_OK(cudaMemcpy(p, host, bytes, cudaMemcpyHostToDevice));
  return p;
}

static inline void dev_free(void *p) {
  if (p)
    CUDA_OK(cudaFree(p));
}

/* A host copy of the `bytes` at p; the guard after them must be intact,
 * and so must the bytes from `clean_from` on (by default none of them:
 * 0 for an array that must be untouched, the bytes of the rows written
 * for one whose further rows must be). */
template <typename T>
static inline T *fetch(const void *p, size_t bytes, const char *what,
                       size_t clean_from = SIZE_MAX) {
  uint8_t *host = (uint8_t *)malloc(bytes + GUARD_BYTES);
  ASSERT_TRUE(host != NULL);
  CUDA_OK(cudaMemcpy(host, p, bytes + GUARD_BYTES, cudaMemcpyDeviceToHost));
  for (size_t i = clean_from < bytes ? clean_from : bytes;
       i < bytes + GUARD_BYTES; i++)
    if (host[i] != POISON)
      TEST_FAIL("rank %d (%s): %s written where it must not be: byte %zu of "
                "the %s is 0x%02x",
                me_rank, case_name, what, i < bytes ? i : i - bytes,
                i < bytes ? "array (past the bytes it may write)"
                          : "guard after it",
                host[i]);
  return (T *)host;
}

static inline size_t row_bytes(const struct world *w) {
  return (size_t)w->c.H * (w->c.fp8 ? 1 : 2);
}

static inline size_t groups(const struct world *w) {
  return (size_t)w->c.H / VMEP_FP8_GROUP;
}

static inline void io_alloc(struct io *io, const struct world *w) {
  size_t T = (size_t)w->c.T, K = (size_t)w->c.K;
  memset(io, 0, sizeof(*io));
  io->x = dev_alloc<void>(T * w->c.H * 2);
  io->scales = dev_alloc<float>(T * groups(w) * 4);
  io->topk = dev_alloc<int64_t>(T * K * 8);
  io->w = dev_alloc<float>(T * K * 4);
  io->num_recv = dev_alloc<int32_t>(4);
  io->count = dev_alloc<int32_t>((size_t)w->c.L * 4);
}

/* Receive arrays of `cap` rows, replacing any there were. */
static inline void io_rows(struct io *io, const struct world *w, int cap) {
  size_t n = (size_t)cap, K = (size_t)w->c.K;
  void *old[] = {io->recv_x, io->recv_scales, io->recv_w, io->recv_topk,
                 io->recv_src};
  for (size_t i = 0; i < sizeof(old) / sizeof(old[0]); i++)
    dev_free(old[i]);
  io->cap = cap;
  io->recv_x = dev_alloc<void>(n * row_bytes(w));
  io->recv_scales = dev_alloc<float>(n * groups(w) * 4);
  io->recv_topk = dev_alloc<int64_t>(n * K * 8);
  io->recv_w = dev_alloc<float>(n * K * 4);
  io->recv_src = dev_alloc<int32_t>(n * 4);
}

static inline void io_free(struct io *io) {
  void *p[] = {io->x,         io->scales, io->topk,    io->w,
               io->num_recv,  io->count,  io->recv_x,  io->recv_scales,
               io->recv_topk, io->recv_w, io->recv_src};
  for (size_t i = 0; i < sizeof(p) / sizeof(p[0]); i++)
    dev_free(p[i]);
}

/* This rank's inputs into io (topk_idx and weights too). */
static inline void io_load(struct io *io, const struct world *w) {
  int n = w->in[w->me].num_tokens, K = w->c.K;
  CUDA_OK(cudaMemcpy(io->x, w->x[w->me], (size_t)n * row_bytes(w),
                     cudaMemcpyHostToDevice));
  CUDA_OK(cudaMemcpy(io->scales, w->scales[w->me], (size_t)n * groups(w) * 4,
                     cudaMemcpyHostToDevice));
  CUDA_OK(cudaMemcpy(io->topk, w->topk[w->me], (size_t)n * K * 8,
                     cudaMemcpyHostToDevice));
  CUDA_OK(cudaMemcpy(io->w, w->w[w->me], (size_t)n * K * 4,
                     cudaMemcpyHostToDevice));
}

/* ---- checks ---------------------------------------------------------------
 */

static inline void expect_clean(const struct vmep_ref_report *rep,
                                const char *what) {
  if (rep->mismatches)
    TEST_FAIL("rank %d (%s) %s: %lld mismatches, first: %s", me_rank, case_name,
              what, (long long)rep->mismatches, rep->first);
}

/* The error bits and bad-expert count since the last poll must be these. */
static inline void expect_errors(vmep_ep *ep, unsigned bits, int64_t bad,
                                 const char *after) {
  unsigned errors = 0;
  uint64_t got_bad = 0;
  CUDA_OK(cudaDeviceSynchronize());
  ASSERT_OK(vmep_ep_poll_errors(ep, &errors, &got_bad));
  if (errors != bits || got_bad != (uint64_t)bad)
    TEST_FAIL("rank %d (%s) after %s: errors 0x%x and %llu bad ids, "
              "expected 0x%x and %lld",
              me_rank, case_name, after, errors, (unsigned long long)got_bad,
              bits, (long long)bad);
}

/* Host copies of this rank's dispatch outputs (`cap` rows); the rows from
 * min(n, cap) on (the dispatch's N: n) must still hold the poison, and
 * after a cached dispatch (`cached`) recv_topk_* and, without fp8,
 * recv_scales wholly. */
static inline struct vmep_ref_ht_recv
fetch_dispatch(const struct world *w, const struct io *io, int n, int cached) {
  size_t cap = (size_t)io->cap, K = (size_t)w->c.K, G = groups(w);
  size_t rows = (size_t)n < cap ? (size_t)n : cap;
  struct vmep_ref_ht_recv got;
  memset(&got, 0, sizeof(got));
  got.capacity = io->cap;
  got.num_recv = fetch<int32_t>(io->num_recv, 4, "num_recv");
  got.recv_expert_count =
      fetch<int32_t>(io->count, (size_t)w->c.L * 4, "recv_expert_count");
  got.recv_x = fetch<void>(io->recv_x, cap * row_bytes(w), "recv_x",
                           rows * row_bytes(w));
  got.recv_scales = fetch<float>(io->recv_scales, cap * G * 4, "recv_scales",
                                 w->c.fp8 ? rows * G * 4 : 0);
  got.recv_topk_idx = fetch<int64_t>(
      io->recv_topk, cap * K * 8, "recv_topk_idx", cached ? 0 : rows * K * 8);
  got.recv_topk_weights = fetch<float>(
      io->recv_w, cap * K * 4, "recv_topk_weights", cached ? 0 : rows * K * 4);
  got.recv_src = fetch<int32_t>(io->recv_src, cap * 4, "recv_src", rows * 4);
  return got;
}

static inline void free_dispatch(struct vmep_ref_ht_recv *got) {
  void *p[] = {got->num_recv,         got->recv_expert_count,
               got->recv_x,           got->recv_scales,
               got->recv_src,         got->recv_topk_idx,
               got->recv_topk_weights};
  for (size_t i = 0; i < sizeof(p) / sizeof(p[0]); i++)
    free(p[i]);
}

/*
 * After a cached dispatch while ranks are masked here (w->p.masked): the
 * rows from masked sources among the first n of the handle's (made without
 * masks) must be zeros, fp8 codes and scales alike. They are then given
 * the source's row and scales, which the reference without masks holds
 * there, so that the checker compares every other element.
 */
static inline void expect_masked_zeros(const struct world *w,
                                       struct vmep_ref_ht_recv *got, int n) {
  const size_t rb = row_bytes(w), G = groups(w);
  int32_t *src = (int32_t *)malloc((size_t)w->R * w->c.T * 4 + 4);
  ASSERT_TRUE(src != NULL);
  ref_rows(w, w->me, src, 0);
  for (int i = 0; i < n && i < got->capacity; i++) {
    int t = (int)((uint32_t)src[i] >> 16), s = (src[i] >> 5) & 0x7ff;
    if (!w->p.masked[s])
      continue;
    uint8_t *row = (uint8_t *)got->recv_x + (size_t)i * rb;
    uint32_t *scales = (uint32_t *)got->recv_scales + (size_t)i * G;
    for (size_t b = 0; b < rb; b++)
      if (row[b] != 0)
        TEST_FAIL("rank %d (%s): recv_x row %d (token %d of rank %d, masked "
                  "here) byte %zu is 0x%02x, expected 0",
                  me_rank, case_name, i, t, s, b, row[b]);
    for (size_t g = 0; w->c.fp8 && g < G; g++)
      if (scales[g] != 0)
        TEST_FAIL("rank %d (%s): recv_scales row %d (token %d of rank %d, "
                  "masked here) group %zu is 0x%08x, expected 0.0f",
                  me_rank, case_name, i, t, s, g, scales[g]);
    memcpy(row, (const uint8_t *)w->x[s] + (size_t)t * rb, rb);
    if (w->c.fp8)
      memcpy(scales, w->scales[s] + (size_t)t * G, G * 4);
  }
  free(src);
}

/* This rank's dispatch outputs against the reference, every row of the
 * arrays: the first N as the reference's, the others still poisoned.
 * After a cached dispatch (`cached`), whose rows are its handle's (made
 * without masks), recv_topk_* must be untouched, and the rows from ranks
 * masked now zeros. */
static inline void check_dispatch(const struct world *w, const struct io *io,
                                  int cached, const char *what) {
  int n = ref_rows(w, w->me, NULL, !cached);
  struct vmep_ref_ht_recv got = fetch_dispatch(w, io, n, cached);
  struct vmep_ref_ht_problem p = w->p;
  struct vmep_ref_report rep;
  void *topk[] = {got.recv_topk_idx, got.recv_topk_weights};
  if (cached) {
    got.recv_topk_idx = NULL;
    got.recv_topk_weights = NULL;
    if (p.masked)
      expect_masked_zeros(w, &got, n);
    p.masked = NULL;
  }
  ASSERT_OK(vmep__ref_ht_check_dispatch(&p, w->me, &got, &rep));
  expect_clean(&rep, what);
  got.recv_topk_idx = (int64_t *)topk[0];
  got.recv_topk_weights = (float *)topk[1];
  free_dispatch(&got);
}

/* ---- dispatch and combine ------------------------------------------------ */

/* The buffer of case `c` (room for `max_topk` selections a token); a
 * kernel masks a rank it waited for `timeout_ms` in vain. */
static inline vmep_ep *make_ep(vmep_group *g, const struct ht_case *c,
                               int timeout_ms = 60000,
                               int max_topk = MAX_TOPK) {
  vmep_ep_config cfg;
  vmep_ep *ep = NULL;
  vmep_ep_config_init(&cfg);
  cfg.num_experts = c->L * vmep_group_size(g);
  cfg.hidden = c->H;
  cfg.max_tokens_per_rank = c->T;
  cfg.max_topk = max_topk;
  cfg.timeout_ms = timeout_ms;
  ASSERT_OK(vmep_ep_create(g, &cfg, &ep));
  return ep;
}

static inline vmep_ep_ht_dispatch_args
dispatch_args(const struct world *w, const struct io *io,
              const vmep_ep_ht_handle *cached) {
  vmep_ep_ht_dispatch_args a;
  vmep_ep_ht_dispatch_args_init(&a);
  a.x = io->x;
  a.x_scales = w->c.fp8 ? io->scales : NULL;
  a.topk_idx = io->topk;
  a.topk_weights = w->c.weights ? io->w : NULL;
  a.num_tokens = w->in[w->me].num_tokens;
  a.num_topk = w->c.K;
  a.use_fp8 = w->c.fp8;
  a.expert_alignment = w->c.align;
  a.num_recv = io->num_recv;
  a.recv_expert_count = io->count;
  a.cached = cached;
  return a;
}

static inline void set_rows(vmep_ep_ht_dispatch_args *a, const struct world *w,
                            const struct io *io) {
  a->capacity = io->cap;
  a->recv_x = io->recv_x;
  a->recv_scales = w->c.fp8 ? io->recv_scales : NULL;
  a->recv_topk_idx = io->recv_topk;
  a->recv_topk_weights = io->recv_w;
  a->recv_src = io->recv_src;
}

/*
 * One dispatch of this rank's inputs by the case's path, checked: into
 * `cap` rows (the two-step path with cap < 0: exactly N, read on the host
 * between the phases), or, with `cached`, of new rows into the rows that
 * handle's dispatch used (a dispatch that saw no mask). The handle, the
 * outputs and the error word are checked; returns the handle.
 */
static inline vmep_ep_ht_handle dispatch(vmep_ep *ep, const struct world *w,
                                         struct io *io, int cap,
                                         const vmep_ep_ht_handle *cached) {
  vmep_ep_ht_handle h;
  int n_ref = ref_rows(w, w->me, NULL, cached == NULL);
  io_load(io, w);
  if (cached) { /* recv_src and the counts are the handle's: kept */
    dev_poison(io->recv_x, (size_t)io->cap * row_bytes(w));
    dev_poison(io->recv_scales, (size_t)io->cap * groups(w) * 4);
    dev_poison(io->recv_topk, (size_t)io->cap * w->c.K * 8);
    dev_poison(io->recv_w, (size_t)io->cap * w->c.K * 4);
  } else {
    dev_poison(io->num_recv, 4);
    dev_poison(io->count, (size_t)w->c.L * 4);
    if (w->c.path == ONE_CALL)
      io_rows(io, w, cap);
  }
  vmep_ep_ht_dispatch_args a = dispatch_args(w, io, cached);
  if (w->c.path == ONE_CALL) {
    set_rows(&a, w, io);
    ASSERT_OK(vmep_ep_ht_dispatch(ep, &a, VMEP_EP_SEND_RECV, NULL, &h));
  } else {
    ASSERT_OK(vmep_ep_ht_dispatch(ep, &a, VMEP_EP_SEND, NULL, &h));
    CUDA_OK(cudaDeviceSynchronize());
    int32_t n = -1;
    CUDA_OK(cudaMemcpy(&n, io->num_recv, 4, cudaMemcpyDeviceToHost));
    if (n != n_ref)
      TEST_FAIL("rank %d (%s): the send phase counted %d rows, expected %d",
                me_rank, case_name, n, n_ref);
    if (!cached)
      io_rows(io, w, cap < 0 ? n : cap);
    set_rows(&a, w, io);
    ASSERT_OK(vmep_ep_ht_dispatch_recv(ep, &a, &h, NULL));
  }
  CUDA_OK(cudaDeviceSynchronize());
  ASSERT_TRUE(h.parity == 0 || h.parity == 1);
  ASSERT_TRUE(h.call > io->last_call);
  io->last_call = h.call;
  ASSERT_EQ(h.num_tokens, w->in[w->me].num_tokens);
  ASSERT_EQ(h.num_topk, w->c.K);
  ASSERT_EQ(h.use_fp8, w->c.fp8);
  ASSERT_TRUE(h.num_recv == io->num_recv && h.recv_src == io->recv_src);
  ASSERT_EQ(h.capacity, io->cap);
  unsigned bits = n_ref > io->cap ? VMEP_EP_ERR_OVERFLOW : 0;
  int64_t bad = cached ? 0 : w->bad;
  expect_errors(ep, bits | (bad ? VMEP_EP_ERR_BAD_EXPERT : 0), bad,
                cached ? "a cached dispatch" : "a dispatch");
  check_dispatch(w, io, cached != NULL,
                 cached ? "cached dispatch" : "dispatch");
  return h;
}

/* What every rank sends back to combine, derived from `key`: rank d's row
 * and weights for (s, t), and this rank's biases. */
struct back {
  uint16_t *x[MAX_RANKS];
  float *w[MAX_RANKS];
  uint16_t *bias[2];
  struct vmep_ref_ht_combine_input in[MAX_RANKS];
  int n[MAX_RANKS];
};

static inline void make_back(const struct world *w, uint64_t key, int with,
                             struct back *b) {
  size_t H = (size_t)w->c.H, K = (size_t)w->c.K;
  int32_t *src = (int32_t *)malloc((size_t)w->R * w->c.T * 4 + 4);
  ASSERT_TRUE(src != NULL);
  for (int d = 0; d < w->R; d++) {
    int n = b->n[d] = ref_rows(w, d, src);
    b->x[d] = (uint16_t *)malloc((size_t)n * H * 2 + 2);
    b->w[d] = (float *)malloc((size_t)n * K * 4 + 4);
    ASSERT_TRUE(b->x[d] && b->w[d]);
    for (int i = 0; i < n; i++) {
      int t = (int)((uint32_t)src[i] >> 16), s = (src[i] >> 5) & 0x7ff;
      uint64_t row = derive(key, 1, d, s, t), wk = derive(key, 2, d, s, t);
      for (size_t h = 0; h < H; h++)
        b->x[d][i * H + h] = bf16_from_word(pattern_word(row, h));
      for (size_t k = 0; k < K; k++)
        b->w[d][i * K + k] = weight_from_word(pattern_word(wk, k));
    }
    b->in[d] = {b->x[d], with & WITH_WEIGHTS ? b->w[d] : NULL, NULL, NULL};
  }
  int n = w->in[w->me].num_tokens;
  for (int j = 0; j < 2; j++) {
    b->bias[j] = NULL;
    if (!(with & (j ? WITH_BIAS1 : WITH_BIAS0)))
      continue;
    b->bias[j] = (uint16_t *)malloc((size_t)n * H * 2 + 2);
    ASSERT_TRUE(b->bias[j] != NULL);
    for (int t = 0; t < n; t++) {
      uint64_t row = derive(key, 3 + j, w->me, 0, t);
      for (size_t h = 0; h < H; h++)
        b->bias[j][t * H + h] = bf16_from_word(pattern_word(row, h));
    }
  }
  b->in[w->me].bias0 = b->bias[0];
  b->in[w->me].bias1 = b->bias[1];
  free(src);
}

static inline void free_back(const struct world *w, struct back *b) {
  for (int d = 0; d < w->R; d++) {
    free(b->x[d]);
    free(b->w[d]);
  }
  free(b->bias[0]);
  free(b->bias[1]);
}

/* One combine of handle h, with rows from `key` and the inputs `with`
 * says, checked against the reference. */
static inline void combine(vmep_ep *ep, const struct world *w,
                           const vmep_ep_ht_handle *h, uint64_t key, int with) {
  struct back b;
  make_back(w, key, with, &b);
  int me = w->me, n = w->in[me].num_tokens, N = b.n[me];
  size_t H = (size_t)w->c.H, K = (size_t)w->c.K;
  vmep_ep_ht_combine_args a;
  vmep_ep_ht_combine_args_init(&a);
  void *in_place = NULL;
  if (with & IN_PLACE) {
    int rows = 0;
    ASSERT_OK(vmep_ep_ht_combine_buffer(ep, h, &in_place, &rows));
    ASSERT_TRUE(N <= rows && h->capacity <= rows);
    CUDA_OK(cudaMemcpy(in_place, b.x[me], (size_t)N * H * 2,
                       cudaMemcpyHostToDevice));
    /* NaNs past N: read by mistake, they would show in every sum. */
    dev_poison((char *)in_place + (size_t)N * H * 2,
               (size_t)(rows - N) * H * 2);
    a.x = in_place;
  } else {
    a.x = dev_upload<uint16_t>(b.x[me], (size_t)N * H * 2);
  }
  if (with & WITH_WEIGHTS)
    a.topk_weights = dev_upload<float>(b.w[me], (size_t)N * K * 4);
  for (int j = 0; j < 2; j++)
    if (b.bias[j])
      (j ? a.bias1 : a.bias0) =
          dev_upload<uint16_t>(b.bias[j], (size_t)n * H * 2);
  a.out = dev_alloc<uint16_t>((size_t)n * H * 2);
  if (with & WITH_WEIGHTS)
    a.out_topk_weights = dev_alloc<float>((size_t)n * K * 4);
  ASSERT_OK(vmep_ep_ht_combine(ep, &a, h, NULL));
  CUDA_OK(cudaDeviceSynchronize());
  uint16_t *out = fetch<uint16_t>(a.out, (size_t)n * H * 2, "out");
  float *out_w = a.out_topk_weights
                     ? fetch<float>(a.out_topk_weights, (size_t)n * K * 4,
                                    "out_topk_weights")
                     : NULL;
  struct vmep_ref_report rep;
  ASSERT_OK(vmep__ref_ht_check_combine(&w->p, b.in, me, out, out_w, &rep));
  expect_clean(&rep, "combine");
  expect_errors(ep, 0, 0, "a combine");
  const void *p[] = {
      in_place ? NULL : a.x, a.topk_weights, a.bias0, a.bias1, a.out,
      a.out_topk_weights};
  for (size_t i = 0; i < sizeof(p) / sizeof(p[0]); i++)
    dev_free((void *)p[i]);
  free(out);
  free(out_w);
  free_back(w, &b);
}

/* ---- the cases ------------------------------------------------------------
 */

/* The world of case `c` from `seed`, its buffer, and device arrays that
 * hold this rank's inputs. */
static inline vmep_ep *setup(vmep_group *g, const struct ht_case *c,
                             uint64_t seed, struct world *w, struct io *io,
                             int max_topk = MAX_TOPK) {
  gen_world(w, c, vmep_group_size(g), me_rank, seed);
  io_alloc(io, w);
  io_load(io, w);
  return make_ep(g, c, 60000, max_topk);
}

static inline void teardown(vmep_ep *ep, struct world *w, struct io *io) {
  ASSERT_OK(vmep_ep_destroy(ep));
  io_free(io);
  free_world(w);
}

/* `call` is refused with VMEP_ERR_INVALID_ARG and a message naming `field`
 * (a refused call launches nothing, on any rank). */
#define EXPECT_REFUSED(call, field)                                            \
  do {                                                                         \
    vmep_status st_ = (call);                                                  \
    if (st_ != VMEP_ERR_INVALID_ARG || !strstr(vmep_last_error(), field))      \
      TEST_FAIL("rank %d (%s): %s gave %s (\"%s\"), expected "                 \
                "VMEP_ERR_INVALID_ARG naming %s",                              \
                me_rank, case_name, #call, vmep_status_name(st_),              \
                vmep_last_error(), field);                                     \
  } while (0)

#endif /* VMEP_HT_TEST_CUH */
