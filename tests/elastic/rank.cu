/*
 * One rank of an elastic plan. At every phase it disconnects the ranks
 * that left or died, connects the ones that came, then runs the phase's
 * rounds of dispatch + combine, each checked against the host reference
 * over the ranks that were live. In a fault phase the victim dies inside
 * its kernel in round elastic_fault_round(): its survivors check that
 * round's tokens and rows that did not touch the victim exactly, every
 * later round fully, and that the victim ended masked here.
 */
#include <signal.h>
#include <unistd.h>

#include <dirent.h>
#include <vector>

#include "ep_test.cuh"

extern "C" {
#include "boot/boot.h"
#include "store/store.h"
#include "elastic.h"
}

#define HIDDEN 256
#define TOKENS 16
#define TOPK 4

struct rank_state {
  const struct plan *plan;
  int rank, R, E, L;
  uint64_t seed;
  vmep_group *group;
  vmep_ep *ep;
  struct vmep_store_client *store;
  std::vector<int> connected; /* [R]: mapped here (ourselves included) */
  /* device buffers */
  void *x, *recv_x, *expert_out, *out;
  int64_t *topk, *layout_range;
  float *weights;
  int32_t *recv_count, *src_info;
  struct elastic_result res;
};

/* Records the first failure of the phase (and counts it). */
static void note(struct rank_state *s, int64_t mismatches, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void note(struct rank_state *s, int64_t mismatches, const char *fmt,
                 ...) {
  s->res.mismatches += mismatches;
  if (s->res.ok) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(s->res.message, sizeof(s->res.message), fmt, ap);
    va_end(ap);
    fprintf(stderr, "[elastic rank %d] FAIL: %s\n", s->rank, s->res.message);
  }
  s->res.ok = 0;
}

/* Polls the store for `key` (no-wait GETs: a dead rank does not fail
 * them); exits when it does not come. */
static void wait_key(struct rank_state *s, const char *key, int timeout_ms) {
  uint64_t deadline = vmep__now_ms() + (uint64_t)timeout_ms;
  for (;;) {
    int found = 0;
    void *value = NULL;
    size_t len = 0;
    ASSERT_OK(vmep__store_get(s->store, key, &found, &value, &len));
    vmep__free(value);
    if (found)
      return;
    if (vmep__now_ms() > deadline)
      TEST_FAIL("rank %d: no %s after %d ms", s->rank, key, timeout_ms);
    usleep(2000);
  }
}

/* The inputs of rank `src` in round `round` of phase `phase`: the same in
 * every process. */
struct inputs {
  int n;
  std::vector<uint16_t> x;
  std::vector<int64_t> topk;
  std::vector<float> w;
};

static void make_inputs(const struct rank_state *s, int phase, int round,
                        int src, struct inputs *in) {
  test_rng_state = s->seed ^ (0x9e3779b97f4a7c15ull * (uint64_t)(phase + 1)) ^
                   ((uint64_t)(round + 1) << 40) ^ ((uint64_t)(src + 1) << 52);
  if (!test_rng_state)
    test_rng_state = 1;
  for (int i = 0; i < 4; i++)
    test_rand();
  in->n = test_rand() % 8 == 0 ? 0 : 1 + (int)(test_rand() % TOKENS);
  in->x.resize((size_t)TOKENS * HIDDEN);
  in->topk.resize((size_t)TOKENS * TOPK);
  in->w.resize((size_t)TOKENS * TOPK);
  for (size_t i = 0; i < (size_t)in->n * HIDDEN; i++)
    in->x[i] = random_bf16();
  random_topk(in->topk.data(), in->n, TOPK, s->E, 0);
  for (size_t i = 0; i < (size_t)in->n * TOPK; i++)
    in->w[i] = 0.25f + (float)(test_rand() % 1024) / 1024.0f;
}

/* Host arrays of one rank's dispatch layout. */
struct layout {
  std::vector<uint16_t> recv_x;
  std::vector<int32_t> recv_count, src_info;
  std::vector<int64_t> range;
  struct vmep_ref_recv view(void) {
    struct vmep_ref_recv v = {recv_x.data(), NULL, recv_count.data(),
                              src_info.data(), range.data()};
    return v;
  }
  void size(int L, int R) {
    size_t RT = (size_t)R * TOKENS;
    recv_x.assign((size_t)L * RT * HIDDEN, 0x7fc0);
    recv_count.assign((size_t)L, 0);
    src_info.assign((size_t)L * RT, -1);
    range.assign((size_t)L * R, 0);
  }
};

