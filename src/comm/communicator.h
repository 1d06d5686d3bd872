// The communicator interface: collectives on one group of ranks, with every call and its bytes
// counted by kind. Implementations: MPI over host memory (CPU backend, src/comm), NCCL over device
// memory (CUDA backend).
//
// Byte convention (that of nccl-tests' "size"; the README's formulas use it):
//   all_gather: bytes of the gathered (output) buffer; reduce_scatter: bytes of the input buffer;
//   all_reduce: bytes of the buffer; all_to_all: bytes of the input buffer; send/recv: message.
// A group of one rank moves nothing: its collectives are local copies and are not counted.
//
// Asynchronous collectives (start_* and wait) let a strategy overlap communication with compute:
// on NCCL they run on a communication stream shared by the grid's groups, after the compute
// stream's work enqueued so far, and wait() orders the compute stream's later work after them.
// The MPI communicator has no second lane: its start_* run the collective at once.
#pragma once
#include <array>
#include <compare>
#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "core/backend.h"

namespace lss {

// Where a group's gathered (and with `symmetric` reduce-scattered) buffers live on NCCL, and so how
// NCCL moves their bytes (lssbench's --copy-engine-gathers, --registered-gathers,
// --symmetric-collectives):
//   plain        ordinary device memory; NCCL's kernels copy through their own staging buffers.
//   copy_engine  ncclMemAlloc blocks in symmetric windows, the communicator at NCCL's zero-CTA
//                policy: NCCL then runs the all-gathers on the GPUs' copy engines, which it does
//                for buffers in those windows only, so an all-gather on any other buffer stops the
//                run (it would fall back to the kernels unseen). The other collectives keep their
//                kernels, and gathers are not placed (the copy engines take whole rank blocks).
//   registered   ncclMemAlloc blocks registered with ncclCommRegister: NCCL's ring kernels then
//                write into the peers' buffers directly (no staging copy) on fewer channels (NCCL
//                2.28 on one node: 16, not 24). 2.28 registers no reduce-scatter or reduce, and a
//                collective on other memory runs as with plain.
//   symmetric    ncclMemAlloc blocks in symmetric windows at NCCL's default CTA policy: NCCL 2.28
//                then runs every all-gather, reduce-scatter and all-reduce whose buffers are all
//                in those windows on its symmetric kernels (loads and stores to the peers'
//                memory over NVLink, without the ring's staging copies), on the blocks
//                make_nccl_grid's symmetric_ctas sets (NCCL's own pick, the fewest within 2.5% of
//                its modelled peak, is 9 on 2 x H200 and slower than the ring alone; at 24 a 256
//                MiB all-gather is 31% faster than the ring). With lssbench's
//                --symmetric-collectives the strategies take their sequence-group
//                reduce-scatters' buffers from the windows too (scatters_in_symmetric_memory); a
//                collective on other memory, e.g. the gradients', runs on the ring kernels.
//                Placed gathers and reduce-scatters are grouped broadcasts and reduces, which
//                have no symmetric kernels.
enum class GatherMemory { plain, copy_engine, registered, symmetric };
// The most blocks NCCL 2.28's symmetric kernels take (its ncclSymkMaxBlocks): --symmetric-ctas's limit.
inline constexpr int kMaxSymmetricCtas = 64;
// --symmetric-ctas's default: the ring's channel count on 2 x H200. There, at 24 blocks, the
// symmetric kernels moved 256 MiB 26-31% faster than the ring; 32 blocks were within 2% of that,
// 16 up to 11% slower.
inline constexpr int kDefaultSymmetricCtas = 24;
// Sets the blocks of NCCL's symmetric kernels, process-wide: NCCL_SYM_CTAS, NCCL's only knob for
// them that leaves its ring kernels alone (a communicator's minCTAs would also widen the ring),
// and read once per process, at the first symmetric kernel; 0 unsets it (NCCL's own pick, the
// fewest blocks its model puts within 2.5% of the link: 9 on 2 x H200, 7-45% slower alone than
// the ring's 24: PERFORMANCE.md, thirty-sixth and thirty-seventh sections). A later call with
// another count stops the run, since NCCL would keep the first.
// Only the environment variable: it is here, outside the NCCL backend, so that the CPU build tests
// its checks.
void set_symmetric_ctas(int ctas);
// Fails (UsageError) unless 0 <= ctas <= kMaxSymmetricCtas; `as_given` is the option as the
// user wrote it ("--symmetric-ctas 65"), for the message.
void require_symmetric_ctas_in_range(int64_t ctas, const std::string& as_given);

enum class CollKind : int { all_gather, reduce_scatter, all_reduce, all_to_all, send, recv, barrier };
inline constexpr int kNumCollKinds = 7;
const char* coll_kind_name(CollKind k);
// The kind coll_kind_name(kind) names; nullopt for any other text.
std::optional<CollKind> coll_kind_from_name(const std::string& name);
// nccl-tests' bus factor: the bytes a rank of a group of n moves per byte of the collective's
// buffer (this file's convention: the gathered, scattered or reduced whole), 2(n-1)/n for an
// all-reduce, (n-1)/n otherwise. busbw = bytes / time x bus_factor.
double bus_factor(CollKind kind, int n);

struct CommCounts {
  std::array<int64_t, kNumCollKinds> calls{};
  std::array<int64_t, kNumCollKinds> bytes{};
  double seconds = 0.0;  // time inside collectives: host clock (MPI) or device events (NCCL)
  std::array<double, kNumCollKinds> seconds_by_kind{};
  // Time the caller's work stood still for communication: the whole of a blocking collective,
  // and for an asynchronous one the stall of the compute stream at wait().
  double exposed_seconds = 0.0;

