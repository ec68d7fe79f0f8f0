// Decode-path elementwise ops on f32 activations (src/ops/*.rs launch them):
// RMSNorm (plain, fused with the residual add, per head), RoPE, gated MLP
// activations, add / scale / soft-cap, f16 <-> f32, embedding gather and the
// f16 KV-cache write.
//
// Every per-step value (token ids, positions, sequence ids) is read from
// device memory, so a decode step built from these kernels can be captured
// in a CUDA graph. Out-of-range ids / positions are skipped or give zeros,
// never an out-of-bounds access.
//
// f16 values are carried as raw bits (unsigned short). Shared helpers
// (f16 conversions, pdl_trigger / pdl_wait, ld_as_f32 / st_from_f32) come
// from marlin_common.cuh, an in-memory NVRTC header (no search path).

#include "marlin_common.cuh"

__device__ __forceinline__ float mops_warp_sum(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

// Sum over the block (blockDim.x a multiple of 32, <= 1024); every thread
// gets the result. `red` holds 32 floats of shared memory.
__device__ __forceinline__ float mops_block_sum(float v, float* red) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int n_warps = blockDim.x >> 5;
    v = mops_warp_sum(v);
    __syncthreads();  // `red` may still be read by a previous call
    if (lane == 0) red[warp] = v;
    __syncthreads();
    float s = lane < n_warps ? red[lane] : 0.0f;
    return mops_warp_sum(s);
}

// Programmatic dependent launch (src/ops/launch.rs). A kernel launched with
// the PDL attribute calls pdl_trigger() first thing in every block:
// the next kernel's grid may launch as soon as every block of this one has
// (its blocks become resident and run what precedes their own wait, e.g. a
// GEMM's weight prologue, while this kernel runs; its wait still waits for
// this grid's completion). Then pdl_wait(), before any early return and
// before any access to memory another kernel of the step writes (only
// constants and host-copied positions may be read before it): wait until
// the previous kernel in the stream has completed and its writes are
// visible. mops_pdl_enter() does both. No-ops for a plain launch and below
// sm_90.
__device__ __forceinline__ void mops_pdl_enter() {
    pdl_trigger();
    pdl_wait();
}

// Grid-stride loop over n elements.
#define MOPS_FOR(i, n) \
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < (n); \
         i += (long long)gridDim.x * blockDim.x)

// ---------------------------------------------------------------- RMSNorm
// One block per row. out = x * rsqrt(mean(x^2) + eps) * (w + w_offset).
extern "C" __global__ void mops_rms_norm(const float* __restrict__ x,
                                         const float* __restrict__ w,
                                         float* __restrict__ out, int dim, float eps,
                                         float w_offset) {
    __shared__ float red[32];
    const float* xr = x + (long long)blockIdx.x * dim;
    float* orow = out + (long long)blockIdx.x * dim;
    float ss = 0.0f;
    for (int i = threadIdx.x; i < dim; i += blockDim.x) ss += xr[i] * xr[i];
    const float inv = rsqrtf(mops_block_sum(ss, red) / (float)dim + eps);
    for (int i = threadIdx.x; i < dim; i += blockDim.x) orow[i] = xr[i] * inv * (w[i] + w_offset);
}

// resid += delta; out = rms_norm(resid). Each thread reads back only the
// elements it wrote itself, so no barrier is needed between the passes.
extern "C" __global__ void mops_add_rms_norm(float* __restrict__ resid,
                                             const float* __restrict__ delta,
                                             const float* __restrict__ w,
                                             float* __restrict__ out, int dim, float eps,
                                             float w_offset) {
    __shared__ float red[32];
    float* rr = resid + (long long)blockIdx.x * dim;
    const float* dr = delta + (long long)blockIdx.x * dim;
    float* orow = out + (long long)blockIdx.x * dim;
    float ss = 0.0f;
    for (int i = threadIdx.x; i < dim; i += blockDim.x) {
        const float v = rr[i] + dr[i];
        rr[i] = v;
        ss += v * v;
    }
    const float inv = rsqrtf(mops_block_sum(ss, red) / (float)dim + eps);
    for (int i = threadIdx.x; i < dim; i += blockDim.x) orow[i] = rr[i] * inv * (w[i] + w_offset);
}

