/*
 * The fault loop over the EP buffer's host calls (after SQLite's
 * do_faultsim_test, as test_region_fault does for regions): for n = 1,
 * 2, ... (transient, then persistent) the n-th driver call, or host
 * allocation, of this thread fails, until a trial fires no fault. Each
 * trial must end with success and the right state, or with the status the
 * fault maps to and a message naming the failed call; once everything is
 * destroyed nothing may be live in the fake, no fd open, no allocation
 * kept. Covered: vmep_ep_create / vmep_ep_destroy over a store group of
 * one rank with room for two (member record published); connect and
 * disconnect of a second rank that joined the store, its side run by
 * another thread of this process (not faulted); and disconnect alone.
 * A failed connect or disconnect must leave a view from which the same
 * call, done again without faults, succeeds.
 */
#include <pthread.h>

#include "ep/ep.h"
#include "fake_driver.h"
#include "test_ep_util.h"
#include "test_store_util.h"

#define TOKEN "ep-fault-token"
/* Short: a trial whose rank 0 failed early ends at rank 1's timeout. */
#define TIMEOUT_MS "400"

/* What each injected CUresult must become (docs/MEMORY.md). */
struct injection {
  CUresult result;
  const char *name;
  vmep_status status;
};
static const struct injection unknown = {CUDA_ERROR_UNKNOWN,
                                         "CUDA_ERROR_UNKNOWN", VMEP_ERR_CUDA};
static const struct injection out_of_memory = {CUDA_ERROR_OUT_OF_MEMORY,
                                               "CUDA_ERROR_OUT_OF_MEMORY",
                                               VMEP_ERR_OUT_OF_MEMORY};
/* Host allocation faults: no CUresult. */
static const struct injection host = {CUDA_SUCCESS, "host allocation",
                                      VMEP_ERR_OUT_OF_MEMORY};

/* The two ranks of a trial: rank 0 hosts the store (a group of one with
 * a buffer for two), rank 1 joins it. */
struct ranks {
  char addr[64];
  vmep_group *g0, *g1;
  vmep_ep *ep0, *ep1;
};

/* What one faulted call did. */
struct outcome {
  vmep_status status;
  char error[512];
  int fired; /* faults fired in the call */
};

static int trials;
static int base_fds;
static char trial_name[160]; /* the trial running, for messages */

/* A fresh machine, re-probed, undo calls exempt; with `host`, host
 * allocations counted from here on. */
static void fresh_machine(const char *what, const struct injection *inj, int n,
                          int persistent) {
  snprintf(trial_name, sizeof(trial_name), "%s, %s %s, n = %d", what, inj->name,
           persistent ? "persistent" : "transient", n);
  fake_setup(1);
  fake_exempt_undo();
  if (inj == &host)
    fake_alloc_install();
}

static void arm(const struct injection *inj, int n, int persistent) {
  if (inj == &host)
    fake_alloc_fail(n, persistent);
  else
    fake_fail_any(n, inj->result, persistent);
}

static int fired(const struct injection *inj) {
  return inj == &host ? fake_alloc_fired() : fake_faults_fired();
}

/* A faulted call's verdict: success, or the injection's status with a
 * message naming the failed call (host: saying the allocation failed). */
static void check_outcome(const struct injection *inj,
                          const struct outcome *out) {
  if (out->status == VMEP_OK)
    return;
  if (!out->fired)
    TEST_FAIL("%s: no fault, yet %s (%s)", trial_name,
              vmep_status_name(out->status), out->error);
  if (out->status != inj->status)
    TEST_FAIL("%s: %s, expected %s (%s)", trial_name,
              vmep_status_name(out->status), vmep_status_name(inj->status),
              out->error);
  int named = inj == &host ? strstr(out->error, "host allocation") != NULL ||
                                 strstr(out->error, "no memory") != NULL
                           : fake_names_fired(out->error);
  if (!named)
    TEST_FAIL("%s: the message names no failed call: %s", trial_name,
              out->error);
}

