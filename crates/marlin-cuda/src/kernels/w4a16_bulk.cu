// W4A16 decode GEMM for M <= 8 on Hopper (sm_90): the weight stream is
// fetched by the TMA engine's 1-D bulk copies instead of per-lane cp.async.
//
// C (M, N) f16 = A (M, K) f16 . W^T with W in the packed INT4 layout of
// src/int4/pack.rs: (n_pad/64 tiles, k_chunks, 4 n16 blocks, 32 lanes) x
// 16 B, so one 64-column tile's K range [c0, c1) is ONE contiguous run of
// (c1 - c0) * 2048 bytes. A block owns one 64-column tile and one K split:
// - one producer warp (lane 0) streams the run into a ring of STAGES stages
//   of CPS chunks (CPS * 2048 B) with `cp.async.bulk ... complete_tx`, each
//   stage's "full" mbarrier counting the bytes; the ring is refilled when
//   the 4 * KW consumer warps have arrived on the stage's "empty" mbarrier.
//   Small shapes (<= STAGES * CPS chunks per block) issue the whole split in
//   the prologue: up to 64 KB in flight per block from a single thread,
//   where the cp.async decode kernel keeps 16 B per lane and stage in flight.
// - consumer warp (nb, kw) takes n16 block nb of the tile and chunks
//   [kw * CPS/KW, (kw + 1) * CPS/KW) of every stage; it computes
//   D (16 columns x 8 tokens) = W . A^T with mma.sync exactly as
//   w4a16_dec_* (the dequantised code word is the m16k16 A fragment, the
//   lane's two activation words of token g the k16n8 B fragment), weights
//   dequantised WITHOUT their scale (symmetric codes, groups >= 64: (u - 8)
//   is exact in f16) and each group's fp32 sum multiplied by its fp32 scale.
// - the split's activations (min(M, 8) rows) and scale rows are copied to
//   shared memory once (cp.async) while the first bulk copies fly.
// - the KW warps of a column block add their sums in shared memory in kw
//   order; splits > 1 use the fp32 partials and the atomic-ticket last-block
//   reduction of w4a16_gemm.cu (split order): bit-deterministic.
//
// Hopper-only PTX (mbarrier expect_tx, cp.async.bulk) is guarded by
// __CUDA_ARCH__ >= 900: compiled for sm_80 the kernel body is empty and the
// host (src/int4/bulk.rs) refuses the path below compute capability 9.0.
//
// Shared helpers (hfma2, mma_16816, mbar_wait, bulk_copy, ...) come from
// marlin_common.cuh, an in-memory NVRTC header (no search path).

#include "marlin_common.cuh"

// Keep in sync with src/int4/bulk.rs (BULK_STAGES, BULK_CHUNKS_PER_STAGE,
// BULK_K_WARPS).
#define BULK_STAGES 8
#define BULK_CPS 4
#define BULK_KW 2
#define BULK_CONSUMERS (4 * BULK_KW)
#define BULK_THREADS (32 * (BULK_CONSUMERS + 1))

#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900

// 16-byte cp.async global -> shared; bytes beyond src_bytes are zeroed.
__device__ __forceinline__ void bulk_cp_async16(void* dst, const void* src, int src_bytes) {
    asm volatile("cp.async.ca.shared.global [%0], [%1], 16, %2;" ::"r"(smem_addr(dst)), "l"(src), "r"(src_bytes)
                 : "memory");
}

#endif  // __CUDA_ARCH__ >= 900

