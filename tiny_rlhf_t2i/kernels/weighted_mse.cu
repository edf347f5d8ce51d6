// Fused reward-weighted denoising loss, Eq. 2 of Lee et al. 2023:
//
//   loss = (1 / B) * sum_b  w_b * mean_j (eps_hat[b, j] - eps[b, j])^2
//
// Raw-pointer CUDA with no torch headers, so nvcc alone compiles it; weighted_mse.cpp
// is the thin PyTorch binding that calls the two launchers at the bottom.
// Inputs are contiguous and viewed as B rows of N = C * H * W elements.
#include <cstdint>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

namespace {

constexpr int kThreads = 256;         // threads per block (8 warps)
constexpr int kElemsPerBlock = 4096;  // a block's share of a row before grid-striding

// Explicit conversions: torch compiles with __CUDA_NO_HALF_CONVERSIONS__ and
// __CUDA_NO_BFLOAT16_CONVERSIONS__, which remove the implicit ones.
__device__ __forceinline__ float to_float(float x) { return x; }
__device__ __forceinline__ float to_float(__half x) { return __half2float(x); }
__device__ __forceinline__ float to_float(__nv_bfloat16 x) { return __bfloat162float(x); }
template <typename T> __device__ T from_float(float x);
template <> __device__ __forceinline__ float from_float(float x) { return x; }
template <> __device__ __forceinline__ __half from_float(float x) { return __float2half_rn(x); }
template <> __device__ __forceinline__ __nv_bfloat16 from_float(float x) {
  return __float2bfloat16_rn(x);
}

// 16 bytes of T (4 fp32 or 8 bf16/fp16), moved with one 128-bit load or store.
template <typename T> struct alignas(16) Pack { T v[16 / sizeof(T)]; };

__device__ __forceinline__ bool aligned16(const void* p) {
  return reinterpret_cast<uintptr_t>(p) % 16 == 0;  // nullptr counts as aligned
}

// Sum of one float per thread over the whole block; the result is valid in thread 0.
__device__ float block_sum(float x) {
  __shared__ float warp_sums[kThreads / 32];
  for (int off = 16; off > 0; off /= 2) x += __shfl_down_sync(0xffffffffu, x, off);
  if (threadIdx.x % 32 == 0) warp_sums[threadIdx.x / 32] = x;
  __syncthreads();
  x = threadIdx.x < kThreads / 32 ? warp_sums[threadIdx.x] : 0.f;
  for (int off = 16; off > 0; off /= 2) x += __shfl_down_sync(0xffffffffu, x, off);
  return x;
}

// Both kernels use grid = (B, chunks): blockIdx.x picks the sample b, and the
// `chunks` blocks of that sample grid-stride over its N elements. Why not one
// block per sample: B = 1 with a large image would leave most SMs idle. Why not a
// flat 1-D grid: a block could straddle two samples and every element would need
// a 64-bit division to find its b. A row whose start is 16-byte aligned (when N
// is not a multiple of the vector width, only some are) uses 128-bit loads plus a
// scalar tail; any other row is read one element at a time.

// Forward: each block reduces its part of row b in fp32 and adds it, with one
// atomicAdd each, to per_sample[b] (saved for d/dw) and to the scalar loss.
// The atomics make the order of the fp32 additions, and so the last bits of the
// result, vary from run to run; the cost is one atomic pair per 4096 elements.
template <typename T>
__global__ void __launch_bounds__(kThreads) weighted_mse_fwd(
    const T* __restrict__ eps_hat, const T* __restrict__ eps, const float* __restrict__ w,
    int64_t B, int64_t N, float* per_sample, float* loss) {
  const int64_t b = blockIdx.x;
  const T* x = eps_hat + b * N;  // (N,) sample b's predicted noise
  const T* y = eps + b * N;      // (N,) sample b's true noise
  const int64_t start = (int64_t)blockIdx.y * kThreads + threadIdx.x;
  const int64_t stride = (int64_t)gridDim.y * kThreads;
  float acc = 0.f;
  int64_t tail = 0;  // first element not covered by the vector loop
  if (aligned16(x) && aligned16(y)) {
    constexpr int V = 16 / sizeof(T);
    for (int64_t i = start; i < N / V; i += stride) {
      const Pack<T> p = reinterpret_cast<const Pack<T>*>(x)[i];
      const Pack<T> q = reinterpret_cast<const Pack<T>*>(y)[i];
#pragma unroll
      for (int k = 0; k < V; ++k) {
        const float d = to_float(p.v[k]) - to_float(q.v[k]);
        acc += d * d;
      }
    }
    tail = N / V * V;
  }
  for (int64_t i = tail + start; i < N; i += stride) {
    const float d = to_float(x[i]) - to_float(y[i]);
    acc += d * d;
  }
  acc = block_sum(acc);
  if (threadIdx.x == 0) {
    const float part = acc / (float)N;  // this block's share of mean_j (.)^2
    atomicAdd(per_sample + b, part);
    atomicAdd(loss, w[b] * part / (float)B);
  }
}

// Backward: d loss / d eps_hat[b, j] = g * w_b * 2 (eps_hat - eps)[b, j] / (N B),
// with g = d(out)/d loss read on the device (no host sync); d/d eps is its
// negative. Either output pointer may be null when that grad is not needed.
template <typename T>
__global__ void __launch_bounds__(kThreads) weighted_mse_bwd(
    const T* __restrict__ eps_hat, const T* __restrict__ eps, const float* __restrict__ w,
    const float* __restrict__ grad_loss, int64_t B, int64_t N, T* grad_eps_hat, T* grad_eps) {
  const int64_t b = blockIdx.x;
  const T* x = eps_hat + b * N;
  const T* y = eps + b * N;
  T* gx = grad_eps_hat ? grad_eps_hat + b * N : nullptr;
  T* gy = grad_eps ? grad_eps + b * N : nullptr;
  const float scale = 2.f * grad_loss[0] * w[b] / ((float)N * (float)B);
  const int64_t start = (int64_t)blockIdx.y * kThreads + threadIdx.x;
  const int64_t stride = (int64_t)gridDim.y * kThreads;
  int64_t tail = 0;
  if (aligned16(x) && aligned16(y) && aligned16(gx) && aligned16(gy)) {
    constexpr int V = 16 / sizeof(T);
    for (int64_t i = start; i < N / V; i += stride) {
      const Pack<T> p = reinterpret_cast<const Pack<T>*>(x)[i];
      const Pack<T> q = reinterpret_cast<const Pack<T>*>(y)[i];
      Pack<T> r, s;
#pragma unroll
      for (int k = 0; k < V; ++k) {
        const float g = scale * (to_float(p.v[k]) - to_float(q.v[k]));
        r.v[k] = from_float<T>(g);
        s.v[k] = from_float<T>(-g);
      }
      if (gx) reinterpret_cast<Pack<T>*>(gx)[i] = r;
      if (gy) reinterpret_cast<Pack<T>*>(gy)[i] = s;
    }
    tail = N / V * V;
  }
  for (int64_t i = tail + start; i < N; i += stride) {
    const float g = scale * (to_float(x[i]) - to_float(y[i]));
    if (gx) gx[i] = from_float<T>(g);
    if (gy) gy[i] = from_float<T>(-g);
  }
}

dim3 grid_for(int64_t B, int64_t N) {
  int64_t chunks = (N + kElemsPerBlock - 1) / kElemsPerBlock;
  if (chunks > 65535) chunks = 65535;  // gridDim.y limit; grid-striding covers the rest
  return dim3((unsigned)B, (unsigned)chunks);
}

}  // namespace

