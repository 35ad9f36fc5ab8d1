// fastadapt's tensor pool: a CPU allocator that keeps the large blocks tensors free, by exact
// size, and hands them back to the next request of that size (fastadapt/tensor_pool.py says why
// and what it measured). Installed process-wide with c10::SetCPUAllocator; requests below
// `min_bytes` or above `max_block` go to the allocator it replaced.

#include "tensor_pool.h"

#include <c10/core/CPUAllocator.h>
#include <pthread.h>
#include <sys/mman.h>

#include <atomic>
#include <cstring>
#include <mutex>
#include <unordered_map>
#include <vector>

namespace {

constexpr size_t kPage = 4096;

struct State {
  std::mutex mu;
  c10::Allocator* previous = nullptr;  // the allocator the pool replaced (set once, never changed)
  std::atomic<size_t> min_bytes{0}, max_block{0};  // read without the lock by every allocation
  size_t max_cached = 0;
  std::unordered_map<void*, size_t> sizes;                // every block the pool has mapped -> its size
  std::unordered_map<size_t, std::vector<void*>> free;    // size -> blocks free for reuse
  size_t mapped = 0, live = 0, cached = 0, peak_live = 0;  // bytes
  int64_t hits = 0, misses = 0;
};

State& state() {
  static State* s = new State();  // never destroyed: tensors may be freed during interpreter shutdown
  return *s;
}

// For torch.profiler's memory view (as c10's own CPU allocator reports); called without the lock.
void report(void* ptr, int64_t delta, size_t live, size_t mapped) {
  c10::reportMemoryUsageToProfiler(ptr, delta, live, mapped, c10::Device(c10::DeviceType::CPU));
}

// Unmaps every free block; returns their bytes. The caller holds s.mu.
size_t unmap_cached(State& s) {
  size_t released = s.cached;
  for (auto& entry : s.free) {
    for (void* block : entry.second) {
      munmap(block, entry.first);
      s.sizes.erase(block);
    }
  }
  s.free.clear();
  s.mapped -= released;
  s.cached = 0;
  return released;
}

// The deleter of every pooled block and the pool's raw deleter: blocks the pool did not map
// (small requests served by the previous allocator through raw_allocate) go back to it.
void release(void* ptr) {
  State& s = state();
  std::unique_lock<std::mutex> lock(s.mu);
  auto it = s.sizes.find(ptr);
  if (it == s.sizes.end()) {
    lock.unlock();
    s.previous->raw_deleter()(ptr);
    return;
  }
  size_t size = it->second;
  s.live -= size;
  bool keep = s.cached + size <= s.max_cached;
  if (keep) {
    s.free[size].push_back(ptr);
    s.cached += size;
  } else {
    s.sizes.erase(it);
    s.mapped -= size;
  }
  size_t live = s.live, mapped = s.mapped;
  lock.unlock();
  if (!keep) munmap(ptr, size);
  report(ptr, -static_cast<int64_t>(size), live, mapped);
}

struct TensorPool final : c10::Allocator {
  c10::DataPtr allocate(size_t n) override {
    State& s = state();
    if (n < s.min_bytes || n > s.max_block) return s.previous->allocate(n);
    size_t size = (n + kPage - 1) & ~(kPage - 1);
    void* ptr = nullptr;
    std::unique_lock<std::mutex> lock(s.mu);
    auto it = s.free.find(size);
    if (it != s.free.end() && !it->second.empty()) {  // the common case: one lock, no system call
      ptr = it->second.back();
      it->second.pop_back();
      s.cached -= size;
      s.hits++;
    } else {
      lock.unlock();
      ptr = mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
      lock.lock();
      if (ptr == MAP_FAILED) {  // what is cached may be what is missing: give it back, try once more
        unmap_cached(s);
        ptr = mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        TORCH_CHECK(ptr != MAP_FAILED, "fastadapt tensor pool: out of memory mapping ", size, " bytes: ",
                    std::strerror(errno));
      }
      s.sizes[ptr] = size;
      s.mapped += size;
      s.misses++;
    }
    s.live += size;
    if (s.live > s.peak_live) s.peak_live = s.live;
    size_t live = s.live, mapped = s.mapped;
    lock.unlock();
    report(ptr, static_cast<int64_t>(size), live, mapped);
    return {ptr, ptr, &release, c10::Device(c10::DeviceType::CPU)};
  }

  c10::DeleterFnPtr raw_deleter() const override { return &release; }

  // Pure virtual from torch 2.3 on; a plain member before (hence no `override`).
  void copy_data(void* dest, const void* src, std::size_t count) const { std::memcpy(dest, src, count); }
};

TensorPool pool;

void lock_for_fork() { state().mu.lock(); }
void unlock_after_fork() { state().mu.unlock(); }

// The limits are checked by fastadapt.tensor_pool.use_tensor_pool, the binding's one caller.
bool install(int64_t min_bytes, int64_t max_block, int64_t max_cached) {
  State& s = state();
  std::lock_guard<std::mutex> lock(s.mu);
  c10::Allocator* current = c10::GetCPUAllocator();
  if (s.previous == nullptr) {
    s.previous = current;
    pthread_atfork(&lock_for_fork, &unlock_after_fork, &unlock_after_fork);
  }
  s.min_bytes.store(static_cast<size_t>(min_bytes));
  s.max_block.store(static_cast<size_t>(max_block));
  s.max_cached = static_cast<size_t>(max_cached);
  if (current != &pool) c10::SetCPUAllocator(&pool, /*priority=*/255);
  return c10::GetCPUAllocator() == &pool;
}

// Sets the peak of live bytes to the bytes live now; returns the peak it replaced.
int64_t reset_peak() {
  State& s = state();
  std::lock_guard<std::mutex> lock(s.mu);
  size_t previous = s.peak_live;
  s.peak_live = s.live;
  return static_cast<int64_t>(previous);
}

int64_t release_cached() {
  State& s = state();
  std::lock_guard<std::mutex> lock(s.mu);
  return static_cast<int64_t>(unmap_cached(s));
}

std::unordered_map<std::string, int64_t> stats() {
  State& s = state();
  std::lock_guard<std::mutex> lock(s.mu);
  return {{"installed", c10::GetCPUAllocator() == &pool},
          {"mapped_bytes", static_cast<int64_t>(s.mapped)},
          {"live_bytes", static_cast<int64_t>(s.live)},
          {"cached_bytes", static_cast<int64_t>(s.cached)},
          {"peak_live_bytes", static_cast<int64_t>(s.peak_live)},
          {"hits", s.hits},
          {"misses", s.misses}};
}

}  // namespace

void register_tensor_pool(pybind11::module& m) {
  m.def("tensor_pool_install", &install, "Install the tensor pool as the CPU allocator (or update its limits).");
  m.def("tensor_pool_release_cached", &release_cached, "Unmap the pool's free blocks; returns their bytes.");
  m.def("tensor_pool_stats", &stats, "The pool's counters.");
  m.def("tensor_pool_reset_peak", &reset_peak, "Set the peak of live bytes to the live bytes; returns the old peak.");
}
