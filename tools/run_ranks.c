/*
 * vmep-run's ranks: starting them and supervising them. Each rank leads its
 * own process group, so that stopping a rank also stops what it started
 * (a shell's children), and reads stdin from /dev/null. Its stdout and
 * stderr come through pipes and are printed a whole line at a time with a
 * "[rank i] " prefix, so lines of different ranks never mix. The first
 * failure, the timeout or a SIGINT/SIGTERM/SIGHUP stops every rank: the
 * signal (SIGTERM for a failure or timeout), then SIGKILL after a grace.
 */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/signalfd.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "vmep_run.h"

#define LINE_BYTES 16384 /* longer lines are printed in pieces */
#define GRACE_MS 3000    /* from SIGTERM to SIGKILL */
#define DRAIN_MS 1000    /* output still open after every rank exited */

/* The supervisor's state beyond the job. */
struct supervisor {
  struct run_job *job;
  int live;           /* ranks not reaped yet */
  int exit_status;    /* -1 until the first cause decides it */
  int64_t deadline;   /* --timeout, or -1 */
  int64_t kill_at;    /* SIGKILL everything then, or -1 */
  int64_t drain_from; /* when the last rank was reaped, or -1 */
};

static int64_t now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* ---- starting --------------------------------------------------------- */

static void close_fd(int *fd) {
  if (*fd >= 0)
    close(*fd);
  *fd = -1;
}

/* In the child: becomes the rank, or sends errno on `report` and exits. */
static void exec_rank(const struct run_job *job, pid_t launcher, int out,
                      int err, int null_fd, int report, char *const *argv,
                      char **env) {
  setpgid(0, 0);
  /* If vmep-run dies (even by SIGKILL), its ranks die with it. */
  prctl(PR_SET_PDEATHSIG, SIGKILL);
  if (getppid() != launcher)
    _exit(127);
  sigprocmask(SIG_SETMASK, &job->parent_mask, NULL);
  signal(SIGPIPE, SIG_DFL);
  if (dup2(null_fd, STDIN_FILENO) >= 0 && dup2(out, STDOUT_FILENO) >= 0 &&
      dup2(err, STDERR_FILENO) >= 0)
    execvpe(argv[0], argv, env);
  int code = errno;
  if (write(report, &code, sizeof(code)) != sizeof(code))
    _exit(126);
  _exit(127);
}

/* Forks rank `r`. Its exec status comes back through a close-on-exec
 * pipe: EOF means exec succeeded, an errno means it failed (then the rank
 * exits 127 and the supervisor sees a failed rank). */
static int start_rank(struct run_job *job, int r, int null_fd,
                      char *const *argv, char **env) {
  struct run_rank *rank = &job->ranks[r];
  int out[2] = {-1, -1}, err[2] = {-1, -1}, report[2] = {-1, -1};
  pid_t pid = -1, launcher = getpid();
  rank->out_line = malloc(LINE_BYTES);
  rank->err_line = malloc(LINE_BYTES);
  if (rank->out_line && rank->err_line && pipe2(out, O_CLOEXEC) == 0 &&
      pipe2(err, O_CLOEXEC) == 0 && pipe2(report, O_CLOEXEC) == 0)
    pid = fork();
  if (pid == 0)
    exec_rank(job, launcher, out[1], err[1], null_fd, report[1], argv, env);
  int saved = errno;
  close_fd(&out[1]);
  close_fd(&err[1]);
  close_fd(&report[1]);
  if (pid < 0) {
    fprintf(stderr, "vmep-run: cannot start rank %d: %s\n", r, strerror(saved));
    close_fd(&out[0]);
    close_fd(&err[0]);
    close_fd(&report[0]);
    return -1;
  }
  setpgid(pid, pid); /* also here, so that no kill can miss the group */
  rank->pid = pid;
  rank->out_fd = out[0];
  rank->err_fd = err[0];
  int code = 0;
  ssize_t n;
  while ((n = read(report[0], &code, sizeof(code))) < 0 && errno == EINTR)
    ;
  close_fd(&report[0]);
  if (n == sizeof(code))
    fprintf(stderr, "vmep-run: rank %d: cannot execute %s: %s\n", r, argv[0],
            strerror(code));
  return 0;
}

