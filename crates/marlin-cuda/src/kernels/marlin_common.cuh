// Device helpers shared by the kernel files (`#include "marlin_common.cuh"`).
//
// NVRTC gets this file from memory as a named header (src/nvrtc_cache.rs,
// COMMON_HEADER; scripts/check_kernels_nvrtc.py does the same): no include
// search path, and the on-disk kernel cache key hashes it with the source.
// Only helpers whose code is the same in every user live here; a file that
// needs a variant (other cache hint, other operand form) keeps its own under
// its own name. w4a16_gemm.cu does not include it yet and still has its own
// copies under the same names (lop3_and_or, hsub2, ..., mma_16816,
// dequant_word, dequant_word_unscaled): including it there means deleting
// those.
//
// Everything is __forceinline__ (no code of its own in a module); PTX that
// exists only on newer targets is guarded so that every file still compiles
// for sm_80.
//
// Activation type. The GEMM sources are compiled twice (src/act.rs): as is,
// with f16 activations and outputs, and with `MARLIN_ACT_BF16` defined
// (a second module under its own name and cache key), with bf16 ones. The
// `act` helpers below (f32_to_act, act2_fma, ACT2_NEG8, scale2_to_act2,
// MARLIN_ACT_PTX, and dequant_word / dequant_word_unscaled / mma_16816 /
// wgmma_rs, which produce or consume the activation type) are the only
// places that differ; in the f16 build each is the f16 helper it replaces,
// instruction for instruction, so the f16 modules' code does not change.
// Weight scales and zero terms stay f16 in memory for both: the bf16 build
// converts them when it loads them (scale2_to_act2).

#pragma once

typedef unsigned int u32;
typedef unsigned short u16;
typedef unsigned long long u64;

// ------------------------------------------------------------ f16 values
// f16 values are carried as raw bits (u16, or two in a u32, low half first).

__device__ __forceinline__ u16 f32_to_f16(float x) {
    u16 r;
    asm("cvt.rn.f16.f32 %0, %1;" : "=h"(r) : "f"(x));
    return r;
}
__device__ __forceinline__ float f16_to_f32(u16 h) {
    float r;
    asm("cvt.f32.f16 %0, %1;" : "=f"(r) : "h"(h));
    return r;
}
// Two f16 in one 32-bit word -> two floats (low half first).
__device__ __forceinline__ void f16x2_to_f32(u32 w, float& a, float& b) {
    a = f16_to_f32((u16)(w & 0xffffu));
    b = f16_to_f32((u16)(w >> 16));
}
// The low / high f16 of a word as f32, converted in registers.
__device__ __forceinline__ float f16_lo_to_f32(u32 x) {
    float r;
    asm("{ .reg .b16 lo, hi; mov.b32 {lo, hi}, %1; cvt.f32.f16 %0, lo; }" : "=f"(r) : "r"(x));
    return r;
}
__device__ __forceinline__ float f16_hi_to_f32(u32 x) {
    float r;
    asm("{ .reg .b16 lo, hi; mov.b32 {lo, hi}, %1; cvt.f32.f16 %0, hi; }" : "=f"(r) : "r"(x));
    return r;
}
// Activations in either storage type (f32, or f16 bits) as f32: element i
// of p read / written.
__device__ __forceinline__ float ld_as_f32(const float* p, long long i) { return p[i]; }
__device__ __forceinline__ float ld_as_f32(const u16* p, long long i) { return f16_to_f32(p[i]); }
__device__ __forceinline__ void st_from_f32(float* p, long long i, float v) { p[i] = v; }
__device__ __forceinline__ void st_from_f32(u16* p, long long i, float v) { p[i] = f32_to_f16(v); }
// (lo, lo) and (hi, hi) of an f16x2.
__device__ __forceinline__ u32 dup_lo(u32 x) { return (x & 0xFFFFu) | (x << 16); }
__device__ __forceinline__ u32 dup_hi(u32 x) { return (x >> 16) | (x & 0xFFFF0000u); }

