// On-chip tensor-parallel TTT-MLP scan for Hopper (sm_90a): forward and backward, non-causal (video) form.
//
// Math and schedule: kernels/ttt_tp_ref.py (the PyTorch emulation these kernels follow line by line; it carries
// the derivation and is tested against seqmix.ops.ttt.ttt_scan in fp64). No torch headers here: raw pointers
// and two extern "C" launchers, so the file compiles standalone with nvcc (tests/test_ttt_tp.py does, for the
// resource report); kernels/ttt_tp_binding.cpp adapts tensors for torch.utils.cpp_extension. With
// -DTTT_TP_HOST_SIM the same kernels compile as plain C++ against ttt_tp_sim.h and run on CPU threads
// (kernels/ttt_tp_hostsim.py), which checks indexing, layouts, barriers and cluster exchanges without a GPU.
//
// Design
// ------
// * One thread-block cluster of P CTAs per (batch, head). CTA p owns hidden units [p Fp, (p + 1) Fp) of the
//   inner MLP (Fp = F / P): W1[:, p] [K, Fp], b1[p], W2[p, :] [Fp, K] in shared memory for the whole sequence,
//   plus a replicated b2 [K]. Everything K wide (Z2, the LN-L2 gradient G2, LN statistics, read-out rows) is
//   computed redundantly by every CTA from all-reduced partial products; an all-reduce is
//   cluster.sync(); sum over ranks r of map_shared_rank(buf, r)[i] (DSMEM reads, fixed rank order, so every CTA
//   gets the same bits); cluster.sync(). HBM traffic: inputs, outputs, checkpoints (and the backward's per-group
//   state scratch, L2-resident).
// * Cluster size per pass: forward P = 4 (Fp = 64), backward P = 8 (Fp = 32), fixed at K = 64, F = 256,
//   mini-batch N = 64 (the paper's TTT-MLP). Forward at P = 2 would need ~257 KB of shared memory per CTA in
//   fp32, more than Hopper's 227 KB; the backward keeps ~6 state-sized and ~12 activation tiles live.
// * Shared memory per CTA (fp32, rows padded by 4 floats against bank conflicts; exact numbers in the
//   static_asserts below and in benchmarks/results/ttt-tp-resources/):
//     forward  (P = 4): W1, W2 shards + X, Q, RB (reduce buffer), Z2, G2 [N, K] + Z1, A, T1 [N, Fp] ~ 176 KB
//     backward (P = 8): W1, W2, W1', W2', dW1, dW2 shards + X, Q, dZq, Z2, G2, RB [N, K]
//                       + Z1, A, Pm, Z1q, Aq, T1 [N, Fp] ~ 219 KB
//   R (targets) is only used elementwise and is read from global memory where needed.
// * Matrix products: wmma m16n16k8 TF32 tensor-core products from fp32 shared memory with fp32 accumulators
//   (mma.sync underneath; 8 warps share the output tiles). Not wgmma / TMA: wgmma wants bf16 operands in a
//   swizzled shared layout and warpgroup-wide register accumulators, which here would need bf16 shadow copies of
//   the fp32 state and of every activation tile, and a layout scheme per transposed use (the backward uses each
//   operand both ways) -- more shared memory than the backward has left and more code than could be written and
//   checked without a GPU. TF32 keeps the state fp32 in shared memory (the Triton kernel's product precision) at
//   half the bf16 tensor-core rate; a wgmma version is the next step once this one is validated on a GPU.
// * Inputs q, k, r as bf16 or fp32 (converted on load), eta / LN weights / state fp32; outputs fp32 (the wrapper
//   casts). Ragged last mini-batch: rows >= n are zero-filled with eta = 0, so they add nothing to the updates,
//   and are not stored; its update is not applied to the returned state (as ttt_scan).
// * Checkpoints (backward): the forward writes each CTA's shard of the state before mini-batch g G to
//   ck_*[bh, g] (layout [BH, n_groups, K, F] / [BH, n_groups, F] / [BH, n_groups, F, K] / [BH, n_groups, K], the
//   full-state layout, each CTA writing its own columns / rows; b2 by rank 0). The backward walks the groups in
//   reverse: it copies the group's states (recomputed forward steps, no read-out) into its shard of the scratch
//   sc_*[bh, 0..G) (there b2 is kept per rank, [BH, G, P, K]: the same launch writes and reads it), then steps
//   back through the group's mini-batches, reloading each mini-batch's state.
// * Synchronisation: every helper ends with __syncthreads(); every all-reduce is bracketed by cluster.sync().

#ifdef TTT_TP_HOST_SIM
// CPU simulation build (g++ -std=c++20 -DTTT_TP_HOST_SIM): see ttt_tp_sim.h
#include "ttt_tp_sim.h"
#else
#include <cooperative_groups.h>
#include <cuda_bf16.h>
#include <cuda_runtime.h>
#include <mma.h>

#include <type_traits>
#define TTT_TP_SMEM(name) extern __shared__ __align__(128) float name[]
#endif

namespace cg = cooperative_groups;
using namespace nvcuda;

