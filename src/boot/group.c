/*
 * Process groups: the public vmep_group_* API. A group runs its
 * collectives through one backend table (group_ops.c) chosen at creation:
 * the TCP store (rank 0 hosts it in a thread of its process), a
 * framework's allgather and barrier callbacks, or none for an elastic
 * group (vmep_group_join), which only holds a store connection: its
 * members come and go (see member.c for what it offers). At creation every
 * rank contributes its host identity (hostname and boot id), from which
 * the node indices and local ranks follow, and its VMEP_NODES: with
 * pretend nodes (N > 0, docs/TOPOLOGY.md) the ranks of one host are split
 * into N nodes in contiguous blocks instead, rank r in node r * N / size.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "boot/group.h"

#define MAX_GROUP_SIZE 65536
#define HOST_BYTES 256
#define BOOT_ID_BYTES 64
/* Identity record: host, boot id, u32 group size, u32 pid, u32 VMEP_NODES. */
#define IDENTITY_BYTES (HOST_BYTES + BOOT_ID_BYTES + 12)
#define HOST_ID_BYTES (HOST_BYTES + BOOT_ID_BYTES)

/* ---- identity: which ranks share a node ------------------------------ */

static void identity_make(const vmep_group *g, unsigned char *rec) {
  memset(rec, 0, IDENTITY_BYTES);
  gethostname((char *)rec, HOST_BYTES - 1);
  FILE *f = fopen("/proc/sys/kernel/random/boot_id", "r");
  if (f) {
    char *id = (char *)rec + HOST_BYTES;
    if (fgets(id, BOOT_ID_BYTES, f))
      id[strcspn(id, "\n")] = '\0';
    fclose(f);
  }
  vmep__le_put(rec + HOST_BYTES + BOOT_ID_BYTES, (uint32_t)g->size, 4);
  vmep__le_put(rec + HOST_BYTES + BOOT_ID_BYTES + 4, (uint32_t)getpid(), 4);
  vmep__le_put(rec + HOST_BYTES + BOOT_ID_BYTES + 8, (uint32_t)g->nodes, 4);
}

static uint32_t identity_field(const unsigned char *rec, int index) {
  return (uint32_t)vmep__le_get(rec + HOST_BYTES + BOOT_ID_BYTES + 4 * index,
                                4);
}

/* The pretend node of rank r of `ranks` split into `nodes` blocks. */
static int pretend_node(int r, int nodes, int ranks) {
  return (int)((long long)r * nodes / ranks);
}

/* Every rank must run with this rank's size. */
static vmep_status size_check(const vmep_group *g, const unsigned char *all) {
  for (int r = 0; r < g->size; r++) {
    const unsigned char *rec = all + (size_t)r * IDENTITY_BYTES;
    if (identity_field(rec, 0) != (uint32_t)g->size)
      return vmep__fail(VMEP_ERR_INVALID_ARG, VMEP_LOG_ERROR,
                        "group: rank %d was created with size %u, rank %d "
                        "with size %d",
                        r, identity_field(rec, 0), g->rank, g->size);
  }
  return VMEP_OK;
}

/* Every rank must run with this rank's VMEP_NODES; pretend nodes need one
 * host. Every rank checks every record, so all fail alike. */
static vmep_status nodes_check(const vmep_group *g, const unsigned char *all) {
  const char *var = vmep__config_name(VMEP_CONFIG_NODES);
  for (int r = 0; r < g->size; r++) {
    const unsigned char *rec = all + (size_t)r * IDENTITY_BYTES;
    if (identity_field(rec, 2) != (uint32_t)g->nodes)
      return vmep__fail(VMEP_ERR_INVALID_ARG, VMEP_LOG_ERROR,
                        "group: rank %d runs with %s=%u, rank %d with %s=%d; "
                        "every rank must see the same value",
                        r, var, identity_field(rec, 2), g->rank, var, g->nodes);
    if (g->nodes > 0 && memcmp(rec, all, HOST_ID_BYTES) != 0)
      return vmep__fail(VMEP_ERR_INVALID_ARG, VMEP_LOG_ERROR,
                        "group: %s=%d asks for pretend nodes, which need every "
                        "rank on one host, but rank %d is on host %s and rank "
                        "0 on host %s",
                        var, g->nodes, r, (const char *)rec, (const char *)all);
  }
  return VMEP_OK;
}

