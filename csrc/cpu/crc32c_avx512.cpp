// CRC-32C with the SSE4.2 crc32 instruction, fused with 64-byte non-temporal stores (AVX-512 CPUs).
#include <algorithm>

#include "cpu/crc32c_hw.h"

namespace osmos::cpu {

uint32_t crc32c_raw_avx512(uint32_t reg, const uint8_t* src, uint8_t* dst, size_t n) {
  return crc32c_hw_interleaved(reg, src, dst, n, [](uint8_t* d, const uint8_t* s) {
    _mm512_stream_si512(reinterpret_cast<__m512i*>(d), _mm512_loadu_si512(s));
  });
}

}  // namespace osmos::cpu
