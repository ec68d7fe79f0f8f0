// The decode step's transformer layers at one token in ONE persistent launch
// (src/int4/layers.rs; docs/CUDA.md change 86). sm_90+ (TMA bulk copies and
// mbarrier transaction counts); symmetric INT4 weights in the Marlin layout
// (src/int4/pack.rs) with groups of 64 x 2^k, f16 GEMV inputs, f32
// residual stream, f16 KV cache, head_dim 128, Llama-style layers (RMSNorm,
// RoPE, GQA attention, SiLU-gated MLP, no QK-norm, no post-norms).
//
// Why one launch: at batch 1 each kernel boundary of the layered step costs
// a launch ramp and a tail (a GEMM's blocks become resident only when the
// previous kernel's leave, change 53 (c)), and attention and the norms leave
// HBM idle: ~25 of each ~63 us layer on the 8B shape are not weight bytes.
// Here every SM streams ITS share of every layer's weights, in step order,
// through one bulk-copy ring that never waits for a data dependency: the
// producer warp copies as far ahead as the ring reaches (~180 KiB per SM,
// ~8 us of the SM's share of HBM bandwidth) while the consumer warps wait
// for the inputs of the GEMV they are on (counters in global memory), so
// that the attention chain, the reductions and the waits overlap the weight
// stream. Measured (change 86): the stream alone runs at copy bandwidth,
// but a consumer stall longer than the ring's slack (~2-3 us: most of the
// ring is in flight) stops it; the step is 1.85x the layered step's time,
// so the kernel is opt-in.
//
// Work per layer, in the order every block runs it:
//   1. q|k|v GEMV of RMSNorm(x) (each block normalises x itself);
//   2. attention: task (kv head h, split s of the keys) on block b (tasks
//      b, b + G, ...): ropes q and k, writes k and v at `pos` (the last
//      split), runs the split's keys; the last split of a kv head to finish
//      (ticket) merges the splits into the f16 attention output;
//   3. o GEMV, x_mid = x + o;
//   4. gate|up GEMV of RMSNorm(x_mid); the last block to finish a (gate, up)
//      pair of column blocks writes SiLU(gate) * up (f16);
//   5. down GEMV, x_out = x_mid + down.
// A GEMV's "units" (64-column tile x chunk of 64 along K: 2 KiB of packed
// codes, four column blocks of 16 one after another, contiguous in the
// Marlin layout's tile-major order, src/int4/pack.rs `word_index`) are cut
// into G equal contiguous ranges, one per block. A column block spread over
// several blocks is summed by the last of them (ticket) in block order, so
// results do not depend on timing (bit-reproducible run to run).
//
// Deadlock freedom: all G blocks are resident (one per SM, G <= SMs), every
// block runs its work in the same global order, and a wait only ever waits
// for work that comes earlier in that order. A wait that exceeds 4 s traps
// (an error at the next synchronisation instead of a hung process).

#include "marlin_common.cuh"

#define PL_CW 8                         // consumer warps (16 measured slower: change 86)
#define PL_CT (32 * PL_CW)              // consumer threads
#define PL_PIECE 8                       // units (tile x chunk, 2 KiB) per ring slot
#define PL_CODE_BYTES (PL_PIECE * 2048)  // codes of a slot, then 128 B of scales per unit
#define PL_SLOT_BYTES (PL_CODE_BYTES + PL_PIECE * 128)
#define PL_MAX_SEGS 32                   // column blocks one block's range of a GEMV may touch
#define PL_HD 128
#define PL_MAX_GQ 8
#define PL_NEG_INF __int_as_float(0xff800000)
// Diagnosis bits (MARLIN_PERSISTENT_DIAG, timing only: wrong results):
// 1 no dependency waits, 2 no GEMV arithmetic (pieces waited and released),
// 4 no attention tasks (implies 1), 8 no scale copies, 16 no GEMV input
// staging and no GEMV epilogue (column sums, tickets, outputs).
#define PL_DIAG_NO_WAIT 1
#define PL_DIAG_NO_MATH 2
#define PL_DIAG_NO_ATT 4
#define PL_DIAG_NO_SCALES 8
#define PL_DIAG_NO_EDGES 16

enum { PL_QKV = 0, PL_O = 1, PL_GU = 2, PL_DOWN = 3 };

// Keep in sync with `GemvDesc` / `LayerDesc` in src/int4/layers.rs.
struct PlGemv {
    const uint4* w;    // (nbs_pad / 4 tiles, k_chunks, 4 column blocks, 32 lanes) x 16 B
    const u32* s;      // scale stream (nbs_pad / 4 tiles, groups, 4 column blocks, 8) f16x2:
                       // w4_layers_scale_stream's reorder of the pack's (groups, nbs_pad, 8)
    int n;             // real output columns
    int nbs_pad;       // n_pad / 16
    int k_chunks;      // k_pad / 64
    int group_shift;   // log2(chunks of 64 per scale group)
};
struct PlLayer {
    PlGemv g[4];
    const float* attn_norm;
    const float* ffn_norm;
};

// Per-layer counters (u32, zeroed before every launch): keep in sync with
// `sync_stride` in src/int4/layers.rs.
#define PL_SY_QKV 0
#define PL_SY_ATT 1
#define PL_SY_O 2
#define PL_SY_GU 3
#define PL_SY_DOWN 4
#define PL_SY_HEAD 5

#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900

