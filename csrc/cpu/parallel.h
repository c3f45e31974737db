// Bounded CPU parallelism: the Python layer passes torch.get_num_threads(); kernels split work
// into contiguous chunks, one per thread, and the calling thread takes the first chunk.
#pragma once
#include <algorithm>
#include <cstdint>
#include <exception>
#include <thread>
#include <vector>

namespace osmos::cpu {

// Threads worth using for n items when each thread should get at least `grain` items.
inline int threads_for(int64_t n, int max_threads, int64_t grain) {
  if (max_threads < 1) max_threads = 1;
  int64_t by_work = grain > 0 ? (n + grain - 1) / grain : n;
  return int(std::max<int64_t>(1, std::min<int64_t>(max_threads, by_work)));
}

// Calls fn(tid, begin, end) for nthreads contiguous chunks of [0, n).
// Exceptions thrown by a worker are rethrown on the calling thread.
template <class F>
void parallel_chunks(int64_t n, int nthreads, F&& fn) {
  if (nthreads <= 1 || n <= 1) {
    fn(0, int64_t(0), n);
    return;
  }
  auto bounds = [&](int t) { return n * t / nthreads; };
  std::vector<std::thread> workers;
  std::vector<std::exception_ptr> errors(nthreads);
  workers.reserve(nthreads - 1);
  for (int t = 1; t < nthreads; ++t) {
    workers.emplace_back([&, t] {
      try { fn(t, bounds(t), bounds(t + 1)); } catch (...) { errors[t] = std::current_exception(); }
    });
  }
  try { fn(0, bounds(0), bounds(1)); } catch (...) { errors[0] = std::current_exception(); }
  for (auto& w : workers) w.join();
  for (auto& e : errors) if (e) std::rethrow_exception(e);
}

}  // namespace osmos::cpu
