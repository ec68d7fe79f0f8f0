// GGUF (ggml) block types on the GPU: decode matmul straight from the blocks
// (int8 activations, dp4a), dequantization (prefill scratch, embedding rows)
// and the small helpers around cuBLAS.
//
// Weights arrive repacked losslessly on the host (src/ggml/layout.rs): each
// block is split into a "codes" plane (the quant bits, a multiple of 16 bytes
// per block, so every row starts 16-byte aligned and the kernels use 16-byte
// loads) and a "meta" plane (scales, mins, fifth bits; padded to 2/4/8/16/20
// bytes). Block b of row r sits at codes + (r*bpr + b)*CB, meta + (..)*MB.
//
// Activations for the decode kernels: x (m, K) f32 -> int8 codes (m, K) and
// float2 {d, s} per 32 (m, K/32), d = max|x|/127, s = d * sum(codes), with
// the CPU's rounding (round half to even of x * (1/d)).
//
// Dequantisation uses explicitly rounded f32 multiply/add (no FMA
// contraction, no flush to zero) so that get_rows is bit-identical to the
// reference (ggml's dequantize_row_*).
//
// Shared helpers (f16 conversions) come from marlin_common.cuh, an in-memory
// NVRTC header (no search path).

#include "marlin_common.cuh"

typedef unsigned char u8;
typedef signed char i8;

// ggml type ids (GgmlType in marlin-quant).
#define T_F32 0
#define T_F16 1
#define T_Q4_0 2
#define T_Q4_1 3
#define T_Q5_0 6
#define T_Q5_1 7
#define T_Q8_0 8
#define T_Q4K 12
#define T_Q5K 13
#define T_Q6K 14

#define MMVQ_WARPS 4

// ---------------------------------------------------------------- helpers

// IEEE f32 ops, rounded to nearest, never fused or flushed (fast-math off).
__device__ __forceinline__ float mul_rn(float a, float b) {
    float r;
    asm("mul.rn.f32 %0, %1, %2;" : "=f"(r) : "f"(a), "f"(b));
    return r;
}
__device__ __forceinline__ float add_rn(float a, float b) {
    float r;
    asm("add.rn.f32 %0, %1, %2;" : "=f"(r) : "f"(a), "f"(b));
    return r;
}
__device__ __forceinline__ float sub_rn(float a, float b) {
    float r;
    asm("sub.rn.f32 %0, %1, %2;" : "=f"(r) : "f"(a), "f"(b));
    return r;
}
__device__ __forceinline__ float div_rn(float a, float b) {
    float r;
    asm("div.rn.f32 %0, %1, %2;" : "=f"(r) : "f"(a), "f"(b));
    return r;
}

__device__ __forceinline__ int dp4a(int a, int b, int c) {
    int r;
    asm("dp4a.s32.s32 %0, %1, %2, %3;" : "=r"(r) : "r"(a), "r"(b), "r"(c));
    return r;
}

__device__ __forceinline__ int round_to_int(float x) {
    int r;
    asm("cvt.rni.s32.f32 %0, %1;" : "=r"(r) : "f"(x));
    return r;
}

__device__ __forceinline__ uint4 ld_nc_v4(const void* p) {
    uint4 r;
    asm volatile("ld.global.nc.L1::no_allocate.v4.u32 {%0, %1, %2, %3}, [%4];"
                 : "=r"(r.x), "=r"(r.y), "=r"(r.z), "=r"(r.w)
                 : "l"(p));
    return r;
}

__device__ __forceinline__ u32 byte_of(u32 word, int i) { return (word >> (8 * i)) & 0xFF; }

// 4 bits (bit k of b) -> bit 4 of byte k.
__device__ __forceinline__ int spread4_to_bit4(u32 b) { return (int)((b * 0x02040810u) & 0x10101010u); }

// (scale, min) of sub-block j of a Q4_K/Q5_K block (ggml get_scale_min_k4);
// q = the 12 scale bytes as three little-endian words.
__device__ __forceinline__ void scale_min_k4(int j, const u32 q[3], int& sc, int& mn) {
    auto qb = [&](int i) { return (int)byte_of(q[i >> 2], i & 3); };
    if (j < 4) {
        sc = qb(j) & 63;
        mn = qb(j + 4) & 63;
    } else {
        sc = (qb(j + 4) & 0xF) | ((qb(j - 4) >> 6) << 4);
        mn = (qb(j + 4) >> 4) | ((qb(j) >> 6) << 4);
    }
}

