#!/usr/bin/env python3
"""Timelines and a time breakdown of traced steps (`lssbench run --trace`), from JSON only.

usage: python3 plots/traceplot.py RESULT_JSON [RESULT_JSON ...] --out CHART_DIR [--window START:END]

Each RESULT_JSON is an lssbench result with a "trace" entry; its Chrome trace is read from the
path recorded there, or, where that path is gone (results copied from another machine), from the
file of that name (or that name with .xz, compressed) beside the result or in the sweep's traces/ folder (a sweep spec's trace_steps). Per result, timeline_<stem>.png (the stem prefixed by as many folders as tell apart results of one file name) draws every rank's lanes
(phase, compute, side, comm) with each span coloured by kind: attention, GEMM, other operations,
collectives, waits; --window (ms from the trace's origin) zooms in on a part of the step, e.g. one
layer. breakdown.png stacks each result's slowest rank: attention, GEMMs, other operations,
exposed communication and compute-lane gaps, beside its traced step (means per step where the
result traced several: --trace-steps). CHART_DIR/charts.json lists
the charts, CHART_DIR/SUMMARY.md has the table (README, Metrics, "Step trace") and, for results that
differ only in --overlap, what overlap gains and what it costs (README, Metrics, "overlap accounting"). A missing or
malformed file is an error naming the file (exit 2).
"""
import argparse
import copy
import json
import os
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from figsave import save_png  # noqa: E402
from jsonfile import InputError, load_json  # noqa: E402

LANES = ["phase", "compute", "side", "comm"]
KINDS = {  # kind: (colour, legend label)
    "attention": ("tab:red", "attention"),
    "gemm": ("tab:blue", "GEMM"),
    "other": ("tab:gray", "other operations"),
    "comm": ("tab:green", "collective"),
    "wait": ("black", "wait (exposed)"),
    "phase": ("tab:olive", "phase"),
}


def kind_of(event):
    if event["cat"] in ("comm", "wait", "phase"):
        return event["cat"]
    if event["name"].startswith("attention"):
        return "attention"
    return "gemm" if event["name"] == "gemm" else "other"


def load_result(path):
    r = load_json(path)
    if not isinstance(r, dict) or "strategy" not in r or "grid" not in r:
        raise InputError(f"{path}: not an lssbench result (strategy or grid missing)")
    t = r.get("trace")
    if not isinstance(t, dict) or "path" not in t or "per_rank" not in t or "slowest_rank" not in t:
        raise InputError(f"{path}: no trace in this result (run it with --trace FILE)")
    # The recorded path; else, for results copied elsewhere, the file of that name beside the
    # result, or in the sweep's traces/ folder beside its points/; each also xz-compressed
    # (NAME.xz, as results/ keeps them).
    here = os.path.dirname(os.path.abspath(path))
    places = [t["path"], os.path.join(here, os.path.basename(t["path"])),
              os.path.join(os.path.dirname(here), "traces", os.path.basename(t["path"]))]
    candidates = [c for place in places for c in (place, place + ".xz")]
    trace_path = next((c for c in candidates if os.path.exists(c)), places[1])
    trace = load_json(trace_path)
    if not isinstance(trace, dict) or not isinstance(trace.get("traceEvents"), list):
        raise InputError(f"{trace_path}: not a Chrome trace (traceEvents missing)")
    events = trace["traceEvents"]
    for e in events:
        if not isinstance(e, dict) or "ph" not in e or "pid" not in e:
            raise InputError(f"{trace_path}: malformed trace event {e!r:.80}")
    return {"path": path, "trace_path": trace_path, "result": r, "events": events}


def unique_stems(items):
    """Each result's stem: its file name without .json, or for results of one file name from
    different folders (two calls' points) the shortest tail of their paths that tells them apart,
    so that no timeline overwrites another."""
    parts = [os.path.splitext(os.path.abspath(item["path"]))[0].split(os.sep) for item in items]
    for item, mine in zip(items, parts):
        same = [other for other in parts if other[-1] == mine[-1] and other is not mine]
        k = 1
        while k < len(mine) and any(other[-k:] == mine[-k:] for other in same):
            k += 1
        item["stem"] = "_".join(mine[-k:])


