#!/usr/bin/env python3
"""Summarise Nsight Compute's per-instruction source counters of one kernel.

Input: the CSV of `ncu --import REPORT --page source --csv --print-source sass` (a report taken
with `--import-source yes` and the SourceCounters section, e.g. `--set full`). Output, for people:
the warp-stall samples by reason and by opcode, the instruction mix of the hottest loop per
iteration and warp (the rows sharing the execution count that carries the most instructions), and
the instructions with the most samples with their leading stall reasons. Used by
scripts/gpu_perf.sh ncu-attention; the readings of results/h200-x2/20261129T1340-d64-turns-two-gpus
came from it.

usage: ncu_sass_summary.py SOURCE.csv [--top N]
"""
import argparse
import collections
import csv
import lzma
import sys

SAMPLES = "Warp Stall Sampling (All Samples)"
EXECUTED = "Instructions Executed"


def number(text):
    try:
        return float(text.replace(",", ""))
    except ValueError:
        return 0.0


def opcode(source):
    words = [w for w in source.split() if not w.startswith("@")]  # drop predicates
    return words[0].split(".")[0] if words else "?"


def uniform_datapath(op):
    """Uniform-datapath instructions (U..., not nvdisasm's UNKNOWN) and R2UR, the moves into them."""
    return (op.startswith("U") and op != "UNKNOWN") or op == "R2UR"


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("csv", help="ncu --page source --csv --print-source sass output (.csv or .csv.xz)")
    ap.add_argument("--top", type=int, default=25, help="instructions listed (default 25)")
    args = ap.parse_args()
    opener = lzma.open if args.csv.endswith(".xz") else open
    try:
        with opener(args.csv, "rt", errors="replace") as f:
            rows = list(csv.reader(f))
    except (OSError, lzma.LZMAError) as e:
        sys.exit(f"{args.csv}: {e}")
    head = next((i for i, r in enumerate(rows) if "Source" in r and SAMPLES in r), None)
    if head is None:
        sys.exit(f"{args.csv}: no '{SAMPLES}' column: was the report taken with --import-source yes "
                 "and the SourceCounters section (--set full)?")
    if head > 0 and rows[0] and rows[0][0] == "Kernel Name":
        print("kernel:", rows[0][1])
    h = rows[head]
    col = {name: i for i, name in enumerate(h)}
    data = [r for r in rows[head + 1:] if len(r) == len(h)]
    stalls = [n for n in h if n.startswith("stall_") and "(Not Issued)" not in n]
    total = sum(number(r[col[SAMPLES]]) for r in data)
    if total == 0:
        sys.exit(f"{args.csv}: no warp-stall samples")
    print(f"{len(data)} SASS instructions, {total:.0f} warp-state samples, "
          f"{sum(number(r[col[EXECUTED]]) for r in data):.0f} warp instructions executed")

    by_reason = collections.Counter()
    for r in data:
        for s in stalls:
            by_reason[s[len("stall_"):]] += number(r[col[s]])
    print("\nsamples by warp state")
    for name, v in by_reason.most_common(10):
        print(f"  {name:20s} {100 * v / total:5.1f}%")

    samples_by_op, executed_by_op = collections.Counter(), collections.Counter()
    for r in data:
        op = opcode(r[col["Source"]])
        samples_by_op[op] += number(r[col[SAMPLES]])
        executed_by_op[op] += number(r[col[EXECUTED]])
    print("\nby opcode: share of samples, warp instructions executed")
    for op, v in samples_by_op.most_common(15):
        print(f"  {op:12s} {100 * v / total:5.1f}%  {executed_by_op[op]:14.0f}")

    # The hottest loop: the execution count whose rows carry the most executed instructions.
    weight = collections.Counter()
    for r in data:
        n = number(r[col[EXECUTED]])
        if n > 0:
            weight[n] += n
    if weight:
        count, carried = weight.most_common(1)[0]
        loop = [r for r in data if number(r[col[EXECUTED]]) == count]
        mix = collections.Counter(opcode(r[col["Source"]]) for r in loop)
        uniform = sum(v for k, v in mix.items() if uniform_datapath(k))
        print(f"\nhottest loop: {len(loop)} instructions per iteration and warp, executed {count:.0f} times "
              f"({100 * carried / sum(weight.values()):.0f}% of all), {uniform} of them uniform-datapath or R2UR, "
              f"{sum(number(r[col[SAMPLES]]) for r in loop) / total * 100:.0f}% of the samples")
        print("  " + "  ".join(f"{k}:{v}" for k, v in mix.most_common(20)))

    print(f"\ntop {args.top} instructions by samples (leading warp states)")
    for r in sorted(data, key=lambda r: -number(r[col[SAMPLES]]))[:args.top]:
        s = number(r[col[SAMPLES]])
        lead = sorted(((number(r[col[x]]), x[len("stall_"):]) for x in stalls), reverse=True)[:2]
        why = " ".join(f"{n} {100 * v / max(s, 1):.0f}%" for v, n in lead if v > 0)
        print(f"  {r[col['Address']]:>14s} {100 * s / total:5.1f}%  {r[col['Source']].strip()[:64]:64s} {why}")


if __name__ == "__main__":
    main()