// (a & b) | c
__device__ __forceinline__ u32 lop3_and_or(u32 a, u32 b, u32 c) {
    u32 r;
    asm("lop3.b32 %0, %1, %2, %3, 0xEA;" : "=r"(r) : "r"(a), "r"(b), "r"(c));
    return r;
}
__device__ __forceinline__ u32 hsub2(u32 a, u32 b) {
    u32 r;
    asm("sub.rn.f16x2 %0, %1, %2;" : "=r"(r) : "r"(a), "r"(b));
    return r;
}
__device__ __forceinline__ u32 hmul2(u32 a, u32 b) {
    u32 r;
    asm("mul.rn.f16x2 %0, %1, %2;" : "=r"(r) : "r"(a), "r"(b));
    return r;
}
__device__ __forceinline__ u32 hfma2(u32 a, u32 b, u32 c) {
    u32 r;
    asm("fma.rn.f16x2 %0, %1, %2, %3;" : "=r"(r) : "r"(a), "r"(b), "r"(c));
    return r;
}

// ------------------------------------------------------------ activation type
// Values of the activation type are raw bits too: u16, or two in a u32 (low
// half first). MARLIN_ACT_PTX is its PTX type name (mma / wgmma operands).

#ifdef MARLIN_ACT_BF16
#define MARLIN_ACT_PTX "bf16"
__device__ __forceinline__ u16 f32_to_act(float x) {
    u16 r;
    asm("cvt.rn.bf16.f32 %0, %1;" : "=h"(r) : "f"(x));
    return r;
}
// bf16 is the upper half of an f32: exact.
__device__ __forceinline__ float act_to_f32(u16 h) { return __uint_as_float((u32)h << 16); }
// Two floats -> one bf16x2 (lo in the low half).
__device__ __forceinline__ u32 f32x2_to_act2(float lo, float hi) {
    u32 r;
    asm("cvt.rn.bf16x2.f32 %0, %1, %2;" : "=r"(r) : "f"(hi), "f"(lo));
    return r;
}
// a * b + c on bf16x2 (sm_80+). add / sub / mul.bf16x2 need sm_90, so the
// other two operations are fmas too (one rounding each, as the plain op).
__device__ __forceinline__ u32 act2_fma(u32 a, u32 b, u32 c) {
    u32 r;
    asm("fma.rn.bf16x2 %0, %1, %2, %3;" : "=r"(r) : "r"(a), "r"(b), "r"(c));
    return r;
}
// a * b (+ -0.0: keeps the sign of a zero product).
__device__ __forceinline__ u32 act2_mul(u32 a, u32 b) { return act2_fma(a, b, 0x80008000u); }
// a - b = b * (-1) + a.
__device__ __forceinline__ u32 act2_sub(u32 a, u32 b) { return act2_fma(b, 0xBF80BF80u, a); }
#define ACT2_NEG8 0xC100C100u  // (-8, -8)
// An f16x2 weight scale (or -zero*scale) as the activation type: rounded to
// bf16's 8 significant bits (relative error <= 2^-8).
__device__ __forceinline__ u32 scale2_to_act2(u32 s) {
    float lo, hi;
    f16x2_to_f32(s, lo, hi);
    return f32x2_to_act2(lo, hi);
}
#else
#define MARLIN_ACT_PTX "f16"
__device__ __forceinline__ u16 f32_to_act(float x) { return f32_to_f16(x); }
__device__ __forceinline__ float act_to_f32(u16 h) { return f16_to_f32(h); }
__device__ __forceinline__ u32 f32x2_to_act2(float lo, float hi) {
    u32 r;
    asm("cvt.rn.f16x2.f32 %0, %1, %2;" : "=r"(r) : "f"(hi), "f"(lo));
    return r;
}
__device__ __forceinline__ u32 act2_fma(u32 a, u32 b, u32 c) { return hfma2(a, b, c); }
__device__ __forceinline__ u32 act2_mul(u32 a, u32 b) { return hmul2(a, b); }
__device__ __forceinline__ u32 act2_sub(u32 a, u32 b) { return hsub2(a, b); }
#define ACT2_NEG8 0xC800C800u  // (-8, -8)
__device__ __forceinline__ u32 scale2_to_act2(u32 s) { return s; }
#endif

// ------------------------------------------------------------ attention

#define MARLIN_LOG2E 1.4426950408889634f

// Soft-capped attention score in the log2 domain. Without a cap
// (softcap <= 0) the query already carries scale * log2(e).
__device__ __forceinline__ float softcap_log2(float s, float softcap) {
    if (softcap > 0.0f) {
        const float u = s / softcap;
        s = softcap * (1.0f - 2.0f / (__expf(2.0f * u) + 1.0f)) * MARLIN_LOG2E;
    }
    return s;
}

// ------------------------------------------------------------ INT4 codes