def table_label(item):
    """A result's row in SUMMARY.md: its configuration and its file, always."""
    return label_of(dict(item, same_label=True))


def label_of(item):
    r = item["result"]
    g, c = r["grid"], r["config"]
    label = f"{r['strategy']} w{g['world']} sp{g['sp']} T{c['seq']}"
    # Results of one configuration (e.g. lss with and without an option) are told apart by file.
    return f"{label} ({item['stem']})" if item.get("same_label") else label


def draw_timeline(item, out, window):
    events = item["events"]
    lanes = {}
    for e in events:
        if e["ph"] == "M" and e["name"] == "thread_name":
            lanes[(e["pid"], e["tid"])] = e["args"]["name"]
    spans = [e for e in events if e["ph"] == "X"]
    lo, hi = window if window else (0.0, max((e["ts"] + e["dur"]) / 1e3 for e in spans))
    rows = sorted({(e["pid"], LANES.index(lanes[(e["pid"], e["tid"])])) for e in spans})
    fig, ax = plt.subplots(figsize=(12, 0.45 * len(rows) + 1.6))
    y_of = {row: len(rows) - 1 - i for i, row in enumerate(rows)}
    for e in spans:
        b, d = e["ts"] / 1e3, e["dur"] / 1e3
        if b + d < lo or b > hi:
            continue
        kind = kind_of(e)
        y = y_of[(e["pid"], LANES.index(lanes[(e["pid"], e["tid"])]))]
        ax.broken_barh([(b, max(d, (hi - lo) * 1e-4))], (y - 0.4, 0.8), facecolors=KINDS[kind][0],
                       edgecolors="white", linewidth=0.3)
        if kind == "phase" and d > (hi - lo) * 0.05:
            ax.text(max(b, lo) + (min(b + d, hi) - max(b, lo)) / 2, y, e["name"], ha="center", va="center", fontsize=7,
                    color="white")
    ax.set_yticks([y_of[r] for r in rows])
    ax.set_yticklabels([f"rank {p} {LANES[lane]}" for p, lane in rows], fontsize=8)
    ax.set_xlim(lo, hi)
    ax.set_xlabel("ms from the trace's origin")
    s = item["result"]["trace"]["slowest_rank"]
    steps = item["result"]["trace"].get("steps", 1)
    what = f"traced step {s['step_ms']:.2f} ms" if steps == 1 else f"{steps} traced steps, {s['step_ms']:.2f} ms each on average"
    ax.set_title(f"{label_of(item)}: {what} (slowest rank {s['rank']})", fontsize=10)
    ax.legend(handles=[Patch(color=c, label=label) for c, label in KINDS.values()], loc="upper center",
              bbox_to_anchor=(0.5, -0.25 if len(rows) > 3 else -0.45), ncol=6, fontsize=8, frameon=False)
    fig.tight_layout()
    name = f"timeline_{item['stem']}.png"
    save_png(fig, os.path.join(out, name), dpi=130, bbox_inches="tight")
    plt.close(fig)
    return name


def breakdown(item):
    """The slowest rank's traced step in parts (ms): attention, GEMMs and other operations (summed
    over the compute and side lanes), exposed communication, compute-lane gaps."""
    s = item["result"]["trace"]["slowest_rank"]
    ops = s["by_operation"]
    attention = sum(v["ms"] for k, v in ops.items() if k.startswith("attention"))
    gemm = ops.get("gemm", {}).get("ms", 0.0)
    other = sum(v["ms"] for k, v in ops.items() if k != "gemm" and not k.startswith("attention"))
    return {"step": s["step_ms"], "attention": attention, "gemm": gemm, "other": other, "exposed": s["exposed_ms"],
            "gaps": s["compute_gaps_ms"], "comm": s["comm_ms"], "hidden": s["comm_hidden_ms"], "rank": s["rank"]}


