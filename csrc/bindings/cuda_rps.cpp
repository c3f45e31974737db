// osmos._cuda bindings of the randomized-parameter-sharing kernels (csrc/cuda/rps.cu).
#include <pybind11/stl.h>

#include <stdexcept>
#include <vector>

#include "bindings/registry.h"
#include "cuda/rps.h"
#include "osmos/rps_hash.h"

namespace py = pybind11;

static const int64_t* checked_config(const std::vector<int64_t>& config) {
  if (config.size() != size_t(osmos::rps::kConfigLen)) throw std::invalid_argument("rps: config must have 15 ints");
  return config.data();
}
static cudaStream_t as_stream(uintptr_t s) { return reinterpret_cast<cudaStream_t>(s); }

OSMOS_BIND(rps) {
  m.def("rps_gather", [](uintptr_t M, uintptr_t W, int dtype, const std::vector<int64_t>& config, int64_t rows,
                         int64_t cols, double scale, bool walk, uintptr_t stream) {
    const int64_t* c = checked_config(config);
    py::gil_scoped_release release;
    osmos::cuda::rps_gather(as_ptr<const void>(M), as_ptr<void>(W), osmos::DType(dtype), c, rows, cols, scale, walk,
                            as_stream(stream));
  });
  m.def("rps_scatter_atomic", [](uintptr_t G, int dtype, uintptr_t acc, const std::vector<int64_t>& config,
                                 int64_t rows, int64_t cols, double scale, bool walk, uintptr_t stream) {
    const int64_t* c = checked_config(config);
    py::gil_scoped_release release;
    osmos::cuda::rps_scatter_atomic(as_ptr<const void>(G), osmos::DType(dtype), as_ptr<void>(acc), c, rows, cols, scale,
                                    walk, as_stream(stream));
  });
  m.def("rps_scatter_sorted", [](uintptr_t G, int dtype, uintptr_t acc, const std::vector<int64_t>& config,
                                 int64_t cols, double scale, uintptr_t order, uintptr_t slots, uintptr_t starts,
                                 int64_t nslots, uintptr_t stream) {
    const int64_t* c = checked_config(config);
    if (c[3] != cols) throw std::invalid_argument("rps_scatter_sorted: config cols mismatch");
    py::gil_scoped_release release;
    osmos::cuda::rps_scatter_sorted(as_ptr<const void>(G), osmos::DType(dtype), as_ptr<void>(acc), c, scale,
                                    as_ptr<const int64_t>(order), as_ptr<const int64_t>(slots),
                                    as_ptr<const int64_t>(starts), nslots, as_stream(stream));
  });
  m.def("rps_indices", [](uintptr_t index, uintptr_t sign, const std::vector<int64_t>& config, int64_t rows,
                          int64_t cols, uintptr_t stream) {
    const int64_t* c = checked_config(config);
    py::gil_scoped_release release;
    osmos::cuda::rps_indices(as_ptr<int64_t>(index), as_ptr<int8_t>(sign), c, rows, cols, as_stream(stream));
  });
}