/* After a trial, everything destroyed: nothing live in the fake, no fd
 * open (a store closes its side a moment later), no allocation kept. */
static void check_clean(void) {
  const char *leaks = fake_leaks();
  if (leaks)
    TEST_FAIL("%s: still live: %s", trial_name, leaks);
  uint64_t give_up = test_now_ms() + 5000;
  while (fake_open_fds() != base_fds && test_now_ms() < give_up)
    usleep(1000);
  if (fake_open_fds() != base_fds)
    TEST_FAIL("%s: %d fds open, %d before", trial_name, fake_open_fds(),
              base_fds);
  if (fake_alloc_live() != 0)
    TEST_FAIL("%s: %ld host allocations not freed", trial_name,
              fake_alloc_live());
  fake_uninstall();
}

/* ---- the ranks -------------------------------------------------------- */

static void open_rank0(struct ranks *r) {
  memset(r, 0, sizeof(*r));
  snprintf(r->addr, sizeof(r->addr), "127.0.0.1:%d", test_free_port());
  ASSERT_OK(vmep_group_create(0, 1, r->addr, TOKEN, &r->g0));
}

static void open_rank1(struct ranks *r) {
  vmep_ep_config c = test_small_ep_config(2);
  ASSERT_OK(vmep_group_join(1, 2, r->addr, TOKEN, &r->g1));
  ASSERT_OK(vmep_ep_create(r->g1, &c, &r->ep1));
}

/* Both ranks with their buffers, not yet connected. */
static void open_pair(struct ranks *r) {
  vmep_ep_config c = test_small_ep_config(2);
  open_rank0(r);
  ASSERT_OK(vmep_ep_create(r->g0, &c, &r->ep0));
  open_rank1(r);
}

/* Rank 1 first: rank 0's group serves the store until rank 1 has left. */
static void close_ranks(struct ranks *r) {
  ASSERT_OK(vmep_ep_destroy(r->ep1));
  ASSERT_OK(vmep_group_destroy(r->g1));
  ASSERT_OK(vmep_ep_destroy(r->ep0));
  ASSERT_OK(vmep_group_destroy(r->g0));
}

/* ep's view: whether `other` is connected (and its window mapped here).
 * The mask query must work; its values are not checked, as the fake keeps
 * no device memory contents (reads give zeros). */
static void expect_view(vmep_ep *ep, int other, int connected) {
  int32_t mask[2] = {-1, -1};
  ASSERT_OK(vmep_ep_query_mask(ep, mask));
  int self_in = (ep->connected.bits[0] >> ep->rank) & 1u;
  int other_in = (ep->connected.bits[0] >> other) & 1u;
  int mapped = vmep__window_peer_kind(ep->window, other) == VMEP_PEER_MAPPED;
  if (!self_in || other_in != connected || mapped != connected ||
      vmep__window_peer_kind(ep->window, ep->rank) != VMEP_PEER_SELF)
    TEST_FAIL("%s: rank %d sees itself %s, rank %d %s and %s, expected %s",
              trial_name, ep->rank, self_in ? "connected" : "disconnected",
              other, other_in ? "connected" : "disconnected",
              mapped ? "mapped" : "not mapped",
              connected ? "connected" : "not connected");
}

/* rank's member record is in the store under ep's namespace. */
static void expect_record(const struct ranks *r, const vmep_ep *ep, int rank) {
  void *bytes = NULL;
  size_t len = 0;
  ASSERT_OK(vmep__member_fetch(vmep__group_store(r->g0), ep->ns, rank, 1000,
                               &bytes, &len));
  ASSERT_TRUE(len > 0);
  vmep__free(bytes);
}

/* Rank 1's side of a connect, in its own thread. */
struct peer {
  vmep_ep *ep;
  vmep_status status;
  char error[512];
};