// One packed word (src/int4/pack.rs) holds the 8 codes a lane needs for one
// k16 x n16 tile: nibble position p = (slot & 1) * 4 + (slot >> 1) + 2 * half,
// where half selects the n8 sub-tile and slot the fragment element (k 2t,
// 2t+1, 2t+8, 2t+9). Codes are unsigned u (signed codes were offset by 8 at
// repack). Output: b[h][0..2], the two act2 registers of n8 sub-tile h,
// equal to u * scale + neg_zero_scale (scales already in the activation
// type).
//
// f16: one lop3 + the 0x6400 magic per pair (1024 + u, or 1024 + 16u for
// the high nibble of a byte, which x/16 - 64 maps back to u), one
// fma.f16x2 for scale and zero.
// bf16 (7 mantissa bits): the magic 0x4300 is 128 with unit steps, so
// 0x4300 | u is 128 + u exactly for u < 16 -- but only in bits 0-6: the
// high nibble (bits 4-7) would reach the exponent, so it is shifted down
// first (one shift more per pair than f16), and every pair takes
// (x - 128) then the scale fma.
#ifdef MARLIN_ACT_BF16
__device__ __forceinline__ void dequant_word(u32 q, u32 s0, u32 s1, u32 z0, u32 z1, u32 b[2][2]) {
    const u32 MAGIC = 0x43004300u;  // (128, 128)
    const u32 LO = 0x000F000Fu;
    b[0][0] = act2_fma(act2_sub(lop3_and_or(q, LO, MAGIC), MAGIC), s0, z0);
    b[0][1] = act2_fma(act2_sub(lop3_and_or(q >> 4, LO, MAGIC), MAGIC), s0, z0);
    b[1][0] = act2_fma(act2_sub(lop3_and_or(q >> 8, LO, MAGIC), MAGIC), s1, z1);
    b[1][1] = act2_fma(act2_sub(lop3_and_or(q >> 12, LO, MAGIC), MAGIC), s1, z1);
}
#else
__device__ __forceinline__ void dequant_word(u32 q, u32 s0, u32 s1, u32 z0, u32 z1, u32 b[2][2]) {
    const u32 MAGIC = 0x64006400u;      // (1024, 1024)
    const u32 SIXTEENTH = 0x2C002C00u;  // (1/16, 1/16)
    const u32 NEG64 = 0xD400D400u;      // (-64, -64)
    const u32 LO = 0x000F000Fu;
    const u32 HI = 0x00F000F0u;
    u32 x0 = lop3_and_or(q, LO, MAGIC);
    u32 x1 = lop3_and_or(q, HI, MAGIC);
    u32 q8 = q >> 8;
    u32 x2 = lop3_and_or(q8, LO, MAGIC);
    u32 x3 = lop3_and_or(q8, HI, MAGIC);
    b[0][0] = hfma2(hsub2(x0, MAGIC), s0, z0);
    b[0][1] = hfma2(hfma2(x1, SIXTEENTH, NEG64), s0, z0);
    b[1][0] = hfma2(hsub2(x2, MAGIC), s1, z1);
    b[1][1] = hfma2(hfma2(x3, SIXTEENTH, NEG64), s1, z1);
}
#endif

// Unscaled dequant of one code word: the m16k16 A fragment of (u - 8), exact
// in either type (symmetric codes). Nibble positions as in dequant_word:
// (pos 0, pos 4) = fragment register 0, (1, 5) = register 2, (2, 6) =
// register 1, (3, 7) = register 3.
#ifdef MARLIN_ACT_BF16
__device__ __forceinline__ void dequant_word_unscaled(u32 q, u32 wa[4]) {
    const u32 MAGIC = 0x43004300u;  // (128, 128)
    const u32 M136 = 0x43084308u;   // (136, 136) = 128 + 8
    const u32 LO = 0x000F000Fu;
    wa[0] = act2_sub(lop3_and_or(q, LO, MAGIC), M136);
    wa[2] = act2_sub(lop3_and_or(q >> 4, LO, MAGIC), M136);
    wa[1] = act2_sub(lop3_and_or(q >> 8, LO, MAGIC), M136);
    wa[3] = act2_sub(lop3_and_or(q >> 12, LO, MAGIC), M136);
}
#else
__device__ __forceinline__ void dequant_word_unscaled(u32 q, u32 wa[4]) {
    const u32 MAGIC = 0x64006400u;      // (1024, 1024)
    const u32 M1032 = 0x64086408u;      // (1032, 1032) = 1024 + 8
    const u32 SIXTEENTH = 0x2C002C00u;  // (1/16, 1/16)
    const u32 NEG72 = 0xD480D480u;      // (-72, -72) = -(1024/16 + 8)
    const u32 LO = 0x000F000Fu;
    const u32 HI = 0x00F000F0u;
    const u32 q8 = q >> 8;
    wa[0] = hsub2(lop3_and_or(q, LO, MAGIC), M1032);
    wa[2] = hfma2(lop3_and_or(q, HI, MAGIC), SIXTEENTH, NEG72);
    wa[1] = hsub2(lop3_and_or(q8, LO, MAGIC), M1032);
    wa[3] = hfma2(lop3_and_or(q8, HI, MAGIC), SIXTEENTH, NEG72);
}
#endif

