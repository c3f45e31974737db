#include <pybind11/pybind11.h>

#include "bindings/registry.h"
#include "cpu/topk_accumulate.h"
#include "cpu/topk_compress.h"

namespace py = pybind11;

OSMOS_BIND(topk_compress) {
  m.def(
      "topk_compress",
      [](uintptr_t x, int x_dtype, uintptr_t state, int state_dtype, int64_t n, int64_t k,
         uintptr_t values, uintptr_t indices, int num_threads) {
        py::gil_scoped_release release;
        osmos::cpu::topk_compress(as_ptr<const void>(x), osmos::DType(x_dtype), as_ptr<void>(state),
                                  osmos::DType(state_dtype), n, k, as_ptr<void>(values),
                                  as_ptr<int64_t>(indices), num_threads);
      },
      py::arg("x_ptr"), py::arg("x_dtype"), py::arg("state_ptr"), py::arg("state_dtype"), py::arg("n"),
      py::arg("k"), py::arg("values_ptr"), py::arg("indices_ptr"), py::arg("num_threads"),
      "TopK EF21 step on contiguous x[n], state[n]: values[k] (state's dtype) and ascending int64 "
      "indices[k] of the k largest |x - state| (ties to the lower index); state[indices] += values.");
  m.def(
      "topk_accumulate",
      [](uintptr_t out, int64_t n, uintptr_t values, int64_t values_stride, uintptr_t indices,
         bool indices_int64, int64_t indices_stride, uintptr_t counts, uintptr_t weights, int64_t rows,
         int64_t cols, float alpha) {
        py::gil_scoped_release release;
        return osmos::cpu::topk_accumulate(as_ptr<float>(out), n, as_ptr<const float>(values), values_stride,
                                           as_ptr<const void>(indices), indices_int64, indices_stride,
                                           as_ptr<const int64_t>(counts), as_ptr<const float>(weights), rows,
                                           cols, alpha);
      },
      py::arg("out_ptr"), py::arg("n"), py::arg("values_ptr"), py::arg("values_stride"), py::arg("indices_ptr"),
      py::arg("indices_int64"), py::arg("indices_stride"), py::arg("counts_ptr"), py::arg("weights_ptr"),
      py::arg("rows"), py::arg("cols"), py::arg("alpha"),
      "out[indices[r, j]] += alpha * weights[r] * values[r, j] for j < counts[r], rows in order "
      "(float32; counts_ptr / weights_ptr may be 0). Returns -1, or the flat position of the first "
      "index outside [0, n) (nothing written).");
}
