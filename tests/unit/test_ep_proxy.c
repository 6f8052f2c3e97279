/*
 * The inter-node proxy (src/ep/proxy.c) with real UCX between processes,
 * the test playing the kernels' part in plain host memory: three ranks,
 * each remote to the others, stage what they send and post ring requests
 * as ll_post does; every wait steps the proxy. Per round (both parities,
 * bf16 and fp8 rows, seeded random token counts, top-k and expert ids;
 * VMEP_TEST_SEED replays; the low-latency calls, the high-throughput ones
 * and a cached high-throughput dispatch in turn):
 *  - dispatch: the header and expert ids arrive (high-throughput: and the
 *    weights; cached: neither), each row a receiver selected (cached:
 *    every row) holds the sender's row_len bytes, every other byte of the
 *    receiver's inbox stays poison; the sender's bytes_out grows by
 *    exactly the header, ids, weights, rows and one flag per peer;
 *  - combine: each expert rank's rows land in the source's slots of the
 *    (token, k) its experts served, and nowhere else (in fp8 rounds as
 *    LogFMT rows: only the first 41 H / 32 bytes of a slot; in the later
 *    low-latency rounds reduced at the expert side for every source, then
 *    for the odd ones (the proxy goes by each source's header), after a
 *    dispatch that
 *    shipped the weights: only each token's first slot of the rank's
 *    experts); high-throughput:
 *    the slots whose mark in the outbox is this call's, one per (token,
 *    expert rank), with their weights and marks, and nowhere else (not the
 *    row indices, not the slots of stale or garbage marks);
 *  - a flag request, and the heartbeat (forwarded at most every 100 us);
 *  - in the last round (low-latency) the others mask rank MASKED: it gets
 *    their dispatch areas, as it pulls them when mapped, every flag and
 *    heartbeat, and no combine row (its slots stay poison, bytes_out
 *    counts only the flag toward it), and after the mask is cleared it
 *    gets rows again (the survivors' rounds);
 *  - some rounds post more requests than the ring holds at once.
 * Then one rank is killed (SIGKILL) while the survivors stream flags
 * toward it: they notice, their steps neither hang nor crash, bytes_out
 * counts only the puts the engine took, the proxy warns once naming the
 * rank and why, and in the rounds after it nothing more goes toward the
 * dead rank. In one process, records cut short, foreign, of the wrong
 * rank or group size, of another buffer shape, or disagreeing on the
 * remote set are refused by connect naming the rank; good ones connect,
 * each peer's inbox of us where the layout puts it.
 */
#include <pthread.h>
#include <time.h>

#include "core/bytes.h"
#include "ep/ep.h"
#include "kernels/logfmt.h"
#include "test_net_util.h"

#define NUM_RANKS 3
#define EXPERTS 6
#define LOCAL (EXPERTS / NUM_RANKS)
#define HIDDEN 256
#define TOKENS 16
#define TOPK 4
#define ROUNDS 13      /* all ranks; the last one masks MASKED */
#define FAULT_ROUNDS 2 /* the survivors, after the victim died */
#define VICTIM 2
#define MASKED 1     /* masked by the others in round ROUNDS - 1 */
#define POISON 0xA5  /* inboxes, before each round */
#define GARBAGE 0x5C /* outbox slots no expert of ours filled */
#define WAIT_MS 20000
#define BURST (VMEP_LL_RING_SLOTS + 44) /* requests of a burst round */
#define COMBINE_ROW (2 * (size_t)HIDDEN)

static uint64_t base_seed; /* printed; VMEP_TEST_SEED replays it */
static vmep_ep_config config;

static uint64_t now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

/* ---- what each rank writes: derived from (seed, round, ranks) ------------ */

enum { TAG_SHAPE = 1, TAG_TOKENS, TAG_ROWS, TAG_COMBINE, TAG_WEIGHTS };

struct gen {
  uint64_t s;
};

static struct gen gen_of(int tag, int round, int a, int b) {
  const int key[4] = {tag, round, a, b};
  struct gen g = {base_seed ^ vmep__bytes_hash(key, sizeof(key))};
  if (!g.s)
    g.s = 1;
  return g;
}

static uint64_t gen_next(struct gen *g) {
  g->s ^= g->s >> 12;
  g->s ^= g->s << 25;
  g->s ^= g->s >> 27;
  return g->s * 2685821657736338717ull;
}

static void gen_bytes(struct gen *g, unsigned char *out, size_t n) {
  for (size_t i = 0; i < n; i += 8) {
    uint64_t v = gen_next(g);
    memcpy(out + i, &v, n - i < 8 ? n - i : 8);
  }
}

/* Which calls a round makes: low-latency dispatch and combine, or the
 * high-throughput ones, with a cached dispatch (ids not this call's). */
enum kind { LOW_LATENCY, HIGH_THROUGHPUT, HT_CACHED };

/* One round's call, the same on every rank. */
struct shape {
  int parity, K, fp8;
  enum kind kind;
  int reduced; /* low-latency, weights given to dispatch (the combine is
                  reduced at the expert side): 1 by every rank, 2 by the
                  odd ranks */
  int masked;  /* the rank the others mask in this round, or -1 */
  uint64_t epoch;
  size_t row_len;
  size_t comb_len; /* the bytes of a low-latency combine slot that travel:
                      all, or a LogFMT row's (with fp8 dispatch rounds) */
};

static struct shape shape_of(int round) {
  struct gen g = gen_of(TAG_SHAPE, round, 0, 0);
  struct shape sh;
  sh.parity = round % 2;
  sh.epoch = (uint64_t)round / 2 + 1;
  sh.K = round == 0 ? TOPK : 1 + (int)(gen_next(&g) % TOPK);
  sh.fp8 = (round / 2) % 2;         /* each parity in both modes */
  sh.kind = (enum kind)(round % 3); /* each kind with both, in 12 rounds */
  /* rounds 6 (fp8: LogFMT slots, parity 0) and 9 (bf16, parity 1) */
  sh.reduced = sh.kind == LOW_LATENCY && round >= 6 ? 1 + (round >= 9) : 0;
  sh.masked = round == ROUNDS - 1 ? MASKED : -1;
  sh.row_len = sh.fp8 ? HIDDEN + HIDDEN / VMEP_LL_FP8_GROUP * sizeof(float)
                      : 2 * (size_t)HIDDEN;
  sh.comb_len = sh.fp8 ? vmep_logfmt_row_bytes(HIDDEN) : COMBINE_ROW;
  return sh;
}

/* A rank's tokens of a round: all of them in round 0, none from rank 1 in
 * round 1, else random; expert ids in -1..E-1, no expert twice per
 * token. */
struct tokens {
  int n;
  int32_t ids[TOKENS * TOPK];
};

