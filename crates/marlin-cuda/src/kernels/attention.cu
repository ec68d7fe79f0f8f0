// Attention of f32 queries against the f16 KV cache (src/ops/attention.rs).
//
// Cache layout [seq][layer][kv_head][pos][head_dim] (f16 bits). Row r of the
// queries (rows, n_heads, head_dim) belongs to sequence row_seq[r] at
// position row_pos[r] and attends keys j with max(0, pos - window + 1) <= j
// <= pos. Query head h reads kv head h / group (GQA). Rows with a sequence
// or position out of range get zeros.
//
// Scores are kept in the log2 domain: the host folds log2(e) into the query
// scale (or into the soft-cap), and every exponential is exp2.
//
// - attn_decode_*: flash-decoding. One block per (split, kv head x head
//   chunk, row): the block's warps split its keys into sub-groups of
//   HD/8 lanes (16 bytes of f16 per lane per key), every key's K and V row is
//   read once for all the query heads of the chunk, each sub-group keeps an
//   online softmax, the block merges them in shared memory and writes either
//   the normalised output (one split) or an unnormalised partial
//   (max, sum, output); the last block of a (row, head chunk) to finish
//   (a ticket per (row, head chunk)) merges the splits' partials. Launched
//   as thread-block clusters of `splits` blocks (sm_90, <= 16 splits), the
//   splits instead merge through distributed shared memory, each block
//   finishing a share of the output columns. Keys and values stream
//   through a per-lane ring in shared memory (cp.async, ATT_FLAG_STAGE_KV)
//   or in registers.
// - attn_prefill_*: tiled online softmax for many query rows. One block per
//   (tile of rows x heads of one kv head): K/V tiles of 32 keys are staged in
//   shared memory once and used by all 32 query vectors of the block; lane t
//   of a warp scores key t of the tile. Rows of several sequences in one
//   tile are handled in one pass per distinct sequence.
//
// Shared helpers (f16 conversions, ld_cg_f32, pdl_wait, ...) come from
// marlin_common.cuh, an in-memory NVRTC header (no search path).

#include "marlin_common.cuh"

#define ATT_NEG_INF (__int_as_float(0xff800000))
// Most key splits of the decode kernel (MAX_SPLITS in src/ops/attention.rs).
#define ATT_MAX_SPLITS 64

// Timing stamps of the decode kernels (ATT_STAMPS, defined ahead of this
// source by src/ops/attention.rs under MARLIN_CUDA_ATTN_STAMPS=1; never in
// a production build): thread 0 of each block writes the global timer and
// its SM's clock at the points ATT_STAMP_* of its post-wait chain, per
// layer (the last launch of a layer wins), for `marlin bench decode` to
// print where the chain's time goes.
#define ATT_STAMP_ENTRY 0   // after pdl_trigger
#define ATT_STAMP_WAITED 1  // pdl_wait returned
#define ATT_STAMP_ROPED 2   // queries (and this step's key) roped, block barrier passed
#define ATT_STAMP_KEYS 3    // thread 0's key loop done
#define ATT_STAMP_MERGED 4  // the block's sub-groups merged, partials (or output) stored
#define ATT_STAMP_TICKET 5  // ticket taken (cluster: first cluster barrier passed)
#define ATT_STAMP_DONE 6    // the merging block's output stored
#define ATT_STAMP_EXIT 7    // cluster: last cluster barrier passed
#define ATT_STAMP_KEY1 8    // thread 0's first key step done
#define ATT_STAMP_POINTS 9
// Words per block: global timer x POINTS, clock x POINTS, then the block's
// index and SM (x | y << 10 | z << 20 | smid << 32, written at entry).
#define ATT_STAMP_WORDS (2 * ATT_STAMP_POINTS + 1)
#define ATT_STAMP_LAYERS 64
#define ATT_STAMP_BLOCKS 1024
#ifdef ATT_STAMPS
__device__ unsigned long long att_stamps[ATT_STAMP_LAYERS][ATT_STAMP_BLOCKS][ATT_STAMP_WORDS];
__device__ __forceinline__ void att_stamp(int layer, int point) {
    if (threadIdx.x != 0 || layer < 0) return;
    const unsigned b = blockIdx.x + gridDim.x * (blockIdx.y + gridDim.y * blockIdx.z);
    if (b >= ATT_STAMP_BLOCKS) return;
    unsigned long long g;
    asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(g));
    const unsigned long long c = clock64();
    att_stamps[layer % ATT_STAMP_LAYERS][b][point] = g;
    att_stamps[layer % ATT_STAMP_LAYERS][b][ATT_STAMP_POINTS + point] = c;
    if (point == ATT_STAMP_ENTRY) {
        unsigned smid;
        asm volatile("mov.u32 %0, %%smid;" : "=r"(smid));
        att_stamps[layer % ATT_STAMP_LAYERS][b][2 * ATT_STAMP_POINTS] =
            blockIdx.x | (blockIdx.y << 10) | ((unsigned long long)blockIdx.z << 20) |
            ((unsigned long long)smid << 32);
    }
}
#define ATT_STAMP(point) att_stamp(layer, point)
#else
#define ATT_STAMP(point)
#endif

// Programmatic dependent launch (src/ops/launch.rs, helpers in
// marlin_common.cuh), in every block of the decode kernels: pdl_trigger()
// first thing (the next kernel's grid may launch once every block of this
// one has; its own wait still waits for this grid's completion), pdl_wait()
// before any early return and before reading anything but constants, the
// host-copied sequence ids / positions and, in the fused decode entries
// with early_kv, the cache's keys and values of earlier positions (written
// by earlier decode steps, which the host copy of the positions separates
// from this one; src/ops/attention.rs, attention_decode_rope). The wait
// waits for the previous kernel to complete.
//
// Outputs go to the next GEMM's input type: f32, or f16 bits (`_h` entries),
// written with st_from_f32; projections are read with ld_as_f32. Partials
// written by other blocks of the same launch are read with ld_cg_f32 (from
// L2, not a possibly stale L1 line).

__device__ __forceinline__ float4 att_ld_cg4(const float* p) {
    float4 r;
    asm volatile("ld.global.cg.v4.f32 {%0, %1, %2, %3}, [%4];"
                 : "=f"(r.x), "=f"(r.y), "=f"(r.z), "=f"(r.w)
                 : "l"(p));
    return r;
}

__device__ __forceinline__ float2 att_ld_cg2(const float* p) {
    float2 r;
    asm volatile("ld.global.cg.v2.f32 {%0, %1}, [%2];" : "=f"(r.x), "=f"(r.y) : "l"(p));
    return r;
}

__device__ __forceinline__ uint4 att_ld16(const u16* p) {
    return *reinterpret_cast<const uint4*>(p);
}

// 16-byte copy global -> shared that does not hold registers while in flight
// (the staged keys of the decode kernel).
__device__ __forceinline__ void att_cp_async16(void* dst, const u16* src) {
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16;" ::"r"(smem_addr(dst)), "l"(src));
}

// The first PK keys of a lane group into its shared-memory ring (slot t:
// key first + t * NSUB, this thread's 16 bytes of key and value at
// [t * 128 + threadIdx.x]): one cp.async group per key, committed even when
// empty so that PK + i groups are committed before key i. Keys at or past
// k1, and this step's key (`fresh`, from shared memory), are not copied.
// `ok_bits`: bit t set where slot t's key lies in the pool (`at.ok`).
template <int PK, int NSUB, typename KeyAt>
__device__ __forceinline__ void att_fill_ring(uint4* st_k, uint4* st_v, const u16* k_cache,
                                              const u16* v_cache, const KeyAt& at, int first,
                                              int k1, int fresh, u32& ok_bits) {
    ok_bits = 0;
#pragma unroll
    for (int t = 0; t < PK; ++t) {
        const int j = first + t * NSUB;
        if (j < k1 && j != fresh) {
            const long long off = at(j);
            if (at.ok(off)) {
                att_cp_async16(&st_k[t * 128 + threadIdx.x], k_cache + off);
                att_cp_async16(&st_v[t * 128 + threadIdx.x], v_cache + off);
                ok_bits |= 1u << t;
            }
        }
        cp_async_commit();
    }
}

// Keys per lane group in the decode kernels' shared-memory ring (4 KiB of
// static shared memory per key): 4 by default (6 until session 23: 4 was
// 0.4-1.1% faster at batch 1-8, 24 and at ctx 2048, 0.5-1% slower at batch
// 12-16; docs/CUDA.md change 77); src/ops/attention.rs defines another depth
// ahead of the source for measurements (MARLIN_CUDA_ATTN_RING, head_dim <=
// 128 only, where 10 still fits 48 KiB).
#ifndef ATT_RING_KEYS
#define ATT_RING_KEYS 4
#endif

// Flags of the decode entries (the last kernel parameter; src/ops/attention.rs).
#define ATT_FLAG_EARLY_KV 1  // fused entries: earlier keys read before the PDL wait
#define ATT_FLAG_STAGE_KV 2  // the first keys of a split staged in shared memory
// Bits 8..: the split length's alignment in keys (0 = 1: each split takes
// ceil(len / splits) keys; src/ops/attention.rs, MARLIN_CUDA_ATTN_SPLIT_ALIGN).
#define ATT_FLAG_ALIGN_SHIFT 8

// Thread-block clusters (sm_90): the splits of one (row, head chunk) form
// one cluster when the host launches them so (cluster x dimension = split
// count), and merge through distributed shared memory instead of global
// partials and a ticket. cluster_size() is 1 for a plain launch and
// below sm_90, where the cluster code is never reached.
// (cluster_size, cluster_sync, cluster_map, ld_cluster2 / 4: marlin_common.cuh.)
// Most blocks of a cluster on sm_90 (non-portable; ATT_CLUSTER_MAX in
// src/ops/attention.rs).
#define ATT_CLUSTER_MAX 16

// The key range [lo, hi) of one query row; empty when the row is invalid.
__device__ __forceinline__ void att_range(int seq, int pos, int n_seqs, int capacity, int window,
                                          int& lo, int& hi) {
    if (seq < 0 || seq >= n_seqs || pos < 0 || pos >= capacity) {
        lo = 0;
        hi = 0;
        return;
    }
    hi = pos + 1;
    lo = window > 0 ? max(0, pos - window + 1) : 0;
}

__device__ __forceinline__ long long att_head_base(int seq, int layer, int n_layers, int kvh,
                                                   int n_kv_heads, int capacity, int hd) {
    return (((long long)seq * n_layers + layer) * n_kv_heads + kvh) * (long long)capacity * hd;
}

// The block tables of a paged pool for the paged decode entries: pool
// layout [layer][block][kv_head][slot][head_dim] (kernels/paged_attention.cu,
// src/ops/paged.rs), position p of table t in block
// tables[t * table_width + p / block_size], slot p % block_size.
struct AttPaged {
    const int* tables;
    int table_width, n_blocks, block_size;
};

