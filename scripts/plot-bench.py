#!/usr/bin/env python3
"""Pictures of vmep-bench sweeps: turns the files of `vmep-bench --json FILE`
(schema: bench_write_json in tools/bench_report.c) into three PNGs:

  PREFIX-gbps.png    GB/s per rank against T (tokens per rank, log2 axis), one
                     line per file, dispatch and combine side by side, with the
                     same-run copy ceiling dashed in the file's colour;
  PREFIX-eff.png     efficiency = GB/s / ceiling GB/s against T, with the
                     targets (--targets) as dotted lines;
  PREFIX-phases.png  where the time goes: each half launched alone (send,
                     receive) as a share of their sum, the sum in us on top;
                     not drawn for high-throughput files ("mode": "ht"), whose
                     calls have no halves timed alone.

Numbers are means over ranks, as vmep-bench's summary prints them, of the
GB/s that the file's ceiling measures: DeepEP bytes against a device-to-device
copy (ranks share a GPU; "ceiling" absent or "d2d"), or link bytes against an
all-pairs peer copy of them ("ceiling_bytes": "link"). The first 2-GPU bench
(a peer copy of the DeepEP bytes, no "ceiling_bytes") has no valid ceiling:
its headline GB/s is drawn alone, with no efficiency PNG. A high-throughput
file (vmep-bench --mode ht) counts DeepEP's normal-mode bytes (the rows each
rank received) instead; its ceilings are read the same way.

usage: plot-bench.py [--out DIR] [--prefix NAME] [--title TEXT] [--label TEXT]
                     [--targets 0.85,0.5] FILE.json...
Needs matplotlib (Debian: apt-get install python3-matplotlib). Exit status:
0 written, 2 bad input or usage (one line on stderr), 3 no matplotlib.
"""
import argparse
import json
import os
import sys

PROG = "plot-bench.py"
HALVES = (("dispatch", "disp"), ("combine", "comb"))  # JSON key stems


class BadInput(Exception):
    pass


def mean(xs):
    return sum(xs) / len(xs)


def number(value, what, where, positive=False):
    if not isinstance(value, (int, float)) or isinstance(value, bool) \
            or (positive and value <= 0):
        raise BadInput(f"{where}: {what} missing or not a{' positive' * positive} number")
    return value


def field(row, key, where, positive=False):
    return number(row.get(key) if isinstance(row, dict) else None, f"'{key}'", where, positive)


def load(path):
    """One file: its settings and, per T, the means over ranks."""
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, ValueError) as e:
        raise BadInput(f"{path}: cannot read JSON: {e}") from None
    if not isinstance(data, dict) or not isinstance(data.get("results"), list) \
            or not data["results"]:
        raise BadInput(f"{path}: not a vmep-bench --json file (no 'results' list)")
    ranks = int(field(data, "ranks", path))
    link = data.get("ceiling_bytes") == "link"
    valid = link or data.get("ceiling", "d2d") == "d2d"
    by_t = {}
    for i, row in enumerate(data["results"]):
        by_t.setdefault(int(field(row, "tokens", f"{path}: results[{i}]")), []).append(row)
    run = {"path": path, "data": data, "ranks": ranks, "valid": valid, "link": link,
           "ht": data.get("mode") == "ht", "tokens": sorted(by_t), "phases": []}
    for half in HALVES:
        run[half[0]] = {"gbps": [], "ceil": [], "eff": []}
    for t in run["tokens"]:
        rows, where = by_t[t], f"{path}: T {t}"
        if len(rows) != ranks:
            raise BadInput(f"{where}: {len(rows)} rows for {ranks} ranks")
        for long, short in HALVES:
            stem = f"{short}_link" if link else long
            nbytes = [field(r, f"{stem}_bytes", where) for r in rows]
            gbps = mean([b / field(r, f"{long}_us", where, True) / 1e3
                         for b, r in zip(nbytes, rows)])
            out = run[long]
            out["gbps"].append(gbps)
            if valid:
                ceil = mean([b / field(r, f"{stem}_copy_us", where, True) / 1e3
                             for b, r in zip(nbytes, rows)])
                out["ceil"].append(ceil)
                out["eff"].append(gbps / ceil)
        # phase_us: dispatch send, dispatch receive, combine send, combine receive
        phase = [r.get("phase_us") for r in rows]
        if not all(isinstance(p, list) and len(p) == 4 for p in phase):
            raise BadInput(f"{where}: 'phase_us' is not a list of 4 times")
        run["phases"].append([mean([number(p[k], "'phase_us'", where) for p in phase])
                              for k in range(4)])
    return run


