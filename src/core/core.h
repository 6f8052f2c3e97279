/*
 * core: the layer below all others. Status and last-error text, the
 * logger, the host allocator indirection (so tests can inject malloc
 * faults), the table of configuration variables, a monotonic clock for
 * deadlines and byte helpers (core/bytes.h). Includes nothing of the other
 * layers.
 */
#ifndef VMEP_CORE_H
#define VMEP_CORE_H

#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include "core/bytes.h"
#include "vmep.h"

/* ---- logging ---------------------------------------------------------- */

enum vmep_log_level {
  VMEP_LOG_ERROR = 0,
  VMEP_LOG_WARN = 1,
  VMEP_LOG_INFO = 2,
  VMEP_LOG_DEBUG = 3
};

/* Nonzero when records of `level` are written (VMEP_LOG, default warn). */
int vmep__log_enabled(int level);

/* Writes one record to stderr with a single write(): "vmep[rank N] warn: "
 * (plus file:line at debug level) then the text. Never touches stdout. */
void vmep__log(int level, const char *file, int line, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

/* An invalid VMEP_LOG is reported once on stderr by the logger, unless a
 * caller was already given the error (vmep__config_check): then this marks
 * it reported, so it is not said twice. */
void vmep__log_level_reported(void);

/* The rank shown in the log prefix; -1 (the default) shows the pid. */
void vmep__log_set_rank(int rank);

#define vmep_log_error(...)                                                    \
  do {                                                                         \
    if (vmep__log_enabled(VMEP_LOG_ERROR))                                     \
      vmep__log(VMEP_LOG_ERROR, __FILE__, __LINE__, __VA_ARGS__);              \
  } while (0)
#define vmep_log_warn(...)                                                     \
  do {                                                                         \
    if (vmep__log_enabled(VMEP_LOG_WARN))                                      \
      vmep__log(VMEP_LOG_WARN, __FILE__, __LINE__, __VA_ARGS__);               \
  } while (0)
#define vmep_log_info(...)                                                     \
  do {                                                                         \
    if (vmep__log_enabled(VMEP_LOG_INFO))                                      \
      vmep__log(VMEP_LOG_INFO, __FILE__, __LINE__, __VA_ARGS__);               \
  } while (0)
#define vmep_log_debug(...)                                                    \
  do {                                                                         \
    if (vmep__log_enabled(VMEP_LOG_DEBUG))                                     \
      vmep__log(VMEP_LOG_DEBUG, __FILE__, __LINE__, __VA_ARGS__);              \
  } while (0)

/* ---- errors ----------------------------------------------------------- */

/*
 * Records a failure where it is first detected: formats the message into
 * the thread's last-error buffer and returns `status`, so that the
 * detection site reads `return vmep__fail(...)`. Callers that only
 * propagate a status do not call it again. The caller reports the error
 * (vmep_last_error()), so it reaches stderr here only when VMEP_LOG asks
 * for returned errors: at info or debug, as a record of `level` (or of
 * info when `level` is lower), never twice by default.
 */
vmep_status vmep__fail(vmep_status status, int level, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* Same as vmep__fail for a failed system call: appends ": <strerror(err)>"
 * and returns VMEP_ERR_SYSTEM. */
vmep_status vmep__fail_errno(int err, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

/* Replaces the thread's last-error text without logging (used to restore a
 * cached message, e.g. the driver's load failure). */
void vmep__set_last_error(const char *text);

/* ---- host allocation -------------------------------------------------- */

/* All host memory of the library goes through these, so tests can fail the
 * n-th allocation. vmep__calloc zeroes. vmep__free(NULL) is a no-op. */
void *vmep__malloc(size_t bytes);
void *vmep__calloc(size_t count, size_t bytes);
void vmep__free(void *ptr);

struct vmep_allocator {
  void *(*malloc_fn)(size_t bytes);
  void (*free_fn)(void *ptr);
};

/* Tests only: routes vmep__malloc/vmep__free through `allocator`; NULL
 * restores the C library's. Not thread-safe against concurrent
 * allocations. */
void vmep__allocator_install(const struct vmep_allocator *allocator);

/* ---- configuration ---------------------------------------------------- */

/* Every environment variable vmep reads, as one list: (id, name, default,
 * rule, doc). The rule is what vmep__config_check accepts: "a|b|c" one of
 * these words, "MIN..MAX" a decimal integer in that range, "" any text.
 * vmep-info --config prints them and checks each value against its rule;
 * a test checks README's table. */
#define VMEP_CONFIG_ROWS(X)                                                    \
  X(LOG, "VMEP_LOG", "warn", "error|warn|info|debug",                          \
    "log level on stderr: error, warn, info or debug")                         \
  X(MEM_SHARE, "VMEP_MEM_SHARE", "auto", "auto|fabric|posix_fd|legacy",        \
    "memory sharing strategy: auto (fabric, then posix_fd, then legacy), "     \
    "fabric, posix_fd or legacy")                                              \
  X(TIMEOUT_MS, "VMEP_TIMEOUT_MS", "300000", "1..2147483647",                  \
    "milliseconds any wait for a peer may take before VMEP_ERR_TIMEOUT")       \
  X(JOB_TOKEN, "VMEP_JOB_TOKEN", "", "",                                       \
    "secret every store and fd-passing connection must present "               \
    "(vmep-run generates one)")                                                \
  X(JOB_ID, "VMEP_JOB_ID", "", "",                                             \
    "names the job's Unix sockets (vmep-run sets it; default: the store "      \
    "address)")                                                                \
  X(RANK, "VMEP_RANK", "", "0..2147483647",                                    \
    "this process's rank (set by vmep-run)")                                   \
  X(WORLD_SIZE, "VMEP_WORLD_SIZE", "", "1..2147483647",                        \
    "number of ranks (set by vmep-run)")                                       \
  X(LOCAL_RANK, "VMEP_LOCAL_RANK", "", "0..2147483647",                        \
    "rank within this node (set by vmep-run)")                                 \
  X(STORE_ADDR, "VMEP_STORE_ADDR", "", "",                                     \
    "host:port of the job's TCP store (set by vmep-run)")                      \
  X(DEVICE, "VMEP_DEVICE", "", "0..2147483647",                                \
    "CUDA device ordinal of this rank (set by vmep-run; default: local rank "  \
    "modulo the device count)")                                                \
  X(NODES, "VMEP_NODES", "0", "0..65536",                                      \
    "pretend nodes: N > 0 splits the ranks of one host into N nodes, rank r "  \
    "in node r * N / ranks, whose peers are never mapped (vmep-run --nodes "   \
    "sets it); 0: nodes from host identity")

enum vmep_config_id {
#define VMEP_CONFIG_ENUM(id, name, def, rule, doc) VMEP_CONFIG_##id,
  VMEP_CONFIG_ROWS(VMEP_CONFIG_ENUM)
#undef VMEP_CONFIG_ENUM
      VMEP_CONFIG_COUNT
};

/* The variable's value from the environment, or its default when unset or
 * empty. Never NULL. */
const char *vmep__config_get(enum vmep_config_id id);

/* The variable's name, e.g. "VMEP_MEM_SHARE". */
const char *vmep__config_name(enum vmep_config_id id);

/*
 * Checks the variable's value (or its default when unset or empty) against
 * its row's rule. VMEP_OK, or VMEP_ERR_INVALID_ARG with a last error that
 * names the variable, its value and what is allowed, e.g.
 * `VMEP_LOG="bogus": expected one of error|warn|info|debug`. An unset
 * variable with an empty default is valid (absent).
 */
vmep_status vmep__config_check(enum vmep_config_id id);

/* What the variable's rule allows, as text ("one of a|b", "an integer in
 * 1..9", "any text"), written into out[bytes]; returns out. */
const char *vmep__config_allowed(enum vmep_config_id id, char *out,
                                 size_t bytes);

/*
 * Parses the variable as one of `choices` (a NULL-terminated list) and
 * stores its index in *index_out. The value is first checked against the
 * table (vmep__config_check); an unknown value gives VMEP_ERR_INVALID_ARG
 * naming the variable and the accepted values.
 */
vmep_status vmep__config_choice(enum vmep_config_id id,
                                const char *const *choices, int *index_out);

/*
 * Parses the variable as a decimal integer in [min, max] into *value_out,
 * after checking it against the table's range (vmep__config_check).
 * VMEP_ERR_INVALID_ARG naming the variable and the range otherwise; an
 * unset variable with an empty default is VMEP_ERR_INVALID_ARG too, so
 * callers check vmep__config_get(id)[0] first when it is optional.
 */
vmep_status vmep__config_int(enum vmep_config_id id, long long min,
                             long long max, long long *value_out);

/* ---- deadlines (deadline.c) ------------------------------------------- */

/* Milliseconds of a monotonic clock. */
uint64_t vmep__now_ms(void);
/* Milliseconds until deadline_ms (0 when past), capped to INT_MAX. */
int vmep__ms_left(uint64_t deadline_ms);

/* ---- small helpers ---------------------------------------------------- */

#define VMEP_ARRAY_SIZE(a) (sizeof(a) / sizeof((a)[0]))

/* Rounds `value` up to a multiple of `align` (> 0); 0 on overflow. */
static inline size_t vmep__round_up(size_t value, size_t align) {
  size_t rest = value % align;
  if (rest == 0)
    return value;
  if (value > (size_t)-1 - (align - rest))
    return 0;
  return value + (align - rest);
}

#endif /* VMEP_CORE_H */