// Where this lane's 16 bytes of key j of the block's (sequence, layer, kv
// head) are in K and V: element offset, or -1 where a paged block id lies
// outside the pool (the key is skipped: not copied, not attended; the host
// validates the tables, so this only keeps a bad buffer in bounds).
// Contiguous cache: the head's keys are consecutive rows. The tables are
// written by a host copy before the pass, so they may be read before the
// PDL wait, like row_seq / row_pos.
template <int HD, bool PAGED>
struct AttKeyAt {
    long long base;         // contiguous: key 0 of the head; paged: block 0's
    const int* table;       // paged: the sequence's block table
    long long block_elems;  // paged: elements of one block of one layer
    int block_size, n_blocks;
    int bs_shift;  // paged: log2(block_size) for a power of two, else -1
    __device__ __forceinline__ long long operator()(int j) const {
        if (!PAGED) return base + (long long)j * HD;
        // Shifts for the usual power-of-two blocks (a division is ~20
        // instructions on the key step's address).
        const int bi = bs_shift >= 0 ? j >> bs_shift : j / block_size;
        const int slot = j - bi * block_size;
        const int blk = __ldg(table + bi);
        if (blk < 0 || blk >= n_blocks) return -1;
        return base + (long long)blk * block_elems + (long long)slot * HD;
    }
    // Whether an offset from operator() names a key (always, contiguous).
    __device__ __forceinline__ bool ok(long long off) const { return !PAGED || off >= 0; }
};

// ------------------------------------------------------------------ decode
// Inputs of the fused entries (attn_decode_rope_*), which also do the work
// of mops_qkv_rope_kv (kernels/ops.cu) for one row: the layer's q / k / v
// projection rows (read in place with row strides, the attention output's
// type), the optional QK-norm, RoPE at the row's position, and the write
// of this step's key and value into the cache. Each block ropes the query
// heads of its chunk itself (identical arithmetic to mops_qkv_rope_kv);
// the block whose key range holds the row's position ropes this step's
// key, uses it from shared memory and (head chunk 0) writes it and the
// value to the cache. Rows must belong to distinct sequences: a row never
// reads a key that another row of the launch writes.
template <typename InT>
struct AttRopeIn {
    const InT* q_in;
    const InT* k_in;
    const InT* v_in;
    int q_stride, kv_stride;
    const float* q_norm;  // null: no QK-norm
    const float* k_norm;
    float eps, w_offset;
    const double* inv_freq;  // n_rot / 2 values
    int n_rot, neox;
};

// One key of a lane group: scores of the GT query heads against the key's
// 16 bytes of this lane (summed over the group's lanes), online softmax,
// the value's 16 bytes into the outputs. Called by all 32 lanes of a warp
// together (full-mask shuffles: no convergence checks per key); a lane
// group past its last key passes valid = false (its shuffles, whose offsets
// stay inside the group, sum whatever it loaded; its state is unchanged).
template <int GT, int LPK>
__device__ __forceinline__ void att_key_step(const uint4 kc, const uint4 vc, const float (&qr)[GT][8],
                                             float (&m)[GT], float (&l)[GT], float (&o)[GT][8],
                                             bool valid, float softcap) {
    float kf[8], vf[8];
    f16x2_to_f32(kc.x, kf[0], kf[1]);
    f16x2_to_f32(kc.y, kf[2], kf[3]);
    f16x2_to_f32(kc.z, kf[4], kf[5]);
    f16x2_to_f32(kc.w, kf[6], kf[7]);
    f16x2_to_f32(vc.x, vf[0], vf[1]);
    f16x2_to_f32(vc.y, vf[2], vf[3]);
    f16x2_to_f32(vc.z, vf[4], vf[5]);
    f16x2_to_f32(vc.w, vf[6], vf[7]);
    float sc[GT];
#pragma unroll
    for (int h = 0; h < GT; ++h) {
        float s = 0.0f;
#pragma unroll
        for (int e = 0; e < 8; ++e) s = fmaf(qr[h][e], kf[e], s);
#pragma unroll
        for (int off = LPK / 2; off > 0; off >>= 1) s += __shfl_xor_sync(0xffffffffu, s, off);
        sc[h] = s;
    }
    if (!valid) return;
#pragma unroll
    for (int h = 0; h < GT; ++h) {
        const float s = softcap_log2(sc[h], softcap);
        const float mn = fmaxf(m[h], s);
        const float c = exp2f(m[h] - mn);
        const float pr = exp2f(s - mn);
        l[h] = l[h] * c + pr;
#pragma unroll
        for (int e = 0; e < 8; ++e) o[h][e] = fmaf(pr, vf[e], o[h][e] * c);
        m[h] = mn;
    }
}

// The merge of a thread's four output columns over the first n (<= N)
// splits, in split order: each split's (max, sum) pair and unnormalised
// columns in, the normalised columns out (0 where no split has keys).
// Splits without keys (or fully underflowed) are skipped.
template <int N>
__device__ __forceinline__ float4 att_merge_columns(const float2 (&ml)[N], const float4 (&ov)[N],
                                                    int n) {
    float mx = ATT_NEG_INF;
#pragma unroll
    for (int sp = 0; sp < N; ++sp)
        if (sp < n) mx = fmaxf(mx, ml[sp].x);
    float lsum = 0.0f;
    float4 a = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
    if (mx != ATT_NEG_INF) {
#pragma unroll
        for (int sp = 0; sp < N; ++sp) {
            if (sp >= n) break;
            const float w = exp2f(ml[sp].x - mx);
            if (w == 0.0f) continue;
            lsum = fmaf(w, ml[sp].y, lsum);
            a.x = fmaf(w, ov[sp].x, a.x);
            a.y = fmaf(w, ov[sp].y, a.y);
            a.z = fmaf(w, ov[sp].z, a.z);
            a.w = fmaf(w, ov[sp].w, a.w);
        }
    }
    if (!(lsum > 0.0f)) return make_float4(0.0f, 0.0f, 0.0f, 0.0f);
    return make_float4(a.x / lsum, a.y / lsum, a.z / lsum, a.w / lsum);
}

// Four normalised output columns from column d of query head qh.
template <int HD, typename OutT>
__device__ __forceinline__ void att_store4(OutT* out, long long qh, int d, float4 v) {
    st_from_f32(out, qh * HD + d, v.x);
    st_from_f32(out, qh * HD + d + 1, v.y);
    st_from_f32(out, qh * HD + d + 2, v.z);
    st_from_f32(out, qh * HD + d + 3, v.w);
}

