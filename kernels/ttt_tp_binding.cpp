// torch adapter of kernels/ttt_tp.cu (which needs no torch headers): tensors -> raw pointers on the current
// stream. Shapes and dtypes are validated in kernels/ttt_tp.py before anything is built; the checks here only
// guard the pointer casts.
#include <c10/cuda/CUDAStream.h>
#include <torch/extension.h>

extern "C" {
int ttt_tp_config(int what);
const char* ttt_tp_error_string(int err);
int ttt_tp_fwd(int in_bf16, const void* q, const void* k, const void* r, const float* eta, const float* lnw,
               const float* lnb, const float* W1, const float* b1, const float* W2, const float* b2, float* z,
               float* fW1, float* fb1, float* fW2, float* fb2, float* cW1, float* cb1, float* cW2, float* cb2, int BH,
               int T, int H, int G, int save, float eps, cudaStream_t stream);
int ttt_tp_bwd(int in_bf16, const void* q, const void* k, const void* r, const float* eta, const float* lnw,
               const float* lnb, const float* dz, const float* cW1, const float* cb1, const float* cW2,
               const float* cb2, const float* dW1, const float* db1, const float* dW2, const float* db2, float* sW1,
               float* sb1, float* sW2, float* sb2, float* dq, float* dk, float* dr, float* deta, float* dlnw,
               float* dlnb, float* oW1, float* ob1, float* oW2, float* ob2, int BH, int T, int H, int G, float eps,
               cudaStream_t stream);
}

namespace {

float* f32(const torch::Tensor& t, const char* name) {
  TORCH_CHECK(t.is_cuda() && t.is_contiguous() && t.scalar_type() == torch::kFloat32, "ttt_tp: ", name,
              " must be a contiguous float32 CUDA tensor");
  return t.data_ptr<float>();
}

int in_kind(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& r) {
  for (const auto* t : {&q, &k, &r})
    TORCH_CHECK(t->is_cuda() && t->is_contiguous() && t->scalar_type() == q.scalar_type(),
                "ttt_tp: q, k, r must be contiguous CUDA tensors of one dtype");
  TORCH_CHECK(q.scalar_type() == torch::kBFloat16 || q.scalar_type() == torch::kFloat32,
              "ttt_tp: q, k, r must be bfloat16 or float32");
  return q.scalar_type() == torch::kBFloat16 ? 1 : 0;
}

void check(int err, const char* what) {
  TORCH_CHECK(err == 0, "ttt_tp ", what, " launch failed: ", ttt_tp_error_string(err));
}

// q, k, r [BH, T, K]; eta [BH, T]; ln_w, ln_b [H, K]; states / checkpoints in the full-state layout.
void fwd(torch::Tensor q, torch::Tensor k, torch::Tensor r, torch::Tensor eta, torch::Tensor lnw, torch::Tensor lnb,
         std::vector<torch::Tensor> init, torch::Tensor z, std::vector<torch::Tensor> fin,
         std::vector<torch::Tensor> ck, int64_t H, int64_t G, bool save, double eps) {
  const int kind = in_kind(q, k, r);
  const int BH = q.size(0), T = q.size(1);
  check(ttt_tp_fwd(kind, q.data_ptr(), k.data_ptr(), r.data_ptr(), f32(eta, "eta"), f32(lnw, "ln_w"),
                   f32(lnb, "ln_b"), f32(init[0], "W1"), f32(init[1], "b1"), f32(init[2], "W2"), f32(init[3], "b2"),
                   f32(z, "z"), f32(fin[0], "W1"), f32(fin[1], "b1"), f32(fin[2], "W2"), f32(fin[3], "b2"),
                   f32(ck[0], "ck"), f32(ck[1], "ck"), f32(ck[2], "ck"), f32(ck[3], "ck"), BH, T, (int)H, (int)G,
                   save ? 1 : 0, (float)eps, c10::cuda::getCurrentCUDAStream().stream()),
        "forward");
}

void bwd(torch::Tensor q, torch::Tensor k, torch::Tensor r, torch::Tensor eta, torch::Tensor lnw, torch::Tensor lnb,
         torch::Tensor dz, std::vector<torch::Tensor> ck, std::vector<torch::Tensor> dfin,
         std::vector<torch::Tensor> sc, torch::Tensor dq, torch::Tensor dk, torch::Tensor dr, torch::Tensor deta,
         torch::Tensor dlnw, torch::Tensor dlnb, std::vector<torch::Tensor> dst, int64_t H, int64_t G, double eps) {
  const int kind = in_kind(q, k, r);
  const int BH = q.size(0), T = q.size(1);
  check(ttt_tp_bwd(kind, q.data_ptr(), k.data_ptr(), r.data_ptr(), f32(eta, "eta"), f32(lnw, "ln_w"),
                   f32(lnb, "ln_b"), f32(dz, "dz"), f32(ck[0], "ck"), f32(ck[1], "ck"), f32(ck[2], "ck"),
                   f32(ck[3], "ck"), f32(dfin[0], "dW1"), f32(dfin[1], "db1"), f32(dfin[2], "dW2"),
                   f32(dfin[3], "db2"), f32(sc[0], "scratch"), f32(sc[1], "scratch"), f32(sc[2], "scratch"),
                   f32(sc[3], "scratch"), f32(dq, "dq"), f32(dk, "dk"), f32(dr, "dr"), f32(deta, "deta"),
                   f32(dlnw, "dln_w"), f32(dlnb, "dln_b"), f32(dst[0], "dW1"), f32(dst[1], "db1"),
                   f32(dst[2], "dW2"), f32(dst[3], "db2"), BH, T, (int)H, (int)G, (float)eps,
                   c10::cuda::getCurrentCUDAStream().stream()),
        "backward");
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("fwd", &fwd, "TTT-MLP tensor-parallel scan forward");
  m.def("bwd", &bwd, "TTT-MLP tensor-parallel scan backward");
  m.def("config", &ttt_tp_config, "kernel constants (0: P fwd, 1: P bwd, 2/3: smem bytes, 4: K, 5: F, 6: N)");
}
