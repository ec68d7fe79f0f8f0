// W4A16 GEMM on Hopper, warp-specialised (sm_90a): C (M, N) f16 =
// A (M, K) f16 . W^T, W in the packed INT4 layout of src/int4/pack.rs (the
// buffers every INT4 kernel reads; no second weight layout).
//
// Two kernels per call (src/int4/wgmma_ws.rs launches both):
//
// 1. `w4a16_ws_stage_t<TOK>` copies A once into a scratch laid out as the
//    shared-memory image of the main kernel's activation tiles:
//    (M blocks of TOK tokens, K chunks of 64, TOK rows of 128 bytes). Inside
//    a 64-chunk the K order is the pack's (position 16j + 8hi + q holds
//    k = 16(q/2) + 4j + 2hi + q%2: exactly the fragment order the dequantised
//    weights have in registers), and the eight 16-byte units of a row r are
//    stored at unit ^ (r % 8): the 128-byte swizzle of wgmma's K-major
//    shared-memory operand. Tokens >= M and k >= K are zeros, so the main
//    kernel needs no predicate and K may be odd. Cost: M*K*2 bytes read and
//    written, once per call.
// 2. `w4a16_ws_t<TOK>x<TPW>`: 3 warpgroups per block. Warpgroup 0 is the
//    producer (setmaxnreg 40): one thread streams, per 64-chunk, the
//    activation tile (one 1-D bulk copy of TOK*128 bytes: the staged image
//    is contiguous), the codes of the block's 64-column tiles (2 KiB each,
//    contiguous in the packing) and the two scale rows the chunk can touch
//    into a ring of STAGES slots, with "full" mbarriers counting bytes and
//    "empty" mbarriers that the 8 consumer warps arrive on. Warpgroups 1
//    and 2 are consumers (setmaxnreg 232), TPW 64-column tiles each: per
//    chunk they wait on "full", dequantise their lane's 16-byte code word
//    per tile (lop3 + 0x6400 magic, one fma.f16x2 for scale and zero) into
//    wgmma's register A operand (64 weight rows x k16: the m16n8k16 A
//    fragment per warp, which the packed word already is), issue 4 x TPW
//    `wgmma m64n<TOK>k16` against the swizzled activation tile (B, K-major,
//    shared memory), commit, wait until the previous chunk's group retired
//    and release its slot. No block barrier in the main loop; the
//    dequantisation of chunk i+1 overlaps the tensor cores on chunk i.
//    D^T (weights x tokens) is what wgmma computes: weights are wgmma's M,
//    tokens its N.
//    Split-K over gridDim.z: each split stores its fp32 block tile to its
//    own slot, the last block of a tile (atomic ticket) sums the slots in
//    split order (bit-deterministic). The f16 tile leaves through shared
//    memory (stmatrix, then 16-byte coalesced stores: ws_store_tile).
//
// Everything is guarded by __CUDA_ARCH_FEAT_SM90_ALL (sm_90a): compiled
// for any other target the module is empty, and the host only loads it on
// compute capability 9.0. Shared helpers (hfma2, mbar_wait, bulk_copy,
// wgmma_wait, ...) come from marlin_common.cuh, an in-memory NVRTC header.
//
// Modules built from this source: the INT4 production one (f16, and bf16
// with MARLIN_ACT_BF16; src/int4/wgmma_ws.rs); with WS_DIAG_ENTRIES, one
// holding only the diagnostic probes (`_pd`, `_pc`) and session 6's
// epilogue (`_e0`), compiled and loaded only when MARLIN_WGMMA_WS_PROBE or
// MARLIN_WGMMA_WS_OLD_EPILOGUE=1 selects them; with WS_WX_ENTRIES (f16 and
// bf16), the `wgemm` formats' entries (`wx_ws_*`, src/wgemm/wgmma_ws.rs:
// ws_body's FMT parameter, see WsCodes below).

#include "marlin_common.cuh"

#if defined(__CUDA_ARCH_FEAT_SM90_ALL)

// Programmatic dependent launch (src/ops/launch.rs): the staging kernel
// and the main kernel are launched with the PDL attribute. Every block lets
// the next kernel's grid launch at once; the main kernel's producer streams
// the first ring of weights, then waits here for the staging kernel (the
// writer of its activations) before the first activation copy. The
// consumers touch no memory of other kernels before the producer's copies
// (C, partials and tickets belong to this launch; the staging kernel
// waited for everything before it). pdl_trigger / pdl_wait: marlin_common.cuh.

// Same decoding as dequant_word (marlin_common.cuh; keep in sync), written
// straight into wgmma's A fragment order: f[0] = (row g, k pair 2t),
// f[1] = (row g+8, 2t), f[2] = (row g, 2t+8), f[3] = (row g+8, 2t+8);
// value u * scale + neg_zero_scale.
#ifdef MARLIN_ACT_BF16
__device__ __forceinline__ void ws_dequant(u32 q, u32 s0, u32 s1, u32 z0, u32 z1, u32 (&f)[4]) {
    u32 b[2][2];
    dequant_word(q, s0, s1, z0, z1, b);
    f[0] = b[0][0];
    f[1] = b[1][0];
    f[2] = b[0][1];
    f[3] = b[1][1];
}
#else
__device__ __forceinline__ void ws_dequant(u32 q, u32 s0, u32 s1, u32 z0, u32 z1, u32 (&f)[4]) {
    const u32 MAGIC = 0x64006400u;      // (1024, 1024)
    const u32 SIXTEENTH = 0x2C002C00u;  // (1/16, 1/16)
    const u32 NEG64 = 0xD400D400u;      // (-64, -64)
    const u32 LO = 0x000F000Fu;
    const u32 HI = 0x00F000F0u;
    const u32 q8 = q >> 8;
    f[0] = hfma2(hsub2(lop3_and_or(q, LO, MAGIC), MAGIC), s0, z0);
    f[2] = hfma2(hfma2(lop3_and_or(q, HI, MAGIC), SIXTEENTH, NEG64), s0, z0);
    f[1] = hfma2(hsub2(lop3_and_or(q8, LO, MAGIC), MAGIC), s1, z1);
    f[3] = hfma2(hfma2(lop3_and_or(q8, HI, MAGIC), SIXTEENTH, NEG64), s1, z1);
}
#endif

// Subnormal dequantisation (f16 only; docs/CUDA.md change 51): the masked
// nibbles ARE f16 values without any magic offset, subnormals
// x = u * 2^-24 (bits 0-3 of each half) or 16u * 2^-24 (bits 4-7), so one
// fma per f16x2 gives (u - z) * s * 2^-m exactly as the two-step form
// rounds (u - z) * s (one rounding of the same exact value, scaled by a
// power of two): multiplier s * 2^(24-m) (low nibbles) or s * 2^(20-m)
// (high), addend -z * s * 2^-m. 9 instructions per code word instead of 13.
// The host picks m per weight (`Int4Weight::subnormal_shift`) so that every
// nonzero |scale| * 2^-m lies in [2^-14, 65504 * 2^-24]: the multipliers
// are finite f16 and every product (u - z) * s * 2^-m with u != z is a
// normal f16, so nothing rounds differently from the two-step form; the
// accumulators are multiplied by 2^m once at the end (exact in fp32).
// sl, sh, zz: (row g, row g+8) pairs; halves taken with .h0 / .h1 so that
// ptxas can use HFMA2's operand swizzles instead of separate duplications.
__device__ __forceinline__ u32 ws_hfma2_lo(u32 a, u32 b, u32 c) {
    u32 r;
    asm("{ .reg .b16 bl, bh, cl, ch; .reg .b32 bb, cc;\n"
        "mov.b32 {bl, bh}, %2; mov.b32 bb, {bl, bl};\n"
        "mov.b32 {cl, ch}, %3; mov.b32 cc, {cl, cl};\n"
        "fma.rn.f16x2 %0, %1, bb, cc; }"
        : "=r"(r)
        : "r"(a), "r"(b), "r"(c));
    return r;
}
__device__ __forceinline__ u32 ws_hfma2_hi(u32 a, u32 b, u32 c) {
    u32 r;
    asm("{ .reg .b16 bl, bh, cl, ch; .reg .b32 bb, cc;\n"
        "mov.b32 {bl, bh}, %2; mov.b32 bb, {bh, bh};\n"
        "mov.b32 {cl, ch}, %3; mov.b32 cc, {ch, ch};\n"
        "fma.rn.f16x2 %0, %1, bb, cc; }"
        : "=r"(r)
        : "r"(a), "r"(b), "r"(c));
    return r;
}
__device__ __forceinline__ u32 ws_and(u32 a, u32 b) {
    u32 r;
    asm("and.b32 %0, %1, %2;" : "=r"(r) : "r"(a), "r"(b));
    return r;
}
__device__ __forceinline__ void ws_dequant_subn(u32 q, u32 sl, u32 sh, u32 zz, u32 (&f)[4]) {
    const u32 LO = 0x000F000Fu;
    const u32 HI = 0x00F000F0u;
    const u32 q8 = q >> 8;
    f[0] = ws_hfma2_lo(ws_and(q, LO), sl, zz);
    f[2] = ws_hfma2_lo(ws_and(q, HI), sh, zz);
    f[1] = ws_hfma2_hi(ws_and(q8, LO), sl, zz);
    f[3] = ws_hfma2_hi(ws_and(q8, HI), sh, zz);
}
// f16 bits of 2^e (e in [-24, 15]; subnormal below -14).
__device__ __forceinline__ u32 ws_f16_pow2(int e) {
    return e >= -14 ? (u32)(e + 15) << 10 : 1u << (e + 24);
}

__device__ __forceinline__ void ws_st_shared_v4(u32 addr, float a, float b, float c, float d) {
    asm volatile("st.shared.v4.f32 [%0], {%1, %2, %3, %4};" ::"r"(addr), "f"(a), "f"(b), "f"(c), "f"(d) : "memory");
}
__device__ __forceinline__ u32 ws_ld_shared_u32(u32 addr) {
    u32 v;
    asm volatile("ld.shared.u32 %0, [%1];" : "=r"(v) : "r"(addr) : "memory");
    return v;
}
// Named barrier of the 256 consumer threads (barrier 0 is __syncthreads).
__device__ __forceinline__ void ws_consumer_sync() { asm volatile("bar.sync 1, 256;" ::: "memory"); }

// Two fp32 values as the activation type, `lo` in the low half
// (marlin_common.cuh's f32x2_to_act2: the same cvt for f16).
__device__ __forceinline__ u32 ws_pack_act2(float lo, float hi) { return f32x2_to_act2(lo, hi); }
// Four 8x8 f16 matrices from mma-fragment registers to shared memory,
// transposed: lane 8i + j gives the address of row j of matrix i.
__device__ __forceinline__ void ws_stmatrix_x4_trans(u32 addr, u32 r0, u32 r1, u32 r2, u32 r3) {
    asm volatile("stmatrix.sync.aligned.m8n8.x4.trans.shared.b16 [%0], {%1, %2, %3, %4};" ::"r"(addr), "r"(r0),
                 "r"(r1), "r"(r2), "r"(r3)
                 : "memory");
}