namespace ttt_tp {

constexpr int K = 64;    // head dim
constexpr int F = 256;   // inner width (4 K)
constexpr int N = 64;    // mini-batch size
constexpr int NT = 256;  // threads per CTA
constexpr int NWARPS = NT / 32;
constexpr int PAD = 4;
constexpr int LDK = K + PAD;  // rows of K floats
constexpr int P_FWD = 4;
constexpr int P_BWD = 8;
constexpr int SMEM_LIMIT = 227 * 1024;

__device__ __forceinline__ float to_f(float x) { return x; }
__device__ __forceinline__ float to_f(__nv_bfloat16 x) { return __bfloat162float(x); }

// GELU_tanh and its derivatives through s = sigmoid(2u), u = c (x + a x^3) (no tanh; stable for any x).
__device__ __forceinline__ float gelu_sig(float x) {
  return 1.f / (1.f + __expf(-2.f * (0.7978845608028654f * (x + 0.044715f * x * x * x))));
}
__device__ __forceinline__ float gelu(float x) { return x * gelu_sig(x); }
__device__ __forceinline__ float gelu_d1(float x) {
  float s = gelu_sig(x), du = 0.7978845608028654f * (1.f + 0.134145f * x * x);
  return s + 2.f * x * s * (1.f - s) * du;
}
__device__ __forceinline__ float gelu_d2(float x) {
  float s = gelu_sig(x), du = 0.7978845608028654f * (1.f + 0.134145f * x * x), t = 2.f * s - 1.f;
  return 4.f * s * (1.f - s) * (du - x * t * du * du + 0.10703222440890037f * x * x);
}

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

// C[M, Nc] = (acc ? C : 0) + alpha op(A) op(B) with op(A) [M, Kd], op(B) [Kd, Nc]. TA: A is stored [Kd, M];
// TB: B is stored [Nc, Kd]. All row-major fp32 in shared memory, leading dims multiples of 4, 32-byte aligned
// 16 x 16 tile origins. One warp per 16 x 16 output tile.
template <bool TA, bool TB>
__device__ void mm(float* C, int ldc, const float* A, int lda, const float* B, int ldb, int M, int Nc, int Kd,
                   float alpha, bool acc) {
  using LA = typename std::conditional<TA, wmma::col_major, wmma::row_major>::type;
  using LB = typename std::conditional<TB, wmma::col_major, wmma::row_major>::type;
  const int warp = threadIdx.x / 32, tn = Nc / 16, tiles = (M / 16) * tn;
  for (int t = warp; t < tiles; t += NWARPS) {
    const int i = t / tn, j = t % tn;
    wmma::fragment<wmma::accumulator, 16, 16, 8, float> c;
    float* pc = C + i * 16 * ldc + j * 16;
    if (acc)
      wmma::load_matrix_sync(c, pc, ldc, wmma::mem_row_major);
    else
      wmma::fill_fragment(c, 0.f);
    for (int kk = 0; kk < Kd; kk += 8) {
      wmma::fragment<wmma::matrix_a, 16, 16, 8, wmma::precision::tf32, LA> a;
      wmma::fragment<wmma::matrix_b, 16, 16, 8, wmma::precision::tf32, LB> b;
      wmma::load_matrix_sync(a, TA ? A + kk * lda + i * 16 : A + i * 16 * lda + kk, lda);
      wmma::load_matrix_sync(b, TB ? B + j * 16 * ldb + kk : B + kk * ldb + j * 16, ldb);
#pragma unroll
      for (int e = 0; e < a.num_elements; ++e) a.x[e] = wmma::__float_to_tf32(alpha * a.x[e]);
#pragma unroll
      for (int e = 0; e < b.num_elements; ++e) b.x[e] = wmma::__float_to_tf32(b.x[e]);
      wmma::mma_sync(c, a, b, c);
    }
    wmma::store_matrix_sync(pc, c, ldc, wmma::mem_row_major);
  }
  __syncthreads();
}

// rows [t0, t0 + n) of a [T, K] input into a [N, K] tile, zero rows past n.
template <typename Tin>
__device__ void load_rows(float* dst, const Tin* src, long long t0, int n) {
  for (int i = threadIdx.x; i < N * K; i += NT) {
    const int row = i / K, col = i % K;
    dst[row * LDK + col] = row < n ? to_f(src[(t0 + row) * K + col]) : 0.f;
  }
}

__device__ void load_vec(float* dst, const float* src, int len, int n) {
  for (int i = threadIdx.x; i < len; i += NT) dst[i] = i < n ? src[i] : 0.f;
}

// A [R, C] block of a row-major global matrix with row stride gs, to / from a shared tile.
__device__ void g2s(float* dst, int ld, const float* src, long long gs, int R, int C) {
  for (int i = threadIdx.x; i < R * C; i += NT) dst[(i / C) * ld + i % C] = src[(long long)(i / C) * gs + i % C];
}
__device__ void s2g(float* dst, long long gs, const float* src, int ld, int R, int C) {
  for (int i = threadIdx.x; i < R * C; i += NT) dst[(long long)(i / C) * gs + i % C] = src[(i / C) * ld + i % C];
}

// column sums of a [N, C] tile: out[c] = beta out[c] + alpha sum_rows tile[:, c]
__device__ void colsum(float* out, const float* t, int ld, int C, float alpha, float beta) {
  for (int c = threadIdx.x; c < C; c += NT) {
    float s = 0.f;
    for (int i = 0; i < N; ++i) s += t[i * ld + c];
    out[c] = beta * out[c] + alpha * s;
  }
}

// dst = sum over the cluster's ranks of peer tile src (same smem offset in every CTA), for [N, C] tiles.
template <int P>
__device__ void allreduce(cg::cluster_group& cluster, float* dst, int ldd, float* src, int lds, int C) {
  cluster.sync();
  float* peer[P];
#pragma unroll
  for (int r = 0; r < P; ++r) peer[r] = cluster.map_shared_rank(src, r);
  for (int i = threadIdx.x; i < N * C; i += NT) {
    const int o = (i / C) * lds + i % C;
    float s = 0.f;
#pragma unroll
    for (int r = 0; r < P; ++r) s += peer[r][o];
    dst[(i / C) * ldd + i % C] = s;
  }
  cluster.sync();
}

// Same reduction, rows split over the ranks and written straight to global rows [t0, t0 + n) (reduce-scatter).
template <int P>
__device__ void reduce_rows_to_global(cg::cluster_group& cluster, float* out, long long t0, int n, float* src) {
  cluster.sync();
  const int rank = cluster.block_rank(), rows = N / P;
  float* peer[P];
#pragma unroll
  for (int r = 0; r < P; ++r) peer[r] = cluster.map_shared_rank(src, r);
  for (int i = threadIdx.x; i < rows * K; i += NT) {
    const int row = rank * rows + i / K, col = i % K;
    if (row >= n) continue;
    float s = 0.f;
#pragma unroll
    for (int r = 0; r < P; ++r) s += peer[r][row * LDK + col];
    out[(t0 + row) * K + col] = s;
  }
  cluster.sync();
}

// Row-wise LN-L2 gradient: G2 = d/dZ2 1/2 ||LN(Z2) w + b - r||^2; keeps mu, rstd per row. Warp per row.
template <typename Tin>
__device__ void lnl2_fwd(float* G2, float* mu, float* rstd, const float* Z2, const Tin* r, long long t0, int n,
                         const float* w, const float* b, float eps) {
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  for (int row = warp; row < N; row += NWARPS) {
    float z[2], rr[2];
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      z[h] = Z2[row * LDK + lane + 32 * h];
      rr[h] = row < n ? to_f(r[(t0 + row) * K + lane + 32 * h]) : 0.f;
    }
    const float m = warp_sum(z[0] + z[1]) / K;
    const float zc0 = z[0] - m, zc1 = z[1] - m;
    const float rs = rsqrtf(warp_sum(zc0 * zc0 + zc1 * zc1) / K + eps);
    float xh[2] = {zc0 * rs, zc1 * rs}, gx[2];
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const int c = lane + 32 * h;
      gx[h] = (xh[h] * w[c] + b[c] - rr[h]) * w[c];
    }
    const float s1 = warp_sum(gx[0] + gx[1]) / K, s2 = warp_sum(gx[0] * xh[0] + gx[1] * xh[1]) / K;
#pragma unroll
    for (int h = 0; h < 2; ++h) G2[row * LDK + lane + 32 * h] = rs * (gx[h] - s1 - xh[h] * s2);
    if (lane == 0) {
      mu[row] = m;
      rstd[row] = rs;
    }
  }
  __syncthreads();
}

