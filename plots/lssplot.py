#!/usr/bin/env python3
"""Paper-style charts and a Markdown summary from lssbench results (JSON only).

usage: python3 plots/lssplot.py SWEEP_DIR [SWEEP_DIR ...] --out CHART_DIR

Each SWEEP_DIR is a `lssbench sweep` folder (points/*.json and aggregate-*.json; the newest
aggregate is used). Folders that share a strategy (e.g. lss with and without an option, one sweep
each) stay apart: that strategy's series are named "<strategy> (<folder name>)" and drawn with a
line style per folder. Charts (PNG) and their series are listed in CHART_DIR/charts.json, and
CHART_DIR/SUMMARY.md holds the tables. A missing or malformed file is an error naming the file.
"""
import argparse
import glob
import json
import os
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from figsave import save_png  # noqa: E402
from jsonfile import InputError, load_json  # noqa: E402

STYLE = {"lss": ("tab:blue", "o"), "megatron_sp": ("tab:orange", "s"), "serial": ("tab:gray", "^")}


def load_sweep(folder):
    if not os.path.isdir(folder):
        raise InputError(f"{folder}: not a folder")
    name = os.path.basename(os.path.normpath(folder))
    points = []
    paths = sorted(glob.glob(os.path.join(folder, "points", "*.json")))
    if not paths:
        raise InputError(f"{folder}/points: no point results (is this a sweep folder?)")
    for p in paths:
        r = load_json(p)
        if not isinstance(r, dict) or "status" not in r or "strategy" not in r or "grid" not in r:
            raise InputError(f"{p}: not an lssbench result (status, strategy or grid missing)")
        if r["status"] == "ok":
            for field in ("timing", "metrics", "machine", "config"):
                if field not in r:
                    raise InputError(f"{p}: result without '{field}'")
        r["_path"] = p
        r["_sweep"] = name
        points.append(r)
    def by_time(path):  # aggregate-<UTC stamp>[-<n>].json: the n-th aggregate of that second
        stem = os.path.basename(path)[len("aggregate-"):-len(".json")]
        stamp, _, n = stem.partition("-")
        return (stamp, int(n) if n.isdigit() else 1)
    aggs = sorted(glob.glob(os.path.join(folder, "aggregate-*.json")), key=by_time)
    if not aggs:
        raise InputError(f"{folder}: no aggregate-*.json (the sweep did not finish; rerun it)")
    agg = load_json(aggs[-1])
    if not isinstance(agg, dict) or agg.get("kind") != "sweep_aggregate":
        raise InputError(f"{aggs[-1]}: not a sweep aggregate")
    return {"folder": folder, "name": name, "points": points, "aggregate": agg}


def provenance(sweeps):
    """What ran it: card, model, grids, commit (from the points themselves)."""
    ok = [p for s in sweeps for p in s["points"] if p["status"] == "ok"]
    if not ok:
        return "no successful point"
    cards = sorted({d for p in ok for d in p["machine"].get("devices", [])})
    commits = sorted({p["machine"].get("git_commit", "?") for p in ok})
    c = ok[0]["config"]
    model = f"L{c.get('layers')} C{c.get('width')} H{c.get('heads')} B{c.get('batch')} {c.get('dtype')}" + (
        " causal" if c.get("causal") else "")
    worlds = sorted({p["grid"]["world"] for p in ok})
    card = cards[0].split(" (")[0] if len(cards) == 1 else f"{len(cards)} device kinds"
    return f"{card} | {model} | ranks {','.join(map(str, worlds))} | commit {','.join(commits)}"


