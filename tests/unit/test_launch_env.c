/*
 * Launch-environment detection from tables of variables: vmep-run,
 * torchrun, Open MPI and Slurm parsed right, their precedence, the derived
 * job id, and every missing, contradictory or malformed case rejected with
 * VMEP_ERR_INVALID_ARG and a message naming the variable and the launcher.
 */
#include "boot/boot.h"
#include "test.h"

#define MAX_VARS 16

struct table {
  const char *names[MAX_VARS];
  const char *values[MAX_VARS];
  int count;
};

static const char *table_lookup(const char *name, void *user) {
  const struct table *t = user;
  for (int i = 0; i < t->count; i++)
    if (strcmp(t->names[i], name) == 0)
      return t->values[i];
  return NULL;
}

/* Adds or replaces a variable; `value` must outlive the table. */
static void table_set(struct table *t, const char *name, const char *value) {
  for (int i = 0; i < t->count; i++)
    if (strcmp(t->names[i], name) == 0) {
      t->values[i] = value;
      return;
    }
  ASSERT_TRUE(t->count < MAX_VARS);
  t->names[t->count] = name;
  t->values[t->count++] = value;
}

/* Random valid rank, size and local rank as strings in `buf`. */
struct ranks {
  int rank, size, local;
  char text[3][16];
};

static void random_ranks(struct ranks *r) {
  r->size = 1 + (int)(test_rand() % 512);
  r->rank = (int)(test_rand() % (uint64_t)r->size);
  r->local = (int)(test_rand() % (uint64_t)(r->rank + 1));
  snprintf(r->text[0], sizeof(r->text[0]), "%d", r->rank);
  snprintf(r->text[1], sizeof(r->text[1]), "%d", r->size);
  snprintf(r->text[2], sizeof(r->text[2]), "%d", r->local);
}

static void set_ranks(struct table *t, const char *rank_var,
                      const char *size_var, const char *local_var,
                      const struct ranks *r) {
  table_set(t, rank_var, r->text[0]);
  table_set(t, size_var, r->text[1]);
  table_set(t, local_var, r->text[2]);
}

static void expect_ranks(const struct vmep_launch_env *env,
                         const struct ranks *r, const char *source) {
  ASSERT_EQ(strcmp(env->source, source), 0);
  ASSERT_EQ(env->rank, r->rank);
  ASSERT_EQ(env->size, r->size);
  ASSERT_EQ(env->local_rank, r->local);
}

/* Parsing must fail with INVALID_ARG, name every needle, leave *env alone. */
static void expect_invalid(struct table *t, const char *needle1,
                           const char *needle2) {
  struct vmep_launch_env env;
  memset(&env, 0xA5, sizeof(env));
  ASSERT_STATUS(vmep__launch_env_parse(table_lookup, t, &env),
                VMEP_ERR_INVALID_ARG);
  ASSERT_STR_CONTAINS(vmep_last_error(), needle1);
  if (needle2)
    ASSERT_STR_CONTAINS(vmep_last_error(), needle2);
  unsigned char *bytes = (unsigned char *)&env;
  for (size_t i = 0; i < sizeof(env); i++)
    ASSERT_EQ(bytes[i], 0xA5);
}

