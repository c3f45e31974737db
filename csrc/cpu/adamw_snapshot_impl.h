// The AdamW + checksum loop shared by the ISA files (each compiles its own copy with its flags).
// Blocks of kAdamWBlock elements: update the block, then checksum the three output blocks while
// they are in L1 (4 KiB each), so the outputs are never read back from memory.
#pragma once
#include <cmath>
#include <cstdint>
#include <cstring>
#if defined(__SSE4_2__)
#include <immintrin.h>
#endif

#include "cpu/adamw_snapshot.h"

namespace osmos::cpu {
namespace {

constexpr int64_t kAdamWBlock = 1024;

// Checksum(reg[3], p, m, v, nbytes) continues the three raw CRC registers over the three blocks.
template <class Checksum>
void adamw_blocks(const AdamWTensor& t, int64_t begin, int64_t end, const AdamWScalars& s, uint32_t* reg,
                  Checksum checksum) {
  const float decay = s.decay, w = s.lerp_weight, w_hi = 1.0f - s.lerp_weight, b2 = s.beta2,
              omb2 = s.one_minus_beta2, bc2 = s.bc2_sqrt, eps = s.eps, neg_step = s.neg_step_size;
  const bool low = std::fabs(w) < 0.5f;  // torch's lerp: start + w (end - start), else end - (end - start)(1 - w)
  for (int64_t b0 = begin; b0 < end; b0 += kAdamWBlock) {
    const int64_t b1 = b0 + kAdamWBlock < end ? b0 + kAdamWBlock : end;
    const float* p_in = t.p_in;
    const float* g = t.g;
    const float* m_in = t.m_in;
    const float* v_in = t.v_in;
    float* p_out = t.p_out;
    float* m_out = t.m_out;
    float* v_out = t.v_out;
#pragma omp simd
    for (int64_t i = b0; i < b1; ++i) {
      const float gi = g[i], mi = m_in[i];
      // torch's vectorised CPU kernels fuse these two with FMA: lerp as fma(w, end - start, start)
      // (fma(-(end - start), 1 - w, end) for w >= 0.5), addcmul as fma(value * t1, t2, self)
      const float m = low ? std::fma(w, gi - mi, mi) : std::fma(-(gi - mi), w_hi, gi);
      const float v = std::fma(omb2 * gi, gi, v_in[i] * b2);
      const float denom = std::sqrt(v) / bc2 + eps;
      const float p = p_in[i] * decay;
      p_out[i] = p + neg_step * m / denom;
      m_out[i] = m;
      v_out[i] = v;
    }
    if (reg != nullptr) checksum(reg, p_out + b0, m_out + b0, v_out + b0, size_t(b1 - b0) * sizeof(float));
  }
}

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

}  // namespace
}  // namespace osmos::cpu
