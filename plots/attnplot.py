#!/usr/bin/env python3
"""Attention kernel charts from bench_attention's JSON and its PyTorch peer's (JSON only).

usage: python3 plots/attnplot.py BENCH_JSON [BENCH_JSON ...] [PEER_JSON ...] --out CHART_DIR

Each BENCH_JSON is `bench_attention --benchmark_out=FILE --benchmark_out_format=json` (the own
flash kernels, both generations where the GPU has both, and the cuDNN binding), one card's; each
PEER_JSON is `bench/peers/torch_attention.py --out FILE` (schema lssbench-peer-attention/1); the
files are told apart by their content. For the forward and for the forward+backward, one chart of
2 x 2 panels (D = 128, 64; causal, full): TFLOP/s against T for every implementation. Where the
JSON has BM_AttentionHeated rows (`gpu_perf.sh attention-heat`: each call after seconds of heat,
the card at its power limit), one more chart, attention_heated.png: their TFLOP/s beside the
burst rates of the same calls, and their energy per FLOP. CHART_DIR/charts.json lists the charts
and their series, CHART_DIR/SUMMARY.md has the tables, with one for bench_attention's lss rank
rows (BM_AttentionLssRank: one lss rank's attention calls at T on P GPUs) and one for the heated
rows where the JSON has them. A missing or malformed file is an error naming the file (exit 2).
"""
import argparse
import json
import os
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from figsave import save_png  # noqa: E402
from jsonfile import InputError, load_json  # noqa: E402  (the same error and JSON loading)

PEER_SCHEMA = "lssbench-peer-attention/1"
# Display name, colour, marker per implementation: the own kernels solid, PyTorch's dashed.
IMPLS = {
    "flash-wgmma": ("own flash (wgmma)", "tab:blue", "o", "-"),
    "flash-mma.sync": ("own flash (mma.sync)", "tab:cyan", "v", "-"),
    "cudnn": ("own cuDNN binding", "tab:green", "s", "-"),
    "torch-flash": ("PyTorch SDPA flash", "tab:red", "o", "--"),
    "torch-cudnn": ("PyTorch SDPA cuDNN", "tab:olive", "s", "--"),
    "torch-efficient": ("PyTorch SDPA efficient", "tab:purple", "^", "--"),
}
IMPL_ORDER = {k: i for i, k in enumerate(IMPLS)}  # tables' and legends' order; other names after


HEATED_COUNTERS = ("TFLOP/s", "W", "MHz", "capped", "pJ/FLOP")


def is_bench_json(doc):
    return isinstance(doc, dict) and isinstance(doc.get("benchmarks"), list)


def bench_rows(path, doc):
    """(impl, pass, mask, D, T) -> TFLOP/s from bench_attention's labels
    ("<path> <fwd|fwd+bwd> <causal|full> B=1 H=.. D=.. T=.."), (impl, pass, T, P, rank) ->
    TFLOP/s from its lss rank rows ("<path> <fwd|fwd+bwd> lss rank R of P T=.. (...)"), and
    (impl, pass, mask, D, T) -> {counter: value} from its heated rows (the same label, then
    "heated")."""
    rows, lss_rows, heated_rows = {}, {}, {}
    for b in doc["benchmarks"]:
        if b.get("error_occurred"):
            continue
        words = str(b.get("label", "")).split()
        try:
            impl, pas = words[0], words[1]
            if str(b.get("name", "")).startswith("BM_AttentionLssRank/"):
                if words[2:4] != ["lss", "rank"] or words[5] != "of" or not words[7].startswith("T="):
                    raise ValueError
                lss_rows[(impl, pas, int(words[7][2:]), int(words[6]), int(words[4]))] = float(b["TFLOP/s"])
                continue
            if str(b.get("name", "")).startswith("BM_AttentionHeated/"):
                if words[-1] != "heated":
                    raise ValueError
                kv = dict(w.split("=", 1) for w in words[3:-1])
                # pJ/FLOP is absent where the driver has no energy counter
                heated_rows[(impl, pas, words[2], int(kv["D"]), int(kv["T"]))] = {
                    c: float(b[c]) for c in HEATED_COUNTERS if c in b or c != "pJ/FLOP"}
                continue
            kv = dict(w.split("=", 1) for w in words[3:])
            key = (impl, pas, words[2], int(kv["D"]), int(kv["T"]))
            rows[key] = float(b["TFLOP/s"])
        except (IndexError, KeyError, ValueError, TypeError):
            raise InputError(f"{path}: benchmark '{b.get('name')}' has no bench_attention label and TFLOP/s"
                             " (and, heated, W, MHz and capped)")
    if not rows and not heated_rows:
        raise InputError(f"{path}: no successful benchmark")
    ctx = doc.get("context", {})
    return rows, lss_rows, heated_rows, {"device": ctx.get("device", "unknown card"),
                                         "commit": ctx.get("git_commit", "?"), "date": ctx.get("date", "")}