  int64_t total_calls() const;
  int64_t total_bytes() const;
  bool operator==(const CommCounts& o) const { return calls == o.calls && bytes == o.bytes; }
};

// Whether two buffers share any byte.
bool overlaps(const View& a, const View& b);

// One piece of a placed all-gather: rank `rank`'s send elements [src, src + count) land at
// recv[dst, dst + count); of a placed reduce-scatter, the inverse: send[dst, dst + count), summed
// over the ranks, lands at rank `rank`'s recv[src, src + count).
struct PlacedPiece {
  int rank = 0;
  int64_t src = 0, count = 0, dst = 0;
  auto operator<=>(const PlacedPiece&) const = default;
};

// An asynchronous collective in flight: wait() on it before using its buffers; wait() empties the
// handle, so a second wait() on it does nothing.
struct CommHandle {
  bool pending = false;  // started and not waited for
  int64_t id = -1;       // the lane's id; -1 when it ran at once
};

class Communicator {
 public:
  Communicator(std::string name, int rank, int size) : name_(std::move(name)), rank_(rank), size_(size) {}
  virtual ~Communicator() = default;

  const std::string& name() const { return name_; }
  int rank() const { return rank_; }
  int size() const { return size_; }

  // recv (size * send.numel), rank-major: recv[r*n .. (r+1)*n) = send of rank r. In place when
  // send is recv's block rank() (the only overlap allowed).
  void all_gather(View send, View recv);
  // send (size * recv.numel) summed over ranks; this rank keeps block rank(). In place when recv
  // is send's block rank() (the only overlap allowed); the rest of send is then left undefined.
  void reduce_scatter(View send, View recv);
  // buf summed over ranks, in place.
  void all_reduce(View buf);
  // send and recv (size * n): block r of send goes to rank r, block r of recv came from rank r.
  void all_to_all(View send, View recv);
  // all_gather with recv laid out by `pieces` instead of rank-major (lss's zigzag chunks land at
  // their token positions): every rank passes the same pieces, which cover each rank's send once
  // and recv once; send must not overlap recv. Counted as an all-gather of recv's bytes. Only where
  // places_gathers(); elsewhere the caller gathers rank-major and moves the pieces itself.
  void all_gather_placed(View send, View recv, const std::vector<PlacedPiece>& pieces);
  // Whether all_gather_placed runs here (NCCL's copy-engine all-gathers cannot: they take whole
  // rank-major buffers in symmetric windows).
  virtual bool places_gathers() const { return true; }
  // reduce_scatter with send laid out by `pieces` instead of rank-major (the inverse of
  // all_gather_placed, with the same pieces: lss's zigzag [dK|dV] summed from token order into
  // each rank's chunks); send must not overlap recv. Counted as a reduce-scatter of send's bytes.
  void reduce_scatter_placed(View send, View recv, const std::vector<PlacedPiece>& pieces);
  void send(View buf, int peer);
  void recv(View buf, int peer);
  void barrier();

  // Asynchronous all-gather, reduce-scatter and all-reduce (same contracts as above). The buffers
  // must stay alive and unchanged until wait(); buffers freed after wait() are safe to reuse.
  CommHandle start_all_gather(View send, View recv);
  CommHandle start_reduce_scatter(View send, View recv);
  CommHandle start_all_reduce(View buf);
  CommHandle start_all_gather_placed(View send, View recv, std::vector<PlacedPiece> pieces);
  CommHandle start_reduce_scatter_placed(View send, View recv, std::vector<PlacedPiece> pieces);
  void wait(CommHandle& h);
  // Started collectives not waited for yet.
  int64_t in_flight() const { return in_flight_; }

