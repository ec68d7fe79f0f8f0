// Mixed-input GEMMs for the non-INT4 formats: C (M, N) f16 = A (M, K) f16 .
// W^T, W (N, K) in FP4 E2M1 (MXFP4 / NVFP4 scales), INT8, FP8 E4M3, INT3 or
// INT2 codes, fp32 accumulation. The structure is that of the INT4 decode kernel
// (kernels/w4a16_gemm.cu, `w4a16_dec_*`): operands swapped (D = W . A^T, the
// dequantised weights of one warp's n16 block are the m16k16 A fragment,
// a lane's activation words the k16n8 B fragment), the block's activations
// for its K range copied once into shared memory, the weights streamed
// through a per-lane cp.async ring, split-K with a deterministic last-block
// reduction. grid = (ceil(M / (8*RH)), n_pad/64, splits), 128 threads.
//
// Packed layout (src/wgemm/pack.rs): for 64-column tile, 64-chunk c, warp
// (n16 block), CW 16-byte vectors and lane: the lane's 32 codes of chunk c
// (columns nb*16 + g and nb*16 + 8 + g, reduction indices
// k = c*64 + 16t + 4j + slot, j = 0..4, slot = 0..4), ordered so that
// "fragment" f = 0..16 (register i = f % 4 of k16 step j = f / 4) holds
// (half = i & 1, slots 2*(i >> 1) and 2*(i >> 1) + 1) in its low and high
// element:
// - FP4 (CW = 1): word j, nibble i = low element, nibble i + 4 = high one.
// - 8-bit (CW = 2): 32-bit word 2j + (i >> 1), bytes 2*(i & 1) (low) and
//   2*(i & 1) + 1 (high).
// - INT2 / INT3 (LW = 2 / 3 u32 per lane, stored as planes: plane v of the
//   warp's chunk is 32 consecutive u32, one per lane, copied with 4-byte
//   cp.async, 128 contiguous bytes per warp instruction). Each f16 half of
//   a word holds codes whose fields lie in the f16 mantissa (bits 0..9), so
//   `(x & mask) | 0x6400` is 1024 + code * 2^(b*q) exactly and one
//   fma.f16x2 by 2^(-b*q) with bias -(1024 * 2^(-b*q) + zero) gives
//   code - zero exactly (the 1024 magic number of the INT4 kernel):
//   INT2: register f = 4j + i in word j >> 1, field q = i of byte j & 1 of
//   each half (bits 8*(j&1) + 2i, high element +16; odd j shifts by 8);
//   INT3: f < 15 in word f / 5, field p = f % 5 at bits 3p (p >= 3 after a
//   shift by 9), f = 15 has code bit b at bit 15 (+16) of word b.
//   Scale (f16) and zero point (bits 16..23) per (K group, column) in `SZ`,
//   the scale applied to fp32 group accumulators like the 8-bit formats.
// Scales: FP4 has an f16x2 (column g, column 8 + g) per lane per chunk
// (groups of 16 or 32 along K: one per lane's 16-run) multiplied in f16;
// every format has fp32 column scales per K group (`S32`, (groups, n_pad))
// applied to fp32 group accumulators when a group ends. The FP4 f16 values
// are E2M1 bits in an f16's sign/exponent/mantissa (= value * 2^-14; the
// host folds 2^14 into the f16 scale and a per-tensor factor into S32).
//
// Shared helpers (hfma2, mma_16816, cp_async_wait, ...) come from
// marlin_common.cuh, an in-memory NVRTC header (no search path).
//
// bf16 activations (module compiled with MARLIN_ACT_BF16, src/act.rs): the
// same f16 dequantisation, then each fragment register converted to bf16
// before the bf16 mma (wx_frag_to_act). Exact for INT8 (|code| <= 128),
// FP8 (4 significant bits), INT3 / INT2 (code - zero, small integers);
// the FP4 fragments, already scaled in f16, are rounded to bf16's 8
// significant bits. Outputs and the dequantizer's dense matrix are stored
// as bf16 (f32_to_act), the dequantizers named wx_*_dequant_bf16.