def draw_breakdown(items, out):
    parts = [("attention", "attention", "tab:red"), ("gemm", "GEMM", "tab:blue"), ("other", "other operations", "tab:gray"),
             ("exposed", "exposed communication", "black"), ("gaps", "compute-lane gaps", "tab:purple")]
    fig, ax = plt.subplots(figsize=(9, 0.6 * len(items) + 1.8))
    labels = []
    for i, item in enumerate(items):
        b = breakdown(item)
        left = 0.0
        for key, _, colour in parts:
            ax.barh(i, b[key], left=left, color=colour, height=0.6)
            left += b[key]
        ax.plot([b["step"], b["step"]], [i - 0.4, i + 0.4], color="gold", linewidth=2)
        labels.append(f"{label_of(item)} (rank {b['rank']})")
    ax.set_yticks(range(len(items)))
    ax.set_yticklabels(labels, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("ms of the traced step (the gold tick: the step; side-lane work overlaps the compute lane)")
    ax.set_title("Where the step's time goes (slowest rank)", fontsize=10)
    handles = [Patch(color=c, label=lab) for _, lab, c in parts] + [Patch(color="gold", label="traced step")]
    ax.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, -0.3 if len(items) > 2 else -0.55), ncol=3,
              fontsize=8, frameon=False)
    fig.tight_layout()
    save_png(fig, os.path.join(out, "breakdown.png"), dpi=130, bbox_inches="tight")  # long labels and the legend in full
    plt.close(fig)
    return "breakdown.png"


def overlap_key(result):
    """A result's configuration without its overlap setting and its output paths: two results
    with the same key differ only in --overlap."""
    config = copy.deepcopy(result["config"])
    config.get("strategy_options", {}).pop("overlap", None)
    for name in ("overlap", "out", "trace", "export"):
        config.get("options", {}).pop(name, None)
    return json.dumps([result["strategy"], result["grid"], config], sort_keys=True)


def overlap_pairs(items):
    """(blocking, overlapped) pairs of results that differ only in --overlap: per configuration the
    first blocking with the first overlapped, the second with the second (rounds), in input order."""
    on, off = {}, {}
    for item in items:
        opts = item["result"]["config"].get("strategy_options", {})
        if "overlap" in opts:
            (on if opts["overlap"] else off).setdefault(overlap_key(item["result"]), []).append(item)
    return [pair for k in off if k in on for pair in zip(off[k], on[k])]


def overlap_accounting(blocking, overlapped):
    """What overlap gains and what it costs (ms, slowest rank's traced steps; README, Metrics):
    the timed step's gain, the communication the blocking run exposes, and the compute
    (attention + GEMM + other operations) that runs slower beside the overlapped collectives."""
    b, o = breakdown(blocking), breakdown(overlapped)
    compute_off, compute_on = (x["attention"] + x["gemm"] + x["other"] for x in (b, o))
    step_off = blocking["result"].get("timing", {}).get("median_ms")
    step_on = overlapped["result"].get("timing", {}).get("median_ms")
    gain = None if step_off is None or step_on is None else step_off - step_on
    return {"step_blocking": step_off, "step_overlapped": step_on, "gain": gain,
            "exposed_blocking": b["exposed"], "exposed_overlapped": o["exposed"],
            "compute_blocking": compute_off, "compute_overlapped": compute_on,
            "compute_slowdown": compute_on - compute_off,
            "gained_share": None if gain is None or b["exposed"] <= 0 else gain / b["exposed"]}