// Compact epilogue of the split-K form (session 7): the block's f16 output
// tile (TOK tokens x 2*TPW*64 columns) goes through shared memory, written
// by stmatrix.trans from the accumulator fragments and read back by a
// rolled loop of 16-byte units, each stored to C with one coalesced
// 16-byte store (elementwise where N % 8 != 0 or C is not 16-byte aligned).
// Session 6's ncu profile (docs/CUDA.md change 35) found 24% of a one-round
// launch's warp samples in the old epilogue: 128 predicated 2-byte stores
// per thread with their address arithmetic, ~8.5k straight-line SASS
// instructions, mostly waiting for instruction fetch.
// Tile layout: token r's row of 16-byte units (unit u = 8 columns) at
// r * ROWB, unit u stored at u ^ (r % 8) (the 8 rows of one stmatrix
// matrix on 8 different bank groups). `tile` is the ring's base: free once
// every chunk's copies landed (the consumers waited on each) and both
// warpgroups' wgmma retired (the caller waited; the barrier below orders
// the other warpgroup's last reads).
// acc[p][4q + e]: weight column (tile * 4 + warp) * 16 + g + 8 (e >> 1),
// token 8q + 2t + (e & 1): f16x2 (e = 0, 1) / (2, 3) are row g of the 8x8
// matrix (weights x tokens 8q..8q+7) of n16 half 0 / 1 in mma layout.
// Only the token rows 8 q_lo .. 8 q_hi - 1 (q_lo, q_hi even) are written:
// the cluster reduction's share of the tile (all of it: 0, TOK / 8).
template <int TOK, int TPW>
__device__ __forceinline__ void ws_store_tile(const float (&acc)[TPW][TOK / 2], u32 tile, u16* __restrict__ C,
                                              int M, int N, int m_base, int col_base, int cw, int warp,
                                              int lane, int ct, int q_lo = 0, int q_hi = TOK / 8) {
    constexpr int TILES = 2 * TPW;
    constexpr u32 ROWB = TILES * 128;  // one token row of the block's columns, f16
    constexpr int UPR = TILES * 8;     // 16-byte units per row
    ws_consumer_sync();
    asm volatile("fence.proxy.async.shared::cta;" ::: "memory");
    const int mi = lane >> 3;  // the matrix this lane addresses
    const int j = lane & 7;    // its row (token 8q + j)
#pragma unroll
    for (int p = 0; p < TPW; p++) {
        const u32 u = (u32)((TPW * cw + p) * 8 + warp * 2 + (mi & 1));
#pragma unroll
        for (int q = 0; q < TOK / 8; q += 2) {
            if (q < q_lo || q >= q_hi) continue;
            const u32 r = (u32)(8 * (q + (mi >> 1)) + j);
            ws_stmatrix_x4_trans(tile + r * ROWB + ((u ^ (u32)j) << 4),
                                 ws_pack_act2(acc[p][4 * q], acc[p][4 * q + 1]),
                                 ws_pack_act2(acc[p][4 * q + 2], acc[p][4 * q + 3]),
                                 ws_pack_act2(acc[p][4 * q + 4], acc[p][4 * q + 5]),
                                 ws_pack_act2(acc[p][4 * q + 6], acc[p][4 * q + 7]));
        }
    }
    ws_consumer_sync();
    const bool vec = (N & 7) == 0 && (((unsigned long long)C) & 15ull) == 0;
    const int units = min(8 * q_hi, M - m_base) * UPR;
    for (int idx = 8 * q_lo * UPR + ct; idx < units; idx += 256) {
        const int r = idx / UPR;
        const int u = idx % UPR;
        const int col = col_base + 8 * u;
        if (col >= N) continue;
        const uint4 v = lds128_at(tile + (u32)r * ROWB + ((u32)(u ^ (r & 7)) << 4));
        u16* dst = C + (size_t)(m_base + r) * N + col;
        if (vec) {
            *reinterpret_cast<uint4*>(dst) = v;
        } else {
            const u32 w[4] = {v.x, v.y, v.z, v.w};
            const int n_here = N - col;
#pragma unroll
            for (int e = 0; e < 8; e++)
                if (e < n_here) dst[e] = (u16)(w[e >> 1] >> (16 * (e & 1)));
        }
    }
}

// Compiler-only use of a fragment: its registers stay allocated up to here
// (wgmma reads register operands asynchronously, until its group retires).
template <int TPW>
__device__ __forceinline__ void ws_keep_alive(const u32 (&f)[TPW][4][4]) {
#pragma unroll
    for (int p = 0; p < TPW; p++)
#pragma unroll
        for (int j = 0; j < 4; j++)
            asm volatile("" ::"r"(f[p][j][0]), "r"(f[p][j][1]), "r"(f[p][j][2]), "r"(f[p][j][3]) : "memory");
}

// SS form (diagnostic probes only, docs/CUDA.md change 47): A from shared
// memory too (K-major, descriptor `da`), m64n128k16, accumulating; operand
// type MARLIN_ACT_PTX as wgmma_rs (marlin_common.cuh).
__device__ __forceinline__ void ws_wgmma_ss_n128(float* d, u64 da, u64 db) {
    asm volatile(
        "{\n.reg .pred p;\nsetp.ne.b32 p, %66, 0;\n"
        "wgmma.mma_async.sync.aligned.m64n128k16.f32." MARLIN_ACT_PTX "." MARLIN_ACT_PTX " "
        "{"
        "%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, "
        "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, "
        "%32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, "
        "%48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63"
        "}, %64, %65, p, 1, 1, 0, 0;\n}\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]),
          "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]),
          "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]),
          "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]),
          "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]), "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]),
          "+f"(d[40]), "+f"(d[41]), "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]),
          "+f"(d[48]), "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55]),
          "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), "+f"(d[63])
        : "l"(da), "l"(db), "n"(1)
        : "memory");
}

// The same at 16 tokens (m64n16k16; change 72's probes).
__device__ __forceinline__ void ws_wgmma_ss_n16(float* d, u64 da, u64 db) {
    asm volatile(
        "{\n.reg .pred p;\nsetp.ne.b32 p, %10, 0;\n"
        "wgmma.mma_async.sync.aligned.m64n16k16.f32." MARLIN_ACT_PTX "." MARLIN_ACT_PTX " "
        "{%0, %1, %2, %3, %4, %5, %6, %7}, %8, %9, p, 1, 1, 0, 0;\n}\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7])
        : "l"(da), "l"(db), "n"(1)
        : "memory");
}

// Shared-memory matrix descriptor of a K-major tile with the 128-byte
// swizzle (layout type 1 in bits 62-63): start address >> 4 (bits 0-13),
// leading byte offset unused for swizzled K-major (1), stride byte offset
// (between 8-row groups: 8 x 128 B = 1024) >> 4 (bits 32-45). The tile
// base is 1024-byte aligned; the k16 step j starts 32j bytes into the rows.
__device__ __forceinline__ u64 ws_desc_sw128(u32 addr) {
    return (u64)((addr & 0x3FFFFu) >> 4) | ((u64)1 << 16) | ((u64)(1024 >> 4) << 32) | ((u64)1 << 62);
}

// One k16 step of the consumers' main loop, accumulating into d: the
// register-A wgmma of marlin_common.cuh with scale-d 1 (the stream-K kernel
// passes a run-time scale_d instead: 0 overwrites d on the first chunk of a
// tile, so it never zeroes its accumulators by hand).
template <int TOK>
__device__ __forceinline__ void ws_wgmma(float* d, const u32 (&a)[4], u64 desc) {
    wgmma_rs<TOK>(d, a, desc, 1);
}

// Staging: one thread per 16-byte unit of the staged image
// (m_blocks, k_chunks, TOK, 8 units). Reads 4 pairs (k, k+1) of one token
// row at k = 64c + 16i + 4j + 2hi (i = 0..3), zero past M or K.
template <int TOK>
__device__ __forceinline__ void ws_stage_body(const u16* __restrict__ A, uint4* __restrict__ out, int M, int K,
                                              int k_chunks, long long units) {
    const long long idx = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= units) return;
    const int unit = (int)(idx & 7);
    const long long row_id = idx >> 3;  // (m block, chunk, token)
    const int r = (int)(row_id % TOK);
    const long long rest = row_id / TOK;
    const int c = (int)(rest % k_chunks);
    const long long token = (rest / k_chunks) * TOK + r;
    const int logical = unit ^ (r & 7);  // swizzle: unit u holds logical unit u ^ (r % 8)
    const int j = logical >> 1;
    const int hi = logical & 1;
    u32 v[4] = {0u, 0u, 0u, 0u};
    if (token < M) {
        const u16* a_row = A + token * (long long)K;
        // Pairs are read as one u32 when every row start is 4-byte aligned
        // (even K and an aligned A: a view may start at an odd element).
        const bool even_k = (K & 1) == 0 && ((unsigned long long)A & 3ull) == 0;
#pragma unroll
        for (int i = 0; i < 4; i++) {
            const int k = 64 * c + 16 * i + 4 * j + 2 * hi;
            if (even_k && k + 1 < K) {
                v[i] = *reinterpret_cast<const u32*>(a_row + k);
            } else {
                const u32 lo = k < K ? (u32)a_row[k] : 0u;
                const u32 up = k + 1 < K ? (u32)a_row[k + 1] : 0u;
                v[i] = lo | (up << 16);
            }
        }
    }
    out[idx] = make_uint4(v[0], v[1], v[2], v[3]);
}

// Grid: x = token block (TOK tokens), y = block of 2 * TPW 64-column tiles,
// z = K split. 384 threads. Dynamic shared memory (src/int4/wgmma_ws.rs,
// `smem_bytes`): 1024 bytes of alignment slack, then STAGES activation
// tiles (TOK x 128 B, 1024-aligned), STAGES x 4 code tiles (2 KiB each),
// STAGES x 2 scale rows (4 tiles x 128 B) and, with zero points, the same
// for -zero*scale.
// PROBE (docs/CUDA.md change 39): 0 = the kernel; diagnostic entries, output
// meaningless: 1 (`_pd`) = the consumers only wait "full" and release the
// slot (the ring's pure delivery rate), 2 (`_pc`) = the producer copies only
// the first ring and then re-arms each slot without a copy (the consumers'
// pure dequantise + wgmma rate on stale tiles); 3 (`_e0`) = the kernel with
// session 6's epilogue, for same-run comparisons (correct output);
// change 47's ceiling probes (t128x2 only): 4 (`_ps`) = no dequantisation,
// SS wgmma with A read from the activation tile (an fp16 GEMM's consumer
// on this skeleton), 5 (`_pr`) = register A as now but the raw code words
// (no dequantisation ALU work), 6 (`_pcs`) / 7 (`_pcr`) = 4 / 5 with the
// producer of probe 2 (no copies after the first ring).
// SUBN (f16, PROBE 0 only): the subnormal dequantisation above with shift
// subn_m (ignored otherwise).
// FMT: WS_INT4 (the packed INT4 codes of src/int4/pack.rs, scales S / Z
// as above) or a `wgemm` format (FMT_FP4 .. FMT_INT2 of marlin_common.cuh;
// the WS_WX_ENTRIES module, src/wgemm/wgmma_ws.rs): W in the layout of
// src/wgemm/pack.rs, whose 64-chunk K order is the INT4 pack's, so the
// same staged activation image serves both. Per (tile, chunk) the producer
// copies the format's code block (FP4 2 KiB, 8-bit 4 KiB: the lanes'
// 16-byte vectors; INT3 / INT2 1.5 / 1 KiB: the lanes' u32 planes) and
// - FP4: its 512 bytes of f16x2 scales (S = scales16);
// - GROUPED (INT3 / INT2 always, 8-bit with K groups or 2-D blocks): the
//   64 columns' u32 words of the chunk's K group (G: fp32 scales of the
//   8-bit formats, (f16 scale | zero << 16) of INT3 / INT2), 256 bytes.
// The consumers dequantise with wx_dequant_step; the scales enter
// - not GROUPED: once, in fp32, into the accumulators after the main loop
//   (S32: one K group, per channel / per tensor);
// - GROUPED: as f16 in registers (hmul2 after the dequantisation, the
//   host checked that every scale times the largest code is a finite f16);
//   INT3 / INT2 subtract their zero points exactly first (wx_zero_bias).
#define WS_INT4 (-1)
template <int FMT, bool GROUPED>
struct WsCodes {
    static constexpr bool wx = FMT >= 0;
    static constexpr bool low = FMT == FMT_INT3 || FMT == FMT_INT2;
    // 16-byte code vectors (FP4 / 8-bit) or u32 planes (INT3 / INT2) per
    // lane per (tile, chunk).
    static constexpr int cw = (FMT == FMT_INT8 || FMT == FMT_FP8) ? 2 : 1;
    static constexpr int planes = FMT == FMT_INT3 ? 3 : 2;
    static constexpr u32 tile_bytes = low ? 512u * planes : 2048u * cw;
    // FP4's f16x2 scales or the K group's column words per (tile, chunk).
    static constexpr u32 tile_aux_bytes = FMT == FMT_FP4 ? 512u : GROUPED ? 256u : 0u;
};