#include "marlin_common.cuh"

// f16x2 fragment -> activation type (no-op for f16).
__device__ __forceinline__ void wx_frag_to_act(u32 wa[4]) {
#ifdef MARLIN_ACT_BF16
#pragma unroll
    for (int i = 0; i < 4; i++) {
        float lo, hi;
        f16x2_to_f32(wa[i], lo, hi);
        wa[i] = f32x2_to_act2(lo, hi);
    }
#endif
}

__device__ __forceinline__ void wx_cp16_cg(void* dst, const void* src) {
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16;" ::"r"(smem_addr(dst)), "l"(src));
}
__device__ __forceinline__ void wx_cp16_ca(void* dst, const void* src, int src_bytes) {
    asm volatile("cp.async.ca.shared.global [%0], [%1], 16, %2;" ::"r"(smem_addr(dst)), "l"(src), "r"(src_bytes));
}
__device__ __forceinline__ void wx_cp4(void* dst, const void* src) {
    asm volatile("cp.async.ca.shared.global [%0], [%1], 4;" ::"r"(smem_addr(dst)), "l"(src));
}

// Code vectors (16 B) per lane per chunk (FP4 / 8-bit), u32 planes per
// lane per chunk (INT3 / INT2), u32 code words per lane per chunk.
template <int FMT>
struct WxCw {
    static constexpr bool low = FMT == FMT_INT3 || FMT == FMT_INT2;
    static constexpr int value = FMT == FMT_FP4 ? 1 : 2;
    static constexpr int planes = FMT == FMT_INT3 ? 3 : 2;
    static constexpr int words = low ? planes : 4 * value;
};

template <int FMT, int STAGES, bool LOW = WxCw<FMT>::low>
struct WxRing {
    uint4 w[STAGES][WxCw<FMT>::value][32];
    u32 s[STAGES][32];  // FP4 f16x2 scales (unused otherwise)
};
template <int FMT, int STAGES>
struct WxRing<FMT, STAGES, true> {
    u32 w[STAGES][WxCw<FMT>::planes][32];
};

