#include "app/session.h"

#include <chrono>

#include "comm/mpi_util.h"
#include "core/check.h"
#ifdef LSS_HAVE_CUDA
#include "comm/nccl_communicator.h"
#include "kernels/cuda/cuda_backend.h"
#endif

namespace lss {

namespace {
// Seconds in collectives and of them exposed, over the grid's groups so far.
std::pair<double, double> comm_seconds(const Grid& g) {
  double in_collectives = 0, exposed = 0;
  for (const Communicator* c : {g.seq.get(), g.data.get(), g.world_comm.get()}) {
    in_collectives += c->counts().seconds;
    exposed += c->counts().exposed_seconds;
  }
  return {in_collectives, exposed};
}
}  // namespace

void check_run_config(RunConfig& cfg) {
  cfg.model.validate();
  LSS_REQUIRE_INPUT(cfg.threads >= 1, "--threads " + std::to_string(cfg.threads) + ": must be at least 1");
  LSS_REQUIRE_INPUT(!(cfg.backend == "cpu" && cfg.model.dtype == DType::bf16),
                    "--dtype bf16: the cpu backend computes in fp32 or fp64 (bf16 needs --backend cuda)");
  // One kind of memory for the sequence group's collectives (GatherMemory): the first two flags given.
  {
    const std::vector<std::pair<const char*, bool>> memory_flags = {{"--copy-engine-gathers", cfg.copy_engine_gathers},
                                                                    {"--registered-gathers", cfg.registered_gathers},
                                                                    {"--symmetric-collectives", cfg.symmetric_collectives}};
    std::vector<std::string> given;
    for (const auto& [flag, on] : memory_flags)
      if (on) given.emplace_back(flag);
    LSS_REQUIRE_INPUT(given.size() <= 1, given.front() + " with " + given[1] +
                                             ": the sequence group's buffers are in one kind of NCCL memory (copy-engine "
                                             "windows, registered blocks or symmetric windows), not two (give one of them)");
  }
  // The parameters' gathers would need the flat parameter buffers in symmetric windows, which
  // are allocated per rank at sizes that differ between ranks.
  LSS_REQUIRE_INPUT(!cfg.copy_engine_gathers || !cfg.strategy_opts.distributed_optimizer,
                    "--copy-engine-gathers with --distributed-optimizer: the parameter all-gathers cannot run on the "
                    "copy engines (give one of the two)");
  if (const auto wire = cfg.strategy_opts.grad_reduce_dtype) {
    const DType master = master_dtype(cfg.model.dtype);
    LSS_REQUIRE_INPUT(dtype_size(*wire) <= dtype_size(master),
                      std::string("--grad-reduce-dtype ") + dtype_name(*wire) + ": wider than the gradients (" +
                          dtype_name(master) + " with --dtype " + dtype_name(cfg.model.dtype) + ")");
    LSS_REQUIRE_INPUT(*wire != DType::bf16 || cfg.backend == "cuda",
                      "--grad-reduce-dtype bf16: the " + cfg.backend + " backend has no bf16 (fp32 sums an fp64 "
                      "model's gradients there)");
  }
  LSS_REQUIRE_INPUT(!cfg.copy_engine_gathers || cfg.backend == "cuda",
                    "--copy-engine-gathers: the " + cfg.backend + " backend has no copy engines (needs --backend cuda)");
  LSS_REQUIRE_INPUT(!cfg.symmetric_collectives || cfg.backend == "cuda",
                    "--symmetric-collectives: the " + cfg.backend + " backend has no NCCL symmetric memory (needs "
                    "--backend cuda)");
  LSS_REQUIRE_INPUT(!cfg.registered_gathers || cfg.backend == "cuda",
                    "--registered-gathers: the " + cfg.backend + " backend has no NCCL to register with (needs --backend "
                    "cuda)");
}

Session::Session(const RunConfig& cfg, MPI_Comm base) : cfg_(cfg) {
  check_run_config(cfg_);
  // The grid's set-up below is blocking MPI collectives, which spin: ranks arriving early wait
  // here off the cores instead.
  wait_for_ranks(base);
  // One device per rank: the rank's position among the ranks of its node.
  const NodePosition node = node_position(base);
#ifdef LSS_HAVE_CUDA
  // Checked by every rank of the node alike (not only by the ranks without a device), so that all
  // of them stop with the message instead of some waiting in the grid's collectives.
  if (cfg_.backend == "cuda") {
    const int devices = cuda_device_count();
    LSS_REQUIRE_INPUT(devices > 0, "--backend cuda: no CUDA device is visible to this process");
    LSS_REQUIRE_INPUT(node.size <= devices, "--backend cuda: " + std::to_string(node.size) + " ranks on this node but " +
                                                 std::to_string(devices) + " CUDA devices; start at most one rank per GPU");
  }
#endif
  backend_ = make_backend(BackendOptions{cfg_.backend, cfg_.threads, node.rank, cfg_.attention});
#ifdef LSS_HAVE_CUDA
  if (cfg_.backend == "cuda") {
    grid_ = make_nccl_grid(base, cfg_.P, cuda_stream_of(*backend_),
                           cfg_.copy_engine_gathers     ? GatherMemory::copy_engine
                           : cfg_.registered_gathers    ? GatherMemory::registered
                           : cfg_.symmetric_collectives ? GatherMemory::symmetric
                                                        : GatherMemory::plain,
                           cfg_.symmetric_ctas);
    backend_->use_symmetric_memory(grid_.seq->symmetric_memory());
  } else {
    grid_ = make_mpi_grid(base, cfg_.P, node.size);
  }
#else
  grid_ = make_mpi_grid(base, cfg_.P, node.size);
#endif
  // The CPU backend's markers read the host clock, as an untimed MPI communicator does; through
  // the backend its collectives appear in a step trace too.
  for (Communicator* c : {grid_.world_comm.get(), grid_.seq.get(), grid_.data.get()}) c->time_with(backend_.get());
  LSS_REQUIRE_INPUT(cfg_.model.B % grid_.R == 0,
                    "--batch " + std::to_string(cfg_.model.B) + " does not divide by the " + std::to_string(grid_.R) +
                        " data-parallel replicas (world " + std::to_string(grid_.world) + " / --sp " +
                        std::to_string(grid_.P) + ")");
  data_ = std::make_unique<DataSource>(cfg_.model, cfg_.data_path);
  strategy_ = make_strategy(cfg_.strategy, StrategyContext{*backend_, grid_, cfg_.model, cfg_.strategy_opts, *data_});
  loss_buf_ = backend_->alloc(DType::f64, 1);
}

Session::~Session() {
  // The strategy's symmetric buffers go back to the backend's cache, which then lets go of the
  // sequence group's windows before the grid releases them.
  strategy_.reset();
  if (backend_) backend_->use_symmetric_memory(nullptr);
}

double Session::forward_backward(int64_t step, StepTimes* times) {
  run_forward_backward(step, times, true, 0);
  return loss();
}

void Session::forward_backward_into_optimizer(int64_t step, int64_t adam_step, StepTimes* times) {
  run_forward_backward(step, times, false, adam_step);
}

double Session::loss() {
  grid_.world_comm->wait(loss_sum_);
  double total = 0;
  backend_->copy_to_host(&total, DType::f64, loss_buf_.view());
  return total / static_cast<double>(cfg_.model.B * cfg_.model.T);
}

void Session::run_forward_backward(int64_t step, StepTimes* times, bool finish, int64_t adam_step) {
  strategy_->finish_gradients();     // a caller that stepped no optimizer since
  grid_.world_comm->wait(loss_sum_);  // and read no loss
  // Gradients read before the optimizer (finish) must not have stepped their parameters yet.
  strategy_->step_in_backward(!finish && cfg_.strategy_opts.optimizer_in_backward ? &cfg_.opt : nullptr, adam_step);
  const auto [c0, e0] = comm_seconds(grid_);
  const Backend::Marker m0 = backend_->mark();
  strategy_->params().zero_grads();
  strategy_->forward(step, loss_buf_.view());
  // The world's sum of the loss runs beside backward and is read at the step's end, so that the
  // host need not wait for the forward before it enqueues the backward.
  {
    CommLabel label(*grid_.world_comm, "loss sum");
    loss_sum_ = grid_.world_comm->start_all_reduce(loss_buf_.view());
  }
  if (!cfg_.strategy_opts.overlap) grid_.world_comm->wait(loss_sum_);
  const Backend::Marker m1 = backend_->mark();
  const auto h1 = std::chrono::steady_clock::now();
  strategy_->backward();
  if (finish) {
    strategy_->finish_gradients();
    grid_.world_comm->wait(loss_sum_);
  }
  const auto h2 = std::chrono::steady_clock::now();
  const Backend::Marker m2 = backend_->mark();
  // Reading the communication times waits for every collective started so far: with reductions
  // left to the optimizer, optimizer_step reads them at the step's end.
  comm_times_in_optimizer_ = !finish;
  step_comm_start_ = {c0, e0};
  if (backend_->tracing()) {
    backend_->add_trace_span("forward", "phase", "", m0, m1);
    backend_->add_trace_span("backward", "phase", "", m1, m2);
  }
  if (times) {
    times->forward = backend_->seconds_between(m0, m1);
    times->backward = backend_->seconds_between(m1, m2);
    times->backward_enqueue = std::chrono::duration<double>(h2 - h1).count();
    if (!comm_times_in_optimizer_) {
      const auto [c1, e1] = comm_seconds(grid_);
      times->comm = c1 - c0;
      times->comm_exposed = e1 - e0;
    }
  }
}

void Session::optimizer_step(int64_t adam_step, StepTimes* times) {
  const Backend::Marker m0 = backend_->mark();
  const auto h0 = std::chrono::steady_clock::now();
  strategy_->optimizer_step(cfg_.opt, adam_step);
  grid_.world_comm->wait(loss_sum_);  // long done: the step's last collective, so its times are read
  const auto h1 = std::chrono::steady_clock::now();
  const Backend::Marker m1 = backend_->mark();
  if (backend_->tracing()) backend_->add_trace_span("optimizer", "phase", "", m0, m1);
  if (times) {
    times->optimizer = backend_->seconds_between(m0, m1);
    times->optimizer_enqueue = std::chrono::duration<double>(h1 - h0).count();
    if (comm_times_in_optimizer_) {
      const auto [c1, e1] = comm_seconds(grid_);
      times->comm = c1 - step_comm_start_.first;
      times->comm_exposed = e1 - step_comm_start_.second;
    }
  }
  comm_times_in_optimizer_ = false;
}

CommModel Session::comm_counts() const {
  CommModel m;
  for (const Communicator* c : {grid_.seq.get(), grid_.data.get(), grid_.world_comm.get()})
    if (c->counts().total_calls() > 0) m[c->name()] = c->counts();
  return m;
}

void Session::reset_counts() {
  grid_.seq->reset_counts();
  grid_.data->reset_counts();
  grid_.world_comm->reset_counts();
}

CommModel Session::expected_comm() const {
  CommModel m = strategy_->expected_comm();
  expect_calls(m, "world", grid_.world, CollKind::all_reduce, 1, static_cast<int64_t>(sizeof(double)));
  return m;
}

std::map<std::string, std::vector<int64_t>> Session::full_shapes() const {
  std::map<std::string, std::vector<int64_t>> shapes;
  for (const auto& s : model_param_specs(cfg_.model)) shapes[s.name] = s.shape();
  return shapes;
}

std::map<std::string, std::vector<double>> Session::gather_full(bool grads) {
  // Every data replica holds the same shards after the reductions, so replica 0's sequence group
  // is enough: its rank p sends each local shard to rank p = 0, which places it by the spec of p.
  std::map<std::string, std::vector<double>> full;
  strategy_->finish_gradients();
  // The assembly's messages are bookkeeping, not the step's traffic.
  const CommCounts saved = grid_.seq->counts();
  strategy_->complete_shards(grads);
  if (grid_.r != 0) {
    grid_.seq->set_counts(saved);
    return full;
  }
  const ParamStore& store = strategy_->params();
  if (grid_.p == 0) {
    for (const auto& e : store.entries()) full[e.spec.name].assign(static_cast<size_t>(e.spec.rows * e.spec.cols), 0.0);
    for (int p = 0; p < grid_.P; ++p) {
      for (const ParamSpec& spec : strategy_->param_specs_for(p)) {
        std::vector<double> local(static_cast<size_t>(spec.local_numel()));
        if (p == 0) {
          backend_->copy_to_host(local.data(), DType::f64, grads ? store.grad(spec.name) : store.master(spec.name));
        } else {
          Buffer tmp = backend_->alloc(master_dtype(cfg_.model.dtype), spec.local_numel());
          grid_.seq->recv(tmp.view(), p);
          backend_->copy_to_host(local.data(), DType::f64, tmp.view());
        }
        auto& dst = full[spec.name];
        size_t i = 0;
        for (const auto& rr : spec.row_ranges)
          for (int64_t r = rr.start; r < rr.start + rr.count; ++r)
            for (int64_t c = spec.col_start; c < spec.col_start + spec.col_count; ++c) dst[r * spec.cols + c] = local[i++];
      }
    }
  } else {
    for (const ParamSpec& spec : strategy_->param_specs_for(grid_.p))
      grid_.seq->send(grads ? store.grad(spec.name) : store.master(spec.name), 0);
  }
  grid_.seq->set_counts(saved);
  return full;
}

}  // namespace lss
