// W4A16 GEMM on Hopper tensor cores (wgmma, sm_90a): C (M, N) f16 =
// A (M, K) f16 . W^T with W in the packed INT4 layout of src/int4/pack.rs
// (the same buffers as kernels/w4a16_gemm.cu: no second copy, no repack).
//
// The product is computed transposed, D^T (N x M) = W (N x K) . A^T:
// - wgmma's A operand (64 rows x k16, from REGISTERS) is the dequantised
//   weight. Warp w of a warpgroup supplies rows 16w..16w+15 with the
//   register layout of mma.sync m16n8k16's A fragment, which is exactly
//   what one lane's packed word yields for its n16 block (the decode kernel
//   w4a16_dec_* feeds the same registers to mma.sync). One warpgroup = one
//   64-column tile of the packing; a block has NWG of them (2..4), which
//   share one activation tile.
// - wgmma's B operand (k16 x TOK tokens, from SHARED memory, K-major) is
//   the activation tile. The packing permutes K inside each 64-chunk: for
//   k16 step j, fragment index kf (0..15) is chunk offset
//   16*t + 4*j + 2*(kf/8) + kf%2 with t = (kf%8)/2. The activations are
//   staged in that order: each 4-byte pair (k, k+1) of a token row is copied
//   by one cp.async to its core-matrix slot (one warp instruction = one
//   token's 128 contiguous bytes of the chunk, coalesced).
// - Shared layout of one stage, no swizzle: core matrix (j, hi, n/8) of
//   8 tokens x 16 bytes at j*SJ + hi*LBO + 16*n, LBO = 16*TOK + 16,
//   SJ = 2*LBO. The 16-byte pads make (j, hi) land on 8 different 16-byte
//   bank groups, so the 32 pair copies of one warp instruction hit 32
//   different banks.
// - Pipeline: STAGES ring of (activation tile + each lane's 16 B of codes
//   and 4 B scale) filled by cp.async in chunk order (running slots and
//   source pointers: the lean refills of change 52b), PREFETCH = STAGES - 2
//   chunks ahead;
//   per chunk: wait, fence.proxy.async, block barrier, refill the slot of
//   chunk it-2 (its wgmma retired: every warpgroup waited for it before this
//   barrier), dequantise (lop3 + 0x6400 magic, one fma.f16x2 for scale and
//   zero), 4 wgmma (one per k16 step), commit, wait until <= 1 group is in
//   flight, so the dequantisation of the next chunk overlaps the tensor
//   cores.
// - Split-K over gridDim.z with the fp32 partials and atomic-ticket
//   reduction of w4a16_gemm.cu (split order, bit-deterministic).
//
// Everything is guarded by __CUDA_ARCH_FEAT_SM90_ALL (sm_90a): compiled
// for any other target the module is empty, and the host (src/int4/wgmma.rs)
// only loads it on compute capability 9.0.
//
// Shared helpers (lop3_and_or, hfma2, cp_async_wait, wgmma_wait, ...) come
// from marlin_common.cuh, an in-memory NVRTC header (no search path).
//
// Two modules are built from this source (src/int4/wgmma.rs): the
// production one (the entries used by the library) and, with
// W4G_DIAG_ENTRIES defined, one holding only the session-6 LEGACY entries
// (`_e0`) and session 8's refill code (`_s8`, change 52b), for same-run
// A/Bs, compiled and loaded only when `MARLIN_WGMMA_LEGACY_TAIL=1` /
// `MARLIN_WGMMA_S8_LOOP=1` (or a test's override) selects them.

#include "marlin_common.cuh"

#if defined(__CUDA_ARCH_FEAT_SM90_ALL)

// Programmatic dependent launch (src/ops/launch.rs; added by the decode-step
// work, docs/CUDA.md change 25): launched with the PDL attribute, every block
// waits here for the previous kernel (the producer of A) to complete before
// touching memory, then lets the next kernel's grid launch.
__device__ __forceinline__ void w4g_pdl_enter() {
    pdl_wait();
    pdl_trigger();
}

// Bits of the entries' `flags` argument (src/int4/wgmma.rs, `launch`).
#define W4G_WEIGHTS_BEFORE_WAIT 1  // first ring of codes / scales before the PDL wait
#define W4G_PROBE_NO_ACT 2         // diagnostic: no activation copies
#define W4G_PROBE_NO_SYNC 4        // diagnostic: no activation copies, no barrier per chunk
#define W4G_ACT_AHEAD_4 8          // activations 4 chunks ahead, not PREFETCH (opt-in; change 46: within noise)
#define W4G_PROBE_NO_MMA 16        // diagnostic: copies, waits and barriers only (no dequantisation, no wgmma)

