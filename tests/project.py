#!/usr/bin/env python3
"""`lssbench project`: a grid's step priced in one process (README, "Projection").

usage: project.py LSSBENCH MPIEXEC

On the CPU backend: a 2-rank lss run with its bound is the calibration; projections of lss and
megatron_sp onto grids of 4 x 2 and 4 ranks then check, against the formulas of the README:
- a group's latency and bus bandwidth are the least-squares line through the calibration's
  collectives (bus factor (n-1)/n, 2(n-1)/n for all-reduce; every call counted): collectives on an
  exact line give it back; with no slope, latency 0 and their bus bytes over their time; a given
  bandwidth replaces the fit, with --latency-us;
- each collective is priced at latency + bus factor x bytes / busbw of its group, and its exposed
  time is calls x max(0, priced - hidden); with --gpus-per-node, a group whose ranks lie on several
  nodes (a sequence group when P does not divide the node's GPUs, a data group when the grid does
  not fit on one node) at --inter-node-busbw;
- a rank's bound is its compute parts plus its exposed communication; the projection's bound is
  the slowest rank's; the projected step is that rank's compute times the calibration's compute
  ratio, (step - exposed - contention) / (bound - exposed), plus its exposed communication, plus
  its contention: the calibration's contended cost per bus byte times the bus bytes of its
  collectives that GEMMs hide;
- the K/V all-gather of every projected lss rank moves T x B/R x 2C elements;
- --like RUN.json takes every step option the command line leaves out from the run's recorded ones;
- bad input (launched on 2 ranks, no bandwidth, unreadable or foreign calibration, a batch the
  replicas do not divide, a negative bandwidth, a group across nodes without the link's bandwidth,
  an existing --out) exits 2 naming the value.
"""
import json
import re
import subprocess
import sys
import tempfile
from pathlib import Path

lssbench, mpiexec = sys.argv[1], sys.argv[2]
failures = 0
MODEL = ["--layers", "2", "--width", "64", "--heads", "4", "--seq", "512", "--batch", "2", "--threads", "1"]


def check(cond, what):
    global failures
    if not cond:
        failures += 1
    print(f"{'ok  ' if cond else 'FAIL'} {what}")


def close(a, b, rel=1e-9):
    return abs(a - b) <= rel * max(abs(a), abs(b), 1e-300)


def bus_factor(kind, n):
    f = (n - 1) / n
    return 2 * f if kind == "all_reduce" else f


stdout_of = {}  # each projection's stdout, by name


def project(tmp, name, args):
    out = Path(tmp) / f"{name}.json"
    p = subprocess.run([lssbench, "project", *MODEL, "--out", str(out), *args], check=True, timeout=300,
                       capture_output=True, text=True)
    stdout_of[name] = p.stdout
    return json.loads(out.read_text())


def printed_parts(stdout):
    """The slowest rank's parts as `project` prints them (3 decimals), and the total it prints."""
    lines = stdout.splitlines()
    start = next((i for i, l in enumerate(lines) if l.strip().startswith("the slowest rank (")), None)
    parts, total = {}, None
    for l in lines[start + 1:] if start is not None else []:
        m = re.match(r"\s+(\S.*?)\s{2,}(-?[0-9.]+)", l)  # the label, then two spaces or more
        if not m:
            break
        if m.group(1).startswith("="):
            total = float(m.group(2))
            break
        parts[m.group(1)] = float(m.group(2))
    return parts, total


