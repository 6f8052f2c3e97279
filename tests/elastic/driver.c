/*
 * vmep-elastic PLAN.json [--seed S] [--json FILE]: runs an elastic plan on
 * this machine. It hosts the job's store, starts one process per rank of
 * the first phase (and new processes for ranks that join later, a freed
 * rank id included), tells every phase to go, kills each phase's victim
 * with SIGKILL once it is inside its kernel, and prints what every
 * survivor reported: its checks, how long the call the victim died in
 * took, whether the victim ended masked, and its fds and memory, which
 * must not grow across faults. No MPS: a kill during a kernel would take
 * an MPS server and every client down; time-sliced contexts are isolated.
 */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "boot/boot.h"
#include "store/store.h"
#include "elastic.h"

#define FILE_MAX (1 << 20)

double elastic_now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec / 1e6;
}

struct driver {
  struct plan plan;
  const char *self, *plan_path;
  uint64_t seed;
  char addr[64], token[64], job[64];
  struct vmep_store_client *store;
  pid_t pid[PLAN_MAX_RANKS];
  /* fds and memory of each rank at its first fault phase, to compare */
  int64_t fds0[PLAN_MAX_RANKS], rss0[PLAN_MAX_RANKS];
  int faults;
  double detect_min, detect_max, call_max;
  FILE *json;
};

static int read_plan(struct driver *d) {
  static char text[FILE_MAX];
  char error[256];
  FILE *f = fopen(d->plan_path, "r");
  if (!f) {
    fprintf(stderr, "vmep-elastic: %s: %s\n", d->plan_path, strerror(errno));
    return -1;
  }
  size_t len = fread(text, 1, sizeof(text), f);
  fclose(f);
  if (plan_parse(text, len, &d->plan, error, sizeof(error))) {
    fprintf(stderr, "vmep-elastic: %s: %s\n", d->plan_path, error);
    return -1;
  }
  for (int p = 0; p < d->plan.nphases; p++)
    if (d->plan.phases[p].victim >= 0 && d->plan.iters < 2) {
      fprintf(stderr,
              "vmep-elastic: %s: a phase with a kill needs iters "
              ">= 2 (a round after the fault)\n",
              d->plan_path);
      return -1;
    }
  return 0;
}

static pid_t start_rank(struct driver *d, int rank, int first) {
  fflush(NULL);
  pid_t pid = fork();
  if (pid != 0)
    return pid;
  char v[64];
  snprintf(v, sizeof(v), "%d", rank);
  setenv("ELASTIC_RANK", v, 1);
  snprintf(v, sizeof(v), "%d", first);
  setenv("ELASTIC_FIRST", v, 1);
  snprintf(v, sizeof(v), "%llu", (unsigned long long)d->seed);
  setenv("ELASTIC_SEED", v, 1);
  setenv("VMEP_STORE_ADDR", d->addr, 1);
  setenv("VMEP_JOB_TOKEN", d->token, 1);
  setenv("VMEP_JOB_ID", d->job, 1);
  /* Store waits (membership, barriers) give up well within the test's
   * time, so that a protocol fault shows as an error, not a hang. */
  if (!getenv("VMEP_TIMEOUT_MS"))
    setenv("VMEP_TIMEOUT_MS", "60000", 1);
  execl(d->self, d->self, d->plan_path, (char *)NULL);
  _exit(127);
}

static void kill_all(struct driver *d) {
  for (int r = 0; r < PLAN_MAX_RANKS; r++)
    if (d->pid[r] > 0) {
      kill(d->pid[r], SIGKILL);
      waitpid(d->pid[r], NULL, 0);
      d->pid[r] = 0;
    }
}

/* Polls for `key`; fails early when `watch` exits. 1 found, 0 not. */
static int poll_key(struct driver *d, const char *key, void *value,
                    size_t bytes, int timeout_ms, int watch) {
  uint64_t deadline = vmep__now_ms() + (uint64_t)timeout_ms;
  while (vmep__now_ms() < deadline) {
    int found = 0, wstatus;
    void *got = NULL;
    size_t len = 0;
    if (vmep__store_get(d->store, key, &found, &got, &len) != VMEP_OK)
      return 0;
    if (found && value && len == bytes)
      memcpy(value, got, bytes);
    vmep__free(got);
    if (found)
      return 1;
    if (watch >= 0 && d->pid[watch] > 0 &&
        waitpid(d->pid[watch], &wstatus, WNOHANG) == d->pid[watch]) {
      fprintf(stderr, "vmep-elastic: rank %d exited (status %d) before %s\n",
              watch, wstatus, key);
      d->pid[watch] = 0;
      return 0;
    }
    usleep(2000);
  }
  fprintf(stderr, "vmep-elastic: no %s after %d ms\n", key, timeout_ms);
  return 0;
}

