// osmos._C.adapter_inject: fused rank-1 adapter injection (csrc/cpu/adapter_inject.h).
#include <pybind11/pybind11.h>

#include "bindings/registry.h"
#include "cpu/adapter_inject.h"

namespace py = pybind11;

OSMOS_BIND(adapter_inject) {
  m.def(
      "adapter_inject",
      [](uintptr_t x, uintptr_t y, uintptr_t out, uintptr_t down, uintptr_t up, uintptr_t gamma, int dtype,
         int64_t batch, int64_t tokens, int64_t in, int64_t out_features, int64_t adapters, int threads) {
        osmos::cpu::AdapterInjectArgs a{as_ptr<const void>(x), as_ptr<const void>(y), as_ptr<void>(out),
                                        as_ptr<const float>(down), as_ptr<const float>(up),
                                        as_ptr<const float>(gamma), dtype, batch, tokens, in, out_features,
                                        adapters};
        py::gil_scoped_release release;
        osmos::cpu::adapter_inject(a, threads);
      },
      py::arg("x"), py::arg("y"), py::arg("out"), py::arg("down"), py::arg("up"), py::arg("gamma"),
      py::arg("dtype"), py::arg("batch"), py::arg("tokens"), py::arg("in_features"), py::arg("out_features"),
      py::arg("adapters"), py::arg("threads"),
      "out[r] = y[r] + sum_k gamma[r / tokens, k] (x[r] . down[k]) up[k]; out may alias y.");
}
