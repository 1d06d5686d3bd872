// Samples one GPU's SM clock, power and clock-event reasons (NVML) on a thread while a region
// runs, for DeviceState (core/backend.h): a card at its power limit lowers its clocks, so a step
// runs slower than its kernels timed alone in short bursts. NVML is loaded at run time
// (libnvidia-ml.so.1 comes with the driver, not with the toolkit): where it is missing or
// refuses the device, the monitor reports nothing and the run goes on.
#pragma once

#include <memory>
#include <optional>

#include "core/backend.h"

namespace lss::cuda {

class DeviceMonitor {
 public:
  explicit DeviceMonitor(int cuda_device);
  ~DeviceMonitor();
  DeviceMonitor(const DeviceMonitor&) = delete;
  DeviceMonitor& operator=(const DeviceMonitor&) = delete;

  // Starts sampling every `period_ms` (a running sampling is stopped and discarded first).
  void start(int period_ms = 10);
  // Stops and summarises; nullopt when NVML is unavailable or no sample was taken.
  std::optional<DeviceState> stop();

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace lss::cuda