static void test_vmep_run(void) {
  struct table t = {0};
  struct ranks r;
  struct vmep_launch_env env;
  char addr[64], token[40], job[32];
  random_ranks(&r);
  snprintf(addr, sizeof(addr), "127.0.0.1:%d", 1 + (int)(test_rand() % 65535));
  snprintf(token, sizeof(token), "%016llx%016llx",
           (unsigned long long)test_rand(), (unsigned long long)test_rand());
  snprintf(job, sizeof(job), "run-%llu", (unsigned long long)test_rand());
  set_ranks(&t, "VMEP_RANK", "VMEP_WORLD_SIZE", "VMEP_LOCAL_RANK", &r);
  table_set(&t, "VMEP_STORE_ADDR", addr);
  table_set(&t, "VMEP_JOB_TOKEN", token);
  table_set(&t, "VMEP_JOB_ID", job);
  ASSERT_OK(vmep__launch_env_parse(table_lookup, &t, &env));
  expect_ranks(&env, &r, "vmep-run");
  ASSERT_EQ(strcmp(env.store_addr, addr), 0);
  ASSERT_EQ(strcmp(env.token, token), 0);
  ASSERT_EQ(strcmp(env.job_id, job), 0);

  /* No token: empty. Empty values count as unset. */
  table_set(&t, "VMEP_JOB_TOKEN", "");
  ASSERT_OK(vmep__launch_env_parse(table_lookup, &t, &env));
  ASSERT_EQ(strcmp(env.token, ""), 0);
}

/* Without VMEP_JOB_ID every rank derives the same id from the address, and
 * another address gives another id. */
static void test_derived_job_id(void) {
  struct table t = {0};
  struct vmep_launch_env env0, env1, other;
  table_set(&t, "VMEP_RANK", "0");
  table_set(&t, "VMEP_WORLD_SIZE", "2");
  table_set(&t, "VMEP_LOCAL_RANK", "0");
  table_set(&t, "VMEP_STORE_ADDR", "node7:29400");
  ASSERT_OK(vmep__launch_env_parse(table_lookup, &t, &env0));
  table_set(&t, "VMEP_RANK", "1");
  table_set(&t, "VMEP_LOCAL_RANK", "1");
  ASSERT_OK(vmep__launch_env_parse(table_lookup, &t, &env1));
  ASSERT_EQ(strcmp(env0.job_id, env1.job_id), 0);
  ASSERT_TRUE(env0.job_id[0] != '\0');
  ASSERT_TRUE(strlen(env0.job_id) <= VMEP_JOB_ID_MAX);
  table_set(&t, "VMEP_STORE_ADDR", "node7:29401");
  ASSERT_OK(vmep__launch_env_parse(table_lookup, &t, &other));
  ASSERT_NE(strcmp(env0.job_id, other.job_id), 0);
}

static void test_torchrun(void) {
  struct table t = {0};
  struct ranks r;
  struct vmep_launch_env env;
  char port[16], expected[64];
  int p = 1 + (int)(test_rand() % 65534);
  random_ranks(&r);
  snprintf(port, sizeof(port), "%d", p);
  set_ranks(&t, "RANK", "WORLD_SIZE", "LOCAL_RANK", &r);
  table_set(&t, "MASTER_ADDR", "10.1.2.3");
  table_set(&t, "MASTER_PORT", port);
  ASSERT_OK(vmep__launch_env_parse(table_lookup, &t, &env));
  expect_ranks(&env, &r, "torchrun");
  snprintf(expected, sizeof(expected), "10.1.2.3:%d", p + 1);
  ASSERT_EQ(strcmp(env.store_addr, expected), 0);

  /* An IPv6 literal gets brackets. */
  table_set(&t, "MASTER_ADDR", "fd00::1");
  ASSERT_OK(vmep__launch_env_parse(table_lookup, &t, &env));
  snprintf(expected, sizeof(expected), "[fd00::1]:%d", p + 1);
  ASSERT_EQ(strcmp(env.store_addr, expected), 0);

  /* VMEP_STORE_ADDR overrides MASTER_*, which then need not be set. */
  table_set(&t, "VMEP_STORE_ADDR", "store-host:4000");
  table_set(&t, "MASTER_PORT", "");
  ASSERT_OK(vmep__launch_env_parse(table_lookup, &t, &env));
  ASSERT_EQ(strcmp(env.store_addr, "store-host:4000"), 0);
}

/* Open MPI and Slurm: ranks from their variables, the store from
 * VMEP_STORE_ADDR, which is required. */