static void tokens_of(int round, int rank, const struct shape *sh,
                      struct tokens *tk) {
  struct gen g = gen_of(TAG_TOKENS, round, rank, 0);
  tk->n = (int)(gen_next(&g) % (TOKENS + 1));
  if (round == 0)
    tk->n = TOKENS;
  if (round == 1 && rank == 1)
    tk->n = 0;
  for (int t = 0; t < tk->n; t++)
    for (int k = 0; k < sh->K; k++) {
      int32_t e;
      int dup;
      do {
        e = (int32_t)(gen_next(&g) % (EXPERTS + 1)) - 1;
        dup = 0;
        for (int j = 0; j < k && e >= 0; j++)
          dup |= tk->ids[t * sh->K + j] == e;
      } while (dup);
      tk->ids[t * sh->K + k] = e;
    }
}

static int owner(int32_t expert) { return expert < 0 ? -1 : expert / LOCAL; }

/* Whether rank r's dispatch of the round took the weights. */
static int reduces(const struct shape *sh, int r) {
  return sh->reduced == 1 || (sh->reduced == 2 && r % 2);
}

/* Whether expert rank d fills slot i (t * K + k) of a low-latency
 * combine: k's expert is d's (reduced: the token's first such k). */
static int fills(const int32_t *ids, int K, int i, int d, int reduced) {
  for (int j = reduced ? i - i % K : i; j < i; j++)
    if (owner(ids[j]) == d)
      return 0;
  return owner(ids[i]) == d;
}

/* Whether token t selected an expert of rank d (the oracle of the
 * proxy's row rule). */
static int selects(const struct tokens *tk, int K, int t, int d) {
  for (int k = 0; k < K; k++)
    if (owner(tk->ids[t * K + k]) == d)
      return 1;
  return 0;
}

/* The heartbeat rank r writes in round `round` (two per round). */
static uint64_t beat_of(int round, int r, int second) {
  return ((uint64_t)round + 1) << 16 | (uint64_t)second << 8 | (uint64_t)r;
}

/* ---- a rank: its proxy over plain host memory ---------------------------- */

struct rank_state {
  int rank, fd;
  int live[NUM_RANKS]; /* peers that answer (never ourselves) */
  vmep_engine *engine;
  vmep_engine_mr *mr;
  char *host;
  size_t host_bytes;
  struct vmep_ep_proxy px;
  uint64_t posted;       /* ring requests published */
  uint64_t longest_step; /* ns */
  unsigned char *want, *rows;
};

static int step(struct rank_state *s) {
  uint64_t t0 = now_ns();
  int served = vmep__ep_proxy_step(&s->px);
  uint64_t took = now_ns() - t0;
  if (took > s->longest_step)
    s->longest_step = took;
  return served;
}

static int live_peers(const struct rank_state *s) {
  int n = 0;
  for (int r = 0; r < NUM_RANKS; r++)
    n += s->live[r];
  return n;
}

static uint64_t bytes_out(const struct rank_state *s) {
  return __atomic_load_n(&s->px.bytes_out, __ATOMIC_RELAXED);
}

static void check_deadline(const struct rank_state *s, uint64_t deadline,
                           const char *what) {
  if (vmep__now_ms() > deadline)
    TEST_FAIL("rank %d: no %s within %d ms", s->rank, what, WAIT_MS);
}

/* The relay's allgather, stepping the proxy while it waits. */
static void exchange(struct rank_state *s, const void *mine, uint32_t len,
                     void **out, uint32_t *lens) {
  net_frame_send(s->fd, mine, len);
  struct pollfd p = {.fd = s->fd, .events = POLLIN};
  uint64_t deadline = vmep__now_ms() + 2 * WAIT_MS;
  while (poll(&p, 1, 0) == 0) {
    step(s);
    check_deadline(s, deadline, "answer from the relay");
  }
  for (int r = 0; r < NUM_RANKS; r++)
    if (!(out[r] = net_frame_recv(s->fd, &lens[r])))
      TEST_FAIL("rank %d: the relay closed", s->rank);
}

static void barrier(struct rank_state *s, const char *mine) {
  void *out[NUM_RANKS];
  uint32_t lens[NUM_RANKS];
  exchange(s, mine, mine ? (uint32_t)strlen(mine) : 0, out, lens);
  for (int r = 0; r < NUM_RANKS; r++)
    free(out[r]);
}

/* Publishes a request as ll_post does: our slot, once the proxy freed it,
 * its fields, then seq (release). */
static void post(struct rank_state *s, enum vmep_ll_ship op,
                 const struct shape *sh, size_t offset, uint64_t value) {
  const uint64_t slot = s->posted;
  uint64_t deadline = vmep__now_ms() + WAIT_MS;
  while (slot - __atomic_load_n(&s->px.ring->tail, __ATOMIC_ACQUIRE) >=
         VMEP_LL_RING_SLOTS) {
    step(s);
    check_deadline(s, deadline, "free ring slot");
  }
  struct vmep_ll_ring_entry *e =
      &s->px.ring->entries[slot % VMEP_LL_RING_SLOTS];
  e->op = (uint32_t)op;
  e->parity = (uint32_t)sh->parity;
  e->num_topk = (uint32_t)sh->K;
  e->row_len = op == VMEP_LL_SHIP_DISPATCH ||
                       op == VMEP_LL_SHIP_DISPATCH_WEIGHTS ||
                       op == VMEP_LL_SHIP_HT_CACHED
                   ? (uint32_t)sh->row_len
               : op == VMEP_LL_SHIP_COMBINE && sh->comb_len < COMBINE_ROW
                   ? (uint32_t)sh->comb_len
                   : 0;
  e->offset = offset;
  e->value = value;
  __atomic_store_n(&e->seq, slot + 1, __ATOMIC_RELEASE);
  s->posted++;
}

/* Steps until the proxy took every request posted. */
static void serve_all(struct rank_state *s) {
  uint64_t deadline = vmep__now_ms() + WAIT_MS;
  while (__atomic_load_n(&s->px.ring->tail, __ATOMIC_ACQUIRE) != s->posted) {
    step(s);
    check_deadline(s, deadline, "service of the ring");
  }
}

static void check_bytes_out(const struct rank_state *s, uint64_t before,
                            uint64_t want, const char *what, int round) {
  uint64_t got = bytes_out(s) - before;
  if (got != want)
    TEST_FAIL("rank %d: round %d: %s: bytes_out grew by %" PRIu64
              ", expected %" PRIu64,
              s->rank, round, what, got, want);
}

static size_t flag_at(size_t array, int parity, int r) {
  return array + ((size_t)parity * NUM_RANKS + (size_t)r) * sizeof(uint64_t);
}

/* Steps until the word at base + offset is `value`. */
static void wait_word(struct rank_state *s, const char *base, size_t offset,
                      uint64_t value, const char *what, int peer) {
  const uint64_t *word = (const uint64_t *)(base + offset);
  uint64_t deadline = vmep__now_ms() + WAIT_MS;
  while (__atomic_load_n(word, __ATOMIC_ACQUIRE) != value) {
    if (vmep__now_ms() > deadline)
      TEST_FAIL("rank %d: %s of rank %d is %" PRIu64 ", expected %" PRIu64
                " (no change within %d ms)",
                s->rank, what, peer, __atomic_load_n(word, __ATOMIC_ACQUIRE),
                value, WAIT_MS);
    step(s);
  }
}