// ------------------------------------------------------- block layouts
// CB: codes bytes per block, MB: meta bytes per block, BE: elements per block.

template <int T> struct Layout;
template <> struct Layout<T_Q4_0> { enum { CB = 16, MB = 2, BE = 32 }; };
template <> struct Layout<T_Q4_1> { enum { CB = 16, MB = 4, BE = 32 }; };
template <> struct Layout<T_Q5_0> { enum { CB = 16, MB = 8, BE = 32 }; };
template <> struct Layout<T_Q5_1> { enum { CB = 16, MB = 8, BE = 32 }; };
template <> struct Layout<T_Q8_0> { enum { CB = 32, MB = 2, BE = 32 }; };
template <> struct Layout<T_Q4K> { enum { CB = 128, MB = 16, BE = 256 }; };
template <> struct Layout<T_Q5K> { enum { CB = 160, MB = 16, BE = 256 }; };
template <> struct Layout<T_Q6K> { enum { CB = 192, MB = 20, BE = 256 }; };

// --------------------------------------------- dequantisation, 32 at a time
// out[l] = element c*32 + l of the row whose blocks start at global block
// index `b0`, computed with the reference's operations in its order.

template <int T> __device__ void dequant32(const u8* codes, const u8* meta, long b0, int c, float* out);

template <> __device__ void dequant32<T_Q4_0>(const u8* codes, const u8* meta, long b0, int c, float* out) {
    const long b = b0 + c;
    const u8* qs = codes + b * 16;
    const float d = f16_to_f32(*(const u16*)(meta + b * 2));
    for (int l = 0; l < 16; ++l) {
        out[l] = mul_rn((float)((int)(qs[l] & 0xF) - 8), d);
        out[l + 16] = mul_rn((float)((int)(qs[l] >> 4) - 8), d);
    }
}

template <> __device__ void dequant32<T_Q4_1>(const u8* codes, const u8* meta, long b0, int c, float* out) {
    const long b = b0 + c;
    const u8* qs = codes + b * 16;
    const u32 dm = *(const u32*)(meta + b * 4);
    const float d = f16_to_f32(dm & 0xFFFF), m = f16_to_f32(dm >> 16);
    for (int l = 0; l < 16; ++l) {
        out[l] = add_rn(mul_rn((float)(qs[l] & 0xF), d), m);
        out[l + 16] = add_rn(mul_rn((float)(qs[l] >> 4), d), m);
    }
}

// Q5_0 / Q5_1 meta: { u32 qh; f16 d; f16 m (Q5_1) or 0 }.
template <> __device__ void dequant32<T_Q5_0>(const u8* codes, const u8* meta, long b0, int c, float* out) {
    const long b = b0 + c;
    const u8* qs = codes + b * 16;
    const uint2 mt = *(const uint2*)(meta + b * 8);
    const u32 qh = mt.x;
    const float d = f16_to_f32(mt.y & 0xFFFF);
    for (int l = 0; l < 16; ++l) {
        const int q0 = (int)((qs[l] & 0xF) | (((qh >> l) & 1) << 4)) - 16;
        const int q1 = (int)((qs[l] >> 4) | (((qh >> (l + 16)) & 1) << 4)) - 16;
        out[l] = mul_rn((float)q0, d);
        out[l + 16] = mul_rn((float)q1, d);
    }
}

template <> __device__ void dequant32<T_Q5_1>(const u8* codes, const u8* meta, long b0, int c, float* out) {
    const long b = b0 + c;
    const u8* qs = codes + b * 16;
    const uint2 mt = *(const uint2*)(meta + b * 8);
    const u32 qh = mt.x;
    const float d = f16_to_f32(mt.y & 0xFFFF), m = f16_to_f32(mt.y >> 16);
    for (int l = 0; l < 16; ++l) {
        const u32 q0 = (qs[l] & 0xF) | (((qh >> l) & 1) << 4);
        const u32 q1 = (qs[l] >> 4) | (((qh >> (l + 16)) & 1) << 4);
        out[l] = add_rn(mul_rn((float)q0, d), m);
        out[l + 16] = add_rn(mul_rn((float)q1, d), m);
    }
}

template <> __device__ void dequant32<T_Q8_0>(const u8* codes, const u8* meta, long b0, int c, float* out) {
    const long b = b0 + c;
    const i8* qs = (const i8*)(codes + b * 32);
    const float d = f16_to_f32(*(const u16*)(meta + b * 2));
    for (int l = 0; l < 32; ++l) out[l] = mul_rn((float)qs[l], d);
}