static void test_store_required(const char *rank_var, const char *size_var,
                                const char *local_var, const char *source,
                                const char *title) {
  struct table t = {0};
  struct ranks r;
  struct vmep_launch_env env;
  random_ranks(&r);
  set_ranks(&t, rank_var, size_var, local_var, &r);
  expect_invalid(&t, "VMEP_STORE_ADDR", title);
  table_set(&t, "VMEP_STORE_ADDR", "head-node:5555");
  table_set(&t, "VMEP_JOB_TOKEN", "secret");
  ASSERT_OK(vmep__launch_env_parse(table_lookup, &t, &env));
  expect_ranks(&env, &r, source);
  ASSERT_EQ(strcmp(env.store_addr, "head-node:5555"), 0);
  ASSERT_EQ(strcmp(env.token, "secret"), 0);
}

/* vmep-run beats torchrun beats Open MPI beats Slurm. */
static void test_precedence(void) {
  struct table t = {0};
  struct vmep_launch_env env;
  table_set(&t, "SLURM_PROCID", "3");
  table_set(&t, "SLURM_NTASKS", "4");
  table_set(&t, "SLURM_LOCALID", "3");
  table_set(&t, "VMEP_STORE_ADDR", "h:1");
  ASSERT_OK(vmep__launch_env_parse(table_lookup, &t, &env));
  ASSERT_EQ(strcmp(env.source, "slurm"), 0);
  table_set(&t, "OMPI_COMM_WORLD_RANK", "2");
  table_set(&t, "OMPI_COMM_WORLD_SIZE", "4");
  table_set(&t, "OMPI_COMM_WORLD_LOCAL_RANK", "2");
  ASSERT_OK(vmep__launch_env_parse(table_lookup, &t, &env));
  ASSERT_EQ(strcmp(env.source, "openmpi"), 0);
  ASSERT_EQ(env.rank, 2);
  table_set(&t, "RANK", "1");
  table_set(&t, "WORLD_SIZE", "4");
  table_set(&t, "LOCAL_RANK", "1");
  ASSERT_OK(vmep__launch_env_parse(table_lookup, &t, &env));
  ASSERT_EQ(strcmp(env.source, "torchrun"), 0);
  ASSERT_EQ(env.rank, 1);
  table_set(&t, "VMEP_RANK", "0");
  table_set(&t, "VMEP_WORLD_SIZE", "4");
  table_set(&t, "VMEP_LOCAL_RANK", "0");
  ASSERT_OK(vmep__launch_env_parse(table_lookup, &t, &env));
  ASSERT_EQ(strcmp(env.source, "vmep-run"), 0);
  ASSERT_EQ(env.rank, 0);
  /* A half-set higher launcher is an error, not a fall-through. */
  table_set(&t, "VMEP_WORLD_SIZE", "");
  expect_invalid(&t, "VMEP_WORLD_SIZE", "vmep-run");
}

/* A valid vmep-run table; `drop` (may be NULL) is left unset. */
static void vmep_run_table(struct table *t, const char *drop) {
  static const char *const base[][2] = {{"VMEP_RANK", "1"},
                                        {"VMEP_WORLD_SIZE", "4"},
                                        {"VMEP_LOCAL_RANK", "1"},
                                        {"VMEP_STORE_ADDR", "127.0.0.1:7000"}};
  memset(t, 0, sizeof(*t));
  for (size_t i = 0; i < VMEP_ARRAY_SIZE(base); i++)
    if (!drop || strcmp(base[i][0], drop) != 0)
      table_set(t, base[i][0], base[i][1]);
}

static void test_missing(void) {
  static const char *const required[] = {"VMEP_RANK", "VMEP_WORLD_SIZE",
                                         "VMEP_LOCAL_RANK", "VMEP_STORE_ADDR"};
  struct table t;
  for (size_t i = 0; i < VMEP_ARRAY_SIZE(required); i++) {
    vmep_run_table(&t, required[i]);
    expect_invalid(&t, required[i], "vmep-run");
  }
  /* Nothing at all: the message lists every launcher's rank variable. */
  memset(&t, 0, sizeof(t));
  table_set(&t, "VMEP_STORE_ADDR", "h:1");
  expect_invalid(&t, "VMEP_RANK", "RANK (torchrun)");
  expect_invalid(&t, "OMPI_COMM_WORLD_RANK", "SLURM_PROCID");
}