int run_ranks_start(struct run_job *job, char *const *argv,
                    char **const *envs) {
  int null_fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
  if (null_fd < 0) {
    fprintf(stderr, "vmep-run: /dev/null: %s\n", strerror(errno));
    return -1;
  }
  for (int r = 0; r < job->count; r++)
    job->ranks[r].out_fd = job->ranks[r].err_fd = -1;
  int started = 0;
  while (started < job->count &&
         start_rank(job, started, null_fd, argv, envs[started]) == 0)
    started++;
  close(null_fd);
  if (started == job->count)
    return 0;
  /* Undo: the ranks already started, and every buffer. */
  for (int r = 0; r < job->count; r++) {
    if (r < started) {
      kill(-job->ranks[r].pid, SIGKILL);
      waitpid(job->ranks[r].pid, NULL, 0);
    }
    close_fd(&job->ranks[r].out_fd);
    close_fd(&job->ranks[r].err_fd);
    free(job->ranks[r].out_line);
    free(job->ranks[r].err_line);
  }
  return -1;
}

/* ---- output ----------------------------------------------------------- */

/* Writes everything; output errors (a closed stdout) are ignored, so that
 * supervision goes on. */
static void write_all(int fd, const char *buf, size_t len) {
  while (len > 0) {
    ssize_t n = write(fd, buf, len);
    if (n < 0 && errno == EINTR)
      continue;
    if (n <= 0)
      return;
    buf += n;
    len -= (size_t)n;
  }
}

/* One line of rank r, prefixed, with one write. */
static void print_line(int dest, int r, const char *line, size_t len) {
  char out[32 + LINE_BYTES + 1];
  int prefix = snprintf(out, 32, "[rank %d] ", r);
  memcpy(out + prefix, line, len);
  out[(size_t)prefix + len] = '\n';
  write_all(dest, out, (size_t)prefix + len + 1);
}

/* Reads what one of rank r's pipes holds and prints its complete lines;
 * at EOF prints the unfinished line and closes the pipe. */
static void drain_pipe(int r, int *fd, char *line, size_t *used, int dest) {
  ssize_t n = read(*fd, line + *used, LINE_BYTES - *used);
  if (n < 0 && (errno == EINTR || errno == EAGAIN))
    return;
  if (n <= 0) {
    if (*used)
      print_line(dest, r, line, *used);
    *used = 0;
    close_fd(fd);
    return;
  }
  size_t start = 0, end = *used + (size_t)n;
  for (size_t i = *used; i < end; i++)
    if (line[i] == '\n') {
      print_line(dest, r, line + start, i - start);
      start = i + 1;
    }
  memmove(line, line + start, end - start);
  *used = end - start;
  if (*used == LINE_BYTES) { /* too long for one piece */
    print_line(dest, r, line, *used);
    *used = 0;
  }
}

/* Prints what rank r has already written, without waiting for more: its
 * last words come before vmep-run's report of its end. */
static void flush_rank(struct run_rank *rank, int r) {
  for (int more = 1; more;) {
    struct pollfd p[2] = {{.fd = rank->out_fd, .events = POLLIN},
                          {.fd = rank->err_fd, .events = POLLIN}};
    more = poll(p, 2, 0) > 0;
    if (more && p[0].revents)
      drain_pipe(r, &rank->out_fd, rank->out_line, &rank->out_used,
                 STDOUT_FILENO);
    if (more && p[1].revents)
      drain_pipe(r, &rank->err_fd, rank->err_line, &rank->err_used,
                 STDERR_FILENO);
  }
}

/* ---- stopping --------------------------------------------------------- */

/* Sends `sig` to every rank's process group, reaped leaders included:
 * what they started may still run. */
static void signal_all(const struct supervisor *s, int sig) {
  for (int r = 0; r < s->job->count; r++)
    kill(-s->job->ranks[r].pid, sig);
}

static void stop_all(struct supervisor *s, int sig) {
  signal_all(s, sig);
  if (s->kill_at < 0)
    s->kill_at = now_ms() + GRACE_MS;
}

/* Under MPS a kill during a kernel takes the MPS server down, and with it
 * every rank that shares it. */
