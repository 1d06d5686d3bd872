#!/usr/bin/env python3
"""PyTorch peer of lssbench: the same model and training step, timed the same way.

lssbench (C++/CUDA) has to beat what a plain PyTorch user gets. This script builds the model of
DESIGN.md in PyTorch and times one training step of it:

  tokens x (B, T) -> token embedding (V, C) + learned positional embedding (T rows, C)
  -> L pre-LN blocks [ h += Wo Attn(LN1 h) ; h += W2 GELU(W1 LN2 h + b1) + b2 ]
  -> final LN -> LM head (C -> V, no bias, not tied) -> softmax cross-entropy, mean over B*T.

Strategies:
  serial  one process, the whole model.
  lss     P ranks (torchrun), one sequence group: rank p holds tokens [p*T/P, (p+1)*T/P) and
          those rows of the positional embedding; per layer one fused all-gather of [K|V] whose
          backward is one fused reduce-scatter of [dK|dV]; after backward one all-reduce (sum)
          of every gradient except the positional-embedding shard; fused AdamW.
          --zigzag: the balanced causal order of lssbench instead: the sequence in 2P chunks of
          Tc = T/(2P), rank p holds chunks p and 2P-1-p (local rows in that order; rank P-1's two
          chunks are neighbours and form one segment); the gathered [K|V] is put into global
          token order (index_select) before attention, one attention call per local segment.

A step is zero_grad + forward + backward (+ gradient all-reduce) + AdamW step, timed with CUDA
events after warm-up; per iteration the slowest rank counts, and the median over iterations is
reported. FLOPs follow the harness's convention (README, Metrics). The result is one JSON file
(schema lssbench-peer/1), written atomically by rank 0.

  python3 bench/peers/torch_step.py --strategy serial --mode eager --seq 16K --out peer.json
  torchrun --standalone --nproc-per-node 4 bench/peers/torch_step.py --strategy lss --seq 64K --out lss.json
  torchrun --standalone --nproc-per-node 2 bench/peers/torch_step.py --check --device cpu

--check compares the lss loss and gradients with the serial model (same initial weights) on a
tiny fp32 configuration and exits non-zero when the largest relative error exceeds 1e-4.

Exit codes: 0 ok, 1 the run failed (JSON with status "failed" where possible), 2 bad input.
Dimension letters as in DESIGN.md: B batch, T global tokens, C width, H heads, D head dim,
L layers, V vocabulary, P ranks in the sequence group, Tl = T/P local tokens, Tc = T/(2P) the
zigzag chunk.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import math
import os
import ctypes
import socket
import statistics
import sys
import tempfile
import threading
import time
import traceback
import zlib

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F

SCHEMA = "lssbench-peer/1"
EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT = 0, 1, 2
CHECK_TOLERANCE = 1e-4
PROG = "torch_step.py"


# ----------------------------------------------------------------------------------------------
# Command line
# ----------------------------------------------------------------------------------------------

class BadInput(Exception):
    """A command-line value the script refuses; reported on every rank with exit code 2."""


def parse_count(text: str) -> int:
    """'16K' -> 16384, '1M' -> 1048576, '4096' -> 4096 (K = 1024, as the harness)."""
    s = text.strip().upper()
    scale = 1
    if s.endswith("K"):
        scale, s = 1024, s[:-1]
    elif s.endswith("M"):
        scale, s = 1024 * 1024, s[:-1]
    if not s.isdigit():
        raise argparse.ArgumentTypeError(f"not a count: '{text}' (use e.g. 4096, 16K, 1M)")
    return int(s) * scale


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=PROG,
        description="PyTorch peer of lssbench: time one training step of the same model.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--strategy", choices=["serial", "lss"], default="serial")
    p.add_argument("--zigzag", action="store_true",
                   help="lss: balanced causal order, rank p holds chunks p and 2P-1-p of T/(2P) "
                        "(as lssbench --zigzag)")
    p.add_argument("--mode", choices=["eager", "compile"], default="eager",
                   help="compile wraps the model in torch.compile")
    p.add_argument("--layers", type=parse_count, default=4, help="L")
    p.add_argument("--width", type=parse_count, default=2048, help="C")
    p.add_argument("--heads", type=parse_count, default=16, help="H")
    p.add_argument("--batch", type=parse_count, default=1, help="B, sequences per step")
    p.add_argument("--seq", type=parse_count, default=16 * 1024, help="T, accepts K/M suffixes")
    p.add_argument("--vocab", type=parse_count, default=256, help="V")
    p.add_argument("--no-causal", dest="causal", action="store_false",
                   help="full (bidirectional) attention instead of causal")
    p.add_argument("--dtype", choices=["bf16", "fp32"], default="bf16",
                   help="bf16: autocast over fp32 master weights")
    p.add_argument("--sdpa", choices=["auto", "cudnn", "flash", "efficient", "math"], default=None,
                   help="SDPA backend (default: cudnn on CUDA, auto on CPU and for --check)")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--iters", type=int, default=10)
    p.add_argument("--seed", type=int, default=1234)
    p.add_argument("--device", choices=["auto", "cuda", "cpu"], default="auto")
    p.add_argument("--out", default=None, help="result JSON (must not exist)")
    p.add_argument("--check", action="store_true",
                   help="compare lss against serial on a tiny fp32 config and exit")
    return p


def validate(args: argparse.Namespace, world: int) -> None:
    """Every rank runs this before any collective, so every rank refuses the same input."""
    for name in ("layers", "width", "heads", "batch", "seq", "vocab"):
        if getattr(args, name) <= 0:
            raise BadInput(f"--{name} must be positive, got {getattr(args, name)}")
    if args.warmup < 0:
        raise BadInput(f"--warmup must be >= 0, got {args.warmup}")
    if args.iters < 1:
        raise BadInput(f"--iters must be >= 1, got {args.iters}")
    if args.device == "cuda" and not torch.cuda.is_available():
        raise BadInput("--device cuda, but torch sees no CUDA device")
    on_cuda = resolve_device_type(args.device) == "cuda"
    if not on_cuda and args.sdpa in ("cudnn", "efficient"):
        raise BadInput(f"--sdpa {args.sdpa} needs a CUDA device (this run is on CPU)")
    if args.check:
        return  # --check picks its own tiny shapes (a multiple of 2P with --zigzag)
    if args.width % args.heads != 0:
        raise BadInput(f"--width {args.width} is not divisible by --heads {args.heads}")
    if args.strategy == "serial" and world != 1:
        raise BadInput(f"--strategy serial runs in one process, but the world size is {world}")
    if args.zigzag and args.strategy != "lss":
        raise BadInput(f"--zigzag is an lss option, but --strategy is {args.strategy}")
    if args.seq % world != 0:
        raise BadInput(f"--seq {args.seq} is not divisible by the world size {world}")
    if args.zigzag and args.seq % (2 * world) != 0:
        raise BadInput(f"--zigzag: --seq {args.seq} is not divisible by 2 x the world size = "
                       f"{2 * world} (each rank holds two chunks of T/(2P))")
    if args.out is None:
        raise BadInput("--out is required (the result JSON)")
    if os.path.exists(args.out):
        raise BadInput(f"--out {args.out} exists; refusing to overwrite it")
    if args.dtype == "bf16" and not on_cuda:
        print(f"{PROG}: note: bf16 autocast on CPU is slow; --dtype fp32 is the usual CPU choice",
              file=sys.stderr)


def resolve_device_type(choice: str) -> str:
    if choice == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return choice


# ----------------------------------------------------------------------------------------------
# Sequence group and the fused K/V all-gather
# ----------------------------------------------------------------------------------------------

class GatherKV(torch.autograd.Function):
    """All-gather of each rank's fused [K|V] rows; backward reduce-scatters [dK|dV].

    Every rank's queries attend to the keys of other ranks, so the gradient of rank q's K, V rows
    is the sum of the partial dK, dV that all ranks computed for them: a reduce-scatter (sum)
    returns exactly that sum to the owner, one fused collective for K and V together.
    """

    @staticmethod
    def forward(ctx, kv_local: torch.Tensor, group, world: int) -> torch.Tensor:
        # kv_local, contiguous, the send buffer: (B, Tl, 2C) in the contiguous order, (Tl, B, 2C)
        # token-major in the zigzag order. Gathered along dim 0, one block per rank.
        ctx.group, ctx.world = group, world
        gathered = kv_local.new_empty((world * kv_local.shape[0],) + tuple(kv_local.shape[1:]))
        dist.all_gather_into_tensor(gathered, kv_local, group=group)  # (P*d0, d1, 2C)
        return gathered.view((world,) + tuple(kv_local.shape))       # (P, d0, d1, 2C)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        # grad (P, d0, d1, 2C): this rank's partial [dK|dV] for every rank's rows (zeros for the
        # rows its causal queries never saw).
        grad = grad.contiguous()
        own = grad.new_empty(tuple(grad.shape[1:]))                   # (d0, d1, 2C)
        dist.reduce_scatter_tensor(own, grad.view((-1,) + tuple(grad.shape[2:])),
                                   op=dist.ReduceOp.SUM, group=ctx.group)
        return own, None, None


def segments_of(p: int, P: int, T: int, zigzag: bool) -> list[tuple[int, int]]:
    """The global token ranges (start, count) rank p holds, in its local row order.

    Contiguous: [p*Tl, (p+1)*Tl). Zigzag (as lssbench): chunks p and 2P-1-p of Tc = T/(2P), which
    give every rank the same causal attention work; rank P-1's chunks P-1 and P are neighbours and
    form one segment (at P = 1 that is the whole sequence), so its attention is one call.
    """
    if not zigzag:
        t_local = T // P
        return [(p * t_local, t_local)]
    tc = T // (2 * P)
    if p == P - 1:
        return [(p * tc, 2 * tc)]
    return [(p * tc, tc), ((2 * P - 1 - p) * tc, tc)]


class AttnSegment:
    """One attention call of a rank: local query rows [row0, row0+count) at global positions
    [start, start+count), against the first `keys` keys in global order, with `mask`
    (a lower-right CausalBias) or is_causal (square, start 0) or neither (full attention)."""

    def __init__(self, start: int, count: int, row0: int, T: int, causal: bool):
        self.start, self.count, self.row0 = start, count, row0
        # Causal: queries at positions < start+count never see later keys, so the call only gets
        # those (a key range that would be masked out entirely is dropped); full: all T keys.
        self.keys = start + count if causal else T
        self.is_causal = causal and start == 0        # square: upper-left == lower-right
        # Built here, not in forward: torch.compile cannot construct a CausalBias (a tensor
        # subclass) inside a compiled region (graph break), but takes an existing one.
        self.mask = None
        if causal and start > 0:
            from torch.nn.attention.bias import causal_lower_right
            self.mask = causal_lower_right(count, self.keys)


class SequenceGroup:
    """Rank p of P in one sequence group, holding the global token segments segments_of(p)."""

    def __init__(self, group, world: int, rank: int, T: int, causal: bool, zigzag: bool,
                 device: torch.device):
        self.group, self.P, self.p, self.causal, self.zigzag = group, world, rank, causal, zigzag
        self.T, self.t_local = T, T // world
        self.segments = segments_of(rank, world, T, zigzag)
        self.attn = []
        row0 = 0
        for start, count in self.segments:
            self.attn.append(AttnSegment(start, count, row0, T, causal))
            row0 += count
        # The keys this rank's queries can see, in global order: [0, keys_needed).
        self.keys_needed = max(a.keys for a in self.attn)
        # Some call needs the lower-right causal mask (a query offset > 0).
        self.needs_lower_right = any(a.mask is not None for a in self.attn)
        # rank_major_row[t]: the row of the rank-major all-gather output (rank q's Tl local rows
        # at q*Tl, in q's local order) that holds global token t.
        rank_major_row = torch.empty(T, dtype=torch.long)
        for q in range(world):
            local = 0
            for s, c in segments_of(q, world, T, zigzag):
                rank_major_row[s:s + c] = torch.arange(q * self.t_local + local,
                                                       q * self.t_local + local + c)
                local += c
        self.rank_major_row = rank_major_row.to(device)              # (T,) for whole-T gathers
        self.kv_order = rank_major_row[:self.keys_needed].to(device)  # (Tk,) the kept keys

    def local_tokens(self, x: torch.Tensor) -> torch.Tensor:
        """(B, T) global -> (B, Tl) this rank's columns, in local order (contiguous)."""
        return torch.cat([x[:, s:s + c] for s, c in self.segments], dim=1).contiguous()

    def to_global_order(self, rank_major: torch.Tensor) -> torch.Tensor:
        """(T, ...) rows in rank-major all-gather order -> (T, ...) in global token order."""
        return rank_major.index_select(0, self.rank_major_row)

    def gather_kv(self, kv_local: torch.Tensor) -> torch.Tensor:
        """(B, Tl, 2C) local [K|V] -> (B, Tk, 2C) the keys this rank's queries can see, in
        global token order.

        Causal: only keys [0, Tk) are kept, Tk = the end of the rank's last segment ((p+1)*Tl
        contiguous, (2P-p)*Tc zigzag for p < P-1, (P+1)*Tc for rank P-1); without a causal mask
        Tk = T. The all-gather itself always moves all P ranks' rows (one collective per layer, as
        in LSS).
        """
        B, Tl, C2 = kv_local.shape
        if not self.zigzag:
            g = GatherKV.apply(kv_local.contiguous(), self.group, self.P)  # (P, B, Tl, 2C)
            segs = self.p + 1 if self.causal else self.P
            # (segs, B, Tl, 2C) -> (B, segs*Tl, 2C); a view when B == 1, one copy otherwise.
            return g[:segs].transpose(0, 1).reshape(B, segs * Tl, C2)
        # Zigzag: the payload is token-major (Tl, B, 2C) (the same one copy .contiguous() makes of
        # the qkv slice), so the gathered rows form one (P*Tl, B, 2C) tensor in rank-major order
        # and a single index_select puts the first Tk into global order; its backward
        # (index_add into zeros, each row hit once) puts [dK|dV] back into rank-major order for
        # the reduce-scatter. The result is a (B, Tk, 2C) view, batch-strided.
        g = GatherKV.apply(kv_local.transpose(0, 1).contiguous(), self.group, self.P)
        g = g.view(self.P * Tl, B, C2).index_select(0, self.kv_order)  # (Tk, B, 2C)
        return g.transpose(0, 1)