// Backward of lnl2_fwd: dg -> dz (into dZ), dr (rows < n to global, if dr_out), dln_w / dln_b accumulated.
template <typename Tin>
__device__ void lnl2_bwd(float* dZ, const float* dG, const float* G2, const float* Z2, const float* mu,
                         const float* rstd, const Tin* r, long long t0, int n, const float* w, const float* b,
                         float* dlnw, float* dlnb, float* dr_out) {
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  float aw[2] = {0.f, 0.f}, ab[2] = {0.f, 0.f};
  for (int row = warp; row < N; row += NWARPS) {
    const float rs = rstd[row], m = mu[row];
    float xh[2], e[2], gx[2], dg[2], g[2], u[2];
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const int c = lane + 32 * h;
      const float rr = row < n ? to_f(r[(t0 + row) * K + c]) : 0.f;
      xh[h] = (Z2[row * LDK + c] - m) * rs;
      e[h] = xh[h] * w[c] + b[c] - rr;
      gx[h] = e[h] * w[c];
      dg[h] = dG[row * LDK + c];
      g[h] = G2[row * LDK + c];
      u[h] = rs * dg[h];
    }
    const float m_u = warp_sum(u[0] + u[1]) / K, m_uxh = warp_sum(u[0] * xh[0] + u[1] * xh[1]) / K;
    const float cc = warp_sum(gx[0] * xh[0] + gx[1] * xh[1]) / K;
    float dxh[2];
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const int c = lane + 32 * h;
      const float dgx = u[h] - m_u - xh[h] * m_uxh;
      dxh[h] = -u[h] * cc - gx[h] * m_uxh + dgx * w[c] * w[c];
      aw[h] += dgx * (e[h] + w[c] * xh[h]);
      ab[h] += dgx * w[c];
      if (dr_out != nullptr && row < n) dr_out[(t0 + row) * K + c] = -dgx * w[c];
    }
    const float m_dxh = warp_sum(dxh[0] + dxh[1]) / K;
    const float m2 = warp_sum(dxh[0] * xh[0] + dxh[1] * xh[1]) / K + warp_sum(dg[0] * g[0] + dg[1] * g[1]) / K;
#pragma unroll
    for (int h = 0; h < 2; ++h) dZ[row * LDK + lane + 32 * h] = rs * (dxh[h] - m_dxh - xh[h] * m2);
  }
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    atomicAdd(&dlnw[lane + 32 * h], aw[h]);
    atomicAdd(&dlnb[lane + 32 * h], ab[h]);
  }
  __syncthreads();
}

// ------------------------------------------------------------------------------------------- shared layouts
template <int P>
struct Geo {
  static constexpr int FP = F / P;
  static constexpr int LDF = FP + PAD;       // rows of Fp floats
  static constexpr int T_NK = N * LDK;       // [N, K] activation tile
  static constexpr int T_NF = N * LDF;       // [N, Fp]
  static constexpr int T_W1 = K * LDF;       // [K, Fp]
  static constexpr int T_W2 = FP * LDK;      // [Fp, K]
  static constexpr int VEC = 64;             // one vector slot (>= max(K, N, Fp))
  static_assert(FP % 16 == 0 && FP <= VEC, "shard width must be a multiple of 16 and fit a vector slot");
  static_assert(N % P == 0, "mini-batch rows are split over the ranks");
};

template <int P>
struct FwdSmem {
  using G = Geo<P>;
  static constexpr int n_vec = 8;  // b1 b2 lnw lnb eta lw mu rstd
  static constexpr int floats = G::T_W1 + G::T_W2 + 5 * G::T_NK + 3 * G::T_NF + n_vec * G::VEC;
  static constexpr int bytes = floats * 4;
  static_assert(bytes <= SMEM_LIMIT, "forward shared memory over 227 KB");
};

template <int P>
struct BwdSmem {
  using G = Geo<P>;
  static constexpr int n_vec = 20;
  static constexpr int floats = 3 * (G::T_W1 + G::T_W2) + 6 * G::T_NK + 6 * G::T_NF + n_vec * G::VEC;
  static constexpr int bytes = floats * 4;
  static_assert(bytes <= SMEM_LIMIT, "backward shared memory over 227 KB");
};

// Full-state global layout for one (batch x head): W1 [K, F], b1 [F], W2 [F, K], b2 [K]; shard p of it.
// b2 is replicated: rank 0 writes it, every rank reads it -- except in the backward's scratch, which the same
// kernel writes and reads back with no cluster barrier in between: there every rank keeps its own copy
// (b2_ranks = P: b2 buffer [.., n, P, K]), so no CTA reads global memory another CTA of the launch writes.
struct StatePtr {
  float *W1, *b1, *W2, *b2;
  int b2_ranks = 1;
  __device__ StatePtr at(long long idx) const {  // idx-th state of a [.., n, state] buffer
    return {W1 + idx * K * F, b1 + idx * F, W2 + idx * F * K, b2 + idx * K * b2_ranks, b2_ranks};
  }
  __device__ float* b2_of(int rank) const { return b2_ranks > 1 ? b2 + rank * K : b2; }
};

