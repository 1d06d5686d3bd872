// Communicator over NCCL on device memory, bootstrapped through MPI: one ncclComm per group
// (sequence, data, world). Blocking collectives run on the backend's (compute) stream; the
// asynchronous ones on a communication stream that the grid's groups share, so that collectives
// of different groups stay in program order with each other.
#pragma once
#include <cuda_runtime.h>
#include <mpi.h>
#include <nccl.h>

#include <memory>
#include <vector>

#include "comm/communicator.h"
#include "comm/grid.h"

namespace lss {

class NcclCommunicator : public Communicator {
 public:
  // Collective over `mpi_comm`: rank 0 makes the unique id and broadcasts it over MPI. The
  // asynchronous collectives go to `comm_stream` (shared by the grid; may be null: then start_*
  // run on `stream` at once, as blocking calls).
  // gather_memory: where the group's gathered buffers live and how NCCL runs its all-gathers on
  // them (GatherMemory). Outside `plain`, symmetric_memory() hands those buffers out.
  NcclCommunicator(std::string name, MPI_Comm mpi_comm, cudaStream_t stream,
                   std::shared_ptr<CUstream_st> comm_stream = nullptr,
                   GatherMemory gather_memory = GatherMemory::plain);
  ~NcclCommunicator() override;

  SymmetricMemory* symmetric_memory() override { return blocks_.get(); }
  bool scatters_in_symmetric_memory() const override { return gather_memory_ == GatherMemory::symmetric; }

 protected:
  void do_all_gather(View send, View recv) override;
  void do_reduce_scatter(View send, View recv) override;
  void do_all_reduce(View buf) override;
  void do_all_to_all(View send, View recv) override;
  void do_all_gather_placed(View send, View recv, const std::vector<PlacedPiece>& pieces) override;
  void do_reduce_scatter_placed(View send, View recv, const std::vector<PlacedPiece>& pieces) override;
  bool places_gathers() const override { return gather_memory_ != GatherMemory::copy_engine; }
  void do_send(View buf, int peer) override;
  void do_recv(View buf, int peer) override;
  void do_barrier() override;
  void local_copy(View dst, View src) override;
  bool has_async_lane() const override { return comm_stream_ != nullptr; }
  int64_t start_async(CollKind kind, View output, View input, const std::function<void()>& enqueue) override;
  void wait_async(int64_t id) override;
  void resolve_async(CommCounts& c) const override;

 private:
  // One asynchronous collective: events on the communication stream around it, and on the
  // compute stream around the wait (their distance is the compute stream's stall).
  struct AsyncOp {
    CollKind kind;
    size_t bytes = 0;    // as counted (communicator.h's byte convention)
    std::string detail{};  // the trace span's detail, taken at the start (its label in force then)
    std::string label{};   // that label alone
    cudaEvent_t start = nullptr, end = nullptr, wait_begin = nullptr, wait_end = nullptr;
  };
  // resolve_async's spans of one finished collective (the timing backend is tracing).
  void trace(const AsyncOp& op) const;
  // Blocks from ncclMemAlloc, each registered with the communicator: as one symmetric window
  // (copy_engine, symmetric) or as a local registration (registered).
  class RegisteredBlocks final : public SymmetricMemory {
   public:
    explicit RegisteredBlocks(NcclCommunicator& owner) : owner_(owner) {}
    void* allocate(size_t bytes) override;
    // Whether [ptr, ptr + bytes) lies inside one block.
    bool holds(const void* ptr, size_t bytes) const;
    // Deregisters and frees every block (the device must be done with them).
    void release_all();

   private:
    struct Block {
      char* ptr;
      size_t bytes;
      ncclWindow_t window;  // copy_engine, symmetric
      void* handle;         // registered
    };
    NcclCommunicator& owner_;
    std::vector<Block> blocks_;
  };
  ncclComm_t comm_ = nullptr;
  GatherMemory gather_memory_ = GatherMemory::plain;
  std::unique_ptr<RegisteredBlocks> blocks_;  // outside GatherMemory::plain
  cudaStream_t stream_;          // where do_* enqueue: the compute stream, or the comm stream inside start_async
  cudaStream_t compute_stream_;
  std::shared_ptr<CUstream_st> comm_stream_;
  MPI_Comm mpi_comm_;
  mutable std::vector<AsyncOp> ops_;
};

// The grid of comm/grid.h with NCCL communicators on `stream` (world = R x P as make_mpi_grid),
// sharing one communication stream for their asynchronous collectives.
// seq_gather_memory: the sequence group's gathered buffers (GatherMemory); the other groups' are plain.
// symmetric_ctas (GatherMemory::symmetric): the blocks NCCL's symmetric kernels run on, 1 to
// kMaxSymmetricCtas, or 0 for NCCL's own pick (set_symmetric_ctas).
Grid make_nccl_grid(MPI_Comm base, int P, cudaStream_t stream, GatherMemory seq_gather_memory = GatherMemory::plain,
                    int symmetric_ctas = kDefaultSymmetricCtas);

// NCCL version this process loaded ("2.28.3").
std::string nccl_loaded_version();

}  // namespace lss
