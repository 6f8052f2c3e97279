/*
 * The engine's failures with real UCX between processes: a peer killed
 * (SIGKILL) while puts stream toward it gives VMEP_ERR_PEER or
 * VMEP_ERR_TIMEOUT naming its rank within the timeout, later calls toward
 * it fail the same way, and destroy leaves no fds behind; a peer stopped
 * (SIGSTOP) gives VMEP_ERR_TIMEOUT (or PEER) within the timeout, not a
 * hang; an endpoint
 * whose owner is gone fails the same way; blobs that are garbage, cut or
 * of the wrong kind or rank, and bad arguments, give VMEP_ERR_INVALID_ARG
 * with a message; a failed rank, forgotten, is connected again in its next
 * process.
 */
#include "fake_driver.h"
#include "test_net_util.h"

#define TIMEOUT_MS 2000
#define BUF_BYTES (1u << 20)

static vmep_engine *make_engine(int rank, int size) {
  struct vmep_engine_params params = {
      .rank = rank, .size = size, .timeout_ms = TIMEOUT_MS};
  vmep_engine *engine = NULL;
  ASSERT_OK(vmep__engine_create(&params, &engine));
  return engine;
}

/* A failed call toward `rank`: PEER or TIMEOUT, naming the rank. */
static void assert_peer_error(vmep_status st, int rank, const char *what) {
  char name[32];
  snprintf(name, sizeof(name), "rank %d", rank);
  if (st != VMEP_ERR_PEER && st != VMEP_ERR_TIMEOUT)
    TEST_FAIL("%s: %s (%s), expected a peer error or a timeout", what,
              vmep_status_name(st), vmep_last_error());
  ASSERT_STR_CONTAINS(vmep_last_error(), name);
  printf("%s: %s: %s\n", what, vmep_status_name(st), vmep_last_error());
}

/* ---- a peer killed or stopped mid-transfer ------------------------------ */

static int victim_signal; /* SIGKILL or SIGSTOP, set before forking */

static int survivor_or_victim(int rank, int size, int fd) {
  /* One engine made and destroyed first, so that what UCX keeps open for
   * the process (once) is in the baseline. */
  vmep__engine_destroy(make_engine(rank, size));
  int fds_before = fake_open_fds();
  vmep_engine *engine = make_engine(rank, size);
  unsigned char *buf = calloc(1, BUF_BYTES);
  ASSERT_TRUE(buf != NULL);
  vmep_engine_mr *mr = NULL;
  ASSERT_OK(vmep__engine_mem_reg(engine, buf, BUF_BYTES, 0, &mr));
  net_connect_all(engine, fd, rank, size);
  size_t len = 0;
  const void *blob = vmep__engine_mr_blob(mr, &len);
  void *all[NET_MAX_RANKS];
  uint32_t lens[NET_MAX_RANKS];
  net_allgather(fd, size, engine, blob, (uint32_t)len, all, lens);
  vmep_engine_rkey *key = NULL;
  ASSERT_OK(vmep__engine_rkey_unpack(engine, 1 - rank, all[1 - rank],
                                     lens[1 - rank], &key));
  free(all[0]);
  free(all[1]);
  net_barrier(fd, size, engine); /* the parent kills rank 1 after this */
  if (rank == 1)
    for (;;) /* serve rank 0's puts until killed */
      vmep__engine_progress(engine);
  vmep_status st = VMEP_OK;
  uint64_t t0 = vmep__now_ms(), failed_at = 0;
  while (st == VMEP_OK && vmep__now_ms() - t0 < 20000) {
    failed_at = vmep__now_ms();
    st = vmep__engine_put(engine, 1, buf, BUF_BYTES, key,
                          vmep__engine_rkey_base(key));
    if (st == VMEP_OK)
      st = vmep__engine_flush(engine, 1, 0);
  }
  uint64_t took = vmep__now_ms() - failed_at;
  assert_peer_error(st, 1, "after the signal");
  printf("the failing call returned after %llu ms\n", (unsigned long long)took);
  ASSERT_TRUE(took <= TIMEOUT_MS + 1000);
  if (victim_signal == SIGSTOP)
    ASSERT_EQ(st, VMEP_ERR_TIMEOUT); /* alive, so not declared failed */
  if (st == VMEP_ERR_PEER) {
    ASSERT_TRUE(vmep__engine_peer_is_failed(engine, 1));
    ASSERT_STATUS(
        vmep__engine_put(engine, 1, buf, 8, key, vmep__engine_rkey_base(key)),
        VMEP_ERR_PEER);
    ASSERT_STR_CONTAINS(vmep_last_error(), "rank 1 failed");
    ASSERT_STATUS(vmep__engine_flush(engine, -1, 0), VMEP_ERR_PEER);
  }
  uint64_t d0 = vmep__now_ms();
  vmep__engine_destroy(engine); /* key and mr released with it */
  ASSERT_TRUE(vmep__now_ms() - d0 <= TIMEOUT_MS + 1000);
  printf("destroy took %llu ms\n", (unsigned long long)(vmep__now_ms() - d0));
  free(buf);
  ASSERT_EQ(fake_open_fds(), fds_before);
  return 0;
}

