// TopK EF21 compression math shared by the CPU and CUDA kernels, so both rank and round
// exactly alike: d = x - state in state's dtype, ranked by magnitude_key(d).
#pragma once
#include <cstdint>

#include "osmos/dtype.h"

namespace osmos::topk {

// Every NaN's |d| maps here: above +inf (0x7f800000), so NaNs rank first and tie.
constexpr uint32_t kNanKey = 0x7f800001u;

// uint32 key ordering |d| like the floats do: the bits of |d| (IEEE order = integer order for
// non-negative floats), with NaNs canonicalised. -0.0 and +0.0 both give 0.
OSMOS_HD uint32_t magnitude_key(float d) {
  uint32_t a = f32_bits(d) & 0x7fffffffu;
  return a > 0x7f800000u ? kNanKey : a;
}

// d = x.to(S) - state, computed in float and rounded to S (exactly torch's elementwise rule).
template <class X, class S>
OSMOS_HD float diff(typename X::storage x, typename S::storage s) {
  return S::round(X::to_float(x) - S::to_float(s));
}

// Radix select over 32-bit keys, most significant digit first: 11 + 11 + 10 bits.
constexpr int kLevels = 3;
constexpr int kRadixBins = 2048;
OSMOS_HD int level_shift(int level) { return level == 0 ? 21 : (level == 1 ? 10 : 0); }
OSMOS_HD uint32_t level_digit_mask(int level) { return level == 2 ? 0x3ffu : 0x7ffu; }

// Calls fn(X{}, S{}) with the tags for the (x dtype, state dtype) pair; false if unsupported.
// Supported: state in x's dtype, or state float32.
template <class Fn>
bool dispatch_pair(DType xt, DType st, Fn&& fn) {
  if (st == DType::f32) {
    if (xt == DType::f32) { fn(F32{}, F32{}); return true; }
    if (xt == DType::f16) { fn(F16{}, F32{}); return true; }
    if (xt == DType::bf16) { fn(BF16{}, F32{}); return true; }
  } else if (st == DType::f16 && xt == DType::f16) {
    fn(F16{}, F16{}); return true;
  } else if (st == DType::bf16 && xt == DType::bf16) {
    fn(BF16{}, BF16{}); return true;
  }
  return false;
}

}  // namespace osmos::topk