def describe(runs, label):
    """Legend names (what differs between the files) and the shared line."""
    def mode(d):
        kind = "fp8" if d.get("fp8") else "zero-copy" if d.get("zero_copy") else "bf16"
        # the combine's variants (vmep-bench --logfmt, --expert-reduce)
        kind += " LogFMT" if d.get("logfmt") else ""
        kind += " reduced at experts" if d.get("expert_reduce") else ""
        if d.get("mode") == "ht":
            kind = f"ht {kind}{' cached' if d.get('cached') else ''}"
        return kind

    traits = {
        "mode": lambda r: mode(r["data"]),
        "experts": lambda r: f"{r['data'].get('experts', 0) // r['ranks']}/rank",
        "ranks": lambda r: f"{r['ranks']} ranks",
        "bytes": lambda r: "link bytes" if r["link"] else "DeepEP bytes",
    }
    varying = [k for k, f in traits.items()
               if k == "mode" or len({f(r) for r in runs}) > 1]
    names = [", ".join(traits[k](r) for k in varying) for r in runs]
    if len(set(names)) < len(names):  # the same sweep twice: add the folder
        names = [f"{n} ({os.path.basename(os.path.dirname(os.path.abspath(r['path'])))})"
                 for n, r in zip(names, runs)]
    d = runs[0]["data"]
    shared = [label or d.get("device") or ""]
    if "ranks" not in varying:
        shared.append(traits["ranks"](runs[0]))
    if "experts" not in varying:
        shared.append(f"E {d.get('experts')}")
    shared.append(f"H {d.get('hidden')}, K {d.get('topk')}, {d.get('iters')} iters, "
                  f"seed {d.get('seed')}; mean over ranks")
    commands = {r["data"].get("command") for r in runs} - {None}
    line = ", ".join(s for s in shared if s)
    if commands:
        line += "\n" + "; ".join(sorted(commands))
    return names, line, "bytes" in varying


