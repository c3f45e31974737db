#include <pybind11/pybind11.h>

#include "bindings/registry.h"
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
}