// PAGED: k_cache / v_cache are a paged pool read through `pg`'s tables;
// n_seqs is then the number of tables and capacity the positions a table
// covers (table_width * block_size).
template <int HD, int GT, typename OutT, bool ROPE, bool PAGED>
__device__ __forceinline__ void attn_decode_impl(
    const float* __restrict__ q, u16* __restrict__ k_cache, u16* __restrict__ v_cache,
    const int* __restrict__ row_seq, const int* __restrict__ row_pos, OutT* __restrict__ out,
    float* __restrict__ partials, u32* __restrict__ tickets, int n_heads, int n_kv_heads,
    int group, int n_layers, int layer, int n_seqs, int capacity, float q_scale, float softcap,
    int window, int splits, int flags, const AttRopeIn<OutT>& ri, const AttPaged& pg) {
    constexpr int LPK = HD / 8;        // lanes per key (16 bytes each)
    constexpr int KPW = 32 / LPK;      // keys per warp step
    constexpr int NSUB = 4 * KPW;      // key sub-groups per block (4 warps)
    // Staged keys (ATT_FLAG_STAGE_KV): a ring of PK keys per sub-group in
    // shared memory, K and V, 16 bytes per lane each, copied by cp.async
    // (no registers held while in flight, one commit group per key) and
    // read back only by the lane that copied them: the sub-group's i-th key
    // k0 + sub + i * NSUB in slot i % PK, refilled with key i + PK once
    // used. Without staging, a ring of NP keys in registers.
    constexpr int PK = ATT_RING_KEYS;
    constexpr int STAGE_BYTES = PK * 2 * 128 * 16;
    constexpr int O_BYTES = NSUB * GT * HD * 4;
    // sm_o (the block merge's scratch) shares its bytes with the staged
    // keys, which are dead by then; it also holds the split merge's
    // [2][GT][ATT_MAX_SPLITS] (NSUB * HD = 1024) or, in a cluster, this
    // split's [GT][HD] outputs and [GT][2] (max, sum) pairs.
    static_assert(NSUB * HD >= 2 * ATT_MAX_SPLITS, "merge scratch");
    static_assert(NSUB * HD >= HD + 2, "cluster merge scratch");
    static_assert(NSUB * LPK == 128, "one 16-byte slot per thread");
    __shared__ __align__(16) unsigned char sm_raw[O_BYTES > STAGE_BYTES ? O_BYTES : STAGE_BYTES];
    float(*sm_o)[GT][HD] = reinterpret_cast<float(*)[GT][HD]>(sm_raw);
    uint4* st_k = reinterpret_cast<uint4*>(sm_raw);  // [PK][128 threads]
    uint4* st_v = st_k + PK * 128;
    __shared__ float sm_m[NSUB][GT];
    __shared__ float sm_l[NSUB][GT];
    pdl_trigger();
    ATT_STAMP(ATT_STAMP_ENTRY);

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
    // The warp's key loops run as many steps as its first lane group's (the
    // one with the most keys), so that every key step has all 32 lanes.
    const int sub_lag = sub - warp * KPW;  // keys behind the warp's first group

    int lo, hi;
    const int seq = row_seq[row];
    att_range(seq, row_pos[row], n_seqs, capacity, window, lo, hi);
    const int len = hi - lo;
    const int align = max(1, flags >> ATT_FLAG_ALIGN_SHIFT);
    const int per_split = ((len + splits - 1) / splits + align - 1) / align * align;
    const int k0 = lo + split * per_split;
    const int k1 = min(hi, k0 + per_split);
    // Fused: this step's key (position pos = hi - 1 of a valid row) when it
    // falls in this block's range, else -1 (never a key index).
    const int fresh = ROPE && hi > lo && hi - 1 >= k0 && hi - 1 < k1 ? hi - 1 : -1;
    constexpr int NROT = (HD / 2 + 31) / 32;  // rotation pairs per lane
    float rc[NROT], rs[NROT];
    if (ROPE) {
        // The rotation of each of this lane's pairs, before the wait (sincos
        // in f64 like the CPU Rope; the position is the host's copy).
        const int pos = row_pos[row];
#pragma unroll
        for (int j = 0; j < NROT; ++j) {
            const int i = lane + 32 * j;
            rc[j] = 1.0f;
            rs[j] = 0.0f;
            if (i < (ri.n_rot >> 1)) {
                double sd, cd;
                sincos((double)pos * ri.inv_freq[i], &sd, &cd);
                rc[j] = (float)cd;
                rs[j] = (float)sd;
            }
        }
    }
    // Keys in flight per sub-group: PK in the shared-memory ring when
    // staging, else NP loads of K and V per lane in registers (a block of a
    // short split reads all of its keys at once).
    constexpr int NP = GT >= 4 ? 2 : 4;
    const bool early_kv = (flags & ATT_FLAG_EARLY_KV) != 0;
    const bool stage = (flags & ATT_FLAG_STAGE_KV) != 0;
    uint4 kb[NP], vb[NP];
    // Keys of this (sequence, layer, kv head); kp / vp: this lane's 16 bytes.
    AttKeyAt<HD, PAGED> at;
    if (PAGED) {
        at.block_elems = (long long)n_kv_heads * pg.block_size * HD;
        at.base = (long long)layer * pg.n_blocks * at.block_elems + (long long)kvh * pg.block_size * HD;
        at.table = pg.tables + (long long)(k0 < k1 ? seq : 0) * pg.table_width;
        at.block_size = pg.block_size;
        at.n_blocks = pg.n_blocks;
        at.bs_shift = (pg.block_size & (pg.block_size - 1)) == 0 ? __ffs(pg.block_size) - 1 : -1;
    } else {
        at.base = k0 < k1 ? att_head_base(seq, layer, n_layers, kvh, n_kv_heads, capacity, HD) : 0;
    }
    const u16* kp = k_cache + sl * 8;
    const u16* vp = v_cache + sl * 8;
    // Whether a key is attended (a paged key in a block outside the pool is
    // not), known when it is loaded: bit t of ring_ok for the shared-memory
    // ring's slot t, reg_ok[p] for the register ring, fresh_ok for this
    // step's key (always, on the contiguous cache).
    u32 ring_ok = 0;
    bool reg_ok[NP];
    const bool fresh_ok = !PAGED || fresh < 0 || at.ok(at(fresh));
    // early_kv (fused entries, rows of distinct sequences): the keys
    // before this step's were written by launches that completed before
    // this one could start (see attention_decode_rope), so their DRAM
    // round trip overlaps the previous kernel.
    if (early_kv && stage)
        att_fill_ring<PK, NSUB>(st_k, st_v, kp, vp, at, k0 + sub, k1, fresh, ring_ok);
#pragma unroll
    for (int p = 0; p < NP; ++p) {
        kb[p] = make_uint4(0, 0, 0, 0);
        vb[p] = kb[p];
        reg_ok[p] = true;
        const int j = k0 + sub + p * NSUB;
        if (early_kv && !stage && j < k1 && j != fresh) {
            const long long off = at(j);
            reg_ok[p] = at.ok(off);
            if (reg_ok[p]) {
                kb[p] = att_ld16(kp + off);
                vb[p] = att_ld16(vp + off);
            }
        }
    }
    // Sequence and position come from the host's copy before the step; the
    // queries and this step's keys come from the previous kernel.
    pdl_wait();
    ATT_STAMP(ATT_STAMP_WAITED);

    // Fused: the chunk's roped queries, this step's roped key (f32, then
    // f16 bits with the value's).
    __shared__ __align__(16) float sm_q[ROPE ? GT : 1][HD];
    __shared__ __align__(16) float sm_kx[ROPE ? HD : 1];
    __shared__ __align__(16) u16 sm_kv[2][ROPE ? HD : 8];
    if (ROPE) {
        // Items: the chunk's gh query heads, then this step's key (and
        // value) where the block holds its position; item it goes to warp
        // it % 4. Every item of a warp is loaded before any is processed,
        // so that a warp with two items (the key's block: GT + 1 items on
        // 4 warps) waits for one round trip to L2, not two in a row.
        const int items = gh + (fresh >= 0 ? 1 : 0);
        constexpr int NJ = (HD + 31) / 32;
        constexpr int IPW = (GT + 1 + 3) / 4;  // most items of one warp
        float xr[IPW][NJ];
        float vv[NJ];
#pragma unroll
        for (int j = 0; j < NJ; ++j) vv[j] = 0.0f;
#pragma unroll
        for (int u = 0; u < IPW; ++u) {
            const int it = warp + 4 * u;
#pragma unroll
            for (int j = 0; j < NJ; ++j) xr[u][j] = 0.0f;
            if (it >= items) continue;
            const bool is_q = it < gh;
            const OutT* src = is_q ? ri.q_in + (long long)row * ri.q_stride + (long long)(h0 + it) * HD
                                   : ri.k_in + (long long)row * ri.kv_stride + (long long)kvh * HD;
#pragma unroll
            for (int j = 0; j < NJ; ++j) {
                const int i = lane + 32 * j;
                if (i < HD) xr[u][j] = ld_as_f32(src, i);
            }
            if (!is_q) {
                const OutT* vs = ri.v_in + (long long)row * ri.kv_stride + (long long)kvh * HD;
#pragma unroll
                for (int j = 0; j < NJ; ++j) {
                    const int i = lane + 32 * j;
                    vv[j] = i < HD ? ld_as_f32(vs, i) : 0.0f;
                }
            }
        }
#pragma unroll
        for (int u = 0; u < IPW; ++u) {
            const int it = warp + 4 * u;
            if (it >= items) break;
            const bool is_q = it < gh;
            float* x = is_q ? sm_q[is_q ? it : 0] : sm_kx;
#pragma unroll
            for (int j = 0; j < NJ; ++j) {
                const int i = lane + 32 * j;
                if (i < HD) x[i] = xr[u][j];
            }
            __syncwarp();
            const float* nw = is_q ? ri.q_norm : ri.k_norm;
            if (nw != 0) {
                float ss = 0.0f;
                for (int i = lane; i < HD; i += 32) ss += x[i] * x[i];
#pragma unroll
                for (int o = 16; o > 0; o >>= 1) ss += __shfl_xor_sync(0xffffffffu, ss, o);
                const float inv = rsqrtf(ss / (float)HD + ri.eps);
                for (int i = lane; i < HD; i += 32) x[i] = x[i] * inv * (nw[i] + ri.w_offset);
            }
            __syncwarp();
            const int half = ri.n_rot >> 1;
#pragma unroll
            for (int j = 0; j < NROT; ++j) {
                const int i = lane + 32 * j;
                if (i >= half) break;
                const float sf = rs[j], cf = rc[j];
                const int ia = ri.neox ? i : 2 * i;
                const int ib = ri.neox ? i + half : 2 * i + 1;
                const float a = x[ia], b = x[ib];
                x[ia] = a * cf - b * sf;
                x[ib] = a * sf + b * cf;
            }
            __syncwarp();
            if (!is_q) {
                // The cache's f16 rounding, as the unfused kernels see it.
                const long long dst = at(fresh);
#pragma unroll
                for (int j = 0; j < (HD + 31) / 32; ++j) {
                    const int i = lane + 32 * j;
                    if (i < HD) {
                        const u16 kh = f32_to_f16(x[i]), vh = f32_to_f16(vv[j]);
                        sm_kv[0][i] = kh;
                        sm_kv[1][i] = vh;
                        if (chunk == 0 && at.ok(dst)) {
                            k_cache[dst + i] = kh;
                            v_cache[dst + i] = vh;
                        }
                    }
                }
            }
        }
        __syncthreads();
    }
    ATT_STAMP(ATT_STAMP_ROPED);

    float qr[GT][8];
#pragma unroll
    for (int h = 0; h < GT; ++h) {
        const float* qp = ROPE ? &sm_q[ROPE ? h : 0][sl * 8]
                               : q + ((long long)row * n_heads + h0 + h) * HD + sl * 8;
#pragma unroll
        for (int e = 0; e < 8; ++e) qr[h][e] = h < gh ? qp[e] * q_scale : 0.0f;
    }
    float m[GT], l[GT], o[GT][8];
#pragma unroll
    for (int h = 0; h < GT; ++h) {
        m[h] = ATT_NEG_INF;
        l[h] = 0.0f;
#pragma unroll
        for (int e = 0; e < 8; ++e) o[h][e] = 0.0f;
    }

    if (k0 < k1) {
        // Key jj's 16 bytes of this lane (this step's from shared memory).
        const uint4* skv = reinterpret_cast<const uint4*>(ROPE ? &sm_kv[0][sl * 8] : 0);
        const uint4* svv = reinterpret_cast<const uint4*>(ROPE ? &sm_kv[1][sl * 8] : 0);
        if (stage && !early_kv)
            att_fill_ring<PK, NSUB>(st_k, st_v, kp, vp, at, k0 + sub, k1, fresh, ring_ok);
#pragma unroll
        for (int p = 0; p < NP; ++p) {
            const int j = k0 + sub + p * NSUB;
            if (stage) break;
            if (j < k1) {
                if (j == fresh) {
                    kb[p] = *skv;
                    vb[p] = *svv;
                    reg_ok[p] = fresh_ok;
                } else if (!early_kv) {
                    const long long off = at(j);
                    reg_ok[p] = at.ok(off);
                    if (reg_ok[p]) {
                        kb[p] = att_ld16(kp + off);
                        vb[p] = att_ld16(vp + off);
                    }
                }
            }
        }
        if (stage) {
            // Before key i, PK + i groups are committed: all but the
            // newest PK - 1 landed means key i's did.
            // One copy of the key step in the code (NVRTC time): the slot
            // index is a run-time value, the wait count a constant.
            for (int w0 = k0 + sub - sub_lag; w0 < k1; w0 += PK * NSUB) {
#pragma unroll 1
                for (int t = 0; t < PK; ++t) {
                    const int jw = w0 + t * NSUB;  // the warp's first group's key
                    if (jw >= k1) break;
                    const int j = jw + sub_lag;
                    // Past k1 the slot was never filled: read, not used.
                    cp_async_wait<PK - 1>();
                    const uint4 kc = j == fresh ? *skv : st_k[t * 128 + threadIdx.x];
                    const uint4 vc = j == fresh ? *svv : st_v[t * 128 + threadIdx.x];
                    const bool kok = !PAGED || (j == fresh ? fresh_ok : ((ring_ok >> t) & 1u) != 0);
                    att_key_step<GT, LPK>(kc, vc, qr, m, l, o, j < k1 && kok, softcap);
                    if (j == k0 + sub) ATT_STAMP(ATT_STAMP_KEY1);
                    // Refill the slot after its key was used (the use orders
                    // the shared-memory read before the copy's write).
                    const int jn = j + PK * NSUB;
                    if (jn < k1 && jn != fresh) {
                        const long long off = at(jn);
                        const bool nok = at.ok(off);
                        if (PAGED) ring_ok = nok ? ring_ok | (1u << t) : ring_ok & ~(1u << t);
                        if (nok) {
                            att_cp_async16(&st_k[t * 128 + threadIdx.x], kp + off);
                            att_cp_async16(&st_v[t * 128 + threadIdx.x], vp + off);
                        }
                    }
                    cp_async_commit();
                }
            }
        }
        for (int w0 = k0 + sub - sub_lag; w0 < k1 && !stage; w0 += NP * NSUB) {
#pragma unroll
            for (int p = 0; p < NP; ++p) {
                const int jw = w0 + p * NSUB;  // the warp's first group's key
                if (jw >= k1) break;
                const int j = jw + sub_lag;
                const uint4 kc = kb[p], vc = vb[p];
                const bool kok = reg_ok[p];
                const int jn = j + NP * NSUB;
                if (jn < k1) {  // refill this slot with the sub-group's key NP ahead
                    if (jn == fresh) {
                        kb[p] = *skv;
                        vb[p] = *svv;
                        reg_ok[p] = fresh_ok;
                    } else {
                        const long long off = at(jn);
                        reg_ok[p] = at.ok(off);
                        if (reg_ok[p]) {
                            kb[p] = att_ld16(kp + off);
                            vb[p] = att_ld16(vp + off);
                        }
                    }
                }
                att_key_step<GT, LPK>(kc, vc, qr, m, l, o, j < k1 && kok, softcap);
            }
        }
    }

    ATT_STAMP(ATT_STAMP_KEYS);
    // The staged keys share sm_o's bytes: every sub-group is done with them.
    if (stage) __syncthreads();
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
    // Cluster merge (sm_90, the host launched the splits as one cluster):
    // this block's (max, sum, outputs) stay in registers until every
    // thread is done with sm_o, then go to its shared memory for the
    // cluster's blocks to read.
    const bool in_cluster = splits > 1 && cluster_size() == (u32)splits;
    constexpr int CI = (GT * HD + 127) / 128;  // merge items per thread (128 threads)
    float c_o[CI], c_m[CI], c_l[CI];
#pragma unroll
    for (int i = 0; i < CI; ++i) c_o[i] = c_m[i] = c_l[i] = 0.0f;
#pragma unroll
    for (int i = 0; i < CI; ++i) {
        const int idx = threadIdx.x + i * 128;
        if (idx >= gh * HD) break;
        const int h = idx / HD, d = idx % HD;
        float mx = ATT_NEG_INF;
        for (int s = 0; s < NSUB; ++s) mx = fmaxf(mx, sm_m[s][h]);
        float lsum = 0.0f, osum = 0.0f;
        if (mx != ATT_NEG_INF) {
            for (int s = 0; s < NSUB; ++s) {
                const float w = exp2f(sm_m[s][h] - mx);
                lsum = fmaf(w, sm_l[s][h], lsum);
                osum = fmaf(w, sm_o[s][h][d], osum);
            }
        }
        const long long qh = (long long)row * n_heads + h0 + h;
        if (splits == 1) {
            st_from_f32(out, qh * HD + d, lsum > 0.0f ? osum / lsum : 0.0f);
        } else if (in_cluster) {
            c_o[i] = osum;
            c_m[i] = mx;
            c_l[i] = lsum;
        } else {
            // Partials: outputs (rows, n_heads, splits, HD) first (16-byte
            // aligned rows for the merge's vector loads), then the
            // (max, sum) pairs (rows, n_heads, splits, 2).
            partials[(qh * splits + split) * HD + d] = osum;
            if (d == 0) {
                float* pml = partials + (long long)gridDim.z * n_heads * splits * HD +
                             (qh * splits + split) * 2;
                pml[0] = mx;
                pml[1] = lsum;
            }
        }
    }
    ATT_STAMP(ATT_STAMP_MERGED);
    if (splits == 1) return;
    if (in_cluster) {
        // sm_o's first GT * HD floats: this split's outputs [GT][HD], then
        // its (max, sum) pairs [GT][2].
        float* c_out = &sm_o[0][0][0];
        float* c_ml = c_out + GT * HD;
        __syncthreads();  // every thread is done reading sm_o
#pragma unroll
        for (int i = 0; i < CI; ++i) {
            const int idx = threadIdx.x + i * 128;
            if (idx >= gh * HD) break;
            c_out[idx] = c_o[i];
            if (idx % HD == 0) {
                c_ml[2 * (idx / HD)] = c_m[i];
                c_ml[2 * (idx / HD) + 1] = c_l[i];
            }
        }
        cluster_sync();
        ATT_STAMP(ATT_STAMP_TICKET);
        // Four output dims per thread, columns dealt out over the cluster's
        // blocks; every split's (max, sum) pair and outputs of the column
        // are read from the splits' shared memory in one round trip.
        constexpr int C4 = HD / 4;
        const u32 base_o = smem_addr(c_out), base_ml = smem_addr(c_ml);
        for (int u = threadIdx.x * splits + split; u < gh * C4; u += blockDim.x * splits) {
            const int h = u / C4, d = (u % C4) * 4;
            float2 ml[ATT_CLUSTER_MAX];
            float4 ov[ATT_CLUSTER_MAX];
#pragma unroll
            for (int sp = 0; sp < ATT_CLUSTER_MAX; ++sp) {
                if (sp < splits) {
                    ml[sp] = ld_cluster2(cluster_map(base_ml + 8u * h, sp));
                    ov[sp] = ld_cluster4(cluster_map(base_o + 4u * (h * HD + d), sp));
                }
            }
            const long long qh = (long long)row * n_heads + h0 + h;
            att_store4<HD>(out, qh, d, att_merge_columns(ml, ov, splits));
        }
        ATT_STAMP(ATT_STAMP_DONE);
        // No block leaves while another may still read its shared memory.
        cluster_sync();
        ATT_STAMP(ATT_STAMP_EXIT);
        return;
    }
    // The last block of this (row, kv head chunk) to finish merges the
    // splits' partials of its heads (was a second launch, attn_combine: a
    // dependent launch costs more than this block's extra loads). One
    // barrier, then thread 0's acq_rel ticket (atom_add_acq_rel_gpu): it
    // releases the block's partial stores and, in the last block, acquires
    // the other splits' for the merge's L2 reads (was a fence.sc per thread
    // on each side).
    __shared__ int s_last;
    __syncthreads();
    u32* ticket = tickets + (long long)row * gridDim.y + blockIdx.y;
    if (threadIdx.x == 0) s_last = atom_add_acq_rel_gpu(ticket) == (u32)(splits - 1);
    __syncthreads();
    ATT_STAMP(ATT_STAMP_TICKET);
    if (!s_last) return;
    constexpr int C4 = HD / 4;
    constexpr int MP = 16;
    const long long ml_base = (long long)gridDim.z * n_heads * splits * HD;
    if (splits <= MP) {
        // Four output dims of one head per thread: every split's (max, sum)
        // pair of the head and partial outputs of the columns in flight
        // together (one L2 round trip), the merge in registers in split
        // order (no shared memory, no barrier).
        for (int col = threadIdx.x; col < gh * C4; col += blockDim.x) {
            const int h = col / C4, d = (col % C4) * 4;
            const long long qh = (long long)row * n_heads + h0 + h;
            const float* po = partials + qh * splits * HD + d;
            const float* pml = partials + ml_base + qh * splits * 2;
            float4 pv[MP];
            float2 ml[MP];
#pragma unroll
            for (int sp = 0; sp < MP; ++sp) {
                if (sp < splits) {
                    pv[sp] = att_ld_cg4(po + (long long)sp * HD);
                    ml[sp] = att_ld_cg2(pml + 2 * sp);
                }
            }
            att_store4<HD>(out, qh, d, att_merge_columns(ml, pv, splits));
        }
        if (threadIdx.x == 0) *ticket = 0u;  // ready for the next launch
        ATT_STAMP(ATT_STAMP_DONE);
        return;
    }
    // More splits: the (max, sum) pairs through shared memory, one warp per
    // head. The partial outputs of the first MP splits of this thread's
    // first column are loaded first, in flight together with the pairs.
    const int col0 = threadIdx.x;
    float4 pv[MP];
    if (col0 < gh * C4) {
        const long long qh0 = (long long)row * n_heads + h0 + col0 / C4;
        const float* po0 = partials + qh0 * splits * HD + (col0 % C4) * 4;
#pragma unroll
        for (int sp = 0; sp < MP; ++sp)
            if (sp < splits) pv[sp] = att_ld_cg4(po0 + (long long)sp * HD);
    }
    // sm_o (NSUB * HD = 1024 floats per head) is free again: [GT][splits]
    // split maxima (then weights) and [GT][splits] split sums.
    float* s_w = &sm_o[0][0][0];
    float* s_l = s_w + GT * ATT_MAX_SPLITS;
    for (int i = threadIdx.x; i < gh * splits; i += blockDim.x) {
        const int h = i / splits, sp = i % splits;
        const float* pml =
            partials + ml_base + (((long long)row * n_heads + h0 + h) * splits + sp) * 2;
        s_w[h * splits + sp] = ld_cg_f32(pml);
        s_l[h * splits + sp] = ld_cg_f32(pml + 1);
    }
    __syncthreads();
    // One warp per head: the splits' maximum, weights and weighted sum.
    for (int h = warp; h < gh; h += 4) {
        float mx = ATT_NEG_INF;
        for (int sp = lane; sp < splits; sp += 32) mx = fmaxf(mx, s_w[h * splits + sp]);
#pragma unroll
        for (int off = 16; off > 0; off >>= 1) mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, off));
        float lsum = 0.0f;
        for (int sp = lane; sp < splits; sp += 32) {
            const float w = mx != ATT_NEG_INF ? exp2f(s_w[h * splits + sp] - mx) : 0.0f;
            s_w[h * splits + sp] = w;
            lsum = fmaf(w, s_l[h * splits + sp], lsum);
        }