template <int TOK, int TPW, int STAGES, bool HAS_Z, int PROBE, bool SUBN, bool CLUSTER = false, int FMT = WS_INT4,
          bool GROUPED = false>
__device__ __forceinline__ void ws_body(const uint4* __restrict__ As,  // staged activations
                                        const uint4* __restrict__ W,   // packed codes
                                        const u32* __restrict__ S,     // (groups, n_pad/16, 8) f16x2
                                        const u32* __restrict__ Z,     // same grid, -zero*scale
                                        u16* __restrict__ C,           // (M, N) f16
                                        float* __restrict__ partials,  // split-K slots [split][block (x, y)][SLOT_F4] float4 (PROBE 3: (splits, M, n_pad) fp32)
                                        u32* __restrict__ tickets,     // (gridDim.y * gridDim.x)
                                        int M, int N, int n_pad, int k_chunks, int group_k32, int splits,
                                        int subn_m,
                                        const float* __restrict__ S32 = nullptr,  // wgemm, not GROUPED: (1, n_pad) fp32
                                        const u32* __restrict__ G = nullptr) {    // wgemm, GROUPED: (groups, n_pad) words
    static_assert(!SUBN || PROBE == 0, "subnormal dequantisation: production entries only");
    using Codes = WsCodes<FMT, GROUPED>;
    constexpr bool WX = Codes::wx;
    static_assert(!WX || (PROBE == 0 && !SUBN && !HAS_Z && !CLUSTER), "wgemm formats: plain production entries");
    static_assert(!Codes::low || GROUPED, "INT3 / INT2: scale and zero per K group");
    static_assert(!(GROUPED && FMT == FMT_FP4), "FP4: one K group");
#ifdef MARLIN_ACT_BF16
    static_assert(!SUBN, "subnormal dequantisation: f16 only");
#endif
    constexpr int TILES = 2 * TPW;            // 64-column tiles per block
    constexpr u32 ACT_BYTES = TOK * 128;      // one 64-chunk x TOK tokens
    constexpr u32 W_BYTES = TILES * Codes::tile_bytes;  // codes of the block's tiles
    constexpr u32 ROW_BYTES = TILES * 128;    // one scale row of the block
    // INT4: the chunk's two scale rows; FP4: its f16x2 scales per tile.
    constexpr u32 S_BYTES = WX ? TILES * Codes::tile_aux_bytes : 2 * ROW_BYTES;
    extern __shared__ __align__(1024) unsigned char ws_smem[];
    __shared__ __align__(8) u64 full_bar[STAGES];
    __shared__ __align__(8) u64 empty_bar[STAGES];
    __shared__ u32 is_last;

    constexpr bool NO_COPY = PROBE == 2 || PROBE == 6 || PROBE == 7;
    constexpr bool SS_PROBE = PROBE == 4 || PROBE == 6;
    constexpr bool RAW_PROBE = PROBE == 5 || PROBE == 7;
    static_assert(!(SS_PROBE || RAW_PROBE) || TOK == 128 || TOK == 16, "ceiling probes: 128 or 16 tokens");
    const int tid = threadIdx.x;
    const int wg = tid >> 7;
    const int n_tiles = n_pad >> 6;
    const int tile_base = blockIdx.y * TILES;
    const int tiles_here = min(TILES, n_tiles - tile_base);
    const int mb = blockIdx.x;
    const int split = blockIdx.z;
    const int c_begin = (int)(((long long)split * k_chunks) / splits);
    const int c_end = (int)(((long long)(split + 1) * k_chunks) / splits);
    const int n_my = c_end - c_begin;

    const u32 base = (smem_addr(ws_smem) + 1023u) & ~1023u;
    const u32 act0 = base;
    const u32 w0 = act0 + STAGES * ACT_BYTES;
    const u32 s0 = w0 + STAGES * W_BYTES;
    const u32 z0 = s0 + STAGES * S_BYTES;
    const u32 full0 = smem_addr(&full_bar[0]);
    const u32 empty0 = smem_addr(&empty_bar[0]);

    if (tid == 0) {
        for (int s = 0; s < STAGES; s++) {
            mbar_init(full0 + 8 * s, 1);
            mbar_init(empty0 + 8 * s, 8);  // the 8 consumer warps
        }
        asm volatile("fence.mbarrier_init.release.cluster;" ::: "memory");
        asm volatile("fence.proxy.async.shared::cta;" ::: "memory");
    }
    __syncthreads();

    if (wg == 0) {
        // Producer warpgroup: the lanes of its first warp issue the copies
        // of a chunk side by side (change 71: one thread issuing them all
        // held a chunk's delivery to ~0.08 us per copy, 0.58 us for the 7
        // copies of t16x2 / t64x2 and 0.9 for t16x4's 11): lane l <
        // tiles_here the codes of tile l, lanes 8 + l FP4's scales / the K
        // group's words of tile l (wgemm) or lanes 8..11 the scale and zero
        // rows (INT4), lane 16 the activation tile. Lane 0 arms the slot
        // first; a complete_tx landing before that expect_tx is allowed
        // (the phase also needs lane 0's arrival).
        asm volatile("setmaxnreg.dec.sync.aligned.u32 40;");
        if (tid < 32) {
            const int lane = tid;
            const u32 row_bytes = 128u * (u32)tiles_here;
            const u32 stage_tx =
                WX ? ACT_BYTES + (Codes::tile_bytes + Codes::tile_aux_bytes) * (u32)tiles_here
                   : ACT_BYTES + 2048u * (u32)tiles_here + 2u * row_bytes * (HAS_Z ? 2u : 1u);
            const size_t s_row = (size_t)(n_pad >> 4) * 8;      // u32 per scale row
            const u32* s_blk = S + (size_t)tile_base * 32;      // 4 n16 blocks x 8 per tile
            const u32* z_blk = HAS_Z ? Z + (size_t)tile_base * 32 : nullptr;
            const uint4* a_blk = As + (size_t)mb * k_chunks * (ACT_BYTES / 16);
            // This lane's copy of chunk c (weights: read-only, may be read
            // before the previous kernel completes), after lane 0 armed the
            // slot.
            auto issue_weights = [&](int slot, int c) {
                const u32 bar = full0 + 8 * slot;
                if (lane == 0) mbar_arrive_expect_tx(bar, stage_tx);
                __syncwarp();
                if constexpr (WX) {
                    // (tile, chunk) blocks of the wgemm layout: codes, then
                    // FP4's scales (S = scales16, 128 u32 per block) or the
                    // tile's 64 words of the chunk's K group (G; group_k32
                    // carries the group's length in chunks here).
                    const int tl = lane & 7;
                    if (tl < tiles_here && lane < 16) {
                        const size_t blk = (size_t)(tile_base + tl) * k_chunks + c;
                        if (lane < 8) {
                            bulk_copy(w0 + slot * W_BYTES + tl * Codes::tile_bytes,
                                      W + blk * (Codes::tile_bytes / 16), Codes::tile_bytes, bar);
                        } else if (FMT == FMT_FP4) {
                            bulk_copy(s0 + slot * S_BYTES + tl * Codes::tile_aux_bytes, S + blk * 128,
                                      Codes::tile_aux_bytes, bar);
                        } else if (GROUPED) {
                            bulk_copy(s0 + slot * S_BYTES + tl * Codes::tile_aux_bytes,
                                      G + (size_t)(c / group_k32) * n_pad + (size_t)(tile_base + tl) * 64,
                                      Codes::tile_aux_bytes, bar);
                        }
                    }
                } else {
                    if (lane < tiles_here)
                        bulk_copy(w0 + slot * W_BYTES + lane * 2048,
                                  W + ((size_t)(tile_base + lane) * k_chunks + c) * 128, 2048, bar);
                    // Lane t of a chunk reads k32 = 2c + t/2: at most two rows.
                    const int row = lane & 1;
                    const size_t grp = (size_t)((2 * c + row) / group_k32);
                    if (lane == 8 || lane == 9)
                        bulk_copy(s0 + slot * S_BYTES + row * ROW_BYTES, s_blk + grp * s_row, row_bytes, bar);
                    if (HAS_Z && (lane == 10 || lane == 11))
                        bulk_copy(z0 + slot * S_BYTES + row * ROW_BYTES, z_blk + grp * s_row, row_bytes, bar);
                }
            };
            auto issue_act = [&](int slot, int c) {
                if (lane == 16)
                    bulk_copy(act0 + slot * ACT_BYTES, a_blk + (size_t)c * (ACT_BYTES / 16), ACT_BYTES,
                              full0 + 8 * slot);
            };
            // The ring's first fill (fresh slots, no empty wait): weights,
            // then the wait for the staging kernel (PDL), then its
            // activation tiles.
            const int pre = min(STAGES, n_my);
            for (int i = 0; i < pre; i++) issue_weights(i, c_begin + i);
            pdl_wait();
            for (int i = 0; i < pre; i++) issue_act(i, c_begin + i);
            for (int i = pre; i < n_my; i++) {
                const int slot = i % STAGES;
                mbar_wait(empty0 + 8 * slot, ((i / STAGES) & 1) ^ 1);
                if (NO_COPY) {
                    if (lane == 0) mbar_arrive(full0 + 8 * slot);
                    continue;
                }
                issue_weights(slot, c_begin + i);
                issue_act(slot, c_begin + i);
            }
        }
        if constexpr (CLUSTER) {
            if (splits > 1 && cluster_size() == (u32)splits) {
                // The consumers' two cluster barriers (every thread of the
                // cluster arrives at each).
                cluster_sync();
                cluster_sync();
            }
        }
    } else {
        asm volatile("setmaxnreg.inc.sync.aligned.u32 232;");
        const int ct = tid - 128;         // consumer thread 0..255
        const int cw = ct >> 7;           // consumer warpgroup 0, 1
        const int warp = (ct >> 5) & 3;   // warp in the warpgroup = n16 block of a tile
        const int lane = tid & 31;
        const int g = lane >> 2;
        const int t = lane & 3;
        // Tile p of this warpgroup = block tile TPW * cw + p.
        const u32 w_lane = (u32)(((TPW * cw) * 4 + warp) * 32 + lane) * 16;
        const u32 s_lane = (u32)(t >> 1) * ROW_BYTES + (u32)(((TPW * cw) * 4 + warp) * 8 + g) * 4;

        float acc[TPW][TOK / 2];
#pragma unroll
        for (int p = 0; p < TPW; p++)
#pragma unroll
            for (int i = 0; i < TOK / 2; i++) acc[p][i] = 0.0f;
        // SUBN constants: (2^(12-m), 2^(12-m)) and (2^-m, 2^-m) as f16x2
        // (m in [-3, 24]: the host checks).
        const u32 subn_k = SUBN ? ws_f16_pow2(12 - subn_m) * 0x10001u : 0u;
        const u32 subn_kz = SUBN ? ws_f16_pow2(-subn_m) * 0x10001u : 0u;
        // Grouped 8-bit scales: the power of two the host chose (subn_m).
        const float scale_up = (WX && GROUPED && !Codes::low) ? ldexpf(1.0f, subn_m) : 1.0f;

        auto compute_step = [&](int i, u32 (&frag)[TPW][4][4]) {
            const int slot = i % STAGES;
            mbar_wait(full0 + 8 * slot, (i / STAGES) & 1);
#pragma unroll
            for (int p = 0; p < (SS_PROBE ? 0 : TPW); p++) {
                if constexpr (WX) {
                    // The lane's code words: CW 16-byte vectors at ((warp * CW
                    // + v) * 32 + lane) * 16, or PL u32 planes at ((warp * PL
                    // + v) * 32 + lane) * 4, in the tile's block.
                    constexpr int LW = Codes::low ? Codes::planes : 4 * Codes::cw;
                    const u32 tile = (u32)(TPW * cw + p);
                    const u32 tile_w = w0 + slot * W_BYTES + tile * Codes::tile_bytes;
                    const u32 aux = s0 + slot * S_BYTES + tile * Codes::tile_aux_bytes;
                    u32 words[LW];
                    if constexpr (Codes::low) {
#pragma unroll
                        for (int v = 0; v < LW; v++)
                            words[v] = ws_ld_shared_u32(tile_w + (u32)((warp * LW + v) * 32 + lane) * 4);
                    } else {
#pragma unroll
                        for (int v = 0; v < Codes::cw; v++) {
                            const uint4 x = lds128_at(tile_w + (u32)((warp * Codes::cw + v) * 32 + lane) * 16);
                            words[4 * v] = x.x;
                            words[4 * v + 1] = x.y;
                            words[4 * v + 2] = x.z;
                            words[4 * v + 3] = x.w;
                        }
                    }
                    u32 sc = 0u;  // FP4: f16x2 (column g, 8 + g); GROUPED: the f16 scales
                    u32 zb[8];
#pragma unroll
                    for (int x = 0; x < 8; x++) zb[x] = 0u;
                    if constexpr (FMT == FMT_FP4) {
                        sc = ws_ld_shared_u32(aux + (u32)(warp * 32 + lane) * 4);
                    } else if constexpr (GROUPED) {
                        const u32 w_lo = ws_ld_shared_u32(aux + (u32)(warp * 16 + g) * 4);
                        const u32 w_hi = ws_ld_shared_u32(aux + (u32)(warp * 16 + g + 8) * 4);
                        if constexpr (Codes::low) {
                            wx_zero_bias<FMT>(w_lo, w_hi, zb);
                            sc = (w_lo & 0xFFFFu) | (w_hi << 16);
                        } else {
                            // s * 2^m (subn_m = the host's shift m: every
                            // scale times the largest code a finite f16, every
                            // nonzero scale a normal one), undone in fp32 at
                            // the end.
                            sc = (u32)f32_to_f16(__uint_as_float(w_lo) * scale_up) |
                                 ((u32)f32_to_f16(__uint_as_float(w_hi) * scale_up) << 16);
                        }
                    }
#pragma unroll
                    for (int j = 0; j < 4; j++) {
                        wx_dequant_step<FMT>(words, j, sc, zb, frag[p][j]);
                        if constexpr (GROUPED) {
                            // Register i holds column g (i even) or 8 + g.
                            const u32 s_lo = dup_lo(sc), s_hi = dup_hi(sc);
#pragma unroll
                            for (int x = 0; x < 4; x++) frag[p][j][x] = hmul2(frag[p][j][x], (x & 1) ? s_hi : s_lo);
                        }
#ifdef MARLIN_ACT_BF16
                        // The f16 weights to bf16 (exact for the codes of
                        // INT8 / FP8 / INT3 / INT2; FP4 and the grouped
                        // scales' products round once more, to 8 bits).
#pragma unroll
                        for (int x = 0; x < 4; x++) {
                            float lo, hi;
                            f16x2_to_f32(frag[p][j][x], lo, hi);
                            frag[p][j][x] = f32x2_to_act2(lo, hi);
                        }
#endif
                    }
                    continue;
                }
                const uint4 q = lds128_at(w0 + slot * W_BYTES + w_lane + p * 2048);
                if constexpr (RAW_PROBE) {
#pragma unroll
                    for (int j = 0; j < 4; j++) {
                        frag[p][j][0] = q.x;
                        frag[p][j][1] = q.y;
                        frag[p][j][2] = q.z;
                        frag[p][j][3] = q.w;
                    }
                    continue;
                }
                if constexpr (SUBN) {
                    // t = s * 2^(12-m): both multipliers and the symmetric
                    // addend from it (every product exact, see above).
                    const u32 sc = ws_ld_shared_u32(s0 + slot * S_BYTES + s_lane + p * 128);
                    const u32 tq = hmul2(sc, subn_k);
                    const u32 sl = hmul2(tq, 0x6C006C00u);  // * 2^12: s * 2^(24-m)
                    const u32 sh = hmul2(tq, 0x5C005C00u);  // * 2^8:  s * 2^(20-m)
                    u32 zz;
                    if (HAS_Z) {
                        zz = hmul2(ws_ld_shared_u32(z0 + slot * S_BYTES + s_lane + p * 128), subn_kz);
                    } else {
                        zz = hmul2(tq, 0x98009800u);  // * -2^-9: -8 * s * 2^-m
                    }
                    ws_dequant_subn(q.x, sl, sh, zz, frag[p][0]);
                    ws_dequant_subn(q.y, sl, sh, zz, frag[p][1]);
                    ws_dequant_subn(q.z, sl, sh, zz, frag[p][2]);
                    ws_dequant_subn(q.w, sl, sh, zz, frag[p][3]);
                    continue;
                }
                const u32 sc = scale2_to_act2(ws_ld_shared_u32(s0 + slot * S_BYTES + s_lane + p * 128));
                const u32 sa = dup_lo(sc), sb = dup_hi(sc);
                u32 za, zb;
                if (HAS_Z) {
                    const u32 zs = scale2_to_act2(ws_ld_shared_u32(z0 + slot * S_BYTES + s_lane + p * 128));
                    za = dup_lo(zs);
                    zb = dup_hi(zs);
                } else {
                    za = act2_mul(sa, ACT2_NEG8);  // -8 * scale, exact
                    zb = act2_mul(sb, ACT2_NEG8);
                }
                ws_dequant(q.x, sa, sb, za, zb, frag[p][0]);
                ws_dequant(q.y, sa, sb, za, zb, frag[p][1]);
                ws_dequant(q.z, sa, sb, za, zb, frag[p][2]);
                ws_dequant(q.w, sa, sb, za, zb, frag[p][3]);
            }
            const u32 act = act0 + slot * ACT_BYTES;
#pragma unroll
            for (int p = 0; p < TPW; p++)
#pragma unroll
                for (int x = 0; x < TOK / 2; x++) fence_operand(acc[p][x]);
            wgmma_fence();
#pragma unroll
            for (int j = 0; j < 4; j++)
#pragma unroll
                for (int p = 0; p < TPW; p++) {
                    if constexpr (SS_PROBE && TOK == 16) {
                        // A = the slot's first 8 KiB of codes read as a 64 x
                        // 64 f16 tile (values meaningless: change 72's rate
                        // probe of shared-memory-A wgmma at 16 tokens).
                        ws_wgmma_ss_n16(acc[p], ws_desc_sw128(w0 + slot * W_BYTES + 32 * j),
                                        ws_desc_sw128(act + 32 * j));
                    } else if constexpr (SS_PROBE) {
                        // A = rows 64p .. 64p + 63 of the activation tile.
                        ws_wgmma_ss_n128(acc[p], ws_desc_sw128(act + 8192u * (u32)p + 32 * j),
                                         ws_desc_sw128(act + 32 * j));
                    } else {
                        ws_wgmma<TOK>(acc[p], frag[p][j], ws_desc_sw128(act + 32 * j));
                    }
                }
            wgmma_commit();
#pragma unroll
            for (int p = 0; p < TPW; p++)
#pragma unroll
                for (int x = 0; x < TOK / 2; x++) fence_operand(acc[p][x]);
            // Chunk i-1's wgmma group has retired: its slot goes back to the
            // producer (its code words and scales were read before) and its
            // fragment set is free for chunk i+1. (A third set, two chunks
            // in flight, measured no faster: docs/CUDA.md change 26 at 128
            // tokens, change 72 at 16 / 32 / 64.)
            wgmma_wait<1>();
            if (i > 0) {
                __syncwarp();
                if (lane == 0) mbar_arrive(empty0 + 8 * ((i - 1) % STAGES));
            }
        };
        auto step = [&](int i, u32 (&frag)[TPW][4][4]) {
            if constexpr (PROBE == 1) {
                // Delivery probe: wait for the chunk, hand the slot back.
                const int slot = i % STAGES;
                mbar_wait(full0 + 8 * slot, (i / STAGES) & 1);
                __syncwarp();
                if (lane == 0) mbar_arrive(empty0 + 8 * slot);
            } else {
                compute_step(i, frag);
            }
        };
        u32 frag_even[TPW][4][4], frag_odd[TPW][4][4];
#pragma unroll
        for (int p = 0; p < TPW; p++)
#pragma unroll
            for (int j = 0; j < 4; j++)
#pragma unroll
                for (int x = 0; x < 4; x++) {
                    frag_even[p][j][x] = 0u;
                    frag_odd[p][j][x] = 0u;
                }
        // Pairs of chunks, then the odd one. (A loop body with `if (i + 1 <
        // n_my)` around the second step has a path, for ptxas, on which the
        // next iteration rewrites the even set while its wgmma is in flight:
        // ptxas then serialises every wgmma, warning C7513.)
        int i = 0;
        for (; i + 1 < n_my; i += 2) {
            step(i, frag_even);
            ws_keep_alive<TPW>(frag_odd);
            step(i + 1, frag_odd);
            ws_keep_alive<TPW>(frag_even);
        }
        if (i < n_my) {
            step(i, frag_even);
            ws_keep_alive<TPW>(frag_odd);
        }
        wgmma_wait<0>();
#pragma unroll
        for (int p = 0; p < TPW; p++)
#pragma unroll
            for (int x = 0; x < TOK / 2; x++) fence_operand(acc[p][x]);
        if constexpr (SUBN) {
            // Undo the 2^-m of the subnormal dequantisation (exact).
            const float out_scale = ldexpf(1.0f, subn_m);
#pragma unroll
            for (int p = 0; p < TPW; p++)
#pragma unroll
                for (int x = 0; x < TOK / 2; x++) acc[p][x] *= out_scale;
        }
        if constexpr (WX && GROUPED && !Codes::low) {
            // Undo the 2^m of the f16 scales (exact).
            const float down = ldexpf(1.0f, -subn_m);
#pragma unroll
            for (int p = 0; p < TPW; p++)
#pragma unroll
                for (int x = 0; x < TOK / 2; x++) acc[p][x] *= down;
        }
        if constexpr (WX && !GROUPED) {
            // The columns' fp32 scales (the whole K is one group): acc[p][4q +
            // e] belongs to column (tile * 4 + warp) * 16 + g + 8 (e >> 1).
#pragma unroll
            for (int p = 0; p < TPW; p++) {
                const int tile = tile_base + TPW * cw + p;
                float s_lo = 0.0f, s_hi = 0.0f;
                if (tile < n_tiles) {
                    const int col = (tile * 4 + warp) * 16 + g;
                    s_lo = S32[col];
                    s_hi = S32[col + 8];
                }
#pragma unroll
                for (int x = 0; x < TOK / 2; x++) acc[p][x] *= (x & 2) ? s_hi : s_lo;
            }
        }

        if constexpr (PROBE == 3) {
            // Session 6's epilogue (straight-line 2-byte stores, partials
            // (splits, M, n_pad)), kept for a same-run comparison
            // (MARLIN_WGMMA_WS_OLD_EPILOGUE=1, docs/CUDA.md change 39).
            // acc[p][4q + e]: weight column (tile*4 + warp)*16 + g + 8*(e>>1),
            // token mb*TOK + 8q + 2t + (e&1).
            const int m_base = mb * TOK;
            if (splits == 1) {
#pragma unroll
                for (int p = 0; p < TPW; p++) {
                    const int tile = tile_base + TPW * cw + p;
                    if (tile >= n_tiles) continue;
                    const int nb = tile * 4 + warp;
                    acc_tile_store_act<TOK>(acc[p], C, M, N, m_base, nb, g, t);
                }
                return;
            }
#pragma unroll
            for (int p = 0; p < TPW; p++) {
                const int tile = tile_base + TPW * cw + p;
                if (tile >= n_tiles) continue;
                const int nb = tile * 4 + warp;
                acc_tile_store_partial<TOK>(acc[p], partials, split, M, n_pad, m_base, nb, g, t);
            }
            // One acq_rel ticket (atom_add_acq_rel_gpu, marlin_common.cuh)
            // through the consumers' barrier.
            ws_consumer_sync();
            const int ticket_idx = blockIdx.y * gridDim.x + blockIdx.x;
            if (ct == 0) {
                const u32 prev = atom_add_acq_rel_gpu(&tickets[ticket_idx]);
                is_last = (prev == (u32)(splits - 1)) ? 1u : 0u;
            }
            ws_consumer_sync();
            if (!is_last) return;
            // Sum the splits in split order (bit-deterministic), split-major so
            // that one split's loads are in flight together.
#pragma unroll
            for (int p = 0; p < TPW; p++) {
                const int tile = tile_base + TPW * cw + p;
                if (tile >= n_tiles) continue;
                const int nb = tile * 4 + warp;
#pragma unroll
                for (int x = 0; x < TOK / 2; x++) acc[p][x] = 0.0f;
                for (int sp = 0; sp < splits; sp++) {
                    const float* part = partials + (size_t)sp * M * n_pad;
                    acc_tile_add_partial<TOK>(acc[p], part, M, n_pad, m_base, nb, g, t);
                }
                acc_tile_store_act<TOK>(acc[p], C, M, N, m_base, nb, g, t);
            }
            if (ct == 0) tickets[ticket_idx] = 0u;
            return;
        }
        const int m_base = mb * TOK;
        // Only the `_nc` entries carry the cluster reduction: compiled into
        // every entry, it moved ptxas's schedule of the main loop and cost
        // the unsplit launches up to 15% (28672x8192 M = 32; change 67).
        if constexpr (CLUSTER) {
            if (splits > 1 && cluster_size() == (u32)splits) {
                // Cluster split-K (session 14, docs/CUDA.md change 67): the
                // host launched the splits of each tile as one thread-block
                // cluster (cluster z = splits). Each split's fp32 tile goes to
                // its own shared memory (thread-interleaved float4s, after the
                // f16 staging tile of ws_store_tile), then block `split` sums
                // its share of the token rows below M, [8 q_lo, 8 q_hi), of
                // every split's tile in split
                // order (the ticket path's order: the same bits) through
                // distributed shared memory and stores them. No partials in
                // global memory, no ticket, and each block reads one tile's
                // worth instead of the last block reading `splits` tiles.
                constexpr u32 F16_TILE = (u32)TOK * TILES * 128;
                constexpr int X4 = TPW * (TOK / 8);  // float4s per thread
                static_assert((u32)STAGES * (ACT_BYTES + W_BYTES + S_BYTES) >= F16_TILE + 16u * 256u * X4,
                              "the cluster reduction's tiles must fit the ring");
                const u32 slot = base + F16_TILE;
                ws_consumer_sync();
                asm volatile("fence.proxy.async.shared::cta;" ::: "memory");
    #pragma unroll
                for (int p = 0; p < TPW; p++)
    #pragma unroll
                    for (int x4 = 0; x4 < TOK / 8; x4++)
                        ws_st_shared_v4(slot + 16u * (u32)((p * (TOK / 8) + x4) * 256 + ct), acc[p][4 * x4],
                                        acc[p][4 * x4 + 1], acc[p][4 * x4 + 2], acc[p][4 * x4 + 3]);
                cluster_sync();
                // This block's q pairs (16-token row pairs of stmatrix x4) of
                // the tile's rows below M: a split past them has none.
                const int pairs = min(TOK / 16, (M - m_base + 15) / 16);
                const int q_lo = 2 * ((split * pairs) / splits);
                const int q_hi = 2 * (((split + 1) * pairs) / splits);
    #pragma unroll
                for (int p = 0; p < TPW; p++)
    #pragma unroll
                    for (int x = 0; x < TOK / 2; x++) acc[p][x] = 0.0f;
                for (int sp = 0; sp < splits; sp++) {
                    const u32 peer = cluster_map(slot, (u32)sp);
    #pragma unroll
                    for (int p = 0; p < TPW; p++)
    #pragma unroll
                        for (int x4 = 0; x4 < TOK / 8; x4++) {
                            if (x4 < q_lo || x4 >= q_hi) continue;
                            const float4 a = ld_cluster4(peer + 16u * (u32)((p * (TOK / 8) + x4) * 256 + ct));
                            acc[p][4 * x4] += a.x;
                            acc[p][4 * x4 + 1] += a.y;
                            acc[p][4 * x4 + 2] += a.z;
                            acc[p][4 * x4 + 3] += a.w;
                        }
                }
                ws_store_tile<TOK, TPW>(acc, base, C, M, N, m_base, tile_base * 64, cw, warp, lane, ct, q_lo, q_hi);
                // The other blocks may still read this block's tile.
                cluster_sync();
                return;
            }
        }
        if (splits > 1) {
            // This split's fp32 tile to its own slot (split, block),
            // thread-interleaved float4s (coalesced 16-byte stores); the
            // block of the tile that arrives last sums the slots in split
            // order (bit-deterministic) in a rolled loop, then writes f16.
            constexpr int SLOT_F4 = 256 * TPW * TOK / 8;  // float4s per slot
            const int blocks_xy = gridDim.x * gridDim.y;
            const int blk = blockIdx.y * gridDim.x + blockIdx.x;
            float4* mine = reinterpret_cast<float4*>(partials) + ((size_t)split * blocks_xy + blk) * SLOT_F4;
#pragma unroll
            for (int p = 0; p < TPW; p++)
#pragma unroll
                for (int x4 = 0; x4 < TOK / 8; x4++)
                    mine[(p * (TOK / 8) + x4) * 256 + ct] =
                        make_float4(acc[p][4 * x4], acc[p][4 * x4 + 1], acc[p][4 * x4 + 2], acc[p][4 * x4 + 3]);
            // One acq_rel ticket (atom_add_acq_rel_gpu, marlin_common.cuh)
            // through the consumers' barrier.
            ws_consumer_sync();
            if (ct == 0) {
                const u32 prev = atom_add_acq_rel_gpu(&tickets[blk]);
                is_last = (prev == (u32)(splits - 1)) ? 1u : 0u;
            }
            ws_consumer_sync();
            if (!is_last) return;
#pragma unroll
            for (int p = 0; p < TPW; p++)
#pragma unroll
                for (int x = 0; x < TOK / 2; x++) acc[p][x] = 0.0f;
            for (int sp = 0; sp < splits; sp++) {
                const float4* part = reinterpret_cast<const float4*>(partials) + ((size_t)sp * blocks_xy + blk) * SLOT_F4;
#pragma unroll
                for (int p = 0; p < TPW; p++)
#pragma unroll
                    for (int x4 = 0; x4 < TOK / 8; x4++) {
                        const float4 a = __ldcg(part + (p * (TOK / 8) + x4) * 256 + ct);
                        acc[p][4 * x4] += a.x;
                        acc[p][4 * x4 + 1] += a.y;
                        acc[p][4 * x4 + 2] += a.z;
                        acc[p][4 * x4 + 3] += a.w;
                    }
            }
            if (ct == 0) tickets[blk] = 0u;
        }
        static_assert((u32)STAGES * (ACT_BYTES + W_BYTES + S_BYTES) >= (u32)TOK * TILES * 128,
                      "the output tile must fit the ring");
        ws_store_tile<TOK, TPW>(acc, base, C, M, N, m_base, tile_base * 64, cw, warp, lane, ct);
    }
}

