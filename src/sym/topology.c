/*
 * The topology decision, in one place (docs/TOPOLOGY.md): from each rank's
 * node, each rank's usable sharing strategies and whether the nodes are
 * pretend ones, which strategy each rank's region uses and how every peer
 * is reached: mapped within its node, mapped across nodes of one NVLink
 * domain with fabric handles, or remote (through an RDMA engine). Pure: no
 * I/O, no allocation, the same answer on every rank given the same input,
 * so that ranks never disagree on who maps whom.
 */
#include "sym/sym.h"

/* The strongest strategy in `mask` (VMEP_REGION_ALLOW_* bits), or
 * VMEP_MEM_NONE when it holds none. */
static vmep_mem_strategy strongest(unsigned mask) {
  for (int s = VMEP_MEM_FABRIC; s <= VMEP_MEM_LEGACY; s++)
    if (mask & (1u << s))
      return (vmep_mem_strategy)s;
  return VMEP_MEM_NONE;
}

int vmep__topology_strategies(int size, const int *node_of,
                              const unsigned *usable,
                              vmep_mem_strategy *strategy_out) {
  int bad_node = -1;
  for (int r = 0; r < size; r++) {
    int leader = 0;
    while (node_of[leader] != node_of[r])
      leader++;
    if (leader < r) { /* its node is decided already */
      strategy_out[r] = strategy_out[leader];
      continue;
    }
    unsigned common = VMEP_REGION_ALLOW_ALL;
    for (int k = r; k < size; k++)
      if (node_of[k] == node_of[r])
        common &= usable[k];
    strategy_out[r] = strongest(common);
    if (strategy_out[r] == VMEP_MEM_NONE && bad_node < 0)
      bad_node = node_of[r];
  }
  return bad_node;
}

enum vmep_peer_class vmep__topology_class(const int *node_of,
                                          const vmep_mem_strategy *strategy,
                                          int pretend, int me, int peer) {
  if (node_of[me] == node_of[peer])
    return VMEP_CLASS_NODE;
  if (!pretend && strategy[me] == VMEP_MEM_FABRIC &&
      strategy[peer] == VMEP_MEM_FABRIC)
    return VMEP_CLASS_FABRIC;
  return VMEP_CLASS_REMOTE;
}
