#include <pybind11/pybind11.h>

#include "bindings/registry.h"
#include "cuda/topk_compress.h"

namespace py = pybind11;

OSMOS_BIND(topk_compress) {
  m.def("topk_compress_workspace_bytes", &osmos::cuda::topk_compress_workspace_bytes, py::arg("n"),
        py::arg("k"), py::arg("algo") = 0, "Bytes of device workspace topk_compress needs.");
  m.def(
      "topk_compress",
      [](uintptr_t x, int x_dtype, uintptr_t state, int state_dtype, int64_t n, int64_t k,
         uintptr_t values, uintptr_t indices, uintptr_t workspace, size_t workspace_bytes, uintptr_t stream,
         int algo) {
        py::gil_scoped_release release;
        osmos::cuda::topk_compress(as_ptr<const void>(x), osmos::DType(x_dtype), as_ptr<void>(state),
                                   osmos::DType(state_dtype), n, k, algo, as_ptr<void>(values),
                                   as_ptr<int64_t>(indices), as_ptr<void>(workspace), workspace_bytes,
                                   as_ptr<void>(stream));
      },
      py::arg("x_ptr"), py::arg("x_dtype"), py::arg("state_ptr"), py::arg("state_dtype"), py::arg("n"),
      py::arg("k"), py::arg("values_ptr"), py::arg("indices_ptr"), py::arg("workspace_ptr"),
      py::arg("workspace_bytes"), py::arg("stream"), py::arg("algo") = 0,
      "TopK EF21 step on device pointers, enqueued on `stream` of the current device (see the CPU "
      "topk_compress for the contract). algo: 0 auto, 1 exact radix over all keys, 2 sampled "
      "threshold + candidates where it applies; all give the same bits.");
}