__device__ __forceinline__ void cp_async16_cg(u32 dst, const void* src) {
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16;" ::"r"(dst), "l"(src));
}
__device__ __forceinline__ void cp_async4(u32 dst, const void* src) {
    asm volatile("cp.async.ca.shared.global [%0], [%1], 4;" ::"r"(dst), "l"(src));
}
// 4-byte copy; src_bytes = 0 writes zeros and reads nothing.
__device__ __forceinline__ void cp_async4_zfill(u32 dst, const void* src, int src_bytes) {
    asm volatile("cp.async.ca.shared.global [%0], [%1], 4, %2;" ::"r"(dst), "l"(src), "r"(src_bytes));
}

// Generic-proxy writes (cp.async, st.shared) made visible to the async proxy
// (wgmma reads shared memory through it).
__device__ __forceinline__ void fence_proxy_async() { asm volatile("fence.proxy.async.shared::cta;" ::: "memory"); }
// Compiler-only use of a fragment: its registers stay allocated up to here.
__device__ __forceinline__ void keep_alive(const u32 (&f)[4][4]) {
#pragma unroll
    for (int j = 0; j < 4; j++)
        asm volatile("" ::"r"(f[j][0]), "r"(f[j][1]), "r"(f[j][2]), "r"(f[j][3]) : "memory");
}

// Shared-memory matrix descriptor, no swizzle (layout type 0, bits 62-63):
// start address >> 4 (bits 0-13), leading byte offset (between the two
// core matrices along K) >> 4 (bits 16-29), stride byte offset (between
// 8-token groups) >> 4 (bits 32-45).
__device__ __forceinline__ unsigned long long smem_desc(u32 addr, u32 lbo, u32 sbo) {
    return (unsigned long long)((addr & 0x3FFFFu) >> 4) | ((unsigned long long)(lbo >> 4) << 16) |
           ((unsigned long long)(sbo >> 4) << 32);
}

template <int TOK>
struct ActLayout {
    static constexpr u32 LBO = 16 * TOK + 16;     // hi = 1 core matrices
    static constexpr u32 SJ = 2 * LBO;            // next k16 step
    static constexpr u32 STAGE = 4 * SJ;          // one 64-chunk x TOK tokens
};

