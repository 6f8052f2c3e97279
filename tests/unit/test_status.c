/*
 * Status codes, the thread-local last error, the version and the
 * configuration rows: the parts of the public API every other test relies
 * on to explain its failures. Checks the generated names and texts against
 * the list and against fixed values (codes are never renumbered), that two
 * threads failing at once each keep their own message, and every row.
 */
#include <limits.h>
#include <pthread.h>

#include "core/core.h"
#include "test.h"

struct status_row {
  vmep_status status;
  const char *name;
  const char *text;
};

static const struct status_row statuses[] = {
#define STATUS_ROW(name, value, text) {VMEP_##name, "VMEP_" #name, text},
    VMEP_STATUS_MAP(STATUS_ROW)
#undef STATUS_ROW
};
#define STATUS_COUNT ((int)VMEP_ARRAY_SIZE(statuses))

static int is_known_status(long long value) {
  for (int i = 0; i < STATUS_COUNT; i++)
    if ((long long)statuses[i].status == value)
      return 1;
  return 0;
}

static void test_status_names(void) {
  for (int i = 0; i < STATUS_COUNT; i++) {
    ASSERT_STR_EQ(vmep_status_name(statuses[i].status), statuses[i].name);
    ASSERT_STR_EQ(vmep_status_string(statuses[i].status), statuses[i].text);
    ASSERT_TRUE(statuses[i].text[0] != '\0');
    for (int j = 0; j < i; j++) {
      ASSERT_NE(statuses[i].status, statuses[j].status);
      ASSERT_TRUE(strcmp(statuses[i].text, statuses[j].text) != 0);
    }
  }
  /* Values are part of the ABI (Python bindings hard-code them). */
  ASSERT_EQ(VMEP_OK, 0);
  ASSERT_EQ(VMEP_ERR_INVALID_ARG, -1);
  ASSERT_EQ(VMEP_ERR_CUDA, -2);
  ASSERT_EQ(VMEP_ERR_UNSUPPORTED, -3);
  ASSERT_EQ(VMEP_ERR_OUT_OF_MEMORY, -4);
  ASSERT_EQ(VMEP_ERR_TIMEOUT, -5);
  ASSERT_EQ(VMEP_ERR_PEER, -6);
  ASSERT_EQ(VMEP_ERR_SYSTEM, -7);
  ASSERT_EQ(VMEP_ERR_BUSY, -8);
  ASSERT_STR_EQ(vmep_status_name(VMEP_ERR_CUDA), "VMEP_ERR_CUDA");
  ASSERT_STR_EQ(vmep_status_string(VMEP_ERR_OUT_OF_MEMORY), "out of memory");
}

static void test_unknown_status(void) {
  long long fixed[] = {1, -(long long)STATUS_COUNT, 12345, INT_MIN, INT_MAX};
  for (int i = 0; i < 5 + 200; i++) {
    long long value = i < 5 ? fixed[i] : (long long)(int32_t)test_rand();
    if (is_known_status(value))
      continue;
    ASSERT_STR_EQ(vmep_status_name((vmep_status)value), "VMEP_UNKNOWN_STATUS");
    ASSERT_STR_EQ(vmep_status_string((vmep_status)value), "unknown status");
  }
}

/* ---- last error: one per thread --------------------------------------- */

struct failer {
  int index; /* the out-of-range config row this thread asks for */
  pthread_barrier_t *barrier;
  char seen_before[512]; /* the thread's last error before failing */
  char seen_after[512];  /* its last error once both threads failed */
  vmep_status status;
};

static void *fail_in_thread(void *arg) {
  struct failer *f = arg;
  snprintf(f->seen_before, sizeof(f->seen_before), "%s", vmep_last_error());
  f->status = vmep_config_row(f->index, NULL, NULL, NULL, NULL);
  /* Both threads have failed before either reads its message. */
  pthread_barrier_wait(f->barrier);
  snprintf(f->seen_after, sizeof(f->seen_after), "%s", vmep_last_error());
  pthread_barrier_wait(f->barrier);
  return NULL;
}