static void *peer_connect(void *arg) {
  struct peer *p = arg;
  const int rank0 = 0;
  p->status = vmep_ep_connect_ranks(p->ep, &rank0, 1, 1);
  snprintf(p->error, sizeof(p->error), "%s", vmep_last_error());
  return NULL;
}

/* Both sides connect; rank 0's call runs here under the armed plan (if
 * any). Returns rank 0's outcome, rank 1's in *peer_out. */
static struct outcome connect_both(struct ranks *r, const struct injection *inj,
                                   int n, int persistent,
                                   struct peer *peer_out) {
  struct outcome out = {VMEP_OK, "", 0};
  pthread_t t;
  const int rank1 = 1;
  peer_out->ep = r->ep1;
  ASSERT_EQ(pthread_create(&t, NULL, peer_connect, peer_out), 0);
  if (inj)
    arm(inj, n, persistent);
  out.status = vmep_ep_connect_ranks(r->ep0, &rank1, 1, 1);
  snprintf(out.error, sizeof(out.error), "%s", vmep_last_error());
  out.fired = inj ? fired(inj) : 0;
  fake_faults_clear();
  ASSERT_EQ(pthread_join(t, NULL), 0);
  return out;
}

/* ---- a: create and destroy -------------------------------------------- */

static struct outcome create_trial(const struct injection *inj, int n,
                                   int persistent) {
  struct ranks r;
  struct outcome out = {VMEP_OK, "", 0};
  vmep_ep_config c = test_small_ep_config(2);
  vmep_ep *const untouched = (vmep_ep *)0x7; /* never dereferenced */
  fresh_machine("vmep_ep_create", inj, n, persistent);
  open_rank0(&r);
  r.ep0 = untouched;
  arm(inj, n, persistent);
  out.status = vmep_ep_create(r.g0, &c, &r.ep0);
  snprintf(out.error, sizeof(out.error), "%s", vmep_last_error());
  out.fired = fired(inj);
  fake_faults_clear();
  check_outcome(inj, &out);
  if (out.status != VMEP_OK) {
    /* Nothing given out, and nothing kept that stops a new buffer (its
     * store name given back, no fd server left on its socket name). */
    ASSERT_TRUE(r.ep0 == untouched);
    ASSERT_OK(vmep_ep_create(r.g0, &c, &r.ep0));
  }
  ASSERT_EQ(vmep_ep_max_ranks(r.ep0), 2);
  ASSERT_EQ(r.ep0->ns_index, 0);
  expect_view(r.ep0, 1, 0); /* rank 1 is not connected */
  expect_record(&r, r.ep0, 0);
  /* The buffer's window holds the group: destroying it first is refused,
   * and changes nothing. */
  ASSERT_STATUS(vmep_group_destroy(r.g0), VMEP_ERR_BUSY);
  ASSERT_OK(vmep_ep_destroy(r.ep0));
  ASSERT_OK(vmep_group_destroy(r.g0));
  check_clean();
  return out;
}

/* ---- b: connect, then disconnect --------------------------------------- */

/* After both sides connected: each has the other connected and mapped,
 * and each can disconnect the other. */
static void connected_then_disconnect(struct ranks *r) {
  const int rank0 = 0, rank1 = 1;
  expect_view(r->ep0, 1, 1);
  expect_view(r->ep1, 0, 1);
  ASSERT_OK(vmep_ep_disconnect_ranks(r->ep0, &rank1, 1));
  ASSERT_OK(vmep_ep_disconnect_ranks(r->ep1, &rank0, 1));
  expect_view(r->ep0, 1, 0);
  expect_view(r->ep1, 0, 0);
}

