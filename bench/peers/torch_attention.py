#!/usr/bin/env python3
"""PyTorch peer of bench_attention: scaled_dot_product_attention on the same shapes, timed the
same way, so that the project's flash kernels and cuDNN binding are compared with what PyTorch
gives on the same card in the same call.

Shapes as bench_attention: B = 1, model width H*D = 2048 (H = 16 at D = 128, H = 32 at D = 64),
bf16, causal (upper-left, Tq = Tk) and not, on the model's packed layout (one (T, B, 3C) buffer
of [q|k|v] rows viewed as (B, H, T, D) with strides, as the model feeds its attention). For each
SDPA backend (flash, cudnn; one forced at a time with torch.nn.attention.sdpa_kernel) it times
the forward and the forward+backward with CUDA events after warm-up and reports the median;
TFLOP/s counts 4*B*H*T^2*D per forward, halved when causal, x3.5 for forward+backward (GPU.md's
convention, bench_attention's too). A backend that rejects a shape gets a row with its error.

  python3 bench/peers/torch_attention.py --seq 16K --out peer_attention.json
  python3 bench/peers/torch_attention.py --seq 4K,16K,64K --head-dim 128 --backend flash

Output: one JSON file (schema lssbench-peer-attention/1), written atomically and never over an
existing file, and a table on stdout. Exit codes: 0 ok, 1 a measurement failed, 2 bad input.
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
import traceback

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from torch_step import DeviceSampler, parse_count, utc_now, versions, write_json_atomic  # noqa: E402

SCHEMA = "lssbench-peer-attention/1"
WIDTH = 2048  # H * D, as bench_attention


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--seq", default="4K,16K,64K", help="comma-separated sequence lengths T (K/M suffixes)")
    p.add_argument("--head-dim", default="64,128", help="comma-separated head dims D (64 or 128)")
    p.add_argument("--backend", default="flash,cudnn", help="comma-separated SDPA backends: flash, cudnn, efficient")
    p.add_argument("--mask", default="causal,full", help="comma-separated masks: causal, full")
    p.add_argument("--warmup", type=int, default=3, help="untimed calls before timing")
    p.add_argument("--iters", type=int, default=20, help="timed calls (median reported)")
    p.add_argument("--out", required=True, help="result JSON (must not exist)")
    return p


BACKENDS = {"flash": "FLASH_ATTENTION", "cudnn": "CUDNN_ATTENTION", "efficient": "EFFICIENT_ATTENTION"}


def validate(args) -> tuple[list[int], list[int], list[str], list[str]]:
    def bad(msg: str):
        print(f"torch_attention.py: {msg}", file=sys.stderr)
        sys.exit(2)

    seqs = []
    for s in args.seq.split(","):
        try:
            seqs.append(parse_count(s.strip()))
        except (ValueError, argparse.ArgumentTypeError) as e:
            bad(f"bad --seq value '{s}': {e}")
    dims = []
    for d in args.head_dim.split(","):
        if d.strip() not in ("64", "128"):
            bad(f"bad --head-dim value '{d}' (64 or 128)")
        dims.append(int(d))
    backends = [b.strip() for b in args.backend.split(",")]
    for b in backends:
        if b not in BACKENDS:
            bad(f"bad --backend value '{b}' (flash, cudnn, efficient)")
    masks = [m.strip() for m in args.mask.split(",")]
    for m in masks:
        if m not in ("causal", "full"):
            bad(f"bad --mask value '{m}' (causal, full)")
    if any(t <= 0 for t in seqs):
        bad(f"--seq values must be positive: {args.seq}")
    if args.warmup < 0 or args.iters < 1:
        bad(f"--warmup must be >= 0 and --iters >= 1 (got {args.warmup}, {args.iters})")
    if os.path.exists(args.out):
        bad(f"--out {args.out} exists: results are never overwritten")
    if not torch.cuda.is_available():
        bad("no CUDA device: this peer times GPU kernels only")
    return seqs, dims, backends, masks


def time_case(T: int, D: int, causal: bool, backend: str, with_backward: bool, warmup: int,
              iters: int) -> list[float]:
    from torch.nn.attention import SDPBackend, sdpa_kernel

    B, H, C = 1, WIDTH // D, WIDTH
    gen = torch.Generator(device="cuda").manual_seed(1)
    # (T, B, 3C) packed [q|k|v] rows in [-2, 2], as bench_attention fills them.
    qkv = (torch.rand(T, B, 3 * C, device="cuda", generator=gen, dtype=torch.float32) * 4 - 2).to(torch.bfloat16)
    qkv.requires_grad_(with_backward)
    dout = (torch.rand(B, H, T, D, device="cuda", generator=gen, dtype=torch.float32) * 2 - 1).to(torch.bfloat16)

    def views():
        # (T, B, 3, H, D) -> three (B, H, T, D) strided views
        x = qkv.view(T, B, 3, H, D).permute(2, 1, 3, 0, 4)
        return x[0], x[1], x[2]

    def call():
        q, k, v = views()
        out = F.scaled_dot_product_attention(q, k, v, is_causal=causal, scale=1.0 / math.sqrt(D))
        if with_backward:
            out.backward(dout)
            qkv.grad = None

    times = []
    with sdpa_kernel([getattr(SDPBackend, BACKENDS[backend])]):
        for _ in range(warmup):
            call()
        torch.cuda.synchronize()
        start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        for _ in range(iters):
            start.record()
            call()
            stop.record()
            stop.synchronize()
            times.append(start.elapsed_time(stop))
    return times


def main() -> int:
    args = build_parser().parse_args()
    seqs, dims, backends, masks = validate(args)
    device = torch.device("cuda", 0)
    doc = {"schema": SCHEMA, "peer": "pytorch", "created_utc": utc_now(),
           "device": torch.cuda.get_device_name(device), "versions": versions(),
           "config": {"B": 1, "width": WIDTH, "dtype": "bf16", "layout": "packed qkv (T, B, 3C)",
                      "warmup": args.warmup, "iters": args.iters},
           "flops": "forward 4*B*H*T^2*D, halved when causal; forward+backward 3.5x", "rows": []}
    sampler = DeviceSampler(device)
    sampler.start()
    failed = False
    print(f"{'backend':<10} {'pass':<8} {'mask':<7} {'D':>4} {'T':>7} {'median ms':>10} {'TFLOP/s':>8}")
    for T in seqs:
        for D in dims:
            for mask in masks:
                for backend in backends:
                    for with_backward in (False, True):
                        causal = mask == "causal"
                        row = {"T": T, "D": D, "H": WIDTH // D, "causal": causal, "backend": backend,
                               "pass": "fwd+bwd" if with_backward else "fwd"}
                        try:
                            times = time_case(T, D, causal, backend, with_backward, args.warmup, args.iters)
                            flops = 4.0 * (WIDTH // D) * T * T * D * (0.5 if causal else 1.0) * (3.5 if with_backward else 1.0)
                            med = statistics.median(times)
                            row.update({"status": "ok", "median_ms": med, "min_ms": min(times),
                                        "tflops": flops / (med * 1e-3) / 1e12})
                            print(f"{backend:<10} {row['pass']:<8} {mask:<7} {D:>4} {T:>7} {med:>10.3f} {row['tflops']:>8.1f}")
                        except Exception as e:  # a backend that rejects the shape, or runs out of memory
                            row.update({"status": "failed", "error": f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"})
                            print(f"{backend:<10} {row['pass']:<8} {mask:<7} {D:>4} {T:>7} {'failed':>10}  {row['error'][:80]}")
                            if not isinstance(e, RuntimeError):
                                traceback.print_exc()
                            failed = True
                        doc["rows"].append(row)
                        torch.cuda.empty_cache()
    doc["device_state"] = sampler.stop()
    doc["status"] = "failed" if failed else "ok"
    write_json_atomic(args.out, doc)
    print(f"wrote {args.out}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