__device__ __forceinline__ u32 pl_ld_acquire(const u32* p) {
    u32 v;
    asm volatile("ld.acquire.gpu.global.u32 %0, [%1];" : "=r"(v) : "l"(p) : "memory");
    return v;
}
__device__ __forceinline__ void pl_red_release(u32* p, u32 v) {
    asm volatile("red.release.gpu.global.add.u32 [%0], %1;" ::"l"(p), "r"(v) : "memory");
}
__device__ __forceinline__ u16 pl_ld_cg_u16(const u16* p) {
    u16 r;
    asm volatile("ld.global.cg.u16 %0, [%1];" : "=h"(r) : "l"(p));
    return r;
}
__device__ __forceinline__ u64 pl_clock_ns() {
    u64 t;
    asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));
    return t;
}
__device__ __forceinline__ u32 pl_lds32(u32 addr) {
    u32 v;
    asm volatile("ld.shared.u32 %0, [%1];" : "=r"(v) : "r"(addr));
    return v;
}
// d (16x8 f32) = a . b with a zero accumulator (w4a16_gemm.cu's
// mma_16816_zc; that file is not included here).
__device__ __forceinline__ void pl_mma_zc(float* d, const u32* a, const u32* b) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 "
        "{%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, {%10, %10, %10, %10};"
        : "=f"(d[0]), "=f"(d[1]), "=f"(d[2]), "=f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]), "f"(0.0f));
}
// The consumer warps' own barrier (the producer warp never joins it).
__device__ __forceinline__ void pl_sync_consumers() { asm volatile("bar.sync 1, %0;" ::"n"(PL_CT) : "memory"); }

// Thread 0 of the consumers waits until *p >= target, then every consumer
// passes the barrier (the acquire, then the barrier: the other threads'
// later ld.cg see what the releasing blocks wrote).
__device__ void pl_wait(const u32* p, u32 target, u32* err, int diag) {
    if (threadIdx.x == 0 && (diag & (PL_DIAG_NO_WAIT | PL_DIAG_NO_ATT)) == 0 && pl_ld_acquire(p) < target) {
        const u64 t0 = pl_clock_ns();
        while (pl_ld_acquire(p) < target) {
            __nanosleep(40);
            if (pl_clock_ns() - t0 > 4000000000ull) {
                atomicExch(err, 1u);
                __trap();
            }
        }
    }
    pl_sync_consumers();
}
// After a consumer barrier: one thread publishes the block's stores.
__device__ __forceinline__ void pl_signal(u32* p) {
    if (threadIdx.x == 0) {
        __threadfence();
        pl_red_release(p, 1u);
    }
}

// Logical 64-column tiles of a GEMV: gate|up interleaves gate tile j and up
// tile j (logical 2j, 2j + 1) so that one block's range holds both halves
// of its SiLU pairs (ffn is a multiple of 64).
__device__ __forceinline__ int pl_tiles(const PlGemv& g, int kind, int half_tiles) {
    return kind == PL_GU ? 2 * half_tiles : g.nbs_pad >> 2;
}
__device__ __forceinline__ int pl_pt(int lt, int kind, int half_tiles) {
    return kind == PL_GU ? (lt >> 1) + (lt & 1) * half_tiles : lt;
}
// Units fit in int (the host checks); products with G in 64 bits.
__device__ __forceinline__ int pl_start(int units, int b, int G) { return (int)((long long)units * b / G); }
// The block whose range holds unit u (every range is non-empty: units >= G).
__device__ __forceinline__ int pl_block_of(int u, int units, int G) {
    return (int)(((long long)(u + 1) * G + units - 1) / units) - 1;
}
// Unit u0 + i as (logical tile, chunk), from u0's (lt, c) without a division.
__device__ __forceinline__ void pl_unit_at(int lt0, int c0, int i, int kc, int& lt, int& c) {
    lt = lt0;
    c = c0 + i;
    while (c >= kc) {
        c -= kc;
        lt++;
    }
}


__device__ __forceinline__ void mbar_expect_tx(u32 bar, u32 bytes) {
    asm volatile("mbarrier.expect_tx.relaxed.cta.shared::cta.b64 [%0], %1;" ::"r"(bar), "r"(bytes) : "memory");
}

// The consumers' wait for a ring slot: try_wait, then a short sleep between
// tries, so that waiting warps leave the issue slots to the producer warp
// (whose issue rate is the stream's limit, change 86).
__device__ __forceinline__ void pl_mbar_wait_backoff(u32 bar, u32 parity) {
    u32 done;
    for (;;) {
        asm volatile(
            "{ .reg .pred p; mbarrier.try_wait.parity.shared::cta.b64 p, [%1], %2; selp.u32 %0, 1, 0, p; }"
            : "=r"(done)
            : "r"(bar), "r"(parity)
            : "memory");
        if (done) return;
        __nanosleep(64);
    }
}

// Ring position shared by the producer's and the consumers' walks.
struct PlRing {
    int slot;
    u32 round;
    __device__ __forceinline__ void next(int n_slots) {
        if (++slot == n_slots) {
            slot = 0;
            round++;
        }
    }
};

// Producer warp: this block's units of every GEMV of every layer, in order.
__device__ void pl_produce(const PlLayer* __restrict__ layers, int n_layers, int half_tiles, int G, int b, u32 ring,
                          u32 full0, u32 empty0, int n_slots, int diag) {
    const bool scales = (diag & PL_DIAG_NO_SCALES) == 0;
    const int lane = threadIdx.x & 31;
    PlRing r{0, 0};
    for (int l = 0; l < n_layers; l++)
        for (int kind = 0; kind < 4; kind++) {
            const PlGemv gm = layers[l].g[kind];
            const int kc = gm.k_chunks;
            const int units = pl_tiles(gm, kind, half_tiles) * kc;
            const int u0 = pl_start(units, b, G), u1 = pl_start(units, b + 1, G);
            const int gs = gm.group_shift;
            const int groups = (kc + (1 << gs) - 1) >> gs;
            // (tile, chunk) of the piece's first unit, advanced without a
            // division: this thread's issue rate is the stream's limit
            // (change 86: a division per piece cost ~0.3 ms a step).
            int lt = u0 / kc, c = u0 - lt * kc;
            for (int u = u0; u < u1; u += PL_PIECE) {
                const int n = min(PL_PIECE, u1 - u);
                const u32 full = full0 + 8 * r.slot, empty = empty0 + 8 * r.slot;
                const u32 dst = ring + (u32)r.slot * PL_SLOT_BYTES;
                if (r.round > 0) mbar_wait(empty, (r.round - 1) & 1);
                if (lane == 0) {
                    // Per run of units of one tile: its codes (2 KiB a unit)
                    // and the scale rows of the groups it spans (128 B a
                    // row, at most one per unit), rows at the run's first
                    // unit's scale slot; each run's bytes expected before
                    // its copies, the one arrival after all of them.
                    for (int i = 0; i < n;) {
                        const int run = min(n - i, kc - c);
                        const int pt = pl_pt(lt, kind, half_tiles);
                        const int g0 = c >> gs, rows = ((c + run - 1) >> gs) - g0 + 1;
                        mbar_expect_tx(full, (u32)run * 2048u + (scales ? (u32)rows * 128u : 0u));
                        bulk_copy(dst + (u32)i * 2048u, gm.w + ((size_t)pt * kc + c) * 128, (u32)run * 2048u, full);
                        if (scales)
                            bulk_copy(dst + PL_CODE_BYTES + (u32)i * 128u, gm.s + ((size_t)pt * groups + g0) * 32,
                                      (u32)rows * 128u, full);
                        i += run;
                        c += run;
                        if (c == kc) {
                            c = 0;
                            lt++;
                        }
                    }
                    mbar_arrive(full);
                }
                __syncwarp();
                r.next(n_slots);
            }
        }
}

