/*
 * vmep-bench --mode ht --check: one rank's high-throughput layout,
 * dispatch and combine against what every rank's inputs imply. The host
 * reference of the high-throughput calls is not in ep/reference.h yet, so
 * the bench reads vmep.h's rules itself, on the routing it draws (K
 * distinct valid experts per token, no masked rank): it walks the sources'
 * tokens in the order the rows must arrive and compares each received row
 * with the one it must be, bit for bit. Sources are rebuilt one at a time
 * (bench_make_inputs), so the host holds one rank's inputs at once.
 */
#include <errno.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

#include "bench.h"
#include "ep/reference.h"

/* Counts one mismatch in `rep`, keeping the text of the first. */
__attribute__((format(printf, 2, 3))) static void
mismatch(struct vmep_ref_report *rep, const char *fmt, ...) {
  if (rep->mismatches++ > 0)
    return;
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(rep->first, sizeof(rep->first), fmt, ap);
  va_end(ap);
}

/* VMEP_OK, or VMEP_ERR_CUDA after printing what mismatched; `st` (a
 * check that could not run: no host memory, or a copy that failed and was
 * printed) after saying so. */
static vmep_status verdict(vmep_status st, const struct vmep_ref_report *rep,
                           int me, const char *what) {
  if (st != VMEP_OK) {
    fprintf(stderr,
            "%s: rank %d %s check: not run (out of host memory or a "
            "failed copy)\n",
            program_invocation_short_name, me, what);
    return st;
  }
  if (!rep->mismatches)
    return VMEP_OK;
  fprintf(stderr, "%s: rank %d %s check: %lld mismatches, first: %s\n",
          program_invocation_short_name, me, what, (long long)rep->mismatches,
          rep->first);
  return VMEP_ERR_CUDA;
}

/* The rank that holds expert e (E experts, L per rank), -1 for an id that
 * counts nowhere (-1, or out of range). */
static int rank_of(int64_t e, int E, int L) {
  return e >= 0 && e < E ? (int)(e / L) : -1;
}

/* The first k of a token's ids `topk` whose expert is on rank r, or -1. */
static int first_on(const int64_t *topk, int K, int E, int L, int r) {
  for (int k = 0; k < K; k++)
    if (rank_of(topk[k], E, L) == r)
      return k;
  return -1;
}

/* A dispatch's outputs copied to the host: n rows (num_recv, within the
 * capacity) of each array. */
struct recv_host {
  int n;
  int32_t *src, *expert_count;
  unsigned char *x;
  float *scales, *weights;
  int64_t *topk;
};

static int fetch_recv(const struct bench_options *o, int L,
                      const struct bench_ht_outputs *dev, int n,
                      struct recv_host *h) {
  size_t rows = (size_t)n, H = (size_t)o->hidden, K = (size_t)o->topk;
  h->n = n;
  h->src = bench_fetch(dev->recv_src, rows * 4);
  h->expert_count = bench_fetch(dev->expert_count, (size_t)L * 4);
  h->x = bench_fetch(dev->recv_x, rows * (size_t)bench_row_bytes(o));
  h->scales =
      o->fp8 ? bench_fetch(dev->recv_scales, rows * (H / 128) * 4) : NULL;
  h->topk = bench_fetch(dev->recv_topk, rows * K * 8);
  h->weights = bench_fetch(dev->recv_weights, rows * K * 4);
  return h->src && h->expert_count && h->x && (h->scales || !o->fp8) &&
                 h->topk && h->weights
             ? 0
             : -1;
}

static void free_recv(struct recv_host *h) {
  free(h->src);
  free(h->expert_count);
  free(h->x);
  free(h->scales);
  free(h->topk);
  free(h->weights);
}