# ----------------------------------------------------------------------------------------------
# Model
# ----------------------------------------------------------------------------------------------

class Block(nn.Module):
    """Pre-LN transformer block: h += Wo Attn(LN1 h); h += W2 GELU(W1 LN2 h + b1) + b2."""

    def __init__(self, C: int, H: int, causal: bool, seq: SequenceGroup | None):
        super().__init__()
        self.ln1 = nn.LayerNorm(C, eps=1e-5)
        self.qkv = nn.Linear(C, 3 * C)    # output rows: Q, then K, then V
        self.proj = nn.Linear(C, C)
        self.ln2 = nn.LayerNorm(C, eps=1e-5)
        self.fc1 = nn.Linear(C, 4 * C)
        self.fc2 = nn.Linear(4 * C, C)
        self.H, self.causal, self.seq = H, causal, seq

    def attention(self, x: torch.Tensor) -> torch.Tensor:
        B, Tq, C = x.shape                # x (B, Tq, C); Tq = Tl on a sequence group, else T
        # On a sequence group the Tq rows are the rank's segments in local order; the gathered
        # keys (Tk of them) are in global order.
        H, D = self.H, C // self.H
        qkv = self.qkv(x)                 # (B, Tq, 3C)
        q = qkv[..., :C]                  # (B, Tq, C)
        kv = qkv[..., C:]                 # (B, Tq, 2C): [K|V] fused, the all-gather payload
        if self.seq is not None:
            kv = self.seq.gather_kv(kv)   # (B, Tk, 2C)
        Tk = kv.shape[1]
        k, v = kv.split(C, dim=-1)        # (B, Tk, C) each
        q = q.view(B, Tq, H, D).transpose(1, 2)   # (B, H, Tq, D)
        k = k.view(B, Tk, H, D).transpose(1, 2)   # (B, H, Tk, D)
        v = v.view(B, Tk, H, D).transpose(1, 2)   # (B, H, Tk, D)
        if self.seq is None:
            # Serial: square, any backend (cuDNN included).
            y = F.scaled_dot_product_attention(q, k, v, is_causal=self.causal)
        else:
            # One call per local segment (contiguous: one; zigzag: two, one on rank P-1): the
            # segment's queries at global positions [start, start+count) against keys [0, keys).
            ys = []
            for a in self.seq.attn:
                qs = q if len(self.seq.attn) == 1 else q[:, :, a.row0:a.row0 + a.count]
                ks, vs = (k, v) if a.keys == Tk else (k[:, :, :a.keys], v[:, :, :a.keys])
                if a.mask is not None:
                    # Queries at offset start > 0, the last `count` of the `keys` keys: the causal
                    # mask in global positions is the lower-right aligned one (query i sees keys
                    # j <= i + start). PyTorch's is_causal=True is upper-left for non-square
                    # shapes, and its cuDNN path only knows upper-left, so we pass a CausalBias:
                    # PyTorch runs it on the flash kernel (FA2 aligns causal lower-right) or, if
                    # flash can't take it, on the memory-efficient kernel (custom_mask_type
                    # lower-right), never materialising a mask; only when neither is enabled
                    # (math, CPU) does it build the (count, keys) mask.
                    ys.append(F.scaled_dot_product_attention(qs, ks, vs, attn_mask=a.mask))
                else:
                    # Square causal (start 0) or no mask: any backend, cuDNN included.
                    ys.append(F.scaled_dot_product_attention(qs, ks, vs, is_causal=a.is_causal))
            y = ys[0] if len(ys) == 1 else torch.cat(ys, dim=2)   # (B, H, Tq, D), local order
        y = y.transpose(1, 2).reshape(B, Tq, C)   # (B, Tq, C), heads concatenated
        return self.proj(y)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        h = h + self.attention(self.ln1(h))
        return h + self.fc2(F.gelu(self.fc1(self.ln2(h)), approximate="tanh"))


