#include "comm/communicator.h"

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <string>

#include <fmt/format.h>

#include "core/check.h"

namespace lss {

namespace {
double now_s() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}
}  // namespace

const char* coll_kind_name(CollKind k) {
  switch (k) {
    case CollKind::all_gather: return "all_gather";
    case CollKind::reduce_scatter: return "reduce_scatter";
    case CollKind::all_reduce: return "all_reduce";
    case CollKind::all_to_all: return "all_to_all";
    case CollKind::send: return "send";
    case CollKind::recv: return "recv";
    case CollKind::barrier: return "barrier";
  }
  return "?";
}

std::optional<CollKind> coll_kind_from_name(const std::string& name) {
  for (int k = 0; k < kNumCollKinds; ++k)
    if (name == coll_kind_name(static_cast<CollKind>(k))) return static_cast<CollKind>(k);
  return std::nullopt;
}

void require_symmetric_ctas_in_range(int64_t ctas, const std::string& as_given) {
  LSS_REQUIRE_INPUT(ctas >= 0 && ctas <= kMaxSymmetricCtas,
                    as_given + ": must be 0 (NCCL's pick) to " + std::to_string(kMaxSymmetricCtas));
}

void set_symmetric_ctas(int ctas) {
  require_symmetric_ctas_in_range(ctas, "--symmetric-ctas " + std::to_string(ctas));
  static int in_force = -1;
  LSS_REQUIRE_INPUT(in_force < 0 || in_force == ctas,
                    "--symmetric-ctas " + std::to_string(ctas) + ": this process set " + std::to_string(in_force) +
                        " before, and NCCL reads NCCL_SYM_CTAS once per process (run the two in separate processes)");
  in_force = ctas;
  if (ctas == 0) unsetenv("NCCL_SYM_CTAS");
  else setenv("NCCL_SYM_CTAS", std::to_string(ctas).c_str(), /*overwrite=*/1);
}

double bus_factor(CollKind kind, int n) {
  const double f = static_cast<double>(n - 1) / n;
  return kind == CollKind::all_reduce ? 2 * f : f;
}

int64_t CommCounts::total_calls() const {
  int64_t n = 0;
  for (auto c : calls) n += c;
  return n;
}
int64_t CommCounts::total_bytes() const {
  int64_t n = 0;
  for (auto b : bytes) n += b;
  return n;
}

Backend::Marker Communicator::start_timer() {
  if (timer_) return timer_->mark();
  Backend::Marker m;
  m.host_s = now_s();
  return m;
}

void Communicator::count(CollKind k, size_t bytes) {
  counts_.calls[static_cast<int>(k)] += 1;
  counts_.bytes[static_cast<int>(k)] += static_cast<int64_t>(bytes);
}

bool overlaps(const View& a, const View& b) {
  if (a.ptr == nullptr || b.ptr == nullptr || a.numel == 0 || b.numel == 0) return false;
  const auto* a0 = static_cast<const char*>(a.ptr);
  const auto* b0 = static_cast<const char*>(b.ptr);
  return a0 < b0 + b.bytes() && b0 < a0 + a.bytes();
}

void Communicator::check_all_gather(View send, View recv, const char* what) const {
  LSS_CHECK(send.dtype == recv.dtype && recv.numel == send.numel * size_,
            name_ + "." + what + ": recv must hold size x send elements of the same type");
  LSS_CHECK(!overlaps(send, recv) ||
                send.ptr == static_cast<const char*>(recv.ptr) + static_cast<size_t>(rank_) * send.bytes(),
            name_ + "." + what + ": send overlaps recv other than as its block rank() (in place)");
}

void Communicator::check_reduce_scatter(View send, View recv, const char* what) const {
  LSS_CHECK(send.dtype == recv.dtype && send.numel == recv.numel * size_,
            name_ + "." + what + ": send must hold size x recv elements of the same type");
  LSS_CHECK(!overlaps(send, recv) ||
                recv.ptr == static_cast<const char*>(send.ptr) + static_cast<size_t>(rank_) * recv.bytes(),
            name_ + "." + what + ": recv overlaps send other than as its block rank() (in place)");
}

