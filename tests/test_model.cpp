// The serial model: finite-difference gradient check, loss at initialisation, training on a
// fixed batch, determinism, the safetensors export and the FLOP formula.
#include <gtest/gtest.h>
#include <mpi.h>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <numbers>

#include "app/export.h"
#include "app/metrics.h"
#include "app/session.h"
#include "core/init.h"
#include "core/safetensors.h"

using namespace lss;

namespace {

RunConfig tiny(bool causal) {
  RunConfig rc;
  rc.model.L = 2;
  rc.model.C = 16;
  rc.model.H = 2;
  rc.model.T = 12;
  rc.model.T_max = 12;
  rc.model.B = 2;
  rc.model.causal = causal;
  rc.model.dtype = DType::f64;
  // A larger init than the default makes every gradient entry sizeable, so the relative error of
  // the finite differences is meaningful for all sampled entries.
  rc.model.init_std = 0.3;
  return rc;
}

std::string temp_path(const std::string& name) {
  return (std::filesystem::temp_directory_path() / ("lssbench-test-" + std::to_string(getpid()) + "-" + name)).string();
}

class GradCheck : public ::testing::TestWithParam<bool> {};

// Central differences, h = 1e-5, in fp64: truncation error O(h^2) ~ 1e-10 and rounding error
// ~ 1e-16/h ~ 1e-11 relative, so a correct gradient is within 1e-6 by a wide margin.
TEST_P(GradCheck, EveryParameterTensorMatchesFiniteDifferences) {
  Session s(tiny(GetParam()), MPI_COMM_SELF);
  s.forward_backward(0);
  ParamStore& store = s.strategy().params();
  // Every loss evaluation below recomputes the gradients, so keep the analytic ones first.
  std::vector<double> all_grads(store.numel());
  s.backend().copy_to_host(all_grads.data(), DType::f64, store.all_grads());
  const double h = 1e-5;
  for (const auto& e : store.entries()) {
    const int64_t n = e.spec.local_numel();
    const std::vector<double> grad(all_grads.begin() + e.offset, all_grads.begin() + e.offset + n);
    std::vector<double> param(n);
    s.backend().copy_to_host(param.data(), DType::f64, store.master(e.spec.name));
    double gmax = 0;
    for (double g : grad) gmax = std::max(gmax, std::abs(g));
    ASSERT_GT(gmax, 0.0) << e.spec.name << " has an all-zero gradient";
    // 6 sampled entries per tensor, spread by a fixed hash so every region is visited.
    for (int k = 0; k < 6; ++k) {
      const int64_t i = static_cast<int64_t>(hash_u64(77, static_cast<uint64_t>(k) + 1000u * e.offset) % static_cast<uint64_t>(n));
      auto loss_at = [&](double value) {
        std::vector<double> p = param;
        p[i] = value;
        s.backend().copy_from_host(store.master(e.spec.name), p.data(), DType::f64);
        store.refresh_compute_copy();
        return s.forward_backward(0);
      };
      const double fd = (loss_at(param[i] + h) - loss_at(param[i] - h)) / (2 * h);
      s.backend().copy_from_host(store.master(e.spec.name), param.data(), DType::f64);
      store.refresh_compute_copy();
      // Relative to the entry, floored at 1e-3 of the tensor's largest entry so that an entry
      // that is nearly zero is compared on the tensor's scale.
      const double denom = std::max({std::abs(fd), std::abs(grad[i]), 1e-3 * gmax});
      EXPECT_LT(std::abs(fd - grad[i]) / denom, 1e-6)
          << e.spec.name << "[" << i << "]: analytic " << grad[i] << ", finite difference " << fd;
    }
  }
}
INSTANTIATE_TEST_SUITE_P(CausalAndNot, GradCheck, ::testing::Values(true, false));

TEST(Model, InitialLossIsNearLogVocab) {
  // With init std 0.02, the logits have std 0.02*sqrt(C) (0.16 at C=64): the softmax is nearly
  // uniform, so the loss is ln(256) + O(var/2) ~ ln(256) + 0.013.
  RunConfig rc;
  rc.model.C = 64;
  rc.model.H = 4;
  rc.model.T = 64;
  rc.model.T_max = 64;
  rc.model.B = 2;
  Session s(rc, MPI_COMM_SELF);
  const double loss = s.forward_backward(0);
  EXPECT_NEAR(loss, std::log(256.0), 0.05);
}

TEST(Model, FiftyAdamWStepsOnOneBatchLowerTheLoss) {
  // Memorising one batch of 2 x 64 random bytes: the loss must fall below 40% of ln(256).
  RunConfig rc;
  rc.model.C = 64;
  rc.model.H = 4;
  rc.model.T = 64;
  rc.model.T_max = 64;
  rc.model.B = 2;
  rc.opt.lr = 3e-3;
  rc.opt.weight_decay = 0.0;
  Session s(rc, MPI_COMM_SELF);
  const double first = s.forward_backward(0);
  double last = first;
  for (int step = 1; step <= 50; ++step) {
    s.optimizer_step(step);
    last = s.forward_backward(0);
  }
  EXPECT_LT(last, 0.4 * first) << "first " << first << ", after 50 steps " << last;
}

// ParamStore::adamw_step steps neighbouring parameters in one backend call, each run with its
// own weight decay. With zero gradients and moments AdamW is the decay alone: p - lr (wd p) where
// the spec decays, p elsewhere; and nothing outside the stepped range, which cuts parameters.
TEST(Model, AdamWStepDecaysExactlyTheDecayingParameters) {
  Session s(tiny(true), MPI_COMM_SELF);
  ParamStore& store = s.strategy().params();
  const int64_t n = store.numel();
  std::vector<double> before(n), after(n);
  s.backend().copy_to_host(before.data(), DType::f64, store.all_params());
  store.zero_grads();
  OptimizerConfig opt;
  opt.lr = 0.01;
  opt.weight_decay = 0.1;
  const auto& entries = store.entries();
  ASSERT_GE(entries.size(), 3u);
  const int64_t begin = entries[1].offset + 3, end = entries.back().offset + 2;
  store.adamw_step(opt, 1, begin, end);
  s.backend().copy_to_host(after.data(), DType::f64, store.all_params());
  int decaying = 0, not_decaying = 0;
  for (const auto& e : entries) {
    (e.spec.decay ? decaying : not_decaying)++;
    const double wd = e.spec.decay ? opt.weight_decay : 0.0;
    for (int64_t i = e.offset; i < e.offset + e.spec.local_numel(); ++i) {
      const double expected = i >= begin && i < end ? before[i] - opt.lr * (wd * before[i]) : before[i];
      ASSERT_DOUBLE_EQ(after[i], expected) << e.spec.name << " element " << i - e.offset;
    }
  }
  EXPECT_GT(decaying, 0);
  EXPECT_GT(not_decaying, 0);
}

TEST(Model, SameSeedGivesBitIdenticalLossAndGradients) {
  auto run = [](uint64_t seed) {
    RunConfig rc = tiny(true);
    rc.model.dtype = DType::f32;
    rc.model.seed = seed;
    Session s(rc, MPI_COMM_SELF);
    const double loss = s.forward_backward(3);
    std::vector<double> g(s.strategy().params().numel());
    s.backend().copy_to_host(g.data(), DType::f64, s.strategy().params().all_grads());
    return std::make_pair(loss, g);
  };
  const auto a = run(5), b = run(5), c = run(6);
  EXPECT_EQ(std::memcmp(&a.first, &b.first, sizeof(double)), 0);
  EXPECT_EQ(a.second, b.second);
  EXPECT_NE(a.first, c.first);
}

TEST(Export, SafetensorsReadsBackWithShapesAndValues) {
  RunConfig rc = tiny(true);
  Session s(rc, MPI_COMM_SELF);
  s.forward_backward(0);
  const std::string path = temp_path("export.safetensors");
  std::filesystem::remove(path);
  export_step(s, 0, path);
  const auto params = s.gather_full(false);
  const auto grads = s.gather_full(true);
  const SafeTensorFile f = read_safetensors(path);
  const auto shapes = s.full_shapes();
  EXPECT_EQ(f.tensors.size(), 2 * shapes.size() + 2);
  for (const auto& [name, shape] : shapes) {
    ASSERT_TRUE(f.tensors.count(name)) << name;
    ASSERT_TRUE(f.tensors.count("grad." + name)) << name;
    EXPECT_EQ(f.tensors.at(name).shape, shape) << name;
    EXPECT_EQ(f.tensors.at(name).dtype, "F32");
    const auto pv = f.tensors.at(name).values(), gv = f.tensors.at("grad." + name).values();
    for (size_t i = 0; i < pv.size(); ++i) {
      EXPECT_EQ(pv[i], static_cast<double>(static_cast<float>(params.at(name)[i]))) << name << "[" << i << "]";
      EXPECT_EQ(gv[i], static_cast<double>(static_cast<float>(grads.at(name)[i]))) << name << "[" << i << "]";
    }
  }
  EXPECT_EQ(f.tensors.at("h.1.attn.c_attn.weight").shape, (std::vector<int64_t>{48, 16}));
  EXPECT_EQ(f.tensors.at("wpe").shape, (std::vector<int64_t>{12, 16}));
  // inputs (B, T): row b is sequence b; targets are the inputs shifted by one.
  const auto in = f.tensors.at("inputs"), tg = f.tensors.at("targets");
  EXPECT_EQ(in.dtype, "I32");
  EXPECT_EQ(in.shape, (std::vector<int64_t>{2, 12}));
  std::vector<int32_t> tb_in(24), tb_tg(24);
  s.data().fill(0, 0, 2, 0, 12, tb_in.data(), tb_tg.data());
  const auto iv = in.values(), tv = tg.values();
  for (int b = 0; b < 2; ++b)
    for (int t = 0; t < 12; ++t) {
      EXPECT_EQ(iv[b * 12 + t], tb_in[t * 2 + b]);
      EXPECT_EQ(tv[b * 12 + t], tb_tg[t * 2 + b]);
      if (t + 1 < 12) EXPECT_EQ(tv[b * 12 + t], iv[b * 12 + t + 1]);
    }
  // Never overwritten.
  EXPECT_THROW(export_step(s, 0, path), std::runtime_error);
  std::filesystem::remove(path);
}

TEST(Metrics, FlopFormulaMatchesAHandCount) {
  // L=2, C=16, H=2, T=12, B=2, V=256. Per layer forward by hand:
  //   QKV 2*24*16*48 = 36864, out-projection 2*24*16*16 = 12288, MLP 2 * 2*24*16*64 = 98304
  //   (24 rows = B*T), attention scores + values 2 * 2*B*T*T*C = 4*2*144*16 = 18432 (x1/2 causal).
  //   LM head 2*24*16*256 = 196608.
  ModelConfig m;
  m.L = 2;
  m.C = 16;
  m.H = 2;
  m.T = 12;
  m.T_max = 12;
  m.B = 2;
  m.causal = false;
  const double layer = 36864 + 12288 + 98304 + 18432;
  EXPECT_DOUBLE_EQ(model_flops(m).forward, 2 * layer + 196608);
  EXPECT_DOUBLE_EQ(model_flops(m).step, 3 * (2 * layer + 196608));
  m.causal = true;
  EXPECT_DOUBLE_EQ(model_flops(m).forward, 2 * (layer - 9216) + 196608);
}

TEST(Metrics, PercentilesInterpolate) {
  EXPECT_DOUBLE_EQ(percentile({4, 1, 3, 2}, 50), 2.5);
  EXPECT_DOUBLE_EQ(percentile({1, 2, 3, 4, 5}, 10), 1.4);
  EXPECT_DOUBLE_EQ(percentile({7}, 90), 7);
}

TEST(Data, FileBytesAreCutIntoSequences) {
  const std::string path = temp_path("data.bin");
  {
    std::ofstream out(path, std::ios::binary);
    for (int i = 0; i < 100; ++i) out.put(static_cast<char>(i));
  }
  ModelConfig m;
  m.T = 10;
  m.B = 2;
  DataSource d(m, path);
  std::vector<int32_t> in(20), tg(20);
  d.fill(1, 0, 2, 0, 10, in.data(), tg.data());
  // Step 1, sequence b is global sequence 2 + b, starting at byte (2 + b) * T.
  for (int t = 0; t < 10; ++t)
    for (int b = 0; b < 2; ++b) {
      EXPECT_EQ(in[t * 2 + b], (2 + b) * 10 + t);
      EXPECT_EQ(tg[t * 2 + b], (2 + b) * 10 + t + 1);
    }
  std::filesystem::remove(path);
}

}  // namespace