// ------------------------------------------------------------ memory

// Written by other blocks of the same launch (split-K partials): read from
// L2, not a possibly stale L1 line.
__device__ __forceinline__ float ld_cg_f32(const float* p) {
    float r;
    asm volatile("ld.global.cg.f32 %0, [%1];" : "=f"(r) : "l"(p));
    return r;
}

// The split-K sum of one output element (row, col): the splits' fp32
// partials, laid out (splits, M, n_pad), added in split order so that the
// result never depends on which block finished last (bit-deterministic).
__device__ __forceinline__ float split_k_sum(const float* partials, int row, int col, int M, int n_pad,
                                             int splits) {
    float sum = 0.0f;
    for (int s = 0; s < splits; s++) sum += ld_cg_f32(&partials[((size_t)s * M + row) * n_pad + col]);
    return sum;
}

// Tickets of split reductions (the last block of a tile to finish sums the
// others' partials). After a barrier of the threads that stored partials,
// ONE thread's gpu-scope acq_rel add releases all of their stores (PTX
// fences are cumulative through the barrier) and, in the last block,
// acquires the other blocks' (the readers follow through another barrier,
// or __syncwarp). Returns the previous count. Replaces a fence.sc
// (__threadfence) per thread before and after a relaxed atomicAdd.
__device__ __forceinline__ u32 atom_add_acq_rel_gpu(u32* p) {
    u32 prev;
    asm volatile("atom.acq_rel.gpu.global.add.u32 %0, [%1], 1;" : "=r"(prev) : "l"(p) : "memory");
    return prev;
}

// The swapped wgmma GEMMs (w4a16_wgmma.cu, w4a16_wgmma_ws.cu: weights as
// A, tokens as B) keep a warp's 16-column x TOK-token tile in TOK/2 floats
// per thread: acc[4q + e] is weight column nb*16 + g + 8*(e>>1) of token
// m_base + 8q + 2t + (e&1) (g = lane/4, t = lane%4). The tile to row-major
// (M, N) C of the activation type (rows >= M and columns >= N dropped):
template <int TOK>
__device__ __forceinline__ void acc_tile_store_act(const float (&acc)[TOK / 2], u16* __restrict__ C, int M, int N,
                                                   int m_base, int nb, int g, int t) {
#pragma unroll
    for (int q = 0; q < TOK / 8; q++)
#pragma unroll
        for (int e = 0; e < 4; e++) {
            const int row = m_base + 8 * q + 2 * t + (e & 1);
            const int col = nb * 16 + g + 8 * (e >> 1);
            if (row < M && col < N) C[(size_t)row * N + col] = f32_to_act(acc[4 * q + e]);
        }
}
// The tile to split `split`'s slot of (splits, M, n_pad) fp32 partials
// (rows < M; n_pad covers every column of the tile).
template <int TOK>
__device__ __forceinline__ void acc_tile_store_partial(const float (&acc)[TOK / 2], float* __restrict__ partials,
                                                       int split, int M, int n_pad, int m_base, int nb, int g, int t) {
#pragma unroll
    for (int q = 0; q < TOK / 8; q++)
#pragma unroll
        for (int e = 0; e < 4; e++) {
            const int row = m_base + 8 * q + 2 * t + (e & 1);
            const int col = nb * 16 + g + 8 * (e >> 1);
            if (row < M) partials[((size_t)split * M + row) * n_pad + col] = acc[4 * q + e];
        }
}
// One split's (M, n_pad) fp32 partials added to the tile (through L2:
// other blocks wrote them).
template <int TOK>
__device__ __forceinline__ void acc_tile_add_partial(float (&acc)[TOK / 2], const float* part, int M, int n_pad,
                                                     int m_base, int nb, int g, int t) {
#pragma unroll
    for (int q = 0; q < TOK / 8; q++)
#pragma unroll
        for (int e = 0; e < 4; e++) {
            const int row = m_base + 8 * q + 2 * t + (e & 1);
            const int col = nb * 16 + g + 8 * (e >> 1);
            if (row < M) acc[4 * q + e] += ld_cg_f32(&part[(size_t)row * n_pad + col]);
        }
}

