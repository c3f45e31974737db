// CRC-32C with the SSE4.2 crc32 instruction, fused with 32-byte non-temporal stores (AVX2 CPUs).
#include <algorithm>

#include "cpu/crc32c_hw.h"

namespace osmos::cpu {

uint32_t crc32c_raw_avx2(uint32_t reg, const uint8_t* src, uint8_t* dst, size_t n) {
  return crc32c_hw_interleaved(reg, src, dst, n, [](uint8_t* d, const uint8_t* s) {
    const __m256i lo = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(s));
    const __m256i hi = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(s + 32));
    _mm256_stream_si256(reinterpret_cast<__m256i*>(d), lo);
    _mm256_stream_si256(reinterpret_cast<__m256i*>(d + 32), hi);
  });
}

}  // namespace osmos::cpu