// dtype codes shared with weighted_mse.cpp: 0 = float32, 1 = float16, 2 = bfloat16.
#define WMSE_DISPATCH(dtype, ...)                                   \
  switch (dtype) {                                                  \
    case 0: { using T = float; __VA_ARGS__; break; }                \
    case 1: { using T = __half; __VA_ARGS__; break; }               \
    case 2: { using T = __nv_bfloat16; __VA_ARGS__; break; }        \
    default: return cudaErrorInvalidValue;                          \
  }

// per_sample (B,) and loss () must be zeroed by the caller: the kernel accumulates.
cudaError_t weighted_mse_fwd_launch(int dtype, const void* eps_hat, const void* eps,
                                    const float* w, int64_t B, int64_t N, float* per_sample,
                                    float* loss, cudaStream_t stream) {
  WMSE_DISPATCH(dtype, weighted_mse_fwd<T><<<grid_for(B, N), kThreads, 0, stream>>>(
      (const T*)eps_hat, (const T*)eps, w, B, N, per_sample, loss));
  return cudaGetLastError();
}

cudaError_t weighted_mse_bwd_launch(int dtype, const void* eps_hat, const void* eps,
                                    const float* w, const float* grad_loss, int64_t B,
                                    int64_t N, void* grad_eps_hat, void* grad_eps,
                                    cudaStream_t stream) {
  WMSE_DISPATCH(dtype, weighted_mse_bwd<T><<<grid_for(B, N), kThreads, 0, stream>>>(
      (const T*)eps_hat, (const T*)eps, w, grad_loss, B, N, (T*)grad_eps_hat, (T*)grad_eps));
  return cudaGetLastError();
}
