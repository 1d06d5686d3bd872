// One configured training set-up on a process grid: backend, grid, data, strategy. Used by
// `lssbench run` and by the tests, which compare strategies against serial in one MPI job.
#pragma once
#include <mpi.h>

#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "comm/grid.h"
#include "core/backend.h"
#include "model/config.h"
#include "model/data.h"
#include "strategies/strategy.h"

namespace lss {

struct RunConfig {
  ModelConfig model;
  OptimizerConfig opt;
  StrategyOptions strategy_opts;
  std::string strategy = "serial";
  std::string backend = "cpu";
  std::string attention = "auto";  // cuda: auto | cudnn | flash
  std::string data_path;  // empty: synthetic tokens
  int P = 1;
  int threads = 1;
  // The sequence group's all-gathers on the GPUs' copy engines (NCCL's zero-CTA policy on
  // symmetric windows) instead of SM kernels: cuda only.
  bool copy_engine_gathers = false;
  // The sequence group's gathered buffers registered with NCCL (ncclCommRegister): cuda only.
  bool registered_gathers = false;
  // The sequence group's gathered and reduce-scattered buffers in NCCL's symmetric windows, where
  // NCCL runs those collectives on its symmetric kernels: cuda only.
  bool symmetric_collectives = false;
  // With symmetric_collectives: the blocks NCCL's symmetric kernels run on (0: NCCL's pick).
  int symmetric_ctas = kDefaultSymmetricCtas;
};

// Times of one training step on this rank, in seconds.
struct StepTimes {
  double forward = 0, backward = 0, optimizer = 0;
  double comm = 0;          // inside collectives (overlapped or not)
  double comm_exposed = 0;  // of that, the compute stream's stall (CommCounts::exposed_seconds)
  // Host seconds to enqueue the backward and the optimizer step. Device work runs behind the
  // host; an enqueue time near the phase's device time means the phase waits on the host.
  double backward_enqueue = 0, optimizer_enqueue = 0;
  double total() const { return forward + backward + optimizer; }
};

// Refuses (UsageError) what no grid can run: the model's own checks, and options that contradict
// each other or the backend. Session runs it first; `lssbench project` too.
void check_run_config(RunConfig& cfg);

class Session {
 public:
  // Collective over `base` (MPI_COMM_WORLD for a run; MPI_COMM_SELF for an in-process serial
  // reference). Throws UsageError for configurations the strategy or grid refuses.
  Session(const RunConfig& cfg, MPI_Comm base);
  ~Session();

  // Forward and backward of step `step`, every gradient reduction finished (the gradients are
  // final on return); returns the global mean loss.
  double forward_backward(int64_t step, StepTimes* times = nullptr);
  // The training loop's order: forward and backward of step `step` with the last gradient
  // buckets' all-reduces and the world's sum of the loss still in flight, for optimizer_step to
  // finish (it fills in the step's communication times); loss() reads the loss after it. No host
  // synchronisation splits the step. `adam_step` is the optimizer_step that follows: with
  // --optimizer-in-backward backward may already step the parameters it has finished (AdamW step
  // `adam_step`), and optimizer_step(adam_step) steps the rest.
  void forward_backward_into_optimizer(int64_t step, int64_t adam_step, StepTimes* times = nullptr);
  void optimizer_step(int64_t adam_step, StepTimes* times = nullptr);
  // The global mean loss of the last forward and backward: waits for its world sum and reads it
  // (a host synchronisation).
  double loss();
  // Per-group collective counts since the last reset_counts().
  CommModel comm_counts() const;
  void reset_counts();
  // The analytic counts per step: the strategy's, plus the world all-reduce of the loss.
  CommModel expected_comm() const;

  // Full (unsharded) parameters or gradients by name, assembled on grid rank 0 (empty elsewhere).
  // Collective over the grid; its own messages are not counted in comm_counts().
  std::map<std::string, std::vector<double>> gather_full(bool grads);
  // Full global shape of every parameter, by name.
  std::map<std::string, std::vector<int64_t>> full_shapes() const;

  const RunConfig& config() const { return cfg_; }
  Grid& grid() { return grid_; }
  Backend& backend() { return *backend_; }
  Strategy& strategy() { return *strategy_; }
  const DataSource& data() const { return *data_; }

 private:
  RunConfig cfg_;
  std::unique_ptr<Backend> backend_;
  Grid grid_;
  std::unique_ptr<DataSource> data_;
  std::unique_ptr<Strategy> strategy_;
  void run_forward_backward(int64_t step, StepTimes* times, bool finish, int64_t adam_step);

  Buffer loss_buf_;   // (1) fp64 loss sum, reduced over the world
  CommHandle loss_sum_;  // that world all-reduce, started after forward
  // Communication seconds (in collectives, exposed) at the start of the step, when its
  // reductions run into optimizer_step.
  std::pair<double, double> step_comm_start_{0, 0};
  bool comm_times_in_optimizer_ = false;
};

}  // namespace lss