// Stream-K form of ws_body (session 5): a persistent grid of G blocks (one
// per SM), not one block per (token block, column block, K split). The work
// is the sequence of U = tiles x k_chunks units (tile T = token block
// T / n_cb, column block T % n_cb; unit (T, c) = chunk c of T). Token-block
// major: the blocks that read the same codes (same column block, other
// token blocks) are U / m_blocks units apart, i.e. at the same K offset at
// the same time, so one L2 fill of a code tile serves all of them.
// block g owns units [g*U/G, (g+1)*U/G), so every SM streams the same
// number of chunks (+-1) whatever the shape: no rounds of blocks, one ring
// fill and no per-block prologue per tile. The producer walks the block's
// units across tile boundaries without stopping; the consumers run one
// segment (the block's units of one tile) at a time: wgmma chain as in
// ws_body, then wait for all wgmma, then
// - the whole K range of the tile: f16 straight to C;
// - a part: the fp32 tile goes to slot 2g (the block's first segment) or
//   2g + 1 (its last), thread-interleaved float4s; the tile's ticket counts
//   its contributors (blocks owner(T*k_chunks) .. owner((T+1)*k_chunks - 1),
//   consecutive); the last to arrive sums all the slots (its own too) in
//   block order, so the result does not depend on who arrives last
//   (bit-deterministic), writes f16, resets the ticket.
// Meanwhile the producer already streams the next segment's chunks.
__device__ __forceinline__ long long wsk_unit_begin(int g, int G, long long U) { return (long long)g * U / G; }
// The block that owns unit u: the largest g with wsk_unit_begin(g) <= u.
__device__ __forceinline__ int wsk_owner(long long u, int G, long long U) {
    int g = (int)(((u + 1) * (long long)G - 1) / U);
    g = max(0, min(g, G - 1));
    while (g + 1 < G && wsk_unit_begin(g + 1, G, U) <= u) g++;
    while (g > 0 && wsk_unit_begin(g, G, U) > u) g--;
    return g;
}