// The f16 GEMV input in shared memory: RMSNorm(src) * weight, zero past d
// up to k_pad. `red`: 2 * PL_CW floats of scratch.
// 16-byte loads from L2 (other blocks' outputs of this launch).
__device__ __forceinline__ float4 pl_ld_cg_f32x4(const float* p) {
    float4 v;
    asm volatile("ld.global.cg.v4.f32 {%0, %1, %2, %3}, [%4];" : "=f"(v.x), "=f"(v.y), "=f"(v.z), "=f"(v.w) : "l"(p));
    return v;
}
__device__ __forceinline__ uint4 pl_ld_cg_u32x4(const void* p) {
    uint4 v;
    asm volatile("ld.global.cg.v4.u32 {%0, %1, %2, %3}, [%4];" : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w) : "l"(p));
    return v;
}

// The f16 GEMV input in shared memory: RMSNorm(src) * weight, zero past d
// up to k_pad (d a multiple of 4, at most PL_STAGE_X4 * 4 * PL_CT). Every
// load is issued before the first is used: the stage is one L2 round trip
// (a load-use loop paid one per element, change 86: ~1 ms a step).
#define PL_STAGE_X4 8
__device__ void pl_stage_norm(u16* act, const float* src, const float* __restrict__ nw, int d, int k_pad, float eps,
                              float* red) {
    const int tid = threadIdx.x;
    const int n4 = d >> 2;
    float4 xv[PL_STAGE_X4];
#pragma unroll
    for (int j = 0; j < PL_STAGE_X4; j++) {
        const int k4 = tid + j * PL_CT;
        xv[j] = k4 < n4 ? pl_ld_cg_f32x4(src + 4 * k4) : make_float4(0.0f, 0.0f, 0.0f, 0.0f);
    }
    float ss = 0.0f;
#pragma unroll
    for (int j = 0; j < PL_STAGE_X4; j++)
        ss += xv[j].x * xv[j].x + xv[j].y * xv[j].y + xv[j].z * xv[j].z + xv[j].w * xv[j].w;
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) ss += __shfl_xor_sync(0xffffffffu, ss, o);
    if ((tid & 31) == 0) red[tid >> 5] = ss;
    pl_sync_consumers();
    float tot = 0.0f;
#pragma unroll
    for (int w = 0; w < PL_CW; w++) tot += red[w];
    const float inv = rsqrtf(tot / (float)d + eps);
#pragma unroll
    for (int j = 0; j < PL_STAGE_X4; j++) {
        const int k4 = tid + j * PL_CT;
        if (k4 < n4) {
            const float4 wv = *reinterpret_cast<const float4*>(nw + 4 * k4);
            uint2 h;
            h.x = (u32)f32_to_f16(xv[j].x * inv * wv.x) | ((u32)f32_to_f16(xv[j].y * inv * wv.y) << 16);
            h.y = (u32)f32_to_f16(xv[j].z * inv * wv.z) | ((u32)f32_to_f16(xv[j].w * inv * wv.w) << 16);
            *reinterpret_cast<uint2*>(act + 4 * k4) = h;
        }
    }
    for (int k = d + tid; k < k_pad; k += PL_CT) act[k] = 0;
    pl_sync_consumers();
}

// The f16 GEMV input copied from another block's output (n a multiple of
// 8; zero past n up to k_pad), 8 loads in flight per thread.
__device__ void pl_stage_copy(u16* act, const u16* src, int n, int k_pad) {
    const int n8 = n >> 3;
    for (int base = 0; base < n8; base += 8 * PL_CT) {
        uint4 v[8];
#pragma unroll
        for (int j = 0; j < 8; j++) {
            const int k8 = base + threadIdx.x + j * PL_CT;
            if (k8 < n8) v[j] = pl_ld_cg_u32x4(src + 8 * k8);
        }
#pragma unroll
        for (int j = 0; j < 8; j++) {
            const int k8 = base + threadIdx.x + j * PL_CT;
            if (k8 < n8) *reinterpret_cast<uint4*>(act + 8 * k8) = v[j];
        }
    }
    for (int k = n + threadIdx.x; k < k_pad; k += PL_CT) act[k] = 0;
    pl_sync_consumers();
}

// What a finished column value becomes.
struct PlOut {
    float* dst;        // QKV: q|k|v out; O / DOWN: residual out; GU: gate|up out (physical columns)
    const float* res;  // O / DOWN: residual in
};

