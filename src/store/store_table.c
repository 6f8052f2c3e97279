/*
 * The store's key-value table: a chained hash table of byte-string keys
 * and values, grown by doubling so that lookups stay O(1) while the group
 * collectives add and delete n keys per round. Only the server thread
 * touches it; it owns copies of every key and value.
 */
#include <string.h>

#include "store/store.h"

struct entry {
  struct entry *next;
  uint64_t hash;
  unsigned char *value;
  size_t value_len;
  size_t key_len;
  unsigned char key[]; /* key_len bytes */
};

struct vmep_store_table {
  struct entry **buckets;
  size_t nbuckets; /* a power of two */
  size_t count;
};

static struct entry **find_slot(const struct vmep_store_table *t,
                                const unsigned char *key, size_t len,
                                uint64_t hash) {
  struct entry **slot = &t->buckets[hash & (t->nbuckets - 1)];
  while (*slot && !((*slot)->hash == hash && (*slot)->key_len == len &&
                    memcmp((*slot)->key, key, len) == 0))
    slot = &(*slot)->next;
  return slot;
}

vmep_status vmep__store_table_create(struct vmep_store_table **table_out) {
  struct vmep_store_table *t = vmep__calloc(1, sizeof(*t));
  if (t)
    t->buckets = vmep__calloc(64, sizeof(*t->buckets));
  if (!t || !t->buckets) {
    vmep__free(t);
    return vmep__fail(VMEP_ERR_OUT_OF_MEMORY, VMEP_LOG_ERROR,
                      "store: no memory for the key table");
  }
  t->nbuckets = 64;
  *table_out = t;
  return VMEP_OK;
}

void vmep__store_table_destroy(struct vmep_store_table *t) {
  if (!t)
    return;
  for (size_t b = 0; b < t->nbuckets; b++) {
    struct entry *e = t->buckets[b];
    while (e) {
      struct entry *next = e->next;
      vmep__free(e->value);
      vmep__free(e);
      e = next;
    }
  }
  vmep__free(t->buckets);
  vmep__free(t);
}

int vmep__store_table_get(const struct vmep_store_table *t,
                          struct vmep_store_bytes key,
                          struct vmep_store_bytes *value_out) {
  const struct entry *e =
      *find_slot(t, key.data, key.len, vmep__bytes_hash(key.data, key.len));
  if (!e)
    return 0;
  if (value_out) {
    value_out->data = e->value;
    value_out->len = e->value_len;
  }
  return 1;
}

/* Doubles the bucket array; on failure the table keeps its old one (only
 * slower). */
static void grow(struct vmep_store_table *t) {
  size_t n = t->nbuckets * 2;
  struct entry **buckets = vmep__calloc(n, sizeof(*buckets));
  if (!buckets)
    return;
  for (size_t b = 0; b < t->nbuckets; b++) {
    struct entry *e = t->buckets[b];
    while (e) {
      struct entry *next = e->next;
      e->next = buckets[e->hash & (n - 1)];
      buckets[e->hash & (n - 1)] = e;
      e = next;
    }
  }
  vmep__free(t->buckets);
  t->buckets = buckets;
  t->nbuckets = n;
}

vmep_status vmep__store_table_set(struct vmep_store_table *t,
                                  struct vmep_store_bytes key,
                                  struct vmep_store_bytes value) {
  uint64_t hash = vmep__bytes_hash(key.data, key.len);
  struct entry **slot = find_slot(t, key.data, key.len, hash);
  unsigned char *copy = vmep__malloc(value.len ? value.len : 1);
  struct entry *e = *slot;
  if (copy && !e)
    e = vmep__malloc(sizeof(*e) + key.len);
  if (!copy || !e) {
    vmep__free(copy);
    return vmep__fail(VMEP_ERR_OUT_OF_MEMORY, VMEP_LOG_WARN,
                      "store: no memory for a value of %zu bytes", value.len);
  }
  if (value.len)
    memcpy(copy, value.data, value.len);
  if (*slot) {
    vmep__free(e->value);
  } else {
    e->next = NULL;
    e->hash = hash;
    e->key_len = key.len;
    if (key.len)
      memcpy(e->key, key.data, key.len);
    *slot = e;
    if (++t->count > t->nbuckets)
      grow(t);
  }
  e->value = copy;
  e->value_len = value.len;
  return VMEP_OK;
}

int vmep__store_table_delete(struct vmep_store_table *t,
                             struct vmep_store_bytes key) {
  struct entry **slot =
      find_slot(t, key.data, key.len, vmep__bytes_hash(key.data, key.len));
  struct entry *e = *slot;
  if (!e)
    return 0;
  *slot = e->next;
  vmep__free(e->value);
  vmep__free(e);
  t->count--;
  return 1;
}

size_t vmep__store_table_count(const struct vmep_store_table *t) {
  return t->count;
}