// Grid: x = token block (TOK tokens), y = block of NWG 64-column tiles (one
// per warpgroup), z = K split. Dynamic shared memory: STAGES x (activation
// stage + NWG*128 lanes
// x (16 B codes + 4 B scale (+ 4 B zero))).
// LEGACY (`_e0` entries, `MARLIN_WGMMA_LEGACY_TAIL=1`, same-run A/B of
// session 7's change 40): the session-6 unrolled prologue loops and
// epilogue (per-value partials (splits, M, n_pad), a fence per thread, the
// last block reading every split one round at a time).
template <int TOK, int NWG, int STAGES, bool HAS_Z, int MIN_BLOCKS, bool LEGACY, bool S8_LOOP>
__device__ __forceinline__ void w4a16_wgmma_body(
    const u16* __restrict__ A,          // (M, K) f16, row-major, K even
    const uint4* __restrict__ W,        // packed codes (pack.rs)
    const u32* __restrict__ S,          // (groups, n_pad/16, 8) f16x2 scales
    const u32* __restrict__ Z,          // same grid, f16x2 (-zero*scale)
    u16* __restrict__ C,                // (M, N) f16, row-major
    float* __restrict__ partials,       // split-K slots [split][block (x, y)][TOK/8][THREADS] float4 (LEGACY: (splits, M, n_pad) fp32)
    u32* __restrict__ tickets,          // (gridDim.y * gridDim.x), zero between launches
    int M, int N, int K, int n_pad, int k_chunks, int group_k32, int splits, int flags) {
    using L = ActLayout<TOK>;
    constexpr int PREFETCH = STAGES - 2;
    constexpr int THREADS = NWG * 128;
    constexpr int WARPS = NWG * 4;
    extern __shared__ __align__(128) unsigned char smem[];
    const int tid = threadIdx.x;
    const int lane = tid & 31;
    const int warp = tid >> 5;          // 0..7
    const int wg = warp >> 2;           // warpgroup 0 .. NWG-1
    const int w4 = warp & 3;            // warp within the warpgroup = n16 block
    const int g = lane >> 2;
    const int t = lane & 3;
    const int n_tiles = n_pad >> 6;
    const int tile = blockIdx.y * NWG + wg;
    const bool tile_valid = tile < n_tiles;
    const int nb = tile * 4 + w4;       // n16 block of this warp
    const int nb_count = n_pad >> 4;
    const int m_base = blockIdx.x * TOK;
    const int split = blockIdx.z;
    const int c_begin = (int)(((long long)split * k_chunks) / splits);
    const int c_end = (int)(((long long)(split + 1) * k_chunks) / splits);
    const int n_my = c_end - c_begin;

    const u32 act_base = smem_addr(smem);
    const u32 w_base = act_base + STAGES * L::STAGE;            // [STAGES][THREADS] x 16 B
    const u32 s_base = w_base + STAGES * THREADS * 16;        // [STAGES][THREADS] x 4 B
    const u32 z_base = s_base + STAGES * THREADS * 4;         // [STAGES][THREADS] x 4 B

    // This lane's pair (k = 2*lane, 2*lane + 1 of the chunk) goes to step
    // j = (lane%8)/2, core matrix hi = lane%2, 4-byte slot t = lane/8.
    const u32 pair_off = ((lane & 7) >> 1) * L::SJ + (lane & 1) * L::LBO + 4 * (lane >> 3);
    // Warp w copies tokens w, w + WARPS, ...; tokens >= M copy row M - 1
    // (their results are never stored), so no copy is predicated on M.
    constexpr int ROWS_PER_WARP = (TOK + WARPS - 1) / WARPS;
    const bool full_block = m_base + TOK <= M;
    const u16* a_warp = A + (size_t)(m_base + warp) * K;
    const size_t warp_stride = (size_t)WARPS * K;

    const uint4* wp = W + ((size_t)(tile_valid ? tile : 0) * k_chunks * 4 + w4) * 32 + lane;
    const size_t group_stride = (size_t)nb_count * 8;
    const u32* sp = S + (size_t)(tile_valid ? nb : 0) * 8 + g;
    const u32* zp = HAS_Z ? Z + (size_t)(tile_valid ? nb : 0) * 8 + g : nullptr;
    // Groups of 32 * group_k32: a shift when group_k32 is a power of two.
    const int group_shift = (group_k32 & (group_k32 - 1)) == 0 ? __ffs(group_k32) - 1 : -1;

    // Diagnostic probes (flags bits 1, 2 and 4, src/int4/wgmma.rs: output
    // meaningless): no activation copies; no activation copies and no block
    // barrier per chunk; every copy, wait and barrier but no dequantisation
    // and no wgmma (the kernel's memory pipeline alone, change 46).
    const bool probe_no_act = (flags & (W4G_PROBE_NO_ACT | W4G_PROBE_NO_SYNC)) != 0;
    const bool probe_no_sync = (flags & W4G_PROBE_NO_SYNC) != 0;
    const bool probe_no_mma = (flags & W4G_PROBE_NO_MMA) != 0;

    // The activation pairs of one chunk (after the PDL wait: A is written by
    // the predecessor).
    auto issue_act = [&](int slot, int chunk) {
        if (probe_no_act) return;
        const int col = chunk * 64 + 2 * lane;
        // Pairs past K (last chunk) are zero-filled; the clamped column keeps
        // the unread source address inside the row.
        const int bytes = col < K ? 4 : 0;
        const int col_c = min(col, K - 2);
        const u32 dst = act_base + slot * L::STAGE + pair_off + 16 * warp;
        if (full_block) {
            const u16* src = a_warp + col_c;
#pragma unroll
            for (int r = 0; r < ROWS_PER_WARP; r++)
                if (TOK % WARPS == 0 || warp + WARPS * r < TOK)
                    cp_async4_zfill(dst + 16 * WARPS * r, src + r * warp_stride, bytes);
        } else {
#pragma unroll
            for (int r = 0; r < ROWS_PER_WARP; r++) {
                const int tok = warp + WARPS * r;
                if (TOK % WARPS == 0 || tok < TOK) {
                    const int row = min(m_base + tok, M - 1);
                    cp_async4_zfill(dst + 16 * WARPS * r, A + (size_t)row * K + col_c, bytes);
                }
            }
        }
    };
    // The lane's codes and scale (and zero point) of one chunk: read-only
    // for every kernel, so they may be read before the PDL wait.
    auto issue_w = [&](int slot, int chunk) {
        if (tile_valid) {
            cp_async16_cg(w_base + (slot * THREADS + tid) * 16, wp + (size_t)chunk * 128);
            // Scale group of this lane's 16 reduction indices (k = 64*chunk +
            // 16t ..): groups are 32 * group_k32 wide (pack.rs).
            const int k32 = 2 * chunk + (t >> 1);
            const int group = group_shift >= 0 ? k32 >> group_shift : k32 / group_k32;
            const size_t gi = (size_t)group * group_stride;
            cp_async4(s_base + (slot * THREADS + tid) * 4, sp + gi);
            if (HAS_Z) cp_async4(z_base + (slot * THREADS + tid) * 4, zp + gi);
        }
    };
    auto issue = [&](int slot, int chunk) {
        issue_act(slot, chunk);
        issue_w(slot, chunk);
    };

    // Lean refills (session 9, change 52b; the S8_LOOP / LEGACY entries keep
    // the code above for same-run A/Bs). Nsight Compute of t64w2 at
    // 4096x14336 M = 64 counted ~211 warp instructions per warp and chunk
    // at 8.4 cycles per issued instruction (3.6 warps per scheduler):
    // the chunk time is that instruction stream, and ~95 of the 211 were
    // the refills' address arithmetic (64-bit index products, ring slot
    // modulo, the scale group, the K clamp of every activation pair). The
    // chunks are refilled in order, so the lean form keeps running state:
    // the next slot of each ring, the code pointer (+128 uint4 per chunk),
    // the activation source (+64 halves per chunk; only the last chunk of
    // K, where pairs can lie past K, and partial token tiles take the
    // clamped, zero-filling copies above) and 32-bit scale group indices.
    int w_fill_idx = 0, w_fill_slot = 0;  // next weight chunk (relative) and its slot
    int a_fill_idx = 0, a_fill_slot = 0;  // next activation chunk and its slot
    const uint4* w_fill_src = wp + (size_t)c_begin * 128;
    const u16* a_fill_src = a_warp + (size_t)c_begin * 64 + 2 * lane;
    const u32 w_dst0 = w_base + tid * 16;
    const u32 s_dst0 = s_base + tid * 4;
    const u32 z_dst0 = z_base + tid * 4;
    const u32 a_dst0 = act_base + pair_off + 16 * warp;
    const u32 group_stride32 = (u32)group_stride;
    // Scale / zero-point word of this lane in group 0 (the host checks that
    // every index of the scale rows fits 32 bits): one IMAD per refill
    // instead of rematerialising the 64-bit row pointer.
    const u32 s_off0 = (u32)((tile_valid ? nb : 0) * 8 + g);
    // Chunks whose 64 columns all lie inside K (no clamp, no zero fill).
    const int full_k_chunks = K >> 6;
    auto issue_w_next = [&]() {
        if (tile_valid) {
            const int chunk = c_begin + w_fill_idx;
            cp_async16_cg(w_dst0 + w_fill_slot * (THREADS * 16), w_fill_src);
            const int k32 = 2 * chunk + (t >> 1);
            const u32 group = (u32)(group_shift >= 0 ? k32 >> group_shift : k32 / group_k32);
            const u32 gi = group * group_stride32 + s_off0;
            cp_async4(s_dst0 + w_fill_slot * (THREADS * 4), S + gi);
            if (HAS_Z) cp_async4(z_dst0 + w_fill_slot * (THREADS * 4), Z + gi);
        }
        w_fill_src += 128;
        w_fill_idx++;
        w_fill_slot = w_fill_slot + 1 == STAGES ? 0 : w_fill_slot + 1;
    };
    auto issue_act_next = [&]() {
        const int chunk = c_begin + a_fill_idx;
        if (full_block && chunk < full_k_chunks) {
            if (!probe_no_act) {
                const u32 dst = a_dst0 + a_fill_slot * L::STAGE;
#pragma unroll
                for (int r = 0; r < ROWS_PER_WARP; r++)
                    if (TOK % WARPS == 0 || warp + WARPS * r < TOK)
                        cp_async4(dst + 16 * WARPS * r, a_fill_src + r * warp_stride);
            }
        } else {
            issue_act(a_fill_slot, chunk);
        }
        a_fill_src += 64;
        a_fill_idx++;
        a_fill_slot = a_fill_slot + 1 == STAGES ? 0 : a_fill_slot + 1;
    };

    float acc[TOK / 2];
#pragma unroll
    for (int i = 0; i < TOK / 2; i++) acc[i] = 0.0f;

    // Activation lookahead: PREFETCH chunks (with the weights) by default;
    // flags bit 3 (W4G_ACT_AHEAD_4, opt-in, not yet measured) 4 chunks.
    constexpr int ACT_AHEAD = PREFETCH < 4 ? PREFETCH : 4;
    const int act_ahead = (!LEGACY && (flags & W4G_ACT_AHEAD_4)) ? ACT_AHEAD : PREFETCH;

    // Prologue. Weights first (flags bit 0): the codes and scales of the
    // first PREFETCH chunks in one cp.async group before griddepcontrol.wait,
    // then the activations of each of those chunks in a group of its own.
    // Chunk it then needs group 1 + it (and the older weight group), with
    // PREFETCH - 1 newer groups in flight when it is consumed, the same
    // count as with one group per chunk: the wait in `step` is unchanged.
    if constexpr (LEGACY) {
        if (flags & W4G_WEIGHTS_BEFORE_WAIT) {
#pragma unroll
            for (int s = 0; s < PREFETCH; s++)
                if (s < n_my) issue_w(s, c_begin + s);
            cp_async_commit();
            w4g_pdl_enter();
#pragma unroll
            for (int s = 0; s < PREFETCH; s++) {
                if (s < n_my) issue_act(s, c_begin + s);
                cp_async_commit();
            }
        } else {
            w4g_pdl_enter();
#pragma unroll
            for (int s = 0; s < PREFETCH; s++) {
                if (s < n_my) issue(s, c_begin + s);
                cp_async_commit();
            }
        }
    } else {
        // Rolled loops (session 7): unrolled, the deep rings' prologue was
        // ~3.9k SASS instructions run once per block, mostly waiting for
        // instruction fetch (Nsight source counters). The weights run
        // PREFETCH chunks ahead (one cp.async group: all of the first ring),
        // the activations `act_ahead` (<= PREFETCH) chunks: with the deep
        // ring the 12 prologue chunks of 4-byte activation copies stall the
        // block's warps on the memory-instruction queue (`mio`, 24% of the
        // samples in call 2), which W4G_ACT_AHEAD_4 is to test. Groups: G0 (weights 0..PREFETCH-1), one group per
        // prologue activation chunk, then per iteration it one group with the
        // activations of chunk it + act_ahead and the weights of chunk
        // it + PREFETCH; chunk it is then complete with act_ahead - 1 newer
        // groups in flight (the wait in `step`).
        if (!(flags & W4G_WEIGHTS_BEFORE_WAIT)) w4g_pdl_enter();
        if constexpr (S8_LOOP) {
#pragma unroll 1
            for (int s = 0; s < PREFETCH; s++)
                if (s < n_my) issue_w(s, c_begin + s);
        } else {
#pragma unroll 1
            for (int s = 0; s < PREFETCH; s++)
                if (s < n_my) issue_w_next();
        }
        cp_async_commit();
        if (flags & W4G_WEIGHTS_BEFORE_WAIT) w4g_pdl_enter();
#pragma unroll 1
        for (int s = 0; s < act_ahead; s++) {
            if constexpr (S8_LOOP) {
                if (s < n_my) issue_act(s, c_begin + s);
            } else {
                if (s < n_my) issue_act_next();
            }
            cp_async_commit();
        }
    }

    // One chunk: wait for its copies, barrier, refill the slot of chunk
    // it - 2, dequantise into `frag`, 4 wgmma, wait until <= 1 group of this
    // warpgroup is in flight.
    // Ring slot of the chunk consumed next (lean form: a running counter).
    int use_slot = 0;
    // Shared-memory descriptor of slot 0, k16 step 0, as its two 32-bit
    // words; a slot or step adds its byte offset / 16 to the low word (the
    // whole ring lies below 2^18 bytes, so the 14-bit start field never
    // carries into the leading-byte-offset field): one 32-bit add per
    // wgmma instead of a 64-bit one.
    const unsigned long long desc0 = smem_desc(act_base, L::LBO, 128);
    const u32 desc0_lo = (u32)desc0;
    const unsigned long long desc0_hi = desc0 & 0xFFFFFFFF00000000ull;
    auto step = [&](int it, u32 (&frag)[4][4]) {
        int slot;
        if constexpr (LEGACY || S8_LOOP) {
            slot = it % STAGES;
        } else {
            slot = use_slot;
            use_slot = use_slot + 1 == STAGES ? 0 : use_slot + 1;
        }
        if (LEGACY || act_ahead == PREFETCH)
            cp_async_wait<PREFETCH - 1>();
        else
            cp_async_wait<ACT_AHEAD - 1>();
        fence_proxy_async();
        if (!probe_no_sync) __syncthreads();
        // Slot of chunk it - 2: every warpgroup retired its wgmma before
        // reaching this barrier (wait_group 1 at the end of iteration it-1).
        // Its activation part is refilled act_ahead - 2 iterations or more
        // later, never earlier (act_ahead <= PREFETCH = STAGES - 2).
        if constexpr (LEGACY) {
            if (it + PREFETCH < n_my) issue((it + PREFETCH) % STAGES, c_begin + it + PREFETCH);
        } else if constexpr (S8_LOOP) {
            if (it + act_ahead < n_my) issue_act((it + act_ahead) % STAGES, c_begin + it + act_ahead);
            if (it + PREFETCH < n_my) issue_w((it + PREFETCH) % STAGES, c_begin + it + PREFETCH);
        } else {
            // a_fill_idx == it + act_ahead, w_fill_idx == it + PREFETCH here.
            if (a_fill_idx < n_my) issue_act_next();
            if (w_fill_idx < n_my) issue_w_next();
        }
        cp_async_commit();
        if (!tile_valid || probe_no_mma) return;
        const uint4 w = *reinterpret_cast<const uint4*>(smem + (w_base - act_base) + (slot * THREADS + tid) * 16);
        const u32 sc = scale2_to_act2(*reinterpret_cast<const u32*>(smem + (s_base - act_base) + (slot * THREADS + tid) * 4));
        const u32 s0 = dup_lo(sc), s1 = dup_hi(sc);
        u32 z0, z1;
        if (HAS_Z) {
            const u32 zs = scale2_to_act2(*reinterpret_cast<const u32*>(smem + (z_base - act_base) + (slot * THREADS + tid) * 4));
            z0 = dup_lo(zs);
            z1 = dup_hi(zs);
        } else {
            z0 = act2_mul(s0, ACT2_NEG8);  // -8 * scale, exact
            z1 = act2_mul(s1, ACT2_NEG8);
        }
        const u32 words[4] = {w.x, w.y, w.z, w.w};
#pragma unroll
        for (int j = 0; j < 4; j++) {
            u32 b[2][2];
            dequant_word(words[j], s0, s1, z0, z1, b);
            frag[j][0] = b[0][0];
            frag[j][1] = b[1][0];
            frag[j][2] = b[0][1];
            frag[j][3] = b[1][1];
        }
#pragma unroll
        for (int i = 0; i < TOK / 2; i++) fence_operand(acc[i]);
        wgmma_fence();
        if constexpr (LEGACY || S8_LOOP) {
            const u32 stage_addr = act_base + slot * L::STAGE;
#pragma unroll
            for (int j = 0; j < 4; j++)
                wgmma_rs<TOK>(acc, frag[j], smem_desc(stage_addr + j * L::SJ, L::LBO, 128), 1);
        } else {
            const u32 stage_lo = desc0_lo + ((slot * L::STAGE) >> 4);
#pragma unroll
            for (int j = 0; j < 4; j++)
                wgmma_rs<TOK>(acc, frag[j], desc0_hi | (unsigned long long)(stage_lo + ((j * L::SJ) >> 4)), 1);
        }
        wgmma_commit();
#pragma unroll
        for (int i = 0; i < TOK / 2; i++) fence_operand(acc[i]);
        wgmma_wait<1>();
    };
    // The A registers of a wgmma must keep their value until it retires (the
    // wait_group of the next chunk). Two fragment sets, each kept alive past
    // the other chunk's wait, so that the compiler cannot reuse them for the
    // next dequantisation while the tensor cores still read them.
    u32 frag_even[4][4], frag_odd[4][4];
#pragma unroll
    for (int j = 0; j < 4; j++)
#pragma unroll
        for (int i = 0; i < 4; i++) {
            frag_even[j][i] = 0u;
            frag_odd[j][i] = 0u;
        }
    for (int it = 0; it < n_my; it += 2) {
        step(it, frag_even);
        keep_alive(frag_odd);
        if (it + 1 < n_my) {
            step(it + 1, frag_odd);
            keep_alive(frag_even);
        }
    }
    cp_async_wait<0>();
    wgmma_wait<0>();
#pragma unroll
    for (int i = 0; i < TOK / 2; i++) fence_operand(acc[i]);

    // acc[4q + e]: weight column n = nb*16 + g + 8*(e>>1), token
    // m_base + 8q + 2t + (e&1).
    if (splits == 1) {
        if (!tile_valid) return;
        acc_tile_store_act<TOK>(acc, C, M, N, m_base, nb, g, t);
        return;
    }
    if constexpr (LEGACY) {
        if (tile_valid) {
            acc_tile_store_partial<TOK>(acc, partials, split, M, n_pad, m_base, nb, g, t);
        }
        // One acq_rel ticket per block (atom_add_acq_rel_gpu, marlin_common.cuh).
        __syncthreads();
        __shared__ u32 is_last_legacy;
        const int ticket_legacy = blockIdx.y * gridDim.x + blockIdx.x;
        if (tid == 0) {
            const u32 prev = atom_add_acq_rel_gpu(&tickets[ticket_legacy]);
            is_last_legacy = (prev == (u32)(splits - 1)) ? 1u : 0u;
        }
        __syncthreads();
        if (!is_last_legacy) return;
        if (tile_valid) {
#pragma unroll
            for (int i = 0; i < TOK / 2; i++) acc[i] = 0.0f;
            for (int sp_i = 0; sp_i < splits; sp_i++) {
                const float* part = partials + (size_t)sp_i * M * n_pad;
                acc_tile_add_partial<TOK>(acc, part, M, n_pad, m_base, nb, g, t);
            }
            acc_tile_store_act<TOK>(acc, C, M, N, m_base, nb, g, t);
        }
        if (tid == 0) tickets[ticket_legacy] = 0u;
        return;
    }
    // Split-K hand-off (session 7): each thread stores its TOK/2 fp32 values
    // as TOK/8 float4 into the block's slot, thread-interleaved (slot
    // [split][block (x, y)][TOK/8][THREADS] float4: one warp instruction =
    // 512 contiguous bytes); the thread that owns the same outputs in the
    // last block reads them back from the same places (rows >= M are stored
    // and summed too: never written to C). One barrier, one acq_rel ticket
    // per block (release of every thread's stores through the barrier:
    // PTX fences are cumulative), instead of a fence per thread.
    const size_t blocks_xy = (size_t)gridDim.x * gridDim.y;
    const size_t block_xy = (size_t)blockIdx.y * gridDim.x + blockIdx.x;
    const size_t split_stride = blocks_xy * (TOK / 8) * THREADS;  // float4s
    float4* slots = reinterpret_cast<float4*>(partials) + block_xy * (TOK / 8) * THREADS + tid;
    if (tile_valid) {
        float4* mine_slot = slots + (size_t)split * split_stride;
#pragma unroll
        for (int i = 0; i < TOK / 8; i++)
            __stcg(mine_slot + (size_t)i * THREADS,
                   make_float4(acc[4 * i], acc[4 * i + 1], acc[4 * i + 2], acc[4 * i + 3]));
    }
    __syncthreads();
    __shared__ u32 is_last;
    const int ticket_idx = blockIdx.y * gridDim.x + blockIdx.x;
    if (tid == 0) {
        const u32 prev = atom_add_acq_rel_gpu(&tickets[ticket_idx]);
        is_last = (prev == (u32)(splits - 1)) ? 1u : 0u;
    }
    __syncthreads();
    if (!is_last) return;
    if (tile_valid) {
        // Sum the splits in split order (bit-deterministic): 0 + p0 + p1 +
        // ..., this block's own split from its registers (the value it
        // stored: the same bits). Where the launch bounds leave the
        // registers (2 x TOK/2 loaded values + the sums + ~64), two splits'
        // loads are in flight per round.
        constexpr int REG_CAP = 65536 / (NWG * 128 * MIN_BLOCKS);
        constexpr bool PAIR = 2 * TOK + 64 <= REG_CAP;
        // Without PAIR (t128 entries, 2-block t64) the own split is read
        // back like the others: no registers for a copy.
        float mine[PAIR ? TOK / 2 : 1];
#pragma unroll
        for (int i = 0; i < TOK / 2; i++) {
            if constexpr (PAIR) mine[i] = acc[i];
            acc[i] = 0.0f;
        }
        auto load_split = [&](int sp_i, float (&v)[TOK / 2]) {
            const float4* src = slots + (size_t)sp_i * split_stride;
#pragma unroll
            for (int i = 0; i < TOK / 8; i++) {
                float4 x;
                if constexpr (PAIR) {
                    x = sp_i == split ? make_float4(mine[4 * i], mine[4 * i + 1], mine[4 * i + 2], mine[4 * i + 3])
                                      : __ldcg(src + (size_t)i * THREADS);
                } else {
                    x = __ldcg(src + (size_t)i * THREADS);
                }
                v[4 * i] = x.x;
                v[4 * i + 1] = x.y;
                v[4 * i + 2] = x.z;
                v[4 * i + 3] = x.w;
            }
        };
#pragma unroll 1
        for (int sp_i = 0; sp_i < splits; sp_i += PAIR ? 2 : 1) {
            float v0[TOK / 2];
            load_split(sp_i, v0);
            if constexpr (PAIR) {
                float v1[TOK / 2];
                if (sp_i + 1 < splits) load_split(sp_i + 1, v1);
#pragma unroll
                for (int i = 0; i < TOK / 2; i++) acc[i] += v0[i];
                if (sp_i + 1 < splits) {
#pragma unroll
                    for (int i = 0; i < TOK / 2; i++) acc[i] += v1[i];
                }
            } else {
#pragma unroll
                for (int i = 0; i < TOK / 2; i++) acc[i] += v0[i];
            }
        }
        acc_tile_store_act<TOK>(acc, C, M, N, m_base, nb, g, t);
    }
    if (tid == 0) tickets[ticket_idx] = 0u;
}