// Slot of contributor h's partial tile T: 2h for its first segment, 2h + 1
// for its last.
__device__ __forceinline__ int wsk_slot(int h, int T, int G, long long U, int k_chunks) {
    return 2 * h + (T == (int)(wsk_unit_begin(h, G, U) / k_chunks) ? 0 : 1);
}

template <int TOK, int TPW, int STAGES, bool HAS_Z>
__device__ __forceinline__ void wsk_body(const uint4* __restrict__ As, const uint4* __restrict__ W,
                                         const u32* __restrict__ S, const u32* __restrict__ Z,
                                         u16* __restrict__ C,
                                         float* __restrict__ partials,  // (2G, 256 threads x TPW*TOK/2) fp32
                                         u32* __restrict__ tickets,     // (m_blocks * column blocks)
                                         int M, int N, int n_pad, int k_chunks, int group_k32, int m_blocks) {
    constexpr int TILES = 2 * TPW;
    constexpr u32 ACT_BYTES = TOK * 128;
    constexpr u32 W_BYTES = TILES * 2048;
    constexpr u32 ROW_BYTES = TILES * 128;
    constexpr u32 S_BYTES = 2 * ROW_BYTES;
    constexpr int NACC = TPW * TOK / 2;       // fp32 accumulators per consumer thread
    constexpr int SEG_FLOATS = 256 * NACC;    // one partial tile
    extern __shared__ __align__(1024) unsigned char ws_smem[];
    __shared__ __align__(8) u64 full_bar[STAGES];
    __shared__ __align__(8) u64 empty_bar[STAGES];
    __shared__ u32 is_last;

    const int tid = threadIdx.x;
    const int wg = tid >> 7;
    const int n_tiles = n_pad >> 6;
    const int G = gridDim.x;
    const int g = blockIdx.x;
    const int n_cb = (n_tiles + TILES - 1) / TILES;  // column blocks
    const long long U = (long long)m_blocks * n_cb * k_chunks;
    const long long u_begin = wsk_unit_begin(g, G, U);
    const int n_my = (int)(wsk_unit_begin(g + 1, G, U) - u_begin);

    const u32 base = (smem_addr(ws_smem) + 1023u) & ~1023u;
    const u32 act0 = base;
    const u32 w0 = act0 + STAGES * ACT_BYTES;
    const u32 s0 = w0 + STAGES * W_BYTES;
    const u32 z0 = s0 + STAGES * S_BYTES;
    const u32 full0 = smem_addr(&full_bar[0]);
    const u32 empty0 = smem_addr(&empty_bar[0]);

    if (tid == 0) {
        for (int s = 0; s < STAGES; s++) {
            mbar_init(full0 + 8 * s, 1);
            mbar_init(empty0 + 8 * s, 8);
        }
        asm volatile("fence.mbarrier_init.release.cluster;" ::: "memory");
        asm volatile("fence.proxy.async.shared::cta;" ::: "memory");
    }
    __syncthreads();

    if (wg == 0) {
        asm volatile("setmaxnreg.dec.sync.aligned.u32 40;");
        if (tid == 0) {
            const size_t s_row = (size_t)(n_pad >> 4) * 8;
            const int T0 = (int)(u_begin / k_chunks);
            const int c0 = (int)(u_begin - (long long)T0 * k_chunks);
            // Codes and scales of unit (T, c), arming the slot (weights:
            // read-only, may be read before the previous kernel completes).
            auto issue_weights = [&](int slot, int T, int c) {
                const int cb = T - (T / n_cb) * n_cb;
                const int tile_base = cb * TILES;
                const int tiles_here = min(TILES, n_tiles - tile_base);
                const u32 row_bytes = 128u * (u32)tiles_here;
                const u32 stage_tx =
                    ACT_BYTES + 2048u * (u32)tiles_here + 2u * row_bytes * (HAS_Z ? 2u : 1u);
                const u32 bar = full0 + 8 * slot;
                mbar_arrive_expect_tx(bar, stage_tx);
                for (int tl = 0; tl < tiles_here; tl++)
                    bulk_copy(w0 + slot * W_BYTES + tl * 2048,
                                 W + ((size_t)(tile_base + tl) * k_chunks + c) * 128, 2048, bar);
                const size_t g_lo = (size_t)((2 * c) / group_k32);
                const size_t g_hi = (size_t)((2 * c + 1) / group_k32);
                const u32* s_blk = S + (size_t)tile_base * 32;
                bulk_copy(s0 + slot * S_BYTES, s_blk + g_lo * s_row, row_bytes, bar);
                bulk_copy(s0 + slot * S_BYTES + ROW_BYTES, s_blk + g_hi * s_row, row_bytes, bar);
                if (HAS_Z) {
                    const u32* z_blk = Z + (size_t)tile_base * 32;
                    bulk_copy(z0 + slot * S_BYTES, z_blk + g_lo * s_row, row_bytes, bar);
                    bulk_copy(z0 + slot * S_BYTES + ROW_BYTES, z_blk + g_hi * s_row, row_bytes, bar);
                }
            };
            auto issue_act = [&](int slot, int T, int c) {
                const uint4* a_blk = As + (size_t)(T / n_cb) * k_chunks * (ACT_BYTES / 16);
                bulk_copy(act0 + slot * ACT_BYTES, a_blk + (size_t)c * (ACT_BYTES / 16), ACT_BYTES,
                             full0 + 8 * slot);
            };
            // The ring's first fill as in ws_body: weights, the PDL wait,
            // activations.
            const int pre = min(STAGES, n_my);
            int T = T0, c = c0;
            for (int i = 0; i < pre; i++) {
                issue_weights(i, T, c);
                if (++c == k_chunks) {
                    c = 0;
                    T++;
                }
            }
            pdl_wait();
            T = T0;
            c = c0;
            for (int i = 0; i < n_my; i++) {
                const int slot = i % STAGES;
                if (i >= pre) {
                    mbar_wait(empty0 + 8 * slot, ((i / STAGES) & 1) ^ 1);
                    issue_weights(slot, T, c);
                }
                issue_act(slot, T, c);
                if (++c == k_chunks) {
                    c = 0;
                    T++;
                }
            }
        }
    } else {
        asm volatile("setmaxnreg.inc.sync.aligned.u32 232;");
        const int ct = tid - 128;
        const int cw = ct >> 7;
        const int warp = (ct >> 5) & 3;
        const int lane = tid & 31;
        const int gq = lane >> 2;
        const int t = lane & 3;
        const u32 w_lane = (u32)(((TPW * cw) * 4 + warp) * 32 + lane) * 16;
        const u32 s_lane = (u32)(t >> 1) * ROW_BYTES + (u32)(((TPW * cw) * 4 + warp) * 8 + gq) * 4;

        // The first chunk of a segment overwrites (scale_d = 0): no zeroing.
        float acc[TPW][TOK / 2];
#pragma unroll
        for (int p = 0; p < TPW; p++)
#pragma unroll
            for (int x = 0; x < TOK / 2; x++) acc[p][x] = 0.0f;
        // One chunk (unit i of this block): as ws_body's step; `release`
        // hands the slot of unit i-1 back (not for a segment's first unit:
        // the previous segment released its last slot after its final wait).
        auto step = [&](int i, u32 (&frag)[TPW][4][4], bool release, int scale_d) {
            const int slot = i % STAGES;
            mbar_wait(full0 + 8 * slot, (i / STAGES) & 1);
#pragma unroll
            for (int p = 0; p < TPW; p++) {
                const uint4 q = lds128_at(w0 + slot * W_BYTES + w_lane + p * 2048);
                const u32 sc = scale2_to_act2(ws_ld_shared_u32(s0 + slot * S_BYTES + s_lane + p * 128));
                const u32 sa = dup_lo(sc), sb = dup_hi(sc);
                u32 za, zb;
                if (HAS_Z) {
                    const u32 zs = scale2_to_act2(ws_ld_shared_u32(z0 + slot * S_BYTES + s_lane + p * 128));
                    za = dup_lo(zs);
                    zb = dup_hi(zs);
                } else {
                    za = act2_mul(sa, ACT2_NEG8);
                    zb = act2_mul(sb, ACT2_NEG8);
                }
                ws_dequant(q.x, sa, sb, za, zb, frag[p][0]);
                ws_dequant(q.y, sa, sb, za, zb, frag[p][1]);
                ws_dequant(q.z, sa, sb, za, zb, frag[p][2]);
                ws_dequant(q.w, sa, sb, za, zb, frag[p][3]);
            }
            const u32 act = act0 + slot * ACT_BYTES;
#pragma unroll
            for (int p = 0; p < TPW; p++)
#pragma unroll
                for (int x = 0; x < TOK / 2; x++) fence_operand(acc[p][x]);
            wgmma_fence();
#pragma unroll
            for (int j = 0; j < 4; j++)
#pragma unroll
                for (int p = 0; p < TPW; p++)
                    wgmma_rs<TOK>(acc[p], frag[p][j], ws_desc_sw128(act + 32 * j), j > 0 ? 1 : scale_d);
            wgmma_commit();
#pragma unroll
            for (int p = 0; p < TPW; p++)
#pragma unroll
                for (int x = 0; x < TOK / 2; x++) fence_operand(acc[p][x]);
            wgmma_wait<1>();
            if (release) {
                __syncwarp();
                if (lane == 0) mbar_arrive(empty0 + 8 * ((i - 1) % STAGES));
            }
        };
        u32 frag_even[TPW][4][4], frag_odd[TPW][4][4];
#pragma unroll
        for (int p = 0; p < TPW; p++)
#pragma unroll
            for (int j = 0; j < 4; j++)
#pragma unroll
                for (int x = 0; x < 4; x++) {
                    frag_even[p][j][x] = 0u;
                    frag_odd[p][j][x] = 0u;
                }
        int i = 0;
        while (i < n_my) {
            // Only `i` and `seg` stay live across the chunk loop (the tile
            // coordinates are recomputed after it: registers are short at
            // 128 tokens x 2 tiles).
            const int seg = min(k_chunks - (int)((u_begin + i) % k_chunks), n_my - i);
            // An odd segment's first chunk alone (odd set), then whole rounds
            // of two. (The odd chunk last, as in ws_body, made ptxas
            // serialise every wgmma of the 128x2 variant here, C7512; a
            // conditional second step does so everywhere, C7513.)
            int s = 0;
            if (seg & 1) {
                step(i, frag_odd, false, 0);
                ws_keep_alive<TPW>(frag_even);
                s = 1;
            }
            for (; s + 1 < seg; s += 2) {
                step(i + s, frag_even, s > 0, s > 0);
                ws_keep_alive<TPW>(frag_odd);
                step(i + s + 1, frag_odd, true, 1);
                ws_keep_alive<TPW>(frag_even);
            }

            wgmma_wait<0>();
#pragma unroll
            for (int p = 0; p < TPW; p++)
#pragma unroll
                for (int x = 0; x < TOK / 2; x++) fence_operand(acc[p][x]);
            __syncwarp();
            if (lane == 0) mbar_arrive(empty0 + 8 * ((i + seg - 1) % STAGES));

            const long long u = u_begin + i;
            const int T = (int)(u / k_chunks);
            const int mb = T / n_cb;
            const int cb = T - mb * n_cb;
            const int m_base = mb * TOK;
            const int tile0 = cb * TILES + TPW * cw;
            if (seg == k_chunks) {
                // The whole K range: this block alone writes the tile.
#pragma unroll
                for (int p = 0; p < TPW; p++) {
                    const int tile = tile0 + p;
                    if (tile >= n_tiles) continue;
                    const int nb = tile * 4 + warp;
#pragma unroll
                    for (int q = 0; q < TOK / 8; q++)
#pragma unroll
                        for (int e = 0; e < 4; e++) {
                            const int row = m_base + 8 * q + 2 * t + (e & 1);
                            const int col = nb * 16 + gq + 8 * (e >> 1);
                            if (row < M && col < N) C[(size_t)row * N + col] = f32_to_act(acc[p][4 * q + e]);
                        }
                }
            } else {
                const int slot_mine = wsk_slot(g, T, G, U, k_chunks);
                float4* mine = reinterpret_cast<float4*>(partials + (size_t)slot_mine * SEG_FLOATS);
#pragma unroll
                for (int p = 0; p < TPW; p++)
#pragma unroll
                    for (int x4 = 0; x4 < TOK / 8; x4++)
                        mine[(p * (TOK / 8) + x4) * 256 + ct] =
                            make_float4(acc[p][4 * x4], acc[p][4 * x4 + 1], acc[p][4 * x4 + 2], acc[p][4 * x4 + 3]);
                const int g_first = wsk_owner((long long)T * k_chunks, G, U);
                const int g_last = wsk_owner((long long)(T + 1) * k_chunks - 1, G, U);
                // The consumer barrier orders every thread's slot stores
                // before thread 0's release (cumulative); the last block's
                // acquire + barrier orders its loads after all of them. (No
                // per-thread fence.sc: one release/acquire per block.)
                ws_consumer_sync();
                if (ct == 0) {
                    const u32 prev = atom_add_acq_rel_gpu(&tickets[T]);
                    is_last = (prev == (u32)(g_last - g_first)) ? 1u : 0u;
                }
                ws_consumer_sync();
                if (is_last) {
                    // Every contributor (this block too) wrote its slot:
                    // the sum reads them all in block order, two slots'
                    // loads in flight at a time.
#pragma unroll
                    for (int p = 0; p < TPW; p++)
#pragma unroll
                        for (int x = 0; x < TOK / 2; x++) acc[p][x] = 0.0f;
                    for (int h = g_first; h <= g_last; h += 2) {
                        const bool two = h + 1 <= g_last;
                        const float4* part0 = reinterpret_cast<const float4*>(
                            partials + (size_t)wsk_slot(h, T, G, U, k_chunks) * SEG_FLOATS);
                        const float4* part1 = reinterpret_cast<const float4*>(
                            partials + (size_t)wsk_slot(two ? h + 1 : h, T, G, U, k_chunks) * SEG_FLOATS);
#pragma unroll
                        for (int p = 0; p < TPW; p++)
#pragma unroll
                            for (int x4 = 0; x4 < TOK / 8; x4++) {
                                const int idx = (p * (TOK / 8) + x4) * 256 + ct;
                                const float4 a = __ldcg(part0 + idx);
                                acc[p][4 * x4] += a.x;
                                acc[p][4 * x4 + 1] += a.y;
                                acc[p][4 * x4 + 2] += a.z;
                                acc[p][4 * x4 + 3] += a.w;
                                if (two) {
                                    const float4 b = __ldcg(part1 + idx);
                                    acc[p][4 * x4] += b.x;
                                    acc[p][4 * x4 + 1] += b.y;
                                    acc[p][4 * x4 + 2] += b.z;
                                    acc[p][4 * x4 + 3] += b.w;
                                }
                            }
                    }
#pragma unroll
                    for (int p = 0; p < TPW; p++) {
                        const int tile = tile0 + p;
                        if (tile >= n_tiles) continue;
                        const int nb = tile * 4 + warp;
#pragma unroll
                        for (int q = 0; q < TOK / 8; q++)
#pragma unroll
                            for (int e = 0; e < 4; e++) {
                                const int row = m_base + 8 * q + 2 * t + (e & 1);
                                const int col = nb * 16 + gq + 8 * (e >> 1);
                                if (row < M && col < N)
                                    C[(size_t)row * N + col] = f32_to_act(acc[p][4 * q + e]);
                            }
                    }
                    if (ct == 0) tickets[T] = 0u;
                }
            }
            i += seg;
        }
    }
}

