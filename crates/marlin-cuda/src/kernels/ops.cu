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
// Self-contained (no #include) so that NVRTC needs no header search path.
// f16 values are carried as raw bits (unsigned short).

typedef unsigned int u32;
typedef unsigned short u16;

__device__ __forceinline__ u16 mops_f32_to_f16(float x) {
    u16 r;
    asm("cvt.rn.f16.f32 %0, %1;" : "=h"(r) : "f"(x));
    return r;
}

__device__ __forceinline__ float mops_f16_to_f32(u16 h) {
    float r;
    asm("cvt.f32.f16 %0, %1;" : "=f"(r) : "h"(h));
    return r;
}

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
    MOPS_FOR(i, n) out[i] = mops_f32_to_f16(x[i]);
}

extern "C" __global__ void mops_f16_to_f32(const u16* __restrict__ x, float* __restrict__ out,
                                           long long n) {
    MOPS_FOR(i, n) out[i] = mops_f16_to_f32(x[i]);
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
        k_cache[dst] = mops_f32_to_f16(k[t]);
        v_cache[dst] = mops_f32_to_f16(v[t]);
    }
}
