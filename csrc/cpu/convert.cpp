#include "cpu/convert.h"

#include <stdexcept>

#include "cpu/parallel.h"

namespace osmos::cpu {
namespace {

template <class Fn>
bool dispatch_float(DType t, Fn&& fn) {
  switch (t) {
    case DType::f32: fn(F32{}); return true;
    case DType::f16: fn(F16{}); return true;
    case DType::bf16: fn(BF16{}); return true;
    default: return false;
  }
}

}  // namespace

void convert(const void* src, DType src_dtype, void* dst, DType dst_dtype, int64_t n, int max_threads) {
  bool dst_ok = false;
  const bool src_ok = dispatch_float(src_dtype, [&](auto from) {
    dst_ok = dispatch_float(dst_dtype, [&](auto to) {
      using From = decltype(from);
      using To = decltype(to);
      auto* in = static_cast<const typename From::storage*>(src);
      auto* out = static_cast<typename To::storage*>(dst);
      parallel_chunks(n, threads_for(n, max_threads, int64_t(1) << 16), [&](int, int64_t b, int64_t e) {
        for (int64_t i = b; i < e; ++i) out[i] = To::from_float(From::to_float(in[i]));
      });
    });
  });
  if (!src_ok || !dst_ok) throw std::invalid_argument("convert: dtypes must be float32, float16 or bfloat16");
}

}  // namespace osmos::cpu
