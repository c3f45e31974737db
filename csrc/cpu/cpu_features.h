// Run-time CPU feature detection and the ISA level every CPU kernel dispatches on.
#pragma once
#include <string>

namespace osmos::cpu {

enum class Isa : int { scalar = 0, avx2 = 1, avx512 = 2 };

struct Features {
  bool avx2 = false, fma = false, f16c = false, bmi2 = false;
  bool avx512f = false, avx512bw = false, avx512vl = false, avx512dq = false, avx512vbmi = false;
  bool gfni = false, vpclmulqdq = false;
};

const Features& features();           // what the CPU and OS support
Isa detected_isa();                   // best level the CPU supports
Isa isa();                            // level in use: min(detected, limit set by OSMOS_CPU_ISA or set_isa_limit)
void set_isa_limit(Isa limit);        // for tests and benchmarks: force a lower path
bool use_gfni();                      // GFNI instructions usable (and not disabled by the limit)
bool use_vpclmul();                   // VPCLMULQDQ on 512-bit vectors usable (AVX-512 level, not disabled)
void set_vpclmul_enabled(bool on);    // for tests and benchmarks: the AVX-512 paths without it
const char* isa_name(Isa isa);
Isa isa_from_name(const std::string& name);  // throws std::invalid_argument

}  // namespace osmos::cpu