/* Node indices (pretend ones, or hosts in order of first appearance), and
 * this rank's local rank: its index among the ranks of its node. */
static vmep_status identity_apply(vmep_group *g, const unsigned char *all) {
  int *first = vmep__calloc((size_t)g->size, sizeof(*first));
  g->node_of = vmep__calloc((size_t)g->size, sizeof(*g->node_of));
  if (!first || !g->node_of) {
    vmep__free(first);
    return vmep__fail(VMEP_ERR_OUT_OF_MEMORY, VMEP_LOG_ERROR,
                      "group: no memory for %d node indices", g->size);
  }
  int nodes = 0;
  for (int r = 0; r < g->size; r++) {
    const unsigned char *rec = all + (size_t)r * IDENTITY_BYTES;
    int n = 0;
    while (n < nodes && memcmp(rec, all + (size_t)first[n] * IDENTITY_BYTES,
                               HOST_ID_BYTES) != 0)
      n++;
    if (n == nodes)
      first[nodes++] = r;
    g->node_of[r] = g->nodes > 0 ? pretend_node(r, g->nodes, g->size) : n;
  }
  for (int r = 0; r < g->rank; r++)
    g->local_rank += g->node_of[r] == g->node_of[g->rank];
  vmep__free(first);
  return VMEP_OK;
}

/* Exchanges identities; a custom group without VMEP_JOB_ID names its job
 * after rank 0's identity (host, boot id, pid), the same on every rank.
 * *everyone_out = 1 when it failed on a check that every rank, holding
 * every record, fails alike (so none waits for another). */
static vmep_status identify(vmep_group *g, int name_job, int *everyone_out) {
  unsigned char mine[IDENTITY_BYTES];
  unsigned char *all = vmep__malloc((size_t)g->size * IDENTITY_BYTES);
  if (!all)
    return vmep__fail(VMEP_ERR_OUT_OF_MEMORY, VMEP_LOG_ERROR,
                      "group: no memory for %d identities", g->size);
  identity_make(g, mine);
  vmep_status status = g->ops->allgather(g, "group", mine, IDENTITY_BYTES, all);
  if (status == VMEP_OK)
    status = size_check(g, all);
  if (status == VMEP_OK) {
    status = nodes_check(g, all);
    *everyone_out = status != VMEP_OK;
  }
  if (status == VMEP_OK)
    status = identity_apply(g, all);
  if (status == VMEP_OK && name_job)
    snprintf(g->job_id, sizeof(g->job_id), "custom-%016llx",
             (unsigned long long)vmep__bytes_hash(all, IDENTITY_BYTES));
  vmep__free(all);
  return status;
}

/* ---- creation and destruction ---------------------------------------- */

/* VMEP_TIMEOUT_MS and VMEP_NODES through the config table (their rules
 * name the ranges). */
static vmep_status group_env(vmep_group *g) {
  long long ms = 0, nodes = 0;
  vmep_status status =
      vmep__config_int(VMEP_CONFIG_TIMEOUT_MS, 1, 2147483647LL, &ms);
  if (status == VMEP_OK)
    status = vmep__config_int(VMEP_CONFIG_NODES, 0, MAX_GROUP_SIZE, &nodes);
  g->timeout_ms = (int)ms;
  g->nodes = (int)nodes;
  return status;
}

/* A group shell: backend, ranks, timeout, token and job id. */
static vmep_status group_new(const struct vmep_group_ops *ops, int rank,
                             int size, const struct vmep_launch_env *job,
                             vmep_group **group_out) {
  vmep_group *g = vmep__calloc(1, sizeof(*g));
  if (!g)
    return vmep__fail(VMEP_ERR_OUT_OF_MEMORY, VMEP_LOG_ERROR,
                      "group: no memory");
  vmep_status status = group_env(g);
  if (status != VMEP_OK) {
    vmep__free(g);
    return status;
  }
  g->ops = ops;
  atomic_init(&g->holders, 0);
  g->rank = rank;
  g->size = size;
  snprintf(g->token, sizeof(g->token), "%s", job->token);
  snprintf(g->job_id, sizeof(g->job_id), "%s", job->job_id);
  vmep__log_set_rank(rank);
  *group_out = g;
  return VMEP_OK;
}

static void group_free(vmep_group *g) {
  vmep__free(g->node_of);
  vmep__free(g);
}