#define W4A16_WS_STAGE_ENTRY(NAME, TOK)                                                                 \
    extern "C" __global__ void __launch_bounds__(256) NAME(const u16* __restrict__ A, uint4* __restrict__ out, \
                                                           int M, int K, int k_chunks, long long units) {    \
        pdl_wait();                                                                                  \
        pdl_trigger();                                                                     \
        ws_stage_body<TOK>(A, out, M, K, k_chunks, units);                                              \
    }

// subn_m: the subnormal dequantisation's shift (SUBN entries, `_n`; the
// others ignore it).
#define W4A16_WS_ENTRY_X(NAME, TOK, TPW, STAGES, HAS_Z, PROBE, SUBN)                                    \
    extern "C" __global__ void __launch_bounds__(384, 1) NAME(                                          \
        const uint4* __restrict__ As, const uint4* __restrict__ W, const u32* __restrict__ S,           \
        const u32* __restrict__ Z, u16* __restrict__ C, float* __restrict__ partials,                   \
        u32* __restrict__ tickets, int M, int N, int n_pad, int k_chunks, int group_k32, int splits,    \
        int subn_m) {                                                                                   \
        pdl_trigger();                                                                                  \
        ws_body<TOK, TPW, STAGES, HAS_Z, PROBE, SUBN>(As, W, S, Z, C, partials, tickets, M, N, n_pad,   \
                                                      k_chunks, group_k32, splits, subn_m);             \
    }
