#!/usr/bin/env python3
"""plots/lssplot.py on fixture JSON (a CPU sweep's output): every expected chart is a valid PNG
with the expected series, SUMMARY.md has the tables; missing or malformed input gets a clear error
naming the file and exit 2. Then plots/traceplot.py on traced CPU runs, and plots/projplot.py on
synthetic projection and result JSON."""
import glob
import json
import lzma
import os
import re
import shutil
import subprocess
import sys
import tempfile

here = os.path.dirname(os.path.abspath(__file__))
script = os.path.join(here, "..", "plots", "lssplot.py")
fixture = os.path.join(here, "fixtures", "cpu-sweep")
passed = failed = 0


def check(cond, what):
    global passed, failed
    if cond:
        passed += 1
        print(f"ok:   {what}")
    else:
        failed += 1
        print(f"FAIL: {what}")


def run(*args):
    return subprocess.run([sys.executable, script, *args], capture_output=True, text=True, timeout=300)


def check_palette_pngs(folder, what):
    """Every chart a plot script writes is a palette PNG (plots/figsave.py, 256 colours:
    the charts travel with every GPU call, under the device tool's 64 MiB), and no PATH.tmp of its
    atomic write is left behind."""
    from PIL import Image
    pngs = sorted(glob.glob(os.path.join(folder, "*.png")))
    modes = {}
    for f in pngs:
        with Image.open(f) as img:
            modes[os.path.basename(f)] = img.mode
    check(bool(pngs) and all(m == "P" for m in modes.values()), f"{what}: every chart a palette PNG ({modes})")
    check(not glob.glob(os.path.join(folder, "*.tmp")), f"{what}: no .tmp left from the atomic write")


def edited_sweep(src, dst, point=None, aggregate=None):
    """A copy of the sweep folder src at dst, each point JSON passed through point(r) and each
    aggregate through aggregate(a): they edit in place; point returning False drops the point."""
    shutil.copytree(src, dst)
    for pattern, edit in ((os.path.join("points", "*.json"), point), ("aggregate-*.json", aggregate)):
        for f in glob.glob(os.path.join(dst, pattern)) if edit else []:
            r0 = json.load(open(f))
            if edit(r0) is False:
                os.remove(f)
            else:
                json.dump(r0, open(f, "w"))
    return dst