def peer_rows(path, doc):
    if not isinstance(doc, dict) or doc.get("schema") != PEER_SCHEMA:
        raise InputError(f"{path}: neither a Google Benchmark JSON (no 'benchmarks' list) nor a {PEER_SCHEMA} result")
    rows = {}
    for r in doc.get("rows", []):
        if r.get("status") != "ok":
            continue
        try:
            key = ("torch-" + r["backend"], r["pass"], "causal" if r["causal"] else "full", int(r["D"]), int(r["T"]))
            rows[key] = float(r["tflops"])
        except (KeyError, ValueError, TypeError):
            raise InputError(f"{path}: malformed row {r}")
    return rows, {"device": doc.get("device", "unknown card"), "torch": (doc.get("versions") or {}).get("torch", "?")}


def draw_heated(rows, heated_rows, footer, out):
    """attention_heated.png: heated TFLOP/s (solid) beside the same calls' burst rate (dotted), and
    the heated energy per FLOP, against T; its manifest entry."""
    fig, (ax_rate, ax_energy) = plt.subplots(1, 2, figsize=(11, 4.8), sharex=True)
    series = []
    for (impl, pas, mask, D) in sorted({k[:4] for k in heated_rows}, key=lambda k: (IMPL_ORDER.get(k[0], 99), k[1:])):
        name, color, marker, _ = IMPLS.get(impl, (impl, "tab:gray", "x", "-"))
        label = f"{name} {pas}" + ("" if (mask, D) == ("causal", 128) else f" {mask} D={D}")
        ls = "-" if pas == "fwd+bwd" else "--"
        pts = sorted((T, r) for (im, p, m, d, T), r in heated_rows.items() if (im, p, m, d) == (impl, pas, mask, D))
        ax_rate.plot([t for t, _ in pts], [r["TFLOP/s"] for _, r in pts], marker=marker, color=color,
                     linestyle=ls, label=label)
        burst = [(T, rows[(impl, pas, mask, D, T)]) for T, _ in pts if (impl, pas, mask, D, T) in rows]
        if burst:
            ax_rate.plot([t for t, _ in burst], [v for _, v in burst], marker=marker, color=color, linestyle=":",
                         alpha=0.5, markerfacecolor="none")
        energy = [(T, r["pJ/FLOP"]) for T, r in pts if "pJ/FLOP" in r]
        if energy:
            ax_energy.plot([t for t, _ in energy], [v for _, v in energy], marker=marker, color=color, linestyle=ls,
                           label=label)
        series.append(label)
    ax_rate.set_title("TFLOP/s after heat (faint dotted: the same calls in a burst)", fontsize=10)
    ax_rate.set_ylabel("TFLOP/s")
    ax_energy.set_title("energy per FLOP after heat", fontsize=10)
    ax_energy.set_ylabel("pJ/FLOP")
    for ax in (ax_rate, ax_energy):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("T (tokens)")
        ax.grid(alpha=0.3)
    ax_rate.legend(fontsize=8, loc="lower right")
    fig.suptitle("Attention at the card's power limit, bf16, B=1, H*D=2048", y=0.99)
    fig.text(0.5, 0.005, footer, ha="center", fontsize=8)
    fig.tight_layout(rect=(0, 0.03, 1, 0.95))
    save_png(fig, os.path.join(out, "attention_heated.png"), dpi=110)
    plt.close(fig)
    return {"file": "attention_heated.png", "title": "Attention TFLOP/s and pJ/FLOP after heat against T",
            "series": series}