def write_summary(items, overlap, out):
    """SUMMARY.md: the breakdown table, the collectives by what they are for and `overlap`'s
    (blocking, overlapped, accounting) rows."""
    lines = ["# Traced steps", "",
             "The slowest rank of each result's traced step (`lssbench run --trace`; README, Metrics, \"Step trace\"), "
             "in ms. Attention, GEMM and other: operation time summed over the compute and side lanes.", "",
             "| result | traced step | timed median | attention | GEMM | other | comm | hidden | exposed | gaps |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for item in items:
        b = breakdown(item)
        timed = item["result"].get("timing", {}).get("median_ms")
        lines.append(f"| {table_label(item)} | {b['step']:.2f} | "
                     f"{'' if timed is None else f'{timed:.2f}'} | {b['attention']:.2f} | {b['gemm']:.2f} | "
                     f"{b['other']:.2f} | {b['comm']:.2f} | {b['hidden']:.2f} | {b['exposed']:.2f} | {b['gaps']:.2f} |")
    rows = []
    for item in items:
        s = item["result"]["trace"]["slowest_rank"]
        label = table_label(item)
        for name, v in sorted(s.get("by_collective", {}).items(), key=lambda kv: -kv[1]["ms"]):
            rows.append(f"| {label} | {name} | {v['calls']:g} | {v['ms']:.2f} |")
    if rows:
        lines += ["", "## Collectives by what they are for", "",
                  "The slowest rank's collectives per step (time on their lane, hidden or not; README, Metrics).", "",
                  "| result | collective | calls | ms |", "|---|---|---|---|"] + rows
    if overlap:
        fmt = lambda x: "-" if x is None else f"{x:.2f}"
        lines += ["", "## What overlap gains and what it costs", "",
                  "Results that differ only in `--overlap` (README, Metrics, \"overlap accounting\"): the timed steps, the "
                  "communication the blocking run exposes, the compute (attention + GEMM + other) of each traced step, "
                  "and the share of the blocking communication that overlap gains, in ms.", "",
                  "| configuration | step blocking | step overlapped | gain | exposed blocking | exposed overlapped "
                  "| compute blocking | compute overlapped | compute slower by | share gained |",
                  "|---|---|---|---|---|---|---|---|---|---|"]
        for _, overlapped, a in overlap:
            lines.append(f"| {label_of(overlapped)} | {fmt(a['step_blocking'])} | {fmt(a['step_overlapped'])} | "
                         f"{fmt(a['gain'])} | {a['exposed_blocking']:.2f} | {a['exposed_overlapped']:.2f} | "
                         f"{a['compute_blocking']:.2f} | {a['compute_overlapped']:.2f} | {a['compute_slowdown']:.2f} | "
                         f"{fmt(a['gained_share'])} |")
    with open(os.path.join(out, "SUMMARY.md"), "w") as f:
        f.write("\n".join(lines) + "\n")


def parse_window(text):
    try:
        lo, hi = (float(x) for x in text.split(":"))
    except ValueError:
        raise InputError(f"--window {text}: expected START:END in ms, e.g. 40:56")
    if not 0 <= lo < hi:
        raise InputError(f"--window {text}: needs 0 <= START < END")
    return lo, hi


def main(argv):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("results", nargs="+", help="lssbench result JSON files run with --trace")
    ap.add_argument("--out", required=True, help="folder for the charts, charts.json and SUMMARY.md")
    ap.add_argument("--window", default="", help="START:END in ms: the timelines' span (default: the whole step)")
    args = ap.parse_args(argv)
    try:
        window = parse_window(args.window) if args.window else None
        items = [load_result(p) for p in args.results]
        unique_stems(items)
        labels = [label_of(item) for item in items]
        for item, label in zip(items, labels):
            item["same_label"] = labels.count(label) > 1
    except InputError as e:
        print(f"traceplot: error: {e}", file=sys.stderr)
        return 2
    os.makedirs(args.out, exist_ok=True)
    charts = {"timelines": {}, "breakdown": None}
    for item in items:
        charts["timelines"][item["path"]] = draw_timeline(item, args.out, window)
    charts["breakdown"] = draw_breakdown(items, args.out)
    charts["breakdown_ms"] = {item["path"]: breakdown(item) for item in items}
    overlap = [(b, o, overlap_accounting(b, o)) for b, o in overlap_pairs(items)]
    charts["overlap"] = [dict(a, blocking=b["path"], overlapped=o["path"]) for b, o, a in overlap]
    with open(os.path.join(args.out, "charts.json"), "w") as f:
        json.dump(charts, f, indent=2)
    write_summary(items, overlap, args.out)
    print(f"traceplot: {len(items)} traced step(s) drawn in {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
