// Each binding file adds its functions to the module with OSMOS_BIND(name) { ... }, so adding a
// hot path never touches a shared list. module_cpu.cpp / module_cuda.cpp run every binder.
#pragma once
#include <pybind11/pybind11.h>
#include <utility>
#include <vector>

namespace osmos {
using Binder = void (*)(pybind11::module_&);
inline std::vector<std::pair<const char*, Binder>>& binders() {
  static std::vector<std::pair<const char*, Binder>> list;
  return list;
}
struct RegisterBinder {
  RegisterBinder(const char* name, Binder fn) { binders().emplace_back(name, fn); }
};
inline void run_binders(pybind11::module_& m) {
  pybind11::list names;
  for (auto& [name, fn] : binders()) { fn(m); names.append(name); }
  m.attr("hot_paths") = names;
}
}  // namespace osmos

#define OSMOS_BIND(name)                                                              \
  static void osmos_bind_##name(pybind11::module_&);                                  \
  static ::osmos::RegisterBinder osmos_register_##name(#name, &osmos_bind_##name);    \
  static void osmos_bind_##name(pybind11::module_& m)

// Pointers cross the boundary as integers (tensor.data_ptr()); native code never sees torch.
template <class T>
inline T* as_ptr(uintptr_t p) { return reinterpret_cast<T*>(p); }
