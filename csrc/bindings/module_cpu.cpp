// osmos._C: the CPU kernels. Every hot path registers itself from csrc/bindings/cpu_<name>.cpp.
#include <pybind11/pybind11.h>

#include "bindings/registry.h"
#include "cpu/cpu_features.h"

namespace py = pybind11;
using namespace osmos::cpu;

PYBIND11_MODULE(_C, m) {
  m.doc() = "osmos CPU kernels (no libtorch dependency)";
  m.def("cpu_isa", [] { return std::string(isa_name(isa())); }, "ISA path the CPU kernels use now");
  m.def("detected_isa", [] { return std::string(isa_name(detected_isa())); });
  m.def("set_cpu_isa", [](const std::string& name) { set_isa_limit(isa_from_name(name)); },
        "Limit the CPU kernels to an ISA path: 'scalar', 'avx2' or 'avx512'.");
  m.def("cpu_features", [] {
    const Features& f = features();
    py::dict d;
    d["avx2"] = f.avx2; d["fma"] = f.fma; d["f16c"] = f.f16c; d["bmi2"] = f.bmi2;
    d["avx512f"] = f.avx512f; d["avx512bw"] = f.avx512bw; d["avx512vl"] = f.avx512vl;
    d["avx512dq"] = f.avx512dq; d["avx512vbmi"] = f.avx512vbmi; d["gfni"] = f.gfni;
    d["vpclmulqdq"] = f.vpclmulqdq;
    return d;
  });
  m.def("set_cpu_vpclmul", &set_vpclmul_enabled, py::arg("enabled"),
        "Allow (default) or forbid the VPCLMULQDQ CRC-32C kernels (tests and benchmarks: the AVX-512 "
        "paths without them).");
  m.def("cpu_uses_vpclmul", &use_vpclmul, "Whether CRC-32C runs on the VPCLMULQDQ kernels now.");
  osmos::run_binders(m);
}