class GPT(nn.Module):
    """The whole model; on a sequence group it holds only its rows of the positional embedding."""

    def __init__(self, L: int, C: int, H: int, V: int, t_rows: int, n_predicted: int,
                 causal: bool, seq: SequenceGroup | None):
        super().__init__()
        self.tok_emb = nn.Embedding(V, C)                      # (V, C)
        self.pos_emb = nn.Parameter(torch.empty(t_rows, C))    # (T or Tl, C), local order
        self.blocks = nn.ModuleList(Block(C, H, causal, seq) for _ in range(L))
        self.ln_f = nn.LayerNorm(C, eps=1e-5)
        self.head = nn.Linear(C, V, bias=False)                # not tied to tok_emb
        self.V = V
        # Global number of predicted tokens, B*T: each rank divides its own CE sum by it, so the
        # ranks' losses (and gradients) add up to the serial mean.
        self.n_predicted = n_predicted

    def forward(self, idx: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        # idx, targets (B, Tl) int64 -> this rank's share of the mean loss (a scalar).
        h = self.tok_emb(idx) + self.pos_emb                   # (B, Tl, C)
        for blk in self.blocks:
            h = blk(h)
        logits = self.head(self.ln_f(h))                       # (B, Tl, V)
        ce = F.cross_entropy(logits.reshape(-1, self.V).float(), targets.reshape(-1),
                             reduction="sum")
        return ce / self.n_predicted


def init_parameters(model: GPT, seed: int, T: int, pos_rows: list[tuple[int, int]], std: float,
                    noisy: bool) -> None:
    """Deterministic init, a pure function of (seed, parameter name, global index).

    Every parameter gets its own CPU generator seeded from (seed, name), and the positional
    embedding is drawn for all T rows and then sliced, so a rank holding the row ranges pos_rows
    ((start, count), in its local order) starts from exactly the serial model's values. noisy
    (for --check) also randomises biases and LayerNorm parameters so that the comparison
    exercises every gradient.
    """
    with torch.no_grad():
        for name, p in model.named_parameters():
            g = torch.Generator().manual_seed(seed * 1_000_003 + zlib.crc32(name.encode()))
            is_ln = ".ln" in name or name.startswith("ln_")
            shape = (T, p.shape[1]) if name == "pos_emb" else tuple(p.shape)
            if name.endswith("bias"):
                w = (torch.randn(shape, generator=g) * std) if noisy else torch.zeros(shape)
            elif is_ln:   # LayerNorm weight
                w = (1.0 + torch.randn(shape, generator=g) * std) if noisy else torch.ones(shape)
            else:
                w = torch.randn(shape, generator=g) * std
            if name == "pos_emb":
                w = torch.cat([w[s:s + c] for s, c in pos_rows])
            p.copy_(w)


def build_model(L, C, H, V, B, T, causal, seq: SequenceGroup | None, device, seed, std, noisy):
    t_rows = seq.t_local if seq is not None else T
    pos_rows = seq.segments if seq is not None else [(0, T)]
    # Built on the meta device, then given storage on the target device: no wasted default init.
    with torch.device("meta"):
        model = GPT(L, C, H, V, t_rows, B * T, causal, seq)
    model.to_empty(device=device)
    init_parameters(model, seed, T, pos_rows, std, noisy)
    return model


def make_tokens(B: int, T: int, V: int, seed: int):
    """Synthetic byte tokens (B, T+1) from a fixed generator; inputs x = [:, :T], targets y = [:, 1:]."""
    g = torch.Generator().manual_seed(seed + 7)
    tok = torch.randint(0, V, (B, T + 1), generator=g)
    return tok[:, :T], tok[:, 1:]


# ----------------------------------------------------------------------------------------------
# Attention backend selection
# ----------------------------------------------------------------------------------------------

def sdpa_context(choice: str, needs_lower_right: bool, device_type: str):
    """Returns (context factory, note). The context is entered around forward and backward."""
    if choice == "auto":
        return contextlib.nullcontext, "auto: PyTorch's own SDPA priority order"
    from torch.nn.attention import SDPBackend, sdpa_kernel
    by_name = {"cudnn": SDPBackend.CUDNN_ATTENTION, "flash": SDPBackend.FLASH_ATTENTION,
               "efficient": SDPBackend.EFFICIENT_ATTENTION, "math": SDPBackend.MATH}
    backends = [by_name[choice]]
    note = f"{choice} only"
    if choice == "cudnn" and needs_lower_right and device_type == "cuda":
        # PyTorch's cuDNN attention only has the upper-left causal mask, and a CausalBias is
        # dispatched to flash or memory-efficient attention only: ranks p > 0 of a causal lss
        # group would otherwise fall back to a materialised (Tl, (p+1)*Tl) mask.
        backends += [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION]
        note = "cudnn, plus flash and memory-efficient for the lower-right causal mask"

    def factory():
        try:
            return sdpa_kernel(backends, set_priority=True)
        except TypeError:   # older torch without set_priority
            return sdpa_kernel(backends)
    return factory, note


# ----------------------------------------------------------------------------------------------
# Distributed setup
# ----------------------------------------------------------------------------------------------

def dist_env():
    """(world, rank, local_rank) from torchrun's environment; (1, 0, 0) without it."""
    return (int(os.environ.get("WORLD_SIZE", "1")), int(os.environ.get("RANK", "0")),
            int(os.environ.get("LOCAL_RANK", "0")))


def init_distributed(device: torch.device, world: int, rank: int):
    backend = "nccl" if device.type == "cuda" else "gloo"
    if "MASTER_ADDR" in os.environ:
        kwargs = {"device_id": device} if device.type == "cuda" else {}
        dist.init_process_group(backend, **kwargs)
    else:   # a plain `python3 ... --strategy lss`: a one-rank group without a rendezvous
        dist.init_process_group(backend, store=dist.HashStore(), rank=0, world_size=1)
    return dist.group.WORLD


def setup_device(args, local_rank: int) -> torch.device:
    if resolve_device_type(args.device) == "cuda":
        torch.cuda.set_device(local_rank)
        return torch.device("cuda", local_rank)
    return torch.device("cpu")


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def reduce_max(values: list[float], device: torch.device, distributed: bool) -> list[float]:
    if not distributed:
        return list(values)
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return t.tolist()


# ----------------------------------------------------------------------------------------------
# Training step
# ----------------------------------------------------------------------------------------------

class Trainer:
    """Model, optimiser and one training step for either strategy.

    lss keeps the gradients of the replicated parameters as views into one flat fp32 buffer
    (gradient-as-bucket-view), so the gradient reduction is a single all-reduce over the group
    with no flatten/unflatten copies; the positional-embedding shard is left out, as each rank
    owns its rows.
    """

    def __init__(self, args, device, seq: SequenceGroup | None, L, C, H, V, B, T, causal,
                 autocast_dtype, sdpa_factory, compile_model: bool, std=0.02, noisy=False):
        self.device, self.seq, self.autocast_dtype = device, seq, autocast_dtype
        self.sdpa_factory = sdpa_factory
        self.model = build_model(L, C, H, V, B, T, causal, seq, device, args.seed, std, noisy)
        self.fmodel = torch.compile(self.model) if compile_model else self.model
        self.flat = None
        if seq is not None:
            shared = [p for n, p in self.model.named_parameters() if n != "pos_emb"]
            self.flat = torch.zeros(sum(p.numel() for p in shared), dtype=torch.float32,
                                    device=device)
            off = 0
            for p in shared:
                p.grad = self.flat[off:off + p.numel()].view_as(p)
                off += p.numel()
        self.fused_adamw = True
        try:
            self.opt = torch.optim.AdamW(self.model.parameters(), lr=1e-4, weight_decay=0.1,
                                         fused=True)
        except (RuntimeError, ValueError):   # a device without fused AdamW (never CUDA)
            self.fused_adamw = False
            self.opt = torch.optim.AdamW(self.model.parameters(), lr=1e-4, weight_decay=0.1)

    def zero_grad(self) -> None:
        if self.flat is None:
            self.opt.zero_grad(set_to_none=True)
        else:
            self.flat.zero_()                 # keeps the views that autograd accumulates into
            self.model.pos_emb.grad = None

    def forward_backward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        with self.sdpa_factory():
            with torch.autocast(self.device.type, dtype=self.autocast_dtype or torch.bfloat16,
                                enabled=self.autocast_dtype is not None):
                loss = self.fmodel(x, y)
            loss.backward()
        return loss.detach()

    def reduce_grads(self) -> None:
        if self.flat is not None:
            # Sum over the sequence group: each rank's loss is its share of the global mean, so
            # the sum is the serial gradient.
            dist.all_reduce(self.flat, op=dist.ReduceOp.SUM, group=self.seq.group)

    def step(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        self.zero_grad()
        loss = self.forward_backward(x, y)
        self.reduce_grads()
        self.opt.step()
        return loss


# ----------------------------------------------------------------------------------------------
# Results
# ----------------------------------------------------------------------------------------------

def model_flops(L, C, V, B, T, causal) -> tuple[float, str]:
    forward = L * (24.0 * B * T * C * C + 4.0 * B * T * T * C * (0.5 if causal else 1.0)) \
        + 2.0 * B * T * C * V
    convention = ("model FLOPs, 3 x forward; forward = L*(24*B*T*C^2 + 4*B*T^2*C"
                  + (" * 1/2 (causal)" if causal else "")
                  + ") + 2*B*T*C*V; recomputation not counted")
    return 3.0 * forward, convention


def versions() -> dict:
    v = {"torch": torch.__version__, "cuda": torch.version.cuda, "cudnn": None, "nccl": None,
         "python": sys.version.split()[0]}
    try:
        c = torch.backends.cudnn.version()
        if c is not None:
            v["cudnn"] = f"{c // 10000}.{c % 10000 // 100}.{c % 100}" if c >= 90000 else str(c)
    except Exception:   # torch built without cuDNN
        pass
    try:
        if torch.cuda.is_available():
            n = torch.cuda.nccl.version()
            v["nccl"] = ".".join(str(x) for x in n) if isinstance(n, tuple) else str(n)
    except Exception:   # torch built without NCCL
        pass
    return v


class DeviceSampler:
    """The device's SM clock, power and clock-event reasons through NVML (ctypes on the driver's
    libnvidia-ml.so.1), sampled on a thread during the timed steps; summarised with the fields of
    lssbench's timing.device_state, so that both sides' clocks can be compared (a card held at
    its power limit runs below its top clock). Inert where NVML or the device is missing. The
    NVML calls release the GIL; the per-sample Python work is tens of microseconds per period."""

    SM_CLOCK = 1                       # NVML_CLOCK_SM
    POWER_CAP = 0x4                    # nvmlClocksEventReasonSwPowerCap
    SLOWDOWN = 0x8 | 0x20 | 0x40 | 0x80   # hw slowdown, sw/hw thermal, power brake

    def __init__(self, device: torch.device, period_ms: int = 10):
        self.period = period_ms / 1e3
        self.samples: list[tuple[int, int, int]] = []
        self.handle = None
        self.thread = None
        self.stop_flag = threading.Event()
        if device.type != "cuda":
            return
        try:
            lib = ctypes.CDLL("libnvidia-ml.so.1")
            if lib.nvmlInit_v2() != 0:
                return
            props = torch.cuda.get_device_properties(device)
            bus = f"{props.pci_domain_id:08x}:{props.pci_bus_id:02x}:{props.pci_device_id:02x}.0"
            handle = ctypes.c_void_p()
            if lib.nvmlDeviceGetHandleByPciBusId_v2(bus.encode(), ctypes.byref(handle)) != 0:
                return
            self.reasons = getattr(lib, "nvmlDeviceGetCurrentClocksEventReasons", None) or \
                lib.nvmlDeviceGetCurrentClocksThrottleReasons
            self.lib, self.handle = lib, handle
        except (OSError, AttributeError):
            self.handle = None

    def _loop(self) -> None:
        clock, power, reasons = ctypes.c_uint(), ctypes.c_uint(), ctypes.c_ulonglong()
        next_t = time.perf_counter()
        while not self.stop_flag.is_set():
            if (self.lib.nvmlDeviceGetClockInfo(self.handle, self.SM_CLOCK, ctypes.byref(clock)) == 0
                    and self.lib.nvmlDeviceGetPowerUsage(self.handle, ctypes.byref(power)) == 0
                    and self.reasons(self.handle, ctypes.byref(reasons)) == 0):
                self.samples.append((clock.value, power.value, reasons.value))
            next_t += self.period
            time.sleep(max(0.0, next_t - time.perf_counter()))

    def start(self) -> None:
        if self.handle is not None:
            self.thread = threading.Thread(target=self._loop, daemon=True)
            self.thread.start()

    def stop(self) -> dict | None:
        if self.thread is None:
            return None
        self.stop_flag.set()
        self.thread.join()
        if not self.samples:
            return None
        clocks = [c for c, _, _ in self.samples]
        top, limit = ctypes.c_uint(), ctypes.c_uint()
        self.lib.nvmlDeviceGetMaxClockInfo(self.handle, self.SM_CLOCK, ctypes.byref(top))
        self.lib.nvmlDeviceGetEnforcedPowerLimit(self.handle, ctypes.byref(limit))
        n = len(self.samples)
        return {"samples": n,
                "sm_clock_mhz_median": statistics.median(clocks),
                "sm_clock_mhz_min": min(clocks),
                "sm_clock_mhz_max": top.value,
                "power_w_median": statistics.median(p for _, p, _ in self.samples) / 1e3,
                "power_limit_w": limit.value / 1e3,
                "power_capped_fraction": sum(1 for *_, r in self.samples if r & self.POWER_CAP) / n,
                "slowdown_fraction": sum(1 for *_, r in self.samples if r & self.SLOWDOWN) / n}


def utc_now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def write_json_atomic(path: str, doc: dict) -> None:
    """Write to a temporary file in the same directory, then link it to the final name.

    os.link fails if the name exists, so a result is never overwritten, not even by a run that
    started after this one's check.
    """
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".torch_step.", suffix=".json.tmp", dir=directory)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(doc, f, indent=2)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.link(tmp, path)
    finally:
        os.unlink(tmp)


def base_document(args, world, device, L, C, H, V, B, T, causal) -> dict:
    return {
        "schema": SCHEMA,
        "peer": "pytorch",
        "strategy": args.strategy,
        "order": "zigzag" if args.zigzag else "contiguous",
        "mode": args.mode,
        "sdpa_backend": args.sdpa,
        "config": {"L": L, "C": C, "H": H, "V": V, "B": B, "T": T, "causal": causal,
                   "dtype": args.dtype},
        "world": world,
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "versions": versions(),
        "warmup": args.warmup,
        "iters": args.iters,
        "seed": args.seed,
        "host": socket.gethostname(),
        "argv": sys.argv[1:],
        "status": "failed",
        "message": "",
        "timestamp": utc_now(),
    }


def print_table(doc: dict) -> None:
    c = doc["config"]
    print(f"peer pytorch  strategy {doc['strategy']}"
          f"{' (zigzag)' if doc['order'] == 'zigzag' else ''}  mode {doc['mode']}  sdpa "
          f"{doc['sdpa_backend']}  world {doc['world']}  device {doc['device']}")
    print(f"config L={c['L']} C={c['C']} H={c['H']} V={c['V']} B={c['B']} T={c['T']} "
          f"{'causal' if c['causal'] else 'full'} {c['dtype']}")
    if doc["status"] != "ok":
        print(f"status FAILED: {doc['message']}")
        return
    s = doc["step_ms"]
    rows = [
        ("step ms (median)", f"{s['median']:.3f}"),
        ("step ms (min / max)", f"{s['min']:.3f} / {s['max']:.3f}"),
        ("TFLOP/s per GPU", f"{doc['tflops_per_gpu']:.2f}"),
        ("tokens/s", f"{doc['tokens_per_s']:.0f}"),
        ("peak memory GiB", "n/a" if doc["peak_memory_bytes"] is None
         else f"{doc['peak_memory_bytes'] / 2**30:.2f}"),
        ("loss (last step)", f"{doc['loss']:.4f}"),
    ]
    width = max(len(r[0]) for r in rows)
    for k, v in rows:
        print(f"  {k:<{width}}  {v:>14}")


# ----------------------------------------------------------------------------------------------
# Benchmark
# ----------------------------------------------------------------------------------------------

def run_bench(args, world: int, rank: int, local_rank: int) -> int:
    L, C, H, V, B, T, causal = (args.layers, args.width, args.heads, args.vocab, args.batch,
                                args.seq, args.causal)
    device = setup_device(args, local_rank)
    if args.sdpa is None:
        args.sdpa = "cudnn" if device.type == "cuda" else "auto"
    distributed = args.strategy == "lss"
    doc = base_document(args, world, device, L, C, H, V, B, T, causal)
    phase = "set-up"
    try:
        seq = None
        if distributed:
            group = init_distributed(device, world, rank)
            seq = SequenceGroup(group, world, rank, T, causal, args.zigzag, device)
        needs_lower_right = seq is not None and seq.needs_lower_right
        sdpa_factory, _ = sdpa_context(args.sdpa, needs_lower_right, device.type)
        doc["sdpa_note"] = sdpa_context(args.sdpa, False, device.type)[1]
        if distributed and causal and world > 1:
            doc["sdpa_note"] += (
                ("; zigzag: every lss attention call whose queries start past position 0 "
                 "(rank 0's chunk 2P-1, both calls of ranks 0 < p < P-1, rank P-1's one call) "
                 if args.zigzag else "; lss ranks p > 0 (queries at offset p*T/P) ")
                + ("passes" if args.zigzag else "pass")
                + " torch.nn.attention.bias.causal_lower_right, which PyTorch runs on flash "
                "or memory-efficient attention (its cuDNN path has no lower-right causal mask)"
                + ("; on CPU it is a materialised (queries, keys) mask per call"
                   if device.type == "cpu" else "")
                + (("; with cudnn requested every rank enables flash and memory-efficient too, "
                    "so only rank 0's first chunk (square) runs cuDNN and every other call flash"
                    if args.zigzag else
                    "; with cudnn requested those ranks enable flash and memory-efficient too, "
                    "so rank 0 runs cuDNN and ranks p > 0 run flash")
                   if args.sdpa == "cudnn" and device.type == "cuda" else ""))
        autocast_dtype = torch.bfloat16 if args.dtype == "bf16" else None
        trainer = Trainer(args, device, seq, L, C, H, V, B, T, causal, autocast_dtype,
                          sdpa_factory, args.mode == "compile")
        doc["optimizer"] = ("AdamW(fused=True)" if trainer.fused_adamw else "AdamW(foreach)") + \
            ", lr 1e-4, weight decay 0.1 on every parameter"
        # The whole model's count: the positional embedding counted with all T rows.
        doc["parameters"] = sum(p.numel() for n, p in trainer.model.named_parameters()
                                if n != "pos_emb") + T * C
        if distributed:
            doc["grad_reduction"] = ("one all-reduce (sum) of a flat fp32 buffer holding every "
                                     "gradient except the positional-embedding shard")
        doc["precision_note"] = ("bf16 autocast over fp32 master weights: linears and attention "
                                 "in bf16, LayerNorm, residual stream and cross-entropy in fp32"
                                 if autocast_dtype else "fp32 throughout (TF32 as torch's "
                                 "defaults: matmul TF32 off)")

        x, y = make_tokens(B, T, V, args.seed)
        if seq is not None:
            x, y = seq.local_tokens(x), seq.local_tokens(y)   # the rank's segments, local order
        x, y = x.contiguous().to(device), y.contiguous().to(device)   # (B, Tl) int64

        phase = "warm-up" + (" (includes torch.compile)" if args.mode == "compile" else "")
        for _ in range(args.warmup):
            trainer.step(x, y)
        synchronize(device)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)

        phase = "timed steps"
        times_ms, events = [], []
        loss = None
        sampler = DeviceSampler(device)
        sampler.start()
        for _ in range(args.iters):
            # Every step starts from an idle device with all ranks lined up, as the harness
            # does; the events then time this rank's stream from its first kernel to AdamW's last.
            synchronize(device)
            if distributed:
                dist.barrier()
            if device.type == "cuda":
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                loss = trainer.step(x, y)
                end.record()
                events.append((start, end))
            else:
                t0 = time.perf_counter()
                loss = trainer.step(x, y)
                times_ms.append((time.perf_counter() - t0) * 1e3)
        synchronize(device)
        device_state = sampler.stop()
        if device.type == "cuda":
            times_ms = [s.elapsed_time(e) for s, e in events]

        phase = "collecting results"
        times_ms = reduce_max(times_ms, device, distributed)   # slowest rank per iteration
        peak = None
        if device.type == "cuda":
            peak = reduce_max([float(torch.cuda.max_memory_allocated(device))], device,
                              distributed)[0]
        if distributed:
            dist.all_reduce(loss, op=dist.ReduceOp.SUM)        # the ranks' shares of the mean
        median = statistics.median(times_ms)
        flops, convention = model_flops(L, C, V, B, T, causal)
        doc.update({
            "step_ms": {"median": median, "min": min(times_ms), "max": max(times_ms),
                        "samples": times_ms},
            "flops_per_step": flops,
            "tflops_per_gpu": flops / (median / 1e3) / world / 1e12,
            "tokens_per_s": B * T / (median / 1e3),
            "peak_memory_bytes": None if peak is None else int(peak),
            "device_state": None if device_state is None else {
                "source": "NVML on rank 0's device, every 10 ms through the timed steps",
                "per_rank": [device_state]},
            "flop_convention": convention,
            "loss": float(loss),
            "status": "ok",
            "message": "",
            "timestamp": utc_now(),
        })
        code = EXIT_OK
        if rank == 0:
            print_table(doc)
            try:
                write_json_atomic(args.out, doc)
                print(f"wrote {args.out}")
            except FileExistsError:   # created by someone else while this run was going
                print(f"{PROG}: error: --out {args.out} appeared during the run; refusing to "
                      "overwrite it", file=sys.stderr)
                code = EXIT_BAD_INPUT
        if distributed:
            # Every rank leaves together: a rank tearing its process group down while another
            # still talks to it can abort at exit (seen with gloo).
            dist.barrier()
            dist.destroy_process_group()
        return code
    except Exception as e:   # report, don't crash silently: the JSON says what failed and where
        traceback.print_exc()
        doc.update({"status": "failed", "timestamp": utc_now(),
                    "message": f"rank {rank}, {phase}: {type(e).__name__}: {e}"[:4000]})
        # Any failing rank writes (the first one wins, os.link never overwrites): a failure on a
        # rank other than 0 would otherwise leave no JSON, as torchrun stops the others.
        try:
            write_json_atomic(args.out, doc)
            print(f"wrote {args.out} (status failed)", file=sys.stderr)
        except FileExistsError:
            pass
        except OSError as oe:
            print(f"{PROG}: could not write {args.out}: {oe}", file=sys.stderr)
        print_table(doc)
        sys.stdout.flush()
        sys.stderr.flush()
        if world > 1:
            os._exit(EXIT_FAILED)   # peers may be stuck in a collective: don't tear down NCCL
        return EXIT_FAILED


