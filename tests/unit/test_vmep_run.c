/*
 * vmep-run, driven through its executable (path in argv[1]): every rank's
 * lines prefixed and whole, the VMEP_* variables each rank sees, a failing
 * or killed rank taking the others down (their pids must be gone) with its
 * status passed on, --timeout (124), SIGTERM forwarded (143), usage errors
 * (2), --nodes (VMEP_NODES and the local rank within a pretend node), and the
 * MPS daemon's life cycle through a fake nvidia-cuda-mps-control that records
 * how it was called.
 */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "test.h"

#define OUT_BYTES (1 << 20)
#define LIMIT_MS 60000

static const char *launcher;
static char fake_dir[64];  /* holds the fake nvidia-cuda-mps-control */
static char empty_dir[96]; /* a PATH where nothing is found */
static char record[96];    /* what the fake writes */

struct result {
  int status; /* exit status, or 128 + signal */
  char out[OUT_BYTES], err[OUT_BYTES];
  size_t out_len, err_len;
};

static struct result res;

static int64_t now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static int count_lines(const char *text, size_t len) {
  int n = 0;
  for (size_t i = 0; i < len; i++)
    n += text[i] == '\n';
  return n;
}

/* Appends what `fd` has to buf; closes it at EOF. */
static void read_into(int *fd, char *buf, size_t *len) {
  ssize_t n = read(*fd, buf + *len, OUT_BYTES - 1 - *len);
  if (n > 0) {
    *len += (size_t)n;
    buf[*len] = '\0';
  } else {
    close(*fd);
    *fd = -1;
  }
}

/*
 * Runs vmep-run with `args` (NULL-terminated, after the program name) and
 * PATH set to `path` (NULL: unchanged). When `sig` is nonzero, sends it to
 * vmep-run once its stdout holds `after_lines` lines.
 */
static void run(const char *const *args, const char *path, int sig,
                int after_lines) {
  const char *argv[32] = {launcher};
  int out[2], err[2], n = 1;
  while (args[n - 1]) {
    ASSERT_TRUE(n < 31);
    argv[n] = args[n - 1];
    n++;
  }
  argv[n] = NULL;
  memset(&res, 0, sizeof(res));
  ASSERT_EQ(pipe2(out, O_CLOEXEC), 0);
  ASSERT_EQ(pipe2(err, O_CLOEXEC), 0);
  fflush(stdout);
  pid_t pid = fork();
  ASSERT_TRUE(pid >= 0);
  if (pid == 0) {
    dup2(out[1], STDOUT_FILENO);
    dup2(err[1], STDERR_FILENO);
    if (path)
      setenv("PATH", path, 1);
    execv(launcher, (char *const *)argv);
    _exit(99);
  }
  close(out[1]);
  close(err[1]);
  int64_t start = now_ms();
  while (out[0] >= 0 || err[0] >= 0) {
    struct pollfd p[2] = {{.fd = out[0], .events = POLLIN},
                          {.fd = err[0], .events = POLLIN}};
    ASSERT_TRUE(now_ms() - start < LIMIT_MS);
    if (poll(p, 2, 1000) <= 0)
      continue;
    if (p[0].revents)
      read_into(&out[0], res.out, &res.out_len);
    if (p[1].revents)
      read_into(&err[0], res.err, &res.err_len);
    if (sig && count_lines(res.out, res.out_len) >= after_lines) {
      kill(pid, sig);
      sig = 0;
    }
  }
  int wstatus = 0;
  ASSERT_EQ(waitpid(pid, &wstatus, 0), pid);
  res.status =
      WIFEXITED(wstatus) ? WEXITSTATUS(wstatus) : 128 + WTERMSIG(wstatus);
  printf("  vmep-run");
  for (int i = 1; i < n; i++)
    printf(" %.40s", argv[i]);
  printf(" -> %d\n", res.status);
}

/* Dead, or a zombie nobody reaped yet; waits up to 2 s for it. */
static int pid_gone(pid_t pid) {
  char path[64], stat[256];
  snprintf(path, sizeof(path), "/proc/%d/stat", (int)pid);
  for (int i = 0; i < 200; i++) {
    FILE *f = fopen(path, "r");
    if (!f)
      return 1;
    size_t n = fread(stat, 1, sizeof(stat) - 1, f);
    fclose(f);
    stat[n] = '\0';
    const char *paren = strrchr(stat, ')');
    if (paren && (paren[2] == 'Z' || paren[2] == 'X'))
      return 1;
    usleep(10000);
  }
  return 0;
}

