// The persistent worker pool behind parallel_chunks (design notes at the top of parallel.h).
#include "cpu/parallel.h"

#include <pthread.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <mutex>
#include <system_error>
#include <thread>
#include <cstdlib>
#include <string>
#ifdef _OPENMP
#include <omp.h>
#endif

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
static inline void cpu_relax() { _mm_pause(); }
#elif defined(__aarch64__)
static inline void cpu_relax() { asm volatile("yield"); }
#else
static inline void cpu_relax() {}
#endif

namespace osmos::cpu {
namespace {

using detail::ChunkFn;
using Clock = std::chrono::steady_clock;

// True on pool workers, on threads of the spawn fallback, and on a caller while it runs its
// chunks: a parallel_chunks call made there runs serially instead of waiting for the pool.
thread_local bool t_in_chunk = false;

struct InChunk {
  bool saved = t_in_chunk;
  InChunk() { t_in_chunk = true; }
  ~InChunk() { t_in_chunk = saved; }
};

int max_workers() {
  static const int cap = [] {
    unsigned hw = std::thread::hardware_concurrency();
    return int(std::clamp(hw ? 2 * hw - 1 : 7u, 1u, 255u));
  }();
  return cap;
}

// Spins (cpu_relax) until done() or `us` microseconds have passed; returns done().
template <class Done>
bool spin_until(Done done, int us) {
  if (us <= 0) return done();
  const Clock::time_point deadline = Clock::now() + std::chrono::microseconds(us);
  for (;;) {
    for (int i = 0; i < 16; ++i) {
      if (done()) return true;
      cpu_relax();
    }
    if (Clock::now() >= deadline) return done();
  }
}

// One parallel_chunks call on the pool: chunks are claimed by fetch_add on `next` (the caller
// runs chunk 0 before it claims).
struct Job {
  ChunkFn chunk;
  void* ctx;
  int nchunks;
  std::atomic<int> next{1};

  void run_claimed() {
    for (int t; (t = next.fetch_add(1, std::memory_order_relaxed)) < nchunks;) chunk(ctx, t);
  }
};

class Pool {
 public:
  std::atomic<int> spin_us{20};
  std::atomic<int64_t> jobs{0}, spawned{0}, serial{0};
  std::mutex busy;  // held by the caller whose job is on the pool

  int workers() {
    std::lock_guard<std::mutex> lock(m_);
    return int(threads_.size());
  }
  bool stopping() {
    std::lock_guard<std::mutex> lock(m_);
    return stopping_;
  }

  // Runs a job; the caller holds `busy`.
  void run(int nchunks, ChunkFn chunk, void* ctx) {
    grow(std::min(nchunks - 1, max_workers()));
    Job job{chunk, ctx, nchunks};
    int wake;  // parked workers to wake: no more than there are chunks left for them
    {
      std::lock_guard<std::mutex> lock(m_);
      job_ = &job;
      published_.store(++epoch_, std::memory_order_release);
      wake = std::min(sleeping_, nchunks - 1);
    }
    for (int i = 0; i < wake; ++i) wake_.notify_one();
    {
      InChunk guard;
      chunk(ctx, 0);
      job.run_claimed();
    }
    {
      // Close the job: no worker can take it from now on; wait for those that did.
      std::lock_guard<std::mutex> lock(m_);
      job_ = nullptr;
    }
    auto finished = [&] { return active_.load(std::memory_order_acquire) == 0; };
    if (!spin_until(finished, spin_us.load(std::memory_order_relaxed))) {
      std::unique_lock<std::mutex> lock(m_);
      done_.wait(lock, finished);
    }
    jobs.fetch_add(1, std::memory_order_relaxed);
  }

  // Stops the workers: joins them when no job runs (we can take `busy`), else detaches them
  // (they leave after their chunks; the pool object is never freed).
  void stop() {
    const bool idle = busy.try_lock();
    std::vector<std::thread> threads;
    {
      std::lock_guard<std::mutex> lock(m_);
      stopping_ = true;
      published_.store(++epoch_, std::memory_order_release);
      threads.swap(threads_);
    }
    wake_.notify_all();
    for (auto& t : threads) idle ? t.join() : t.detach();
    if (idle) busy.unlock();
  }

