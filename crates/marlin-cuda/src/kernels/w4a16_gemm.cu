// W4A16 GEMM: C (M, N) f16 = A (M, K) f16 . W^T, W (N, K) 4-bit codes with
// one f16 scale (and optional zero) per group of K, fp32 accumulation.
// Compiled a second time with MARLIN_ACT_BF16 (src/act.rs): A and C bf16,
// same kernels and names (the dequantizer becomes w4_dequant_bf16); the
// marlin_common.cuh `act` helpers are the difference. Not with
// W4_FUSED_ENTRIES: the decode-step fusions are f16 only.
//
// Marlin's ideas, in a shared-memory-free form:
// - Weights are repacked once on the host (src/int4/pack.rs) so that every
//   lane's mma.sync B fragments for one 64-wide chunk of K sit in one 16-byte
//   word: one coalesced 512-byte cp.async per warp per chunk, STAGES chunks
//   in flight in a per-lane shared-memory ring (no block barrier).
// - Dequantisation in registers with lop3 + the 0x6400 (1024.0 f16) magic
//   number: 4 bit codes become f16 with 2 ops per pair, no int->float converts.
// - K is permuted inside each 64-chunk identically for A and W (any
//   permutation of the reduction index leaves the sum unchanged) so that each
//   lane copies its A fragments as two contiguous 16-byte cp.async per row.
// - Split-K over blocks so that all SMs stream weights even at M = 1; the
//   last block of each tile (atomic ticket) sums the fp32 partials in a fixed
//   order (deterministic) and writes f16.
//
// Every f16 value is carried as raw bits (unsigned short / unsigned int).
// Device helpers shared with the other kernels (f16 conversions, lop3 /
// f16x2 arithmetic, the INT4 dequantisers, mma, cp.async waits) come from
// the in-memory header (src/nvrtc_cache.rs).

#include "marlin_common.cuh"

// Dequantisation timing probes (MARLIN_INT4_DEC_PROBE=no-offset | raw;
// src/int4/gemm.rs compiles this source a third time as its own module with
// W4_DQ_PROBE defined; session 19): every kernel of that module computes
// wrong products, so only a benchmark's timing of it means anything.
// 1 (no-offset): the code words' lop3 with the 1024 magic number and no
//   offset arithmetic (5 of the 9 instructions per word), the cost of a
//   dequantisation whose (1024 + 8) offset were removed elsewhere;
// 2 (raw): the code word itself as all four fragment registers (none).
// Independent of it (session 20; each defined to 1 where wanted):
// W4_PROBE_NO_ACT: the decode and stream-K kernels neither copy their
//   activation tile nor wait for it (the tile is whatever shared memory
//   held: the cost of the prologue's activation copy);
// W4_PROBE_NO_SCALE: the decode kernels' quad loops fold every chunk (pair)
//   with 1.0 (no scale loads, no group bookkeeping);
// W4_PROBE_NO_STORE: the decode kernels' split-free epilogue stores only a
//   sum that is exactly 1e-30 (the sums stay live, the stores are gone);
// W4_PROBE_NO_SCALE_TILE: the decode kernels do not copy their scale (and
//   zero-point) rows in the prologue (the loops read whatever shared
//   memory held).
#if defined(W4_DQ_PROBE)
__device__ __forceinline__ void w4_probe_dequant_unscaled(u32 q, u32 wa[4]) {
#if W4_DQ_PROBE == 1
    const u32 MAGIC = 0x64006400u;
    const u32 q8 = q >> 8;
    wa[0] = lop3_and_or(q, 0x000F000Fu, MAGIC);
    wa[2] = lop3_and_or(q, 0x00F000F0u, MAGIC);
    wa[1] = lop3_and_or(q8, 0x000F000Fu, MAGIC);
    wa[3] = lop3_and_or(q8, 0x00F000F0u, MAGIC);
#else
    wa[0] = q;
    wa[1] = q;
    wa[2] = q;
    wa[3] = q;
#endif
}
#define dequant_word_unscaled(q, wa) w4_probe_dequant_unscaled(q, wa)
#endif

#if defined(MARLIN_ACT_BF16) && defined(W4_FUSED_ENTRIES)
#error "the fused decode-step entries (W4_FUSED_ENTRIES) have f16 prologues and epilogues only"
#endif

// Programmatic dependent launch (src/ops/launch.rs; added by the decode-step
// work, docs/CUDA.md change 25): the decode step launches these kernels with
// the PDL attribute, so every block waits here for the previous kernel (the
// producer of A) to complete before touching memory, then lets the next
// kernel's grid launch. No-ops for a plain launch and below sm_90.
__device__ __forceinline__ void w4_pdl_enter() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.wait;" ::: "memory");
    asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
#endif
}

// 16-byte async copy global -> shared; bytes beyond `src_bytes` are zeroed
// (src_bytes = 0: pure zero fill, nothing is read).
__device__ __forceinline__ void cp_async16_cg(void* dst, const void* src, int src_bytes) {
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;" ::"r"(smem_addr(dst)), "l"(src), "r"(src_bytes));
}
__device__ __forceinline__ void cp_async16_ca(void* dst, const void* src, int src_bytes) {
    asm volatile("cp.async.ca.shared.global [%0], [%1], 16, %2;" ::"r"(smem_addr(dst)), "l"(src), "r"(src_bytes));
}
__device__ __forceinline__ void cp_async4(void* dst, const void* src) {
    asm volatile("cp.async.ca.shared.global [%0], [%1], 4;" ::"r"(smem_addr(dst)), "l"(src));
}

// Per-warp, per-lane-private ring of STAGES chunk slots in shared memory:
// no thread reads what another thread copied, so cp.async.wait_group alone
// orders each lane's copies before its reads (no block barrier in the loop).
// cp.async groups, unlike register prefetch, let the wait target exactly the
// oldest chunk (a register-prefetched load shares one of six scoreboards with
// the newest loads, which made every iteration wait a full DRAM round trip).
// RH: row halves of each m16 tile that can hold rows < M: 2, or 1 when
// M <= 8 (rows g+8 are then all zero: no copies, half the ring, more warps).
template <int MT, int RH, int STAGES>
struct WarpRing {
    uint4 w[STAGES][32];              // packed codes
    uint4 a[STAGES][MT * RH * 2][32]; // A: [(mt*RH + row_half)*2 + vec]
    u32 s[STAGES][32];                // f16x2 scales
    u32 z[STAGES][32];                // f16x2 -zero*scale
};

// a_row[mt][r]: this lane's A row pointer advanced to k = 16t, or null when
// the row is >= M (its ring slots were zeroed once and are never copied).
template <int MT, int RH, int STAGES>
__device__ __forceinline__ void issue_chunk(WarpRing<MT, RH, STAGES>& ring, int slot, int chunk, int group, int lane,
                                            int t, const uint4* __restrict__ wp, const u32* __restrict__ sp,
                                            const u32* __restrict__ zp, size_t group_stride,
                                            const u16* const (&a_row)[MT][RH], int K, bool k_aligned) {
    // Codes of one tile are (k_chunks, 4 warps, 32 lanes): 128 x 16 B per chunk.
    cp_async16_cg(&ring.w[slot][lane], wp + (size_t)chunk * 128, 16);
    const size_t gi = (size_t)group * group_stride;
    cp_async4(&ring.s[slot][lane], sp + gi);
    if (zp) cp_async4(&ring.z[slot][lane], zp + gi);
    const int kc = chunk * 64;
    const bool full = k_aligned && kc + 64 <= K;   // warp-uniform
#pragma unroll
    for (int mt = 0; mt < MT; mt++) {
#pragma unroll
        for (int r = 0; r < RH; r++) {
            const u16* row = a_row[mt][r];
            if (!row) continue;
            uint4* dst = &ring.a[slot][(mt * RH + r) * 2][0];
            if (full) {
                cp_async16_ca(dst + lane, row + kc, 16);
                cp_async16_ca(dst + 32 + lane, row + kc + 8, 16);
            } else if (k_aligned) {
                // Last chunk: vectors past K are zero-filled (K % 8 == 0, so
                // a vector is all in or all out).
                const int k0 = kc + 16 * t;
#pragma unroll
                for (int v = 0; v < 2; v++) {
                    const bool in = k0 + 8 * v < K;
                    cp_async16_ca(dst + 32 * v + lane, in ? (const void*)(row + kc + 8 * v) : (const void*)row,
                                  in ? 16 : 0);
                }
            } else {
                // Rows not 16-byte aligned (K % 8 != 0): synchronous loads.
                const int k0 = kc + 16 * t;
                u32 words[8];
#pragma unroll
                for (int i = 0; i < 8; i++) {
                    const int k = k0 + 2 * i;
                    u32 lo = k < K ? row[kc + 2 * i] : 0u;
                    u32 hi = k + 1 < K ? row[kc + 2 * i + 1] : 0u;
                    words[i] = lo | (hi << 16);
                }
                dst[lane] = make_uint4(words[0], words[1], words[2], words[3]);
                dst[32 + lane] = make_uint4(words[4], words[5], words[6], words[7]);
            }
        }
    }
}

// Grid: x = m block (16*MT rows), y = n tile (64 columns, one n16 per warp),
// z = K split. Block: 128 threads; dynamic shared memory 4 WarpRings.
template <int MT, int RH, int STAGES>
__device__ __forceinline__ void w4a16_body(
    const u16* __restrict__ A,          // (M, K) f16, row-major
    const uint4* __restrict__ W,        // (n_pad/16, k_chunks, 32 lanes) x 16 B
    const u32* __restrict__ S,          // (groups, n_pad/16, 8) f16x2 scales
    const u32* __restrict__ Z,          // same grid, f16x2 (-zero*scale); null: -8*scale
    u16* __restrict__ C,                // (M, N) f16, row-major
    float* __restrict__ partials,       // (splits, M, n_pad) fp32
    u32* __restrict__ tickets,          // (n_pad/64 * m_blocks), zero between launches
    int M, int N, int K, int n_pad, int k_chunks, int group_k32, int splits) {
    extern __shared__ uint4 dyn_smem[];
    const int lane = threadIdx.x & 31;
    const int warp = threadIdx.x >> 5;
    const int g = lane >> 2;
    const int t = lane & 3;
    const int nb = blockIdx.y * 4 + warp;   // n16 block of this warp
    const int nb_count = n_pad >> 4;
    const int m_base = blockIdx.x * 16 * MT;
    const int split = blockIdx.z;
    const int c_begin = (int)(((long long)split * k_chunks) / splits);
    const int c_end = (int)(((long long)(split + 1) * k_chunks) / splits);
    const int n_my = c_end - c_begin;
    const bool k_aligned = (K & 7) == 0;
    WarpRing<MT, RH, STAGES>& ring = reinterpret_cast<WarpRing<MT, RH, STAGES>*>(dyn_smem)[warp];

    const uint4* wp = W + ((size_t)blockIdx.y * k_chunks * 4 + warp) * 32 + lane;
    // Scale group of (chunk c, lane) = (2c + (t >> 1)) / group_k32 (groups of
    // 32 * group_k32 along K): groups >= 64 step one scale row every
    // group_chunks chunks; groups of 32 two rows per chunk, from row t >> 1.
    const int group_chunks = group_k32 >= 2 ? group_k32 >> 1 : 1;
    const size_t lane_row = group_k32 >= 2 ? 0 : (size_t)(t >> 1) * nb_count * 8;
    const u32* sp = S + (size_t)nb * 8 + g + lane_row;
    const u32* zp = Z ? Z + (size_t)nb * 8 + g + lane_row : nullptr;
    const size_t group_stride = (size_t)nb_count * 8 * (group_k32 >= 2 ? 1 : 2);

    // Two accumulator sets (even / odd k16 step) halve the chain of dependent
    // mma.sync per iteration (ncu: the top stall was a fixed-latency
    // dependency); summed once after the loop.
    float acc[MT][2][4];
    float acc_odd[MT][2][4];
#pragma unroll
    for (int mt = 0; mt < MT; mt++)
#pragma unroll
        for (int h = 0; h < 2; h++)
#pragma unroll
            for (int i = 0; i < 4; i++) {
                acc[mt][h][i] = 0.0f;
                acc_odd[mt][h][i] = 0.0f;
            }

    const u16* a_row[MT][RH];
#pragma unroll
    for (int mt = 0; mt < MT; mt++)
#pragma unroll
        for (int r = 0; r < RH; r++) {
            const int row = m_base + mt * 16 + r * 8 + g;
            a_row[mt][r] = row < M ? A + (size_t)row * K + 16 * t : nullptr;
            if (row >= M) {
#pragma unroll
                for (int st = 0; st < STAGES; st++) {
                    ring.a[st][(mt * RH + r) * 2][lane] = make_uint4(0, 0, 0, 0);
                    ring.a[st][(mt * RH + r) * 2 + 1][lane] = make_uint4(0, 0, 0, 0);
                }
            }
        }

    // Scale group of the next chunk to issue, tracked incrementally (no
    // integer division in the loop).
    int issue_group = c_begin / group_chunks;
    int issue_rem = c_begin - issue_group * group_chunks;
#pragma unroll
    for (int st = 0; st < STAGES; st++) {
        if (st < n_my) {
            issue_chunk<MT, RH, STAGES>(ring, st, c_begin + st, issue_group, lane, t, wp, sp, zp, group_stride, a_row,
                                    K, k_aligned);
            if (++issue_rem == group_chunks) {
                issue_rem = 0;
                issue_group++;
            }
        }
        cp_async_commit();
    }

#pragma unroll 2
    for (int it = 0; it < n_my; it++) {
        const int slot = it % STAGES;
        cp_async_wait<STAGES - 1>();
        const uint4 w = ring.w[slot][lane];
        const u32 s = scale2_to_act2(ring.s[slot][lane]);
        const u32 s0 = dup_lo(s);
        const u32 s1 = dup_hi(s);
        u32 z0, z1;
        if (zp) {
            const u32 zs = scale2_to_act2(ring.z[slot][lane]);
            z0 = dup_lo(zs);
            z1 = dup_hi(zs);
        } else {
            z0 = act2_mul(s0, ACT2_NEG8);   // -8 * scale, exact
            z1 = act2_mul(s1, ACT2_NEG8);
        }
        u32 a_words[MT][2][8];
#pragma unroll
        for (int mt = 0; mt < MT; mt++)
#pragma unroll
            for (int r = 0; r < 2; r++) {
                if (r >= RH) {
#pragma unroll
                    for (int e = 0; e < 8; e++) a_words[mt][r][e] = 0u;
                    continue;
                }
                const uint4 v0 = ring.a[slot][(mt * RH + r) * 2][lane];
                const uint4 v1 = ring.a[slot][(mt * RH + r) * 2 + 1][lane];
                a_words[mt][r][0] = v0.x; a_words[mt][r][1] = v0.y; a_words[mt][r][2] = v0.z; a_words[mt][r][3] = v0.w;
                a_words[mt][r][4] = v1.x; a_words[mt][r][5] = v1.y; a_words[mt][r][6] = v1.z; a_words[mt][r][7] = v1.w;
            }
        const u32 words[4] = {w.x, w.y, w.z, w.w};
#pragma unroll
        for (int j = 0; j < 4; j++) {
            u32 b[2][2];
            dequant_word(words[j], s0, s1, z0, z1, b);
#pragma unroll
            for (int mt = 0; mt < MT; mt++) {
                const u32 a[4] = {a_words[mt][0][2 * j], a_words[mt][1][2 * j], a_words[mt][0][2 * j + 1],
                                  a_words[mt][1][2 * j + 1]};
                if (j & 1) {
                    mma_16816(acc_odd[mt][0], a, b[0]);
                    mma_16816(acc_odd[mt][1], a, b[1]);
                } else {
                    mma_16816(acc[mt][0], a, b[0]);
                    mma_16816(acc[mt][1], a, b[1]);
                }
            }
        }
        // The slot's values are in registers and consumed by the mma above:
        // refill it with chunk it + STAGES.
        if (it + STAGES < n_my) {
            issue_chunk<MT, RH, STAGES>(ring, slot, c_begin + it + STAGES, issue_group, lane, t, wp, sp, zp,
                                    group_stride, a_row, K, k_aligned);
            if (++issue_rem == group_chunks) {
                issue_rem = 0;
                issue_group++;
            }
        }
        cp_async_commit();
    }
    cp_async_wait<0>();
#pragma unroll
    for (int mt = 0; mt < MT; mt++)
#pragma unroll
        for (int h = 0; h < 2; h++)
#pragma unroll
            for (int i = 0; i < 4; i++) acc[mt][h][i] += acc_odd[mt][h][i];

    // Accumulator element (mt, h, i): row m_base + mt*16 + g + 8*(i>>1),
    // column nb*16 + h*8 + 2t + (i&1).
    if (splits == 1) {
#pragma unroll
        for (int mt = 0; mt < MT; mt++)
#pragma unroll
            for (int h = 0; h < 2; h++)
#pragma unroll
                for (int i = 0; i < 4; i++) {
                    const int row = m_base + mt * 16 + g + 8 * (i >> 1);
                    const int col = nb * 16 + h * 8 + 2 * t + (i & 1);
                    if (row < M && col < N) C[(size_t)row * N + col] = f32_to_act(acc[mt][h][i]);
                }
        return;
    }

#pragma unroll
    for (int mt = 0; mt < MT; mt++)
#pragma unroll
        for (int h = 0; h < 2; h++)
#pragma unroll
            for (int i = 0; i < 4; i++) {
                const int row = m_base + mt * 16 + g + 8 * (i >> 1);
                const int col = nb * 16 + h * 8 + 2 * t + (i & 1);
                if (row < M) partials[((size_t)split * M + row) * n_pad + col] = acc[mt][h][i];
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
    for (int mt = 0; mt < MT; mt++)
#pragma unroll
        for (int h = 0; h < 2; h++)
#pragma unroll
            for (int i = 0; i < 4; i++) {
                const int row = m_base + mt * 16 + g + 8 * (i >> 1);
                const int col = nb * 16 + h * 8 + 2 * t + (i & 1);
                if (row < M) {
                    const float sum = split_k_sum(partials, row, col, M, n_pad, splits);
                    if (col < N) C[(size_t)row * N + col] = f32_to_act(sum);
                }
            }
    if (threadIdx.x == 0) tickets[ticket_idx] = 0u;  // ready for the next launch
}

#define W4A16_ENTRY(NAME, MT, RH, STAGES)                                                        \
    extern "C" __global__ void __launch_bounds__(128) NAME(                                       \
        const u16* __restrict__ A, const uint4* __restrict__ W, const u32* __restrict__ S,        \
        const u32* __restrict__ Z, u16* __restrict__ C, float* __restrict__ partials,             \
        u32* __restrict__ tickets, int M, int N, int K, int n_pad, int k_chunks,                  \
        int group_k32, int splits) {                                                              \
        w4_pdl_enter();                                                                           \
        w4a16_body<MT, RH, STAGES>(A, W, S, Z, C, partials, tickets, M, N, K, n_pad, k_chunks,       \
                               group_k32,                                                         \
                               splits);                                                           \
    }

// Stages per variant: keep 4 warps' rings within one SM's shared memory with
// room for 5 (m8), 3 (mt1), 2 (mt2) or 1 (mt4) resident blocks. Keep in sync
// with `variant` in src/int4/gemm.rs (it sizes the dynamic shared memory).
#ifndef W4_FUSED_ENTRIES
W4A16_ENTRY(w4a16_gemm_m8, 1, 1, 6)
W4A16_ENTRY(w4a16_gemm_mt1, 1, 2, 6)
W4A16_ENTRY(w4a16_gemm_mt2, 2, 2, 4)
W4A16_ENTRY(w4a16_gemm_mt4, 4, 2, 3)
#endif  // W4_FUSED_ENTRIES

// ---------------------------------------------------------------------------
// Decode kernel (M <= 32): the same packed weights, with the roles of the
// operands swapped. mma computes D (16 columns of W x 8 tokens) = W . A^T:
// the dequantised weight registers of one n16 block are exactly the m16k16
// A fragment ({b[0][0], b[1][0], b[0][1], b[1][1]} of dequant_word), and one
// lane's 2 activation words of token g are exactly the k16n8 B fragment, so
// M <= 8 needs 4 mma per 64-chunk instead of 8 (no zero rows multiplied).
//
// The kernel is issue-bound, not bandwidth-bound, when it streams a 512-byte
// chunk per warp in fewer cycles than the SM's 4 schedulers can issue the
// chunk's instructions (at 3 TB/s an SM must finish a chunk every ~43
// cycles, i.e. <= ~170 issue slots per chunk; the previous version issued
// ~160). So everything that does not depend on the chunk is hoisted:
// - the block's activations AND scales (and zero points) for its K range
//   are copied to shared memory once, in the first cp.async group; the
//   per-warp ring then carries only the 16-byte code words (one cp.async per
//   lane per chunk, constant slot addresses, the STAGES loop unrolled);
// - symmetric weights with groups of >= 64 are dequantised WITHOUT their
//   scale: (u - 8) is exact in f16, 2 ops per f16x2 (lop3, then sub or fma
//   with constants 1032 / -72), the mma accumulates one group in fp32, and
//   the group's fp32 sum is multiplied by the fp32 scale once per group
//   (the scale is constant along K within a group and per output row of
//   D). 4 fewer f16x2 ops per code word, no per-chunk scale work, and the
//   products are exact (more accurate than scaled f16 weights).
// - zero points or groups of 32 keep the scaled dequant (`dequant_word`),
//   scale read from shared memory per chunk. With groups of 32 a lane's 16
//   reduction indices of a chunk (k = 16t..16t+15 after the permutation)
//   lie in group 2c + (t >> 1), so the lane's scale row depends on t.


// ---------------------------------------------------------------------------
// Fused decode-step variants (docs/CUDA.md, change 31): compile-time
// prologue / epilogue modes of the split-K and stream-K decode kernels, so
// that a Llama-style block runs without its `glu` and `resid_norm` launches.
// Built only into the separate module `w4a16_gemm_fused` (this source with
// W4_FUSED_ENTRIES defined; src/int4/gemm.rs): the plain kernels and their
// module are unchanged.
//
// Prologue (how a block fills its shared-memory activation tile, after the
// PDL wait, for its rows and K range [k0, k0 + cols), zero past K):
// - W4_PRO_NONE: A (M, K) f16 copied as is (the plain kernels' cp.async).
// - W4_PRO_GLU:  A[r, k] = silu(G[r, k]) * G[r, K + k], G the fused gate|up
//   GEMM output (row stride lda = 2K): the `glu` launch folded in.
// - W4_PRO_RMS:  A[r, k] = X[r, k] * rsqrt(mean_k X[r, :]^2 + eps) * NW[k],
//   X the f32 residual stream (row stride lda = K): every block reads the
//   whole row and reduces its sum of squares itself (redundant per block,
//   16 KB from L2 at d = 4096), same formula and f32 arithmetic as
//   `mops_resid_norm` (ops.cu).
// Epilogue (the thread that owns output (row, col) after the K reduction):
// - W4_EPI_STORE: C[row, col] = f16(sum).
// - W4_EPI_RESID: R[row, col] += f32(f16(sum)) (R the f32 residual stream,
//   row stride N): the residual add of `resid_norm`, with the GEMM output
//   rounded to f16 as the unfused step stores it.
// - W4_EPI_GLU (decode body only, splits == 1, one token tile): the weight
//   is a stacked gate|up projection (N = 2F rows, gate first, F % 16 == 0);
//   C (M, F) = act(gate) * up from the fp32 sums, one f16 rounding: the
//   `glu` launch folded into the gate|up GEMM (docs/CUDA.md change 41). A
//   block's first nbpb/2 column blocks are gate blocks, the other nbpb/2 the
//   up blocks of the same output columns (w4_glu_col_block); each up warp
//   hands its sums to its gate warp through its drained ring.
// - W4_EPI_RESNRM: the residual add with the next RMSNorm's inputs
//   (docs/CUDA.md change 76): x = R[row, col] + f32(f16(sum)) is stored in
//   R, C[row, col] = f16(x * NW[col]) (the norm weight applied, the row not
//   yet normalised) and each warp writes its 16 columns' sum of x^2 per
//   row to ssq[row * ssq_parts + nb] (one partial per n16 column block, so
//   ssq_parts = n_pad / 16; no atomics: bit-deterministic).
// Deferred norm (the NRM entries: _nrm, _glunrm): A is a
// W4_EPI_RESNRM output, and every output row is multiplied by
// rsqrt(sum_p ssq[row, p] / K + eps) before its store (before the GLU's
// activation in W4_EPI_GLU): the RMSNorm kernel between two GEMMs folded
// into both. The block reduces its rows' partials right after the PDL
// wait, beside its activation copy (w4_row_inv_norms).
#define W4_PRO_NONE 0
#define W4_PRO_GLU 1
#define W4_PRO_RMS 2
#define W4_EPI_STORE 0
#define W4_EPI_RESID 1
#define W4_EPI_GLU 2
#define W4_EPI_RESNRM 3

// n16 column block of local column block `nbl` of block `by` in the
// W4_EPI_GLU layout: gate blocks by*half .. by*half + half - 1, then the up
// blocks of the same columns, `pairs` (= F/16) further on.
__device__ __forceinline__ int w4_glu_col_block(int nbl, int nbpb, int by, int pairs) {
    const int half = nbpb >> 1;
    return nbl < half ? by * half + nbl : pairs + by * half + (nbl - half);
}

// The gated activation of W4_EPI_GLU times up, as `mops_glu_impl` (ops.cu)
// computes it: SiLU g / (1 + e^-g), or GELU with the tanh approximation.
__device__ __forceinline__ float w4_glu_act_mul(float g, float u, bool gelu) {
    float a;
    if (gelu) {
        const float v = 0.7978845608f * (g + 0.044715f * g * g * g);
        const float th = 1.0f - 2.0f / (expf(2.0f * v) + 1.0f);
        a = 0.5f * g * (1.0f + th);
    } else {
        a = g / (1.0f + expf(-g));
    }
    return a * u;
}

// Sum of v over the block (every thread gets it); `red` holds 32 floats.
__device__ __forceinline__ float w4_block_sum(float v, float* red) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xFFFFFFFFu, v, o);
    __syncthreads();  // `red` may still be read by the previous call
    if (lane == 0) red[warp] = v;
    __syncthreads();
    float s = lane < (int)(blockDim.x >> 5) ? red[lane] : 0.0f;
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) s += __shfl_xor_sync(0xFFFFFFFFu, s, o);
    return s;
}