#pragma unroll
        for (int off = 16; off > 0; off >>= 1) lsum += __shfl_xor_sync(0xffffffffu, lsum, off);
        if (lane == 0) sm_l[0][h] = lsum;
    }
    __syncthreads();
    for (int col = threadIdx.x; col < gh * C4; col += blockDim.x) {
        const int h = col / C4, d = (col % C4) * 4;
        const long long qh = (long long)row * n_heads + h0 + h;
        const float* po = partials + qh * splits * HD + d;
        float a0 = 0.0f, a1 = 0.0f, a2 = 0.0f, a3 = 0.0f;
        int sp0 = 0;
        if (col == col0) {
#pragma unroll
            for (int sp = 0; sp < MP; ++sp) {
                const float w = sp < splits ? s_w[h * splits + sp] : 0.0f;
                if (w == 0.0f) continue;  // a split without keys (or fully underflowed)
                a0 = fmaf(w, pv[sp].x, a0);
                a1 = fmaf(w, pv[sp].y, a1);
                a2 = fmaf(w, pv[sp].z, a2);
                a3 = fmaf(w, pv[sp].w, a3);
            }
            sp0 = MP;
        }
        // Other columns, and splits past the first MP: many loads in flight.
#pragma unroll 16
        for (int sp = sp0; sp < splits; ++sp) {
            const float w = s_w[h * splits + sp];
            if (w == 0.0f) continue;  // a split without keys (or fully underflowed)
            const float4 v = att_ld_cg4(po + (long long)sp * HD);
            a0 = fmaf(w, v.x, a0);
            a1 = fmaf(w, v.y, a1);
            a2 = fmaf(w, v.z, a2);
            a3 = fmaf(w, v.w, a3);
        }
        const float lsum = sm_l[0][h];
        att_store4<HD>(out, qh, d,
                       lsum > 0.0f ? make_float4(a0 / lsum, a1 / lsum, a2 / lsum, a3 / lsum)
                                   : make_float4(0.0f, 0.0f, 0.0f, 0.0f));
    }
    if (threadIdx.x == 0) *ticket = 0u;  // ready for the next launch
    ATT_STAMP(ATT_STAMP_DONE);
}

// Blocks per SM the decode entries are compiled for (the register cap):
// 4 at <= 4 heads per block, as their split counts assume; 2 at 8.
#define ATT_MIN_BLOCKS(GT) ((GT) >= 8 ? 2 : 4)
#define ATTN_DECODE_ENTRY_T(NAME, HD, GT, OutT)                                                \
    extern "C" __global__ void __launch_bounds__(128, ATT_MIN_BLOCKS(GT))                       \
        NAME(const float* q, u16* k_cache, u16* v_cache, const int* row_seq,                   \
             const int* row_pos, OutT* out, float* partials, u32* tickets, int n_heads,        \
             int n_kv_heads, int group, int n_layers, int layer, int n_seqs, int capacity,     \
             float q_scale, float softcap, int window, int splits, int flags) {                \
        /* the PDL wait inside, after the row's sequence and position; the */                  \
        /* cache may come from the previous kernel: never read it earlier */                   \
        const AttRopeIn<OutT> ri = {};                                                         \
        const AttPaged pg = {};                                                                \
        attn_decode_impl<HD, GT, OutT, false, false>(                                          \
            q, k_cache, v_cache, row_seq, row_pos, out, partials, tickets, n_heads, n_kv_heads, \
            group, n_layers, layer, n_seqs, capacity, q_scale, softcap, window, splits,        \
            flags & ~ATT_FLAG_EARLY_KV, ri, pg);                                               \
    }
