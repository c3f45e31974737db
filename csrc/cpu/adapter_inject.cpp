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

// Written so that the compiler vectorises it at the baseline ISA: the row is widened into
// scratch, dot products use 8 partial sums, and the update runs adapter by adapter over a
// float copy of the output row. scratch: C + in + out floats.
template <class E>
void rows_scalar(const AdapterInjectArgs& a, int64_t r0, int64_t r1, float* scratch) {
  const int64_t in = a.in, out = a.out_features, C = a.adapters;
  float* q = scratch;
  float* xb = scratch + C;
  float* yb = xb + in;
  for (int64_t r = r0; r < r1; ++r) {
    const int64_t b = r / a.tokens;
    for (int64_t c = 0; c < in; ++c) xb[c] = E::get(a.x, r * in + c);
    for (int64_t k = 0; k < C; ++k) {
      const float* d = a.down + k * in;
      float s[8] = {0, 0, 0, 0, 0, 0, 0, 0};
      int64_t c = 0;
      for (; c + 8 <= in; c += 8)
        for (int j = 0; j < 8; ++j) s[j] += xb[c + j] * d[c + j];
      for (; c < in; ++c) s[0] += xb[c] * d[c];
      q[k] = (((s[0] + s[1]) + (s[2] + s[3])) + ((s[4] + s[5]) + (s[6] + s[7]))) * a.gamma[b * C + k];
    }
    for (int64_t o = 0; o < out; ++o) yb[o] = E::get(a.y, r * out + o);
    for (int64_t k = 0; k < C; ++k) {
      const float qk = q[k];
      const float* u = a.up + k * out;
      for (int64_t o = 0; o < out; ++o) yb[o] += qk * u[o];
    }
    for (int64_t o = 0; o < out; ++o) E::put(a.out, r * out + o, yb[o]);
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
    std::vector<float> scratch(size_t(4 * a.adapters + a.in + a.out_features) + 1);  // AVX-512: 4 rows' q
    if (wide) adapter_inject_rows_avx512(a, r0, r1, scratch.data());
    else adapter_inject_rows_scalar(a, r0, r1, scratch.data());
  });
}

}  // namespace osmos::cpu
