#include "comm/grid.h"

#include <algorithm>
#include <thread>

#include "comm/mpi_communicator.h"
#include "comm/mpi_util.h"

namespace lss {

void wait_for_ranks(MPI_Comm base) {
  MPI_Request request;
  LSS_MPI_CHECK(MPI_Ibarrier(base, &request));
  complete_request(request, /*sleep_between_polls=*/true);
}

NodePosition node_position(MPI_Comm base) {
  MPI_Comm node;
  LSS_MPI_CHECK(MPI_Comm_split_type(base, MPI_COMM_TYPE_SHARED, 0, MPI_INFO_NULL, &node));
  NodePosition pos;
  LSS_MPI_CHECK(MPI_Comm_rank(node, &pos.rank));
  LSS_MPI_CHECK(MPI_Comm_size(node, &pos.size));
  LSS_MPI_CHECK(MPI_Comm_free(&node));
  return pos;
}

GridSplit split_grid(MPI_Comm base, int P) {
  GridSplit s;
  Grid& g = s.layout;
  LSS_MPI_CHECK(MPI_Comm_size(base, &g.world));
  LSS_MPI_CHECK(MPI_Comm_rank(base, &g.rank));
  LSS_REQUIRE_INPUT(P >= 1, "--sp " + std::to_string(P) + ": must be at least 1");
  LSS_REQUIRE_INPUT(g.world % P == 0, "--sp " + std::to_string(P) + ": the world size " +
                                          std::to_string(g.world) + " (from the launcher) does not divide by it");
  g.P = P;
  g.R = g.world / P;
  g.p = g.rank % P;
  g.r = g.rank / P;
  LSS_MPI_CHECK(MPI_Comm_dup(base, &s.world));
  LSS_MPI_CHECK(MPI_Comm_split(base, g.r, g.p, &s.seq));
  LSS_MPI_CHECK(MPI_Comm_split(base, g.p, g.r, &s.data));
  return s;
}

Grid make_mpi_grid(MPI_Comm base, int P, int ranks_on_node) {
  if (ranks_on_node == 0) ranks_on_node = node_position(base).size;
  GridSplit s = split_grid(base, P);
  Grid g = std::move(s.layout);
  const int cores = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  const bool oversubscribed = ranks_on_node > cores;
  g.world_comm = std::make_unique<MpiCommunicator>("world", s.world, oversubscribed);
  g.seq = std::make_unique<MpiCommunicator>("sp", s.seq, oversubscribed);
  g.data = std::make_unique<MpiCommunicator>("dp", s.data, oversubscribed);
  return g;
}

}  // namespace lss
