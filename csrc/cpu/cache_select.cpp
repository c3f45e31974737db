// HarmoniCa's cache step for one cache unit, per sample of a batch:
//   src     = use_cache[b] ? cache[b] : fresh[b]
//   out[b]  = h[b] + gate[b] * src          (gate broadcast over tokens; absent = 1; h absent = 0)
//   cache[b] = src                           (refreshed where the unit was computed)
// One pass over h, fresh / cache and out. Rows are [B, T, D]; gate is [B, D].
#include <cstdint>

#include "cpu/parallel.h"
#include "osmos/dtype.h"

namespace osmos::cpu {

namespace {
struct F32 {
  using T = float;
  static float ld(const T* p, int64_t i) { return p[i]; }
  static void st(T* p, int64_t i, float v) { p[i] = v; }
};
struct F16 {
  using T = uint16_t;
  static float ld(const T* p, int64_t i) { return f16_to_f32(p[i]); }
  static void st(T* p, int64_t i, float v) { p[i] = f32_to_f16(v); }
};
struct BF16 {
  using T = uint16_t;
  static float ld(const T* p, int64_t i) { return bf16_to_f32(p[i]); }
  static void st(T* p, int64_t i, float v) { p[i] = f32_to_bf16(v); }
};

template <class E>
void run(const void* h_, const void* gate_, const void* fresh_, void* cache_, const uint8_t* use_cache,
         void* out_, int64_t B, int64_t T, int64_t D, int nthreads) {
  using V = typename E::T;
  const V* h = static_cast<const V*>(h_);
  const V* gate = static_cast<const V*>(gate_);
  const V* fresh = static_cast<const V*>(fresh_);
  V* cache = static_cast<V*>(cache_);
  V* out = static_cast<V*>(out_);
  const int64_t rows = B * T;
  parallel_chunks(rows, int(std::min<int64_t>(threads_for(rows * D, nthreads, 1 << 15), rows > 0 ? rows : 1)),
                  [&](int, int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const int64_t b = r / T, off = r * D;
      const bool reuse = use_cache[b] != 0;
      const V* src = reuse ? cache + off : fresh + off;
      const V* g = gate ? gate + b * D : nullptr;
#pragma omp simd
      for (int64_t j = 0; j < D; ++j) {
        const float s = E::ld(src, j);
        E::st(out, off + j, (h ? E::ld(h, off + j) : 0.0f) + (g ? E::ld(g, j) : 1.0f) * s);
      }
      if (!reuse)
        for (int64_t j = 0; j < D; ++j) cache[off + j] = fresh[off + j];
    }
  });
}
}  // namespace

void cache_select(const void* h, const void* gate, const void* fresh, void* cache, const uint8_t* use_cache,
                  void* out, int dtype, int64_t B, int64_t T, int64_t D, int nthreads) {
  switch (DType(dtype)) {
    case DType::f16: return run<F16>(h, gate, fresh, cache, use_cache, out, B, T, D, nthreads);
    case DType::bf16: return run<BF16>(h, gate, fresh, cache, use_cache, out, B, T, D, nthreads);
    default: return run<F32>(h, gate, fresh, cache, use_cache, out, B, T, D, nthreads);
  }
}

}  // namespace osmos::cpu
