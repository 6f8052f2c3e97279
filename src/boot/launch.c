/*
 * Launch-environment detection: which launcher started this process, and
 * from its variables the rank, size, local rank, store address, job token
 * and job id. Launchers are tried in a fixed order (vmep-run, torchrun,
 * Open MPI, Slurm). Parsing is strict, because a silently wrong rank or
 * size makes a job hang at its first collective instead of failing at once
 * with a message that names the variable.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "boot/boot.h"

#define MAX_PORT 65535
#define LAUNCHERS 4
#define STORE_ADDR_BYTES sizeof(((struct vmep_launch_env *)0)->store_addr)

/* The variables one launcher sets. `store_from_master`: the store address
 * may come from MASTER_ADDR and MASTER_PORT (torchrun). */
struct launcher {
  const char *source; /* struct vmep_launch_env's source */
  const char *title;  /* in messages */
  const char *rank_var;
  const char *size_var;
  const char *local_var;
  int store_from_master;
};

struct env_reader {
  vmep_env_lookup_fn lookup;
  void *user;
};

/* The variable's value; NULL when unset or empty. */
static const char *env_get(const struct env_reader *reader, const char *name) {
  const char *value = reader->lookup(name, reader->user);
  return (value && value[0]) ? value : NULL;
}

/* Plain decimal digits (no sign, no spaces) with a value in [min, max]. */
static int parse_decimal(const char *text, long min, long max, long *out) {
  long value = 0;
  if (!text[0])
    return 0;
  for (const char *p = text; *p; p++) {
    if (*p < '0' || *p > '9')
      return 0;
    value = value * 10 + (*p - '0');
    if (value > max)
      return 0;
  }
  if (value < min)
    return 0;
  *out = value;
  return 1;
}

static vmep_status parse_int_var(const struct launcher *l, const char *name,
                                 const char *text, long min, long max,
                                 int *out) {
  long value = 0;
  if (!parse_decimal(text, min, max, &value))
    return vmep__fail(VMEP_ERR_INVALID_ARG, VMEP_LOG_ERROR,
                      "%s launch: %s=\"%s\" is not a decimal integer in "
                      "[%ld, %ld]",
                      l->title, name, text, min, max);
  *out = (int)value;
  return VMEP_OK;
}

/* Rank, size and local rank: all three set, each in range, and related. */
static vmep_status parse_ranks(const struct env_reader *reader,
                               const struct launcher *l,
                               struct vmep_launch_env *env) {
  const char *rank = env_get(reader, l->rank_var);
  const char *size = env_get(reader, l->size_var);
  const char *local = env_get(reader, l->local_var);
  if (!rank || !size || !local)
    return vmep__fail(VMEP_ERR_INVALID_ARG, VMEP_LOG_ERROR,
                      "%s launch environment incomplete: %s, %s and %s must "
                      "all be set (%s is not)",
                      l->title, l->rank_var, l->size_var, l->local_var,
                      !rank   ? l->rank_var
                      : !size ? l->size_var
                              : l->local_var);
  vmep_status status =
      parse_int_var(l, l->size_var, size, 1, 2147483647L, &env->size);
  if (status == VMEP_OK)
    status = parse_int_var(l, l->rank_var, rank, 0, 2147483647L, &env->rank);
  if (status == VMEP_OK)
    status =
        parse_int_var(l, l->local_var, local, 0, 2147483647L, &env->local_rank);
  if (status != VMEP_OK)
    return status;
  if (env->rank >= env->size)
    return vmep__fail(VMEP_ERR_INVALID_ARG, VMEP_LOG_ERROR,
                      "%s launch: %s=%d is not below %s=%d", l->title,
                      l->rank_var, env->rank, l->size_var, env->size);
  if (env->local_rank > env->rank)
    return vmep__fail(VMEP_ERR_INVALID_ARG, VMEP_LOG_ERROR,
                      "%s launch: %s=%d exceeds %s=%d (a rank's index within "
                      "its node cannot exceed its rank)",
                      l->title, l->local_var, env->local_rank, l->rank_var,
                      env->rank);
  return VMEP_OK;
}

/* "host:port": a host without blanks, then a port in 1..65535 after the
 * last colon (so "[::1]:5000" passes). `what` names the source. */
static vmep_status check_host_port(const struct launcher *l, const char *what,
                                   const char *addr) {
  const char *colon = strrchr(addr, ':');
  long port = 0;
  if (!colon || colon == addr || strpbrk(addr, " \t\r\n") ||
      !parse_decimal(colon + 1, 1, MAX_PORT, &port))
    return vmep__fail(VMEP_ERR_INVALID_ARG, VMEP_LOG_ERROR,
                      "%s launch: %s=\"%s\" is not host:port with a port in "
                      "1..%d",
                      l->title, what, addr, MAX_PORT);
  if (strlen(addr) >= STORE_ADDR_BYTES)
    return vmep__fail(VMEP_ERR_INVALID_ARG, VMEP_LOG_ERROR,
                      "%s launch: %s is %zu characters long (at most %zu)",
                      l->title, what, strlen(addr), STORE_ADDR_BYTES - 1);
  return VMEP_OK;
}