__device__ __forceinline__ void pl_finalize(int kind, const PlOut& out, int n, int col, float v) {
    if (kind == PL_GU) {
        out.dst[col] = v;
    } else if (col < n) {
        // q|k|v rounded to f16 as the layered step's GEMM output is (a
        // sharply peaked softmax turns that rounding into visible logit
        // differences, so both steps keep the same inputs to RoPE).
        out.dst[col] = kind == PL_QKV ? f16_to_f32(f32_to_f16(v)) : ld_cg_f32(out.res + col) + v;
    }
}

// Consumer warps: one GEMV over this block's units (input in `act`), then
// the block's column sums finalised (tickets for shared column blocks).
__device__ void pl_gemv(const PlGemv& gm, int kind, int half_tiles, int G, int b, PlRing& r, u32 ring, u32 full0,
                        u32 empty0, int n_slots, const u16* act, float* seg_acc, int* seg_flag, float* part,
                        u32* tickets, u32* pair_tickets, u16* glu_out, const PlOut& out, int diag) {
    const int tid = threadIdx.x, lane = tid & 31, w = tid >> 5, g = lane >> 2, t = lane & 3;
    // Warp w: column block q = w % 4 of units w / 4, w / 4 + PL_CW / 4, ...
    // of every piece; a segment is (logical tile - first tile) * 4 + q.
    const int q = w & 3;
    const int kc = gm.k_chunks;
    const int units = pl_tiles(gm, kind, half_tiles) * kc;
    const int u0 = pl_start(units, b, G), u1 = pl_start(units, b + 1, G);
    const int first_lt = u0 / kc;
    const int n_segs = 4 * ((u1 - 1) / kc - first_lt + 1);
    const int half_nbs = 4 * half_tiles;
    // Warp w's column sums: the segments of its column block q only
    // (segment s at row s / 4).
    float* my_acc = seg_acc + w * (PL_MAX_SEGS / 4) * 16;
    for (int i = lane; i < (n_segs / 4) * 16; i += 32) my_acc[i] = 0.0f;
    const u32 act_at = smem_addr(act) + 32u * t;  // + 128 B per chunk
    float acc0 = 0.0f, acc2 = 0.0f;
    int cur = -1;
    const int gs = gm.group_shift;
    int lt0 = u0 / kc, c0 = u0 - lt0 * kc;  // the piece's first unit
    for (int u = u0; u < u1; u += PL_PIECE) {
        const int n = min(PL_PIECE, u1 - u);
        const u32 slot = ring + (u32)r.slot * PL_SLOT_BYTES;
        pl_mbar_wait_backoff(full0 + 8 * r.slot, r.round & 1);
        // Warp w's units of the piece in pairs, i_a = w / 4 + 4 k and i_b =
        // i_a + 2, loaded and multiplied together (independent chains); a
        // missing i_b repeats i_a and is not added.
        for (int i_a = w >> 2; i_a < n && (diag & PL_DIAG_NO_MATH) == 0; i_a += 2 * (PL_CW / 4)) {
            const int i_b = i_a + PL_CW / 4;
            const bool has_b = i_b < n;
            int lts[2], cs[2];
            pl_unit_at(lt0, c0, i_a, kc, lts[0], cs[0]);
            pl_unit_at(lt0, c0, has_b ? i_b : i_a, kc, lts[1], cs[1]);
            const int iu[2] = {i_a, has_b ? i_b : i_a};
            uint4 wv[2], a0[2], a1[2];
            u32 sc[2];
#pragma unroll
            for (int e = 0; e < 2; e++) {
                wv[e] = lds128_at(slot + (u32)iu[e] * 2048u + (u32)q * 512u + 16u * lane);
                // The unit's scale row: its run's rows start at the run's
                // first unit's slot (pl_produce).
                const int run0 = max(0, iu[e] - cs[e]);
                const int row = run0 + (cs[e] >> gs) - ((cs[e] - (iu[e] - run0)) >> gs);
                sc[e] = pl_lds32(slot + PL_CODE_BYTES + (u32)row * 128u + (u32)q * 32u + 4u * g);
                a0[e] = make_uint4(0, 0, 0, 0);
                a1[e] = a0[e];
                if (g == 0) {
                    a0[e] = lds128_at(act_at + (u32)cs[e] * 128u);
                    a1[e] = lds128_at(act_at + (u32)cs[e] * 128u + 16u);
                }
            }
            float lo[2], hi[2];
#pragma unroll
            for (int e = 0; e < 2; e++) {
                // k16 step j: code word j, activation words 2j, 2j + 1;
                // two chains (even / odd steps).
                const u32 words[4] = {wv[e].x, wv[e].y, wv[e].z, wv[e].w};
                const u32 acts[8] = {a0[e].x, a0[e].y, a0[e].z, a0[e].w, a1[e].x, a1[e].y, a1[e].z, a1[e].w};
                float ch[2][4];
#pragma unroll
                for (int j = 0; j < 4; j++) {
                    u32 wa[4];
                    dequant_word_unscaled(words[j], wa);
                    const u32 bb[2] = {acts[2 * j], acts[2 * j + 1]};
                    if (j < 2)
                        pl_mma_zc(ch[j & 1], wa, bb);
                    else
                        mma_16816(ch[j & 1], wa, bb);
                }
                float sl, sh;
                f16x2_to_f32(sc[e], sl, sh);
                lo[e] = (ch[0][0] + ch[1][0]) * sl;
                hi[e] = (ch[0][2] + ch[1][2]) * sh;
            }
#pragma unroll
            for (int e = 0; e < 2; e++) {
                if (e == 1 && !has_b) break;
                const int seg = 4 * (lts[e] - first_lt) + q;
                if (seg != cur) {
                    if (cur >= 0 && t == 0) {
                        my_acc[(cur >> 2) * 16 + g] = acc0;
                        my_acc[(cur >> 2) * 16 + 8 + g] = acc2;
                    }
                    acc0 = acc2 = 0.0f;
                    cur = seg;
                }
                acc0 += lo[e];
                acc2 += hi[e];
            }
        }
        __syncwarp();
        if (lane == 0) mbar_arrive(empty0 + 8 * r.slot);
        r.next(n_slots);
        pl_unit_at(lt0, c0, n, kc, lt0, c0);
    }
    if (cur >= 0 && t == 0) {
        my_acc[(cur >> 2) * 16 + g] = acc0;
        my_acc[(cur >> 2) * 16 + 8 + g] = acc2;
    }
    pl_sync_consumers();
    if (diag & PL_DIAG_NO_EDGES) return;
    // Column sums over the warps in warp order; whole column blocks are
    // final, shared ones go to this block's partial slots.
    // Segment s: logical tile first_lt + s / 4, column block s % 4 of it.
    for (int idx = tid; idx < n_segs * 16; idx += PL_CT) {
        const int s = idx >> 4, i = idx & 15, lt = first_lt + (s >> 2);
        float v = 0.0f;
#pragma unroll
        for (int w2 = s & 3; w2 < PL_CW; w2 += 4) v += seg_acc[(w2 * (PL_MAX_SEGS / 4) + (s >> 2)) * 16 + i];
        const int fb = pl_block_of(lt * kc, units, G);
        const int lb = pl_block_of(lt * kc + kc - 1, units, G);
        if (fb == lb)
            pl_finalize(kind, out, gm.n, (4 * pl_pt(lt, kind, half_tiles) + (s & 3)) * 16 + i, v);
        else
            part[((size_t)b * PL_MAX_SEGS + s) * 16 + i] = v;
    }
    pl_sync_consumers();
    if (tid < n_segs) {
        const int lt = first_lt + (tid >> 2);
        const int fb = pl_block_of(lt * kc, units, G);
        const int lb = pl_block_of(lt * kc + kc - 1, units, G);
        const int pn = 4 * pl_pt(lt, kind, half_tiles) + (tid & 3);
        // 1: this block finalises the column block (whole here, or last in).
        seg_flag[tid] = fb == lb ? 1 : (atom_add_acq_rel_gpu(&tickets[pn]) == (u32)(lb - fb) ? 1 : 0);
    }
    pl_sync_consumers();
    for (int idx = tid; idx < n_segs * 16; idx += PL_CT) {
        const int s = idx >> 4, i = idx & 15, lt = first_lt + (s >> 2);
        const int fb = pl_block_of(lt * kc, units, G);
        const int lb = pl_block_of(lt * kc + kc - 1, units, G);
        if (fb == lb || !seg_flag[s]) continue;
        float v = 0.0f;
        for (int b2 = fb; b2 <= lb; b2++) {
            const int s2 = 4 * (lt - pl_start(units, b2, G) / kc) + (s & 3);
            v += ld_cg_f32(part + ((size_t)b2 * PL_MAX_SEGS + s2) * 16 + i);
        }
        pl_finalize(kind, out, gm.n, (4 * pl_pt(lt, kind, half_tiles) + (s & 3)) * 16 + i, v);
    }
    if (kind == PL_GU) {
        // Both halves of a SiLU pair final: the second to finish computes
        // it. Pair j = gate column block j = up column block half_nbs + j.
        pl_sync_consumers();
        if (tid < n_segs) {
            const int j = 4 * ((first_lt + (tid >> 2)) >> 1) + (tid & 3);
            seg_flag[PL_MAX_SEGS + tid] = seg_flag[tid] && atom_add_acq_rel_gpu(&pair_tickets[j]) == 1u ? 1 : 0;
        }
        pl_sync_consumers();
        for (int idx = tid; idx < n_segs * 16; idx += PL_CT) {
            const int s = idx >> 4, i = idx & 15, j = 4 * ((first_lt + (s >> 2)) >> 1) + (s & 3);
            if (!seg_flag[PL_MAX_SEGS + s]) continue;
            const float gate = ld_cg_f32(out.dst + j * 16 + i);
            const float up = ld_cg_f32(out.dst + (half_nbs + j) * 16 + i);
            glu_out[j * 16 + i] = f32_to_f16(gate / (1.0f + expf(-gate)) * up);
        }
    }
    pl_sync_consumers();
}

