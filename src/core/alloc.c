/*
 * Host allocation indirection. Every host allocation of the library goes
 * through vmep__malloc / vmep__free so that the fault tests can fail the
 * n-th one and check that each failure path releases what it took.
 */
#include <stdlib.h>
#include <string.h>

#include "core/core.h"

static const struct vmep_allocator libc_allocator = {malloc, free};
static const struct vmep_allocator *allocator = &libc_allocator;

void vmep__allocator_install(const struct vmep_allocator *replacement) {
  allocator = replacement ? replacement : &libc_allocator;
}

void *vmep__malloc(size_t bytes) { return allocator->malloc_fn(bytes); }

void *vmep__calloc(size_t count, size_t bytes) {
  if (bytes != 0 && count > (size_t)-1 / bytes)
    return NULL;
  void *ptr = allocator->malloc_fn(count * bytes);
  if (ptr)
    memset(ptr, 0, count * bytes);
  return ptr;
}

void vmep__free(void *ptr) {
  if (ptr)
    allocator->free_fn(ptr);
}