/* A loopback store stays on loopback; any other is bound on every
 * interface, because a host name may resolve to a loopback address
 * locally (Debian's 127.0.1.1) and to the real one elsewhere. */
static int is_loopback(const char *host) {
  return strcmp(host, "localhost") == 0 || strncmp(host, "127.", 4) == 0 ||
         strcmp(host, "::1") == 0;
}

/* Rank 0 after a check that fails on every rank: serves the store until
 * the others have read every record and left (at most the timeout), so
 * that they fail on the same check instead of on its death. Keeps this
 * rank's error text. */
static void serve_until_left(vmep_group *g) {
  char error[512];
  snprintf(error, sizeof(error), "%s", vmep_last_error());
  (void)vmep__store_server_drain(g->server, g->timeout_ms);
  vmep__set_last_error(error);
}

static vmep_status store_group_create(int rank, int size, const char *addr,
                                      const struct vmep_launch_env *job,
                                      vmep_group **group_out) {
  char host[256];
  int port = 0;
  vmep_group *g = NULL;
  vmep_status status = vmep__store_addr_parse(addr, host, sizeof(host), &port);
  if (status == VMEP_OK)
    status = group_new(&vmep__group_store_ops, rank, size, job, &g);
  if (status != VMEP_OK)
    return status;
  if (rank == 0)
    status = vmep__store_server_start(is_loopback(host) ? host : NULL, port,
                                      g->token, &g->server);
  if (status == VMEP_OK)
    status = vmep__store_client_connect(addr, g->token, rank, 0, g->timeout_ms,
                                        &g->gather.client);
  g->gather.rank = rank;
  g->gather.size = size;
  int everyone = 0;
  if (status == VMEP_OK)
    status = identify(g, 0, &everyone);
  if (status != VMEP_OK) {
    /* No goodbye: the others' waits fail now instead of timing out. */
    vmep__store_client_close(g->gather.client, 0);
    if (everyone && g->server)
      serve_until_left(g);
    vmep__store_server_stop(g->server);
    group_free(g);
    return status;
  }
  vmep_log_info(
      "group: rank %d of %d joined through store %s, instance "
      "%016llx (node %d%s, local rank %d)",
      rank, size, addr,
      (unsigned long long)vmep__store_client_instance(g->gather.client),
      g->node_of[rank], g->nodes ? ", pretend" : "", g->local_rank);
  *group_out = g;
  return VMEP_OK;
}

static vmep_status check_ranks(const char *fn, int rank, int size,
                               const void *group_out) {
  if (!group_out)
    return vmep__fail(VMEP_ERR_INVALID_ARG, VMEP_LOG_ERROR,
                      "%s: group_out is NULL", fn);
  if (size < 1 || size > MAX_GROUP_SIZE)
    return vmep__fail(VMEP_ERR_INVALID_ARG, VMEP_LOG_ERROR,
                      "%s: size %d is not in 1..%d", fn, size, MAX_GROUP_SIZE);
  if (rank < 0 || rank >= size)
    return vmep__fail(VMEP_ERR_INVALID_ARG, VMEP_LOG_ERROR,
                      "%s: rank %d is not in 0..%d (size %d)", fn, rank,
                      size - 1, size);
  return VMEP_OK;
}

static vmep_status check_token(const char *fn, const char *token) {
  if (token && strlen(token) > VMEP_STORE_TOKEN_MAX)
    return vmep__fail(VMEP_ERR_INVALID_ARG, VMEP_LOG_ERROR,
                      "%s: token of %zu bytes (at most %u)", fn, strlen(token),
                      VMEP_STORE_TOKEN_MAX);
  return VMEP_OK;
}

vmep_status vmep_group_create(int rank, int size, const char *store_addr,
                              const char *token, vmep_group **group_out) {
  struct vmep_launch_env job;
  vmep_status status = check_ranks("vmep_group_create", rank, size, group_out);
  if (status == VMEP_OK && !store_addr)
    status = vmep__fail(VMEP_ERR_INVALID_ARG, VMEP_LOG_ERROR,
                        "vmep_group_create: store_addr is NULL");
  if (status == VMEP_OK)
    status = check_token("vmep_group_create", token);
  if (status == VMEP_OK) {
    char host[256];
    int port;
    status = vmep__store_addr_parse(store_addr, host, sizeof(host), &port);
  }
  if (status == VMEP_OK)
    status = vmep__launch_job_names(token, store_addr, &job);
  if (status != VMEP_OK)
    return status;
  return store_group_create(rank, size, store_addr, &job, group_out);
}

