// Element-wise float dtype conversion (f32 / f16 / bf16, any pair) with the header's
// round-to-nearest-even conversions: the reference for osmos/dtype.h and a utility kernel.
#pragma once
#include <cstdint>

#include "osmos/dtype.h"

namespace osmos::cpu {

// dst[i] = src[i] converted; throws std::invalid_argument for a dtype other than f32/f16/bf16.
void convert(const void* src, DType src_dtype, void* dst, DType dst_dtype, int64_t n, int max_threads);

}  // namespace osmos::cpu