#define W4A16_WS_ENTRY(NAME, TOK, TPW, STAGES, HAS_Z, PROBE) \
    W4A16_WS_ENTRY_X(NAME, TOK, TPW, STAGES, HAS_Z, PROBE, false)
// Subnormal dequantisation with the cluster reduction (change 67): launched
// as clusters of `splits` blocks; a plain launch takes the ticket.
#define W4A16_WS_ENTRY_C(NAME, TOK, TPW, STAGES, HAS_Z)                                                 \
    extern "C" __global__ void __launch_bounds__(384, 1) NAME(                                          \
        const uint4* __restrict__ As, const uint4* __restrict__ W, const u32* __restrict__ S,           \
        const u32* __restrict__ Z, u16* __restrict__ C, float* __restrict__ partials,                   \
        u32* __restrict__ tickets, int M, int N, int n_pad, int k_chunks, int group_k32, int splits,    \
        int subn_m) {                                                                                   \
        pdl_trigger();                                                                                  \
        ws_body<TOK, TPW, STAGES, HAS_Z, 0, true, true>(As, W, S, Z, C, partials, tickets, M, N, n_pad, \
                                                        k_chunks, group_k32, splits, subn_m);           \
    }

#if defined(WS_WX_ENTRIES)
// Only in the wgemm-format modules (WX_WS_MODULE / WX_WS_BF16_MODULE in
// src/wgemm/wgmma_ws.rs): the staging kernels and, per format and scale
// form, the four variants with the ticket split-K (keep in sync with
// `stages` there; the 8-bit rings are shallower: twice the code bytes per
// stage).
#define WX_WS_ENTRY(NAME, FMT, GROUPED, TOK, TPW, STAGES)                                              \
    extern "C" __global__ void __launch_bounds__(384, 1) NAME(                                          \
        const uint4* __restrict__ As, const uint4* __restrict__ W, const u32* __restrict__ S16,         \
        const float* __restrict__ S32, const u32* __restrict__ G, u16* __restrict__ C,                  \
        float* __restrict__ partials, u32* __restrict__ tickets, int M, int N, int n_pad, int k_chunks,  \
        int group_chunks, int splits, int scale_shift) {                                                \
        pdl_trigger();                                                                                  \
        ws_body<TOK, TPW, STAGES, false, 0, false, false, FMT, GROUPED>(                                \
            As, W, S16, nullptr, C, partials, tickets, M, N, n_pad, k_chunks, group_chunks, splits,     \
            scale_shift, S32, G);                                                                       \
    }
W4A16_WS_STAGE_ENTRY(w4a16_ws_stage_t64, 64)
W4A16_WS_STAGE_ENTRY(w4a16_ws_stage_t128, 128)
// One K group: the column scales in fp32 after the main loop.
WX_WS_ENTRY(wx_ws_fp4_t64x1, FMT_FP4, false, 64, 1, 12)
WX_WS_ENTRY(wx_ws_fp4_t64x2, FMT_FP4, false, 64, 2, 10)
WX_WS_ENTRY(wx_ws_fp4_t128x1, FMT_FP4, false, 128, 1, 8)
WX_WS_ENTRY(wx_ws_fp4_t128x2, FMT_FP4, false, 128, 2, 8)
WX_WS_ENTRY(wx_ws_int8_t64x1, FMT_INT8, false, 64, 1, 12)
WX_WS_ENTRY(wx_ws_int8_t64x2, FMT_INT8, false, 64, 2, 8)
WX_WS_ENTRY(wx_ws_int8_t128x1, FMT_INT8, false, 128, 1, 8)
WX_WS_ENTRY(wx_ws_int8_t128x2, FMT_INT8, false, 128, 2, 6)
WX_WS_ENTRY(wx_ws_fp8_t64x1, FMT_FP8, false, 64, 1, 12)
WX_WS_ENTRY(wx_ws_fp8_t64x2, FMT_FP8, false, 64, 2, 8)
WX_WS_ENTRY(wx_ws_fp8_t128x1, FMT_FP8, false, 128, 1, 8)
WX_WS_ENTRY(wx_ws_fp8_t128x2, FMT_FP8, false, 128, 2, 6)
// K groups / 2-D blocks (`g`) and INT3 / INT2: f16 scales in registers.
WX_WS_ENTRY(wx_ws_int8g_t64x1, FMT_INT8, true, 64, 1, 12)
WX_WS_ENTRY(wx_ws_int8g_t64x2, FMT_INT8, true, 64, 2, 8)
WX_WS_ENTRY(wx_ws_int8g_t128x1, FMT_INT8, true, 128, 1, 8)
WX_WS_ENTRY(wx_ws_int8g_t128x2, FMT_INT8, true, 128, 2, 6)
WX_WS_ENTRY(wx_ws_fp8g_t64x1, FMT_FP8, true, 64, 1, 12)
WX_WS_ENTRY(wx_ws_fp8g_t64x2, FMT_FP8, true, 64, 2, 8)
WX_WS_ENTRY(wx_ws_fp8g_t128x1, FMT_FP8, true, 128, 1, 8)
WX_WS_ENTRY(wx_ws_fp8g_t128x2, FMT_FP8, true, 128, 2, 6)
WX_WS_ENTRY(wx_ws_int3_t64x1, FMT_INT3, true, 64, 1, 12)
WX_WS_ENTRY(wx_ws_int3_t64x2, FMT_INT3, true, 64, 2, 10)
WX_WS_ENTRY(wx_ws_int3_t128x1, FMT_INT3, true, 128, 1, 8)
WX_WS_ENTRY(wx_ws_int3_t128x2, FMT_INT3, true, 128, 2, 8)
WX_WS_ENTRY(wx_ws_int2_t64x1, FMT_INT2, true, 64, 1, 12)
WX_WS_ENTRY(wx_ws_int2_t64x2, FMT_INT2, true, 64, 2, 10)
WX_WS_ENTRY(wx_ws_int2_t128x1, FMT_INT2, true, 128, 1, 8)
WX_WS_ENTRY(wx_ws_int2_t128x2, FMT_INT2, true, 128, 2, 8)
#elif !defined(WS_DIAG_ENTRIES)
W4A16_WS_STAGE_ENTRY(w4a16_ws_stage_t16, 16)
W4A16_WS_STAGE_ENTRY(w4a16_ws_stage_t32, 32)
W4A16_WS_STAGE_ENTRY(w4a16_ws_stage_t64, 64)
W4A16_WS_STAGE_ENTRY(w4a16_ws_stage_t128, 128)

