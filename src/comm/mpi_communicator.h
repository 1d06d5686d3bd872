// Communicator over MPI on host memory (the CPU backend's).
#pragma once
#include <mpi.h>

#include <functional>
#include <map>
#include <memory>

#include "comm/communicator.h"

namespace lss {

class MpiCommunicator : public Communicator {
 public:
  // Takes ownership of `comm` (freed in the destructor unless it is MPI_COMM_WORLD).
  // With LSS_DEFER_COLLECTIVES=1 in the environment, asynchronous collectives are deferred (a
  // test mode): start_* only fills the output with NaN and wait() runs the collective, so a
  // strategy that reads a result before waiting, or changes an input before waiting, computes
  // a wrong result that the exactness tests see. An in-place all-reduce keeps a copy of its
  // buffer at start and sums that copy at wait: whatever reads the buffer in between (another
  // collective too) reads NaN, whatever writes it is lost. Blocking collectives run as always.
  // `oversubscribed`: this node has more ranks than cores, so a rank waiting for a collective
  // sleeps between polls instead of spinning on a core that a rank it waits for needs.
  MpiCommunicator(std::string name, MPI_Comm comm, bool oversubscribed = false);
  ~MpiCommunicator() override;
  MPI_Comm handle() const { return comm_; }

 protected:
  void do_all_gather(View send, View recv) override;
  void do_reduce_scatter(View send, View recv) override;
  void do_all_reduce(View buf) override;
  void do_all_to_all(View send, View recv) override;
  void do_all_gather_placed(View send, View recv, const std::vector<PlacedPiece>& pieces) override;
  void do_reduce_scatter_placed(View send, View recv, const std::vector<PlacedPiece>& pieces) override;
  void do_send(View buf, int peer) override;
  void do_recv(View buf, int peer) override;
  void do_barrier() override;
  void local_copy(View dst, View src) override;
  bool has_async_lane() const override { return deferred_; }
  int64_t start_async(CollKind kind, View output, View input, const std::function<void()>& enqueue) override;
  void wait_async(int64_t id) override;

 private:
  MPI_Comm comm_;
  bool oversubscribed_ = false;
  bool deferred_ = false;
  std::map<int64_t, std::function<void()>> deferred_ops_;
  int64_t next_id_ = 0;
};

}  // namespace lss