static void report_mps_loss(const struct supervisor *s, int r) {
  int device = s->job->ranks[r].device;
  char list[256] = "";
  for (int i = 0; i < s->job->count; i++)
    if (s->job->ranks[i].device == device && strlen(list) < 200)
      snprintf(list + strlen(list), sizeof(list) - strlen(list), "%s%d",
               list[0] ? ", " : "", i);
  fprintf(stderr,
          "vmep-run: rank %d shared GPU %d through the MPS server: a rank "
          "killed during a kernel takes the MPS server down, so every rank "
          "sharing it (ranks %s on GPU %d) is lost\n",
          r, device, list, device);
}

/* The first failure decides vmep-run's status and stops the others. */
static void report_failure(struct supervisor *s, int r, int wstatus) {
  if (WIFEXITED(wstatus)) {
    s->exit_status = WEXITSTATUS(wstatus);
    fprintf(stderr,
            "vmep-run: rank %d exited with status %d; stopping the other "
            "ranks\n",
            r, s->exit_status);
  } else {
    int sig = WTERMSIG(wstatus);
    s->exit_status = RUN_EXIT_SIGNAL + sig;
    fprintf(stderr,
            "vmep-run: rank %d was killed by signal %d (%s); stopping the "
            "other ranks\n",
            r, sig, strsignal(sig));
    if (s->job->mps_on && s->job->ranks[r].device >= 0)
      report_mps_loss(s, r);
  }
  stop_all(s, SIGTERM);
}

/* Longest wait between two reaps (see run_ranks_supervise). */
#define REAP_MS 200

static void reap(struct supervisor *s) {
  int wstatus = 0;
  pid_t pid;
  while ((pid = waitpid(-1, &wstatus, WNOHANG)) > 0) {
    for (int r = 0; r < s->job->count; r++) {
      if (s->job->ranks[r].pid != pid)
        continue;
      s->job->ranks[r].reaped = 1;
      s->live--;
      int failed = !WIFEXITED(wstatus) || WEXITSTATUS(wstatus) != 0;
      if (failed && s->exit_status < 0) {
        flush_rank(&s->job->ranks[r], r);
        report_failure(s, r, wstatus);
      }
    }
  }
}

/* ---- the loop --------------------------------------------------------- */

static void on_signal(struct supervisor *s, int sig) {
  if (sig == SIGCHLD) {
    reap(s);
  } else if (s->exit_status < 0) {
    s->exit_status = RUN_EXIT_SIGNAL + sig;
    fprintf(stderr, "vmep-run: got %s: passing it to every rank\n",
            strsignal(sig));
    stop_all(s, sig);
  } else if (sig == SIGINT || sig == SIGTERM) {
    fprintf(stderr, "vmep-run: got %s again: killing every rank\n",
            strsignal(sig));
    signal_all(s, SIGKILL);
  }
}

/* Handles every pending signal (the signalfd is non-blocking). */
static void read_signals(struct supervisor *s, int signal_fd) {
  struct signalfd_siginfo info;
  while (read(signal_fd, &info, sizeof(info)) == sizeof(info))
    on_signal(s, (int)info.ssi_signo);
}

static void check_timers(struct supervisor *s) {
  int64_t now = now_ms();
  if (s->deadline >= 0 && now >= s->deadline) {
    s->deadline = -1;
    if (s->exit_status < 0) {
      s->exit_status = RUN_EXIT_TIMEOUT;
      fprintf(stderr,
              "vmep-run: timeout: ranks still running after %d s; "
              "stopping all of them\n",
              s->job->timeout_s);
      stop_all(s, SIGTERM);
    }
  }
  if (s->kill_at >= 0 && now >= s->kill_at) {
    s->kill_at = -1;
    if (s->live > 0)
      fprintf(stderr,
              "vmep-run: %d rank(s) still running %d ms after being "
              "told to stop: SIGKILL\n",
              s->live, GRACE_MS);
    signal_all(s, SIGKILL);
  }
}