class Charts:
    def __init__(self, out, footer):
        self.out, self.footer, self.manifest, self.not_drawn = out, footer, [], []

    def save(self, fig, name, title, series, why_empty="nothing to draw", panels=None):
        """Writes the chart, or, when it has no series, leaves it out and records why_empty (an empty
        frame in a paper or a CI artefact reads as a result). `panels`: the y labels of a chart of
        several, for the manifest."""
        if not series:
            plt.close(fig)
            self.not_drawn.append({"file": name + ".png", "title": title, "why": why_empty})
            return
        fig.suptitle(title, fontsize=11)
        fig.text(0.5, 0.005, self.footer, ha="center", va="bottom", fontsize=7, color="dimgray")
        fig.tight_layout(rect=(0, 0.03, 1, 0.95))
        path = os.path.join(self.out, name + ".png")
        save_png(fig, path, dpi=120)
        plt.close(fig)
        self.manifest.append({"file": name + ".png", "title": title, "series": series,
                              **({"panels": panels} if panels else {})})


def aggregate_entries(sweeps, key):
    """The entries of every sweep's aggregate list `key`, each marked with its sweep's name."""
    return [dict(e, _sweep=s["name"]) for s in sweeps for e in s["aggregate"].get(key, [])]


def ok_points(sweeps):
    return [p for s in sweeps for p in s["points"] if p["status"] == "ok"]


# What two points must share to be compared across sweeps: ranks, sequence group, model and length.
MODEL_KEYS = ("layers", "width", "heads", "batch", "dtype", "causal", "seq")


def cross_sweep_speedups(sweeps):
    """The speedup entries (README, Metrics: megatron_sp step time / lss step time, and the memory
    ratio) of the lss points of each sweep without megatron_sp, an ablation of lss's options, against
    the megatron_sp points of every other sweep at the same ranks, sequence group and model (e.g. a
    sweep of megatron_sp's own options beside the default one). Named "<lss sweep> vs <megatron_sp
    sweep>"."""
    def key(p):
        return (p["grid"]["world"], p["grid"].get("sp"), tuple(p["config"].get(k) for k in MODEL_KEYS))
    # Each sweep's megatron_sp points by key, in the order the sweeps were given.
    baselines = [{key(p): p for p in s["points"] if p["status"] == "ok" and p["strategy"] == "megatron_sp"}
                 for s in sweeps]
    out = []
    for s in sweeps:
        if any(p["strategy"] == "megatron_sp" for p in s["points"]):
            continue
        lss_points = [p for p in s["points"] if p["status"] == "ok" and p["strategy"] == "lss"]
        for p, b in ((p, points[key(p)]) for p in lss_points for points in baselines if key(p) in points):
            lss_ms, meg_ms = p["timing"]["median_ms"], b["timing"]["median_ms"]
            out.append({"world": p["grid"]["world"], "sp": p["grid"].get("sp"), "seq": p["config"]["seq"],
                        "lss_ms": lss_ms, "megatron_sp_ms": meg_ms, "speedup": meg_ms / lss_ms,
                        "memory_ratio": b["metrics"]["peak_mem_bytes"] / p["metrics"]["peak_mem_bytes"],
                        "_sweep": f"{s['name']} vs {b['_sweep']}", "_lss_sweep": s["name"]})
    return sorted(out, key=lambda e: (e["_sweep"], e["world"], e["seq"]))


LINE_STYLES = ["-", "--", ":", "-."]


class Series:
    """Names of the series: a strategy alone, or with its sweep's name where several sweeps have it."""

    def __init__(self, sweeps):
        self.order = [s["name"] for s in sweeps]
        owners = {}
        for s in sweeps:
            strategies = {p["strategy"] for p in s["points"]}
            strategies |= {e["strategy"] for key in ("strong_scaling", "weak_scaling", "max_seq")
                           for e in s["aggregate"].get(key, [])}
            for st in strategies:
                owners.setdefault(st, set()).add(s["name"])
        self.shared = {st for st, names in owners.items() if len(names) > 1}
        self.speedup_sweeps = sum(1 for s in sweeps if s["aggregate"].get("speedup_lss_over_megatron_sp"))

    def name(self, strategy, sweep):
        return f"{strategy} ({sweep})" if strategy in self.shared else strategy

    def of(self, p):
        return self.name(p["strategy"], p["_sweep"])

    def style(self, sweep):
        return LINE_STYLES[self.order.index(sweep) % len(LINE_STYLES)] if len(self.order) > 1 else "-"