template <int P>
__device__ void state_load(float* W1, float* b1, float* W2, float* b2, StatePtr s, int rank) {
  using G = Geo<P>;
  g2s(W1, G::LDF, s.W1 + rank * G::FP, F, K, G::FP);
  g2s(W2, LDK, s.W2 + (long long)rank * G::FP * K, K, G::FP, K);
  load_vec(b1, s.b1 + rank * G::FP, G::FP, G::FP);
  load_vec(b2, s.b2_of(rank), K, K);
  __syncthreads();
}

template <int P>
__device__ void state_store(StatePtr s, const float* W1, const float* b1, const float* W2, const float* b2,
                            int rank) {
  using G = Geo<P>;
  s2g(s.W1 + rank * G::FP, F, W1, G::LDF, K, G::FP);
  s2g(s.W2 + (long long)rank * G::FP * K, K, W2, LDK, G::FP, K);
  for (int i = threadIdx.x; i < G::FP; i += NT) s.b1[rank * G::FP + i] = b1[i];
  if (rank == 0 || s.b2_ranks > 1)
    for (int i = threadIdx.x; i < K; i += NT) s.b2_of(rank)[i] = b2[i];
  __syncthreads();
}

// One mini-batch's inner step on this CTA's shard, state updated in place (ttt_tp_ref._mb_fwd without the
// read-out). In: X tile, eta/lw vectors. Out: Z1, A (pre-update activations), Pm (G2 W2^T, if keep_pm), T1 =
// lw G1, Z2 and G2 (replicated), mu, rstd. RB is the reduce buffer (free on return).
template <int P, typename Tin>
__device__ void inner_step(cg::cluster_group& cluster, float* W1, float* b1, float* W2, float* b2, const float* X,
                           const Tin* r, long long t0, int n, const float* lw, const float* lnw, const float* lnb,
                           float eps, float* Z1, float* A, float* Pm, float* T1, float* Z2, float* G2, float* RB,
                           float* mu, float* rstd) {
  using G = Geo<P>;
  constexpr int FP = G::FP, LDF = G::LDF;
  mm<false, false>(Z1, LDF, X, LDK, W1, LDF, N, FP, K, 1.f, false);  // Z1 = X W1
  for (int i = threadIdx.x; i < N * FP; i += NT) {
    const int o = (i / FP) * LDF + i % FP;
    const float z = Z1[o] + b1[i % FP];
    Z1[o] = z;
    A[o] = gelu(z);
  }
  __syncthreads();
  mm<false, false>(RB, LDK, A, LDF, W2, LDK, N, K, FP, 1.f, false);  // partial Z2 = A_p W2_p
  allreduce<P>(cluster, Z2, LDK, RB, LDK, K);                        // all-reduce 1
  for (int i = threadIdx.x; i < N * K; i += NT) Z2[(i / K) * LDK + i % K] += b2[i % K];
  __syncthreads();
  lnl2_fwd(G2, mu, rstd, Z2, r, t0, n, lnw, lnb, eps);
  mm<false, true>(Pm, LDF, G2, LDK, W2, LDK, N, FP, K, 1.f, false);  // Pm = G2 W2_p^T
  for (int i = threadIdx.x; i < N * FP; i += NT) {
    const int row = i / FP, o = row * LDF + i % FP;
    T1[o] = lw[row] * Pm[o] * gelu_d1(Z1[o]);  // lw G1
  }
  for (int i = threadIdx.x; i < N * K; i += NT) RB[(i / K) * LDK + i % K] = lw[i / K] * G2[(i / K) * LDK + i % K];
  __syncthreads();
  colsum(b1, T1, LDF, FP, -1.f, 1.f);
  colsum(b2, RB, LDK, K, -1.f, 1.f);
  mm<true, false>(W1, LDF, X, LDK, T1, LDF, K, FP, N, -1.f, true);  // W1 -= X^T (lw G1)
  mm<true, false>(W2, LDK, A, LDF, RB, LDK, FP, K, N, -1.f, true);  // W2 -= A^T (lw G2)
}

__device__ void load_eta(float* eta, float* lw, const float* src, int n) {
  for (int i = threadIdx.x; i < N; i += NT) {
    const float e = i < n ? src[i] : 0.f;
    eta[i] = e;
    lw[i] = e / n;
  }
  __syncthreads();
}

