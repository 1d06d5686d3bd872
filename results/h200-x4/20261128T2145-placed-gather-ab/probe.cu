// Throwaway probe (not part of the project): ncclAllGather of [K|V] rank-major vs the same bytes as
// 2P grouped ncclBroadcasts landing each rank's two zigzag chunks at their token positions.
#include <mpi.h>
#include <nccl.h>
#include <cuda_runtime.h>
#include <cstdio>
#include <cstdlib>
#include <vector>
#include <algorithm>
#define CK(x) do { auto e = (x); if (e != 0) { fprintf(stderr, "%s:%d %s -> %d\n", __FILE__, __LINE__, #x, (int)e); MPI_Abort(MPI_COMM_WORLD, 1);} } while (0)
int main(int argc, char** argv) {
  MPI_Init(&argc, &argv);
  int rank, P; MPI_Comm_rank(MPI_COMM_WORLD, &rank); MPI_Comm_size(MPI_COMM_WORLD, &P);
  CK(cudaSetDevice(rank));
  ncclUniqueId id; if (rank == 0) ncclGetUniqueId(&id);
  MPI_Bcast(&id, sizeof id, MPI_BYTE, 0, MPI_COMM_WORLD);
  ncclComm_t comm; CK(ncclCommInitRank(&comm, P, id, rank));
  cudaStream_t s; CK(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
  cudaEvent_t a, b; cudaEventCreate(&a); cudaEventCreate(&b);
  const size_t row = 2 * 2048;  // elements (bf16) per token: [k|v]
  for (long T : {16384L, 32768L, 65536L}) {
    const size_t Tl = T / P, c = Tl / 2;
    size_t local_n = Tl * row, full_n = T * row;
    void *local, *full; CK(cudaMalloc(&local, local_n * 2)); CK(cudaMalloc(&full, full_n * 2));
    cudaMemset(local, 1, local_n * 2);
    auto ag = [&] { CK(ncclAllGather(local, full, local_n, ncclBfloat16, comm, s)); };
    auto bc = [&] {
      CK(ncclGroupStart());
      for (int q = 0; q < P; ++q) {
        const size_t chunks[2] = {(size_t)q, (size_t)(2 * P - 1 - q)};
        for (int h = 0; h < 2; ++h)
          CK(ncclBroadcast((char*)local + h * c * row * 2, (char*)full + chunks[h] * c * row * 2, c * row, ncclBfloat16, q, comm, s));
      }
      CK(ncclGroupEnd());
    };
    auto p2p = [&] {
      CK(ncclGroupStart());
      for (int q = 0; q < P; ++q) {
        if (q == rank) continue;
        const size_t chunks[2] = {(size_t)q, (size_t)(2 * P - 1 - q)};
        for (int h = 0; h < 2; ++h) {
          CK(ncclSend((char*)local + h * c * row * 2, c * row, ncclBfloat16, q, comm, s));
          CK(ncclRecv((char*)full + chunks[h] * c * row * 2, c * row, ncclBfloat16, q, comm, s));
        }
      }
      CK(ncclGroupEnd());
      const size_t mine[2] = {(size_t)rank, (size_t)(2 * P - 1 - rank)};
      for (int h = 0; h < 2; ++h) CK(cudaMemcpyAsync((char*)full + mine[h] * c * row * 2, (char*)local + h * c * row * 2, c * row * 2, cudaMemcpyDeviceToDevice, s));
    };
    auto time = [&](auto f, const char* name) {
      for (int i = 0; i < 5; ++i) f();
      std::vector<float> ms;
      for (int i = 0; i < 20; ++i) {
        MPI_Barrier(MPI_COMM_WORLD); CK(cudaStreamSynchronize(s));
        cudaEventRecord(a, s); f(); cudaEventRecord(b, s); CK(cudaEventSynchronize(b));
        float m; cudaEventElapsedTime(&m, a, b); ms.push_back(m);
      }
      std::sort(ms.begin(), ms.end());
      float med = ms[ms.size() / 2], worst;
      MPI_Reduce(&med, &worst, 1, MPI_FLOAT, MPI_MAX, 0, MPI_COMM_WORLD);
      if (rank == 0) printf("T=%ld %-22s %8.3f ms  busbw %6.1f GB/s (output %zu MiB)\n", T, name, worst,
                            full_n * 2.0 * (P - 1) / P / (worst * 1e-3) / 1e9, full_n * 2 >> 20);
    };
    time(ag, "allgather");
    time(bc, "grouped broadcasts");
    time(p2p, "grouped send/recv");
    time(ag, "allgather again");
    cudaFree(local); cudaFree(full);
  }
  ncclCommDestroy(comm);
  MPI_Finalize();
}
