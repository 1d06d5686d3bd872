#!/usr/bin/env python3
"""Tables of an A/B on one card: a base build against variants, each run in rounds (JSON only).

usage: python3 scripts/ab_summary.py SIDE=FILE[,FILE...] SIDE=FILE[,FILE...] [...]

The first SIDE is the base. Each FILE is one round of that side: either Google Benchmark JSON
of bench_attention or bench_kernels (rows: each benchmark's TFLOP/s, or GB/s where it has no
TFLOP/s) or an lssbench result (one row: the step's median ms, keyed by strategy, T, H and
world). A row of a variant shows every round's value and the change of its mean against the
base's mean: for rates higher is better, for ms lower is; a side without the row shows "-".
A change marked "~" is no larger than the spread of either side's rounds ((max - min) / mean),
so that one call cannot tell it from the card's drift. Each side's build (git_commit in the JSON) heads its table so that the A/B names what
it compared. gpu_perf.sh's ab-kernel section writes its summary with this; it reads only JSON.
A missing or malformed file is an error naming it (exit 2).
"""
import os
import sys

# The plot scripts' loader (plots/jsonfile.py imports no matplotlib, which the GPU machine's
# python3, where gpu_perf.sh runs this, need not have).
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "plots"))
from jsonfile import InputError, load_json  # noqa: E402


def rows_of(path):
    """[(unit, row key, value)] and the build's commit, for one round's file."""
    doc = load_json(path)
    if isinstance(doc, dict) and "benchmarks" in doc:
        rows = []
        for b in doc["benchmarks"]:
            if b.get("run_type", "iteration") != "iteration" or b.get("error_occurred"):
                continue
            unit = next((u for u in ("TFLOP/s", "GB/s") if u in b), None)
            if unit:
                rows.append((unit, b["name"].removesuffix("/manual_time"), float(b[unit])))
        ctx = doc.get("context", {})
        return rows, ctx.get("git_commit", ctx.get("lssbench_commit", "?"))
    if isinstance(doc, dict) and "timing" in doc and "config" in doc:
        c = doc["config"]
        world = doc.get("grid", {}).get("world", 1) if isinstance(doc.get("grid"), dict) else 1
        key = f"{doc.get('strategy', '?')} T={c['seq']} H={c['heads']} world={world}"
        commit = doc.get("machine", {}).get("git_commit", "?")
        return [("ms", key, float(doc["timing"]["median_ms"]))], commit
    raise InputError(f"{path}: neither Google Benchmark JSON (benchmarks) nor an lssbench result (timing, config)")


def parse_side(arg):
    name, sep, files = arg.partition("=")
    if not sep or not name or not files:
        raise InputError(f"'{arg}': expected SIDE=FILE[,FILE...]")
    return name, [f for f in files.split(",") if f]


def main(argv):
    if len(argv) < 2 or any(a in ("-h", "--help") for a in argv):
        print(__doc__.strip())
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    sides = [parse_side(a) for a in argv]
    # side -> unit -> row -> [value per round]; side -> commits
    values, commits = {}, {}
    for name, files in sides:
        for path in files:
            rows, commit = rows_of(path)
            commits.setdefault(name, [])
            if commit not in commits[name]:
                commits[name].append(commit)
            for unit, key, v in rows:
                values.setdefault(name, {}).setdefault(unit, {}).setdefault(key, []).append(v)
    base = sides[0][0]
    mean = lambda xs: sum(xs) / len(xs)
    out = []
    out.append("builds: " + "; ".join(f"{n} = {', '.join(commits.get(n, ['?']))}" for n, _ in sides))
    for unit in ("TFLOP/s", "GB/s", "ms"):
        keys = list(values.get(base, {}).get(unit, {}))
        if not keys:
            continue
        better = "lower" if unit == "ms" else "higher"
        out.append("")
        out.append(f"{unit} ({better} is better; each round's value, then the change of the mean against {base}; "
                   "~: no larger than either side's own range over its rounds)")
        header = ["row", base] + [n for n, _ in sides[1:]]
        table = [header]
        for key in keys:
            b = values[base][unit][key]
            line = [key, ", ".join(f"{x:.2f}" for x in b)]
            for name, _ in sides[1:]:
                v = values.get(name, {}).get(unit, {}).get(key)
                if not v:
                    line.append("-")
                    continue
                change = mean(v) / mean(b) - 1
                # Within either side's own round-to-round range: not told apart from noise.
                spread = max((max(b) - min(b)) / mean(b), (max(v) - min(v)) / mean(v))
                mark = " ~" if len(b) > 1 and len(v) > 1 and abs(change) <= spread else ""
                line.append(", ".join(f"{x:.2f}" for x in v) + f"  ({change:+.1%}{mark})")
            table.append(line)
        widths = [max(len(r[i]) for r in table) for i in range(len(header))]
        for r in table:
            out.append("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())
    print("\n".join(out))
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main(sys.argv[1:]))
    except InputError as e:
        print(f"ab_summary: {e}", file=sys.stderr)
        sys.exit(2)
