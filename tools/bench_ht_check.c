/*
 * vmep-bench --mode ht --check: one rank's high-throughput layout,
 * dispatch and combine against the host reference (ep/reference.h:
 * reference_ht.c, through the checkers of check_ht.c), every element, bit
 * for bit. The inputs are seeded per rank (bench_make_inputs), so each
 * rank rebuilds every rank's inputs, fetches its own outputs and hands
 * both to the reference, with no traffic between ranks.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "bench.h"
#include "ep/reference.h"

/* What the reference takes of a run: every rank's inputs. */
struct ht_problem {
  struct vmep_ref_ht_problem p;
  struct vmep_ref_ht_rank_input *ranks; /* [R] */
  struct bench_inputs *in;              /* [R]: the bench's draw */
  uint8_t *q;                           /* fp8: [R, T, H] codes of x */
  float *scales;                        /* fp8: [R, T, H / 128] */
};

static void problem_close(struct ht_problem *hp) {
  for (int r = 0; hp->in && r < hp->p.num_ranks; r++)
    bench_free_inputs(&hp->in[r]);
  free(hp->in);
  free(hp->ranks);
  free(hp->q);
  free(hp->scales);
}

/* Draws rank r's inputs into hp, quantized as the bench uploads them when
 * the problem is fp8 (its bf16 x then freed: only the codes are sent).
 * -1 when out of memory. */
static int problem_draw(const struct bench_options *o, int r,
                        struct ht_problem *hp) {
  const size_t T = (size_t)hp->p.max_tokens, H = (size_t)o->hidden;
  struct bench_inputs *in = &hp->in[r];
  struct vmep_ref_ht_rank_input *ref = &hp->ranks[r];
  if (bench_make_inputs(o, r, hp->p.max_tokens, hp->p.num_experts, in) != 0)
    return -1;
  ref->num_tokens = in->n;
  ref->x = in->x;
  ref->topk_idx = in->topk;
  ref->topk_weights = in->weights;
  if (hp->p.use_fp8) {
    uint8_t *q = hp->q + (size_t)r * T * H;
    float *scales = hp->scales + (size_t)r * T * (H / VMEP_FP8_GROUP);
    bench_ht_quantize(o, in, q, scales);
    ref->x = q;
    ref->x_scales = scales;
    free(in->x);
    in->x = NULL;
  }
  return 0;
}

/*
 * The problem of the run (R ranks, E experts, T tokens per rank; x as fp8
 * codes with `fp8`, else bf16). With only >= 0, rank `only` alone has
 * tokens: what its combine needs (below). Close *hp either way.
 */
static vmep_status problem_open(const struct bench_options *o, int R, int E,
                                int T, int fp8, int only,
                                struct ht_problem *hp) {
  const size_t rows = (size_t)R * T, H = (size_t)o->hidden;
  memset(hp, 0, sizeof(*hp));
  hp->p.num_ranks = R;
  hp->p.num_experts = E;
  hp->p.max_tokens = T;
  hp->p.hidden = o->hidden;
  hp->p.top_k = o->topk;
  hp->p.use_fp8 = fp8;
  hp->in = calloc((size_t)R, sizeof(*hp->in));
  hp->ranks = calloc((size_t)R, sizeof(*hp->ranks));
  hp->p.ranks = hp->ranks;
  if (fp8) {
    hp->q = malloc(rows * H);
    hp->scales = malloc(rows * (H / VMEP_FP8_GROUP) * sizeof(float));
  }
  if (!hp->in || !hp->ranks || (fp8 && (!hp->q || !hp->scales)))
    return VMEP_ERR_OUT_OF_MEMORY;
  for (int r = 0; r < R; r++)
    if ((only < 0 || r == only) && problem_draw(o, r, hp) != 0)
      return VMEP_ERR_OUT_OF_MEMORY;
  return VMEP_OK;
}

/* VMEP_OK, or VMEP_ERR_CUDA after printing how many mismatched and the
 * first; `st` (a check that could not run) after saying so. */
