// Attention of f32 queries against the f16 KV cache (src/ops/attention.rs).
//
// Cache layout [seq][layer][kv_head][pos][head_dim] (f16 bits). Row r of the
// queries (rows, n_heads, head_dim) belongs to sequence row_seq[r] at
// position row_pos[r] and attends keys j with max(0, pos - window + 1) <= j
// <= pos. Query head h reads kv head h / group (GQA). Rows with a sequence
// or position out of range get zeros.
//
// Scores are kept in the log2 domain: the host folds log2(e) into the query
// scale (or into the soft-cap), and every exponential is exp2.
//
// - attn_decode_*: flash-decoding. One block per (split, kv head x head
//   chunk, row): the block's warps split its keys into sub-groups of
//   HD/8 lanes (16 bytes of f16 per lane per key), every key's K and V row is
//   read once for all the query heads of the chunk, each sub-group keeps an
//   online softmax, the block merges them in shared memory and writes either
//   the normalised output (one split) or an unnormalised partial
//   (max, sum, output) that attn_combine merges.
// - attn_prefill_*: tiled online softmax for many query rows. One block per
//   (tile of rows x heads of one kv head): K/V tiles of 32 keys are staged in
//   shared memory once and used by all 32 query vectors of the block; lane t
//   of a warp scores key t of the tile. Rows of several sequences in one
//   tile are handled in one pass per distinct sequence.
//
// Self-contained (no #include) so that NVRTC needs no header search path.

typedef unsigned int u32;
typedef unsigned short u16;

#define ATT_NEG_INF (__int_as_float(0xff800000))
#define ATT_LOG2E 1.4426950408889634f

// Programmatic dependent launch (src/ops/launch.rs): first thing in every
// block of the decode and combine kernels, before any early return: wait
// for the previous kernel to complete, then let the next one launch. No-ops
// for a plain launch and below sm_90.
__device__ __forceinline__ void att_pdl_enter() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.wait;" ::: "memory");
    asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
#endif
}

__device__ __forceinline__ float att_h2f(u16 h) {
    float r;
    asm("cvt.f32.f16 %0, %1;" : "=f"(r) : "h"(h));
    return r;
}

// Two f16 in one 32-bit word -> two floats (low half first).
__device__ __forceinline__ void att_h2x2(u32 w, float& a, float& b) {
    a = att_h2f((u16)(w & 0xffffu));
    b = att_h2f((u16)(w >> 16));
}

// Outputs go to the next GEMM's input type: f32, or f16 bits (`_h` entries).
__device__ __forceinline__ void att_st(float* p, long long i, float v) { p[i] = v; }
__device__ __forceinline__ void att_st(u16* p, long long i, float v) {
    u16 r;
    asm("cvt.rn.f16.f32 %0, %1;" : "=h"(r) : "f"(v));
    p[i] = r;
}

__device__ __forceinline__ uint4 att_ld16(const u16* p) {
    return *reinterpret_cast<const uint4*>(p);
}

// Soft-capped score in the log2 domain. Without a cap (softcap <= 0) the
// query already carries scale * log2(e).
__device__ __forceinline__ float att_cap(float s, float softcap) {
    if (softcap > 0.0f) {
        const float u = s / softcap;
        s = softcap * (1.0f - 2.0f / (__expf(2.0f * u) + 1.0f)) * ATT_LOG2E;
    }
    return s;
}

// The key range [lo, hi) of one query row; empty when the row is invalid.
__device__ __forceinline__ void att_range(int seq, int pos, int n_seqs, int capacity, int window,
                                          int& lo, int& hi) {
    if (seq < 0 || seq >= n_seqs || pos < 0 || pos >= capacity) {
        lo = 0;
        hi = 0;
        return;
    }
    hi = pos + 1;
    lo = window > 0 ? max(0, pos - window + 1) : 0;
}

__device__ __forceinline__ long long att_head_base(int seq, int layer, int n_layers, int kvh,
                                                   int n_kv_heads, int capacity, int hd) {
    return (((long long)seq * n_layers + layer) * n_kv_heads + kvh) * (long long)capacity * hd;
}