// Shared floats of the prologue: the scalar path's block sum (32), or the
// vector RMSNorm path's per-(row, warp) partial sums (16 rows x 16 warps)
// and per-row inverse norms (16).
#define W4_PRO_RED_FLOATS (16 * 16 + 16)
// Vectors per thread a prologue pass loads before it uses any (all in
// flight at once: the pass costs one loaded L2 round trip per batch).
#define W4_PRO_BATCH 8

__device__ __forceinline__ u32 w4_pack_f16x2(float lo, float hi) {
    return (u32)f32_to_f16(lo) | ((u32)f32_to_f16(hi) << 16);
}
__device__ __forceinline__ float w4_silu_mul(u16 g, u16 u) {
    const float gv = f16_to_f32(g);
    return gv / (1.0f + expf(-gv)) * f16_to_f32(u);
}

// Fills a_tile (rows x a_stride halves) with the prologue's activations of
// token rows m_base.. and columns k0 .. k0 + cols (zero from K on; cols a
// multiple of 64). Called by every thread of the block (block reductions
// inside); plain stores, the caller's __syncthreads publishes them.
//
// Why vectors and batches (docs/CUDA.md, change 32): the prologue runs after
// griddepcontrol.wait while the block's weight ring (issued before the wait)
// still fills the memory system, so each dependent L2 round trip costs ~1 us.
// The first version's scalar loops (4-byte X / NW loads, 2-byte gate / up
// loads, unrolled ~4) paid 8-16 round trips per RMSNorm pass and ~28 per
// SwiGLU tile (down at K = 14336): q|k|v 27.7 against 14.5 us, down 49.0
// against 19.4. The vector paths load 16-byte vectors, W4_PRO_BATCH per
// thread at once, spread over the flattened (row, column) range of the
// block: 1 round trip per pass at M = 1, 4 at M = 8 (where every block also
// re-reads whole rows from L2; the fused step stays slower than the unfused
// one in the PDL graph, docs/CUDA.md change 32). The scalar loops
// stay for K % 128 != 0 (RMSNorm) / K % 8 != 0 (SwiGLU) or unaligned rows.
template <int PRO>
__device__ __forceinline__ void w4_fused_prologue(u16* a_tile, int a_stride, int rows, int m_base, int k0,
                                                  int cols, int K, const u16* __restrict__ A,
                                                  const float* __restrict__ X, const float* __restrict__ NW,
                                                  int lda, float eps) {
    __shared__ float red[W4_PRO_RED_FLOATS];
    const int nt = blockDim.x;
    const int tid = threadIdx.x;
    if (PRO == W4_PRO_GLU) {
        if ((K & 7) == 0 && (lda & 7) == 0 && (((size_t)A) & 15) == 0) {
            // 8 columns per item: gate and up as one 16-byte load each.
            const int c8 = cols >> 3;
            const int total = rows * c8;
            for (int i0 = tid; i0 < total; i0 += W4_PRO_BATCH * nt) {
                uint4 gv[W4_PRO_BATCH], uv[W4_PRO_BATCH];
#pragma unroll
                for (int j = 0; j < W4_PRO_BATCH; j++) {
                    const int i = i0 + j * nt;
                    const int r = i / c8;
                    const int k = k0 + 8 * (i - r * c8);
                    gv[j] = make_uint4(0, 0, 0, 0);
                    uv[j] = make_uint4(0, 0, 0, 0);
                    if (i < total && k < K) {  // K % 8 == 0: all 8 in or out
                        const u16* g_row = A + (size_t)(m_base + r) * lda;
                        gv[j] = __ldg(reinterpret_cast<const uint4*>(g_row + k));
                        uv[j] = __ldg(reinterpret_cast<const uint4*>(g_row + K + k));
                    }
                }
#pragma unroll
                for (int j = 0; j < W4_PRO_BATCH; j++) {
                    const int i = i0 + j * nt;
                    if (i >= total) break;
                    const int r = i / c8;
                    const int c = i - r * c8;
                    const u32 gw[4] = {gv[j].x, gv[j].y, gv[j].z, gv[j].w};
                    const u32 uw[4] = {uv[j].x, uv[j].y, uv[j].z, uv[j].w};
                    u32 o[4];
#pragma unroll
                    for (int h = 0; h < 4; h++)
                        o[h] = k0 + 8 * c < K ? w4_pack_f16x2(w4_silu_mul((u16)(gw[h] & 0xFFFFu), (u16)(uw[h] & 0xFFFFu)),
                                                              w4_silu_mul((u16)(gw[h] >> 16), (u16)(uw[h] >> 16)))
                                              : 0u;
                    *reinterpret_cast<uint4*>(a_tile + r * a_stride + 8 * c) = make_uint4(o[0], o[1], o[2], o[3]);
                }
            }
            return;
        }
        for (int r = 0; r < rows; r++) {
            u16* dst = a_tile + r * a_stride;
            const u16* g_row = A + (size_t)(m_base + r) * lda;
            for (int c = tid; c < cols; c += nt) {
                const int k = k0 + c;
                dst[c] = k < K ? f32_to_f16(w4_silu_mul(g_row[k], g_row[K + k])) : (u16)0;
            }
        }
        return;
    }
    // W4_PRO_RMS.
    if ((K & 127) == 0 && lda == K && (nt & 31) == 0 && ((((size_t)X) | ((size_t)NW)) & 15) == 0) {
        const int lane = tid & 31, warp = tid >> 5, n_warps = nt >> 5;
        float* part = red;          // [row][warp]
        float* inv_row = red + 256;  // [row]
        for (int i = tid; i < rows * n_warps; i += nt) part[i] = 0.0f;
        __syncthreads();
        // Pass 1: sums of squares over the whole rows, items of 4 floats.
        // K / 4 is a multiple of 32, so a warp's 32 items of one batch step
        // lie in one row: the row changes are warp-uniform, and each warp
        // adds its own items in a fixed order (bit-deterministic).
        const int k4 = K >> 2;
        const int total = rows * k4;
        const float4* x4 = reinterpret_cast<const float4*>(X + (size_t)m_base * K);
        float run = 0.0f;
        int cur = -1;
        for (int i0 = tid; i0 < total; i0 += W4_PRO_BATCH * nt) {
            float4 v[W4_PRO_BATCH];
#pragma unroll
            for (int j = 0; j < W4_PRO_BATCH; j++) {
                const int i = i0 + j * nt;
                v[j] = i < total ? __ldg(x4 + i) : make_float4(0.0f, 0.0f, 0.0f, 0.0f);
            }
#pragma unroll
            for (int j = 0; j < W4_PRO_BATCH; j++) {
                const int i = i0 + j * nt;
                if (i >= total) break;  // warp-uniform
                const int r = i / k4;
                if (r != cur) {
                    if (cur >= 0) {
#pragma unroll
                        for (int o = 16; o > 0; o >>= 1) run += __shfl_xor_sync(0xFFFFFFFFu, run, o);
                        if (lane == 0) part[cur * n_warps + warp] = run;
                    }
                    run = 0.0f;
                    cur = r;
                }
                run += v[j].x * v[j].x + v[j].y * v[j].y + v[j].z * v[j].z + v[j].w * v[j].w;
            }
        }
        if (cur >= 0) {
#pragma unroll
            for (int o = 16; o > 0; o >>= 1) run += __shfl_xor_sync(0xFFFFFFFFu, run, o);
            if (lane == 0) part[cur * n_warps + warp] = run;
        }
        __syncthreads();
        if (tid < rows) {
            float ss = 0.0f;
            for (int w = 0; w < n_warps; w++) ss += part[tid * n_warps + w];
            inv_row[tid] = rsqrtf(ss / (float)K + eps);
        }
        __syncthreads();
        // Pass 2: rms_norm(x) * w of the block's columns, 4 per item (K % 4
        // == 0: all 4 in or out), an 8-byte shared store each.
        const int c4 = cols >> 2;
        const int total2 = rows * c4;
        const float4* nw4 = reinterpret_cast<const float4*>(NW);
        for (int i0 = tid; i0 < total2; i0 += W4_PRO_BATCH * nt) {
            float4 xv[W4_PRO_BATCH], wv[W4_PRO_BATCH];
#pragma unroll
            for (int j = 0; j < W4_PRO_BATCH; j++) {
                const int i = i0 + j * nt;
                const int r = i / c4;
                const int k = k0 + 4 * (i - r * c4);
                xv[j] = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
                wv[j] = xv[j];
                if (i < total2 && k < K) {
                    xv[j] = __ldg(x4 + (((size_t)r * K + k) >> 2));
                    wv[j] = __ldg(nw4 + (k >> 2));
                }
            }
#pragma unroll
            for (int j = 0; j < W4_PRO_BATCH; j++) {
                const int i = i0 + j * nt;
                if (i >= total2) break;
                const int r = i / c4;
                const int c = i - r * c4;
                const float inv = inv_row[r];
                const uint2 o = make_uint2(w4_pack_f16x2(xv[j].x * inv * wv[j].x, xv[j].y * inv * wv[j].y),
                                           w4_pack_f16x2(xv[j].z * inv * wv[j].z, xv[j].w * inv * wv[j].w));
                *reinterpret_cast<uint2*>(a_tile + r * a_stride + 4 * c) = o;  // zeros past K: x = w = 0
            }
        }
        return;
    }
    for (int r = 0; r < rows; r++) {
        u16* dst = a_tile + r * a_stride;
        const float* x_row = X + (size_t)(m_base + r) * lda;
        float ss = 0.0f;
        for (int k = tid; k < K; k += nt) {
            const float v = x_row[k];
            ss += v * v;
        }
        const float inv = rsqrtf(w4_block_sum(ss, red) / (float)K + eps);
        for (int c = tid; c < cols; c += nt) {
            const int k = k0 + c;
            dst[c] = k < K ? f32_to_f16(x_row[k] * inv * NW[k]) : (u16)0;
        }
    }
}

