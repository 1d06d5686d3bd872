#include "comm/communicator.h"

#include <chrono>

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

void Communicator::finish(CollKind k, size_t bytes, const Backend::Marker& start) {
  counts_.calls[static_cast<int>(k)] += 1;
  counts_.bytes[static_cast<int>(k)] += static_cast<int64_t>(bytes);
  if (timer_) {
    pending_.push_back({start, timer_->mark(), k});
  } else {
    const double t = now_s() - start.host_s;
    counts_.seconds += t;
    counts_.seconds_by_kind[static_cast<int>(k)] += t;
  }
}

const CommCounts& Communicator::counts() const {
  for (const auto& p : pending_) {
    const double t = timer_->seconds_between(p.start, p.end);
    counts_.seconds += t;
    counts_.seconds_by_kind[static_cast<int>(p.kind)] += t;
  }
  pending_.clear();
  return counts_;
}

void Communicator::reset_counts() {
  pending_.clear();
  counts_ = CommCounts{};
}

void Communicator::set_counts(const CommCounts& c) {
  pending_.clear();
  counts_ = c;
}

void Communicator::all_gather(View send, View recv) {
  LSS_CHECK(send.dtype == recv.dtype && recv.numel == send.numel * size_,
            name_ + ".all_gather: recv must hold size x send elements of the same type");
  if (size_ == 1) return local_copy(recv, send);
  const auto t0 = start_timer();
  do_all_gather(send, recv);
  finish(CollKind::all_gather, recv.bytes(), t0);
}

void Communicator::reduce_scatter(View send, View recv) {
  LSS_CHECK(send.dtype == recv.dtype && send.numel == recv.numel * size_,
            name_ + ".reduce_scatter: send must hold size x recv elements of the same type");
  if (size_ == 1) return local_copy(recv, send);
  const auto t0 = start_timer();
  do_reduce_scatter(send, recv);
  finish(CollKind::reduce_scatter, send.bytes(), t0);
}

void Communicator::all_reduce(View buf) {
  if (size_ == 1) return;
  const auto t0 = start_timer();
  do_all_reduce(buf);
  finish(CollKind::all_reduce, buf.bytes(), t0);
}

void Communicator::all_to_all(View send, View recv) {
  LSS_CHECK(send.dtype == recv.dtype && send.numel == recv.numel && send.numel % size_ == 0,
            name_ + ".all_to_all: send and recv must be equal and divide by the group size");
  if (size_ == 1) return local_copy(recv, send);
  const auto t0 = start_timer();
  do_all_to_all(send, recv);
  finish(CollKind::all_to_all, send.bytes(), t0);
}

void Communicator::send(View buf, int peer) {
  LSS_CHECK(peer >= 0 && peer < size_ && peer != rank_, name_ + ".send: bad peer " + std::to_string(peer));
  const auto t0 = start_timer();
  do_send(buf, peer);
  finish(CollKind::send, buf.bytes(), t0);
}

void Communicator::recv(View buf, int peer) {
  LSS_CHECK(peer >= 0 && peer < size_ && peer != rank_, name_ + ".recv: bad peer " + std::to_string(peer));
  const auto t0 = start_timer();
  do_recv(buf, peer);
  finish(CollKind::recv, buf.bytes(), t0);
}

void Communicator::barrier() {
  if (size_ == 1) return;
  const auto t0 = start_timer();
  do_barrier();
  finish(CollKind::barrier, 0, t0);
}

}  // namespace lss