// ------------------------------------------------------------------------------------------------- forward
template <int P, typename Tin>
__global__ void __cluster_dims__(P, 1, 1) __launch_bounds__(NT, 1)
    ttt_tp_fwd_kernel(const Tin* __restrict__ q, const Tin* __restrict__ k, const Tin* __restrict__ r,
                      const float* __restrict__ eta_g, const float* __restrict__ lnw_g,
                      const float* __restrict__ lnb_g, StatePtr init, float* __restrict__ z, StatePtr fin,
                      StatePtr ck, int T, int H, int G, int save, float eps) {
  using Ge = Geo<P>;
  constexpr int FP = Ge::FP, LDF = Ge::LDF;
  cg::cluster_group cluster = cg::this_cluster();
  const int rank = cluster.block_rank();
  const long long bh = blockIdx.x / P;
  const int h = bh % H;
  TTT_TP_SMEM(sm);
  float* p = sm;
  auto take = [&](int nf) { float* t = p; p += nf; return t; };
  float *W1 = take(Ge::T_W1), *W2 = take(Ge::T_W2);
  float *X = take(Ge::T_NK), *Q = take(Ge::T_NK), *RB = take(Ge::T_NK), *Z2 = take(Ge::T_NK), *G2 = take(Ge::T_NK);
  float *Z1 = take(Ge::T_NF), *A = take(Ge::T_NF), *T1 = take(Ge::T_NF);
  float *b1 = take(Ge::VEC), *b2 = take(Ge::VEC), *lnw = take(Ge::VEC), *lnb = take(Ge::VEC);
  float *eta = take(Ge::VEC), *lw = take(Ge::VEC), *mu = take(Ge::VEC), *rstd = take(Ge::VEC);

  const Tin *qb = q + bh * T * K, *kb = k + bh * T * K, *rb = r + bh * T * K;
  float* zb = z + bh * T * K;
  state_load<P>(W1, b1, W2, b2, init.at(bh), rank);
  load_vec(lnw, lnw_g + h * K, K, K);
  load_vec(lnb, lnb_g + h * K, K, K);
  const int n_mb = (T + N - 1) / N, n_grp = (n_mb + G - 1) / G;
  bool final_written = false;
  for (int m = 0; m < n_mb; ++m) {
    const long long t0 = (long long)m * N;
    const int n = min(N, T - (int)t0);
    if (save && m % G == 0) state_store<P>(ck.at(bh * n_grp + m / G), W1, b1, W2, b2, rank);
    if (n < N) {  // ragged tail: the returned state is the one before it
      state_store<P>(fin.at(bh), W1, b1, W2, b2, rank);
      final_written = true;
    }
    load_rows(X, kb, t0, n);
    load_rows(Q, qb, t0, n);
    load_eta(eta, lw, eta_g + bh * T + t0, n);
    // Pm is not needed after the step: T1's slot doubles as it (T1 is written after Pm's last read).
    inner_step<P, Tin>(cluster, W1, b1, W2, b2, X, rb, t0, n, lw, lnw, lnb, eps, Z1, A, T1, T1, Z2, G2, RB, mu,
                       rstd);
    // non-causal read-out with the updated shard: Zq = allreduce(gelu(Q W1' + b1') W2') + b2'
    mm<false, false>(Z1, LDF, Q, LDK, W1, LDF, N, FP, K, 1.f, false);
    for (int i = threadIdx.x; i < N * FP; i += NT) {
      const int o = (i / FP) * LDF + i % FP;
      A[o] = gelu(Z1[o] + b1[i % FP]);
    }
    __syncthreads();
    mm<false, false>(RB, LDK, A, LDF, W2, LDK, N, K, FP, 1.f, false);
    if (rank == 0)  // b2' added once, by rank 0's partial
      for (int i = threadIdx.x; i < N * K; i += NT) RB[(i / K) * LDK + i % K] += b2[i % K];
    __syncthreads();
    reduce_rows_to_global<P>(cluster, zb, t0, n, RB);  // all-reduce 2 (rows split over ranks)
  }
  if (!final_written) state_store<P>(fin.at(bh), W1, b1, W2, b2, rank);
}