/* Every "[rank i] pid A B" line's pids must be gone. Returns how many. */
static int expect_pids_gone(void) {
  int found = 0;
  for (const char *p = res.out; (p = strstr(p, "] pid ")); p++) {
    int a = 0, b = 0;
    ASSERT_EQ(sscanf(p, "] pid %d %d", &a, &b), 2);
    ASSERT_TRUE(pid_gone(a));
    ASSERT_TRUE(pid_gone(b));
    found++;
  }
  return found;
}

static void test_environment(void) {
  static const char *const args[] = {
      "--mps",
      "off",
      "--gpus",
      "3,1",
      "-n",
      "3",
      "--",
      "sh",
      "-c",
      "echo \"out $VMEP_RANK $VMEP_WORLD_SIZE $VMEP_LOCAL_RANK "
      "$VMEP_STORE_ADDR $VMEP_JOB_TOKEN $VMEP_JOB_ID ${VMEP_DEVICE-none}\";"
      "echo \"err $VMEP_RANK\" >&2; printf \"partial $VMEP_RANK\"",
      NULL};
  char addr[3][64], token[3][64], job[3][80], device[3][16];
  int seen = 0;
  run(args, NULL, 0, 0);
  ASSERT_EQ(res.status, 0);
  ASSERT_EQ(count_lines(res.out, res.out_len), 6);
  for (const char *line = res.out; *line; line = strchr(line, '\n') + 1) {
    int prefix = -1, rank = -1, size = 0, local = -1;
    char tail[32];
    ASSERT_EQ(strncmp(line, "[rank ", 6), 0);
    if (sscanf(line, "[rank %d] partial %d", &prefix, &rank) == 2) {
      ASSERT_EQ(prefix, rank);
      continue;
    }
    ASSERT_EQ(sscanf(line, "[rank %d] out %d %d %d %63s %63s %79s %15s%31[^\n]",
                     &prefix, &rank, &size, &local, addr[0], token[0], job[0],
                     device[0], tail),
              8);
    ASSERT_TRUE(rank >= 0 && rank < 3);
    ASSERT_EQ(prefix, rank);
    ASSERT_EQ(size, 3);
    ASSERT_EQ(local, rank);
    ASSERT_EQ(atoi(device[0]), rank % 2 == 0 ? 3 : 1);
    ASSERT_TRUE((seen & (1 << rank)) == 0);
    seen |= 1 << rank;
    memcpy(addr[rank], addr[0], sizeof(addr[0]));
    memcpy(token[rank], token[0], sizeof(token[0]));
    memcpy(job[rank], job[0], sizeof(job[0]));
  }
  ASSERT_EQ(seen, 7);
  ASSERT_EQ(strncmp(addr[1], "127.0.0.1:", 10), 0);
  ASSERT_EQ(strlen(token[1]), 32);
  for (int r = 1; r < 3; r++) {
    ASSERT_EQ(strcmp(addr[r], addr[0]), 0);
    ASSERT_EQ(strcmp(token[r], token[0]), 0);
    ASSERT_EQ(strcmp(job[r], job[0]), 0);
  }
  ASSERT_STR_CONTAINS(res.err, "[rank 0] err 0\n");
  ASSERT_STR_CONTAINS(res.err, "[rank 2] err 2\n");
}

/* Without --gpus: every device, or none (and no VMEP_DEVICE) without a
 * driver. */
static void test_default_devices(void) {
  static const char *const all[] = {
      "--mps", "off", "-n", "2",
      "--",    "sh",  "-c", "echo \"dev $VMEP_RANK ${VMEP_DEVICE-none}\"",
      NULL};
  int devices = 0;
  run(all, NULL, 0, 0);
  ASSERT_EQ(res.status, 0);
  if (vmep_device_count(&devices) != VMEP_OK || devices == 0) {
    ASSERT_STR_CONTAINS(res.out, "[rank 0] dev 0 none\n");
    ASSERT_STR_CONTAINS(res.out, "[rank 1] dev 1 none\n");
  } else {
    ASSERT_STR_CONTAINS(res.out, "[rank 1] dev 1 ");
    ASSERT_TRUE(strstr(res.out, "none") == NULL);
  }
}

