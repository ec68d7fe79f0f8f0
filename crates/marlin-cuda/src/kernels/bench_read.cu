// Streaming-read peer of marlin-cuda-bench (src/bench_read.rs): reads
// `words` 16-byte words of one weight-sized buffer and nothing else, with
// the same launch structure as the INT4 GEMM kernels in a chain of
// back-to-back calls: launched with programmatic dependent launch, it lets
// its successor's grid start at once (pdl_trigger), streams its bytes, and
// only then waits for its predecessor (pdl_wait) before its one possible
// global write. A GEMM cannot be faster than this on the same bytes, so
// `read us` is the bandwidth limit at that size (launch ramp and tail
// included), beside the asymptotic copy bandwidth.
//
// Each thread keeps UNROLL independent 16-byte loads in flight per step
// (ld.global.nc with L1::no_allocate: read-once data). The XOR of the loaded
// words is stored only when it equals `never`, which the host picks so that
// the store does not happen in practice; the loads cannot be removed.

#include "marlin_common.cuh"

__device__ __forceinline__ uint4 ld_stream_u4(const uint4* p) {
    uint4 v;
    asm volatile("ld.global.nc.L1::no_allocate.v4.u32 {%0, %1, %2, %3}, [%4];"
                 : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
                 : "l"(p));
    return v;
}

extern "C" __global__ void __launch_bounds__(512) bench_stream_read(const uint4* __restrict__ src,
                                                                   long long words,
                                                                   u32* __restrict__ sink, u32 never) {
    pdl_trigger();
    constexpr int UNROLL = 4;
    const long long stride = (long long)gridDim.x * blockDim.x;
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    u32 acc = 0;
    for (; i + (UNROLL - 1) * stride < words; i += UNROLL * stride) {
        uint4 v[UNROLL];
#pragma unroll
        for (int u = 0; u < UNROLL; ++u) v[u] = ld_stream_u4(src + i + u * stride);
#pragma unroll
        for (int u = 0; u < UNROLL; ++u) acc ^= v[u].x ^ v[u].y ^ v[u].z ^ v[u].w;
    }
    for (; i < words; i += stride) {
        const uint4 v = ld_stream_u4(src + i);
        acc ^= v.x ^ v.y ^ v.z ^ v.w;
    }
    pdl_wait();
    if (acc == never) sink[0] = acc;
}

// The same bytes read in the INT4 GEMMs' order (change 72's question: do
// the GEMMs' rings stop at ~80% of copy because of where their blocks read
// at once?). Grid (1, n_tiles / G, splits) as the split-K kernels: block
// (y, z) streams the codes of the 64-column tiles G*y .. G*y + G - 1 over
// its split's chunks, chunk by chunk, UNROLL chunks in flight. `grouped` =
// 0: the pack's tile-major layout (tile t, chunk c at (t * k_chunks + c) *
// 2 KiB: the block's G pieces of one chunk lie k_chunks * 2 KiB apart);
// 1: a layout where they are contiguous ((y * k_chunks + c) * G + t).
extern "C" __global__ void __launch_bounds__(512) bench_tile_read(const uint4* __restrict__ src, int k_chunks,
                                                                 int tiles_per_block, int grouped,
                                                                 u32* __restrict__ sink, u32 never) {
    pdl_trigger();
    constexpr int UNROLL = 4;
    constexpr int PER_CHUNK = 2;  // 16-byte loads per thread and chunk (G <= 8)
    const int g_tiles = tiles_per_block;
    const int y = blockIdx.y;
    const int splits = gridDim.z;
    const int c0 = (int)(((long long)blockIdx.z * k_chunks) / splits);
    const int c1 = (int)(((long long)(blockIdx.z + 1) * k_chunks) / splits);
    const int words = g_tiles * 128;  // 16-byte words of one chunk of the block
    u32 acc = 0;
    for (int c = c0; c < c1; c += UNROLL) {
        uint4 v[UNROLL][PER_CHUNK];
#pragma unroll
        for (int u = 0; u < UNROLL; ++u)
#pragma unroll
            for (int e = 0; e < PER_CHUNK; ++e) {
                const int w = (int)threadIdx.x + 512 * e;
                const int cc = c + u;
                if (cc < c1 && w < words) {
                    const int t = w >> 7;
                    const size_t at = grouped ? (((size_t)y * k_chunks + cc) * g_tiles + t) * 128 + (w & 127)
                                              : (((size_t)y * g_tiles + t) * k_chunks + cc) * 128 + (w & 127);
                    v[u][e] = ld_stream_u4(src + at);
                } else {
                    v[u][e] = make_uint4(0u, 0u, 0u, 0u);
                }
            }
#pragma unroll
        for (int u = 0; u < UNROLL; ++u)
#pragma unroll
            for (int e = 0; e < PER_CHUNK; ++e) acc ^= v[u][e].x ^ v[u][e].y ^ v[u][e].z ^ v[u][e].w;
    }
    pdl_wait();
    if (acc == never) sink[0] = acc;
}