/* Milliseconds until the next timer, -1 when there is none. */
static int next_wakeup(const struct supervisor *s) {
  int64_t next = -1, now = now_ms();
  const int64_t timers[3] = {s->deadline, s->kill_at,
                             s->drain_from >= 0 ? s->drain_from + DRAIN_MS
                                                : -1};
  for (int i = 0; i < 3; i++)
    if (timers[i] >= 0 && (next < 0 || timers[i] < next))
      next = timers[i];
  if (next < 0)
    return -1;
  return next <= now ? 0 : (int)(next - now);
}

/* Puts every rank's pipes into fds[1..] (closed ones as -1, which poll
 * skips); nonzero while any is open. */
static int fill_pollfds(const struct run_job *job, struct pollfd *fds) {
  int open = 0;
  for (int r = 0; r < job->count; r++) {
    fds[1 + 2 * r] =
        (struct pollfd){.fd = job->ranks[r].out_fd, .events = POLLIN};
    fds[2 + 2 * r] =
        (struct pollfd){.fd = job->ranks[r].err_fd, .events = POLLIN};
    open |= job->ranks[r].out_fd >= 0 || job->ranks[r].err_fd >= 0;
  }
  return open;
}

/* After the loop: prints unfinished lines, closes the pipes, kills what
 * the ranks left behind, and reaps any rank still there. */
static void finish(struct supervisor *s) {
  for (int r = 0; r < s->job->count; r++) {
    struct run_rank *rank = &s->job->ranks[r];
    if (rank->out_used)
      print_line(STDOUT_FILENO, r, rank->out_line, rank->out_used);
    if (rank->err_used)
      print_line(STDERR_FILENO, r, rank->err_line, rank->err_used);
    close_fd(&rank->out_fd);
    close_fd(&rank->err_fd);
    free(rank->out_line);
    free(rank->err_line);
  }
  signal_all(s, SIGKILL);
  for (int r = 0; r < s->job->count; r++)
    if (!s->job->ranks[r].reaped)
      waitpid(s->job->ranks[r].pid, NULL, 0);
}

int run_ranks_supervise(struct run_job *job, int signal_fd) {
  struct supervisor s = {job, job->count, -1, -1, -1, -1};
  struct pollfd *fds = calloc(1 + 2 * (size_t)job->count, sizeof(*fds));
  if (job->timeout_s > 0)
    s.deadline = now_ms() + (int64_t)job->timeout_s * 1000;
  if (!fds) {
    fprintf(stderr, "vmep-run: out of memory: stopping all ranks\n");
    s.exit_status = RUN_EXIT_SETUP;
  }
  while (fds) {
    int open = fill_pollfds(job, fds);
    if (s.live == 0 && !open)
      break;
    if (s.live == 0 && s.drain_from < 0)
      s.drain_from = now_ms();
    if (s.drain_from >= 0 && now_ms() - s.drain_from >= DRAIN_MS)
      break; /* something the ranks started still holds their output */
    fds[0] = (struct pollfd){.fd = signal_fd, .events = POLLIN};
    /* Reaping also on a short timeout, in case a SIGCHLD went to a thread
     * of a library we loaded instead of our signalfd. */
    int wake = next_wakeup(&s);
    int n = poll(fds, 1 + 2 * (nfds_t)job->count,
                 wake < 0 || wake > REAP_MS ? REAP_MS : wake);
    if (n == 0)
      reap(&s);
    if (n < 0 && errno != EINTR) {
      fprintf(stderr, "vmep-run: poll: %s: stopping all ranks\n",
              strerror(errno));
      s.exit_status = RUN_EXIT_SETUP;
      break;
    }
    if (n > 0 && fds[0].revents)
      read_signals(&s, signal_fd);
    for (int r = 0; n > 0 && r < job->count; r++) {
      struct run_rank *rank = &job->ranks[r];
      if (fds[1 + 2 * r].revents && rank->out_fd >= 0)
        drain_pipe(r, &rank->out_fd, rank->out_line, &rank->out_used,
                   STDOUT_FILENO);
      if (fds[2 + 2 * r].revents && rank->err_fd >= 0)
        drain_pipe(r, &rank->err_fd, rank->err_line, &rank->err_used,
                   STDERR_FILENO);
    }
    check_timers(&s);
  }
  free(fds);
  finish(&s);
  return s.exit_status < 0 ? 0 : s.exit_status;
}