with tempfile.TemporaryDirectory() as tmp:
    out = os.path.join(tmp, "charts")
    r = run(fixture, "--out", out)
    check(r.returncode == 0, f"draws the fixture sweep (exit {r.returncode}) {r.stderr.strip()}")
    manifest = json.load(open(os.path.join(out, "charts.json"))) if r.returncode == 0 else {"charts": []}
    charts = {c["file"]: c for c in manifest["charts"]}
    for name, must in (("speedup.png", ["GPUs=1", "GPUs=2", "GPUs=4"]),
                       ("memory.png", ["lss", "megatron_sp", "memory ratio"]),
                       ("efficiency.png", ["lss T=256: strong E=T1/(N TN)", "megatron_sp T=256: strong E=T1/(N TN)"]),
                       ("throughput.png", ["lss 1g", "lss 4g", "megatron_sp 2g", "serial 1g"]),
                       ("breakdown.png", ["compute", "exposed communication", "lss", "megatron_sp"])):
        path = os.path.join(out, name)
        ok_png = os.path.exists(path) and open(path, "rb").read(8) == b"\x89PNG\r\n\x1a\n" and os.path.getsize(path) > 10000
        check(ok_png, f"{name} is a PNG image")
        series = charts.get(name, {}).get("series", [])
        check(all(m in series for m in must), f"{name} has the series {must} (has {series})")
    check_palette_pngs(out, "lssplot")
    summary = open(os.path.join(out, "SUMMARY.md")).read() if os.path.exists(os.path.join(out, "SUMMARY.md")) else ""
    check("| lss | 4 | 4 | 256 | ok |" in summary and "memory ratio" in summary, "SUMMARY.md has the point and speedup tables")
    # The strong-scaling table; the fixture's aggregate predates base_over_serial: "-" there.
    lss4 = [e for e in json.load(open(glob.glob(os.path.join(fixture, "aggregate-*.json"))[0]))["strong_scaling"]
            if e["strategy"] == "lss" and e["world"] == 4][0]
    check(f"| lss | 4 | 256 | {lss4['efficiency']:.3f} | {lss4['speedup']:.3f} | - |" in summary,
          "SUMMARY.md has the strong-scaling table (efficiency, speedup; base / serial absent from this aggregate)")

    def slow_base(a):
        for e in a["strong_scaling"]:
            e["base_over_serial"] = 1.0 if e["strategy"] == "serial" else 1.073
    slow = edited_sweep(fixture, os.path.join(tmp, "slow-base"), aggregate=slow_base)
    r = run(slow, "--out", os.path.join(tmp, "charts-slow-base"))
    summary_slow = open(os.path.join(tmp, "charts-slow-base", "SUMMARY.md")).read() if r.returncode == 0 else ""
    check(f"| lss | 4 | 256 | {lss4['efficiency']:.3f} | {lss4['speedup']:.3f} | 1.073 |" in summary_slow,
          "SUMMARY.md gives each entry's base / serial (base_over_serial)")
    check("commit" in manifest.get("provenance", "") and "L2 C64 H4" in manifest.get("provenance", ""),
          "charts say what ran them (card, model, commit)")

    # a max-sequence sweep (out-of-memory probes among its points): the longest-T chart
    out2 = os.path.join(tmp, "charts-maxseq")
    r = run(os.path.join(here, "fixtures", "cpu-maxseq"), "--out", out2)
    check(r.returncode == 0, f"draws the fixture max-seq sweep (exit {r.returncode}) {r.stderr.strip()}")
    m2 = json.load(open(os.path.join(out2, "charts.json"))) if r.returncode == 0 else {"charts": []}
    ms = {c["file"]: c for c in m2["charts"]}.get("max_seq.png", {})
    check(os.path.exists(os.path.join(out2, "max_seq.png")) and ms.get("series") == ["lss", "megatron_sp"],
          f"max_seq.png has the series lss and megatron_sp ({ms.get('series')})")

    # results with the analytic bound: the breakdown marks it, SUMMARY.md gives step / bound
    def with_bound(r0):
        if r0.get("status") == "ok":
            r0["bound"] = {"bound_ms": r0["timing"]["median_ms"] / 1.25, "step_over_bound": 1.25, "rank0": {},
                           "contended": {"bound_ms": r0["timing"]["median_ms"] / 1.0625},
                           "per_rank_attention_ms": [100.0, 110.0], "step_over_sustained_bound": 0.875,
                           "step_over_contended_bound": 1.0625}
            r0["metrics"]["energy_j_per_step"] = 2.5  # as a GPU run with an energy counter writes them
            r0["metrics"]["tokens_per_joule"] = r0["config"]["batch"] * r0["config"]["seq"] / 2.5
            r0["timing"]["device_state"] = {"per_rank": [{"energy_j": 2.5 * 6 / r0["grid"]["world"], "energy_updates": 11,
                                                          "energy_window_s": 1.0}] * r0["grid"]["world"]}
    bounded = edited_sweep(fixture, os.path.join(tmp, "bounded"), with_bound)
    out3 = os.path.join(tmp, "charts-bound")
    r = run(bounded, "--out", out3)
    m3 = json.load(open(os.path.join(out3, "charts.json"))) if r.returncode == 0 else {"charts": []}
    bd = {c["file"]: c for c in m3["charts"]}.get("breakdown.png", {})
    check("analytic bound" in bd.get("series", []), f"breakdown.png marks the analytic bound ({bd.get('series')})")
    check("contended bound" in bd.get("series", []), f"breakdown.png marks the contended bound ({bd.get('series')})")
    summary3 = open(os.path.join(out3, "SUMMARY.md")).read() if r.returncode == 0 else ""
    check("| step / bound |" in summary3 and "| 1.250 |" in summary3, "SUMMARY.md gives step / bound")
    check("| step / sustained |" in summary3 and "| 1.250 | 0.875 |" in summary3,
          "SUMMARY.md gives step / sustained bound beside step / bound")
    check("| step / contended |" in summary3 and "| 1.250 | 0.875 | 1.062 |" in summary3,
          "SUMMARY.md gives step / contended bound after step / sustained")
    check("| attention max / min rank |" in summary3 and "| 1.100 |" in summary3,
          "SUMMARY.md gives the ranks' attention imbalance (max / min of bound.per_rank_attention_ms)")
    check("| step / bound |" in summary and "| - |" in summary, "results without a bound show '-' there")
    rows3 = [l for l in summary3.splitlines() if l.startswith("| lss | 4 | 4 | 256 | ok |")]
    check("| J/step | tokens/J |" in summary3 and bool(rows3) and rows3[0].endswith("| 2.50 | 102.4 |"),
          f"SUMMARY.md gives J per step and tokens per joule where the results have them ({rows3[:1]})")
    lines3 = summary3.splitlines()
    header = [i for i, l in enumerate(lines3) if l.startswith("| strategy | ranks | sp |")]
    point_rows = [l for l in lines3 if re.match(r"\| (lss|megatron_sp|serial) \| \d+ \| \d+ \| \d+ \| ", l)]
    widths = {len(l.split("|")) for l in point_rows + [lines3[i + 1] for i in header]}
    check(bool(header) and widths == {len(lines3[header[0]].split("|"))}, f"every point row has the header's columns ({widths})")
    check(all(l.endswith("| - | - |") for l in summary.splitlines() if l.startswith("| lss | ") and "| ok |" in l),
          "results without an energy reading show '-' there")
    tput3 = {c["file"]: c for c in m3["charts"]}.get("throughput.png", {})
    check("tokens per joule (all GPUs)" in (tput3.get("panels") or []),
          f"throughput.png has the tokens-per-joule panel with energy ({tput3.get('panels')})")

    # energy the charts must not trust: neither in the table nor drawn
    def energy_not_shown(name, set_rank, what):
        def edit(r0):
            for rank in ((r0.get("timing") or {}).get("device_state") or {}).get("per_rank", []):
                set_rank(rank)
        folder = edited_sweep(bounded, os.path.join(tmp, "energy-" + name), edit)
        out = os.path.join(tmp, "charts-energy-" + name)
        r = run(folder, "--out", out)
        summary = open(os.path.join(out, "SUMMARY.md")).read() if r.returncode == 0 else ""
        rows = [l for l in summary.splitlines() if l.startswith("| lss | 4 | 4 | 256 | ok |")]
        check(bool(rows) and rows[0].endswith("| - | - |"), f"energy {what} is not in SUMMARY.md ({rows[:1]})")
        m = json.load(open(os.path.join(out, "charts.json"))) if r.returncode == 0 else {"charts": []}
        tput = {c["file"]: c for c in m["charts"]}.get("throughput.png", {})
        check(len(tput.get("panels") or []) == 3 and "tokens per joule (all GPUs)" not in tput["panels"],
              f"nor drawn: throughput.png has no tokens-per-joule panel ({tput.get('panels')})")

    def ends_only(rank):
        del rank["energy_window_s"], rank["energy_updates"]

    def short_window(rank):
        rank["energy_window_s"], rank["energy_updates"] = 0.3, 4
    # the builds that read the counter at the region's ends alone (no energy_window_s)
    energy_not_shown("ends-only", ends_only, "without energy_window_s (the ends-only reading)")
    # a window of the counter's updates shorter than 0.8 s (builds before the thirty-eighth
    # session; up to 2.4x off)
    energy_not_shown("short-window", short_window, "over a 0.3 s window of counter updates")

    # two sweeps with the same strategies (e.g. an option on and off): their series stay apart,
    # named after the sweep folders
    pair = [os.path.join(tmp, "opt-on"), os.path.join(tmp, "opt-off")]
    for d in pair:
        shutil.copytree(fixture, d)
    out4 = os.path.join(tmp, "charts-pair")
    r = run(*pair, "--out", out4)
    check(r.returncode == 0, f"draws two sweeps of the same strategies (exit {r.returncode}) {r.stderr.strip()}")
    m4 = {c["file"]: c for c in (json.load(open(os.path.join(out4, "charts.json")))["charts"] if r.returncode == 0 else [])}
    for name, must in (("speedup.png", ["opt-on: GPUs=1", "opt-off: GPUs=1"]),
                       ("memory.png", ["lss (opt-on)", "lss (opt-off)", "megatron_sp (opt-off)"]),
                       ("efficiency.png", ["lss (opt-on) T=256: strong E=T1/(N TN)", "lss (opt-off) T=256: strong E=T1/(N TN)"]),
                       ("throughput.png", ["lss (opt-on) 4g", "lss (opt-off) 4g", "serial (opt-on) 1g"]),
                       ("breakdown.png", ["lss (opt-on)", "lss (opt-off)"])):
        series = m4.get(name, {}).get("series", [])
        check(all(m in series for m in must) and "lss" not in series and "lss 4g" not in series,
              f"{name} keeps the two sweeps apart: {must} (has {series})")

    # an ablation: a sweep of lss alone (an option set), drawn with a sweep that has megatron_sp; its
    # lss points are compared with that sweep's megatron_sp points at the same ranks, model and T
    meg_ms, lss_ms = {}, {}

    def lss_faster(r0):  # megatron_sp's times noted and its points dropped; lss 20% faster
        if r0["strategy"] != "lss":
            if r0["strategy"] == "megatron_sp" and r0["status"] == "ok":
                meg_ms[r0["grid"]["world"]] = r0["timing"]["median_ms"]
            return False
        r0["timing"]["median_ms"] *= 0.8
        lss_ms[r0["grid"]["world"]] = r0["timing"]["median_ms"]
    full = edited_sweep(fixture, os.path.join(tmp, "full"))
    ablation = edited_sweep(fixture, os.path.join(tmp, "lss-only"), lss_faster,
                            lambda a0: a0.update(speedup_lss_over_megatron_sp=[]))
    out5 = os.path.join(tmp, "charts-ablation")
    r = run(full, ablation, "--out", out5)
    check(r.returncode == 0, f"draws an lss-only sweep with a full one (exit {r.returncode}) {r.stderr.strip()}")
    m5 = {c["file"]: c for c in (json.load(open(os.path.join(out5, "charts.json")))["charts"] if r.returncode == 0 else [])}
    series = m5.get("speedup.png", {}).get("series", [])
    check("lss-only vs full: GPUs=4" in series and "full: GPUs=4" in series,
          f"speedup.png has the ablation's lss against the other sweep's megatron_sp (has {series})")
    summary5 = open(os.path.join(out5, "SUMMARY.md")).read() if r.returncode == 0 else ""
    want = f"| full | 4 | 256 | {lss_ms[4]:.2f} | {meg_ms[4]:.2f} | {meg_ms[4] / lss_ms[4]:.3f} |"
    check(want in summary5, f"SUMMARY.md gives the ablation's speedup, megatron_sp ms / lss ms: {want}")

    # and beside a sweep of megatron_sp alone (its own options, 10% faster): the ablation's lss is
    # set against the megatron_sp of each of the two sweeps, one row and one series per pair
    def megatron_faster(r0):
        if r0["strategy"] != "megatron_sp":
            return False
        r0["timing"]["median_ms"] *= 0.9
    meg_only = edited_sweep(fixture, os.path.join(tmp, "meg-only"), megatron_faster,
                            lambda a0: a0.update(speedup_lss_over_megatron_sp=[]))
    out6 = os.path.join(tmp, "charts-ablation2")
    r = run(full, ablation, meg_only, "--out", out6)
    check(r.returncode == 0, f"draws an lss-only and a megatron_sp-only sweep with a full one (exit {r.returncode}) "
          f"{r.stderr.strip()}")
    m6 = {c["file"]: c for c in (json.load(open(os.path.join(out6, "charts.json")))["charts"] if r.returncode == 0 else [])}
    series = m6.get("speedup.png", {}).get("series", [])
    check("lss-only vs full: GPUs=4" in series and "lss-only vs meg-only: GPUs=4" in series,
          f"speedup.png has the ablation's lss against both sweeps' megatron_sp (has {series})")
    summary6 = open(os.path.join(out6, "SUMMARY.md")).read() if r.returncode == 0 else ""
    want = f"| meg-only | 4 | 256 | {lss_ms[4]:.2f} | {meg_ms[4] * 0.9:.2f} | {meg_ms[4] * 0.9 / lss_ms[4]:.3f} |"
    check(want in summary6 and f"| full | 4 | 256 | {lss_ms[4]:.2f} |" in summary6,
          f"SUMMARY.md gives the ablation's speedup over each megatron_sp sweep: {want}")

    # a sweep at one rank count (the paper sweep where only 2 GPUs were lent): no scaling to draw,
    # so no efficiency chart, and SUMMARY.md and charts.json say why instead of an empty frame
    def world_2_entries(a0):
        for key in ("strong_scaling", "speedup_lss_over_megatron_sp", "throughput"):
            a0[key] = [dict(e, base_world=2, efficiency=1.0, speedup=1.0) if key == "strong_scaling" else e
                       for e in a0.get(key, []) if e.get("world", 2) == 2]
    one_world = edited_sweep(fixture, os.path.join(tmp, "one-world"), lambda r0: r0["grid"]["world"] == 2,
                             world_2_entries)
    out6 = os.path.join(tmp, "charts-one-world")
    r = run(one_world, "--out", out6)
    check(r.returncode == 0, f"draws a sweep at one rank count (exit {r.returncode}) {r.stderr.strip()}")
    m6 = json.load(open(os.path.join(out6, "charts.json"))) if r.returncode == 0 else {"charts": [], "not_drawn": []}
    drawn = [c["file"] for c in m6["charts"]]
    check("efficiency.png" not in drawn and not os.path.exists(os.path.join(out6, "efficiency.png"))
          and "speedup.png" in drawn, f"one rank count: no efficiency chart, the others drawn (drew {drawn})")
    check([c["file"] for c in m6.get("not_drawn", [])] == ["efficiency.png"] and "one rank count" in r.stdout,
          f"one rank count: charts.json and stdout say the efficiency chart was not drawn, and why ({r.stdout.strip()})")
    summary6 = open(os.path.join(out6, "SUMMARY.md")).read() if r.returncode == 0 else ""
    check("Not drawn:" in summary6 and "(efficiency.png): every strategy ran at one rank count" in summary6
          and "![Scaling efficiency]" not in summary6, "one rank count: SUMMARY.md names the chart not drawn")
    check("Warning" not in r.stderr, f"one rank count: no matplotlib warning ({r.stderr.strip()[:200]})")

    # malformed and missing input: an error naming the file, exit 2
    broken = os.path.join(tmp, "broken")
    shutil.copytree(fixture, broken)
    bad = os.path.join(broken, "points", "lss_w2_sp2_T256.json")
    open(bad, "w").write('{"status": "ok", "strategy": ')
    r = run(broken, "--out", os.path.join(tmp, "c2"))
    check(r.returncode == 2 and "lss_w2_sp2_T256.json: malformed JSON" in r.stderr, f"malformed point named: {r.stderr.strip()}")
    r = run(os.path.join(tmp, "nowhere"), "--out", os.path.join(tmp, "c3"))
    check(r.returncode == 2 and "nowhere: not a folder" in r.stderr, f"missing folder named: {r.stderr.strip()}")
    empty = os.path.join(tmp, "empty")
    os.makedirs(os.path.join(empty, "points"))
    r = run(empty, "--out", os.path.join(tmp, "c4"))
    check(r.returncode == 2 and "no point results" in r.stderr, f"empty sweep named: {r.stderr.strip()}")

