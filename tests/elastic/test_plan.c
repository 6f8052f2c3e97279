/*
 * The plan parser: every plan shipped in plans/ parses, the rules across
 * phases hold, and malformed or wrong plans are refused with a message
 * naming the problem; random mutations of good plans never crash it.
 */
#include <stdio.h>
#include <string.h>

#include "plan.h"
#include "test.h"

static struct plan plan;

static int parse(const char *text, char *error) {
  return plan_parse(text, strlen(text), &plan, error, 256);
}

static void refused(const char *text, const char *why) {
  char error[256] = "";
  if (parse(text, error) == 0)
    TEST_FAIL("accepted: %s", text);
  ASSERT_STR_CONTAINS(error, why);
}

static void shipped_plans(void) {
  const char *names[] = {"expand",        "expand_shrink", "fault_dispatch",
                         "fault_combine", "rejoin",        "faults20"};
  for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++) {
    char path[512], text[8192], error[256];
    snprintf(path, sizeof(path), "%s/%s.json", PLANS_DIR, names[i]);
    FILE *f = fopen(path, "r");
    ASSERT_TRUE(f != NULL);
    size_t len = fread(text, 1, sizeof(text), f);
    fclose(f);
    if (plan_parse(text, len, &plan, error, sizeof(error)))
      TEST_FAIL("%s: %s", path, error);
  }
  /* faults20: 20 kills after repeats, half of them in a combine. */
  int kills = 0, combine = 0;
  for (int p = 0; p < plan.nphases; p++) {
    kills += plan.phases[p].victim >= 0;
    combine += plan.phases[p].victim >= 0 &&
               plan.phases[p].fault == PLAN_FAULT_COMBINE;
  }
  ASSERT_EQ(kills, 20);
  ASSERT_EQ(combine, 10);
  ASSERT_EQ(plan.timeout_ms, 1000);
}

static void fields(void) {
  char error[256];
  ASSERT_EQ(parse(" {\"max_ranks\": 8, \"iters\": 4, \"phases\": "
                  "[[3, 1, 0], {\"ranks\": [-0, 2, 5], \"fault\": "
                  "\"combine\"}]} ",
                  error),
            0);
  ASSERT_EQ(plan.max_ranks, 8);
  ASSERT_EQ(plan.iters, 4);
  ASSERT_EQ(plan.timeout_ms, 3000);
  ASSERT_EQ(plan.nphases, 2);
  ASSERT_EQ(plan.phases[0].n, 3);
  ASSERT_EQ(plan.phases[0].ranks[0], 0); /* sorted */
  ASSERT_EQ(plan.phases[0].ranks[2], 3);
  ASSERT_EQ(plan.phases[0].victim, -1);
  ASSERT_EQ(plan.phases[1].victim, 0); /* "-0" is rank 0 killed */
  ASSERT_EQ(plan.phases[1].fault, PLAN_FAULT_COMBINE);
}

static void refusals(void) {
  refused("", "expected '{'");
  refused("{", "expected '\"'");
  refused("{\"phases\": [[0, 1]]}", "max_ranks");
  refused("{\"max_ranks\": 1, \"phases\": [[0]]}", "out of range");
  refused("{\"max_ranks\": 4, \"phases\": [[0, 4]]}", "rank 4");
  refused("{\"max_ranks\": 4, \"phases\": [[0, 1, 1]]}", "twice");
  refused("{\"max_ranks\": 4, \"phases\": [[0, -1, -2, 3]]}", "two ranks");
  refused("{\"max_ranks\": 4, \"phases\": [[0, -1]]}", "fewer than 2");
  refused("{\"max_ranks\": 4, \"phases\": [[0, 1, -2], [0, 1, 2]]}",
          "killed in phase 0");
  refused("{\"max_ranks\": 4, \"phases\": []}", "no phases");
  refused("{\"max_ranks\": 4, \"phases\": [[0, 1.5]]}", "fraction");
  refused("{\"max_ranks\": 4, \"phases\": [[0, 1]], \"x\": 1}", "unknown key");
  refused("{\"max_ranks\": 4, \"phases\": [{\"ranks\": [0, 1], \"fault\": "
          "\"boot\"}]}",
          "expected \"dispatch\"");
  refused("{\"max_ranks\": 4, \"phases\": [{\"fault\": \"combine\"}]}",
          "needs \"ranks\"");
  refused("{\"max_ranks\": 4, \"phases\": [[0, 1]]} x", "trailing");
  refused("{\"max_ranks\": 4, \"phases\": [[0, 1]], \"iters\": 0}",
          "out of range");
  refused("{\"max_ranks\": 99999999999, \"phases\": [[0, 1]]}", "too large");
  refused("{\"max_ranks\": 4, \"phases\": [[0, 1]]", "expected ','");
  refused("{\"max\\u0041\": 4}", "escapes");
}

/* Random byte edits of a good plan: parsed or refused, never a crash or an
 * out-of-range read (the suite also runs under ASan). */
static void mutations(void) {
  const char *good = "{\"max_ranks\": 6, \"iters\": 3, \"phases\": [[0, 1, "
                     "2], {\"ranks\": [0, 1, -2], \"fault\": \"combine\"}, "
                     "[0, 1, 3, 4, 5]], \"repeat\": 3}";
  const char alphabet[] = "{}[],:\"-0123456789 abcdefghijklmnopqrstuvwxyz";
  char text[512], error[256];
  size_t len = strlen(good);
  uint64_t seed = test_seed("test_plan mutations");
  (void)seed;
  for (int trial = 0; trial < 20000; trial++) {
    memcpy(text, good, len);
    size_t n = len;
    int edits = 1 + (int)(test_rand() % 4);
    for (int e = 0; e < edits; e++) {
      size_t at = test_rand() % n;
      if (test_rand() % 3 == 0 && n > 1)
        n = at + 1; /* truncate */
      else
        text[at] = alphabet[test_rand() % (sizeof(alphabet) - 1)];
    }
    if (plan_parse(text, n, &plan, error, sizeof(error)) == 0) {
      ASSERT_TRUE(plan.nphases >= 1 && plan.nphases <= PLAN_MAX_PHASES);
      for (int p = 0; p < plan.nphases; p++)
        ASSERT_TRUE(plan.phases[p].n >= 2);
    } else {
      ASSERT_TRUE(strstr(error, "plan, byte") == error);
    }
  }
}

int main(void) {
  shipped_plans();
  fields();
  refusals();
  mutations();
  printf("test_plan: passed\n");
  return 0;
}