void Communicator::check_placed(View part, View full, const std::vector<PlacedPiece>& pieces, bool gather,
                                const char* what) const {
  const std::string where = name_ + "." + what + ": ";
  LSS_CHECK(!gather || places_gathers(), where + "this communicator cannot place a gather's pieces (places_gathers())");
  LSS_CHECK(part.dtype == full.dtype && full.numel == part.numel * size_,
            where + "the full buffer must hold size x the rank's part, of the same type");
  LSS_CHECK(!overlaps(part, full), where + "send overlaps recv");
  // Each rank's pieces tile its part, and all pieces tile the full buffer: sorted, each starts
  // where the previous one ended.
  std::vector<std::vector<std::pair<int64_t, int64_t>>> src(static_cast<size_t>(size_));
  std::vector<std::pair<int64_t, int64_t>> dst;
  for (const PlacedPiece& pc : pieces) {
    LSS_CHECK(pc.rank >= 0 && pc.rank < size_ && pc.count > 0, where + "a piece of rank " + std::to_string(pc.rank) +
                                                                   " with " + std::to_string(pc.count) + " elements");
    src[static_cast<size_t>(pc.rank)].emplace_back(pc.src, pc.count);
    dst.emplace_back(pc.dst, pc.count);
  }
  auto tiles = [](std::vector<std::pair<int64_t, int64_t>> ranges, int64_t n) {
    std::sort(ranges.begin(), ranges.end());
    int64_t at = 0;
    for (const auto& [begin, count] : ranges) {
      if (begin != at) return false;
      at += count;
    }
    return at == n;
  };
  for (int q = 0; q < size_; ++q)
    LSS_CHECK(tiles(src[static_cast<size_t>(q)], part.numel),
              where + "rank " + std::to_string(q) + "'s pieces do not cover its part once");
  LSS_CHECK(tiles(dst, full.numel), where + "the pieces do not cover the full buffer once");
}

void Communicator::copy_pieces(View part, View full, const std::vector<PlacedPiece>& pieces, bool gather) {
  for (const PlacedPiece& pc : pieces) {
    const View p = part.slice(pc.src, pc.count), f = full.slice(pc.dst, pc.count);
    if (gather) local_copy(f, p);
    else local_copy(p, f);
  }
}

std::string Communicator::trace_detail(size_t bytes) const {
  const double mib = static_cast<double>(bytes) / (1 << 20);
  return (label_.empty() ? "" : label_ + ": ") + name_ + ", " +
         (mib >= 1 ? fmt::format("{:.4g} MiB", mib) : fmt::format("{} B", bytes));
}

void Communicator::finish(CollKind k, size_t bytes, const Backend::Marker& start) {
  count(k, bytes);
  if (timer_) {
    pending_.push_back({start, timer_->mark(), k});
    // A blocking collective runs on the caller's lane.
    if (timer_->tracing())
      timer_->add_trace_span(coll_kind_name(k), "compute", trace_detail(bytes), start, pending_.back().end, label_);
  } else {
    const double t = now_s() - start.host_s;
    counts_.seconds += t;
    counts_.seconds_by_kind[static_cast<int>(k)] += t;
    counts_.exposed_seconds += t;
  }
}

CommHandle Communicator::start(CollKind k, size_t bytes, View output, View input,
                               const std::function<void()>& enqueue) {
  ++in_flight_;
  if (!has_async_lane()) {
    const auto t0 = start_timer();
    enqueue();
    finish(k, bytes, t0);
    return {true, -1};
  }
  count(k, bytes);
  return {true, start_async(k, output, input, enqueue)};
}

void Communicator::wait(CommHandle& h) {
  if (!h.pending) return;
  if (h.id >= 0) wait_async(h.id);
  h = CommHandle{};
  --in_flight_;
}

void Communicator::require_idle(const char* what) const {
  // A blocking collective on the compute stream must not run beside one of the same group on the
  // communication stream: NCCL does not order them, and their kernels could wait on each other.
  LSS_CHECK(in_flight_ == 0, name_ + "." + what + ": " + std::to_string(in_flight_) +
                                 " asynchronous collectives of this group are still in flight (wait first)");
}

const CommCounts& Communicator::counts() const {
  LSS_CHECK(in_flight_ == 0, name_ + ": counts() read while " + std::to_string(in_flight_) +
                                 " asynchronous collectives were not waited for");
  for (const auto& p : pending_) {
    const double t = timer_->seconds_between(p.start, p.end);
    counts_.seconds += t;
    counts_.seconds_by_kind[static_cast<int>(p.kind)] += t;
    counts_.exposed_seconds += t;
  }
  pending_.clear();
  resolve_async(counts_);
  return counts_;
}

void Communicator::reset_counts() {
  counts();  // resolves (and so releases) what is pending
  counts_ = CommCounts{};
}

void Communicator::set_counts(const CommCounts& c) {
  counts();
  counts_ = c;
}

void Communicator::all_gather(View send, View recv) {
  require_idle("all_gather");
  check_all_gather(send, recv, "all_gather");
  if (size_ == 1) return local_copy(recv, send);
  const auto t0 = start_timer();
  do_all_gather(send, recv);
  finish(CollKind::all_gather, recv.bytes(), t0);
}

