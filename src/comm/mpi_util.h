// MPI error checking: the message names rank, host, file:line and the call, then aborts all ranks.
#pragma once
#include <mpi.h>

#include <string>

#include "core/check.h"

namespace lss {
std::string mpi_error_string(int code);
}

#define LSS_MPI_CHECK(call)                                                          \
  do {                                                                               \
    const int lss_mpi_rc_ = (call);                                                  \
    if (lss_mpi_rc_ != MPI_SUCCESS)                                                  \
      ::lss::fatal_error(__FILE__, __LINE__, #call, ::lss::mpi_error_string(lss_mpi_rc_)); \
  } while (0)
