/*
 * A strict parser for elastic plans (plan.h): a small recursive-descent
 * JSON reader that accepts exactly the plan's shape, with depth and size
 * limits, and reports the first problem with its offset.
 */
#include "plan.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct reader {
  const char *s;
  size_t len, at;
  char *error;
  size_t cap;
  int failed;
};

static int fail(struct reader *r, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

static int fail(struct reader *r, const char *fmt, ...) {
  if (!r->failed) {
    char what[160];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(what, sizeof(what), fmt, ap);
    va_end(ap);
    snprintf(r->error, r->cap, "plan, byte %zu: %s", r->at, what);
    r->failed = 1;
  }
  return -1;
}

static void skip_space(struct reader *r) {
  while (r->at < r->len && strchr(" \t\r\n", r->s[r->at]) && r->s[r->at])
    r->at++;
}

/* Consumes `c` after optional space; 0 when it is there. */
static int expect(struct reader *r, char c) {
  skip_space(r);
  if (r->at < r->len && r->s[r->at] == c) {
    r->at++;
    return 0;
  }
  return fail(r, "expected '%c'", c);
}

static int peek(struct reader *r, char c) {
  skip_space(r);
  return r->at < r->len && r->s[r->at] == c;
}

/* A string without escapes (keys and names), into out[cap]. */
static int read_string(struct reader *r, char *out, size_t cap) {
  size_t n = 0;
  if (expect(r, '"'))
    return -1;
  while (r->at < r->len && r->s[r->at] != '"') {
    char c = r->s[r->at++];
    if (c == '\\' || (unsigned char)c < 0x20)
      return fail(r, "escapes and control characters are not allowed");
    if (n + 1 >= cap)
      return fail(r, "string longer than %zu bytes", cap - 1);
    out[n++] = c;
  }
  out[n] = '\0';
  return r->at < r->len ? (r->at++, 0) : fail(r, "unterminated string");
}

/* An integer in [lo, hi]; *negative_out says whether it had a minus sign
 * (so "-0" is told from "0"). */
static int read_int(struct reader *r, long lo, long hi, long *out,
                    int *negative_out) {
  long v = 0;
  int negative = 0, digits = 0;
  skip_space(r);
  if (r->at < r->len && r->s[r->at] == '-') {
    negative = 1;
    r->at++;
  }
  while (r->at < r->len && r->s[r->at] >= '0' && r->s[r->at] <= '9') {
    if (v > 100000000)
      return fail(r, "number too large");
    v = v * 10 + (r->s[r->at++] - '0');
    digits++;
  }
  if (!digits)
    return fail(r, "expected an integer");
  if (r->at < r->len && strchr(".eE", r->s[r->at]) && r->s[r->at])
    return fail(r, "expected an integer, not a fraction");
  v = negative ? -v : v;
  if (v < lo || v > hi)
    return fail(r, "%ld is out of range %ld..%ld", v, lo, hi);
  *out = v;
  if (negative_out)
    *negative_out = negative;
  return 0;
}

/* Iterates the items of an array or the members of an object: returns 1
 * while there is another (after the comma), 0 at the end, -1 on error. */
static int next_item(struct reader *r, char close, int *first) {
  if (peek(r, close)) {
    r->at++;
    return 0;
  }
  if (!*first && expect(r, ','))
    return -1;
  *first = 0;
  return 1;
}

static int read_ranks(struct reader *r, struct plan *p, struct plan_phase *ph) {
  int first = 1, more;
  ph->n = 0;
  ph->victim = -1;
  if (expect(r, '['))
    return -1;
  while ((more = next_item(r, ']', &first)) == 1) {
    long v;
    int negative;
    if (read_int(r, -(long)(PLAN_MAX_RANKS - 1), PLAN_MAX_RANKS - 1, &v,
                 &negative))
      return -1;
    int rank = (int)(negative ? -v : v);
    if (rank >= p->max_ranks)
      return fail(r, "rank %d, expected 0..%d (max_ranks)", rank,
                  p->max_ranks - 1);
    if (ph->n == PLAN_MAX_RANKS)
      return fail(r, "too many ranks in a phase");
    for (int i = 0; i < ph->n; i++)
      if (ph->ranks[i] == rank)
        return fail(r, "rank %d twice in a phase", rank);
    if (negative && ph->victim >= 0)
      return fail(r, "two ranks killed in one phase");
    if (negative)
      ph->victim = rank;
    ph->ranks[ph->n++] = rank;
  }
  return more;
}

static int read_phase(struct reader *r, struct plan *p, struct plan_phase *ph) {
  ph->fault = PLAN_FAULT_DISPATCH;
  if (peek(r, '['))
    return read_ranks(r, p, ph);
  int first = 1, more, have_ranks = 0;
  if (expect(r, '{'))
    return -1;
  while ((more = next_item(r, '}', &first)) == 1) {
    char key[32], value[32];
    if (read_string(r, key, sizeof(key)) || expect(r, ':'))
      return -1;
    if (!strcmp(key, "ranks")) {
      if (read_ranks(r, p, ph))
        return -1;
      have_ranks = 1;
    } else if (!strcmp(key, "fault")) {
      if (read_string(r, value, sizeof(value)))
        return -1;
      if (!strcmp(value, "dispatch"))
        ph->fault = PLAN_FAULT_DISPATCH;
      else if (!strcmp(value, "combine"))
        ph->fault = PLAN_FAULT_COMBINE;
      else
        return fail(r, "fault \"%s\", expected \"dispatch\" or \"combine\"",
                    value);
    } else {
      return fail(r, "unknown phase key \"%s\"", key);
    }
  }
  if (more < 0)
    return -1;
  return have_ranks ? 0 : fail(r, "a phase needs \"ranks\"");
}

static int read_phases(struct reader *r, struct plan *p) {
  int first = 1, more;
  if (!p->max_ranks)
    return fail(r, "\"max_ranks\" must come before \"phases\"");
  if (expect(r, '['))
    return -1;
  while ((more = next_item(r, ']', &first)) == 1) {
    if (p->nphases == PLAN_MAX_PHASES)
      return fail(r, "more than %d phases", PLAN_MAX_PHASES);
    if (read_phase(r, p, &p->phases[p->nphases]))
      return -1;
    p->nphases++;
  }
  return more;
}

static int compare_int(const void *a, const void *b) {
  int x = *(const int *)a, y = *(const int *)b;
  return (x > y) - (x < y);
}

/* The rules across phases (plan.h). */
static int check(struct reader *r, struct plan *p) {
  if (p->nphases == 0)
    return fail(r, "no phases");
  for (int i = 0; i < p->nphases; i++) {
    struct plan_phase *ph = &p->phases[i];
    qsort(ph->ranks, (size_t)ph->n, sizeof(int), compare_int);
    if (ph->n - (ph->victim >= 0) < 2)
      return fail(r, "phase %d leaves fewer than 2 ranks alive", i);
    if (i > 0 && p->phases[i - 1].victim >= 0)
      for (int k = 0; k < ph->n; k++)
        if (ph->ranks[k] == p->phases[i - 1].victim)
          return fail(r,
                      "phase %d: rank %d was killed in phase %d; it can come "
                      "back one phase later at the earliest",
                      i, ph->ranks[k], i - 1);
  }
  return 0;
}

int plan_parse(const char *text, size_t len, struct plan *p, char *error,
               size_t cap) {
  struct reader r = {text, len, 0, error, cap, 0};
  int first = 1, more, repeat = 1;
  memset(p, 0, sizeof(*p));
  p->iters = 3;
  p->timeout_ms = 3000;
  if (expect(&r, '{'))
    return -1;
  while ((more = next_item(&r, '}', &first)) == 1) {
    char key[32];
    long v;
    if (read_string(&r, key, sizeof(key)) || expect(&r, ':'))
      return -1;
    if (!strcmp(key, "max_ranks")) {
      if (read_int(&r, 2, PLAN_MAX_RANKS, &v, NULL))
        return -1;
      p->max_ranks = (int)v;
    } else if (!strcmp(key, "iters")) {
      if (read_int(&r, 1, 100, &v, NULL))
        return -1;
      p->iters = (int)v;
    } else if (!strcmp(key, "timeout_ms")) {
      if (read_int(&r, 100, 600000, &v, NULL))
        return -1;
      p->timeout_ms = (int)v;
    } else if (!strcmp(key, "repeat")) {
      if (read_int(&r, 1, 100, &v, NULL))
        return -1;
      repeat = (int)v;
    } else if (!strcmp(key, "phases")) {
      if (read_phases(&r, p))
        return -1;
    } else {
      return fail(&r, "unknown key \"%s\"", key);
    }
  }
  if (more < 0)
    return -1;
  skip_space(&r);
  if (r.at != r.len)
    return fail(&r, "trailing bytes after the plan");
  /* Repeats: phases 1.. again, as many times as asked. */
  int body = p->nphases - 1;
  for (int k = 1; k < repeat && body > 0; k++)
    for (int i = 1; i <= body; i++) {
      if (p->nphases == PLAN_MAX_PHASES)
        return fail(&r, "more than %d phases after repeats", PLAN_MAX_PHASES);
      p->phases[p->nphases++] = p->phases[i];
    }
  return check(&r, p);
}
