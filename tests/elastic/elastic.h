/*
 * tests/elastic: runs an elastic plan (plan.h) on one machine. The driver
 * (driver.c) hosts the store, starts a process per rank, kills the plan's
 * victims and collects each survivor's verdict; the ranks (rank.cu) join
 * the job with vmep_group_join, change membership at each phase and check
 * every dispatch and combine against the host reference over the ranks
 * that were live. Ranks and driver talk through the store under "el/".
 */
#ifndef VMEP_ELASTIC_H
#define VMEP_ELASTIC_H

#include <stdint.h>

#include "plan.h"

/* What a survivor reports at the end of a phase ("el/done/<p>/<rank>"). */
struct elastic_result {
  int32_t ok;            /* 1: every check passed */
  int32_t victim_masked; /* the phase's victim is masked here (or none) */
  int32_t error_bits;    /* vmep_ep_poll_errors over the phase */
  int32_t pad;
  int64_t mismatches;    /* elements that differ from the reference */
  double fault_call_ms;  /* the dispatch + combine the victim died in */
  double max_call_ms;    /* slowest dispatch + combine of the phase */
  double returned_at_ms; /* CLOCK_MONOTONIC when the fault call returned */
  int64_t fds;           /* open fds at the end of the phase */
  int64_t rss_kb;        /* resident set at the end of the phase */
  char message[256];     /* the first failure, or "" */
};

/* Milliseconds of CLOCK_MONOTONIC (the same clock in every process). */
double elastic_now_ms(void);

/* The fault round of a phase with a victim: the one before the last, so
 * that one round follows it with the victim dead but still connected. */
static inline int elastic_fault_round(const struct plan *p) {
  return p->iters - 2;
}

/* A rank's process: joins, runs phases from `first` on. Returns the exit
 * status. */
#ifdef __cplusplus
extern "C"
#endif
    int
    elastic_rank_main(const struct plan *plan, int rank, int first,
                      uint64_t seed);

#endif