static void test_last_error_per_thread(void) {
  pthread_barrier_t barrier;
  struct failer f[2];
  pthread_t threads[2];
  char expected[2][64];
  ASSERT_STATUS(vmep_device_count(NULL), VMEP_ERR_INVALID_ARG);
  char main_error[512];
  snprintf(main_error, sizeof(main_error), "%s", vmep_last_error());
  ASSERT_STR_CONTAINS(main_error, "count_out");
  ASSERT_EQ(pthread_barrier_init(&barrier, NULL, 2), 0);
  for (int t = 0; t < 2; t++) {
    memset(&f[t], 0, sizeof(f[t]));
    f[t].barrier = &barrier;
    /* Distinct random indexes past the end: each message names its own. */
    f[t].index = vmep_config_count() + 1 + (int)(test_rand() % 100000) * 2 + t;
    snprintf(expected[t], sizeof(expected[t]), "index %d", f[t].index);
    ASSERT_EQ(pthread_create(&threads[t], NULL, fail_in_thread, &f[t]), 0);
  }
  for (int t = 0; t < 2; t++) {
    ASSERT_EQ(pthread_join(threads[t], NULL), 0);
    ASSERT_EQ(f[t].status, VMEP_ERR_INVALID_ARG);
    ASSERT_STR_EQ(f[t].seen_before, "");
    ASSERT_STR_CONTAINS(f[t].seen_after, expected[t]);
    if (strstr(f[t].seen_after, expected[1 - t]))
      TEST_FAIL("thread %d sees the other thread's error: %s", t,
                f[t].seen_after);
  }
  ASSERT_STR_EQ(vmep_last_error(), main_error);
  pthread_barrier_destroy(&barrier);
}

/* ---- version and configuration ---------------------------------------- */

static void test_version(void) {
  char expected[32];
  snprintf(expected, sizeof(expected), "%d.%d.%d", VMEP_VERSION_MAJOR,
           VMEP_VERSION_MINOR, VMEP_VERSION_PATCH);
  ASSERT_STR_EQ(vmep_version(), expected);
}

/* One row's fields: present, and a row without a default says who sets it. */
static void check_row(int i) {
  const char *name = NULL, *def = NULL, *doc = NULL, *value = NULL;
  ASSERT_OK(vmep_config_row(i, &name, &def, &doc, &value));
  ASSERT_TRUE(name && strncmp(name, "VMEP_", 5) == 0 && name[5] != '\0');
  ASSERT_TRUE(def != NULL);
  ASSERT_TRUE(doc && strlen(doc) > 10);
  if (def[0] == '\0' && !strstr(doc, "vmep-run"))
    TEST_FAIL("%s has no default and its doc does not say who sets it: %s",
              name, doc);
  ASSERT_STR_EQ(name, vmep__config_name((enum vmep_config_id)i));
  for (int j = 0; j < i; j++) {
    const char *other = NULL;
    ASSERT_OK(vmep_config_row(j, &other, NULL, NULL, NULL));
    ASSERT_TRUE(strcmp(name, other) != 0);
  }
  /* The value comes from the environment at each call. */
  char *saved = getenv(name) ? strdup(getenv(name)) : NULL;
  char random_value[32];
  snprintf(random_value, sizeof(random_value), "v%llx",
           (unsigned long long)test_rand());
  ASSERT_EQ(setenv(name, random_value, 1), 0);
  ASSERT_OK(vmep_config_row(i, NULL, NULL, NULL, &value));
  ASSERT_STR_EQ(value, random_value);
  ASSERT_EQ(unsetenv(name), 0);
  value = random_value;
  ASSERT_OK(vmep_config_row(i, NULL, NULL, NULL, &value));
  ASSERT_TRUE(value == NULL);
  ASSERT_STR_EQ(vmep__config_get((enum vmep_config_id)i), def);
  if (saved)
    ASSERT_EQ(setenv(name, saved, 1), 0);
  free(saved);
}

static void test_config_rows(void) {
  int count = vmep_config_count();
  ASSERT_EQ(count, VMEP_CONFIG_COUNT);
  ASSERT_TRUE(count > 0);
  for (int i = 0; i < count; i++)
    check_row(i);
  int bad[] = {-1, count, count + 1 + (int)(test_rand() % 1000), INT_MIN,
               INT_MAX};
  for (size_t i = 0; i < VMEP_ARRAY_SIZE(bad); i++) {
    const char *name = "untouched";
    char index_text[32];
    ASSERT_STATUS(vmep_config_row(bad[i], &name, NULL, NULL, NULL),
                  VMEP_ERR_INVALID_ARG);
    ASSERT_STR_EQ(name, "untouched");
    snprintf(index_text, sizeof(index_text), "index %d out of range", bad[i]);
    ASSERT_STR_CONTAINS(vmep_last_error(), index_text);
  }
}

int main(void) {
  test_seed("test_status");
  test_status_names();
  test_unknown_status();
  test_last_error_per_thread();
  test_version();
  test_config_rows();
  printf("test_status: ok\n");
  return 0;
}
