/*
 * vmep-bench output: the per-rank line (bandwidth and time of dispatch and
 * combine, DeepEP low-latency byte accounting), the summary per token count
 * with the same-run copy ceiling and the efficiency, and the JSON file.
 * "avg_t" in the per-rank line is the median of the timed calls.
 */
#include "bench.h"

static double gbps(double bytes, double us) {
  return us > 0 ? bytes / us / 1e3 : 0.0;
}

void bench_print_rank(const struct bench_result *r, int prefix) {
  if (prefix)
    printf("[rank %d] ", r->rank);
  printf("Dispatch bandwidth: %.2f GB/s, avg_t=%.2f us | Combine bandwidth: "
         "%.2f GB/s, avg_t=%.2f us\n",
         gbps(r->dispatch_bytes, r->dispatch_us), r->dispatch_us,
         gbps(r->combine_bytes, r->combine_us), r->combine_us);
}

struct summary {
  double d_gbps, c_gbps, d_us, c_us, d_ceil, c_ceil; /* means over ranks */
  double d_min, c_min;                               /* slowest rank */
  int checked;
};

static struct summary summarize(const struct bench_result *r, int ranks) {
  struct summary s = {0};
  s.d_min = s.c_min = 1e30;
  s.checked = 1;
  for (int i = 0; i < ranks; i++) {
    double d = gbps(r[i].dispatch_bytes, r[i].dispatch_us);
    double c = gbps(r[i].combine_bytes, r[i].combine_us);
    s.d_gbps += d / ranks;
    s.c_gbps += c / ranks;
    s.d_us += r[i].dispatch_us / ranks;
    s.c_us += r[i].combine_us / ranks;
    s.d_ceil += gbps(r[i].dispatch_bytes, r[i].copy_dispatch_us) / ranks;
    s.c_ceil += gbps(r[i].combine_bytes, r[i].copy_combine_us) / ranks;
    s.d_min = d < s.d_min ? d : s.d_min;
    s.c_min = c < s.c_min ? c : s.c_min;
    s.checked &= r[i].checked;
  }
  return s;
}

/* Where the time goes: each phase's median, mean over ranks. */
static void print_phases(const struct bench_result *all, int ranks,
                         int sweeps) {
  printf("\nwhere the time goes (us, each half launched alone; mean over "
         "ranks)\n%7s | %13s %13s | %12s %12s\n",
         "tokens", "dispatch send", "dispatch recv", "combine send",
         "combine recv");
  for (int i = 0; i < sweeps; i++) {
    double ph[4] = {0, 0, 0, 0};
    for (int r = 0; r < ranks; r++)
      for (int k = 0; k < 4; k++)
        ph[k] += all[(size_t)i * ranks + r].phase_us[k] / ranks;
    printf("%7d | %13.1f %13.1f | %12.1f %12.1f\n",
           all[(size_t)i * ranks].tokens, ph[0], ph[1], ph[2], ph[3]);
  }
}

void bench_print_summary(const struct bench_options *o,
                         const struct bench_result *all, int ranks,
                         int sweeps) {
  printf("\nsummary (per rank: mean over ranks; %d blocks per kernel; "
         "ceiling = a device-to-device copy of the same bytes, every rank at "
         "once, buffers rotated past L2)\n",
         all[0].num_sms);
  printf("%7s | %9s %9s %9s %5s | %9s %9s %9s %5s | %s\n", "tokens",
         "disp GB/s", "avg_t us", "ceil GB/s", "eff", "comb GB/s", "avg_t us",
         "ceil GB/s", "eff", "check");
  for (int i = 0; i < sweeps; i++) {
    struct summary s = summarize(all + (size_t)i * ranks, ranks);
    printf("%7d | %9.1f %9.1f %9.1f %5.2f | %9.1f %9.1f %9.1f %5.2f | %s\n",
           all[(size_t)i * ranks].tokens, s.d_gbps, s.d_us, s.d_ceil,
           s.d_ceil > 0 ? s.d_gbps / s.d_ceil : 0, s.c_gbps, s.c_us, s.c_ceil,
           s.c_ceil > 0 ? s.c_gbps / s.c_ceil : 0,
           !o->check   ? "not run"
           : s.checked ? "passed"
                       : "FAILED");
  }
  print_phases(all, ranks, sweeps);
}

int bench_write_json(const char *path, const struct bench_options *o,
                     const struct bench_result *all, int ranks, int sweeps) {
  FILE *f = fopen(path, "w");
  if (!f) {
    perror(path);
    return -1;
  }
  fprintf(f,
          "{\"ranks\": %d, \"hidden\": %d, \"topk\": %d, \"experts\": %d, "
          "\"fp8\": %s, \"zero_copy\": %s, \"seed\": %llu, \"iters\": %d, "
          "\"results\": [\n",
          ranks, o->hidden, o->topk, o->experts ? o->experts : 4 * ranks,
          o->fp8 ? "true" : "false", o->zero_copy ? "true" : "false",
          (unsigned long long)o->seed, o->iters);
  for (int i = 0; i < sweeps * ranks; i++) {
    const struct bench_result *r = &all[i];
    fprintf(f,
            "  {\"tokens\": %d, \"rank\": %d, \"dispatch_bytes\": %.0f, "
            "\"dispatch_us\": %.3f, \"dispatch_copy_us\": %.3f, "
            "\"combine_bytes\": %.0f, \"combine_us\": %.3f, "
            "\"combine_copy_us\": %.3f, \"num_sms\": %d, \"phase_us\": "
            "[%.3f, %.3f, %.3f, %.3f], \"checked\": %s}%s\n",
            r->tokens, r->rank, r->dispatch_bytes, r->dispatch_us,
            r->copy_dispatch_us, r->combine_bytes, r->combine_us,
            r->copy_combine_us, r->num_sms, r->phase_us[0], r->phase_us[1],
            r->phase_us[2], r->phase_us[3], r->checked ? "true" : "false",
            i + 1 < sweeps * ranks ? "," : "");
  }
  fprintf(f, "]}\n");
  return fclose(f) == 0 ? 0 : -1;
}
