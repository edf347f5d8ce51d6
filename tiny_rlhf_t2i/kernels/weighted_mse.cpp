// Thin PyTorch binding for weighted_mse.cu (Eq. 2 of Lee et al. 2023): checks the
// tensors, allocates the outputs and launches on the current CUDA stream. The
// autograd wiring (what to save, which grads are needed) lives in __init__.py.
#include <torch/extension.h>

// c10 headers, not ATen/cuda/CUDAContext.h, which also pulls in cuBLAS/cuSPARSE headers.
#include <c10/cuda/CUDAStream.h>
#include <c10/cuda/CUDAGuard.h>

// Defined in weighted_mse.cu. dtype codes: 0 = float32, 1 = float16, 2 = bfloat16.
cudaError_t weighted_mse_fwd_launch(int dtype, const void* eps_hat, const void* eps,
                                    const float* w, int64_t B, int64_t N, float* per_sample,
                                    float* loss, cudaStream_t stream);
cudaError_t weighted_mse_bwd_launch(int dtype, const void* eps_hat, const void* eps,
                                    const float* w, const float* grad_loss, int64_t B,
                                    int64_t N, void* grad_eps_hat, void* grad_eps,
                                    cudaStream_t stream);

static int dtype_code(const at::Tensor& t) {
  switch (t.scalar_type()) {
    case at::kFloat: return 0;
    case at::kHalf: return 1;
    case at::kBFloat16: return 2;
    default: TORCH_CHECK(false, "weighted_mse: expected float32, float16 or bfloat16, got ",
                         t.scalar_type());
  }
  return -1;  // unreachable: TORCH_CHECK(false, ...) throws
}

// The Python side already made everything contiguous and w float32; these checks
// turn a wrong call into a readable error instead of a bad memory access.
static void check_inputs(const at::Tensor& eps_hat, const at::Tensor& eps, const at::Tensor& w) {
  TORCH_CHECK(eps_hat.is_cuda(), "weighted_mse: eps_hat must be a CUDA tensor");
  TORCH_CHECK(eps.device() == eps_hat.device() && w.device() == eps_hat.device(),
              "weighted_mse: eps_hat, eps and w must be on the same device");
  TORCH_CHECK(eps.sizes() == eps_hat.sizes(), "weighted_mse: eps_hat ", eps_hat.sizes(),
              " and eps ", eps.sizes(), " differ in shape");
  TORCH_CHECK(eps.scalar_type() == eps_hat.scalar_type(),
              "weighted_mse: eps_hat and eps differ in dtype");
  TORCH_CHECK(eps_hat.dim() >= 1 && eps_hat.numel() > 0, "weighted_mse: empty input");
  TORCH_CHECK(eps_hat.size(0) <= INT32_MAX, "weighted_mse: batch too large for gridDim.x");
  TORCH_CHECK(w.scalar_type() == at::kFloat && w.dim() == 1 && w.size(0) == eps_hat.size(0),
              "weighted_mse: w must be float32 of shape (B,)");
  TORCH_CHECK(eps_hat.is_contiguous() && eps.is_contiguous() && w.is_contiguous(),
              "weighted_mse: inputs must be contiguous");
}

// Returns (loss (), per_sample (B,)), both float32; per_sample is saved for d/dw.
std::vector<at::Tensor> forward(const at::Tensor& eps_hat, const at::Tensor& eps,
                                const at::Tensor& w) {
  check_inputs(eps_hat, eps, w);
  const c10::cuda::CUDAGuard guard(eps_hat.device());
  const int64_t B = eps_hat.size(0), N = eps_hat.numel() / B;
  // Zeroed because the kernel accumulates into them with atomics. Two tensors, not
  // two views of one buffer, so an in-place op on the loss can't bump the version
  // counter of the saved per_sample and break backward.
  at::Tensor loss = at::zeros({}, eps_hat.options().dtype(at::kFloat));
  at::Tensor per_sample = at::zeros({B}, eps_hat.options().dtype(at::kFloat));
  C10_CUDA_CHECK(weighted_mse_fwd_launch(
      dtype_code(eps_hat), eps_hat.data_ptr(), eps.data_ptr(), w.data_ptr<float>(), B, N,
      per_sample.data_ptr<float>(), loss.data_ptr<float>(), c10::cuda::getCurrentCUDAStream()));
  return {loss, per_sample};
}

// Returns (grad_eps_hat, grad_eps) in the input dtype; each is None when not needed.
std::vector<at::Tensor> backward(const at::Tensor& grad_loss, const at::Tensor& eps_hat,
                                 const at::Tensor& eps, const at::Tensor& w,
                                 bool need_eps_hat, bool need_eps) {
  check_inputs(eps_hat, eps, w);
  TORCH_CHECK(grad_loss.scalar_type() == at::kFloat && grad_loss.numel() == 1 &&
                  grad_loss.device() == eps_hat.device(),
              "weighted_mse: grad_loss must be a float32 scalar on the input's device");
  const c10::cuda::CUDAGuard guard(eps_hat.device());
  const int64_t B = eps_hat.size(0), N = eps_hat.numel() / B;
  at::Tensor g_hat = need_eps_hat ? at::empty(eps_hat.sizes(), eps_hat.options()) : at::Tensor();
  at::Tensor g_eps = need_eps ? at::empty(eps.sizes(), eps.options()) : at::Tensor();
  C10_CUDA_CHECK(weighted_mse_bwd_launch(
      dtype_code(eps_hat), eps_hat.data_ptr(), eps.data_ptr(), w.data_ptr<float>(),
      grad_loss.data_ptr<float>(), B, N, need_eps_hat ? g_hat.data_ptr() : nullptr,
      need_eps ? g_eps.data_ptr() : nullptr, c10::cuda::getCurrentCUDAStream()));
  return {g_hat, g_eps};
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("forward", &forward, "Eq. 2 weighted MSE forward -> (loss, per_sample)");
  m.def("backward", &backward, "Eq. 2 weighted MSE backward -> (grad_eps_hat, grad_eps)");
}
