/*
 * A peer SIGKILLed while the group runs allgathers back to back: every
 * survivor's collective must return VMEP_ERR_PEER naming the dead rank
 * within 5 s of the kill (a correctness bound: a dead peer may not look
 * like a hang), and every survivor must then leave cleanly. argv[1] picks
 * the victim: a plain rank (its store connection closes), or rank 0, which
 * hosts the store (the survivors lose the store itself).
 */
#include <sys/mman.h>

#include "boot/boot.h"
#include "test_store_util.h"

#define RANKS 4
#define BOUND_MS 5000

struct shared {
  _Atomic int ready;
  _Atomic uint64_t kill_ms;
  struct {
    int status;
    uint64_t at_ms;
    uint64_t rounds;
    char message[512];
  } result[RANKS];
};

static struct shared *sh;
static int port;

static void rank_main(int rank) {
  char addr[64];
  unsigned char mine[64], all[64 * RANKS];
  vmep_group *g = NULL;
  vmep_status status = VMEP_OK;
  uint64_t rounds = 0;
  snprintf(addr, sizeof(addr), "127.0.0.1:%d", port);
  ASSERT_OK(vmep_group_create(rank, RANKS, addr, NULL, &g));
  sh->ready++;
  uint64_t give_up = test_now_ms() + 30000;
  while (status == VMEP_OK && test_now_ms() < give_up) {
    test_fill(mine, sizeof(mine), test_mix(rank, rounds, 0));
    status = vmep_group_allgather(g, mine, sizeof(mine), all);
    for (int r = 0; status == VMEP_OK && r < RANKS; r++)
      test_check(all + 64 * r, 64, test_mix(r, rounds, 0), "allgather");
    rounds++;
  }
  sh->result[rank].at_ms = test_now_ms();
  sh->result[rank].status = status;
  sh->result[rank].rounds = rounds;
  snprintf(sh->result[rank].message, sizeof(sh->result[rank].message), "%s",
           vmep_last_error());
  uint64_t start = test_now_ms();
  vmep_group_destroy(g); /* may report the dead rank; must not hang */
  ASSERT_TRUE(test_now_ms() - start < BOUND_MS);
}

int main(int argc, char **argv) {
  int victim = argc > 1 ? atoi(argv[1]) : 2;
  pid_t pids[RANKS];
  test_seed("test_group_peer_death");
  ASSERT_TRUE(victim >= 0 && victim < RANKS);
  port = test_free_port();
  setenv("VMEP_TIMEOUT_MS", "60000", 1); /* far above the 5 s bound */
  sh = mmap(NULL, sizeof(*sh), PROT_READ | PROT_WRITE,
            MAP_SHARED | MAP_ANONYMOUS, -1, 0);
  ASSERT_TRUE(sh != MAP_FAILED);
  memset(sh, 0, sizeof(*sh));
  fflush(stdout);
  for (int r = 0; r < RANKS; r++) {
    pids[r] = fork();
    ASSERT_TRUE(pids[r] >= 0);
    if (pids[r] == 0) {
      rank_main(r);
      exit(0); /* exit, not _exit: LeakSanitizer checks the rank */
    }
  }
  uint64_t deadline = test_now_ms() + 20000;
  while (sh->ready < RANKS && test_now_ms() < deadline)
    usleep(1000);
  ASSERT_EQ(sh->ready, RANKS);
  usleep((useconds_t)(50000 + test_rand() % 350000)); /* mid-stream */
  sh->kill_ms = test_now_ms();
  ASSERT_EQ(kill(pids[victim], SIGKILL), 0);
  for (int r = 0; r < RANKS; r++) {
    int wstatus = 0;
    ASSERT_EQ(waitpid(pids[r], &wstatus, 0), pids[r]);
    if (r == victim) {
      ASSERT_TRUE(WIFSIGNALED(wstatus) && WTERMSIG(wstatus) == SIGKILL);
      continue;
    }
    ASSERT_TRUE(WIFEXITED(wstatus) && WEXITSTATUS(wstatus) == 0);
  }
  char name[32];
  snprintf(name, sizeof(name), "rank %d", victim);
  for (int r = 0; r < RANKS; r++) {
    if (r == victim)
      continue;
    uint64_t after = sh->result[r].at_ms - sh->kill_ms;
    printf("rank %d: %s after %llu rounds, %llu ms after the kill: %s\n", r,
           vmep_status_name(sh->result[r].status),
           (unsigned long long)sh->result[r].rounds, (unsigned long long)after,
           sh->result[r].message);
    ASSERT_EQ(sh->result[r].status, VMEP_ERR_PEER);
    ASSERT_STR_CONTAINS(sh->result[r].message, name);
    ASSERT_TRUE(sh->result[r].rounds > 1); /* it was running, not starting */
    ASSERT_TRUE(after < BOUND_MS);
  }
  return 0;
}
