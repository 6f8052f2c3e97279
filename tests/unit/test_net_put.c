/*
 * The engine's puts with real UCX between processes on host memory: every
 * rank puts seeded random bytes into every peer's registered buffer
 * (poisoned first) and raises the peer's signal word for it (put + signal);
 * the receiver polls the signal, then checks every byte of its slot, the
 * poison after the data included. Rounds of 1 B to 4 MiB, some as several
 * back-to-back puts and one signal-only put after them, signals set or
 * added. Usage: test_net_put [ranks] (default 2).
 */
#include "test_net_util.h"

#define SLOT_BYTES (4u << 20) /* what one sender may write per round */
#define POISON 0xA5
#define ROUNDS 24

static uint64_t seed;

/* Sizes of the rounds: fixed edges first, then random ones. */
static size_t round_bytes(int round) {
  static const size_t fixed[] = {
      1, 7, 8, 64, 4095, 4096, 65537, 1u << 20, SLOT_BYTES - 1, SLOT_BYTES};
  if (round < (int)VMEP_ARRAY_SIZE(fixed))
    return fixed[round];
  uint64_t h = vmep__bytes_hash(&round, sizeof(round)) ^ seed;
  return 1 + (size_t)(h % SLOT_BYTES);
}

/* The byte a sender puts at offset i of round `round` toward `dst`. */
static void fill(unsigned char *out, size_t bytes, int round, int src,
                 int dst) {
  uint64_t s =
      seed ^ ((uint64_t)round << 40) ^ ((uint64_t)src << 20) ^ (uint64_t)dst;
  for (size_t i = 0; i < bytes; i++) {
    if (i % 8 == 0) {
      s ^= s >> 12;
      s ^= s << 25;
      s ^= s >> 27;
    }
    out[i] = (unsigned char)((s * 2685821657736338717ull) >> (8 * (i % 8)));
  }
}

struct rank_state {
  int rank, size, fd;
  vmep_engine *engine;
  unsigned char *recv; /* size slots, then size signal words */
  size_t recv_bytes;
  unsigned char *send[NET_MAX_RANKS];
  unsigned char *expect;
  vmep_engine_rkey *peer_key[NET_MAX_RANKS];
  uint64_t peer_base[NET_MAX_RANKS];
};

static volatile uint64_t *signal_word(struct rank_state *s, int src) {
  return (volatile uint64_t *)(s->recv + (size_t)s->size * SLOT_BYTES +
                               8 * (size_t)src);
}

static void exchange_keys(struct rank_state *s, vmep_engine_mr *mr) {
  size_t len = 0;
  const void *blob = vmep__engine_mr_blob(mr, &len);
  void *all[NET_MAX_RANKS];
  uint32_t lens[NET_MAX_RANKS];
  net_allgather(s->fd, s->size, s->engine, blob, (uint32_t)len, all, lens);
  for (int r = 0; r < s->size; r++) {
    if (r != s->rank) {
      ASSERT_OK(vmep__engine_rkey_unpack(s->engine, r, all[r], lens[r],
                                         &s->peer_key[r]));
      s->peer_base[r] = vmep__engine_rkey_base(s->peer_key[r]);
    }
    free(all[r]);
  }
}

/* Sends round `round` to `dst`: one put + signal, or (odd rounds) four
 * back-to-back puts and a signal-only put + signal; even rounds set the
 * signal to round+1, odd rounds add 1 to it. */
static void send_round(struct rank_state *s, int round, int dst) {
  size_t bytes = round_bytes(round);
  fill(s->send[dst], bytes, round, s->rank, dst);
  uint64_t slot = s->peer_base[dst] + (uint64_t)s->rank * SLOT_BYTES;
  uint64_t sig = s->peer_base[dst] + (uint64_t)s->size * SLOT_BYTES +
                 8 * (uint64_t)s->rank;
  vmep_engine_rkey *key = s->peer_key[dst];
  if (round % 2 == 0) {
    ASSERT_OK(vmep__engine_put_signal(s->engine, dst, s->send[dst], bytes, key,
                                      slot, key, sig, VMEP_ENGINE_SIGNAL_SET,
                                      (uint64_t)round + 1));
    return;
  }
  size_t done = 0;
  for (int piece = 0; piece < 4 && done < bytes; piece++) {
    size_t n = piece == 3 ? bytes - done : (bytes + 3) / 4;
    if (n > bytes - done)
      n = bytes - done;
    ASSERT_OK(vmep__engine_put(s->engine, dst, s->send[dst] + done, n, key,
                               slot + done));
    done += n;
  }
  ASSERT_OK(vmep__engine_put_signal(s->engine, dst, NULL, 0, NULL, 0, key, sig,
                                    VMEP_ENGINE_SIGNAL_ADD, 1));
}