/* Many lines from every rank at once, on both streams: each one whole. */
static void test_whole_lines(void) {
  static const char *const args[] = {
      "-n",
      "3",
      "--",
      "sh",
      "-c",
      "i=0; while [ $i -lt 400 ]; do "
      "echo \"$VMEP_RANK:$i:abcdefghijklmnopqrstuvwxyz0123456789"
      "abcdefghijklmnopqrstuvwxyz0123456789\"; echo \"$VMEP_RANK:$i\" >&2;"
      "i=$((i+1)); done",
      NULL};
  int next[3] = {0, 0, 0};
  run(args, NULL, 0, 0);
  ASSERT_EQ(res.status, 0);
  ASSERT_EQ(count_lines(res.out, res.out_len), 1200);
  ASSERT_EQ(count_lines(res.err, res.err_len), 1200);
  for (const char *line = res.out; *line; line = strchr(line, '\n') + 1) {
    int prefix = -1, rank = -1, i = -1, tail = 0;
    ASSERT_EQ(sscanf(line,
                     "[rank %d] %d:%d:abcdefghijklmnopqrstuvwxyz0123456789"
                     "abcdefghijklmnopqrstuvwxyz0123456789%n",
                     &prefix, &rank, &i, &tail),
              3);
    ASSERT_EQ(line[tail], '\n');
    ASSERT_EQ(prefix, rank);
    ASSERT_EQ(i, next[rank]++); /* in order within a rank */
  }
}

/* A random rank of a random count fails with a random status. */
static void test_failure(void) {
  char ranks[16], script[256];
  int count = 2 + (int)(test_rand() % 3);
  int failing = (int)(test_rand() % (uint64_t)count);
  int code = 1 + (int)(test_rand() % 120);
  snprintf(ranks, sizeof(ranks), "%d", count);
  snprintf(script, sizeof(script),
           "if [ $VMEP_RANK = %d ]; then sleep 0.5; echo bye; exit %d; fi;"
           "sleep 100 & echo \"pid $$ $!\"; wait",
           failing, code);
  const char *const args[] = {"-n", ranks, "--", "sh", "-c", script, NULL};
  char expected[64];
  int64_t start = now_ms();
  run(args, NULL, 0, 0);
  ASSERT_EQ(res.status, code);
  ASSERT_TRUE(now_ms() - start < 10000);
  snprintf(expected, sizeof(expected), "rank %d exited with status %d", failing,
           code);
  ASSERT_STR_CONTAINS(res.err, expected);
  snprintf(expected, sizeof(expected), "[rank %d] bye\n", failing);
  ASSERT_STR_CONTAINS(res.out, expected);
  ASSERT_EQ(expect_pids_gone(), count - 1);

  static const char *const killed[] = {
      "-n",
      "2",
      "--",
      "sh",
      "-c",
      "if [ $VMEP_RANK = 0 ]; then sleep 0.3; kill -KILL $$; fi;"
      "sleep 100 & echo \"pid $$ $!\"; wait",
      NULL};
  run(killed, NULL, 0, 0);
  ASSERT_EQ(res.status, 128 + SIGKILL);
  ASSERT_STR_CONTAINS(res.err, "rank 0 was killed by signal 9");
  ASSERT_EQ(expect_pids_gone(), 1);

  static const char *const missing[] = {"-n", "2", "--", "/nonexistent/program",
                                        NULL};
  run(missing, NULL, 0, 0);
  ASSERT_EQ(res.status, 127);
  ASSERT_STR_CONTAINS(res.err, "cannot execute /nonexistent/program");
}

static void test_timeout_and_signals(void) {
  static const char *const args[] = {"--timeout", "1",     "-n",  "2",
                                     "--",        "sleep", "100", NULL};
  int64_t start = now_ms();
  run(args, NULL, 0, 0);
  ASSERT_EQ(res.status, 124);
  ASSERT_TRUE(now_ms() - start < 6000);
  ASSERT_STR_CONTAINS(res.err, "timeout");

  static const char *const waiting[] = {
      "-n", "2", "--", "sh", "-c", "sleep 100 & echo \"pid $$ $!\"; wait",
      NULL};
  run(waiting, NULL, SIGTERM, 2);
  ASSERT_EQ(res.status, 128 + SIGTERM);
  ASSERT_STR_CONTAINS(res.err, "passing it to every rank");
  ASSERT_EQ(expect_pids_gone(), 2);
}

