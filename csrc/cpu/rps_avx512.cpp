// AVX-512 (F + DQ) kernels for float32. Runs (STABLE-RPS, ROAST): masked loads and stores of up
// to 16 elements, the signs a lane mask that flips the sign bit. HashedNet: sixteen index hashes
// per step by forward differences (IndexStream), a hardware gather of M, and one sign hash per
// aligned group of 16 elements turned into such a mask. Results are bit-identical to the scalar
// kernels in rps.cpp (same indices, same products, same order of adds).
#include <immintrin.h>

#include <algorithm>
#include <cstring>

#include "cpu/avx512_lanes.h"
#include "cpu/rps_avx512.h"

namespace osmos::cpu::avx512 {
namespace {

using rps::Map;

// (a + b) mod P for 32-bit lanes a, b in [0, P): the sum is below 2^32, and when it is below P,
// sum - P wraps around above it, so the unsigned minimum picks the reduced value.
inline __m512i add_mod_prime(__m512i a, __m512i b) {
  const __m512i sum = _mm512_add_epi32(a, b);
  return _mm512_min_epu32(sum, _mm512_sub_epi32(sum, _mm512_set1_epi32(int(rps::kPrime))));
}

inline int64_t sub_mod_prime(int64_t a, int64_t b) { return a >= b ? a - b : a - b + rps::kPrime; }

// The values of a cubic polynomial mod P (rps::poly_hash with coefficients `coef`) at x, x + 1,
// ..., 16 at a time: along each lane (argument x + l + 16 k, k = 0, 1, ...) they follow from three
// forward differences by additions mod P alone (the polynomial's value at an integer equals its
// value at that integer mod P, so the argument wrapping around P needs no care). Exact integer
// arithmetic: bit for bit rps::poly_hash(rps::mod_prime(x + ...), coef).
class PolyStream {
 public:
  PolyStream(const int64_t* coef, int64_t x) {
    alignas(64) int32_t d[4][16];
    for (int l = 0; l < 16; ++l) {
      int64_t v[4];  // the hash at x + l, x + l + 16, x + l + 32, x + l + 48
      for (int k = 0; k < 4; ++k) v[k] = rps::poly_hash(rps::mod_prime(x + l + 16 * k), coef);
      const int64_t d1 = sub_mod_prime(v[1], v[0]), d1b = sub_mod_prime(v[2], v[1]), d1c = sub_mod_prime(v[3], v[2]);
      const int64_t d2 = sub_mod_prime(d1b, d1), d2b = sub_mod_prime(d1c, d1b);
      d[0][l] = int32_t(v[0]);
      d[1][l] = int32_t(d1);
      d[2][l] = int32_t(d2);
      d[3][l] = int32_t(sub_mod_prime(d2b, d2));
    }
    for (int k = 0; k < 4; ++k) diff_[k] = _mm512_load_si512(d[k]);
  }

  // The 16 current values (32-bit lanes, in [0, P)); advances by 16.
  __m512i next() {
    const __m512i h = diff_[0];
    diff_[0] = add_mod_prime(diff_[0], diff_[1]);
    diff_[1] = add_mod_prime(diff_[1], diff_[2]);
    diff_[2] = add_mod_prime(diff_[2], diff_[3]);
    return h;
  }

 private:
  __m512i diff_[4];  // the value and its first, second and third forward differences (step 16)
};

// HashedNet's M indices of 16 consecutive elements, then of the next 16, and so on: the index
// hashes (a PolyStream), each mapped to (h * m) >> 31 (rps::reduce); rps::hashednet_index's,
// bit for bit.
class IndexStream {
 public:
  // i: global index of the first element (lane 0).
  IndexStream(const Map& p, int64_t i) : hash_(p.a, i), m_(_mm512_set1_epi64(p.m)) {}

  // The 16 current M indices (32-bit lanes, element order); advances by 16 elements.
  __m512i next() {
    const __m512i h = hash_.next();
    // (h * m) >> 31 per 32-bit lane: even lanes from the low halves of the 64-bit lanes, odd
    // lanes from the high halves; bits 31..62 of each product land in the lane's place.
    const __m512i even = _mm512_srli_epi64(_mm512_mul_epu32(h, m_), 31);
    const __m512i odd = _mm512_slli_epi64(_mm512_mul_epu32(_mm512_srli_epi64(h, 32), m_), 1);
    return _mm512_mask_blend_epi32(0xAAAA, even, odd);
  }

