// CRC-32C by carry-less multiplication (VPCLMULQDQ on 512-bit vectors), fused with 64-byte
// non-temporal stores. The crc32 instruction handles 8 bytes per cycle on one core; folding four
// 64-byte accumulators with vpclmulqdq handles several times that (measured in RESULTS.md).
//
// Folding, in the reflected bit order of CRC-32C (bit k of a 128-bit lane is the coefficient of
// x^(127-k); its low quadword holds the higher-degree half): a lane A that lies D bits before a lane
// B of the message contributes A x^D to it, so B ^= hi(A) (x^(D+64) mod P) ^ lo(A) (x^D mod P);
// a carry-less product of two reflected operands lands one degree low, so the constants are
// x^(D+63) and x^(D-1) mod P. The message is folded into one 128-bit lane R with the same CRC as
// R itself, whose register two crc32 instructions finish; the starting register is XORed into the
// first four bytes, as the crc32 instruction does.
#include <immintrin.h>

#include <algorithm>
#include <cstring>

#include "cpu/crc32c.h"
#include "cpu/crc32c_hw.h"

namespace osmos::cpu {
namespace {

constexpr uint32_t kPoly = 0x1EDC6F41u;  // CRC-32C (Castagnoli), normal form, x^32 implicit

// x^n mod P in normal form (bit i: coefficient of x^i).
constexpr uint32_t xpow_mod(int n) {
  uint32_t r = 1;
  for (int i = 0; i < n; ++i) r = (r << 1) ^ ((r & 0x80000000u) ? kPoly : 0u);
  return r;
}

constexpr uint64_t reflected_high(uint32_t c) {  // c reflected into bits 32..63 of a quadword
  uint32_t r = 0;
  for (int i = 0; i < 32; ++i) r |= ((c >> i) & 1u) << (31 - i);
  return uint64_t(r) << 32;
}

// The two folding constants for distance D bits, as one 128-bit lane: low quadword multiplies the
// lane's low (higher-degree) quadword.
template <int D>
inline __m128i fold_constants() {
  constexpr uint64_t lo = reflected_high(xpow_mod(D + 63)), hi = reflected_high(xpow_mod(D - 1));
  return _mm_set_epi64x(int64_t(hi), int64_t(lo));
}

inline __m512i fold512(__m512i a, __m512i k, __m512i b) {
  return _mm512_ternarylogic_epi64(_mm512_clmulepi64_epi128(a, k, 0x00), _mm512_clmulepi64_epi128(a, k, 0x11), b, 0x96);
}
inline __m128i fold128(__m128i a, __m128i k) {
  return _mm_xor_si128(_mm_clmulepi64_si128(a, k, 0x00), _mm_clmulepi64_si128(a, k, 0x11));
}

// Folds the largest multiple of 256 bytes of src (at least 256, else nothing) into the register;
// copies what it reads to dst with non-temporal stores when Copy (dst 64-byte aligned).
template <bool Copy>
uint32_t fold_bulk(uint32_t reg, const uint8_t*& src, uint8_t*& dst, size_t& n) {
  if (n < 256) return reg;
  auto load = [&](size_t off) {
    const __m512i v = _mm512_loadu_si512(src + off);
    if constexpr (Copy) _mm512_stream_si512(reinterpret_cast<__m512i*>(dst + off), v);
    return v;
  };
  __m512i z0 = _mm512_xor_si512(load(0), _mm512_zextsi128_si512(_mm_cvtsi32_si128(int(reg))));
  __m512i z1 = load(64), z2 = load(128), z3 = load(192);
  src += 256, n -= 256;
  if constexpr (Copy) dst += 256;
  const __m512i k2048 = _mm512_broadcast_i32x4(fold_constants<2048>());
  for (; n >= 256; n -= 256) {
    z0 = fold512(z0, k2048, load(0));
    z1 = fold512(z1, k2048, load(64));
    z2 = fold512(z2, k2048, load(128));
    z3 = fold512(z3, k2048, load(192));
    src += 256;
    if constexpr (Copy) dst += 256;
  }
  const __m512i k512 = _mm512_broadcast_i32x4(fold_constants<512>());
  __m512i z = fold512(fold512(fold512(z0, k512, z1), k512, z2), k512, z3);
  __m128i r = _mm512_extracti32x4_epi32(z, 3);
  r = _mm_xor_si128(r, fold128(_mm512_extracti32x4_epi32(z, 0), fold_constants<384>()));
  r = _mm_xor_si128(r, fold128(_mm512_extracti32x4_epi32(z, 1), fold_constants<256>()));
  r = _mm_xor_si128(r, fold128(_mm512_extracti32x4_epi32(z, 2), fold_constants<128>()));
  const uint64_t lo = uint64_t(_mm_cvtsi128_si64(r)), hi = uint64_t(_mm_extract_epi64(r, 1));
  return uint32_t(_mm_crc32_u64(_mm_crc32_u64(0, lo), hi));
}

}  // namespace

uint32_t crc32c_raw_vpclmul(uint32_t reg, const uint8_t* src, uint8_t* dst, size_t n) {
  if (dst == nullptr) {
    uint8_t* none = nullptr;
    reg = fold_bulk<false>(reg, src, none, n);
    return crc32c_hw_serial(reg, src, nullptr, n);
  }
  const size_t head = std::min(n, size_t((64 - (reinterpret_cast<uintptr_t>(dst) & 63)) & 63));
  reg = crc32c_hw_serial(reg, src, dst, head);
  src += head, dst += head, n -= head;
  const bool streamed = n >= 256;
  reg = fold_bulk<true>(reg, src, dst, n);
  if (streamed) _mm_sfence();  // order the non-temporal stores before anything that follows
  return crc32c_hw_serial(reg, src, dst, n);
}

void crc32c_raw3_vpclmul(uint32_t* reg, const void* a, const void* b, const void* c, size_t n) {
  reg[0] = crc32c_raw_vpclmul(reg[0], static_cast<const uint8_t*>(a), nullptr, n);
  reg[1] = crc32c_raw_vpclmul(reg[1], static_cast<const uint8_t*>(b), nullptr, n);
  reg[2] = crc32c_raw_vpclmul(reg[2], static_cast<const uint8_t*>(c), nullptr, n);
}

}  // namespace osmos::cpu