/* Runs `ranks` ranks on `nodes` pretend nodes, each printing "n RANK
 * VMEP_NODES VMEP_LOCAL_RANK"; they must all succeed. */
static void run_nodes(const char *ranks, const char *nodes) {
  const char *const args[] = {
      "-n",      ranks,
      "--nodes", nodes,
      "--",      "sh",
      "-c",      "echo \"n $VMEP_RANK $VMEP_NODES $VMEP_LOCAL_RANK\"",
      NULL};
  run(args, NULL, 0, 0);
  ASSERT_EQ(res.status, 0);
  ASSERT_EQ(count_lines(res.out, res.out_len), atoi(ranks));
}

/* --nodes K: every rank gets VMEP_NODES=K and its rank within its
 * pretend node r * K / N as VMEP_LOCAL_RANK; the refusals name the rule. */
static void test_nodes(void) {
  static const int local[5] = {0, 1, 2, 0, 1}; /* nodes 0 0 0 1 1 */
  run_nodes("5", "2");
  for (int r = 0; r < 5; r++) {
    char line[64];
    snprintf(line, sizeof(line), "[rank %d] n %d 2 %d\n", r, r, local[r]);
    ASSERT_STR_CONTAINS(res.out, line);
  }
  /* One node per rank, and one node for all. */
  run_nodes("3", "3");
  ASSERT_STR_CONTAINS(res.out, "[rank 2] n 2 3 0\n");
  run_nodes("2", "1");
  ASSERT_STR_CONTAINS(res.out, "[rank 1] n 1 1 1\n");
  static const char *const too_many[] = {"--nodes", "3",    "-n", "2",
                                         "--",      "true", NULL};
  run(too_many, NULL, 0, 0);
  ASSERT_EQ(res.status, 2);
  ASSERT_EQ(strcmp(res.err, "vmep-run: --nodes 3: expected a node count in "
                            "1..2 (the ranks of -n)\n"),
            0);
  static const char *const zero[] = {"--nodes", "0",    "-n", "2",
                                     "--",      "true", NULL};
  run(zero, NULL, 0, 0);
  ASSERT_EQ(res.status, 2);
  ASSERT_STR_CONTAINS(res.err, "--nodes needs a node count");
  ASSERT_EQ(count_lines(res.err, res.err_len), 1);
  static const char *const help[] = {"--help", NULL};
  run(help, NULL, 0, 0);
  ASSERT_STR_CONTAINS(res.out, "rank r is in node r * K / N");
}

static void test_usage(void) {
  static const char *const bad[][8] = {
      {NULL},
      {"-n", "0", "--", "true", NULL},
      {"-n", "abc", "--", "true", NULL},
      {"-n", "2", NULL},
      {"-n", "2", "--", NULL},
      {"--mps", "maybe", "-n", "1", "--", "true", NULL},
      {"--gpus", "0,x", "-n", "1", "--", "true", NULL},
      {"--gpus", "0,", "-n", "1", "--", "true", NULL},
      {"--timeout", "-1", "-n", "1", "--", "true", NULL},
      {"--bogus", "-n", "1", "--", "true", NULL},
      {"-n", NULL},
      {"--nodes", "0", "-n", "2", "--", "true", NULL},
      {"--nodes", "two", "-n", "2", "--", "true", NULL},
      {"--nodes", "-1", "-n", "2", "--", "true", NULL},
      {"--nodes", "3", "-n", "2", "--", "true", NULL},
      {"-n", "2", "--nodes=", "--", "true", NULL},
      {"-n", "2", "--nodes", NULL},
  };
  for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
    run(bad[i], NULL, 0, 0);
    ASSERT_EQ(res.status, 2);
    ASSERT_STR_CONTAINS(res.err, "vmep-run: ");
  }
  static const char *const help[] = {"--help", NULL};
  run(help, NULL, 0, 0);
  ASSERT_EQ(res.status, 0);
  ASSERT_STR_CONTAINS(res.out, "usage: vmep-run -n N");
  static const char *const forms[] = {"-n=1", "--mps=off", "--timeout=30",
                                      "echo", "hi",        NULL};
  run(forms, NULL, 0, 0);
  ASSERT_EQ(res.status, 0);
  ASSERT_EQ(strcmp(res.out, "[rank 0] hi\n"), 0);
}