/* Removes rank v's rows from a dispatch layout (the round it died in:
 * whether they came is not defined), closing the gap. */
static void drop_rows_of(struct layout *lay, int L, int R, int v) {
  const size_t RT = (size_t)R * TOKENS;
  for (int l = 0; l < L; l++) {
    int64_t r = lay->range[(size_t)l * R + v];
    uint32_t b = vmep__range_begin(r), c = vmep__range_count(r);
    if (c == 0)
      continue;
    uint32_t end = (uint32_t)lay->recv_count[l];
    for (uint32_t i = b; i + c < end; i++) {
      lay->src_info[l * RT + i] = lay->src_info[l * RT + i + c];
      memcpy(&lay->recv_x[(l * RT + i) * HIDDEN],
             &lay->recv_x[(l * RT + i + c) * HIDDEN], 2 * HIDDEN);
    }
    for (int src = 0; src < R; src++) {
      int64_t o = lay->range[(size_t)l * R + src];
      if (vmep__range_begin(o) > b)
        lay->range[(size_t)l * R + src] =
            vmep__range_pack(vmep__range_begin(o) - c, vmep__range_count(o));
    }
    lay->range[(size_t)l * R + v] = vmep__range_pack(b, 0);
    lay->recv_count[l] -= (int32_t)c;
  }
}

static double call_ms(double t0) { return elastic_now_ms() - t0; }

/* One round: dispatch + combine, checked. `victim` >= 0 dies in this round
 * (fault) or died before (dead); `live` marks the ranks the reference
 * counts. */