// ---------------------------------------------------------------------------
// Dequantisation of the `wgemm` formats (FP4, INT8, FP8, INT3, INT2) into
// m16k16 A-fragment registers, shared by kernels/wxa16_gemm.cu (mma.sync)
// and the warp-specialised wgmma kernel (kernels/w4a16_wgmma_ws.cu, the
// WS_WX_ENTRIES module). Layout of a lane's code words: wxa16_gemm.cu.
// FP8 -> f16: `cvt.rn.f16x2.e4m3x2` on sm_89+ (exact values); on sm_80 a
// bit placement giving value * 2^-8 (exact), compensated in the scales.
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 890
#define WX_FP8_CVT 1
#define WX_FP8_UNIT 1.0f
#else
#define WX_FP8_CVT 0
#define WX_FP8_UNIT 256.0f
#endif

#define FMT_FP4 0
#define FMT_INT8 1
#define FMT_FP8 2
#define FMT_INT3 3
#define FMT_INT2 4

__device__ __forceinline__ u32 wx_prmt(u32 a, u32 b, u32 sel) {
    u32 r;
    asm("prmt.b32 %0, %1, %2, %3;" : "=r"(r) : "r"(a), "r"(b), "r"(sel));
    return r;
}

// Two E2M1 codes at nibble positions 3 and 7 of `s` -> f16x2 of value*2^-14:
// sign to bit 15, exponent+mantissa (3 bits) to bits 11..9.
__device__ __forceinline__ u32 wx_e2m1_pair(u32 s) {
    return (s & 0x80008000u) | ((s >> 3) & 0x0E000E00u);
}

// Two E4M3 bytes (low, high) of a 16-bit lane -> f16x2.
__device__ __forceinline__ void wx_e4m3_x4(u32 w, u32& lo_pair, u32& hi_pair) {
#if WX_FP8_CVT
    asm("{\n\t.reg .b16 l, h;\n\tmov.b32 {l, h}, %2;\n\t"
        "cvt.rn.f16x2.e4m3x2 %0, l;\n\tcvt.rn.f16x2.e4m3x2 %1, h;\n\t}"
        : "=r"(lo_pair), "=r"(hi_pair)
        : "r"(w));
#else
    // Bytes to bits 8..15 of each half, then sign stays at 15 and the 7
    // exponent/mantissa bits move to 13..7: the f16 of value * 2^-8.
    const u32 x0 = wx_prmt(w, 0u, 0x1404u);
    const u32 x1 = wx_prmt(w, 0u, 0x3424u);
    lo_pair = (x0 & 0x80008000u) | ((x0 >> 1) & 0x3F803F80u);
    hi_pair = (x1 & 0x80008000u) | ((x1 >> 1) & 0x3F803F80u);
#endif
}

// INT3 / INT2: f16x2 multipliers 2^(-b*q) of field q (both halves).
template <int FMT>
__device__ __forceinline__ u32 wx_field_mul(int q) {
    if (FMT == FMT_INT2) return q == 0 ? 0x3C003C00u : q == 1 ? 0x34003400u : q == 2 ? 0x2C002C00u : 0x24002400u;
    return q == 0 ? 0x3C003C00u : q == 1 ? 0x30003000u : 0x24002400u;
}

// INT3 / INT2: bias pairs zb[2q + h] = -(1024 * 2^(-b*q) + zero of column
// half h), from the (scale | zero << 16) words of columns g and 8 + g.
template <int FMT>
__device__ __forceinline__ void wx_zero_bias(u32 sz0, u32 sz1, u32 zb[8]) {
    constexpr int B = FMT == FMT_INT3 ? 3 : 2;
#pragma unroll
    for (int q = 0; q < 4; q++) {
        const float base = 1024.0f / (float)(1 << (B * q));
        const u32 b0 = f32_to_f16(-(base + (float)(sz0 >> 16)));
        const u32 b1 = f32_to_f16(-(base + (float)(sz1 >> 16)));
        zb[2 * q] = b0 | (b0 << 16);
        zb[2 * q + 1] = b1 | (b1 << 16);
    }
}

