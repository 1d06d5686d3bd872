// Step tests on GPUs: serial, lss and megatron_sp on the CUDA backend (NCCL between ranks) against
// the CPU backend's fp64 serial model. Run under mpiexec with 1, 2 or 4 ranks, one GPU each;
// exits 77 (skipped) when this node has fewer GPUs than ranks.
#include <gtest/gtest.h>
#include <mpi.h>

#include <cmath>
#include <cstdio>

#include "app/metrics.h"
#include "app/session.h"
#include "comm/grid.h"
#include "kernels/cuda/cuda_backend.h"

using namespace lss;

namespace {

int world_size() {
  int w = 1;
  MPI_Comm_size(MPI_COMM_WORLD, &w);
  return w;
}
int world_rank() {
  int r = 0;
  MPI_Comm_rank(MPI_COMM_WORLD, &r);
  return r;
}

RunConfig model(const std::string& strategy, int P, DType dtype, bool causal, const std::string& attention) {
  RunConfig rc;
  rc.strategy = strategy;
  rc.P = P;
  rc.backend = "cuda";
  rc.attention = attention;
  rc.model.L = 2;
  rc.model.C = 256;
  rc.model.H = 4;  // D = 64: a head size both attention paths take
  rc.model.T = 512;
  rc.model.T_max = 512;
  rc.model.B = 4;  // divides by every data-parallel degree of 1, 2 and 4 ranks
  rc.model.causal = causal;
  rc.model.dtype = dtype;
  rc.model.init_std = 0.05;
  return rc;
}

struct Case {
  std::string strategy;
  DType dtype;
  bool causal;
  std::string attention;
  // Strategy options beyond the defaults (lss: re-gathered K/V, contiguous order, split causal
  // blocks; megatron_sp: re-gathered LN outputs; both: overlap on, no recomputation).
  std::string variant = "default";
};

StrategyOptions options_of(const std::string& variant) {
  const auto has = [&](const char* part) { return variant.find(part) != std::string::npos; };
  StrategyOptions o;
  o.zigzag = variant.rfind("zigzag", 0) == 0;
  // The query-offset calls instead of the split causal blocks.
  o.split_causal = variant != "zigzag_offset";
  o.keep_kv = has("keepkv");
  o.chunk_pipeline = has("pipeline");
  o.recompute = has("recompute");
  o.distributed_optimizer = has("sharded");
  o.placed_reduce_scatter = has("placedrs");
  o.local_cross_block = has("localcross");
  // These tests' gathers are far below the default --placed-gather-min: placed at any size, as
  // on the long sequences, except in the variant that checks the rank-major gather and its copy.
  if (!has("rankmajor")) o.placed_gather_min_bytes = 0;
  o.regather_ln = variant != "keepln";
  o.overlap = variant != "nooverlap";
  o.optimizer_in_backward = variant == "optbwd";
  if (has("gradbf16")) o.grad_reduce_dtype = DType::bf16;
  if (has("chunks4")) o.scatter_chunks = 4;
  return o;
}

class GpuStep : public ::testing::TestWithParam<Case> {};

// Bounds against the fp64 CPU model, normwise per tensor:
//   fp32 (no TF32; own flash kernel): loss 1e-5 relative, gradients 1e-4;
//   bf16 (fp32 accumulation and master weights): loss 1e-2 relative, gradients 5e-2.
TEST_P(GpuStep, LossAndGradientsMatchTheCpuFp64Reference) {
  const Case c = GetParam();
  const int world = world_size();
  // serial runs on one rank; the distributed strategies on every grid (P, world / P) of this world.
  std::vector<std::pair<int, int>> grids;  // (P, R)
  for (int P : {1, 2, 4})
    if (world % P == 0 && (c.strategy != "serial" || world == 1)) grids.push_back({P, world / P});
  if (c.strategy == "serial" && world > 1) GTEST_SKIP() << "serial runs on one rank";
  const double loss_bound = c.dtype == DType::f32 ? 1e-5 : 1e-2;
  const double grad_bound = c.dtype == DType::f32 ? 1e-4 : 5e-2;
  for (auto [P, R] : grids) {
    RunConfig rc = model(c.strategy, P, c.dtype, c.causal, c.attention);
    rc.strategy_opts = options_of(c.variant);
    rc.copy_engine_gathers = c.variant.find("copyengine") != std::string::npos;
    rc.registered_gathers = c.variant.find("registered") != std::string::npos;
    rc.symmetric_collectives = c.variant.find("symmetric") != std::string::npos;
    // The distributed optimizer, and the optimizer in backward (one rank: the side lane's AdamW
    // beside backward), are checked through the loss one step later: a step large enough that
    // stale parameters would show in it.
    const bool sharded = rc.strategy_opts.distributed_optimizer;
    const bool in_backward = rc.strategy_opts.optimizer_in_backward && P == 1 && R == 1;
    if (sharded) rc.opt.lr = 3e-2;
    if (in_backward) rc.opt.lr = 6e-2;  // 3e-2 moved the non-causal loss by only 2%
    Session gpu(rc, MPI_COMM_WORLD);
    gpu.reset_counts();
    double loss = 0;
    if (in_backward) {
      gpu.forward_backward_into_optimizer(0, 1);  // the training loop's order: AdamW step 1 starts in backward
      loss = gpu.loss();
    } else {
      loss = gpu.forward_backward(0);
    }
    // The communicator's counts (bf16 activations, fp32 or --grad-reduce-dtype gradients) equal
    // the README's formulas.
    const CommModel counted = gpu.comm_counts(), expected = gpu.expected_comm();
    EXPECT_EQ(counted.size(), expected.size()) << c.strategy << " P=" << P;
    for (const auto& [group, counts] : expected)
      EXPECT_TRUE(counted.count(group) && counted.at(group) == counts) << c.strategy << " P=" << P << " group " << group;
    const auto grads = gpu.gather_full(true);
    // The distributed optimizer's loop: each rank steps its shards, the next forward gathers the
    // parameters (in place, in the compute dtype) and its loss is the reference's after one step.
    // In backward: backward has stepped every bucket on the side lane as it finished it; the
    // optimizer phase waits for that lane.
    double loss_after_step = 0;
    if (sharded || in_backward) {
      gpu.optimizer_step(1);
      loss_after_step = gpu.forward_backward(1);
    }
    if (world_rank() != 0) continue;
    RunConfig ref = rc;
    ref.strategy = "serial";
    ref.P = 1;
    ref.backend = "cpu";
    ref.copy_engine_gathers = false;
    ref.registered_gathers = false;
    ref.symmetric_collectives = false;
    ref.model.dtype = DType::f64;
    ref.strategy_opts.grad_reduce_dtype.reset();  // the reference sums nothing
    Session cpu(ref, MPI_COMM_SELF);
    const double ref_loss = cpu.forward_backward(0);
    const auto ref_grads = cpu.gather_full(true);
    const std::string where = c.strategy + " P=" + std::to_string(P) + " R=" + std::to_string(R) + " " +
                              dtype_name(c.dtype) + (c.causal ? " causal " : " non-causal ") + c.attention + " " +
                              c.variant;
    EXPECT_LT(std::abs(loss - ref_loss) / ref_loss, loss_bound) << where << ": loss " << loss << " vs " << ref_loss;
    if (sharded || in_backward) {
      cpu.optimizer_step(1);
      const double ref_after = cpu.forward_backward(1);
      EXPECT_GT(std::abs(ref_after - ref_loss) / ref_loss, 3 * loss_bound) << where << ": the step moved the loss too little";
      EXPECT_LT(std::abs(loss_after_step - ref_after) / ref_after, loss_bound)
          << where << ": loss after one AdamW step " << loss_after_step << " vs " << ref_after;
    }
    double worst = 0;
    std::string worst_name;
    for (const auto& [name, g] : ref_grads) {
      const double e = norm_rel_error(grads.at(name), g);
      if (name.find("c_attn.bias") != std::string::npos) continue;  // key bias: zero gradient, noise only
      if (e > worst) worst = e, worst_name = name;
      EXPECT_LT(e, grad_bound) << where << ": gradient of " << name;
    }
    std::printf("[ %s ] loss %.6f (ref %.6f), worst gradient error %.2e (%s)\n", where.c_str(), loss, ref_loss,
                worst, worst_name.c_str());
  }
}

std::vector<Case> cases() {
  std::vector<Case> out;
  for (const char* s : {"serial", "lss", "megatron_sp"})
    for (bool causal : {true, false}) {
      out.push_back({s, DType::f32, causal, "flash"});
      out.push_back({s, DType::bf16, causal, "flash"});
      out.push_back({s, DType::bf16, causal, "cudnn"});
    }
  // The options on the GPU path: the balanced order (several attention calls per rank, merged by
  // log-sum-exp, a scratch sum of dK/dV), the same with query-offset calls instead of split
  // causal blocks, recomputation, kept gathers, the chunk pipeline (two half gathers into one
  // buffer, row ranges of every layer's buffers), and the collectives run in order instead of
  // overlapped.
  for (const char* v : {"zigzag", "zigzag_offset", "zigzag_recompute", "zigzag_keepkv", "zigzag_pipeline", "nooverlap"}) {
    out.push_back({"lss", DType::f32, true, "flash", v});
    out.push_back({"lss", DType::bf16, true, "cudnn", v});
  }
  // The balanced order's attention calls (split causal blocks, query offsets) on the bf16 flash
  // kernels, which on H100/H200 are the wgmma generation.
  out.push_back({"lss", DType::bf16, true, "flash", "zigzag"});
  for (const char* v : {"recompute", "keepln", "nooverlap"}) out.push_back({"megatron_sp", DType::bf16, true, "cudnn", v});
  // The all-gathers on the copy engines (--copy-engine-gathers; RunConfig, not a strategy
  // option): every gathered buffer in the sequence group's symmetric windows, the pipeline's
  // half gathers into row ranges of one.
  for (const char* v : {"zigzag_copyengine", "zigzag_pipeline_copyengine"}) out.push_back({"lss", DType::bf16, true, "cudnn", v});
  out.push_back({"lss", DType::f32, true, "flash", "zigzag_copyengine"});
  out.push_back({"megatron_sp", DType::bf16, true, "cudnn", "copyengine"});
  // The gathered buffers registered with NCCL (--registered-gathers): the placed and the rank-major
  // gathers, the pipeline's halves, lss with the options of its weak-scaling sweep (kept K/V, the
  // placed reduce-scatter, the distributed optimizer, whose parameter gathers stay in plain memory).
  for (const char* v : {"zigzag_registered", "zigzag_rankmajor_registered", "zigzag_pipeline_registered",
                        "zigzag_keepkv_placedrs_sharded_registered"})
    out.push_back({"lss", DType::bf16, true, "cudnn", v});
  out.push_back({"lss", DType::f32, true, "flash", "zigzag_registered"});
  out.push_back({"megatron_sp", DType::bf16, true, "cudnn", "registered"});
  // The gathered and reduce-scattered buffers in symmetric windows (--symmetric-collectives: NCCL's
  // symmetric kernels): lss in token order, zigzag with placed and with rank-major gathers (the
  // reduce-scatter rank-major from a reordered copy), the pipeline's halves into row ranges, the
  // weak-scaling sweep's options but the placed reduce-scatter; megatron_sp whole and in chunks.
  for (const char* v : {"symmetric", "zigzag_symmetric", "zigzag_rankmajor_symmetric", "zigzag_pipeline_symmetric",
                        "zigzag_keepkv_sharded_symmetric"})
    out.push_back({"lss", DType::bf16, true, "cudnn", v});
  out.push_back({"lss", DType::f32, true, "flash", "zigzag_symmetric"});
  for (const char* v : {"symmetric", "chunks4_symmetric"}) out.push_back({"megatron_sp", DType::bf16, true, "cudnn", v});
  // The distributed optimizer (in-place reduce-scatters of the gradients, the forward's in-place
  // gathers of the bf16 working copy, one step later too).
  for (const char* v : {"zigzag_sharded", "zigzag_pipeline_sharded"}) out.push_back({"lss", DType::bf16, true, "cudnn", v});
  out.push_back({"lss", DType::f32, true, "flash", "zigzag_sharded"});
  out.push_back({"megatron_sp", DType::bf16, true, "cudnn", "sharded"});
  // The placed dK/dV reduce-scatter (grouped ncclReduce calls from token order).
  for (const char* v : {"zigzag_placedrs", "zigzag_recompute_placedrs"}) out.push_back({"lss", DType::bf16, true, "cudnn", v});
  out.push_back({"lss", DType::f32, true, "flash", "zigzag_placedrs"});
  // The back chunk's block on its front chunk beside the collectives (--local-cross-block): the own
  // flash kernels in fp32 and bf16, cuDNN with the placed reduce-scatter and recomputation.
  out.push_back({"lss", DType::f32, true, "flash", "zigzag_localcross"});
  out.push_back({"lss", DType::bf16, true, "flash", "zigzag_localcross"});
  out.push_back({"lss", DType::bf16, true, "cudnn", "zigzag_recompute_placedrs_localcross"});
  // The zigzag gather below --placed-gather-min: rank-major, copied into token order.
  out.push_back({"lss", DType::bf16, true, "cudnn", "zigzag_rankmajor"});
  // The optimizer in backward (AdamW on the side lane beside backward; one rank only, so these
  // run their P = R = 1 grid on a one-GPU machine and step as usual elsewhere).
  out.push_back({"serial", DType::f32, true, "flash", "optbwd"});
  out.push_back({"serial", DType::bf16, true, "cudnn", "optbwd"});
  out.push_back({"serial", DType::bf16, false, "cudnn", "optbwd"});
  for (const char* s : {"lss", "megatron_sp"}) out.push_back({s, DType::bf16, true, "cudnn", "optbwd"});
  // The gradients summed in bf16 (--grad-reduce-dtype bf16): rounded into the bf16 copy, summed
  // by all-reduces or the distributed optimizer's reduce-scatters, widened back.
  for (const char* v : {"zigzag_gradbf16", "zigzag_sharded_gradbf16"}) out.push_back({"lss", DType::bf16, true, "cudnn", v});
  for (const char* v : {"gradbf16", "sharded_gradbf16"}) out.push_back({"megatron_sp", DType::bf16, true, "cudnn", v});
  // megatron_sp's row-parallel forward in 4 chunks of every rank's rows, each chunk's
  // reduce-scatter beside the next chunk's GEMMs (these tests' rows are too few for the default
  // to chunk): fp32 on the own flash kernel, bf16, and recomputed.
  out.push_back({"megatron_sp", DType::f32, true, "flash", "chunks4"});
  for (const char* v : {"chunks4", "chunks4_recompute"}) out.push_back({"megatron_sp", DType::bf16, true, "cudnn", v});
  return out;
}
INSTANTIATE_TEST_SUITE_P(AllStrategies, GpuStep, ::testing::ValuesIn(cases()),
                         [](const ::testing::TestParamInfo<Case>& info) {
                           const Case& c = info.param;
                           return c.strategy + "_" + dtype_name(c.dtype) + (c.causal ? "_causal_" : "_noncausal_") +
                                  c.attention + (c.variant == "default" ? "" : "_" + c.variant);
                         });

}  // namespace

int main(int argc, char** argv) {
  MPI_Init(&argc, &argv);
  ::testing::InitGoogleTest(&argc, argv);
  int rank = 0, world = 1;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  MPI_Comm_size(MPI_COMM_WORLD, &world);
  // Every rank of a node needs its own GPU; skip (77) when there are too few, on every rank.
  const int local = lss::node_position(MPI_COMM_WORLD).size;
  int enough = lss::cuda_device_count() >= local ? 1 : 0;
  MPI_Allreduce(MPI_IN_PLACE, &enough, 1, MPI_INT, MPI_MIN, MPI_COMM_WORLD);
  if (!enough) {
    if (rank == 0) std::printf("no CUDA device per rank (%d ranks on this node): skipped\n", local);
    MPI_Finalize();
    return 77;
  }
  if (rank != 0) {
    auto& listeners = ::testing::UnitTest::GetInstance()->listeners();
    delete listeners.Release(listeners.default_result_printer());
  }
  int rc = RUN_ALL_TESTS();
  MPI_Allreduce(MPI_IN_PLACE, &rc, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD);
  MPI_Finalize();
  return rc;
}