// Dynamic shared memory (keep in sync with `smem_bytes` in
// src/wgemm/gemm.rs): 4 rings, then the activation tile: min(M - m_base,
// 8*RH) rows plus a zero row when fewer than 8*RH, a_stride halves each,
// a_stride = ceil(k_chunks / splits) * 64 + 8.
template <int FMT, int RH, int STAGES>
__device__ __forceinline__ void wx_body(const u16* __restrict__ A, const uint4* __restrict__ W,
                                        const u32* __restrict__ S16, const float* __restrict__ S32,
                                        const u32* __restrict__ SZ, u16* __restrict__ C,
                                        float* __restrict__ partials, u32* __restrict__ tickets, int M, int N,
                                        int K, int n_pad, int k_chunks, int group_chunks, int splits) {
    constexpr bool LOW = WxCw<FMT>::low;
    constexpr int CW = WxCw<FMT>::value;
    constexpr int PL = WxCw<FMT>::planes;
    constexpr int LW = WxCw<FMT>::words;
    extern __shared__ uint4 wx_dyn_smem[];
    const int lane = threadIdx.x & 31;
    const int warp = threadIdx.x >> 5;
    const int g = lane >> 2;
    const int t = lane & 3;
    const int nb = blockIdx.y * 4 + warp;
    const int m_base = blockIdx.x * 8 * RH;
    const int split = blockIdx.z;
    const int c_begin = (int)(((long long)split * k_chunks) / splits);
    const int c_end = (int)(((long long)(split + 1) * k_chunks) / splits);
    const int n_my = c_end - c_begin;
    const int cps = (k_chunks + splits - 1) / splits;
    const int a_stride = cps * 64 + 8;
    WxRing<FMT, STAGES>& ring = reinterpret_cast<WxRing<FMT, STAGES>*>(wx_dyn_smem)[warp];
    u16* a_tile = reinterpret_cast<u16*>(reinterpret_cast<WxRing<FMT, STAGES>*>(wx_dyn_smem) + 4);

    const int rows_here = min(M - m_base, 8 * RH);
    {
        const int k0 = c_begin * 64;
        const int cols = n_my * 64;
        const int vecs = cols >> 3;
        if (rows_here < 8 * RH) {
            for (int v = threadIdx.x; v < vecs; v += 128)
                *reinterpret_cast<uint4*>(a_tile + rows_here * a_stride + 8 * v) = make_uint4(0, 0, 0, 0);
        }
        if ((K & 7) == 0) {
            for (int r = 0; r < rows_here; r++) {
                const u16* src_row = A + (size_t)(m_base + r) * K + k0;
                for (int v = threadIdx.x; v < vecs; v += 128) {
                    const bool in = k0 + 8 * v < K;
                    wx_cp16_ca(a_tile + r * a_stride + 8 * v, in ? (const void*)(src_row + 8 * v) : (const void*)A,
                               in ? 16 : 0);
                }
            }
        } else {
            for (int r = 0; r < rows_here; r++) {
                const u16* src_row = A + (size_t)(m_base + r) * K;
                for (int c = threadIdx.x; c < cols; c += 128)
                    a_tile[r * a_stride + c] = k0 + c < K ? src_row[k0 + c] : (u16)0;
            }
        }
        cp_async_commit();
    }

    // Lane's codes of chunk c: FP4 / 8-bit W[((tile*k_chunks + c)*4 + warp)*CW*32 + v*32 + lane]
    // (16-byte vectors); INT3 / INT2 W32[((tile*k_chunks + c)*4 + warp)*PL*32 + v*32 + lane].
    constexpr int CHUNK_STEP = LOW ? 4 * PL * 32 : 4 * CW * 32;  // in vectors / u32
    const size_t lane_base = ((size_t)blockIdx.y * k_chunks * 4 + warp) * (LOW ? PL : CW) * 32 + lane;
    const uint4* wp = W + lane_base + (size_t)c_begin * CHUNK_STEP;
    const u32* wpl = reinterpret_cast<const u32*>(W) + lane_base + (size_t)c_begin * CHUNK_STEP;
    // FP4 scale of chunk c: S16[((tile*k_chunks + c)*4 + warp)*32 + lane].
    const u32* sp = FMT == FMT_FP4 ? S16 + ((size_t)blockIdx.y * k_chunks * 4 + warp) * 32 + lane +
                                         (size_t)c_begin * 128
                                   : nullptr;
#pragma unroll
    for (int st = 0; st < STAGES; st++) {
        if (st < n_my) {
            if constexpr (LOW) {
#pragma unroll
                for (int v = 0; v < PL; v++) wx_cp4(&ring.w[st][v][lane], wpl + v * 32);
                wpl += CHUNK_STEP;
            } else {
#pragma unroll
                for (int v = 0; v < CW; v++) wx_cp16_cg(&ring.w[st][v][lane], wp + v * 32);
                if (FMT == FMT_FP4) wx_cp4(&ring.s[st][lane], sp);
                wp += CHUNK_STEP;
                if (FMT == FMT_FP4) sp += 128;
            }
        }
        cp_async_commit();
    }
    cp_async_wait<STAGES>();
    __syncthreads();

    // Column scales of the current K group (columns nb*16 + g, + 8). 8-bit /
    // FP4: fp32, loaded one group ahead of their use (at the fold). INT3 /
    // INT2: (f16 scale | zero << 16) words; the zero is needed from the
    // group's first chunk, so the next group's words are prefetched.
    int group = c_begin / group_chunks;
    const int groups = (k_chunks + group_chunks - 1) / group_chunks;
    int left_in_group = group_chunks - (c_begin - group * group_chunks);
    const float* s32_col = S32 + (size_t)nb * 16 + g;
    const u32* sz_col = SZ + (size_t)nb * 16 + g;
    float gs0, gs1;
    u32 zb[8];
    u32 next0 = 0u, next1 = 0u;
    if constexpr (LOW) {
        const u32 sz0 = sz_col[(size_t)group * n_pad], sz1 = sz_col[(size_t)group * n_pad + 8];
        gs0 = f16_to_f32((u16)(sz0 & 0xFFFFu));
        gs1 = f16_to_f32((u16)(sz1 & 0xFFFFu));
        wx_zero_bias<FMT>(sz0, sz1, zb);
        if (group + 1 < groups) {
            next0 = sz_col[(size_t)(group + 1) * n_pad];
            next1 = sz_col[(size_t)(group + 1) * n_pad + 8];
        }
    } else {
        gs0 = s32_col[(size_t)group * n_pad];
        gs1 = s32_col[(size_t)group * n_pad + 8];
#pragma unroll
        for (int i = 0; i < 8; i++) zb[i] = 0u;
    }

    float acc[RH][4], acc_g[RH][4], acc_odd[RH][4];
#pragma unroll
    for (int r = 0; r < RH; r++)
#pragma unroll
        for (int i = 0; i < 4; i++) acc[r][i] = acc_g[r][i] = acc_odd[r][i] = 0.0f;
    const u16* a_lane[RH];
#pragma unroll
    for (int r = 0; r < RH; r++) a_lane[r] = a_tile + min(r * 8 + g, rows_here) * a_stride + 16 * t;

    for (int base = 0; base < n_my; base += STAGES) {
#pragma unroll
        for (int s = 0; s < STAGES; s++) {
            const int it = base + s;
            if (it < n_my) {
                cp_async_wait<STAGES - 1>();
                u32 words[LW];
                if constexpr (LOW) {
#pragma unroll
                    for (int v = 0; v < PL; v++) words[v] = ring.w[s][v][lane];
                } else {
#pragma unroll
                    for (int v = 0; v < CW; v++) {
                        const uint4 q = ring.w[s][v][lane];
                        words[4 * v] = q.x;
                        words[4 * v + 1] = q.y;
                        words[4 * v + 2] = q.z;
                        words[4 * v + 3] = q.w;
                    }
                }
                u32 sc = 0u;
                if constexpr (FMT == FMT_FP4) sc = ring.s[s][lane];
                u32 act[RH][8];
#pragma unroll
                for (int r = 0; r < RH; r++) {
                    const u16* ap = a_lane[r] + it * 64;
                    const uint4 v0 = *reinterpret_cast<const uint4*>(ap);
                    const uint4 v1 = *reinterpret_cast<const uint4*>(ap + 8);
                    act[r][0] = v0.x; act[r][1] = v0.y; act[r][2] = v0.z; act[r][3] = v0.w;
                    act[r][4] = v1.x; act[r][5] = v1.y; act[r][6] = v1.z; act[r][7] = v1.w;
                }
#pragma unroll
                for (int j = 0; j < 4; j++) {
                    u32 wa[4];
                    wx_dequant_step<FMT>(words, j, sc, zb, wa);
                    wx_frag_to_act(wa);
#pragma unroll
                    for (int r = 0; r < RH; r++) {
                        const u32 bb[2] = {act[r][2 * j], act[r][2 * j + 1]};
                        if (j & 1)
                            mma_16816(acc_odd[r], wa, bb);
                        else
                            mma_16816(acc_g[r], wa, bb);
                    }
                }
                if (it + STAGES < n_my) {
                    if constexpr (LOW) {
#pragma unroll
                        for (int v = 0; v < PL; v++) wx_cp4(&ring.w[s][v][lane], wpl + v * 32);
                        wpl += CHUNK_STEP;
                    } else {
#pragma unroll
                        for (int v = 0; v < CW; v++) wx_cp16_cg(&ring.w[s][v][lane], wp + v * 32);
                        if (FMT == FMT_FP4) wx_cp4(&ring.s[s][lane], sp);
                        wp += CHUNK_STEP;
                        if (FMT == FMT_FP4) sp += 128;
                    }
                }
                cp_async_commit();
                // End of a K group (or of this split): scale and fold.
                if (--left_in_group == 0 || it == n_my - 1) {
#pragma unroll
                    for (int r = 0; r < RH; r++)
#pragma unroll
                        for (int i = 0; i < 4; i++) {
                            acc[r][i] += (acc_g[r][i] + acc_odd[r][i]) * ((i >> 1) ? gs1 : gs0);
                            acc_g[r][i] = 0.0f;
                            acc_odd[r][i] = 0.0f;
                        }
                    group++;
                    left_in_group = group_chunks;
                    if (it != n_my - 1) {
                        if constexpr (LOW) {
                            gs0 = f16_to_f32((u16)(next0 & 0xFFFFu));
                            gs1 = f16_to_f32((u16)(next1 & 0xFFFFu));
                            wx_zero_bias<FMT>(next0, next1, zb);
                            if (group + 1 < groups) {
                                next0 = sz_col[(size_t)(group + 1) * n_pad];
                                next1 = sz_col[(size_t)(group + 1) * n_pad + 8];
                            }
                        } else {
                            gs0 = s32_col[(size_t)group * n_pad];
                            gs1 = s32_col[(size_t)group * n_pad + 8];
                        }
                    }
                }
            }
        }
    }
    cp_async_wait<0>();
    if (FMT == FMT_FP8) {
#pragma unroll
        for (int r = 0; r < RH; r++)
#pragma unroll
            for (int i = 0; i < 4; i++) acc[r][i] *= WX_FP8_UNIT;
    }

    // Accumulator (r, i): column nb*16 + g + 8*(i>>1), row m_base + r*8 + 2t + (i&1).
    if (splits == 1) {
#pragma unroll
        for (int r = 0; r < RH; r++)
#pragma unroll
            for (int i = 0; i < 4; i++) {
                const int row = m_base + r * 8 + 2 * t + (i & 1);
                const int col = nb * 16 + g + 8 * (i >> 1);
                if (row < M && col < N) C[(size_t)row * N + col] = f32_to_act(acc[r][i]);
            }
        return;
    }
#pragma unroll
    for (int r = 0; r < RH; r++)
#pragma unroll
        for (int i = 0; i < 4; i++) {
            const int row = m_base + r * 8 + 2 * t + (i & 1);
            const int col = nb * 16 + g + 8 * (i >> 1);
            if (row < M) partials[((size_t)split * M + row) * n_pad + col] = acc[r][i];
        }
    // One acq_rel ticket per block (atom_add_acq_rel_gpu, marlin_common.cuh).
    __syncthreads();
    __shared__ u32 is_last;
    const int ticket_idx = blockIdx.y * gridDim.x + blockIdx.x;
    if (threadIdx.x == 0) {
        const u32 prev = atom_add_acq_rel_gpu(&tickets[ticket_idx]);
        is_last = (prev == (u32)(splits - 1)) ? 1u : 0u;
    }
    __syncthreads();
    if (!is_last) return;
#pragma unroll
    for (int r = 0; r < RH; r++)
#pragma unroll
        for (int i = 0; i < 4; i++) {
            const int row = m_base + r * 8 + 2 * t + (i & 1);
            const int col = nb * 16 + g + 8 * (i >> 1);
            if (row < M) {
                const float sum = split_k_sum(partials, row, col, M, n_pad, splits);
                if (col < N) C[(size_t)row * N + col] = f32_to_act(sum);
            }
        }
    if (threadIdx.x == 0) tickets[ticket_idx] = 0u;
}

