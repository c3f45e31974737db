#include "bindings/registry.h"

namespace osmos::cpu {
void cache_select(const void* h, const void* gate, const void* fresh, void* cache, const uint8_t* use_cache,
                  void* out, int dtype, int64_t B, int64_t T, int64_t D, int nthreads);
}

namespace py = pybind11;

OSMOS_BIND(cache_select) {
  m.def("cache_select", [](uintptr_t h, uintptr_t gate, uintptr_t fresh, uintptr_t cache, uintptr_t use_cache,
                           uintptr_t out, int dtype, int64_t B, int64_t T, int64_t D, int nthreads) {
    py::gil_scoped_release release;
    osmos::cpu::cache_select(as_ptr<const void>(h), as_ptr<const void>(gate), as_ptr<const void>(fresh),
                             as_ptr<void>(cache), as_ptr<const uint8_t>(use_cache), as_ptr<void>(out), dtype, B, T,
                             D, nthreads);
  });
}