// The same codes delivered the way the decode kernel delivers them (session
// 19's question: do rings that land the bytes in shared memory stop at ~80%
// of copy by themselves, or only inside the GEMMs?). Grid (1, n_tiles,
// splits), 128 threads: warp w of block (y, z) streams column block w of
// tile y (the pack's 512-byte pieces, 2 KiB apart chunk by chunk) over its
// split's chunks, each lane through a private ring of STAGES 16-byte slots:
// - RING_CP (bench_ring_read_s*): cp.async.cg into shared memory, one group
//   per chunk, wait_group<STAGES - 1>, a shared load, the refill (the decode
//   kernel's ring without its arithmetic);
// - RING_REG (bench_reg_read_s*): the same ring in registers, a rolling
//   ld.global.nc per chunk (each slot reloaded as soon as it is read).
#define RING_CP 0
#define RING_REG 1

// This lane's first 16-byte word of the ring peers' blocks of WARPS warps
// and its split's chunk count `n`. Warp w of block y streams column block
// nb = y * WARPS + w, i.e. column block nb % 4 of tile nb / 4, as the decode
// kernel's warps do (WARPS = 14: a block covers 3.5 tiles, a tile's 2 KiB
// piece per chunk shared by two blocks).
template <int WARPS>
__device__ __forceinline__ const uint4* ring_lane_start(const uint4* __restrict__ src, int k_chunks, int& n) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int splits = gridDim.z;
    const int c0 = (int)(((long long)blockIdx.z * k_chunks) / splits);
    const int c1 = (int)(((long long)(blockIdx.z + 1) * k_chunks) / splits);
    n = c1 - c0;
    const int nb = blockIdx.y * WARPS + warp;
    return src + ((size_t)(nb >> 2) * k_chunks * 4 + (nb & 3)) * 32 + lane + (size_t)c0 * 128;
}

// Blocks of WARPS warps (a multiple of 4) cover WARPS / 4 tiles each (the
// 16-warp entries: one block per SM as the whole-column decode plan has,
// with the launch's dynamic shared memory deciding whether the next call's
// blocks can be resident beside this call's).
template <int STAGES, int MODE, int WARPS = 4>
__device__ __forceinline__ void ring_read_body(const uint4* __restrict__ src, int k_chunks, u32* __restrict__ sink,
                                               u32 never) {
    extern __shared__ uint4 ring_smem[];
    pdl_trigger();
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    int n;
    const uint4* w_lane = ring_lane_start<WARPS>(src, k_chunks, n);
    u32 acc = 0;
    if (MODE == RING_CP) {
        const u32 ring_at = smem_addr(&ring_smem[(warp * STAGES) * 32 + lane]);
#pragma unroll
        for (int st = 0; st < STAGES; st++) {
            if (st < n) cp_async16_cg_at(ring_at + st * 512, w_lane + (size_t)st * 128);
            cp_async_commit();
        }
        for (int it = 0; it < n; it += STAGES) {
#pragma unroll
            for (int st = 0; st < STAGES; st++) {
                cp_async_wait<STAGES - 1>();
                if (it + st < n) {
                    const uint4 v = lds128_at(ring_at + st * 512);
                    acc ^= v.x ^ v.y ^ v.z ^ v.w;
                }
                if (it + st + STAGES < n) cp_async16_cg_at(ring_at + st * 512, w_lane + (size_t)(it + st + STAGES) * 128);
                cp_async_commit();
            }
        }
        cp_async_wait<0>();
    } else {
        uint4 r[STAGES];
#pragma unroll
        for (int st = 0; st < STAGES; st++) r[st] = st < n ? ld_stream_u4(w_lane + (size_t)st * 128) : make_uint4(0, 0, 0, 0);
        for (int it = 0; it < n; it += STAGES) {
#pragma unroll
            for (int st = 0; st < STAGES; st++) {
                acc ^= r[st].x ^ r[st].y ^ r[st].z ^ r[st].w;
                if (it + st + STAGES < n) r[st] = ld_stream_u4(w_lane + (size_t)(it + st + STAGES) * 128);
            }
        }
    }
    pdl_wait();
    if (acc == never) sink[0] = acc;
}

