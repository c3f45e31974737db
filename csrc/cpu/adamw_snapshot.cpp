// AdamW + checksum: the scalar path, dispatch, and threads (pieces of tensors, checksums combined).
#include "cpu/adamw_snapshot.h"

#include <algorithm>
#include <vector>

#include "cpu/adamw_snapshot_impl.h"
#include "cpu/cpu_features.h"
#include "cpu/crc32c.h"
#include "cpu/parallel.h"
#include "osmos/crc32c.h"

namespace osmos::cpu {
namespace {

using BlockKernel = void (*)(const AdamWTensor&, int64_t, int64_t, const AdamWScalars&, uint32_t*);

BlockKernel block_kernel() {
  switch (isa()) {
    case Isa::avx512: return use_vpclmul() ? adamw_block_vpclmul : adamw_block_avx512;
    case Isa::avx2: return adamw_block_avx2;
    default: return adamw_block_scalar;
  }
}

constexpr int64_t kElementsPerThread = int64_t(1) << 16;

}  // namespace

void adamw_block_scalar(const AdamWTensor& t, int64_t begin, int64_t end, const AdamWScalars& s, uint32_t* reg) {
  adamw_blocks(t, begin, end, s, reg, [](uint32_t* r, const float* p, const float* m, const float* v, size_t nbytes) {
    r[0] = crc32c_raw_scalar(r[0], reinterpret_cast<const uint8_t*>(p), nullptr, nbytes);
    r[1] = crc32c_raw_scalar(r[1], reinterpret_cast<const uint8_t*>(m), nullptr, nbytes);
    r[2] = crc32c_raw_scalar(r[2], reinterpret_cast<const uint8_t*>(v), nullptr, nbytes);
  }, store_plain);
}

void adamw_snapshot(const AdamWTensor* tensors, int count, const AdamWScalars& s, uint32_t* crcs, int nthreads) {
  std::vector<int64_t> start(size_t(count) + 1, 0);  // element offset of each tensor in the concatenation
  for (int i = 0; i < count; ++i) start[i + 1] = start[i] + tensors[i].n;
  const int64_t total = start[count];
  const int nt = threads_for(total, nthreads, kElementsPerThread);
  const BlockKernel kernel = block_kernel();
  struct Piece { int tensor; uint32_t crc[3]; int64_t len; };
  std::vector<std::vector<Piece>> pieces(nt);
  parallel_chunks(total, nt, [&](int t, int64_t begin, int64_t end) {
    int i = int(std::upper_bound(start.begin(), start.end(), begin) - start.begin()) - 1;
    for (int64_t pos = begin; pos < end; ++i) {
      if (tensors[i].n == 0) continue;
      const int64_t off = pos - start[i], stop = std::min(end, start[i + 1]) - start[i];
      Piece piece{i, {~0u, ~0u, ~0u}, stop - off};
      kernel(tensors[i], off, stop, s, crcs ? piece.crc : nullptr);
      if (crcs) pieces[t].push_back({i, {~piece.crc[0], ~piece.crc[1], ~piece.crc[2]}, piece.len});
      pos += stop - off;
    }
  });
  if (crcs == nullptr) return;
  for (int i = 0; i < 3 * count; ++i) crcs[i] = 0;
  for (const auto& list : pieces)
    for (const Piece& p : list)
      for (int j = 0; j < 3; ++j) {
        uint32_t& c = crcs[3 * p.tensor + j];
        c = osmos::crc32c::combine(c, p.crc[j], uint64_t(p.len) * sizeof(float));
      }
}

}  // namespace osmos::cpu