// The fused entries: q / k / v projection rows instead of roped f32 queries.
#define ATTN_DECODE_ROPE_ENTRY_T(NAME, HD, GT, T)                                              \
    extern "C" __global__ void __launch_bounds__(128, ATT_MIN_BLOCKS(GT))                       \
        NAME(const T* q_in, const T* k_in, const T* v_in, int q_stride, int kv_stride,         \
             const float* q_norm, const float* k_norm, float eps, float w_offset,              \
             const double* inv_freq, int n_rot, int neox, u16* k_cache, u16* v_cache,          \
             const int* row_seq, const int* row_pos, T* out, float* partials, u32* tickets,    \
             int n_heads, int n_kv_heads, int group, int n_layers, int layer, int n_seqs,      \
             int capacity, float q_scale, float softcap, int window, int splits,               \
             int flags) {                                                                      \
        const AttRopeIn<T> ri = {q_in,   k_in,     v_in,     q_stride, kv_stride, q_norm,      \
                                 k_norm, eps,      w_offset, inv_freq, n_rot,     neox};       \
        const AttPaged pg = {};                                                                \
        attn_decode_impl<HD, GT, T, true, false>(0, k_cache, v_cache, row_seq, row_pos, out,   \
                                                 partials, tickets, n_heads, n_kv_heads,       \
                                                 group, n_layers, layer, n_seqs, capacity,     \
                                                 q_scale, softcap, window, splits, flags, ri,  \
                                                 pg);                                          \
    }
// Roped f32 queries over a paged pool (ops::paged_attention's decode rows;
// the tables after the pool, n_tables in place of n_seqs).
#define ATTN_PAGED_ENTRY_T(NAME, HD, GT, OutT)                                                 \
    extern "C" __global__ void __launch_bounds__(128, ATT_MIN_BLOCKS(GT))                       \
        NAME(const float* q, u16* k_pool, u16* v_pool, const int* tables, int table_width,     \
             int n_blocks, int block_size, const int* row_seq, const int* row_pos, OutT* out,  \
             float* partials, u32* tickets, int n_heads, int n_kv_heads, int group,            \
             int n_layers, int layer, int n_tables, float q_scale, float softcap, int window,  \
             int splits, int flags) {                                                          \
        const AttRopeIn<OutT> ri = {};                                                         \
        const AttPaged pg = {tables, table_width, n_blocks, block_size};                       \
        attn_decode_impl<HD, GT, OutT, false, true>(                                           \
            q, k_pool, v_pool, row_seq, row_pos, out, partials, tickets, n_heads, n_kv_heads,  \
            group, n_layers, layer, n_tables, table_width * block_size, q_scale, softcap,      \
            window, splits, flags & ~ATT_FLAG_EARLY_KV, ri, pg);                               \
    }
// The fused entries over a paged pool (the serving pass's decode rows,
// src/ops/paged.rs paged_attention_decode_rope): the tables after the pool,
// n_tables in place of n_seqs; a table covers table_width * block_size
// positions (checked to fit an int on the host).
#define ATTN_PAGED_ROPE_ENTRY_T(NAME, HD, GT, T)                                               \
    extern "C" __global__ void __launch_bounds__(128, ATT_MIN_BLOCKS(GT))                       \
        NAME(const T* q_in, const T* k_in, const T* v_in, int q_stride, int kv_stride,         \
             const float* q_norm, const float* k_norm, float eps, float w_offset,              \
             const double* inv_freq, int n_rot, int neox, u16* k_pool, u16* v_pool,            \
             const int* tables, int table_width, int n_blocks, int block_size,                 \
             const int* row_seq, const int* row_pos, T* out, float* partials, u32* tickets,    \
             int n_heads, int n_kv_heads, int group, int n_layers, int layer, int n_tables,    \
             float q_scale, float softcap, int window, int splits, int flags) {                \
        const AttRopeIn<T> ri = {q_in,   k_in,     v_in,     q_stride, kv_stride, q_norm,      \
                                 k_norm, eps,      w_offset, inv_freq, n_rot,     neox};       \
        const AttPaged pg = {tables, table_width, n_blocks, block_size};                       \
        attn_decode_impl<HD, GT, T, true, true>(0, k_pool, v_pool, row_seq, row_pos, out,      \
                                                partials, tickets, n_heads, n_kv_heads, group, \
                                                n_layers, layer, n_tables,                     \
                                                table_width * block_size, q_scale, softcap,    \
                                                window, splits, flags, ri, pg);                \
    }