# The shortest span of the energy counter's updates an energy counts over (README, Metrics;
# src/core/backend.h's kMinEnergyWindowS): shorter ones read up to 2.4x a capped card's power.
MIN_ENERGY_WINDOW_S = 0.8


def measured_energy(p):
    """(J per step, tokens per joule) of a point, or None. Only where every rank's device state
    says how its energy was taken (`energy_window_s`: the power between the counter's updates,
    README, Metrics) and that window spans MIN_ENERGY_WINDOW_S: results of the builds before it
    read the counter at the region's two ends alone, 10-20% off over the short regions of a sweep
    point, and those before the thirty-eighth session took it over any window."""
    m = p.get("metrics") or {}
    ranks = ((p.get("timing") or {}).get("device_state") or {}).get("per_rank") or []
    if not (ranks and all(isinstance(r, dict) and r.get("energy_window_s", 0) >= MIN_ENERGY_WINDOW_S for r in ranks)):
        return None
    j, tpj = m.get("energy_j_per_step"), m.get("tokens_per_joule")
    return (j, tpj) if isinstance(j, (int, float)) and isinstance(tpj, (int, float)) else None


def by_series(points, name_of, x_of, y_of):
    out = {}
    for p in points:
        out.setdefault(name_of(p), []).append((x_of(p), y_of(p)))
    return {k: sorted(v) for k, v in out.items()}


def plot_lines(ax, data, xlabel, ylabel, logx=False, styles=None):
    for s, xy in sorted(data.items()):
        color, marker = STYLE.get(s.split(" (")[0], (None, "x"))
        ax.plot([x for x, _ in xy], [y for _, y in xy], marker=marker, color=color, ls=(styles or {}).get(s, "-"),
                label=s)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if logx:
        ax.set_xscale("log", base=2)
    ax.grid(alpha=0.3)
    ax.legend()
    return sorted(data)