static void test_malformed(void) {
  static const char *const cases[][2] = {
      {"VMEP_RANK", "1x"},
      {"VMEP_RANK", "-1"},
      {"VMEP_RANK", "+1"},
      {"VMEP_RANK", " 1"},
      {"VMEP_RANK", "4"}, /* not below the size */
      {"VMEP_RANK", "99999999999"},
      {"VMEP_WORLD_SIZE", "0"},
      {"VMEP_WORLD_SIZE", "4.0"},
      {"VMEP_LOCAL_RANK", "2"}, /* exceeds the rank */
      {"VMEP_LOCAL_RANK", "0x1"},
      {"VMEP_STORE_ADDR", "localhost"},
      {"VMEP_STORE_ADDR", ":7000"},
      {"VMEP_STORE_ADDR", "h:0"},
      {"VMEP_STORE_ADDR", "h:65536"},
      {"VMEP_STORE_ADDR", "h:70a"},
      {"VMEP_STORE_ADDR", "h:"},
      {"VMEP_STORE_ADDR", "a host:7000"},
      {"VMEP_JOB_ID", "has/slash"},
      {"VMEP_JOB_ID",
       "an-id-that-is-much-too-long-for-an-abstract-socket-name-0123456789"},
  };
  struct table t;
  for (size_t i = 0; i < VMEP_ARRAY_SIZE(cases); i++) {
    vmep_run_table(&t, NULL);
    table_set(&t, cases[i][0], cases[i][1]);
    expect_invalid(&t, cases[i][0], "vmep-run");
  }
  char long_token[300];
  memset(long_token, 'k', sizeof(long_token) - 1);
  long_token[sizeof(long_token) - 1] = '\0';
  vmep_run_table(&t, NULL);
  table_set(&t, "VMEP_JOB_TOKEN", long_token);
  expect_invalid(&t, "VMEP_JOB_TOKEN", "vmep-run");
}

static void test_torchrun_errors(void) {
  struct table t = {0};
  table_set(&t, "RANK", "0");
  table_set(&t, "WORLD_SIZE", "2");
  table_set(&t, "LOCAL_RANK", "0");
  expect_invalid(&t, "MASTER_ADDR", "torchrun");
  table_set(&t, "MASTER_ADDR", "10.0.0.1");
  expect_invalid(&t, "MASTER_PORT", "torchrun");
  table_set(&t, "MASTER_ADDR", "");
  table_set(&t, "MASTER_PORT", "29500");
  expect_invalid(&t, "MASTER_ADDR", "VMEP_STORE_ADDR");
  table_set(&t, "MASTER_ADDR", "10.0.0.1");
  table_set(&t, "MASTER_PORT", "65535"); /* no room for MASTER_PORT + 1 */
  expect_invalid(&t, "MASTER_PORT", "torchrun");
  table_set(&t, "MASTER_PORT", "port");
  expect_invalid(&t, "MASTER_PORT", "torchrun");
  table_set(&t, "MASTER_PORT", "29500");
  table_set(&t, "LOCAL_RANK", "");
  expect_invalid(&t, "LOCAL_RANK", "torchrun");
}