static vmep_status verdict(vmep_status st, const struct vmep_ref_report *rep,
                           int me, const char *what) {
  if (st != VMEP_OK) {
    fprintf(stderr,
            "%s: rank %d %s check: not run (%s: out of host memory, a failed "
            "copy or a problem the reference refused)\n",
            program_invocation_short_name, me, what, vmep_status_name(st));
    return st;
  }
  if (!rep->mismatches)
    return VMEP_OK;
  fprintf(stderr, "%s: rank %d %s check: %lld mismatches, first: %s\n",
          program_invocation_short_name, me, what, (long long)rep->mismatches,
          rep->first);
  return VMEP_ERR_CUDA;
}

/* One output array to copy to the host: `bytes` from dev into *host. */
struct fetch {
  const void *dev;
  size_t bytes;
  void **host;
};

/* Copies f[0..n) in turn (each *host NULL before), up to the first that
 * fails (printed) or finds no host memory: VMEP_ERR_CUDA then. Free them
 * with free_fetched either way. */
static vmep_status fetch_all(const struct fetch *f, size_t n) {
  for (size_t i = 0; i < n; i++)
    if ((*f[i].host = bench_fetch(f[i].dev, f[i].bytes)) == NULL)
      return VMEP_ERR_CUDA;
  return VMEP_OK;
}

static void free_fetched(const struct fetch *f, size_t n) {
  for (size_t i = 0; i < n; i++)
    free(*f[i].host);
}

/* vmep_ep_ht_layout of rank me's tokens. */
static vmep_status check_layout(const struct ht_problem *hp, int me,
                                const struct bench_ht_outputs *dev) {
  const size_t R = (size_t)hp->p.num_ranks, E = (size_t)hp->p.num_experts;
  struct vmep_ref_report rep = {0, ""};
  struct vmep_ref_ht_layout got = {NULL, NULL, NULL};
  const struct fetch f[] = {
      {dev->tokens_per_rank, R * 4, (void **)&got.tokens_per_rank},
      {dev->tokens_per_expert, E * 4, (void **)&got.tokens_per_expert},
      {dev->in_rank, (size_t)hp->p.max_tokens * R, (void **)&got.in_rank}};
  const size_t n = sizeof(f) / sizeof(f[0]);
  vmep_status st = fetch_all(f, n);
  if (st == VMEP_OK)
    st = vmep__ref_ht_check_layout(&hp->p, me, &got, &rep);
  free_fetched(f, n);
  return verdict(st, &rep, me, "ht layout");
}

#define RECV_FETCHES 6

/*
 * The arrays of rank me's dispatch outputs to copy into `got` besides
 * num_recv: recv_expert_count, and got->capacity rows of each row array
 * (the fp8 scales only with fp8). Fills f[RECV_FETCHES]; returns how many
 * of them to copy.
 */
static size_t recv_fetches(const struct ht_problem *hp,
                           const struct bench_ht_outputs *dev,
                           struct vmep_ref_ht_recv *got, struct fetch *f) {
  const size_t H = (size_t)hp->p.hidden, K = (size_t)hp->p.top_k;
  const size_t L = (size_t)(hp->p.num_experts / hp->p.num_ranks);
  const size_t rows = (size_t)got->capacity, fp8 = (size_t)hp->p.use_fp8;
  const struct fetch all[RECV_FETCHES] = {
      {dev->expert_count, L * 4, (void **)&got->recv_expert_count},
      {dev->recv_src, rows * 4, (void **)&got->recv_src},
      {dev->recv_x, rows * H * (fp8 ? 1 : 2), &got->recv_x},
      {dev->recv_topk, rows * K * 8, (void **)&got->recv_topk_idx},
      {dev->recv_weights, rows * K * 4, (void **)&got->recv_topk_weights},
      {dev->recv_scales, rows * (H / VMEP_FP8_GROUP) * 4,
       (void **)&got->recv_scales}};
  memcpy(f, all, sizeof(all));
  return RECV_FETCHES - 1 + fp8;
}

/* Rank me's dispatch: num_recv first, taken within 0..R*T for the rows
 * to copy (a wrong N is then the checker's first mismatch), then the
 * other arrays. */
