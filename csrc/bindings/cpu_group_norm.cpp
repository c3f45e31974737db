// Sliced GroupNorm: statistics pass (accumulating across slices) and normalise(+SiLU) pass.
#include "bindings/registry.h"
#include "cpu/cpu_features.h"
#include "cpu/group_norm_impl.h"

namespace py = pybind11;
using namespace osmos::cpu;
using namespace osmos::cpu::group_norm_impl;

OSMOS_BIND(group_norm) {
  m.def("group_norm_stats",
        [](uintptr_t x, int dtype, int64_t N, int64_t C, int64_t L, int64_t sN, int64_t sC, int64_t G,
           uintptr_t out, int nthreads) {
          py::gil_scoped_release release;
          View v{N, C, L, sN, sC};
          auto fn = isa() == Isa::avx512 ? group_norm_stats_avx512 : group_norm_stats_baseline;
          fn(as_ptr<const void>(x), dtype, v, G, as_ptr<double>(out), nthreads);
        });
  m.def("group_norm_apply",
        [](uintptr_t x, int dtype, int64_t N, int64_t C, int64_t L, int64_t sN, int64_t sC, int64_t G,
           uintptr_t mean, uintptr_t rstd, uintptr_t w, uintptr_t b, bool silu, uintptr_t y, int nthreads) {
          py::gil_scoped_release release;
          View v{N, C, L, sN, sC};
          auto fn = isa() == Isa::avx512 ? group_norm_apply_avx512 : group_norm_apply_baseline;
          fn(as_ptr<const void>(x), dtype, v, G, as_ptr<const float>(mean), as_ptr<const float>(rstd),
             as_ptr<const float>(w), as_ptr<const float>(b), silu, as_ptr<void>(y), nthreads);
        });
}
