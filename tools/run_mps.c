/*
 * vmep-run's private MPS daemon. Ranks that share a GPU without MPS are
 * time-sliced (a cross-process flag round trip took 4.5 ms on an H100,
 * 1 us under MPS), so vmep-run starts its own daemon for the run, with pipe
 * and log directories in a fresh temporary directory so that it never
 * meets another job's daemon, and stops it and removes the directory after.
 */
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "vmep_run.h"

#define CONTROL "nvidia-cuda-mps-control"

int run_mps_find(struct run_mps *mps) {
  const char *path = getenv("PATH");
  if (!path || !path[0])
    path = "/usr/bin:/bin";
  while (*path) {
    size_t n = strcspn(path, ":");
    /* An empty PATH entry means the current directory. */
    int len = snprintf(mps->control, sizeof(mps->control), "%.*s/%s",
                       n ? (int)n : 1, n ? path : ".", CONTROL);
    if (len > 0 && (size_t)len < sizeof(mps->control) &&
        access(mps->control, X_OK) == 0)
      return 0;
    path += n + (path[n] == ':');
  }
  mps->control[0] = '\0';
  return -1;
}

/* Copies the control program's log to stderr, to show why it failed. */
static void show_control_log(const char *log_path) {
  char buf[4096];
  int fd = open(log_path, O_RDONLY | O_CLOEXEC);
  ssize_t n;
  if (fd < 0)
    return;
  while ((n = read(fd, buf, sizeof(buf))) > 0)
    if (write(STDERR_FILENO, buf, (size_t)n) != n)
      break;
  close(fd);
}

/* Runs `control [arg]` with the MPS variables, in its own process group
 * (so a Ctrl-C meant for the ranks does not reach the daemon), `input` on
 * its stdin and its output appended to the directory's control.log.
 * Returns its exit status, or -1 when it could not run or was killed. */
static int run_control(const struct run_mps *mps, const char *arg,
                       const char *input, const char *log_path) {
  char *set[2] = {(char *)mps->pipe_env, (char *)mps->log_env};
  char *const argv[] = {CONTROL, (char *)arg, NULL};
  int in[2] = {-1, -1}, status = -1;
  char **env = run_env_build(set, 2);
  int log = open(log_path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600);
  pid_t pid = -1;
  if (env && log >= 0 && pipe2(in, O_CLOEXEC) == 0)
    pid = fork();
  if (pid == 0) {
    sigset_t none;
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, NULL);
    signal(SIGPIPE, SIG_DFL);
    setpgid(0, 0);
    if (dup2(in[0], STDIN_FILENO) >= 0 && dup2(log, STDOUT_FILENO) >= 0 &&
        dup2(log, STDERR_FILENO) >= 0)
      execve(mps->control, argv, env);
    _exit(127);
  }
  if (pid > 0) {
    if (in[0] >= 0)
      close(in[0]);
    in[0] = -1;
    size_t len = input ? strlen(input) : 0;
    if (len && write(in[1], input, len) != (ssize_t)len)
      fprintf(stderr, "vmep-run: writing to %s: %s\n", CONTROL,
              strerror(errno));
    close(in[1]);
    in[1] = -1;
    int wstatus = 0;
    while (waitpid(pid, &wstatus, 0) < 0 && errno == EINTR)
      ;
    status = WIFEXITED(wstatus) ? WEXITSTATUS(wstatus) : -1;
  } else {
    fprintf(stderr, "vmep-run: cannot run %s: %s\n", mps->control,
            strerror(errno));
  }
  for (int i = 0; i < 2; i++)
    if (in[i] >= 0)
      close(in[i]);
  if (log >= 0)
    close(log);
  free(env);
  return status;
}

static int remove_entry(const char *path, const struct stat *st, int flag,
                        struct FTW *ftw) {
  (void)st;
  (void)flag;
  (void)ftw;
  remove(path);
  return 0;
}

/* Removes the directory; the daemon may still write a last log line as it
 * exits, so a few attempts. */
static void remove_tree(const char *dir) {
  for (int attempt = 0; attempt < 20; attempt++) {
    nftw(dir, remove_entry, 16, FTW_DEPTH | FTW_PHYS);
    if (access(dir, F_OK) != 0)
      return;
    usleep(100000);
  }
  fprintf(stderr, "vmep-run: warning: could not remove %s\n", dir);
}

/* The file that collects the control program's output. */
static void control_log_path(const struct run_mps *mps,
                             char path[RUN_MPS_PATH_BYTES]) {
  snprintf(path, RUN_MPS_PATH_BYTES, "%s/control.log", mps->dir);
}

int run_mps_start(struct run_mps *mps) {
  const char *tmp = getenv("TMPDIR");
  char pipe_dir[RUN_MPS_PATH_BYTES], log_dir[RUN_MPS_PATH_BYTES];
  char log_path[RUN_MPS_PATH_BYTES];
  if (!tmp || !tmp[0])
    tmp = "/tmp";
  int n = snprintf(mps->dir, sizeof(mps->dir), "%s/vmep-mps-XXXXXX", tmp);
  if (n < 0 || (size_t)n >= sizeof(mps->dir)) {
    fprintf(stderr, "vmep-run: TMPDIR %s is too long for the MPS directory\n",
            tmp);
    return -1;
  }
  if (!mkdtemp(mps->dir)) {
    fprintf(stderr, "vmep-run: mkdtemp(%s): %s\n", mps->dir, strerror(errno));
    return -1;
  }
  snprintf(pipe_dir, sizeof(pipe_dir), "%s/pipe", mps->dir);
  snprintf(log_dir, sizeof(log_dir), "%s/log", mps->dir);
  control_log_path(mps, log_path);
  snprintf(mps->pipe_env, sizeof(mps->pipe_env), "CUDA_MPS_PIPE_DIRECTORY=%s",
           pipe_dir);
  snprintf(mps->log_env, sizeof(mps->log_env), "CUDA_MPS_LOG_DIRECTORY=%s",
           log_dir);
  if (mkdir(pipe_dir, 0700) != 0 || mkdir(log_dir, 0700) != 0) {
    fprintf(stderr, "vmep-run: mkdir in %s: %s\n", mps->dir, strerror(errno));
    remove_tree(mps->dir);
    return -1;
  }
  int status = run_control(mps, "-d", NULL, log_path);
  if (status != 0) {
    fprintf(stderr, "vmep-run: %s -d failed (status %d); its output:\n",
            mps->control, status);
    show_control_log(log_path);
    remove_tree(mps->dir);
    return -1;
  }
  mps->started = 1;
  fprintf(stderr,
          "vmep-run: ranks share a GPU: started a private MPS daemon (pipes "
          "in %s)\n",
          pipe_dir);
  return 0;
}

void run_mps_stop(struct run_mps *mps) {
  char log_path[RUN_MPS_PATH_BYTES];
  if (!mps->started)
    return;
  control_log_path(mps, log_path);
  int status = run_control(mps, NULL, "quit\n", log_path);
  if (status != 0) {
    fprintf(stderr,
            "vmep-run: warning: telling the MPS daemon to quit failed "
            "(status %d); its output:\n",
            status);
    show_control_log(log_path);
  }
  remove_tree(mps->dir);
  mps->started = 0;
}