#define WX_ENTRY(NAME, FMT, RH, STAGES)                                                            \
    extern "C" __global__ void __launch_bounds__(128) NAME(                                         \
        const u16* __restrict__ A, const uint4* __restrict__ W, const u32* __restrict__ S16,        \
        const float* __restrict__ S32, const u32* __restrict__ SZ, u16* __restrict__ C,             \
        float* __restrict__ partials, u32* __restrict__ tickets, int M, int N, int K, int n_pad,    \
        int k_chunks, int group_chunks, int splits) {                                               \
        wx_body<FMT, RH, STAGES>(A, W, S16, S32, SZ, C, partials, tickets, M, N, K, n_pad, k_chunks, \
                                 group_chunks, splits);                                             \
    }

// Keep STAGES in sync with `STAGES` in src/wgemm/gemm.rs.
WX_ENTRY(wx_fp4_m8, FMT_FP4, 1, 8)
WX_ENTRY(wx_fp4_m16, FMT_FP4, 2, 8)
WX_ENTRY(wx_int8_m8, FMT_INT8, 1, 8)
WX_ENTRY(wx_int8_m16, FMT_INT8, 2, 8)
WX_ENTRY(wx_fp8_m8, FMT_FP8, 1, 8)
WX_ENTRY(wx_fp8_m16, FMT_FP8, 2, 8)
WX_ENTRY(wx_int3_m8, FMT_INT3, 1, 8)
WX_ENTRY(wx_int3_m16, FMT_INT3, 2, 8)
WX_ENTRY(wx_int2_m8, FMT_INT2, 1, 8)
WX_ENTRY(wx_int2_m16, FMT_INT2, 2, 8)