static void run_round(struct rank_state *s, int phase, int round,
                      const struct plan_phase *ph, int fault) {
  const int R = s->R, L = s->L, me = s->rank;
  const size_t RT = (size_t)R * TOKENS;
  const int victim = ph->victim;
  const int past_fault = victim >= 0 && round >= elastic_fault_round(s->plan);
  std::vector<struct inputs> in((size_t)R);
  std::vector<struct vmep_ref_rank_input> ref_in((size_t)R);
  std::vector<int> masked((size_t)R, 1);
  for (int i = 0; i < ph->n; i++)
    masked[(size_t)ph->ranks[i]] = past_fault && ph->ranks[i] == victim;
  for (int d = 0; d < R; d++) {
    struct vmep_ref_rank_input empty = {0, NULL, NULL, NULL};
    ref_in[(size_t)d] = empty;
    int in_phase = 0;
    for (int i = 0; i < ph->n; i++)
      in_phase |= ph->ranks[i] == d;
    if (!in_phase)
      continue;
    make_inputs(s, phase, round, d, &in[(size_t)d]);
    struct vmep_ref_rank_input ri = {in[(size_t)d].n, in[(size_t)d].x.data(),
                                     in[(size_t)d].topk.data(),
                                     in[(size_t)d].w.data()};
    ref_in[(size_t)d] = ri;
  }
  struct vmep_ref_problem prob;
  memset(&prob, 0, sizeof(prob));
  prob.num_ranks = R;
  prob.num_experts = s->E;
  prob.max_tokens = TOKENS;
  prob.hidden = HIDDEN;
  prob.top_k = TOPK;
  prob.masked = masked.data();
  prob.ranks = ref_in.data();

  const struct inputs &mine = in[(size_t)me];
  CUDA_OK(cudaMemcpy(s->x, mine.x.data(), 2 * (size_t)TOKENS * HIDDEN,
                     cudaMemcpyHostToDevice));
  CUDA_OK(cudaMemcpy(s->topk, mine.topk.data(), 8 * (size_t)TOKENS * TOPK,
                     cudaMemcpyHostToDevice));
  CUDA_OK(cudaMemcpy(s->weights, mine.w.data(), 4 * (size_t)TOKENS * TOPK,
                     cudaMemcpyHostToDevice));
  /* Poison every output. */
  CUDA_OK(cudaMemset(s->recv_x, 0xff, 2 * L * RT * HIDDEN));
  CUDA_OK(cudaMemset(s->recv_count, 0xff, 4 * (size_t)L));
  CUDA_OK(cudaMemset(s->src_info, 0xff, 4 * L * RT));
  CUDA_OK(cudaMemset(s->layout_range, 0xff, 8 * (size_t)L * R));
  CUDA_OK(cudaMemset(s->out, 0xff, 2 * (size_t)TOKENS * HIDDEN));

  char armed[64];
  snprintf(armed, sizeof(armed), "el/armed/%d", phase);
  const int dying = fault && me == victim;
  if (fault && !dying && ph->fault == PLAN_FAULT_DISPATCH) {
    /* The victim is inside its dispatch kernel, waiting for us. */
    wait_key(s, armed, 60000);
    usleep(20000);
  }
  vmep_ep_dispatch_args da;
  vmep_ep_dispatch_args_init(&da);
  da.x = mine.n ? s->x : NULL;
  da.topk_idx = mine.n ? s->topk : NULL;
  da.num_tokens = mine.n;
  da.num_topk = TOPK;
  da.recv_x = s->recv_x;
  da.recv_count = s->recv_count;
  da.src_info = s->src_info;
  da.layout_range = s->layout_range;
  vmep_ep_handle h;
  double t0 = elastic_now_ms();
  ASSERT_OK(vmep_ep_dispatch(s->ep, &da, VMEP_EP_SEND_RECV, NULL, &h));
  if (dying && ph->fault == PLAN_FAULT_DISPATCH) {
    ASSERT_OK(vmep__store_set(s->store, armed, "1", 1));
    for (;;)
      pause(); /* killed here, its kernel spinning */
  }
  CUDA_OK(cudaDeviceSynchronize());
  double call = call_ms(t0);

  struct layout got;
  got.size(L, R);
  CUDA_OK(cudaMemcpy(got.recv_x.data(), s->recv_x, 2 * L * RT * HIDDEN,
                     cudaMemcpyDeviceToHost));
  CUDA_OK(cudaMemcpy(got.recv_count.data(), s->recv_count, 4 * (size_t)L,
                     cudaMemcpyDeviceToHost));
  CUDA_OK(cudaMemcpy(got.src_info.data(), s->src_info, 4 * L * RT,
                     cudaMemcpyDeviceToHost));
  CUDA_OK(cudaMemcpy(got.range.data(), s->layout_range, 8 * (size_t)L * R,
                     cudaMemcpyDeviceToHost));
  /* Expert outputs from what came (the victim's rows too, if they did). */
  std::vector<uint16_t> eo(L * RT * HIDDEN);
  {
    std::vector<int> all_live((size_t)R, 0);
    for (int d = 0; d < R; d++)
      all_live[(size_t)d] = masked[(size_t)d] && d != victim;
    struct vmep_ref_problem any = prob;
    any.masked = all_live.data();
    struct vmep_ref_recv v = got.view();
    expert_model(&any, me, &v, eo.data());
  }
  CUDA_OK(cudaMemcpy(s->expert_out, eo.data(), 2 * L * RT * HIDDEN,
                     cudaMemcpyHostToDevice));
  if (!dying) {
    struct layout check = got;
    if (fault)
      drop_rows_of(&check, L, R, victim);
    struct vmep_ref_recv v = check.view();
    struct vmep_ref_report rep;
    ASSERT_OK(vmep__ref_check_dispatch(&prob, me, &v, &rep));
    if (rep.mismatches)
      note(s, rep.mismatches, "phase %d round %d dispatch: %s", phase, round,
           rep.first);
  }

  if (fault && !dying && ph->fault == PLAN_FAULT_COMBINE) {
    wait_key(s, armed, 60000);
    usleep(20000);
  }
  vmep_ep_combine_args ca;
  vmep_ep_combine_args_init(&ca);
  ca.expert_out = s->expert_out;
  ca.topk_idx = mine.n ? s->topk : NULL;
  ca.topk_weights = mine.n ? s->weights : NULL;
  ca.out = mine.n ? s->out : NULL;
  t0 = elastic_now_ms();
  ASSERT_OK(vmep_ep_combine(s->ep, &ca, &h, VMEP_EP_SEND_RECV, NULL));
  if (dying) {
    ASSERT_OK(vmep__store_set(s->store, armed, "1", 1));
    for (;;)
      pause();
  }
  CUDA_OK(cudaDeviceSynchronize());
  call += call_ms(t0);
  if (fault) {
    s->res.fault_call_ms = call;
    s->res.returned_at_ms = elastic_now_ms();
  }
  s->res.max_call_ms = call > s->res.max_call_ms ? call : s->res.max_call_ms;

  /* The reference combine over canonical layouts of every live rank. */
  std::vector<struct layout> canon((size_t)R);
  std::vector<struct vmep_ref_recv> views((size_t)R);
  std::vector<std::vector<uint16_t>> eos((size_t)R);
  std::vector<const uint16_t *> eo_ptrs((size_t)R);
  for (int d = 0; d < R; d++) {
    canon[(size_t)d].size(L, R);
    views[(size_t)d] = canon[(size_t)d].view();
    eos[(size_t)d].assign(L * RT * HIDDEN, 0x7fc0);
    if (!masked[(size_t)d]) {
      ASSERT_OK(vmep__ref_dispatch(&prob, d, &views[(size_t)d]));
      expert_model(&prob, d, &views[(size_t)d], eos[(size_t)d].data());
    }
    eo_ptrs[(size_t)d] = eos[(size_t)d].data();
  }
  std::vector<uint16_t> out((size_t)TOKENS * HIDDEN);
  CUDA_OK(cudaMemcpy(out.data(), s->out, 2 * (size_t)TOKENS * HIDDEN,
                     cudaMemcpyDeviceToHost));
  if (fault) {
    /* Tokens that chose one of the victim's experts: not defined. */
    std::vector<uint16_t> ref((size_t)TOKENS * HIDDEN);
    ASSERT_OK(
        vmep__ref_combine(&prob, me, views.data(), eo_ptrs.data(), ref.data()));
    for (int t = 0; t < mine.n; t++) {
      int touched = 0;
      for (int k = 0; k < TOPK; k++) {
        int64_t e = mine.topk[(size_t)t * TOPK + k];
        touched |= e >= 0 && e < s->E && e / L == victim;
      }
      if (touched)
        memcpy(&out[(size_t)t * HIDDEN], &ref[(size_t)t * HIDDEN], 2 * HIDDEN);
    }
  }
  struct vmep_ref_report rep;
  ASSERT_OK(vmep__ref_check_combine(&prob, me, views.data(), eo_ptrs.data(),
                                    out.data(), &rep));
  if (rep.mismatches)
    note(s, rep.mismatches, "phase %d round %d combine: %s", phase, round,
         rep.first);
}