# plots/attnplot.py on bench_attention's and the PyTorch peer's JSON (an H200 run, kept as a fixture)
attnplot = os.path.join(here, "..", "plots", "attnplot.py")
attn = os.path.join(here, "fixtures", "attention")


def run_attn(*args):
    return subprocess.run([sys.executable, attnplot, *args], capture_output=True, text=True, timeout=300)


with tempfile.TemporaryDirectory() as tmp:
    bench, peer = os.path.join(attn, "bench_attention.json"), os.path.join(attn, "peer_attention.json")
    out = os.path.join(tmp, "attn")
    r = run_attn(bench, peer, "--commit", "249c1fa", "--out", out)
    check(r.returncode == 0, f"attnplot draws the fixture (exit {r.returncode}) {r.stderr.strip()}")
    manifest = json.load(open(os.path.join(out, "charts.json"))) if r.returncode == 0 else {"charts": []}
    charts = {c["file"]: c for c in manifest["charts"]}
    every = ["own flash (wgmma)", "own flash (mma.sync)", "own cuDNN binding", "PyTorch SDPA flash", "PyTorch SDPA cuDNN"]
    for name in ("attention_fwd_bwd.png", "attention_fwd.png"):
        path = os.path.join(out, name)
        ok_png = os.path.exists(path) and open(path, "rb").read(8) == b"\x89PNG\r\n\x1a\n" and os.path.getsize(path) > 10000
        check(ok_png, f"{name} is a PNG image")
        check(charts.get(name, {}).get("series") == every, f"{name} has every implementation ({charts.get(name, {}).get('series')})")
    check_palette_pngs(out, "attnplot")
    check("NVIDIA H200" in manifest.get("provenance", "") and "249c1fa" in manifest.get("provenance", ""),
          f"attention charts say the card and commit ({manifest.get('provenance')})")
    summary = open(os.path.join(out, "SUMMARY.md")).read() if r.returncode == 0 else ""
    # the 16K D128 causal forward+backward row: the own wgmma kernels, mma.sync, cuDNN, PyTorch flash, PyTorch cuDNN
    row = [l for l in summary.splitlines() if l.startswith("| 16384 | 128 | causal |")]
    check(bool(row) and [c.strip() for c in row[0].split("|")[4:9]] == ["387.5", "264.3", "548.7", "286.1", "485.2"],
          f"SUMMARY.md has the measured forward+backward row ({row[:1]})")
    r = run_attn(bench, "--out", os.path.join(tmp, "attn-own"))
    m = json.load(open(os.path.join(tmp, "attn-own", "charts.json"))) if r.returncode == 0 else {"charts": [{}]}
    check(r.returncode == 0 and "PyTorch SDPA flash" not in m["charts"][0].get("series", []),
          "attnplot without a peer draws the own kernels only")
    # bench_attention's lss rank rows (two of an H200 run) go into their own table, not the charts
    lss_rank = [
        {"name": "BM_AttentionLssRank/T:65536/P:4/rank:0/path:0/bwd:1/manual_time", "TFLOP/s": 561.726,
         "label": "flash-wgmma fwd+bwd lss rank 0 of 4 T=65536 (3 calls, segments of 8192)"},
        {"name": "BM_AttentionLssRank/T:65536/P:4/rank:0/path:1/bwd:1/manual_time", "TFLOP/s": 560.687,
         "label": "cudnn fwd+bwd lss rank 0 of 4 T=65536 (3 calls, segments of 8192)"}]
    with_lss = os.path.join(tmp, "bench_with_lss.json")
    doc = json.load(open(bench))
    doc["benchmarks"] += lss_rank
    json.dump(doc, open(with_lss, "w"))
    r = run_attn(with_lss, "--out", os.path.join(tmp, "attn-lss"))
    summary = open(os.path.join(tmp, "attn-lss", "SUMMARY.md")).read() if r.returncode == 0 else ""
    row = [l for l in summary.splitlines() if l.startswith("| 65536 | 4 | 0 | fwd+bwd |")]
    check(r.returncode == 0 and bool(row) and [c.strip() for c in row[0].split("|")[5:7]] == ["561.7", "560.7"],
          f"SUMMARY.md has the lss rank row, own and cuDNN ({row[:1]}, {r.stderr.strip()})")
    doc["benchmarks"][-1]["label"] = "cudnn fwd+bwd lss rank 0 T=65536"
    json.dump(doc, open(with_lss, "w"))
    r = run_attn(with_lss, "--out", os.path.join(tmp, "attn-lss2"))
    check(r.returncode == 2 and "BM_AttentionLssRank/T:65536/P:4/rank:0/path:1" in r.stderr,
          f"a malformed lss rank label named: {r.stderr.strip()}")
    # BM_AttentionHeated rows (gpu_perf.sh attention-heat, an H200 run kept as a fixture): their own
    # chart and table, beside the burst rows of the same calls from the other bench JSON
    heated = os.path.join(attn, "bench_attention_heated.json")
    out = os.path.join(tmp, "attn-heated")
    r = run_attn(bench, heated, peer, "--out", out)
    check(r.returncode == 0, f"attnplot draws a heated JSON beside the burst one (exit {r.returncode}) {r.stderr.strip()}")
    m = json.load(open(os.path.join(out, "charts.json"))) if r.returncode == 0 else {"charts": []}
    hc = {c["file"]: c for c in m["charts"]}.get("attention_heated.png", {})
    check(hc.get("series") == ["own flash (wgmma) fwd", "own flash (wgmma) fwd+bwd", "own cuDNN binding fwd",
                               "own cuDNN binding fwd+bwd"], f"attention_heated.png has both paths and passes ({hc})")
    check(len(m["charts"]) == 3, f"the two burst charts are still drawn ({[c.get('file') for c in m['charts']]})")
    check_palette_pngs(out, "attnplot heated")
    summary = open(os.path.join(out, "SUMMARY.md")).read() if r.returncode == 0 else ""
    # the own kernels' 16K forward: burst from the older run, then the heated rate, W, MHz, capped, pJ/FLOP
    row = [l for l in summary.splitlines() if l.startswith("| 16384 | 128 | causal | own flash (wgmma) | fwd |")]
    burst_fwd = [b["TFLOP/s"] for b in json.load(open(bench))["benchmarks"]
                 if b.get("label") == "flash-wgmma fwd causal B=1 H=16 D=128 T=16384"]
    check(bool(row) and bool(burst_fwd) and [c.strip() for c in row[0].split("|")[6:12]]
          == [f"{burst_fwd[0]:.1f}", "607.0", "694", "1665", "1.00", "1.151"],
          f"SUMMARY.md has the heated row beside its burst rate ({row[:1]}, burst {burst_fwd})")
    r = run_attn(heated, "--out", os.path.join(tmp, "attn-heated-only"))
    m = json.load(open(os.path.join(tmp, "attn-heated-only", "charts.json"))) if r.returncode == 0 else {"charts": []}
    check(r.returncode == 0 and [c["file"] for c in m["charts"]] == ["attention_heated.png"],
          f"a heated JSON alone draws its chart only ({r.stderr.strip()})")
    doc = json.load(open(heated))
    del doc["benchmarks"][1]["W"]
    bad_heated = os.path.join(tmp, "bad_heated.json")
    json.dump(doc, open(bad_heated, "w"))
    r = run_attn(bench, bad_heated, "--out", os.path.join(tmp, "attn-heated-bad"))
    check(r.returncode == 2 and doc["benchmarks"][1]["name"] in r.stderr,
          f"a heated row without its power named: {r.stderr.strip()}")
    # bad input: named, exit 2
    badb = os.path.join(tmp, "bad_bench.json")
    open(badb, "w").write('{"benchmarks": [')
    r = run_attn(badb, "--out", os.path.join(tmp, "a2"))
    check(r.returncode == 2 and "bad_bench.json: malformed JSON" in r.stderr, f"malformed bench JSON named: {r.stderr.strip()}")
    foreign = os.path.join(tmp, "foreign.json")
    json.dump({"schema": "lssbench-result/1"}, open(foreign, "w"))
    r = run_attn(bench, foreign, "--out", os.path.join(tmp, "a3"))
    check(r.returncode == 2 and "foreign.json: neither a Google Benchmark JSON" in r.stderr
          and "nor a lssbench-peer-attention/1 result" in r.stderr, f"a file of neither kind named: {r.stderr.strip()}")
    r = run_attn(foreign, "--out", os.path.join(tmp, "a3b"))
    check(r.returncode == 2 and "no bench_attention JSON among" in r.stderr,
          f"no bench_attention JSON at all named: {r.stderr.strip()}")
    def on_card(src, name, device):
        """A copy of src in tmp/name that says it ran on `device` (a bench JSON's context or a peer's)."""
        doc = json.load(open(src))
        (doc["context"] if "benchmarks" in doc else doc)["device"] = device
        path = os.path.join(tmp, name)
        json.dump(doc, open(path, "w"))
        return path

    b200 = on_card(bench, "bench_h200.json", "NVIDIA H200")
    h100 = on_card(heated, "heated_h100.json", "NVIDIA H100 80GB HBM3")
    r = run_attn(b200, h100, "--out", os.path.join(tmp, "a3c"))
    check(r.returncode == 2 and "heated_h100.json: ran on NVIDIA H100 80GB HBM3" in r.stderr,
          f"two bench JSONs of different cards refused: {r.stderr.strip()}")
    other = on_card(peer, "other_card.json", "NVIDIA H100 80GB HBM3")
    r = run_attn(b200, other, "--out", os.path.join(tmp, "a4"))
    check(r.returncode == 2 and "compare one card with itself" in r.stderr, f"peer from another card refused: {r.stderr.strip()}")

