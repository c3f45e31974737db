// Bounded CPU parallelism: the Python layer passes torch.get_num_threads(); kernels split work
// into contiguous chunks, one per thread, and the calling thread takes the first chunk.
//
// Where osmos is built with OpenMP (the default build), calls from the process's main thread run
// their chunks on OpenMP's team: loaded after torch, that is torch's libgomp, so osmos kernels and
// torch's CPU ops share one set of workers (two pools on few cores starve each other: torch's idle
// workers spin). Other threads (a team of their own would spin beside the main thread's work),
// `set_pool_kind("threads")` / OSMOS_CPU_POOL=threads and forked children use the own pool below.
//
// Own pool (csrc/cpu/parallel.cpp): chunks run on a persistent worker pool, so a call costs a
// wake-up (about a microsecond while the workers still spin, a futex wake after they parked)
// instead of creating and joining threads (tens of microseconds).
// - Workers start lazily: the pool grows to the largest nthreads - 1 requested, capped at
//   2 x hardware threads. A worker that finds no job spins briefly (pool_spin_us(), 20 us by
//   default), then blocks on a condition variable: an idle pool burns no CPU.
// - Chunk t always gets [n t / nthreads, n (t + 1) / nthreads) and the id t, whichever thread
//   runs it; the caller runs chunk 0 and then claims leftover chunks beside the workers.
// - One job at a time: a call that finds the pool busy (another thread's kernel) creates its own
//   threads as before the pool existed; a call made from inside a chunk runs its chunks in
//   order on the current thread. Neither can deadlock.
// - fork(): the child forgets the parent's pool (pthread_atfork) and starts a fresh one lazily.
// - Exit: a static destructor stops and joins idle workers (detaches them if a job is running).
#pragma once
#include <algorithm>
#include <cstdint>
#include <string>
#include <exception>
#include <type_traits>
#include <vector>

namespace osmos::cpu {

// Threads worth using for n items when each thread should get at least `grain` items.
inline int threads_for(int64_t n, int max_threads, int64_t grain) {
  if (max_threads < 1) max_threads = 1;
  int64_t by_work = grain > 0 ? (n + grain - 1) / grain : n;
  return int(std::max<int64_t>(1, std::min<int64_t>(max_threads, by_work)));
}

namespace detail {
// Runs chunk(ctx, t) once for every t in [0, nchunks), chunk 0 on the calling thread, and
// returns when all have returned. chunk must not throw.
using ChunkFn = void (*)(void* ctx, int t);
void run_chunks(int nchunks, ChunkFn chunk, void* ctx);
}  // namespace detail

// Calls fn(tid, begin, end) for nthreads contiguous chunks of [0, n), chunk tid on at most one
// thread at a time. Exceptions thrown by a chunk are rethrown on the calling thread (the lowest
// chunk's first).
template <class F>
void parallel_chunks(int64_t n, int nthreads, F&& fn) {
  if (nthreads <= 1 || n <= 1) {
    fn(0, int64_t(0), n);
    return;
  }
  struct Job {
    std::remove_reference_t<F>* fn;
    int64_t n;
    int nthreads;
    std::exception_ptr* errors;
  };
  std::vector<std::exception_ptr> errors(nthreads);
  Job job{&fn, n, nthreads, errors.data()};
  detail::run_chunks(nthreads, [](void* ctx, int t) {
    const Job& j = *static_cast<const Job*>(ctx);
    try {
      (*j.fn)(t, j.n * t / j.nthreads, j.n * (t + 1) / j.nthreads);
    } catch (...) {
      j.errors[t] = std::current_exception();
    }
  }, &job);
  for (auto& e : errors) if (e) std::rethrow_exception(e);
}

// The worker pool, for tests and benchmarks.
struct PoolInfo {
  int workers;      // worker threads started (they persist until exit)
  int max_workers;  // cap on workers
  int spin_us;      // how long an idle worker spins before it blocks
  int64_t jobs;     // calls run on the pool
  int64_t spawned;  // calls that found the pool busy and created threads
  int64_t serial;   // calls from inside a chunk, run in order on the caller
  int64_t openmp;   // calls run on OpenMP's team instead
  const char* kind; // "openmp" or "threads": which runs the next call
};
PoolInfo pool_info();
// "openmp" (OpenMP's team, shared with torch; the default where built) or "threads" (osmos's own
// workers, always used in a forked child); false when unknown or not built.
bool set_pool_kind(const std::string& kind);
void set_pool_spin_us(int us);  // 0: block at once; clamped to [0, 10000]

}  // namespace osmos::cpu
