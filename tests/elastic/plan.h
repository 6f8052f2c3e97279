/*
 * Elastic plans: what tests/elastic's driver runs. A plan is a JSON object
 *   {"max_ranks": 4, "iters": 3, "timeout_ms": 3000, "repeat": 1,
 *    "phases": [[0, 1], [0, 1, 2, 3], {"ranks": [0, 1, 2, -3],
 *               "fault": "combine"}, [0, 1, 2]]}
 * Each phase lists its live ranks; a negative entry -r (or "-0" for rank 0)
 * is rank r killed with SIGKILL during the phase, in the middle of a
 * dispatch (the default) or of a combine ("fault"). "repeat" runs the
 * phases after the first that many times. Unknown keys are refused, so a
 * typo cannot silently change a plan.
 */
#ifndef VMEP_ELASTIC_PLAN_H
#define VMEP_ELASTIC_PLAN_H

#include <stddef.h>

#define PLAN_MAX_RANKS 64
#define PLAN_MAX_PHASES 256

enum plan_fault { PLAN_FAULT_DISPATCH = 0, PLAN_FAULT_COMBINE = 1 };

struct plan_phase {
  int n;                     /* ranks in the phase */
  int ranks[PLAN_MAX_RANKS]; /* rank ids, ascending */
  int victim;                /* rank killed during the phase, or -1 */
  enum plan_fault fault;
};

struct plan {
  int max_ranks;  /* 1..PLAN_MAX_RANKS */
  int iters;      /* dispatch + combine rounds per phase, 1..100 */
  int timeout_ms; /* the EP buffer's timeout, 100..600000 (default 3000) */
  int nphases;
  struct plan_phase phases[PLAN_MAX_PHASES];
};

/*
 * Parses text[0..len) into *plan. Returns 0, or -1 with error[cap] naming
 * the problem and its byte offset. Checks: ranks in 0..max_ranks-1, no
 * rank twice in a phase, at most one killed rank per phase, at least two
 * ranks alive after the kill, a killed rank absent from the next phase
 * (its id can come back later, as a new process).
 */
int plan_parse(const char *text, size_t len, struct plan *plan, char *error,
               size_t cap);

#endif