// One attention task: kv head h, split s of S over keys 0..pos.
__device__ void pl_attention(int h, int s, int S, int pos, int n_heads, int n_kv, float attn_scale,
                             const float* cs, const float* sn, int neox, const float* qkv_out, u16* kc_row0,
                             u16* vc_row0, float* att_part, int max_splits, u16* att_out, u32* ticket, u32* done,
                             float* scratch, int* flag) {
    const int tid = threadIdx.x, lane = tid & 31, w = tid >> 5;
    const int gq = n_heads / n_kv;
    const int n_keys = pos + 1;
    const int k0 = (int)((long long)s * n_keys / S), k1 = (int)((long long)(s + 1) * n_keys / S);
    float* qs = scratch;               // gq x 128, scaled by attn_scale * log2(e)
    float* kn = qs + gq * PL_HD;       // 128: this step's key (roped, f16-rounded)
    float* vn = kn + PL_HD;            // 128
    float* wres = vn + PL_HD;          // PL_CW x gq x 130
    const float qscale = attn_scale * MARLIN_LOG2E;
    for (int idx = tid; idx < (gq + 1) * (PL_HD / 2); idx += PL_CT) {
        const int hh = idx / (PL_HD / 2), i = idx % (PL_HD / 2);
        const float* src = hh < gq ? qkv_out + (size_t)(h * gq + hh) * PL_HD : qkv_out + (size_t)(n_heads + h) * PL_HD;
        const int ia = neox ? i : 2 * i, ib = neox ? i + PL_HD / 2 : 2 * i + 1;
        const float a = ld_cg_f32(src + ia), bv = ld_cg_f32(src + ib);
        const float ra = a * cs[i] - bv * sn[i], rb = a * sn[i] + bv * cs[i];
        if (hh < gq) {
            qs[hh * PL_HD + ia] = ra * qscale;
            qs[hh * PL_HD + ib] = rb * qscale;
        } else {
            kn[ia] = f16_to_f32(f32_to_f16(ra));
            kn[ib] = f16_to_f32(f32_to_f16(rb));
        }
    }
    for (int i = tid; i < PL_HD; i += PL_CT)
        vn[i] = f16_to_f32(f32_to_f16(ld_cg_f32(qkv_out + (size_t)(n_heads + n_kv + h) * PL_HD + i)));
    pl_sync_consumers();
    if (s == S - 1) {
        for (int i = tid; i < PL_HD; i += PL_CT) {
            kc_row0[(size_t)pos * PL_HD + i] = f32_to_f16(kn[i]);
            vc_row0[(size_t)pos * PL_HD + i] = f32_to_f16(vn[i]);
        }
    }
    // Warp w: keys k0 + w, k0 + w + PL_CW, ...; lane: dims 4 lane .. 4 lane + 3.
    float q[PL_MAX_GQ][4], o[PL_MAX_GQ][4], m[PL_MAX_GQ], l[PL_MAX_GQ];
#pragma unroll
    for (int hh = 0; hh < PL_MAX_GQ; hh++) {
#pragma unroll
        for (int e = 0; e < 4; e++) {
            q[hh][e] = hh < gq ? qs[hh * PL_HD + 4 * lane + e] : 0.0f;
            o[hh][e] = 0.0f;
        }
        m[hh] = PL_NEG_INF;
        l[hh] = 0.0f;
    }
    auto load_key = [&](int j, float (&kk)[4], float (&vv)[4]) {
        if (j == pos) {
#pragma unroll
            for (int e = 0; e < 4; e++) {
                kk[e] = kn[4 * lane + e];
                vv[e] = vn[4 * lane + e];
            }
        } else {
            const uint2 kw = *reinterpret_cast<const uint2*>(kc_row0 + (size_t)j * PL_HD + 4 * lane);
            const uint2 vw = *reinterpret_cast<const uint2*>(vc_row0 + (size_t)j * PL_HD + 4 * lane);
            f16x2_to_f32(kw.x, kk[0], kk[1]);
            f16x2_to_f32(kw.y, kk[2], kk[3]);
            f16x2_to_f32(vw.x, vv[0], vv[1]);
            f16x2_to_f32(vw.y, vv[2], vv[3]);
        }
    };
    // Up to 4 keys per warp loaded at once (independent round trips: the
    // weight stream keeps HBM busy, so each one is slow).
    constexpr int KB = 4;
    for (int j0 = k0 + w; j0 < k1; j0 += KB * PL_CW) {
        float kk[KB][4], vv[KB][4];
#pragma unroll
        for (int r = 0; r < KB; r++)
            if (j0 + r * PL_CW < k1) load_key(j0 + r * PL_CW, kk[r], vv[r]);
#pragma unroll
        for (int r = 0; r < KB; r++) {
            if (j0 + r * PL_CW >= k1) break;
            float sc[PL_MAX_GQ];
#pragma unroll
            for (int hh = 0; hh < PL_MAX_GQ; hh++)
                sc[hh] = q[hh][0] * kk[r][0] + q[hh][1] * kk[r][1] + q[hh][2] * kk[r][2] + q[hh][3] * kk[r][3];
#pragma unroll
            for (int off = 16; off > 0; off >>= 1)
#pragma unroll
                for (int hh = 0; hh < PL_MAX_GQ; hh++)
                    if (hh < gq) sc[hh] += __shfl_xor_sync(0xffffffffu, sc[hh], off);
#pragma unroll
            for (int hh = 0; hh < PL_MAX_GQ; hh++) {
                if (hh >= gq) continue;
                const float mn = fmaxf(m[hh], sc[hh]);
                const float alpha = exp2f(m[hh] - mn), p = exp2f(sc[hh] - mn);
                l[hh] = l[hh] * alpha + p;
#pragma unroll
                for (int e = 0; e < 4; e++) o[hh][e] = o[hh][e] * alpha + p * vv[r][e];
                m[hh] = mn;
            }
        }
    }
#pragma unroll
    for (int hh = 0; hh < PL_MAX_GQ; hh++) {
        if (hh >= gq) continue;
        float* wr = wres + (w * gq + hh) * (PL_HD + 2);
#pragma unroll
        for (int e = 0; e < 4; e++) wr[4 * lane + e] = o[hh][e];
        if (lane == 0) {
            wr[PL_HD] = m[hh];
            wr[PL_HD + 1] = l[hh];
        }
    }
    pl_sync_consumers();
    for (int idx = tid; idx < gq * PL_HD; idx += PL_CT) {
        const int hh = idx / PL_HD, dd = idx % PL_HD;
        float mx = PL_NEG_INF;
        for (int w2 = 0; w2 < PL_CW; w2++) mx = fmaxf(mx, wres[(w2 * gq + hh) * (PL_HD + 2) + PL_HD]);
        float ls = 0.0f, a = 0.0f;
        for (int w2 = 0; w2 < PL_CW; w2++) {
            const float* wr = wres + (w2 * gq + hh) * (PL_HD + 2);
            if (wr[PL_HD] == PL_NEG_INF) continue;
            const float f = exp2f(wr[PL_HD] - mx);
            ls += wr[PL_HD + 1] * f;
            a += wr[dd] * f;
        }
        float* p = att_part + (((size_t)h * max_splits + s) * gq + hh) * (PL_HD + 2);
        p[dd] = a;
        if (dd == 0) {
            p[PL_HD] = mx;
            p[PL_HD + 1] = ls;
        }
    }
    pl_sync_consumers();
    if (tid == 0) *flag = atom_add_acq_rel_gpu(ticket) == (u32)(S - 1) ? 1 : 0;
    pl_sync_consumers();
    if (*flag) {
        // The splits' partials in batches of 8 independent L2 loads (one
        // dependent round trip per batch, not per split).
        constexpr int B = 8;
        for (int idx = tid; idx < gq * PL_HD; idx += PL_CT) {
            const int hh = idx / PL_HD, dd = idx % PL_HD;
            const float* p0 = att_part + ((size_t)h * max_splits * gq + hh) * (PL_HD + 2);
            const size_t split_stride = (size_t)gq * (PL_HD + 2);
            float mx = PL_NEG_INF;
            for (int s0 = 0; s0 < S; s0 += B) {
                float mv[B];
#pragma unroll
                for (int j = 0; j < B; j++)
                    mv[j] = s0 + j < S ? ld_cg_f32(p0 + (s0 + j) * split_stride + PL_HD) : PL_NEG_INF;
#pragma unroll
                for (int j = 0; j < B; j++) mx = fmaxf(mx, mv[j]);
            }
            float ls = 0.0f, a = 0.0f;
            for (int s0 = 0; s0 < S; s0 += B) {
                float mv[B], lv[B], av[B];
#pragma unroll
                for (int j = 0; j < B; j++) {
                    const bool in = s0 + j < S;
                    const float* p = p0 + (s0 + j) * split_stride;
                    mv[j] = in ? ld_cg_f32(p + PL_HD) : PL_NEG_INF;
                    lv[j] = in ? ld_cg_f32(p + PL_HD + 1) : 0.0f;
                    av[j] = in ? ld_cg_f32(p + dd) : 0.0f;
                }
#pragma unroll
                for (int j = 0; j < B; j++) {
                    const float f = mv[j] == PL_NEG_INF ? 0.0f : exp2f(mv[j] - mx);
                    ls += lv[j] * f;
                    a += av[j] * f;
                }
            }
            att_out[(size_t)(h * gq + hh) * PL_HD + dd] = f32_to_f16(a / ls);
        }
        pl_sync_consumers();
        pl_signal(done);
    }
    pl_sync_consumers();
}