// QK-norm: one warp per head vector of head_dim values, in place.
extern "C" __global__ void mops_rms_norm_heads(float* __restrict__ x,
                                               const float* __restrict__ w, int n_vectors,
                                               int head_dim, float eps, float w_offset) {
    const int lane = threadIdx.x & 31;
    const long long vec = (long long)blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);
    if (vec >= n_vectors) return;
    float* xr = x + vec * head_dim;
    float ss = 0.0f;
    for (int i = lane; i < head_dim; i += 32) ss += xr[i] * xr[i];
    const float inv = rsqrtf(mops_warp_sum(ss) / (float)head_dim + eps);
    for (int i = lane; i < head_dim; i += 32) xr[i] = xr[i] * inv * (w[i] + w_offset);
}

// ------------------------------------------------------------------- RoPE
// x (rows, n_heads, head_dim); one thread per (row, head, pair). The angle
// is computed in f64 like the CPU Rope (positions up to 10^6 keep full f32
// accuracy), then the rotation in f32.
extern "C" __global__ void mops_rope(float* __restrict__ x, const double* __restrict__ inv_freq,
                                     const int* __restrict__ positions, int rows, int n_heads,
                                     int head_dim, int n_rot, int neox) {
    const int half = n_rot >> 1;
    const long long total = (long long)rows * n_heads * half;
    MOPS_FOR(t, total) {
        const int i = (int)(t % half);
        const long long rh = t / half;  // row * n_heads + head
        const int row = (int)(rh / n_heads);
        double s, c;
        sincos((double)positions[row] * inv_freq[i], &s, &c);
        const float sf = (float)s, cf = (float)c;
        float* head = x + rh * head_dim;
        const int ia = neox ? i : 2 * i;
        const int ib = neox ? i + half : 2 * i + 1;
        const float a = head[ia], b = head[ib];
        head[ia] = a * cf - b * sf;
        head[ib] = a * sf + b * cf;
    }
}

// ------------------------------------------------------- gated activations
extern "C" __global__ void mops_silu_mul(const float* __restrict__ gate,
                                         const float* __restrict__ up, float* __restrict__ out,
                                         long long n) {
    MOPS_FOR(i, n) {
        const float g = gate[i];
        out[i] = g / (1.0f + expf(-g)) * up[i];
    }
}

// GELU, tanh approximation (PyTorch approximate="tanh"). tanh(u) is written
// as 1 - 2/(exp(2u)+1), which saturates correctly at both ends.
extern "C" __global__ void mops_gelu_tanh_mul(const float* __restrict__ gate,
                                              const float* __restrict__ up,
                                              float* __restrict__ out, long long n) {
    MOPS_FOR(i, n) {
        const float g = gate[i];
        const float u = 0.7978845608f * (g + 0.044715f * g * g * g);
        const float th = 1.0f - 2.0f / (expf(2.0f * u) + 1.0f);
        out[i] = 0.5f * g * (1.0f + th) * up[i];
    }
}

extern "C" __global__ void mops_add_inplace(float* __restrict__ x, const float* __restrict__ y,
                                            long long n) {
    MOPS_FOR(i, n) x[i] += y[i];
}

extern "C" __global__ void mops_scale_inplace(float* __restrict__ x, long long n, float s) {
    MOPS_FOR(i, n) x[i] *= s;
}

extern "C" __global__ void mops_softcap_inplace(float* __restrict__ x, long long n, float cap) {
    const float inv_cap = 1.0f / cap;
    MOPS_FOR(i, n) {
        const float u = x[i] * inv_cap;
        x[i] = cap * (1.0f - 2.0f / (expf(2.0f * u) + 1.0f));
    }
}

// ---------------------------------------------------------- conversions
extern "C" __global__ void mops_f32_to_f16(const float* __restrict__ x, u16* __restrict__ out,
                                           long long n) {
    MOPS_FOR(i, n) out[i] = f32_to_f16(x[i]);
}

extern "C" __global__ void mops_f16_to_f32(const u16* __restrict__ x, float* __restrict__ out,
                                           long long n) {
    MOPS_FOR(i, n) out[i] = f16_to_f32(x[i]);
}