static void victim_mid_transfer(int signal) {
  struct net_job job;
  victim_signal = signal;
  net_job_start(&job, 2, survivor_or_victim);
  for (int round = 0; round < 3; round++) /* addresses, keys, barrier */
    ASSERT_TRUE(net_relay_round(&job));
  usleep(200 * 1000); /* puts are streaming now */
  ASSERT_EQ(kill(job.pid[1], signal), 0);
  int wstatus = 0;
  ASSERT_EQ(waitpid(job.pid[0], &wstatus, 0), job.pid[0]);
  ASSERT_TRUE(WIFEXITED(wstatus) && WEXITSTATUS(wstatus) == 0);
  if (signal != SIGKILL)
    ASSERT_EQ(kill(job.pid[1], SIGKILL), 0);
  ASSERT_EQ(waitpid(job.pid[1], &wstatus, 0), job.pid[1]);
  ASSERT_TRUE(WIFSIGNALED(wstatus));
  close(job.fd[0]);
  close(job.fd[1]);
}

/* ---- refused blobs, a gone endpoint, bad arguments ----------------------- */

static void bad_blobs(vmep_engine *engine, const void *address, size_t len,
                      const void *key_blob, size_t key_len) {
  unsigned char junk[256];
  for (size_t i = 0; i < sizeof(junk); i++)
    junk[i] = (unsigned char)test_rand();
  ASSERT_STATUS(vmep__engine_connect(engine, 1, junk, sizeof(junk)),
                VMEP_ERR_INVALID_ARG);
  ASSERT_STR_CONTAINS(vmep_last_error(), "vmep__engine_connect: ");
  ASSERT_STATUS(vmep__engine_connect(engine, 1, address, len - 1),
                VMEP_ERR_INVALID_ARG);
  ASSERT_STATUS(vmep__engine_connect(engine, 1, key_blob, key_len),
                VMEP_ERR_INVALID_ARG);
  ASSERT_STR_CONTAINS(vmep_last_error(), "kind");
  ASSERT_STATUS(vmep__engine_connect(engine, 1, NULL, len),
                VMEP_ERR_INVALID_ARG);
  ASSERT_STATUS(vmep__engine_connect(engine, 0, address, len),
                VMEP_ERR_INVALID_ARG);
  ASSERT_STATUS(vmep__engine_connect(engine, 2, address, len),
                VMEP_ERR_INVALID_ARG);
  ASSERT_STR_CONTAINS(vmep_last_error(), "rank 2 is not a peer");
}

