#include "kernels/cuda/device_monitor.h"

#include <cuda_runtime.h>
#include <dlfcn.h>
#include <nvml.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <optional>
#include <thread>
#include <type_traits>
#include <vector>

#include "kernels/cuda/cuda_check.h"

namespace lss::cuda {
namespace {

// The NVML entry points the monitor calls, resolved from the driver's library once per process.
struct Nvml {
  bool ok = false;
  decltype(&nvmlInit_v2) init = nullptr;
  decltype(&nvmlDeviceGetHandleByPciBusId_v2) by_pci = nullptr;
  decltype(&nvmlDeviceGetClockInfo) clock = nullptr;
  decltype(&nvmlDeviceGetMaxClockInfo) max_clock = nullptr;
  decltype(&nvmlDeviceGetPowerUsage) power = nullptr;
  decltype(&nvmlDeviceGetEnforcedPowerLimit) power_limit = nullptr;
  decltype(&nvmlDeviceGetCurrentClocksEventReasons) reasons = nullptr;
  decltype(&nvmlDeviceGetTotalEnergyConsumption) energy = nullptr;  // null where the driver has none
};

const Nvml& nvml() {
  static const Nvml lib = [] {
    Nvml n;
    void* h = dlopen("libnvidia-ml.so.1", RTLD_NOW | RTLD_LOCAL);
    if (h == nullptr) return n;
    const auto sym = [h](auto& fn, const char* name) {
      fn = reinterpret_cast<std::remove_reference_t<decltype(fn)>>(dlsym(h, name));
      return fn != nullptr;
    };
    n.ok = sym(n.init, "nvmlInit_v2") && sym(n.by_pci, "nvmlDeviceGetHandleByPciBusId_v2") &&
           sym(n.clock, "nvmlDeviceGetClockInfo") && sym(n.max_clock, "nvmlDeviceGetMaxClockInfo") &&
           sym(n.power, "nvmlDeviceGetPowerUsage") && sym(n.power_limit, "nvmlDeviceGetEnforcedPowerLimit") &&
           // Drivers before 535 name it "throttle reasons"; same signature and bits.
           (sym(n.reasons, "nvmlDeviceGetCurrentClocksEventReasons") ||
            sym(n.reasons, "nvmlDeviceGetCurrentClocksThrottleReasons"));
    n.ok = n.ok && n.init() == NVML_SUCCESS;
    if (!sym(n.energy, "nvmlDeviceGetTotalEnergyConsumption")) n.energy = nullptr;
    return n;
  }();
  return lib;
}

constexpr unsigned long long kSlowdown = nvmlClocksEventReasonSwThermalSlowdown | nvmlClocksThrottleReasonHwSlowdown |
                                       nvmlClocksThrottleReasonHwThermalSlowdown |
                                       nvmlClocksThrottleReasonHwPowerBrakeSlowdown;

}  // namespace

struct DeviceMonitor::Impl {
  nvmlDevice_t device{};
  bool usable = false;
  int period_ms = 10;
  std::thread thread;
  std::atomic<bool> running{false};
  // Written by the sampling thread only; read after it joins.
  std::vector<DeviceSample> samples;
  std::vector<EnergyReading> energy;  // the reading at the start, then each one that differs
  std::chrono::steady_clock::time_point started;

  // The counter now, or nullopt where the driver cannot read it.
  std::optional<unsigned long long> energy_mj() const {
    const Nvml& n = nvml();
    unsigned long long mj = 0;
    if (n.energy == nullptr || n.energy(device, &mj) != NVML_SUCCESS) return std::nullopt;
    return mj;
  }

  // Records the energy counter when it differs from the last reading (or is the first).
  void read_energy() {
    const std::optional<unsigned long long> mj = energy_mj();
    if (!mj) return;
    const double value = static_cast<double>(*mj);
    if (!energy.empty() && energy.back().mj == value) return;
    energy.push_back({std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count(), value});
  }

  // The counter is polled every millisecond, so that each of its updates (tens of milliseconds
  // apart) is seen within a millisecond of when it happened (region_energy in core/backend.h);
  // clocks, power and reasons every period_ms. Where start() could not read the counter the
  // thread wakes every period_ms only.
  void loop() {
    const Nvml& n = nvml();
    const bool counter = !energy.empty();
    const auto tick = std::chrono::milliseconds(counter ? 1 : period_ms);
    auto next_sample = std::chrono::steady_clock::now();
    auto next_tick = next_sample;
    while (running.load(std::memory_order_relaxed)) {
      if (std::chrono::steady_clock::now() >= next_sample) {
        unsigned mhz = 0, mw = 0;
        unsigned long long reasons = 0;
        const bool ok = n.clock(device, NVML_CLOCK_SM, &mhz) == NVML_SUCCESS &&
                        n.power(device, &mw) == NVML_SUCCESS && n.reasons(device, &reasons) == NVML_SUCCESS;
        if (ok)
          samples.push_back({static_cast<double>(mhz), mw * 1e-3, (reasons & nvmlClocksEventReasonSwPowerCap) != 0,
                             (reasons & kSlowdown) != 0});
        next_sample += std::chrono::milliseconds(period_ms);
      }
      if (counter) read_energy();
      next_tick += tick;
      std::this_thread::sleep_until(next_tick);
    }
  }

  void halt() {
    if (!thread.joinable()) return;
    running = false;
    thread.join();
  }
};

DeviceMonitor::DeviceMonitor(int cuda_device) : impl_(std::make_unique<Impl>()) {
  const Nvml& n = nvml();
  if (!n.ok) return;
  // NVML numbers devices its own way (not by CUDA_VISIBLE_DEVICES): find ours by its PCI bus.
  char bus[32] = {};
  LSS_CUDA_CHECK(cudaDeviceGetPCIBusId(bus, sizeof bus, cuda_device));
  impl_->usable = n.by_pci(bus, &impl_->device) == NVML_SUCCESS;
}

DeviceMonitor::~DeviceMonitor() { impl_->halt(); }

void DeviceMonitor::start(int period_ms) {
  impl_->halt();
  if (!impl_->usable) return;
  impl_->samples.clear();
  impl_->energy.clear();
  impl_->period_ms = std::max(1, period_ms);
  impl_->started = std::chrono::steady_clock::now();
  impl_->read_energy();
  impl_->running = true;
  impl_->thread = std::thread([this] { impl_->loop(); });
}

std::optional<DeviceState> DeviceMonitor::stop() {
  // The region ends now, not after the sampling thread's last sleep.
  const auto ended = std::chrono::steady_clock::now();
  impl_->halt();
  if (!impl_->usable || impl_->samples.empty()) return std::nullopt;
  const Nvml& n = nvml();
  unsigned top = 0, limit_mw = 0;
  if (n.max_clock(impl_->device, NVML_CLOCK_SM, &top) != NVML_SUCCESS) top = 0;
  if (n.power_limit(impl_->device, &limit_mw) != NVML_SUCCESS) limit_mw = 0;
  DeviceState st = summarize_device_samples(impl_->samples, impl_->period_ms, top, limit_mw * 1e-3);
  // Readings the thread took after the region ended are left out.
  const double region_s = std::chrono::duration<double>(ended - impl_->started).count();
  std::vector<EnergyReading>& readings = impl_->energy;
  while (!readings.empty() && readings.back().t_s > region_s) readings.pop_back();
  region_energy(readings, region_s, st);
  return st;
}

}  // namespace lss::cuda
