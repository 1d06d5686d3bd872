#!/usr/bin/env python3
"""Projected against measured scaling, from lssbench JSON only.

usage: python3 plots/projplot.py PATH [PATH ...] --out CHART_DIR

Each PATH is a `lssbench project` file, a `lssbench run` result, or a folder searched (recursively)
for both; other JSON files there are skipped. A point is (series, GPUs): the series is the strategy,
the options it was given that differ from their defaults, the data replicas, the tokens per GPU
(T / world), so that a weak-scaling series runs across GPU counts, and the model.
CHART_DIR/projection.png draws TFLOP/s per GPU against GPUs: measured (filled markers, solid),
projected step (hollow markers, dashed: the compute as the calibration's ran against its bound,
plus the exposed communication) and projected bound (dotted). CHART_DIR/SUMMARY.md has every
point with projected step / measured step where both exist (README, Projection). A missing or
malformed file named on the command line is an error naming it.
"""
import argparse
import glob
import os
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from figsave import save_png  # noqa: E402
from jsonfile import InputError, load_json  # noqa: E402

# A strategy's series take its colours in turn (e.g. lss with and without options).
STYLE = {"lss": (["tab:blue", "tab:cyan", "navy", "tab:purple"], "o"),
         "megatron_sp": (["tab:orange", "tab:red", "tab:brown", "gold"], "s"),
         "serial": (["tab:gray", "black"], "^")}
# Options off by default that change what a strategy runs: they name a series.
FLAGS = ["zigzag", "keep-kv", "placed-reduce-scatter", "local-cross-block", "distributed-optimizer", "recompute",
         "chunk-pipeline", "copy-engine-gathers", "registered-gathers",
         "symmetric-collectives"]


def is_projection(j):
    return isinstance(j, dict) and j.get("schema") == "lssbench-projection"


def is_result(j):
    return isinstance(j, dict) and "schema_version" in j and "timing" in j and "grid" in j and "strategy" in j


def kilo(n):
    return f"{n // 1024}K" if n % 1024 == 0 else str(n)


# Options with a value, and their defaults: another value names a series too.
VALUED = {"overlap": "true", "regather-ln": "true", "split-causal": "true", "scatter-chunks": "0",
          "grad-reduce-dtype": "master", "optimizer-in-backward": "false", "attention": "auto"}


def series_of(j):
    cfg = j["config"]
    opts = cfg.get("options", {})
    given = ["--" + f for f in FLAGS if opts.get(f) == "true"]
    for k, default in VALUED.items():
        v = opts.get(k)
        if v is not None and v != default:
            given.append(f"--no-{k}" if v == "false" else f"--{k}" if v == "true" else f"--{k} {v}")
    per_gpu = cfg["seq"] * cfg["batch"] // j["grid"]["world"]
    model = " ".join(f"{letter}{cfg[key]}" for letter, key in (("L", "layers"), ("C", "width")) if key in cfg)
    model += f" {cfg['dtype']}" if "dtype" in cfg else ""
    label = j["strategy"] + (" " + " ".join(given) if given else "")
    dp = j["grid"].get("dp", 1)
    return f"{label}{f', dp {dp}' if dp > 1 else ''}, {kilo(per_gpu)} tokens/GPU" + (f", {model.strip()}" if model.strip() else "")


def load(paths):
    points = {}  # (series, world) -> {"measured": ..., "projected": ...}
    for path in paths:
        if os.path.isdir(path):
            files = sorted(glob.glob(os.path.join(path, "**", "*.json"), recursive=True))
            named = False
        else:
            files, named = [path], True
        for f in files:
            try:
                j = load_json(f)
            except InputError:
                if named:
                    raise
                continue
            if is_projection(j):
                kind = "projected"
            elif is_result(j) and j.get("status") == "ok":
                kind = "measured"
            elif named:
                raise InputError(f"{f}: neither a projection (lssbench project) nor an ok result (lssbench run)")
            else:
                continue
            try:
                key = (series_of(j), j["grid"]["world"])
                entry = {"path": f, "seq": j["config"]["seq"]}
                if kind == "projected":
                    p = j["projection"]
                    entry.update(bound_ms=p["bound_ms"], step_ms=p["step_ms"], bound_tflops=p["bound_tflops_per_gpu"],
                                 step_tflops=p["step_tflops_per_gpu"])
                else:
                    entry.update(step_ms=j["timing"]["median_ms"], tflops=j["metrics"]["tflops_per_gpu"])
            except (KeyError, TypeError) as e:
                raise InputError(f"{f}: missing field {e}")
            points.setdefault(key, {})[kind] = entry  # the last file of a point wins (sorted names)
    if not points:
        raise InputError("no projection or result JSON found in " + ", ".join(paths))
    return points