// -------------------------------------------------------------- embedding
// out (n, dim) = table[ids] * scale; one block per token. An id >= vocab
// gives a zero row.
extern "C" __global__ void mops_embedding_rows(const float* __restrict__ table,
                                               const u32* __restrict__ ids,
                                               float* __restrict__ out, u32 vocab, int dim,
                                               float scale) {
    const u32 id = ids[blockIdx.x];
    float* orow = out + (long long)blockIdx.x * dim;
    if (id >= vocab) {
        for (int i = threadIdx.x; i < dim; i += blockDim.x) orow[i] = 0.0f;
        return;
    }
    const float* trow = table + (long long)id * dim;
    for (int i = threadIdx.x; i < dim; i += blockDim.x) orow[i] = trow[i] * scale;
}

// --------------------------------------------------------------- KV write
// k, v (rows, n_kv_heads * head_dim) f32 into the f16 cache laid out
// [seq][layer][kv_head][pos][head_dim]. One thread per (row, kv_head, d);
// rows whose sequence or position is out of range are skipped.
extern "C" __global__ void mops_kv_write(u16* __restrict__ k_cache, u16* __restrict__ v_cache,
                                         const float* __restrict__ k,
                                         const float* __restrict__ v,
                                         const int* __restrict__ row_seq,
                                         const int* __restrict__ row_pos, int rows, int layer,
                                         int n_layers, int n_kv_heads, int head_dim,
                                         int n_seqs, int capacity) {
    const long long per_row = (long long)n_kv_heads * head_dim;
    MOPS_FOR(t, rows * per_row) {
        const int row = (int)(t / per_row);
        const int within = (int)(t % per_row);  // kv_head * head_dim + d
        const int seq = row_seq[row], pos = row_pos[row];
        if (seq < 0 || seq >= n_seqs || pos < 0 || pos >= capacity) continue;
        const int kvh = within / head_dim, d = within % head_dim;
        const long long dst =
            ((((long long)seq * n_layers + layer) * n_kv_heads + kvh) * capacity + pos) *
                head_dim +
            d;
        k_cache[dst] = f32_to_f16(k[t]);
        v_cache[dst] = f32_to_f16(v[t]);
    }
}

// ============================================================ fused decode
// The decoder's fused kernels. Activations that a GEMM reads or writes are
// f32 or f16 (`T`: float, or u16 holding f16 bits), chosen per model: f16
// when every projection is INT4 (the GEMM's own input/output type, so no
// conversion kernel runs between the ops and the GEMMs), else f32. The
// residual stream, the queries handed to attention, and all arithmetic
// stay f32. Each kernel has an `_f32` and an `_f16` entry.

// Element access in either type: ld_as_f32 / st_from_f32 (marlin_common.cuh).