/* torchrun: MASTER_ADDR:(MASTER_PORT + 1); torch's store holds MASTER_PORT. */
static vmep_status store_from_master(const struct env_reader *reader,
                                     const struct launcher *l,
                                     struct vmep_launch_env *env) {
  const char *host = env_get(reader, "MASTER_ADDR");
  const char *port_text = env_get(reader, "MASTER_PORT");
  const char *store_var = vmep__config_name(VMEP_CONFIG_STORE_ADDR);
  long port = 0;
  if (!host || !port_text)
    return vmep__fail(VMEP_ERR_INVALID_ARG, VMEP_LOG_ERROR,
                      "%s launch: MASTER_ADDR and MASTER_PORT must both be "
                      "set (%s is not), or set %s=host:port",
                      l->title, !host ? "MASTER_ADDR" : "MASTER_PORT",
                      store_var);
  if (!parse_decimal(port_text, 1, MAX_PORT - 1, &port))
    return vmep__fail(VMEP_ERR_INVALID_ARG, VMEP_LOG_ERROR,
                      "%s launch: MASTER_PORT=\"%s\" is not a decimal port in "
                      "1..%d (the vmep store takes MASTER_PORT + 1; or set "
                      "%s=host:port)",
                      l->title, port_text, MAX_PORT - 1, store_var);
  /* An IPv6 literal needs brackets to be followed by ":port". */
  int bracket = strchr(host, ':') && host[0] != '[';
  int n = snprintf(env->store_addr, sizeof(env->store_addr), "%s%s%s:%ld",
                   bracket ? "[" : "", host, bracket ? "]" : "", port + 1);
  if (n < 0 || (size_t)n >= sizeof(env->store_addr))
    return vmep__fail(VMEP_ERR_INVALID_ARG, VMEP_LOG_ERROR,
                      "%s launch: MASTER_ADDR is %zu characters long, too "
                      "long for a store address",
                      l->title, strlen(host));
  return check_host_port(l, "MASTER_ADDR:MASTER_PORT+1", env->store_addr);
}

static vmep_status parse_store_addr(const struct env_reader *reader,
                                    const struct launcher *l,
                                    struct vmep_launch_env *env) {
  const char *store_var = vmep__config_name(VMEP_CONFIG_STORE_ADDR);
  const char *addr = env_get(reader, store_var);
  if (addr) {
    vmep_status status = check_host_port(l, store_var, addr);
    if (status == VMEP_OK)
      snprintf(env->store_addr, sizeof(env->store_addr), "%s", addr);
    return status;
  }
  if (l->store_from_master)
    return store_from_master(reader, l, env);
  return vmep__fail(VMEP_ERR_INVALID_ARG, VMEP_LOG_ERROR,
                    "%s launch: %s is not set: set it to host:port of a free "
                    "port on rank 0's host (rank 0 hosts the vmep store there)",
                    l->title, store_var);
}

/* 64-bit FNV-1a: a short, stable name for a store address. */
static uint64_t hash_text(const char *text) {
  uint64_t h = 14695981039346656037ull;
  for (const unsigned char *p = (const unsigned char *)text; *p; p++)
    h = (h ^ *p) * 1099511628211ull;
  return h;
}

static int job_id_valid(const char *id) {
  size_t n = strlen(id);
  return n <= VMEP_JOB_ID_MAX &&
         strspn(id, "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
                    "0123456789._-") == n;
}

static vmep_status parse_token_and_job(const struct env_reader *reader,
                                       const struct launcher *l,
                                       struct vmep_launch_env *env) {
  const char *token_var = vmep__config_name(VMEP_CONFIG_JOB_TOKEN);
  const char *job_var = vmep__config_name(VMEP_CONFIG_JOB_ID);
  const char *token = env_get(reader, token_var);
  const char *job_id = env_get(reader, job_var);
  if (token && strlen(token) >= sizeof(env->token))
    return vmep__fail(VMEP_ERR_INVALID_ARG, VMEP_LOG_ERROR,
                      "%s launch: %s is %zu characters long (at most %zu)",
                      l->title, token_var, strlen(token),
                      sizeof(env->token) - 1);
  if (job_id && !job_id_valid(job_id))
    return vmep__fail(VMEP_ERR_INVALID_ARG, VMEP_LOG_ERROR,
                      "%s launch: %s=\"%s\" must be 1..%d characters from "
                      "[A-Za-z0-9._-]",
                      l->title, job_var, job_id, VMEP_JOB_ID_MAX);
  snprintf(env->token, sizeof(env->token), "%s", token ? token : "");
  if (job_id)
    snprintf(env->job_id, sizeof(env->job_id), "%s", job_id);
  else
    snprintf(env->job_id, sizeof(env->job_id), "store-%016llx",
             (unsigned long long)hash_text(env->store_addr));
  return VMEP_OK;
}

