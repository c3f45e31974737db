// Element types as the Python layer passes them (python/osmos/ops/_common.py mirrors this).
#pragma once
#include <cstdint>
#include <cstring>

namespace osmos {

enum class DType : int { f32 = 0, f16 = 1, bf16 = 2, f64 = 3, i64 = 4, i32 = 5, u8 = 6 };

// IEEE half and bfloat16 conversions, round-to-nearest-even, identical on host and device.
#include "osmos/hd.h"

OSMOS_HD uint32_t f32_bits(float f) {
#if defined(__CUDA_ARCH__)
  return __float_as_uint(f);
#else
  uint32_t u; std::memcpy(&u, &f, 4); return u;
#endif
}
OSMOS_HD float bits_f32(uint32_t u) {
#if defined(__CUDA_ARCH__)
  return __uint_as_float(u);
#else
  float f; std::memcpy(&f, &u, 4); return f;
#endif
}

OSMOS_HD float bf16_to_f32(uint16_t h) { return bits_f32(uint32_t(h) << 16); }
OSMOS_HD uint16_t f32_to_bf16(float f) {
  uint32_t u = f32_bits(f);
  if ((u & 0x7fffffffu) > 0x7f800000u) return uint16_t((u >> 16) | 0x40);  // quiet NaN
  u += 0x7fffu + ((u >> 16) & 1u);
  return uint16_t(u >> 16);
}

OSMOS_HD float f16_to_f32(uint16_t h) {
  uint32_t sign = uint32_t(h & 0x8000u) << 16;
  uint32_t exp = (h >> 10) & 0x1fu, man = h & 0x3ffu;
  if (exp == 0x1f) return bits_f32(sign | 0x7f800000u | (man << 13));
  if (exp == 0) {
    if (man == 0) return bits_f32(sign);
    // subnormal: value = man * 2^-24
    float v = float(man) * 5.9604644775390625e-08f;
    return bits_f32(sign | f32_bits(v));
  }
  return bits_f32(sign | ((exp + 112u) << 23) | (man << 13));
}
OSMOS_HD uint16_t f32_to_f16(float f) {
  uint32_t u = f32_bits(f);
  uint16_t sign = uint16_t((u >> 16) & 0x8000u);
  uint32_t a = u & 0x7fffffffu;
  if (a > 0x7f800000u) return uint16_t(sign | 0x7e00u);            // NaN
  if (a >= 0x477ff000u) return uint16_t(sign | 0x7c00u);           // overflow (incl. rounding) -> inf
  if (a < 0x38800000u) {                                           // subnormal or zero in half
    // round(a_value * 2^24) to nearest even, done in float: exact since result < 2^11
    float v = bits_f32(a) * 16777216.0f;
    // v < 1024; nearbyint with ties-to-even
    float r = v + 8388608.0f - 8388608.0f;  // relies on default rounding mode (RNE)
    return uint16_t(sign | uint16_t(r));
  }
  uint32_t mant_round = a + 0xfffu + ((a >> 13) & 1u);
  return uint16_t(sign | uint16_t((mant_round - 0x38000000u) >> 13));
}

// Storage-type tags for the float dtypes: how an element is stored, widened to float, and
// rounded back (round-to-nearest-even). round(v) is v rounded to the dtype, as a float.
struct F32 {
  using storage = float;
  static constexpr DType code = DType::f32;
  OSMOS_HD static float to_float(float v) { return v; }
  OSMOS_HD static float from_float(float v) { return v; }
  OSMOS_HD static float round(float v) { return v; }
};
struct F16 {
  using storage = uint16_t;
  static constexpr DType code = DType::f16;
  OSMOS_HD static float to_float(uint16_t v) { return f16_to_f32(v); }
  OSMOS_HD static uint16_t from_float(float v) { return f32_to_f16(v); }
  OSMOS_HD static float round(float v) { return f16_to_f32(f32_to_f16(v)); }
};
struct BF16 {
  using storage = uint16_t;
  static constexpr DType code = DType::bf16;
  OSMOS_HD static float to_float(uint16_t v) { return bf16_to_f32(v); }
  OSMOS_HD static uint16_t from_float(float v) { return f32_to_bf16(v); }
  OSMOS_HD static float round(float v) { return bf16_to_f32(f32_to_bf16(v)); }
};

}  // namespace osmos