// ------------------------------------------------------------------ decode
template <int HD, int GT, typename OutT>
__device__ __forceinline__ void attn_decode_impl(
    const float* __restrict__ q, const u16* __restrict__ k_cache, const u16* __restrict__ v_cache,
    const int* __restrict__ row_seq, const int* __restrict__ row_pos, OutT* __restrict__ out,
    float* __restrict__ partials, int n_heads, int n_kv_heads, int group, int n_layers, int layer,
    int n_seqs, int capacity, float q_scale, float softcap, int window, int splits) {
    constexpr int LPK = HD / 8;        // lanes per key (16 bytes each)
    constexpr int KPW = 32 / LPK;      // keys per warp step
    constexpr int NSUB = 4 * KPW;      // key sub-groups per block (4 warps)
    __shared__ float sm_o[NSUB][GT][HD];
    __shared__ float sm_m[NSUB][GT];
    __shared__ float sm_l[NSUB][GT];

    const int split = blockIdx.x;
    const int head_chunks = (group + GT - 1) / GT;
    const int kvh = blockIdx.y / head_chunks;
    const int chunk = blockIdx.y % head_chunks;
    const int row = blockIdx.z;
    const int h0 = kvh * group + chunk * GT;
    const int gh = min(GT, group - chunk * GT);
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int sub = warp * KPW + lane / LPK;
    const int sl = lane % LPK;
    const u32 sub_mask = LPK == 32 ? 0xffffffffu : (((1u << LPK) - 1u) << ((lane / LPK) * LPK));

    int lo, hi;
    const int seq = row_seq[row];
    att_range(seq, row_pos[row], n_seqs, capacity, window, lo, hi);
    const int len = hi - lo;
    const int per_split = (((len + splits - 1) / splits) + 15) & ~15;
    const int k0 = lo + split * per_split;
    const int k1 = min(hi, k0 + per_split);

    float qr[GT][8];
#pragma unroll
    for (int h = 0; h < GT; ++h) {
        const float* qp = q + ((long long)row * n_heads + h0 + h) * HD + sl * 8;
#pragma unroll
        for (int e = 0; e < 8; ++e) qr[h][e] = h < gh ? qp[e] * q_scale : 0.0f;
    }
    float m[GT], l[GT], o[GT][8];
#pragma unroll
    for (int h = 0; h < GT; ++h) {
        m[h] = ATT_NEG_INF;
        l[h] = 0.0f;
#pragma unroll
        for (int e = 0; e < 8; ++e) o[h][e] = 0.0f;
    }

    if (k0 < k1) {
        const long long base =
            att_head_base(seq, layer, n_layers, kvh, n_kv_heads, capacity, HD) + sl * 8;
        const u16* kp = k_cache + base;
        const u16* vp = v_cache + base;
        int j = k0 + sub;
        uint4 kn = make_uint4(0, 0, 0, 0), vn = kn;
        if (j < k1) {
            kn = att_ld16(kp + (long long)j * HD);
            vn = att_ld16(vp + (long long)j * HD);
        }
        for (; j < k1; j += NSUB) {
            const uint4 kc = kn, vc = vn;
            if (j + NSUB < k1) {  // prefetch the next key of this sub-group
                kn = att_ld16(kp + (long long)(j + NSUB) * HD);
                vn = att_ld16(vp + (long long)(j + NSUB) * HD);
            }
            float kf[8], vf[8];
            att_h2x2(kc.x, kf[0], kf[1]);
            att_h2x2(kc.y, kf[2], kf[3]);
            att_h2x2(kc.z, kf[4], kf[5]);
            att_h2x2(kc.w, kf[6], kf[7]);
            att_h2x2(vc.x, vf[0], vf[1]);
            att_h2x2(vc.y, vf[2], vf[3]);
            att_h2x2(vc.z, vf[4], vf[5]);
            att_h2x2(vc.w, vf[6], vf[7]);
#pragma unroll
            for (int h = 0; h < GT; ++h) {
                float s = 0.0f;
#pragma unroll
                for (int e = 0; e < 8; ++e) s = fmaf(qr[h][e], kf[e], s);
#pragma unroll
                for (int off = LPK / 2; off > 0; off >>= 1)
                    s += __shfl_xor_sync(sub_mask, s, off);
                s = att_cap(s, softcap);
                const float mn = fmaxf(m[h], s);
                const float c = exp2f(m[h] - mn);
                const float p = exp2f(s - mn);
                l[h] = l[h] * c + p;
#pragma unroll
                for (int e = 0; e < 8; ++e) o[h][e] = fmaf(p, vf[e], o[h][e] * c);
                m[h] = mn;
            }
        }
    }

    // Merge the sub-groups of the block.
#pragma unroll
    for (int h = 0; h < GT; ++h) {
#pragma unroll
        for (int e = 0; e < 8; ++e) sm_o[sub][h][sl * 8 + e] = o[h][e];
        if (sl == 0) {
            sm_m[sub][h] = m[h];
            sm_l[sub][h] = l[h];
        }
    }
    __syncthreads();
    for (int idx = threadIdx.x; idx < gh * HD; idx += blockDim.x) {
        const int h = idx / HD, d = idx % HD;
        float mx = ATT_NEG_INF;
        for (int s = 0; s < NSUB; ++s) mx = fmaxf(mx, sm_m[s][h]);
        float lsum = 0.0f, osum = 0.0f;
        if (mx != ATT_NEG_INF) {
            for (int s = 0; s < NSUB; ++s) {
                const float w = exp2f(sm_m[s][h] - mx);
                lsum = fmaf(w, sm_l[s][h], lsum);
                osum = fmaf(w, sm_o[s][h][d], osum);
            }
        }
        const long long qh = (long long)row * n_heads + h0 + h;
        if (splits == 1) {
            att_st(out, qh * HD + d, lsum > 0.0f ? osum / lsum : 0.0f);
        } else {
            float* pp = partials + (qh * splits + split) * (HD + 2);
            if (d == 0) {
                pp[0] = mx;
                pp[1] = lsum;
            }
            pp[2 + d] = osum;
        }
    }
}