def draw(sweeps, out):
    os.makedirs(out, exist_ok=True)
    charts = Charts(out, provenance(sweeps))
    pts = ok_points(sweeps)
    names = Series(sweeps)
    styles = {names.of(p): names.style(p["_sweep"]) for p in pts}
    speed = aggregate_entries(sweeps, "speedup_lss_over_megatron_sp") + cross_sweep_speedups(sweeps)
    names.speedup_sweeps = len({e["_sweep"] for e in speed})
    world = lambda p: p["grid"]["world"]
    seq = lambda p: p["config"]["seq"]

    # 1. speedup of lss over megatron_sp, against GPU count and against T
    if speed:
        fig, axes = plt.subplots(1, 2, figsize=(10, 4))
        series = []
        for ax, key, label in ((axes[0], "world", "GPUs (ranks)"), (axes[1], "seq", "sequence length T")):
            groups = {}
            other = "seq" if key == "world" else "world"
            for e in speed:
                groups.setdefault((e["_sweep"], e[other]), []).append((e[key], e["speedup"]))
            lss_sweep = {e["_sweep"]: e.get("_lss_sweep", e["_sweep"]) for e in speed}
            for (sweep, g), xy in sorted(groups.items()):
                xy.sort()
                name = (f"{sweep}: " if names.speedup_sweeps > 1 else "") + f"{'T' if other == 'seq' else 'GPUs'}={g}"
                ax.plot([x for x, _ in xy], [y for _, y in xy], marker="o", label=name,
                        ls=names.style(lss_sweep[sweep]))
                series.append(name)
            ax.axhline(1.0, color="gray", lw=0.8, ls="--")
            ax.set_xlabel(label)
            ax.set_ylabel("speedup (megatron_sp time / lss time)")
            ax.set_xscale("log", base=2)
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8)
        charts.save(fig, "speedup", "Speedup of lss over megatron_sp", series)

    # 2. peak memory per GPU against T and GPU count, and the memory ratio
    fig, axes = plt.subplots(1, 3, figsize=(14, 4))
    gib = lambda p: p["metrics"]["peak_mem_bytes"] / 2**30
    s1 = plot_lines(axes[0], by_series([p for p in pts if world(p) == max(map(world, pts))], names.of, seq, gib),
                    f"T (at {max(map(world, pts))} ranks)", "peak memory per rank (GiB)", logx=True, styles=styles)
    s2 = plot_lines(axes[1], by_series([p for p in pts if seq(p) == max(map(seq, pts))], names.of, world, gib),
                    f"ranks (at T={max(map(seq, pts))})", "peak memory per rank (GiB)", logx=True, styles=styles)
    if speed:
        xy = sorted((e["world"], e["seq"], e["memory_ratio"], e["_sweep"]) for e in speed)
        axes[2].plot(range(len(xy)), [r for _, _, r, _ in xy], marker="o", color="tab:green", label="memory ratio")
        axes[2].set_xticks(range(len(xy)), [f"{w}g\nT{t}" + (f"\n{n}" if names.speedup_sweeps > 1 else "")
                                            for w, t, _, n in xy], fontsize=7)
        axes[2].axhline(1.0, color="gray", lw=0.8, ls="--")
        axes[2].set_ylabel("megatron_sp / lss peak memory")
        axes[2].legend()
        axes[2].grid(alpha=0.3)
    charts.save(fig, "memory", "Peak memory per GPU", s1 + s2 + (["memory ratio"] if speed else []))

    # 3. scaling efficiency against GPU count (strong; weak with both definitions, labelled)
    strong = aggregate_entries(sweeps, "strong_scaling")
    weak = aggregate_entries(sweeps, "weak_scaling")
    if strong or weak:
        fig, ax = plt.subplots(figsize=(7, 4))
        series = []
        for e_list, key, style, label in ((strong, "efficiency", "-", "strong E=T1/(N TN)"),
                                          (weak, "flop_rate_efficiency", "-", "weak, per-GPU FLOP rate"),
                                          (weak, "bound_flop_rate_efficiency", "-.", "weak, the bound's ceiling"),
                                          (weak, "time_ratio_paper_style", ":", "weak, paper-style time ratio")):
            groups = {}
            for e in e_list:
                if not isinstance(e.get(key), (int, float)):  # no bound in older results
                    continue
                tag = names.name(e["strategy"], e["_sweep"]) + (f" T={e['seq']}" if key == "efficiency" else "")
                groups.setdefault((tag, e["_sweep"]), []).append((e["world"], e[key]))
            seqs = sorted({e["seq"] for e in e_list})
            for (tag, sweep), xy in sorted(groups.items()):
                if len(xy) < 2:  # a strategy measured at one rank count only (serial) has no scaling
                    continue
                xy.sort()
                name = f"{tag}: {label}"
                color = STYLE.get(tag.split()[0], (None, "x"))[0]  # the strategy's colour
                ls = style
                if key == "efficiency" and len(seqs) > 1 and not tag.endswith(f"T={seqs[0]}"):
                    ls = "--"
                marker = "osD^"[names.order.index(sweep) % 4]  # the sweep's, where several share a strategy
                ax.plot([x for x, _ in xy], [y for _, y in xy], ls=ls, marker=marker, color=color, label=name, alpha=0.85)
                series.append(name)
        ax.set_xlabel("GPUs (ranks)")
        ax.set_ylabel("parallel efficiency")
        ax.set_xscale("log", base=2)
        ax.axhline(1.0, color="gray", lw=0.8, ls="--")
        ax.grid(alpha=0.3)
        if series:
            ax.legend(fontsize=7)
        charts.save(fig, "efficiency", "Scaling efficiency", series,
                    "every strategy ran at one rank count, so there is no scaling to draw")

    # 4. throughput against T: tokens/s, TFLOP/s per GPU, MFU (measured GEMM peak), and tokens per
    # joule where the runs read their devices' energy (README, Metrics)
    panels = [(lambda p: p["metrics"]["tokens_per_s"], "tokens/s", pts),
              (lambda p: p["metrics"]["tflops_per_gpu"], "TFLOP/s per GPU", pts),
              (lambda p: p["metrics"].get("mfu_measured") or 0.0, "MFU vs measured GEMM peak", pts)]
    energy = [p for p in pts if measured_energy(p)]
    if energy:
        panels.append((lambda p: measured_energy(p)[1], "tokens per joule (all GPUs)", energy))
    fig, axes = plt.subplots(1, len(panels), figsize=(14 * len(panels) / 3, 4))
    series = []
    for ax, (getter, label, panel_pts) in zip(axes, panels):
        data = {}
        for p in panel_pts:
            data.setdefault((names.of(p), world(p), p["strategy"]), []).append((seq(p), getter(p)))
        for (name, w, strategy), xy in sorted(data.items()):
            xy.sort()
            ax.plot([x for x, _ in xy], [y for _, y in xy], marker="o", label=f"{name} {w}g", ls=styles.get(name, "-"),
                    color=STYLE.get(strategy, (None, "x"))[0], alpha=0.4 + 0.6 * (w / max(map(world, pts))))
        ax.set_xlabel("sequence length T")
        ax.set_ylabel(label)
        ax.set_xscale("log", base=2)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
        series = [f"{name} {w}g" for name, w, _ in sorted(data)]
    charts.save(fig, "throughput", "Throughput against sequence length", series,
                panels=[label for _, label, _ in panels])

    # 5. longest trainable sequence against GPU count
    maxseq = aggregate_entries(sweeps, "max_seq")
    if maxseq:
        fig, ax = plt.subplots(figsize=(7, 4))
        data = by_series(maxseq, lambda e: names.name(e["strategy"], e["_sweep"]), lambda e: e["world"],
                         lambda e: e["max_seq"] or 0)
        series = plot_lines(ax, data, "GPUs (ranks)", "longest trainable T", logx=True,
                            styles={names.name(e["strategy"], e["_sweep"]): names.style(e["_sweep"]) for e in maxseq})
        # A search that reached the spec's limit, or was cut short (its aggregate made with
        # --aggregate-only), gives a lower bound: say so at the point.
        for e in maxseq:
            why = "limit" if e.get("limit_reached") else "cut short" if e.get("complete") is False else None
            if why and e["max_seq"]:
                ax.annotate(f"\u2265{e['max_seq'] // 1024}K ({why})", (e["world"], e["max_seq"]), fontsize=7,
                            textcoords="offset points", xytext=(4, -10 if e["strategy"] == "megatron_sp" else 4))
        charts.save(fig, "max_seq", "Longest trainable sequence", series)

    # 6. step time breakdown and communication volume per strategy, at the largest point
    big = [p for p in pts if world(p) == max(map(world, pts))]
    if big:
        T = max(map(seq, big))
        big = sorted([p for p in big if seq(p) == T], key=names.of)
        fig, axes = plt.subplots(1, 2, figsize=(11, 4))
        bars = [names.of(p) for p in big]
        tm = [p["timing"] for p in big]
        exposed = [t.get("comm_exposed_median_ms", t.get("comm_median_ms", 0)) for t in tm]
        total_comm = [t.get("comm_median_ms", 0) for t in tm]
        hidden = [max(0.0, c - e) for c, e in zip(total_comm, exposed)]
        compute = [max(0.0, t["median_ms"] - e) for t, e in zip(tm, exposed)]
        axes[0].bar(bars, compute, label="compute", color="tab:green")
        axes[0].bar(bars, exposed, bottom=compute, label="exposed communication", color="tab:red")
        axes[0].bar(bars, hidden, bottom=[c + e for c, e in zip(compute, exposed)], label="hidden communication",
                    color="tab:pink", hatch="//")
        # The analytic bound (README, Metrics), where the result has one: what the step would take
        # with every kernel at its measured speed and only the unhideable communication; and the
        # contended bound, with the hidden collectives timed beside GEMMs.
        marks = []
        for label, bound_of, color, ls in (("analytic bound", lambda b: b, "black", "-"),
                                           ("contended bound", lambda b: b.get("contended") or {}, "tab:blue", "--")):
            at = [(i, bound_of(p.get("bound") or {}).get("bound_ms")) for i, p in enumerate(big)]
            at = [(i, b) for i, b in at if isinstance(b, (int, float))]
            if at:
                axes[0].scatter([i for i, _ in at], [b for _, b in at], marker="_", s=900, color=color, linestyle=ls,
                                zorder=3, label=label)
                marks.append(label)
        axes[0].set_ylabel(f"ms per step (T={T}, {world(big[0])} ranks)")
        axes[0].legend(fontsize=8)
        vol = []
        for p in big:
            total = 0
            for group in p["comm"]["per_step_rank0"].values():
                total += sum(k["bytes"] for k in group.values())
            vol.append(total / 2**30)
        axes[1].bar(bars, vol, color=[STYLE.get(p["strategy"], ("gray",))[0] for p in big])
        axes[1].set_ylabel("GiB moved per step per rank (collective sizes)")
        charts.save(fig, "breakdown", "Step time breakdown and communication volume",
                    ["compute", "exposed communication", "hidden communication"] +
                    marks + bars)

    with open(os.path.join(out, "charts.json"), "w") as f:
        json.dump({"provenance": charts.footer, "charts": charts.manifest, "not_drawn": charts.not_drawn}, f, indent=2)
    write_summary(sweeps, out, charts)
    return charts