/* The launchers, in the order they are tried; the first is vmep's own. */
static size_t launchers_list(struct launcher *l) {
  const struct launcher list[] = {
      {"vmep-run", "vmep-run", vmep__config_name(VMEP_CONFIG_RANK),
       vmep__config_name(VMEP_CONFIG_WORLD_SIZE),
       vmep__config_name(VMEP_CONFIG_LOCAL_RANK), 0},
      {"torchrun", "torchrun", "RANK", "WORLD_SIZE", "LOCAL_RANK", 1},
      {"openmpi", "Open MPI", "OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE",
       "OMPI_COMM_WORLD_LOCAL_RANK", 0},
      {"slurm", "Slurm", "SLURM_PROCID", "SLURM_NTASKS", "SLURM_LOCALID", 0},
  };
  _Static_assert(VMEP_ARRAY_SIZE(list) == LAUNCHERS, "LAUNCHERS is stale");
  memcpy(l, list, sizeof(list));
  return VMEP_ARRAY_SIZE(list);
}

vmep_status vmep__launch_env_parse(vmep_env_lookup_fn lookup, void *user,
                                   struct vmep_launch_env *env_out) {
  const struct env_reader reader = {lookup, user};
  struct launcher launchers[LAUNCHERS];
  size_t count = launchers_list(launchers);
  if (!lookup || !env_out)
    return vmep__fail(VMEP_ERR_INVALID_ARG, VMEP_LOG_ERROR,
                      "vmep__launch_env_parse: %s is NULL",
                      lookup ? "env_out" : "lookup");
  for (size_t i = 0; i < count; i++) {
    const struct launcher *l = &launchers[i];
    struct vmep_launch_env env;
    if (!env_get(&reader, l->rank_var) && !env_get(&reader, l->size_var) &&
        !env_get(&reader, l->local_var))
      continue;
    memset(&env, 0, sizeof(env));
    env.source = l->source;
    vmep_status status = parse_ranks(&reader, l, &env);
    if (status == VMEP_OK)
      status = parse_store_addr(&reader, l, &env);
    if (status == VMEP_OK)
      status = parse_token_and_job(&reader, l, &env);
    if (status == VMEP_OK)
      *env_out = env;
    return status;
  }
  char tried[256] = "";
  for (size_t i = 0; i < count; i++)
    snprintf(tried + strlen(tried), sizeof(tried) - strlen(tried), "%s%s (%s)",
             i ? ", " : "", launchers[i].rank_var, launchers[i].title);
  return vmep__fail(VMEP_ERR_INVALID_ARG, VMEP_LOG_ERROR,
                    "no launch environment found: none of %s is set, nor "
                    "its size or local-rank variable; start the job with "
                    "vmep-run, torchrun, mpirun or srun, or pass rank, size "
                    "and store address explicitly",
                    tried);
}

static const char *process_env_lookup(const char *name, void *user) {
  (void)user;
  return getenv(name);
}

vmep_status vmep__launch_env_detect(struct vmep_launch_env *env_out) {
  return vmep__launch_env_parse(process_env_lookup, NULL, env_out);
}

/* Explicit arguments: the token given (else VMEP_JOB_TOKEN) and
 * VMEP_JOB_ID, read through the configuration table. */
static const char *names_lookup(const char *name, void *user) {
  const char *token = user;
  if (strcmp(name, vmep__config_name(VMEP_CONFIG_JOB_TOKEN)) == 0)
    return token ? token : vmep__config_get(VMEP_CONFIG_JOB_TOKEN);
  if (strcmp(name, vmep__config_name(VMEP_CONFIG_JOB_ID)) == 0)
    return vmep__config_get(VMEP_CONFIG_JOB_ID);
  return NULL;
}

vmep_status vmep__launch_job_names(const char *token, const char *store_addr,
                                   struct vmep_launch_env *env_out) {
  const struct env_reader reader = {names_lookup, (void *)token};
  struct launcher launchers[LAUNCHERS];
  struct vmep_launch_env env;
  launchers_list(launchers);
  memset(&env, 0, sizeof(env));
  env.source = launchers[0].source;
  env.local_rank = -1;
  env.rank = -1;
  vmep_status status =
      store_addr ? check_host_port(&launchers[0],
                                   vmep__config_name(VMEP_CONFIG_STORE_ADDR),
                                   store_addr)
                 : VMEP_OK;
  if (status == VMEP_OK && store_addr)
    snprintf(env.store_addr, sizeof(env.store_addr), "%s", store_addr);
  if (status == VMEP_OK)
    status = parse_token_and_job(&reader, &launchers[0], &env);
  if (status == VMEP_OK && !store_addr &&
      !env_get(&reader, vmep__config_name(VMEP_CONFIG_JOB_ID)))
    env.job_id[0] = '\0'; /* no address to name the job after */
  if (status == VMEP_OK)
    *env_out = env;
  return status;
}
