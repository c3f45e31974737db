// osmos._C bindings of the CPU worker pool: its state and spin setting, and a probe that runs
// parallel_chunks with synthetic chunks so tests can check chunking, errors and nesting.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <chrono>
#include <functional>
#include <stdexcept>
#include <string>
#include <thread>
#include <tuple>
#include <vector>

#include "bindings/registry.h"
#include "cpu/parallel.h"

namespace py = pybind11;
using namespace osmos::cpu;

namespace {

void busy_wait_us(int64_t us) {
  const auto end = std::chrono::steady_clock::now() + std::chrono::microseconds(us);
  while (std::chrono::steady_clock::now() < end) {
  }
}

// One row per chunk: (tid, begin, end, thread, nested) where thread identifies the OS thread
// that ran it and nested is the number of items a parallel_chunks call made inside the chunk
// (over [begin, end) with nested_threads) visited.
using ProbeRow = std::tuple<int, int64_t, int64_t, size_t, int64_t>;

std::vector<ProbeRow> probe(int64_t n, int nthreads, int throw_chunk, int nested_threads, int64_t work_us) {
  std::vector<ProbeRow> rows(std::max(nthreads, 1), ProbeRow{-1, 0, 0, 0, 0});
  parallel_chunks(n, nthreads, [&](int t, int64_t begin, int64_t end) {
    busy_wait_us(work_us);
    int64_t nested = 0;
    if (nested_threads > 0) {
      std::vector<int64_t> seen(std::max(nested_threads, 1), 0);
      parallel_chunks(end - begin, nested_threads, [&](int s, int64_t b, int64_t e) { seen[s] += e - b; });
      for (int64_t c : seen) nested += c;
    }
    rows[t] = {t, begin, end, std::hash<std::thread::id>()(std::this_thread::get_id()), nested};
    if (t == throw_chunk) throw std::runtime_error("chunk " + std::to_string(t) + " failed");
  });
  return rows;
}

}  // namespace

OSMOS_BIND(parallel) {
  m.def("cpu_pool_info", [] {
    const PoolInfo info = pool_info();
    py::dict d;
    d["workers"] = info.workers;
    d["max_workers"] = info.max_workers;
    d["spin_us"] = info.spin_us;
    d["jobs"] = info.jobs;
    d["spawned"] = info.spawned;
    d["serial"] = info.serial;
    d["openmp"] = info.openmp;
    d["kind"] = std::string(info.kind);
    return d;
  }, "State of the CPU thread pools behind every multithreaded CPU kernel: which runs the next call "
     "(kind: 'openmp', OpenMP's team, shared with torch's CPU ops; or 'threads', osmos's own workers), "
     "the own pool's worker threads started, their cap, the idle spin before a worker blocks (us), and "
     "how many calls ran on OpenMP, on the own pool, on threads of their own (pool busy) or serially "
     "(called from inside a chunk).");
  m.def("set_cpu_pool", [](const std::string& kind) {
    if (!set_pool_kind(kind))
      throw std::invalid_argument("cpu pool must be 'openmp' (if built with OpenMP) or 'threads', got '" + kind + "'");
  }, py::arg("kind"), "Which pool runs the chunks of multithreaded CPU kernels: 'openmp' or 'threads'.");
  m.def("set_cpu_pool_spin_us", &set_pool_spin_us, py::arg("us"),
        "How long an idle pool worker spins before it blocks (microseconds, 0 to 10000).");
  m.def(
      "_parallel_chunks_probe",
      [](int64_t n, int nthreads, int throw_chunk, int nested_threads, int64_t work_us) {
        py::gil_scoped_release release;
        return probe(n, nthreads, throw_chunk, nested_threads, work_us);
      },
      py::arg("n"), py::arg("nthreads"), py::arg("throw_chunk") = -1, py::arg("nested_threads") = 0,
      py::arg("work_us") = 0,
      "Test hook: parallel_chunks(n, nthreads) with chunks that busy-wait work_us, optionally throw "
      "(chunk throw_chunk) or call parallel_chunks inside; one (tid, begin, end, thread, nested) per chunk.");
}