static void compare(const struct rank_state *s, const unsigned char *got,
                    const unsigned char *want, size_t bytes, int round,
                    const char *what, int peer, size_t unit) {
  if (memcmp(got, want, bytes) == 0)
    return;
  size_t i = 0;
  while (got[i] == want[i])
    i++;
  TEST_FAIL("rank %d: round %d: %s of rank %d: byte %zu (unit %zu, +%zu) is "
            "0x%02x, expected 0x%02x%s",
            s->rank, round, what, peer, i, i / unit, i % unit, got[i], want[i],
            want[i] == POISON ? " (poison: nothing may land there)" : "");
}

/* ---- one round ----------------------------------------------------------- */

/* The request of a round's dispatch. */
static enum vmep_ll_ship dispatch_op(const struct shape *sh, int rank) {
  return sh->kind == HT_CACHED ? VMEP_LL_SHIP_HT_CACHED
         : sh->kind == HIGH_THROUGHPUT || reduces(sh, rank)
             ? VMEP_LL_SHIP_DISPATCH_WEIGHTS
             : VMEP_LL_SHIP_DISPATCH;
}

/* The bytes rank `src`'s send area of a round's dispatch (tokens tk)
 * leaves in a receiver's inbox of it, into want (area_bytes): the header;
 * the ids, and (high-throughput or reduced) the weights, unless cached;
 * the rows the
 * receiver `d` selected (cached: every row), row_len bytes each; poison
 * elsewhere. */
static void dispatch_want(struct rank_state *s, int round,
                          const struct shape *sh, int src, int d,
                          const struct tokens *tk, size_t area_bytes) {
  const struct vmep_ll_layout *l = &s->px.layout;
  const size_t ids = (size_t)tk->n * sh->K * sizeof(int32_t);
  memset(s->want, POISON, area_bytes);
  /* the sender's header: n, whether it staged weights, zero past them */
  const int header[2] = {tk->n, reduces(sh, src)};
  memset(s->want, 0, l->send_topk);
  memcpy(s->want, header, sizeof(header));
  if (sh->kind != HT_CACHED)
    memcpy(s->want + l->send_topk, tk->ids, ids);
  if (sh->kind == HIGH_THROUGHPUT || reduces(sh, src)) {
    struct gen g = gen_of(TAG_WEIGHTS, round, src, 0);
    gen_bytes(&g, s->want + l->send_weights, ids);
  }
  struct gen g = gen_of(TAG_ROWS, round, src, 0);
  gen_bytes(&g, s->rows, (size_t)tk->n * l->row_bytes);
  for (int t = 0; t < tk->n; t++)
    if (sh->kind == HT_CACHED || selects(tk, sh->K, t, d))
      memcpy(s->want + l->send_rows + t * l->row_bytes,
             s->rows + t * l->row_bytes, sh->row_len);
}

static void dispatch(struct rank_state *s, int round, const struct shape *sh) {
  static const char *const names[2][3] = {
      {"dispatch (bf16)", "high-throughput dispatch (bf16)",
       "cached dispatch (bf16)"},
      {"dispatch (fp8)", "high-throughput dispatch (fp8)",
       "cached dispatch (fp8)"}};
  const struct vmep_ll_layout *l = &s->px.layout;
  const int b = sh->parity, K = sh->K;
  struct tokens mine;
  tokens_of(round, s->rank, sh, &mine);
  char *area = s->px.stage + l->send[b];
  const size_t ids = (size_t)mine.n * K * sizeof(int32_t);
  ((int *)area)[0] = mine.n;
  ((int *)area)[1] = reduces(sh, s->rank); /* staged weights */
  memcpy(area + l->send_topk, mine.ids, ids);
  /* A cached dispatch's staged ids are an earlier call's: ones that select
   * nobody, so that the proxy must not go by them. */
  if (sh->kind == HT_CACHED)
    memset(area + l->send_topk, 0xff, ids);
  struct gen g = gen_of(TAG_WEIGHTS, round, s->rank, 0);
  gen_bytes(&g, (unsigned char *)area + l->send_weights, ids);
  /* Whole rows of random bytes: past row_len they must not travel. */
  g = gen_of(TAG_ROWS, round, s->rank, 0);
  gen_bytes(&g, (unsigned char *)area + l->send_rows,
            (size_t)mine.n * l->row_bytes);
  uint64_t want = 0;
  for (int p = 0; p < NUM_RANKS; p++) {
    if (!s->live[p])
      continue;
    want += l->send_topk + 8;
    want += sh->kind == HT_CACHED ? 0 : ids;
    want += sh->kind == HIGH_THROUGHPUT || reduces(sh, s->rank) ? ids : 0;
    for (int t = 0; t < mine.n; t++)
      want +=
          sh->kind == HT_CACHED || selects(&mine, K, t, p) ? sh->row_len : 0;
  }
  uint64_t before = bytes_out(s);
  post(s, dispatch_op(sh, s->rank), sh, l->disp_ready, sh->epoch);
  serve_all(s);
  check_bytes_out(s, before, want, names[sh->fp8][sh->kind], round);

  const size_t area_bytes = l->send[1] - l->send[0];
  for (int src = 0; src < NUM_RANKS; src++) {
    if (!s->live[src])
      continue;
    wait_word(s, s->px.inbox[src], flag_at(l->disp_ready, b, src), sh->epoch,
              "dispatch flag", src);
    struct tokens tk;
    tokens_of(round, src, sh, &tk);
    dispatch_want(s, round, sh, src, s->rank, &tk, area_bytes);
    compare(s, (const unsigned char *)s->px.inbox[src] + l->send[b], s->want,
            area_bytes, round, names[sh->fp8][sh->kind], src, l->row_bytes);
  }
}