 private:
  std::mutex m_;  // guards the fields below (atomics are also read without it)
  std::condition_variable wake_, done_;
  std::vector<std::thread> threads_;
  Job* job_ = nullptr;  // the open job, if any
  uint64_t epoch_ = 0;  // bumped when a job is published (and on stop)
  std::atomic<uint64_t> published_{0};  // == epoch_, for workers spinning without the lock
  std::atomic<int> active_{0};          // workers that took the current job and are not done
  int sleeping_ = 0;                    // workers blocked on wake_
  bool stopping_ = false;

  void grow(int want) {
    std::lock_guard<std::mutex> lock(m_);
    while (int(threads_.size()) < want && !stopping_) {
      try {
        threads_.emplace_back(&Pool::work, this, epoch_);
      } catch (const std::system_error&) {
        break;  // out of threads: the caller and the existing workers run every chunk
      }
    }
  }

  void work(uint64_t seen) {
    t_in_chunk = true;
    for (;;) {
      spin_until([&] { return published_.load(std::memory_order_acquire) != seen; },
                 spin_us.load(std::memory_order_relaxed));
      Job* job;
      {
        std::unique_lock<std::mutex> lock(m_);
        if (epoch_ == seen) {
          ++sleeping_;
          wake_.wait(lock, [&] { return epoch_ != seen; });
          --sleeping_;
        }
        if (stopping_) return;
        seen = epoch_;
        job = job_;
        if (!job) continue;  // closed before this worker woke up
        active_.fetch_add(1, std::memory_order_relaxed);
      }
      job->run_claimed();
      if (active_.fetch_sub(1, std::memory_order_acq_rel) == 1) {
        std::lock_guard<std::mutex> lock(m_);
        done_.notify_all();
      }
    }
  }
};

// The process's pool, created on first use. A forked child drops the parent's (its threads do
// not exist in the child) without touching it: the old object is leaked, a new one starts lazily.
std::atomic<Pool*> g_pool{nullptr};
std::atomic<int> g_spin_us{20};  // survives fork and applies to pools created later
std::atomic<int64_t> pool_openmp_calls{0};

void forget_pool_in_child() { g_pool.store(nullptr, std::memory_order_relaxed); }

Pool* pool() {
  Pool* p = g_pool.load(std::memory_order_acquire);
  if (p) return p;
  static const bool registered = (pthread_atfork(nullptr, nullptr, &forget_pool_in_child), true);
  (void)registered;
  Pool* fresh = new Pool;
  fresh->spin_us.store(g_spin_us.load());
  if (g_pool.compare_exchange_strong(p, fresh, std::memory_order_acq_rel)) return fresh;
  delete fresh;
  return p;
}

// At exit (static destruction): stop the workers so none outlives the module's code mid-wait.
struct StopAtExit {
  ~StopAtExit() {
    if (Pool* p = g_pool.load(std::memory_order_acquire)) p->stop();
  }
} g_stop_at_exit;

void run_serial(int nchunks, ChunkFn chunk, void* ctx) {
  for (int t = 0; t < nchunks; ++t) chunk(ctx, t);
}

// The pool is busy with another thread's job: threads of our own, as before the pool existed.
void run_spawned(int nchunks, ChunkFn chunk, void* ctx) {
  std::vector<std::thread> threads;
  threads.reserve(nchunks - 1);
  for (int t = 1; t < nchunks; ++t) {
    try {
      threads.emplace_back([=] {
        t_in_chunk = true;
        chunk(ctx, t);
      });
    } catch (const std::system_error&) {
      InChunk guard;
      chunk(ctx, t);
    }
  }
  {
    InChunk guard;
    chunk(ctx, 0);
  }
  for (auto& th : threads) th.join();
}

#ifdef _OPENMP
// Chunks on OpenMP's thread team: after `import torch` this is torch's own libgomp (same soname),
// so osmos kernels and torch's CPU ops share one set of workers instead of two pools competing
// for the cores (torch's workers spin after each op; on a 2-core machine they kept osmos's
// parked workers off the CPU: bench_rps HashedNet gather 0.41 vs 0.21 ms, session 12).
void run_openmp(int nchunks, ChunkFn chunk, void* ctx) {
#pragma omp parallel num_threads(nchunks)
  {
    InChunk guard;
    const int t = omp_get_thread_num(), nt = omp_get_num_threads();
    for (int c = t; c < nchunks; c += nt) chunk(ctx, c);  // nt < nchunks when OpenMP gives fewer
  }
}
constexpr bool kHaveOpenMP = true;
#else
void run_openmp(int nchunks, ChunkFn chunk, void* ctx) { run_serial(nchunks, chunk, ctx); }
constexpr bool kHaveOpenMP = false;
#endif

// Which pool runs chunks: OpenMP's where built (default; OSMOS_CPU_POOL=threads|openmp overrides),
// osmos's own threads otherwise. A forked child always uses osmos's threads: GNU OpenMP's team
// does not survive fork().
std::atomic<bool> g_use_openmp{[] {
  const char* v = std::getenv("OSMOS_CPU_POOL");
  if (v && std::string(v) == "threads") return false;
  return kHaveOpenMP;
}()};
std::atomic<bool> g_forked_child{false};
const bool g_fork_hook = (pthread_atfork(nullptr, nullptr, [] { g_forked_child.store(true); }), true);

// OpenMP serves the process's main thread only: there its team is the one torch's ops use. A
// parallel region started on another thread gets a team of its own, whose idle workers spin for
// milliseconds (GOMP_SPINCOUNT) beside the main thread's work: background callers (snapshot
// copies) keep the own pool, which spins 20 us.
bool on_main_thread() {
  static thread_local const bool main = pid_t(syscall(SYS_gettid)) == getpid();
  return main;
}

bool use_openmp() {
  return g_use_openmp.load(std::memory_order_relaxed) && !g_forked_child.load(std::memory_order_relaxed) &&
         on_main_thread();
}

}  // namespace

namespace detail {
void run_chunks(int nchunks, ChunkFn chunk, void* ctx) {
  if (nchunks <= 1 || t_in_chunk) {
    if (nchunks > 1) pool()->serial.fetch_add(1, std::memory_order_relaxed);
    return run_serial(nchunks, chunk, ctx);
  }
  if (use_openmp()) {
    pool_openmp_calls.fetch_add(1, std::memory_order_relaxed);
    return run_openmp(nchunks, chunk, ctx);
  }
  Pool* p = pool();
  if (!p->busy.try_lock()) {
    p->spawned.fetch_add(1, std::memory_order_relaxed);
    return run_spawned(nchunks, chunk, ctx);
  }
  std::lock_guard<std::mutex> hold(p->busy, std::adopt_lock);
  if (p->stopping()) return run_serial(nchunks, chunk, ctx);
  p->run(nchunks, chunk, ctx);
}
}  // namespace detail

PoolInfo pool_info() {
  Pool* p = g_pool.load(std::memory_order_acquire);
  const char* kind = use_openmp() ? "openmp" : "threads";  // for a call from this thread
  const int64_t omp = pool_openmp_calls.load();
  if (!p) return {0, max_workers(), g_spin_us.load(), 0, 0, 0, omp, kind};
  return {p->workers(), max_workers(), p->spin_us.load(), p->jobs.load(), p->spawned.load(), p->serial.load(), omp, kind};
}

bool set_pool_kind(const std::string& kind) {
  if (kind == "threads") g_use_openmp.store(false);
  else if (kind == "openmp" && kHaveOpenMP) g_use_openmp.store(true);
  else return false;
  return true;
}

void set_pool_spin_us(int us) {
  us = std::clamp(us, 0, 10000);
  g_spin_us.store(us);
  if (Pool* p = g_pool.load(std::memory_order_acquire)) p->spin_us.store(us);
}

}  // namespace osmos::cpu
