// A process grid of ranks that do not exist: `lssbench project` builds each rank of a grid larger
// than the machine in one process, so that the strategy lays out that rank's shards and reports
// its step's work (Strategy::bound_model) as it would on the real grid. Its communicators have
// the grid's sizes and this rank's positions but move no data: a collective on one is a bug of
// the caller, and stops the program naming the group.
#pragma once
#include "comm/grid.h"

namespace lss {

// Rank `rank` of a grid of `world` = R x P ranks with sequence groups of P (grid.h's layout);
// throws UsageError when P does not divide `world` or `rank` is outside it. `places_gathers`: what
// the real grid's sequence group answers (false for NCCL with --copy-engine-gathers).
Grid make_virtual_grid(int world, int P, int rank, bool places_gathers = true);

}  // namespace lss