def draw(rows, lss_rows, heated_rows, footer, out):
    os.makedirs(out, exist_ok=True)
    manifest = []
    for pas, stem in (("fwd+bwd", "attention_fwd_bwd"), ("fwd", "attention_fwd")) if rows else ():
        fig, axes = plt.subplots(2, 2, figsize=(11, 8), sharex=True)
        series = set()
        for i, D in enumerate((128, 64)):
            for j, mask in enumerate(("causal", "full")):
                ax = axes[i][j]
                for impl, (name, color, marker, ls) in IMPLS.items():
                    pts = sorted((T, v) for (im, p, m, d, T), v in rows.items()
                                 if im == impl and p == pas and m == mask and d == D)
                    if not pts:
                        continue
                    ax.plot([t for t, _ in pts], [v for _, v in pts], marker=marker, color=color, linestyle=ls,
                            label=name)
                    series.add(name)
                ax.set_title(f"D={D}, {mask}", fontsize=10)
                ax.set_xscale("log", base=2)
                ax.set_ylim(bottom=0)
                ax.set_ylabel("TFLOP/s")
                ax.grid(alpha=0.3)
                if i == 1:
                    ax.set_xlabel("T (tokens)")
        handles, labels = axes[0][0].get_legend_handles_labels()
        for ax in axes.flat:  # the union of every panel's series, in IMPLS order
            for h, lab in zip(*ax.get_legend_handles_labels()):
                if lab not in labels:
                    handles.append(h)
                    labels.append(lab)
        order = [IMPLS[k][0] for k in IMPLS if IMPLS[k][0] in labels]
        fig.suptitle(f"Attention {pas}, bf16, B=1, H*D=2048", y=0.99)
        fig.legend([handles[labels.index(n)] for n in order], order, loc="upper center",
                   bbox_to_anchor=(0.5, 0.955), ncol=3, fontsize=9)
        fig.text(0.5, 0.005, footer, ha="center", fontsize=8)
        fig.tight_layout(rect=(0, 0.03, 1, 0.88))
        save_png(fig, os.path.join(out, stem + ".png"), dpi=110)
        plt.close(fig)
        manifest.append({"file": stem + ".png", "title": f"Attention {pas} TFLOP/s against T",
                         "series": [IMPLS[k][0] for k in IMPLS if IMPLS[k][0] in series]})
    if heated_rows:
        manifest.append(draw_heated(rows, heated_rows, footer, out))
    with open(os.path.join(out, "charts.json"), "w") as f:
        json.dump({"provenance": footer, "charts": manifest}, f, indent=2)
    write_summary(rows, lss_rows, heated_rows, footer, manifest, out)
    return manifest


def write_summary(rows, lss_rows, heated_rows, footer, manifest, out):
    impls = [k for k in IMPLS if any(r[0] == k for r in rows)]
    lines = ["# Attention kernels", "", f"Ran on: {footer}", "",
             "TFLOP/s (forward 4·B·H·T²·D, halved when causal; forward+backward 3.5×).", ""]
    for pas in ("fwd+bwd", "fwd"):
        lines += [f"## {pas}", "", "| T | D | mask | " + " | ".join(IMPLS[k][0] for k in impls) + " |",
                  "|---|---|---|" + "---|" * len(impls)]
        keys = sorted({(T, D, m) for (_, p, m, D, T) in rows if p == pas}, key=lambda k: (k[0], -k[1], k[2]))
        for T, D, m in keys:
            vals = [rows.get((k, pas, m, D, T)) for k in impls]
            lines.append(f"| {T} | {D} | {m} | " + " | ".join(f"{v:.1f}" if v is not None else "-" for v in vals) + " |")
        lines.append("")
    if lss_rows:
        limpls = [k for k in IMPLS if any(r[0] == k for r in lss_rows)]
        lines += ["## lss rank shapes (D = 128)", "",
                  "One lss rank's attention calls at T on P GPUs (zigzag segments of T/(2P) rows, each its causal "
                  "block and, after the first, its queries against every earlier key), on one GPU; TFLOP/s of "
                  "those calls' matmul work.", "",
                  "| T | P | rank | pass | " + " | ".join(IMPLS[k][0] for k in limpls) + " |",
                  "|---|---|---|---|" + "---|" * len(limpls)]
        for T, P, rank, pas in sorted({(T, P, r, p) for (_, p, T, P, r) in lss_rows}, key=lambda k: (k[1], k[0], k[2], k[3])):
            vals = [lss_rows.get((k, pas, T, P, rank)) for k in limpls]
            lines.append(f"| {T} | {P} | {rank} | {pas} | "
                         + " | ".join(f"{v:.1f}" if v is not None else "-" for v in vals) + " |")
        lines.append("")
    if heated_rows:
        lines += ["## After heat (the card at its power limit)", "",
                  "Each call back to back for seconds before it is timed; the card's mean power, median SM clock and "
                  "share of samples held by the power cap over the timed calls (NVML), and the energy per FLOP.", "",
                  "| T | D | mask | implementation | pass | burst TFLOP/s | heated TFLOP/s | W | SM MHz | capped | pJ/FLOP |",
                  "|---|---|---|---|---|---|---|---|---|---|---|"]
        for key in sorted(heated_rows, key=lambda k: (k[4], -k[3], k[2], IMPL_ORDER.get(k[0], 99), k[1])):
            impl, pas, mask, D, T = key
            r, burst = heated_rows[key], rows.get(key)
            lines.append(f"| {T} | {D} | {mask} | {IMPLS.get(impl, (impl,))[0]} | {pas} | "
                         + (f"{burst:.1f}" if burst is not None else "-")
                         + f" | {r['TFLOP/s']:.1f} | {r['W']:.0f} | {r['MHz']:.0f} | {r['capped']:.2f} | "
                         + (f"{r['pJ/FLOP']:.3f}" if "pJ/FLOP" in r else "-") + " |")
        lines.append("")
    lines += ["## Charts", ""] + [f"![{c['title']}]({c['file']})" for c in manifest] + [""]
    with open(os.path.join(out, "SUMMARY.md"), "w") as f:
        f.write("\n".join(lines))