/* Barrier of the test (not of the library): among `ranks` through the
 * store, so that host-side checking never looks like a silent rank. */
static void test_barrier(struct rank_state *s, int phase, int round,
                         const struct plan_phase *ph, int without) {
  int ranks[PLAN_MAX_RANKS], n = 0;
  unsigned char one = 1, all[PLAN_MAX_RANKS];
  for (int i = 0; i < ph->n; i++)
    if (ph->ranks[i] != without)
      ranks[n++] = ph->ranks[i];
  uint64_t tag = ((uint64_t)phase << 20) | (uint64_t)round;
  ASSERT_OK(vmep__member_allgather(s->store, "el/barrier", tag, s->rank, ranks,
                                   n, &one, 1, all, 120000));
}

static int64_t count_fds(void) {
  int64_t n = 0;
  DIR *d = opendir("/proc/self/fd");
  if (!d)
    return -1;
  while (readdir(d))
    n++;
  closedir(d);
  return n - 3; /* ".", ".." and the directory's own fd */
}

static int64_t rss_kb(void) {
  FILE *f = fopen("/proc/self/status", "r");
  char line[256];
  long long kb = -1;
  while (f && fgets(line, sizeof(line), f))
    if (sscanf(line, "VmRSS: %lld", &kb) == 1)
      break;
  if (f)
    fclose(f);
  return kb;
}

