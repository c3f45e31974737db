// AdamW + checksum on AVX-512 CPUs with VPCLMULQDQ: the same update as adamw_snapshot_avx512.cpp
// (same code, same flags but the carry-less multiply, so the same bits), checksummed by folding
// (crc32c_vpclmul.cpp) instead of the crc32 instruction.
#include "cpu/adamw_snapshot_impl.h"
#include "cpu/crc32c.h"

namespace osmos::cpu {

void adamw_block_vpclmul(const AdamWTensor& t, int64_t begin, int64_t end, const AdamWScalars& s, uint32_t* reg) {
  adamw_blocks(t, begin, end, s, reg,
               [](uint32_t* r, const float* p, const float* m, const float* v, size_t nbytes) {
                 crc32c_raw3_vpclmul(r, p, m, v, nbytes);
               },
               store_stream_avx512);
}

}  // namespace osmos::cpu
