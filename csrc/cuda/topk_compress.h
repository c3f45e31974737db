// CUDA TopK EF21 compression (host entry points; see python/osmos/ops/topk_compress.py).
#pragma once
#include <cstddef>
#include <cstdint>

#include "osmos/dtype.h"

namespace osmos::cuda {

// Bytes of device workspace topk_compress needs for n elements, k kept, and `algo`.
size_t topk_compress_workspace_bytes(int64_t n, int64_t k, int algo);

// Same contract as osmos::cpu::topk_compress, on device pointers, enqueued on `stream`
// (a cudaStream_t) of the current device. Asynchronous; throws on a launch error.
// algo: 0 chooses (the sampled path for n >= 2**22 and k/n up to about 20%, else radix),
// 1 always the exact radix path over all n keys, 2 the sampled path wherever it applies
// (n >= 32768); every choice gives the same bits.
void topk_compress(const void* x, DType x_dtype, void* state, DType state_dtype, int64_t n, int64_t k, int algo,
                   void* values, int64_t* indices, void* workspace, size_t workspace_bytes, void* stream);

}  // namespace osmos::cuda