// ------------------------------------------------------------------------------------------------ backward
template <int P, typename Tin>
__global__ void __cluster_dims__(P, 1, 1) __launch_bounds__(NT, 1)
    ttt_tp_bwd_kernel(const Tin* __restrict__ q, const Tin* __restrict__ k, const Tin* __restrict__ r,
                      const float* __restrict__ eta_g, const float* __restrict__ lnw_g,
                      const float* __restrict__ lnb_g, const float* __restrict__ dz, StatePtr ck, StatePtr dfin,
                      StatePtr sc, float* __restrict__ dq, float* __restrict__ dk, float* __restrict__ dr,
                      float* __restrict__ deta, float* __restrict__ dlnw_g, float* __restrict__ dlnb_g,
                      StatePtr dst0, int T, int H, int G, float eps) {
  using Ge = Geo<P>;
  constexpr int FP = Ge::FP, LDF = Ge::LDF;
  cg::cluster_group cluster = cg::this_cluster();
  const int rank = cluster.block_rank();
  const long long bh = blockIdx.x / P;
  const int h = bh % H;
  TTT_TP_SMEM(sm);
  float* p = sm;
  auto take = [&](int nf) { float* t = p; p += nf; return t; };
  float *W1 = take(Ge::T_W1), *W1n = take(Ge::T_W1), *dW1 = take(Ge::T_W1);
  float *W2 = take(Ge::T_W2), *W2n = take(Ge::T_W2), *dW2 = take(Ge::T_W2);
  float *X = take(Ge::T_NK), *Q = take(Ge::T_NK), *DZ = take(Ge::T_NK), *Z2 = take(Ge::T_NK);
  float *G2 = take(Ge::T_NK), *RB = take(Ge::T_NK);
  float *Z1 = take(Ge::T_NF), *A = take(Ge::T_NF), *Pm = take(Ge::T_NF), *Z1q = take(Ge::T_NF);
  float *Aq = take(Ge::T_NF), *T1 = take(Ge::T_NF);
  float *b1 = take(Ge::VEC), *b2 = take(Ge::VEC), *b1n = take(Ge::VEC), *b2n = take(Ge::VEC);
  float *db1 = take(Ge::VEC), *db2 = take(Ge::VEC), *db1n = take(Ge::VEC), *db2n = take(Ge::VEC);
  float *lnw = take(Ge::VEC), *lnb = take(Ge::VEC), *dlnw = take(Ge::VEC), *dlnb = take(Ge::VEC);
  float *eta = take(Ge::VEC), *lw = take(Ge::VEC), *mu = take(Ge::VEC), *rstd = take(Ge::VEC);
  float *dlwp = take(Ge::VEC), *dlw = take(Ge::VEC);

  const Tin *qb = q + bh * T * K, *kb = k + bh * T * K, *rb = r + bh * T * K;
  const float* dzb = dz + bh * T * K;
  state_load<P>(dW1, db1, dW2, db2, dfin.at(bh), rank);  // gradient of the returned state
  load_vec(lnw, lnw_g + h * K, K, K);
  load_vec(lnb, lnb_g + h * K, K, K);
  for (int i = threadIdx.x; i < K; i += NT) dlnw[i] = dlnb[i] = 0.f;
  __syncthreads();
  const int n_mb = (T + N - 1) / N, n_grp = (n_mb + G - 1) / G;
  for (int g = n_grp - 1; g >= 0; --g) {
    const int m0 = g * G, m1 = min(m0 + G, n_mb);
    // recompute the group's states into this CTA's shard of the scratch (only full mini-batches step)
    state_load<P>(W1, b1, W2, b2, ck.at(bh * n_grp + g), rank);
    for (int m = m0; m < m1; ++m) {
      state_store<P>(sc.at(bh * G + (m - m0)), W1, b1, W2, b2, rank);
      if (m == m1 - 1) break;
      const long long t0 = (long long)m * N;
      load_rows(X, kb, t0, N);
      load_eta(eta, lw, eta_g + bh * T + t0, N);
      inner_step<P, Tin>(cluster, W1, b1, W2, b2, X, rb, t0, N, lw, lnw, lnb, eps, Z1, A, Pm, T1, Z2, G2, RB, mu,
                         rstd);
    }
    for (int m = m1 - 1; m >= m0; --m) {
      const long long t0 = (long long)m * N;
      const int n = min(N, T - (int)t0);
      const float upd = n == N ? 1.f : 0.f;
      state_load<P>(W1, b1, W2, b2, sc.at(bh * G + (m - m0)), rank);
      // W1n / W2n start as copies of the state; inner_step updates them in place
      for (int i = threadIdx.x; i < Ge::T_W1; i += NT) W1n[i] = W1[i];
      for (int i = threadIdx.x; i < Ge::T_W2; i += NT) W2n[i] = W2[i];
      for (int i = threadIdx.x; i < Ge::VEC; i += NT) {
        b1n[i] = b1[i];
        b2n[i] = b2[i];
      }
      load_rows(X, kb, t0, n);
      load_rows(Q, qb, t0, n);
      load_rows(DZ, dzb, t0, n);
      load_eta(eta, lw, eta_g + bh * T + t0, n);
      inner_step<P, Tin>(cluster, W1n, b1n, W2n, b2n, X, rb, t0, n, lw, lnw, lnb, eps, Z1, A, Pm, T1, Z2, G2, RB,
                         mu, rstd);
      // read-out recompute: Z1q = Q W1' + b1', Aq = gelu(Z1q); Z1q keeps gelu'(Z1q)
      mm<false, false>(Z1q, LDF, Q, LDK, W1n, LDF, N, FP, K, 1.f, false);
      for (int i = threadIdx.x; i < N * FP; i += NT) {
        const int o = (i / FP) * LDF + i % FP;
        const float v = Z1q[o] + b1n[i % FP];
        Aq[o] = gelu(v);
        Z1q[o] = gelu_d1(v);
      }
      __syncthreads();
      // dz1q = (dZq W2'^T) * gelu'(Z1q): product in RB (free), result in Z1q's slot
      mm<false, true>(RB, LDF, DZ, LDK, W2n, LDK, N, FP, K, 1.f, false);
      for (int i = threadIdx.x; i < N * FP; i += NT) {
        const int o = (i / FP) * LDF + i % FP;
        Z1q[o] *= RB[o];
      }
      // dW2' = Aq^T dZq + upd dW2 (into W2n's slot), db2' = 1^T dZq + upd db2
      for (int i = threadIdx.x; i < Ge::T_W2; i += NT) W2n[i] = upd * dW2[i];
      __syncthreads();
      mm<true, false>(W2n, LDK, Aq, LDF, DZ, LDK, FP, K, N, 1.f, true);
      for (int c = threadIdx.x; c < K; c += NT) db2n[c] = upd * db2[c];
      colsum(db2n, DZ, LDK, K, 1.f, 1.f);
      // dq = allreduce(dz1q W1'^T)
      mm<false, true>(RB, LDK, Z1q, LDF, W1n, LDF, N, K, FP, 1.f, false);
      reduce_rows_to_global<P>(cluster, dq + bh * T * K, t0, n, RB);
      // dW1' = Q^T dz1q + upd dW1 (into W1n's slot), db1'
      for (int i = threadIdx.x; i < Ge::T_W1; i += NT) W1n[i] = upd * dW1[i];
      __syncthreads();
      mm<true, false>(W1n, LDF, Q, LDK, Z1q, LDF, K, FP, N, 1.f, true);
      for (int c = threadIdx.x; c < FP; c += NT) db1n[c] = upd * db1[c];
      colsum(db1n, Z1q, LDF, FP, 1.f, 1.f);
      // the state's gradient so far: dW = dW' + (1 - upd) dnext
      for (int i = threadIdx.x; i < Ge::T_W1; i += NT) dW1[i] = (1.f - upd) * dW1[i] + W1n[i];
      for (int i = threadIdx.x; i < Ge::T_W2; i += NT) dW2[i] = (1.f - upd) * dW2[i] + W2n[i];
      for (int c = threadIdx.x; c < FP; c += NT) db1[c] = (1.f - upd) * db1[c] + db1n[c];
      for (int c = threadIdx.x; c < K; c += NT) db2[c] = (1.f - upd) * db2[c] + db2n[c];
      __syncthreads();
      // update path. dlwG1 = -(X dW1') - db1' (Aq's slot); partial dlwG2 = -(A dW2') (DZ's slot, free now);
      // dA = -(lw G2) dW2'^T (Z1q's slot, free now)
      mm<false, false>(Aq, LDF, X, LDK, W1n, LDF, N, FP, K, -1.f, false);
      mm<false, false>(DZ, LDK, A, LDF, W2n, LDK, N, K, FP, -1.f, false);
      mm<false, true>(Z1q, LDF, G2, LDK, W2n, LDK, N, FP, K, -1.f, false);
      for (int i = threadIdx.x; i < N * FP; i += NT) {
        const int row = i / FP, o = row * LDF + i % FP;
        Z1q[o] *= lw[row];
      }
      // one warp per row: dlw partial, dG1 = lw dlwG1, dP = dG1 gelu'(Z1) (Aq's slot), dZ1 (Pm's slot)
      {
        const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
        for (int row = warp; row < N; row += NWARPS) {
          float s = 0.f;
          for (int c = lane; c < FP; c += 32) {
            const int o = row * LDF + c;
            const float v = Aq[o] - db1n[c], z1 = Z1[o], d1 = gelu_d1(z1), pm = Pm[o];
            s += v * pm * d1;
            const float dg1 = lw[row] * v;
            Aq[o] = dg1 * d1;
            Pm[o] = dg1 * pm * gelu_d2(z1);
          }
          s = warp_sum(s);
          if (lane == 0) dlwp[row] = s;
        }
      }
      __syncthreads();
      // partial of dG2 through Pm: dP W2_p (RB)
      mm<false, false>(RB, LDK, Aq, LDF, W2, LDK, N, K, FP, 1.f, false);
      // all-reduce [dlwG2 | dP W2 | dlw] in one exchange
      cluster.sync();
      {
        float *pd[P], *pr[P], *pl[P];
#pragma unroll
        for (int rr = 0; rr < P; ++rr) {
          pd[rr] = cluster.map_shared_rank(DZ, rr);
          pr[rr] = cluster.map_shared_rank(RB, rr);
          pl[rr] = cluster.map_shared_rank(dlwp, rr);
        }
        // dG2 into Q's slot (Q is free after dW1')
        for (int i = threadIdx.x; i < N * K; i += NT) {
          const int row = i / K, o = row * LDK + i % K;
          float a = 0.f, b = 0.f;
#pragma unroll
          for (int rr = 0; rr < P; ++rr) {
            a += pd[rr][o];
            b += pr[rr][o];
          }
          const float dlwg2 = a - db2n[i % K];
          Q[o] = lw[row] * dlwg2 + b;
        }
        // dlw = allreduce(dlw partial) + rowsum(dlwG2 G2): warp per row
        const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
        for (int row = warp; row < N; row += NWARPS) {
          float s = 0.f;
          for (int c = lane; c < K; c += 32) {
            const int o = row * LDK + c;
            float a = 0.f;
#pragma unroll
            for (int rr = 0; rr < P; ++rr) a += pd[rr][o];
            s += (a - db2n[c]) * G2[o];
          }
          s = warp_sum(s);
          if (lane == 0) {
            float l = 0.f;
#pragma unroll
            for (int rr = 0; rr < P; ++rr) l += pl[rr][row];
            dlw[row] = l + s;
          }
        }
      }
      cluster.sync();
      if (rank == 0)
        for (int i = threadIdx.x; i < n; i += NT) deta[bh * T + t0 + i] = dlw[i] / n;
      // dW2 += dP^T G2
      mm<true, false>(dW2, LDK, Aq, LDF, G2, LDK, FP, K, N, 1.f, true);
      // LN-L2 backward: dG2 (Q's slot) -> dZ2 (DZ's slot), dr (rank 0), dln_w, dln_b
      lnl2_bwd(DZ, Q, G2, Z2, mu, rstd, rb, t0, n, lnw, lnb, dlnw, dlnb, rank == 0 ? dr + bh * T * K : nullptr);
      // dA += dZ2 W2^T; dW2 += A^T dZ2; db2 += 1^T dZ2
      mm<false, true>(Z1q, LDF, DZ, LDK, W2, LDK, N, FP, K, 1.f, true);
      mm<true, false>(dW2, LDK, A, LDF, DZ, LDK, FP, K, N, 1.f, true);
      colsum(db2, DZ, LDK, K, 1.f, 1.f);
      // dZ1 += dA gelu'(Z1)
      for (int i = threadIdx.x; i < N * FP; i += NT) {
        const int o = (i / FP) * LDF + i % FP;
        Pm[o] += Z1q[o] * gelu_d1(Z1[o]);
      }
      __syncthreads();
      // dk = allreduce(-(lw G1) dW1'^T + dZ1 W1^T)
      mm<false, true>(RB, LDK, T1, LDF, W1n, LDF, N, K, FP, -1.f, false);
      mm<false, true>(RB, LDK, Pm, LDF, W1, LDF, N, K, FP, 1.f, true);
      reduce_rows_to_global<P>(cluster, dk + bh * T * K, t0, n, RB);
      // dW1 += X^T dZ1; db1 += 1^T dZ1
      mm<true, false>(dW1, LDF, X, LDK, Pm, LDF, K, FP, N, 1.f, true);
      colsum(db1, Pm, LDF, FP, 1.f, 1.f);
      __syncthreads();
    }
  }
  state_store<P>(dst0.at(bh), dW1, db1, dW2, db2, rank);
  if (rank == 0)
    for (int i = threadIdx.x; i < K; i += NT) {
      dlnw_g[bh * K + i] = dlnw[i];
      dlnb_g[bh * K + i] = dlnb[i];
    }
}

