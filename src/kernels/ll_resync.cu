/*
 * Flag resynchronization after a membership change. Flags compare epochs
 * with >=, so every rank of the new connected set jumping to one common
 * epoch, above anything any of them wrote before, makes old and new ranks
 * agree without resetting memory that a peer may still read.
 */
#include "kernels/launch.cuh"
#include "kernels/sync.cuh"

__global__ void resync_kernel(vmep_ll_params p, vmep_ll_rank_set connected,
                              uint64_t base) {
  const size_t offsets[4] = {p.layout.disp_ready, p.layout.disp_ack,
                             p.layout.comb_ready, p.layout.comb_ack};
  if (threadIdx.x == 0)
    for (int b = 0; b < 2; b++) {
      p.state->disp_epoch[b] = base;
      p.state->comb_epoch[b] = base;
    }
  for (int peer = threadIdx.x; peer < p.num_ranks; peer += blockDim.x) {
    if (!(connected.bits[peer / 32] & (1u << (peer % 32))))
      continue;
    for (int f = 0; f < 4; f++)
      for (int b = 0; b < 2; b++)
        ll_store_release(
            ll_flag(p.peers[peer], offsets[f], b, p.num_ranks, p.rank), base);
  }
  __threadfence_system();
}

extern "C" vmep_status vmep__ll_resync(const struct vmep_ll_params *p,
                                       const struct vmep_ll_rank_set *connected,
                                       uint64_t base, void *stream) {
  resync_kernel<<<1, 256, 0, (cudaStream_t)stream>>>(*p, *connected, base);
  return ll_launched("resync_kernel");
}