// Q4_K / Q5_K meta: { f16 d; f16 dmin; u8 scales[12] } (16 bytes).
template <bool FIFTH>
__device__ void dequant32_q45k(const u8* codes, const u8* meta, long b0, int c, float* out) {
    const long b = b0 + c / 8;
    const int j = c % 8;  // sub-block of 32
    const u8* blk = codes + b * (FIFTH ? 160 : 128);
    const u8* qs = blk + (j / 2) * 32;
    const uint4 mt = *(const uint4*)(meta + b * 16);
    const u32 sc_words[3] = {mt.y, mt.z, mt.w};
    int sc, mn;
    scale_min_k4(j, sc_words, sc, mn);
    const float d1 = mul_rn(f16_to_f32(mt.x & 0xFFFF), (float)sc);
    const float m1 = mul_rn(f16_to_f32(mt.x >> 16), (float)mn);
    const int shift = 4 * (j & 1);
    for (int l = 0; l < 32; ++l) {
        int q = (qs[l] >> shift) & 0xF;
        if (FIFTH) q += ((blk[128 + l] >> j) & 1) << 4;
        out[l] = sub_rn(mul_rn(d1, (float)q), m1);
    }
}

template <> __device__ void dequant32<T_Q4K>(const u8* codes, const u8* meta, long b0, int c, float* out) {
    dequant32_q45k<false>(codes, meta, b0, c, out);
}
template <> __device__ void dequant32<T_Q5K>(const u8* codes, const u8* meta, long b0, int c, float* out) {
    dequant32_q45k<true>(codes, meta, b0, c, out);
}

// Q6_K codes: { ql[128]; qh[64] }; meta: { i8 scales[16]; f16 d; pad }.
template <> __device__ void dequant32<T_Q6K>(const u8* codes, const u8* meta, long b0, int c, float* out) {
    const long b = b0 + c / 8;
    const int j = c % 8, half = j / 4, quarter = j % 4;
    const u8* ql = codes + b * 192 + half * 64 + (quarter & 1) * 32;
    const u8* qh = codes + b * 192 + 128 + half * 32;
    const i8* scales = (const i8*)(meta + b * 20);
    const float d = f16_to_f32(*(const u16*)(meta + b * 20 + 16));
    const int lshift = (quarter >> 1) * 4, hshift = 2 * quarter;
    for (int l = 0; l < 32; ++l) {
        const int q = (int)(((ql[l] >> lshift) & 0xF) | (((qh[l] >> hshift) & 3) << 4)) - 32;
        const float sc = (float)scales[half * 8 + quarter * 2 + l / 16];
        out[l] = mul_rn(mul_rn(d, sc), (float)q);
    }
}

// ------------------------------------------------------ decode matmul (mmvq)
// One warp per output row, lanes stride over "units" of the row (one 32-block
// for the 32-element types, 64 elements of a K-quant superblock), fp32
// accumulation per activation row, warp reduction at the end.
//
// aq: (m, K) int8 codes, ads: (m, K/32) {d, s}; y: (m, rows).

struct ActRow {
    const i8* qs;
    const float2* ds;
};

__device__ __forceinline__ void load_act32(const ActRow& a, long blk, int v[8], float2& ds) {
    const uint4 lo = *(const uint4*)(a.qs + blk * 32);
    const uint4 hi = *(const uint4*)(a.qs + blk * 32 + 16);
    v[0] = lo.x; v[1] = lo.y; v[2] = lo.z; v[3] = lo.w;
    v[4] = hi.x; v[5] = hi.y; v[6] = hi.z; v[7] = hi.w;
    ds = a.ds[blk];
}

template <int T> struct Mmvq;