// The 4 A-fragment registers of k16 step j from the lane's chunk codes.
// `sc`: FP4 f16x2 scale pair (column g, column 8 + g), unused otherwise.
// `zb`: INT3 / INT2 bias pairs (wx_zero_bias), unused otherwise.
template <int FMT>
__device__ __forceinline__ void wx_dequant_step(const u32* words, int j, u32 sc, const u32* zb, u32 wa[4]) {
    if (FMT == FMT_INT2) {
        const u32 x = (j & 1) ? (words[j >> 1] >> 8) : words[j >> 1];
#pragma unroll
        for (int i = 0; i < 4; i++) {
            const u32 v = (x & (0x00030003u << (2 * i))) | 0x64006400u;
            wa[i] = hfma2(v, wx_field_mul<FMT>(i), zb[2 * i + (i & 1)]);
        }
    } else if (FMT == FMT_INT3) {
#pragma unroll
        for (int i = 0; i < 4; i++) {
            const int f = 4 * j + i;
            u32 v;
            int q;
            if (f == 15) {
                v = ((words[0] >> 15) & 0x00010001u) | ((words[1] >> 14) & 0x00020002u) |
                    ((words[2] >> 13) & 0x00040004u) | 0x64006400u;
                q = 0;
            } else {
                const int p = f % 5;
                const u32 w = p >= 3 ? (words[f / 5] >> 9) : words[f / 5];
                q = p >= 3 ? p - 3 : p;
                v = (w & (0x00070007u << (3 * q))) | 0x64006400u;
            }
            wa[i] = hfma2(v, wx_field_mul<FMT>(q), zb[2 * q + (i & 1)]);
        }
    } else if (FMT == FMT_FP4) {
        const u32 q = words[j];
        const u32 s0 = dup_lo(sc), s1 = dup_hi(sc);
        wa[0] = hmul2(wx_e2m1_pair(q << 12), s0);
        wa[1] = hmul2(wx_e2m1_pair(q << 8), s1);
        wa[2] = hmul2(wx_e2m1_pair(q << 4), s0);
        wa[3] = hmul2(wx_e2m1_pair(q), s1);
    } else if (FMT == FMT_INT8) {
        // Codes stored + 128: 0x64 exponent byte makes 1024 + u, minus 1152.
        const u32 MAGIC = 0x64646464u, BIAS = 0x64806480u;
        const u32 w0 = words[2 * j], w1 = words[2 * j + 1];
        wa[0] = hsub2(wx_prmt(w0, MAGIC, 0x4140u), BIAS);
        wa[1] = hsub2(wx_prmt(w0, MAGIC, 0x4342u), BIAS);
        wa[2] = hsub2(wx_prmt(w1, MAGIC, 0x4140u), BIAS);
        wa[3] = hsub2(wx_prmt(w1, MAGIC, 0x4342u), BIAS);
    } else {
        wx_e4m3_x4(words[2 * j], wa[0], wa[1]);
        wx_e4m3_x4(words[2 * j + 1], wa[2], wa[3]);
    }
}


__device__ __forceinline__ u32 smem_addr(const void* p) { return (u32)__cvta_generic_to_shared(p); }

__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;" ::); }
template <int N>
__device__ __forceinline__ void cp_async_wait() { asm volatile("cp.async.wait_group %0;" ::"n"(N)); }

// 16-byte cp.async to a shared-memory address given as a 32-bit offset, so
// that an unrolled stage loop issues it with immediate offsets (no address
// rebuilt per chunk): the per-lane weight rings of the INT4 decode kernels
// and of the ring read peers (bench_read.cu).
__device__ __forceinline__ void cp_async16_cg_at(u32 dst, const void* src) {
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16;" ::"r"(dst), "l"(src));
}
// The matching 16-byte shared load (volatile: it must stay between the
// cp.async.wait_group of its chunk and the refill of its slot).
__device__ __forceinline__ uint4 lds128_at(u32 addr) {
    uint4 v;
    asm volatile("ld.shared.v4.u32 {%0, %1, %2, %3}, [%4];"
                 : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
                 : "r"(addr)
                 : "memory");
    return v;
}

