#include "cpu/cpu_features.h"

#include <atomic>
#include <cstdlib>
#include <stdexcept>

namespace osmos::cpu {
namespace {

Features detect() {
  Features f;
#if defined(__x86_64__) || defined(__i386__)
  __builtin_cpu_init();
  f.avx2 = __builtin_cpu_supports("avx2");
  f.fma = __builtin_cpu_supports("fma");
  f.bmi2 = __builtin_cpu_supports("bmi2");
  f.avx512f = __builtin_cpu_supports("avx512f");
  f.avx512bw = __builtin_cpu_supports("avx512bw");
  f.avx512vl = __builtin_cpu_supports("avx512vl");
  f.avx512dq = __builtin_cpu_supports("avx512dq");
  f.avx512vbmi = __builtin_cpu_supports("avx512vbmi");
  f.gfni = __builtin_cpu_supports("gfni");
  f.vpclmulqdq = __builtin_cpu_supports("vpclmulqdq") && __builtin_cpu_supports("pclmul");
  // f16c has no __builtin_cpu_supports name on older compilers; every AVX2 CPU has it.
  f.f16c = f.avx2;
#endif
  return f;
}

Isa limit_from_env() {
  const char* env = std::getenv("OSMOS_CPU_ISA");
  if (!env || !*env) return Isa::avx512;
  try {
    return isa_from_name(env);
  } catch (const std::invalid_argument&) {
    return Isa::avx512;
  }
}

std::atomic<int> g_limit{-1};

}  // namespace

const Features& features() {
  static const Features f = detect();
  return f;
}

Isa detected_isa() {
  const Features& f = features();
  if (f.avx512f && f.avx512bw && f.avx512vl && f.avx512dq && f.fma && f.bmi2) return Isa::avx512;
  if (f.avx2 && f.fma && f.bmi2) return Isa::avx2;
  return Isa::scalar;
}

Isa isa() {
  int limit = g_limit.load(std::memory_order_relaxed);
  if (limit < 0) {
    limit = int(limit_from_env());
    g_limit.store(limit, std::memory_order_relaxed);
  }
  int d = int(detected_isa());
  return Isa(d < limit ? d : limit);
}

void set_isa_limit(Isa limit) { g_limit.store(int(limit), std::memory_order_relaxed); }

bool use_gfni() { return features().gfni && isa() == Isa::avx512; }

namespace {
std::atomic<bool> g_vpclmul_enabled{true};
}
bool use_vpclmul() { return features().vpclmulqdq && isa() == Isa::avx512 && g_vpclmul_enabled.load(); }
void set_vpclmul_enabled(bool on) { g_vpclmul_enabled.store(on); }

const char* isa_name(Isa isa) {
  switch (isa) {
    case Isa::avx512: return "avx512";
    case Isa::avx2: return "avx2";
    default: return "scalar";
  }
}

Isa isa_from_name(const std::string& name) {
  if (name == "scalar") return Isa::scalar;
  if (name == "avx2") return Isa::avx2;
  if (name == "avx512") return Isa::avx512;
  throw std::invalid_argument("unknown CPU ISA '" + name + "' (expected scalar, avx2 or avx512)");
}

}  // namespace osmos::cpu