// Merge the splits' partials of one (row, head): one block of head_dim x
// ATT_COMBINE_GROUPS threads. The splits' (max, sum) pairs are loaded once
// into shared memory by as many threads in parallel; thread (d, g) sums
// output d over the splits g, g + G, ... (independent loads, several in
// flight), and the G partial sums are added in shared memory. At batch 1
// the combine is pure latency: tens of splits read one after the other
// by one thread cost microseconds.
#define ATT_MAX_SPLITS 64
#define ATT_COMBINE_GROUPS 4
template <typename OutT>
__device__ __forceinline__ void attn_combine_impl(const float* __restrict__ partials,
                                                  OutT* __restrict__ out, int head_dim,
                                                  int splits) {
    __shared__ float s_w[ATT_MAX_SPLITS];
    __shared__ float s_l[ATT_MAX_SPLITS];
    __shared__ float s_o[ATT_COMBINE_GROUPS][256];
    const long long qh = blockIdx.x;
    const float* pp = partials + qh * splits * (long long)(head_dim + 2);
    const int d = threadIdx.x, g = threadIdx.y;
    const int t = threadIdx.y * blockDim.x + threadIdx.x;
    if (t < splits) {
        s_w[t] = pp[t * (head_dim + 2)];
        s_l[t] = pp[t * (head_dim + 2) + 1];
    }
    __syncthreads();
    float mx = ATT_NEG_INF;
    for (int sp = 0; sp < splits; ++sp) mx = fmaxf(mx, s_w[sp]);
    __syncthreads();  // every thread has read the maxima
    if (t < splits) s_w[t] = mx != ATT_NEG_INF ? exp2f(s_w[t] - mx) : 0.0f;
    __syncthreads();
    float osum = 0.0f;
    if (d < head_dim) {
#pragma unroll 4
        for (int sp = g; sp < splits; sp += blockDim.y)
            osum = fmaf(s_w[sp], pp[sp * (head_dim + 2) + 2 + d], osum);
        s_o[g][d] = osum;
    }
    __syncthreads();
    if (g == 0 && d < head_dim) {
        float lsum = 0.0f;
        for (int sp = 0; sp < splits; ++sp) lsum = fmaf(s_w[sp], s_l[sp], lsum);
        float o = 0.0f;
        for (int gg = 0; gg < (int)blockDim.y; ++gg) o += s_o[gg][d];
        att_st(out, qh * head_dim + d, lsum > 0.0f ? o / lsum : 0.0f);
    }
}

