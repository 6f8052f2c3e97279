/*
 * The configuration rules (src/core/config.c): every variable's value is
 * checked against its row's rule, and a bad one is refused naming the
 * variable, the value and what is allowed, through vmep_config_check and
 * the internal parsers alike. And how errors reach stderr: vmep__fail
 * returns them silently unless VMEP_LOG asks (info, debug); a bad VMEP_LOG
 * is said once, by the logger or by whoever was returned the error.
 */
#include <fcntl.h>
#include <unistd.h>

#include "core/core.h"
#include "test.h"

static char captured[4096];

/* Runs fn() with stderr going to a temporary file; its text in captured. */
static void capture_stderr(void (*fn)(void)) {
  char path[] = "/tmp/vmep_test_config_XXXXXX";
  int fd = mkstemp(path), saved = dup(STDERR_FILENO);
  ASSERT_TRUE(fd >= 0 && saved >= 0);
  ASSERT_EQ(unlink(path), 0);
  fflush(stderr);
  ASSERT_TRUE(dup2(fd, STDERR_FILENO) >= 0);
  fn();
  fflush(stderr);
  ASSERT_TRUE(dup2(saved, STDERR_FILENO) >= 0);
  close(saved);
  ssize_t n = pread(fd, captured, sizeof(captured) - 1, 0);
  captured[n > 0 ? n : 0] = '\0';
  close(fd);
}

static int count_lines(const char *text) {
  int n = 0;
  for (; *text; text++)
    n += *text == '\n';
  return n;
}

/* Sets `name` to `value` (NULL unsets) and checks its row. */
static vmep_status check_value(enum vmep_config_id id, const char *value) {
  if (value)
    ASSERT_EQ(setenv(vmep__config_name(id), value, 1), 0);
  else
    ASSERT_EQ(unsetenv(vmep__config_name(id)), 0);
  return vmep_config_check((int)id, NULL);
}

static void expect_refused(enum vmep_config_id id, const char *value,
                           const char *allowed) {
  char want[256];
  vmep__set_last_error("");
  ASSERT_EQ(check_value(id, value), VMEP_ERR_INVALID_ARG);
  snprintf(want, sizeof(want), "%s=\"%s\": expected %s", vmep__config_name(id),
           value, allowed);
  ASSERT_STR_EQ(vmep_last_error(), want);
}

static void test_rules(void) {
  const char *allowed = NULL;
  ASSERT_OK(vmep_config_check(VMEP_CONFIG_TIMEOUT_MS, &allowed));
  ASSERT_STR_EQ(allowed, "an integer in 1..2147483647");
  ASSERT_OK(vmep_config_check(VMEP_CONFIG_MEM_SHARE, &allowed));
  ASSERT_STR_EQ(allowed, "one of auto|fabric|posix_fd|legacy");
  ASSERT_OK(vmep_config_check(VMEP_CONFIG_JOB_TOKEN, &allowed));
  ASSERT_STR_EQ(allowed, "any text");
  ASSERT_EQ(vmep_config_check(-1, NULL), VMEP_ERR_INVALID_ARG);
  ASSERT_EQ(vmep_config_check(vmep_config_count(), NULL), VMEP_ERR_INVALID_ARG);

  static const char *const bad_ms[] = {
      "-1", "0",  "abc", "2147483648", "5x",
      " 5", "+5", "1e3", "--1",        "99999999999999999999"};
  for (size_t i = 0; i < VMEP_ARRAY_SIZE(bad_ms); i++)
    expect_refused(VMEP_CONFIG_TIMEOUT_MS, bad_ms[i],
                   "an integer in 1..2147483647");
  ASSERT_OK(check_value(VMEP_CONFIG_TIMEOUT_MS, "1"));
  ASSERT_OK(check_value(VMEP_CONFIG_TIMEOUT_MS, "2147483647"));
  ASSERT_OK(check_value(VMEP_CONFIG_TIMEOUT_MS, NULL)); /* the default */

  expect_refused(VMEP_CONFIG_MEM_SHARE, "nonsense",
                 "one of auto|fabric|posix_fd|legacy");
  expect_refused(VMEP_CONFIG_MEM_SHARE, "posix", /* a prefix of a word */
                 "one of auto|fabric|posix_fd|legacy");
  expect_refused(VMEP_CONFIG_MEM_SHARE, "auto|fabric",
                 "one of auto|fabric|posix_fd|legacy");
  ASSERT_OK(check_value(VMEP_CONFIG_MEM_SHARE, "legacy"));
  ASSERT_OK(check_value(VMEP_CONFIG_MEM_SHARE, NULL));

  expect_refused(VMEP_CONFIG_WORLD_SIZE, "0", "an integer in 1..2147483647");
  expect_refused(VMEP_CONFIG_DEVICE, "-2", "an integer in 0..2147483647");
  ASSERT_OK(check_value(VMEP_CONFIG_DEVICE, NULL)); /* unset: absent */
  ASSERT_OK(check_value(VMEP_CONFIG_JOB_TOKEN, "any thing at all"));
  ASSERT_OK(check_value(VMEP_CONFIG_JOB_TOKEN, NULL));
}