#endif  // __CUDA_ARCH__ >= 900

// The pack's scale rows (groups, nbs_pad, 8) reordered tile-major for the
// persistent kernel's stream: (nbs_pad / 4 tiles, groups, 4 column blocks,
// 8) u32, so that a run of units of one tile finds its groups' rows in one
// contiguous piece (one bulk copy instead of one scattered copy a unit:
// change 86 measured those at ~0.5 ms a step on the 8B shape).
extern "C" __global__ void w4_layers_scale_stream(const u32* __restrict__ s, u32* __restrict__ out, int tiles,
                                                  int groups, int nbs_pad) {
    const long long total = (long long)tiles * groups * 32;
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < total;
         i += (long long)gridDim.x * blockDim.x) {
        const int j = (int)(i & 31);
        const long long tg = i >> 5;
        const int g = (int)(tg % groups), pt = (int)(tg / groups);
        out[i] = s[((size_t)g * nbs_pad + 4 * pt) * 8 + j];
    }
}

// Grid: G blocks (one per SM, G <= SMs), PL_CW + 1 warps. Dynamic shared
// memory (keep in sync with `smem_bytes` in src/int4/layers.rs): n_slots
// ring slots; 2 * n_slots mbarriers; the GEMV input / attention scratch
// (`act_bytes`); PL_CW x PL_MAX_SEGS / 4 x 16 f32 column sums; 2 x PL_MAX_SEGS
// flags; 2 * PL_CW floats of reduction scratch.
extern "C" __global__ void __launch_bounds__(32 * (PL_CW + 1), 1)
    w4_layers_m1(const PlLayer* __restrict__ layers, int n_layers, int d, int n_heads, int n_kv, int ffn, float eps,
                 float attn_scale, const double* __restrict__ inv_freq, int neox, float* x,
                 const int* __restrict__ row_seq, const int* __restrict__ row_pos, u16* k_cache, u16* v_cache,
                 int cache_layers, int cache_seqs, int capacity, float* qkv_out, float* gu_out, u16* glu_out,
                 u16* att_out, float* att_part, float* part, float* res, u32* sync, int sync_stride, int max_splits,
                 int n_slots, int act_bytes, u32* err, int diag) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    extern __shared__ __align__(128) unsigned char pl_smem[];
    const int G = gridDim.x, b = blockIdx.x;
    const int pos = row_pos[0], seq = row_seq[0];
    if (pos < 0 || pos >= capacity || seq < 0 || seq >= cache_seqs) {
        // Every block sees the same values: all return, none waits.
        if (threadIdx.x == 0 && b == 0) atomicExch(err, 2u);
        return;
    }
    const u32 ring = smem_addr(pl_smem);
    const u32 full0 = ring + (u32)n_slots * PL_SLOT_BYTES;
    const u32 empty0 = full0 + 8u * n_slots;
    unsigned char* after = pl_smem + (size_t)n_slots * (PL_SLOT_BYTES + 16);
    u16* act = reinterpret_cast<u16*>(after);
    float* seg_acc = reinterpret_cast<float*>(after + act_bytes);
    int* seg_flag = reinterpret_cast<int*>(seg_acc + PL_CW * (PL_MAX_SEGS / 4) * 16);
    float* red = reinterpret_cast<float*>(seg_flag + 2 * PL_MAX_SEGS);
    // cos, sin of this step's position per rotation pair: once a launch.
    float* rope_cs = red + 2 * PL_CW;
    const int half_tiles = ffn >> 6;

    if (threadIdx.x == 0) {
        for (int s = 0; s < n_slots; s++) {
            mbar_init(full0 + 8 * s, 1);
            mbar_init(empty0 + 8 * s, PL_CW);
        }
        asm volatile("fence.mbarrier_init.release.cluster;" ::: "memory");
        asm volatile("fence.proxy.async.shared::cta;" ::: "memory");
    }
    __syncthreads();
    for (int i = threadIdx.x; i < PL_HD / 2; i += blockDim.x) {
        double sd, cd;
        sincos((double)pos * inv_freq[i], &sd, &cd);
        rope_cs[i] = (float)cd;
        rope_cs[PL_HD / 2 + i] = (float)sd;
    }
    __syncthreads();
    if (threadIdx.x >= PL_CT) {
        pl_produce(layers, n_layers, half_tiles, G, b, ring, full0, empty0, n_slots, diag);
        return;
    }

    const int n_keys = pos + 1;
    const int S = min(max_splits, max(1, min(n_keys, (n_keys + 15) / 16)));
    // Tickets per physical column block (n_pad / 16 of each weight).
    const int nl_qkv = layers[0].g[PL_QKV].nbs_pad, nl_o = layers[0].g[PL_O].nbs_pad;
    const int nl_gu = layers[0].g[PL_GU].nbs_pad, nl_down = layers[0].g[PL_DOWN].nbs_pad;
    PlRing r{0, 0};
    for (int l = 0; l < n_layers; l++) {
        const PlLayer& L = layers[l];
        u32* sy = sync + (size_t)l * sync_stride;
        u32* att_tickets = sy + PL_SY_HEAD;
        u32* t_qkv = att_tickets + n_kv;
        u32* t_o = t_qkv + nl_qkv;
        u32* t_gu = t_o + nl_o;
        u32* t_down = t_gu + nl_gu;
        u32* t_pair = t_down + nl_down;
        const float* x_in = l == 0 ? x : res + (size_t)(2 * l - 1) * d;
        float* x_mid = res + (size_t)(2 * l) * d;
        float* x_out = l == n_layers - 1 ? x : res + (size_t)(2 * l + 1) * d;
        u16* kc_row0 = k_cache + (((size_t)seq * cache_layers + l) * n_kv) * capacity * PL_HD;
        u16* vc_row0 = v_cache + (((size_t)seq * cache_layers + l) * n_kv) * capacity * PL_HD;

        // The keys and values this block's first attention task will read,
        // into L2 now (they would be HBM round trips behind the weight
        // stream in the middle of the attention chain).
        if (threadIdx.x == 0 && b < n_kv * S && pos > 0) {
            const int h = b / S, s = b % S;
            const int k0 = (int)((long long)s * n_keys / S), k1 = min(pos, (int)((long long)(s + 1) * n_keys / S));
            if (k1 > k0) {
                const size_t at = ((size_t)h * capacity + k0) * PL_HD;
                const u32 bytes = (u32)(k1 - k0) * PL_HD * 2u;
                asm volatile("cp.async.bulk.prefetch.L2.global [%0], %1;" ::"l"(kc_row0 + at), "r"(bytes) : "memory");
                asm volatile("cp.async.bulk.prefetch.L2.global [%0], %1;" ::"l"(vc_row0 + at), "r"(bytes) : "memory");
            }
        }
        // 1. q|k|v
        if (l > 0) pl_wait(sync + (size_t)(l - 1) * sync_stride + PL_SY_DOWN, (u32)G, err, diag);
        if ((diag & PL_DIAG_NO_EDGES) == 0) pl_stage_norm(act, x_in, L.attn_norm, d, L.g[PL_QKV].k_chunks * 64, eps, red);
        pl_gemv(L.g[PL_QKV], PL_QKV, half_tiles, G, b, r, ring, full0, empty0, n_slots, act, seg_acc, seg_flag, part,
                t_qkv, nullptr, nullptr, PlOut{qkv_out, nullptr}, diag);
        pl_signal(sy + PL_SY_QKV);

        // 2. attention
        for (int task = b; task < n_kv * S && (diag & PL_DIAG_NO_ATT) == 0; task += G) {
            pl_wait(sy + PL_SY_QKV, (u32)G, err, diag);
            const int h = task / S, s = task % S;
            pl_attention(h, s, S, pos, n_heads, n_kv, attn_scale, rope_cs, rope_cs + PL_HD / 2, neox, qkv_out,
                         kc_row0 + (size_t)h * capacity * PL_HD, vc_row0 + (size_t)h * capacity * PL_HD, att_part,
                         max_splits, att_out, att_tickets + h, sy + PL_SY_ATT, reinterpret_cast<float*>(act),
                         seg_flag);
        }

        // 3. o + residual
        pl_wait(sy + PL_SY_ATT, (u32)n_kv, err, diag);
        if ((diag & PL_DIAG_NO_EDGES) == 0) pl_stage_copy(act, att_out, n_heads * PL_HD, L.g[PL_O].k_chunks * 64);
        pl_gemv(L.g[PL_O], PL_O, half_tiles, G, b, r, ring, full0, empty0, n_slots, act, seg_acc, seg_flag, part, t_o,
                nullptr, nullptr, PlOut{x_mid, x_in}, diag);
        pl_signal(sy + PL_SY_O);

        // 4. gate|up + SiLU
        pl_wait(sy + PL_SY_O, (u32)G, err, diag);
        if ((diag & PL_DIAG_NO_EDGES) == 0) pl_stage_norm(act, x_mid, L.ffn_norm, d, L.g[PL_GU].k_chunks * 64, eps, red);
        pl_gemv(L.g[PL_GU], PL_GU, half_tiles, G, b, r, ring, full0, empty0, n_slots, act, seg_acc, seg_flag, part,
                t_gu, t_pair, glu_out, PlOut{gu_out, nullptr}, diag);
        pl_signal(sy + PL_SY_GU);

        // 5. down + residual
        pl_wait(sy + PL_SY_GU, (u32)G, err, diag);
        if ((diag & PL_DIAG_NO_EDGES) == 0) pl_stage_copy(act, glu_out, ffn, L.g[PL_DOWN].k_chunks * 64);
        pl_gemv(L.g[PL_DOWN], PL_DOWN, half_tiles, G, b, r, ring, full0, empty0, n_slots, act, seg_acc, seg_flag,
                part, t_down, nullptr, nullptr, PlOut{x_out, x_mid}, diag);
        pl_signal(sy + PL_SY_DOWN);
    }
#endif
}