/* vmep_ep_ht_layout of our own tokens `in`. */
static vmep_status check_layout(const struct bench_options *o, int R, int E,
                                const struct bench_inputs *in,
                                const struct bench_ht_outputs *dev,
                                struct vmep_ref_report *rep) {
  const int L = E / R, K = o->topk;
  int32_t *per_rank = bench_fetch(dev->tokens_per_rank, (size_t)R * 4);
  int32_t *per_expert = bench_fetch(dev->tokens_per_expert, (size_t)E * 4);
  uint8_t *in_rank = bench_fetch(dev->in_rank, (size_t)in->n * R);
  long long *want = calloc((size_t)(R + E), sizeof(long long));
  vmep_status st = per_rank && per_expert && in_rank && want
                       ? VMEP_OK
                       : VMEP_ERR_OUT_OF_MEMORY;
  for (int t = 0; st == VMEP_OK && t < in->n; t++) {
    const int64_t *tk = in->topk + (size_t)t * K;
    for (int r = 0; r < R; r++) {
      int has = first_on(tk, K, E, L, r) >= 0;
      want[r] += has;
      if (in_rank[(size_t)t * R + r] != has)
        mismatch(rep, "in_rank[token %d][rank %d] is %d, expected %d", t, r,
                 in_rank[(size_t)t * R + r], has);
    }
    for (int k = 0; k < K; k++)
      if (rank_of(tk[k], E, L) >= 0)
        want[R + tk[k]]++;
  }
  for (int r = 0; st == VMEP_OK && r < R; r++)
    if (per_rank[r] != want[r])
      mismatch(rep, "tokens_per_rank[%d] is %d, expected %lld", r, per_rank[r],
               want[r]);
  for (int e = 0; st == VMEP_OK && e < E; e++)
    if (per_expert[e] != want[R + e])
      mismatch(rep, "tokens_per_expert[%d] is %d, expected %lld", e,
               per_expert[e], want[R + e]);
  free(per_rank);
  free(per_expert);
  free(in_rank);
  free(want);
  return st;
}

/* Received row `row` against token t of source s (in), j the first k of
 * its ids on rank me. */
static void check_row(const struct bench_options *o, int E, int L, int me,
                      int s, const struct bench_inputs *in, int t, int j,
                      const struct recv_host *got, int row,
                      struct vmep_ref_report *rep) {
  const size_t H = (size_t)o->hidden, K = (size_t)o->topk;
  const uint32_t src = (uint32_t)t << 16 | (uint32_t)s << 5 | (uint32_t)j;
  const uint16_t *x = in->x + (size_t)t * H;
  if ((uint32_t)got->src[row] != src)
    mismatch(rep,
             "row %d: recv_src 0x%08x, expected 0x%08x (rank %d, token %d, "
             "k %d)",
             row, (unsigned)got->src[row], (unsigned)src, s, t, j);
  if (o->fp8) {
    uint8_t q[32768];
    float scales[32768 / 128];
    vmep__fp8_quantize_row(x, o->hidden, o->round_scale, q, scales);
    if (memcmp(got->x + row * H, q, H) ||
        memcmp(got->scales + row * (H / 128), scales, H / 128 * 4))
      mismatch(rep, "row %d (rank %d, token %d): fp8 codes or scales differ",
               row, s, t);
  } else if (memcmp(got->x + row * H * 2, x, H * 2)) {
    mismatch(rep, "row %d (rank %d, token %d): recv_x differs", row, s, t);
  }
  for (size_t k = 0; k < K; k++) {
    int64_t e = in->topk[(size_t)t * K + k];
    int64_t want = rank_of(e, E, L) == me ? e - (int64_t)me * L : -1;
    float w = want >= 0 ? in->weights[(size_t)t * K + k] : 0.0f;
    if (got->topk[row * K + k] != want ||
        memcmp(&got->weights[row * K + k], &w, sizeof(w)))
      mismatch(rep,
               "row %d (rank %d, token %d) k %zu: local expert %lld weight "
               "%g, expected %lld %g",
               row, s, t, k, (long long)got->topk[row * K + k],
               got->weights[row * K + k], (long long)want, w);
  }
}

/* The rows from source s (its inputs `in`), from row *next on; counts[l]
 * gains their selections of our local expert l. */
static void check_source(const struct bench_options *o, int E, int L, int me,
                         int s, const struct bench_inputs *in,
                         const struct recv_host *got, int *next,
                         long long *counts, struct vmep_ref_report *rep) {
  const int K = o->topk;
  for (int t = 0; t < in->n; t++) {
    const int64_t *tk = in->topk + (size_t)t * K;
    int j = first_on(tk, K, E, L, me);
    if (j < 0)
      continue;
    for (int k = 0; k < K; k++)
      if (rank_of(tk[k], E, L) == me)
        counts[tk[k] - (int64_t)me * L]++;
    int row = (*next)++;
    if (row < got->n)
      check_row(o, E, L, me, s, in, t, j, got, row, rep);
  }
}

