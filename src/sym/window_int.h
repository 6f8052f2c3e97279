/*
 * The window object and the steps its two files share: offering our
 * region (export, serialize, serve its fd) and mapping a peer's from the
 * bytes it offered. Private to src/sym.
 */
#ifndef VMEP_SYM_WINDOW_INT_H
#define VMEP_SYM_WINDOW_INT_H

#include "boot/boot.h"
#include "mem/mem.h"
#include "sym/sym.h"

/* One slot of the peer table. */
struct vmep_sym_peer {
  enum vmep_peer_kind kind;
  void *base;            /* the region as this process sees it */
  vmep_mapping *mapping; /* VMEP_PEER_MAPPED: what we imported */
};

struct vmep_window {
  vmep_group *group;
  int rank, size, device;
  int slots; /* ranks the window has room for (>= size) */
  vmep_mem_strategy strategy;
  vmep_region *local;
  size_t stride;
  CUdeviceptr base;              /* VMM: the reserved range [slots * stride] */
  int own_slot_mapped;           /* VMM: our region at base + rank * stride */
  struct vmep_sym_peer *peers;   /* [slots] */
  int remote;                    /* peers marked VMEP_PEER_REMOTE */
  struct vmep_fd_server *server; /* serves our fd to ranks that join */
  const char *call;              /* the API call that made the window */
  int holds_group;               /* vmep__group_hold taken at creation */
  char ns[64];                   /* store namespace of our member record */
};

/*
 * Offers our region: exports it, serializes its descriptor into
 * bytes[cap] (*len_out bytes), and when it has an fd serves it as rank
 * `rank` of fd-passing job `job` (*server_out, else NULL). On failure
 * nothing is served. The exported fd is closed either way.
 */
vmep_status vmep__window_offer(vmep_window *w, const char *job, void *bytes,
                               size_t cap, size_t *len_out,
                               struct vmep_fd_server **server_out);

/* Maps rank r's region from the descriptor bytes it offered (its fd
 * fetched from its server in fd-passing job `job`) into its slot;
 * messages name `call`. On failure the slot stays empty. */
vmep_status vmep__window_map_peer(vmep_window *w, int r, const void *bytes,
                                  size_t len, const char *job,
                                  const char *call);

#endif /* VMEP_SYM_WINDOW_INT_H */