/* The internal parsers apply the table's rule first, then the caller's. */
static void test_parsers(void) {
  static const char *const shares[] = {"auto", "fabric", "posix_fd", "legacy",
                                       NULL};
  long long value = 0;
  int index = -1;
  ASSERT_EQ(setenv("VMEP_DEVICE", "x", 1), 0);
  ASSERT_EQ(vmep__config_int(VMEP_CONFIG_DEVICE, 0, 3, &value),
            VMEP_ERR_INVALID_ARG);
  ASSERT_STR_EQ(vmep_last_error(),
                "VMEP_DEVICE=\"x\": expected an integer in 0..2147483647");
  ASSERT_EQ(setenv("VMEP_DEVICE", "7", 1), 0);
  ASSERT_EQ(vmep__config_int(VMEP_CONFIG_DEVICE, 0, 3, &value),
            VMEP_ERR_INVALID_ARG);
  ASSERT_STR_EQ(vmep_last_error(),
                "VMEP_DEVICE=\"7\": expected an integer in 0..3");
  ASSERT_EQ(setenv("VMEP_DEVICE", "2", 1), 0);
  ASSERT_OK(vmep__config_int(VMEP_CONFIG_DEVICE, 0, 3, &value));
  ASSERT_EQ(value, 2);
  ASSERT_EQ(unsetenv("VMEP_DEVICE"), 0);
  ASSERT_EQ(setenv("VMEP_MEM_SHARE", "nonsense", 1), 0);
  ASSERT_EQ(vmep__config_choice(VMEP_CONFIG_MEM_SHARE, shares, &index),
            VMEP_ERR_INVALID_ARG);
  ASSERT_STR_CONTAINS(vmep_last_error(), "VMEP_MEM_SHARE=\"nonsense\"");
  ASSERT_EQ(setenv("VMEP_MEM_SHARE", "posix_fd", 1), 0);
  ASSERT_OK(vmep__config_choice(VMEP_CONFIG_MEM_SHARE, shares, &index));
  ASSERT_EQ(index, 2);
  ASSERT_EQ(unsetenv("VMEP_MEM_SHARE"), 0);
}

static void fail_once(void) {
  ASSERT_EQ(
      vmep__fail(VMEP_ERR_TIMEOUT, VMEP_LOG_ERROR, "waiting for rank %d", 3),
      VMEP_ERR_TIMEOUT);
}

/* Returned errors are silent by default and at error / warn; logged at
 * info and debug, with the status. */
static void test_errors_once(void) {
  static const char *const quiet[] = {NULL, "error", "warn"};
  for (size_t i = 0; i < VMEP_ARRAY_SIZE(quiet); i++) {
    if (quiet[i])
      ASSERT_EQ(setenv("VMEP_LOG", quiet[i], 1), 0);
    else
      ASSERT_EQ(unsetenv("VMEP_LOG"), 0);
    capture_stderr(fail_once);
    ASSERT_STR_EQ(captured, "");
    ASSERT_STR_EQ(vmep_last_error(), "waiting for rank 3");
  }
  static const char *const loud[] = {"info", "debug"};
  for (size_t i = 0; i < VMEP_ARRAY_SIZE(loud); i++) {
    ASSERT_EQ(setenv("VMEP_LOG", loud[i], 1), 0);
    capture_stderr(fail_once);
    ASSERT_EQ(count_lines(captured), 1);
    ASSERT_STR_CONTAINS(captured, "waiting for rank 3 -> VMEP_ERR_TIMEOUT");
  }
  ASSERT_EQ(unsetenv("VMEP_LOG"), 0);
}

static void log_warn_twice(void) {
  vmep_log_warn("first %d", 1);
  vmep_log_warn("second %d", 2);
  vmep_log_info("not shown %d", 3);
}

/* A bad VMEP_LOG: warn level, said once by the logger; never again, even
 * through vmep_config_check (which returns it instead). */
static void test_bad_log_level(void) {
  ASSERT_EQ(setenv("VMEP_LOG", "bogus", 1), 0);
  capture_stderr(log_warn_twice);
  ASSERT_EQ(count_lines(captured), 3);
  ASSERT_STR_CONTAINS(captured, "VMEP_LOG=\"bogus\": expected one of "
                                "error|warn|info|debug; logging at warn");
  ASSERT_STR_CONTAINS(captured, "first 1");
  ASSERT_STR_CONTAINS(captured, "second 2");
  capture_stderr(log_warn_twice);
  ASSERT_EQ(count_lines(captured), 2);
  expect_refused(VMEP_CONFIG_LOG, "bogus", "one of error|warn|info|debug");
  ASSERT_EQ(unsetenv("VMEP_LOG"), 0);
}

int main(void) {
  test_seed("test_config");
  test_rules();
  test_parsers();
  test_errors_once();
  test_bad_log_level();
  printf("test_config: ok\n");
  return 0;
}