/* The process-environment entry point reads the real environment. */
static void test_detect(void) {
  static const char *const higher[] = {"VMEP_RANK",
                                       "VMEP_WORLD_SIZE",
                                       "VMEP_LOCAL_RANK",
                                       "RANK",
                                       "WORLD_SIZE",
                                       "LOCAL_RANK",
                                       "OMPI_COMM_WORLD_RANK",
                                       "OMPI_COMM_WORLD_SIZE",
                                       "OMPI_COMM_WORLD_LOCAL_RANK"};
  struct vmep_launch_env env;
  for (size_t i = 0; i < VMEP_ARRAY_SIZE(higher); i++)
    ASSERT_EQ(unsetenv(higher[i]), 0);
  ASSERT_EQ(setenv("SLURM_PROCID", "5", 1), 0);
  ASSERT_EQ(setenv("SLURM_NTASKS", "8", 1), 0);
  ASSERT_EQ(setenv("SLURM_LOCALID", "1", 1), 0);
  ASSERT_EQ(setenv("VMEP_STORE_ADDR", "login1:6000", 1), 0);
  ASSERT_OK(vmep__launch_env_detect(&env));
  ASSERT_EQ(strcmp(env.source, "slurm"), 0);
  ASSERT_EQ(env.rank, 5);
  ASSERT_EQ(env.size, 8);
  ASSERT_EQ(env.local_rank, 1);
  ASSERT_EQ(unsetenv("VMEP_STORE_ADDR"), 0);
  ASSERT_STATUS(vmep__launch_env_detect(&env), VMEP_ERR_INVALID_ARG);
  ASSERT_STR_CONTAINS(vmep_last_error(), "VMEP_STORE_ADDR");
}

/* The names of a group made from explicit arguments follow the launcher's
 * rules: the same derived job id for the same store address, the token
 * argument before VMEP_JOB_TOKEN, no job id without an address. */
static void test_job_names(void) {
  struct table t = {0};
  struct vmep_launch_env parsed, named;
  table_set(&t, "VMEP_RANK", "0");
  table_set(&t, "VMEP_WORLD_SIZE", "2");
  table_set(&t, "VMEP_LOCAL_RANK", "0");
  table_set(&t, "VMEP_STORE_ADDR", "node7:29400");
  unsetenv("VMEP_JOB_ID");
  unsetenv("VMEP_JOB_TOKEN");
  ASSERT_OK(vmep__launch_env_parse(table_lookup, &t, &parsed));
  ASSERT_OK(vmep__launch_job_names("tok", "node7:29400", &named));
  ASSERT_EQ(strcmp(named.job_id, parsed.job_id), 0);
  ASSERT_EQ(strcmp(named.token, "tok"), 0);
  ASSERT_EQ(strcmp(named.store_addr, "node7:29400"), 0);
  setenv("VMEP_JOB_TOKEN", "from-env", 1);
  setenv("VMEP_JOB_ID", "job-3", 1);
  ASSERT_OK(vmep__launch_job_names(NULL, NULL, &named));
  ASSERT_EQ(strcmp(named.token, "from-env"), 0);
  ASSERT_EQ(strcmp(named.job_id, "job-3"), 0);
  unsetenv("VMEP_JOB_ID");
  ASSERT_OK(vmep__launch_job_names(NULL, NULL, &named));
  ASSERT_EQ(named.job_id[0], '\0');
  ASSERT_EQ(named.store_addr[0], '\0');
  unsetenv("VMEP_JOB_TOKEN");
  memset(&named, 0xA5, sizeof(named));
  ASSERT_STATUS(vmep__launch_job_names(NULL, "no-port", &named),
                VMEP_ERR_INVALID_ARG);
  ASSERT_STR_CONTAINS(vmep_last_error(), "VMEP_STORE_ADDR=\"no-port\"");
  ASSERT_EQ(named.store_addr[0], (char)0xA5); /* untouched on failure */
}

int main(void) {
  test_seed("test_launch_env");
  test_job_names();
  test_vmep_run();
  test_derived_job_id();
  test_torchrun();
  test_store_required("OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE",
                      "OMPI_COMM_WORLD_LOCAL_RANK", "openmpi", "Open MPI");
  test_store_required("SLURM_PROCID", "SLURM_NTASKS", "SLURM_LOCALID", "slurm",
                      "Slurm");
  test_precedence();
  test_missing();
  test_malformed();
  test_torchrun_errors();
  test_detect();
  printf("test_launch_env: ok\n");
  return 0;
}