 private:
  PolyStream hash_;
  __m512i m_;
};

// The sign words of the groups of 16 elements g, g + 1, ... (bits 0..15 of rps::sign_bits), 16
// groups per step; negative(q) gives group g + q's for q = 0, 1, ... in order.
class SignWordStream {
 public:
  SignWordStream(const Map& p, int64_t g) : hash_(p.s, g) {}

  uint16_t negative(int64_t q) {
    if ((q & 15) == 0) _mm256_store_si256(reinterpret_cast<__m256i*>(words_), _mm512_cvtepi32_epi16(hash_.next()));
    return words_[q & 15];
  }

 private:
  PolyStream hash_;
  alignas(32) uint16_t words_[16];
};

// dst[0..16) = v: a non-temporal store when `stream` and dst is 64-byte aligned.
inline void store16(float* dst, __m512 v, bool stream) {
  if (stream && (reinterpret_cast<uintptr_t>(dst) & 63) == 0)
    _mm512_stream_ps(dst, v);
  else
    _mm512_storeu_ps(dst, v);
}

}  // namespace

void sign_words(const Map& p, int64_t g, int64_t count, uint16_t* out) {
  if (count < 64) {
    for (int64_t k = 0; k < count; ++k) out[k] = uint16_t(rps::sign_bits(p, g + k));
    return;
  }
  PolyStream hash(p.s, g);
  int64_t k = 0;
  for (; k + 16 <= count; k += 16)
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(out + k), _mm512_cvtepi32_epi16(hash.next()));
  if (k < count) {
    alignas(32) uint16_t last[16];
    _mm256_store_si256(reinterpret_cast<__m256i*>(last), _mm512_cvtepi32_epi16(hash.next()));
    std::memcpy(out + k, last, size_t(count - k) * sizeof(uint16_t));
  }
}

void stream_fence() { _mm_sfence(); }

void signed_scale_f32(const float* src, float* dst, int64_t count, float scale, uint32_t negative, bool stream) {
  const __mmask16 lanes = __mmask16((uint32_t(1) << count) - 1);
  __m512 v = _mm512_mul_ps(_mm512_set1_ps(scale), load16_f32(src, lanes));
  v = _mm512_mask_xor_ps(v, __mmask16(negative), v, _mm512_set1_ps(-0.0f));
  if (count == 16)
    store16(dst, v, stream);
  else
    _mm512_mask_storeu_ps(dst, lanes, v);
}

void signed_scale_add_f32(const float* g, float* acc, int64_t count, float scale, uint32_t negative) {
  const __mmask16 lanes = __mmask16((uint32_t(1) << count) - 1);
  __m512 v = _mm512_mul_ps(_mm512_set1_ps(scale), load16_f32(g, lanes));
  v = _mm512_mask_xor_ps(v, __mmask16(negative), v, _mm512_set1_ps(-0.0f));
  store16_f32(acc, _mm512_add_ps(load16_f32(acc, lanes), v), lanes);
}

// The sign bits (1 = negative) of the 16 elements from bit q on of a packed 16-bit-word bit stream.
inline __mmask16 sign_mask16(const uint16_t* negative, int64_t q) {
  uint32_t bits;
  std::memcpy(&bits, negative + (q >> 4), sizeof bits);
  return __mmask16(bits >> (q & 15));
}

void roast_row_f32(const float* M, float* w, const int64_t* starts, int64_t row_offset, int64_t tile_c, int64_t cols,
                   const uint16_t* negative, int first, float scale, bool stream) {
  const __m512 factor = _mm512_set1_ps(scale);
  const __m512 sign_bit = _mm512_set1_ps(-0.0f);
  for (int64_t c0 = 0, cb = 0; c0 < cols; c0 += tile_c, ++cb) {
    const float* src = M + starts[cb] + row_offset;
    const int64_t len = std::min(tile_c, cols - c0);
    for (int64_t k = 0; k < len; k += 16) {
      const __mmask16 neg = negative ? sign_mask16(negative, first + c0 + k) : __mmask16(0);
      if (len - k >= 16) {
        const __m512 v = _mm512_mul_ps(factor, _mm512_loadu_ps(src + k));
        store16(w + c0 + k, _mm512_mask_xor_ps(v, neg, v, sign_bit), stream);
      } else {
        const __mmask16 lanes = __mmask16((uint32_t(1) << (len - k)) - 1);
        const __m512 v = _mm512_mul_ps(factor, _mm512_maskz_loadu_ps(lanes, src + k));
        _mm512_mask_storeu_ps(w + c0 + k, lanes, _mm512_mask_xor_ps(v, neg, v, sign_bit));
      }
    }
  }
}