/* Disconnects who is gone, connects who came: the start of a phase. */
static void change_membership(struct rank_state *s, int phase,
                              const struct plan_phase *ph) {
  std::vector<int> in((size_t)s->R, 0), gone, come;
  /* The last phase's victim: the store reports it dead, and one call
   * disconnects it. */
  int victim = phase > 0 ? s->plan->phases[phase - 1].victim : -1;
  if (victim >= 0 && s->connected[(size_t)victim]) {
    int count = -1;
    ASSERT_OK(vmep_ep_disconnect_dead(s->ep, &count));
    ASSERT_EQ(count, 1);
    s->connected[(size_t)victim] = 0;
  }
  for (int i = 0; i < ph->n; i++)
    in[(size_t)ph->ranks[i]] = 1;
  for (int r = 0; r < s->R; r++) {
    if (r == s->rank)
      continue;
    if (s->connected[(size_t)r] && !in[(size_t)r])
      gone.push_back(r);
    if (!s->connected[(size_t)r] && in[(size_t)r])
      come.push_back(r);
  }
  if (!gone.empty())
    ASSERT_OK(vmep_ep_disconnect_ranks(s->ep, gone.data(), (int)gone.size()));
  for (size_t i = 0; i < gone.size(); i++)
    s->connected[(size_t)gone[i]] = 0;
  /* Everyone calls it, so that the flags of the new set are resynced. */
  ASSERT_OK(vmep_ep_connect_ranks(s->ep, come.data(), (int)come.size(), 1));
  for (size_t i = 0; i < come.size(); i++)
    s->connected[(size_t)come[i]] = 1;
}

/* The host mask calls, between calls: masking a connected rank shows in
 * the query, clearing unmasks every connected rank and no other, and
 * refusals name what is wrong. Leaves the mask as it found it. */
static void check_mask_calls(struct rank_state *s, int phase) {
  std::vector<int32_t> mask((size_t)s->R);
  int other = -1;
  for (int r = 0; r < s->R && other < 0; r++)
    if (r != s->rank && s->connected[(size_t)r])
      other = r;
  ASSERT_TRUE(other >= 0);
  ASSERT_OK(vmep_ep_set_mask(s->ep, other, 1));
  ASSERT_OK(vmep_ep_query_mask(s->ep, mask.data()));
  if (mask[(size_t)other] != 1)
    note(s, 1, "phase %d: set_mask(%d, 1) did not show", phase, other);
  ASSERT_OK(vmep_ep_clear_mask(s->ep));
  ASSERT_OK(vmep_ep_query_mask(s->ep, mask.data()));
  for (int r = 0; r < s->R; r++)
    if (r != s->rank && mask[(size_t)r] != !s->connected[(size_t)r])
      note(s, 1, "phase %d: after clear_mask rank %d is %smasked", phase, r,
           mask[(size_t)r] ? "" : "not ");
  ASSERT_STATUS(vmep_ep_set_mask(s->ep, s->rank, 1), VMEP_ERR_INVALID_ARG);
  ASSERT_STATUS(vmep_ep_set_mask(s->ep, s->R, 1), VMEP_ERR_INVALID_ARG);
  for (int r = 0; r < s->R; r++)
    if (r != s->rank && !s->connected[(size_t)r]) {
      ASSERT_STATUS(vmep_ep_set_mask(s->ep, r, 0), VMEP_ERR_INVALID_ARG);
      break;
    }
}

static void run_phase(struct rank_state *s, int phase) {
  const struct plan_phase *ph = &s->plan->phases[phase];
  const int fr = elastic_fault_round(s->plan);
  memset(&s->res, 0, sizeof(s->res));
  s->res.ok = 1;
  s->res.victim_masked = 1;
  change_membership(s, phase, ph);
  check_mask_calls(s, phase);
  ASSERT_OK(vmep_ep_poll_errors(s->ep, NULL, NULL)); /* start clean */
  for (int round = 0; round < s->plan->iters; round++) {
    int fault = ph->victim >= 0 && round == fr;
    test_barrier(s, phase, round, ph,
                 ph->victim >= 0 && round > fr ? ph->victim : -1);
    run_round(s, phase, round, ph, fault);
  }
  unsigned bits = 0;
  ASSERT_OK(vmep_ep_poll_errors(s->ep, &bits, NULL));
  s->res.error_bits = (int32_t)bits;
  std::vector<int32_t> mask((size_t)s->R);
  ASSERT_OK(vmep_ep_query_mask(s->ep, mask.data()));
  for (int r = 0; r < s->R; r++) {
    int want = !s->connected[(size_t)r] || r == ph->victim;
    if (r != s->rank && mask[(size_t)r] != want) {
      if (r == ph->victim)
        s->res.victim_masked = 0;
      note(s, 1, "phase %d: rank %d is %smasked here", phase, r,
           mask[(size_t)r] ? "" : "not ");
    }
  }
  if (ph->victim < 0 && bits != 0)
    note(s, 1, "phase %d: error bits %u without a fault", phase, bits);
  if (ph->victim >= 0 && !(bits & VMEP_EP_ERR_TIMEOUT))
    note(s, 1, "phase %d: the victim's death raised no timeout bit", phase);
  s->res.fds = count_fds();
  s->res.rss_kb = rss_kb();
  char key[64];
  snprintf(key, sizeof(key), "el/done/%d/%d", phase, s->rank);
  ASSERT_OK(vmep__store_set(s->store, key, &s->res, sizeof(s->res)));
}