extern "C" __global__ void attn_combine(const float* partials, float* out, int head_dim,
                                        int splits) {
    att_pdl_enter();
    attn_combine_impl<float>(partials, out, head_dim, splits);
}

extern "C" __global__ void attn_combine_h(const float* partials, u16* out, int head_dim,
                                          int splits) {
    att_pdl_enter();
    attn_combine_impl<u16>(partials, out, head_dim, splits);
}

#define ATTN_DECODE_ENTRY_T(NAME, HD, GT, OutT)                                                \
    extern "C" __global__ void __launch_bounds__(128)                                          \
        NAME(const float* q, const u16* k_cache, const u16* v_cache, const int* row_seq,       \
             const int* row_pos, OutT* out, float* partials, int n_heads, int n_kv_heads,      \
             int group, int n_layers, int layer, int n_seqs, int capacity, float q_scale,      \
             float softcap, int window, int splits) {                                          \
        att_pdl_enter();                                                                       \
        attn_decode_impl<HD, GT, OutT>(q, k_cache, v_cache, row_seq, row_pos, out, partials,   \
                                       n_heads, n_kv_heads, group, n_layers, layer, n_seqs,    \
                                       capacity, q_scale, softcap, window, splits);            \
    }
#define ATTN_DECODE_ENTRY(HD, GT)                                    \
    ATTN_DECODE_ENTRY_T(attn_decode_hd##HD##_g##GT, HD, GT, float) \
    ATTN_DECODE_ENTRY_T(attn_decode_hd##HD##_g##GT##_h, HD, GT, u16)

ATTN_DECODE_ENTRY(16, 1)
ATTN_DECODE_ENTRY(16, 2)
ATTN_DECODE_ENTRY(16, 4)
ATTN_DECODE_ENTRY(16, 8)
ATTN_DECODE_ENTRY(32, 1)
ATTN_DECODE_ENTRY(32, 2)
ATTN_DECODE_ENTRY(32, 4)
ATTN_DECODE_ENTRY(32, 8)
ATTN_DECODE_ENTRY(64, 1)
ATTN_DECODE_ENTRY(64, 2)
ATTN_DECODE_ENTRY(64, 4)
ATTN_DECODE_ENTRY(64, 8)
ATTN_DECODE_ENTRY(128, 1)
ATTN_DECODE_ENTRY(128, 2)
ATTN_DECODE_ENTRY(128, 4)
ATTN_DECODE_ENTRY(128, 8)
ATTN_DECODE_ENTRY(256, 1)
ATTN_DECODE_ENTRY(256, 2)
ATTN_DECODE_ENTRY(256, 4)
ATTN_DECODE_ENTRY(256, 8)

// ----------------------------------------------------------------- prefill
constexpr int ATT_KT = 32;  // keys per shared-memory tile
constexpr int ATT_QV = 32;  // query vectors per block
constexpr int ATT_VPW = ATT_QV / 4;  // query vectors per warp

// Dynamic shared memory: q (ATT_QV, HD) f32, K tile (ATT_KT, HD + 2) f16
// (odd word stride: lane t reading key t hits distinct banks), V tile
// (ATT_KT, HD) f16, probabilities (4 warps, ATT_KT) f32.
template <int HD, typename OutT>
__device__ __forceinline__ void attn_prefill_impl(
    const float* __restrict__ q, const u16* __restrict__ k_cache, const u16* __restrict__ v_cache,
    const int* __restrict__ row_seq, const int* __restrict__ row_pos, OutT* __restrict__ out,
    int rows, int n_heads, int n_kv_heads, int group, int heads_per_block, int rows_per_block,
    int n_layers, int layer, int n_seqs, int capacity, float q_scale, float softcap,
    int window) {
    constexpr int E = HD / 32;  // output dims per lane
    constexpr int KS = HD + 2;  // K tile row stride (halves)
    extern __shared__ float att_smem[];
    float* sq = att_smem;                                       // (ATT_QV, HD)
    u16* sk = reinterpret_cast<u16*>(sq + ATT_QV * HD);         // (ATT_KT, KS)
    u16* sv = sk + ATT_KT * KS;                                 // (ATT_KT, HD)
    float* sp = reinterpret_cast<float*>(sv + ATT_KT * HD);     // (4, ATT_KT)
    __shared__ int s_seq[ATT_QV], s_lo[ATT_QV], s_hi[ATT_QV];

    const int head_chunks = (group + heads_per_block - 1) / heads_per_block;
    const int kvh = blockIdx.y / head_chunks;
    const int chunk = blockIdx.y % head_chunks;
    const int h0 = kvh * group + chunk * heads_per_block;
    const int gh = min(heads_per_block, group - chunk * heads_per_block);
    const int r0 = blockIdx.x * rows_per_block;
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;

    if (threadIdx.x < rows_per_block) {
        const int r = r0 + threadIdx.x;
        int lo = 0, hi = 0, seq = -1;
        if (r < rows) {
            seq = row_seq[r];
            att_range(seq, row_pos[r], n_seqs, capacity, window, lo, hi);
            if (hi == 0) seq = -1;
        }
        s_seq[threadIdx.x] = seq;
        s_lo[threadIdx.x] = lo;
        s_hi[threadIdx.x] = hi;
    }
    for (int idx = threadIdx.x; idx < ATT_QV * HD; idx += blockDim.x) {
        const int v = idx / HD, d = idx % HD;
        const int rl = v / heads_per_block, hh = v % heads_per_block;
        const int r = r0 + rl;
        float val = 0.0f;
        if (rl < rows_per_block && r < rows && hh < gh)
            val = q[((long long)r * n_heads + h0 + hh) * HD + d] * q_scale;
        sq[idx] = val;
    }
    __syncthreads();

    float m[ATT_VPW], l[ATT_VPW], o[ATT_VPW][E];
#pragma unroll
    for (int i = 0; i < ATT_VPW; ++i) {
        m[i] = ATT_NEG_INF;
        l[i] = 0.0f;
#pragma unroll
        for (int e = 0; e < E; ++e) o[i][e] = 0.0f;
    }

    for (int leader = 0; leader < rows_per_block; ++leader) {
        const int seq = s_seq[leader];
        if (seq < 0) continue;
        bool seen = false;
        int klo = s_lo[leader], khi = s_hi[leader];
        for (int r = 0; r < rows_per_block; ++r) {
            if (s_seq[r] != seq) continue;
            if (r < leader) seen = true;
            klo = min(klo, s_lo[r]);
            khi = max(khi, s_hi[r]);
        }
        if (seen) continue;  // this sequence's rows were done in an earlier pass
        const long long base = att_head_base(seq, layer, n_layers, kvh, n_kv_heads, capacity, HD);
        for (int t0 = klo; t0 < khi; t0 += ATT_KT) {
            __syncthreads();  // previous tile fully used
            for (int idx = threadIdx.x; idx < ATT_KT * (HD / 8); idx += blockDim.x) {
                const int t = idx / (HD / 8), c = idx % (HD / 8);
                const int key = t0 + t;
                uint4 kw = make_uint4(0, 0, 0, 0), vw = kw;
                if (key < khi) {
                    kw = att_ld16(k_cache + base + (long long)key * HD + c * 8);
                    vw = att_ld16(v_cache + base + (long long)key * HD + c * 8);
                }
                u32* kd = reinterpret_cast<u32*>(sk + t * KS + c * 8);
                kd[0] = kw.x;
                kd[1] = kw.y;
                kd[2] = kw.z;
                kd[3] = kw.w;
                *reinterpret_cast<uint4*>(sv + t * HD + c * 8) = vw;
            }
            __syncthreads();
#pragma unroll
            for (int i = 0; i < ATT_VPW; ++i) {
                const int v = warp + 4 * i;
                const int rl = v / heads_per_block;
                if (rl >= rows_per_block || v % heads_per_block >= gh) continue;
                if (s_seq[rl] != seq) continue;
                const int lo = s_lo[rl], hi = s_hi[rl];
                if (t0 >= hi || t0 + ATT_KT <= lo) continue;  // tile outside this row's keys
                const int key = t0 + lane;
                float s = ATT_NEG_INF;
                if (key >= lo && key < hi) {
                    const float2* qv = reinterpret_cast<const float2*>(sq + v * HD);
                    const u32* kr = reinterpret_cast<const u32*>(sk + lane * KS);
                    float acc = 0.0f;
#pragma unroll 8
                    for (int d2 = 0; d2 < HD / 2; ++d2) {
                        float ka, kb;
                        att_h2x2(kr[d2], ka, kb);
                        const float2 qq = qv[d2];
                        acc = fmaf(qq.x, ka, acc);
                        acc = fmaf(qq.y, kb, acc);
                    }
                    s = att_cap(acc, softcap);
                }
                float tmax = s;
#pragma unroll
                for (int off = 16; off > 0; off >>= 1)
                    tmax = fmaxf(tmax, __shfl_xor_sync(0xffffffffu, tmax, off));
                const float mn = fmaxf(m[i], tmax);
                const float c = exp2f(m[i] - mn);
                const float p = exp2f(s - mn);
                float psum = p;
#pragma unroll
                for (int off = 16; off > 0; off >>= 1)
                    psum += __shfl_xor_sync(0xffffffffu, psum, off);
                l[i] = l[i] * c + psum;
                m[i] = mn;
                sp[warp * ATT_KT + lane] = p;
                __syncwarp();
#pragma unroll
                for (int e = 0; e < E; ++e) o[i][e] *= c;
                for (int t = 0; t < ATT_KT; ++t) {
                    const float pt = sp[warp * ATT_KT + t];
                    const u16* vr = sv + t * HD + lane * E;
#pragma unroll
                    for (int e = 0; e < E; ++e) o[i][e] = fmaf(pt, att_h2f(vr[e]), o[i][e]);
                }
                __syncwarp();
            }
        }
    }

#pragma unroll
    for (int i = 0; i < ATT_VPW; ++i) {
        const int v = warp + 4 * i;
        const int rl = v / heads_per_block, hh = v % heads_per_block;
        const int r = r0 + rl;
        if (rl >= rows_per_block || r >= rows || hh >= gh) continue;
        const long long op = ((long long)r * n_heads + h0 + hh) * HD + lane * E;
        const float inv = l[i] > 0.0f ? 1.0f / l[i] : 0.0f;
#pragma unroll
        for (int e = 0; e < E; ++e) att_st(out, op + e, o[i][e] * inv);
    }
}

#define ATTN_PREFILL_ENTRY_T(NAME, HD, OutT)                                                   \
    extern "C" __global__ void __launch_bounds__(128) NAME(                                    \
        const float* q, const u16* k_cache, const u16* v_cache, const int* row_seq,            \
        const int* row_pos, OutT* out, int rows, int n_heads, int n_kv_heads, int group,       \
        int heads_per_block, int rows_per_block, int n_layers, int layer, int n_seqs,          \
        int capacity, float q_scale, float softcap, int window) {                              \
        attn_prefill_impl<HD, OutT>(q, k_cache, v_cache, row_seq, row_pos, out, rows, n_heads, \
                                    n_kv_heads, group, heads_per_block, rows_per_block,        \
                                    n_layers, layer, n_seqs, capacity, q_scale, softcap,       \
                                    window);                                                   \
    }
#define ATTN_PREFILL_ENTRY(HD)                               \
    ATTN_PREFILL_ENTRY_T(attn_prefill_hd##HD, HD, float) \
    ATTN_PREFILL_ENTRY_T(attn_prefill_hd##HD##_h, HD, u16)

ATTN_PREFILL_ENTRY(64)
ATTN_PREFILL_ENTRY(128)
ATTN_PREFILL_ENTRY(256)
