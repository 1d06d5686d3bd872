// Communicator over NCCL on device memory, bootstrapped through MPI: one ncclComm per group
// (sequence, data, world), every collective on the backend's stream.
#pragma once
#include <cuda_runtime.h>
#include <mpi.h>
#include <nccl.h>

#include "comm/communicator.h"
#include "comm/grid.h"

namespace lss {

class NcclCommunicator : public Communicator {
 public:
  // Collective over `mpi_comm`: rank 0 makes the unique id and broadcasts it over MPI.
  NcclCommunicator(std::string name, MPI_Comm mpi_comm, cudaStream_t stream);
  ~NcclCommunicator() override;

 protected:
  void do_all_gather(View send, View recv) override;
  void do_reduce_scatter(View send, View recv) override;
  void do_all_reduce(View buf) override;
  void do_all_to_all(View send, View recv) override;
  void do_send(View buf, int peer) override;
  void do_recv(View buf, int peer) override;
  void do_barrier() override;
  void local_copy(View dst, View src) override;

 private:
  ncclComm_t comm_ = nullptr;
  cudaStream_t stream_;
  MPI_Comm mpi_comm_;
};

// The grid of comm/grid.h with NCCL communicators on `stream` (world = R x P as make_mpi_grid).
Grid make_nccl_grid(MPI_Comm base, int P, cudaStream_t stream);

// NCCL version this process loaded ("2.28.3").
std::string nccl_loaded_version();

}  // namespace lss