// The four 32-element types with 16 code bytes: nibbles (+ fifth bits).
// Σ_l (q_l - bias) a_l d_a = d_a Σ q a - bias * s_a.
template <int T> struct Mmvq4 {
    enum { UNITS_PER_BLOCK = 1 };
    template <int M>
    static __device__ __forceinline__ void dot(const u8* codes, const u8* meta, long b0, int u,
                                               const ActRow* act, long a0, float* acc) {
        const long b = b0 + u;
        const uint4 w4 = ld_nc_v4(codes + b * 16);
        const u32 w[4] = {w4.x, w4.y, w4.z, w4.w};
        float d, m_or_bias;
        u32 qh = 0;
        if (T == T_Q4_0) {
            d = f16_to_f32(*(const u16*)(meta + b * 2));
            m_or_bias = -8.0f * d;
        } else if (T == T_Q4_1) {
            const u32 dm = *(const u32*)(meta + b * 4);
            d = f16_to_f32(dm & 0xFFFF);
            m_or_bias = f16_to_f32(dm >> 16);
        } else {
            const uint2 mt = *(const uint2*)(meta + b * 8);
            qh = mt.x;
            d = f16_to_f32(mt.y & 0xFFFF);
            m_or_bias = T == T_Q5_0 ? -16.0f * d : f16_to_f32(mt.y >> 16);
        }
        int lo[4], hi[4];
#pragma unroll
        for (int i = 0; i < 4; ++i) {
            lo[i] = (int)(w[i] & 0x0F0F0F0Fu);
            hi[i] = (int)((w[i] >> 4) & 0x0F0F0F0Fu);
            if (T == T_Q5_0 || T == T_Q5_1) {
                lo[i] |= spread4_to_bit4((qh >> (4 * i)) & 0xF);
                hi[i] |= spread4_to_bit4((qh >> (16 + 4 * i)) & 0xF);
            }
        }
#pragma unroll
        for (int j = 0; j < M; ++j) {
            int a[8];
            float2 ds;
            load_act32(act[j], a0 + u, a, ds);
            int sumi = 0;
#pragma unroll
            for (int i = 0; i < 4; ++i) {
                sumi = dp4a(lo[i], a[i], sumi);
                sumi = dp4a(hi[i], a[4 + i], sumi);
            }
            acc[j] += d * ds.x * (float)sumi + m_or_bias * ds.y;
        }
    }
};

template <> struct Mmvq<T_Q4_0> : Mmvq4<T_Q4_0> {};
template <> struct Mmvq<T_Q4_1> : Mmvq4<T_Q4_1> {};
template <> struct Mmvq<T_Q5_0> : Mmvq4<T_Q5_0> {};
template <> struct Mmvq<T_Q5_1> : Mmvq4<T_Q5_1> {};

template <> struct Mmvq<T_Q8_0> {
    enum { UNITS_PER_BLOCK = 1 };
    template <int M>
    static __device__ __forceinline__ void dot(const u8* codes, const u8* meta, long b0, int u,
                                               const ActRow* act, long a0, float* acc) {
        const long b = b0 + u;
        const uint4 w0 = ld_nc_v4(codes + b * 32);
        const uint4 w1 = ld_nc_v4(codes + b * 32 + 16);
        const int w[8] = {(int)w0.x, (int)w0.y, (int)w0.z, (int)w0.w,
                          (int)w1.x, (int)w1.y, (int)w1.z, (int)w1.w};
        const float d = f16_to_f32(*(const u16*)(meta + b * 2));
#pragma unroll
        for (int j = 0; j < M; ++j) {
            int a[8];
            float2 ds;
            load_act32(act[j], a0 + u, a, ds);
            int sumi = 0;
#pragma unroll
            for (int i = 0; i < 8; ++i) sumi = dp4a(w[i], a[i], sumi);
            acc[j] += d * ds.x * (float)sumi;
        }
    }
};

// Q4_K / Q5_K: unit u = (superblock u/4, chunk c = u%4) = sub-blocks 2c
// (low nibbles) and 2c+1 (high nibbles) = activation blocks 8sb+2c, +1.
template <bool FIFTH> struct MmvqQ45K {
    enum { UNITS_PER_BLOCK = 4 };
    template <int M>
    static __device__ __forceinline__ void dot(const u8* codes, const u8* meta, long b0, int u,
                                               const ActRow* act, long a0, float* acc) {
        const long b = b0 + u / 4;
        const int c = u % 4;
        const u8* blk = codes + b * (FIFTH ? 160 : 128);
        const uint4 w0 = ld_nc_v4(blk + c * 32);
        const uint4 w1 = ld_nc_v4(blk + c * 32 + 16);
        const u32 w[8] = {w0.x, w0.y, w0.z, w0.w, w1.x, w1.y, w1.z, w1.w};
        int lo[8], hi[8];
#pragma unroll
        for (int i = 0; i < 8; ++i) {
            lo[i] = (int)(w[i] & 0x0F0F0F0Fu);
            hi[i] = (int)((w[i] >> 4) & 0x0F0F0F0Fu);
        }
        if (FIFTH) {
            const uint4 h0 = ld_nc_v4(blk + 128);
            const uint4 h1 = ld_nc_v4(blk + 144);
            const u32 h[8] = {h0.x, h0.y, h0.z, h0.w, h1.x, h1.y, h1.z, h1.w};
#pragma unroll
            for (int i = 0; i < 8; ++i) {
                lo[i] |= (int)(((h[i] >> (2 * c)) & 0x01010101u) << 4);
                hi[i] |= (int)(((h[i] >> (2 * c + 1)) & 0x01010101u) << 4);
            }
        }
        const uint4 mt = *(const uint4*)(meta + b * 16);
        const u32 sc_words[3] = {mt.y, mt.z, mt.w};
        int sc1, mn1, sc2, mn2;
        scale_min_k4(2 * c, sc_words, sc1, mn1);
        scale_min_k4(2 * c + 1, sc_words, sc2, mn2);
        const float d = f16_to_f32(mt.x & 0xFFFF), dmin = f16_to_f32(mt.x >> 16);
        const long ab = a0 + (u / 4) * 8 + 2 * c;
#pragma unroll
        for (int j = 0; j < M; ++j) {
            int a1[8], a2[8];
            float2 ds1, ds2;
            load_act32(act[j], ab, a1, ds1);
            load_act32(act[j], ab + 1, a2, ds2);
            int s1 = 0, s2 = 0;
#pragma unroll
            for (int i = 0; i < 8; ++i) {
                s1 = dp4a(lo[i], a1[i], s1);
                s2 = dp4a(hi[i], a2[i], s2);
            }
            acc[j] += d * (ds1.x * (float)(sc1 * s1) + ds2.x * (float)(sc2 * s2)) -
                      dmin * ((float)mn1 * ds1.y + (float)mn2 * ds2.y);
        }
    }
};