static void alloc_buffers(struct rank_state *s) {
  const size_t RT = (size_t)s->R * TOKENS, L = (size_t)s->L;
  CUDA_OK(cudaMalloc(&s->x, 2 * (size_t)TOKENS * HIDDEN));
  CUDA_OK(cudaMalloc(&s->topk, 8 * (size_t)TOKENS * TOPK));
  CUDA_OK(cudaMalloc(&s->weights, 4 * (size_t)TOKENS * TOPK));
  CUDA_OK(cudaMalloc(&s->recv_x, 2 * L * RT * HIDDEN));
  CUDA_OK(cudaMalloc(&s->expert_out, 2 * L * RT * HIDDEN));
  CUDA_OK(cudaMalloc(&s->recv_count, 4 * L));
  CUDA_OK(cudaMalloc(&s->src_info, 4 * L * RT));
  CUDA_OK(cudaMalloc(&s->layout_range, 8 * L * (size_t)s->R));
  CUDA_OK(cudaMalloc(&s->out, 2 * (size_t)TOKENS * HIDDEN));
}

extern "C" int elastic_rank_main(const struct plan *plan, int rank, int first,
                                 uint64_t seed) {
  struct rank_state s;
  memset(&s.res, 0, sizeof(s.res));
  s.plan = plan;
  s.rank = rank;
  s.R = plan->max_ranks;
  s.E = 2 * s.R;
  s.L = 2;
  s.seed = seed;
  s.connected.assign((size_t)s.R, 0);
  s.connected[(size_t)rank] = 1;
  ASSERT_OK(vmep_group_join(rank, s.R, NULL, NULL, &s.group));
  s.store = vmep__group_store(s.group);
  vmep_ep_config cfg;
  vmep_ep_config_init(&cfg);
  cfg.num_experts = s.E;
  cfg.hidden = HIDDEN;
  cfg.max_tokens_per_rank = TOKENS;
  cfg.max_topk = TOPK;
  cfg.num_sms = 4;
  cfg.timeout_ms = plan->timeout_ms;
  cfg.max_ranks = s.R;
  ASSERT_OK(vmep_ep_create(s.group, &cfg, &s.ep));
  /* A forced strategy (VMEP_MEM_SHARE) must be the one the window uses. */
  const char *share = getenv("VMEP_MEM_SHARE"),
             *used = vmep_mem_strategy_name(vmep_window_strategy(s.ep->window));
  fprintf(stderr, "[elastic rank %d] window strategy %s\n", rank, used);
  if (share && share[0] && strcmp(share, "auto") != 0)
    ASSERT_TRUE(strcmp(share, used) == 0);
  CUDA_OK(cudaSetDevice(vmep_ep_device(s.ep)));
  alloc_buffers(&s);
  for (int p = first; p < plan->nphases; p++) {
    char key[64];
    snprintf(key, sizeof(key), "el/go/%d", p);
    wait_key(&s, key, 600000);
    const struct plan_phase *ph = &plan->phases[p];
    int in = 0;
    for (int i = 0; i < ph->n; i++)
      in |= ph->ranks[i] == rank;
    if (!in)
      break; /* this rank leaves the job */
    run_phase(&s, p);
  }
  ASSERT_OK(vmep_ep_destroy(s.ep));
  ASSERT_OK(vmep_group_destroy(s.group));
  return 0;
}
