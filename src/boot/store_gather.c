/*
 * Allgatherv over the store, the collective every store-backed group
 * operation is built on: each rank writes its payload under keys of the
 * current round, then waits for and reads every rank's. A payload is cut
 * into parts of PART_BYTES, so any size fits the store's value limit; part
 * 0 starts with the payload's size. Keys do not pile up: at round s each
 * rank deletes its own keys of round s-2, which every rank has read by
 * then (reaching round s-1 needs every rank's keys of s-1, and a rank sets
 * those only after it finished s-2).
 */
#include <stdio.h>
#include <string.h>

#include "boot/boot.h"
#include "store/store.h"

#define PART_BYTES ((size_t)1 << 20)
#define HEADER_BYTES 8
#define FIRST_BYTES (PART_BYTES - HEADER_BYTES) /* payload in part 0 */
#define KEY_BYTES 64

static size_t parts_of(uint64_t bytes) {
  return bytes <= FIRST_BYTES
             ? 1
             : 1 + (size_t)((bytes - FIRST_BYTES + PART_BYTES - 1) /
                            PART_BYTES);
}

static void part_key(char *key, uint64_t round, int rank, size_t part) {
  snprintf(key, KEY_BYTES, "vmep/%llu/rank%d/part%zu",
           (unsigned long long)round, rank, part);
}

/* Deletes this rank's keys of round - 2. */
static vmep_status delete_old(struct vmep_store_gather *x) {
  char key[KEY_BYTES];
  if (x->round < 2)
    return VMEP_OK;
  for (size_t p = 0; p < x->parts[x->round % 2]; p++) {
    part_key(key, x->round - 2, x->rank, p);
    vmep_status status = vmep__store_delete(x->client, key, NULL);
    if (status != VMEP_OK)
      return status;
  }
  return VMEP_OK;
}

static vmep_status put_parts(struct vmep_store_gather *x, const void *send,
                             size_t bytes) {
  char key[KEY_BYTES];
  size_t first = bytes < FIRST_BYTES ? bytes : FIRST_BYTES;
  unsigned char *part0 = vmep__malloc(HEADER_BYTES + first);
  if (!part0)
    return vmep__fail(VMEP_ERR_OUT_OF_MEMORY, VMEP_LOG_ERROR,
                      "allgatherv: no memory for %zu bytes", first);
  vmep__le_put(part0, bytes, HEADER_BYTES);
  if (bytes)
    memcpy(part0 + HEADER_BYTES, send, first);
  part_key(key, x->round, x->rank, 0);
  vmep_status status =
      vmep__store_set(x->client, key, part0, HEADER_BYTES + first);
  vmep__free(part0);
  const unsigned char *rest = (const unsigned char *)send + first;
  for (size_t p = 1; status == VMEP_OK && p < parts_of(bytes); p++) {
    size_t off = (p - 1) * PART_BYTES;
    size_t n =
        bytes - first - off < PART_BYTES ? bytes - first - off : PART_BYTES;
    part_key(key, x->round, x->rank, p);
    status = vmep__store_set(x->client, key, rest + off, n);
  }
  return status;
}

/* What the value callbacks fill in. */
struct gather {
  const struct vmep_store_gather *x;
  unsigned char *recv;
  size_t capacity;
  size_t *sizes;   /* [size] */
  size_t *offsets; /* [size]: where each rank's payload starts in recv */
  size_t total;    /* bytes of all payloads, while it fits a size_t */
  int overflow;    /* the total does not fit */
  int *part_rank;  /* later parts: the rank and part of key i */
  size_t *part_num;
};

static vmep_status corrupt(int rank, size_t part) {
  return vmep__fail(VMEP_ERR_PEER, VMEP_LOG_ERROR,
                    "allgatherv: rank %d's part %zu in the store is "
                    "malformed",
                    rank, part);
}

static vmep_status take_first(void *user, size_t r, const void *value,
                              size_t len) {
  struct gather *g = user;
  const unsigned char *v = value;
  uint64_t size = len >= HEADER_BYTES ? vmep__le_get(v, HEADER_BYTES) : 0;
  if (len < HEADER_BYTES ||
      len - HEADER_BYTES != (size < FIRST_BYTES ? size : FIRST_BYTES))
    return corrupt((int)r, 0);
  g->sizes[r] = (size_t)size;
  g->offsets[r] = g->total;
  if (size > (uint64_t)(SIZE_MAX - g->total))
    g->overflow = 1;
  else
    g->total += (size_t)size;
  if (!g->overflow && g->total <= g->capacity && len > HEADER_BYTES)
    memcpy(g->recv + g->offsets[r], v + HEADER_BYTES, len - HEADER_BYTES);
  return VMEP_OK;
}

