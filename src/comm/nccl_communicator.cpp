#include "comm/nccl_communicator.h"

#include <cstdio>
#include <cstdlib>
#include <string>

#include "comm/mpi_util.h"
#include "kernels/cuda/cuda_check.h"

// Checked NCCL call: a failure names rank, host, file:line and the call, then aborts every rank.
#define LSS_NCCL_CHECK(call)                                                                        \
  do {                                                                                              \
    const ncclResult_t lss_nccl_rc_ = (call);                                                       \
    if (lss_nccl_rc_ != ncclSuccess)                                                                \
      ::lss::fatal_error(__FILE__, __LINE__, #call, ::lss::nccl_error_detail(lss_nccl_rc_));        \
  } while (0)

namespace lss {

namespace {

// NCCL's own message is often just "unhandled system error"; the last-error string carries the
// detail (which transport, which peer). ncclGetLastError ignores its argument and reports the
// calling thread's last error, so no communicator is needed.
std::string nccl_error_detail(ncclResult_t rc) {
  std::string detail = ncclGetErrorString(rc);
  const char* last = ncclGetLastError(nullptr);
  if (last != nullptr && *last != '\0') detail += std::string(" (") + last + ")";
  return detail;
}

ncclDataType_t nccl_type(DType t) {
  switch (t) {
    case DType::bf16: return ncclBfloat16;
    case DType::f32: return ncclFloat;
    case DType::f64: return ncclDouble;
    case DType::i32: return ncclInt32;
  }
  ::lss::fatal_error(__FILE__, __LINE__, "nccl_type", "NCCL communicator: unknown dtype");
}

size_t count_of(const View& v) {
  LSS_CHECK(v.numel >= 0, "NCCL message of negative size " + std::to_string(v.numel));
  return static_cast<size_t>(v.numel);
}

// NVLink multicast (NVLS) is NCCL's default on NVSwitch machines, and on the shared GPU hosts a
// program using it can put every GPU of the host out of service for a day: NCCL_NVLS_ENABLE=0
// must hold whatever environment the launcher passed. An explicit setting is left alone. NCCL
// reads it when it first initialises, i.e. in the first ncclGetUniqueId / ncclCommInitRank.
void default_nvls_off() { setenv("NCCL_NVLS_ENABLE", "0", /*overwrite=*/0); }

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

// Takes ownership of `mpi_comm` as MpiCommunicator does (freed in the destructor unless it is
// MPI_COMM_WORLD), since make_nccl_grid hands over the communicators it splits. The NCCL
// communicator binds to the CUDA device current at construction: the backend must have chosen
// this rank's device (cudaSetDevice) before the grid is built.
NcclCommunicator::NcclCommunicator(std::string name, MPI_Comm mpi_comm, cudaStream_t stream,
                                   std::shared_ptr<CUstream_st> comm_stream, GatherMemory gather_memory)
    : Communicator(std::move(name), comm_rank(mpi_comm), comm_size(mpi_comm)),
      gather_memory_(gather_memory),
      stream_(stream),
      compute_stream_(stream),
      comm_stream_(std::move(comm_stream)),
      mpi_comm_(mpi_comm) {
  LSS_MPI_CHECK(MPI_Comm_set_errhandler(mpi_comm_, MPI_ERRORS_RETURN));
  default_nvls_off();
  // The base class turns every collective of a one-rank group into a local copy (and send/recv
  // need a peer), so such a group never reaches NCCL: skip its setup and the device buffers NCCL
  // would allocate for it (the "dp" group when there is one data replica).
  if (size() == 1) return;
  ncclUniqueId id{};
  if (rank() == 0) LSS_NCCL_CHECK(ncclGetUniqueId(&id));
  LSS_MPI_CHECK(MPI_Bcast(&id, static_cast<int>(sizeof(id)), MPI_BYTE, 0, mpi_comm_));
  ncclConfig_t config = NCCL_CONFIG_INITIALIZER;
  if (gather_memory_ == GatherMemory::copy_engine) config.CTAPolicy = NCCL_CTA_POLICY_ZERO;
  if (gather_memory_ != GatherMemory::plain) blocks_ = std::make_unique<RegisteredBlocks>(*this);
  LSS_NCCL_CHECK(ncclCommInitRankConfig(&comm_, size(), id, rank(), &config));
}

void* NcclCommunicator::RegisteredBlocks::allocate(size_t bytes) {
  void* ptr = nullptr;
  LSS_NCCL_CHECK(ncclMemAlloc(&ptr, bytes));
  if (owner_.gather_memory_ == GatherMemory::registered) {
    void* handle = nullptr;
    LSS_NCCL_CHECK(ncclCommRegister(owner_.comm_, ptr, bytes, &handle));
    blocks_.push_back({static_cast<char*>(ptr), bytes, nullptr, handle});
    return ptr;
  }
  ncclWindow_t window = nullptr;
  LSS_NCCL_CHECK(ncclCommWindowRegister(owner_.comm_, ptr, bytes, &window, NCCL_WIN_COLL_SYMMETRIC));
  // NCCL registers nothing, and says nothing, where it has no symmetric memory (GPUs of the
  // group not all peer-to-peer on one node, or CUDA's VMM turned off): its collectives would
  // then quietly run on the ring kernels.
  LSS_REQUIRE_INPUT(window != nullptr,
                    std::string(owner_.gather_memory_ == GatherMemory::copy_engine
                                    ? "--copy-engine-gathers"
                                    : "--symmetric-collectives (bench_collectives --symmetric)") +
                        ": NCCL has no symmetric memory for group '" + owner_.name() +
                        "' (it needs every GPU of the group on one node with peer-to-peer access and NCCL_CUMEM_ENABLE "
                        "not 0); run without the option");
  blocks_.push_back({static_cast<char*>(ptr), bytes, window, nullptr});
  return ptr;
}

bool NcclCommunicator::RegisteredBlocks::holds(const void* ptr, size_t bytes) const {
  const auto* p = static_cast<const char*>(ptr);
  for (const Block& b : blocks_)
    if (p >= b.ptr && p + bytes <= b.ptr + b.bytes) return true;
  return false;
}

void NcclCommunicator::RegisteredBlocks::release_all() {
  // Called from the destructor: failures are printed, not fatal.
  for (const Block& b : blocks_) {
    const ncclResult_t deregistered = b.window != nullptr ? ncclCommWindowDeregister(owner_.comm_, b.window)
                                                          : ncclCommDeregister(owner_.comm_, b.handle);
    if (deregistered != ncclSuccess || ncclMemFree(b.ptr) != ncclSuccess)
      std::fprintf(stderr, "[rank %d] releasing a registered block of '%s' failed\n", process_rank(),
                   owner_.name().c_str());
  }
  blocks_.clear();
}

NcclCommunicator::~NcclCommunicator() {
  // A destructor must not abort the job (it may run while another error is being reported), so
  // failures here are printed, not fatal.
  for (AsyncOp& op : ops_)
    for (cudaEvent_t e : {op.start, op.end, op.wait_begin, op.wait_end})
      if (e != nullptr) cudaEventDestroy(e);
  if (blocks_) {
    // The blocks' last users may still be in flight on either stream.
    if (cudaStreamSynchronize(compute_stream_) != cudaSuccess ||
        (comm_stream_ && cudaStreamSynchronize(comm_stream_.get()) != cudaSuccess))
      std::fprintf(stderr, "[rank %d] synchronising before releasing the registered blocks of '%s' failed\n",
                   process_rank(), name().c_str());
    blocks_->release_all();
  }
  if (comm_ != nullptr) {
    const ncclResult_t rc = ncclCommDestroy(comm_);
    if (rc != ncclSuccess)
      std::fprintf(stderr, "[rank %d] ncclCommDestroy(%s) failed: %s\n", process_rank(), name().c_str(),
                   ncclGetErrorString(rc));
  }
  int finalized = 0;
  MPI_Finalized(&finalized);
  if (!finalized && mpi_comm_ != MPI_COMM_WORLD && mpi_comm_ != MPI_COMM_NULL) MPI_Comm_free(&mpi_comm_);
}

void NcclCommunicator::do_all_gather(View send, View recv) {
  if (gather_memory_ == GatherMemory::copy_engine)
    LSS_CHECK(blocks_->holds(send.ptr, send.bytes()) && blocks_->holds(recv.ptr, recv.bytes()),
              name() + ".all_gather: a buffer outside the symmetric windows would run on SM kernels, not the copy "
                       "engines (allocate gather buffers with Backend::alloc_symmetric)");
  LSS_NCCL_CHECK(ncclAllGather(send.ptr, recv.ptr, count_of(send), nccl_type(send.dtype), comm_, stream_));
}

void NcclCommunicator::do_all_gather_placed(View send, View recv, const std::vector<PlacedPiece>& pieces) {
  // One broadcast per piece from its rank straight to its place, all in one group (one launch, as
  // PyTorch's uneven all-gather does): on 4 x H200 as fast as ncclAllGather at 32K-64K tokens of
  // [K|V] and 9% slower at 16K (PERFORMANCE.md, thirteenth session), with no reorder copy after.
  const size_t es = dtype_size(send.dtype);
  const ncclDataType_t type = nccl_type(send.dtype);
  LSS_NCCL_CHECK(ncclGroupStart());
  for (const PlacedPiece& pc : pieces)
    LSS_NCCL_CHECK(ncclBroadcast(static_cast<const char*>(send.ptr) + static_cast<size_t>(pc.src) * es,
                                 static_cast<char*>(recv.ptr) + static_cast<size_t>(pc.dst) * es,
                                 static_cast<size_t>(pc.count), type, pc.rank, comm_, stream_));
  LSS_NCCL_CHECK(ncclGroupEnd());
}

void NcclCommunicator::do_reduce_scatter_placed(View send, View recv, const std::vector<PlacedPiece>& pieces) {
  // One reduce per piece to its rank, all in one group (one launch); the reduce-scatter's kernels
  // also with --copy-engine-gathers, like every reduce-scatter.
  const size_t es = dtype_size(send.dtype);
  const ncclDataType_t type = nccl_type(send.dtype);
  LSS_NCCL_CHECK(ncclGroupStart());
  for (const PlacedPiece& pc : pieces)
    LSS_NCCL_CHECK(ncclReduce(static_cast<const char*>(send.ptr) + static_cast<size_t>(pc.dst) * es,
                              static_cast<char*>(recv.ptr) + static_cast<size_t>(pc.src) * es,
                              static_cast<size_t>(pc.count), type, ncclSum, pc.rank, comm_, stream_));
  LSS_NCCL_CHECK(ncclGroupEnd());
}

void NcclCommunicator::do_reduce_scatter(View send, View recv) {
  LSS_NCCL_CHECK(
      ncclReduceScatter(send.ptr, recv.ptr, count_of(recv), nccl_type(send.dtype), ncclSum, comm_, stream_));
}

void NcclCommunicator::do_all_reduce(View buf) {
  LSS_NCCL_CHECK(ncclAllReduce(buf.ptr, buf.ptr, count_of(buf), nccl_type(buf.dtype), ncclSum, comm_, stream_));
}

void NcclCommunicator::do_all_to_all(View send, View recv) {
  // Every block is read from `send` while blocks of `recv` are being written, in any order.
  LSS_CHECK(send.ptr != recv.ptr, name() + ".all_to_all: send and recv must be different buffers");
  const int64_t n = send.numel / size();
  const size_t block_bytes = static_cast<size_t>(n) * dtype_size(send.dtype);
  const ncclDataType_t type = nccl_type(send.dtype);
  auto* sp = static_cast<const char*>(send.ptr);
  auto* rp = static_cast<char*>(recv.ptr);
  // One group, so that all pairs proceed together instead of deadlocking on each other's order;
  // the own block goes through NCCL too (a copy inside the same kernel launch).
  LSS_NCCL_CHECK(ncclGroupStart());
  for (int peer = 0; peer < size(); ++peer) {
    LSS_NCCL_CHECK(ncclSend(sp + peer * block_bytes, static_cast<size_t>(n), type, peer, comm_, stream_));
    LSS_NCCL_CHECK(ncclRecv(rp + peer * block_bytes, static_cast<size_t>(n), type, peer, comm_, stream_));
  }
  LSS_NCCL_CHECK(ncclGroupEnd());
}

void NcclCommunicator::do_send(View buf, int peer) {
  LSS_NCCL_CHECK(ncclSend(buf.ptr, count_of(buf), nccl_type(buf.dtype), peer, comm_, stream_));
}

void NcclCommunicator::do_recv(View buf, int peer) {
  LSS_NCCL_CHECK(ncclRecv(buf.ptr, count_of(buf), nccl_type(buf.dtype), peer, comm_, stream_));
}

void NcclCommunicator::do_barrier() {
  // NCCL has no barrier: a one-element all-reduce completes on a rank only after every rank has
  // reached it, and the stream sync makes the host wait for that (and for all earlier work). The
  // element comes from the stream-ordered pool: cheap after the first barrier, and outside the
  // backend's memory accounting (four bytes). Its value is irrelevant; it is zeroed only so that
  // compute-sanitizer's initcheck stays quiet.
  void* scratch = nullptr;
  LSS_CUDA_CHECK(cudaMallocAsync(&scratch, sizeof(int32_t), stream_));
  LSS_CUDA_CHECK(cudaMemsetAsync(scratch, 0, sizeof(int32_t), stream_));
  LSS_NCCL_CHECK(ncclAllReduce(scratch, scratch, 1, ncclInt32, ncclSum, comm_, stream_));
  LSS_CUDA_CHECK(cudaFreeAsync(scratch, stream_));
  LSS_CUDA_CHECK(cudaStreamSynchronize(stream_));
}

void NcclCommunicator::local_copy(View dst, View src) {
  if (dst.ptr != src.ptr)
    LSS_CUDA_CHECK(cudaMemcpyAsync(dst.ptr, src.ptr, src.bytes(), cudaMemcpyDeviceToDevice, stream_));
}

int64_t NcclCommunicator::start_async(CollKind kind, View output, View input, const std::function<void()>& enqueue) {
  AsyncOp op{kind, kind == CollKind::reduce_scatter ? input.bytes() : output.bytes()};
  if (timer() && timer()->tracing()) {
    op.detail = trace_detail(op.bytes);
    op.label = trace_label();
  }
  cudaEvent_t ready = nullptr;
  LSS_CUDA_CHECK(cudaEventCreateWithFlags(&ready, cudaEventDisableTiming));
  for (cudaEvent_t* e : {&op.start, &op.end, &op.wait_begin, &op.wait_end}) LSS_CUDA_CHECK(cudaEventCreate(e));
  // The collective reads what the compute stream has written so far.
  LSS_CUDA_CHECK(cudaEventRecord(ready, compute_stream_));
  LSS_CUDA_CHECK(cudaStreamWaitEvent(comm_stream_.get(), ready, 0));
  LSS_CUDA_CHECK(cudaEventDestroy(ready));
  LSS_CUDA_CHECK(cudaEventRecord(op.start, comm_stream_.get()));
  stream_ = comm_stream_.get();
  enqueue();
  stream_ = compute_stream_;
  LSS_CUDA_CHECK(cudaEventRecord(op.end, comm_stream_.get()));
  ops_.push_back(op);
  return static_cast<int64_t>(ops_.size()) - 1;
}

void NcclCommunicator::wait_async(int64_t id) {
  AsyncOp& op = ops_.at(static_cast<size_t>(id));
  LSS_CUDA_CHECK(cudaEventRecord(op.wait_begin, compute_stream_));
  LSS_CUDA_CHECK(cudaStreamWaitEvent(compute_stream_, op.end, 0));
  LSS_CUDA_CHECK(cudaEventRecord(op.wait_end, compute_stream_));
}

void NcclCommunicator::trace(const AsyncOp& op) const {
  const auto origin = static_cast<cudaEvent_t>(timer()->trace_origin().device.get());
  LSS_CHECK(origin != nullptr, name() + ": the trace's origin is not a CUDA event");
  const auto since_origin = [&](cudaEvent_t e) {
    float ms = 0;
    LSS_CUDA_CHECK(cudaEventElapsedTime(&ms, origin, e));
    return 1e-3 * static_cast<double>(ms);
  };
  timer()->add_trace_span(
      {coll_kind_name(op.kind), "comm", op.detail, since_origin(op.start), since_origin(op.end), op.label});
  // The compute lane's stall at the wait: only where it stood still.
  const double wait_begin = since_origin(op.wait_begin), wait_end = since_origin(op.wait_end);
  if (wait_end > wait_begin)
    timer()->add_trace_span(
        {std::string("wait ") + coll_kind_name(op.kind), "compute", op.detail, wait_begin, wait_end, op.label});
}

void NcclCommunicator::resolve_async(CommCounts& c) const {
  for (AsyncOp& op : ops_) {
    float in_collective_ms = 0, stall_ms = 0;
    LSS_CUDA_CHECK(cudaEventSynchronize(op.wait_end));
    LSS_CUDA_CHECK(cudaEventElapsedTime(&in_collective_ms, op.start, op.end));
    LSS_CUDA_CHECK(cudaEventElapsedTime(&stall_ms, op.wait_begin, op.wait_end));
    c.seconds += in_collective_ms * 1e-3;
    c.seconds_by_kind[static_cast<int>(op.kind)] += in_collective_ms * 1e-3;
    c.exposed_seconds += stall_ms * 1e-3;
    if (timer() && timer()->tracing()) trace(op);
    for (cudaEvent_t e : {op.start, op.end, op.wait_begin, op.wait_end}) LSS_CUDA_CHECK(cudaEventDestroy(e));
  }
  ops_.clear();
}

Grid make_nccl_grid(MPI_Comm base, int P, cudaStream_t stream, GatherMemory seq_gather_memory, int symmetric_ctas) {
  if (seq_gather_memory == GatherMemory::symmetric) set_symmetric_ctas(symmetric_ctas);
  GridSplit s = split_grid(base, P);
  Grid g = std::move(s.layout);
  cudaStream_t raw = nullptr;
  // At the highest priority: a collective's blocks then take the first SMs that the compute
  // beside it frees instead of queueing behind its remaining blocks (on 2 x H200, lss at T = 32K
  // with its three options: the collectives' time on their stream 22.6-23.3 -> 16.1-16.3 ms a
  // step, the step -0.6%; lss's defaults and megatron_sp unchanged: PERFORMANCE.md, twenty-ninth
  // session).
  int least = 0, greatest = 0;
  LSS_CUDA_CHECK(cudaDeviceGetStreamPriorityRange(&least, &greatest));
  LSS_CUDA_CHECK(cudaStreamCreateWithPriority(&raw, cudaStreamNonBlocking, greatest));
  // Destroyed with the last communicator holding it; a failure there is printed, not fatal.
  std::shared_ptr<CUstream_st> comm_stream(raw, [](cudaStream_t st) {
    if (cudaStreamDestroy(st) != cudaSuccess) std::fprintf(stderr, "cudaStreamDestroy(comm stream) failed\n");
  });
  g.world_comm = std::make_unique<NcclCommunicator>("world", s.world, stream, comm_stream);
  g.seq = std::make_unique<NcclCommunicator>("sp", s.seq, stream, comm_stream, seq_gather_memory);
  g.data = std::make_unique<NcclCommunicator>("dp", s.data, stream, comm_stream);
  return g;
}

std::string nccl_loaded_version() {
  int v = 0;
  LSS_NCCL_CHECK(ncclGetVersion(&v));
  // NCCL_VERSION(X,Y,Z) is X*10000 + Y*100 + Z since 2.9, X*1000 + Y*100 + Z before.
  const int major = v >= 20900 ? v / 10000 : v / 1000;
  const int minor = v >= 20900 ? (v % 10000) / 100 : (v % 1000) / 100;
  const int patch = v % 100;
  return std::to_string(major) + "." + std::to_string(minor) + "." + std::to_string(patch);
}

}  // namespace lss