// ATT_ONLY_HD (defined by src/ops/attention.rs ahead of this source): only
// the entries of that head_dim, one module per head_dim, so that a model
// compiles a fifth of the file on a cold kernel cache.
#define ATTN_DECODE_ENTRY(HD, GT)                                              \
    ATTN_DECODE_ENTRY_T(attn_decode_hd##HD##_g##GT, HD, GT, float)           \
    ATTN_DECODE_ENTRY_T(attn_decode_hd##HD##_g##GT##_h, HD, GT, u16)         \
    ATTN_DECODE_ROPE_ENTRY_T(attn_decode_rope_hd##HD##_g##GT, HD, GT, float) \
    ATTN_DECODE_ROPE_ENTRY_T(attn_decode_rope_hd##HD##_g##GT##_h, HD, GT, u16) \
    ATTN_PAGED_ROPE_ENTRY_T(attn_paged_rope_hd##HD##_g##GT, HD, GT, float)   \
    ATTN_PAGED_ROPE_ENTRY_T(attn_paged_rope_hd##HD##_g##GT##_h, HD, GT, u16) \
    ATTN_PAGED_ENTRY_T(attn_paged_hd##HD##_g##GT, HD, GT, float)

#if !defined(ATT_ONLY_HD) || ATT_ONLY_HD == 16
ATTN_DECODE_ENTRY(16, 1)
ATTN_DECODE_ENTRY(16, 2)
ATTN_DECODE_ENTRY(16, 4)
ATTN_DECODE_ENTRY(16, 8)
#endif
#if !defined(ATT_ONLY_HD) || ATT_ONLY_HD == 32
ATTN_DECODE_ENTRY(32, 1)
ATTN_DECODE_ENTRY(32, 2)
ATTN_DECODE_ENTRY(32, 4)
ATTN_DECODE_ENTRY(32, 8)
#endif
#if !defined(ATT_ONLY_HD) || ATT_ONLY_HD == 64
ATTN_DECODE_ENTRY(64, 1)
ATTN_DECODE_ENTRY(64, 2)
ATTN_DECODE_ENTRY(64, 4)
ATTN_DECODE_ENTRY(64, 8)
#endif
#if !defined(ATT_ONLY_HD) || ATT_ONLY_HD == 128
ATTN_DECODE_ENTRY(128, 1)
ATTN_DECODE_ENTRY(128, 2)
ATTN_DECODE_ENTRY(128, 4)
ATTN_DECODE_ENTRY(128, 8)
#endif
#if !defined(ATT_ONLY_HD) || ATT_ONLY_HD == 256
ATTN_DECODE_ENTRY(256, 1)
ATTN_DECODE_ENTRY(256, 2)
ATTN_DECODE_ENTRY(256, 4)
ATTN_DECODE_ENTRY(256, 8)
#endif

// ----------------------------------------------------------------- prefill
constexpr int ATT_KT = 32;  // keys per shared-memory tile
constexpr int ATT_QV = 32;  // query vectors per block
constexpr int ATT_VPW = ATT_QV / 4;  // query vectors per warp

// Dynamic shared memory: q (ATT_QV, HD) f32, K tile (ATT_KT, HD + 2) f16
// (odd word stride: lane t reading key t hits distinct banks), V tile
// (ATT_KT, HD) f16, probabilities (4 warps, ATT_KT) f32.
template <int HD, typename OutT>
__device__ __forceinline__ void attn_prefill_impl(
    const float* __restrict__ q, const u16* __restrict__ k_cache, const u16* __restrict__ v_cache,
    const int* __restrict__ row_seq, const int* __restrict__ row_pos, OutT* __restrict__ out,
    int rows, int n_heads, int n_kv_heads, int group, int heads_per_block, int rows_per_block,
    int n_layers, int layer, int n_seqs, int capacity, float q_scale, float softcap,
    int window) {
    constexpr int E = HD / 32;  // output dims per lane
    constexpr int KS = HD + 2;  // K tile row stride (halves)
    extern __shared__ float att_smem[];
    float* sq = att_smem;                                       // (ATT_QV, HD)
    u16* sk = reinterpret_cast<u16*>(sq + ATT_QV * HD);         // (ATT_KT, KS)
    u16* sv = sk + ATT_KT * KS;                                 // (ATT_KT, HD)
    float* sp = reinterpret_cast<float*>(sv + ATT_KT * HD);     // (4, ATT_KT)
    __shared__ int s_seq[ATT_QV], s_lo[ATT_QV], s_hi[ATT_QV];

    const int head_chunks = (group + heads_per_block - 1) / heads_per_block;
    const int kvh = blockIdx.y / head_chunks;
    const int chunk = blockIdx.y % head_chunks;
    const int h0 = kvh * group + chunk * heads_per_block;
    const int gh = min(heads_per_block, group - chunk * heads_per_block);
    const int r0 = blockIdx.x * rows_per_block;
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;

    if (threadIdx.x < rows_per_block) {
        const int r = r0 + threadIdx.x;
        int lo = 0, hi = 0, seq = -1;
        if (r < rows) {
            seq = row_seq[r];
            att_range(seq, row_pos[r], n_seqs, capacity, window, lo, hi);
            if (hi == 0) seq = -1;
        }
        s_seq[threadIdx.x] = seq;
        s_lo[threadIdx.x] = lo;
        s_hi[threadIdx.x] = hi;
    }
    for (int idx = threadIdx.x; idx < ATT_QV * HD; idx += blockDim.x) {
        const int v = idx / HD, d = idx % HD;
        const int rl = v / heads_per_block, hh = v % heads_per_block;
        const int r = r0 + rl;
        float val = 0.0f;
        if (rl < rows_per_block && r < rows && hh < gh)
            val = q[((long long)r * n_heads + h0 + hh) * HD + d] * q_scale;
        sq[idx] = val;
    }
    __syncthreads();

    float m[ATT_VPW], l[ATT_VPW], o[ATT_VPW][E];
#pragma unroll
    for (int i = 0; i < ATT_VPW; ++i) {
        m[i] = ATT_NEG_INF;
        l[i] = 0.0f;
#pragma unroll
        for (int e = 0; e < E; ++e) o[i][e] = 0.0f;
    }

    for (int leader = 0; leader < rows_per_block; ++leader) {
        const int seq = s_seq[leader];
        if (seq < 0) continue;
        bool seen = false;
        int klo = s_lo[leader], khi = s_hi[leader];
        for (int r = 0; r < rows_per_block; ++r) {
            if (s_seq[r] != seq) continue;
            if (r < leader) seen = true;
            klo = min(klo, s_lo[r]);
            khi = max(khi, s_hi[r]);
        }
        if (seen) continue;  // this sequence's rows were done in an earlier pass
        const long long base = att_head_base(seq, layer, n_layers, kvh, n_kv_heads, capacity, HD);
        for (int t0 = klo; t0 < khi; t0 += ATT_KT) {
            __syncthreads();  // previous tile fully used
            for (int idx = threadIdx.x; idx < ATT_KT * (HD / 8); idx += blockDim.x) {
                const int t = idx / (HD / 8), c = idx % (HD / 8);
                const int key = t0 + t;
                uint4 kw = make_uint4(0, 0, 0, 0), vw = kw;
                if (key < khi) {
                    kw = att_ld16(k_cache + base + (long long)key * HD + c * 8);
                    vw = att_ld16(v_cache + base + (long long)key * HD + c * 8);
                }
                u32* kd = reinterpret_cast<u32*>(sk + t * KS + c * 8);
                kd[0] = kw.x;
                kd[1] = kw.y;
                kd[2] = kw.z;
                kd[3] = kw.w;
                *reinterpret_cast<uint4*>(sv + t * HD + c * 8) = vw;
            }
            __syncthreads();
#pragma unroll
            for (int i = 0; i < ATT_VPW; ++i) {
                const int v = warp + 4 * i;
                const int rl = v / heads_per_block;
                if (rl >= rows_per_block || v % heads_per_block >= gh) continue;
                if (s_seq[rl] != seq) continue;
                const int lo = s_lo[rl], hi = s_hi[rl];
                if (t0 >= hi || t0 + ATT_KT <= lo) continue;  // tile outside this row's keys
                const int key = t0 + lane;
                float s = ATT_NEG_INF;
                if (key >= lo && key < hi) {
                    const float2* qv = reinterpret_cast<const float2*>(sq + v * HD);
                    const u32* kr = reinterpret_cast<const u32*>(sk + lane * KS);
                    float acc = 0.0f;
#pragma unroll 8
                    for (int d2 = 0; d2 < HD / 2; ++d2) {
                        float ka, kb;
                        f16x2_to_f32(kr[d2], ka, kb);
                        const float2 qq = qv[d2];
                        acc = fmaf(qq.x, ka, acc);
                        acc = fmaf(qq.y, kb, acc);
                    }
                    s = softcap_log2(acc, softcap);
                }
                float tmax = s;
#pragma unroll
                for (int off = 16; off > 0; off >>= 1)
                    tmax = fmaxf(tmax, __shfl_xor_sync(0xffffffffu, tmax, off));
                const float mn = fmaxf(m[i], tmax);
                const float c = exp2f(m[i] - mn);
                const float p = exp2f(s - mn);
                float psum = p;
#pragma unroll
                for (int off = 16; off > 0; off >>= 1)
                    psum += __shfl_xor_sync(0xffffffffu, psum, off);
                l[i] = l[i] * c + psum;
                m[i] = mn;
                sp[warp * ATT_KT + lane] = p;
                __syncwarp();
#pragma unroll
                for (int e = 0; e < E; ++e) o[i][e] *= c;
                for (int t = 0; t < ATT_KT; ++t) {
                    const float pt = sp[warp * ATT_KT + t];
                    const u16* vr = sv + t * HD + lane * E;
#pragma unroll
                    for (int e = 0; e < E; ++e) o[i][e] = fmaf(pt, f16_to_f32(vr[e]), o[i][e]);
                }
                __syncwarp();
            }
        }
    }

#pragma unroll
    for (int i = 0; i < ATT_VPW; ++i) {
        const int v = warp + 4 * i;
        const int rl = v / heads_per_block, hh = v % heads_per_block;
        const int r = r0 + rl;
        if (rl >= rows_per_block || r >= rows || hh >= gh) continue;
        const long long op = ((long long)r * n_heads + h0 + hh) * HD + lane * E;
        const float inv = l[i] > 0.0f ? 1.0f / l[i] : 0.0f;
#pragma unroll
        for (int e = 0; e < E; ++e) st_from_f32(out, op + e, o[i][e] * inv);
    }
}

// ------------------------------------------------- prefill on tensor cores
// attn_prefill_tc*_*: FlashAttention-2's loop on mma.sync m16n8k16 (f16
// operands, f32 accumulation; sm_80+). One block of 4 warps per tile of
// 64 * MT query vectors (rows x heads of one kv head, as attn_prefill_*);
// warp w owns MT m16 tiles of vectors (the mma's M). Key and value tiles of
// KT keys stream through a 2-stage cp.async ring in shared memory that the
// 4 warps share. Per key tile a warp computes its scores (each K fragment
// loaded once for its MT m16 tiles; Q fragments from registers when they
// fit, else from shared memory), masks and soft-caps them in f32, keeps the
// online softmax per row in the log2 domain (max over the lane quad that
// holds a row), turns the probabilities into the f16 A fragments of the
// P·V product in registers (the score accumulators of two n8 tiles are one
// m16k16 A fragment) and accumulates P·V (each V fragment loaded once for
// the MT tiles). Queries are scaled in f32 and rounded to f16 once;
// probabilities are rounded to f16: tolerance in tests/gpu_ops.rs (about
// 1e-3 of |V|, the rounding the f16 GEMM path applies to the output
// anyway). Rows of several sequences in one tile take one pass per distinct
// sequence; a warp skips the tiles outside all of its rows' key ranges and
// masks only the tiles that cross a boundary. Blocks run last row tile
// first: under a causal mask the longest rows start in the first wave.
template <int HD, int MT>
struct AttTc {
    static constexpr int QV = 64 * MT;              // query vectors per block
    static constexpr int KT = HD <= 128 ? 64 : 32;  // keys per tile
    static constexpr int RS = HD + 8;  // shared row stride in halves (16 B pad: the 8 rows
                                       // of an ldmatrix hit distinct banks)
    static constexpr bool QREG = MT == 1 && HD <= 128;  // Q fragments kept in registers
};

// ldmatrix at a shared-memory byte address (a lane base plus a compile-time
// offset, which ptxas folds into the instruction).
__device__ __forceinline__ void att_ldsm_x4(u32 (&r)[4], u32 addr) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(addr));
}
__device__ __forceinline__ void att_ldsm_x4_trans(u32 (&r)[4], u32 addr) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(addr));
}
// A compile-time boolean as a value (the generic tile body of
// attn_prefill_tc_impl is instantiated with and without its mask).
template <bool B>
struct AttBool {
    static constexpr bool value = B;
};
__device__ __forceinline__ u32 att_f16x2(float lo, float hi) {
    u32 r;
    asm("cvt.rn.f16x2.f32 %0, %1, %2;" : "=r"(r) : "f"(hi), "f"(lo));
    return r;
}
// D += A (16 x 16, f16, row) * B (16 x 8, f16, col), f32 accumulators.
__device__ __forceinline__ void att_mma(float (&c)[4], const u32 (&a)[4], u32 b0, u32 b1) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 "
        "{%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// Where the keys of the prefill kernels' passes live (attn_prefill_tc_body's
// Kv parameter): `range` gives a row's key range [lo, hi) (empty: the row is
// outside the store and gets zeros), `keys(seq, kvh)` the keys of one
// sequence and kv head, which att_tc_load_tile (one overload per store)
// copies a tile of.
//
// The contiguous cache of ops/kv.rs: [seq][layer][kv head][position][d].
struct AttKvCache {
    const u16* k;
    const u16* v;
    int n_layers, layer, n_kv_heads, n_seqs, capacity, window;
    __device__ __forceinline__ void range(int seq, int pos, int& lo, int& hi) const {
        att_range(seq, pos, n_seqs, capacity, window, lo, hi);
    }
    // One sequence and kv head: key j's row at k + j * head_dim.
    struct Keys {
        const u16* k;
        const u16* v;
    };
    __device__ __forceinline__ Keys keys(int seq, int kvh, int hd) const {
        const long long base = att_head_base(seq, layer, n_layers, kvh, n_kv_heads, capacity, hd);
        return Keys{k + base, v + base};
    }
};

// The paged pool of ops/paged.rs (kernels/paged_attention.cu):
// [layer][block][kv head][slot][d], position p of table t in block
// tables[t * table_width + p / block_size], slot p % block_size. A key in a
// block id outside the pool reads as zeros (the host validates the tables,
// so this only keeps a bad buffer from an out-of-bounds access; the
// decode-structured kernel skips such keys instead).
struct AttKvPaged {
    const u16* k;
    const u16* v;
    const int* tables;
    int layer, n_blocks, n_kv_heads, block_size, block_shift, n_tables, table_width, window;
    // A table covers table_width * block_size positions (the host checks
    // that this fits an int: pack_block_tables).
    __device__ __forceinline__ void range(int seq, int pos, int& lo, int& hi) const {
        att_range(seq, pos, n_tables, table_width * block_size, window, lo, hi);
    }
    // One sequence (its block table) and kv head.
    struct Keys {
        const u16* k;
        const u16* v;
        const int* table;
        long long head;  // offset of (layer, block 0, kv head, slot 0)
        long long block_stride;
        int n_blocks, block_size, block_shift, hd;
        // Block id of key `key` (-1 in a block id outside the pool).
        __device__ __forceinline__ int block_of(int key) const {
            // Engine block sizes are powers of two: a shift, not a division.
            const int b = block_shift >= 0 ? key >> block_shift : key / block_size;
            const int blk = table[b];
            return blk >= 0 && blk < n_blocks ? blk : -1;
        }
        // Element offset of key `key`'s row in K and V, in block `blk`.
        __device__ __forceinline__ long long offset(int key, int blk) const {
            const int b = block_shift >= 0 ? key >> block_shift : key / block_size;
            return head + blk * block_stride + (long long)(key - b * block_size) * hd;
        }
    };
    __device__ __forceinline__ Keys keys(int seq, int kvh, int hd) const {
        const long long block_stride = (long long)n_kv_heads * block_size * hd;
        const long long head =
            (long long)layer * n_blocks * block_stride + (long long)kvh * block_size * hd;
        return Keys{k, v, tables + (long long)seq * table_width, head, block_stride,
                    n_blocks, block_size, block_shift, hd};
    }
};

// What a thread's copies of one key tile need to know ahead of the tile
// (att_tc_tile_ids, one overload per store): nothing for the contiguous
// cache; for the paged pool the block ids of its keys, read from the block
// table one tile early so that the table's latency is not in front of the
// copies.
struct AttNoIds {};
template <int HD, int KT>
__device__ __forceinline__ AttNoIds att_tc_tile_ids(const AttKvCache::Keys&, int, int) {
    return AttNoIds{};
}
template <int HD, int KT>
struct AttBlockIds {
    int blk[KT / (128 / (HD / 8))];  // -1: zeros (past khi, or no such block)
};
template <int HD, int KT>
__device__ __forceinline__ AttBlockIds<HD, KT> att_tc_tile_ids(const AttKvPaged::Keys& keys, int t0,
                                                               int khi) {
    constexpr int UNITS = HD / 8, KSTEP = 128 / UNITS;
    const int t = threadIdx.x / UNITS;
    AttBlockIds<HD, KT> ids;
#pragma unroll
    for (int j = 0; j < KT / KSTEP; ++j) {
        const int key = t0 + t + j * KSTEP;
        ids.blk[j] = key < khi ? keys.block_of(key) : -1;
    }
    return ids;
}

// Keys [t0, t0 + KT) of one head into a ring stage (rows of RS halves) by
// the block's 128 threads: thread i copies 16-byte unit i % (HD / 8) of keys
// i / (HD / 8) + j * (128 / (HD / 8)); keys at or past khi, and keys the
// store has no row for, are zeros (their probabilities are 0, and 0 times a
// stale value could be NaN). One overload per store: the contiguous copy
// keeps one base and constant offsets per key (a shared form with an offset
// per key moved ptxas's allocation of the contiguous kernel, 235 -> 184
// registers, and cost it ~10% on the H100: docs/CUDA.md change 79).
template <int HD, int KT, int RS>
__device__ __forceinline__ void att_tc_load_tile(u16* sk, u16* sv, const AttKvCache::Keys& keys,
                                                 AttNoIds, int t0, int khi) {
    constexpr int UNITS = HD / 8;         // 16-byte units per key
    constexpr int KSTEP = 128 / UNITS;    // keys per round of the block
    static_assert(KT % KSTEP == 0, "key tile not a multiple of a round");
    const int t = threadIdx.x / UNITS, u = threadIdx.x % UNITS;
    u16* dk = sk + t * RS + u * 8;
    u16* dv = sv + t * RS + u * 8;
    const long long off = (long long)(t0 + t) * HD + u * 8;
#pragma unroll
    for (int j = 0; j < KT / KSTEP; ++j) {
        if (t0 + t + j * KSTEP < khi) {
            att_cp_async16(dk + j * KSTEP * RS, keys.k + off + j * KSTEP * HD);
            att_cp_async16(dv + j * KSTEP * RS, keys.v + off + j * KSTEP * HD);
        } else {
            *reinterpret_cast<uint4*>(dk + j * KSTEP * RS) = make_uint4(0, 0, 0, 0);
            *reinterpret_cast<uint4*>(dv + j * KSTEP * RS) = make_uint4(0, 0, 0, 0);
        }
    }
}
template <int HD, int KT, int RS>
__device__ __forceinline__ void att_tc_load_tile(u16* sk, u16* sv, const AttKvPaged::Keys& keys,
                                                 const AttBlockIds<HD, KT>& ids, int t0,
                                                 int khi) {
    constexpr int UNITS = HD / 8;
    constexpr int KSTEP = 128 / UNITS;
    static_assert(KT % KSTEP == 0, "key tile not a multiple of a round");
    const int t = threadIdx.x / UNITS, u = threadIdx.x % UNITS;
    u16* dk = sk + t * RS + u * 8;
    u16* dv = sv + t * RS + u * 8;
#pragma unroll
    for (int j = 0; j < KT / KSTEP; ++j) {
        const int key = t0 + t + j * KSTEP;
        if (ids.blk[j] >= 0) {
            const long long off = keys.offset(key, ids.blk[j]) + u * 8;
            att_cp_async16(dk + j * KSTEP * RS, keys.k + off);
            att_cp_async16(dv + j * KSTEP * RS, keys.v + off);
        } else {
            *reinterpret_cast<uint4*>(dk + j * KSTEP * RS) = make_uint4(0, 0, 0, 0);
            *reinterpret_cast<uint4*>(dv + j * KSTEP * RS) = make_uint4(0, 0, 0, 0);
        }
    }
}

template <int HD, typename OutT, int MT, typename Kv>
__device__ __forceinline__ void attn_prefill_tc_body(
    const float* __restrict__ q, const Kv& kv, const int* __restrict__ row_seq,
    const int* __restrict__ row_pos, OutT* __restrict__ out, int rows, int n_heads, int group,
    int heads_per_block, int rows_per_block, float q_scale, float softcap) {
    using C = AttTc<HD, MT>;
    constexpr int QV = C::QV, KT = C::KT, RS = C::RS;
    constexpr int NT = KT / 8;   // n8 score tiles per key tile
    constexpr int DT = HD / 8;   // n8 output tiles
    constexpr int QK = HD / 16;  // k16 steps of Q·Kᵀ
    constexpr int PK = KT / 16;  // k16 steps of P·V
    extern __shared__ __align__(16) u16 atc_smem[];
    u16* sq = atc_smem;          // (QV, RS)
    u16* sk = sq + QV * RS;      // 2 stages x (KT, RS)
    u16* sv = sk + 2 * KT * RS;  // 2 stages x (KT, RS)
    // Per query vector: sequence and key range; for the first vector of
    // each sequence in the tile the union of that sequence's ranges (else
    // -1: not a pass leader).
    __shared__ int s_seq[QV], s_lo[QV], s_hi[QV], s_plo[QV], s_phi[QV];

    const int head_chunks = (group + heads_per_block - 1) / heads_per_block;
    const int kvh = blockIdx.y / head_chunks;
    const int chunk = blockIdx.y % head_chunks;
    const int h0 = kvh * group + chunk * heads_per_block;
    const int gh = min(heads_per_block, group - chunk * heads_per_block);
    const int r0 = (gridDim.x - 1 - blockIdx.x) * rows_per_block;
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int g = lane >> 2, tq = lane & 3;

    for (int v = threadIdx.x; v < QV; v += blockDim.x) {
        const int rl = v / heads_per_block, hh = v % heads_per_block, r = r0 + rl;
        int lo = 0, hi = 0, seq = -1;
        if (rl < rows_per_block && r < rows && hh < gh) {
            seq = row_seq[r];
            kv.range(seq, row_pos[r], lo, hi);
            if (hi == 0) seq = -1;
        }
        s_seq[v] = seq;
        s_lo[v] = lo;
        s_hi[v] = hi;
    }
    for (int idx = threadIdx.x; idx < QV * (HD / 2); idx += blockDim.x) {
        const int v = idx / (HD / 2), d2 = idx % (HD / 2);
        const int rl = v / heads_per_block, hh = v % heads_per_block, r = r0 + rl;
        float2 x = make_float2(0.0f, 0.0f);
        if (rl < rows_per_block && r < rows && hh < gh)
            x = reinterpret_cast<const float2*>(q + ((long long)r * n_heads + h0 + hh) * HD)[d2];
        reinterpret_cast<u32*>(sq + v * RS)[d2] = att_f16x2(x.x * q_scale, x.y * q_scale);
    }
    __syncthreads();
    for (int v = threadIdx.x; v < QV; v += blockDim.x) {
        const int seq = s_seq[v];
        int plo = -1, phi = -1;
        if (seq >= 0) {
            bool first = true;
            plo = s_lo[v];
            phi = s_hi[v];
            for (int u = 0; u < QV; ++u) {
                if (s_seq[u] != seq) continue;
                if (u < v) first = false;
                plo = min(plo, s_lo[u]);
                phi = max(phi, s_hi[u]);
            }
            if (!first) plo = phi = -1;
        }
        s_plo[v] = plo;
        s_phi[v] = phi;
    }
    __syncthreads();

    // This lane's rows: m16 tile mt of the warp, rows g (a) and g + 8 (b).
    const int vbase = warp * 16 * MT + g;
    // Lane addresses (bytes) of the ldmatrix operands: Q rows (A, m16k16),
    // K rows (B of Q·Kᵀ: keys 8nt + lane % 8 (+ 8 for lanes 16-31), d + 8 for
    // lanes 8-15 / 24-31), V rows (B of P·V, transposed: keys + 8 for lanes
    // 8-15 / 24-31, d + 8 for lanes 16-31).
    const u32 q_lane = smem_addr(sq) +
                       2u * ((warp * 16 * MT + (lane & 15)) * RS + (lane >> 4) * 8);
    const u32 k_lane = smem_addr(sk) + 2u * (((lane >> 4) * 8 + (lane & 7)) * RS +
                                             ((lane >> 3) & 1) * 8);
    const u32 v_lane = smem_addr(sv) + 2u * ((((lane >> 3) & 1) * 8 + (lane & 7)) * RS +
                                             (lane >> 4) * 8);
    u32 qf[C::QREG ? QK : 1][4];
    if constexpr (C::QREG) {
#pragma unroll
        for (int ks = 0; ks < QK; ++ks) att_ldsm_x4(qf[ks], q_lane + 2u * ks * 16);
    }

    float o[MT][DT][4];
    float m[MT][2], l[MT][2];
#pragma unroll
    for (int mt = 0; mt < MT; ++mt) {
#pragma unroll
        for (int dt = 0; dt < DT; ++dt) o[mt][dt][0] = o[mt][dt][1] = o[mt][dt][2] = o[mt][dt][3] = 0.0f;
        m[mt][0] = m[mt][1] = ATT_NEG_INF;
        l[mt][0] = l[mt][1] = 0.0f;
    }

    for (int leader = 0; leader < QV; ++leader) {
        const int klo = s_plo[leader], khi = s_phi[leader];
        if (klo < 0) continue;
        const int seq = s_seq[leader];
        // Key ranges of this lane's rows in this pass (empty off the
        // sequence); over the warp's rows the union (skip test) and the
        // intersection (tiles inside it need no mask).
        int lo[MT][2], hi[MT][2];
        int w_lo = 0x7fffffff, w_hi = 0, w_maxlo = 0, w_minhi = 0x7fffffff;
#pragma unroll
        for (int mt = 0; mt < MT; ++mt) {
#pragma unroll
            for (int h = 0; h < 2; ++h) {
                const int v = vbase + mt * 16 + h * 8;
                const bool in = s_seq[v] == seq;
                lo[mt][h] = in ? s_lo[v] : 0x7fffffff;
                hi[mt][h] = in ? s_hi[v] : 0;
                w_lo = min(w_lo, lo[mt][h]);
                w_hi = max(w_hi, hi[mt][h]);
                w_maxlo = max(w_maxlo, lo[mt][h]);
                w_minhi = min(w_minhi, hi[mt][h]);
            }
        }
#pragma unroll
        for (int off = 4; off < 32; off <<= 1) {
            w_lo = min(w_lo, __shfl_xor_sync(0xffffffffu, w_lo, off));
            w_hi = max(w_hi, __shfl_xor_sync(0xffffffffu, w_hi, off));
            w_maxlo = max(w_maxlo, __shfl_xor_sync(0xffffffffu, w_maxlo, off));
            w_minhi = min(w_minhi, __shfl_xor_sync(0xffffffffu, w_minhi, off));
        }
        const auto keys = kv.keys(seq, kvh, HD);
        const int n_tiles = (khi - klo + KT - 1) / KT;
        __syncthreads();  // the previous pass's last tile fully read
        att_tc_load_tile<HD, KT, RS>(sk, sv, keys, att_tc_tile_ids<HD, KT>(keys, klo, khi), klo,
                                     khi);
        cp_async_commit();
        // The next tile's block ids (paged pool), read a tile ahead.
        auto ids = att_tc_tile_ids<HD, KT>(keys, klo + KT, khi);
        for (int it = 0; it < n_tiles; ++it) {
            const int t0 = klo + it * KT;
            if (it + 1 < n_tiles) {
                const int st = (it + 1) & 1;
                att_tc_load_tile<HD, KT, RS>(sk + st * KT * RS, sv + st * KT * RS, keys, ids,
                                             t0 + KT, khi);
                ids = att_tc_tile_ids<HD, KT>(keys, t0 + 2 * KT, khi);
            }
            cp_async_commit();
            cp_async_wait<1>();
            __syncthreads();
            const u32 stage = 2u * (it & 1) * KT * RS;
            // One key tile of the warp's rows; MASK: the tile crosses a row's
            // key range (else every score is kept and no compare is issued).
            auto tile = [&](auto mask_tag) {
                constexpr bool MASK = decltype(mask_tag)::value;
                float s[MT][NT][4];
#pragma unroll
                for (int mt = 0; mt < MT; ++mt)
#pragma unroll
                    for (int nt = 0; nt < NT; ++nt)
                        s[mt][nt][0] = s[mt][nt][1] = s[mt][nt][2] = s[mt][nt][3] = 0.0f;
#pragma unroll
                for (int ks = 0; ks < QK; ++ks) {
                    u32 a[MT][4];
#pragma unroll
                    for (int mt = 0; mt < MT; ++mt) {
                        if constexpr (C::QREG) {
#pragma unroll
                            for (int i = 0; i < 4; ++i) a[mt][i] = qf[ks][i];
                        } else {
                            att_ldsm_x4(a[mt], q_lane + 2u * (mt * 16 * RS + ks * 16));
                        }
                    }
#pragma unroll
                    for (int nt = 0; nt < NT; nt += 2) {
                        u32 b[4];
                        att_ldsm_x4(b, k_lane + stage + 2u * (nt * 8 * RS + ks * 16));
#pragma unroll
                        for (int mt = 0; mt < MT; ++mt) {
                            att_mma(s[mt][nt], a[mt], b[0], b[1]);
                            att_mma(s[mt][nt + 1], a[mt], b[2], b[3]);
                        }
                    }
                }
                u32 pa[MT][PK][4];
                bool rescale = false;
                float corr[MT][2];
#pragma unroll
                for (int mt = 0; mt < MT; ++mt) {
                    float mx[2] = {ATT_NEG_INF, ATT_NEG_INF};
#pragma unroll
                    for (int nt = 0; nt < NT; ++nt) {
#pragma unroll
                        for (int j = 0; j < 4; ++j) {
                            float x = softcap_log2(s[mt][nt][j], softcap);
                            if constexpr (MASK) {
                                const int key = t0 + nt * 8 + tq * 2 + (j & 1);
                                const int h = j >> 1;
                                x = key >= lo[mt][h] && key < hi[mt][h] ? x : ATT_NEG_INF;
                            }
                            s[mt][nt][j] = x;
                        }
                        mx[0] = fmaxf(mx[0], fmaxf(s[mt][nt][0], s[mt][nt][1]));
                        mx[1] = fmaxf(mx[1], fmaxf(s[mt][nt][2], s[mt][nt][3]));
                    }
                    float mu[2];
#pragma unroll
                    for (int h = 0; h < 2; ++h) {
#pragma unroll
                        for (int off = 1; off < 4; off <<= 1)
                            mx[h] = fmaxf(mx[h], __shfl_xor_sync(0xffffffffu, mx[h], off));
                        const float mn = fmaxf(m[mt][h], mx[h]);
                        // A row with no key yet keeps m = -inf: subtract 0 instead.
                        mu[h] = mn == ATT_NEG_INF ? 0.0f : mn;
                        corr[mt][h] = exp2f(m[mt][h] - mu[h]);
                        rescale |= mn != m[mt][h];
                        m[mt][h] = mn;
                    }
                    float psum[2] = {0.0f, 0.0f};
#pragma unroll
                    for (int nt = 0; nt < NT; ++nt) {
                        const float p0 = exp2f(s[mt][nt][0] - mu[0]);
                        const float p1 = exp2f(s[mt][nt][1] - mu[0]);
                        const float p2 = exp2f(s[mt][nt][2] - mu[1]);
                        const float p3 = exp2f(s[mt][nt][3] - mu[1]);
                        psum[0] += p0 + p1;
                        psum[1] += p2 + p3;
                        // Two n8 score tiles make one m16k16 A fragment of P.
                        pa[mt][nt >> 1][(nt & 1) * 2] = att_f16x2(p0, p1);
                        pa[mt][nt >> 1][(nt & 1) * 2 + 1] = att_f16x2(p2, p3);
                    }
                    l[mt][0] = l[mt][0] * corr[mt][0] + psum[0];
                    l[mt][1] = l[mt][1] * corr[mt][1] + psum[1];
                }
                // Once a row's maximum settles its factor is 1: skip the
                // multiplies while no row of the warp moved.
                if (__any_sync(0xffffffffu, rescale)) {
#pragma unroll
                    for (int mt = 0; mt < MT; ++mt)
#pragma unroll
                        for (int dt = 0; dt < DT; ++dt) {
                            o[mt][dt][0] *= corr[mt][0];
                            o[mt][dt][1] *= corr[mt][0];
                            o[mt][dt][2] *= corr[mt][1];
                            o[mt][dt][3] *= corr[mt][1];
                        }
                }
#pragma unroll
                for (int pk = 0; pk < PK; ++pk) {
#pragma unroll
                    for (int dt = 0; dt < DT; dt += 2) {
                        u32 b[4];
                        att_ldsm_x4_trans(b, v_lane + stage + 2u * (pk * 16 * RS + dt * 8));
#pragma unroll
                        for (int mt = 0; mt < MT; ++mt) {
                            att_mma(o[mt][dt], pa[mt][pk], b[0], b[1]);
                            att_mma(o[mt][dt + 1], pa[mt][pk], b[2], b[3]);
                        }
                    }
                }
            };
            if (t0 < w_hi && t0 + KT > w_lo) {
                if (t0 >= w_maxlo && t0 + KT <= w_minhi)
                    tile(AttBool<false>{});
                else
                    tile(AttBool<true>{});
            }
            __syncthreads();  // stage (it & 1) free for tile it + 2
        }
    }

#pragma unroll
    for (int mt = 0; mt < MT; ++mt) {
#pragma unroll
        for (int h = 0; h < 2; ++h) {
            float sum = l[mt][h];
#pragma unroll
            for (int off = 1; off < 4; off <<= 1) sum += __shfl_xor_sync(0xffffffffu, sum, off);
            const int v = vbase + mt * 16 + h * 8;
            const int rl = v / heads_per_block, hh = v % heads_per_block, r = r0 + rl;
            if (rl >= rows_per_block || r >= rows || hh >= gh) continue;
            const float inv = sum > 0.0f ? 1.0f / sum : 0.0f;
            const long long op = ((long long)r * n_heads + h0 + hh) * HD + tq * 2;
#pragma unroll
            for (int dt = 0; dt < DT; ++dt) {
                st_from_f32(out, op + dt * 8, o[mt][dt][h * 2] * inv);
                st_from_f32(out, op + dt * 8 + 1, o[mt][dt][h * 2 + 1] * inv);
            }
        }
    }
}

// The contiguous cache's tensor-core prefill (attn_prefill_impl's signature,
// so that one entry macro serves both kernels).
template <int HD, typename OutT, int MT = 1>
__device__ __forceinline__ void attn_prefill_tc_impl(
    const float* __restrict__ q, const u16* __restrict__ k_cache, const u16* __restrict__ v_cache,
    const int* __restrict__ row_seq, const int* __restrict__ row_pos, OutT* __restrict__ out,
    int rows, int n_heads, int n_kv_heads, int group, int heads_per_block, int rows_per_block,
    int n_layers, int layer, int n_seqs, int capacity, float q_scale, float softcap,
    int window) {
    const AttKvCache kv{k_cache, v_cache, n_layers, layer, n_kv_heads, n_seqs, capacity, window};
    attn_prefill_tc_body<HD, OutT, MT>(q, kv, row_seq, row_pos, out, rows, n_heads, group,
                                       heads_per_block, rows_per_block, q_scale, softcap);
}

// The prefill entries, f32 and f16 (`_h`) output, one signature:
// attn_prefill_hd{HD} (CUDA cores) and attn_prefill_tc_hd{HD} (tensor cores,
// one m16 tile of query vectors per warp; two (MT = 2: each K and V fragment
// used twice, half the shared-memory reads per product) measured 4-33%
// slower on the H100 at 512-4096 tokens: 255 registers with spills, and
// half as many blocks; docs/CUDA.md change 78).
#define ATTN_PREFILL_ENTRY_T(NAME, IMPL, HD, OutT)                                               \
    extern "C" __global__ void __launch_bounds__(128) NAME(                                      \
        const float* q, const u16* k_cache, const u16* v_cache, const int* row_seq,              \
        const int* row_pos, OutT* out, int rows, int n_heads, int n_kv_heads, int group,         \
        int heads_per_block, int rows_per_block, int n_layers, int layer, int n_seqs,            \
        int capacity, float q_scale, float softcap, int window) {                                \
        IMPL<HD, OutT>(q, k_cache, v_cache, row_seq, row_pos, out, rows, n_heads, n_kv_heads,    \
                       group, heads_per_block, rows_per_block, n_layers, layer, n_seqs, capacity, \
                       q_scale, softcap, window);                                                \
    }
// The paged pool's prompt rows (ops/paged.rs: rows of prompt chunks, several
// per sequence) on the same tensor-core loop, f32 output; the pool's
// geometry as kernels/paged_attention.cu takes it, plus block_shift
// (log2 block_size, -1 when not a power of two).
#define PAGED_PREFILL_TC_ENTRY(HD)                                                                \
    extern "C" __global__ void __launch_bounds__(128) paged_attn_prefill_tc_hd##HD(              \
        const float* q, const u16* k_pool, const u16* v_pool, const int* row_seq,                \
        const int* row_pos, const int* tables, float* out, int rows, int n_heads, int group,     \
        int heads_per_block, int rows_per_block, int layer, int n_blocks, int n_kv_heads,        \
        int block_size, int block_shift, int n_tables, int table_width, float q_scale,           \
        float softcap, int window) {                                                             \
        const AttKvPaged kv{k_pool,     v_pool,      tables,   layer,       n_blocks, n_kv_heads, \
                            block_size, block_shift, n_tables, table_width, window};              \
        attn_prefill_tc_body<HD, float, 1>(q, kv, row_seq, row_pos, out, rows, n_heads, group,   \
                                           heads_per_block, rows_per_block, q_scale, softcap);   \
    }
#define ATTN_PREFILL_ENTRY(HD)                                                           \
    ATTN_PREFILL_ENTRY_T(attn_prefill_hd##HD, attn_prefill_impl, HD, float)             \
    ATTN_PREFILL_ENTRY_T(attn_prefill_hd##HD##_h, attn_prefill_impl, HD, u16)           \
    ATTN_PREFILL_ENTRY_T(attn_prefill_tc_hd##HD, attn_prefill_tc_impl, HD, float)       \
    ATTN_PREFILL_ENTRY_T(attn_prefill_tc_hd##HD##_h, attn_prefill_tc_impl, HD, u16)     \
    PAGED_PREFILL_TC_ENTRY(HD)

#if !defined(ATT_ONLY_HD) || ATT_ONLY_HD == 64
ATTN_PREFILL_ENTRY(64)
#endif
#if !defined(ATT_ONLY_HD) || ATT_ONLY_HD == 128
ATTN_PREFILL_ENTRY(128)
#endif
#if !defined(ATT_ONLY_HD) || ATT_ONLY_HD == 256
ATTN_PREFILL_ENTRY(256)
#endif