static void combine(struct rank_state *s, int round, const struct shape *sh) {
  const struct vmep_ll_layout *l = &s->px.layout;
  const int b = sh->parity, K = sh->K;
  uint64_t want = 0;
  for (int src = 0; src < NUM_RANKS; src++) {
    if (!s->live[src])
      continue;
    /* src's expert ids in our inbox of it (checked by dispatch) */
    const char *area = s->px.inbox[src] + l->send[b];
    int n = *(const int *)area;
    const int32_t *ids = (const int32_t *)(area + l->send_topk);
    unsigned char *slots =
        (unsigned char *)s->px.outbox[src] + (l->slots[b] - l->slots[0]);
    memset(slots, GARBAGE, (size_t)n * K * COMBINE_ROW);
    struct gen g = gen_of(TAG_COMBINE, round, s->rank, src);
    gen_bytes(&g, s->rows, (size_t)n * K * COMBINE_ROW);
    for (int i = 0; i < n * K; i++)
      if (fills(ids, K, i, s->rank, reduces(sh, src))) {
        memcpy(slots + i * COMBINE_ROW, s->rows + i * COMBINE_ROW, COMBINE_ROW);
        want += src == sh->masked ? 0 : sh->comb_len; /* its flag alone */
      }
    want += 8;
  }
  uint64_t before = bytes_out(s);
  post(s, VMEP_LL_SHIP_COMBINE, sh, l->comb_ready, sh->epoch);
  serve_all(s);
  check_bytes_out(
      s, before, want,
      sh->reduced ? "combine reduced at the experts (some)" : "combine", round);

  struct tokens mine;
  tokens_of(round, s->rank, sh, &mine);
  /* Every remote expert rank puts into the one slot area of our stage:
   * each slot [t][k] holds the rows of its expert's rank, the others (our
   * own experts', unselected) the poison. */
  const size_t slot_bytes = l->slots[1] - l->slots[0];
  for (int d = 0; d < NUM_RANKS; d++)
    if (s->live[d])
      wait_word(s, s->px.inbox[d], flag_at(l->comb_ready, b, d), sh->epoch,
                "combine flag", d);
  memset(s->want, POISON, slot_bytes);
  for (int d = 0; d < NUM_RANKS; d++) {
    if (!s->live[d] || s->rank == sh->masked) /* masked: no row came */
      continue;
    struct gen g = gen_of(TAG_COMBINE, round, d, s->rank);
    gen_bytes(&g, s->rows, (size_t)mine.n * K * COMBINE_ROW);
    for (int i = 0; i < mine.n * K; i++) /* a LogFMT slot's tail: poison */
      if (fills(mine.ids, K, i, d, reduces(sh, s->rank)))
        memcpy(s->want + i * COMBINE_ROW, s->rows + i * COMBINE_ROW,
               sh->comb_len);
  }
  compare(s, (const unsigned char *)s->px.stage + l->slots[b], s->want,
          slot_bytes, round, "combine slots", s->rank, COMBINE_ROW);
}

/* The high-throughput slot expert rank d fills for token t: [t][j], j the
 * first k whose expert is d's; -1 when none is. */
static int ht_slot(const struct tokens *tk, int K, int t, int d) {
  for (int k = 0; k < K; k++)
    if (owner(tk->ids[t * K + k]) == d)
      return t * K + k;
  return -1;
}

/* The parts of a high-throughput slot (row, weights, mark) that travel. */
#define HT_SLOT_BYTES(K) (COMBINE_ROW + (size_t)(K) * sizeof(float) + 8)

/* High-throughput combine: each expert rank fills, in its outbox of each
 * source, the slot of every token with an expert of its (row, weights, row
 * index, mark of this epoch), the other slots holding garbage and marks of
 * an earlier call or garbage; the proxy finds them by their marks. Each
 * source's stage then holds exactly those rows, weights and marks; the
 * row indices stay (never in place across nodes), as does the poison
 * everywhere else. */
static void ht_combine(struct rank_state *s, int round,
                       const struct shape *sh) {
  const struct vmep_ll_layout *l = &s->px.layout;
  const int b = sh->parity, K = sh->K;
  const size_t slots = (size_t)TOKENS * K;
  const uint64_t mark = sh->epoch << VMEP_HT_MARK_EPOCH_SHIFT;
  uint64_t want = 0;
  for (int src = 0; src < NUM_RANKS; src++) {
    if (!s->live[src])
      continue;
    struct tokens tk;
    tokens_of(round, src, sh, &tk);
    char *out = s->px.outbox[src] - l->slots[0]; /* at layout offsets */
    unsigned char *rows = (unsigned char *)out + l->slots[b];
    float *weights = (float *)(out + l->ht_weights[b]);
    uint64_t *marks = (uint64_t *)(out + l->ht_mark[b]);
    int32_t *row_index = (int32_t *)(out + l->ht_row[b]);
    memset(rows, GARBAGE, slots * COMBINE_ROW);
    memset(weights, GARBAGE, slots * K * sizeof(float));
    memset(row_index, GARBAGE, slots * sizeof(int32_t));
    for (size_t i = 0; i < slots; i++)
      marks[i] =
          i % 2 ? (mark - (1u << VMEP_HT_MARK_EPOCH_SHIFT)) | (uint64_t)s->rank
                : 0x5c5c5c5c5c5c5c5cull;
    struct gen g = gen_of(TAG_COMBINE, round, s->rank, src);
    for (int t = 0; t < tk.n; t++) {
      int i = ht_slot(&tk, K, t, s->rank);
      if (i < 0)
        continue;
      gen_bytes(&g, rows + (size_t)i * COMBINE_ROW, COMBINE_ROW);
      gen_bytes(&g, (unsigned char *)(weights + (size_t)i * K),
                (size_t)K * sizeof(float));
      row_index[i] = t;
      marks[i] = mark | (uint64_t)s->rank;
      want += HT_SLOT_BYTES(K);
    }
    want += 8;
  }
  uint64_t before = bytes_out(s);
  post(s, VMEP_LL_SHIP_HT_COMBINE, sh, l->comb_ready, sh->epoch);
  serve_all(s);
  check_bytes_out(s, before, want, "high-throughput combine", round);

  for (int d = 0; d < NUM_RANKS; d++)
    if (s->live[d])
      wait_word(s, s->px.inbox[d], flag_at(l->comb_ready, b, d), sh->epoch,
                "combine flag", d);
  struct tokens mine;
  tokens_of(round, s->rank, sh, &mine);
  /* The image as it must be, at the layout's offsets. */
  memset(s->want, POISON, s->px.image);
  for (int d = 0; d < NUM_RANKS; d++) {
    if (!s->live[d])
      continue;
    struct gen g = gen_of(TAG_COMBINE, round, d, s->rank);
    for (int t = 0; t < mine.n; t++) {
      int i = ht_slot(&mine, K, t, d);
      if (i < 0)
        continue;
      gen_bytes(&g, s->want + l->slots[b] + (size_t)i * COMBINE_ROW,
                COMBINE_ROW);
      gen_bytes(&g, s->want + l->ht_weights[b] + (size_t)i * K * sizeof(float),
                (size_t)K * sizeof(float));
      uint64_t m = mark | (uint64_t)d;
      memcpy(s->want + l->ht_mark[b] + (size_t)i * sizeof(m), &m, sizeof(m));
    }
  }
  const struct {
    size_t offset, bytes, unit;
    const char *what;
  } parts[] = {
      {l->slots[b], l->slots[1] - l->slots[0], COMBINE_ROW,
       "high-throughput combine slots"},
      {l->ht_weights[b], l->ht_weights[1] - l->ht_weights[0],
       (size_t)K * sizeof(float), "high-throughput combine weights"},
      {l->ht_mark[b], l->ht_mark[1] - l->ht_mark[0], 8,
       "high-throughput combine marks"},
      {l->ht_row[b], l->ht_row[1] - l->ht_row[0], 4,
       "high-throughput combine row indices"},
  };
  for (size_t i = 0; i < sizeof(parts) / sizeof(parts[0]); i++)
    compare(s, (const unsigned char *)s->px.stage + parts[i].offset,
            s->want + parts[i].offset, parts[i].bytes, round, parts[i].what,
            s->rank, parts[i].unit);
}

