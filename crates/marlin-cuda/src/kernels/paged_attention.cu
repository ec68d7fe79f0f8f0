// The paged f16 KV pool of the serving engine (src/ops/paged.rs): its write
// and attention through per-sequence block tables.
//
// Pool layout [layer][block][kv_head][slot][head_dim] (f16 bits): one
// (block, kv head) of a layer is block_size * head_dim contiguous halves.
// Block tables (n_tables, table_width) of block ids: position p of table t
// lives in block tables[t * table_width + p / block_size], slot
// p % block_size. Row r of a forward pass belongs to table row_seq[r] at
// position row_pos[r].
//
// Every index that comes from the device (table, position, block id) is
// checked: a row outside the tables writes nothing and attends nothing
// (zeros), a key in a block id outside the pool is skipped. The host
// validates the tables before uploading them, so these paths only keep a
// bad buffer from becoming an out-of-bounds access.
//
// - paged_kv_write: grid-stride store of (rows, n_kv_heads * head_dim) f32
//   keys and values as f16.
// - paged_attn_hd*_g*: flash-decoding over the block table, for decode rows
//   and prefill rows alike (a prefill row at position p attends its
//   sequence's keys 0..p, those of its own chunk included, which were
//   written before by paged_kv_write of the same layer: causal within the
//   chunk). One block per (split, kv head x head chunk, row); the block's
//   warps split the keys into sub-groups of HD/8 lanes (16 bytes of f16 per
//   lane per key); K and V of each key are read once for every query head of
//   the chunk (GQA); sliding windows clip the key range; scores in the log2
//   domain (the host folds log2(e) into the query scale unless soft-capped).
// - paged_attn_combine: merges the splits' (max, sum, output) partials.
//
// Shared helpers (f16 conversions, ld_cg_f32, pdl_wait, ...) come from
// marlin_common.cuh, an in-memory NVRTC header (no search path).

#include "marlin_common.cuh"

#define PA_NEG_INF (__int_as_float(0xff800000))

__device__ __forceinline__ void pa_unpack8(uint4 w, float* f) {
    f16x2_to_f32(w.x, f[0], f[1]);
    f16x2_to_f32(w.y, f[2], f[3]);
    f16x2_to_f32(w.z, f[4], f[5]);
    f16x2_to_f32(w.w, f[6], f[7]);
}

// Element offset of (layer, block, kv head, slot) in the pool.
__device__ __forceinline__ long long pa_offset(int layer, int blk, int kvh, int slot,
                                               int n_blocks, int n_kv_heads, int block_size,
                                               int hd) {
    return ((((long long)layer * n_blocks + blk) * n_kv_heads + kvh) * block_size + slot) *
           (long long)hd;
}

extern "C" __global__ void paged_kv_write(u16* __restrict__ k_pool, u16* __restrict__ v_pool,
                                          const float* __restrict__ k,
                                          const float* __restrict__ v,
                                          const int* __restrict__ row_seq,
                                          const int* __restrict__ row_pos,
                                          const int* __restrict__ tables, int rows, int layer,
                                          int n_blocks, int n_kv_heads, int head_dim,
                                          int block_size, int n_tables, int table_width) {
    const long long per_row = (long long)n_kv_heads * head_dim;
    const long long total = (long long)rows * per_row;
    const long long positions = (long long)table_width * block_size;
    for (long long t = (long long)blockIdx.x * blockDim.x + threadIdx.x; t < total;
         t += (long long)gridDim.x * blockDim.x) {
        const int row = (int)(t / per_row);
        const int within = (int)(t % per_row);
        const int seq = row_seq[row], pos = row_pos[row];
        if (seq < 0 || seq >= n_tables || pos < 0 || pos >= positions) continue;
        const int blk = tables[(long long)seq * table_width + pos / block_size];
        if (blk < 0 || blk >= n_blocks) continue;
        const int kvh = within / head_dim, d = within % head_dim;
        const long long dst =
            pa_offset(layer, blk, kvh, pos % block_size, n_blocks, n_kv_heads, block_size,
                      head_dim) +
            d;
        k_pool[dst] = f32_to_f16(k[t]);
        v_pool[dst] = f32_to_f16(v[t]);
    }
}

