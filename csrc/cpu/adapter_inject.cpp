// Portable path and dispatcher of the fused rank-1 adapter injection (see adapter_inject.h).
#include "cpu/adapter_inject.h"

#include <stdexcept>
#include <vector>

#include "cpu/cpu_features.h"
#include "cpu/parallel.h"
#include "osmos/dtype.h"

namespace osmos::cpu {
namespace {

// Element access of x / y / out in their storage type, as f32.
struct F32 {
  static float get(const void* p, int64_t i) { return static_cast<const float*>(p)[i]; }
  static void put(void* p, int64_t i, float v) { static_cast<float*>(p)[i] = v; }
};
struct F16 {
  static float get(const void* p, int64_t i) { return f16_to_f32(static_cast<const uint16_t*>(p)[i]); }
  static void put(void* p, int64_t i, float v) { static_cast<uint16_t*>(p)[i] = f32_to_f16(v); }
};
struct BF16 {
  static float get(const void* p, int64_t i) { return bf16_to_f32(static_cast<const uint16_t*>(p)[i]); }
  static void put(void* p, int64_t i, float v) { static_cast<uint16_t*>(p)[i] = f32_to_bf16(v); }
};

template <class E>
void rows_scalar(const AdapterInjectArgs& a, int64_t r0, int64_t r1, float* q) {
  const int64_t in = a.in, out = a.out_features, C = a.adapters;
  for (int64_t r = r0; r < r1; ++r) {
    const int64_t b = r / a.tokens;
    for (int64_t k = 0; k < C; ++k) {
      const float* d = a.down + k * in;
      float s = 0.0f;
      for (int64_t c = 0; c < in; ++c) s += E::get(a.x, r * in + c) * d[c];
      q[k] = s * a.gamma[b * C + k];
    }
    for (int64_t o = 0; o < out; ++o) {
      float acc = E::get(a.y, r * out + o);
      for (int64_t k = 0; k < C; ++k) acc += q[k] * a.up[k * out + o];
      E::put(a.out, r * out + o, acc);
    }
  }
}

}  // namespace

void adapter_inject_rows_scalar(const AdapterInjectArgs& a, int64_t r0, int64_t r1, float* q) {
  switch (DType(a.dtype)) {
    case DType::f32: return rows_scalar<F32>(a, r0, r1, q);
    case DType::f16: return rows_scalar<F16>(a, r0, r1, q);
    case DType::bf16: return rows_scalar<BF16>(a, r0, r1, q);
    default: throw std::invalid_argument("adapter_inject: x must be float32, float16 or bfloat16");
  }
}

void adapter_inject(const AdapterInjectArgs& a, int threads) {
  const int64_t rows = a.batch * a.tokens;
  if (rows == 0) return;
  const bool wide = isa() == Isa::avx512;
  // At least ~64K elements of x and y per thread, so thread start-up stays small.
  const int64_t per_row = a.in + a.out_features + 1;
  const int n = threads_for(rows, threads, (int64_t(1) << 16) / per_row + 1);
  parallel_chunks(rows, n, [&](int, int64_t r0, int64_t r1) {
    std::vector<float> q(size_t(a.adapters) + 1);
    if (wide) adapter_inject_rows_avx512(a, r0, r1, q.data());
    else adapter_inject_rows_scalar(a, r0, r1, q.data());
  });
}

}  // namespace osmos::cpu