static vmep_status take_rest(void *user, size_t i, const void *value,
                             size_t len) {
  struct gather *g = user;
  int r = g->part_rank[i];
  size_t p = g->part_num[i];
  size_t off = FIRST_BYTES + (p - 1) * PART_BYTES;
  size_t want = g->sizes[r] - off < PART_BYTES ? g->sizes[r] - off : PART_BYTES;
  if (len != want)
    return corrupt(r, p);
  memcpy(g->recv + g->offsets[r] + off, value, len);
  return VMEP_OK;
}

/* Reads the parts after part 0 of every rank. */
static vmep_status fetch_rest(struct gather *g) {
  const struct vmep_store_gather *x = g->x;
  size_t count = 0;
  for (int r = 0; r < x->size; r++)
    count += parts_of(g->sizes[r]) - 1;
  if (count == 0)
    return VMEP_OK;
  char *text = vmep__malloc(count * KEY_BYTES);
  const char **keys = vmep__calloc(count, sizeof(*keys));
  g->part_rank = vmep__calloc(count, sizeof(*g->part_rank));
  g->part_num = vmep__calloc(count, sizeof(*g->part_num));
  vmep_status status = VMEP_OK;
  if (!text || !keys || !g->part_rank || !g->part_num) {
    status = vmep__fail(VMEP_ERR_OUT_OF_MEMORY, VMEP_LOG_ERROR,
                        "allgatherv: no memory for %zu keys", count);
  } else {
    size_t i = 0;
    for (int r = 0; r < x->size; r++)
      for (size_t p = 1; p < parts_of(g->sizes[r]); p++, i++) {
        keys[i] = text + i * KEY_BYTES;
        part_key(text + i * KEY_BYTES, x->round, r, p);
        g->part_rank[i] = r;
        g->part_num[i] = p;
      }
    status = vmep__store_wait_get(x->client, keys, count, -1, take_rest, g);
  }
  vmep__free(g->part_num);
  vmep__free(g->part_rank);
  vmep__free(keys);
  vmep__free(text);
  return status;
}

/* Reads every rank's payload of this round into g. */
static vmep_status fetch_all(struct gather *g) {
  const struct vmep_store_gather *x = g->x;
  char *text = vmep__malloc((size_t)x->size * KEY_BYTES);
  const char **keys = vmep__calloc((size_t)x->size, sizeof(*keys));
  vmep_status status = VMEP_OK;
  if (!text || !keys)
    status = vmep__fail(VMEP_ERR_OUT_OF_MEMORY, VMEP_LOG_ERROR,
                        "allgatherv: no memory for %d keys", x->size);
  for (int r = 0; status == VMEP_OK && r < x->size; r++) {
    keys[r] = text + (size_t)r * KEY_BYTES;
    part_key(text + (size_t)r * KEY_BYTES, x->round, r, 0);
  }
  if (status == VMEP_OK)
    status = vmep__store_wait_get(x->client, keys, (size_t)x->size, -1,
                                  take_first, g);
  vmep__free(keys);
  vmep__free(text);
  if (status == VMEP_OK && (g->overflow || g->total > g->capacity))
    return vmep__fail(VMEP_ERR_INVALID_ARG, VMEP_LOG_ERROR,
                      "allgatherv: the ranks send %s%zu bytes in all, more "
                      "than recv_capacity %zu",
                      g->overflow ? "over " : "", g->total, g->capacity);
  return status == VMEP_OK ? fetch_rest(g) : status;
}

vmep_status vmep__store_allgatherv(struct vmep_store_gather *x,
                                   const void *send, size_t bytes, void *recv,
                                   size_t recv_capacity, size_t *sizes_out) {
  struct gather g = {
      .x = x, .recv = recv, .capacity = recv_capacity, .sizes = sizes_out};
  g.offsets = vmep__calloc((size_t)x->size, sizeof(*g.offsets));
  if (!g.offsets)
    return vmep__fail(VMEP_ERR_OUT_OF_MEMORY, VMEP_LOG_ERROR,
                      "allgatherv: no memory for %d offsets", x->size);
  vmep_status status = delete_old(x);
  if (status == VMEP_OK)
    status = put_parts(x, send, bytes);
  x->parts[x->round % 2] = parts_of(bytes);
  if (status == VMEP_OK)
    status = fetch_all(&g);
  x->round++;
  vmep__free(g.offsets);
  return status;
}