vmep_status bench_ht_check_dispatch(const struct bench_options *o, int R, int E,
                                    int tokens, int me,
                                    const struct bench_ht_outputs *dev) {
  struct ht_problem hp;
  struct vmep_ref_ht_recv got = {0};
  struct vmep_ref_report rep = {0, ""};
  struct fetch f[RECV_FETCHES];
  vmep_status st = problem_open(o, R, E, tokens, o->fp8, -1, &hp);
  vmep_status layout = st == VMEP_OK ? check_layout(&hp, me, dev) : VMEP_OK;
  const struct fetch num = {dev->num_recv, 4, (void **)&got.num_recv};
  if (st == VMEP_OK)
    st = fetch_all(&num, 1);
  int n = got.num_recv ? *got.num_recv : 0;
  got.capacity = n < 0 ? 0 : n > R * tokens ? R * tokens : n;
  size_t arrays = recv_fetches(&hp, dev, &got, f);
  if (st == VMEP_OK)
    st = fetch_all(f, arrays);
  if (st == VMEP_OK)
    st = vmep__ref_ht_check_dispatch(&hp.p, me, &got, &rep);
  st = verdict(st, &rep, me, "ht dispatch");
  free_fetched(f, arrays);
  free(got.num_recv);
  problem_close(&hp);
  return layout != VMEP_OK ? layout : st;
}

/* Rank r's combine input as the bench gives it: the bf16 rows dispatched
 * to r, sent back unchanged with their recv_topk_weights, computed by the
 * reference dispatch into *rows (free its recv_x and recv_topk_weights). */
static vmep_status rows_sent_back(const struct vmep_ref_ht_problem *p, int r,
                                  struct vmep_ref_ht_recv *rows,
                                  struct vmep_ref_ht_combine_input *in) {
  const size_t H = (size_t)p->hidden, K = (size_t)p->top_k;
  int32_t n = 0;
  struct vmep_ref_ht_recv count = {.num_recv = &n};
  vmep_status st = vmep__ref_ht_dispatch(p, r, &count);
  if (st != VMEP_OK)
    return st;
  rows->capacity = n;
  rows->recv_x = malloc((size_t)n * H * 2 + 1);
  rows->recv_topk_weights = malloc((size_t)n * K * sizeof(float) + 1);
  if (!rows->recv_x || !rows->recv_topk_weights)
    return VMEP_ERR_OUT_OF_MEMORY;
  in->x = rows->recv_x;
  in->topk_weights = rows->recv_topk_weights;
  return vmep__ref_ht_dispatch(p, r, rows);
}

/*
 * The combine of rank me's tokens reads, of each rank's rows, only those
 * that came from me; the other sources only shift where they sit. So the
 * problem holds me's tokens alone, and every rank's rows are only me's:
 * a rank's memory for R * T rows in all, not for every rank's dispatch.
 */
vmep_status bench_ht_check_combine(const struct bench_options *o, int R, int E,
                                   int tokens, int me,
                                   const struct bench_ht_outputs *dev) {
  const size_t H = (size_t)o->hidden, K = (size_t)o->topk;
  struct ht_problem hp;
  struct vmep_ref_report rep = {0, ""};
  struct vmep_ref_ht_recv *rows = calloc((size_t)R, sizeof(*rows));
  struct vmep_ref_ht_combine_input *in = calloc((size_t)R, sizeof(*in));
  uint16_t *out = bench_fetch(dev->out, (size_t)tokens * H * 2);
  float *out_w = bench_fetch(dev->out_weights, (size_t)tokens * K * 4);
  vmep_status st = problem_open(o, R, E, tokens, 0, me, &hp);
  if (st == VMEP_OK && (!rows || !in))
    st = VMEP_ERR_OUT_OF_MEMORY;
  if (st == VMEP_OK && (!out || !out_w))
    st = VMEP_ERR_CUDA;
  for (int r = 0; st == VMEP_OK && r < R; r++)
    st = rows_sent_back(&hp.p, r, &rows[r], &in[r]);
  if (st == VMEP_OK)
    st = vmep__ref_ht_check_combine(&hp.p, in, me, out, out_w, &rep);
  for (int r = 0; rows && r < R; r++) {
    free(rows[r].recv_x);
    free(rows[r].recv_topk_weights);
  }
  free(rows);
  free(in);
  free(out);
  free(out_w);
  problem_close(&hp);
  return verdict(st, &rep, me, "ht combine");
}
