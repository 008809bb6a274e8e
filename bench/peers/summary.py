"""The issue-16 table: ours vs the single-process peer, one ratio each, picked from a run's rows.

`table(rows)` -> [{label, ours, off, peer, goal, before_ours, before_peer}] for the lines whose rows the run
has (`off`: ours with --cpu-policy off, where the run measured it: bench_isolation);
`markdown(rows)` its lines for bench/results.md; `plot(ax, rows)` grouped bars for bench/results.png.
"before" is the issue's own run (medians of 3, the same 2-core machine, before this peer existed).
"""
from __future__ import annotations

PEER = "single-process peer"
OFF = "ours, --cpu-policy off"
# (label, ours metric(s), peer metric(s), goal for ours, issue's ours, issue's single process)
LINES = (
    ("pose stream 640x480 (rgb), ratio to in-process", ("pose FPS via service vs in-process (rgb)",),
     (f"pose FPS via {PEER} vs in-process (rgb)",), ">= 0.9", "0.86", "0.87"),
    ("face detection stream (rgb), ratio to in-process", ("face_detection FPS via service vs in-process (rgb)",),
     (f"face_detection FPS via {PEER} vs in-process (rgb)",), ">= 0.8", "0.59", "0.59"),
    ("face detection stream (h264), ratio to in-process decode + model",
     ("face_detection FPS via service vs in-process (h264)",),
     (f"face_detection FPS via {PEER} vs in-process (h264)",), ">= 0.8 (issue 13)", "-", "-"),
    ("pose p99 while an LLM streams / alone", ("pose p99 while an LLM streams / alone (ours)",),
     (f"pose p99 while an LLM streams / alone ({PEER})",), "<= 1.1", "1.17", "1.25"),
    ("pose fps while an LLM streams / alone", ("pose fps while an LLM streams / alone (ours)",),
     (f"pose fps while an LLM streams / alone ({PEER})",), ">= 0.95", "0.84", "0.90"),
    ("LLM tokens/s while pose streams / alone", ("LLM tokens/s while pose streams / alone (ours)",),
     (f"LLM tokens/s while pose streams / alone ({PEER})",), ">= 0.6", "0.84", "0.73"),
    ("32 clients x 1 sentence embeddings, ratio to in-process batch-32",
     ("embeddings throughput: 32 concurrent clients via service vs encode(batch 32) in-process",),
     (f"embeddings throughput: 32 concurrent clients via {PEER} vs encode(batch 32) in-process",), ">= 0.8",
     "0.63", "0.19"),
    ("no-op p50, ratio to bare gRPC (1 client / 32 clients)",  # two values: plotted as two bar pairs
     ("p50 no-op, 1 clients (ms)", "p50 no-op, 32 clients (ms)"),
     (f"p50 no-op via {PEER}, 1 clients (ms)", f"p50 no-op via {PEER}, 32 clients (ms)"), "<= 2", "2.3-3.3", "-"),
)


def _ratios(by_metric: dict, metrics: tuple) -> list:
    out = []
    for m in metrics:
        r = by_metric.get(m, {}).get("ratio")
        out.append(r if isinstance(r, (int, float)) and r == r else None)
    return out


def table(rows: list) -> list:
    by_metric = {r["metric"]: r for r in rows}
    out = []
    for label, ours, peer, goal, before_ours, before_peer in LINES:
        o, p = _ratios(by_metric, ours), _ratios(by_metric, peer)
        off = _ratios(by_metric, tuple(m.replace("(ours)", f"({OFF})") if m.endswith("(ours)") else "" for m in ours))
        if all(v is None for v in o + p):
            continue
        out.append({"label": label, "ours": o, "off": off, "peer": p, "goal": goal,
                    "before_ours": before_ours, "before_peer": before_peer})
    return out


def _cell(values: list) -> str:
    return " / ".join("-" if v is None else f"{v:.2f}" for v in values)


def markdown(rows: list) -> list:
    lines = table(rows)
    if not lines:
        return []
    out = ["## Ours vs the single-process peer (issue 16)", "",
           "Ratios from this run's rows below; the peer is bench/peers/single_process.py (one grpc.aio process, "
           "the same handlers and models on thread pools). Before: the issue's figures.", "",
           "| | ours | ours, --cpu-policy off | single-process peer | goal (ours) | before: ours | "
           "before: single process |", "|---|---|---|---|---|---|---|"]
    for t in lines:
        out.append(f"| {t['label']} | {_cell(t['ours'])} | {_cell(t['off'])} | {_cell(t['peer'])} | {t['goal']} | "
                   f"{t['before_ours']} | {t['before_peer']} |")
    return out + [""]


def plot(ax, rows: list) -> bool:
    """Grouped bars (ours, peer) per line on `ax`; False when the run has none of these rows."""
    lines = table(rows)
    if not lines:
        return False
    labels, ours, peer = [], [], []
    for t in lines:
        for i, (o, p) in enumerate(zip(t["ours"], t["peer"])):
            label = t["label"]
            if len(t["ours"]) > 1:   # "... (a / b)": the i-th of the names in the brackets
                head, names = label.rsplit(" (", 1)
                label = f"{head} ({names.rstrip(')').split(' / ')[i]})"
            labels.append(label)
            ours.append(o or 0.0)
            peer.append(p or 0.0)
    y = range(len(labels))
    ax.barh([i - 0.2 for i in y], ours, height=0.4, color="#4477aa", label="ours")
    ax.barh([i + 0.2 for i in y], peer, height=0.4, color="#ee6677", label=PEER)
    ax.axvline(1.0, color="k", lw=0.8)
    ax.set_yticks(list(y), labels, fontsize=7)
    ax.invert_yaxis()
    ax.legend(fontsize=7)
    ax.set_title("ours vs the single-process peer (issue 16)", fontsize=9)
    return True