def check_pricing(j, name, busbw, latency_us):  # latency_us: one for every group, or by group
    proj = j["projection"]
    ranks = j["grid"]["sp"]
    check(len(proj["per_rank_ms"]) == ranks, f"{name}: one bound per sequence position ({ranks})")
    check(close(proj["bound_ms"], max(proj["per_rank_ms"])), f"{name}: the bound is the slowest rank's")
    slowest = proj["slowest"]
    sizes = {"sp": j["grid"]["sp"], "dp": j["grid"]["dp"]}
    exposed = 0.0
    model = slowest["bound_model"]["comm"]
    check(len(model) == len(slowest["comm"]), f"{name}: one priced entry per collective of the BoundModel")
    overlap = j["config"]["options"]["overlap"] == "true"
    for c, mc in zip(slowest["comm"], model):
        hidden = (mc["hidden_by_flops"] / (j["rates"]["measured_gemm_tflops"] * 1e12) * 1e3 +
                  mc["hidden_by_optimizer_share"] * slowest["optimizer_ms"]) if overlap else 0.0
        check(close(c["hidden_by_ms"], hidden) or abs(c["hidden_by_ms"] - hidden) < 1e-12,
              f"{name}: {c['what']} hidden = FLOPs beside / GEMM rate + share x optimizer ({c['hidden_by_ms']:.6g} vs {hidden:.6g})")
    for c in slowest["comm"]:
        n = sizes[c["group"]]
        lat = latency_us[c["group"]] if isinstance(latency_us, dict) else latency_us
        want = (lat * 1e-6 + bus_factor(c["kind"], n) * c["bytes"] / (busbw[c["group"]] * 1e9)) * 1e3
        check(close(c["priced_ms"], want), f"{name}: {c['what']} priced at latency + factor x bytes / busbw "
                                           f"({c['priced_ms']:.6g} vs {want:.6g} ms)")
        want_exposed = c["calls"] * max(0.0, c["priced_ms"] - c["hidden_by_ms"])
        check(close(c["exposed_ms"], want_exposed, 1e-9) or abs(c["exposed_ms"] - want_exposed) < 1e-12,
              f"{name}: {c['what']} exposed = calls x max(0, priced - hidden)")
        exposed += c["exposed_ms"]
    check(close(slowest["comm_exposed_ms"], exposed), f"{name}: the rank's exposed communication is its entries' sum")
    compute = (slowest["gemm_ms"] + slowest["elementwise_ms"] + slowest["passes_ms"] + slowest["attention_ms"] +
               slowest["optimizer_exposed_ms"])
    check(close(proj["bound_ms"], compute + exposed, 1e-9), f"{name}: bound = compute parts + exposed communication")