# plots/traceplot.py on two traced CPU runs (lss on 2 ranks, serial; lssbench run --trace), kept as a
# fixture whose recorded trace paths are gone: the traces are read from beside the results
traceplot = os.path.join(here, "..", "plots", "traceplot.py")
traces = os.path.join(here, "fixtures", "trace")


def run_trace(*args):
    return subprocess.run([sys.executable, traceplot, *args], capture_output=True, text=True, timeout=300)


with tempfile.TemporaryDirectory() as tmp:
    results = [os.path.join(traces, n) for n in ("lss_w2_sp2.json", "serial_w1.json")]
    out = os.path.join(tmp, "tr")
    r = run_trace(*results, "--out", out)
    check(r.returncode == 0, f"traceplot draws the fixture (exit {r.returncode}) {r.stderr.strip()}")
    manifest = json.load(open(os.path.join(out, "charts.json"))) if r.returncode == 0 else {"timelines": {}}
    names = [manifest["timelines"].get(p) for p in results] + [manifest.get("breakdown")]
    check(names[:2] == ["timeline_lss_w2_sp2.png", "timeline_serial_w1.png"] and names[2] == "breakdown.png",
          f"charts.json lists a timeline per result and the breakdown ({names})")
    for name in filter(None, names):
        path = os.path.join(out, name)
        ok_png = os.path.exists(path) and open(path, "rb").read(8) == b"\x89PNG\r\n\x1a\n" and os.path.getsize(path) > 5000
        check(ok_png, f"{name} is a PNG image")
    check_palette_pngs(out, "traceplot")
    # The breakdown's parts are the slowest rank's operations by kind, from the result's summary.
    lss = json.load(open(results[0]))
    slowest = lss["trace"]["slowest_rank"]
    ops = slowest["by_operation"]
    b = manifest.get("breakdown_ms", {}).get(results[0], {})
    attention = sum(v["ms"] for k, v in ops.items() if k.startswith("attention"))
    every = sum(v["ms"] for v in ops.values())
    check(b and abs(b["attention"] - attention) < 1e-9 and abs(b["attention"] + b["gemm"] + b["other"] - every) < 1e-9
          and b["exposed"] == slowest["exposed_ms"] and b["step"] == slowest["step_ms"],
          f"the breakdown splits the slowest rank's operations into attention, GEMM and other ({b})")
    summary = open(os.path.join(out, "SUMMARY.md")).read() if r.returncode == 0 else ""
    row = [l for l in summary.splitlines() if "(lss_w2_sp2)" in l]
    check(bool(row) and row[0].split("|")[2].strip() == f"{slowest['step_ms']:.2f}",
          f"SUMMARY.md has lss's traced step ({row[:1]})")
    kv = slowest["by_collective"]["K/V all-gather"]
    row = [l for l in summary.splitlines() if "| K/V all-gather |" in l]
    check(bool(row) and row[0].split("|")[3:5] == [f" {kv['calls']:g} ", f" {kv['ms']:.2f} "],
          f"SUMMARY.md has lss's K/V all-gathers by what they are for ({row[:1]})")
    r = run_trace(results[0], "--out", os.path.join(tmp, "tw"), "--window", "0.5:1.5")
    check(r.returncode == 0 and os.path.exists(os.path.join(tmp, "tw", "timeline_lss_w2_sp2.png")),
          f"a window draws ({r.stderr.strip()})")
    # bad input: named, exit 2
    r = run_trace(results[0], "--out", os.path.join(tmp, "t2"), "--window", "3:1")
    check(r.returncode == 2 and "--window 3:1" in r.stderr, f"a bad window named: {r.stderr.strip()}")
    untraced = os.path.join(tmp, "untraced.json")
    doc = dict(lss)
    doc["trace"] = None
    json.dump(doc, open(untraced, "w"))
    r = run_trace(untraced, "--out", os.path.join(tmp, "t3"))
    check(r.returncode == 2 and "untraced.json: no trace in this result" in r.stderr, f"a result without a trace named: {r.stderr.strip()}")
    # a trace kept xz-compressed beside its result (as results/ keeps them) draws the same
    os.makedirs(os.path.join(tmp, "xz"))
    shutil.copy(results[0], os.path.join(tmp, "xz", "lss_w2_sp2.json"))
    with open(os.path.join(traces, "lss_w2_sp2.trace.json"), "rb") as src, \
            lzma.open(os.path.join(tmp, "xz", "lss_w2_sp2.trace.json.xz"), "wb") as dst:
        dst.write(src.read())
    r = run_trace(os.path.join(tmp, "xz", "lss_w2_sp2.json"), "--out", os.path.join(tmp, "txz"))
    plain = open(os.path.join(out, "SUMMARY.md")).read().split("\n")
    packed = open(os.path.join(tmp, "txz", "SUMMARY.md")).read().split("\n") if r.returncode == 0 else []
    row = lambda lines: [x for x in lines if x.startswith("| lss ")][:1]
    check(r.returncode == 0 and row(packed) == row(plain) and row(plain) != [],
          f"an xz-compressed trace beside its result is read ({r.stderr.strip()})")
    # a sweep's layout (trace_steps): the trace in traces/ beside points/
    os.makedirs(os.path.join(tmp, "sw", "points"))
    os.makedirs(os.path.join(tmp, "sw", "traces"))
    shutil.copy(results[0], os.path.join(tmp, "sw", "points", "lss_w2_sp2.json"))
    shutil.copy(os.path.join(traces, "lss_w2_sp2.trace.json"), os.path.join(tmp, "sw", "traces", "lss_w2_sp2.trace.json"))
    r = run_trace(os.path.join(tmp, "sw", "points", "lss_w2_sp2.json"), "--out", os.path.join(tmp, "t5"))
    check(r.returncode == 0, f"a sweep point's trace is found in traces/ ({r.stderr.strip()})")
    # the same file name in two folders (two calls' points): two timelines, told apart by folder
    for call in ("call1", "call2"):
        os.makedirs(os.path.join(tmp, call))
        for n in ("lss_w2_sp2.json", "lss_w2_sp2.trace.json"):
            shutil.copy(os.path.join(traces, n), os.path.join(tmp, call, n))
    twins = [os.path.join(tmp, call, "lss_w2_sp2.json") for call in ("call1", "call2")]
    r = run_trace(*twins, "--out", os.path.join(tmp, "t6"))
    manifest = json.load(open(os.path.join(tmp, "t6", "charts.json"))) if r.returncode == 0 else {"timelines": {}}
    names = [manifest["timelines"].get(p) for p in twins]
    check(names == ["timeline_call1_lss_w2_sp2.png", "timeline_call2_lss_w2_sp2.png"]
          and all(os.path.exists(os.path.join(tmp, "t6", n)) for n in names),
          f"results of one file name in two folders get a timeline each ({names}) {r.stderr.strip()}")
    # a blocking twin (--no-overlap) of the lss fixture: the overlap accounting pairs the two and
    # not serial; its numbers follow from the two results' timed medians and slowest ranks
    blocking = json.loads(json.dumps(lss))
    blocking["config"]["strategy_options"]["overlap"] = False
    blocking["config"]["options"]["overlap"] = "false"
    blocking["config"]["options"]["out"] = "elsewhere.json"
    blocking["timing"]["median_ms"] = lss["timing"]["median_ms"] + 1.5
    sb = blocking["trace"]["slowest_rank"]
    sb["exposed_ms"] = 2.25
    for v in sb["by_operation"].values():
        v["ms"] *= 0.5
    os.makedirs(os.path.join(tmp, "ov"))
    twin = os.path.join(tmp, "ov", "lss_blocking.json")
    json.dump(blocking, open(twin, "w"))
    shutil.copy(os.path.join(traces, "lss_w2_sp2.trace.json"), os.path.join(tmp, "ov", "lss_w2_sp2.trace.json"))
    r = run_trace(results[0], results[1], twin, "--out", os.path.join(tmp, "t7"))
    manifest = json.load(open(os.path.join(tmp, "t7", "charts.json"))) if r.returncode == 0 else {}
    pairs = manifest.get("overlap", [])
    every_off = sum(v["ms"] for v in sb["by_operation"].values())
    want = {"blocking": twin, "overlapped": results[0], "gain": 1.5, "exposed_blocking": 2.25,
            "exposed_overlapped": slowest["exposed_ms"], "compute_slowdown": every - every_off,
            "gained_share": 1.5 / 2.25}
    check(len(pairs) == 1 and all(abs(pairs[0][k] - v) < 1e-9 if isinstance(v, float) else pairs[0][k] == v
                                  for k, v in want.items()),
          f"the overlap accounting pairs lss with its blocking twin only, gain {want['gain']}, share 0.67 ({pairs})")
    summary = open(os.path.join(tmp, "t7", "SUMMARY.md")).read() if r.returncode == 0 else ""
    check("## What overlap gains and what it costs" in summary and "| 1.50 | 2.25 |" in summary,
          f"SUMMARY.md has the overlap accounting ({r.stderr.strip()})")
    # two rounds of each: the first blocking run pairs with the first overlapped, the second with the second
    os.makedirs(os.path.join(tmp, "ov2"))
    for n in ("lss_w2_sp2.json", "lss_w2_sp2.trace.json"):
        shutil.copy(os.path.join(traces, n), os.path.join(tmp, "ov2", n))
    twin2 = os.path.join(tmp, "ov2", "lss_blocking.json")
    json.dump(blocking, open(twin2, "w"))
    second = os.path.join(tmp, "ov2", "lss_w2_sp2.json")
    r = run_trace(results[0], twin, second, twin2, "--out", os.path.join(tmp, "t8"))
    manifest = json.load(open(os.path.join(tmp, "t8", "charts.json"))) if r.returncode == 0 else {}
    got = [(p["blocking"], p["overlapped"]) for p in manifest.get("overlap", [])]
    check(got == [(twin, results[0]), (twin2, second)], f"rounds pair in order ({got}) {r.stderr.strip()}")
    moved = os.path.join(tmp, "moved.json")
    shutil.copy(results[0], moved)
    r = run_trace(moved, "--out", os.path.join(tmp, "t4"))
    check(r.returncode == 2 and "lss_w2_sp2.trace.json: missing" in r.stderr, f"a missing trace file named: {r.stderr.strip()}")