// One block per row of `resid` (f32, rows x dim):
//   delta == 0:            out = norm(resid)
//   post_w == 0:           resid += delta;              out = norm(resid)
//   else (Gemma post-norm): resid += norm_post(delta);  out = norm(resid)
// with norm(x) = x * rsqrt(mean(x^2) + eps) * (w + w_offset). One launch
// replaces the residual add, the RMSNorm and the conversion of its output
// to the next GEMM's input type. Each thread reads back only the resid
// elements it wrote itself, so no barrier is needed between the passes.
// Up to MOPS_NORM_PER_THREAD values per thread stay in registers between
// the passes, and every loop is unrolled so that a thread's loads are all
// in flight at once: a decode step normalises one row per block, and the
// kernel's time is its memory latency, not its bandwidth. Longer rows take
// the loop of the fallback branch.
#define MOPS_NORM_PER_THREAD 16
template <typename T>
__device__ __forceinline__ void mops_resid_norm_impl(float* __restrict__ resid,
                                                     const T* __restrict__ delta,
                                                     const float* __restrict__ post_w,
                                                     const float* __restrict__ w,
                                                     T* __restrict__ out, int dim, float eps,
                                                     float w_offset) {
    __shared__ float red[32];
    const long long base = (long long)blockIdx.x * dim;
    float* rr = resid + base;
    T* orow = out + base;
    const T* dr = delta != 0 ? delta + base : 0;
    const int nt = blockDim.x;
    pdl_trigger();
    if (dim <= nt * MOPS_NORM_PER_THREAD) {
        // The norm weights are constants: loaded before the PDL wait, so
        // that their round trip overlaps the previous kernel instead of
        // following the reduction.
        float wv[MOPS_NORM_PER_THREAD], pwv[MOPS_NORM_PER_THREAD];
#pragma unroll
        for (int j = 0; j < MOPS_NORM_PER_THREAD; ++j) {
            const int i = threadIdx.x + j * nt;
            wv[j] = i < dim ? w[i] + w_offset : 0.0f;
            pwv[j] = i < dim && post_w != 0 ? post_w[i] + w_offset : 0.0f;
        }
        pdl_wait();
        float v[MOPS_NORM_PER_THREAD], dv[MOPS_NORM_PER_THREAD];
#pragma unroll
        for (int j = 0; j < MOPS_NORM_PER_THREAD; ++j) {
            const int i = threadIdx.x + j * nt;
            v[j] = 0.0f;
            dv[j] = 0.0f;
            if (i < dim) {
                v[j] = rr[i];
                if (dr != 0) dv[j] = ld_as_f32(dr, i);
            }
        }
        if (dr != 0) {
            if (post_w != 0) {
                float ps = 0.0f;
#pragma unroll
                for (int j = 0; j < MOPS_NORM_PER_THREAD; ++j) ps += dv[j] * dv[j];
                const float post_inv = rsqrtf(mops_block_sum(ps, red) / (float)dim + eps);
#pragma unroll
                for (int j = 0; j < MOPS_NORM_PER_THREAD; ++j) dv[j] *= post_inv * pwv[j];
            }
#pragma unroll
            for (int j = 0; j < MOPS_NORM_PER_THREAD; ++j) {
                const int i = threadIdx.x + j * nt;
                v[j] += dv[j];
                if (i < dim) rr[i] = v[j];
            }
        }
        float ss = 0.0f;
#pragma unroll
        for (int j = 0; j < MOPS_NORM_PER_THREAD; ++j) ss += v[j] * v[j];
        const float inv = rsqrtf(mops_block_sum(ss, red) / (float)dim + eps);
#pragma unroll
        for (int j = 0; j < MOPS_NORM_PER_THREAD; ++j) {
            const int i = threadIdx.x + j * nt;
            if (i < dim) st_from_f32(orow, i, v[j] * inv * wv[j]);
        }
        return;
    }
    // Rows longer than the registers hold: two passes over global memory.
    pdl_wait();
    float ss = 0.0f;
    if (dr != 0) {
        float post_inv = 1.0f;
        if (post_w != 0) {
            float ps = 0.0f;
            for (int i = threadIdx.x; i < dim; i += nt) {
                const float d = ld_as_f32(dr, i);
                ps += d * d;
            }
            post_inv = rsqrtf(mops_block_sum(ps, red) / (float)dim + eps);
        }
        for (int i = threadIdx.x; i < dim; i += nt) {
            float d = ld_as_f32(dr, i);
            if (post_w != 0) d *= post_inv * (post_w[i] + w_offset);
            const float v = rr[i] + d;
            rr[i] = v;
            ss += v * v;
        }
    } else {
        for (int i = threadIdx.x; i < dim; i += nt) ss += rr[i] * rr[i];
    }
    const float inv = rsqrtf(mops_block_sum(ss, red) / (float)dim + eps);
    for (int i = threadIdx.x; i < dim; i += nt) st_from_f32(orow, i, rr[i] * inv * (w[i] + w_offset));
}

// Vector form of mops_resid_norm_impl (MARLIN_CUDA_NORM_VEC=1 or
// ops::NormForm::Vector; docs/CUDA.md change 44), same arithmetic per
// element: rows with dim % 4 == 0 and dim <= 4 * MOPS_NORM_VEC_CHUNKS *
// 1024, every buffer 16-byte aligned (the host checks both). Why another
// form: the scalar kernel holds 16 values of each of four arrays per
// thread and compiles to 128 registers at 512 threads for a 4096-wide row,
// i.e. the whole register file of an SM, so its block can only start on an
// SM the previous GEMM has left entirely, and while it runs no block of
// the next GEMM fits beside it. Here a thread holds MOPS_NORM_VEC_CHUNKS
// chunks of 4 consecutive values (16-byte f32 / 8-byte f16 accesses: 4
// load instructions per thread after the PDL wait instead of 16),
// __launch_bounds__(1024) caps it at 64 registers, and each block sum
// takes one barrier (a shared slot per warp, added in warp order by every
// thread: the same sum bit for bit in all of them).
#define MOPS_NORM_VEC_CHUNKS 2
__device__ __forceinline__ float4 mops_ld4(const float* p, int c) {
    return reinterpret_cast<const float4*>(p)[c];
}
__device__ __forceinline__ float4 mops_ld4(const u16* p, int c) {
    const uint2 h = reinterpret_cast<const uint2*>(p)[c];
    return make_float4(f16_to_f32((u16)(h.x & 0xFFFFu)), f16_to_f32((u16)(h.x >> 16)),
                       f16_to_f32((u16)(h.y & 0xFFFFu)), f16_to_f32((u16)(h.y >> 16)));
}
__device__ __forceinline__ void mops_st4(float* p, int c, float4 v) {
    reinterpret_cast<float4*>(p)[c] = v;
}
__device__ __forceinline__ void mops_st4(u16* p, int c, float4 v) {
    uint2 h;
    h.x = (u32)f32_to_f16(v.x) | ((u32)f32_to_f16(v.y) << 16);
    h.y = (u32)f32_to_f16(v.z) | ((u32)f32_to_f16(v.w) << 16);
    reinterpret_cast<uint2*>(p)[c] = h;
}
__device__ __forceinline__ float mops_sq4(float4 a) {
    return a.x * a.x + a.y * a.y + a.z * a.z + a.w * a.w;
}