// ------------------------------------------------------------ tensor cores

// c (16x8 f32) += a (16x16, row) . b (16x8, col), a and b of the activation
// type.
__device__ __forceinline__ void mma_16816(float* c, const u32* a, const u32* b) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32." MARLIN_ACT_PTX "." MARLIN_ACT_PTX ".f32 "
        "{%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
}

// ------------------------------------------------------------ launch

// Programmatic dependent launch (src/ops/launch.rs). pdl_trigger(): the next
// kernel's grid may launch once every block of this one has called it (its
// own wait still waits for this grid's completion). pdl_wait(): wait until
// the previous kernel in the stream has completed and its writes are
// visible. Before it a kernel reads only what no launch of the same PDL
// chain writes: constants, host-copied values, weights, and (decode
// attention) cache entries of earlier steps. A kernel that triggers before
// its wait lets its successor start while its predecessor still runs.
// No-ops for a plain launch and below sm_90.
__device__ __forceinline__ void pdl_trigger() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
#endif
}
__device__ __forceinline__ void pdl_wait() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
}

// Thread-block clusters (sm_90): the launch groups blocks into clusters
// (src/ops/launch.rs); cluster_size() is 1 for a plain launch and below
// sm_90, where the cluster code is never reached.
__device__ __forceinline__ u32 cluster_size() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    u32 r;
    asm volatile("mov.u32 %0, %%cluster_nctarank;" : "=r"(r));
    return r;
#else
    return 1u;
#endif
}
// Every thread of every block of the cluster; release / acquire: shared
// memory written before it is visible to the cluster's blocks after it.
__device__ __forceinline__ void cluster_sync() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    // Not .aligned: callers may reach it from divergent warps.
    asm volatile("barrier.cluster.arrive.release;\n\tbarrier.cluster.wait.acquire;" ::: "memory");
#endif
}
// The shared-memory address `local` of this block in block `rank` of the cluster.
__device__ __forceinline__ u32 cluster_map(u32 local, u32 rank) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    u32 r;
    asm volatile("mapa.shared::cluster.u32 %0, %1, %2;" : "=r"(r) : "r"(local), "r"(rank));
    return r;
#else
    return local;
#endif
}
__device__ __forceinline__ float2 ld_cluster2(u32 addr) {
    float2 r = make_float2(0.0f, 0.0f);
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("ld.shared::cluster.v2.f32 {%0, %1}, [%2];" : "=f"(r.x), "=f"(r.y) : "r"(addr) : "memory");
#endif
    return r;
}
__device__ __forceinline__ float4 ld_cluster4(u32 addr) {
    float4 r = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("ld.shared::cluster.v4.f32 {%0, %1, %2, %3}, [%4];"
                 : "=f"(r.x), "=f"(r.y), "=f"(r.z), "=f"(r.w)
                 : "r"(addr)
                 : "memory");
#endif
    return r;
}

// ------------------------------------------------------------ Hopper only

#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900

// mbarrier in shared memory (bar = shared-window address).
__device__ __forceinline__ void mbar_init(u32 bar, u32 count) {
    asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;" ::"r"(bar), "r"(count) : "memory");
}
__device__ __forceinline__ void mbar_arrive_expect_tx(u32 bar, u32 bytes) {
    asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;" ::"r"(bar), "r"(bytes) : "memory");
}
__device__ __forceinline__ void mbar_arrive(u32 bar) {
    asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];" ::"r"(bar) : "memory");
}
__device__ __forceinline__ void mbar_wait(u32 bar, u32 parity) {
    u32 done;
    do {
        asm volatile(
            "{ .reg .pred p; mbarrier.try_wait.parity.shared::cta.b64 p, [%1], %2; selp.u32 %0, 1, 0, p; }"
            : "=r"(done)
            : "r"(bar), "r"(parity)
            : "memory");
    } while (!done);
}
// 1-D bulk copy global -> shared (16-B aligned, bytes % 16 == 0), completion
// counted in bytes on `bar`. A launch without clusters is a cluster of one
// CTA, whose shared::cta addresses are valid shared::cluster addresses.
__device__ __forceinline__ void bulk_copy(u32 dst, const void* src, u32 bytes, u32 bar) {
    asm volatile(
        "cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1], %2, [%3];" ::"r"(dst),
        "l"(src), "r"(bytes), "r"(bar)
        : "memory");
}

#endif  // __CUDA_ARCH__ >= 900

