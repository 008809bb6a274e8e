"""Run every bench/bench_*.py present and write bench/results.md (table) and bench/results.png (plot).

Usage: python -m bench.run_all [--quick] [--only core,vision]; `--render` writes results.md and results.png
again from the rows the last run kept in results.json (after a change to the tables, without measuring).
Each benchmark measures its baseline in the same run and reports ratios, never absolute asserts.
"""
from __future__ import annotations

import argparse
import importlib
import json
import os
import pkgutil
import sys
import time
import traceback

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

HERE = os.path.dirname(os.path.abspath(__file__))


def fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.3g}" if abs(v) < 1000 else f"{v:.0f}"
    return str(v)


def write_markdown(rows: list, path: str, elapsed: float, load: str, generated: str) -> None:
    from bench.peers import summary
    lines = ["# Benchmark results", "", f"Generated {generated} "
             f"in {elapsed:.0f}s on {os.cpu_count()} CPUs{load}. ratio = value / baseline (same run).", "",
             *summary.markdown(rows),
             "| bench | metric | value | baseline | ratio | goal | note |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['bench']} | {r['metric']} | {fmt(r['value'])} | {fmt(r['baseline'])} | "
                     f"{fmt(r['ratio'])} | {r.get('goal', '')} | {r.get('note', '')} |")
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")


def write_plot(rows: list, path: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from bench.peers import summary
    peers = summary.table(rows)
    # a log scale: ratios run from ~0.01 (bytes per frame) to ~60 (ms per frame against one face's): on a
    # linear axis the big ones flatten every other bar
    rows = [r for r in rows if isinstance(r.get("ratio"), (int, float)) and r["ratio"] == r["ratio"] and r["ratio"] > 0]
    if not rows:
        return
    if peers:   # the ours-vs-peer bars above the per-row bars
        fig, (top, ax) = plt.subplots(2, 1, figsize=(10, 0.35 * len(rows) + 0.5 * len(peers) + 3),
                                      gridspec_kw={"height_ratios": [len(peers) + 2, len(rows) + 1]})
        summary.plot(top, rows)
    else:
        fig, ax = plt.subplots(figsize=(10, 0.35 * len(rows) + 1.5))
    labels = [f"{r['bench']}: {r['metric']}" for r in rows]
    ratios = [r["ratio"] for r in rows]
    ax.hlines(range(len(rows)), 1.0, ratios, color="#4477aa", lw=3)   # from 1 (same as the baseline) to the ratio
    ax.plot(ratios, range(len(rows)), "o", color="#4477aa", ms=3)
    ax.set_xscale("log")
    ax.axvline(1.0, color="k", lw=0.8)
    ax.set_yticks(range(len(rows)), labels, fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel("ratio to the same-run baseline (log scale)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--only", default="")
    ap.add_argument("--out", default=HERE)
    ap.add_argument("--render", action="store_true", help="re-render from results.json, measure nothing")
    args = ap.parse_args(argv)
    if args.render:
        with open(os.path.join(args.out, "results.json")) as f:
            kept = json.load(f)
        write_markdown(kept["rows"], os.path.join(args.out, "results.md"), kept["elapsed"], kept["load"],
                       generated=kept["generated"])
        write_plot(kept["rows"], os.path.join(args.out, "results.png"))
        return 0
    only = {s for s in args.only.split(",") if s}
    names = sorted(m.name for m in pkgutil.iter_modules([HERE]) if m.name.startswith("bench_"))
    rows, t0, failed = [], time.time(), 0
    load0 = os.getloadavg()
    for name in names:
        if only and name[len("bench_"):] not in only:
            continue
        print(f"== {name}", flush=True)
        try:
            mod = importlib.import_module(f"bench.{name}")
            if not hasattr(mod, "run"):   # run by hand only (e.g. bench_ray: needs a Ray install)
                print(f"   skipped: {name} has no run(); see its docstring", flush=True)
                continue
            got = mod.run(quick=args.quick)
            for r in got:
                print(f"   {r['metric']}: {fmt(r['value'])} vs {fmt(r['baseline'])} (ratio {fmt(r['ratio'])})", flush=True)
            rows += got
        except Exception:
            failed += 1
            traceback.print_exc()
            rows.append({"bench": name, "metric": "FAILED", "value": float("nan"), "baseline": float("nan"),
                         "ratio": float("nan"), "goal": "", "note": "see log"})
    os.makedirs(args.out, exist_ok=True)
    load1 = os.getloadavg()
    load = (f", load average (1/5/15 min) {'/'.join(f'{v:.1f}' for v in load0)} at the start and "
            f"{'/'.join(f'{v:.1f}' for v in load1)} at the end")
    elapsed, generated = time.time() - t0, time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime())
    with open(os.path.join(args.out, "results.json"), "w") as f:
        json.dump({"generated": generated, "elapsed": elapsed, "load": load, "rows": rows}, f, indent=1,
                  default=str, allow_nan=True)
    write_markdown(rows, os.path.join(args.out, "results.md"), elapsed, load, generated=generated)
    write_plot(rows, os.path.join(args.out, "results.png"))
    print(f"wrote {os.path.join(args.out, 'results.md')} and results.png")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