/* A fake nvidia-cuda-mps-control: appends its arguments, the two MPS
 * directories and its stdin to the record; fails when FAKE_MPS_FAIL is
 * set. */
static void make_fake_control(void) {
  char path[128];
  snprintf(fake_dir, sizeof(fake_dir), "/tmp/vmep-run-test-XXXXXX");
  ASSERT_TRUE(mkdtemp(fake_dir) != NULL);
  snprintf(empty_dir, sizeof(empty_dir), "%s/empty", fake_dir);
  ASSERT_EQ(mkdir(empty_dir, 0700), 0);
  snprintf(record, sizeof(record), "%s/record", fake_dir);
  snprintf(path, sizeof(path), "%s/nvidia-cuda-mps-control", fake_dir);
  FILE *f = fopen(path, "w");
  ASSERT_TRUE(f != NULL);
  fprintf(f,
          "#!/bin/sh\n"
          "input=$(cat)\n"
          "echo \"args=[$*] pipe=$CUDA_MPS_PIPE_DIRECTORY "
          "log=$CUDA_MPS_LOG_DIRECTORY input=[$input]\" >> %s\n"
          "if [ -n \"$FAKE_MPS_FAIL\" ]; then echo 'no GPU here' >&2; "
          "exit 1; fi\n",
          record);
  ASSERT_EQ(fclose(f), 0);
  ASSERT_EQ(chmod(path, 0755), 0);
}

/* The record so far, which is then removed. */
static void read_record(char *buf, size_t size) {
  FILE *f = fopen(record, "r");
  size_t n = 0;
  if (f) {
    n = fread(buf, 1, size - 1, f);
    fclose(f);
    ASSERT_EQ(unlink(record), 0);
  }
  buf[n] = '\0';
}

/* --gpus and --mps on need a GPU: without one (or with too few) they are
 * refused with a line that says so, before any rank starts. */
static void test_no_gpu(void) {
  static const char *const gpus[] = {"--gpus", "0,1",  "-n", "2",
                                     "--",     "true", NULL};
  static const char *const mps_on[] = {"--mps", "on",   "-n", "2",
                                       "--",    "true", NULL};
  int devices = 0;
  if (vmep_device_count(&devices) == VMEP_OK && devices >= 2)
    return; /* a machine with GPUs: nothing to refuse */
  run(gpus, NULL, 0, 0);
  ASSERT_TRUE(res.status != 0);
  ASSERT_STR_CONTAINS(res.err, devices > 0 ? "only" : "no GPU");
  ASSERT_STR_CONTAINS(res.err, "--gpus");
  if (devices > 0)
    return;
  run(mps_on, NULL, 0, 0);
  ASSERT_TRUE(res.status != 0);
  ASSERT_STR_CONTAINS(res.err, "--mps on: no GPU");
}

/* The daemon's life cycle through the fake, and a rank killed under it. */
static void test_mps_lifecycle(void) {
  char path[160], rec[4096], pipe_dir[256], start_line[512];
  snprintf(path, sizeof(path), "%s:/usr/bin:/bin", fake_dir);

  /* Two ranks on GPU 0: the daemon starts before them, they get its pipe
   * directory, it is told to quit after them, and its directory goes. */
  static const char *const shared[] = {
      "--gpus", "0",  "-n", "2",
      "--",     "sh", "-c", "echo \"pipe $CUDA_MPS_PIPE_DIRECTORY\"",
      NULL};
  run(shared, path, 0, 0);
  ASSERT_EQ(res.status, 0);
  read_record(rec, sizeof(rec));
  ASSERT_EQ(count_lines(rec, strlen(rec)), 2);
  ASSERT_EQ(sscanf(rec, "args=[-d] pipe=%255s", pipe_dir), 1);
  ASSERT_TRUE(strstr(rec, "input=[]\n") != NULL);
  snprintf(start_line, sizeof(start_line), "[rank 1] pipe %s\n", pipe_dir);
  ASSERT_STR_CONTAINS(res.out, start_line);
  snprintf(start_line, sizeof(start_line), "args=[] pipe=%s ", pipe_dir);
  ASSERT_STR_CONTAINS(strchr(rec, '\n') + 1, start_line);
  ASSERT_STR_CONTAINS(rec, "input=[quit]");
  ASSERT_TRUE(access(pipe_dir, F_OK) != 0);
  *strrchr(pipe_dir, '/') = '\0';
  ASSERT_TRUE(access(pipe_dir, F_OK) != 0); /* the temporary directory */

  /* A rank killed under MPS: said plainly, and the daemon still stops. */
  static const char *const killed[] = {
      "--gpus", "0",
      "-n",     "2",
      "--",     "sh",
      "-c",     "if [ $VMEP_RANK = 1 ]; then kill -KILL $$; fi; sleep 100",
      NULL};
  run(killed, path, 0, 0);
  ASSERT_EQ(res.status, 128 + SIGKILL);
  ASSERT_STR_CONTAINS(res.err, "MPS server");
  ASSERT_STR_CONTAINS(res.err, "ranks 0, 1 on GPU 0) is lost");
  read_record(rec, sizeof(rec));
  ASSERT_STR_CONTAINS(rec, "input=[quit]");
}