/* A flag alone, then two heartbeats back to back: the second goes at
 * least 100 us after the first. */
static void flag_and_beats(struct rank_state *s, int round,
                           const struct shape *sh) {
  const struct vmep_ll_layout *l = &s->px.layout;
  const int peers = live_peers(s);
  uint64_t before = bytes_out(s);
  post(s, VMEP_LL_SHIP_FLAG, sh, l->disp_ack, sh->epoch);
  serve_all(s);
  check_bytes_out(s, before, 8 * (uint64_t)peers, "flag", round);
  for (int p = 0; p < NUM_RANKS; p++)
    if (s->live[p])
      wait_word(s, s->px.inbox[p], flag_at(l->disp_ack, sh->parity, p),
                sh->epoch, "flag", p);

  uint64_t *alive = (uint64_t *)(s->px.stage + l->alive);
  uint64_t first_try = 0, second_seen = 0;
  before = bytes_out(s);
  for (int second = 0; second < 2; second++) {
    const uint64_t beat = beat_of(round, s->rank, second);
    __atomic_store_n(alive, beat, __ATOMIC_RELEASE);
    uint64_t deadline = vmep__now_ms() + WAIT_MS;
    for (;;) {
      uint64_t t0 = now_ns();
      step(s);
      if (s->px.beat == beat) {
        if (second)
          second_seen = now_ns();
        else
          first_try = t0; /* the first was sent after this */
        break;
      }
      check_deadline(s, deadline, "heartbeat forwarded");
    }
  }
  if (second_seen - first_try < 100000)
    TEST_FAIL("rank %d: two heartbeats forwarded within %" PRIu64 " ns",
              s->rank, second_seen - first_try);
  check_bytes_out(s, before, 16 * (uint64_t)peers, "heartbeats", round);
  for (int p = 0; p < NUM_RANKS; p++)
    if (s->live[p])
      wait_word(s, s->px.inbox[p], l->alive, beat_of(round, p, 1), "heartbeat",
                p);
}

/* More flag requests than the ring holds: a full ring taken in one step,
 * then the rest posted against its tail. */
static void burst(struct rank_state *s, int round, const struct shape *sh) {
  const struct vmep_ll_layout *l = &s->px.layout;
  const uint64_t base = (uint64_t)round << 32;
  uint64_t before = bytes_out(s);
  uint64_t tail = __atomic_load_n(&s->px.ring->tail, __ATOMIC_ACQUIRE);
  for (int i = 0; i < VMEP_LL_RING_SLOTS; i++)
    post(s, VMEP_LL_SHIP_FLAG, sh, l->comb_ack, base + (uint64_t)i + 1);
  ASSERT_EQ(__atomic_load_n(&s->px.ring->tail, __ATOMIC_ACQUIRE), tail);
  ASSERT_EQ(step(s), VMEP_LL_RING_SLOTS);
  for (int i = VMEP_LL_RING_SLOTS; i < BURST; i++)
    post(s, VMEP_LL_SHIP_FLAG, sh, l->comb_ack, base + (uint64_t)i + 1);
  serve_all(s);
  check_bytes_out(s, before, 8 * (uint64_t)live_peers(s) * BURST, "burst",
                  round);
  for (int p = 0; p < NUM_RANKS; p++)
    if (s->live[p])
      wait_word(s, s->px.inbox[p], flag_at(l->comb_ack, sh->parity, p),
                base + BURST, "last flag of a burst", p);
}

static void run_round(struct rank_state *s, int round) {
  const struct shape sh = shape_of(round);
  const struct vmep_ll_layout *l = &s->px.layout;
  for (int p = 0; p < NUM_RANKS; p++)
    if (s->live[p]) {
      memset(s->px.inbox[p] + l->send[sh.parity], POISON,
             l->send[1] - l->send[0]);
    }
  /* Our stage's combine parts of the parity, where peers put. */
  const size_t parts[][2] = {
      {l->slots[sh.parity], l->slots[1] - l->slots[0]},
      {l->ht_mark[sh.parity], l->ht_mark[1] - l->ht_mark[0]},
      {l->ht_weights[sh.parity], l->ht_weights[1] - l->ht_weights[0]},
      {l->ht_row[sh.parity], l->ht_row[1] - l->ht_row[0]}};
  for (size_t i = 0; i < sizeof(parts) / sizeof(parts[0]); i++)
    memset(s->px.stage + parts[i][0], POISON, parts[i][1]);
  barrier(s, NULL); /* every inbox poisoned before anyone sends */
  /* A masked rank gets the dispatch's area, every flag and heartbeat,
   * and no combine row: the others mask it in their rings as the kernels
   * do. */
  const int masks = sh.masked >= 0 && sh.masked != s->rank;
  if (masks)
    __atomic_store_n(&s->px.ring->masked[sh.masked], 1, __ATOMIC_RELEASE);
  dispatch(s, round, &sh);
  if (sh.kind == LOW_LATENCY)
    combine(s, round, &sh);
  else
    ht_combine(s, round, &sh);
  flag_and_beats(s, round, &sh);
  if (masks)
    __atomic_store_n(&s->px.ring->masked[sh.masked], 0, __ATOMIC_RELEASE);
  if (round % 4 == 3 && round < ROUNDS)
    burst(s, round, &sh);
  barrier(s, NULL); /* every check done before the areas are written again */
}

/* ---- the victim's death -------------------------------------------------- */

/* What the survivors write to stderr from the victim's death on (the
 * proxy's warning), echoed when read back, or at exit if a check fails
 * meanwhile. */
static struct {
  FILE *file;
  int saved; /* fd 2 before */
} captured;

static char *capture_end(void) {
  if (!captured.file)
    return NULL;
  fflush(stderr);
  dup2(captured.saved, 2);
  close(captured.saved);
  long len = lseek(fileno(captured.file), 0, SEEK_END);
  char *text = calloc(1, len > 0 ? (size_t)len + 1 : 1);
  if (text && len > 0) {
    rewind(captured.file);
    if (fread(text, 1, (size_t)len, captured.file) != (size_t)len)
      text[0] = 0;
  }
  fclose(captured.file);
  captured.file = NULL;
  if (text)
    fputs(text, stderr);
  return text;
}

static void capture_at_exit(void) { free(capture_end()); }

static void capture_begin(void) {
  fflush(stderr);
  captured.file = tmpfile();
  ASSERT_TRUE(captured.file != NULL);
  captured.saved = dup(2);
  ASSERT_TRUE(captured.saved >= 0);
  ASSERT_EQ(dup2(fileno(captured.file), 2), 2);
  ASSERT_EQ(atexit(capture_at_exit), 0);
}