static void bad_arguments(vmep_engine *engine, vmep_engine_rkey *key,
                          unsigned char *buf) {
  uint64_t base = vmep__engine_rkey_base(key);
  struct vmep_engine_params params = {.rank = 2, .size = 2};
  vmep_engine *none = NULL;
  ASSERT_STATUS(vmep__engine_create(&params, &none), VMEP_ERR_INVALID_ARG);
  ASSERT_STATUS(vmep__engine_create(NULL, &none), VMEP_ERR_INVALID_ARG);
  ASSERT_STATUS(vmep__engine_put(NULL, 1, buf, 8, key, base),
                VMEP_ERR_INVALID_ARG);
  ASSERT_STR_CONTAINS(vmep_last_error(), "engine is NULL");
  ASSERT_STATUS(vmep__engine_put(engine, 1, NULL, 8, key, base),
                VMEP_ERR_INVALID_ARG);
  ASSERT_STATUS(vmep__engine_put(engine, 1, buf, 0, key, base),
                VMEP_ERR_INVALID_ARG);
  ASSERT_STR_CONTAINS(vmep_last_error(), "zero bytes");
  ASSERT_STATUS(vmep__engine_put(engine, 1, buf, 8, NULL, base),
                VMEP_ERR_INVALID_ARG);
  ASSERT_STATUS(vmep__engine_put(engine, 1, buf, 16, key, base + BUF_BYTES - 8),
                VMEP_ERR_INVALID_ARG);
  ASSERT_STR_CONTAINS(vmep_last_error(), "outside rank 1's registration");
  ASSERT_STATUS(vmep__engine_put(engine, 1, buf, 8, key, base - 8),
                VMEP_ERR_INVALID_ARG);
  ASSERT_STATUS(vmep__engine_put(engine, 0, buf, 8, key, base),
                VMEP_ERR_INVALID_ARG);
  ASSERT_STATUS(vmep__engine_put_signal(engine, 1, buf, 8, key, base, key,
                                        base + 4, VMEP_ENGINE_SIGNAL_SET, 1),
                VMEP_ERR_INVALID_ARG);
  ASSERT_STR_CONTAINS(vmep_last_error(), "aligned");
  ASSERT_STATUS(vmep__engine_put_signal(engine, 1, buf, 8, key, base, key, base,
                                        (enum vmep_engine_signal)7, 1),
                VMEP_ERR_INVALID_ARG);
  ASSERT_STATUS(vmep__engine_flush(engine, 5, 0), VMEP_ERR_INVALID_ARG);
  vmep_engine_mr *mr = NULL;
  ASSERT_STATUS(vmep__engine_mem_reg(engine, NULL, 8, 0, &mr),
                VMEP_ERR_INVALID_ARG);
  ASSERT_STATUS(vmep__engine_mem_reg(engine, buf, 0, 0, &mr),
                VMEP_ERR_INVALID_ARG);
  ASSERT_STATUS(vmep__engine_mem_reg(engine, buf, 8, 0x80, &mr),
                VMEP_ERR_INVALID_ARG);
  struct vmep_engine_info info;
  ASSERT_OK(vmep__engine_probe(&info));
  if (!info.cuda_memory) { /* host memory claimed as device memory */
    ASSERT_STATUS(
        vmep__engine_mem_reg(engine, buf, 8, VMEP_ENGINE_MEM_GPU, &mr),
        VMEP_ERR_UNSUPPORTED);
    ASSERT_STR_CONTAINS(vmep_last_error(), "CUDA");
  }
  vmep_engine_rkey *other = NULL;
  ASSERT_STATUS(vmep__engine_rkey_unpack(engine, 1, buf, 64, &other),
                VMEP_ERR_INVALID_ARG);
  ASSERT_STATUS(vmep__engine_probe(NULL), VMEP_ERR_INVALID_ARG);
}

/* After rank 1 failed: forgotten (its key released, its failure cleared;
 * twice is a no-op), then its next process connected afresh, and a put +
 * signal reaches it. Both engines progressed by this one thread. */