# plots/projplot.py on synthetic projection and result JSON: measured 2-GPU lss and serial points,
# lss projections at 2 and 4 GPUs (weak: 16K tokens per GPU) and one without a calibration; the
# table pairs each projection with the measurement of its series and GPU count.
projplot = os.path.join(here, "..", "plots", "projplot.py")


def run_proj(*args):
    return subprocess.run([sys.executable, projplot, *args], capture_output=True, text=True, timeout=300)


def proj_json(world, seq, bound_ms, step_ms, options):
    return {"schema": "lssbench-projection", "schema_version": 1, "status": "ok", "strategy": "lss",
            "grid": {"world": world, "sp": world, "dp": 1}, "config": {"seq": seq, "batch": 1, "options": options},
            "projection": {"bound_ms": bound_ms, "step_ms": step_ms, "bound_tflops_per_gpu": 600.0 / world,
                           "step_tflops_per_gpu": None if step_ms is None else 500.0 / world}}


def result_json(strategy, world, seq, step_ms, tflops, options):
    return {"schema_version": 1, "status": "ok", "strategy": strategy, "grid": {"world": world, "sp": world, "dp": 1},
            "config": {"seq": seq, "batch": 1, "options": options}, "timing": {"median_ms": step_ms},
            "metrics": {"tflops_per_gpu": tflops}}