/* Waits for src's signal of `round`, then checks the slot byte by byte. */
static void check_round(struct rank_state *s, int round, int src) {
  uint64_t deadline = vmep__now_ms() + 20000;
  while (*signal_word(s, src) != (uint64_t)round + 1) {
    if (vmep__now_ms() > deadline)
      TEST_FAIL("rank %d: round %d: no signal from rank %d (word %llu)",
                s->rank, round, src, (unsigned long long)*signal_word(s, src));
    vmep__engine_progress(s->engine);
  }
  size_t bytes = round_bytes(round);
  const unsigned char *got = s->recv + (size_t)src * SLOT_BYTES;
  fill(s->expect, bytes, round, src, s->rank);
  for (size_t i = 0; i < SLOT_BYTES; i++) {
    int want = i < bytes ? s->expect[i] : POISON;
    if (got[i] != want)
      TEST_FAIL("rank %d: round %d (%zu B) from rank %d: byte %zu is 0x%02x, "
                "expected 0x%02x",
                s->rank, round, bytes, src, i, got[i], want);
  }
}

static int run_rank(int rank, int size, int fd) {
  struct rank_state s = {.rank = rank, .size = size, .fd = fd};
  struct vmep_engine_params params = {
      .rank = rank, .size = size, .timeout_ms = 20000};
  ASSERT_OK(vmep__engine_create(&params, &s.engine));
  s.recv_bytes = (size_t)size * SLOT_BYTES + 8 * (size_t)size;
  s.recv = calloc(1, s.recv_bytes);
  s.expect = malloc(SLOT_BYTES);
  ASSERT_TRUE(s.recv && s.expect);
  for (int r = 0; r < size; r++) {
    s.send[r] = malloc(SLOT_BYTES);
    ASSERT_TRUE(s.send[r]);
  }
  vmep_engine_mr *mr = NULL;
  ASSERT_OK(vmep__engine_mem_reg(s.engine, s.recv, s.recv_bytes, 0, &mr));
  net_connect_all(s.engine, fd, rank, size);
  exchange_keys(&s, mr);
  for (int round = 0; round < ROUNDS; round++) {
    memset(s.recv, POISON, (size_t)size * SLOT_BYTES);
    net_barrier(fd, size,
                s.engine); /* every slot poisoned before anyone puts */
    for (int k = 1; k < size; k++)
      send_round(&s, round, (rank + k) % size);
    for (int k = 1; k < size; k++)
      check_round(&s, round, (rank + size - k) % size);
    ASSERT_OK(vmep__engine_flush(s.engine, -1, 0));
  }
  net_barrier(fd, size, s.engine); /* every check done before keys go */
  for (int r = 0; r < size; r++)
    vmep__engine_rkey_release(s.engine, s.peer_key[r]);
  vmep__engine_mem_dereg(s.engine, mr);
  net_barrier(fd, size,
              s.engine); /* nobody closes while a peer still flushes */
  vmep__engine_destroy(s.engine);
  for (int r = 0; r < size; r++)
    free(s.send[r]);
  free(s.recv);
  free(s.expect);
  return 0;
}

int main(int argc, char **argv) {
  int size = argc > 1 ? atoi(argv[1]) : 2;
  net_test_env();
  seed = test_seed("test_net_put");
  printf("%d ranks, %d rounds of 1 B .. %u B\n", size, ROUNDS, SLOT_BYTES);
  struct net_job job;
  net_job_start(&job, size, run_rank);
  net_job_finish(&job);
  printf("test_net_put: ok\n");
  return 0;
}