vmep_status bench_ht_check_dispatch(const struct bench_options *o, int R, int E,
                                    int tokens, int me,
                                    const struct bench_ht_outputs *dev) {
  const int L = E / R, capacity = R * tokens;
  struct vmep_ref_report rep = {0, ""};
  struct recv_host got;
  struct bench_inputs in;
  int32_t *num = bench_fetch(dev->num_recv, 4);
  int n = num ? num[0] : 0, next = 0;
  long long *counts = calloc((size_t)L, sizeof(long long));
  memset(&got, 0, sizeof(got));
  memset(&in, 0, sizeof(in));
  if (n < 0 || n > capacity) {
    mismatch(&rep, "num_recv %d, outside 0..%d", n, capacity);
    n = n < 0 ? 0 : capacity;
  }
  vmep_status st = num && counts && fetch_recv(o, L, dev, n, &got) == 0
                       ? VMEP_OK
                       : VMEP_ERR_OUT_OF_MEMORY;
  for (int s = 0; st == VMEP_OK && s < R; s++) {
    if (bench_make_inputs(o, s, tokens, E, &in) != 0)
      st = VMEP_ERR_OUT_OF_MEMORY;
    if (st == VMEP_OK && s == me)
      st = check_layout(o, R, E, &in, dev, &rep);
    if (st == VMEP_OK)
      check_source(o, E, L, me, s, &in, &got, &next, counts, &rep);
    bench_free_inputs(&in);
    memset(&in, 0, sizeof(in));
  }
  if (st == VMEP_OK && next != n)
    mismatch(&rep, "num_recv %d, expected %d rows", n, next);
  for (int l = 0; st == VMEP_OK && l < L; l++)
    if (got.expert_count[l] != counts[l])
      mismatch(&rep, "recv_expert_count[%d] is %d, expected %lld", l,
               got.expert_count[l], counts[l]);
  free_recv(&got);
  free(num);
  free(counts);
  return verdict(st, &rep, me, "ht dispatch");
}

/* The ranks that hold one of a token's experts (each counted once). */
static int ranks_of_token(const int64_t *topk, int K, int E, int L) {
  int m = 0;
  for (int k = 0; k < K; k++) {
    int r = rank_of(topk[k], E, L);
    m += r >= 0 && first_on(topk, k, E, L, r) < 0;
  }
  return m;
}

vmep_status bench_ht_check_combine(const struct bench_options *o, int R, int E,
                                   int tokens, int me,
                                   const struct bench_ht_outputs *dev) {
  const int L = E / R, K = o->topk;
  const size_t H = (size_t)o->hidden;
  struct vmep_ref_report rep = {0, ""};
  struct bench_inputs in;
  uint16_t *out = bench_fetch(dev->out, (size_t)tokens * H * 2);
  float *w = bench_fetch(dev->out_weights, (size_t)tokens * K * 4);
  memset(&in, 0, sizeof(in));
  vmep_status st = out && w && bench_make_inputs(o, me, tokens, E, &in) == 0
                       ? VMEP_OK
                       : VMEP_ERR_OUT_OF_MEMORY;
  for (int t = 0; st == VMEP_OK && t < tokens; t++) {
    const int64_t *tk = in.topk + (size_t)t * K;
    float m = (float)ranks_of_token(tk, K, E, L);
    for (size_t h = 0; h < H; h++) {
      uint16_t want = vmep__bf16_from_float(
          m * vmep__bf16_to_float(in.x[(size_t)t * H + h]));
      if (out[(size_t)t * H + h] != want)
        mismatch(&rep,
                 "token %d channel %zu: 0x%04x, expected 0x%04x (%g x %g)", t,
                 h, out[(size_t)t * H + h], want, m,
                 vmep__bf16_to_float(in.x[(size_t)t * H + h]));
    }
    for (int k = 0; k < K; k++) {
      float want =
          rank_of(tk[k], E, L) >= 0 ? in.weights[(size_t)t * K + k] : 0.0f;
      if (memcmp(&w[(size_t)t * K + k], &want, sizeof(want)))
        mismatch(&rep, "token %d: out_topk_weights[%d] %g, expected %g", t, k,
                 w[(size_t)t * K + k], want);
    }
  }
  bench_free_inputs(&in);
  free(out);
  free(w);
  return verdict(st, &rep, me, "ht combine");
}
