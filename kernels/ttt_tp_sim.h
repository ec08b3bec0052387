// Host simulation of the few CUDA features ttt_tp.cu uses, so that its kernels compile as plain C++
// (g++ -std=c++20 -DTTT_TP_HOST_SIM) and run on a CPU: one std::thread per CUDA thread, std::barrier for
// __syncthreads / cluster.sync / warp-collective steps, distributed shared memory as pointers into the other CTAs'
// buffers, wmma fragments held whole by every lane (lane 0 stores), TF32 rounding as cvt.rna.tf32.f32.
//
// It checks the kernels' indexing, layouts, barriers and cluster exchanges at tiny sizes without a GPU
// (tests/test_ttt_tp.py via seqmix.kernels.ttt_tp_hostsim); it says nothing about timing or about hardware
// memory-model details beyond barrier ordering.
#pragma once

#include <atomic>
#include <barrier>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <memory>
#include <thread>
#include <type_traits>
#include <vector>

#define __device__
#define __global__
#define __forceinline__ inline
#define __restrict__
#define __launch_bounds__(a, b)
#define __cluster_dims__(a, b, c)
#define __align__(x) alignas(x)
#define TTT_TP_SMEM(name) float* name = ::sim::ctx.smem

struct sim_dim3 {
  unsigned x = 0, y = 0, z = 0;
};

namespace sim {
struct Ctx {
  float* smem = nullptr;
  float** cluster_smem = nullptr;
  unsigned rank = 0;
  std::barrier<>* cta_bar = nullptr;
  std::barrier<>* cluster_bar = nullptr;
  std::barrier<>* warp_bar = nullptr;
  float* warp_buf = nullptr;
};
inline thread_local Ctx ctx;
inline thread_local sim_dim3 tid, bid;
inline bool tf32_rounding = true;

// one cluster at a time; every CUDA thread of the cluster is a std::thread
template <class F>
void launch(int grid, int P, int nt, size_t smem_bytes, F&& body) {
  for (int c0 = 0; c0 < grid; c0 += P) {
    std::vector<std::vector<float>> smem(P, std::vector<float>(smem_bytes / 4 + 32, std::nanf("")));
    std::vector<float*> ptrs(P);
    for (int p = 0; p < P; ++p) ptrs[p] = smem[p].data();
    std::barrier<> cluster_bar(P * nt);
    std::vector<std::unique_ptr<std::barrier<>>> cta_bars, warp_bars;
    for (int p = 0; p < P; ++p) cta_bars.emplace_back(new std::barrier<>(nt));
    for (int w = 0; w < P * nt / 32; ++w) warp_bars.emplace_back(new std::barrier<>(32));
    std::vector<float> warp_buf(P * nt);
    std::vector<std::thread> threads;
    threads.reserve(P * nt);
    for (int p = 0; p < P; ++p)
      for (int t = 0; t < nt; ++t)
        threads.emplace_back([&, p, t] {
          ctx.smem = ptrs[p];
          ctx.cluster_smem = ptrs.data();
          ctx.rank = p;
          ctx.cta_bar = cta_bars[p].get();
          ctx.cluster_bar = &cluster_bar;
          ctx.warp_bar = warp_bars[(p * nt + t) / 32].get();
          ctx.warp_buf = warp_buf.data() + (p * nt + t) / 32 * 32;
          tid.x = t;
          bid.x = c0 + p;
          body();
        });
    for (auto& th : threads) th.join();
  }
}
}  // namespace sim

#define threadIdx (::sim::tid)
#define blockIdx (::sim::bid)

inline void __syncthreads() { ::sim::ctx.cta_bar->arrive_and_wait(); }

inline float __shfl_xor_sync(unsigned, float v, int o) {
  auto& c = ::sim::ctx;
  const int lane = threadIdx.x % 32;
  c.warp_buf[lane] = v;
  c.warp_bar->arrive_and_wait();
  const float r = c.warp_buf[lane ^ o];
  c.warp_bar->arrive_and_wait();
  return r;
}

inline float atomicAdd(float* p, float v) { return std::atomic_ref<float>(*p).fetch_add(v); }
inline float __expf(float x) { return std::exp(x); }
inline float rsqrtf(float x) { return 1.f / std::sqrt(x); }
template <class T>
inline T min(T a, T b) { return a < b ? a : b; }

