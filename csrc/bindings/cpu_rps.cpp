// osmos._C bindings of the randomized-parameter-sharing kernels (csrc/cpu/rps.cpp).
#include <pybind11/stl.h>

#include <vector>

#include "bindings/registry.h"
#include "cpu/rps.h"
#include "osmos/rps_hash.h"

namespace py = pybind11;

static const int64_t* checked_config(const std::vector<int64_t>& config) {
  if (config.size() != size_t(osmos::rps::kConfigLen)) throw std::invalid_argument("rps: config must have 15 ints");
  return config.data();
}

OSMOS_BIND(rps) {
  m.def("rps_gather", [](uintptr_t M, uintptr_t W, int dtype, const std::vector<int64_t>& config, int64_t rows,
                         int64_t cols, double scale, int threads) {
    const int64_t* c = checked_config(config);
    py::gil_scoped_release release;
    osmos::cpu::rps_gather(as_ptr<const void>(M), as_ptr<void>(W), osmos::DType(dtype), c, rows, cols, scale, threads);
  }, "W[rows, cols] = scale * sign * M[h] (osmos/rps_hash.h)");
  m.def("rps_scatter", [](uintptr_t G, int dtype, uintptr_t acc, const std::vector<int64_t>& config, int64_t rows,
                          int64_t cols, double scale, int threads) {
    const int64_t* c = checked_config(config);
    py::gil_scoped_release release;
    osmos::cpu::rps_scatter(as_ptr<const void>(G), osmos::DType(dtype), as_ptr<void>(acc), c, rows, cols, scale, threads);
  }, "acc[j] = sum of scale * sign * G over the elements mapped to j (acc is overwritten), race-free and in "
     "element order (bitwise reproducible)");
  m.def("rps_indices", [](uintptr_t index, uintptr_t sign, const std::vector<int64_t>& config, int64_t rows,
                          int64_t cols, int threads) {
    const int64_t* c = checked_config(config);
    py::gil_scoped_release release;
    osmos::cpu::rps_indices(as_ptr<int64_t>(index), as_ptr<int8_t>(sign), c, rows, cols, threads);
  }, "int64 M index and int8 sign of every element");
}
