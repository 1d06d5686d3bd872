#!/usr/bin/env python3
"""`lssbench run --trace`: the traced step's Chrome trace and the result's summary of it.

usage: trace.py LSSBENCH MPIEXEC

For serial (1 rank), lss (2 ranks, and 4 ranks as sp 2 x dp 2) and megatron_sp (2 ranks) on
the CPU backend, runs two timed steps and a traced one, then checks:
- the file is a Chrome trace: one process per rank, complete events with ts, dur >= 0, the lanes
  named by metadata events;
- each rank has the phases forward, backward, optimizer in that order, once per traced step
  (one, or three with --trace-steps 3), without overlap, and every other span lies inside them;
- on the CPU every operation runs in line, so the compute lane's spans never overlap (an
  operation inside another, such as gemm_in_passes' copies, is not recorded twice);
- every rank traced the collectives the result counts for one step (comm.per_step_rank0, by
  kind over the groups), the same on every rank, each named by what it is for ("K/V all-gather: sp, ...");
- the result's trace summary agrees with the file: compute_ms is the union of the operations,
  exposed_ms the blocking collectives' time (the CPU has no communication lane), by_operation
  counts the events by name, and compute + exposed + gaps = step (means per traced step);
- the result's peak memory is that of the same run without --trace;
- a trace file that exists already is refused on every rank, exit 2.
"""
import json
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path

lssbench, mpiexec = sys.argv[1], sys.argv[2]
KINDS = {"all_gather", "reduce_scatter", "all_reduce", "all_to_all", "send", "recv", "barrier"}
failures = 0


def check(cond, what):
    global failures
    if not cond:
        failures += 1
    print(f"{'ok  ' if cond else 'FAIL'} {what}")


def union(intervals):
    total, end = 0.0, None
    for b, e in sorted(intervals):
        if end is None or b > end:
            total += e - b
            end = e
        elif e > end:
            total += e - end
            end = e
    return total


def run_case(tmp, name, ranks, args, steps=1):
    out, trace = Path(tmp) / f"{name}.json", Path(tmp) / f"{name}.trace.json"
    cmd = [mpiexec, "-n", str(ranks), lssbench, "run", "--layers", "2", "--width", "64", "--heads", "4",
           "--seq", "256", "--iters", "2", "--threads", "1", "--out", str(out), "--trace", str(trace),
           "--trace-steps", str(steps)] + args
    subprocess.run(cmd, check=True, timeout=300, capture_output=True)
    result, events = json.loads(out.read_text()), json.loads(trace.read_text())["traceEvents"]
    summary = result["trace"]
    check(summary["path"] == str(trace), f"{name}: the result names the trace file")
    spans = [e for e in events if e["ph"] == "X"]
    pids = sorted({e["pid"] for e in spans})
    check(pids == list(range(ranks)), f"{name}: one process per rank ({pids})")
    check(all(e["ts"] >= 0 and e["dur"] >= 0 for e in spans), f"{name}: every span has ts, dur >= 0")
    lane_names = {(e["pid"], e["tid"]): e["args"]["name"] for e in events if e["ph"] == "M" and e["name"] == "thread_name"}
    check(all((e["pid"], e["tid"]) in lane_names for e in spans), f"{name}: every span's lane is named")
    expected = Counter()
    for group in result["comm"]["per_step_rank0"].values():
        for kind, v in group.items():
            expected[kind] += v["calls"] * steps
    per_rank_collectives = []
    for r in range(ranks):
        mine = [e for e in spans if e["pid"] == r]
        phases = [e for e in mine if lane_names[(r, e["tid"])] == "phase"]
        check([p["name"] for p in phases] == ["forward", "backward", "optimizer"] * steps,
              f"{name} rank {r}: phases forward, backward, optimizer ({[p['name'] for p in phases]})")
        ends = [(p["ts"], p["ts"] + p["dur"]) for p in phases]
        check(all(ends[i][1] <= ends[i + 1][0] + 1e-3 for i in range(len(ends) - 1)), f"{name} rank {r}: phases in order")
        lo, hi = ends[0][0], ends[-1][1]
        others = [e for e in mine if lane_names[(r, e["tid"])] != "phase"]
        check(all(lo - 1e-3 <= e["ts"] and e["ts"] + e["dur"] <= hi + 1e-3 for e in others),
              f"{name} rank {r}: every span inside the phases")
        compute_lane = sorted((e["ts"], e["ts"] + e["dur"]) for e in others if lane_names[(r, e["tid"])] == "compute")
        overlaps = sum(1 for a, b in zip(compute_lane, compute_lane[1:]) if b[0] < a[1] - 1e-3)
        check(overlaps == 0, f"{name} rank {r}: compute-lane spans do not overlap ({overlaps} do)")
        unlabelled = [e["args"]["detail"] for e in others if e["name"] in KINDS and ": " not in e["args"]["detail"]]
        check(not unlabelled, f"{name} rank {r}: every collective says what it is for ({unlabelled[:3]})")
        # ... in its own field (args.label), which its detail begins with.
        mislabelled = [e["args"] for e in others if e["name"] in KINDS
                       and not e["args"]["detail"].startswith(e["args"].get("label", "\0") + ": ")]
        check(not mislabelled, f"{name} rank {r}: each collective's args.label begins its detail ({mislabelled[:2]})")
        collectives = Counter(e["name"] for e in others if e["name"] in KINDS)
        per_rank_collectives.append(collectives)
        check(collectives == expected, f"{name} rank {r}: traced collectives {dict(collectives)} = counted {dict(expected)}")
        s = summary["per_rank"][r]
        ops = [e for e in others if e["cat"] == "compute"]
        compute_ms = union([(e["ts"], e["ts"] + e["dur"]) for e in ops]) / 1e3 / steps
        check(abs(compute_ms - s["compute_ms"]) <= 1e-6 * max(1.0, compute_ms),
              f"{name} rank {r}: compute_ms {s['compute_ms']:.6f} = union of operations {compute_ms:.6f}")
        blocking_ms = sum(e["dur"] for e in others if e["cat"] == "comm") / 1e3 / steps
        check(abs(blocking_ms - s["exposed_ms"]) <= 1e-6 * max(1.0, blocking_ms),
              f"{name} rank {r}: exposed_ms {s['exposed_ms']:.6f} = blocking collectives {blocking_ms:.6f}")
        by_name = Counter(e["name"] for e in ops)
        check({k: v["calls"] * steps for k, v in s["by_operation"].items()} == dict(by_name),
              f"{name} rank {r}: by_operation counts the operations' events (per step)")
        parts = s["compute_ms"] + s["exposed_ms"] + s["compute_gaps_ms"]
        check(abs(parts - s["step_ms"]) <= 1e-6 * s["step_ms"],
              f"{name} rank {r}: compute + exposed + gaps {parts:.6f} = step {s['step_ms']:.6f} ms")
        check(by_name["gemm"] > 0 and by_name["attention_forward"] > 0 and by_name["adamw"] > 0,
              f"{name} rank {r}: gemm, attention and adamw traced")
    slowest = max(summary["per_rank"], key=lambda s: s["step_ms"])
    check(summary["slowest_rank"] == slowest, f"{name}: slowest_rank is the longest traced step")
    return trace


