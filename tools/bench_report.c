/*
 * vmep-bench output: the per-rank line (bandwidth and time of dispatch and
 * combine, DeepEP low-latency byte accounting, or with --mode ht its
 * normal-mode one, then the link GB/s: the bytes that cross between ranks
 * over the same time), the summary per token count with the same-run copy
 * ceiling and the efficiency, and the JSON file. "avg_t" in the per-rank
 * line is the median of the timed calls. With --compare nccl, the NCCL
 * baseline's line and table sit next to vmep's; across nodes, a line and a
 * table of the bytes within and across nodes, the proxy's measured bytes and
 * the engine ceiling.
 */
#include "bench.h"

static double gbps(double bytes, double us) {
  return us > 0 ? bytes / us / 1e3 : 0.0;
}

static void print_line(const struct bench_result *r, int prefix,
                       const char *dispatch, const char *combine, double d_us,
                       double c_us) {
  if (prefix)
    printf("[rank %d] ", r->rank);
  printf("%s bandwidth: %.2f GB/s, avg_t=%.2f us | %s bandwidth: %.2f GB/s, "
         "avg_t=%.2f us\n",
         dispatch, gbps(r->dispatch_bytes, d_us), d_us, combine,
         gbps(r->combine_bytes, c_us), c_us);
}

/* eff against the link-byte copy: link GB/s / ceiling GB/s of the same
 * bytes, i.e. copy time / call time (0 without that ceiling). */
static double eff_link(double call_us, double copy_us) {
  return call_us > 0 && copy_us > 0 ? copy_us / call_us : 0.0;
}

/* A rank's eff against the ceiling it was timed with (the summary's eff
 * is the ratio of the means instead): the peer copy of the link bytes, or
 * the D2D copy of the accounted bytes; copy time / call time either way. */
static double eff_of(const struct bench_result *r, int combine) {
  if (combine)
    return eff_link(r->combine_us,
                    r->ceiling ? r->copy_combine_link_us : r->copy_combine_us);
  return eff_link(r->dispatch_us,
                  r->ceiling ? r->copy_dispatch_link_us : r->copy_dispatch_us);
}

/* engine eff: the engine ceiling's time of the inter-node bytes / vmep's
 * time of the call (0 without either). */
static double eff_engine(double call_us, double engine_us) {
  return eff_link(call_us, engine_us);
}

/* Across nodes: bytes per call within and across nodes, the proxy's
 * measured bytes, the engine ceiling. "proxy put" is what this rank's
 * proxy put per call: its dispatch (the inter dispatch bytes exactly, its
 * acks standing for the peers' acks of ours), but the combine rows its
 * experts return to *other* ranks' tokens, not the rows of ours that the
 * inter combine bytes count; plus heartbeats. So per rank the two may
 * differ by the routing; the summary compares the sums over ranks. */
static void print_nodes_rank(const struct bench_result *r, int prefix) {
  if (prefix)
    printf("[rank %d] ", r->rank);
  printf("node %d of %d | intra B/call: dispatch %.0f, combine %.0f | inter "
         "B/call: dispatch %.0f, combine %.0f, both %.0f; proxy put %.0f | "
         "engine ceiling: dispatch %.2f us (engine eff %.2f), combine %.2f us "
         "(engine eff %.2f)\n",
         r->node, r->nodes, r->intra_dispatch_bytes, r->intra_combine_bytes,
         r->inter_dispatch_bytes, r->inter_combine_bytes,
         r->inter_dispatch_bytes + r->inter_combine_bytes, r->proxy_bytes,
         r->engine_dispatch_us,
         eff_engine(r->dispatch_us, r->engine_dispatch_us),
         r->engine_combine_us, eff_engine(r->combine_us, r->engine_combine_us));
}

/* The high-throughput line's tail: the rows received, eff against the
 * ceiling and the link GB/s. */
static void print_ht_rank(const struct bench_result *r) {
  printf(" | ht: %d rows received | eff: dispatch %.2f, combine %.2f (%s) | "
         "link: dispatch %.2f GB/s, combine %.2f GB/s\n",
         r->num_recv, eff_of(r, 0), eff_of(r, 1),
         r->ceiling ? "peer copy of the link bytes" : "D2D copy",
         gbps(r->dispatch_link_bytes, r->dispatch_us),
         gbps(r->combine_link_bytes, r->combine_us));
}