static struct outcome connect_trial(const struct injection *inj, int n,
                                    int persistent) {
  struct ranks r;
  struct peer peer = {0};
  fresh_machine("vmep_ep_connect_ranks", inj, n, persistent);
  open_pair(&r);
  struct outcome out = connect_both(&r, inj, n, persistent, &peer);
  check_outcome(inj, &out);
  if (out.status != VMEP_OK) {
    /* Rolled back: rank 1 is not connected, and the same call, without
     * faults, now succeeds on both sides. */
    expect_view(r.ep0, 1, 0);
    struct outcome again = connect_both(&r, NULL, 0, 0, &peer);
    if (again.status != VMEP_OK)
      TEST_FAIL("%s: rank 0's retry failed: %s (%s)", trial_name,
                vmep_status_name(again.status), again.error);
  }
  if (peer.status != VMEP_OK)
    TEST_FAIL("%s: rank 0 connected, rank 1 %s (%s)", trial_name,
              vmep_status_name(peer.status), peer.error);
  connected_then_disconnect(&r);
  close_ranks(&r);
  check_clean();
  return out;
}

/* A view that comes back: after both disconnected alive, rank 1 alone
 * connects rank 0; it must not complete on rank 0's allgather parts left
 * from the first turn of this same view (same ranks, same incarnations),
 * but time out, and then both connect again as themselves. */
static void view_again(void) {
  struct ranks r;
  struct peer peer = {0};
  const int rank0 = 0;
  fresh_machine("a view again", &unknown, 0, 0);
  open_pair(&r);
  for (int turn = 0; turn < 2; turn++) {
    struct outcome out = connect_both(&r, NULL, 0, 0, &peer);
    ASSERT_OK(out.status);
    ASSERT_OK(peer.status);
    connected_then_disconnect(&r);
    if (turn == 0) {
      ASSERT_STATUS(vmep_ep_connect_ranks(r.ep1, &rank0, 1, 1),
                    VMEP_ERR_TIMEOUT);
      expect_view(r.ep1, 0, 0);
    }
  }
  close_ranks(&r);
  check_clean();
}

/* A retry after a connect failed half way: rank 0's fails after the first
 * of the resync's two allgathers (its third host copy, in the flag raise),
 * rank 1's then times out in the second. Rank 0 alone retries: it must
 * not complete on the parts rank 1 gave to the failed attempt (the tags
 * are the same), but time out, and the pair must then connect for real. */
static void retry_after_half_connect(void) {
  struct ranks r;
  struct peer peer = {0};
  const int rank1 = 1;
  fresh_machine("a retry after a half connect", &unknown, 0, 0);
  open_pair(&r);
  pthread_t t;
  peer.ep = r.ep1;
  ASSERT_EQ(pthread_create(&t, NULL, peer_connect, &peer), 0);
  fake_fail(FAKE_cuMemcpyHtoD, 3, CUDA_ERROR_UNKNOWN, 0);
  ASSERT_STATUS(vmep_ep_connect_ranks(r.ep0, &rank1, 1, 1), VMEP_ERR_CUDA);
  fake_faults_clear();
  ASSERT_EQ(pthread_join(t, NULL), 0);
  ASSERT_TRUE(peer.status != VMEP_OK);
  ASSERT_STATUS(vmep_ep_connect_ranks(r.ep0, &rank1, 1, 1), VMEP_ERR_TIMEOUT);
  expect_view(r.ep0, 1, 0);
  struct outcome out = connect_both(&r, NULL, 0, 0, &peer);
  ASSERT_OK(out.status);
  ASSERT_OK(peer.status);
  connected_then_disconnect(&r);
  close_ranks(&r);
  check_clean();
}

/* ---- c: disconnect after a clean connect ------------------------------- */

