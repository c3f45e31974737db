// osmos._cuda: the CUDA kernels. The CUDA runtime is linked statically, so this imports on a
// machine with no GPU or driver; only device_count() and kernel launches talk to the driver.
#include <cuda_runtime.h>
#include <pybind11/pybind11.h>

#include "bindings/registry.h"

namespace py = pybind11;

PYBIND11_MODULE(_cuda, m) {
  m.doc() = "osmos CUDA kernels (no libtorch dependency)";
  m.attr("archs") = OSMOS_CUDA_ARCHS;
  m.attr("cuda_runtime_version") = CUDART_VERSION;
  m.def("device_count", []() -> py::tuple {
    int n = 0;
    cudaError_t err = cudaGetDeviceCount(&n);
    if (err != cudaSuccess) {
      cudaGetLastError();
      return py::make_tuple(0, std::string(cudaGetErrorString(err)));
    }
    return py::make_tuple(n, std::string());
  }, "(number of visible CUDA devices, reason when 0)");
  osmos::run_binders(m);
}