#define W4A16_WGMMA_ENTRY(NAME, TOK, NWG, STAGES, HAS_Z, MIN_BLOCKS) W4A16_WGMMA_ENTRY_L(NAME, TOK, NWG, STAGES, HAS_Z, MIN_BLOCKS, false, false)
#define W4A16_WGMMA_ENTRY_L(NAME, TOK, NWG, STAGES, HAS_Z, MIN_BLOCKS, LEGACY, S8_LOOP)          \
    extern "C" __global__ void __launch_bounds__(NWG * 128, MIN_BLOCKS) NAME(                     \
        const u16* __restrict__ A, const uint4* __restrict__ W, const u32* __restrict__ S,        \
        const u32* __restrict__ Z, u16* __restrict__ C, float* __restrict__ partials,             \
        u32* __restrict__ tickets, int M, int N, int K, int n_pad, int k_chunks,                  \
        int group_k32, int splits, int flags) {                                                   \
        w4a16_wgmma_body<TOK, NWG, STAGES, HAS_Z, MIN_BLOCKS, LEGACY, S8_LOOP>(A, W, S, Z, C, partials, tickets, M, N, K, n_pad, \
                                             k_chunks, group_k32, splits, flags);              \
    }

// Keep (TOK, NWG, STAGES) in sync with `wgmma_variant` in src/int4/wgmma.rs.
// Name: t<tokens>w<warpgroups>, z = with zero points.
#ifndef W4G_DIAG_ENTRIES
W4A16_WGMMA_ENTRY(w4a16_wgmma_t32w2, 32, 2, 8, false, 2)
W4A16_WGMMA_ENTRY(w4a16_wgmma_t64w2, 64, 2, 6, false, 2)
W4A16_WGMMA_ENTRY(w4a16_wgmma_t64w4, 64, 4, 6, false, 1)
W4A16_WGMMA_ENTRY(w4a16_wgmma_t128w2, 128, 2, 6, false, 1)
W4A16_WGMMA_ENTRY(w4a16_wgmma_t128w3, 128, 3, 6, false, 1)
W4A16_WGMMA_ENTRY(w4a16_wgmma_t32w2z, 32, 2, 8, true, 2)
W4A16_WGMMA_ENTRY(w4a16_wgmma_t64w2z, 64, 2, 6, true, 2)
W4A16_WGMMA_ENTRY(w4a16_wgmma_t64w4z, 64, 4, 6, true, 1)
W4A16_WGMMA_ENTRY(w4a16_wgmma_t128w2z, 128, 2, 6, true, 1)
W4A16_WGMMA_ENTRY(w4a16_wgmma_t128w3z, 128, 3, 6, true, 1)
// Deep rings (session 7): one block per SM, as many stages as 227 KiB hold
// with zero points (d = deep).
W4A16_WGMMA_ENTRY(w4a16_wgmma_t32w2d, 32, 2, 16, false, 1)
W4A16_WGMMA_ENTRY(w4a16_wgmma_t64w2d, 64, 2, 14, false, 1)
W4A16_WGMMA_ENTRY(w4a16_wgmma_t128w2d, 128, 2, 10, false, 1)
W4A16_WGMMA_ENTRY(w4a16_wgmma_t32w2dz, 32, 2, 16, true, 1)
W4A16_WGMMA_ENTRY(w4a16_wgmma_t64w2dz, 64, 2, 14, true, 1)
W4A16_WGMMA_ENTRY(w4a16_wgmma_t128w2dz, 128, 2, 10, true, 1)
#else   // W4G_DIAG_ENTRIES
// Session-6 prologue and epilogue (LEGACY) of the symmetric entries, for
// same-run A/Bs (`MARLIN_WGMMA_LEGACY_TAIL=1`; zero-point weights keep the
// current entries). Only in the diagnostic module (DIAG_MODULE in
// src/int4/wgmma.rs).
W4A16_WGMMA_ENTRY_L(w4a16_wgmma_t32w2_e0, 32, 2, 8, false, 2, true, false)
W4A16_WGMMA_ENTRY_L(w4a16_wgmma_t64w2_e0, 64, 2, 6, false, 2, true, false)
W4A16_WGMMA_ENTRY_L(w4a16_wgmma_t64w4_e0, 64, 4, 6, false, 1, true, false)
W4A16_WGMMA_ENTRY_L(w4a16_wgmma_t128w2_e0, 128, 2, 6, false, 1, true, false)
W4A16_WGMMA_ENTRY_L(w4a16_wgmma_t128w3_e0, 128, 3, 6, false, 1, true, false)
W4A16_WGMMA_ENTRY_L(w4a16_wgmma_t32w2d_e0, 32, 2, 16, false, 1, true, false)
W4A16_WGMMA_ENTRY_L(w4a16_wgmma_t64w2d_e0, 64, 2, 14, false, 1, true, false)
W4A16_WGMMA_ENTRY_L(w4a16_wgmma_t128w2d_e0, 128, 2, 10, false, 1, true, false)
// Session 8's refill code (before change 52b's lean refills) of the
// symmetric entries, for same-run A/Bs (`MARLIN_WGMMA_S8_LOOP=1`).
W4A16_WGMMA_ENTRY_L(w4a16_wgmma_t32w2_s8, 32, 2, 8, false, 2, false, true)
W4A16_WGMMA_ENTRY_L(w4a16_wgmma_t64w2_s8, 64, 2, 6, false, 2, false, true)
W4A16_WGMMA_ENTRY_L(w4a16_wgmma_t64w4_s8, 64, 4, 6, false, 1, false, true)
W4A16_WGMMA_ENTRY_L(w4a16_wgmma_t128w2_s8, 128, 2, 6, false, 1, false, true)
W4A16_WGMMA_ENTRY_L(w4a16_wgmma_t128w3_s8, 128, 3, 6, false, 1, false, true)
W4A16_WGMMA_ENTRY_L(w4a16_wgmma_t32w2d_s8, 32, 2, 16, false, 1, false, true)
W4A16_WGMMA_ENTRY_L(w4a16_wgmma_t64w2d_s8, 64, 2, 14, false, 1, false, true)
W4A16_WGMMA_ENTRY_L(w4a16_wgmma_t128w2d_s8, 128, 2, 10, false, 1, false, true)
#endif  // W4G_DIAG_ENTRIES

#endif  // __CUDA_ARCH_FEAT_SM90_ALL