struct __nv_bfloat16 {
  uint16_t bits;
};
inline float __bfloat162float(__nv_bfloat16 x) {
  uint32_t u = uint32_t(x.bits) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

namespace cooperative_groups {
struct cluster_group {
  unsigned block_rank() const { return ::sim::ctx.rank; }
  void sync() { ::sim::ctx.cluster_bar->arrive_and_wait(); }
  template <class T>
  T* map_shared_rank(T* p, int r) {
    auto& c = ::sim::ctx;
    const std::ptrdiff_t off = reinterpret_cast<float*>(p) - c.smem;
    return reinterpret_cast<T*>(c.cluster_smem[r] + off);
  }
};
inline cluster_group this_cluster() { return {}; }
}  // namespace cooperative_groups

namespace nvcuda {
namespace wmma {
struct row_major {};
struct col_major {};
struct matrix_a {};
struct matrix_b {};
struct accumulator {};
namespace precision {
struct tf32 {};
}
enum layout_t { mem_row_major, mem_col_major };

template <class Use, int M, int N, int K>
struct dims;
template <int M, int N, int K>
struct dims<matrix_a, M, N, K> {
  static constexpr int R = M, C = K;
};
template <int M, int N, int K>
struct dims<matrix_b, M, N, K> {
  static constexpr int R = K, C = N;
};
template <int M, int N, int K>
struct dims<accumulator, M, N, K> {
  static constexpr int R = M, C = N;
};

// x[r * C + c] holds element (r, c) of the logical fragment (every lane holds all of it)
template <class Use, int M, int N, int K, class T, class L = void>
struct fragment {
  static constexpr int R = dims<Use, M, N, K>::R, C = dims<Use, M, N, K>::C;
  static constexpr int num_elements = R * C;
  static constexpr bool col = std::is_same<L, col_major>::value;
  float x[R * C];
};

template <class Use, int M, int N, int K, class T, class L>
inline void load_matrix_sync(fragment<Use, M, N, K, T, L>& f, const float* p, unsigned ldm) {
  using Fr = fragment<Use, M, N, K, T, L>;
  for (int r = 0; r < Fr::R; ++r)
    for (int c = 0; c < Fr::C; ++c) f.x[r * Fr::C + c] = Fr::col ? p[c * ldm + r] : p[r * ldm + c];
}

template <int M, int N, int K, class T>
inline void load_matrix_sync(fragment<accumulator, M, N, K, T>& f, const float* p, unsigned ldm, layout_t) {
  for (int r = 0; r < M; ++r)
    for (int c = 0; c < N; ++c) f.x[r * N + c] = p[r * ldm + c];
}

template <int M, int N, int K, class T>
inline void store_matrix_sync(float* p, const fragment<accumulator, M, N, K, T>& f, unsigned ldm, layout_t) {
  if (threadIdx.x % 32) return;  // every lane holds the tile; lane 0 stores it
  for (int r = 0; r < M; ++r)
    for (int c = 0; c < N; ++c) p[r * ldm + c] = f.x[r * N + c];
}

template <int M, int N, int K, class T>
inline void fill_fragment(fragment<accumulator, M, N, K, T>& f, float v) {
  for (auto& e : f.x) e = v;
}

template <int M, int N, int K, class TA, class LA, class TB, class LB, class TC>
inline void mma_sync(fragment<accumulator, M, N, K, TC>& d, const fragment<matrix_a, M, N, K, TA, LA>& a,
                     const fragment<matrix_b, M, N, K, TB, LB>& b, const fragment<accumulator, M, N, K, TC>& c) {
  float out[M * N];
  for (int i = 0; i < M; ++i)
    for (int j = 0; j < N; ++j) {
      float s = c.x[i * N + j];
      for (int k = 0; k < K; ++k) s += a.x[i * K + k] * b.x[k * N + j];
      out[i * N + j] = s;
    }
  std::memcpy(d.x, out, sizeof(out));
}

inline float __float_to_tf32(float x) {  // cvt.rna.tf32.f32: round to nearest, ties away, 10-bit mantissa
  if (!::sim::tf32_rounding || !std::isfinite(x)) return x;
  uint32_t u;
  std::memcpy(&u, &x, 4);
  u = (u + 0x1000u) & 0xffffe000u;
  std::memcpy(&x, &u, 4);
  return x;
}
}  // namespace wmma
}  // namespace nvcuda