// Sum over the block with one barrier; `red` (32 floats, 16-byte aligned)
// must not be used by another call of the same launch.
__device__ __forceinline__ float mops_block_sum_once(float v, float* red) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int n_warps = blockDim.x >> 5;
    v = mops_warp_sum(v);
    if (lane == 0) red[warp] = v;
    __syncthreads();
    float s = 0.0f;
#pragma unroll
    for (int k = 0; k < 32; k += 4) {
        if (k < n_warps) {
            const float4 r = reinterpret_cast<const float4*>(red)[k >> 2];
            s += r.x;
            if (k + 1 < n_warps) s += r.y;
            if (k + 2 < n_warps) s += r.z;
            if (k + 3 < n_warps) s += r.w;
        }
    }
    return s;
}

template <typename T>
__device__ __forceinline__ void mops_resid_norm_vec_impl(float* __restrict__ resid,
                                                         const T* __restrict__ delta,
                                                         const float* __restrict__ post_w,
                                                         const float* __restrict__ w,
                                                         T* __restrict__ out, int dim, float eps,
                                                         float w_offset) {
    __shared__ __align__(16) float red[2][32];
    const long long base = (long long)blockIdx.x * dim;
    float* rr = resid + base;
    T* orow = out + base;
    const T* dr = delta != 0 ? delta + base : 0;
    const int nt = blockDim.x, n4 = dim >> 2;
    pdl_trigger();
    // The norm weights before the PDL wait (constants), as in the scalar form.
    const float4 zero = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
    float4 wv[MOPS_NORM_VEC_CHUNKS], pwv[MOPS_NORM_VEC_CHUNKS];
#pragma unroll
    for (int c = 0; c < MOPS_NORM_VEC_CHUNKS; ++c) {
        const int i4 = threadIdx.x + c * nt;
        wv[c] = zero;
        pwv[c] = zero;
        if (i4 < n4) {
            const float4 a = mops_ld4(w, i4);
            wv[c] = make_float4(a.x + w_offset, a.y + w_offset, a.z + w_offset, a.w + w_offset);
            if (post_w != 0) {
                const float4 b = mops_ld4(post_w, i4);
                pwv[c] = make_float4(b.x + w_offset, b.y + w_offset, b.z + w_offset, b.w + w_offset);
            }
        }
    }
    pdl_wait();
    float4 v[MOPS_NORM_VEC_CHUNKS], dv[MOPS_NORM_VEC_CHUNKS];
#pragma unroll
    for (int c = 0; c < MOPS_NORM_VEC_CHUNKS; ++c) {
        const int i4 = threadIdx.x + c * nt;
        v[c] = zero;
        dv[c] = zero;
        if (i4 < n4) {
            v[c] = mops_ld4(rr, i4);
            if (dr != 0) dv[c] = mops_ld4(dr, i4);
        }
    }
    if (dr != 0) {
        if (post_w != 0) {
            float ps = 0.0f;
#pragma unroll
            for (int c = 0; c < MOPS_NORM_VEC_CHUNKS; ++c) ps += mops_sq4(dv[c]);
            const float post_inv = rsqrtf(mops_block_sum_once(ps, red[0]) / (float)dim + eps);
#pragma unroll
            for (int c = 0; c < MOPS_NORM_VEC_CHUNKS; ++c) {
                dv[c].x *= post_inv * pwv[c].x;
                dv[c].y *= post_inv * pwv[c].y;
                dv[c].z *= post_inv * pwv[c].z;
                dv[c].w *= post_inv * pwv[c].w;
            }
        }
#pragma unroll
        for (int c = 0; c < MOPS_NORM_VEC_CHUNKS; ++c) {
            const int i4 = threadIdx.x + c * nt;
            v[c].x += dv[c].x;
            v[c].y += dv[c].y;
            v[c].z += dv[c].z;
            v[c].w += dv[c].w;
            if (i4 < n4) mops_st4(rr, i4, v[c]);
        }
    }
    float ss = 0.0f;
#pragma unroll
    for (int c = 0; c < MOPS_NORM_VEC_CHUNKS; ++c) ss += mops_sq4(v[c]);
    const float inv = rsqrtf(mops_block_sum_once(ss, red[1]) / (float)dim + eps);
#pragma unroll
    for (int c = 0; c < MOPS_NORM_VEC_CHUNKS; ++c) {
        const int i4 = threadIdx.x + c * nt;
        if (i4 < n4)
            mops_st4(orow, i4,
                     make_float4(v[c].x * inv * wv[c].x, v[c].y * inv * wv[c].y,
                                 v[c].z * inv * wv[c].z, v[c].w * inv * wv[c].w));
    }
}