/* VMEP_LOCAL_RANK when set (a decimal below max_ranks: ranks of an
 * elastic job are reused, so it may exceed the rank), else rank. */
static vmep_status local_rank_from_env(int rank, int max_ranks,
                                       int *local_out) {
  const char *name = vmep__config_name(VMEP_CONFIG_LOCAL_RANK);
  const char *text = vmep__config_get(VMEP_CONFIG_LOCAL_RANK);
  char *end = NULL;
  if (!text[0]) {
    *local_out = rank;
    return VMEP_OK;
  }
  long local = strtol(text, &end, 10);
  if (*end || text[0] < '0' || text[0] > '9' || local >= max_ranks)
    return vmep__fail(VMEP_ERR_INVALID_ARG, VMEP_LOG_ERROR,
                      "vmep_group_join: %s=\"%s\" is not a decimal in 0..%d "
                      "(below max_ranks)",
                      name, text, max_ranks - 1);
  *local_out = (int)local;
  return VMEP_OK;
}

/* A joiner has no identity exchange: with pretend nodes it splits the
 * job's capacity (max_ranks) as a group splits its size, and its local
 * rank is its index within its pretend node (VMEP_LOCAL_RANK ignored).
 * Without them every rank is taken for node 0. */
static void join_pretend_nodes(vmep_group *g, int max_ranks) {
  for (int r = 0; r < max_ranks; r++)
    g->node_of[r] = pretend_node(r, g->nodes, max_ranks);
  g->local_rank = 0;
  for (int r = 0; r < g->rank; r++)
    g->local_rank += g->node_of[r] == g->node_of[g->rank];
}

/* The store address of a join: the argument, else VMEP_STORE_ADDR. */
static vmep_status join_addr(const char *store_addr, const char **addr_out) {
  char host[256];
  int port;
  const char *addr =
      store_addr ? store_addr : vmep__config_get(VMEP_CONFIG_STORE_ADDR);
  if (!addr[0])
    return vmep__fail(VMEP_ERR_INVALID_ARG, VMEP_LOG_ERROR,
                      "vmep_group_join: store_addr is NULL and %s is not set",
                      vmep__config_name(VMEP_CONFIG_STORE_ADDR));
  *addr_out = addr;
  return vmep__store_addr_parse(addr, host, sizeof(host), &port);
}

vmep_status vmep_group_join(int rank, int max_ranks, const char *store_addr,
                            const char *token, vmep_group **group_out) {
  struct vmep_launch_env job;
  const char *addr = NULL;
  vmep_group *g = NULL;
  int local = 0;
  vmep_status status = VMEP_OK;
  if (!group_out)
    status = vmep__fail(VMEP_ERR_INVALID_ARG, VMEP_LOG_ERROR,
                        "vmep_group_join: group_out is NULL");
  else if (max_ranks < 1 || max_ranks > VMEP_MEMBER_RANKS_MAX)
    status = vmep__fail(VMEP_ERR_INVALID_ARG, VMEP_LOG_ERROR,
                        "vmep_group_join: max_ranks %d is not in 1..%d",
                        max_ranks, VMEP_MEMBER_RANKS_MAX);
  else if (rank < 0 || rank >= max_ranks)
    status = vmep__fail(VMEP_ERR_INVALID_ARG, VMEP_LOG_ERROR,
                        "vmep_group_join: rank %d is not in 0..%d (max_ranks "
                        "%d)",
                        rank, max_ranks - 1, max_ranks);
  if (status == VMEP_OK)
    status = check_token("vmep_group_join", token);
  if (status == VMEP_OK)
    status = join_addr(store_addr, &addr);
  if (status == VMEP_OK)
    status = local_rank_from_env(rank, max_ranks, &local);
  if (status == VMEP_OK)
    status = vmep__launch_job_names(token, addr, &job);
  if (status == VMEP_OK)
    status = group_new(&vmep__group_elastic_ops, rank, max_ranks, &job, &g);
  if (status != VMEP_OK)
    return status;
  g->local_rank = local;
  g->gather.rank = rank;
  g->gather.size = max_ranks;
  g->node_of = vmep__calloc((size_t)max_ranks, sizeof(*g->node_of));
  if (g->node_of && g->nodes > 0)
    join_pretend_nodes(g, max_ranks);
  status =
      g->node_of
          ? vmep__store_client_connect(addr, g->token, rank, -1, g->timeout_ms,
                                       &g->gather.client)
          : vmep__fail(VMEP_ERR_OUT_OF_MEMORY, VMEP_LOG_ERROR,
                       "vmep_group_join: no memory for %d ranks", max_ranks);
  if (status != VMEP_OK) {
    group_free(g);
    return status;
  }
  vmep_log_info("group: rank %d (of at most %d) joined the elastic job at "
                "store %s",
                rank, max_ranks, addr);
  *group_out = g;
  return VMEP_OK;
}