/*
 * The victim steps its proxy (serving what the survivors put into it)
 * until it is killed, posting nothing: UCX 1.13's software RMA (TCP)
 * aborts a process that handles a put from a peer whose endpoint already
 * failed (its completion reply is refused, and ucp_request_try_send treats
 * that as fatal), so only the survivors stream. They post a flag every
 * millisecond until the engine reports the victim failed, and check each
 * step: 8 B toward the other survivor per flag, and 8 B toward the victim
 * only while the engine takes its puts (until the proxy reported it,
 * whether a put found the failure or the engine did).
 */
static void flood(struct rank_state *s) {
  const struct shape sh = {.parity = 0, .K = 1};
  const int victim = s->rank == VICTIM;
  uint64_t value = 1ull << 48, start = vmep__now_ms(), last = 0;
  while (victim || !vmep__engine_peer_is_failed(s->engine, VICTIM)) {
    uint64_t now = now_ns();
    if (!victim && now - last > 1000000u) {
      last = now;
      post(s, VMEP_LL_SHIP_FLAG, &sh, s->px.layout.comb_ack, ++value);
    }
    uint64_t before = bytes_out(s);
    int served = step(s);
    if (!victim)
      check_bytes_out(s, before,
                      8 * (uint64_t)served * (2u - s->px.reported[VICTIM]),
                      "a flag while the victim dies", ROUNDS);
    check_deadline(s, start + WAIT_MS,
                   victim ? "SIGKILL" : "failure of the victim");
  }
  printf("rank %d: rank %d's death noticed after %" PRIu64 " ms (%s)\n",
         s->rank, VICTIM, vmep__now_ms() - start,
         s->px.reported[VICTIM] ? "in a put" : "by the engine");
}

/* The proxy's warning about the victim: once, with a reason. */
static void check_warning(const char *text) {
  char head[64];
  snprintf(head, sizeof(head), "inter-node proxy: rank %d is unreachable (",
           VICTIM);
  const char *at = text ? strstr(text, head) : NULL;
  if (!at)
    TEST_FAIL("no warning \"%s...\"", head);
  if (at[strlen(head)] == ')')
    TEST_FAIL("the warning gives no reason: %.120s", at);
  if (strstr(at + 1, head))
    TEST_FAIL("the warning came twice");
  if (strstr(text, "inter-node proxy: rank ") != at)
    TEST_FAIL("another rank is reported unreachable");
}

static void fault(struct rank_state *s) {
  barrier(s, s->rank == VICTIM ? "kill" : NULL);
  if (s->rank != VICTIM)
    capture_begin();
  flood(s); /* the victim never returns */
  s->live[VICTIM] = 0;
  const struct shape sh = {.parity = 1, .K = 1};
  uint64_t before = bytes_out(s);
  post(s, VMEP_LL_SHIP_FLAG, &sh, s->px.layout.comb_ack, 7);
  serve_all(s);
  check_bytes_out(s, before, 8 * (uint64_t)live_peers(s), "flag after death",
                  ROUNDS);
  ASSERT_EQ(s->px.reported[VICTIM], 1);
  char *text = capture_end();
  check_warning(text);
  free(text);
  for (int p = 0; p < NUM_RANKS; p++)
    if (s->live[p])
      wait_word(s, s->px.inbox[p], flag_at(s->px.layout.comb_ack, 1, p), 7,
                "flag after the death", p);
  barrier(s, NULL);
}

/* ---- setup and teardown -------------------------------------------------- */

static void remote_all_but(struct vmep_ll_rank_set *set, int self, int ranks) {
  memset(set, 0, sizeof(*set));
  for (int r = 0; r < ranks; r++)
    if (r != self)
      set->bits[r / 32] |= 1u << (r % 32);
}

static vmep_engine *make_engine(int rank) {
  struct vmep_engine_params params = {
      .rank = rank, .size = NUM_RANKS, .timeout_ms = 5000};
  vmep_engine *engine = NULL;
  ASSERT_OK(vmep__engine_create(&params, &engine));
  return engine;
}

static void setup(struct rank_state *s) {
  struct vmep_ll_layout layout;
  struct vmep_ll_rank_set remote;
  vmep__ep_layout(&config, NUM_RANKS, &layout);
  remote_all_but(&remote, s->rank, NUM_RANKS);
  s->engine = make_engine(s->rank);
  s->host_bytes = vmep__ep_proxy_host_bytes(&layout, NUM_RANKS - 1);
  s->host = calloc(1, s->host_bytes);
  s->want = malloc(layout.total);
  s->rows = malloc(layout.total);
  ASSERT_TRUE(s->host && s->want && s->rows);
  vmep__ep_proxy_init(&s->px, s->engine, &config, s->rank, NUM_RANKS, &remote,
                      s->host);
  /* [stage][inboxes][outboxes][ring], in rank order: a stage is the whole
   * layout, an inbox its parts before the slots, an outbox the rest */
  const size_t image = s->px.image, in = layout.slots[0];
  const size_t out = image - layout.slots[0];
  ASSERT_EQ(image, layout.total);
  ASSERT_TRUE(s->px.stage == s->host);
  for (int r = 0, i = 0; r < NUM_RANKS; r++) {
    s->live[r] = r != s->rank;
    ASSERT_TRUE(s->live[r] ? s->px.inbox[r] == s->host + image + in * i
                           : s->px.inbox[r] == NULL);
    ASSERT_TRUE(s->live[r]
                    ? s->px.outbox[r] ==
                          s->host + image + in * (NUM_RANKS - 1) + out * i
                    : s->px.outbox[r] == NULL);
    i += s->live[r];
  }
  ASSERT_TRUE((char *)s->px.ring ==
              s->host + s->host_bytes - sizeof(struct vmep_ll_ring));
  ASSERT_OK(vmep__engine_mem_reg(s->engine, s->host, s->host_bytes, 0, &s->mr));
  void *record = NULL;
  size_t len = 0;
  ASSERT_OK(vmep__ep_proxy_record(&s->px, s->mr, &record, &len));
  void *recs[NUM_RANKS];
  uint32_t lens[NUM_RANKS];
  exchange(s, record, (uint32_t)len, recs, lens);
  vmep__free(record);
  size_t sizes[NUM_RANKS], total = 0;
  for (int r = 0; r < NUM_RANKS; r++)
    total += sizes[r] = lens[r];
  char *all = malloc(total), *at = all;
  ASSERT_TRUE(all != NULL);
  for (int r = 0; r < NUM_RANKS; r++) {
    memcpy(at, recs[r], sizes[r]);
    at += sizes[r];
    free(recs[r]);
  }
  ASSERT_OK(
      vmep__ep_proxy_connect(&s->px, all, sizes, NUM_RANKS, &s->px.remote));
  free(all);
  barrier(s, NULL); /* everyone connected before anyone puts */
}