static void reconnect(vmep_engine *engine, unsigned char *buf) {
  vmep__engine_disconnect(engine, 1);
  vmep__engine_disconnect(engine, 1);
  ASSERT_TRUE(!vmep__engine_peer_is_failed(engine, 1));
  vmep_engine *next = make_engine(1, 2);
  unsigned char *landing = calloc(1, BUF_BYTES);
  ASSERT_TRUE(landing != NULL);
  vmep_engine_mr *mr = NULL;
  ASSERT_OK(vmep__engine_mem_reg(next, landing, BUF_BYTES, 0, &mr));
  const void *address = NULL;
  size_t len = 0, key_len = 0;
  ASSERT_OK(vmep__engine_address(next, &address, &len));
  const void *key_blob = vmep__engine_mr_blob(mr, &key_len);
  vmep_engine_rkey *key = NULL;
  ASSERT_OK(vmep__engine_connect(engine, 1, address, len));
  ASSERT_OK(vmep__engine_rkey_unpack(engine, 1, key_blob, key_len, &key));
  for (size_t i = 0; i < 4096; i++)
    buf[i] = (unsigned char)(test_rand() | 1);
  uint64_t base = vmep__engine_rkey_base(key);
  ASSERT_OK(vmep__engine_put_signal(engine, 1, buf, 4096, key, base, key,
                                    base + 8192, VMEP_ENGINE_SIGNAL_SET, 77));
  uint64_t deadline = vmep__now_ms() + TIMEOUT_MS;
  while (__atomic_load_n((uint64_t *)(landing + 8192), __ATOMIC_ACQUIRE) !=
         77) {
    if (vmep__now_ms() > deadline)
      TEST_FAIL("the put to rank 1's next process did not land");
    vmep__engine_progress(engine);
    vmep__engine_progress(next);
  }
  ASSERT_TRUE(memcmp(landing, buf, 4096) == 0);
  vmep__engine_disconnect(engine, 1);
  vmep__engine_destroy(next);
  free(landing);
  printf("rank 1 forgotten and its next process reached\n");
}

/* Rank 0 and a ghost rank 1 in one process: blobs and arguments checked
 * while the ghost lives, then the ghost destroyed under a connection. */
static int refused(int rank, int size, int fd) {
  (void)rank;
  (void)size;
  (void)fd;
  vmep_engine *engine = make_engine(0, 2);
  vmep_engine *ghost = make_engine(1, 2);
  unsigned char *buf = calloc(1, BUF_BYTES);
  ASSERT_TRUE(buf != NULL);
  vmep_engine_mr *mr = NULL;
  ASSERT_OK(vmep__engine_mem_reg(ghost, buf, BUF_BYTES, 0, &mr));
  size_t len = 0, key_len = 0;
  const void *address = NULL;
  ASSERT_OK(vmep__engine_address(ghost, &address, &len));
  const void *key_blob = vmep__engine_mr_blob(mr, &key_len);
  vmep_engine_rkey *key = NULL;
  ASSERT_STATUS(vmep__engine_rkey_unpack(engine, 1, key_blob, key_len, &key),
                VMEP_ERR_INVALID_ARG);
  ASSERT_STR_CONTAINS(vmep_last_error(), "rank 1 is not connected");
  bad_blobs(engine, address, len, key_blob, key_len);
  ASSERT_OK(vmep__engine_connect(engine, 1, address, len));
  ASSERT_STATUS(vmep__engine_connect(engine, 1, address, len),
                VMEP_ERR_INVALID_ARG);
  ASSERT_STR_CONTAINS(vmep_last_error(), "already connected");
  ASSERT_OK(vmep__engine_rkey_unpack(engine, 1, key_blob, key_len, &key));
  bad_arguments(engine, key, buf);
  /* The ghost goes: its endpoint answers no more. */
  vmep__engine_destroy(ghost);
  vmep_status st =
      vmep__engine_put(engine, 1, buf, 4096, key, vmep__engine_rkey_base(key));
  uint64_t t0 = vmep__now_ms();
  if (st == VMEP_OK)
    st = vmep__engine_flush(engine, 1, 0);
  assert_peer_error(st, 1, "toward a destroyed engine");
  ASSERT_TRUE(vmep__now_ms() - t0 <= TIMEOUT_MS + 1000);
  reconnect(engine, buf);
  vmep__engine_destroy(engine);
  vmep__engine_destroy(NULL);
  free(buf);
  return 0;
}

int main(void) {
  net_test_env();
  test_seed("test_net_fault");
  victim_mid_transfer(SIGKILL);
  victim_mid_transfer(SIGSTOP);
  struct net_job job;
  net_job_start(&job, 1, refused);
  net_job_finish(&job);
  printf("test_net_fault: ok\n");
  return 0;
}
