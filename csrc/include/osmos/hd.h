// OSMOS_HD marks a function usable on the host and (under nvcc) on the device.
#pragma once
#if defined(__CUDACC__)
#define OSMOS_HD __host__ __device__ __forceinline__
#else
#define OSMOS_HD inline
#endif
