/*
 * Members of a window that come and go (elastic EP buffers): each rank
 * publishes a member record (its region's descriptor; the store keys it by
 * the publisher's session) and serves its fd, and a rank that arrives
 * later maps the others from their records, and they map it, one at a
 * time. A record names its publisher's VMEP_NODES and node: a rank of
 * another pretend node is marked remote, never mapped; the window's user
 * reaches it through the RDMA engine (docs/TOPOLOGY.md).
 */
#include <stdio.h>
#include <string.h>

#include "sym/window_int.h"

/* What a member publishes under "<ns>/member/<rank>". */
struct member_record {
  uint32_t magic;
  uint32_t desc_len;
  uint32_t nodes; /* the publisher's VMEP_NODES (0: host identity) */
  int32_t node;   /* its node index, as its group sees it */
  unsigned char desc[VMEP_MEM_DESC_MAX_BYTES];
};
#define MEMBER_MAGIC 0x564d4d32u /* "VMM2" */

/* The fd server's job name for namespace `ns` of this job: the same in
 * every process of the job, short enough for a socket name. */
static void member_job(const vmep_window *w, char *job, size_t cap) {
  char key[256];
  snprintf(key, sizeof(key), "%s/%s", vmep__group_job_id(w->group), w->ns);
  snprintf(job, cap, "m%016llx",
           (unsigned long long)vmep__bytes_hash(key, strlen(key)));
}

vmep_status vmep__window_publish(vmep_window *w, struct vmep_store_client *c,
                                 const char *ns) {
  struct member_record rec;
  char job[VMEP_JOB_ID_MAX + 1];
  size_t len = 0;
  snprintf(w->ns, sizeof(w->ns), "%s", ns);
  memset(&rec, 0, sizeof(rec));
  member_job(w, job, sizeof(job));
  vmep_status status =
      vmep__window_offer(w, job, rec.desc, sizeof(rec.desc), &len, &w->server);
  rec.magic = MEMBER_MAGIC;
  rec.desc_len = (uint32_t)len;
  rec.nodes = (uint32_t)vmep__group_pretend_nodes(w->group);
  rec.node = vmep_group_node(w->group, w->rank);
  if (status == VMEP_OK)
    status = vmep__member_publish(c, ns, w->rank, &rec, sizeof(rec));
  return status;
}

vmep_status vmep__window_withdraw(vmep_window *w) {
  struct vmep_store_client *c = vmep__group_store(w->group);
  vmep__fd_server_stop(w->server);
  w->server = NULL;
  return c && w->ns[0] ? vmep__member_withdraw(c, w->ns, w->rank) : VMEP_OK;
}

/* Fetches the member record of rank's current process (see
 * vmep__member_fetch_current) into *rec, and its publisher's session. */
static vmep_status fetch_record(vmep_window *w, struct vmep_store_client *c,
                                int rank, int timeout_ms, int wait_dead,
                                const char *call, struct member_record *rec,
                                uint64_t *session_out) {
  void *bytes = NULL;
  size_t len = 0;
  vmep_status status = vmep__member_fetch_current(
      c, w->ns, rank, timeout_ms, wait_dead, &bytes, &len, session_out);
  if (status != VMEP_OK)
    return status;
  if (len == sizeof(*rec))
    memcpy(rec, bytes, sizeof(*rec));
  vmep__free(bytes);
  if (len != sizeof(*rec) || rec->magic != MEMBER_MAGIC ||
      rec->desc_len > sizeof(rec->desc))
    return vmep__fail(VMEP_ERR_PEER, VMEP_LOG_ERROR,
                      "%s: rank %d's member record is malformed (%zu B)", call,
                      rank, len);
  return VMEP_OK;
}

/* Pretend nodes: the publisher must run with our VMEP_NODES (joiners know
 * no hosts, so real nodes are not told apart here). */
static vmep_status check_node(const vmep_window *w, int rank,
                              const struct member_record *rec,
                              const char *call) {
  const char *var = vmep__config_name(VMEP_CONFIG_NODES);
  int nodes = vmep__group_pretend_nodes(w->group);
  if (rec->nodes != (uint32_t)nodes)
    return vmep__fail(VMEP_ERR_INVALID_ARG, VMEP_LOG_ERROR,
                      "%s: rank %d runs with %s=%u, this rank (%d) with "
                      "%s=%d; every rank must see the same value",
                      call, rank, var, rec->nodes, w->rank, var, nodes);
  return VMEP_OK;
}

vmep_status vmep__window_attach(vmep_window *w, struct vmep_store_client *c,
                                int rank, int timeout_ms, int wait_dead,
                                const char *call, uint64_t *session_out) {
  char job[VMEP_JOB_ID_MAX + 1];
  struct member_record rec;
  if (rank < 0 || rank >= w->slots || rank == w->rank)
    return vmep__fail(VMEP_ERR_INVALID_ARG, VMEP_LOG_ERROR,
                      "%s: rank %d, expected another rank in 0..%d", call, rank,
                      w->slots - 1);
  enum vmep_peer_kind kind = w->peers[rank].kind;
  if (kind == VMEP_PEER_MAPPED)
    return VMEP_OK;
  uint64_t session = 0;
  vmep_status status =
      fetch_record(w, c, rank, timeout_ms, wait_dead, call, &rec, &session);
  if (status == VMEP_OK)
    status = check_node(w, rank, &rec, call);
  if (status != VMEP_OK)
    return status;
  /* A rank of another (pretend) node is never mapped: marked remote, it
   * is reached through the engine by the window's user. */
  int pretend = vmep__group_pretend_nodes(w->group);
  if (kind == VMEP_PEER_REMOTE ||
      (pretend > 0 && rec.node != vmep_group_node(w->group, w->rank))) {
    w->peers[rank].kind = VMEP_PEER_REMOTE;
    if (session_out)
      *session_out = session;
    return VMEP_OK;
  }
  member_job(w, job, sizeof(job));
  status = vmep__window_map_peer(w, rank, rec.desc, rec.desc_len, job, call);
  if (status == VMEP_OK && session_out)
    *session_out = session;
  return status;
}

vmep_status vmep__window_detach(vmep_window *w, int rank) {
  if (rank < 0 || rank >= w->slots || w->peers[rank].kind != VMEP_PEER_MAPPED)
    return VMEP_OK;
  vmep_status status = vmep_mapping_release(w->peers[rank].mapping);
  memset(&w->peers[rank], 0, sizeof(w->peers[rank]));
  return status;
}
