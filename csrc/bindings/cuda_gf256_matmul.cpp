// osmos._cuda binding of the GF(2^8) erasure-coding kernel.
#include <cuda_runtime.h>
#include <pybind11/pybind11.h>

#include <stdexcept>
#include <string>

#include "bindings/registry.h"

namespace osmos::cuda_kernels {
cudaError_t gf256_matmul(const uint8_t* matrix, int rows, int k, const uint64_t* src, const uint64_t* dst,
                         int64_t len, bool aligned16, cudaStream_t stream);
}

namespace py = pybind11;

OSMOS_BIND(gf256_matmul) {
  m.def(
      "gf256_matmul",
      [](uintptr_t matrix, int rows, int k, uintptr_t src, uintptr_t dst, int64_t len, bool aligned16,
         uintptr_t stream) {
        if (k < 1 || k > 256 || rows < 0 || rows > 256 || len < 0)
          throw std::invalid_argument("need 1 <= k <= 256, 0 <= rows <= 256, len >= 0");
        cudaError_t err;
        {
          py::gil_scoped_release release;
          err = osmos::cuda_kernels::gf256_matmul(
              as_ptr<const uint8_t>(matrix), rows, k, as_ptr<const uint64_t>(src), as_ptr<const uint64_t>(dst),
              len, aligned16, reinterpret_cast<cudaStream_t>(stream));
        }
        if (err != cudaSuccess) throw std::runtime_error(std::string("gf256_matmul launch failed: ") + cudaGetErrorString(err));
      },
      py::arg("matrix"), py::arg("rows"), py::arg("k"), py::arg("src"), py::arg("dst"), py::arg("len"),
      py::arg("aligned16"), py::arg("stream"),
      "dst[r][i] = XOR_j matrix[r*k+j] * src[j][i]; matrix, src (k addresses) and dst (rows addresses, "
      "int64) in device memory; launched on stream.");
}