template <> struct Mmvq<T_Q4K> : MmvqQ45K<false> {};
template <> struct Mmvq<T_Q5K> : MmvqQ45K<true> {};

// Q6_K: unit u = (superblock u/4, half h = (u%4)/2, g = u%2): bytes
// 16g..16g+16 of the half's ql[0..32], ql[32..64] and qh[0..32] give
// 16 elements of each quarter q = 0..3 (one 16-element sub-block each,
// sub-block h*8 + 2q + g), activation block 8sb + 4h + q, ints 4g..4g+4.
template <> struct Mmvq<T_Q6K> {
    enum { UNITS_PER_BLOCK = 4 };
    template <int M>
    static __device__ __forceinline__ void dot(const u8* codes, const u8* meta, long b0, int u,
                                               const ActRow* act, long a0, float* acc) {
        const long b = b0 + u / 4;
        const int h = (u % 4) / 2, g = u % 2;
        const u8* blk = codes + b * 192;
        const uint4 la = ld_nc_v4(blk + h * 64 + g * 16);
        const uint4 lb = ld_nc_v4(blk + h * 64 + 32 + g * 16);
        const uint4 hh = ld_nc_v4(blk + 128 + h * 32 + g * 16);
        const u32 A[4] = {la.x, la.y, la.z, la.w};
        const u32 B[4] = {lb.x, lb.y, lb.z, lb.w};
        const u32 H[4] = {hh.x, hh.y, hh.z, hh.w};
        int q[4][4];  // [quarter][int]
#pragma unroll
        for (int i = 0; i < 4; ++i) {
            q[0][i] = (int)((A[i] & 0x0F0F0F0Fu) | ((H[i] & 0x03030303u) << 4));
            q[1][i] = (int)((B[i] & 0x0F0F0F0Fu) | (((H[i] >> 2) & 0x03030303u) << 4));
            q[2][i] = (int)(((A[i] >> 4) & 0x0F0F0F0Fu) | (((H[i] >> 4) & 0x03030303u) << 4));
            q[3][i] = (int)(((B[i] >> 4) & 0x0F0F0F0Fu) | (((H[i] >> 6) & 0x03030303u) << 4));
        }
        const u32* mt = (const u32*)(meta + b * 20);
        // scales h*8 + 2q + g for q = 0..3: bytes of words 2h and 2h+1.
        const u32 s0 = mt[2 * h], s1 = mt[2 * h + 1];
        const float sc[4] = {(float)(i8)byte_of(s0, g), (float)(i8)byte_of(s0, 2 + g),
                             (float)(i8)byte_of(s1, g), (float)(i8)byte_of(s1, 2 + g)};
        const float d = f16_to_f32(mt[4] & 0xFFFF);
        const long ab = a0 + (u / 4) * 8 + 4 * h;
#pragma unroll
        for (int j = 0; j < M; ++j) {
            float part = 0.0f;
#pragma unroll
            for (int qq = 0; qq < 4; ++qq) {
                const uint4 av = *(const uint4*)(act[j].qs + (ab + qq) * 32 + g * 16);
                const int a[4] = {(int)av.x, (int)av.y, (int)av.z, (int)av.w};
                int sumi = 0, suma = 0;
#pragma unroll
                for (int i = 0; i < 4; ++i) {
                    sumi = dp4a(q[qq][i], a[i], sumi);
                    suma = dp4a(0x20202020, a[i], suma);  // 32 * Σ a: the -32 offset
                }
                part += sc[qq] * act[j].ds[ab + qq].x * (float)(sumi - suma);
            }
            acc[j] += d * part;
        }
    }
};