// Dequantize to a dense (N, K) matrix of the activation type (the large-M
// path: then a cuBLAS GEMM). One thread per (tile, chunk, warp, lane): its
// 32 values.
template <int FMT>
__device__ __forceinline__ void wx_dequant_body(const uint4* __restrict__ W, const u32* __restrict__ S16,
                                                const float* __restrict__ S32, const u32* __restrict__ SZ,
                                                u16* __restrict__ out, int N, int K, int n_pad, int k_chunks,
                                                int group_chunks) {
    constexpr bool LOW = WxCw<FMT>::low;
    constexpr int CW = WxCw<FMT>::value;
    constexpr int PL = WxCw<FMT>::planes;
    constexpr int LW = WxCw<FMT>::words;
    const long long idx = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    const int nb_count = n_pad >> 4;
    if (idx >= (long long)nb_count * k_chunks * 32) return;
    const int lane = (int)(idx & 31);
    const long long tc = idx >> 7;  // tile * k_chunks + c
    const int c = (int)(tc % k_chunks);
    const int warp = (int)((idx >> 5) & 3);
    const int nb = (int)(tc / k_chunks) * 4 + warp;
    const int g = lane >> 2, t = lane & 3;
    u32 words[LW];
    if constexpr (LOW) {
        const u32* wp = reinterpret_cast<const u32*>(W) + (size_t)(idx >> 5) * PL * 32 + lane;
#pragma unroll
        for (int v = 0; v < PL; v++) words[v] = wp[v * 32];
    } else {
        const uint4* wp = W + (size_t)(idx >> 5) * CW * 32 + lane;
#pragma unroll
        for (int v = 0; v < CW; v++) {
            const uint4 q = wp[v * 32];
            words[4 * v] = q.x;
            words[4 * v + 1] = q.y;
            words[4 * v + 2] = q.z;
            words[4 * v + 3] = q.w;
        }
    }
    const u32 sc = FMT == FMT_FP4 ? S16[idx] : 0u;
    const int group = c / group_chunks;
    float cs[2];
    u32 zb[8];
    if constexpr (LOW) {
        const u32 sz0 = SZ[(size_t)group * n_pad + nb * 16 + g];
        const u32 sz1 = SZ[(size_t)group * n_pad + nb * 16 + 8 + g];
        cs[0] = f16_to_f32((u16)(sz0 & 0xFFFFu));
        cs[1] = f16_to_f32((u16)(sz1 & 0xFFFFu));
        wx_zero_bias<FMT>(sz0, sz1, zb);
    } else {
        const float unit = FMT == FMT_FP8 ? WX_FP8_UNIT : 1.0f;
        cs[0] = S32[(size_t)group * n_pad + nb * 16 + g] * unit;
        cs[1] = S32[(size_t)group * n_pad + nb * 16 + 8 + g] * unit;
#pragma unroll
        for (int i = 0; i < 8; i++) zb[i] = 0u;
    }
    const int k0 = c * 64 + 16 * t;
    // vals[h][2j + q]: f16x2 of column half h at k = k0 + 4j + 2q + {0, 1}
    // (fragment register i = h + 2q), scaled in fp32.
    u32 vals[2][8];
#pragma unroll
    for (int j = 0; j < 4; j++) {
        u32 wa[4];
        wx_dequant_step<FMT>(words, j, sc, zb, wa);
#pragma unroll
        for (int i = 0; i < 4; i++) {
            const int h = i & 1;
            const float lo = f16_to_f32((u16)(wa[i] & 0xFFFFu)) * cs[h];
            const float hi = f16_to_f32((u16)(wa[i] >> 16)) * cs[h];
            vals[h][2 * j + (i >> 1)] = (u32)f32_to_act(lo) | ((u32)f32_to_act(hi) << 16);
        }
    }
#pragma unroll
    for (int h = 0; h < 2; h++) {
        const int n = nb * 16 + 8 * h + g;
        if (n >= N) continue;
        u16* row = out + (size_t)n * K;
        if ((K & 7) == 0 && k0 + 16 <= K) {
            // Two 16-byte stores per row half (rows are 16-byte aligned).
            uint4* dst = reinterpret_cast<uint4*>(row + k0);
            dst[0] = make_uint4(vals[h][0], vals[h][1], vals[h][2], vals[h][3]);
            dst[1] = make_uint4(vals[h][4], vals[h][5], vals[h][6], vals[h][7]);
        } else {
#pragma unroll
            for (int e = 0; e < 16; e++) {
                if (k0 + e < K) row[k0 + e] = (u16)(vals[h][e >> 1] >> (16 * (e & 1)));
            }
        }
    }
}