static void teardown(struct rank_state *s) {
  barrier(s, NULL); /* every check done */
  vmep__engine_mem_dereg(s->engine, s->mr);
  barrier(s, NULL); /* nobody closes while a peer still needs it */
  vmep__engine_destroy(s->engine); /* releases the peers' keys */
  free(s->host);
  free(s->want);
  free(s->rows);
}

static int run_rank(int rank, int size, int fd) {
  (void)size;
  struct rank_state *s = calloc(1, sizeof(*s));
  ASSERT_TRUE(s != NULL);
  s->rank = rank;
  s->fd = fd;
  setup(s);
  for (int round = 0; round < ROUNDS; round++)
    run_round(s, round);
  uint64_t longest_before = s->longest_step;
  fault(s);
  for (int round = ROUNDS; round < ROUNDS + FAULT_ROUNDS; round++)
    run_round(s, round);
  printf("rank %d: %" PRIu64 " B put, %" PRIu64 " requests; longest step %.3f "
         "ms (%.3f ms before the death)\n",
         rank, bytes_out(s), s->posted, (double)s->longest_step / 1e6,
         (double)longest_before / 1e6);
  fflush(stdout);
  if (s->longest_step > 1000000000ull)
    TEST_FAIL("rank %d: a step took %" PRIu64 " ns", rank, s->longest_step);
  teardown(s);
  free(s);
  return 0;
}

/* Parent side: relays until the ranks are done; kills the victim once it
 * asks (its frame "kill"), then relays empty frames in its place. */
static void relay(struct net_job *job) {
  int dead[NUM_RANKS] = {0}, killed = 0;
  for (;;) {
    void *frames[NUM_RANKS] = {0};
    uint32_t lens[NUM_RANKS] = {0};
    int ok = 1;
    for (int r = 0; r < NUM_RANKS && ok; r++)
      if (!dead[r])
        ok = (frames[r] = net_frame_recv(job->fd[r], &lens[r])) != NULL;
    int kill_now = ok && !killed && lens[VICTIM] == 4 &&
                   memcmp(frames[VICTIM], "kill", 4) == 0;
    if (kill_now)
      lens[VICTIM] = 0;
    for (int r = 0; r < NUM_RANKS && ok; r++)
      for (int q = 0; q < NUM_RANKS && !dead[r]; q++)
        net_frame_send(job->fd[r], frames[q], lens[q]);
    for (int r = 0; r < NUM_RANKS; r++)
      free(frames[r]);
    if (!ok)
      break;
    if (kill_now) {
      usleep(50 * 1000); /* the survivors stream flags toward it now */
      ASSERT_EQ(kill(job->pid[VICTIM], SIGKILL), 0);
      int wstatus = 0;
      ASSERT_EQ(waitpid(job->pid[VICTIM], &wstatus, 0), job->pid[VICTIM]);
      ASSERT_TRUE(WIFSIGNALED(wstatus) && WTERMSIG(wstatus) == SIGKILL);
      close(job->fd[VICTIM]);
      dead[VICTIM] = killed = 1;
    }
  }
  int failed = net_job_reap(job, dead) || !killed;
  if (failed)
    TEST_FAIL("a rank failed%s", killed ? "" : " (before the victim's death)");
}

/* ---- refused records (one process) --------------------------------------- */

struct peer {
  vmep_engine *engine;
  vmep_engine_mr *mr;
  char *host;
  struct vmep_ep_proxy px;
  void *record;
  size_t len;
};

/* Rank r's record for a proxy of another config, group size or remote
 * set, over peer p's engine, host memory and registration. */
static void *record_of(struct peer *p, int r, const vmep_ep_config *c,
                       int ranks, const struct vmep_ll_rank_set *remote,
                       size_t *len_out) {
  struct vmep_ep_proxy *px = calloc(1, sizeof(*px));
  ASSERT_TRUE(px != NULL);
  vmep__ep_proxy_init(px, p->engine, c, r, ranks, remote, p->host);
  void *record = NULL;
  ASSERT_OK(vmep__ep_proxy_record(px, p->mr, &record, len_out));
  free(px);
  return record;
}

/* The peers' engines progressed by a thread while a fresh engine of the
 * main thread connects to them and closes its endpoints (which completes
 * only when they answer). The main thread leaves them alone meanwhile. */
struct progress {
  struct peer *peers;
  pthread_t thread;
  int stop; /* atomic */
};

static void *progress_main(void *arg) {
  struct progress *pg = arg;
  while (!__atomic_load_n(&pg->stop, __ATOMIC_ACQUIRE))
    for (int r = 0; r < NUM_RANKS; r++)
      vmep__engine_progress(pg->peers[r].engine);
  return NULL;
}

/* Connects a fresh proxy of rank `me` (its own engine) from recs; on
 * success checks where each peer's inbox of it is. The error message, if
 * any, goes to why_out (destroy may set another). */
static vmep_status connect_from(struct peer *peers, int me,
                                const struct vmep_ll_rank_set *remote,
                                void *const *recs, const size_t *lens,
                                char *why_out, size_t why_len) {
  size_t total = 0;
  for (int r = 0; r < NUM_RANKS; r++)
    total += lens[r];
  char *all = malloc(total), *at = all;
  struct vmep_ep_proxy *px = calloc(1, sizeof(*px));
  ASSERT_TRUE(all && px);
  for (int r = 0; r < NUM_RANKS; r++) {
    memcpy(at, recs[r], lens[r]);
    at += lens[r];
  }
  vmep_engine *engine = make_engine(me);
  vmep__ep_proxy_init(px, engine, &config, me, NUM_RANKS, remote,
                      peers[me].host);
  vmep_status status =
      vmep__ep_proxy_connect(px, all, lens, NUM_RANKS, &px->remote);
  snprintf(why_out, why_len, "%s", status == VMEP_OK ? "" : vmep_last_error());
  for (int r = 0; status == VMEP_OK && r < NUM_RANKS; r++) {
    if (r == me) {
      ASSERT_TRUE(px->keys[r] == NULL);
      continue;
    }
    /* our place among r's remote peers: r's inbox of us */
    int place = me < r ? me : me - 1;
    ASSERT_TRUE(px->keys[r] != NULL);
    ASSERT_EQ(px->peer_stage[r], vmep__engine_rkey_base(px->keys[r]));
    ASSERT_EQ(px->peer_inbox[r], px->peer_stage[r] + px->image +
                                     px->layout.slots[0] * (uint64_t)place);
  }
  uint64_t t0 = vmep__now_ms();
  vmep__engine_destroy(engine);
  if (vmep__now_ms() - t0 > 4000) /* below the engine's 5 s bound */
    TEST_FAIL("destroying rank %d's engine took %" PRIu64 " ms (%s)", me,
              vmep__now_ms() - t0, vmep_last_error());
  free(px);
  free(all);
  return status;
}

static void connects(struct peer *peers, int me,
                     const struct vmep_ll_rank_set *remote, void *const *recs,
                     const size_t *lens) {
  char why[512];
  vmep_status status =
      connect_from(peers, me, remote, recs, lens, why, sizeof(why));
  if (status != VMEP_OK)
    TEST_FAIL("rank %d: connect: %s (%s)", me, vmep_status_name(status), why);
}