#define RING_READ_ENTRY(NAME, STAGES, MODE)                                                                 \
    extern "C" __global__ void __launch_bounds__(128) NAME(const uint4* __restrict__ src, int k_chunks,      \
                                                           u32* __restrict__ sink, u32 never, const uint4*) { \
        ring_read_body<STAGES, MODE>(src, k_chunks, sink, never);                                           \
    }
RING_READ_ENTRY(bench_ring_read_s4, 4, RING_CP)
RING_READ_ENTRY(bench_ring_read_s8, 8, RING_CP)
RING_READ_ENTRY(bench_ring_read_s16, 16, RING_CP)
RING_READ_ENTRY(bench_reg_read_s4, 4, RING_REG)
RING_READ_ENTRY(bench_reg_read_s8, 8, RING_REG)
// The decode kernel's quad-loop delivery (change 73's next question): 16
// warps, 8 slots per lane, every 4 chunks one wait_group<4> (chunks it..it+3
// landed), their 4 shared loads, then their 4 refills; ACT: also the
// kernel's activation loads (2 x 16 B per lane and chunk, lane (g, t) at
// row g, halves 16t.. of the chunk, from a 128 KiB tile after the rings, as
// the whole-column plan's 8-row tile).
// MMA (change 73's last question): also the kernel's tensor work per quad,
// 4 mma per chunk on the raw code words (A) and activation words (B) in 4
// chains of 4 (the lean-grouped quad loop's shape), their sums folded into
// one fp32 accumulator: MMA = 1 at the end of the quad (as the kernel),
// MMA = 2 one quad later (the fold deferred past the next quad's wait,
// loads and refills).
// WARPS = 14 with PRO (session 20, change 74): the whole-column decode
// plan's block (14 warps, 3.5 tiles) and its prologue: PRO_SCALES, the
// block's scale rows (k_chunks / 2 + 1 rows of 14 x 8 u32, the group-128
// layout, from `scales`, another weight copy) issued before the ring and
// folded per chunk pair; PRO_ACT, after the PDL wait the 8-row activation
// tile (the first 8 x k_chunks x 64 halves of `src`: the same lines for
// every block, as A is) by cp.async.ca; what is there waited with a block
// barrier before the first chunk.
#define PRO_SCALES 1
#define PRO_ACT 2
template <bool ACT, int MMA = 0, int WARPS = 16, int PRO = 0>
__device__ __forceinline__ void ring_quad_body(const uint4* __restrict__ src, int k_chunks, u32* __restrict__ sink,
                                               u32 never, const uint4* __restrict__ scales = nullptr) {
    constexpr int STAGES = 8;
    extern __shared__ uint4 ring_smem[];
    pdl_trigger();
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    int n;
    const uint4* w_lane = ring_lane_start<WARPS>(src, k_chunks, n);
    const u32 ring_at = smem_addr(&ring_smem[(warp * STAGES) * 32 + lane]);
    // Activation tile: 8 rows of min(n, 128) chunks x 64 halves (+ 8 halves of padding per row).
    const int a_stride = 128 * 64 + 8;
    const u32 act_at = smem_addr(&ring_smem[WARPS * STAGES * 32]) + (u32)(((lane >> 2) * a_stride + 16 * (lane & 3)) * 2);
    uint4* s_tile = &ring_smem[WARPS * STAGES * 32 + 8 * a_stride / 8];
    if (PRO & PRO_SCALES) {
        const int row_vecs = WARPS * 2, s_rows = k_chunks / 2 + 1;
        const size_t group_stride = (size_t)gridDim.y * row_vecs;
        for (int v = threadIdx.x; v < s_rows * row_vecs; v += blockDim.x) {
            const int q = v / row_vecs, part = v - q * row_vecs;
            cp_async16_cg_at(smem_addr(s_tile + v), scales + (size_t)q * group_stride + blockIdx.y * row_vecs + part);
        }
        cp_async_commit();
    }
    u32 acc = 0;
    float facc = 0.0f;
    float chain[4][4], prev[4][4];
#pragma unroll
    for (int p = 0; p < 4; p++)
#pragma unroll
        for (int i = 0; i < 4; i++) prev[p][i] = 0.0f;
#pragma unroll
    for (int st = 0; st < STAGES; st++) {
        if (st < n) cp_async16_cg_at(ring_at + st * 512, w_lane + (size_t)st * 128);
        cp_async_commit();
    }
    if (PRO & PRO_ACT) {
        pdl_wait();
        const int vecs = min(n, 128) * 8;
        u16* a_tile = reinterpret_cast<u16*>(&ring_smem[WARPS * STAGES * 32]);
        for (int r = 0; r < 8; r++)
            for (int v = threadIdx.x; v < vecs; v += blockDim.x)
                asm volatile("cp.async.ca.shared.global [%0], [%1], 16;" ::"r"(smem_addr(a_tile + r * a_stride + 8 * v)),
                             "l"(src + (size_t)r * k_chunks * 8 + v));
        cp_async_commit();
        cp_async_wait<0>();
        __syncthreads();
    } else if (PRO & PRO_SCALES) {
        cp_async_wait<STAGES>();  // the scale rows: the oldest group
        __syncthreads();
    }
    for (int it = 0; it + 4 <= n; it += 4) {
        const int slot0 = it & (STAGES - 1);
        cp_async_wait<STAGES - 4>();
        uint4 v[4];
#pragma unroll
        for (int q = 0; q < 4; q++) v[q] = lds128_at(ring_at + (slot0 + q) * 512);
        uint4 av[4][2];
        if (ACT) {
#pragma unroll
            for (int q = 0; q < 4; q++) {
                const u32 at = act_at + (u32)(((it + q) & 127) * 128);
                av[q][0] = lds128_at(at);
                av[q][1] = lds128_at(at + 16);
            }
        }
#pragma unroll
        for (int q = 0; q < 4; q++) {
            if (it + q + STAGES < n) cp_async16_cg_at(ring_at + (slot0 + q) * 512, w_lane + (size_t)(it + q + STAGES) * 128);
            cp_async_commit();
        }
        if (MMA == 0) {
#pragma unroll
            for (int q = 0; q < 4; q++) {
                acc ^= v[q].x ^ v[q].y ^ v[q].z ^ v[q].w;
                if (ACT) acc ^= av[q][0].x ^ av[q][0].y ^ av[q][0].z ^ av[q][0].w ^ av[q][1].x ^ av[q][1].y ^ av[q][1].z ^ av[q][1].w;
            }
        } else {
            // Chains: (chunk pair p = q >> 1, k16 parity dj); 4 mma each.
#pragma unroll
            for (int c = 0; c < 4; c++)
#pragma unroll
                for (int i = 0; i < 4; i++) chain[c][i] = 0.0f;
#pragma unroll
            for (int j = 0; j < 4; j++)
#pragma unroll
                for (int q = 0; q < 4; q++) {
                    const u32 word = j == 0 ? v[q].x : j == 1 ? v[q].y : j == 2 ? v[q].z : v[q].w;
                    const u32 wa[4] = {word, word ^ 0x11111111u, word ^ 0x22222222u, word ^ 0x44444444u};
                    const uint4 a = av[q][j >> 1];
                    const u32 bb[2] = {(j & 1) ? a.z : a.x, (j & 1) ? a.w : a.y};
                    mma_16816(chain[(q >> 1) * 2 + (j & 1)], wa, bb);
                }
            if (MMA == 1) {
                float sc0 = 1.0f, sc1 = 1.0f;
                if (PRO & PRO_SCALES) {
                    // The kernel's fold: each chunk pair's chains times the
                    // f16 scales of the lane's two columns.
                    const u32* s_words = reinterpret_cast<const u32*>(s_tile);
                    const u32 w0 = s_words[(it >> 1) * WARPS * 8 + warp * 8 + (lane >> 2)];
                    const u32 w1 = s_words[((it >> 1) + 1) * WARPS * 8 + warp * 8 + (lane >> 2)];
                    sc0 = f16_lo_to_f32(w0) + f16_hi_to_f32(w0);
                    sc1 = f16_lo_to_f32(w1) + f16_hi_to_f32(w1);
                }
#pragma unroll
                for (int c = 0; c < 4; c++)
#pragma unroll
                    for (int i = 0; i < 4; i++) facc = fmaf(chain[c][i], c < 2 ? sc0 : sc1, facc);
            } else {
#pragma unroll
                for (int c = 0; c < 4; c++)
#pragma unroll
                    for (int i = 0; i < 4; i++) {
                        facc += prev[c][i];
                        prev[c][i] = chain[c][i];
                    }
            }
        }
    }
#pragma unroll
    for (int c = 0; c < 4; c++)
#pragma unroll
        for (int i = 0; i < 4; i++) facc += prev[c][i];
    acc ^= __float_as_uint(facc);
    cp_async_wait<0>();
    pdl_wait();
    if (acc == never) sink[0] = acc;
}