// Output (row, col) of value v by the epilogue mode (see above).
template <int EPI>
__device__ __forceinline__ void w4_fused_store(u16* __restrict__ C, float* __restrict__ R, size_t idx, float v) {
    if (EPI == W4_EPI_RESID)
        R[idx] += f16_to_f32(f32_to_f16(v));
    else
        C[idx] = f32_to_act(v);
}

__device__ __forceinline__ float4 w4_ld_cg4(const float* p) {
    float4 r;
    asm volatile("ld.global.cg.v4.f32 {%0, %1, %2, %3}, [%4];"
                 : "=f"(r.x), "=f"(r.y), "=f"(r.z), "=f"(r.w)
                 : "l"(p));
    return r;
}

// Deferred norm: inv[r] = rsqrt(sum_p ssq[(m_base + r) * parts + p] / K +
// eps) for the block's rows r < rows (<= 16), from the partials of the
// predecessor's W4_EPI_RESNRM epilogue, into shared `inv`. Called by every
// thread after the PDL wait, right after the activation tile's copy is
// issued: the loads fly beside it and the sums stall no longer than the
// tile's wait does; no barrier of its own (the caller's __syncthreads
// after the tile's wait publishes inv). Row r belongs to tpr consecutive
// lanes of one warp (tpr a power of two <= 32, rows * tpr <= threads),
// each summing a fixed stride of the row's partials, then a shuffle tree:
// a fixed order, so the result is bit-deterministic. Loads through L2
// (written by the previous kernel); 16-byte loads where parts % 4 == 0.
__device__ __forceinline__ void w4_row_inv_norms(float* inv, const float* __restrict__ ssq, int parts, int m_base,
                                                 int rows, int K, float eps) {
    const int nt = blockDim.x, tid = threadIdx.x;
    int tpr = 32;
    while (tpr > 1 && tpr * rows > nt) tpr >>= 1;
    const int r = tid / tpr, j0 = tid - r * tpr;
    float ss = 0.0f;
    if (r < rows) {
        const float* row = ssq + (size_t)(m_base + r) * parts;
        if ((parts & 3) == 0 && (((size_t)ssq) & 15) == 0) {
            const int p4 = parts >> 2;
            for (int i0 = j0; i0 < p4; i0 += W4_PRO_BATCH * tpr) {
                float4 v[W4_PRO_BATCH];
#pragma unroll
                for (int j = 0; j < W4_PRO_BATCH; j++) {
                    const int i = i0 + j * tpr;
                    v[j] = i < p4 ? w4_ld_cg4(row + 4 * i) : make_float4(0.0f, 0.0f, 0.0f, 0.0f);
                }
#pragma unroll
                for (int j = 0; j < W4_PRO_BATCH; j++) ss += (v[j].x + v[j].y) + (v[j].z + v[j].w);
            }
        } else {
            for (int p = j0; p < parts; p += tpr) ss += ld_cg_f32(row + p);
        }
    }
    // Lanes of one row are an aligned group of tpr lanes in one warp.
    for (int o = 1; o < tpr; o <<= 1) ss += __shfl_xor_sync(0xFFFFFFFFu, ss, o);
    if (r < rows && j0 == 0) inv[r] = rsqrtf(ss / (float)K + eps);
}

// Decode-kernel flags (`flags` argument; keep in sync with src/int4/gemm.rs).
#define W4_DEC_PRE_WAIT 1
#define W4_DEC_PAIRED 2
// Diagnostic probe (MARLIN_INT4_DEC_PROBE=skip-loop, docs/CUDA.md change
// 36): the main loop is skipped (the output is zeros, not a result), so
// that a timing shows what everything else of a launch costs.
#define W4_DEC_PROBE_SKIP_LOOP 4
// Lean paired loop (docs/CUDA.md change 38; MARLIN_INT4_DEC_LEAN=0 off):
// activation loads only in lanes of existing token rows, shared addresses
// as immediates, no refill code when the ring holds all of a warp's chunks,
// one scale fold per pair when both chunks of every pair share a group.
#define W4_DEC_LEAN 8
// Diagnostic variant of the lean loop (MARLIN_INT4_DEC_LEAN=bcast): lanes of
// absent token rows load token row 0's activations too (no predicate: every
// lane of a t reads the same 16 bytes), so that a same-run timing says what
// the predicated-off loads save over a broadcast. Their products land in
// accumulator columns of absent tokens, which are never stored.
#define W4_DEC_LEAN_BCAST 16
// W4_EPI_GLU kernels: GELU (tanh) instead of SiLU.
#define W4_DEC_GLU_GELU 32
// Trigger the dependent launch before the weight ring and the PDL wait
// (MARLIN_INT4_DEC_EARLY_TRIGGER=1, docs/CUDA.md change 43) instead of
// after the wait: the next kernel (and through the small kernels, which
// trigger first thing, the GEMM after it) may launch once every block of
// this grid is resident, while this grid's predecessor still runs. The
// dependents' own wait still waits for this grid's completion.
#define W4_DEC_EARLY_TRIGGER 64
// The opposite (MARLIN_INT4_DEC_LATE_TRIGGER=1, change 43's next test):
// trigger after the main loop instead of after the wait, so that the next
// kernels launch (and their weight rings stream) only during this grid's
// epilogue. Change 43 measured every earlier overlap slower at batch 1.
#define W4_DEC_LATE_TRIGGER 128
// Quad main loop (docs/CUDA.md change 54; MARLIN_INT4_DEC_QUAD=0 off) of the
// POST kernels of one or two token tiles: 4 (one tile) or 2 chunks per step
// in one basic block, their mma interleaved over independent accumulator
// chains, so that one warp keeps several mma in flight instead of one
// chunk's or pair's dependent chain per guarded block.
#define W4_DEC_QUAD 256
// With W4_DEC_QUAD: 8 chains (2 per chunk) also where pairs share a group
// (MARLIN_INT4_DEC_QUAD=chains8).
#define W4_DEC_QUAD_CHAINS8 512
// The quad step in the kernels that dequantise with the scale (zero points,
// groups of 32; docs/CUDA.md change 57; MARLIN_INT4_DEC_QUAD=post off).
#define W4_DEC_QUAD_SCALED 1024

// Word i (0..7) of a lane's 32 bytes of one chunk's activations.
__device__ __forceinline__ u32 w4_act_word(const uint4 (&v)[2], int i) {
    const uint4& h = v[i >> 2];
    return (i & 3) == 0 ? h.x : (i & 3) == 1 ? h.y : (i & 3) == 2 ? h.z : h.w;
}

// Compile-time flag for the generic lambdas of the lean loop.
template <bool B>
struct W4Bool {
    static constexpr bool value = B;
};

// 16-byte shared load into v only where `on` (a predicated-off lane keeps
// v and sends no request to shared memory: at M = 1 the 28 lanes of absent
// token rows cost no wavefronts).
__device__ __forceinline__ void lds128_if(u32* v, u32 addr, bool on) {
    asm volatile(
        "{\n\t.reg .pred p;\n\tsetp.ne.b32 p, %4, 0;\n\t"
        "@p ld.shared.v4.u32 {%0, %1, %2, %3}, [%5];\n\t}"
        : "+r"(v[0]), "+r"(v[1]), "+r"(v[2]), "+r"(v[3])
        : "r"((int)on), "r"(addr));
}

// d (16x8 f32) = a (16x16, row) . b (16x8, col), activation type: mma with
// a zero accumulator (the first k16 step of a chunk's own sum).
__device__ __forceinline__ void mma_16816_zc(float* d, const u32* a, const u32* b) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32." MARLIN_ACT_PTX "." MARLIN_ACT_PTX ".f32 "
        "{%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, {%10, %10, %10, %10};"
        : "=f"(d[0]), "=f"(d[1]), "=f"(d[2]), "=f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]), "f"(0.0f));
}

template <int STAGES>
struct DecRing {
    uint4 w[STAGES][32];  // packed codes
};

// Scale rows (one per group) a split of `cps` chunks can touch, for groups of
// 32 * group_k32 elements (keep in sync with `decode_scale_rows` in
// src/int4/gemm.rs).
__device__ __forceinline__ int dec_scale_rows(int cps, int group_k32) { return (2 * cps - 1) / group_k32 + 2; }

// Shared memory (keep in sync with `decode_smem_bytes` in src/int4/gemm.rs):
// 4 rings; scale rows x 32 u32 (4 warps x 8 column pairs); the same for the
// zero points when HAS_Z; the activation tile (min(M, 8*RH) rows, plus a
// zero row when M < 8*RH; a_stride = ceil(k_chunks/splits)*64 + 8 halves).

// Block shape (runtime): nbpb n16 column blocks x k_slices K slices, one
// warp each (blockDim = 32 * nbpb * k_slices <= 512). The block's K range
// (split blockIdx.z of `splits`) is divided among its k_slices warps of a
// column block, whose fp32 sums are added in shared memory in slice order
// at the end (deterministic, no global round trip); only `splits > 1` uses
// the fp32 partials + ticket reduction across blocks. Small N takes 1-2
// column blocks per block and several K slices (enough warps with no split-K
// epilogue); large N takes 4 column blocks (the activation tile shared by 4
// warps) and global splits.
//
// HAS_Z: zero points streamed (Z non-null). POST: symmetric, groups >= 64:
// scales applied to the fp32 group sums (see above); else scaled f16 weights.
// The scaled-weight kernels' (scale, -zero * scale) pairs of a lane's
// columns g and g + 8 as activation-type f16x2 duplicates (symmetric
// weights: -8 * scale, exact).
template <bool HAS_Z>
__device__ __forceinline__ void w4_scale_pairs(const u32* s_lane, const u32* z_lane, u32& s0, u32& s1, u32& z0,
                                               u32& z1) {
    const u32 sc = scale2_to_act2(*s_lane);
    s0 = dup_lo(sc);
    s1 = dup_hi(sc);
    if (HAS_Z) {
        const u32 zs = scale2_to_act2(*z_lane);
        z0 = dup_lo(zs);
        z1 = dup_hi(zs);
    } else {
        z0 = act2_mul(s0, ACT2_NEG8);
        z1 = act2_mul(s1, ACT2_NEG8);
    }
}

// The quad loops' pieces shared by the POST and the scaled-weight forms
// (docs/CUDA.md changes 54, 57).
//
// A lane's activation addresses: token row r * 8 + g of the warp's first
// chunk (16 * t halves in), 128 bytes per chunk on; lanes of absent token
// rows read the 64 zero halves after the tile (step 0).
template <int RH>
__device__ __forceinline__ void w4_quad_act_at(u32 (&a_at)[RH], u32 (&a_step_b)[RH], const u16* a_tile,
                                               const u16* a_zero, int a_stride, int rows_here, int first, int g,
                                               int t) {
#pragma unroll
    for (int r = 0; r < RH; r++) {
        const bool real = r * 8 + g < rows_here;
        a_at[r] = smem_addr(real ? a_tile + (r * 8 + g) * a_stride + first * 64 + 16 * t : a_zero + 16 * t);
        a_step_b[r] = real ? 128u : 0u;
    }
}
// The code words of QN chunks from ring slot `slot` on (512 bytes apart)
// and their activations (chunks it .. it + QN - 1 of the warp).
template <int QN, int RH>
__device__ __forceinline__ void w4_quad_load(uint4 (&wv)[QN], uint4 (&act)[QN][RH][2], u32 slot,
                                             const u32 (&a_at)[RH], const u32 (&a_step_b)[RH], int it) {
#pragma unroll
    for (int q = 0; q < QN; q++) wv[q] = lds128_at(slot + q * 512);
#pragma unroll
    for (int q = 0; q < QN; q++)
#pragma unroll
        for (int r = 0; r < RH; r++) {
            const u32 at = a_at[r] + (u32)(it + q) * a_step_b[r];
            act[q][r][0] = lds128_at(at);
            act[q][r][1] = lds128_at(at + 16u);
        }
}
// The step's slots consumed (words in registers): refill each with the
// chunk STAGES on, one cp.async group per chunk (empty past the warp's).
template <int QN, int STAGES>
__device__ __forceinline__ void w4_quad_refill(u32 slot, const uint4* w_lane, int it, int n_my) {
#pragma unroll
    for (int q = 0; q < QN; q++) {
        if (it + q + STAGES < n_my) cp_async16_cg_at(slot + q * 512, w_lane + (size_t)(it + q + STAGES) * 128);
        cp_async_commit();
    }
}

template <int RH, int STAGES, bool HAS_Z, bool POST, int PRO = W4_PRO_NONE, int EPI = W4_EPI_STORE,
          bool NRM = false>
