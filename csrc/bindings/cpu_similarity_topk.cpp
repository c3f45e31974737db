// osmos._C bindings of the streaming similarity top-k (csrc/cpu/similarity_topk*.cpp).
#include "bindings/registry.h"
#include "cpu/similarity_topk.h"

namespace py = pybind11;
using namespace osmos::cpu::simsearch;

OSMOS_BIND(similarity_topk) {
  m.def(
      "similarity_select",
      [](uintptr_t scores, int64_t Q, int64_t C, int64_t ld, int64_t offset, float threshold,
         uintptr_t top_s, uintptr_t top_i, int64_t k, int nthreads) {
        py::gil_scoped_release nogil;
        return select_chunk(as_ptr<const float>(scores), Q, C, ld, offset, threshold,
                            as_ptr<float>(top_s), as_ptr<int64_t>(top_i), k, nthreads);
      },
      "Merge a [Q, C] float32 score block (row stride ld; database rows offset..offset+C-1) into "
      "the running top-k [Q, k]. Returns True when a score was NaN.");
  m.def(
      "similarity_fused",
      [](uintptr_t queries, int64_t Q, int64_t D, uintptr_t db, int dtype, int64_t rows, int64_t offset,
         float threshold, uintptr_t top_s, uintptr_t top_i, int64_t k, uintptr_t ws_s, uintptr_t ws_i,
         int nthreads) {
        py::gil_scoped_release nogil;
        return fused_search(as_ptr<const float>(queries), Q, D, as_ptr<const void>(db), dtype, rows, offset,
                            threshold, as_ptr<float>(top_s), as_ptr<int64_t>(top_i), k, as_ptr<float>(ws_s),
                            as_ptr<int64_t>(ws_i), nthreads);
      },
      "Dot products of float32 queries [Q, D] with database rows [rows, D] (f32/f16/bf16) fused "
      "with the running top-k merge; workspaces hold (nthreads - 1) * Q * k slots. True on NaN.");
}