extern "C" __global__ void __launch_bounds__(512) bench_ring_quad_w16(const uint4* __restrict__ src, int k_chunks,
                                                                     u32* __restrict__ sink, u32 never, const uint4*) {
    ring_quad_body<false>(src, k_chunks, sink, never);
}
extern "C" __global__ void __launch_bounds__(512) bench_ring_quad_mma_w16(const uint4* __restrict__ src, int k_chunks,
                                                                         u32* __restrict__ sink, u32 never, const uint4*) {
    ring_quad_body<true, 1>(src, k_chunks, sink, never);
}
extern "C" __global__ void __launch_bounds__(512) bench_ring_quad_mma_late_w16(const uint4* __restrict__ src,
                                                                              int k_chunks, u32* __restrict__ sink,
                                                                              u32 never, const uint4*) {
    ring_quad_body<true, 2>(src, k_chunks, sink, never);
}
extern "C" __global__ void __launch_bounds__(512) bench_ring_quad_act_w16(const uint4* __restrict__ src, int k_chunks,
                                                                         u32* __restrict__ sink, u32 never, const uint4*) {
    ring_quad_body<true>(src, k_chunks, sink, never);
}

extern "C" __global__ void __launch_bounds__(512) bench_ring_read_w16_s8(const uint4* __restrict__ src, int k_chunks,
                                                                        u32* __restrict__ sink, u32 never, const uint4*) {
    ring_read_body<8, RING_CP, 16>(src, k_chunks, sink, never);
}

