// GF(2^8) matrix times blocks, the hot path of Reed-Solomon encode and decode:
//   dst[r][i] = XOR_j matrix[r][j] * src[j][i]   for r < rows, j < k, i < len.
// One kernel per ISA, each computing a byte range [begin, end) of every output row; the
// dispatcher (gf256_matmul.cpp) splits len across threads and into cache-sized chunks.
#pragma once
#include <cstdint>
#include <algorithm>
#include <string>
#include <type_traits>
#include <vector>

namespace osmos::cpu {

enum class Gf256Kernel : int { scalar = 0, avx2 = 1, avx512 = 2, gfni = 3 };

struct Gf256Job {
  int rows = 0, k = 0;
  const uint8_t* matrix = nullptr;        // [rows, k], row-major
  const uint8_t* const* src = nullptr;    // k source blocks
  uint8_t* const* dst = nullptr;          // rows output blocks (must not alias a source)
  const uint8_t* nibble_tables = nullptr; // [rows * k][32]: split tables (avx2, avx512)
  const uint64_t* affine = nullptr;       // [rows * k]: GF2P8AFFINEQB matrices (gfni)
  // Non-temporal stores of whole 64-byte vectors (avx512, gfni): set when the working set is far
  // larger than the caches and every dst is 64-byte aligned; outputs then skip the read-for-
  // ownership and do not evict the sources.
  bool stream = false;
  // Software prefetch of the sources ahead of the loads, for passes of 1-3 output rows (passes of
  // 4+ rows always prefetch): set when the working set is larger than L2 and not streamed.
  bool prefetch = false;
};

// Output rows each kernel keeps in registers per pass over the sources.
constexpr int kGf256RowsPerPass = 6;

void gf256_range_scalar(const Gf256Job& job, int64_t begin, int64_t end);
void gf256_range_avx2(const Gf256Job& job, int64_t begin, int64_t end);
void gf256_range_avx512(const Gf256Job& job, int64_t begin, int64_t end);
void gf256_range_gfni(const Gf256Job& job, int64_t begin, int64_t end);
// Rows [row0, row0 + nrows) of [begin, end): the scalar kernel, also the SIMD kernels' tail.
void gf256_rows_scalar(const Gf256Job& job, int row0, int nrows, int64_t begin, int64_t end);

// Calls f(std::integral_constant<int, R>, row0) for each group of R <= kGf256RowsPerPass rows,
// so SIMD kernels keep their R accumulators in registers.
template <class F>
inline void for_each_row_group(int rows, F&& f) {
  for (int row0 = 0; row0 < rows; row0 += kGf256RowsPerPass) {
    switch (std::min(kGf256RowsPerPass, rows - row0)) {
      case 1: f(std::integral_constant<int, 1>{}, row0); break;
      case 2: f(std::integral_constant<int, 2>{}, row0); break;
      case 3: f(std::integral_constant<int, 3>{}, row0); break;
      case 4: f(std::integral_constant<int, 4>{}, row0); break;
      case 5: f(std::integral_constant<int, 5>{}, row0); break;
      default: f(std::integral_constant<int, 6>{}, row0); break;
    }
  }
}
static_assert(kGf256RowsPerPass == 6, "for_each_row_group covers 1..6 rows");

// Kernels this CPU can run, best first; the one `auto` picks now (osmos::cpu::isa() and
// use_gfni(), so _C.set_cpu_isa limits it).
std::vector<std::string> gf256_kernels();
Gf256Kernel gf256_auto_kernel();
Gf256Kernel gf256_kernel_from_name(const std::string& name);  // throws std::invalid_argument
const char* gf256_kernel_name(Gf256Kernel kernel);

// A product on fixed buffers, planned once (snapshot slots are re-encoded every snapshot): the
// kernel, its per-coefficient constants and the pointer arrays are built by the constructor, so
// run() only splits the range over threads and runs the kernel. The matrix is copied; the
// buffers must outlive the plan.
class Gf256Plan {
 public:
  Gf256Plan(const uint8_t* matrix, int rows, int k, const uint8_t* const* src, uint8_t* const* dst,
            int64_t len, Gf256Kernel kernel);
  Gf256Plan(const Gf256Plan&) = delete;  // job_ points into the vectors below
  Gf256Plan& operator=(const Gf256Plan&) = delete;
  void run(int nthreads) const;
  Gf256Kernel kernel() const { return kernel_; }

 private:
  std::vector<uint8_t> matrix_, nibbles_;
  std::vector<uint64_t> affine_;
  std::vector<const uint8_t*> src_;
  std::vector<uint8_t*> dst_;
  Gf256Job job_;
  int64_t len_ = 0;
  Gf256Kernel kernel_;
  void (*range_)(const Gf256Job&, int64_t, int64_t) = nullptr;
};

// The whole product with up to nthreads threads (a plan used once).
void gf256_matmul(const uint8_t* matrix, int rows, int k, const uint8_t* const* src,
                  uint8_t* const* dst, int64_t len, int nthreads, Gf256Kernel kernel);

}  // namespace osmos::cpu
