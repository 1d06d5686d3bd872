// MPI error checking: the message names rank, host, file:line and the call, then aborts all ranks.
#pragma once
#include <mpi.h>

#include <string>

#include "core/check.h"

namespace lss {
std::string mpi_error_string(int code);
// Waits for a nonblocking call. MPICH's blocking calls spin without giving the core away, so on a
// node with more ranks than cores (CI runs 4 ranks on 2 cores) the waiting ranks kept the ones they
// waited for off the cores: the 4-rank exactness tests took 45-150x as long as the 2-rank ones.
// With `sleep_between_polls` a waiting rank sleeps 20 us between polls; otherwise it polls as
// MPICH does.
void complete_request(MPI_Request& request, bool sleep_between_polls);
}

#define LSS_MPI_CHECK(call)                                                          \
  do {                                                                               \
    const int lss_mpi_rc_ = (call);                                                  \
    if (lss_mpi_rc_ != MPI_SUCCESS)                                                  \
      ::lss::fatal_error(__FILE__, __LINE__, #call, ::lss::mpi_error_string(lss_mpi_rc_)); \
  } while (0)