void bench_print_rank(const struct bench_result *r, int prefix) {
  if (prefix)
    printf("[rank %d] ", r->rank);
  /* The first half is the line users of DeepEP / NIXL EP know, unchanged. */
  printf("Dispatch bandwidth: %.2f GB/s, avg_t=%.2f us | Combine bandwidth: "
         "%.2f GB/s, avg_t=%.2f us",
         gbps(r->dispatch_bytes, r->dispatch_us), r->dispatch_us,
         gbps(r->combine_bytes, r->combine_us), r->combine_us);
  if (r->ht) {
    print_ht_rank(r);
    if (r->nodes > 1)
      print_nodes_rank(r, prefix);
    return;
  }
  printf(" | link: dispatch %.2f GB/s",
         gbps(r->dispatch_link_bytes, r->dispatch_us));
  if (r->ceiling)
    printf(" (eff %.2f)", eff_link(r->dispatch_us, r->copy_dispatch_link_us));
  printf(", combine %.2f GB/s", gbps(r->combine_link_bytes, r->combine_us));
  if (r->ceiling)
    printf(" (eff %.2f)", eff_link(r->combine_us, r->copy_combine_link_us));
  printf("\n");
  if (r->nodes > 1)
    print_nodes_rank(r, prefix);
  if (r->nccl_dispatch_us > 0)
    bench_print_nccl_rank(r, prefix);
}

void bench_print_nccl_rank(const struct bench_result *r, int prefix) {
  print_line(r, prefix, "NCCL dispatch", "NCCL combine", r->nccl_dispatch_us,
             r->nccl_combine_us);
}

