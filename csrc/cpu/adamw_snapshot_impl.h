// The AdamW + checksum loop shared by the ISA files (each compiles its own copy with its flags).
// Blocks of kAdamWBlock elements: update the block, then checksum the three output blocks while
// they are in L1 (4 KiB each), so the outputs are never read back from memory.
#pragma once
#include <cmath>
#include <cstdint>
#include <cstring>
#if defined(__SSE4_2__) || defined(__AVX2__)
#include <immintrin.h>
#endif

#include "cpu/adamw_snapshot.h"

namespace osmos::cpu {
namespace {

constexpr int64_t kAdamWBlock = 1024;

// Elements [b0, b1) of the update, written to p_out / m_out / v_out (which may alias the inputs).
inline void adamw_update(const AdamWTensor& t, int64_t b0, int64_t b1, const AdamWScalars& s, float* p_out,
                         float* m_out, float* v_out) {
  const float decay = s.decay, w = s.lerp_weight, w_hi = 1.0f - s.lerp_weight, b2 = s.beta2,
              omb2 = s.one_minus_beta2, bc2 = s.bc2_sqrt, eps = s.eps, neg_step = s.neg_step_size;
  const bool low = std::fabs(w) < 0.5f;  // torch's lerp: start + w (end - start), else end - (end - start)(1 - w)
  const float* p_in = t.p_in;
  const float* g = t.g;
  const float* m_in = t.m_in;
  const float* v_in = t.v_in;
#pragma omp simd
  for (int64_t i = b0; i < b1; ++i) {
    const float gi = g[i], mi = m_in[i];
    // torch's vectorised CPU kernels fuse these two with FMA: lerp as fma(w, end - start, start)
    // (fma(-(end - start), 1 - w, end) for w >= 0.5), addcmul as fma(value * t1, t2, self)
    const float m = low ? std::fma(w, gi - mi, mi) : std::fma(-(gi - mi), w_hi, gi);
    const float v = std::fma(omb2 * gi, gi, v_in[i] * b2);
    const float denom = std::sqrt(v) / bc2 + eps;
    const float p = p_in[i] * decay;
    p_out[i - b0] = p + neg_step * m / denom;
    m_out[i - b0] = m;
    v_out[i - b0] = v;
  }
}

// Checksum(reg[3], p, m, v, nbytes) continues the three raw CRC registers over three blocks;
// Stream(dst, src, nbytes) copies a block to its destination, bypassing the caches where it can.
//
// In place, each block is updated where it lies and checksummed from L1 right after. Out of place
// (a snapshot slot), each block is computed into an L1 staging buffer, checksummed there and
// streamed out with non-temporal stores: the destination's lines are never read (no
// read-for-ownership), so out of place moves no more bytes than in place.
template <class Checksum, class Stream>
void adamw_blocks(const AdamWTensor& t, int64_t begin, int64_t end, const AdamWScalars& s, uint32_t* reg,
                  Checksum checksum, Stream stream) {
  const bool in_place = t.p_out == t.p_in && t.m_out == t.m_in && t.v_out == t.v_in;
  alignas(64) float stage[3][kAdamWBlock];
  int64_t b0 = begin;
  if (!in_place && b0 < end) {  // a first short block brings p_out + b0 to a 64-byte boundary
    const int64_t lead = int64_t((64 - (reinterpret_cast<uintptr_t>(t.p_out + b0) & 63)) & 63) / 4;
    if (lead > 0) {
      const int64_t b1 = b0 + lead < end ? b0 + lead : end;
      adamw_update(t, b0, b1, s, stage[0], stage[1], stage[2]);
      if (reg != nullptr) checksum(reg, stage[0], stage[1], stage[2], size_t(b1 - b0) * sizeof(float));
      std::memcpy(t.p_out + b0, stage[0], size_t(b1 - b0) * sizeof(float));
      std::memcpy(t.m_out + b0, stage[1], size_t(b1 - b0) * sizeof(float));
      std::memcpy(t.v_out + b0, stage[2], size_t(b1 - b0) * sizeof(float));
      b0 = b1;
    }
  }
  for (; b0 < end; b0 += kAdamWBlock) {
    const int64_t b1 = b0 + kAdamWBlock < end ? b0 + kAdamWBlock : end;
    const size_t nbytes = size_t(b1 - b0) * sizeof(float);
    if (in_place) {
      adamw_update(t, b0, b1, s, t.p_out + b0, t.m_out + b0, t.v_out + b0);
      if (reg != nullptr) checksum(reg, t.p_out + b0, t.m_out + b0, t.v_out + b0, nbytes);
    } else {
      adamw_update(t, b0, b1, s, stage[0], stage[1], stage[2]);
      if (reg != nullptr) checksum(reg, stage[0], stage[1], stage[2], nbytes);
      stream(t.p_out + b0, stage[0], nbytes);
      stream(t.m_out + b0, stage[1], nbytes);
      stream(t.v_out + b0, stage[2], nbytes);
    }
  }
}

inline void store_plain(float* dst, const float* src, size_t nbytes) { std::memcpy(dst, src, nbytes); }

#if defined(__SSE4_2__)
// The three output blocks checksummed side by side with the SSE4.2 crc32 instruction (three
// independent chains hide its 3-cycle latency).
inline void adamw_checksum_hw(uint32_t* r, const float* p, const float* m, const float* v, size_t nbytes) {

  const auto* a = reinterpret_cast<const uint8_t*>(p);
  const auto* b = reinterpret_cast<const uint8_t*>(m);
  const auto* c = reinterpret_cast<const uint8_t*>(v);
  uint64_t ra = r[0], rb = r[1], rc = r[2];
  size_t i = 0;
  for (; i + 8 <= nbytes; i += 8) {
    uint64_t wa, wb, wc;
    std::memcpy(&wa, a + i, 8);
    std::memcpy(&wb, b + i, 8);
    std::memcpy(&wc, c + i, 8);
    ra = _mm_crc32_u64(ra, wa);
    rb = _mm_crc32_u64(rb, wb);
    rc = _mm_crc32_u64(rc, wc);
  }
  uint32_t xa = uint32_t(ra), xb = uint32_t(rb), xc = uint32_t(rc);
  for (; i < nbytes; ++i) {
    xa = _mm_crc32_u8(xa, a[i]);
    xb = _mm_crc32_u8(xb, b[i]);
    xc = _mm_crc32_u8(xc, c[i]);
  }
  r[0] = xa, r[1] = xb, r[2] = xc;
  }
#endif

#if defined(__AVX512F__)
// 64-byte non-temporal stores when dst is 64-byte aligned (src is: the staging buffer), else memcpy.
inline void store_stream_avx512(float* dst, const float* src, size_t nbytes) {
  if ((reinterpret_cast<uintptr_t>(dst) & 63) != 0) return std::memcpy(dst, src, nbytes), void();
  size_t i = 0;
  for (; i + 64 <= nbytes; i += 64)
    _mm512_stream_ps(reinterpret_cast<float*>(reinterpret_cast<char*>(dst) + i),
                     _mm512_load_ps(reinterpret_cast<const float*>(reinterpret_cast<const char*>(src) + i)));
  std::memcpy(reinterpret_cast<char*>(dst) + i, reinterpret_cast<const char*>(src) + i, nbytes - i);
}
#endif

#if defined(__AVX2__)
inline void store_stream_avx2(float* dst, const float* src, size_t nbytes) {
  if ((reinterpret_cast<uintptr_t>(dst) & 31) != 0) return std::memcpy(dst, src, nbytes), void();
  size_t i = 0;
  for (; i + 32 <= nbytes; i += 32)
    _mm256_stream_ps(reinterpret_cast<float*>(reinterpret_cast<char*>(dst) + i),
                     _mm256_load_ps(reinterpret_cast<const float*>(reinterpret_cast<const char*>(src) + i)));
  std::memcpy(reinterpret_cast<char*>(dst) + i, reinterpret_cast<const char*>(src) + i, nbytes - i);
}
#endif

}  // namespace
}  // namespace osmos::cpu