def main(argv):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("inputs", nargs="+", help="bench_attention JSON files (--benchmark_out) of one card, and "
                    "bench/peers/torch_attention.py JSON files")
    ap.add_argument("--out", required=True, help="folder for the charts and SUMMARY.md")
    ap.add_argument("--commit", help="the lssbench commit, for bench JSON written before bench_attention recorded it")
    args = ap.parse_args(argv)
    try:
        rows, lss_rows, heated_rows, peers, commits = {}, {}, {}, [], []
        meta = None
        for p in args.inputs:
            doc = load_json(p)
            if not is_bench_json(doc):
                peers.append((p, doc))
                continue
            r, lr, hr, m = bench_rows(p, doc)
            commits.append(m["commit"])
            if meta is None:
                meta = dict(m, path=p)
            elif "unknown card" not in (m["device"], meta["device"]) and m["device"] != meta["device"]:
                raise InputError(f"{p}: ran on {m['device']}, {meta['path']} on {meta['device']}: "
                                 "compare one card with itself")
            elif meta["device"] == "unknown card":  # bench_attention before it recorded the card
                meta.update(m, path=p)
            rows.update(r)
            lss_rows.update(lr)
            heated_rows.update(hr)
        if meta is None:
            raise InputError(f"no bench_attention JSON among {', '.join(args.inputs)}")
        # each file's commit once; "?" (bench_attention before it recorded its commit) is --commit's
        commits = [args.commit if c == "?" and args.commit else c for c in commits]
        meta["commit"] = ", ".join(dict.fromkeys(commits))
        torch_versions = []
        for p, doc in peers:
            prow, pmeta = peer_rows(p, doc)
            if pmeta["device"] != meta["device"] and meta["device"] != "unknown card":
                raise InputError(f"{p}: ran on {pmeta['device']}, {meta['path']} on {meta['device']}: "
                                 "compare one card with itself")
            rows.update(prow)
            torch_versions.append(pmeta["torch"])
            if meta["device"] == "unknown card":  # bench_attention before it recorded the card
                meta["device"] = pmeta["device"]
        footer = (f"{meta['device']} | lssbench commit {meta['commit']} | {meta['date'][:10]}"
                  + (f" | PyTorch {', '.join(sorted(set(torch_versions)))}" if torch_versions else ""))
        manifest = draw(rows, lss_rows, heated_rows, footer, args.out)
    except InputError as e:
        print(f"attnplot: error: {e}", file=sys.stderr)
        return 2
    print(f"attnplot: {len(manifest)} charts and SUMMARY.md in {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