# ----------------------------------------------------------------------------------------------
# --check: lss against serial
# ----------------------------------------------------------------------------------------------

def rel_err(a: torch.Tensor, ref: torch.Tensor) -> float:
    """max |a - ref| / max |ref|: a normwise relative error that ignores tiny elements."""
    a, ref = a.double().cpu(), ref.double().cpu()
    return float((a - ref).abs().max() / ref.abs().max().clamp_min(1e-30))


def run_check(args, world: int, rank: int, local_rank: int) -> int:
    device = setup_device(args, local_rank)
    sdpa = args.sdpa or "auto"
    group = init_distributed(device, world, rank)
    L, C, H, V, B = 2, 64, 4, 256, 2
    unit = 2 * world if args.zigzag else world   # zigzag: 2P chunks
    T = unit * math.ceil(64 / unit)   # 64 tokens, rounded up to a multiple of P (2P zigzag)
    compile_model = args.mode == "compile"
    worst, lines = 0.0, []
    for causal in (True, False):
        seq = SequenceGroup(group, world, rank, T, causal, args.zigzag, device)
        factory, _ = sdpa_context(sdpa, seq.needs_lower_right, device.type)
        lss = Trainer(args, device, seq, L, C, H, V, B, T, causal, None, factory, compile_model,
                      std=0.2, noisy=True)
        x, y = make_tokens(B, T, V, args.seed)
        xl = seq.local_tokens(x).to(device)   # (B, Tl), the rank's segments in local order
        yl = seq.local_tokens(y).to(device)

        # Step 1: loss and gradients, reduced exactly as the timed step does.
        lss.zero_grad()
        loss1 = lss.forward_backward(xl, yl)
        lss.reduce_grads()
        dist.all_reduce(loss1)
        pos_grad = torch.empty(T, C, device=device)                    # (T, C) rank-major
        dist.all_gather_into_tensor(pos_grad, lss.model.pos_emb.grad.contiguous())
        pos_grad = seq.to_global_order(pos_grad)                       # (T, C) token order
        grads = {n: (pos_grad if n == "pos_emb" else p.grad.clone())
                 for n, p in lss.model.named_parameters()}
        # Step 2: the AdamW update, then the loss of the updated model.
        lss.opt.step()
        lss.zero_grad()
        loss2 = lss.forward_backward(xl, yl)
        dist.all_reduce(loss2)

        if rank == 0:
            ref_factory, _ = sdpa_context(sdpa, False, device.type)
            ser = Trainer(args, device, None, L, C, H, V, B, T, causal, None, ref_factory,
                          compile_model, std=0.2, noisy=True)
            xs, ys = x.to(device), y.to(device)
            ser.zero_grad()
            ref1 = ser.forward_backward(xs, ys)
            errs = {"loss step 1": rel_err(loss1, ref1)}
            for n, p in ser.model.named_parameters():
                errs[f"grad {n}"] = rel_err(grads[n], p.grad)
            ser.opt.step()
            ser.zero_grad()
            ref2 = ser.forward_backward(xs, ys)
            errs["loss after AdamW step"] = rel_err(loss2, ref2)
            name, e = max(errs.items(), key=lambda kv: kv[1])
            worst = max(worst, max(errs.values()))
            lines.append(f"{'causal' if causal else 'full  '}  loss {float(ref1):.6f}  "
                         f"max rel err {e:.3e} ({name}); loss {errs['loss step 1']:.3e}, "
                         f"grads {max(v for k, v in errs.items() if k.startswith('grad')):.3e}, "
                         f"after step {errs['loss after AdamW step']:.3e}")
    verdict = torch.tensor([1 if worst <= CHECK_TOLERANCE else 0], device=device)
    dist.broadcast(verdict, src=0)
    if rank == 0:
        print(f"--check: lss (P={world}, {'zigzag' if args.zigzag else 'contiguous'}) vs "
              f"serial, L={L} C={C} H={H} V={V} B={B} T={T}, fp32, "
              f"sdpa {sdpa}, mode {args.mode}, device {device.type}")
        for line in lines:
            print("  " + line)
        print(f"  worst {worst:.3e}, tolerance {CHECK_TOLERANCE:.0e}: "
              f"{'PASS' if verdict.item() else 'FAIL'}")
    dist.barrier()
    dist.destroy_process_group()
    return EXIT_OK if verdict.item() else EXIT_FAILED


# ----------------------------------------------------------------------------------------------

def main(argv=None) -> int:
    args = build_parser().parse_args(argv)   # argparse: exit 2 naming a bad value on every rank
    world, rank, local_rank = dist_env()
    try:
        validate(args, world)
    except BadInput as e:
        print(f"{PROG}: error (rank {rank}): {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    if args.check:
        return run_check(args, world, rank, local_rank)
    return run_bench(args, world, rank, local_rank)


if __name__ == "__main__":
    sys.exit(main())