with tempfile.TemporaryDirectory() as tmp:
    best = {"zigzag": "true", "keep-kv": "true", "overlap": "true", "recompute": "false"}
    os.makedirs(os.path.join(tmp, "in", "deep"))
    files = {"in/p2.json": proj_json(2, 32768, 80.0, 99.0, best), "in/deep/p4.json": proj_json(4, 65536, 130.0, 143.0, best),
             "in/p8.json": proj_json(8, 131072, 250.0, None, best),
             "in/p4cross.json": proj_json(4, 65536, 126.0, 139.0, dict(best, **{"local-cross-block": "true"})),
             "in/m2.json": result_json("lss", 2, 32768, 90.0, 520.0, best),
             "in/s1.json": result_json("serial", 1, 16384, 57.0, 560.0, {}),
             "in/other.json": {"kind": "sweep_aggregate"}}
    for name, j in files.items():
        json.dump(j, open(os.path.join(tmp, name), "w"))
    r = run_proj(os.path.join(tmp, "in"), "--out", os.path.join(tmp, "pp"))
    png = os.path.join(tmp, "pp", "projection.png")
    check(r.returncode == 0 and os.path.exists(png) and open(png, "rb").read(8) == b"\x89PNG\r\n\x1a\n",
          f"projplot draws a PNG from a folder ({r.stderr.strip()})")
    check_palette_pngs(os.path.join(tmp, "pp"), "projplot")
    summary = open(os.path.join(tmp, "pp", "SUMMARY.md")).read() if r.returncode == 0 else ""
    rows = [line for line in summary.splitlines() if line.startswith("| lss") or line.startswith("| serial")]
    check(len(rows) == 5, f"one row per (series, GPUs), the unrelated JSON skipped ({len(rows)} rows)")
    check(any("| 4 | 64K |  | 139.00 | 126.00 |" in line and "--zigzag --keep-kv --local-cross-block," in line
              for line in rows), "an option off by default names its own series (--local-cross-block)")
    check(any("| 2 | 32K | 90.00 | 99.00 | 80.00 | 1.100 |" in line and "--zigzag --keep-kv, 16K tokens/GPU" in line
              for line in rows), "the 2-GPU row pairs projected with measured: 99 / 90 = 1.100, the series named by its options")
    check(any("| 8 | 128K |  |  | 250.00 |  |" in line for line in rows),
          "a projection without a calibration has a bound and no step")
    bad = os.path.join(tmp, "bad.json")
    open(bad, "w").write("{")
    r = run_proj(bad, "--out", os.path.join(tmp, "pp2"))
    check(r.returncode == 2 and "bad.json: malformed JSON" in r.stderr, f"a malformed file named: {r.stderr.strip()}")
    r = run_proj(os.path.join(tmp, "in", "other.json"), "--out", os.path.join(tmp, "pp3"))
    check(r.returncode == 2 and "other.json: neither a projection" in r.stderr, f"a foreign file named: {r.stderr.strip()}")

print(f"{passed} passed, {failed} failed")
sys.exit(1 if failed else 0)
