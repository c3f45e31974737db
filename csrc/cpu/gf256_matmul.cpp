// GF(2^8) matrix times blocks: the scalar kernel, kernel selection, threads and cache blocking.
#include "cpu/gf256_matmul.h"

#include <cstring>
#include <stdexcept>

#include "cpu/cpu_features.h"
#include "cpu/parallel.h"
#include "osmos/gf256.h"

namespace osmos::cpu {
namespace {

constexpr int64_t kUnit = 64;                          // thread ranges are multiples of this
constexpr int64_t kMinSourceBytesPerThread = 1 << 20;  // below this a thread costs more than it saves
constexpr int64_t kChunkSourceBytes = 512 << 10;       // a chunk of every source stays in L2
constexpr int64_t kStreamWorkingSet = 64 << 20;        // non-temporal stores beyond this many bytes
constexpr int64_t kPrefetchWorkingSet = 1 << 20;       // software prefetch beyond this (L2) and below streaming

// Per-coefficient kernel constants for all 256 coefficients, built once.
struct CoefficientTables {
  uint8_t nibbles[256][32];
  uint64_t affine[256];
  CoefficientTables() {
    for (int c = 0; c < 256; ++c) {
      gf256::nibble_tables(uint8_t(c), nibbles[c]);
      affine[c] = gf256::affine_matrix(uint8_t(c));
    }
  }
};

const CoefficientTables& coefficient_tables() {
  static const CoefficientTables tables;
  return tables;
}

bool cpu_can_run(Gf256Kernel kernel) {
  const Isa best = detected_isa();
  switch (kernel) {
    case Gf256Kernel::gfni: return features().gfni && best == Isa::avx512;
    case Gf256Kernel::avx512: return best == Isa::avx512;
    case Gf256Kernel::avx2: return best >= Isa::avx2;
    default: return true;
  }
}

}  // namespace

void gf256_rows_scalar(const Gf256Job& job, int row0, int nrows, int64_t begin, int64_t end) {
  const int k = job.k;
  uint64_t acc[kGf256RowsPerPass];
  for (int64_t i = begin; i < end; i += 8) {
    const size_t n = size_t(std::min<int64_t>(8, end - i));
    for (int r = 0; r < nrows; ++r) acc[r] = 0;
    for (int j = 0; j < k; ++j) {
      uint64_t word = 0;
      if (n == 8) std::memcpy(&word, job.src[j] + i, 8);
      else std::memcpy(&word, job.src[j] + i, n);
      const gf256::PackedPowers<uint64_t> powers(word);
      for (int r = 0; r < nrows; ++r) acc[r] ^= powers.times(job.matrix[(row0 + r) * k + j]);
    }
    for (int r = 0; r < nrows; ++r) {
      if (n == 8) std::memcpy(job.dst[row0 + r] + i, &acc[r], 8);
      else std::memcpy(job.dst[row0 + r] + i, &acc[r], n);
    }
  }
}

void gf256_range_scalar(const Gf256Job& job, int64_t begin, int64_t end) {
  for (int row0 = 0; row0 < job.rows; row0 += kGf256RowsPerPass)
    gf256_rows_scalar(job, row0, std::min(kGf256RowsPerPass, job.rows - row0), begin, end);
}

std::vector<std::string> gf256_kernels() {
  std::vector<std::string> names;
  for (Gf256Kernel kernel : {Gf256Kernel::gfni, Gf256Kernel::avx512, Gf256Kernel::avx2, Gf256Kernel::scalar})
    if (cpu_can_run(kernel)) names.emplace_back(gf256_kernel_name(kernel));
  return names;
}

Gf256Kernel gf256_auto_kernel() {
  if (use_gfni()) return Gf256Kernel::gfni;
  switch (isa()) {
    case Isa::avx512: return Gf256Kernel::avx512;
    case Isa::avx2: return Gf256Kernel::avx2;
    default: return Gf256Kernel::scalar;
  }
}

const char* gf256_kernel_name(Gf256Kernel kernel) {
  switch (kernel) {
    case Gf256Kernel::gfni: return "gfni";
    case Gf256Kernel::avx512: return "avx512";
    case Gf256Kernel::avx2: return "avx2";
    default: return "scalar";
  }
}

Gf256Kernel gf256_kernel_from_name(const std::string& name) {
  if (name == "auto") return gf256_auto_kernel();
  for (Gf256Kernel kernel : {Gf256Kernel::gfni, Gf256Kernel::avx512, Gf256Kernel::avx2, Gf256Kernel::scalar}) {
    if (name != gf256_kernel_name(kernel)) continue;
    if (!cpu_can_run(kernel)) throw std::invalid_argument("this CPU cannot run the gf256 kernel '" + name + "'");
    return kernel;
  }
  throw std::invalid_argument("unknown gf256 kernel '" + name + "' (expected auto, gfni, avx512, avx2 or scalar)");
}

Gf256Plan::Gf256Plan(const uint8_t* matrix, int rows, int k, const uint8_t* const* src,
                     uint8_t* const* dst, int64_t len, Gf256Kernel kernel)
    : matrix_(matrix, matrix + size_t(std::max(rows, 0)) * size_t(std::max(k, 0))),
      src_(src, src + std::max(k, 0)),
      dst_(dst, dst + std::max(rows, 0)),
      len_(len),
      kernel_(kernel) {
  job_.rows = rows;
  job_.k = k;
  job_.matrix = matrix_.data();
  job_.src = src_.data();
  job_.dst = dst_.data();
  range_ = gf256_range_scalar;
  if (rows <= 0 || k <= 0 || len <= 0) return;
  const CoefficientTables& tables = coefficient_tables();
  if (kernel == Gf256Kernel::avx2 || kernel == Gf256Kernel::avx512) {
    nibbles_.resize(matrix_.size() * 32);
    for (size_t c = 0; c < matrix_.size(); ++c) std::memcpy(&nibbles_[c * 32], tables.nibbles[matrix_[c]], 32);
    job_.nibble_tables = nibbles_.data();
    range_ = kernel == Gf256Kernel::avx2 ? gf256_range_avx2 : gf256_range_avx512;
  } else if (kernel == Gf256Kernel::gfni) {
    affine_.resize(matrix_.size());
    for (size_t c = 0; c < matrix_.size(); ++c) affine_[c] = tables.affine[matrix_[c]];
    job_.affine = affine_.data();
    range_ = gf256_range_gfni;
  }
  if (kernel == Gf256Kernel::gfni || kernel == Gf256Kernel::avx512) {
    job_.stream = (int64_t(k) + rows) * len >= kStreamWorkingSet;
    for (int r = 0; r < rows && job_.stream; ++r) job_.stream = reinterpret_cast<uintptr_t>(dst[r]) % 64 == 0;
  }
  job_.prefetch = !job_.stream && (int64_t(k) + rows) * len > kPrefetchWorkingSet;
}

void Gf256Plan::run(int nthreads) const {
  const int rows = job_.rows, k = job_.k;
  const int64_t len = len_;
  if (rows <= 0 || len <= 0) return;
  if (k <= 0) {
    for (int r = 0; r < rows; ++r) std::memset(dst_[r], 0, size_t(len));
    return;
  }
  const int64_t units = (len + kUnit - 1) / kUnit;
  const int64_t grain = std::max<int64_t>(1, kMinSourceBytesPerThread / (int64_t(k) * kUnit));
  const int64_t chunk = std::max<int64_t>(16 * kUnit, kChunkSourceBytes / k / kUnit * kUnit);
  parallel_chunks(units, threads_for(units, nthreads, grain), [&](int, int64_t first, int64_t last) {
    const int64_t end = std::min(last * kUnit, len);
    for (int64_t begin = first * kUnit; begin < end; begin += chunk) range_(job_, begin, std::min(begin + chunk, end));
  });
}

void gf256_matmul(const uint8_t* matrix, int rows, int k, const uint8_t* const* src,
                  uint8_t* const* dst, int64_t len, int nthreads, Gf256Kernel kernel) {
  if (rows <= 0 || len <= 0) return;
  Gf256Plan(matrix, rows, k, src, dst, len, kernel).run(nthreads);
}

}  // namespace osmos::cpu