// The whole-column decode plan's block shape (14 warps) with the quad loop,
// activation loads and mma, without (mma_w14) and with (mma_pro_w14) the
// kernel's prologue and scale fold (change 74).
extern "C" __global__ void __launch_bounds__(448) bench_ring_quad_mma_w14(const uint4* __restrict__ src, int k_chunks,
                                                                         u32* __restrict__ sink, u32 never,
                                                                         const uint4* __restrict__ scales) {
    ring_quad_body<true, 1, 14, 0>(src, k_chunks, sink, never, scales);
}
extern "C" __global__ void __launch_bounds__(448) bench_ring_quad_mma_pro_w14(const uint4* __restrict__ src,
                                                                             int k_chunks, u32* __restrict__ sink,
                                                                             u32 never,
                                                                             const uint4* __restrict__ scales) {
    ring_quad_body<true, 1, 14, PRO_SCALES | PRO_ACT>(src, k_chunks, sink, never, scales);
}
extern "C" __global__ void __launch_bounds__(448) bench_ring_quad_mma_scl_w14(const uint4* __restrict__ src,
                                                                             int k_chunks, u32* __restrict__ sink,
                                                                             u32 never,
                                                                             const uint4* __restrict__ scales) {
    ring_quad_body<true, 1, 14, PRO_SCALES>(src, k_chunks, sink, never, scales);
}
extern "C" __global__ void __launch_bounds__(448) bench_ring_quad_mma_act_w14(const uint4* __restrict__ src,
                                                                             int k_chunks, u32* __restrict__ sink,
                                                                             u32 never,
                                                                             const uint4* __restrict__ scales) {
    ring_quad_body<true, 1, 14, PRO_ACT>(src, k_chunks, sink, never, scales);
}