#define WX_DEQUANT_ENTRY(NAME, FMT)                                                                  \
    extern "C" __global__ void __launch_bounds__(256)                                               \
        NAME(const uint4* __restrict__ W, const u32* __restrict__ S16, const float* __restrict__ S32, \
             const u32* __restrict__ SZ, u16* __restrict__ out, int N, int K, int n_pad, int k_chunks, \
             int group_chunks) {                                                                    \
        wx_dequant_body<FMT>(W, S16, S32, SZ, out, N, K, n_pad, k_chunks, group_chunks);            \
    }

#ifdef MARLIN_ACT_BF16
WX_DEQUANT_ENTRY(wx_fp4_dequant_bf16, FMT_FP4)
WX_DEQUANT_ENTRY(wx_int8_dequant_bf16, FMT_INT8)
WX_DEQUANT_ENTRY(wx_fp8_dequant_bf16, FMT_FP8)
WX_DEQUANT_ENTRY(wx_int3_dequant_bf16, FMT_INT3)
WX_DEQUANT_ENTRY(wx_int2_dequant_bf16, FMT_INT2)
#else
WX_DEQUANT_ENTRY(wx_fp4_dequant_f16, FMT_FP4)
WX_DEQUANT_ENTRY(wx_int8_dequant_f16, FMT_INT8)
WX_DEQUANT_ENTRY(wx_fp8_dequant_f16, FMT_FP8)
WX_DEQUANT_ENTRY(wx_int3_dequant_f16, FMT_INT3)
WX_DEQUANT_ENTRY(wx_int2_dequant_f16, FMT_INT2)
#endif