vmep_status vmep_group_create_from_env(vmep_group **group_out) {
  struct vmep_launch_env env;
  if (!group_out)
    return vmep__fail(VMEP_ERR_INVALID_ARG, VMEP_LOG_ERROR,
                      "vmep_group_create_from_env: group_out is NULL");
  vmep_status status = vmep__launch_env_detect(&env);
  if (status == VMEP_OK)
    status = check_ranks(env.source, env.rank, env.size, group_out);
  if (status != VMEP_OK)
    return status;
  return store_group_create(env.rank, env.size, env.store_addr, &env,
                            group_out);
}

/* The allgather of a group of one: its own payload. */
static vmep_status solo_allgather(const void *send, size_t bytes, void *recv,
                                  void *user) {
  (void)user;
  if (bytes)
    memcpy(recv, send, bytes);
  return VMEP_OK;
}

vmep_status vmep_group_create_custom(int rank, int size,
                                     vmep_allgather_fn allgather,
                                     vmep_barrier_fn barrier, void *user,
                                     vmep_group **group_out) {
  struct vmep_launch_env job;
  vmep_group *g = NULL;
  vmep_status status =
      check_ranks("vmep_group_create_custom", rank, size, group_out);
  if (status == VMEP_OK && !allgather && size == 1)
    allgather = solo_allgather; /* a group of one needs no framework */
  if (status == VMEP_OK && !allgather)
    status = vmep__fail(VMEP_ERR_INVALID_ARG, VMEP_LOG_ERROR,
                        "vmep_group_create_custom: allgather is NULL (only a "
                        "group of one may omit it)");
  /* No store address: the job id comes from VMEP_JOB_ID or rank 0. */
  if (status == VMEP_OK)
    status = vmep__launch_job_names(NULL, NULL, &job);
  if (status == VMEP_OK)
    status = group_new(&vmep__group_custom_ops, rank, size, &job, &g);
  if (status != VMEP_OK)
    return status;
  g->allgather = allgather;
  g->barrier = barrier;
  g->user = user;
  int everyone = 0;
  status = identify(g, !job.job_id[0], &everyone);
  if (status != VMEP_OK) {
    group_free(g);
    return status;
  }
  *group_out = g;
  return VMEP_OK;
}

vmep_status vmep_group_destroy(vmep_group *g) {
  if (!g)
    return VMEP_OK;
  int holders = atomic_load(&g->holders);
  if (holders > 0)
    return vmep__fail(VMEP_ERR_BUSY, VMEP_LOG_ERROR,
                      "vmep_group_destroy: %d holder(s) (EP buffers or "
                      "windows) still use this group; destroy them first",
                      holders);
  vmep_status status = g->ops->destroy(g);
  group_free(g);
  return status;
}

void vmep__group_hold(vmep_group *g) { atomic_fetch_add(&g->holders, 1); }

void vmep__group_release(vmep_group *g) {
  int n = atomic_load(&g->holders);
  while (n > 0 && !atomic_compare_exchange_weak(&g->holders, &n, n - 1))
    ;
  if (n <= 0)
    vmep_log_warn("group: released more often than held (ignored)");
}

/* ---- accessors ------------------------------------------------------- */

int vmep_group_rank(const vmep_group *g) { return g ? g->rank : -1; }
int vmep_group_size(const vmep_group *g) { return g ? g->size : 0; }
int vmep_group_local_rank(const vmep_group *g) {
  return g ? g->local_rank : -1;
}
int vmep_group_node(const vmep_group *g, int rank) {
  return g && rank >= 0 && rank < g->size ? g->node_of[rank] : -1;
}