template <int T, int M>
__device__ __forceinline__ void mmvq(const u8* __restrict__ codes, const u8* __restrict__ meta,
                                     const i8* __restrict__ aq, const float2* __restrict__ ads,
                                     float* __restrict__ y, int rows, int cols) {
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    const int row = blockIdx.x * MMVQ_WARPS + warp;
    if (row >= rows) return;
    const int bpr = cols / Layout<T>::BE;
    const int units = bpr * Mmvq<T>::UNITS_PER_BLOCK;
    ActRow act[M];
#pragma unroll
    for (int j = 0; j < M; ++j) {
        act[j].qs = aq + (long)j * cols;
        act[j].ds = ads + (long)j * (cols / 32);
    }
    float acc[M];
#pragma unroll
    for (int j = 0; j < M; ++j) acc[j] = 0.0f;
    const long b0 = (long)row * bpr;
#pragma unroll 4
    for (int u = lane; u < units; u += 32) {
        Mmvq<T>::template dot<M>(codes, meta, b0, u, act, 0, acc);
    }
#pragma unroll
    for (int j = 0; j < M; ++j) {
        float v = acc[j];
#pragma unroll
        for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
        acc[j] = v;
    }
    if (lane == 0) {
#pragma unroll
        for (int j = 0; j < M; ++j) y[(long)j * rows + row] = acc[j];
    }
}

#define MMVQ_ENTRY(T, NAME, M)                                                                 \
    extern "C" __global__ void __launch_bounds__(MMVQ_WARPS * 32)                              \
        ggml_mmvq_##NAME##_m##M(const u8* codes, const u8* meta, const i8* aq, const float2* ads, \
                                float* y, int rows, int cols) {                                \
        mmvq<T, M>(codes, meta, aq, ads, y, rows, cols);                                       \
    }
#define MMVQ_ALL_M(T, NAME)                                                                    \
    MMVQ_ENTRY(T, NAME, 1) MMVQ_ENTRY(T, NAME, 2) MMVQ_ENTRY(T, NAME, 3) MMVQ_ENTRY(T, NAME, 4) \
    MMVQ_ENTRY(T, NAME, 5) MMVQ_ENTRY(T, NAME, 6) MMVQ_ENTRY(T, NAME, 7) MMVQ_ENTRY(T, NAME, 8)

MMVQ_ALL_M(T_Q4_0, q4_0)
MMVQ_ALL_M(T_Q4_1, q4_1)
MMVQ_ALL_M(T_Q5_0, q5_0)
MMVQ_ALL_M(T_Q5_1, q5_1)
MMVQ_ALL_M(T_Q8_0, q8_0)
MMVQ_ALL_M(T_Q4K, q4_k)
MMVQ_ALL_M(T_Q5K, q5_k)
MMVQ_ALL_M(T_Q6K, q6_k)

// ----------------------------------------------- dense decode matmul (GEMV)
// W (rows, cols) f32 or f16, x (m, cols) f32 exact; one warp per row.

template <bool HALF, int M>
__device__ __forceinline__ void gemv_dense(const void* __restrict__ w, const float* __restrict__ x,
                                           float* __restrict__ y, int rows, int cols) {
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    const int row = blockIdx.x * MMVQ_WARPS + warp;
    if (row >= rows) return;
    float acc[M];
#pragma unroll
    for (int j = 0; j < M; ++j) acc[j] = 0.0f;
    for (int k = lane; k < cols; k += 32) {
        const long i = (long)row * cols + k;
        const float wv = HALF ? f16_to_f32(((const u16*)w)[i]) : ((const float*)w)[i];
#pragma unroll
        for (int j = 0; j < M; ++j) acc[j] += wv * x[(long)j * cols + k];
    }
#pragma unroll
    for (int j = 0; j < M; ++j) {
        float v = acc[j];
#pragma unroll
        for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
        if (lane == 0) y[(long)j * rows + row] = v;
    }
}

