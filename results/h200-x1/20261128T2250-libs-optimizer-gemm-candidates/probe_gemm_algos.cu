// Probe: for each GEMM of the serial step (L4 C2048 T16K, bf16), how much faster than the
// heuristic's first cuBLASLt algorithm is the fastest of its first 16, each timed on the card in
// a loop long enough to hold it at its clocks. Decides whether the Gemm plans should time their
// candidates (PERFORMANCE.md, fourteenth session). Standalone: nvcc -O2 -arch=sm_90a -lcublasLt.
#include <cublasLt.h>
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#define CK(x)                                                                                   \
  do {                                                                                          \
    auto e_ = (x);                                                                              \
    if (e_ != 0) {                                                                              \
      std::fprintf(stderr, "%s:%d %s failed: %d\n", __FILE__, __LINE__, #x, static_cast<int>(e_)); \
      std::exit(1);                                                                             \
    }                                                                                           \
  } while (0)

struct Case {
  std::string name;
  int64_t M, N, K;  // column-major C (M x N) = op(A) (M x K) op(B) (K x N)
  bool ta, tb;
  int64_t lda, ldb;
  cudaDataType ctype;
  float beta;
  cublasLtEpilogue_t epi;
};

int main(int argc, char** argv) {
  const int64_t T = argc > 1 ? std::atoll(argv[1]) : 16384, C = 2048;
  // argv[2]: seconds each candidate runs back to back before its timed window (0: three rounds of
  // 30 calls in turn, as the first probe). At the card's power cap the ranking can change.
  const double heat_s = argc > 2 ? std::atof(argv[2]) : 0.0;
  const int reps = 30, max_algos = 16;
  struct Lin { const char* name; int64_t in, out; bool residual, gelu_out, gelu_in; };
  const Lin lins[] = {{"qkv", C, 3 * C, false, false, false}, {"proj", C, C, true, false, false},
                      {"fc", C, 4 * C, false, true, false}, {"mlp_proj", 4 * C, C, true, false, true}};
  std::vector<Case> cases;
  for (const Lin& l : lins) {
    cases.push_back({std::string(l.name) + " fwd", l.out, T, l.in, true, false, l.in, l.in, CUDA_R_16BF,
                     l.residual ? 1.f : 0.f, l.gelu_out ? CUBLASLT_EPILOGUE_GELU_AUX_BIAS : CUBLASLT_EPILOGUE_BIAS});
    cases.push_back({std::string(l.name) + " dgrad", l.in, T, l.out, false, false, l.in, l.out, CUDA_R_16BF, 0.f,
                     l.gelu_in ? CUBLASLT_EPILOGUE_DGELU : CUBLASLT_EPILOGUE_DEFAULT});
    cases.push_back({std::string(l.name) + " wgrad", l.in, l.out, T, false, true, l.in, l.out, CUDA_R_32F, 1.f,
                     CUBLASLT_EPILOGUE_DEFAULT});
  }
  cublasLtHandle_t h;
  CK(cublasLtCreate(&h));
  const size_t ws_bytes = 64ull << 20;
  void* ws;
  CK(cudaMalloc(&ws, ws_bytes));
  const size_t big = static_cast<size_t>(T) * 4 * C;  // largest operand, elements
  void *a, *b, *c, *aux, *bias;
  CK(cudaMalloc(&a, big * 2));
  CK(cudaMalloc(&b, big * 2));
  CK(cudaMalloc(&c, big * 4));
  CK(cudaMalloc(&aux, big * 2));
  CK(cudaMalloc(&bias, 4 * C * 4));
  // Small random-ish bf16 values (a zero matrix runs faster than data).
  {
    std::vector<__nv_bfloat16> host(big);
    for (size_t i = 0; i < big; ++i) host[i] = __float2bfloat16(static_cast<float>((i * 2654435761u) % 2001) / 1000.f - 1.f);
    CK(cudaMemcpy(a, host.data(), big * 2, cudaMemcpyHostToDevice));
    CK(cudaMemcpy(b, host.data(), big * 2, cudaMemcpyHostToDevice));
    CK(cudaMemcpy(aux, host.data(), big * 2, cudaMemcpyHostToDevice));
    CK(cudaMemset(c, 0, big * 4));
    CK(cudaMemset(bias, 0, 4 * C * 4));
  }
  cudaStream_t s;
  CK(cudaStreamCreate(&s));
  cudaEvent_t e0, e1;
  CK(cudaEventCreate(&e0));
  CK(cudaEventCreate(&e1));
  double total_first = 0, total_best = 0;
  std::printf("T=%lld C=%lld heat %.2f s; per case: the heuristic's first algorithm and the fastest of its first %d, ms per call\n",
              static_cast<long long>(T), static_cast<long long>(C), heat_s, max_algos);
  for (const Case& k : cases) {
    cublasLtMatmulDesc_t desc;
    CK(cublasLtMatmulDescCreate(&desc, CUBLAS_COMPUTE_32F, CUDA_R_32F));
    cublasOperation_t ta = k.ta ? CUBLAS_OP_T : CUBLAS_OP_N, tb = k.tb ? CUBLAS_OP_T : CUBLAS_OP_N;
    CK(cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_TRANSA, &ta, sizeof(ta)));
    CK(cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_TRANSB, &tb, sizeof(tb)));
    CK(cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_EPILOGUE, &k.epi, sizeof(k.epi)));
    if (k.epi == CUBLASLT_EPILOGUE_BIAS || k.epi == CUBLASLT_EPILOGUE_GELU_AUX_BIAS) {
      CK(cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &bias, sizeof(bias)));
      int32_t bt = CUDA_R_16BF;
      CK(cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE, &bt, sizeof(bt)));
    }
    if (k.epi == CUBLASLT_EPILOGUE_GELU_AUX_BIAS || k.epi == CUBLASLT_EPILOGUE_DGELU) {
      CK(cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_POINTER, &aux, sizeof(aux)));
      int64_t ld = k.M;
      CK(cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_LD, &ld, sizeof(ld)));
      int32_t at = CUDA_R_16BF;
      CK(cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_DATA_TYPE, &at, sizeof(at)));
    }
    cublasLtMatrixLayout_t la, lb, lc;
    CK(cublasLtMatrixLayoutCreate(&la, CUDA_R_16BF, k.ta ? k.K : k.M, k.ta ? k.M : k.K, k.lda));
    CK(cublasLtMatrixLayoutCreate(&lb, CUDA_R_16BF, k.tb ? k.N : k.K, k.tb ? k.K : k.N, k.ldb));
    CK(cublasLtMatrixLayoutCreate(&lc, k.ctype, k.M, k.N, k.M));
    cublasLtMatmulPreference_t pref;
    CK(cublasLtMatmulPreferenceCreate(&pref));
    uint64_t wsb = ws_bytes;
    CK(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &wsb, sizeof(wsb)));
    cublasLtMatmulHeuristicResult_t res[max_algos];
    int count = 0;
    CK(cublasLtMatmulAlgoGetHeuristic(h, desc, la, lb, lc, lc, pref, max_algos, res, &count));
    const float alpha = 1.f;
    std::vector<double> ms(count, 1e30);
    std::vector<std::vector<double>> seen(count);
    if (heat_s > 0) {
      for (int i = 0; i < count; ++i) {
        if (res[i].state != CUBLAS_STATUS_SUCCESS) continue;
        auto run = [&] {
          return cublasLtMatmul(h, desc, &alpha, a, la, b, lb, &k.beta, c, lc, c, lc, &res[i].algo, ws, ws_bytes, s);
        };
        if (run() != CUBLAS_STATUS_SUCCESS) continue;
        CK(cudaEventRecord(e0, s));
        CK(run());
        CK(cudaEventRecord(e1, s));
        CK(cudaEventSynchronize(e1));
        float one = 0;
        CK(cudaEventElapsedTime(&one, e0, e1));
        const int heat_reps = static_cast<int>(heat_s * 1e3 / std::max(0.01f, one));
        for (int r = 0; r < heat_reps; ++r) CK(run());
        const int window = std::max(5, static_cast<int>(50.0 / std::max(0.01f, one)));
        CK(cudaEventRecord(e0, s));
        for (int r = 0; r < window; ++r) CK(run());
        CK(cudaEventRecord(e1, s));
        CK(cudaEventSynchronize(e1));
        float t = 0;
        CK(cudaEventElapsedTime(&t, e0, e1));
        ms[i] = t / window;
      }
    }
    for (int pass = 0; pass < (heat_s > 0 ? 0 : 3); ++pass)
      for (int i = 0; i < count; ++i) {
        if (res[i].state != CUBLAS_STATUS_SUCCESS) continue;
        auto run = [&] {
          return cublasLtMatmul(h, desc, &alpha, a, la, b, lb, &k.beta, c, lc, c, lc, &res[i].algo, ws, ws_bytes, s);
        };
        if (run() != CUBLAS_STATUS_SUCCESS) { ms[i] = 1e30; continue; }
        CK(cudaEventRecord(e0, s));
        for (int r = 0; r < reps; ++r) CK(run());
        CK(cudaEventRecord(e1, s));
        CK(cudaEventSynchronize(e1));
        float t = 0;
        CK(cudaEventElapsedTime(&t, e0, e1));
        // Keep the median of the three passes: the lowest and highest fall out.
        seen[i].push_back(t / reps);
        if (seen[i].size() == 3) {
          auto v = seen[i];
          std::sort(v.begin(), v.end());
          ms[i] = v[1];
        }
      }
    int best = 0;
    for (int i = 1; i < count; ++i)
      if (ms[i] < ms[best]) best = i;
    const double flop = 2.0 * k.M * k.N * k.K;
    auto cfg = [&](int i) {
      uint16_t tile = 0, stages = 0;
      int32_t splitk = 0, swz = 0;
      uint16_t cluster = 0;
      size_t w = 0;
      cublasLtMatmulAlgoConfigGetAttribute(&res[i].algo, CUBLASLT_ALGO_CONFIG_TILE_ID, &tile, sizeof(tile), &w);
      cublasLtMatmulAlgoConfigGetAttribute(&res[i].algo, CUBLASLT_ALGO_CONFIG_STAGES_ID, &stages, sizeof(stages), &w);
      cublasLtMatmulAlgoConfigGetAttribute(&res[i].algo, CUBLASLT_ALGO_CONFIG_SPLITK_NUM, &splitk, sizeof(splitk), &w);
      cublasLtMatmulAlgoConfigGetAttribute(&res[i].algo, CUBLASLT_ALGO_CONFIG_CTA_SWIZZLING, &swz, sizeof(swz), &w);
      cublasLtMatmulAlgoConfigGetAttribute(&res[i].algo, CUBLASLT_ALGO_CONFIG_CLUSTER_SHAPE_ID, &cluster, sizeof(cluster), &w);
      char buf[96];
      std::snprintf(buf, sizeof buf, "tile %u stages %u splitk %d swizzle %d cluster %u", tile, stages, splitk, swz, cluster);
      return std::string(buf);
    };
    std::printf("%-16s M=%-5lld N=%-5lld K=%-5lld %d algos: first %.4f ms (%.0f TFLOP/s) best #%d %.4f ms (%.0f TFLOP/s) "
                "gain %.1f%%  [first: %s] [best: %s]\n",
                k.name.c_str(), static_cast<long long>(k.M), static_cast<long long>(k.N), static_cast<long long>(k.K),
                count, ms[0], flop / ms[0] / 1e9, best, ms[best], flop / ms[best] / 1e9, 100 * (1 - ms[best] / ms[0]),
                cfg(0).c_str(), cfg(best).c_str());
    std::printf("    all:");
    for (int i = 0; i < count; ++i) std::printf(" %.4f", ms[i]);
    std::printf("\n");
    total_first += ms[0];
    total_best += ms[best];
    CK(cublasLtMatmulPreferenceDestroy(pref));
    CK(cublasLtMatrixLayoutDestroy(la));
    CK(cublasLtMatrixLayoutDestroy(lb));
    CK(cublasLtMatrixLayoutDestroy(lc));
    CK(cublasLtMatmulDescDestroy(desc));
  }
  std::printf("one layer's GEMMs: first algorithms %.3f ms, fastest %.3f ms (%.1f%%); x4 layers: %.2f -> %.2f ms\n",
              total_first, total_best, 100 * (1 - total_best / total_first), 4 * total_first, 4 * total_best);
  return 0;
}
