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

// Returns once every rank of `base` has called it, sleeping between polls rather than spinning as
// MPICH's blocking calls do: ranks that arrive early (a test's rank 0 still computing its serial
// reference) leave the cores to the ranks still working, where a node has more ranks than cores.
// For set-up only: it adds up to ~0.1 ms. Collective over `base`.
void wait_for_ranks(MPI_Comm base);

// This rank's position among the ranks of `base` that share its node (one GPU per position).
struct NodePosition {
  int rank = 0, size = 1;
};
NodePosition node_position(MPI_Comm base);

// The grid's layout and its MPI groups, before any communicator is built on them: world = R x P
// over the ranks of `base`, rank w = r*P + p; throws UsageError when the world size does not
// divide by P. Collective over `base`. The three MPI communicators are the caller's to own.
struct GridSplit {
  Grid layout;  // world, rank, P, p, R, r filled; no communicators
  MPI_Comm world = MPI_COMM_NULL, seq = MPI_COMM_NULL, data = MPI_COMM_NULL;
};
GridSplit split_grid(MPI_Comm base, int P);

// Builds the grid over the ranks of `base` (MPI_COMM_WORLD for a run) with sequence groups of
// `P`; throws UsageError when the world size does not divide by P. Collective over `base`.
// `ranks_on_node` (node_position(base).size; 0: found here) decides whether the node has more
// ranks than cores, where the communicators wait for a collective off the core (MpiCommunicator).
Grid make_mpi_grid(MPI_Comm base, int P, int ranks_on_node = 0);

}  // namespace lss