#define GEMV_ENTRY(HALF, NAME, M)                                                              \
    extern "C" __global__ void __launch_bounds__(MMVQ_WARPS * 32)                              \
        ggml_gemv_##NAME##_m##M(const void* w, const float* x, float* y, int rows, int cols) { \
        gemv_dense<HALF, M>(w, x, y, rows, cols);                                              \
    }
#define GEMV_ALL_M(HALF, NAME)                                                                 \
    GEMV_ENTRY(HALF, NAME, 1) GEMV_ENTRY(HALF, NAME, 2) GEMV_ENTRY(HALF, NAME, 3)              \
    GEMV_ENTRY(HALF, NAME, 4) GEMV_ENTRY(HALF, NAME, 5) GEMV_ENTRY(HALF, NAME, 6)              \
    GEMV_ENTRY(HALF, NAME, 7) GEMV_ENTRY(HALF, NAME, 8)

GEMV_ALL_M(false, f32)
GEMV_ALL_M(true, f16)

// -------------------------------------------- activation quantisation (q8)
// One warp per 32-block of x (m, K): codes (m, K) int8, ds (m, K/32) {d, s}.
// Same arithmetic as the CPU (marlin-cpu ggml/act.rs): d = amax / 127,
// code = round_half_even(x * (1/d)), saturated; a block with a NaN or an
// infinity gets d = NaN.
extern "C" __global__ void __launch_bounds__(256)
    ggml_quantize_q8x32(const float* __restrict__ x, i8* __restrict__ qs, float2* __restrict__ ds,
                        int blocks) {
    const int blk = blockIdx.x * 8 + threadIdx.x / 32;
    const int lane = threadIdx.x % 32;
    if (blk >= blocks) return;
    const float v = x[(long)blk * 32 + lane];
    float amax = fabsf(v);
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) amax = fmaxf(amax, __shfl_xor_sync(0xffffffffu, amax, o));
    const bool finite = __all_sync(0xffffffffu, isfinite(v));
    const float d = div_rn(amax, 127.0f);
    const float id = d > 0.0f ? div_rn(1.0f, d) : 0.0f;
    int q = round_to_int(mul_rn(v, id));
    q = q > 127 ? 127 : (q < -128 ? -128 : q);
    if (v != v) q = 0;
    qs[(long)blk * 32 + lane] = (i8)q;
    int sum = q;
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) sum += __shfl_xor_sync(0xffffffffu, sum, o);
    if (lane == 0) ds[blk] = make_float2(finite ? d : __int_as_float(0x7fc00000), (finite ? d : 0.0f) * (float)sum);
}

// ------------------------------------------------ dequantisation kernels

// W -> f16 (rows, cols) for the prefill GEMM: one thread per 32 elements.
template <int T>
__device__ __forceinline__ void dequant_f16(const u8* codes, const u8* meta, u16* out, int rows, int cols) {
    const int chunks_per_row = cols / 32;
    const long total = (long)rows * chunks_per_row;
    for (long t = blockIdx.x * (long)blockDim.x + threadIdx.x; t < total; t += (long)gridDim.x * blockDim.x) {
        const long r = t / chunks_per_row;
        const int c = (int)(t % chunks_per_row);
        float v[32];
        dequant32<T>(codes, meta, r * (cols / Layout<T>::BE), c, v);
        u32 packed[16];
#pragma unroll
        for (int i = 0; i < 16; ++i)
            packed[i] = (u32)f32_to_f16(v[2 * i]) | ((u32)f32_to_f16(v[2 * i + 1]) << 16);
        uint4* dst = (uint4*)(out + r * cols + (long)c * 32);
#pragma unroll
        for (int i = 0; i < 4; ++i)
            dst[i] = make_uint4(packed[4 * i], packed[4 * i + 1], packed[4 * i + 2], packed[4 * i + 3]);
    }
}

// out (n, cols) f32 = rows ids[i] of W times scale; out-of-range ids give
// zero rows. One block per output row.
template <int T>
__device__ __forceinline__ void get_rows(const u8* codes, const u8* meta, const u32* ids, float* out,
                                         int rows, int cols, float scale) {
    const int i = blockIdx.x;
    const u32 id = ids[i];
    const int chunks_per_row = cols / 32;
    for (int c = threadIdx.x; c < chunks_per_row; c += blockDim.x) {
        float v[32];
        if (id < (u32)rows) {
            dequant32<T>(codes, meta, (long)id * (cols / Layout<T>::BE), c, v);
#pragma unroll
            for (int l = 0; l < 32; ++l) v[l] = mul_rn(v[l], scale);
        } else {
#pragma unroll
            for (int l = 0; l < 32; ++l) v[l] = 0.0f;
        }
        float4* dst = (float4*)(out + (long)i * cols + (long)c * 32);
#pragma unroll
        for (int l = 0; l < 8; ++l) dst[l] = make_float4(v[4 * l], v[4 * l + 1], v[4 * l + 2], v[4 * l + 3]);
    }
}