// Attention input of one layer, one warp per (row, head) over the n_heads
// query heads then the n_kv_heads key heads: read the head from the
// projection output (q / k / v row strides let one fused q|k|v GEMM output
// be read in place), optional QK-norm, RoPE at row_pos[row] (angle in f64
// like the CPU Rope), then queries -> q_out (f32, rows x n_heads x
// head_dim) and keys + values -> the f16 cache at (row_seq[row],
// row_pos[row]) (rows out of range of the cache are not written), or, when
// k_cache is null, -> k_out / v_out (f32, rows x n_kv_heads x head_dim) for
// another KV store to take. With `tables` (the paged pool: k_cache / v_cache
// are its [layer][block][kv_head][slot][head_dim] arrays, n_seqs its tables
// of table_width blocks, capacity = table_width * block_size) the keys and
// values go through the row's block table (a block id outside the pool is
// not written), as paged_kv_write stores them. Replaces the column split
// copies, the QK-norms, two RoPE launches and the KV write.
#define MOPS_QKV_WARPS 4
#define MOPS_QKV_MAX_HD 256
template <typename T>
__device__ __forceinline__ void mops_qkv_rope_kv_impl(
    const T* __restrict__ q_in, const T* __restrict__ k_in, const T* __restrict__ v_in,
    int q_stride, int kv_stride, float* __restrict__ q_out, const float* __restrict__ q_norm,
    const float* __restrict__ k_norm, float eps, float w_offset,
    const double* __restrict__ inv_freq, int n_rot, int neox, u16* __restrict__ k_cache,
    u16* __restrict__ v_cache, float* __restrict__ k_out, float* __restrict__ v_out,
    const int* __restrict__ row_seq, const int* __restrict__ row_pos, int rows, int n_heads,
    int n_kv_heads, int head_dim, int n_layers, int layer, int n_seqs, int capacity,
    const int* __restrict__ tables, int table_width, int block_size, int n_blocks) {
    __shared__ float buf[MOPS_QKV_WARPS][MOPS_QKV_MAX_HD];
    pdl_trigger();
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int heads = n_heads + n_kv_heads;
    const long long task = (long long)blockIdx.x * MOPS_QKV_WARPS + warp;
    const bool valid = task < (long long)rows * heads;
    const int row = valid ? (int)(task / heads) : 0, h = valid ? (int)(task % heads) : 0;
    // Before the PDL wait, what does not come from the previous kernel:
    // the position (copied by the host before the step) and the rotation
    // of each of this lane's pairs (sincos in f64, like the CPU Rope).
    const int half = n_rot >> 1;
    const int pos = valid ? row_pos[row] : 0;
    float rc[MOPS_QKV_MAX_HD / 64], rs[MOPS_QKV_MAX_HD / 64];
#pragma unroll
    for (int j = 0; j < MOPS_QKV_MAX_HD / 64; ++j) {
        const int i = lane + 32 * j;
        rc[j] = 1.0f;
        rs[j] = 0.0f;
        if (valid && i < half) {
            double sd, cd;
            sincos((double)pos * inv_freq[i], &sd, &cd);
            rc[j] = (float)cd;
            rs[j] = (float)sd;
        }
    }
    pdl_wait();
    if (!valid) return;
    const bool is_q = h < n_heads;
    const int hh = is_q ? h : h - n_heads;
    const T* src = is_q ? q_in + (long long)row * q_stride + (long long)hh * head_dim
                        : k_in + (long long)row * kv_stride + (long long)hh * head_dim;
    float* x = buf[warp];
    // Unrolled (head_dim <= 256: at most 8 values per lane) so that a lane's
    // loads are in flight together.
#pragma unroll
    for (int j = 0; j < MOPS_QKV_MAX_HD / 32; ++j) {
        const int i = lane + 32 * j;
        if (i < head_dim) x[i] = ld_as_f32(src, i);
    }
    // A key head's warp also carries the same kv head's values; their loads
    // fly with the keys'.
    float vv[MOPS_QKV_MAX_HD / 32];
    if (!is_q) {
        const T* vs = v_in + (long long)row * kv_stride + (long long)hh * head_dim;
#pragma unroll
        for (int j = 0; j < MOPS_QKV_MAX_HD / 32; ++j) {
            const int i = lane + 32 * j;
            vv[j] = i < head_dim ? ld_as_f32(vs, i) : 0.0f;
        }
    }
    const float* nw = is_q ? q_norm : k_norm;
    if (nw != 0) {
        float ss = 0.0f;
        for (int i = lane; i < head_dim; i += 32) ss += x[i] * x[i];
        const float inv = rsqrtf(mops_warp_sum(ss) / (float)head_dim + eps);
        for (int i = lane; i < head_dim; i += 32) x[i] = x[i] * inv * (nw[i] + w_offset);
    }
    __syncwarp();
#pragma unroll
    for (int j = 0; j < MOPS_QKV_MAX_HD / 64; ++j) {
        const int i = lane + 32 * j;
        if (i >= half) break;
        const float sf = rs[j], cf = rc[j];
        const int ia = neox ? i : 2 * i;
        const int ib = neox ? i + half : 2 * i + 1;
        const float a = x[ia], b = x[ib];
        x[ia] = a * cf - b * sf;
        x[ib] = a * sf + b * cf;
    }
    __syncwarp();
    if (is_q) {
        float* qo = q_out + ((long long)row * n_heads + hh) * head_dim;
        for (int i = lane; i < head_dim; i += 32) qo[i] = x[i];
        return;
    }
    if (k_cache == 0) {
        const long long o = ((long long)row * n_kv_heads + hh) * head_dim;
#pragma unroll
        for (int j = 0; j < MOPS_QKV_MAX_HD / 32; ++j) {
            const int i = lane + 32 * j;
            if (i < head_dim) {
                k_out[o + i] = x[i];
                v_out[o + i] = vv[j];
            }
        }
        return;
    }
    const int seq = row_seq[row];
    if (seq < 0 || seq >= n_seqs || pos < 0 || pos >= capacity) return;
    long long dst;
    if (tables != 0) {
        const int blk = tables[(long long)seq * table_width + pos / block_size];
        if (blk < 0 || blk >= n_blocks) return;
        dst = ((((long long)layer * n_blocks + blk) * n_kv_heads + hh) * block_size +
               pos % block_size) *
              (long long)head_dim;
    } else {
        dst = ((((long long)seq * n_layers + layer) * n_kv_heads + hh) * capacity + pos) *
              (long long)head_dim;
    }
#pragma unroll
    for (int j = 0; j < MOPS_QKV_MAX_HD / 32; ++j) {
        const int i = lane + 32 * j;
        if (i < head_dim) {
            k_cache[dst + i] = f32_to_f16(x[i]);
            v_cache[dst + i] = f32_to_f16(vv[j]);
        }
    }
}