#if defined(__CUDA_ARCH_FEAT_SM90_ALL)

// wgmma (sm_90a).
__device__ __forceinline__ void wgmma_fence() { asm volatile("wgmma.fence.sync.aligned;" ::: "memory"); }
__device__ __forceinline__ void wgmma_commit() { asm volatile("wgmma.commit_group.sync.aligned;" ::: "memory"); }
template <int N>
__device__ __forceinline__ void wgmma_wait() { asm volatile("wgmma.wait_group.sync.aligned %0;" ::"n"(N) : "memory"); }
// Compiler-only fence on an accumulator register: keeps reads and writes of
// it on their side of the wgmma wait (the compiler does not know that
// wgmma.wait_group is what makes the asynchronous result available).
__device__ __forceinline__ void fence_operand(float& r) { asm volatile("" : "+f"(r)::"memory"); }

// wgmma.mma_async m64nTOKk16, A (activation type) from registers, B (same
// type, K-major) from shared memory (descriptor `desc`), fp32 accumulators
// d[TOK/2]; scale_d = 0 overwrites d.
__device__ __forceinline__ void wgmma_rs_n16(float* d, const u32 (&a)[4], unsigned long long desc, int scale_d) {
    asm volatile(
        "{\n.reg .pred p;\nsetp.ne.b32 p, %13, 0;\n"
        "wgmma.mma_async.sync.aligned.m64n16k16.f32." MARLIN_ACT_PTX "." MARLIN_ACT_PTX " "
        "{"
        "%0, %1, %2, %3, %4, %5, %6, %7"
        "}, {%8, %9, %10, %11}, %12, p, 1, 1, 0;\n}\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(desc), "r"(scale_d)
        : "memory");
}

__device__ __forceinline__ void wgmma_rs_n32(float* d, const u32 (&a)[4], unsigned long long desc, int scale_d) {
    asm volatile(
        "{\n.reg .pred p;\nsetp.ne.b32 p, %21, 0;\n"
        "wgmma.mma_async.sync.aligned.m64n32k16.f32." MARLIN_ACT_PTX "." MARLIN_ACT_PTX " "
        "{"
        "%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15"
        "}, {%16, %17, %18, %19}, %20, p, 1, 1, 0;\n}\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]),
          "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(desc), "r"(scale_d)
        : "memory");
}

__device__ __forceinline__ void wgmma_rs_n64(float* d, const u32 (&a)[4], unsigned long long desc, int scale_d) {
    asm volatile(
        "{\n.reg .pred p;\nsetp.ne.b32 p, %37, 0;\n"
        "wgmma.mma_async.sync.aligned.m64n64k16.f32." MARLIN_ACT_PTX "." MARLIN_ACT_PTX " "
        "{"
        "%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, "
        "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31"
        "}, {%32, %33, %34, %35}, %36, p, 1, 1, 0;\n}\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]),
          "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]),
          "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]),
          "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(desc), "r"(scale_d)
        : "memory");
}

__device__ __forceinline__ void wgmma_rs_n128(float* d, const u32 (&a)[4], unsigned long long desc, int scale_d) {
    asm volatile(
        "{\n.reg .pred p;\nsetp.ne.b32 p, %69, 0;\n"
        "wgmma.mma_async.sync.aligned.m64n128k16.f32." MARLIN_ACT_PTX "." MARLIN_ACT_PTX " "
        "{"
        "%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, "
        "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, "
        "%32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, "
        "%48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63"
        "}, {%64, %65, %66, %67}, %68, p, 1, 1, 0;\n}\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]),
          "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]),
          "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]),
          "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]),
          "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]), "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]),
          "+f"(d[40]), "+f"(d[41]), "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]),
          "+f"(d[48]), "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55]),
          "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), "+f"(d[63])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(desc), "r"(scale_d)
        : "memory");
}

template <int TOK>
__device__ __forceinline__ void wgmma_rs(float* d, const u32 (&a)[4], unsigned long long desc, int scale_d) {
    if constexpr (TOK == 16) wgmma_rs_n16(d, a, desc, scale_d);
    else if constexpr (TOK == 32) wgmma_rs_n32(d, a, desc, scale_d);
    else if constexpr (TOK == 64) wgmma_rs_n64(d, a, desc, scale_d);
    else wgmma_rs_n128(d, a, desc, scale_d);
}

#endif  // __CUDA_ARCH_FEAT_SM90_ALL