// ------------------------------------------------------------------------------------------------ launchers
#ifndef TTT_TP_HOST_SIM
// The cluster shape is compiled into the kernels (__cluster_dims__, PTX .reqnctapercluster), so the launch
// passes no cluster attribute (a different one would be rejected); grid = BH * P CTAs, one cluster per (b, h).
template <typename KernelT>
cudaError_t launch_cluster(KernelT kernel, int grid, int smem, cudaStream_t stream, void** args) {
  cudaError_t err = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, smem);
  if (err != cudaSuccess) return err;
  cudaLaunchConfig_t cfg = {};
  cfg.gridDim = dim3(grid);
  cfg.blockDim = dim3(NT);
  cfg.dynamicSmemBytes = smem;
  cfg.stream = stream;
  cfg.attrs = nullptr;
  cfg.numAttrs = 0;
  return cudaLaunchKernelExC(&cfg, (const void*)kernel, args);
}

}  // namespace ttt_tp

extern "C" {

// Sizes the host needs (shared memory per CTA, cluster sizes, fixed shape).
int ttt_tp_config(int what) {
  using namespace ttt_tp;
  switch (what) {
    case 0: return P_FWD;
    case 1: return P_BWD;
    case 2: return FwdSmem<P_FWD>::bytes;
    case 3: return BwdSmem<P_BWD>::bytes;
    case 4: return K;
    case 5: return F;
    case 6: return N;
    default: return -1;
  }
}

// in_bf16: q, k, r are bf16 (else fp32). State pointers: [BH, ...] full-state layout (see the design note).
int ttt_tp_fwd(int in_bf16, const void* q, const void* k, const void* r, const float* eta, const float* lnw,
               const float* lnb, const float* W1, const float* b1, const float* W2, const float* b2, float* z,
               float* fW1, float* fb1, float* fW2, float* fb2, float* cW1, float* cb1, float* cW2, float* cb2, int BH,
               int T, int H, int G, int save, float eps, cudaStream_t stream) {
  using namespace ttt_tp;
  StatePtr init{const_cast<float*>(W1), const_cast<float*>(b1), const_cast<float*>(W2), const_cast<float*>(b2)};
  StatePtr fin{fW1, fb1, fW2, fb2}, ck{cW1, cb1, cW2, cb2};
  void* args[] = {(void*)&q, (void*)&k, (void*)&r, (void*)&eta, (void*)&lnw, (void*)&lnb, (void*)&init,
                  (void*)&z, (void*)&fin, (void*)&ck, (void*)&T, (void*)&H, (void*)&G, (void*)&save, (void*)&eps};
  const int smem = FwdSmem<P_FWD>::bytes;
  if (in_bf16)
    return (int)launch_cluster(ttt_tp_fwd_kernel<P_FWD, __nv_bfloat16>, BH * P_FWD, smem, stream, args);
  return (int)launch_cluster(ttt_tp_fwd_kernel<P_FWD, float>, BH * P_FWD, smem, stream, args);
}

int ttt_tp_bwd(int in_bf16, const void* q, const void* k, const void* r, const float* eta, const float* lnw,
               const float* lnb, const float* dz, const float* cW1, const float* cb1, const float* cW2,
               const float* cb2, const float* dW1, const float* db1, const float* dW2, const float* db2, float* sW1,
               float* sb1, float* sW2, float* sb2, float* dq, float* dk, float* dr, float* deta, float* dlnw,
               float* dlnb, float* oW1, float* ob1, float* oW2, float* ob2, int BH, int T, int H, int G, float eps,
               cudaStream_t stream) {
  using namespace ttt_tp;
  StatePtr ck{const_cast<float*>(cW1), const_cast<float*>(cb1), const_cast<float*>(cW2), const_cast<float*>(cb2)};
  StatePtr dfin{const_cast<float*>(dW1), const_cast<float*>(db1), const_cast<float*>(dW2), const_cast<float*>(db2)};
  StatePtr sc{sW1, sb1, sW2, sb2, P_BWD}, out{oW1, ob1, oW2, ob2};  // scratch b2: [BH, G, P_BWD, K]
  void* args[] = {(void*)&q,    (void*)&k,  (void*)&r,  (void*)&eta,  (void*)&lnw,  (void*)&lnb,
                  (void*)&dz,   (void*)&ck, (void*)&dfin, (void*)&sc, (void*)&dq,   (void*)&dk,
                  (void*)&dr,   (void*)&deta, (void*)&dlnw, (void*)&dlnb, (void*)&out, (void*)&T,
                  (void*)&H,    (void*)&G,  (void*)&eps};
  const int smem = BwdSmem<P_BWD>::bytes;
  if (in_bf16)
    return (int)launch_cluster(ttt_tp_bwd_kernel<P_BWD, __nv_bfloat16>, BH * P_BWD, smem, stream, args);
  return (int)launch_cluster(ttt_tp_bwd_kernel<P_BWD, float>, BH * P_BWD, smem, stream, args);
}

const char* ttt_tp_error_string(int err) { return cudaGetErrorString((cudaError_t)err); }

}  // extern "C"