static void print_ranks(const struct plan_phase *ph) {
  for (int i = 0; i < ph->n; i++)
    printf("%s%s%d", i ? "," : "", ph->ranks[i] == ph->victim ? "-" : "",
           ph->ranks[i]);
}

/* Checks one survivor's report; returns 0 when it passed. */
static int judge(struct driver *d, int p, int r,
                 const struct elastic_result *res, double killed_at) {
  const struct plan_phase *ph = &d->plan.phases[p];
  int bad = !res->ok;
  printf("  rank %d: %s, %lld mismatches, slowest call %.1f ms, %lld fds, "
         "rss %lld kB",
         r, res->ok ? "checks passed" : "FAILED", (long long)res->mismatches,
         res->max_call_ms, (long long)res->fds, (long long)res->rss_kb);
  if (ph->victim >= 0) {
    double detect = res->returned_at_ms - killed_at;
    printf(", fault call %.1f ms, returned %.1f ms after the kill, victim %s",
           res->fault_call_ms, detect,
           res->victim_masked ? "masked" : "NOT masked");
    /* A waiter extends its deadline while the awaited rank still beats,
     * so a chain of waits can take up to about twice the timeout. */
    if (res->fault_call_ms > 2.0 * d->plan.timeout_ms + 2000.0) {
      printf(" (over 2 x timeout + 2 s)");
      bad = 1;
    }
    if (d->faults == 1 || detect < d->detect_min)
      d->detect_min = detect;
    if (detect > d->detect_max)
      d->detect_max = detect;
    if (res->fault_call_ms > d->call_max)
      d->call_max = res->fault_call_ms;
  }
  if (res->message[0])
    printf("\n    first failure: %s", res->message);
  /* Leaks: a rank that lived through faults has the same fds and about
   * the same memory as at the first fault phase's end. */
  if (ph->victim >= 0 && d->fds0[r] == 0) {
    d->fds0[r] = res->fds;
    d->rss0[r] = res->rss_kb;
  } else if (ph->victim >= 0 && d->fds0[r] != res->fds) {
    printf("\n    LEAK: %lld fds, %lld at the first fault", (long long)res->fds,
           (long long)d->fds0[r]);
    bad = 1;
  } else if (ph->victim >= 0 && res->rss_kb > d->rss0[r] + 65536) {
    printf("\n    LEAK: rss %lld kB, %lld kB at the first fault",
           (long long)res->rss_kb, (long long)d->rss0[r]);
    bad = 1;
  }
  printf("\n");
  if (d->json)
    fprintf(d->json,
            "    {\"phase\": %d, \"rank\": %d, \"ok\": %d, \"mismatches\": "
            "%lld, \"fault_call_ms\": %.3f, \"detect_ms\": %.3f, "
            "\"victim_masked\": %d, \"fds\": %lld, \"rss_kb\": %lld},\n",
            p, r, !bad, (long long)res->mismatches, res->fault_call_ms,
            ph->victim >= 0 ? res->returned_at_ms - killed_at : 0.0,
            res->victim_masked, (long long)res->fds, (long long)res->rss_kb);
  return bad;
}

static int run_phase(struct driver *d, int p) {
  const struct plan_phase *ph = &d->plan.phases[p];
  int in[PLAN_MAX_RANKS] = {0}, failed = 0;
  char key[64];
  double killed_at = 0;
  for (int i = 0; i < ph->n; i++)
    in[ph->ranks[i]] = 1;
  printf("phase %d: ranks ", p);
  print_ranks(ph);
  if (ph->victim >= 0)
    printf(" (rank %d killed during a %s)", ph->victim,
           ph->fault == PLAN_FAULT_COMBINE ? "combine" : "dispatch");
  printf("\n");
  for (int i = 0; i < ph->n; i++)
    if (d->pid[ph->ranks[i]] <= 0)
      d->pid[ph->ranks[i]] = start_rank(d, ph->ranks[i], p);
  snprintf(key, sizeof(key), "el/go/%d", p);
  if (vmep__store_set(d->store, key, "1", 1) != VMEP_OK)
    return 1;
  /* Ranks that are not in this phase leave. */
  for (int r = 0; r < d->plan.max_ranks; r++)
    if (!in[r] && d->pid[r] > 0) {
      int wstatus = 0;
      waitpid(d->pid[r], &wstatus, 0);
      d->pid[r] = 0;
      if (!WIFEXITED(wstatus) || WEXITSTATUS(wstatus) != 0) {
        printf("  rank %d left with status %d\n", r, wstatus);
        failed = 1;
      }
    }
  if (ph->victim >= 0) {
    snprintf(key, sizeof(key), "el/armed/%d", p);
    if (!poll_key(d, key, NULL, 0, 120000, ph->victim))
      return 1;
    kill(d->pid[ph->victim], SIGKILL);
    killed_at = elastic_now_ms();
    waitpid(d->pid[ph->victim], NULL, 0);
    d->pid[ph->victim] = 0;
    d->faults++;
  }
  for (int i = 0; i < ph->n; i++) {
    int r = ph->ranks[i];
    struct elastic_result res;
    if (r == ph->victim)
      continue;
    snprintf(key, sizeof(key), "el/done/%d/%d", p, r);
    if (!poll_key(d, key, &res, sizeof(res),
                  30000 + 20 * d->plan.timeout_ms * d->plan.iters, r))
      return 1;
    failed |= judge(d, p, r, &res, killed_at);
  }
  return failed;
}

