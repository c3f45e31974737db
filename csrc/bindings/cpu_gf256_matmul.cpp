// osmos._C bindings of the GF(2^8) erasure-coding kernels and field helpers.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

#include "bindings/registry.h"
#include "cpu/gf256_matmul.h"
#include "osmos/gf256.h"

namespace py = pybind11;
using namespace osmos::cpu;
namespace gf = osmos::gf256;

namespace {

py::bytes as_bytes(const std::vector<uint8_t>& v) {
  return py::bytes(reinterpret_cast<const char*>(v.data()), v.size());
}

void check_shape(int rows, int k, int64_t len, const std::vector<uintptr_t>& src, const std::vector<uintptr_t>& dst) {
  if (rows < 0 || k < 0 || len < 0) throw std::invalid_argument("rows, k and len must be >= 0");
  if (src.size() != size_t(k)) throw std::invalid_argument("need k source pointers");
  if (dst.size() != size_t(rows)) throw std::invalid_argument("need rows output pointers");
}

}  // namespace

OSMOS_BIND(gf256_matmul) {
  m.def(
      "gf256_matmul",
      [](uintptr_t matrix, int rows, int k, const std::vector<uintptr_t>& src,
         const std::vector<uintptr_t>& dst, int64_t len, int nthreads, const std::string& kernel) {
        check_shape(rows, k, len, src, dst);
        const Gf256Kernel chosen = gf256_kernel_from_name(kernel);
        py::gil_scoped_release release;
        gf256_matmul(as_ptr<const uint8_t>(matrix), rows, k,
                     reinterpret_cast<const uint8_t* const*>(src.data()),
                     reinterpret_cast<uint8_t* const*>(dst.data()), len, nthreads, chosen);
      },
      py::arg("matrix"), py::arg("rows"), py::arg("k"), py::arg("src"), py::arg("dst"), py::arg("len"),
      py::arg("nthreads"), py::arg("kernel") = "auto",
      "dst[r][i] = XOR_j matrix[r*k+j] * src[j][i] over GF(2^8) (pointers as ints, len bytes each).");
  py::class_<Gf256Plan>(m, "Gf256Plan", py::module_local(),
                        "gf256_matmul on fixed buffers, planned once (kernel, its constants and the pointer "
                        "arrays); calling it with a thread count runs the product. The matrix is copied; the "
                        "caller keeps the buffers alive.")
      .def(py::init([](uintptr_t matrix, int rows, int k, const std::vector<uintptr_t>& src,
                       const std::vector<uintptr_t>& dst, int64_t len, const std::string& kernel) {
             check_shape(rows, k, len, src, dst);
             return std::make_unique<Gf256Plan>(as_ptr<const uint8_t>(matrix), rows, k,
                                                reinterpret_cast<const uint8_t* const*>(src.data()),
                                                reinterpret_cast<uint8_t* const*>(dst.data()), len,
                                                gf256_kernel_from_name(kernel));
           }),
           py::arg("matrix"), py::arg("rows"), py::arg("k"), py::arg("src"), py::arg("dst"), py::arg("len"),
           py::arg("kernel") = "auto")
      .def("__call__", [](const Gf256Plan& plan, int nthreads) {
             py::gil_scoped_release release;
             plan.run(nthreads);
           }, py::arg("nthreads"))
      .def_property_readonly("kernel", [](const Gf256Plan& plan) { return std::string(gf256_kernel_name(plan.kernel())); });
  m.def("gf256_matmul_kernels", &gf256_kernels, "gf256 kernels this CPU can run, best first");
  m.def("gf256_matmul_kernel", [] { return std::string(gf256_kernel_name(gf256_auto_kernel())); },
        "gf256 kernel that kernel='auto' runs now");
  m.def("gf256_polynomial", [] { return gf::kPolynomial; });
  m.def("gf256_tables", [] {
    const gf::Tables& t = gf::tables();
    return py::make_tuple(py::bytes(reinterpret_cast<const char*>(t.exp), 512),
                          py::bytes(reinterpret_cast<const char*>(t.log), 256));
  }, "(exp[512], log[256]) of GF(2^8)");
  m.def("gf256_mul", [](uint8_t a, uint8_t b) { return gf::mul(a, b); });
  m.def("gf256_inverse", [](uint8_t a) { return gf::inverse(a); });
  m.def("gf256_affine_matrix", &gf::affine_matrix);
  m.def("gf256_cauchy_matrix", [](int k, int m) {
    if (k < 1 || m < 0 || k + m > gf::kMaxBlocks) throw std::invalid_argument("need 1 <= k, 0 <= m, k + m <= 256");
    std::vector<uint8_t> out(size_t(k + m) * k);
    gf::cauchy_generator(k, m, out.data());
    return as_bytes(out);
  }, py::arg("k"), py::arg("m"), "(k+m) x k systematic Cauchy generator matrix, row-major bytes");
  m.def("gf256_invert", [](const std::string& matrix, int n) -> py::object {
    if (n < 0 || matrix.size() != size_t(n) * size_t(n)) throw std::invalid_argument("matrix must hold n*n bytes");
    std::vector<uint8_t> out(size_t(n) * n);
    if (!gf::invert(n, reinterpret_cast<const uint8_t*>(matrix.data()), out.data())) return py::none();
    return as_bytes(out);
  }, py::arg("matrix"), py::arg("n"), "inverse of an n x n matrix (row-major bytes), None when singular");
}