with tempfile.TemporaryDirectory() as tmp:
    cal = Path(tmp) / "calibration.json"
    subprocess.run([mpiexec, "-n", "2", lssbench, "run", "--strategy", "lss", "--sp", "2", "--zigzag", *MODEL,
                    "--iters", "2", "--out", str(cal)], check=True, timeout=300, capture_output=True)
    # The run's timings on a busy CPU are noise: fixed ones make every figure below deterministic.
    c = json.loads(cal.read_text())
    c["timing"]["median_ms"], c["bound"]["bound_ms"], c["bound"]["rank0"]["comm_exposed_ms"] = 10.0, 8.0, 0.5
    c["bound"]["step_over_bound"] = 10.0 / 8.0
    c["bound"]["sustained"] = {"bound_ms": 9.0, "heat_s": 0.01}  # a CPU run measures none by default
    # Every collective on the line 20 us + bus bytes / 100 GB/s: the fit must give back both.
    for e in c["bound"]["rank0"]["comm"]:
        e["measured_ms"] = (20e-6 + bus_factor(e["kind"], 2) * e["bytes"] / 100e9) * 1e3
        if "contended" in e:  # what the GEMMs beside it lost: 0.02 ms over its exposed time
            e["contended"]["exposed_ms"] = e["exposed_ms"] + 0.02
    contended = [e for e in c["bound"]["rank0"]["comm"] if "contended" in e]
    contention_ms = 0.02 * len(contended)
    kappa = (contention_ms * 1e-3 / sum(e["calls"] * bus_factor(e["kind"], 2) * e["bytes"] for e in contended)
             if contended else 0.0)  # s per bus byte
    cal = Path(tmp) / "calibration-fixed.json"
    cal.write_text(json.dumps(c))
    fitted, fitted_latency_us = 100.0, 20.0

    j = project(tmp, "lss_sp4_dp2", ["--strategy", "lss", "--zigzag", "--sp", "4", "--dp", "2", "--calibration",
                                     str(cal), "--dp-busbw", "1.5", "--latency-us", "5"])
    check(j["schema"] == "lssbench-projection" and j["status"] == "ok", "lss 4 x 2: a projection JSON")
    check(j["grid"] == {"world": 8, "sp": 4, "dp": 2}, "lss 4 x 2: the projected grid")
    check(close(j["rates"]["sp_busbw_GBps"], fitted), f"lss 4 x 2: sp busbw fitted from the calibration "
                                                      f"({j['rates']['sp_busbw_GBps']:.6g} vs {fitted:.6g} GB/s)")
    check(close(j["rates"]["sp_latency_us"], fitted_latency_us, 1e-6), f"lss 4 x 2: sp latency fitted "
                                                                      f"({j['rates']['sp_latency_us']:.6g} us)")
    check(j["rates"]["dp_busbw_GBps"] == 1.5 and j["rates"]["dp_latency_us"] == 5, "lss 4 x 2: the given dp busbw and latency")
    check_pricing(j, "lss 4 x 2", {"sp": fitted, "dp": 1.5}, {"sp": fitted_latency_us, "dp": 5})
    exposed_cal = c["bound"]["rank0"]["comm_exposed_ms"]
    check(len(contended) > 0, f"the calibration has contended timings ({len(contended)} collectives)")
    ratio = (c["timing"]["median_ms"] - exposed_cal - contention_ms) / (c["bound"]["bound_ms"] - exposed_cal)
    slowest = j["projection"]["slowest"]
    exposed = slowest["comm_exposed_ms"]
    check(close(j["calibration"]["compute_ratio"], ratio), "lss 4 x 2: the calibration's compute ratio")
    check(close(j["calibration"]["contention_ms"], contention_ms), "lss 4 x 2: the calibration's contention")
    sizes = {"sp": 4, "dp": 2}
    for e, mc in zip(slowest["comm"], slowest["bound_model"]["comm"]):
        want = kappa * e["calls"] * bus_factor(e["kind"], sizes[e["group"]]) * e["bytes"] * 1e3 if mc["hidden_by_flops"] > 0 else 0.0
        check(close(e["contention_ms"], want) or abs(e["contention_ms"] - want) < 1e-15,
              f"lss 4 x 2: {e['what']} contention = the calibration's cost per bus byte x its bus bytes ({e['contention_ms']:.4g})")
    check(close(slowest["contention_ms"], sum(e["contention_ms"] for e in slowest["comm"])), "lss 4 x 2: the rank's contention")
    check(close(j["projection"]["step_ms"], (j["projection"]["bound_ms"] - exposed) * ratio + exposed + slowest["contention_ms"]),
          "lss 4 x 2: step = the slowest rank's compute x the calibration's compute ratio + its exposed communication "
          "+ its contention")
    # stdout's table of the slowest rank's parts: the JSON's numbers, summing to the step.
    parts, total = printed_parts(stdout_of["lss_sp4_dp2"])
    want = {"GEMMs": slowest["gemm_ms"], "attention": slowest["attention_ms"], "elementwise": slowest["elementwise_ms"],
            "optimizer, exposed": slowest["optimizer_exposed_ms"], "passes": slowest["passes_ms"],
            "exposed communication": exposed,
            "compute x (ratio - 1)": (j["projection"]["bound_ms"] - exposed) * (ratio - 1),
            "contention": slowest["contention_ms"]}
    check(set(parts) == set(want) and all(abs(parts[k] - want[k]) <= 6e-4 for k in want),
          f"lss 4 x 2: stdout's parts are the slowest rank's ({parts})")
    check(total is not None and abs(total - j["projection"]["step_ms"]) <= 6e-4 and abs(sum(parts.values()) - total) <= 5e-3,
          f"lss 4 x 2: stdout's parts sum to the printed step ({sum(parts.values()):.3f} vs {total})")
    # --heat: the kernels timed after their heat, the ratio against the calibration's sustained bound.
    jh = project(tmp, "lss_sp4_heat", ["--strategy", "lss", "--zigzag", "--sp", "4", "--calibration", str(cal),
                                      "--heat", "0.01"])
    sustained_ratio = (c["timing"]["median_ms"] - exposed_cal - contention_ms) / (9.0 - exposed_cal)
    proj, hot = jh["projection"], jh["projection"]["slowest"]
    check(proj["heat_s"] == 0.01 and close(proj["compute_ratio"], sustained_ratio)
          and close(jh["calibration"]["sustained_compute_ratio"], sustained_ratio),
          "--heat: the compute ratio against the calibration's sustained bound")
    check(close(proj["step_ms"], (proj["bound_ms"] - hot["comm_exposed_ms"]) * sustained_ratio
                + hot["comm_exposed_ms"] + hot["contention_ms"]), "--heat: the step with that ratio")
    check(close(project(tmp, "lss_sp4_burst", ["--strategy", "lss", "--zigzag", "--sp", "4", "--calibration", str(cal)])
                ["projection"]["compute_ratio"], ratio), "without --heat: the ratio against the bound")
    # At the calibration's own grid the projected step is the step the calibration measured, to
    # the spread of its bound's kernel timings (each timed again by the projection).
    j2 = project(tmp, "lss_sp2_own", ["--strategy", "lss", "--zigzag", "--sp", "2", "--calibration", str(cal)])
    check(j2["calibration"]["step_ms"] == c["timing"]["median_ms"], "lss 2: the calibration's measured step recorded")
    gathers = [e for e in j["projection"]["slowest"]["bound_model"]["comm"] if e["what"].startswith("K/V all-gather")]
    check(len(gathers) > 0 and all(e["bytes"] == 512 * 1 * 2 * 64 * 4 for e in gathers),
          "lss 4 x 2: the K/V all-gather moves T x B/R x 2C fp32 elements")
    check(any(e["group"] == "dp" for e in j["projection"]["slowest"]["comm"]), "lss 4 x 2: the data group's sums priced")

    # Nodes of 4 GPUs: 8-rank sequence groups and the data groups of a 16-rank grid cross them, at the
    # inter-node bandwidth; nodes of 2 GPUs hold whole 2-rank sequence groups, not the data groups.
    j = project(tmp, "lss_sp8_dp2_nodes", ["--strategy", "lss", "--zigzag", "--sp", "8", "--dp", "2",
                                           "--gpus-per-node", "4", "--inter-node-busbw", "25", "--sp-busbw", "300"])
    check(j["rates"]["groups_spanning_nodes"] == ["dp", "sp", "world"], "8 x 2 on nodes of 4: every group spans nodes")
    check(all(c["across_nodes"] for c in j["projection"]["slowest"]["comm"]), "8 x 2 on nodes of 4: every collective across nodes")
    check_pricing(j, "8 x 2 on nodes of 4", {"sp": 25.0, "dp": 25.0}, 0)
    j = project(tmp, "megatron_sp2_dp2_nodes", ["--strategy", "megatron_sp", "--sp", "2", "--dp", "2",
                                                "--gpus-per-node", "2", "--inter-node-busbw", "12.5", "--sp-busbw", "300"])
    check(j["rates"]["groups_spanning_nodes"] == ["dp", "world"], "2 x 2 on nodes of 2: the data group spans nodes, "
                                                                  "the sequence group does not")
    check_pricing(j, "2 x 2 on nodes of 2", {"sp": 300.0, "dp": 12.5}, 0)

    # --like: every step option not given comes from the run's recorded options (strategy, --zigzag,
    # the model); the --sp given wins. MODEL's options are given again here, so the run's must agree.
    out = Path(tmp) / "like.json"
    subprocess.run([lssbench, "project", "--like", str(cal), "--calibration", str(cal), "--sp", "4", "--threads", "1",
                    "--out", str(out)], check=True, timeout=300, capture_output=True)
    j = json.loads(out.read_text())
    o, co = j["config"]["options"], c["config"]["options"]
    check(j["strategy"] == "lss" and o["zigzag"] == "true" and o["sp"] == "4" and j["grid"]["sp"] == 4,
          "--like: the run's strategy and --zigzag, the given --sp")
    check(all(o[k] == co[k] for k in ("layers", "width", "heads", "seq", "batch", "dtype", "backend", "overlap")),
          "--like: the run's model, backend and --overlap")
    j = project(tmp, "like_other", ["--like", str(cal), "--strategy", "megatron_sp", "--sp", "2", "--sp-busbw", "10"])
    check(j["strategy"] == "megatron_sp" and j["config"]["options"].get("zigzag", "false") == "false",
          "--like with another --strategy: the run's options of lss (--zigzag) left out, not refused")

    # A grid that fits on one node: no group spans nodes, though 4 does not divide 6.
    j = project(tmp, "lss_sp4_node6", ["--strategy", "lss", "--zigzag", "--sp", "4", "--gpus-per-node", "6",
                                       "--sp-busbw", "300"])
    check(j["rates"]["groups_spanning_nodes"] == [], "4 ranks on a node of 6: no group spans nodes")
    check_pricing(j, "4 ranks on a node of 6", {"sp": 300.0, "dp": 300.0}, 0)
    j = project(tmp, "megatron_no_overlap", ["--strategy", "megatron_sp", "--sp", "2", "--sp-busbw", "20",
                                             "--no-overlap"])
    check(all(c["hidden_by_ms"] == 0 for c in j["projection"]["slowest"]["comm"]), "--no-overlap: nothing hidden")
    check_pricing(j, "megatron_sp 2 --no-overlap", {"sp": 20.0, "dp": 20.0}, 0)

    # --rounds: every rank priced three times, its median round kept (the slowest rank from those),
    # and --local-cross-block's rank P-1 as two segments like every rank.
    j = project(tmp, "lss_rounds", ["--strategy", "lss", "--zigzag", "--local-cross-block", "--sp", "4",
                                     "--sp-busbw", "300", "--rounds", "3"])
    proj = j["projection"]
    check(proj["rounds"] == 3 and len(proj["per_rank_round_ms"]) == 4
          and all(len(r) == 3 for r in proj["per_rank_round_ms"]), "--rounds 3: three totals per rank")
    check(all(close(ms, sorted(r)[1]) for ms, r in zip(proj["per_rank_ms"], proj["per_rank_round_ms"])),
          "--rounds 3: each rank's total is its median round")
    check(close(proj["bound_ms"], max(proj["per_rank_ms"])), "--rounds 3: the bound is the slowest median")
    # Two causal blocks and the cross block on every rank; on gathered keys rank 0's back chunk one
    # block (none before its front chunk), ranks 1 and 2 both chunks' (the back chunk's in two),
    # rank 3 both chunks' (nothing between its chunks).
    calls = {0: 4, 1: 6, 2: 6, 3: 5}[proj["slowest_rank"]]
    check(len(proj["slowest"]["bound_model"]["layer_attention"]) == calls,
          f"--local-cross-block: rank {proj['slowest_rank']}'s {calls} attention calls")
    check_pricing(j, "lss 4 --rounds 3", {"sp": 300.0, "dp": 300.0}, 0)

    j = project(tmp, "megatron_sp4", ["--strategy", "megatron_sp", "--sp", "4", "--sp-busbw", "20"])
    check(j["calibration"] is None and j["projection"]["step_ms"] is None,
          "megatron_sp 4: without a calibration, a bound and no step")
    check_pricing(j, "megatron_sp 4", {"sp": 20.0, "dp": 20.0}, 0)

    def refused(args, want, name, ranks=1):
        out = Path(tmp) / "refused.json"
        cmd = ([mpiexec, "-n", str(ranks)] if ranks > 1 else []) + [lssbench, "project", *MODEL, *args]
        if "--out" not in args:
            cmd += ["--out", str(out)]
        p = subprocess.run(cmd, timeout=120, capture_output=True, text=True)
        msgs = [line for line in p.stderr.splitlines() if "error:" in line]
        check(p.returncode == 2 and len(msgs) >= ranks and all(want in m for m in msgs) and not out.exists(),
              f"refused: {name} (exit {p.returncode}, {msgs[:1]})")

    refused(["--strategy", "lss", "--sp", "2", "--sp-busbw", "10"], "without mpiexec", "launched on 2 ranks", 2)
    refused(["--strategy", "lss", "--sp", "2"], "--sp-busbw", "no bandwidth for the sequence group")
    refused(["--strategy", "lss", "--sp", "2", "--calibration", str(Path(tmp) / "none.json")],
            "none.json: cannot be read", "an unreadable calibration")
    refused(["--strategy", "lss", "--sp", "2", "--calibration", str(Path(tmp) / "megatron_sp4.json")],
            "not a result of `lssbench run`", "a projection as calibration")
    refused(["--sp", "2", "--sp-busbw", "10", "--like", str(Path(tmp) / "megatron_sp4.json")],
            "--like", "a projection as --like")
    slow = dict(c, timing=dict(c["timing"], median_ms=0.2))
    slow_path = Path(tmp) / "calibration-below-exposed.json"
    slow_path.write_text(json.dumps(slow))
    refused(["--strategy", "lss", "--sp", "2", "--calibration", str(slow_path)], "must both exceed",
            "a calibration whose step is below its exposed communication")
    refused(["--strategy", "lss", "--sp", "2", "--calibration", str(cal), "--backend", "cuda"],
            "ran on --backend cpu", "a calibration of another backend")
    refused(["--strategy", "lss", "--sp", "2", "--dp", "3", "--sp-busbw", "10"], "--batch 2 does not divide",
            "a batch the replicas do not divide")
    # One time for every size: no slope to fit; latency 0 and the bus bytes over the time.
    flat = json.loads(json.dumps(c))
    for e in flat["bound"]["rank0"]["comm"]:
        e["measured_ms"] = 0.5
    flat_path = Path(tmp) / "calibration-flat.json"
    flat_path.write_text(json.dumps(flat))
    sp = [e for e in flat["bound"]["rank0"]["comm"] if e["group"] == "sp"]
    ratio_busbw = sum(e["calls"] * bus_factor(e["kind"], 2) * e["bytes"] for e in sp) / sum(e["calls"] * 0.5e-3 for e in sp) / 1e9
    j = project(tmp, "flat", ["--strategy", "lss", "--zigzag", "--sp", "2", "--calibration", str(flat_path)])
    check(close(j["rates"]["sp_busbw_GBps"], ratio_busbw) and j["rates"]["sp_latency_us"] == 0,
          f"no slope: latency 0, busbw = bus bytes / time ({j['rates']['sp_busbw_GBps']:.6g} vs {ratio_busbw:.6g})")
    refused(["--strategy", "lss", "--sp", "2", "--sp-busbw", "-1"], "--sp-busbw -1", "a negative bandwidth")
    refused(["--strategy", "lss", "--sp", "2", "--sp-busbw", "10", "--rounds", "0"], "--rounds 0: must be 1 to 99",
            "no rounds")
    refused(["--strategy", "lss", "--sp", "2", "--sp-busbw", "10", "--heat", "-1"], "--heat -1: must be 0 to 60",
            "a negative heat")
    no_sustained = json.loads(cal.read_text())
    del no_sustained["bound"]["sustained"]
    no_sustained_path = Path(tmp) / "calibration-burst-only.json"
    no_sustained_path.write_text(json.dumps(no_sustained))
    refused(["--strategy", "lss", "--sp", "2", "--calibration", str(no_sustained_path), "--heat", "0.01"],
            "has no sustained bound", "--heat with a calibration without a sustained bound")
    refused(["--strategy", "lss", "--sp", "8", "--sp-busbw", "300", "--gpus-per-node", "4"], "--inter-node-busbw",
            "a group across nodes without the link's bandwidth")
    refused(["--strategy", "lss", "--sp", "2", "--sp-busbw", "300", "--inter-node-busbw", "25"],
            "--inter-node-busbw 25", "the link's bandwidth without --gpus-per-node")
    bad = dict(c, grid=dict(c["grid"], sp="two"))
    bad_path = Path(tmp) / "calibration-bad-grid.json"
    bad_path.write_text(json.dumps(bad))
    refused(["--strategy", "lss", "--sp", "2", "--calibration", str(bad_path)], "calibration-bad-grid.json: not a result",
            "a calibration with a malformed field")
    refused(["--strategy", "lss", "--sp", "2", "--sp-busbw", "10", "--out", str(cal)], "exists already",
            "an existing --out")

print(f"{failures} failure(s)")
sys.exit(1 if failures else 0)
