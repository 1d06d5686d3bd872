#!/usr/bin/env bash
# Real outputs validate against schema v1, with --check passing for every strategy.
# usage: result_json.sh LSSBENCH MPIEXEC
set -u
lssbench=$(realpath "$1")
mpiexec=$2
root=$(cd "$(dirname "$0")/.." && pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
failures=0
total=0
point() {  # point NP NAME args...
  local np=$1 name=$2
  shift 2
  total=$((total + 1))
  if ! timeout 120 "$mpiexec" -n "$np" "$lssbench" run --layers 2 --width 32 --heads 4 --seq 64 --iters 2 \
      --threads 1 --check "$@" --out "$work/$name.json" > "$work/$name.log" 2>&1; then
    failures=$((failures + 1)); echo "FAIL: $name did not run"; sed 's/^/    | /' "$work/$name.log" | tail -20; return
  fi
  if ! "$lssbench" validate "$work/$name.json"; then failures=$((failures + 1)); echo "FAIL: $name is not valid"; return; fi
  # The table for people shows the bound and rank 0's parts of it.
  if ! grep -q "analytic bound (ms)" "$work/$name.log" || ! grep -q "rank 0's parts (ms)  gemm .*passes .*exposed comm" "$work/$name.log"; then
    failures=$((failures + 1)); echo "FAIL: $name: the bound's lines are missing from the table"; return
  fi
  if ! python3 -c "import json,sys; r=json.load(open(sys.argv[1])); sys.exit(0 if r['check']['passed'] and r['status']=='ok' else 1)" "$work/$name.json"; then
    failures=$((failures + 1)); echo "FAIL: $name: check or status"; return
  fi
  # The analytic bound: its GEMM FLOPs per rank are README's ((3 + r)·L·24·B·T·C² + 6·B·T·C·V) / world,
  # rank 0's parts add up to at most the bound (the slowest rank's; to the bound on one rank), the
  # per-kernel elementwise and per-pass lists to their totals, the collectives' lines add
  # up to their total, a distributed run prices its collectives, and step_over_bound is the ratio.
  if ! python3 - "$work/$name.json" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
b, c = r["bound"], r["config"]
rec = 1 if c["strategy_options"].get("recompute") else 0
L, B, T, C, V = c["layers"], c["batch"], c["seq"], c["width"], c["vocab"]
want = ((3 + rec) * L * 24 * B * T * C * C + 6 * B * T * C * V) / r["grid"]["world"]
r0 = b["rank0"]
parts = r0["gemm_ms"] + r0["attention_ms"] + r0["elementwise_ms"] + r0["passes_ms"] + r0["optimizer_exposed_ms"] + r0["comm_exposed_ms"]
ok = abs(r0["gemm_flops"] - want) <= 1e-9 * want and parts <= b["bound_ms"] * (1 + 1e-9)
# --optimizer-in-backward on one rank: backward steps every bucket but layer 0's attention half
# and the embeddings beside its compute, and the bound prices the rest of AdamW; without it, or
# with sums to wait for (world > 1), the optimizer phase steps everything.
share = r0["optimizer_hidden_share"]
in_backward = r["grid"]["world"] == 1 and c["options"].get("optimizer-in-backward") in (True, "true")
ok = ok and (0 < share < 1 if in_backward else share == 0)
ok = ok and abs(r0["optimizer_exposed_ms"] - r0["optimizer_ms"] * (1 - share)) <= 1e-9 * max(1e-12, r0["optimizer_ms"])
# One rank: its parts are the bound.
ok = ok and (r["grid"]["world"] > 1 or abs(parts - b["bound_ms"]) <= 1e-9 * b["bound_ms"])
# The per-kernel and per-pass lists add up to their totals.
ew = sum(k["ms_per_call"] * k["calls"] for k in r0["elementwise_kernels"].values())
ok = ok and abs(ew - r0["elementwise_ms"]) <= 1e-9 * r0["elementwise_ms"]
ok = ok and abs(sum(x["ms_per_call"] * x["calls"] for x in r0["passes"]) - r0["passes_ms"]) <= 1e-9 * max(1.0, r0["passes_ms"])
# lss in the zigzag order copies [dK|dV] into rank order: priced passes. Its fused K/V gathers
# land each rank's two chunks at their places (the MPI communicator places gathers), timed so,
# from --placed-gather-min gathered bytes on; below, they land rank-major and are copied into
# token order; the pipeline's half gathers are rank-major.
zigzag = c["strategy_options"].get("order") == "zigzag"
ok = ok and (not zigzag or r0["passes_ms"] > 0)
es = {"fp64": 8, "fp32": 4, "bf16": 2}[c["dtype"]]
kv_bytes = T * (B // r["grid"]["dp"]) * 2 * C * es
placed_kv = zigzag and kv_bytes >= int(c["strategy_options"].get("placed_gather_min_bytes", 0))
ok = ok and c["strategy_options"].get("placed_gather", False) == placed_kv
fused_kv = [x for x in r0["comm"] if x["what"] in ("K/V all-gather, forward", "K/V re-gather, backward",
                                                   "K/V all-gather, recomputed forward")]
ok = ok and all(x.get("placed_pieces") == (2 if placed_kv else None) for x in fused_kv)
ok = ok and (not zigzag or placed_kv or c["strategy_options"].get("chunk_pipeline")
             or any(x["what"] == "[K|V] to token order" for x in r0["passes"]))
# --placed-reduce-scatter: the fused dK/dV reduce-scatter sums from those places, timed so, and
# backward copies nothing into rank order.
placed_rs = c["strategy_options"].get("placed_reduce_scatter", False)
ok = ok and all(x.get("placed_pieces") == (2 if placed_rs else None) for x in r0["comm"] if x["what"] == "dK/dV reduce-scatter")
ok = ok and (not placed_rs or not any(x["what"] == "[dK|dV] to rank order" for x in r0["passes"]))
ok = ok and (not placed_rs or any(x["what"] == "dK/dV reduce-scatter" for x in r0["comm"]))
# lss --chunk-pipeline runs every forward linear on each of its two chunks: timed so. megatron_sp
# (P > 1) runs its column-parallel layers (QKV, MLP up: the first and third) on rank 0's own rows
# beside their gather, then on the rows after them: two parts; and its row-parallel layers (out
# projection, MLP down) in --scatter-chunks chunks of every rank's rows: P x chunks parts, or one
# GEMM with one chunk.
pipeline = c["strategy_options"].get("chunk_pipeline", False)
sp = r["grid"]["sp"]
if r["strategy"] == "megatron_sp":
    chunks = c["strategy_options"]["scatter_chunks"]
    want_parts = lambda i: 1 if sp == 1 else (2 if i % 2 == 0 else (sp * chunks if chunks > 1 else 1))
    # Each chunk's reduce-scatter but the last runs beside the next chunk's GEMMs: (chunks - 1) x L
    # calls of 1/chunks of the rows for each row-parallel layer and forward pass.
    beside_next = [x for x in r0["comm"] if "beside the next chunk's GEMM" in x["what"]]
    full = T * (B // r["grid"]["dp"]) * C * {"fp64": 8, "fp32": 4, "bf16": 2}[c["dtype"]]
    ok = ok and len(beside_next) == (2 * (1 + rec) if sp > 1 and chunks > 1 else 0)
    ok = ok and all(x["calls"] == (chunks - 1) * L and x["bytes"] == full // chunks and x["hidden_by_ms"] > 0
                    for x in beside_next)
    # The bound prices the reduce-scatters (and all-gathers) the communicator counted.
    for kind in ("reduce_scatter", "all_gather"):
        priced = [x for x in r0["comm"] if x["group"] == "sp" and x["kind"] == kind]
        counted = r["comm"]["per_step_rank0"].get("sp", {}).get(kind, {"calls": 0, "bytes": 0})
        ok = ok and sum(x["calls"] for x in priced) == counted["calls"]
        ok = ok and sum(x["bytes"] * x["calls"] for x in priced) == counted["bytes"]
else:
    want_parts = lambda i: 2 if pipeline else 1
ok = ok and all(x.get("forward_parts", 1) == want_parts(i) for i, x in enumerate(r0["linears"]))
ok = ok and all(x["forward_in_parts_ms"] > 0 for i, x in enumerate(r0["linears"]) if want_parts(i) > 1)
ok = ok and abs(max(b["per_rank_ms"]) - b["bound_ms"]) <= 1e-9 * b["bound_ms"] and len(b["per_rank_ms"]) == r["grid"]["world"]
ok = ok and abs(r0["gemm_tflops_at_step_shapes"] - r0["gemm_flops"] / r0["gemm_ms"] / 1e9) <= 1e-9 * r0["gemm_tflops_at_step_shapes"]
ok = ok and abs(sum(x["exposed_ms"] for x in r0["comm"]) - r0["comm_exposed_ms"]) <= 1e-9 * max(1.0, r0["comm_exposed_ms"])
ok = ok and (r["grid"]["world"] == 1 or len(r0["comm"]) > 0)
# Each collective's exposed time is what the time beside it leaves. A layer's gradients are two
# buckets, "<l>.attn" and "<l>.mlp". The optimizer steps parameters beside the last gradient
# buckets' all-reduces (README, analytic bound): with one data replica beside layer 0's two
# halves' and the embeddings' sequence-group sums; with several beside layer 0's attention half's
# sequence-group sum and the data-group sums of layer 1's attention half (started when backward
# ends: these runs have 2 layers), layer 0's attention half and the embeddings, while layer 0's
# MLP half's data-group sums run beside nothing. With --distributed-optimizer a bucket's
# sequence-group sum is a reduce-scatter (and an all-reduce of the remainder P does not divide).
replicas = r["grid"]["dp"] > 1
seq_sums = lambda k: {"gradient all-reduce, bucket " + k, "gradient reduce-scatter, bucket " + k,
                      "gradient all-reduce, bucket " + k + ", the remainder P does not divide"}
data_sums = lambda k: {"gradient all-reduce (data group), bucket " + k + ", sequence-reduced",
                       "gradient all-reduce (data group), bucket " + k + ", the rest"}
beside = seq_sums("0.attn") | (
    data_sums("1.attn") | data_sums("0.attn") | data_sums("embed") if replicas else seq_sums("0.mlp") | seq_sums("embed"))
# The distributed optimizer's parameter all-gathers: one per bucket, GEMMs beside all but the
# embeddings' and layer 0's attention half's.
sharded = c["strategy_options"].get("distributed_optimizer", False) and r["grid"]["sp"] > 1
gathers = {x["what"]: x for x in r0["comm"] if x["what"].startswith("parameter all-gather")}
ok = ok and (len(gathers) == 2 * L + 2 if sharded else not gathers)
for k, x in gathers.items():
    ok = ok and (x["hidden_by_ms"] == 0) == (k.endswith("bucket embed") or k.endswith("bucket 0.attn"))
# Those and the gradients' reduce-scatters run on the flat buffers, in plain memory, and are
# timed so; every other collective in the strategy's memory.
for x in r0["comm"]:
    ok = ok and x["plain_memory"] == x["what"].startswith(("parameter all-gather", "gradient reduce-scatter"))
data_group_0 = [x for x in r0["comm"] if x["what"].startswith("gradient all-reduce (data group), bucket 0.mlp")]
ok = ok and (len(data_group_0) > 0) == replicas and all(x["hidden_by_ms"] == 0 for x in data_group_0)
for x in r0["comm"]:
    ok = ok and abs(x["exposed_ms"] - x["calls"] * max(0.0, x["measured_ms"] - x["hidden_by_ms"])) <= 1e-9 * max(1.0, x["exposed_ms"])
    # --no-overlap: every collective runs where it is needed, nothing beside it.
    if c["strategy_options"].get("overlap", True):
        ok = ok and x["hidden_by_ms"] >= x["hidden_by_optimizer_share"] * r0["optimizer_ms"] * (1 - 1e-9)
    else:
        ok = ok and x["hidden_by_ms"] == 0
    if x["what"] in beside:
        ok = ok and 0 < x["hidden_by_optimizer_share"] < 1
    else:
        ok = ok and x["hidden_by_optimizer_share"] == 0
ok = ok and abs(b["step_over_bound"] - r["timing"]["median_ms"] / b["bound_ms"]) <= 1e-9 * b["step_over_bound"]
# A --grad-reduce-dtype narrower than the gradients: the two casts priced as passes (where the
# grid sums anything), the gradients' collectives in its bytes, and the check's gradient bound
# that dtype's.
master = {"bf16": "fp32"}.get(c["dtype"], c["dtype"])
wire = c["strategy_options"].get("grad_reduce_dtype", master)
casts = [x for x in r0["passes"] if x["what"] in ("gradients rounded for their sums", "sums widened into the gradients")]
narrower = wire != master and r["grid"]["world"] > 1
ok = ok and len(casts) == (2 if narrower else 0) and all(x["ms_per_call"] > 0 and x["calls"] == 1 for x in casts)
# Every all-reduce of a step sums gradients (the loss's is the world's): the bound prices the bytes
# the communicator counted moving, in whatever dtype they moved.
for g in ("sp", "dp"):
    priced = sum(x["bytes"] * x["calls"] for x in r0["comm"] if x["group"] == g and x["kind"] == "all_reduce")
    counted = r["comm"]["per_step_rank0"].get(g, {}).get("all_reduce", {}).get("bytes", 0)
    ok = ok and priced == counted
bounds = {"fp64": 1e-10, "fp32": 1e-4, "bf16": 5e-2}
ok = ok and r["check"]["gradient_bound"] == max(bounds[c["dtype"]], bounds[wire])
sys.exit(0 if ok else 1)
PY
  then failures=$((failures + 1)); echo "FAIL: $name: analytic bound"; return; fi
  # The sustained bound (each compute kernel timed again after --bound-heat seconds back to back):
  # null on cpu unless --bound-heat is given, and null with --bound-heat 0; else the same kernels
  # as the bound's, rank 0's parts plus its own optimizer step and the bound's exposed communication are
  # rank 0's sustained bound, the slowest rank's is bound_ms, and the table prints it.
  if ! python3 - "$work/$name.json" "$work/$name.log" <<'PY'
import json, re, sys
r = json.load(open(sys.argv[1]))
log = open(sys.argv[2]).read()
b, s = r["bound"], r["bound"]["sustained"]
m = re.search(r"--bound-heat[= ](\S+)", r["machine"]["command_line"])
heat = float(m.group(1)) if m else 0.0  # cpu: none unless given
if heat == 0:
    ok = s is None and b["step_over_sustained_bound"] is None and "sustained bound (ms)" not in log
    sys.exit(0 if ok else 1)
r0, s0, world = b["rank0"], s["rank0"], r["grid"]["world"]
close = lambda a, c: abs(a - c) <= 1e-9 * max(abs(a), abs(c), 1e-12)
ok = s["heat_s"] == heat and s["bound_ms"] > 0 and len(s["per_rank_ms"]) == world
ok = ok and close(max(s["per_rank_ms"]), s["bound_ms"])
ok = ok and close(b["step_over_sustained_bound"], r["timing"]["median_ms"] / s["bound_ms"])
parts = s0["gemm_ms"] + s0["attention_ms"] + s0["elementwise_ms"] + s0["passes_ms"]
ok = ok and s0["optimizer_ms"] > 0 and close(parts + s0["optimizer_exposed_ms"] + r0["comm_exposed_ms"], s["per_rank_ms"][0])
ok = ok and s0["optimizer_hidden_share"] == r0["optimizer_hidden_share"]
shape = lambda l: [(x["rows"], x["in"], x["out"], x["residual"], x["gelu_out"], x["gelu_in"]) for x in l]
ok = ok and shape(s0["linears"]) == shape(r0["linears"]) and all(x["forward_ms"] > 0 and x["backward_ms"] > 0 for x in s0["linears"])
ok = ok and {k: v["calls"] for k, v in s0["elementwise_kernels"].items()} == {k: v["calls"] for k, v in r0["elementwise_kernels"].items()}
ok = ok and close(sum(k["ms_per_call"] * k["calls"] for k in s0["elementwise_kernels"].values()), s0["elementwise_ms"])
ok = ok and [(x["what"], x["calls"]) for x in s0["passes"]] == [(x["what"], x["calls"]) for x in r0["passes"]]
ok = ok and re.search(r"sustained bound \(ms\) +[0-9.]+  \(step / sustained [0-9.]+; each kernel after %g s back to back\)" % heat, log) is not None
sys.exit(0 if ok else 1)
PY
  then failures=$((failures + 1)); echo "FAIL: $name: sustained bound"; return; fi
  # The contended bound: the bound's compute plus each collective that GEMMs hide priced as timed
  # beside them (calls x (together - GEMMs alone - optimizer time beside it), not below 0), the
  # others as in the bound; none of that with --no-overlap, where it is the bound; the slowest
  # rank's, its ratio, and the table's line.
  if ! python3 - "$work/$name.json" "$work/$name.log" <<'PY'
import json, re, sys
r = json.load(open(sys.argv[1]))
log = open(sys.argv[2]).read()
b, k, r0, world = r["bound"], r["bound"]["contended"], r["bound"]["rank0"], r["grid"]["world"]
overlap = r["config"]["strategy_options"].get("overlap", True)
close = lambda a, c: abs(a - c) <= 1e-9 * max(abs(a), abs(c), 1e-12)
ok = len(k["per_rank_ms"]) == world and close(max(k["per_rank_ms"]), k["bound_ms"])
ok = ok and close(b["step_over_contended_bound"], r["timing"]["median_ms"] / k["bound_ms"])
total = 0.0
for e in r0["comm"]:
    if "contended" in e:
        x = e["contended"]
        want = e["calls"] * max(0.0, x["together_ms"] - x["gemms_alone_ms"] - e["hidden_by_optimizer_share"] * r0["optimizer_ms"])
        ok = ok and overlap and x["gemms"] >= 1 and x["together_ms"] > 0 and x["gemms_alone_ms"] > 0
        ok = ok and close(x["exposed_ms"], want) and len(x["gemm_shape"]) == 3
        total += x["exposed_ms"]
    else:
        total += e["exposed_ms"]
ok = ok and close(total, k["comm_exposed_ms"])
parts = r0["gemm_ms"] + r0["attention_ms"] + r0["elementwise_ms"] + r0["passes_ms"] + r0["optimizer_exposed_ms"]
ok = ok and close(parts + k["comm_exposed_ms"], k["per_rank_ms"][0])
if not overlap:
    ok = ok and close(k["bound_ms"], b["bound_ms"]) and not any("contended" in e for e in r0["comm"])
elif world > 1:
    ok = ok and any("contended" in e for e in r0["comm"])
ok = ok and re.search(r"contended bound \(ms\) +[0-9.]+  \(step / contended [0-9.]+;", log) is not None
sys.exit(0 if ok else 1)
PY
  then failures=$((failures + 1)); echo "FAIL: $name: contended bound"; return; fi
  # On CPU ranks every collective blocks: all the time in collectives is exposed.
  if ! python3 -c "import json,sys; t=json.load(open(sys.argv[1]))['timing']; sys.exit(0 if abs(t['comm_exposed_median_ms'] - t['comm_median_ms']) <= 1e-9 * max(1.0, t['comm_median_ms']) else 1)" "$work/$name.json"; then
    failures=$((failures + 1)); echo "FAIL: $name: exposed communication differs from time in collectives on CPU"; return
  fi
  # Host enqueue times are there and positive; a CPU run has no device state to sample (null).
  if ! python3 -c "import json,sys; t=json.load(open(sys.argv[1]))['timing']; sys.exit(0 if t['backward_enqueue_median_ms'] > 0 and t['optimizer_enqueue_median_ms'] > 0 and 'device_state' in t and t['device_state'] is None else 1)" "$work/$name.json"; then
    failures=$((failures + 1)); echo "FAIL: $name: host enqueue times or device_state"; return
  fi
  # The flash kernels' generation and the attention calls per CUDA path are recorded; a CPU run
  # has neither (null).
  if ! python3 -c "import json,sys; m=json.load(open(sys.argv[1]))['machine']; sys.exit(0 if all(k in m and m[k] is None for k in ('flash_attention_kernels', 'attention_forward_calls')) else 1)" "$work/$name.json"; then
    failures=$((failures + 1)); echo "FAIL: $name: machine.flash_attention_kernels or .attention_forward_calls missing or not null on cpu"; return
  fi
  # The binary names the commit it was built from: this checkout's HEAD (with -dirty when modified).
  if head=$(git -C "$root" rev-parse --short=12 HEAD 2>/dev/null); then
    if ! python3 -c "import json,sys; c=json.load(open(sys.argv[1]))['machine']['git_commit']; sys.exit(0 if c.split('-')[0] == sys.argv[2] else 1)" "$work/$name.json" "$head"; then
      failures=$((failures + 1)); echo "FAIL: $name: machine.git_commit is not HEAD ($head)"; return
    fi
  fi
  echo "ok:   $name"
}
# The sustained bound: default (none on cpu), an explicit --bound-heat (measured on cpu too; with
# the `=` form on 4 ranks), and an explicit 0 (none).
point 1 serial --strategy serial
point 1 serial_optimizer_in_backward --strategy serial --optimizer-in-backward
point 2 lss --strategy lss --sp 2 --batch 2 --bound-heat 0.01
# zigzag: placed gathers where --placed-gather-min allows (these points' gathers are a few KiB,
# under the default: rank-major and copied).
point 4 lss_dp --strategy lss --sp 2 --batch 2 --keep-kv --zigzag --placed-gather-min 0 --bound-heat=0.005
point 4 lss_pipeline --strategy lss --sp 4 --zigzag --chunk-pipeline
point 4 lss_placed_reduce_scatter --strategy lss --sp 4 --zigzag --placed-reduce-scatter --placed-gather-min 1K
point 4 lss_rank_major_gather --strategy lss --sp 4 --zigzag --placed-reduce-scatter
point 2 megatron --strategy megatron_sp --sp 2 --dtype fp64 --bound-heat 0
point 2 megatron_scatter_chunks --strategy megatron_sp --sp 2 --dtype fp64 --scatter-chunks 4 --recompute
point 4 megatron_dp --strategy megatron_sp --sp 2 --batch 2 --check-seq 32
point 2 lss_no_overlap --strategy lss --sp 2 --no-overlap
point 4 lss_sharded --strategy lss --sp 4 --zigzag --distributed-optimizer
point 4 megatron_sharded_dp --strategy megatron_sp --sp 2 --batch 2 --distributed-optimizer
point 2 lss_fp32_sums --strategy lss --sp 2 --dtype fp64 --grad-reduce-dtype fp32 --distributed-optimizer
point 4 megatron_fp32_sums_dp --strategy megatron_sp --sp 2 --batch 2 --dtype fp64 --grad-reduce-dtype fp32
echo "$((total - failures)) passed, $failures failed"
[ "$failures" -eq 0 ]