/* No daemon when no GPU is shared or with --mps off; a daemon that is not
 * installed or does not start: an error with --mps on, a warning with
 * auto. */
static void test_mps_absent(void) {
  char path[160], rec[4096];
  snprintf(path, sizeof(path), "%s:/usr/bin:/bin", fake_dir);
  static const char *const apart[] = {"--gpus", "0,1",  "-n", "2",
                                      "--",     "true", NULL};
  static const char *const off[] = {"--mps", "off", "--gpus", "0", "-n",
                                    "2",     "--",  "true",   NULL};
  run(apart, path, 0, 0);
  ASSERT_EQ(res.status, 0);
  run(off, path, 0, 0);
  ASSERT_EQ(res.status, 0);
  read_record(rec, sizeof(rec));
  ASSERT_EQ(strcmp(rec, ""), 0);

  /* Not installed: --mps on fails, auto warns and runs. */
  static const char *const on[] = {"--mps", "on",   "--gpus", "0",
                                   "-n",    "2",    "--",     "/bin/sh",
                                   "-c",    "true", NULL};
  run(on, empty_dir, 0, 0);
  ASSERT_EQ(res.status, 1);
  ASSERT_STR_CONTAINS(res.err, "nvidia-cuda-mps-control is not in PATH");
  run(on + 2, empty_dir, 0, 0);
  ASSERT_EQ(res.status, 0);
  ASSERT_STR_CONTAINS(res.err, "warning");

  /* The daemon does not start: on fails showing its output; auto warns. */
  ASSERT_EQ(setenv("FAKE_MPS_FAIL", "1", 1), 0);
  run(on, path, 0, 0);
  ASSERT_EQ(res.status, 1);
  ASSERT_STR_CONTAINS(res.err, "no GPU here");
  run(on + 2, path, 0, 0);
  ASSERT_EQ(res.status, 0);
  ASSERT_STR_CONTAINS(res.err, "running without MPS");
  ASSERT_EQ(unsetenv("FAKE_MPS_FAIL"), 0);
  read_record(rec, sizeof(rec));
}

int main(int argc, char **argv) {
  if (argc != 2)
    TEST_FAIL("usage: test_vmep_run PATH_TO_VMEP_RUN");
  launcher = argv[1];
  /* The inputs are fixed; the seed is printed for the harness's sake. */
  test_seed("test_vmep_run");
  make_fake_control();
  test_usage();
  test_nodes();
  /* Without a GPU, --gpus and --mps on are refused (test_no_gpu); the
   * tests that name devices run against 4 that vmep-run is told exist. */
  test_no_gpu();
  int devices = 0;
  int fake = vmep_device_count(&devices) != VMEP_OK || devices < 4;
  if (fake)
    ASSERT_EQ(setenv("VMEP_RUN_FAKE_DEVICES", "4", 1), 0);
  test_environment();
  ASSERT_EQ(unsetenv("VMEP_RUN_FAKE_DEVICES"), 0);
  test_default_devices();
  test_whole_lines();
  test_failure();
  test_timeout_and_signals();
  if (fake)
    ASSERT_EQ(setenv("VMEP_RUN_FAKE_DEVICES", "4", 1), 0);
  test_mps_lifecycle();
  test_mps_absent();
  char cleanup[160];
  snprintf(cleanup, sizeof(cleanup), "rm -rf %s", fake_dir);
  ASSERT_EQ(system(cleanup), 0);
  printf("test_vmep_run: ok\n");
  return 0;
}
