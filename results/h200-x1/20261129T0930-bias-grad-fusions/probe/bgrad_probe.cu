// Probe (not committed): does cuBLASLt have DGELU_BGRAD / BGRADA / BGRADB algorithms for the
// MLP's data-gradient shape (bf16, fp32 accumulate) on this GPU, and how fast are they?
#include <cublasLt.h>
#include <cuda_bf16.h>
#include <cstdio>
#include <cstdlib>
#include <vector>
#define CK(x) do { auto e_ = (x); if (e_ != 0) { std::printf("%s:%d %s -> %d\n", __FILE__, __LINE__, #x, (int)e_); std::exit(1);} } while (0)
int main() {
  const int64_t N = 16384, C = 2048, F = 8192;
  cublasLtHandle_t h; CK(cublasLtCreate(&h));
  void *W, *dy, *dx, *aux, *bias, *ws; size_t wsb = 32 << 20;
  CK(cudaMalloc(&W, C * F * 2)); CK(cudaMalloc(&dy, N * C * 2)); CK(cudaMalloc(&dx, N * F * 2));
  CK(cudaMalloc(&aux, N * F * 2)); CK(cudaMalloc(&bias, F * 4)); CK(cudaMalloc(&ws, wsb));
  CK(cudaMemset(W, 0, C * F * 2)); CK(cudaMemset(dy, 0, N * C * 2)); CK(cudaMemset(aux, 0, N * F * 2));
  cudaEvent_t a, b; cudaEventCreate(&a); cudaEventCreate(&b);
  struct Case { const char* name; cublasLtEpilogue_t epi; int btype; };
  std::vector<Case> cases = {{"DEFAULT", CUBLASLT_EPILOGUE_DEFAULT, -1}, {"DGELU", CUBLASLT_EPILOGUE_DGELU, -1},
                             {"DGELU_BGRAD f32", CUBLASLT_EPILOGUE_DGELU_BGRAD, CUDA_R_32F},
                             {"DGELU_BGRAD bf16", CUBLASLT_EPILOGUE_DGELU_BGRAD, CUDA_R_16BF},
                             {"DGELU_BGRAD default", CUBLASLT_EPILOGUE_DGELU_BGRAD, -2}};
  for (auto& cs : cases) {
    // column-major: D (F x N) = W^T? our row-major dx (N,F) = dy (N,C) W (C,F): col-major dx^T (F x N) = W^T... as F x C (ld F) times dy^T C x N (ld C)
    cublasLtMatmulDesc_t d; CK(cublasLtMatmulDescCreate(&d, CUBLAS_COMPUTE_32F, CUDA_R_32F));
    cublasOperation_t n = CUBLAS_OP_N;
    CK(cublasLtMatmulDescSetAttribute(d, CUBLASLT_MATMUL_DESC_TRANSA, &n, sizeof(n)));
    CK(cublasLtMatmulDescSetAttribute(d, CUBLASLT_MATMUL_DESC_TRANSB, &n, sizeof(n)));
    CK(cublasLtMatmulDescSetAttribute(d, CUBLASLT_MATMUL_DESC_EPILOGUE, &cs.epi, sizeof(cs.epi)));
    if (cs.epi != CUBLASLT_EPILOGUE_DEFAULT) {
      CK(cublasLtMatmulDescSetAttribute(d, CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_POINTER, &aux, sizeof(aux)));
      int64_t ld = F; CK(cublasLtMatmulDescSetAttribute(d, CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_LD, &ld, sizeof(ld)));
      int32_t at = CUDA_R_16BF; CK(cublasLtMatmulDescSetAttribute(d, CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_DATA_TYPE, &at, sizeof(at)));
    }
    if (cs.epi == CUBLASLT_EPILOGUE_DGELU_BGRAD) {
      CK(cublasLtMatmulDescSetAttribute(d, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &bias, sizeof(bias)));
      if (cs.btype >= 0) { int32_t bt = cs.btype; CK(cublasLtMatmulDescSetAttribute(d, CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE, &bt, sizeof(bt))); }
    }
    cublasLtMatrixLayout_t la, lb, lc;
    CK(cublasLtMatrixLayoutCreate(&la, CUDA_R_16BF, F, C, F));
    CK(cublasLtMatrixLayoutCreate(&lb, CUDA_R_16BF, C, N, C));
    CK(cublasLtMatrixLayoutCreate(&lc, CUDA_R_16BF, F, N, F));
    cublasLtMatmulPreference_t p; CK(cublasLtMatmulPreferenceCreate(&p));
    CK(cublasLtMatmulPreferenceSetAttribute(p, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &wsb, sizeof(wsb)));
    cublasLtMatmulHeuristicResult_t r[8]; int cnt = 0;
    auto st = cublasLtMatmulAlgoGetHeuristic(h, d, la, lb, lc, lc, p, 8, r, &cnt);
    std::printf("%-22s heuristic status %d, %d algorithms\n", cs.name, (int)st, cnt);
    for (int i = 0; i < cnt && i < 3; ++i) {
      float al = 1, be = 0; float best = 1e9;
      for (int rep = 0; rep < 3; ++rep) {
        cudaEventRecord(a);
        for (int it = 0; it < 20; ++it)
          CK(cublasLtMatmul(h, d, &al, W, la, dy, lb, &be, dx, lc, dx, lc, &r[i].algo, ws, wsb, 0));
        cudaEventRecord(b); cudaEventSynchronize(b);
        float ms; cudaEventElapsedTime(&ms, a, b); if (ms / 20 < best) best = ms / 20;
      }
      std::printf("   algo %d: %.3f ms  (%.0f TFLOP/s), workspace %zu\n", i, best, 2.0 * N * C * F / best / 1e9, r[i].workspaceSize);
    }
    CK(cudaDeviceSynchronize());
  }
  return 0;
}