void Communicator::reduce_scatter(View send, View recv) {
  require_idle("reduce_scatter");
  check_reduce_scatter(send, recv, "reduce_scatter");
  if (size_ == 1) return local_copy(recv, send);
  const auto t0 = start_timer();
  do_reduce_scatter(send, recv);
  finish(CollKind::reduce_scatter, send.bytes(), t0);
}

void Communicator::all_reduce(View buf) {
  require_idle("all_reduce");
  if (size_ == 1) return;
  const auto t0 = start_timer();
  do_all_reduce(buf);
  finish(CollKind::all_reduce, buf.bytes(), t0);
}

void Communicator::all_to_all(View send, View recv) {
  require_idle("all_to_all");
  LSS_CHECK(send.dtype == recv.dtype && send.numel == recv.numel && send.numel % size_ == 0,
            name_ + ".all_to_all: send and recv must be equal and divide by the group size");
  if (size_ == 1) return local_copy(recv, send);
  const auto t0 = start_timer();
  do_all_to_all(send, recv);
  finish(CollKind::all_to_all, send.bytes(), t0);
}

void Communicator::all_gather_placed(View send, View recv, const std::vector<PlacedPiece>& pieces) {
  require_idle("all_gather_placed");
  check_placed(send, recv, pieces, true, "all_gather_placed");
  if (size_ == 1) {
    copy_pieces(send, recv, pieces, true);
    return;
  }
  const auto t0 = start_timer();
  do_all_gather_placed(send, recv, pieces);
  finish(CollKind::all_gather, recv.bytes(), t0);
}

CommHandle Communicator::start_all_gather_placed(View send, View recv, std::vector<PlacedPiece> pieces) {
  check_placed(send, recv, pieces, true, "start_all_gather_placed");
  if (size_ == 1) {
    copy_pieces(send, recv, pieces, true);
    return {};
  }
  return start(CollKind::all_gather, recv.bytes(), recv, send,
               [this, send, recv, pieces = std::move(pieces)] { do_all_gather_placed(send, recv, pieces); });
}

void Communicator::reduce_scatter_placed(View send, View recv, const std::vector<PlacedPiece>& pieces) {
  require_idle("reduce_scatter_placed");
  check_placed(recv, send, pieces, false, "reduce_scatter_placed");
  if (size_ == 1) {
    copy_pieces(recv, send, pieces, false);
    return;
  }
  const auto t0 = start_timer();
  do_reduce_scatter_placed(send, recv, pieces);
  finish(CollKind::reduce_scatter, send.bytes(), t0);
}

CommHandle Communicator::start_reduce_scatter_placed(View send, View recv, std::vector<PlacedPiece> pieces) {
  check_placed(recv, send, pieces, false, "start_reduce_scatter_placed");
  if (size_ == 1) {
    copy_pieces(recv, send, pieces, false);
    return {};
  }
  return start(CollKind::reduce_scatter, send.bytes(), recv, send,
               [this, send, recv, pieces = std::move(pieces)] { do_reduce_scatter_placed(send, recv, pieces); });
}

CommHandle Communicator::start_all_gather(View send, View recv) {
  check_all_gather(send, recv, "start_all_gather");
  if (size_ == 1) {
    local_copy(recv, send);
    return {};
  }
  return start(CollKind::all_gather, recv.bytes(), recv, send, [this, send, recv] { do_all_gather(send, recv); });
}

CommHandle Communicator::start_reduce_scatter(View send, View recv) {
  check_reduce_scatter(send, recv, "start_reduce_scatter");
  if (size_ == 1) {
    local_copy(recv, send);
    return {};
  }
  return start(CollKind::reduce_scatter, send.bytes(), recv, send,
               [this, send, recv] { do_reduce_scatter(send, recv); });
}

CommHandle Communicator::start_all_reduce(View buf) {
  if (size_ == 1) return {};
  return start(CollKind::all_reduce, buf.bytes(), buf, buf, [this, buf] { do_all_reduce(buf); });
}

void Communicator::send(View buf, int peer) {
  require_idle("send");
  LSS_CHECK(peer >= 0 && peer < size_ && peer != rank_, name_ + ".send: bad peer " + std::to_string(peer));
  const auto t0 = start_timer();
  do_send(buf, peer);
  finish(CollKind::send, buf.bytes(), t0);
}

void Communicator::recv(View buf, int peer) {
  require_idle("recv");
  LSS_CHECK(peer >= 0 && peer < size_ && peer != rank_, name_ + ".recv: bad peer " + std::to_string(peer));
  const auto t0 = start_timer();
  do_recv(buf, peer);
  finish(CollKind::recv, buf.bytes(), t0);
}

void Communicator::barrier() {
  require_idle("barrier");
  if (size_ == 1) return;
  const auto t0 = start_timer();
  do_barrier();
  finish(CollKind::barrier, 0, t0);
}

}  // namespace lss