// out (rows, ffn) = act(gate) * up, gate and up read with a row stride (one
// fused gate|up GEMM output read in place). act: 0 SiLU, 1 GELU (tanh).
template <typename T>
__device__ __forceinline__ void mops_glu_impl(const T* __restrict__ gate,
                                              const T* __restrict__ up, int in_stride,
                                              T* __restrict__ out, int rows, int ffn, int gelu) {
    MOPS_FOR(t, (long long)rows * ffn) {
        const long long row = t / ffn, i = t % ffn;
        const float g = ld_as_f32(gate, row * in_stride + i);
        const float u = ld_as_f32(up, row * in_stride + i);
        float a;
        if (gelu) {
            const float v = 0.7978845608f * (g + 0.044715f * g * g * g);
            const float th = 1.0f - 2.0f / (expf(2.0f * v) + 1.0f);
            a = 0.5f * g * (1.0f + th);
        } else {
            a = g / (1.0f + expf(-g));
        }
        st_from_f32(out, t, a * u);
    }
}

#define MOPS_FUSED_ENTRIES(SUF, T)                                                             \
    extern "C" __global__ void mops_resid_norm_##SUF(float* resid, const T* delta,            \
                                                     const float* post_w, const float* w,     \
                                                     T* out, int dim, float eps,              \
                                                     float w_offset) {                        \
        /* pdl_wait() inside, after the weight loads */                                  \
        mops_resid_norm_impl<T>(resid, delta, post_w, w, out, dim, eps, w_offset);            \
    }                                                                                          \
    extern "C" __global__ void __launch_bounds__(1024)                                         \
        mops_resid_norm_vec_##SUF(float* resid, const T* delta, const float* post_w,          \
                                  const float* w, T* out, int dim, float eps, float w_offset) { \
        /* pdl_wait() inside, after the weight loads */                                  \
        mops_resid_norm_vec_impl<T>(resid, delta, post_w, w, out, dim, eps, w_offset);        \
    }                                                                                          \
    extern "C" __global__ void __launch_bounds__(32 * MOPS_QKV_WARPS) mops_qkv_rope_kv_##SUF( \
        const T* q_in, const T* k_in, const T* v_in, int q_stride, int kv_stride,            \
        float* q_out, const float* q_norm, const float* k_norm, float eps, float w_offset,    \
        const double* inv_freq, int n_rot, int neox, u16* k_cache, u16* v_cache,             \
        float* k_out, float* v_out, const int* row_seq, const int* row_pos, int rows,         \
        int n_heads, int n_kv_heads, int head_dim, int n_layers, int layer, int n_seqs,      \
        int capacity, const int* tables, int table_width, int block_size, int n_blocks) {    \
        /* pdl_wait() inside, after the rotation angles */                               \
        mops_qkv_rope_kv_impl<T>(q_in, k_in, v_in, q_stride, kv_stride, q_out, q_norm,        \
                                 k_norm, eps, w_offset, inv_freq, n_rot, neox, k_cache,       \
                                 v_cache, k_out, v_out, row_seq, row_pos, rows, n_heads,      \
                                 n_kv_heads, head_dim, n_layers, layer, n_seqs, capacity,     \
                                 tables, table_width, block_size, n_blocks);                  \
    }                                                                                          \
    extern "C" __global__ void mops_glu_##SUF(const T* gate, const T* up, int in_stride,      \
                                              T* out, int rows, int ffn, int gelu) {          \
        mops_pdl_enter();                                                                      \
        mops_glu_impl<T>(gate, up, in_stride, out, rows, ffn, gelu);                          \
    }

MOPS_FUSED_ENTRIES(f32, float)
MOPS_FUSED_ENTRIES(f16, u16)

// f16 logits (an INT4 LM head's output) -> f32, soft-capped when cap > 0.
extern "C" __global__ void mops_logits_from_f16(const u16* __restrict__ x,
                                                float* __restrict__ out, long long n, float cap) {
    mops_pdl_enter();
    const float inv_cap = cap > 0.0f ? 1.0f / cap : 0.0f;
    MOPS_FOR(i, n) {
        float v = f16_to_f32(x[i]);
        if (cap > 0.0f) v = cap * (1.0f - 2.0f / (expf(2.0f * v * inv_cap) + 1.0f));
        out[i] = v;
    }
}

// Busy-waits `ns` nanoseconds of the GPU's global timer (one thread). The
// per-stage timing of `marlin bench decode --breakdown` enqueues it ahead
// of each layer, so that the host has queued the layer's kernels before
// the GPU reaches them: the events then time the kernels back to back, as
// a CUDA graph runs them, not the host's launch rate.
extern "C" __global__ void mops_spin(unsigned long long ns) {
    unsigned long long t0, t;
    asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t0));
    do {
        asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));
    } while (t - t0 < ns);
}
