// The process grid: world = R x P. Rank w = r*P + p sits at sequence position p (0..P-1) of data
// replica r (0..R-1); sequence groups are P consecutive ranks (on one node where possible, since
// they carry the per-layer traffic), data groups are the R ranks with the same p.
#pragma once
#include <mpi.h>

#include <memory>

#include "comm/communicator.h"

namespace lss {

struct Grid {
  int world = 1, rank = 0;
  int P = 1, p = 0;  // sequence (or tensor) group size and position
  int R = 1, r = 0;  // data group size and position
  std::unique_ptr<Communicator> world_comm;
  std::unique_ptr<Communicator> seq;   // the P ranks of one sequence ("sp" group)
  std::unique_ptr<Communicator> data;  // the R ranks holding the same segment ("dp" group)
};

// Builds the grid over the ranks of `base` (MPI_COMM_WORLD for a run) with sequence groups of
// `P`; throws UsageError when the world size does not divide by P. Collective over `base`.
Grid make_mpi_grid(MPI_Comm base, int P);

}  // namespace lss