// Grid: x = 64-column tile, y = K split. Block: BULK_THREADS. Dynamic shared
// memory: the ring (BULK_STAGES * BULK_CPS * 2048 bytes), the scale rows and
// the activation tile (`bulk_smem_bytes` in src/int4/bulk.rs).
// S: (groups, n_pad/16, 8) f16x2 scales (symmetric, groups of 32*group_k32,
// group_k32 even). partials (splits, M, n_pad) fp32, tickets (n_pad/64),
// zero between launches.
extern "C" __global__ void __launch_bounds__(BULK_THREADS) w4a16_bulk_m8(
    const u16* __restrict__ A, const uint4* __restrict__ W, const u32* __restrict__ S, u16* __restrict__ C,
    float* __restrict__ partials, u32* __restrict__ tickets, int M, int N, int K, int n_pad, int k_chunks,
    int group_k32, int splits) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    extern __shared__ __align__(128) unsigned char bulk_ring[];
    __shared__ __align__(8) u64 full_bar[BULK_STAGES];
    __shared__ __align__(8) u64 empty_bar[BULK_STAGES];
    __shared__ float red[BULK_KW - 1][4][4][32];
    __shared__ u32 is_last;

    const int lane = threadIdx.x & 31;
    const int warp = threadIdx.x >> 5;
    const int g = lane >> 2;
    const int t = lane & 3;
    const int tile = blockIdx.x;
    const int split = blockIdx.y;
    const int c_begin = (int)(((long long)split * k_chunks) / splits);
    const int c_end = (int)(((long long)(split + 1) * k_chunks) / splits);
    const int n_chunks = c_end - c_begin;
    const int n_stages = (n_chunks + BULK_CPS - 1) / BULK_CPS;
    const u32 ring = smem_addr(bulk_ring);
    const u32 full0 = smem_addr(&full_bar[0]);
    const u32 empty0 = smem_addr(&empty_bar[0]);

    if (threadIdx.x == 0) {
        for (int s = 0; s < BULK_STAGES; s++) {
            mbar_init(full0 + 8 * s, 1);
            mbar_init(empty0 + 8 * s, BULK_CONSUMERS);
        }
        // Make the initialised barriers visible to the async proxy (the
        // bulk copies' complete_tx) before any copy is issued.
        asm volatile("fence.mbarrier_init.release.cluster;" ::: "memory");
        asm volatile("fence.proxy.async.shared::cta;" ::: "memory");
    }
    __syncthreads();

    float acc[4] = {0.0f, 0.0f, 0.0f, 0.0f};
    const int nb_local = warp & 3;
    const int kw = warp >> 2;
    const int nb = tile * 4 + nb_local;

    if (warp == BULK_CONSUMERS) {
        // Producer: one thread streams the split's contiguous run.
        if (lane == 0) {
            const unsigned char* src =
                reinterpret_cast<const unsigned char*>(W) + ((size_t)tile * k_chunks + c_begin) * 2048;
            for (int i = 0; i < n_stages; i++) {
                const int slot = i % BULK_STAGES;
                if (i >= BULK_STAGES) mbar_wait(empty0 + 8 * slot, ((i / BULK_STAGES) + 1) & 1);
                const int chunks = min(BULK_CPS, n_chunks - i * BULK_CPS);
                const u32 bytes = (u32)chunks * 2048u;
                mbar_arrive_expect_tx(full0 + 8 * slot, bytes);
                bulk_copy(ring + slot * (BULK_CPS * 2048), src + (size_t)i * BULK_CPS * 2048, bytes, full0 + 8 * slot);
            }
        }
    } else {
        // Consumer warp (nb_local, kw): chunks kw*PER .. kw*PER + PER - 1 of
        // every stage.
        constexpr int PER = BULK_CPS / BULK_KW;
        const int ctid = threadIdx.x;  // 0 .. 32 * BULK_CONSUMERS - 1
        const int cps = (k_chunks + splits - 1) / splits;
        const int a_stride = cps * 64 + 8;  // halves (+8: rows 16 B apart mod 128)
        const int group_chunks = group_k32 >> 1;
        const int row_first = c_begin / group_chunks;
        const int row_last = (c_end - 1) / group_chunks;
        // Shared tiles after the ring (keep in sync with `bulk_smem_bytes`
        // in src/int4/bulk.rs): scale rows x 32 u32 (4 n16 blocks x 8
        // column pairs), then the split's activations (min(M, 8) rows of
        // a_stride halves) and 64 zero halves read by lanes of tokens >= M.
        u32* s_tile = reinterpret_cast<u32*>(bulk_ring + BULK_STAGES * BULK_CPS * 2048);
        u16* a_tile = reinterpret_cast<u16*>(s_tile + ((2 * cps - 1) / group_k32 + 2) * 32);
        const int rows_here = min(M, 8);
        u16* a_zero = a_tile + rows_here * a_stride;
        // Activations and scale rows of the split, copied once with cp.async
        // while the producer's bulk copies fly (the per-stage loop then
        // touches shared memory only: a global load per stage put a DRAM /
        // L2 round trip on every warp's critical path, docs/CUDA.md change 24).
        {
            const int k0 = c_begin * 64;
            const int vecs = n_chunks * 8;  // 16-byte vectors per row
            if (ctid < 8) reinterpret_cast<uint4*>(a_zero)[ctid] = make_uint4(0, 0, 0, 0);
            if ((K & 7) == 0) {
                for (int i = ctid; i < rows_here * vecs; i += 32 * BULK_CONSUMERS) {
                    const int r = i / vecs, v = i - r * vecs;
                    const bool in = k0 + 8 * v < K;  // K % 8 == 0: all 8 in or out
                    bulk_cp_async16(a_tile + r * a_stride + 8 * v,
                                    in ? (const void*)(A + (size_t)r * K + k0 + 8 * v) : (const void*)A, in ? 16 : 0);
                }
            } else {
                for (int i = ctid; i < rows_here * vecs * 8; i += 32 * BULK_CONSUMERS) {
                    const int r = i / (vecs * 8), c = i - r * vecs * 8;
                    a_tile[r * a_stride + c] = k0 + c < K ? A[(size_t)r * K + k0 + c] : (u16)0;
                }
            }
            const size_t group_stride = (size_t)(n_pad >> 4) * 8;
            for (int i = ctid; i < (row_last - row_first + 1) * 8; i += 32 * BULK_CONSUMERS) {
                const int q = i >> 3, part = i & 7;
                bulk_cp_async16(s_tile + q * 32 + part * 4,
                                S + (size_t)(row_first + q) * group_stride + (size_t)tile * 32 + part * 4, 16);
            }
            asm volatile("cp.async.commit_group;\ncp.async.wait_group 0;" ::: "memory");
            asm volatile("bar.sync 1, %0;" ::"n"(32 * BULK_CONSUMERS) : "memory");
        }
        const u16* a_lane = g < rows_here ? a_tile + g * a_stride + 16 * t : a_zero + 16 * t;
        const int a_step = g < rows_here ? 64 : 0;
        const u32* s_lane = s_tile + nb_local * 8 + g;
        float gacc[4] = {0.0f, 0.0f, 0.0f, 0.0f};
        int group_end = -1;  // first chunk past the current scale group
        u32 scale = 0;
        const u32 lane_off = (u32)(nb_local * 512 + lane * 16);
        for (int i = 0; i < n_stages; i++) {
            const int slot = i % BULK_STAGES;
            const int j0 = i * BULK_CPS + kw * PER;  // chunk offset in the split
            mbar_wait(full0 + 8 * slot, (i / BULK_STAGES) & 1);
#pragma unroll
            for (int j = 0; j < PER; j++) {
                const int c = c_begin + j0 + j;
                if (c < c_end) {
                    if (c >= group_end) {
                        // Entering a new scale group: fold the finished one
                        // with its fp32 scale.
                        if (group_end >= 0) {
                            const float sl = f16_lo_to_f32(scale), sh = f16_hi_to_f32(scale);
#pragma unroll
                            for (int e = 0; e < 4; e++) {
                                acc[e] = fmaf(gacc[e], e < 2 ? sl : sh, acc[e]);
                                gacc[e] = 0.0f;
                            }
                        }
                        const int grp = c / group_chunks;
                        group_end = (grp + 1) * group_chunks;
                        scale = s_lane[(grp - row_first) * 32];
                    }
                    uint4 w;
                    const u32 at = ring + slot * (BULK_CPS * 2048) + (kw * PER + j) * 2048 + lane_off;
                    asm volatile("ld.shared.v4.u32 {%0, %1, %2, %3}, [%4];"
                                 : "=r"(w.x), "=r"(w.y), "=r"(w.z), "=r"(w.w)
                                 : "r"(at)
                                 : "memory");
                    const u16* ap = a_lane + (j0 + j) * a_step;
                    const uint4 v0 = *reinterpret_cast<const uint4*>(ap);
                    const uint4 v1 = *reinterpret_cast<const uint4*>(ap + 8);
                    const u32 words[4] = {w.x, w.y, w.z, w.w};
                    const u32 a8[8] = {v0.x, v0.y, v0.z, v0.w, v1.x, v1.y, v1.z, v1.w};
#pragma unroll
                    for (int q = 0; q < 4; q++) {
                        u32 wa[4];
                        dequant_word_unscaled(words[q], wa);
                        const u32 bb[2] = {a8[2 * q], a8[2 * q + 1]};
                        mma_16816(gacc, wa, bb);
                    }
                }
            }
            // Stage consumed (its words are in registers): release the slot.
            __syncwarp();
            if (lane == 0) mbar_arrive(empty0 + 8 * slot);
        }
        if (group_end >= 0) {
            const float sl = f16_lo_to_f32(scale), sh = f16_hi_to_f32(scale);
#pragma unroll
            for (int e = 0; e < 4; e++) acc[e] = fmaf(gacc[e], e < 2 ? sl : sh, acc[e]);
        }
        if (kw > 0) {
#pragma unroll
            for (int e = 0; e < 4; e++) red[kw - 1][nb_local][e][lane] = acc[e];
        }
    }
    __syncthreads();
    const bool writer = warp < 4;  // kw == 0
    if (writer) {
#pragma unroll
        for (int o = 0; o < BULK_KW - 1; o++)
#pragma unroll
            for (int e = 0; e < 4; e++) acc[e] += red[o][nb_local][e][lane];
    }

    // Accumulator e: column nb*16 + g + 8*(e>>1), token 2t + (e&1).
    if (splits == 1) {
        if (!writer) return;
#pragma unroll
        for (int e = 0; e < 4; e++) {
            const int row = 2 * t + (e & 1);
            const int col = nb * 16 + g + 8 * (e >> 1);
            if (row < M && col < N) C[(size_t)row * N + col] = f32_to_f16(acc[e]);
        }
        return;
    }
    if (writer) {
#pragma unroll
        for (int e = 0; e < 4; e++) {
            const int row = 2 * t + (e & 1);
            const int col = nb * 16 + g + 8 * (e >> 1);
            if (row < M) partials[((size_t)split * M + row) * n_pad + col] = acc[e];
        }
    }
    // One acq_rel ticket per block (atom_add_acq_rel_gpu, marlin_common.cuh).
    __syncthreads();
    if (threadIdx.x == 0) {
        const u32 prev = atom_add_acq_rel_gpu(&tickets[tile]);
        is_last = (prev == (u32)(splits - 1)) ? 1u : 0u;
    }
    __syncthreads();
    if (!is_last || !writer) return;
#pragma unroll
    for (int e = 0; e < 4; e++) {
        const int row = 2 * t + (e & 1);
        const int col = nb * 16 + g + 8 * (e >> 1);
        if (row < M) {
            const float sum = split_k_sum(partials, row, col, M, n_pad, splits);
            if (col < N) C[(size_t)row * N + col] = f32_to_f16(sum);
        }
    }
    if (threadIdx.x == 0) tickets[tile] = 0u;  // ready for the next launch
#endif
}