void roast_row_add_f32(const float* g, float* acc, int64_t lo, int64_t hi, const int64_t* starts, int64_t row_offset,
                       int64_t tile_c, int64_t cols, const uint16_t* negative, int first, float scale) {
  const __m512 factor = _mm512_set1_ps(scale);
  const __m512 sign_bit = _mm512_set1_ps(-0.0f);
  for (int64_t c0 = 0, cb = 0; c0 < cols; c0 += tile_c, ++cb) {
    const int64_t j = starts[cb] + row_offset;
    const int64_t k0 = std::max<int64_t>(0, lo - j), k1 = std::min({tile_c, cols - c0, hi - j});
    for (int64_t k = k0; k < k1; k += 16) {
      const __mmask16 neg = negative ? sign_mask16(negative, first + c0 + k) : __mmask16(0);
      const __mmask16 lanes = lanes16(k1 - k);
      const __m512 v = _mm512_mul_ps(factor, load16_f32(g + c0 + k, lanes));
      store16_f32(acc + j + k, _mm512_add_ps(load16_f32(acc + j + k, lanes), _mm512_mask_xor_ps(v, neg, v, sign_bit)), lanes);
    }
  }
}

int64_t hashednet_gather_f32(const float* M, float* W, const Map& p, int64_t begin, int64_t end, float scale,
                             bool stream) {
  int64_t at = begin;
  if (((p.offset + at) & 15) != 0) return at;  // the caller handles the head, then calls from a group start
  if (end - at < 16) return at;
  IndexStream index(p, p.offset + at);
  SignWordStream signs(p, (p.offset + at) >> 4);
  const __m512 factor = _mm512_set1_ps(scale);
  const __m512 sign_bit = _mm512_set1_ps(-0.0f);
  for (int64_t q = 0; at + 16 <= end; at += 16, ++q) {
    const __mmask16 negative = p.use_sign ? __mmask16(signs.negative(q)) : __mmask16(0);
    __m512 v = _mm512_mul_ps(factor, _mm512_i32gather_ps(index.next(), M, 4));
    store16(W + at, _mm512_mask_xor_ps(v, negative, v, sign_bit), stream);
  }
  return at;
}

int64_t hashednet_bucket_f32(const float* G, const Map& p, int64_t begin, int64_t end, float scale,
                             const Buckets& out) {
  int64_t at = begin;
  if (((p.offset + at) & 15) != 0) return at;
  if (end - at < 16) return at;
  IndexStream index(p, p.offset + at);
  SignWordStream signs(p, (p.offset + at) >> 4);
  const __m512 factor = _mm512_set1_ps(scale);
  const __m512 sign_bit = _mm512_set1_ps(-0.0f);
  for (int64_t q = 0; at + 16 <= end; at += 16, ++q) {
    const __mmask16 negative = p.use_sign ? __mmask16(signs.negative(q)) : __mmask16(0);
    const __m512i j = index.next();
    __m512 v = _mm512_mul_ps(factor, _mm512_loadu_ps(G + at));
    v = _mm512_mask_xor_ps(v, negative, v, sign_bit);
    __mmask16 rest = 0xffff;  // lanes not yet placed, slices in decreasing order
    for (int s = out.slices - 1; s >= 0 && rest; --s) {
      const __mmask16 mine =
          s == 0 ? rest : __mmask16(rest & _mm512_cmpge_epu32_mask(j, _mm512_set1_epi32(int(uint32_t(out.lo[s])))));
      if (!mine) continue;
      const int64_t c = out.count[s];
      _mm512_storeu_si512(out.index[s] + c, _mm512_maskz_compress_epi32(mine, j));
      _mm512_storeu_ps(out.value[s] + c, _mm512_maskz_compress_ps(mine, v));
      out.count[s] = c + __builtin_popcount(mine);
      rest &= __mmask16(~mine);
    }
  }
  return at;
}

}  // namespace osmos::cpu::avx512