struct summary {
  double d_gbps, c_gbps, d_us, c_us; /* means over ranks */
  double d_link, c_link;             /* link GB/s, means over ranks */
  /* ceiling GB/s, means over ranks: of the link bytes (peer ceiling) or
   * of the DeepEP bytes (D2D ceiling) */
  double d_ceil, c_ceil;
  double d_min, c_min; /* slowest rank */
  double rows;         /* ht: rows received, mean over ranks */
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
    s.d_link += gbps(r[i].dispatch_link_bytes, r[i].dispatch_us) / ranks;
    s.c_link += gbps(r[i].combine_link_bytes, r[i].combine_us) / ranks;
    if (r[i].ceiling) {
      s.d_ceil +=
          gbps(r[i].dispatch_link_bytes, r[i].copy_dispatch_link_us) / ranks;
      s.c_ceil +=
          gbps(r[i].combine_link_bytes, r[i].copy_combine_link_us) / ranks;
    } else {
      s.d_ceil += gbps(r[i].dispatch_bytes, r[i].copy_dispatch_us) / ranks;
      s.c_ceil += gbps(r[i].combine_bytes, r[i].copy_combine_us) / ranks;
    }
    s.d_min = d < s.d_min ? d : s.d_min;
    s.c_min = c < s.c_min ? c : s.c_min;
    s.rows += (double)r[i].num_recv / ranks;
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

/* Across nodes: the byte split (means over ranks), the proxy's measured
 * bytes against the computed inter-node bytes (sums over ranks: a rank's
 * proxy puts the combine rows of other ranks' tokens, so only the sums
 * agree), and vmep against the engine ceiling (means over ranks). */
static void print_nodes(const struct bench_result *all, int ranks, int sweeps) {
  printf(
      "\nacross %d nodes (bytes per call; intra, inter, us: mean over "
      "ranks; proxy, computed: sum over ranks)\n"
      "  intra     the link bytes to the peers in the rank's node (mapped)\n"
      "  inter     what the proxies put for the rank's tokens: dispatch, "
      "header + expert ids\n"
      "            + one row per (token, remote rank) + 2 flags per remote "
      "rank; combine,\n"
      "            2H per selection of a remote expert + 2 flags per remote "
      "rank\n"
      "  proxy     measured, vmep__ep_remote_bytes_out per call; computed, "
      "the inter bytes;\n"
      "            diff = proxy - computed: heartbeats (8 B per remote peer, "
      "at most every\n"
      "            100 us), else a mismatch of the accounting\n"
      "  engine    plain engine puts of the rank's inter-node bytes between "
      "the same ranks\n"
      "            (one put per remote rank + a signal, median per "
      "iteration);\n"
      "            engine eff = engine us / vmep avg_t us\n"
      "  over TCP on one machine (pretend nodes) only engine eff means "
      "anything\n"
      "%7s | %10s %10s | %10s %10s | %11s %11s %8s | %8s %8s %5s | %8s %8s "
      "%5s\n",
      all[0].nodes, "tokens", "intra disp", "intra comb", "inter disp",
      "inter comb", "proxy", "computed", "diff", "disp us", "engine", "eff",
      "comb us", "engine", "eff");
  for (int i = 0; i < sweeps; i++) {
    const struct bench_result *r = all + (size_t)i * ranks;
    double v[8] = {0}, proxy = 0, computed = 0;
    for (int k = 0; k < ranks; k++) {
      v[0] += r[k].intra_dispatch_bytes / ranks;
      v[1] += r[k].intra_combine_bytes / ranks;
      v[2] += r[k].inter_dispatch_bytes / ranks;
      v[3] += r[k].inter_combine_bytes / ranks;
      v[4] += r[k].dispatch_us / ranks;
      v[5] += r[k].engine_dispatch_us / ranks;
      v[6] += r[k].combine_us / ranks;
      v[7] += r[k].engine_combine_us / ranks;
      proxy += r[k].proxy_bytes;
      computed += r[k].inter_dispatch_bytes + r[k].inter_combine_bytes;
    }
    printf("%7d | %10.0f %10.0f | %10.0f %10.0f | %11.0f %11.0f %+8.0f | "
           "%8.1f %8.1f %5.2f | %8.1f %8.1f %5.2f\n",
           r->tokens, v[0], v[1], v[2], v[3], proxy, computed, proxy - computed,
           v[4], v[5], eff_engine(v[4], v[5]), v[6], v[7],
           eff_engine(v[6], v[7]));
  }
}

/* vmep against the NCCL baseline: means over ranks, ratio vmep / NCCL. */
static void print_nccl(const struct bench_options *o,
                       const struct bench_result *all, int ranks, int sweeps) {
  printf("\nvmep against NCCL send/recv (per rank, mean over ranks; NCCL "
         "with its gather, count exchange and scatter)\n"
         "  GB/s in the DeepEP accounting for both (same bytes): ratio = vmep "
         "GB/s / NCCL GB/s\n%7s | %9s %9s %9s %6s | %9s %9s %9s %6s | %s\n",
         "tokens", "vmep GB/s", "nccl GB/s", "nccl us", "ratio", "vmep GB/s",
         "nccl GB/s", "nccl us", "ratio", "nccl check");
  for (int i = 0; i < sweeps; i++) {
    const struct bench_result *r = all + (size_t)i * ranks;
    struct summary s = summarize(r, ranks);
    double d = 0, c = 0, d_us = 0, c_us = 0;
    int checked = 1;
    for (int k = 0; k < ranks; k++) {
      d += gbps(r[k].dispatch_bytes, r[k].nccl_dispatch_us) / ranks;
      c += gbps(r[k].combine_bytes, r[k].nccl_combine_us) / ranks;
      d_us += r[k].nccl_dispatch_us / ranks;
      c_us += r[k].nccl_combine_us / ranks;
      checked &= r[k].nccl_checked;
    }
    printf("%7d | %9.1f %9.1f %9.1f %6.2f | %9.1f %9.1f %9.1f %6.2f | %s\n",
           r->tokens, s.d_gbps, d, d_us, d > 0 ? s.d_gbps / d : 0, s.c_gbps, c,
           c_us, c > 0 ? s.c_gbps / c : 0,
           !o->check ? "not run"
           : checked ? "passed"
                     : "FAILED");
  }
}

static void print_summary_header(const struct bench_result *r) {
  printf("\nsummary (per rank: mean over ranks; %d blocks per kernel)\n",
         r->num_sms);
  if (r->ht)
    printf("  GB/s       DeepEP normal-mode accounting, the N rows each rank "
           "received:\n"
           "             dispatch N*2H (fp8 N*(H+H/32)), combine the same "
           "rows sent back, N*2H\n"
           "  link GB/s  what crosses between ranks for those rows / avg_t: "
           "dispatch, the rows\n"
           "             from other ranks + their routing (the ids of every "
           "token, unless\n"
           "             cached); combine, the same rows back with K "
           "weights and a mark\n"
           "  rows       N, the rows a rank received per dispatch\n");
  else
    printf(
        "  GB/s       DeepEP LL accounting, every selection counted: "
        "dispatch sel*(2H+16)\n"
        "             (fp8 sel*(H+H/32+16)), combine sel*2H (LogFMT "
        "sel*41H/32)\n"
        "  link GB/s  the bytes that cross to another rank per call / "
        "avg_t: dispatch, one\n"
        "             staged row per (token, other rank that selected it) "
        "+ the expert ids;\n"
        "             combine, a row (2H, LogFMT 41H/32) per selection whose "
        "expert is on\n"
        "             another rank\n");
  if (r->ceiling)
    printf("  ceil GB/s  all-pairs peer copy of the link bytes: each rank "
           "writes its own, split\n"
           "             evenly over the other GPUs, every rank at once; "
           "eff = link GB/s / ceil GB/s\n");
  else
    printf("  ceil GB/s  ranks share a GPU, so HBM: a device-to-device copy "
           "of the %s bytes,\n"
           "             every rank at once, buffers rotated past L2; "
           "eff = GB/s / ceil GB/s\n",
           r->ht ? "accounted" : "DeepEP");
}

void bench_print_summary(const struct bench_options *o,
                         const struct bench_result *all, int ranks,
                         int sweeps) {
  print_summary_header(&all[0]);
  printf("%7s | %9s %9s %9s %9s %5s | %9s %9s %9s %9s %5s |%s %s\n", "tokens",
         "disp GB/s", "link GB/s", "avg_t us", "ceil GB/s", "eff", "comb GB/s",
         "link GB/s", "avg_t us", "ceil GB/s", "eff",
         all[0].ht ? "      rows |" : "", "check");
  for (int i = 0; i < sweeps; i++) {
    struct summary s = summarize(all + (size_t)i * ranks, ranks);
    /* eff: of the link bytes against their copy, or (D2D) of the DeepEP
     * bytes against theirs. */
    double d = all[0].ceiling ? s.d_link : s.d_gbps;
    double c = all[0].ceiling ? s.c_link : s.c_gbps;
    printf("%7d | %9.1f %9.1f %9.1f %9.1f %5.2f | %9.1f %9.1f %9.1f %9.1f "
           "%5.2f | ",
           all[(size_t)i * ranks].tokens, s.d_gbps, s.d_link, s.d_us, s.d_ceil,
           s.d_ceil > 0 ? d / s.d_ceil : 0, s.c_gbps, s.c_link, s.c_us,
           s.c_ceil, s.c_ceil > 0 ? c / s.c_ceil : 0);
    if (o->ht)
      printf("%9.0f | ", s.rows);
    printf("%s\n", !o->check ? "not run" : s.checked ? "passed" : "FAILED");
  }
  /* The high-throughput calls have no halves to launch alone. */
  if (!o->ht)
    print_phases(all, ranks, sweeps);
  for (int i = 0; all[0].pair_us > 0 && i < sweeps; i++)
    printf("%s%d tokens: peer copy rank 0 -> rank 1 alone, %.0f bytes (the "
           "DeepEP dispatch bytes): %.1f GB/s\n",
           i ? "" : "\n", all[(size_t)i * ranks].tokens,
           all[(size_t)i * ranks].dispatch_bytes,
           gbps(all[(size_t)i * ranks].dispatch_bytes,
                all[(size_t)i * ranks].pair_us));
  if (all[0].nodes > 1)
    print_nodes(all, ranks, sweeps);
  if (o->compare_nccl)
    print_nccl(o, all, ranks, sweeps);
}

/* A result's node fields, closing its object: null in one node. */
static void write_json_nodes(FILE *f, const struct bench_result *r) {
  fprintf(f, ", \"node\": %d", r->node);
  if (r->nodes <= 1) {
    fprintf(f, ", \"intra_disp_bytes\": null, \"intra_comb_bytes\": null, "
               "\"inter_disp_bytes\": null, \"inter_comb_bytes\": null, "
               "\"proxy_bytes\": null, \"engine_disp_us\": null, "
               "\"engine_comb_us\": null, \"engine_disp_eff\": null, "
               "\"engine_comb_eff\": null}");
    return;
  }
  fprintf(f,
          ", \"intra_disp_bytes\": %.0f, \"intra_comb_bytes\": %.0f, "
          "\"inter_disp_bytes\": %.0f, \"inter_comb_bytes\": %.0f, "
          "\"proxy_bytes\": %.1f, \"engine_disp_us\": %.3f, "
          "\"engine_comb_us\": %.3f, \"engine_disp_eff\": %.4f, "
          "\"engine_comb_eff\": %.4f}",
          r->intra_dispatch_bytes, r->intra_combine_bytes,
          r->inter_dispatch_bytes, r->inter_combine_bytes, r->proxy_bytes,
          r->engine_dispatch_us, r->engine_combine_us,
          eff_engine(r->dispatch_us, r->engine_dispatch_us),
          eff_engine(r->combine_us, r->engine_combine_us));
}

int bench_write_json(const char *path, const struct bench_options *o,
                     const struct bench_result *all, int ranks, int sweeps) {
  FILE *f = fopen(path, "w");
  if (!f) {
    perror(path);
    return -1;
  }
  fprintf(f,
          "{\"mode\": \"%s\", \"cached\": %s, \"ranks\": %d, \"hidden\": %d, "
          "\"topk\": %d, \"experts\": %d, \"fp8\": %s, \"logfmt\": %s, "
          "\"zero_copy\": %s, \"expert_reduce\": %s, "
          "\"seed\": %llu, \"iters\": %d, \"ceiling\": \"%s\", "
          "\"ceiling_bytes\": \"%s\", \"compare_nccl\": %s, \"nodes\": %d, "
          "\"results\": [\n",
          o->ht ? "ht" : "ll", o->cached ? "true" : "false", ranks, o->hidden,
          o->topk, bench_experts(o, ranks), o->fp8 ? "true" : "false",
          o->logfmt ? "true" : "false", o->zero_copy ? "true" : "false",
          o->reduce ? "true" : "false", (unsigned long long)o->seed, o->iters,
          all[0].ceiling ? "peer_all_pairs" : "d2d",
          all[0].ceiling ? "link" : "deepep",
          o->compare_nccl ? "true" : "false", all[0].nodes);
  for (int i = 0; i < sweeps * ranks; i++) {
    const struct bench_result *r = &all[i];
    fprintf(f,
            "  {\"tokens\": %d, \"rank\": %d, \"dispatch_bytes\": %.0f, "
            "\"dispatch_us\": %.3f, \"dispatch_copy_us\": %.3f, "
            "\"combine_bytes\": %.0f, \"combine_us\": %.3f, "
            "\"combine_copy_us\": %.3f, \"num_sms\": %d, \"phase_us\": "
            "[%.3f, %.3f, %.3f, %.3f], \"checked\": %s, \"pair_copy_us\": "
            "%.3f, \"nccl_dispatch_us\": %.3f, \"nccl_combine_us\": %.3f, "
            "\"nccl_checked\": %s, ",
            r->tokens, r->rank, r->dispatch_bytes, r->dispatch_us,
            r->copy_dispatch_us, r->combine_bytes, r->combine_us,
            r->copy_combine_us, r->num_sms, r->phase_us[0], r->phase_us[1],
            r->phase_us[2], r->phase_us[3], r->checked ? "true" : "false",
            r->pair_us, r->nccl_dispatch_us, r->nccl_combine_us,
            r->nccl_checked ? "true" : "false");
    /* The link bytes; the ceiling of the same bytes and eff only with the
     * peer ceiling (null with the D2D one). */
    fprintf(f,
            "\"disp_link_bytes\": %.0f, \"disp_link_gbps\": %.3f, "
            "\"comb_link_bytes\": %.0f, \"comb_link_gbps\": %.3f, ",
            r->dispatch_link_bytes,
            gbps(r->dispatch_link_bytes, r->dispatch_us), r->combine_link_bytes,
            gbps(r->combine_link_bytes, r->combine_us));
    if (r->ceiling)
      fprintf(f,
              "\"disp_link_copy_us\": %.3f, \"disp_eff_link\": %.4f, "
              "\"comb_link_copy_us\": %.3f, \"comb_eff_link\": %.4f",
              r->copy_dispatch_link_us,
              eff_link(r->dispatch_us, r->copy_dispatch_link_us),
              r->copy_combine_link_us,
              eff_link(r->combine_us, r->copy_combine_link_us));
    else
      fprintf(f, "\"disp_link_copy_us\": null, \"disp_eff_link\": null, "
                 "\"comb_link_copy_us\": null, \"comb_eff_link\": null");
    /* eff against the ceiling used; rows received (ht only). */
    fprintf(f, ", \"disp_eff\": %.4f, \"comb_eff\": %.4f, \"num_recv\": ",
            eff_of(r, 0), eff_of(r, 1));
    if (r->ht)
      fprintf(f, "%d", r->num_recv);
    else
      fprintf(f, "null");
    write_json_nodes(f, r);
    fprintf(f, "%s\n", i + 1 < sweeps * ranks ? "," : "");
  }
  fprintf(f, "]}\n");
  return fclose(f) == 0 ? 0 : -1;
}