with tempfile.TemporaryDirectory() as tmp:
    run_case(tmp, "serial", 1, ["--strategy", "serial"])
    run_case(tmp, "megatron_sp", 2, ["--strategy", "megatron_sp", "--sp", "2"])
    run_case(tmp, "megatron_sp_3steps", 2, ["--strategy", "megatron_sp", "--sp", "2"], steps=3)
    run_case(tmp, "lss_sp2_dp2", 4, ["--strategy", "lss", "--sp", "2", "--zigzag", "--batch", "2"])
    taken = run_case(tmp, "lss", 2, ["--strategy", "lss", "--sp", "2"])
    # The traced step allocates what the timed ones did: the result's memory is a run's without it.
    plain = Path(tmp) / "plain.json"
    subprocess.run([mpiexec, "-n", "2", lssbench, "run", "--strategy", "lss", "--sp", "2", "--layers", "2", "--width",
                    "64", "--heads", "4", "--seq", "256", "--iters", "2", "--threads", "1", "--out", str(plain)],
                   check=True, timeout=300, capture_output=True)
    with_trace, without = (json.loads((Path(tmp) / "lss.json").read_text()), json.loads(plain.read_text()))
    keys = ("peak_mem_bytes", "peak_activation_bytes")
    check(all(with_trace["metrics"][k] == without["metrics"][k] for k in keys),
          f"lss: the same peak memory with and without --trace "
          f"({[with_trace['metrics'][k] for k in keys]} vs {[without['metrics'][k] for k in keys]})")
    again = subprocess.run([mpiexec, "-n", "2", lssbench, "run", "--strategy", "lss", "--sp", "2", "--layers", "2",
                            "--width", "64", "--heads", "4", "--seq", "256", "--iters", "1", "--trace", str(taken),
                            "--out", str(Path(tmp) / "again.json")], capture_output=True, text=True, timeout=300)
    refused = again.stderr.count("--trace " + str(taken) + ": exists already")
    check(again.returncode != 0 and refused == 2 and not (Path(tmp) / "again.json").exists(),
          f"an existing --trace file is refused on both ranks (exit {again.returncode}, {refused} messages)")

print(f"{failures} failure(s)")
sys.exit(1 if failures else 0)