def write_summary(sweeps, out, charts):
    lines = ["# lssbench summary", "", f"Ran on: {charts.footer}", ""]
    for s in sweeps:
        lines += [f"## {s['name']} ({s['aggregate'].get('mode')})", "",
                  "| strategy | ranks | sp | T | status | step ms | exposed comm ms | step / bound "
                  "| step / sustained | step / contended | attention max / min rank | tokens/s | TFLOP/s/GPU "
                  "| MFU (measured) | peak GiB | J/step | tokens/J |",
                  "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for p in sorted(s["points"], key=lambda p: (p["strategy"], p["grid"]["world"], p["config"].get("seq", 0))):
            row = [p["strategy"], p["grid"]["world"], p["grid"].get("sp", ""), p["config"].get("seq", ""), p["status"]]
            if p["status"] == "ok":
                m, t, b = p["metrics"], p["timing"], p.get("bound") or {}
                exposed = t.get("comm_exposed_median_ms")
                ratio = b.get("step_over_bound")
                # The other side of the power-cap bracket (README, Metrics); absent before it existed.
                sustained = b.get("step_over_sustained_bound")
                # The bound with overlap's contention priced (README, Metrics); absent before it existed.
                contended = b.get("step_over_contended_bound")
                attn = [x for x in b.get("per_rank_attention_ms") or [] if isinstance(x, (int, float))]
                energy = measured_energy(p)
                imbalance = max(attn) / min(attn) if attn and min(attn) > 0 else None
                row += [f"{t['median_ms']:.2f}", f"{exposed:.2f}" if isinstance(exposed, (int, float)) else "-",
                        f"{ratio:.3f}" if isinstance(ratio, (int, float)) else "-",
                        f"{sustained:.3f}" if isinstance(sustained, (int, float)) else "-",
                        f"{contended:.3f}" if isinstance(contended, (int, float)) else "-",
                        f"{imbalance:.3f}" if imbalance else "-",
                        f"{m['tokens_per_s']:.0f}", f"{m['tflops_per_gpu']:.1f}",
                        f"{m['mfu_measured']:.3f}" if m.get("mfu_measured") else "-", f"{m['peak_mem_bytes'] / 2**30:.2f}",
                        # The devices' energy over the timed steps, all GPUs (absent: no energy counter).
                        f"{energy[0]:.2f}" if energy else "-", f"{energy[1]:.1f}" if energy else "-"]
            else:
                row += ["-"] * 12
            lines.append("| " + " | ".join(map(str, row)) + " |")
        # base / serial: the base point's step over serial's at its T (absent from aggregates before
        # the twenty-seventh session, or without a serial point): above 1 the efficiencies are
        # against a slow baseline.
        fmt = lambda x: f"{x:.3f}" if isinstance(x, (int, float)) else "-"
        strong = s["aggregate"].get("strong_scaling", [])
        if strong:
            lines += ["", "| strategy | ranks | T | strong efficiency | speedup | base / serial |",
                      "|---|---|---|---|---|---|"]
            for e in sorted(strong, key=lambda e: (e["strategy"], e["seq"], e["world"])):
                lines.append(f"| {e['strategy']} | {e['world']} | {e['seq']} | {fmt(e['efficiency'])} | "
                             f"{fmt(e['speedup'])} | {fmt(e.get('base_over_serial'))} |")
        weak = s["aggregate"].get("weak_scaling", [])
        if weak:
            lines += ["", "| strategy | ranks | T | per-GPU FLOP rate efficiency | the bound's ceiling | "
                      "paper-style time ratio | base / serial |", "|---|---|---|---|---|---|---|"]
            for e in sorted(weak, key=lambda e: (e["strategy"], e["world"])):
                lines.append(f"| {e['strategy']} | {e['world']} | {e['seq']} | {fmt(e['flop_rate_efficiency'])} | "
                             f"{fmt(e.get('bound_flop_rate_efficiency'))} | {fmt(e['time_ratio_paper_style'])} | "
                             f"{fmt(e.get('base_over_serial'))} |")
        sp = s["aggregate"].get("speedup_lss_over_megatron_sp", [])
        if sp:
            lines += ["", "| ranks | T | lss ms | megatron_sp ms | speedup | memory ratio |", "|---|---|---|---|---|---|"]
            for e in sp:
                lines.append(f"| {e['world']} | {e['seq']} | {e['lss_ms']:.2f} | {e['megatron_sp_ms']:.2f} | "
                             f"{e['speedup']:.3f} | {e['memory_ratio']:.3f} |")
        cross = [e for e in cross_sweep_speedups(sweeps) if e["_lss_sweep"] == s["name"]]
        if cross:
            lines += ["", "This sweep's lss against megatron_sp of another sweep (same ranks, model and T; "
                      "its own run, so its own card and build):", "",
                      "| against | ranks | T | lss ms | megatron_sp ms | speedup | memory ratio |",
                      "|---|---|---|---|---|---|---|"]
            for e in cross:
                lines.append(f"| {e['_sweep'].split(' vs ', 1)[1]} | {e['world']} | {e['seq']} | {e['lss_ms']:.2f} | "
                             f"{e['megatron_sp_ms']:.2f} | {e['speedup']:.3f} | {e['memory_ratio']:.3f} |")
        lines.append("")
    lines += ["## Charts", ""] + [f"![{c['title']}]({c['file']})" for c in charts.manifest] + [""]
    if charts.not_drawn:
        lines += ["Not drawn:", ""] + [f"- {c['title']} ({c['file']}): {c['why']}" for c in charts.not_drawn] + [""]
    with open(os.path.join(out, "SUMMARY.md"), "w") as f:
        f.write("\n".join(lines))


def main(argv):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("sweeps", nargs="+", help="lssbench sweep folders")
    ap.add_argument("--out", required=True, help="folder for the charts and SUMMARY.md")
    args = ap.parse_args(argv)
    try:
        sweeps = [load_sweep(d) for d in args.sweeps]
        charts = draw(sweeps, args.out)
    except InputError as e:
        print(f"lssplot: error: {e}", file=sys.stderr)
        return 2
    print(f"lssplot: {len(charts.manifest)} charts and SUMMARY.md in {args.out}")
    for c in charts.not_drawn:
        print(f"lssplot: {c['file']} not drawn: {c['why']}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
