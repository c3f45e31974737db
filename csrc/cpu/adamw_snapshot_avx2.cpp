// AdamW + checksum on AVX2 CPUs: the update vectorised 8 floats wide, hardware CRC-32C.
#include "cpu/adamw_snapshot_impl.h"

namespace osmos::cpu {

void adamw_block_avx2(const AdamWTensor& t, int64_t begin, int64_t end, const AdamWScalars& s, uint32_t* reg) {
  adamw_blocks(t, begin, end, s, reg, adamw_checksum_hw, store_stream_avx2);
}

}  // namespace osmos::cpu