// K and V (16 bytes each, this lane's 8 dims) of key j of one sequence;
// false (and zeros) when j's block id is outside the pool.
template <int HD>
__device__ __forceinline__ bool pa_load_key(const u16* __restrict__ k_pool,
                                            const u16* __restrict__ v_pool,
                                            const int* __restrict__ table, int j, int layer,
                                            int kvh, int sl, int n_blocks, int n_kv_heads,
                                            int block_size, uint4& kw, uint4& vw) {
    const int blk = table[j / block_size];
    if (blk < 0 || blk >= n_blocks) {
        kw = make_uint4(0, 0, 0, 0);
        vw = kw;
        return false;
    }
    const long long off =
        pa_offset(layer, blk, kvh, j % block_size, n_blocks, n_kv_heads, block_size, HD) +
        sl * 8;
    kw = *reinterpret_cast<const uint4*>(k_pool + off);
    vw = *reinterpret_cast<const uint4*>(v_pool + off);
    return true;
}

template <int HD, int GT>
__device__ __forceinline__ void paged_attn_impl(
    const float* __restrict__ q, const u16* __restrict__ k_pool, const u16* __restrict__ v_pool,
    const int* __restrict__ row_seq, const int* __restrict__ row_pos,
    const int* __restrict__ tables, float* __restrict__ out, float* __restrict__ partials,
    int n_heads, int n_kv_heads, int group, int layer, int n_blocks, int block_size,
    int n_tables, int table_width, float q_scale, float softcap, int window, int splits) {
    constexpr int LPK = HD / 8;    // lanes per key (16 bytes each)
    constexpr int KPW = 32 / LPK;  // keys per warp step
    constexpr int NSUB = 4 * KPW;  // key sub-groups per block (4 warps)
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

    // Key range [lo, hi) of this row; empty when the row is outside the tables.
    const int seq = row_seq[row], pos = row_pos[row];
    int lo = 0, hi = 0;
    if (seq >= 0 && seq < n_tables && pos >= 0 && (long long)pos < (long long)table_width * block_size) {
        hi = pos + 1;
        lo = window > 0 ? max(0, pos - window + 1) : 0;
    }
    const int len = hi - lo;
    const int per_split = (((len + splits - 1) / splits) + 15) & ~15;
    const int k0 = lo + split * per_split;
    const int k1 = min(hi, k0 + per_split);
    const int* table = tables + (long long)max(seq, 0) * table_width;

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
        m[h] = PA_NEG_INF;
        l[h] = 0.0f;
#pragma unroll
        for (int e = 0; e < 8; ++e) o[h][e] = 0.0f;
    }

    int j = k0 + sub;
    uint4 kn = make_uint4(0, 0, 0, 0), vn = kn;
    bool ok_n = false;
    if (j < k1)
        ok_n = pa_load_key<HD>(k_pool, v_pool, table, j, layer, kvh, sl, n_blocks, n_kv_heads,
                               block_size, kn, vn);
    for (; j < k1; j += NSUB) {
        const uint4 kc = kn, vc = vn;
        const bool ok = ok_n;
        if (j + NSUB < k1)  // prefetch the next key of this sub-group
            ok_n = pa_load_key<HD>(k_pool, v_pool, table, j + NSUB, layer, kvh, sl, n_blocks,
                                   n_kv_heads, block_size, kn, vn);
        // Every lane of a sub-group has the same key, so the whole sub-group
        // skips a bad block together (the shuffles below stay converged).
        if (!ok) continue;
        float kf[8], vf[8];
        pa_unpack8(kc, kf);
        pa_unpack8(vc, vf);
#pragma unroll
        for (int h = 0; h < GT; ++h) {
            float s = 0.0f;
#pragma unroll
            for (int e = 0; e < 8; ++e) s = fmaf(qr[h][e], kf[e], s);
#pragma unroll
            for (int off = LPK / 2; off > 0; off >>= 1) s += __shfl_xor_sync(sub_mask, s, off);
            s = softcap_log2(s, softcap);
            const float mn = fmaxf(m[h], s);
            const float c = exp2f(m[h] - mn);
            const float p = exp2f(s - mn);
            l[h] = l[h] * c + p;
#pragma unroll
            for (int e = 0; e < 8; ++e) o[h][e] = fmaf(p, vf[e], o[h][e] * c);
            m[h] = mn;
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
        float mx = PA_NEG_INF;
        for (int s = 0; s < NSUB; ++s) mx = fmaxf(mx, sm_m[s][h]);
        float lsum = 0.0f, osum = 0.0f;
        if (mx != PA_NEG_INF) {
            for (int s = 0; s < NSUB; ++s) {
                const float w = exp2f(sm_m[s][h] - mx);
                lsum = fmaf(w, sm_l[s][h], lsum);
                osum = fmaf(w, sm_o[s][h][d], osum);
            }
        }
        const long long qh = (long long)row * n_heads + h0 + h;
        if (splits == 1) {
            out[qh * HD + d] = lsum > 0.0f ? osum / lsum : 0.0f;
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

// Merge the splits' partials of one (row, head): one block per (row, head).
extern "C" __global__ void paged_attn_combine(const float* __restrict__ partials,
                                              float* __restrict__ out, int head_dim, int splits) {
    const long long qh = blockIdx.x;
    const float* pp = partials + qh * splits * (long long)(head_dim + 2);
    for (int d = threadIdx.x; d < head_dim; d += blockDim.x) {
        float mx = PA_NEG_INF;
        for (int s = 0; s < splits; ++s) mx = fmaxf(mx, pp[s * (head_dim + 2)]);
        float lsum = 0.0f, osum = 0.0f;
        if (mx != PA_NEG_INF) {
            for (int s = 0; s < splits; ++s) {
                const float* p = pp + s * (head_dim + 2);
                const float w = exp2f(p[0] - mx);
                lsum = fmaf(w, p[1], lsum);
                osum = fmaf(w, p[2 + d], osum);
            }
        }
        out[qh * head_dim + d] = lsum > 0.0f ? osum / lsum : 0.0f;
    }
}

#define PAGED_ATTN_ENTRY(HD, GT)                                                               \
    extern "C" __global__ void __launch_bounds__(128) paged_attn_hd##HD##_g##GT(               \
        const float* q, const u16* k_pool, const u16* v_pool, const int* row_seq,              \
        const int* row_pos, const int* tables, float* out, float* partials, int n_heads,       \
        int n_kv_heads, int group, int layer, int n_blocks, int block_size, int n_tables,      \
        int table_width, float q_scale, float softcap, int window, int splits) {               \
        paged_attn_impl<HD, GT>(q, k_pool, v_pool, row_seq, row_pos, tables, out, partials,    \
                                n_heads, n_kv_heads, group, layer, n_blocks, block_size,       \
                                n_tables, table_width, q_scale, softcap, window, splits);      \
    }

PAGED_ATTN_ENTRY(16, 1)
PAGED_ATTN_ENTRY(16, 2)
PAGED_ATTN_ENTRY(16, 4)
PAGED_ATTN_ENTRY(16, 8)
PAGED_ATTN_ENTRY(32, 1)
PAGED_ATTN_ENTRY(32, 2)
PAGED_ATTN_ENTRY(32, 4)
PAGED_ATTN_ENTRY(32, 8)
PAGED_ATTN_ENTRY(64, 1)
PAGED_ATTN_ENTRY(64, 2)
PAGED_ATTN_ENTRY(64, 4)
PAGED_ATTN_ENTRY(64, 8)
PAGED_ATTN_ENTRY(128, 1)
PAGED_ATTN_ENTRY(128, 2)
PAGED_ATTN_ENTRY(128, 4)
PAGED_ATTN_ENTRY(128, 8)
PAGED_ATTN_ENTRY(256, 1)
PAGED_ATTN_ENTRY(256, 2)
PAGED_ATTN_ENTRY(256, 4)
PAGED_ATTN_ENTRY(256, 8)
