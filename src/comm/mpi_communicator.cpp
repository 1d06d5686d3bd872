#include "comm/mpi_communicator.h"

#include <algorithm>
#include <chrono>
#include <climits>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "comm/mpi_util.h"

namespace lss {

std::string mpi_error_string(int code) {
  char buf[MPI_MAX_ERROR_STRING] = {};
  int len = 0;
  MPI_Error_string(code, buf, &len);
  return std::string(buf, static_cast<size_t>(len));
}

void complete_request(MPI_Request& request, bool sleep_between_polls) {
  for (int done = 0;;) {
    LSS_MPI_CHECK(MPI_Test(&request, &done, MPI_STATUS_IGNORE));
    if (done) return;
    if (sleep_between_polls) std::this_thread::sleep_for(std::chrono::microseconds(20));
  }
}

namespace {
MPI_Datatype mpi_type(DType t) {
  switch (t) {
    case DType::f32: return MPI_FLOAT;
    case DType::f64: return MPI_DOUBLE;
    case DType::i32: return MPI_INT;
    case DType::bf16: break;
  }
  ::lss::fatal_error(__FILE__, __LINE__, "mpi_type", "MPI communicator: bf16 buffers are not supported");
}

int mpi_count(int64_t n) {
  LSS_CHECK(n >= 0 && n <= INT_MAX, "MPI message of " + std::to_string(n) + " elements exceeds INT_MAX");
  return static_cast<int>(n);
}

int comm_rank(MPI_Comm c) {
  int r = 0;
  LSS_MPI_CHECK(MPI_Comm_rank(c, &r));
  return r;
}
int comm_size(MPI_Comm c) {
  int s = 0;
  LSS_MPI_CHECK(MPI_Comm_size(c, &s));
  return s;
}

}  // namespace

MpiCommunicator::MpiCommunicator(std::string name, MPI_Comm comm, bool oversubscribed)
    : Communicator(std::move(name), comm_rank(comm), comm_size(comm)), comm_(comm), oversubscribed_(oversubscribed) {
  // Errors are returned to LSS_MPI_CHECK, which reports the call before aborting.
  LSS_MPI_CHECK(MPI_Comm_set_errhandler(comm_, MPI_ERRORS_RETURN));
  const char* defer = std::getenv("LSS_DEFER_COLLECTIVES");
  deferred_ = defer != nullptr && std::string(defer) == "1";
}

int64_t MpiCommunicator::start_async(CollKind, View output, View input, const std::function<void()>& enqueue) {
  // A collective in place (an all-reduce, or a gather or reduce-scatter whose blocks share one
  // buffer) reads its input as it is now: keep a copy, restored at wait().
  std::shared_ptr<std::vector<char>> saved;
  if (overlaps(input, output)) {
    const auto* p = static_cast<const char*>(input.ptr);
    saved = std::make_shared<std::vector<char>>(p, p + input.bytes());
  }
  // Whatever reads the output before wait() reads NaN (quiet NaN bit patterns per dtype).
  auto fill = [&](auto pattern) {
    auto* p = static_cast<decltype(pattern)*>(output.ptr);
    std::fill(p, p + output.numel, pattern);
  };
  if (output.ptr != nullptr) switch (output.dtype) {
      case DType::f32: fill(uint32_t{0x7fc00000u}); break;
      case DType::f64: fill(uint64_t{0x7ff8000000000000ull}); break;
      case DType::bf16: fill(uint16_t{0x7fc0u}); break;
      case DType::i32: fill(int32_t{-1}); break;
    }
  if (saved)
    deferred_ops_[next_id_] = [saved, input, enqueue] {
      std::copy(saved->begin(), saved->end(), static_cast<char*>(input.ptr));
      enqueue();
    };
  else
    deferred_ops_[next_id_] = enqueue;
  return next_id_++;
}

void MpiCommunicator::wait_async(int64_t id) {
  auto it = deferred_ops_.find(id);
  LSS_CHECK(it != deferred_ops_.end(), name() + ": wait on an unknown collective");
  const std::function<void()> op = std::move(it->second);
  deferred_ops_.erase(it);
  op();
}

MpiCommunicator::~MpiCommunicator() {
  int finalized = 0;
  MPI_Finalized(&finalized);
  if (!finalized && comm_ != MPI_COMM_WORLD && comm_ != MPI_COMM_NULL) MPI_Comm_free(&comm_);
}

void MpiCommunicator::do_all_gather(View send, View recv) {
  // MPI forbids aliased buffers: in place (send is recv's block rank()) is MPI_IN_PLACE.
  const bool in_place = overlaps(send, recv);
  MPI_Request request;
  LSS_MPI_CHECK(MPI_Iallgather(in_place ? MPI_IN_PLACE : send.ptr, mpi_count(send.numel), mpi_type(send.dtype),
                               recv.ptr, mpi_count(send.numel), mpi_type(recv.dtype), comm_, &request));
  complete_request(request, oversubscribed_);
}

void MpiCommunicator::do_all_gather_placed(View send, View recv, const std::vector<PlacedPiece>& pieces) {
  // Rank-major into host scratch, then each piece to its place: host memory, so the copies are the
  // reference's cost only.
  std::vector<char> gathered(recv.bytes());
  MPI_Request request;
  LSS_MPI_CHECK(MPI_Iallgather(send.ptr, mpi_count(send.numel), mpi_type(send.dtype), gathered.data(),
                               mpi_count(send.numel), mpi_type(recv.dtype), comm_, &request));
  complete_request(request, oversubscribed_);
  const size_t es = dtype_size(send.dtype);
  for (const PlacedPiece& pc : pieces)
    std::memcpy(static_cast<char*>(recv.ptr) + static_cast<size_t>(pc.dst) * es,
                gathered.data() + static_cast<size_t>(pc.rank * send.numel + pc.src) * es,
                static_cast<size_t>(pc.count) * es);
}

void MpiCommunicator::do_reduce_scatter_placed(View send, View recv, const std::vector<PlacedPiece>& pieces) {
  // Each piece into rank-major host scratch, then the reduce-scatter.
  std::vector<char> rank_major(send.bytes());
  const size_t es = dtype_size(send.dtype);
  for (const PlacedPiece& pc : pieces)
    std::memcpy(rank_major.data() + static_cast<size_t>(pc.rank * recv.numel + pc.src) * es,
                static_cast<const char*>(send.ptr) + static_cast<size_t>(pc.dst) * es, static_cast<size_t>(pc.count) * es);
  MPI_Request request;
  LSS_MPI_CHECK(MPI_Ireduce_scatter_block(rank_major.data(), recv.ptr, mpi_count(recv.numel), mpi_type(send.dtype),
                                          MPI_SUM, comm_, &request));
  complete_request(request, oversubscribed_);
}

void MpiCommunicator::do_reduce_scatter(View send, View recv) {
  if (overlaps(send, recv)) {
    // In place (recv is send's block rank()): MPI_IN_PLACE reads all of send and writes this
    // rank's sum to its first block, from where it moves to block rank().
    MPI_Request request;
    LSS_MPI_CHECK(MPI_Ireduce_scatter_block(MPI_IN_PLACE, send.ptr, mpi_count(recv.numel), mpi_type(send.dtype),
                                            MPI_SUM, comm_, &request));
    complete_request(request, oversubscribed_);
    if (recv.ptr != send.ptr) std::memmove(recv.ptr, send.ptr, recv.bytes());
    return;
  }
  MPI_Request request;
  LSS_MPI_CHECK(MPI_Ireduce_scatter_block(send.ptr, recv.ptr, mpi_count(recv.numel), mpi_type(send.dtype), MPI_SUM,
                                          comm_, &request));
  complete_request(request, oversubscribed_);
}

void MpiCommunicator::do_all_reduce(View buf) {
  MPI_Request request;
  LSS_MPI_CHECK(MPI_Iallreduce(MPI_IN_PLACE, buf.ptr, mpi_count(buf.numel), mpi_type(buf.dtype), MPI_SUM, comm_,
                               &request));
  complete_request(request, oversubscribed_);
}

void MpiCommunicator::do_all_to_all(View send, View recv) {
  const int n = mpi_count(send.numel / size());
  MPI_Request request;
  LSS_MPI_CHECK(MPI_Ialltoall(send.ptr, n, mpi_type(send.dtype), recv.ptr, n, mpi_type(recv.dtype), comm_, &request));
  complete_request(request, oversubscribed_);
}

void MpiCommunicator::do_send(View buf, int peer) {
  MPI_Request request;
  LSS_MPI_CHECK(MPI_Isend(buf.ptr, mpi_count(buf.numel), mpi_type(buf.dtype), peer, 0, comm_, &request));
  complete_request(request, oversubscribed_);
}

void MpiCommunicator::do_recv(View buf, int peer) {
  MPI_Request request;
  LSS_MPI_CHECK(MPI_Irecv(buf.ptr, mpi_count(buf.numel), mpi_type(buf.dtype), peer, 0, comm_, &request));
  complete_request(request, oversubscribed_);
}

void MpiCommunicator::do_barrier() {
  MPI_Request request;
  LSS_MPI_CHECK(MPI_Ibarrier(comm_, &request));
  complete_request(request, oversubscribed_);
}

void MpiCommunicator::local_copy(View dst, View src) {
  if (dst.ptr != src.ptr) std::memcpy(dst.ptr, src.ptr, src.bytes());
}

}  // namespace lss