__device__ __forceinline__ void w4a16_dec_body(
    const u16* __restrict__ A, const uint4* __restrict__ W, const u32* __restrict__ S,
    const u32* __restrict__ Z, u16* __restrict__ C, float* __restrict__ partials,
    u32* __restrict__ tickets, int M, int N, int K, int n_pad, int k_chunks, int group_k32, int splits,
    int nbpb, int k_slices, int flags, const float* __restrict__ X = 0, const float* __restrict__ NW = 0,
    float* __restrict__ R = 0, int lda = 0, float eps = 0.0f, float* __restrict__ ssq = 0, int ssq_parts = 0) {
    extern __shared__ uint4 dyn_smem[];
    // Deferred norm (NRM, see W4_EPI_RESNRM): this block's rows' inverse
    // norms.
    __shared__ float inv_row[NRM ? 16 : 1];
    constexpr bool row_scale = NRM && EPI != W4_EPI_RESNRM;
    const int lane = threadIdx.x & 31;
    const int warp = threadIdx.x >> 5;
    const int nthreads = blockDim.x;
    const int g = lane >> 2;
    const int t = lane & 3;
    const int nbl = warp % nbpb;   // column block within the block
    const int ks = warp / nbpb;    // K slice
    const int nb = EPI == W4_EPI_GLU ? w4_glu_col_block(nbl, nbpb, blockIdx.y, N >> 5) : blockIdx.y * nbpb + nbl;
    const int nb_count = n_pad >> 4;
    const int m_base = blockIdx.x * 8 * RH;
    const int split = blockIdx.z;
    const int c_begin = (int)(((long long)split * k_chunks) / splits);
    const int c_end = (int)(((long long)(split + 1) * k_chunks) / splits);
    const int n_blk = c_end - c_begin;
    const int w_begin = c_begin + (ks * n_blk) / k_slices;      // this warp's chunks
    const int n_my = c_begin + ((ks + 1) * n_blk) / k_slices - w_begin;
    const int cps = (k_chunks + splits - 1) / splits;
    const int a_stride = cps * 64 + 8;  // halves
    const int s_rows = dec_scale_rows(cps, group_k32);
    const int s_width = nbpb * 8;        // u32 per scale row
    const int n_warps = nbpb * k_slices;
    // flags: W4_DEC_PRE_WAIT (weights before the PDL wait), W4_DEC_PAIRED
    // (the paired main loop of the POST variants, below).
    const bool pre_wait = (flags & W4_DEC_PRE_WAIT) != 0;
    const bool paired = POST && RH == 1 && (flags & W4_DEC_PAIRED) != 0;
    // Lean loop where its SASS is shorter than the paired loop's: chunk
    // pairs inside one scale group (lean_grouped: groups of an even number
    // of chunks, even first chunk and count), or a ring that holds all the
    // warp's chunks (change 38: 128 / 108 / 144 instructions per pair
    // against 166; with refills and pairs across groups it was 176, so
    // those take the paired loop).
    const bool lean_grouped = group_k32 >= 4 && ((group_k32 >> 1) & 1) == 0 && (w_begin & 1) == 0 && (n_my & 1) == 0;
    const bool lean = paired && (flags & W4_DEC_LEAN) != 0 && (lean_grouped || n_my <= STAGES);
    const bool quad = POST && RH <= 2 && (flags & W4_DEC_QUAD) != 0;
    const bool quad_scaled = !POST && RH <= 2 && (flags & W4_DEC_QUAD_SCALED) != 0;
    u32* s_tile = reinterpret_cast<u32*>(reinterpret_cast<DecRing<STAGES>*>(dyn_smem) + n_warps);
    u32* z_tile = s_tile + s_rows * s_width;
    u16* a_tile = reinterpret_cast<u16*>(HAS_Z ? z_tile + s_rows * s_width : z_tile);
    const int rows_here = min(M - m_base, 8 * RH);
    // 64 zero halves after the tile, read by lanes of tokens >= M (no zero row).
    u16* a_zero = a_tile + rows_here * a_stride;

    // Scale groups: group of (chunk c, lane half t>>1) = (2c + (t>>1)) / group_k32.
    const int row_first = (2 * c_begin) / group_k32;
    const int row_last = (2 * c_end - 1) / group_k32;
    const size_t group_stride = (size_t)nb_count * 8;

    // Programmatic dependent launch: the weights (codes, scales, zero points)
    // are read-only for every kernel, so with `pre_wait` the block issues its
    // scale rows and its whole weight ring (8-16 chunks per warp) BEFORE
    // griddepcontrol.wait: in the decode graph they stream while the
    // predecessor (norm, RoPE, attention, GLU) still runs. A, C, the
    // partials and the tickets are touched only after the wait. Without
    // `pre_wait` (MARLIN_INT4_PREWAIT=0, for comparison) the block waits
    // first and copies A and the scales in one group, as in session 4.
    //
    // (An L2 prefetch of the warp's chunks past the ring before the wait,
    // 128-byte `prefetch.global.L2` lines or 512-byte
    // `cp.async.bulk.prefetch.L2`, measured no gain in the decode context
    // and up to 4 us loss back to back: docs/CUDA.md, change 30.)
    //
    // Activations of this split (rows_here token rows, k from c_begin*64 for
    // n_blk*64, zero past K) and the 64 zero halves (no commit).
    auto copy_activations = [&]() {
#if !defined(W4_PROBE_NO_ACT)
        const int k0 = c_begin * 64;
        const int cols = n_blk * 64;
        const int vecs = cols >> 3;
        if (threadIdx.x < 8) reinterpret_cast<uint4*>(a_zero)[threadIdx.x] = make_uint4(0, 0, 0, 0);
        if (PRO != W4_PRO_NONE) {
            w4_fused_prologue<PRO>(a_tile, a_stride, rows_here, m_base, k0, cols, K, A, X, NW, lda, eps);
        } else if ((K & 7) == 0) {
            for (int r = 0; r < rows_here; r++) {
                const u16* src_row = A + (size_t)(m_base + r) * K + k0;
                for (int v = threadIdx.x; v < vecs; v += nthreads) {
                    const bool in = k0 + 8 * v < K;  // K % 8 == 0: all 8 in or out
                    cp_async16_ca(a_tile + r * a_stride + 8 * v, in ? (const void*)(src_row + 8 * v) : (const void*)A,
                                  in ? 16 : 0);
                }
            }
        } else {
            for (int r = 0; r < rows_here; r++) {
                const u16* src_row = A + (size_t)(m_base + r) * K;
                for (int c = threadIdx.x; c < cols; c += nthreads)
                    a_tile[r * a_stride + c] = k0 + c < K ? src_row[k0 + c] : (u16)0;
            }
        }
#endif
    };
    // W4_EPI_RESNRM: the residual and norm weight of the warp's outputs,
    // loaded by the writer warps right after the PDL wait (beside the
    // activation tile) so that the epilogue's only dependent loads are the
    // split partials. Every block loads them (which block finishes a tile
    // is known only at its ticket); R is written only by that block's
    // epilogue, after these loads.
    float r_pre[EPI == W4_EPI_RESNRM ? RH : 1][4];
    float nw_pre[2];
    auto prefetch_residual = [&]() {
        if (EPI != W4_EPI_RESNRM || ks != 0) return;
#pragma unroll
        for (int h = 0; h < 2; h++) {
            const int col = nb * 16 + g + 8 * h;
            nw_pre[h] = col < N ? __ldg(NW + col) : 0.0f;
        }
#pragma unroll
        for (int r = 0; r < (EPI == W4_EPI_RESNRM ? RH : 1); r++)
#pragma unroll
            for (int i = 0; i < 4; i++) {
                const int row = m_base + r * 8 + 2 * t + (i & 1);
                const int col = nb * 16 + g + 8 * (i >> 1);
                r_pre[r][i] = row < M && col < N ? ld_cg_f32(R + (size_t)row * N + col) : 0.0f;
            }
    };
    if (flags & W4_DEC_EARLY_TRIGGER) pdl_trigger();
    const bool late_trigger = (flags & W4_DEC_LATE_TRIGGER) != 0;
    if (!pre_wait) {
        if (late_trigger)
            pdl_wait();
        else
            w4_pdl_enter();
        copy_activations();
        if (row_scale) w4_row_inv_norms(inv_row, ssq, ssq_parts, m_base, rows_here, K, eps);
        prefetch_residual();
    }
    // The tile's scale (and zero) rows: nbpb x 8 column pairs, contiguous
    // in S; oldest cp.async group.
    {
        const int row_vecs = 2 * nbpb;
#if defined(W4_PROBE_NO_SCALE_TILE)
        const int s_vecs = 0;
#else
        const int s_vecs = (row_last - row_first + 1) * row_vecs;
#endif
        for (int v = threadIdx.x; v < s_vecs; v += nthreads) {
            const int q = v / row_vecs, part = v - q * row_vecs;
            // W4_EPI_GLU: the block's column blocks are two runs (gate, up).
            const size_t col_off = EPI == W4_EPI_GLU
                                       ? (size_t)w4_glu_col_block(part >> 1, nbpb, blockIdx.y, N >> 5) * 8 + (part & 1) * 4
                                       : (size_t)blockIdx.y * s_width + part * 4;
            const size_t src = (size_t)(row_first + q) * group_stride + col_off;
            cp_async16_cg(s_tile + q * s_width + part * 4, S + src, 16);
            if (HAS_Z) cp_async16_cg(z_tile + q * s_width + part * 4, Z + src, 16);
        }
        cp_async_commit();
    }

    // Weight ring prologue. Stage s of the lane's ring is at ring_at + 512 s;
    // chunk w_begin + i of the lane's codes at w_lane + 128 i (layout of
    // pack.rs: (n_pad/64 tiles, k_chunks, 4 n16 blocks, 32 lanes) x 16 B).
    DecRing<STAGES>& ring = reinterpret_cast<DecRing<STAGES>*>(dyn_smem)[warp];
    const uint4* w_lane = W + ((size_t)(nb >> 2) * k_chunks * 4 + (nb & 3)) * 32 + lane + (size_t)w_begin * 128;
    const u32 ring_at = smem_addr(&ring.w[0][lane]);
#pragma unroll
    for (int st = 0; st < STAGES; st++) {
        if (st < n_my) cp_async16_cg_at(ring_at + st * 512, w_lane + st * 128);
        cp_async_commit();
    }
    if (pre_wait) {
        if (late_trigger)
            pdl_wait();
        else
            w4_pdl_enter();
        // A in the newest group, waited with all the others (the weight
        // groups were issued first and are mostly in by now).
        copy_activations();
        cp_async_commit();
        // The deferred norm's partials load while the tile's copy is in flight.
        if (row_scale) w4_row_inv_norms(inv_row, ssq, ssq_parts, m_base, rows_here, K, eps);
        prefetch_residual();
        cp_async_wait<0>();
    } else {
        // The scale / activation group (oldest) is complete in every thread.
        cp_async_wait<STAGES>();
    }
    __syncthreads();

    // Chunks per scale row step and the row step: groups of >= 64 advance
    // one row every group_chunks chunks; groups of 32 two rows every chunk.
    const int group_chunks = group_k32 >= 2 ? group_k32 >> 1 : 1;
    const int row_step = group_k32 >= 2 ? s_width : 2 * s_width;
    int left = group_chunks - (group_k32 >= 2 ? w_begin % group_chunks : 0);
    const int lane_row = (2 * w_begin) / group_k32 - row_first + (group_k32 >= 2 ? 0 : (t >> 1));
    const u32* s_lane = s_tile + lane_row * s_width + nbl * 8 + g;
    const u32* z_lane = z_tile + lane_row * s_width + nbl * 8 + g;

    // Two accumulator sets (even / odd k16 step) break the mma dependency
    // chain when there are only 1-2 token tiles; with 4 the tiles are
    // independent chains already (and registers are needed for `act`).
    // POST: acc += gacc * scale at every group end; one set (the chain is
    // hidden by the other resident warps; a second set would cost 4 adds
    // and 4 zeroing moves more per fold).
    constexpr bool TWO_ACC = !POST && RH <= 2;
    float acc[RH][4];
    float gacc[RH][4];
    float gacc_odd[TWO_ACC ? RH : 1][4];
#pragma unroll
    for (int r = 0; r < RH; r++)
#pragma unroll
        for (int i = 0; i < 4; i++) {
            acc[r][i] = 0.0f;
            gacc[r][i] = 0.0f;
            gacc_odd[TWO_ACC ? r : 0][i] = 0.0f;
        }
    // Token row r*8 + g of this lane at the warp's first chunk, advancing 64
    // halves per chunk; lanes of tokens >= M read the zero halves, advancing 0.
    const u16* a_lane[RH];
    int a_step[RH];
#pragma unroll
    for (int r = 0; r < RH; r++) {
        const bool real = r * 8 + g < rows_here;
        a_lane[r] = real ? a_tile + (r * 8 + g) * a_stride + (w_begin - c_begin) * 64 + 16 * t : a_zero + 16 * t;
        a_step[r] = real ? 64 : 0;
    }

    if (flags & W4_DEC_PROBE_SKIP_LOOP) {
        // Diagnostic: no main loop (the ring is drained by the wait below).
    } else if (quad) {
        // Quad loop (docs/CUDA.md change 54). The paired and lean loops
        // guard every chunk pair with `it < n_my` (the single-chunk loop
        // every chunk), so each is its own basic block and ptxas cannot
        // start the next one's shared loads and mma before this one's
        // chain (shared load -> dequant -> dependent mma -> fold) has
        // drained; at 2 warps per scheduler (the small-N plans) that chain
        // paces the loop (change 53). Here a rolled loop takes QN = 4 / RH
        // chunks per step with no guard inside: the code words and
        // activations of the step loaded first, then its mma issued
        // round-robin over independent accumulator chains: per token tile
        // 2 per chunk pair where both chunks lie in one scale group
        // (`lean_grouped`, folded with one scale), else 2 per chunk (each
        // folded with its own scale). The 0-3 chunks left over run one at
        // a time after the ring is drained. Ring slots: chunk c in slot
        // c % STAGES (STAGES is a multiple of 4, so a step never wraps),
        // one cp.async group per chunk as in the other loops, refilled once
        // the step has its words in registers. Lanes of absent token rows
        // read the 64 zero halves (step 0).
        constexpr int QN = RH == 1 ? 4 : 2;
        u32 a_at[RH], a_step_b[RH];
        w4_quad_act_at<RH>(a_at, a_step_b, a_tile, a_zero, a_stride, rows_here, w_begin - c_begin, g, t);
#if defined(W4_PROBE_NO_SCALE)
        auto take_scale = [&](float& sl, float& sh, int) {
            sl = 1.0f;
            sh = 1.0f;
        };
#else
        float cur_sl = f16_lo_to_f32(*s_lane);  // column g
        float cur_sh = f16_hi_to_f32(*s_lane);  // column g + 8
        // This chunk's scales; the row advances after the chunk that ends
        // a group (`steps` chunks at once where they share one group).
        auto take_scale = [&](float& sl, float& sh, int steps) {
            sl = cur_sl;
            sh = cur_sh;
            left -= steps;
            if (left == 0) {
                left = group_chunks;
                s_lane += row_step;
                cur_sl = f16_lo_to_f32(*s_lane);
                cur_sh = f16_hi_to_f32(*s_lane);
            }
        };
#endif
        const int n_steps = n_my / QN;
        auto steps = [&](auto grouped_tag) {
            constexpr bool GROUPED = decltype(grouped_tag)::value;
            constexpr int NP = GROUPED ? QN / 2 : QN;  // scale units per step
            for (int si = 0; si < n_steps; si++) {
                const int it = si * QN;
                const u32 slot = ring_at + (u32)((it & (STAGES - 1)) * 512);
                cp_async_wait<STAGES - QN>();
                uint4 wv[QN];
                uint4 act[QN][RH][2];
                w4_quad_load<QN, RH>(wv, act, slot, a_at, a_step_b, it);
                w4_quad_refill<QN, STAGES>(slot, w_lane, it, n_my);
                float sl[NP], sh[NP];
#pragma unroll
                for (int p = 0; p < NP; p++) take_scale(sl[p], sh[p], GROUPED ? 2 : 1);
                // chain[unit][tile][k16 step parity]; unit = chunk pair (GROUPED) or chunk.
                float chain[NP][RH][2][4];
                // Issue order: per two k16 steps, the first chunk of every
                // unit, then (GROUPED) the second, each for steps j, j + 1
                // and every token tile: a chain's next mma is >= 4 issues on.
#pragma unroll
                for (int jj = 0; jj < 4; jj += 2)
#pragma unroll
                    for (int half = 0; half < (GROUPED ? 2 : 1); half++)
#pragma unroll
                        for (int dj = 0; dj < 2; dj++)
#pragma unroll
                            for (int p = 0; p < NP; p++) {
                                const int q = GROUPED ? 2 * p + half : p;
                                const int j = jj + dj;
                                const u32 word = j == 0 ? wv[q].x : j == 1 ? wv[q].y : j == 2 ? wv[q].z : wv[q].w;
                                u32 wa[4];
                                dequant_word_unscaled(word, wa);
#pragma unroll
                                for (int r = 0; r < RH; r++) {
                                    const u32 bb[2] = {w4_act_word(act[q][r], 2 * j), w4_act_word(act[q][r], 2 * j + 1)};
                                    if (jj == 0 && half == 0)
                                        mma_16816_zc(chain[p][r][dj], wa, bb);
                                    else
                                        mma_16816(chain[p][r][dj], wa, bb);
                                }
                            }
#pragma unroll
                for (int p = 0; p < NP; p++)
#pragma unroll
                    for (int r = 0; r < RH; r++)
#pragma unroll
                        for (int i = 0; i < 4; i++)
                            acc[r][i] = fmaf(chain[p][r][0][i] + chain[p][r][1][i], i < 2 ? sl[p] : sh[p], acc[r][i]);
            }
        };
        if (lean_grouped && (flags & W4_DEC_QUAD_CHAINS8) == 0)
            steps(W4Bool<true>{});
        else
            steps(W4Bool<false>{});
        // The chunks after the last step (their groups are the newest).
        const int done = n_steps * QN;
        if (done < n_my) cp_async_wait<0>();
        for (int it = done; it < n_my; it++) {
            uint4 w1[1];
            uint4 act1[1][RH][2];
            w4_quad_load<1, RH>(w1, act1, ring_at + (u32)((it & (STAGES - 1)) * 512), a_at, a_step_b, it);
            const uint4& w = w1[0];
            const uint4(&act)[RH][2] = act1[0];
            float sl, sh;
            take_scale(sl, sh, 1);
            const u32 words[4] = {w.x, w.y, w.z, w.w};
            float chain[RH][2][4];
#pragma unroll
            for (int j = 0; j < 4; j++) {
                u32 wa[4];
                dequant_word_unscaled(words[j], wa);
#pragma unroll
                for (int r = 0; r < RH; r++) {
                    const u32 bb[2] = {w4_act_word(act[r], 2 * j), w4_act_word(act[r], 2 * j + 1)};
                    if (j < 2)
                        mma_16816_zc(chain[r][j & 1], wa, bb);
                    else
                        mma_16816(chain[r][j & 1], wa, bb);
                }
            }
#pragma unroll
            for (int r = 0; r < RH; r++)
#pragma unroll
                for (int i = 0; i < 4; i++)
                    acc[r][i] = fmaf(chain[r][0][i] + chain[r][1][i], i < 2 ? sl : sh, acc[r][i]);
        }
    } else if (quad_scaled) {
        // Quad loop of the scaled-weight kernels (zero points, groups of 32;
        // docs/CUDA.md change 57): the POST quad loop's step (QN = 4 / RH
        // chunks loaded first, no guard inside, one basic block) with the
        // weights dequantised with their scale (and zero point) in f16 as
        // the single-chunk loop below does, so there is no group fold: each
        // (chunk of the step, token tile) accumulates into its own fp32
        // chain for the whole loop, and the mma of one step are issued
        // k16-step-major, so a chain's next mma is QN * RH >= 4 issues on.
        // The chains are added in a fixed order after the loop
        // (bit-deterministic; the order of the fp32 sums differs from the
        // single-chunk loop's, not their products).
        constexpr int QN = RH == 1 ? 4 : 2;
        u32 a_at[RH], a_step_b[RH];
        w4_quad_act_at<RH>(a_at, a_step_b, a_tile, a_zero, a_stride, rows_here, w_begin - c_begin, g, t);
        float chain[QN][RH][4];
#pragma unroll
        for (int q = 0; q < QN; q++)
#pragma unroll
            for (int r = 0; r < RH; r++)
#pragma unroll
                for (int i = 0; i < 4; i++) chain[q][r][i] = 0.0f;
        // This chunk's scale pairs; the rows advance after the chunk that
        // ends a group (groups of 32: two rows every chunk).
        auto take_scales = [&](u32& s0, u32& s1, u32& z0, u32& z1) {
            w4_scale_pairs<HAS_Z>(s_lane, z_lane, s0, s1, z0, z1);
            if (--left == 0) {
                left = group_chunks;
                s_lane += row_step;
                if (HAS_Z) z_lane += row_step;
            }
        };
        // One chunk's 4 k16 steps into chain q (the step's words and
        // activations already in registers).
        auto chunk_mma = [&](const uint4& w, const uint4 (&act)[RH][2], u32 s0, u32 s1, u32 z0, u32 z1,
                             float (&ch)[RH][4], int j) {
            const u32 word = j == 0 ? w.x : j == 1 ? w.y : j == 2 ? w.z : w.w;
            u32 b[2][2];
            dequant_word(word, s0, s1, z0, z1, b);
            const u32 wa[4] = {b[0][0], b[1][0], b[0][1], b[1][1]};
#pragma unroll
            for (int r = 0; r < RH; r++) {
                const u32 bb[2] = {w4_act_word(act[r], 2 * j), w4_act_word(act[r], 2 * j + 1)};
                mma_16816(ch[r], wa, bb);
            }
        };
        const int n_steps = n_my / QN;
        for (int si = 0; si < n_steps; si++) {
            const int it = si * QN;
            const u32 slot = ring_at + (u32)((it & (STAGES - 1)) * 512);
            cp_async_wait<STAGES - QN>();
            uint4 wv[QN];
            uint4 act[QN][RH][2];
            w4_quad_load<QN, RH>(wv, act, slot, a_at, a_step_b, it);
            u32 s0[QN], s1[QN], z0[QN], z1[QN];
#pragma unroll
            for (int q = 0; q < QN; q++) take_scales(s0[q], s1[q], z0[q], z1[q]);
            w4_quad_refill<QN, STAGES>(slot, w_lane, it, n_my);
#pragma unroll
            for (int j = 0; j < 4; j++)
#pragma unroll
                for (int q = 0; q < QN; q++) chunk_mma(wv[q], act[q], s0[q], s1[q], z0[q], z1[q], chain[q], j);
        }
        // The chunks after the last step, one at a time into chain 0.
        const int done = n_steps * QN;
        if (done < n_my) cp_async_wait<0>();
        for (int it = done; it < n_my; it++) {
            uint4 w1[1];
            uint4 act1[1][RH][2];
            w4_quad_load<1, RH>(w1, act1, ring_at + (u32)((it & (STAGES - 1)) * 512), a_at, a_step_b, it);
            const uint4& w = w1[0];
            const uint4(&act)[RH][2] = act1[0];
            u32 s0, s1, z0, z1;
            take_scales(s0, s1, z0, z1);
#pragma unroll
            for (int j = 0; j < 4; j++) chunk_mma(w, act, s0, s1, z0, z1, chain[0], j);
        }
        // Into gacc (gacc_odd stays zero) for the common sum below.
#pragma unroll
        for (int r = 0; r < RH; r++)
#pragma unroll
            for (int i = 0; i < 4; i++) {
                float s = chain[0][r][i];
#pragma unroll
                for (int q = 1; q < QN; q++) s += chain[q][r][i];
                gacc[r][i] = s;
            }
    } else if (lean) {
        // Lean paired loop (docs/CUDA.md change 38): the paired loop below
        // with what its SASS spends on nothing taken out. At small N the
        // loop over chunks already in shared memory is an SM-wide throughput
        // limit (change 36), ~78 instructions and 12 shared wavefronts per
        // chunk, so both are cut:
        // - activations: lanes of token rows >= M (28 of 32 at M = 1) load
        //   nothing; their registers stay zero for the whole loop (if a
        //   16-byte load is served a quarter warp at a time: 2 instead of
        //   8 wavefronts per chunk at M = 1..2, 4 at M = 3..4);
        // - the lane's activation address is one base plus immediates (no
        //   per-chunk multiply by a 0/64 step, no select for odd counts);
        // - no refill code (predicated-off address math and commits were
        //   still issued) when the ring holds all the warp's chunks
        //   (n_my <= STAGES: every small-N M <= 4 plan);
        // - where both chunks of every pair lie in one scale group (groups
        //   of 128+, even start and count: the usual g128 case) the pair's
        //   8 mma go to 2 accumulators and are scaled once (4 adds and 4
        //   fma per pair instead of 8 and 8, one scale update).
        const bool row_real = g < rows_here;
        const bool row_load = row_real || (flags & W4_DEC_LEAN_BCAST) != 0;
        const u32 a_at = smem_addr(a_tile + (row_real ? g : 0) * a_stride + (w_begin - c_begin) * 64 + 16 * t);
        u32 act[2][8];
#pragma unroll
        for (int q = 0; q < 2; q++)
#pragma unroll
            for (int i = 0; i < 8; i++) act[q][i] = 0u;
        float cur_sl = f16_lo_to_f32(*s_lane);  // column g
        float cur_sh = f16_hi_to_f32(*s_lane);  // column g + 8
        auto pairs = [&](auto refill_tag, auto grouped_tag) {
            constexpr bool REFILL = decltype(refill_tag)::value;
            constexpr bool GROUPED = decltype(grouped_tag)::value;
            for (int base = 0; base < n_my; base += STAGES) {
                const uint4* w_next = w_lane + (size_t)(base + STAGES) * 128;
                const u32 a_round = a_at + (u32)base * 128u;
#pragma unroll
                for (int s = 0; s < STAGES; s += 2) {
                    const int it = base + s;
                    if (it < n_my) {
                        // Odd count (never when GROUPED): the stale slot of
                        // chunk it + 1 meets the previous pair's (finite)
                        // activations and is scaled by 0.
                        const bool two = GROUPED || it + 1 < n_my;
                        if (REFILL) cp_async_wait<STAGES - 2>();
                        const uint4 w0 = lds128_at(ring_at + s * 512);
                        const uint4 w1 = lds128_at(ring_at + (s + 1) * 512);
                        lds128_if(&act[0][0], a_round + s * 128, row_load);
                        lds128_if(&act[0][4], a_round + s * 128 + 16, row_load);
                        lds128_if(&act[1][0], a_round + (s + 1) * 128, row_load && two);
                        lds128_if(&act[1][4], a_round + (s + 1) * 128 + 16, row_load && two);
                        float sl[2], sh[2];
                        if (GROUPED) {
                            sl[0] = cur_sl;
                            sh[0] = cur_sh;
                            left -= 2;
                            if (left == 0) {
                                left = group_chunks;
                                s_lane += row_step;
                                cur_sl = f16_lo_to_f32(*s_lane);
                                cur_sh = f16_hi_to_f32(*s_lane);
                            }
                        } else {
#pragma unroll
                            for (int q = 0; q < 2; q++) {
                                const bool real = q == 0 || two;
                                sl[q] = real ? cur_sl : 0.0f;
                                sh[q] = real ? cur_sh : 0.0f;
                                if (real && --left == 0) {
                                    left = group_chunks;
                                    s_lane += row_step;
                                    cur_sl = f16_lo_to_f32(*s_lane);
                                    cur_sh = f16_hi_to_f32(*s_lane);
                                }
                            }
                        }
                        const u32 words[2][4] = {{w0.x, w0.y, w0.z, w0.w}, {w1.x, w1.y, w1.z, w1.w}};
                        // [chunk][k16 step parity]; GROUPED: chunk 1 adds into chunk 0's.
                        float cur[2][2][4];
#pragma unroll
                        for (int j = 0; j < 4; j++) {
#pragma unroll
                            for (int q = 0; q < 2; q++) {
                                u32 wa[4];
                                dequant_word_unscaled(words[q][j], wa);
                                const u32 bb[2] = {act[q][2 * j], act[q][2 * j + 1]};
                                if (GROUPED) {
                                    if (j < 2 && q == 0)
                                        mma_16816_zc(cur[0][j & 1], wa, bb);
                                    else
                                        mma_16816(cur[0][j & 1], wa, bb);
                                } else if (j < 2) {
                                    mma_16816_zc(cur[q][j & 1], wa, bb);
                                } else {
                                    mma_16816(cur[q][j & 1], wa, bb);
                                }
                            }
                        }
                        if (REFILL) {
                            // Both slots are consumed (values in registers): refill.
                            if (it + STAGES < n_my) cp_async16_cg_at(ring_at + s * 512, w_next + s * 128);
                            cp_async_commit();
                            if (it + 1 + STAGES < n_my)
                                cp_async16_cg_at(ring_at + (s + 1) * 512, w_next + (s + 1) * 128);
                            cp_async_commit();
                        }
                        if (GROUPED) {
#pragma unroll
                            for (int i = 0; i < 4; i++)
                                acc[0][i] = fmaf(cur[0][0][i] + cur[0][1][i], i < 2 ? sl[0] : sh[0], acc[0][i]);
                        } else {
#pragma unroll
                            for (int q = 0; q < 2; q++)
#pragma unroll
                                for (int i = 0; i < 4; i++)
                                    acc[0][i] = fmaf(cur[q][0][i] + cur[q][1][i], i < 2 ? sl[q] : sh[q], acc[0][i]);
                        }
                    }
                }
            }
        };
        if (n_my <= STAGES) {
            // The ring holds every chunk (waited already with pre_wait).
            if (!pre_wait) cp_async_wait<0>();
            if (lean_grouped)
                pairs(W4Bool<false>{}, W4Bool<true>{});
            else
                pairs(W4Bool<false>{}, W4Bool<false>{});
        } else {
            pairs(W4Bool<true>{}, W4Bool<true>{});  // lean_grouped (see `lean`)
        }
    } else if (paired) {
        // Paired main loop (POST, one token tile; docs/CUDA.md change 36). The
        // single-chunk loop below is one dependent chain per chunk: wait,
        // shared loads, dequant, 4 mma into one accumulator (each waiting
        // for the previous), then the group fold, which waits for the last
        // mma; in-order issue keeps the next chunk's loads behind it. With
        // 2 warps per scheduler (the small-N plans) that chain, not the
        // issue rate, sets the compute time after the PDL wait. Here two
        // chunks are loaded together and each chunk's 4 mma go to two
        // accumulators (even / odd k16 step, each chain starting from zero:
        // 4 independent chains of 2 per pair instead of 2 of 4 in a row),
        // and each chunk's sum is scaled into `acc` by its own group scale.
        // Same exact products; the fp32 sums are added per chunk instead of
        // per group (fixed order: bit-deterministic).
        float cur_sl = f16_lo_to_f32(*s_lane);  // column g
        float cur_sh = f16_hi_to_f32(*s_lane);  // column g + 8
        for (int base = 0; base < n_my; base += STAGES) {
            const uint4* w_next = w_lane + (size_t)(base + STAGES) * 128;
#pragma unroll
            for (int s = 0; s < STAGES; s += 2) {
                const int it = base + s;
                if (it < n_my) {
                    // Chunk it + 1 past the warp's range (odd count): its
                    // stale slot is multiplied with chunk it's activations
                    // (finite) and scaled by 0.
                    const bool two = it + 1 < n_my;
                    cp_async_wait<STAGES - 2>();
                    const uint4 w0 = lds128_at(ring_at + s * 512);
                    const uint4 w1 = lds128_at(ring_at + (s + 1) * 512);
                    u32 act[2][8];
#pragma unroll
                    for (int q = 0; q < 2; q++) {
                        const u16* ap = a_lane[0] + (q == 1 && two ? it + 1 : it) * a_step[0];
                        const uint4 v0 = *reinterpret_cast<const uint4*>(ap);
                        const uint4 v1 = *reinterpret_cast<const uint4*>(ap + 8);
                        act[q][0] = v0.x; act[q][1] = v0.y; act[q][2] = v0.z; act[q][3] = v0.w;
                        act[q][4] = v1.x; act[q][5] = v1.y; act[q][6] = v1.z; act[q][7] = v1.w;
                    }
                    // The two chunks' scales (the group row advances after
                    // each chunk that ends a group).
                    float sl[2], sh[2];
#pragma unroll
                    for (int q = 0; q < 2; q++) {
                        const bool real = q == 0 || two;
                        sl[q] = real ? cur_sl : 0.0f;
                        sh[q] = real ? cur_sh : 0.0f;
                        if (real && --left == 0) {
                            left = group_chunks;
                            s_lane += row_step;
                            cur_sl = f16_lo_to_f32(*s_lane);
                            cur_sh = f16_hi_to_f32(*s_lane);
                        }
                    }
                    const u32 words[2][4] = {{w0.x, w0.y, w0.z, w0.w}, {w1.x, w1.y, w1.z, w1.w}};
                    float cur[2][2][4];  // [chunk][k16 step parity]
#pragma unroll
                    for (int j = 0; j < 4; j++) {
#pragma unroll
                        for (int q = 0; q < 2; q++) {
                            u32 wa[4];
                            dequant_word_unscaled(words[q][j], wa);
                            const u32 bb[2] = {act[q][2 * j], act[q][2 * j + 1]};
                            if (j < 2)
                                mma_16816_zc(cur[q][j & 1], wa, bb);
                            else
                                mma_16816(cur[q][j & 1], wa, bb);
                        }
                    }
                    // Both slots are consumed (values in registers): refill.
                    if (it + STAGES < n_my) cp_async16_cg_at(ring_at + s * 512, w_next + s * 128);
                    cp_async_commit();
                    if (it + 1 + STAGES < n_my) cp_async16_cg_at(ring_at + (s + 1) * 512, w_next + (s + 1) * 128);
                    cp_async_commit();
#pragma unroll
                    for (int q = 0; q < 2; q++)
#pragma unroll
                        for (int i = 0; i < 4; i++)
                            acc[0][i] = fmaf(cur[q][0][i] + cur[q][1][i], i < 2 ? sl[q] : sh[q], acc[0][i]);
                }
            }
        }
    } else
    for (int base = 0; base < n_my; base += STAGES) {
        const uint4* w_next = w_lane + (size_t)(base + STAGES) * 128;  // refills of this round
#pragma unroll
        for (int s = 0; s < STAGES; s++) {
            const int it = base + s;
            if (it < n_my) {
                cp_async_wait<STAGES - 1>();
                const uint4 w = lds128_at(ring_at + s * 512);
                u32 act[RH][8];
#pragma unroll
                for (int r = 0; r < RH; r++) {
                    const u16* ap = a_lane[r] + it * a_step[r];
                    const uint4 v0 = *reinterpret_cast<const uint4*>(ap);
                    const uint4 v1 = *reinterpret_cast<const uint4*>(ap + 8);
                    act[r][0] = v0.x; act[r][1] = v0.y; act[r][2] = v0.z; act[r][3] = v0.w;
                    act[r][4] = v1.x; act[r][5] = v1.y; act[r][6] = v1.z; act[r][7] = v1.w;
                }
                u32 s0 = 0, s1 = 0, z0 = 0, z1 = 0;
                if (!POST) w4_scale_pairs<HAS_Z>(s_lane, z_lane, s0, s1, z0, z1);
                const u32 words[4] = {w.x, w.y, w.z, w.w};
#pragma unroll
                for (int j = 0; j < 4; j++) {
                    u32 wa[4];
                    if (POST) {
                        dequant_word_unscaled(words[j], wa);
                    } else {
                        u32 b[2][2];
                        dequant_word(words[j], s0, s1, z0, z1, b);
                        wa[0] = b[0][0]; wa[1] = b[1][0]; wa[2] = b[0][1]; wa[3] = b[1][1];
                    }
#pragma unroll
                    for (int r = 0; r < RH; r++) {
                        const u32 bb[2] = {act[r][2 * j], act[r][2 * j + 1]};
                        if (TWO_ACC && (j & 1))
                            mma_16816(gacc_odd[TWO_ACC ? r : 0], wa, bb);
                        else
                            mma_16816(gacc[r], wa, bb);
                    }
                }
                // Slot s is consumed (values in registers): refill it.
                if (it + STAGES < n_my) cp_async16_cg_at(ring_at + s * 512, w_next + s * 128);
                cp_async_commit();
                // End of a scale group (or of the warp's chunks): POST folds
                // the group sums with the fp32 scale; both advance the row.
                if (--left == 0 || it == n_my - 1) {
                    if (POST) {
                        const u32 sc = *s_lane;
                        const float sl = f16_lo_to_f32(sc);  // column g
                        const float sh = f16_hi_to_f32(sc);  // column g + 8
#pragma unroll
                        for (int r = 0; r < RH; r++) {
#pragma unroll
                            for (int i = 0; i < 4; i++) {
                                acc[r][i] = fmaf(gacc[r][i], i < 2 ? sl : sh, acc[r][i]);
                                gacc[r][i] = 0.0f;
                            }
                        }
                    }
                    left = group_chunks;
                    s_lane += row_step;
                    if (HAS_Z) z_lane += row_step;
                }
            }
        }
    }
    cp_async_wait<0>();
    if (late_trigger) pdl_trigger();
    if (!POST) {
#pragma unroll
        for (int r = 0; r < RH; r++)
#pragma unroll
            for (int i = 0; i < 4; i++)
                acc[r][i] = TWO_ACC ? gacc[r][i] + gacc_odd[TWO_ACC ? r : 0][i] : gacc[r][i];
    }

    // K slices of one column block: slices 1.. store their sums in their
    // (drained) ring, slice 0 adds them in slice order.
    if (k_slices > 1) {
        __syncthreads();  // every ring drained and read
        float* red = reinterpret_cast<float*>(&ring.w[0][0]);
        if (ks > 0) {
#pragma unroll
            for (int r = 0; r < RH; r++)
#pragma unroll
                for (int i = 0; i < 4; i++) red[(r * 4 + i) * 32 + lane] = acc[r][i];
        }
        __syncthreads();
        if (ks == 0) {
            for (int o = 1; o < k_slices; o++) {
                const float* other = reinterpret_cast<const float*>(
                    &reinterpret_cast<DecRing<STAGES>*>(dyn_smem)[o * nbpb + nbl].w[0][0]);
#pragma unroll
                for (int r = 0; r < RH; r++)
#pragma unroll
                    for (int i = 0; i < 4; i++) acc[r][i] += other[(r * 4 + i) * 32 + lane];
            }
        }
    }
    const bool writer = ks == 0;

    // Accumulator (r, i): column n = nb*16 + g + 8*(i>>1), token row
    // m_base + r*8 + 2t + (i&1).
    if (EPI == W4_EPI_GLU) {
        // splits == 1 (host: glu_call). The up warp of local column block
        // nbl (>= half) puts its sums (RH token tiles x 4) in its own ring
        // (drained; the K-slice reduction above read only the rings of
        // slices > 0), the gate warp nbl - half combines them with its own.
        const int half = nbpb >> 1;
        float* xchg = reinterpret_cast<float*>(&ring.w[0][0]);
        if (writer && nbl >= half) {
#pragma unroll
            for (int r = 0; r < RH; r++)
#pragma unroll
                for (int i = 0; i < 4; i++) xchg[(r * 4 + i) * 32 + lane] = acc[r][i];
        }
        __syncthreads();
        if (!writer || nbl >= half) return;
        const float* up = reinterpret_cast<const float*>(
            &reinterpret_cast<DecRing<STAGES>*>(dyn_smem)[nbl + half].w[0][0]);
        const int F = N >> 1;
        const bool gelu = (flags & W4_DEC_GLU_GELU) != 0;
#pragma unroll
        for (int r = 0; r < RH; r++)
#pragma unroll
            for (int i = 0; i < 4; i++) {
                const int row = m_base + r * 8 + 2 * t + (i & 1);
                const int col = nb * 16 + g + 8 * (i >> 1);
                if (row < M && col < F) {
                    const float sc = row_scale ? inv_row[row_scale ? row - m_base : 0] : 1.0f;
                    C[(size_t)row * F + col] =
                        f32_to_f16(w4_glu_act_mul(acc[r][i] * sc, up[(r * 4 + i) * 32 + lane] * sc, gelu));
                }
            }
        return;
    }
    // The K-reduced sums of the warp's outputs (rows >= M: 0) to C / R by
    // the epilogue mode; whole warps (the W4_EPI_RESNRM shuffles).
    auto finish = [&](const float (&v)[RH][4]) {
        if (EPI == W4_EPI_RESNRM) {
            float ss[RH][2];
#pragma unroll
            for (int r = 0; r < RH; r++) {
                ss[r][0] = 0.0f;
                ss[r][1] = 0.0f;
#pragma unroll
                for (int i = 0; i < 4; i++) {
                    const int row = m_base + r * 8 + 2 * t + (i & 1);
                    const int col = nb * 16 + g + 8 * (i >> 1);
                    if (row < M && col < N) {
                        const size_t idx = (size_t)row * N + col;
                        const float x = r_pre[EPI == W4_EPI_RESNRM ? r : 0][i] + f16_to_f32(f32_to_f16(v[r][i]));
                        R[idx] = x;
                        C[idx] = f32_to_f16(x * nw_pre[i >> 1]);
                        ss[r][i & 1] += x * x;
                    }
                }
            }
            // Lanes of one t (same rows) hold the block's 8 column pairs.
#pragma unroll
            for (int r = 0; r < RH; r++)
#pragma unroll
                for (int h = 0; h < 2; h++)
#pragma unroll
                    for (int o = 4; o < 32; o <<= 1) ss[r][h] += __shfl_xor_sync(0xFFFFFFFFu, ss[r][h], o);
            if (g == 0) {
#pragma unroll
                for (int r = 0; r < RH; r++)
#pragma unroll
                    for (int h = 0; h < 2; h++) {
                        const int row = m_base + r * 8 + 2 * t + h;
                        if (row < M) ssq[(size_t)row * ssq_parts + nb] = ss[r][h];
                    }
            }
            return;
        }
#pragma unroll
        for (int r = 0; r < RH; r++)
#pragma unroll
            for (int i = 0; i < 4; i++) {
                const int row = m_base + r * 8 + 2 * t + (i & 1);
                const int col = nb * 16 + g + 8 * (i >> 1);
#if defined(W4_PROBE_NO_STORE)
                if (v[r][i] != 1e-30f) continue;
#endif
                if (row < M && col < N)
                    w4_fused_store<EPI>(C, R, (size_t)row * N + col,
                                        row_scale ? v[r][i] * inv_row[row_scale ? row - m_base : 0] : v[r][i]);
            }
    };
    if (splits == 1) {
        if (!writer) return;
        finish(acc);
        return;
    }
    if (writer) {
#pragma unroll
        for (int r = 0; r < RH; r++)
#pragma unroll
            for (int i = 0; i < 4; i++) {
                const int row = m_base + r * 8 + 2 * t + (i & 1);
                const int col = nb * 16 + g + 8 * (i >> 1);
                if (row < M) partials[((size_t)split * M + row) * n_pad + col] = acc[r][i];
            }
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
    if (!is_last || !writer) return;
    // W4_EPI_RESNRM needs every sum before its shuffles; the other modes
    // keep the store inside the loop (the plain kernels' SASS unchanged by
    // change 76).
    if (EPI == W4_EPI_RESNRM) {
        float sums[RH][4];
#pragma unroll
        for (int r = 0; r < RH; r++)
#pragma unroll
            for (int i = 0; i < 4; i++) {
                const int row = m_base + r * 8 + 2 * t + (i & 1);
                const int col = nb * 16 + g + 8 * (i >> 1);
                sums[r][i] = row < M ? split_k_sum(partials, row, col, M, n_pad, splits) : 0.0f;
            }
        finish(sums);
    } else {
#pragma unroll
        for (int r = 0; r < RH; r++)
#pragma unroll
            for (int i = 0; i < 4; i++) {
                const int row = m_base + r * 8 + 2 * t + (i & 1);
                const int col = nb * 16 + g + 8 * (i >> 1);
                if (row < M) {
                    const float sum = split_k_sum(partials, row, col, M, n_pad, splits);
                    if (col < N)
                        w4_fused_store<EPI>(C, R, (size_t)row * N + col,
                                            row_scale ? sum * inv_row[row_scale ? row - m_base : 0] : sum);
                }
            }
    }
    if (threadIdx.x == 0) tickets[ticket_idx] = 0u;
}

#define W4A16_DEC_ENTRY(NAME, RH, STAGES, HAS_Z, POST)                                           \
    extern "C" __global__ void __launch_bounds__(512) NAME(                                       \
        const u16* __restrict__ A, const uint4* __restrict__ W, const u32* __restrict__ S,        \
        const u32* __restrict__ Z, u16* __restrict__ C, float* __restrict__ partials,             \
        u32* __restrict__ tickets, int M, int N, int K, int n_pad, int k_chunks,                  \
        int group_k32, int splits, int nbpb, int k_slices, int flags) {                           \
        w4a16_dec_body<RH, STAGES, HAS_Z, POST>(A, W, S, Z, C, partials, tickets, M, N, K, n_pad, \
                                                k_chunks, group_k32, splits, nbpb, k_slices,      \
                                                flags);                                           \
    }

// Keep STAGES in sync with `DEC_STAGES_M4` / `DEC_STAGES` in
// src/int4/gemm.rs: 16 for M <= 4 (m4: twice the code words issued before
// the PDL wait and in flight; the ring is cheap next to a 1-4 row activation
// tile), 8 else. m8: one token tile (M = 5..8), m16: 2 token
// tiles (M = 9..16), m32: 4 (M = 17..32), each dequantised fragment feeding
// 2 / 4 mma. Suffix: none = symmetric, groups >= 64 (scales after the mma);
// s = symmetric, groups of 32; z = zero points.
#ifndef W4_FUSED_ENTRIES
W4A16_DEC_ENTRY(w4a16_dec_m4, 1, 16, false, true)
W4A16_DEC_ENTRY(w4a16_dec_m8, 1, 8, false, true)
W4A16_DEC_ENTRY(w4a16_dec_m16, 2, 8, false, true)
W4A16_DEC_ENTRY(w4a16_dec_m32, 4, 8, false, true)
W4A16_DEC_ENTRY(w4a16_dec_m4s, 1, 16, false, false)
W4A16_DEC_ENTRY(w4a16_dec_m8s, 1, 8, false, false)
W4A16_DEC_ENTRY(w4a16_dec_m16s, 2, 8, false, false)
W4A16_DEC_ENTRY(w4a16_dec_m32s, 4, 8, false, false)
W4A16_DEC_ENTRY(w4a16_dec_m4z, 1, 16, true, false)
W4A16_DEC_ENTRY(w4a16_dec_m8z, 1, 8, true, false)
W4A16_DEC_ENTRY(w4a16_dec_m16z, 2, 8, true, false)
W4A16_DEC_ENTRY(w4a16_dec_m32z, 4, 8, true, false)
#endif  // W4_FUSED_ENTRIES

// ---------------------------------------------------------------------------
// Shared-activation kernel (GemmPath::SharedA, M = 17..64; docs/CUDA.md
// change 77). The general kernel above gives every warp its own copy of the
// activation rows (at 64 rows, 16x the bytes of the warp's codes per chunk),
// and the decode kernel holds a split's whole activation tile in shared
// memory (at 32 rows it no longer fits beside enough warps). Here the
// block's 8 warps share one activation tile per chunk, streamed through a
// STAGES-deep ring with one block barrier per chunk (Marlin's structure),
// and each warp multiplies it with NBW n16 column blocks of codes, so one
// activation fragment feeds 2 x NBW mma and one dequantised code word feeds
// MT x 2. Operands as in the general kernel: A (activations) the m16k16
// fragment, the codes the k16n8 one, in the pack's K order (a lane's 16
// reduction indices of a chunk are 16t .. 16t + 15 of the natural order).
//
// Activation rows in the ring are 128 bytes (64 halves), their eight
// 16-byte units stored at unit ^ (row & 1): a lane reads unit 2t + jj of
// rows g and g + 8, and the eight lanes of each 16-byte load phase (rows
// 2p, 2p + 1) then hit eight distinct units. Rows >= M and K past the
// tensor are zero-filled by the copies (K % 8 == 0: the host checks).
//
// Grid: x = m block (16 * MT rows), y = column block (8 * NBW n16 blocks),
// z = K split. 256 threads. Split-K: fp32 partials + ticket, the last block
// sums the splits in order (bit-deterministic), as the general kernel.
#define W4_SA_WARPS 8

template <int MT, int NBW>
struct SaStage {
    uint4 a[MT * 16][8];              // activation rows, swizzled units
    uint4 w[W4_SA_WARPS][NBW][32];    // codes, lane-private
    u32 s[W4_SA_WARPS][NBW][32];      // f16x2 scales
    u32 z[W4_SA_WARPS][NBW][32];      // f16x2 -zero*scale (unused without Z)
};

template <int MT, int NBW, int STAGES, bool HAS_Z>
__device__ __forceinline__ void w4a16_sa_body(
    const u16* __restrict__ A, const uint4* __restrict__ W, const u32* __restrict__ S,
    const u32* __restrict__ Z, u16* __restrict__ C, float* __restrict__ partials,
    u32* __restrict__ tickets, int M, int N, int K, int n_pad, int k_chunks, int group_k32,
    int splits) {
    extern __shared__ uint4 dyn_smem[];
    SaStage<MT, NBW>* ring = reinterpret_cast<SaStage<MT, NBW>*>(dyn_smem);
    const int tid = threadIdx.x;
    const int lane = tid & 31, warp = tid >> 5;
    const int g = lane >> 2, t = lane & 3;
    const int nb_count = n_pad >> 4;
    const int m_base = blockIdx.x * 16 * MT;
    const int nb0 = (blockIdx.y * W4_SA_WARPS + warp) * NBW;
    const int split = blockIdx.z;
    const int c_begin = (int)(((long long)split * k_chunks) / splits);
    const int c_end = (int)(((long long)(split + 1) * k_chunks) / splits);
    const int n_my = c_end - c_begin;

    // This warp's column blocks: codes (tile nb / 4, chunk, slot nb % 4,
    // lane), scale rows as the general kernel reads them. Column blocks past
    // the weight (the last column block of the grid) read column block 0's
    // codes and scales: no predication in the loop, never stored.
    const int group_chunks = group_k32 >= 2 ? group_k32 >> 1 : 1;
    const size_t lane_row = group_k32 >= 2 ? 0 : (size_t)(t >> 1) * nb_count * 8;
    const size_t group_stride = (size_t)nb_count * 8 * (group_k32 >= 2 ? 1 : 2);
    const uint4* wp[NBW];
    const u32* sp[NBW];
    const u32* zp[NBW];
#pragma unroll
    for (int h = 0; h < NBW; h++) {
        const int nb = nb0 + h < nb_count ? nb0 + h : 0;
        wp[h] = W + ((size_t)(nb >> 2) * k_chunks * 4 + (nb & 3)) * 32 + lane + (size_t)c_begin * 128;
        sp[h] = S + (size_t)nb * 8 + g + lane_row;
        zp[h] = HAS_Z ? Z + (size_t)nb * 8 + g + lane_row : nullptr;
    }
    // Activation copies: MT * 128 units of 16 bytes per chunk, MT / 2 per
    // thread, each thread always the same (row, unit).
    constexpr int A_UNITS = MT * 16 * 8 / (32 * W4_SA_WARPS);
    static_assert(A_UNITS * 32 * W4_SA_WARPS == MT * 16 * 8, "activation units per thread");
    const u16* a_src[A_UNITS];
    u32 a_dst[A_UNITS];  // shared-memory offset in a stage
    int a_k[A_UNITS];    // the unit's first reduction index in chunk c_begin
#pragma unroll
    for (int i = 0; i < A_UNITS; i++) {
        const int id = tid + i * 32 * W4_SA_WARPS;
        const int r = id >> 3, u = id & 7;
        const int row = m_base + r;
        a_k[i] = row < M ? c_begin * 64 + 8 * u : K;  // rows >= M: never "in"
        a_src[i] = A + (size_t)(row < M ? row : 0) * K + c_begin * 64 + 8 * u;
        a_dst[i] = (u32)(r * 8 + (u ^ (r & 1))) * 16;
    }
    const u32 ring_base = smem_addr(dyn_smem);
    constexpr u32 STAGE_BYTES = sizeof(SaStage<MT, NBW>);
    // Issue cursor: chunk c_begin + n_issued, its scale group tracked
    // incrementally (no division in the loop).
    int n_issued = 0;
    int issue_rem = c_begin % group_chunks;
    size_t issue_gi = (size_t)(c_begin / group_chunks) * group_stride;
    auto issue_w = [&](int stage) {
#pragma unroll
        for (int h = 0; h < NBW; h++) {
            cp_async16_cg(&ring[stage].w[warp][h][lane], wp[h] + (size_t)n_issued * 128, 16);
            cp_async4(&ring[stage].s[warp][h][lane], sp[h] + issue_gi);
            if (HAS_Z) cp_async4(&ring[stage].z[warp][h][lane], zp[h] + issue_gi);
        }
    };
    auto issue_act = [&](int stage, int chunk_off) {
#pragma unroll
        for (int i = 0; i < A_UNITS; i++) {
            const bool in = a_k[i] + chunk_off * 64 < K;
            asm volatile("cp.async.ca.shared.global [%0], [%1], 16, %2;" ::"r"(ring_base + stage * STAGE_BYTES + a_dst[i]),
                         "l"(in ? (const void*)(a_src[i] + chunk_off * 64) : (const void*)A), "r"(in ? 16 : 0));
        }
    };
    auto advance = [&]() {
        n_issued++;
        if (++issue_rem == group_chunks) {
            issue_rem = 0;
            issue_gi += group_stride;
        }
    };

    // The weights of the first STAGES - 1 chunks are read-only: issued
    // before the PDL wait (one group), the activations after it (a group per
    // chunk), so that the main loop's wait count stays STAGES - 2.
#pragma unroll
    for (int st = 0; st < STAGES - 1; st++)
        if (st < n_my) {
            issue_w(st);
            advance();
        }
    cp_async_commit();
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.wait;" ::: "memory");
    asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
#endif
#pragma unroll
    for (int st = 0; st < STAGES - 1; st++) {
        if (st < n_my) issue_act(st, st);
        cp_async_commit();
    }

    // Token tiles of 8 (the mma's n8): the block's 16 * MT rows.
    constexpr int TT = 2 * MT;
    float acc[NBW][TT][4];
#pragma unroll
    for (int h = 0; h < NBW; h++)
#pragma unroll
        for (int tt = 0; tt < TT; tt++)
#pragma unroll
            for (int i = 0; i < 4; i++) acc[h][tt][i] = 0.0f;

    int slot = 0;                // stage of chunk it
    int fill = STAGES - 1;       // stage of chunk it + STAGES - 1
#pragma unroll 1
    for (int it = 0; it < n_my; it++) {
        cp_async_wait<STAGES - 2>();
        __syncthreads();  // chunk it landed for every thread; chunk it - 1's stage is free
        if (n_issued < n_my) {
            issue_act(fill, n_issued);
            issue_w(fill);
            advance();
        }
        cp_async_commit();
        const SaStage<MT, NBW>& sg = ring[slot];
        slot = slot + 1 == STAGES ? 0 : slot + 1;
        fill = fill + 1 == STAGES ? 0 : fill + 1;
        uint4 wv[NBW];
        u32 s0[NBW], s1[NBW], z0[NBW], z1[NBW];
#pragma unroll
        for (int h = 0; h < NBW; h++) {
            wv[h] = sg.w[warp][h][lane];
            const u32 sc = scale2_to_act2(sg.s[warp][h][lane]);
            s0[h] = dup_lo(sc);
            s1[h] = dup_hi(sc);
            if (HAS_Z) {
                const u32 zs = scale2_to_act2(sg.z[warp][h][lane]);
                z0[h] = dup_lo(zs);
                z1[h] = dup_hi(zs);
            } else {
                z0[h] = act2_mul(s0[h], ACT2_NEG8);  // -8 * scale, exact
                z1[h] = act2_mul(s1[h], ACT2_NEG8);
            }
        }
#pragma unroll
        for (int jj = 0; jj < 2; jj++) {
            // Token g of each tile: words 4jj .. 4jj + 3 of the lane's 16
            // reduction indices, i.e. the k16n8 B fragments of k16 steps 2jj
            // (x, y) and 2jj + 1 (z, w).
            uint4 bv[TT];
#pragma unroll
            for (int tt = 0; tt < TT; tt++) bv[tt] = sg.a[tt * 8 + g][(2 * t + jj) ^ (g & 1)];
#pragma unroll
            for (int j2 = 0; j2 < 2; j2++) {
                const int j = 2 * jj + j2;
#pragma unroll
                for (int h = 0; h < NBW; h++) {
                    const u32 word = j == 0 ? wv[h].x : j == 1 ? wv[h].y : j == 2 ? wv[h].z : wv[h].w;
                    u32 d[2][2];
                    dequant_word(word, s0[h], s1[h], z0[h], z1[h], d);
                    // The dequantised n16 block as the m16k16 A fragment
                    // (rows = its 16 columns; docs: the decode kernel).
                    const u32 wa[4] = {d[0][0], d[1][0], d[0][1], d[1][1]};
#pragma unroll
                    for (int tt = 0; tt < TT; tt++) {
                        const u32 bf[2] = {j2 ? bv[tt].z : bv[tt].x, j2 ? bv[tt].w : bv[tt].y};
                        mma_16816(acc[h][tt], wa, bf);
                    }
                }
            }
        }
    }
    cp_async_wait<0>();

    // Accumulator (h, tt, i): column (nb0 + h)*16 + g + 8*(i>>1) of token
    // (row) m_base + tt*8 + 2t + (i&1); `each` calls f(value, row, col,
    // whether the element exists) for every one, in one order.
    auto each = [&](auto&& f) {
#pragma unroll
        for (int h = 0; h < NBW; h++)
#pragma unroll
            for (int tt = 0; tt < TT; tt++)
#pragma unroll
                for (int i = 0; i < 4; i++) {
                    const int row = m_base + tt * 8 + 2 * t + (i & 1);
                    const int col = (nb0 + h) * 16 + g + 8 * (i >> 1);
                    f(acc[h][tt][i], row, col, nb0 + h < nb_count && row < M);
                }
    };
    if (splits == 1) {
        each([&](float v, int row, int col, bool in) {
            if (in && col < N) C[(size_t)row * N + col] = f32_to_act(v);
        });
        return;
    }
    each([&](float v, int row, int col, bool in) {
        if (in) partials[((size_t)split * M + row) * n_pad + col] = v;
    });
    // One acq_rel ticket per block (atom_add_acq_rel_gpu, marlin_common.cuh).
    __syncthreads();
    __shared__ u32 is_last;
    const int ticket_idx = blockIdx.y * gridDim.x + blockIdx.x;
    if (tid == 0) is_last = atom_add_acq_rel_gpu(&tickets[ticket_idx]) == (u32)(splits - 1) ? 1u : 0u;
    __syncthreads();
    if (!is_last) return;
    each([&](float, int row, int col, bool in) {
        if (!in) return;
        const float sum = split_k_sum(partials, row, col, M, n_pad, splits);
        if (col < N) C[(size_t)row * N + col] = f32_to_act(sum);
    });
    if (tid == 0) tickets[ticket_idx] = 0u;  // ready for the next launch
}

#define W4A16_SA_ENTRY(NAME, MT, NBW, STAGES, HAS_Z)                                               \
    extern "C" __global__ void __launch_bounds__(32 * W4_SA_WARPS, 1) NAME(                          \
        const u16* __restrict__ A, const uint4* __restrict__ W, const u32* __restrict__ S,           \
        const u32* __restrict__ Z, u16* __restrict__ C, float* __restrict__ partials,                \
        u32* __restrict__ tickets, int M, int N, int K, int n_pad, int k_chunks, int group_k32,      \
        int splits) {                                                                                \
        w4a16_sa_body<MT, NBW, STAGES, HAS_Z>(A, W, S, Z, C, partials, tickets, M, N, K, n_pad,     \
                                              k_chunks, group_k32, splits);                          \
    }

// Keep in sync with `shared_a_variant` in src/int4/gemm.rs (names, tiles,
// stages: it sizes the dynamic shared memory). `_z`: zero points.
#ifndef W4_FUSED_ENTRIES
W4A16_SA_ENTRY(w4a16_sa_mt2_n1, 2, 1, 8, false)
W4A16_SA_ENTRY(w4a16_sa_mt2_n2, 2, 2, 8, false)
W4A16_SA_ENTRY(w4a16_sa_mt4_n1, 4, 1, 8, false)
W4A16_SA_ENTRY(w4a16_sa_mt4_n2, 4, 2, 8, false)
W4A16_SA_ENTRY(w4a16_sa_mt2_n1_z, 2, 1, 8, true)
W4A16_SA_ENTRY(w4a16_sa_mt2_n2_z, 2, 2, 8, true)
W4A16_SA_ENTRY(w4a16_sa_mt4_n1_z, 4, 1, 8, true)
W4A16_SA_ENTRY(w4a16_sa_mt4_n2_z, 4, 2, 8, true)
#endif  // W4_FUSED_ENTRIES

// ---------------------------------------------------------------------------
// Stream-K decode kernel (M <= 16): a grid sized to the SMs (not to the
// shape), in which every warp streams an equal contiguous share of the
// weight's (n16 column block, 64-chunk) units, in column-block-major order.
// A warp's share covers the end of one column block's K range, whole column
// blocks, and the start of another; a column block split between warps is
// reduced in a fixed order (below), so the result is bit-deterministic.
//
// Why (docs/CUDA.md, change 25): the split-K decode launch runs ~2.5 waves of
// short blocks at large N (each block pays its own activation copy, ring
// fill and drain, partial write and ticket) and at small N leaves SMs idle at
// the ramp and tail; here every SM gets the same number of bytes, each warp
// fills its ring once and drains it once, and the whole A (M <= 16 rows) is
// copied to shared memory once per block.
//
// - Units u = nb * k_chunks + c, warp w (of T = gridDim.x * warps) owns
//   [w * U / T, (w + 1) * U / T), U >= T (the plan guarantees it).
// - The ring (STAGES slots per warp) carries each unit's 16-byte code word
//   and the lane's 4-byte scale (and zero) pair; the issue cursor walks the
//   units across column-block boundaries, so the ring never drains inside a
//   warp's share.
// - A column block wholly inside one warp's share is written directly (f16).
//   Otherwise each of its contributing warps w_first..w_last (consecutive)
//   keeps its fp32 sums in registers until its share is done (no fence or
//   atomic inside the stream), stores them in its slot (2w: the warp's
//   first segment, 2w + 1: its last), then takes a ticket of the column
//   block; the last one adds the slots in warp order and writes f16 (the
//   order never depends on who is last), then resets the ticket for the
//   next launch.

template <int STAGES, bool HAS_Z>
struct SkRing {
    uint4 w[STAGES][32];           // packed codes
    u32 s[STAGES][32];             // f16x2 scales of the chunk's group
    u32 z[HAS_Z ? STAGES : 1][32]; // f16x2 -zero*scale
};

__device__ __forceinline__ void cp_async4_at(u32 dst, const void* src) {
    asm volatile("cp.async.ca.shared.global [%0], [%1], 4;" ::"r"(dst), "l"(src));
}
__device__ __forceinline__ u32 lds32_at(u32 addr) {
    u32 v;
    asm volatile("ld.shared.u32 %0, [%1];" : "=r"(v) : "r"(addr) : "memory");
    return v;
}
// Volatile f16 -> f32 of a value loaded from a ring slot: the conversion
// consumes the shared load before the slot's refill is issued.
__device__ __forceinline__ float f16_lo_to_f32_now(u32 x) {
    float r;
    asm volatile("{ .reg .b16 lo, hi; mov.b32 {lo, hi}, %1; cvt.f32.f16 %0, lo; }" : "=f"(r) : "r"(x));
    return r;
}
__device__ __forceinline__ float f16_hi_to_f32_now(u32 x) {
    float r;
    asm volatile("{ .reg .b16 lo, hi; mov.b32 {lo, hi}, %1; cvt.f32.f16 %0, hi; }" : "=f"(r) : "r"(x));
    return r;
}

// Warp owning unit u of `units` split among `total` warps (the largest w with
// w * units / total <= u).
__device__ __forceinline__ long long sk_warp_of(long long u, long long units, long long total) {
    return ((u + 1) * total - 1) / units;
}

template <int RH, int STAGES, bool HAS_Z, bool POST, int PRO = W4_PRO_NONE>
__device__ __forceinline__ void w4a16_sk_body(
    const u16* __restrict__ A, const uint4* __restrict__ W, const u32* __restrict__ S,
    const u32* __restrict__ Z, u16* __restrict__ C, float* __restrict__ partials,
    u32* __restrict__ tickets, int M, int N, int K, int n_pad, int k_chunks, int group_k32,
    const float* __restrict__ X = 0, const float* __restrict__ NW = 0, int lda = 0, float eps = 0.0f) {
    extern __shared__ uint4 dyn_smem[];
    const int lane = threadIdx.x & 31;
    const int warp = threadIdx.x >> 5;
    const int n_warps = blockDim.x >> 5;
    const int g = lane >> 2;
    const int t = lane & 3;
    const int nb_count = n_pad >> 4;
    // The warp's share (recomputed after the main loop rather than kept in
    // six registers through it).
    long long u_begin;
    int n_my;
    {
        const long long units = (long long)nb_count * k_chunks;
        const long long total_warps = (long long)gridDim.x * n_warps;
        const long long gw = (long long)blockIdx.x * n_warps + warp;
        u_begin = gw * units / total_warps;
        n_my = (int)((gw + 1) * units / total_warps - u_begin);
    }
    const int a_stride = k_chunks * 64 + 8;  // halves
    const int rows = min(M, 8 * RH);
    SkRing<STAGES, HAS_Z>* rings = reinterpret_cast<SkRing<STAGES, HAS_Z>*>(dyn_smem);
    u16* a_tile = reinterpret_cast<u16*>(rings + n_warps);
    u16* a_zero = a_tile + rows * a_stride;  // 64 zero halves (tokens >= M)
    SkRing<STAGES, HAS_Z>& ring = rings[warp];
    const u32 ring_w = smem_addr(&ring.w[0][lane]);
    const u32 ring_s = smem_addr(&ring.s[0][lane]);
    const u32 ring_z = smem_addr(&ring.z[0][lane]);

    // Scale row of (chunk c, lane): groups of >= 64 step one row every
    // `group_chunks` chunks; groups of 32 are rows 2c + (t >> 1).
    const bool g32 = group_k32 == 1;
    const int group_chunks = g32 ? 1 : group_k32 >> 1;

    // Issue cursor: unit (i_nb, i_c), its code word and scale row.
    int i_nb = (int)(u_begin / k_chunks);
    int i_c = (int)(u_begin - (long long)i_nb * k_chunks);
    int i_row = g32 ? 2 * i_c + (t >> 1) : i_c / group_chunks;
    int i_rem = g32 ? 0 : i_c - (i_c / group_chunks) * group_chunks;
    const uint4* w_ptr = W + ((size_t)(i_nb >> 2) * k_chunks * 4 + (i_nb & 3)) * 32 + lane + (size_t)i_c * 128;
    // Consumer cursor starts where the issue cursor does.
    int c_nb = i_nb;
    int c_c = i_c;
    auto issue = [&](int slot) {
        cp_async16_cg_at(ring_w + slot * 512, w_ptr);
        const size_t si = ((size_t)i_row * nb_count + i_nb) * 8 + g;
        cp_async4_at(ring_s + slot * 128, S + si);
        if (HAS_Z) cp_async4_at(ring_z + slot * 128, Z + si);
        w_ptr += 128;
        if (++i_c == k_chunks) {
            i_c = 0;
            i_nb++;
            w_ptr = W + ((size_t)(i_nb >> 2) * k_chunks * 4 + (i_nb & 3)) * 32 + lane;
            i_row = g32 ? (t >> 1) : 0;
            i_rem = 0;
        } else if (g32) {
            i_row += 2;
        } else if (++i_rem == group_chunks) {
            i_rem = 0;
            i_row++;
        }
    };
    // The weights do not depend on the previous kernel: their ring fills
    // first, one cp.async group per chunk.
#pragma unroll
    for (int st = 0; st < STAGES; st++) {
        if (st < n_my) issue(st);
        cp_async_commit();
    }

    // Programmatic dependent launch: the weights above are read-only for
    // every kernel, so their copies fly while the predecessor finishes;
    // A, C, the partials and the tickets are touched only after this wait.
    w4_pdl_enter();

    // First read of the activations (and the only one from global memory):
    // the whole of A (rows x k_chunks*64 halves, zero past K), newest
    // cp.async group.
#if !defined(W4_PROBE_NO_ACT)
    {
        const int vecs = k_chunks * 8;  // 16-byte vectors per row
        if (threadIdx.x < 8) reinterpret_cast<uint4*>(a_zero)[threadIdx.x] = make_uint4(0, 0, 0, 0);
        if (PRO != W4_PRO_NONE) {
            w4_fused_prologue<PRO>(a_tile, a_stride, rows, 0, 0, k_chunks * 64, K, A, X, NW, lda, eps);
        } else if ((K & 7) == 0) {
            for (int r = 0; r < rows; r++) {
                const u16* src_row = A + (size_t)r * K;
                for (int v = threadIdx.x; v < vecs; v += blockDim.x) {
                    const bool in = 8 * v < K;  // K % 8 == 0: all 8 in or out
                    cp_async16_ca(a_tile + r * a_stride + 8 * v, in ? (const void*)(src_row + 8 * v) : (const void*)A,
                                  in ? 16 : 0);
                }
            }
        } else {
            for (int r = 0; r < rows; r++) {
                const u16* src_row = A + (size_t)r * K;
                for (int c = threadIdx.x; c < k_chunks * 64; c += blockDim.x)
                    a_tile[r * a_stride + c] = c < K ? src_row[c] : (u16)0;
            }
        }
        cp_async_commit();
    }
#endif
    cp_async_wait<0>();
    __syncthreads();

    constexpr bool TWO_ACC = !POST;
    float acc[RH][4];
    float gacc[RH][4];
    float gacc_odd[TWO_ACC ? RH : 1][4];
#pragma unroll
    for (int r = 0; r < RH; r++)
#pragma unroll
        for (int i = 0; i < 4; i++) {
            acc[r][i] = 0.0f;
            gacc[r][i] = 0.0f;
            gacc_odd[TWO_ACC ? r : 0][i] = 0.0f;
        }
    // Token row r*8 + g of this lane at chunk 0, 64 halves per chunk; lanes
    // of tokens >= M read the zero halves, advancing 0.
    const u16* a_lane[RH];
    int a_step[RH];
#pragma unroll
    for (int r = 0; r < RH; r++) {
        const bool real = r * 8 + g < rows;
        a_lane[r] = real ? a_tile + (r * 8 + g) * a_stride + 16 * t : a_zero + 16 * t;
        a_step[r] = real ? 64 : 0;
    }
    int left = POST ? group_chunks - c_c % group_chunks : 0;  // chunks to the group end
    bool seg_from_start = c_c == 0;  // the current segment began at chunk 0
    bool first_seg = true;
    // Sums of the warp's first / last segment when its column block is
    // shared with other warps (column block index, -1: none).
    float head[RH][4], tail[RH][4];
    int head_nb = -1, tail_nb = -1;

#pragma unroll 1
    for (int it = 0; it < n_my; it++) {
        const int slot = it & (STAGES - 1);
        cp_async_wait<STAGES - 1>();
        const uint4 w = lds128_at(ring_w + slot * 512);
        const u32 sc = lds32_at(ring_s + slot * 128);
        u32 act[RH][8];
#pragma unroll
        for (int r = 0; r < RH; r++) {
            const u16* ap = a_lane[r] + c_c * a_step[r];
            const uint4 v0 = *reinterpret_cast<const uint4*>(ap);
            const uint4 v1 = *reinterpret_cast<const uint4*>(ap + 8);
            act[r][0] = v0.x; act[r][1] = v0.y; act[r][2] = v0.z; act[r][3] = v0.w;
            act[r][4] = v1.x; act[r][5] = v1.y; act[r][6] = v1.z; act[r][7] = v1.w;
        }
        float sl = 0.0f, sh = 0.0f;
        u32 s0 = 0, s1 = 0, z0 = 0, z1 = 0;
        if (POST) {
            sl = f16_lo_to_f32_now(sc);  // column g
            sh = f16_hi_to_f32_now(sc);  // column g + 8
        } else {
            const u32 sa = scale2_to_act2(sc);
            s0 = dup_lo(sa);
            s1 = dup_hi(sa);
            if (HAS_Z) {
                const u32 zs = scale2_to_act2(lds32_at(ring_z + slot * 128));
                z0 = dup_lo(zs);
                z1 = dup_hi(zs);
            } else {
                z0 = act2_mul(s0, ACT2_NEG8);  // -8 * scale, exact
                z1 = act2_mul(s1, ACT2_NEG8);
            }
        }
        const u32 words[4] = {w.x, w.y, w.z, w.w};
#pragma unroll
        for (int j = 0; j < 4; j++) {
            u32 wa[4];
            if (POST) {
                dequant_word_unscaled(words[j], wa);
            } else {
                u32 b[2][2];
                dequant_word(words[j], s0, s1, z0, z1, b);
                wa[0] = b[0][0]; wa[1] = b[1][0]; wa[2] = b[0][1]; wa[3] = b[1][1];
            }
#pragma unroll
            for (int r = 0; r < RH; r++) {
                const u32 bb[2] = {act[r][2 * j], act[r][2 * j + 1]};
                if (TWO_ACC && (j & 1))
                    mma_16816(gacc_odd[TWO_ACC ? r : 0], wa, bb);
                else
                    mma_16816(gacc[r], wa, bb);
            }
        }
        // The slot's values are in registers: refill it with unit it + STAGES.
        if (it + STAGES < n_my) issue(slot);
        cp_async_commit();

        const bool seg_end = c_c == k_chunks - 1 || it == n_my - 1;
        if (POST && (--left == 0 || seg_end)) {
#pragma unroll
            for (int r = 0; r < RH; r++)
#pragma unroll
                for (int i = 0; i < 4; i++) {
                    acc[r][i] = fmaf(gacc[r][i], i < 2 ? sl : sh, acc[r][i]);
                    gacc[r][i] = 0.0f;
                }
            left = group_chunks;
        }
        if (!seg_end) {
            c_c++;
            continue;
        }
        if (!POST) {
#pragma unroll
            for (int r = 0; r < RH; r++)
#pragma unroll
                for (int i = 0; i < 4; i++) {
                    acc[r][i] = gacc[r][i] + gacc_odd[TWO_ACC ? r : 0][i];
                    gacc[r][i] = 0.0f;
                    gacc_odd[TWO_ACC ? r : 0][i] = 0.0f;
                }
        }
        // Accumulator (r, i): column c_nb*16 + g + 8*(i>>1), token row
        // r*8 + 2t + (i&1).
        if (seg_from_start && c_c == k_chunks - 1) {
            // The whole column block is this warp's: write it.
#pragma unroll
            for (int r = 0; r < RH; r++)
#pragma unroll
                for (int i = 0; i < 4; i++) {
                    const int row = r * 8 + 2 * t + (i & 1);
                    const int col = c_nb * 16 + g + 8 * (i >> 1);
                    if (row < M && col < N) C[(size_t)row * N + col] = f32_to_act(acc[r][i]);
                }
        } else {
            // A shared column block: only the warp's first or last segment.
            // Kept in registers and published after the loop, so that the
            // fence and the ticket never stall the stream.
#pragma unroll
            for (int r = 0; r < RH; r++)
#pragma unroll
                for (int i = 0; i < 4; i++) {
                    if (first_seg) head[r][i] = acc[r][i];
                    else tail[r][i] = acc[r][i];
                }
            if (first_seg) head_nb = c_nb;
            else tail_nb = c_nb;
        }
#pragma unroll
        for (int r = 0; r < RH; r++)
#pragma unroll
            for (int i = 0; i < 4; i++) acc[r][i] = 0.0f;
        c_nb++;
        c_c = 0;
        left = group_chunks;
        seg_from_start = true;
        first_seg = false;
    }
    cp_async_wait<0>();

    // Publish the shared segments: fp32 sums in slots 2gw (head) and
    // 2gw + 1 (tail), one fence, then a ticket per column block; the last
    // contributor adds the slots in warp order (independent of arrival).
    if (head_nb < 0 && tail_nb < 0) return;
    const long long units = (long long)nb_count * k_chunks;
    const long long total_warps = (long long)gridDim.x * n_warps;
    const long long gw = (long long)blockIdx.x * n_warps + warp;
    float* mine = partials + 2 * gw * (RH * 4 * 32) + lane;
#pragma unroll
    for (int r = 0; r < RH; r++)
#pragma unroll
        for (int i = 0; i < 4; i++) {
            if (head_nb >= 0) mine[(r * 4 + i) * 32] = head[r][i];
            if (tail_nb >= 0) mine[(RH * 4 + r * 4 + i) * 32] = tail[r][i];
        }
    // Per-warp tickets: the warp's stores are released by lane 0's acq_rel
    // add through __syncwarp (marlin_common.cuh, atom_add_acq_rel_gpu).
    __syncwarp();
#pragma unroll 1
    for (int e = 0; e < 2; e++) {
        const int nb = e == 0 ? head_nb : tail_nb;
        if (nb < 0) continue;
        u32 prev = 0;
        if (lane == 0) prev = atom_add_acq_rel_gpu(&tickets[nb]);
        prev = __shfl_sync(0xFFFFFFFFu, prev, 0);
        const long long u0 = (long long)nb * k_chunks;
        const long long w_first = sk_warp_of(u0, units, total_warps);
        const long long w_last = sk_warp_of(u0 + k_chunks - 1, units, total_warps);
        if (prev != (u32)(w_last - w_first)) continue;
        __syncwarp();  // lane 0's acquire before every lane's reads
        float sum[RH][4];
#pragma unroll
        for (int r = 0; r < RH; r++)
#pragma unroll
            for (int i = 0; i < 4; i++) sum[r][i] = 0.0f;
        for (long long w2 = w_first; w2 <= w_last; w2++) {
            // Slot of warp w2 for this column block: its head when the block
            // is the first of w2's share, else its tail.
            const long long first_nb = (w2 * units / total_warps) / k_chunks;
            const float* theirs = partials + (2 * w2 + (first_nb == nb ? 0 : 1)) * (RH * 4 * 32) + lane;
#pragma unroll
            for (int r = 0; r < RH; r++)
#pragma unroll
                for (int i = 0; i < 4; i++) sum[r][i] += ld_cg_f32(theirs + (r * 4 + i) * 32);
        }
#pragma unroll
        for (int r = 0; r < RH; r++)
#pragma unroll
            for (int i = 0; i < 4; i++) {
                const int row = r * 8 + 2 * t + (i & 1);
                const int col = nb * 16 + g + 8 * (i >> 1);
                if (row < M && col < N) C[(size_t)row * N + col] = f32_to_act(sum[r][i]);
            }
        if (lane == 0) tickets[nb] = 0u;  // ready for the next launch
    }
}

#define W4A16_SK_ENTRY(NAME, RH, STAGES, HAS_Z, POST)                                            \
    extern "C" __global__ void __launch_bounds__(512, 1) NAME(                                       \
        const u16* __restrict__ A, const uint4* __restrict__ W, const u32* __restrict__ S,        \
        const u32* __restrict__ Z, u16* __restrict__ C, float* __restrict__ partials,             \
        u32* __restrict__ tickets, int M, int N, int K, int n_pad, int k_chunks, int group_k32) { \
        w4a16_sk_body<RH, STAGES, HAS_Z, POST>(A, W, S, Z, C, partials, tickets, M, N, K, n_pad,  \
                                               k_chunks, group_k32);                              \
    }

// Keep STAGES (a power of two) in sync with `SK_STAGES` in src/int4/gemm.rs.
// m8: M <= 8 (one token tile), m16: M = 9..16; suffixes as the decode kernel.
#ifndef W4_FUSED_ENTRIES
W4A16_SK_ENTRY(w4a16_sk_m8, 1, 8, false, true)
W4A16_SK_ENTRY(w4a16_sk_m16, 2, 8, false, true)
W4A16_SK_ENTRY(w4a16_sk_m8s, 1, 8, false, false)
W4A16_SK_ENTRY(w4a16_sk_m16s, 2, 8, false, false)
W4A16_SK_ENTRY(w4a16_sk_m8z, 1, 8, true, false)
W4A16_SK_ENTRY(w4a16_sk_m16z, 2, 8, true, false)
#endif  // W4_FUSED_ENTRIES

#ifdef W4_FUSED_ENTRIES
// Fused variants (module `w4a16_gemm_fused`): symmetric weights with groups
// >= 64 (the POST kernels), M <= 16, the three (prologue, epilogue) pairs of
// a Llama-style decode block: _rms (q|k|v, gate|up: RMSNorm in, f16 out),
// _res (o: f16 in, residual add out), _glures (down: GLU in, residual add
// out). Arguments: the plain kernel's, then X (f32 rows to normalise), NW
// (norm weight), R (f32 residual stream), lda (row stride of A or X), eps,
// ssq and ssq_parts (the deferred norm's partials: written by _resnrm,
// read by _nrm; null in the other entries).
// The deferred-norm pair (change 76): _resnrm (o, down: f16 in, residual
// add out with the next norm's weighted rows and partial sums of squares),
// _nrm (q|k|v: those rows in, each output row scaled by its inverse norm).
#define W4A16_DEC_FUSED_ENTRY(NAME, RH, STAGES, PRO, EPI, NRM)                                    \
    extern "C" __global__ void __launch_bounds__(512) NAME(                                       \
        const u16* __restrict__ A, const uint4* __restrict__ W, const u32* __restrict__ S,        \
        const u32* __restrict__ Z, u16* __restrict__ C, float* __restrict__ partials,             \
        u32* __restrict__ tickets, int M, int N, int K, int n_pad, int k_chunks,                  \
        int group_k32, int splits, int nbpb, int k_slices, int flags,                             \
        const float* __restrict__ X, const float* __restrict__ NW, float* __restrict__ R,         \
        int lda, float eps, float* __restrict__ ssq, int ssq_parts) {                             \
        w4a16_dec_body<RH, STAGES, false, true, PRO, EPI, NRM>(A, W, S, Z, C, partials, tickets, M,  \
                                                               N, K, n_pad, k_chunks, group_k32,  \
                                                               splits, nbpb, k_slices, flags, X,  \
                                                               NW, R, lda, eps, ssq, ssq_parts);  \
    }
W4A16_DEC_FUSED_ENTRY(w4a16_dec_m4_rms, 1, 16, W4_PRO_RMS, W4_EPI_STORE, false)
W4A16_DEC_FUSED_ENTRY(w4a16_dec_m8_rms, 1, 8, W4_PRO_RMS, W4_EPI_STORE, false)
W4A16_DEC_FUSED_ENTRY(w4a16_dec_m16_rms, 2, 8, W4_PRO_RMS, W4_EPI_STORE, false)
W4A16_DEC_FUSED_ENTRY(w4a16_dec_m4_res, 1, 16, W4_PRO_NONE, W4_EPI_RESID, false)
W4A16_DEC_FUSED_ENTRY(w4a16_dec_m8_res, 1, 8, W4_PRO_NONE, W4_EPI_RESID, false)
W4A16_DEC_FUSED_ENTRY(w4a16_dec_m16_res, 2, 8, W4_PRO_NONE, W4_EPI_RESID, false)
W4A16_DEC_FUSED_ENTRY(w4a16_dec_m4_glures, 1, 16, W4_PRO_GLU, W4_EPI_RESID, false)
W4A16_DEC_FUSED_ENTRY(w4a16_dec_m8_glures, 1, 8, W4_PRO_GLU, W4_EPI_RESID, false)
W4A16_DEC_FUSED_ENTRY(w4a16_dec_m16_glures, 2, 8, W4_PRO_GLU, W4_EPI_RESID, false)
W4A16_DEC_FUSED_ENTRY(w4a16_dec_m4_nrm, 1, 16, W4_PRO_NONE, W4_EPI_STORE, true)
W4A16_DEC_FUSED_ENTRY(w4a16_dec_m8_nrm, 1, 8, W4_PRO_NONE, W4_EPI_STORE, true)
W4A16_DEC_FUSED_ENTRY(w4a16_dec_m16_nrm, 2, 8, W4_PRO_NONE, W4_EPI_STORE, true)
W4A16_DEC_FUSED_ENTRY(w4a16_dec_m4_resnrm, 1, 16, W4_PRO_NONE, W4_EPI_RESNRM, false)
W4A16_DEC_FUSED_ENTRY(w4a16_dec_m8_resnrm, 1, 8, W4_PRO_NONE, W4_EPI_RESNRM, false)
W4A16_DEC_FUSED_ENTRY(w4a16_dec_m16_resnrm, 2, 8, W4_PRO_NONE, W4_EPI_RESNRM, false)

// Stream-K with the RMSNorm prologue (gate|up at N >= 14336, f16 out).
#define W4A16_SK_FUSED_ENTRY(NAME, RH, STAGES, PRO)                                              \
    extern "C" __global__ void __launch_bounds__(512, 1) NAME(                                   \
        const u16* __restrict__ A, const uint4* __restrict__ W, const u32* __restrict__ S,        \
        const u32* __restrict__ Z, u16* __restrict__ C, float* __restrict__ partials,             \
        u32* __restrict__ tickets, int M, int N, int K, int n_pad, int k_chunks, int group_k32,   \
        const float* __restrict__ X, const float* __restrict__ NW, int lda, float eps) {          \
        w4a16_sk_body<RH, STAGES, false, true, PRO>(A, W, S, Z, C, partials, tickets, M, N, K,    \
                                                    n_pad, k_chunks, group_k32, X, NW, lda, eps); \
    }
W4A16_SK_FUSED_ENTRY(w4a16_sk_m8_rms, 1, 8, W4_PRO_RMS)
W4A16_SK_FUSED_ENTRY(w4a16_sk_m16_rms, 2, 8, W4_PRO_RMS)

// The gate|up GEMM with the GLU in its epilogue (W4_EPI_GLU; M <= 16, one
// split, int4_gemm_glu in src/int4/gemm.rs): the plain decode entry's
// arguments, N = 2F the stacked weight's rows, C (M, F); flags as the plain
// kernels' plus W4_DEC_GLU_GELU, then the deferred norm's ssq, ssq_parts
// and eps (read by the _glunrm entries only). 16 stages (M <= 4) or 8; RH
// token tiles of 8 (2 at M = 9..16).
#define W4A16_DEC_GLU_ENTRY(NAME, RH, STAGES, NRM)                                                \
    extern "C" __global__ void __launch_bounds__(512) NAME(                                       \
        const u16* __restrict__ A, const uint4* __restrict__ W, const u32* __restrict__ S,        \
        const u32* __restrict__ Z, u16* __restrict__ C, float* __restrict__ partials,             \
        u32* __restrict__ tickets, int M, int N, int K, int n_pad, int k_chunks,                  \
        int group_k32, int splits, int nbpb, int k_slices, int flags, float* __restrict__ ssq,    \
        int ssq_parts, float eps) {                                                               \
        w4a16_dec_body<RH, STAGES, false, true, W4_PRO_NONE, W4_EPI_GLU, NRM>(                    \
            A, W, S, Z, C, partials, tickets, M, N, K, n_pad, k_chunks, group_k32, splits, nbpb,  \
            k_slices, flags, 0, 0, 0, 0, eps, ssq, ssq_parts);                                    \
    }
W4A16_DEC_GLU_ENTRY(w4a16_dec_m4_glu, 1, 16, false)
W4A16_DEC_GLU_ENTRY(w4a16_dec_m8_glu, 1, 8, false)
W4A16_DEC_GLU_ENTRY(w4a16_dec_m16_glu, 2, 8, false)
// The deferred norm's GLU entries (ssq read, gate and up rows scaled).
W4A16_DEC_GLU_ENTRY(w4a16_dec_m4_glunrm, 1, 16, true)
W4A16_DEC_GLU_ENTRY(w4a16_dec_m8_glunrm, 1, 8, true)
W4A16_DEC_GLU_ENTRY(w4a16_dec_m16_glunrm, 2, 8, true)
#endif  // W4_FUSED_ENTRIES

// Benchmark stand-in for the decode step's small kernels (norm, RoPE,
// attention, GLU: ~4 us each, one or a few blocks, latency-bound): one warp
// that waits on its predecessor, lets its dependent launch (PDL), then
// spins `cycles` SM clocks. `marlin-cuda-bench` times GEMMs launched after
// it to see what the decode graph sees (src/bench.rs, `ctx us`).
extern "C" __global__ void __launch_bounds__(32) w4_bench_delay(long long cycles) {
    w4_pdl_enter();
    const long long t0 = clock64();
    while (clock64() - t0 < cycles) {
    }
}

// Dequantize the packed weight to a dense (N, K) row-major matrix of the
// activation type (the large-M path: dequantize once, then a cuBLAS GEMM):
// w4_dequant_f16, or w4_dequant_bf16 in the MARLIN_ACT_BF16 module. One
// thread per (n16 block, 64-chunk, lane): reads 16 bytes of codes, writes
// 2 x 16 halves. Launched with n_pad/16 * k_chunks * 32 threads.
#ifdef MARLIN_ACT_BF16
#define W4_DEQUANT_NAME w4_dequant_bf16
#else
#define W4_DEQUANT_NAME w4_dequant_f16
#endif
extern "C" __global__ void __launch_bounds__(256) W4_DEQUANT_NAME(
    const uint4* __restrict__ W, const u32* __restrict__ S, const u32* __restrict__ Z,
    u16* __restrict__ out, int N, int K, int n_pad, int k_chunks, int group_k32) {
    const long long idx = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    const int nb_count = n_pad >> 4;
    if (idx >= (long long)nb_count * k_chunks * 32) return;
    const int lane = (int)(idx & 31);
    // idx = ((tile * k_chunks + c) * 4 + warp) * 32 + lane (see pack.rs).
    const long long tc = idx >> 7;
    const int c = (int)(tc % k_chunks);
    const int nb = (int)(tc / k_chunks) * 4 + (int)((idx >> 5) & 3);
    const int g = lane >> 2, t = lane & 3;
    const uint4 w = W[idx];
    // Scale group of this lane's 16 reduction indices (groups of 32 * group_k32).
    const int gi = group_k32 >= 2 ? c / (group_k32 >> 1) : 2 * c + (t >> 1);
    const size_t at = ((size_t)gi * nb_count + nb) * 8 + g;
    const u32 s = scale2_to_act2(S[at]);
    const u32 s0 = dup_lo(s), s1 = dup_hi(s);
    u32 z0, z1;
    if (Z) {
        const u32 zs = scale2_to_act2(Z[at]);
        z0 = dup_lo(zs);
        z1 = dup_hi(zs);
    } else {
        z0 = act2_mul(s0, ACT2_NEG8);
        z1 = act2_mul(s1, ACT2_NEG8);
    }
    const u32 words[4] = {w.x, w.y, w.z, w.w};
    u32 vals[2][8];  // [h][j*2 + r]: f16x2 of k = 16t + 4j + 2r + {0,1}
#pragma unroll
    for (int j = 0; j < 4; j++) {
        u32 b[2][2];
        dequant_word(words[j], s0, s1, z0, z1, b);
#pragma unroll
        for (int h = 0; h < 2; h++) {
            vals[h][2 * j] = b[h][0];
            vals[h][2 * j + 1] = b[h][1];
        }
    }
    const int k0 = c * 64 + 16 * t;
#pragma unroll
    for (int h = 0; h < 2; h++) {
        const int n = nb * 16 + 8 * h + g;
        if (n >= N) continue;
        u16* row = out + (size_t)n * K;
        if ((K & 7) == 0 && k0 + 16 <= K) {
            uint4* dst = (uint4*)(row + k0);
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

// ---------------------------------------------------------------------------
// Random symmetric INT4 weights generated on the device straight into the
// packed layout (benchmark models of several GB that must not be built and
// repacked on the host). Keep the hash and the scale-bit recipe in sync with
// `hashed_int4` in src/int4/random.rs, which builds the same tensor on the
// host (the GPU test compares the packed buffers bit for bit).

__device__ __forceinline__ unsigned long long mix64(unsigned long long x) {
    x ^= x >> 30;
    x *= 0xBF58476D1CE4E5B9ull;
    x ^= x >> 27;
    x *= 0x94D049BB133111EBull;
    x ^= x >> 31;
    return x;
}

// words: (n_pad/64 tiles, k_chunks, 4 warps, 32 lanes, 4) u32, see pack.rs.
// Raw signed code of (row, col) = mix64(seed + row*K + col) & 15, stored + 8.
extern "C" __global__ void __launch_bounds__(256) w4_random_words(
    u32* __restrict__ words, int N, int K, int k_chunks, long long total, unsigned long long seed) {
    for (long long w = (long long)blockIdx.x * blockDim.x + threadIdx.x; w < total;
         w += (long long)gridDim.x * blockDim.x) {
        const int j = (int)(w & 3);
        const long long i16 = w >> 2;
        const int lane = (int)(i16 & 31);
        const long long tc = i16 >> 7;
        const int c = (int)(tc % k_chunks);
        const int nb = (int)(tc / k_chunks) * 4 + (int)((i16 >> 5) & 3);
        const int g = lane >> 2, t = lane & 3;
        u32 word = 0;
#pragma unroll
        for (int half = 0; half < 2; half++) {
            const int col_n = nb * 16 + 8 * half + g;
#pragma unroll
            for (int slot = 0; slot < 4; slot++) {
                const int kk = c * 64 + 16 * t + 4 * j + slot;
                if (col_n < N && kk < K) {
                    const u32 raw = (u32)mix64(seed + (unsigned long long)col_n * K + kk) & 15u;
                    word |= (raw ^ 8u) << (4 * ((slot & 1) * 4 + (slot >> 1) + 2 * half));
                }
            }
        }
        words[w] = word;
    }
}

// scales: (groups, n_pad/16, 8) f16x2; scale of (row, group) has f16
// exponent field 6 + h % 3 (2^-9 .. 2^-7 binades) and 10 random mantissa
// bits, h = mix64(seed ^ 0x5CA1E5 + row*groups + group); padded rows 0.
extern "C" __global__ void __launch_bounds__(256) w4_random_scales(
    u32* __restrict__ scales, int N, int nb_count, int groups, long long total, unsigned long long seed) {
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < total;
         i += (long long)gridDim.x * blockDim.x) {
        const int g = (int)(i & 7);
        const int nb = (int)((i >> 3) % nb_count);
        const int gi = (int)((i >> 3) / nb_count);
        u32 pair = 0;
#pragma unroll
        for (int half = 0; half < 2; half++) {
            const int col = nb * 16 + 8 * half + g;
            if (col < N) {
                const unsigned long long h = mix64((seed ^ 0x5CA1E5ull) + (unsigned long long)col * groups + gi);
                const u32 bits = ((6u + (u32)(h % 3ull)) << 10) | (u32)((h >> 8) & 0x3FFull);
                pair |= bits << (16 * half);
            }
        }
        scales[i] = pair;
    }
}