#define BLOCK_ENTRIES(T, NAME)                                                                   \
    extern "C" __global__ void ggml_dequant_f16_##NAME(const u8* codes, const u8* meta, u16* out, \
                                                        int rows, int cols) {                     \
        dequant_f16<T>(codes, meta, out, rows, cols);                                             \
    }                                                                                             \
    extern "C" __global__ void ggml_get_rows_##NAME(const u8* codes, const u8* meta, const u32* ids, \
                                                     float* out, int rows, int cols, float scale) { \
        get_rows<T>(codes, meta, ids, out, rows, cols, scale);                                    \
    }

BLOCK_ENTRIES(T_Q4_0, q4_0)
BLOCK_ENTRIES(T_Q4_1, q4_1)
BLOCK_ENTRIES(T_Q5_0, q5_0)
BLOCK_ENTRIES(T_Q5_1, q5_1)
BLOCK_ENTRIES(T_Q8_0, q8_0)
BLOCK_ENTRIES(T_Q4K, q4_k)
BLOCK_ENTRIES(T_Q5K, q5_k)
BLOCK_ENTRIES(T_Q6K, q6_k)

// Dense weights: rows of f32 or f16 (raw bits), one block per output row.
extern "C" __global__ void ggml_get_rows_dense(const void* w, int is_f16, const u32* ids, float* out,
                                               int rows, int cols, float scale) {
    const int i = blockIdx.x;
    const u32 id = ids[i];
    for (int k = threadIdx.x; k < cols; k += blockDim.x) {
        float v = 0.0f;
        if (id < (u32)rows) {
            const long src = (long)id * cols + k;
            v = is_f16 ? f16_to_f32(((const u16*)w)[src]) : ((const float*)w)[src];
            v = mul_rn(v, scale);
        }
        out[(long)i * cols + k] = v;
    }
}

// ------------------------------------------------- prefill helpers (cuBLAS)

// x (m, K) f32 -> f16 times a per-row power of two that puts the row's
// max|x| in [2^14, 2^15) (no f16 overflow, full f16 precision); inv_scale[r]
// undoes it on the GEMM output. One block of 256 threads per row.
extern "C" __global__ void __launch_bounds__(256)
    ggml_x_to_f16_scaled(const float* __restrict__ x, u16* __restrict__ xh, float* __restrict__ inv_scale,
                         int cols) {
    __shared__ float warp_max[8];
    const long r = blockIdx.x;
    const float* xr = x + r * cols;
    float amax = 0.0f;
    for (int k = threadIdx.x; k < cols; k += 256) amax = fmaxf(amax, fabsf(xr[k]));
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) amax = fmaxf(amax, __shfl_xor_sync(0xffffffffu, amax, o));
    if (threadIdx.x % 32 == 0) warp_max[threadIdx.x / 32] = amax;
    __syncthreads();
    amax = warp_max[0];
    for (int i = 1; i < 8; ++i) amax = fmaxf(amax, warp_max[i]);
    int e = 0;  // scale = 2^e
    if (amax > 0.0f && isfinite(amax)) {
        const int exp_amax = (int)((__float_as_uint(amax) >> 23) & 0xFF) - 127;  // floor(log2) for normals
        e = 14 - (exp_amax < -126 ? -126 : exp_amax);
        e = e > 126 ? 126 : (e < -126 ? -126 : e);
    }
    const float scale = __uint_as_float((u32)(e + 127) << 23);
    for (int k = threadIdx.x; k < cols; k += 256) xh[r * cols + k] = f32_to_f16(mul_rn(xr[k], scale));
    if (threadIdx.x == 0) inv_scale[r] = __uint_as_float((u32)(127 - e) << 23);
}

// y (m, n) *= inv_scale[row].
extern "C" __global__ void ggml_scale_rows(float* __restrict__ y, const float* __restrict__ inv_scale, int m,
                                           int n) {
    const long total = (long)m * n;
    for (long t = blockIdx.x * (long)blockDim.x + threadIdx.x; t < total; t += (long)gridDim.x * blockDim.x)
        y[t] = mul_rn(y[t], inv_scale[t / n]);
}