// Keep (TOK, TPW, STAGES) in sync with `WsVariant` in src/int4/wgmma_ws.rs.
// Name: t<tokens>x<64-column tiles per consumer warpgroup>, z = zero points.
W4A16_WS_ENTRY(w4a16_ws_t64x1, 64, 1, 12, false, 0)
W4A16_WS_ENTRY(w4a16_ws_t64x2, 64, 2, 10, false, 0)
W4A16_WS_ENTRY(w4a16_ws_t128x1, 128, 1, 8, false, 0)
W4A16_WS_ENTRY(w4a16_ws_t128x2, 128, 2, 8, false, 0)
W4A16_WS_ENTRY(w4a16_ws_t64x1z, 64, 1, 12, true, 0)
W4A16_WS_ENTRY(w4a16_ws_t64x2z, 64, 2, 10, true, 0)
W4A16_WS_ENTRY(w4a16_ws_t128x1z, 128, 1, 8, true, 0)
W4A16_WS_ENTRY(w4a16_ws_t128x2z, 128, 2, 8, true, 0)
// Small-token variants (change 71, `SMALL_VARIANTS`; split-K form only):
// wgmma m64n16k16 / m64n32k16, so that M <= 32 multiplies no 64-token tile
// of mostly zero rows and the ring carries 2 / 4 KiB of activations per
// chunk instead of 8; t16x4's consumer warpgroups own 4 tiles each (the
// 16-token accumulators are 8 registers per tile).
W4A16_WS_ENTRY(w4a16_ws_t16x2, 16, 2, 16, false, 0)
W4A16_WS_ENTRY(w4a16_ws_t16x4, 16, 4, 10, false, 0)
W4A16_WS_ENTRY(w4a16_ws_t32x4, 32, 4, 9, false, 0)
W4A16_WS_ENTRY(w4a16_ws_t16x2z, 16, 2, 16, true, 0)
W4A16_WS_ENTRY(w4a16_ws_t16x4z, 16, 4, 10, true, 0)
W4A16_WS_ENTRY(w4a16_ws_t32x4z, 32, 4, 9, true, 0)
#ifndef MARLIN_ACT_BF16
W4A16_WS_ENTRY_X(w4a16_ws_t16x2n, 16, 2, 16, false, 0, true)
W4A16_WS_ENTRY_X(w4a16_ws_t16x4n, 16, 4, 10, false, 0, true)
W4A16_WS_ENTRY_X(w4a16_ws_t32x4n, 32, 4, 9, false, 0, true)
W4A16_WS_ENTRY_X(w4a16_ws_t16x2zn, 16, 2, 16, true, 0, true)
W4A16_WS_ENTRY_X(w4a16_ws_t16x4zn, 16, 4, 10, true, 0, true)
W4A16_WS_ENTRY_X(w4a16_ws_t32x4zn, 32, 4, 9, true, 0, true)
// Subnormal dequantisation (f16 only; docs/CUDA.md change 51): `_n`.
W4A16_WS_ENTRY_X(w4a16_ws_t64x1n, 64, 1, 12, false, 0, true)
W4A16_WS_ENTRY_X(w4a16_ws_t64x2n, 64, 2, 10, false, 0, true)
W4A16_WS_ENTRY_X(w4a16_ws_t128x1n, 128, 1, 8, false, 0, true)
W4A16_WS_ENTRY_X(w4a16_ws_t128x2n, 128, 2, 8, false, 0, true)
W4A16_WS_ENTRY_X(w4a16_ws_t64x1zn, 64, 1, 12, true, 0, true)
W4A16_WS_ENTRY_X(w4a16_ws_t64x2zn, 64, 2, 10, true, 0, true)
W4A16_WS_ENTRY_X(w4a16_ws_t128x1zn, 128, 1, 8, true, 0, true)
W4A16_WS_ENTRY_X(w4a16_ws_t128x2zn, 128, 2, 8, true, 0, true)
W4A16_WS_ENTRY_C(w4a16_ws_t64x1nc, 64, 1, 12, false)
W4A16_WS_ENTRY_C(w4a16_ws_t64x2nc, 64, 2, 10, false)
W4A16_WS_ENTRY_C(w4a16_ws_t128x1nc, 128, 1, 8, false)
W4A16_WS_ENTRY_C(w4a16_ws_t128x2nc, 128, 2, 8, false)
W4A16_WS_ENTRY_C(w4a16_ws_t64x1znc, 64, 1, 12, true)
W4A16_WS_ENTRY_C(w4a16_ws_t64x2znc, 64, 2, 10, true)
W4A16_WS_ENTRY_C(w4a16_ws_t128x1znc, 128, 1, 8, true)
W4A16_WS_ENTRY_C(w4a16_ws_t128x2znc, 128, 2, 8, true)
#endif

#define W4A16_WSK_ENTRY(NAME, TOK, TPW, STAGES, HAS_Z)                                                  \
    extern "C" __global__ void __launch_bounds__(384, 1) NAME(                                          \
        const uint4* __restrict__ As, const uint4* __restrict__ W, const u32* __restrict__ S,           \
        const u32* __restrict__ Z, u16* __restrict__ C, float* __restrict__ partials,                   \
        u32* __restrict__ tickets, int M, int N, int n_pad, int k_chunks, int group_k32, int m_blocks) { \
        pdl_trigger();                                                                     \
        wsk_body<TOK, TPW, STAGES, HAS_Z>(As, W, S, Z, C, partials, tickets, M, N, n_pad, k_chunks,     \
                                          group_k32, m_blocks);                                         \
    }

// Stream-K forms (persistent grid), same variants: `w4a16_wsk_*`.
W4A16_WSK_ENTRY(w4a16_wsk_t64x1, 64, 1, 12, false)
W4A16_WSK_ENTRY(w4a16_wsk_t64x2, 64, 2, 10, false)
W4A16_WSK_ENTRY(w4a16_wsk_t128x1, 128, 1, 8, false)
W4A16_WSK_ENTRY(w4a16_wsk_t128x2, 128, 2, 8, false)
W4A16_WSK_ENTRY(w4a16_wsk_t64x1z, 64, 1, 12, true)
W4A16_WSK_ENTRY(w4a16_wsk_t64x2z, 64, 2, 10, true)
W4A16_WSK_ENTRY(w4a16_wsk_t128x1z, 128, 1, 8, true)
W4A16_WSK_ENTRY(w4a16_wsk_t128x2z, 128, 2, 8, true)
#else   // WS_DIAG_ENTRIES
// Only in the diagnostic module (DIAG_MODULE in src/int4/wgmma_ws.rs).
// Diagnostic probes (MARLIN_WGMMA_WS_PROBE=deliver / compute; output
// meaningless): `_pd` delivery only, `_pc` dequantise + wgmma only.
W4A16_WS_ENTRY(w4a16_ws_t128x1_pd, 128, 1, 8, false, 1)
W4A16_WS_ENTRY(w4a16_ws_t128x2_pd, 128, 2, 8, false, 1)
W4A16_WS_ENTRY(w4a16_ws_t128x1_pc, 128, 1, 8, false, 2)
W4A16_WS_ENTRY(w4a16_ws_t128x2_pc, 128, 2, 8, false, 2)
// Session 6's epilogue (MARLIN_WGMMA_WS_OLD_EPILOGUE=1): same-run A/B.
W4A16_WS_ENTRY(w4a16_ws_t64x1_e0, 64, 1, 12, false, 3)
W4A16_WS_ENTRY(w4a16_ws_t64x2_e0, 64, 2, 10, false, 3)
W4A16_WS_ENTRY(w4a16_ws_t128x1_e0, 128, 1, 8, false, 3)
W4A16_WS_ENTRY(w4a16_ws_t128x2_e0, 128, 2, 8, false, 3)
// Ceiling probes (change 47; MARLIN_WGMMA_WS_PROBE=ss / raw / compute-ss /
// compute-raw; output meaningless).
W4A16_WS_ENTRY(w4a16_ws_t128x2_ps, 128, 2, 8, false, 4)
W4A16_WS_ENTRY(w4a16_ws_t128x2_pr, 128, 2, 8, false, 5)
W4A16_WS_ENTRY(w4a16_ws_t128x2_pcs, 128, 2, 8, false, 6)
W4A16_WS_ENTRY(w4a16_ws_t128x2_pcr, 128, 2, 8, false, 7)
// The same probes at 16 tokens (change 72: what sets the small-token
// variants' chunk time; A of `_ps` / `_pcs` is the slot's code region).
W4A16_WS_ENTRY(w4a16_ws_t16x2_pd, 16, 2, 16, false, 1)
W4A16_WS_ENTRY(w4a16_ws_t16x2_pc, 16, 2, 16, false, 2)
W4A16_WS_ENTRY(w4a16_ws_t16x2_ps, 16, 2, 16, false, 4)
W4A16_WS_ENTRY(w4a16_ws_t16x2_pr, 16, 2, 16, false, 5)
W4A16_WS_ENTRY(w4a16_ws_t16x2_pcs, 16, 2, 16, false, 6)
W4A16_WS_ENTRY(w4a16_ws_t16x2_pcr, 16, 2, 16, false, 7)
W4A16_WS_ENTRY(w4a16_ws_t16x4_pd, 16, 4, 10, false, 1)
W4A16_WS_ENTRY(w4a16_ws_t16x4_pc, 16, 4, 10, false, 2)
W4A16_WS_ENTRY(w4a16_ws_t16x4_ps, 16, 4, 10, false, 4)
W4A16_WS_ENTRY(w4a16_ws_t16x4_pr, 16, 4, 10, false, 5)
W4A16_WS_ENTRY(w4a16_ws_t16x4_pcs, 16, 4, 10, false, 6)
W4A16_WS_ENTRY(w4a16_ws_t16x4_pcr, 16, 4, 10, false, 7)
#endif  // WS_DIAG_ENTRIES

#endif  // __CUDA_ARCH_FEAT_SM90_ALL