struct vmep_store_client *vmep__group_store(const vmep_group *g) {
  return g->gather.client;
}
const char *vmep__group_job_id(const vmep_group *g) { return g->job_id; }
const char *vmep__group_token(const vmep_group *g) { return g->token; }
int vmep__group_timeout_ms(const vmep_group *g) { return g->timeout_ms; }
int vmep__group_pretend_nodes(const vmep_group *g) { return g->nodes; }
int vmep__group_elastic(const vmep_group *g) {
  return g && g->ops == &vmep__group_elastic_ops;
}

/* ---- collectives ----------------------------------------------------- */

static vmep_status bad_call(const char *fn, const char *what) {
  return vmep__fail(VMEP_ERR_INVALID_ARG, VMEP_LOG_ERROR, "%s: %s", fn, what);
}

/* "<fn>: <name> is NULL" for the first of the group and the buffers a
 * collective needs (`need_*`) that is NULL; VMEP_OK when none is. */
static vmep_status null_args(const char *fn, const vmep_group *g,
                             const void *send, int need_send, const void *recv,
                             int need_recv) {
  const char *name = !g                   ? "group"
                     : need_send && !send ? "send"
                     : need_recv && !recv ? "recv"
                                          : NULL;
  return name ? vmep__fail(VMEP_ERR_INVALID_ARG, VMEP_LOG_ERROR,
                           "%s: %s is NULL", fn, name)
              : VMEP_OK;
}

vmep_status vmep_group_allgather(vmep_group *g, const void *send, size_t bytes,
                                 void *recv) {
  const char *fn = "vmep_group_allgather";
  vmep_status status = null_args(fn, g, send, bytes > 0, recv, bytes > 0);
  if (status != VMEP_OK)
    return status;
  status = g->ops->usable(fn);
  if (status != VMEP_OK)
    return status;
  if (bytes > SIZE_MAX / (size_t)g->size)
    return bad_call(fn, "bytes * size overflows");
  return g->ops->allgather(g, fn, send, bytes, recv);
}

vmep_status vmep_group_allgatherv(vmep_group *g, const void *send, size_t bytes,
                                  void *recv, size_t recv_capacity,
                                  size_t *sizes_out) {
  const char *fn = "vmep_group_allgatherv";
  vmep_status status = null_args(fn, g, send, bytes > 0, recv, recv_capacity);
  if (status == VMEP_OK && !sizes_out)
    status = bad_call(fn, "sizes_out is NULL");
  if (status != VMEP_OK)
    return status;
  return g->ops->allgatherv(g, fn, send, bytes, recv, recv_capacity, sizes_out);
}

vmep_status vmep_group_broadcast(vmep_group *g, int root, void *buf,
                                 size_t bytes) {
  const char *fn = "vmep_group_broadcast";
  vmep_status status = null_args(fn, g, buf, bytes > 0, buf, 0);
  if (status != VMEP_OK)
    return status;
  status = g->ops->usable(fn);
  if (status != VMEP_OK)
    return status;
  if (root < 0 || root >= g->size)
    return vmep__fail(VMEP_ERR_INVALID_ARG, VMEP_LOG_ERROR,
                      "vmep_group_broadcast: root %d is not in 0..%d", root,
                      g->size - 1);
  size_t *sizes = vmep__calloc((size_t)g->size, sizeof(*sizes));
  if (!sizes)
    return vmep__fail(VMEP_ERR_OUT_OF_MEMORY, VMEP_LOG_ERROR,
                      "broadcast: no memory for %d sizes", g->size);
  int is_root = g->rank == root;
  status = g->ops->allgatherv(g, fn, is_root ? buf : NULL, is_root ? bytes : 0,
                              buf, bytes, sizes);
  if (status == VMEP_OK && sizes[root] != bytes)
    status = vmep__fail(VMEP_ERR_INVALID_ARG, VMEP_LOG_ERROR,
                        "broadcast: root %d sent %zu bytes, rank %d expected "
                        "%zu",
                        root, sizes[root], g->rank, bytes);
  vmep__free(sizes);
  return status;
}

vmep_status vmep_group_barrier(vmep_group *g) {
  vmep_status status = null_args("vmep_group_barrier", g, NULL, 0, NULL, 0);
  if (status != VMEP_OK)
    return status;
  return g->ops->barrier(g, "vmep_group_barrier");
}
