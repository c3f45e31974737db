// The interleaved SSE4.2 crc32 kernel, fused with a copy. Included by crc32c_avx2.cpp and
// crc32c_avx512.cpp, each giving its own 64-byte copy (internal linkage: every ISA file keeps its
// own instantiation).
//
// Layout of one call: a head, checksummed and copied byte by byte until dst is 64-byte aligned
// (so the non-temporal stores are aligned); then blocks of 3 * kCrc32cStride bytes, each three
// streams a | b | c checksummed side by side and merged as shift(shift(a) ^ b) ^ c; then a tail
// on one stream with plain stores.
#pragma once
#include <immintrin.h>

#include <cstdint>
#include <cstring>

#include "cpu/crc32c.h"

namespace osmos::cpu {
namespace {

inline uint64_t load_u64(const uint8_t* p) {
  uint64_t w;
  std::memcpy(&w, p, 8);
  return w;
}

// One stream, 8 bytes per crc32 instruction; copies with memcpy when dst is set.
inline uint32_t crc32c_hw_serial(uint32_t reg, const uint8_t* src, uint8_t* dst, size_t n) {
  if (dst != nullptr) std::memcpy(dst, src, n);
  uint64_t r = reg;
  for (; n >= 8; n -= 8, src += 8) r = _mm_crc32_u64(r, load_u64(src));
  uint32_t r32 = uint32_t(r);
  for (; n > 0; --n, ++src) r32 = _mm_crc32_u8(r32, *src);
  return r32;
}

// Copy64(dst, src) copies 64 bytes to a 64-byte aligned dst with non-temporal stores.
template <class Copy64>
uint32_t crc32c_hw_interleaved(uint32_t reg, const uint8_t* src, uint8_t* dst, size_t n, Copy64 copy64) {
  constexpr size_t S = kCrc32cStride;
  if (dst != nullptr) {
    const size_t head = std::min(n, size_t((64 - (reinterpret_cast<uintptr_t>(dst) & 63)) & 63));
    reg = crc32c_hw_serial(reg, src, dst, head);
    src += head, dst += head, n -= head;
  }
  const bool streamed = dst != nullptr && n >= 3 * S;
  for (; n >= 3 * S; n -= 3 * S, src += 3 * S) {
    uint64_t a = reg, b = 0, c = 0;
    for (size_t i = 0; i < S; i += 64) {
      if (dst != nullptr) {
        copy64(dst + i, src + i);
        copy64(dst + S + i, src + S + i);
        copy64(dst + 2 * S + i, src + 2 * S + i);
      }
      for (size_t j = i; j < i + 64; j += 8) {
        a = _mm_crc32_u64(a, load_u64(src + j));
        b = _mm_crc32_u64(b, load_u64(src + S + j));
        c = _mm_crc32_u64(c, load_u64(src + 2 * S + j));
      }
    }
    reg = crc32c_shift_stride(crc32c_shift_stride(uint32_t(a)) ^ uint32_t(b)) ^ uint32_t(c);
    if (dst != nullptr) dst += 3 * S;
  }
  if (streamed) _mm_sfence();  // order the non-temporal stores before anything that follows
  return crc32c_hw_serial(reg, src, dst, n);
}

}  // namespace
}  // namespace osmos::cpu