static int drive(struct driver *d) {
  struct vmep_store_server *server = NULL;
  snprintf(d->token, sizeof(d->token), "elastic-%d-%llu", (int)getpid(),
           (unsigned long long)d->seed);
  snprintf(d->job, sizeof(d->job), "el%d", (int)getpid());
  if (vmep__store_server_start("127.0.0.1", 0, d->token, &server) != VMEP_OK) {
    fprintf(stderr, "vmep-elastic: %s\n", vmep_last_error());
    return 1;
  }
  snprintf(d->addr, sizeof(d->addr), "127.0.0.1:%d",
           vmep__store_server_port(server));
  if (vmep__store_client_connect(d->addr, d->token, -1, -1, 30000, &d->store) !=
      VMEP_OK) {
    fprintf(stderr, "vmep-elastic: %s\n", vmep_last_error());
    vmep__store_server_stop(server);
    return 1;
  }
  printf("vmep-elastic: %s, %d phases, max_ranks %d, %d rounds a phase, "
         "timeout %d ms, seed %llu (replay with --seed)\n",
         d->plan_path, d->plan.nphases, d->plan.max_ranks, d->plan.iters,
         d->plan.timeout_ms, (unsigned long long)d->seed);
  if (d->json)
    fprintf(d->json,
            "{\"plan\": \"%s\", \"seed\": %llu, \"timeout_ms\": %d, "
            "\"reports\": [\n",
            d->plan_path, (unsigned long long)d->seed, d->plan.timeout_ms);
  int failed = 0;
  double t0 = elastic_now_ms();
  for (int p = 0; p < d->plan.nphases && !failed; p++)
    failed = run_phase(d, p);
  /* The last phase's ranks finish (destroy, leave) on their own. */
  for (int r = 0; r < PLAN_MAX_RANKS && !failed; r++)
    if (d->pid[r] > 0) {
      int wstatus = 0;
      waitpid(d->pid[r], &wstatus, 0);
      d->pid[r] = 0;
      failed |= !WIFEXITED(wstatus) || WEXITSTATUS(wstatus) != 0;
    }
  kill_all(d);
  printf("vmep-elastic: %s: %s in %.1f s; %d faults, survivors returned "
         "%.0f..%.0f ms after a kill (timeout %d ms), slowest fault call "
         "%.0f ms\n",
         d->plan_path, failed ? "FAILED" : "passed",
         (elastic_now_ms() - t0) / 1e3, d->faults, d->detect_min, d->detect_max,
         d->plan.timeout_ms, d->call_max);
  if (d->json)
    fprintf(d->json, "    {}\n  ], \"faults\": %d, \"passed\": %d}\n",
            d->faults, !failed);
  vmep__store_client_close(d->store, 1);
  vmep__store_server_stop(server);
  return failed;
}

int main(int argc, char **argv) {
  static struct driver d;
  const char *json = NULL;
  d.self = "/proc/self/exe";
  d.seed = (uint64_t)time(NULL) ^ ((uint64_t)getpid() << 32);
  for (int i = 1; i < argc; i++) {
    if (!strcmp(argv[i], "--seed") && i + 1 < argc)
      d.seed = strtoull(argv[++i], NULL, 0);
    else if (!strcmp(argv[i], "--json") && i + 1 < argc)
      json = argv[++i];
    else if (argv[i][0] != '-' && !d.plan_path)
      d.plan_path = argv[i];
    else {
      fprintf(stderr, "usage: vmep-elastic PLAN.json [--seed S] "
                      "[--json FILE]\n");
      return 2;
    }
  }
  if (!d.plan_path || read_plan(&d))
    return 2;
  const char *rank = getenv("ELASTIC_RANK");
  if (rank)
    return elastic_rank_main(&d.plan, atoi(rank), atoi(getenv("ELASTIC_FIRST")),
                             strtoull(getenv("ELASTIC_SEED"), NULL, 0));
  int count = 0;
  if (vmep_device_count(&count) != VMEP_OK || count == 0) {
    printf("SKIP: no GPU: %s\n", vmep_last_error());
    return 77;
  }
  if (json && !(d.json = fopen(json, "w"))) {
    fprintf(stderr, "vmep-elastic: %s: %s\n", json, strerror(errno));
    return 2;
  }
  /* Ranks kill nobody else: a fault must not stop the job. */
  signal(SIGPIPE, SIG_IGN);
  int failed = drive(&d);
  if (d.json)
    fclose(d.json);
  return failed ? 1 : 0;
}
