// Communicator over MPI on host memory (the CPU backend's).
#pragma once
#include <mpi.h>

#include <memory>

#include "comm/communicator.h"

namespace lss {

class MpiCommunicator : public Communicator {
 public:
  // Takes ownership of `comm` (freed in the destructor unless it is MPI_COMM_WORLD).
  MpiCommunicator(std::string name, MPI_Comm comm);
  ~MpiCommunicator() override;
  MPI_Comm handle() const { return comm_; }

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
  MPI_Comm comm_;
};

}  // namespace lss