  // Counts so far; resolves the pending device timings first (waiting for them).
  const CommCounts& counts() const;
  void reset_counts();
  void set_counts(const CommCounts& c);
  // Memory whose buffers this group's all-gathers may address on every rank alike (NCCL's
  // symmetric windows, for copy-engine all-gathers); null where the communicator has none.
  virtual SymmetricMemory* symmetric_memory() { return nullptr; }
  // Whether this group's reduce-scatters should take their buffers from symmetric_memory() as its
  // gathers do (GatherMemory::symmetric: NCCL's symmetric kernels then run them).
  virtual bool scatters_in_symmetric_memory() const { return false; }
  // Time collectives with `backend`'s markers (device events on cuda, where a collective only
  // enqueues work and a host clock would measure the enqueueing). Without it: host clock.
  void time_with(Backend* backend) { timer_ = backend; }

 protected:
  virtual void do_all_gather(View send, View recv) = 0;
  virtual void do_reduce_scatter(View send, View recv) = 0;
  virtual void do_all_reduce(View buf) = 0;
  virtual void do_all_to_all(View send, View recv) = 0;
  virtual void do_all_gather_placed(View send, View recv, const std::vector<PlacedPiece>& pieces) = 0;
  virtual void do_reduce_scatter_placed(View send, View recv, const std::vector<PlacedPiece>& pieces) = 0;
  virtual void do_send(View buf, int peer) = 0;
  virtual void do_recv(View buf, int peer) = 0;
  virtual void do_barrier() = 0;
  // Local copy used by groups of one rank.
  virtual void local_copy(View dst, View src) = 0;
  // The asynchronous lane (NCCL: the communication stream). Without one, start_* run at once.
  virtual bool has_async_lane() const { return false; }
  // Runs `enqueue` (which calls a do_* method; it holds its operands by value) on the
  // asynchronous lane; returns an id for wait_async. `output` is what the collective will write,
  // `input` what it reads (they overlap when it runs in place). The lane's implementation times it
  // and counts the stall at wait in resolve_async.
  virtual int64_t start_async(CollKind, View /*output*/, View /*input*/, const std::function<void()>& enqueue) {
    enqueue();
    return -1;
  }
  virtual void wait_async(int64_t) {}
  // Adds the times of finished asynchronous collectives to `c` (waiting for them); while the
  // timing backend traces, also each one's span on the "comm" lane and its wait's stall on the
  // compute lane.
  virtual void resolve_async(CommCounts&) const {}
  // The backend that times the collectives (time_with), or null.
  Backend* timer() const { return timer_; }
  // A trace span's detail for a collective of `bytes` on this group, with the label in force:
  // "K/V all-gather: sp, 256 MiB".
  std::string trace_detail(size_t bytes) const;
  // The label in force (CommLabel): what the collectives started now are for; empty if none.
  const std::string& trace_label() const { return label_; }

 private:
  // Starts timing one collective; finish() counts it.
  struct Pending {
    Backend::Marker start, end;
    CollKind kind;
  };
  Backend::Marker start_timer();
  void finish(CollKind k, size_t bytes, const Backend::Marker& start);
  void count(CollKind k, size_t bytes);
  // The operand shapes of a gather / reduce-scatter, blocking or started (`what` names the call).
  void check_all_gather(View send, View recv, const char* what) const;
  void check_reduce_scatter(View send, View recv, const char* what) const;
  // The operands of a placed gather (part: send, full: recv) or reduce-scatter (full: send, part:
  // recv) and their pieces.
  void check_placed(View part, View full, const std::vector<PlacedPiece>& pieces, bool gather, const char* what) const;
  // A group of one's placed collective: each piece copied between the rank's part and the full
  // buffer (into full for a gather, into part for a reduce-scatter).
  void copy_pieces(View part, View full, const std::vector<PlacedPiece>& pieces, bool gather);
  CommHandle start(CollKind k, size_t bytes, View output, View input, const std::function<void()>& enqueue);
  void require_idle(const char* what) const;
  friend class CommLabel;
  std::string name_;
  std::string label_;  // what the collectives started now are for, as a CommLabel set it (else empty)
  int rank_, size_;
  Backend* timer_ = nullptr;
  mutable CommCounts counts_;
  mutable std::vector<Pending> pending_;
  int64_t in_flight_ = 0;
};

// Names the collectives a communicator starts while it lives (a step trace's span detail); the
// label before it comes back at its end.
class CommLabel {
 public:
  CommLabel(Communicator& comm, std::string label) : comm_(comm), previous_(std::move(comm.label_)) {
    comm_.label_ = std::move(label);
  }
  ~CommLabel() { comm_.label_ = std::move(previous_); }
  CommLabel(const CommLabel&) = delete;
  CommLabel& operator=(const CommLabel&) = delete;

 private:
  Communicator& comm_;
  std::string previous_;
};

}  // namespace lss