static void refuse(struct peer *peers, const struct vmep_ll_rank_set *remote,
                   void *const *recs, const size_t *lens, int culprit,
                   const char *reason) {
  char name[64], why[512];
  snprintf(name, sizeof(name), "rank %d's inter-node record", culprit);
  vmep_status status =
      connect_from(peers, 0, remote, recs, lens, why, sizeof(why));
  if (status != VMEP_ERR_INVALID_ARG)
    TEST_FAIL("rank %d's record (%s): %s, expected VMEP_ERR_INVALID_ARG (%s)",
              culprit, reason, vmep_status_name(status), why);
  ASSERT_STR_CONTAINS(why, name);
  ASSERT_STR_CONTAINS(why, reason);
  printf("refused: %s\n", why);
}

static int refused_records(int rank, int size, int fd) {
  (void)rank;
  (void)size;
  (void)fd;
  struct vmep_ll_layout layout;
  vmep__ep_layout(&config, NUM_RANKS, &layout);
  const size_t bytes = vmep__ep_proxy_host_bytes(&layout, NUM_RANKS - 1);
  struct peer *peers = calloc(NUM_RANKS, sizeof(*peers));
  ASSERT_TRUE(peers != NULL);
  struct vmep_ll_rank_set remote[NUM_RANKS];
  void *recs[NUM_RANKS];
  size_t lens[NUM_RANKS];
  for (int r = 0; r < NUM_RANKS; r++) {
    struct peer *p = &peers[r];
    remote_all_but(&remote[r], r, NUM_RANKS);
    p->engine = make_engine(r);
    p->host = calloc(1, bytes);
    ASSERT_TRUE(p->host != NULL);
    vmep__ep_proxy_init(&p->px, p->engine, &config, r, NUM_RANKS, &remote[r],
                        p->host);
    ASSERT_OK(vmep__engine_mem_reg(p->engine, p->host, bytes, 0, &p->mr));
    ASSERT_OK(vmep__ep_proxy_record(&p->px, p->mr, &p->record, &p->len));
    recs[r] = p->record;
    lens[r] = p->len;
  }
  /* Records of other proxies over the same engines: rank 2 in a group of
   * 4, rank 1's buffer of another shape (hidden 512), rank 2 thinking we
   * share its node. */
  struct vmep_ll_rank_set set, only1;
  size_t group4_len, wide_len, near_len;
  remote_all_but(&set, 2, 4);
  void *group4 = record_of(&peers[2], 2, &config, 4, &set, &group4_len);
  vmep_ep_config wide = config;
  wide.hidden = 2 * HIDDEN;
  void *wide_rec =
      record_of(&peers[1], 1, &wide, NUM_RANKS, &remote[1], &wide_len);
  memset(&only1, 0, sizeof(only1));
  only1.bits[0] = 1u << 1;
  void *near = record_of(&peers[2], 2, &config, NUM_RANKS, &only1, &near_len);
  unsigned char *foreign = malloc(lens[1]);
  ASSERT_TRUE(foreign != NULL);
  memcpy(foreign, recs[1], lens[1]);
  foreign[0] ^= 0x40;

  struct progress pg = {.peers = peers};
  ASSERT_EQ(pthread_create(&pg.thread, NULL, progress_main, &pg), 0);
  /* the good records, from each rank's side */
  for (int me = 0; me < NUM_RANKS; me++)
    connects(peers, me, &remote[me], recs, lens);

  void *r2[NUM_RANKS];
  size_t l2[NUM_RANKS];
  memcpy(r2, recs, sizeof(r2));
  memcpy(l2, lens, sizeof(l2));
  /* cut short: inside the head (ours too), and by one byte of the blobs */
  l2[1] = 8;
  refuse(peers, &remote[0], r2, l2, 1, "cut short");
  l2[1] = lens[1];
  l2[0] = 3;
  refuse(peers, &remote[0], r2, l2, 0, "cut short");
  l2[0] = lens[0];
  l2[2] = lens[2] - 1;
  refuse(peers, &remote[0], r2, l2, 2, "length disagrees");
  l2[2] = lens[2];
  /* not a record: its first byte changed */
  r2[1] = foreign;
  refuse(peers, &remote[0], r2, l2, 1, "not a record");
  /* of the wrong rank: rank 2's in rank 1's place */
  r2[1] = recs[2];
  l2[1] = lens[2];
  refuse(peers, &remote[0], r2, l2, 1, "of another rank or group size");
  r2[1] = recs[1];
  l2[1] = lens[1];
  /* of another group size */
  r2[2] = group4;
  l2[2] = group4_len;
  refuse(peers, &remote[0], r2, l2, 2, "of another rank or group size");
  /* of another image size */
  r2[1] = wide_rec;
  l2[1] = wide_len;
  r2[2] = recs[2];
  l2[2] = lens[2];
  refuse(peers, &remote[0], r2, l2, 1, "another shape");
  r2[1] = recs[1];
  l2[1] = lens[1];
  /* remote sets that disagree, both ways */
  r2[2] = near;
  l2[2] = near_len;
  refuse(peers, &remote[0], r2, l2, 2, "in one node");
  r2[2] = recs[2];
  l2[2] = lens[2];
  refuse(peers, &only1, r2, l2, 2, "in one node");
  __atomic_store_n(&pg.stop, 1, __ATOMIC_RELEASE);
  ASSERT_EQ(pthread_join(pg.thread, NULL), 0);

  vmep__free(group4);
  vmep__free(wide_rec);
  vmep__free(near);
  free(foreign);
  for (int r = 0; r < NUM_RANKS; r++) {
    vmep__engine_mem_dereg(peers[r].engine, peers[r].mr);
    vmep__engine_destroy(peers[r].engine);
    vmep__free(peers[r].record);
    free(peers[r].host);
  }
  free(peers);
  return 0;
}

int main(void) {
  uint64_t t0 = vmep__now_ms();
  net_test_env();
  base_seed = test_seed("test_ep_proxy");
  vmep_ep_config_init(&config);
  config.num_experts = EXPERTS;
  config.hidden = HIDDEN;
  config.max_tokens_per_rank = TOKENS;
  config.max_topk = TOPK;
  ASSERT_OK(vmep__ep_config_check(&config, NUM_RANKS));

  struct net_job job;
  net_job_start(&job, 1, refused_records);
  net_job_finish(&job);

  printf("%d ranks, each remote to the others: %d rounds, rank %d killed, %d "
         "rounds more\n",
         NUM_RANKS, ROUNDS, VICTIM, FAULT_ROUNDS);
  net_job_start(&job, NUM_RANKS, run_rank);
  relay(&job);
  printf("test_ep_proxy: ok (%" PRIu64 " ms)\n", vmep__now_ms() - t0);
  return 0;
}