def figure(plt, title, subtitle, styles, extra, bars=False):
    """Two panels (dispatch, combine) and the legend below them."""
    fig, axes = plt.subplots(1, 2, figsize=(10, 4.6), sharey=True)
    fig.suptitle(f"{title}\n{subtitle}", fontsize=10)
    handles = [plt.Rectangle((0, 0), 1, 1, fc=s["color"], label=s["label"]) if bars
               else plt.Line2D([], [], **s) for s in styles] + list(extra)
    # One row if the labels fit (about 150 characters), else three per row.
    ncol = len(handles) if sum(len(h.get_label()) + 8 for h in handles) < 150 else 3
    rows = -(-len(handles) // ncol)
    fig.legend(handles=handles, loc="lower center", fontsize=8, ncol=ncol, frameon=False)
    fig.subplots_adjust(left=0.07, right=0.98, top=0.85, bottom=0.14 + 0.04 * rows, wspace=0.06)
    for ax, (half, _) in zip(axes, HALVES):
        ax.set_title(half, fontsize=10)
        ax.grid(True, alpha=0.3)
    return fig, axes


def log2_tokens(ax, runs):
    ts = sorted({t for r in runs for t in r["tokens"]})
    ax.set_xscale("log", base=2)
    ax.set_xticks(ts, [str(t) for t in ts])
    ax.minorticks_off()
    ax.set_xlabel("T (tokens per rank)")


def plot_lines(plt, runs, key, ylabel, title, subtitle, styles, extra):
    fig, axes = figure(plt, title, subtitle, styles, extra)
    for ax, (half, _) in zip(axes, HALVES):
        for run, style in zip(runs, styles):
            ax.plot(run["tokens"], run[half][key], **style)
            if key == "gbps" and run["valid"]:
                ax.plot(run["tokens"], run[half]["ceil"], ls="--", lw=1,
                        color=style["color"], alpha=0.7)
        log2_tokens(ax, runs)
    axes[0].set_ylabel(ylabel)
    axes[0].set_ylim(bottom=0)
    return fig


def plot_eff(plt, runs, targets, *common):
    fig = plot_lines(plt, runs, "eff", "efficiency (GB/s / ceiling GB/s)", *common)
    top = max([1.0] + targets + [e for r in runs for h, _ in HALVES for e in r[h]["eff"]])
    for ax in fig.axes[:2]:
        ax.set_ylim(0, top * 1.1)
        ax.axhline(1.0, color="black", lw=0.8)
        for t in targets:
            ax.axhline(t, color="gray", ls=":", lw=1.2)
            ax.annotate(f"target {t:g}", (0.01, t), xycoords=("axes fraction", "data"),
                        fontsize=7, color="dimgray", va="bottom")
    return fig


def plot_phases(plt, runs, title, subtitle, styles, extra):
    fig, axes = figure(plt, title, subtitle, styles, extra, bars=True)
    ts = sorted({t for r in runs for t in r["tokens"]})
    width = 0.8 / len(runs)
    for ax, base in zip(axes, (0, 2)):
        for i, (run, color) in enumerate(zip(runs, (s["color"] for s in styles))):
            for t, ph in zip(run["tokens"], run["phases"]):
                x, total = ts.index(t) + (i - (len(runs) - 1) / 2) * width, ph[base] + ph[base + 1]
                if total <= 0:
                    continue
                send = 100 * ph[base] / total
                ax.bar(x, send, width, color=color, alpha=0.35, hatch="//", edgecolor=color)
                ax.bar(x, 100 - send, width, bottom=send, color=color, edgecolor=color)
                ax.text(x, 101, f"{total:.0f}", ha="center", va="bottom", fontsize=6, rotation=90)
        ax.set_xticks(range(len(ts)), [str(t) for t in ts])
        ax.set_xlabel("T (tokens per rank)")
        ax.set_ylim(0, 122)
        ax.set_yticks(range(0, 101, 20))
    axes[0].set_ylabel("% of send + receive (sum in µs on top)")
    return fig


def main(argv):
    p = argparse.ArgumentParser(prog=PROG, description="PNGs of vmep-bench --json files.")
    p.add_argument("files", nargs="+", metavar="FILE.json")
    p.add_argument("--out", default=".", help="folder for the PNGs (default .)")
    p.add_argument("--prefix", default="bench", help="PNG name prefix (default bench)")
    p.add_argument("--title", default="vmep-bench", help="first title line")
    p.add_argument("--label", help="device and setting, e.g. '1 x H100, MPS'")
    p.add_argument("--targets", default="0.85,0.5",
                   help="efficiency targets drawn as lines ('' for none)")
    a = p.parse_args(argv)
    try:
        targets = [float(t) for t in a.targets.split(",") if t.strip()]
    except ValueError:
        print(f"{PROG}: --targets: '{a.targets}' is not a list of numbers", file=sys.stderr)
        return 2
    try:
        runs = [load(path) for path in a.files]
    except BadInput as e:
        print(f"{PROG}: {e}", file=sys.stderr)
        return 2
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print(f"{PROG}: matplotlib is missing for {sys.executable}; install it with 'apt-get "
              "install python3-matplotlib' (Debian/Ubuntu: for /usr/bin/python3) or 'pip install "
              "matplotlib'", file=sys.stderr)
        return 3
    names, subtitle, mixed = describe(runs, a.label)
    # Later lines thinner, so that one drawn over an equal one leaves it visible.
    styles = [{"color": plt.get_cmap("tab10")(i % 10), "marker": "osD^v<>p*h"[i % 10],
               "lw": max(1.0, 2.6 - 0.5 * i), "ms": max(4.0, 8.5 - 1.5 * i), "label": name}
              for i, name in enumerate(names)]
    what = "GB/s per rank" if mixed else \
        ("link GB/s per rank" if runs[0]["link"] else "GB/s per rank (DeepEP bytes)")
    valid = [r for r in runs if r["valid"]]
    copy = {True: "all-pairs peer copy", False: "device-to-device copy"}
    kinds = {copy[r["link"]] for r in valid}
    ceiling = [plt.Line2D([], [], color="gray", ls="--", lw=1, label=(
        f"dashed: {kinds.pop() if len(kinds) == 1 else 'copy'} of the same bytes, "
        "same run (ceiling)"))] if valid else []
    halves = [plt.Rectangle((0, 0), 1, 1, fc="white", ec="gray", hatch="//", label="send half"),
              plt.Rectangle((0, 0), 1, 1, fc="gray", label="receive half")]
    os.makedirs(a.out, exist_ok=True)
    jobs = [("gbps", plot_lines, (runs, "gbps", what, a.title, subtitle, styles, ceiling))]
    if valid:
        vs = [s for r, s in zip(runs, styles) if r["valid"]]
        marks = [plt.Line2D([], [], color="black", lw=0.8, label="1: as fast as the copy")]
        marks += [plt.Line2D([], [], color="gray", ls=":", lw=1.2,
                             label="dotted: targets (performance issue)")] if targets else []
        jobs.append(("eff", plot_eff, (valid, targets, a.title, subtitle, vs, marks)))
    else:
        print(f"{PROG}: no file has a valid ceiling: no efficiency plot")
    # High-throughput files have no halves timed alone.
    split = [(r, s) for r, s in zip(runs, styles) if not r["ht"]]
    if split:
        jobs.append(("phases", plot_phases, ([r for r, _ in split], a.title, subtitle,
                                             [s for _, s in split], halves)))
    else:
        print(f"{PROG}: only high-throughput files: no phases plot")
    for suffix, plot, args in jobs:
        path = os.path.join(a.out, f"{a.prefix}-{suffix}.png")
        fig = plot(plt, *args)
        fig.savefig(path, dpi=100)
        plt.close(fig)
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