static struct outcome disconnect_trial(const struct injection *inj, int n,
                                       int persistent) {
  struct ranks r;
  struct peer peer = {0};
  struct outcome out = {VMEP_OK, "", 0};
  const int rank0 = 0, rank1 = 1;
  fresh_machine("vmep_ep_disconnect_ranks", inj, n, persistent);
  open_pair(&r);
  struct outcome connected = connect_both(&r, NULL, 0, 0, &peer);
  ASSERT_OK(connected.status);
  ASSERT_OK(peer.status);
  arm(inj, n, persistent);
  out.status = vmep_ep_disconnect_ranks(r.ep0, &rank1, 1);
  snprintf(out.error, sizeof(out.error), "%s", vmep_last_error());
  out.fired = fired(inj);
  fake_faults_clear();
  check_outcome(inj, &out);
  /* A failed disconnect may have dropped rank 1 or not; done again without
   * faults it leaves rank 1 out of the view, and, once rank 1 disconnected
   * rank 0 too, both connect again as themselves. */
  if (out.status != VMEP_OK)
    ASSERT_OK(vmep_ep_disconnect_ranks(r.ep0, &rank1, 1));
  expect_view(r.ep0, 1, 0);
  ASSERT_OK(vmep_ep_disconnect_ranks(r.ep1, &rank0, 1));
  struct outcome again = connect_both(&r, NULL, 0, 0, &peer);
  if (again.status != VMEP_OK || peer.status != VMEP_OK)
    TEST_FAIL("%s: connecting again: rank 0 %s (%s), rank 1 %s (%s)",
              trial_name, vmep_status_name(again.status), again.error,
              vmep_status_name(peer.status), peer.error);
  connected_then_disconnect(&r);
  close_ranks(&r);
  check_clean();
  return out;
}

/* ---- the loop ---------------------------------------------------------- */

typedef struct outcome (*trial_fn)(const struct injection *inj, int n,
                                   int persistent);

/* n = 1, 2, ... until a trial fires no fault, which must succeed; returns
 * the number of fault points. */
static int fault_loop(const char *what, trial_fn trial,
                      const struct injection *inj, int persistent) {
  int n = 1;
  for (;; n++) {
    struct outcome out = trial(inj, n, persistent);
    trials++;
    if (!out.fired) {
      if (out.status != VMEP_OK)
        TEST_FAIL("%s, %s: no fault, yet %s (%s)", what, inj->name,
                  vmep_status_name(out.status), out.error);
      break;
    }
  }
  printf("%s, %s %s: %d fault points\n", what, inj->name,
         persistent ? "persistent" : "transient", n - 1);
  fflush(stdout);
  return n - 1;
}

int main(void) {
  test_seed("test_ep_fault"); /* no random choices; printed all the same */
  setenv("VMEP_TIMEOUT_MS", TIMEOUT_MS, 1);
  unsetenv("VMEP_JOB_ID");
  unsetenv("VMEP_JOB_TOKEN");
  fake_quiet_stderr(1); /* thousands of expected failures get logged */
  base_fds = fake_open_fds();
  /* The happy path first: connect, masks, disconnect, and again. */
  ASSERT_EQ(connect_trial(&unknown, 0, 0).status, VMEP_OK);
  view_again();
  retry_after_half_connect();
  for (int persistent = 0; persistent <= 1; persistent++) {
    const struct injection *driver = persistent ? &out_of_memory : &unknown;
    ASSERT_TRUE(fault_loop("vmep_ep_create", create_trial, driver, persistent) >
                20);
    ASSERT_TRUE(fault_loop("vmep_ep_create", create_trial, &host, persistent) >
                20);
    ASSERT_TRUE(fault_loop("vmep_ep_connect_ranks", connect_trial, driver,
                           persistent) > 10);
    ASSERT_TRUE(fault_loop("vmep_ep_connect_ranks", connect_trial, &host,
                           persistent) > 5);
    ASSERT_TRUE(fault_loop("vmep_ep_disconnect_ranks", disconnect_trial, driver,
                           persistent) > 2);
    /* It allocates nothing today: a trial without a fault, all the same. */
    fault_loop("vmep_ep_disconnect_ranks", disconnect_trial, &host, persistent);
  }
  fake_quiet_stderr(0);
  printf("test_ep_fault: %d trials, every one clean\n", trials);
  return 0;
}
