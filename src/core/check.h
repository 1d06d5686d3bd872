// Fail-loudly helpers: every library call is checked at the source; the message names the rank,
// host, file:line and the call, then the whole job is aborted so no rank is left hanging.
#pragma once
#include <stdexcept>
#include <string>

namespace lss {

// Thrown for bad user input (options, shapes). Caught in main: message on every rank, exit 2.
struct UsageError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

// Thrown when a buffer cannot be allocated (device or host). Caught in main: the message on this
// rank, then MPI_Abort, since the other ranks may already wait in a collective. The sweep runner
// recognises the message ("out of memory") and records the point as out-of-memory.
struct OutOfMemoryError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

// Prints "[rank R on HOST] FILE:LINE: CALL failed: DETAIL" to stderr and aborts every rank
// (MPI_Abort when MPI is up, std::abort otherwise). Never returns.
[[noreturn]] void fatal_error(const char* file, int line, const std::string& call,
                              const std::string& detail);

// Rank and host of this process for messages; valid before and after MPI is initialised.
int process_rank();
const std::string& host_name();

}  // namespace lss

#define LSS_CHECK(cond, detail)                                          \
  do {                                                                   \
    if (!(cond)) ::lss::fatal_error(__FILE__, __LINE__, #cond, (detail)); \
  } while (0)

#define LSS_REQUIRE_INPUT(cond, message)                 \
  do {                                                   \
    if (!(cond)) throw ::lss::UsageError(message);       \
  } while (0)
