#include <pybind11/pybind11.h>

#include "bindings/registry.h"
#include "cpu/convert.h"

namespace py = pybind11;

OSMOS_BIND(convert) {
  m.def(
      "convert",
      [](uintptr_t src, int src_dtype, uintptr_t dst, int dst_dtype, int64_t n, int num_threads) {
        if (n < 0) throw std::invalid_argument("convert: n must be >= 0");
        py::gil_scoped_release release;
        osmos::cpu::convert(as_ptr<const void>(src), osmos::DType(src_dtype), as_ptr<void>(dst),
                            osmos::DType(dst_dtype), n, num_threads);
      },
      py::arg("src_ptr"), py::arg("src_dtype"), py::arg("dst_ptr"), py::arg("dst_dtype"), py::arg("n"),
      py::arg("num_threads"),
      "dst[:n] = src[:n] converted between float32 / float16 / bfloat16 (dtype codes of "
      "osmos.ops._common.DTYPE_CODES), round-to-nearest-even as in osmos/dtype.h.");
}