#else  // TTT_TP_HOST_SIM: the same kernels run on CPU threads (fp32 inputs), for offline checks only

}  // namespace ttt_tp

extern "C" {

void ttt_tp_sim_set_tf32(int on) { sim::tf32_rounding = on != 0; }

int ttt_tp_sim_config(int what) {
  using namespace ttt_tp;
  const int v[] = {P_FWD, P_BWD, FwdSmem<P_FWD>::bytes, BwdSmem<P_BWD>::bytes, K, F, N};
  return what >= 0 && what < 7 ? v[what] : -1;
}

int ttt_tp_sim_fwd(const float* q, const float* k, const float* r, const float* eta, const float* lnw,
                   const float* lnb, float* W1, float* b1, float* W2, float* b2, float* z, float* fW1, float* fb1,
                   float* fW2, float* fb2, float* cW1, float* cb1, float* cW2, float* cb2, int BH, int T, int H, int G,
                   int save, float eps) {
  using namespace ttt_tp;
  StatePtr init{W1, b1, W2, b2}, fin{fW1, fb1, fW2, fb2}, ck{cW1, cb1, cW2, cb2};
  sim::launch(BH * P_FWD, P_FWD, NT, FwdSmem<P_FWD>::bytes, [&] {
    ttt_tp_fwd_kernel<P_FWD, float>(q, k, r, eta, lnw, lnb, init, z, fin, ck, T, H, G, save, eps);
  });
  return 0;
}

int ttt_tp_sim_bwd(const float* q, const float* k, const float* r, const float* eta, const float* lnw,
                   const float* lnb, const float* dz, float* cW1, float* cb1, float* cW2, float* cb2, float* dW1,
                   float* db1, float* dW2, float* db2, float* sW1, float* sb1, float* sW2, float* sb2, float* dq,
                   float* dk, float* dr, float* deta, float* dlnw, float* dlnb, float* oW1, float* ob1, float* oW2,
                   float* ob2, int BH, int T, int H, int G, float eps) {
  using namespace ttt_tp;
  StatePtr ck{cW1, cb1, cW2, cb2}, dfin{dW1, db1, dW2, db2}, sc{sW1, sb1, sW2, sb2, P_BWD}, out{oW1, ob1, oW2, ob2};
  sim::launch(BH * P_BWD, P_BWD, NT, BwdSmem<P_BWD>::bytes, [&] {
    ttt_tp_bwd_kernel<P_BWD, float>(q, k, r, eta, lnw, lnb, dz, ck, dfin, sc, dq, dk, dr, deta, dlnw, dlnb, out, T, H,
                                    G, eps);
  });
  return 0;
}

}  // extern "C"
#endif  // TTT_TP_HOST_SIM