def draw(points, out):
    fig, ax = plt.subplots(figsize=(7, 4.5))
    series = sorted({s for s, _ in points})
    used = {}
    for s in series:
        strategy = s.split(" ")[0].rstrip(",")
        colors, marker = STYLE.get(strategy, ([None], "x"))
        color = colors[used.get(strategy, 0) % len(colors)]
        used[strategy] = used.get(strategy, 0) + 1
        worlds = sorted(w for t, w in points if t == s)
        for kind, key, ls, fill, suffix in (("measured", "tflops", "-", color, "measured"),
                                            ("projected", "step_tflops", "--", "none", "projected step"),
                                            ("projected", "bound_tflops", ":", "none", "projected bound")):
            xy = [(w, points[(s, w)][kind][key]) for w in worlds
                  if kind in points[(s, w)] and points[(s, w)][kind].get(key) is not None]
            if xy:
                ax.plot([x for x, _ in xy], [y for _, y in xy], ls=ls, marker=marker, color=color,
                        markerfacecolor=fill, label=f"{s}: {suffix}")
    ax.set_xscale("log", base=2)
    worlds = sorted({w for _, w in points})
    ax.set_xticks(worlds, [str(w) for w in worlds])
    ax.minorticks_off()
    ax.set_xlabel("GPUs")
    ax.set_ylabel("TFLOP/s per GPU (model FLOPs)")
    ax.set_title("measured and projected (lssbench project)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=1)
    os.makedirs(out, exist_ok=True)
    save_png(fig, os.path.join(out, "projection.png"), dpi=120, bbox_inches="tight")
    plt.close(fig)


def fmt(v, spec=".2f"):
    return "" if v is None else format(v, spec)


def write_summary(points, out):
    lines = ["# Measured and projected", "",
             "Projected step = the slowest rank's compute x its calibration's compute ratio + its exposed "
             "communication (README, Projection).", "",
             "| series | GPUs | T | measured step (ms) | projected step (ms) | projected bound (ms) | "
             "projected / measured | measured TFLOP/s/GPU | projected TFLOP/s/GPU |",
             "|---|---|---|---|---|---|---|---|---|"]
    for (s, w) in sorted(points):
        m, p = points[(s, w)].get("measured"), points[(s, w)].get("projected")
        seq = (m or p)["seq"]
        ratio = p["step_ms"] / m["step_ms"] if m and p and p.get("step_ms") else None
        lines.append(f"| {s} | {w} | {kilo(seq)} | {fmt(m and m['step_ms'])} | {fmt(p and p['step_ms'])} | "
                     f"{fmt(p and p['bound_ms'])} | {fmt(ratio, '.3f')} | {fmt(m and m['tflops'], '.4g')} | "
                     f"{fmt(p and p['step_tflops'], '.4g')} |")
    with open(os.path.join(out, "SUMMARY.md"), "w") as f:
        f.write("\n".join(lines) + "\n")


def main(argv):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("paths", nargs="+", help="projection or result JSON files, or folders of them")
    ap.add_argument("--out", required=True, help="folder for projection.png and SUMMARY.md")
    a = ap.parse_args(argv)
    try:
        points = load(a.paths)
    except InputError as e:
        print(f"projplot: error: {e}", file=sys.stderr)
        return 2
    draw(points, a.out)
    write_summary(points, a.out)
    print(f"wrote {os.path.join(a.out, 'projection.png')} and SUMMARY.md ({len(points)} points)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
