// On-device token selection from f32 logits (rows, vocab)
// (src/ops/sampling.rs).
//
// - samp_argmax: largest logit, lowest index on ties, NaN never chosen; a
//   row of NaN only gives 0xffffffff. One block of 1024 threads per row.
// - samp_draw / samp_draw_rows: the CPU sampler's temperature draw, bit for
//   bit (see "temperature draw" below), with the same parameters for every
//   row or each row's own (the serving pass's mix of greedy and sampled
//   requests). One block of 1024 threads per row.
// - The split forms, many blocks per row (a row's tickets and partial
//   results in global memory, the last block of the row finishing):
//   samp_argmax_split, then samp_draw_split (no top-k, no top-p cut),
//   samp_draw_topk_split (top-k) or samp_draw_topp_split_a / _b (a top-p
//   cut), each with a per-row (`_rows`) entry; the same tokens as the
//   single-row kernels (docs/CUDA.md change 87).
//
// Self-contained (no #include) so that NVRTC needs no header search path.

typedef unsigned int u32;

#define SAMP_THREADS 1024
#define SAMP_MAX_K 256
#define SAMP_CAND 512  // candidate slots (power of two, >= SAMP_MAX_K)
#define SAMP_NO_TOKEN 0xffffffffu

// "a before b": larger value, then lower index.
__device__ __forceinline__ bool samp_better(float va, u32 ia, float vb, u32 ib) {
    return va > vb || (va == vb && ia < ib);
}

// Calls f(value, index) for every element of `row` this thread owns: 16-byte
// loads, SAMP_UNROLL of them in flight per thread (one block streams a whole
// row, so memory-level parallelism decides its speed); scalar for a
// misaligned row and the tail.
#define SAMP_UNROLL 4
template <class F>
__device__ __forceinline__ void samp_visit(const float* __restrict__ row, int vocab, F f) {
    int tail = 0;
    if ((reinterpret_cast<unsigned long long>(row) & 15ull) == 0) {
        const int n4 = vocab >> 2;
        const float4* r4 = reinterpret_cast<const float4*>(row);
        for (int base = threadIdx.x; base < n4; base += blockDim.x * SAMP_UNROLL) {
            float4 v[SAMP_UNROLL];
#pragma unroll
            for (int u = 0; u < SAMP_UNROLL; ++u) {
                const int j = base + u * blockDim.x;
                if (j < n4) v[u] = r4[j];
            }
#pragma unroll
            for (int u = 0; u < SAMP_UNROLL; ++u) {
                const int j = base + u * blockDim.x;
                if (j < n4) {
                    f(v[u].x, 4 * j);
                    f(v[u].y, 4 * j + 1);
                    f(v[u].z, 4 * j + 2);
                    f(v[u].w, 4 * j + 3);
                }
            }
        }
        tail = n4 << 2;
    }
    for (int i = tail + threadIdx.x; i < vocab; i += blockDim.x) f(row[i], i);
}

// The row's argmax (every thread gets it).
__device__ __forceinline__ u32 samp_argmax_row(const float* __restrict__ row, int vocab) {
    __shared__ float s_val[32];
    __shared__ u32 s_idx[32];
    __shared__ u32 s_best;
    float best = __int_as_float(0xff800000);  // -inf
    u32 best_i = SAMP_NO_TOKEN;
    samp_visit(row, vocab, [&](float v, int i) {
        if (v == v && samp_better(v, (u32)i, best, best_i)) {
            best = v;
            best_i = (u32)i;
        }
    });
#pragma unroll
    for (int off = 16; off > 0; off >>= 1) {
        const float ov = __shfl_xor_sync(0xffffffffu, best, off);
        const u32 oi = __shfl_xor_sync(0xffffffffu, best_i, off);
        if (oi != SAMP_NO_TOKEN && (best_i == SAMP_NO_TOKEN || samp_better(ov, oi, best, best_i))) {
            best = ov;
            best_i = oi;
        }
    }
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    if (lane == 0) {
        s_val[warp] = best;
        s_idx[warp] = best_i;
    }
    __syncthreads();
    if (warp == 0) {
        const int n_warps = blockDim.x >> 5;
        best = lane < n_warps ? s_val[lane] : __int_as_float(0xff800000);
        best_i = lane < n_warps ? s_idx[lane] : SAMP_NO_TOKEN;
#pragma unroll
        for (int off = 16; off > 0; off >>= 1) {
            const float ov = __shfl_xor_sync(0xffffffffu, best, off);
            const u32 oi = __shfl_xor_sync(0xffffffffu, best_i, off);
            if (oi != SAMP_NO_TOKEN &&
                (best_i == SAMP_NO_TOKEN || samp_better(ov, oi, best, best_i))) {
                best = ov;
                best_i = oi;
            }
        }
        if (lane == 0) s_best = best_i;
    }
    __syncthreads();
    const u32 r = s_best;
    __syncthreads();
    return r;
}

extern "C" __global__ void __launch_bounds__(SAMP_THREADS)
    samp_argmax(const float* __restrict__ logits, u32* __restrict__ out, int vocab) {
    const u32 best = samp_argmax_row(logits + (long long)blockIdx.x * vocab, vocab);
    if (threadIdx.x == 0) out[blockIdx.x] = best;
}

// Order-preserving key of a float (larger float, larger key; -0 is +0, as
// the CPU sampler's rank order and float comparison take it, so that tied
// signed zeros go by index); NaN -> 0 and is excluded by the callers.
__device__ __forceinline__ u32 samp_key(float v) {
    if (v != v) return 0u;
    u32 b = __float_as_uint(v);
    if ((b << 1) == 0u) b = 0u;  // -0 -> +0
    return (b & 0x80000000u) ? ~b : (b | 0x80000000u);
}

// Inclusive prefix sum over the block (1024 threads) of u32 or u64; `tmp`
// holds 32 of them and is free again on return.
template <class T>
__device__ __forceinline__ T samp_block_scan(T v, T* tmp) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
#pragma unroll
    for (int off = 1; off < 32; off <<= 1) {
        const T o = __shfl_up_sync(0xffffffffu, v, off);
        if (lane >= off) v += o;
    }
    __syncthreads();
    if (lane == 31) tmp[warp] = v;
    __syncthreads();
    if (warp == 0) {
        T w = tmp[lane];
#pragma unroll
        for (int off = 1; off < 32; off <<= 1) {
            const T o = __shfl_up_sync(0xffffffffu, w, off);
            if (lane >= off) w += o;
        }
        tmp[lane] = w;
    }
    __syncthreads();
    const T r = v + (warp > 0 ? tmp[warp - 1] : (T)0);
    __syncthreads();
    return r;
}

// Sorts c_val / c_idx[0, n_sort) (n_sort a power of two) by (value desc,
// index asc), entries from n_valid on taken as -inf padding: a bitonic
// network in shared memory, every thread of the block taking part.
__device__ __forceinline__ void samp_sort_desc(float* c_val, u32* c_idx, u32 n_valid,
                                               u32 n_sort) {
    const u32 tid = threadIdx.x;
    for (u32 i = n_valid + tid; i < n_sort; i += blockDim.x) {
        c_val[i] = __int_as_float(0xff800000);
        c_idx[i] = SAMP_NO_TOKEN;
    }
    __syncthreads();
    for (u32 size = 2; size <= n_sort; size <<= 1) {
        for (u32 stride = size >> 1; stride > 0; stride >>= 1) {
            for (u32 t = tid; t < n_sort; t += blockDim.x) {
                const u32 j = t ^ stride;
                if (j > t) {
                    const bool desc = (t & size) == 0;
                    const bool j_first = samp_better(c_val[j], c_idx[j], c_val[t], c_idx[t]);
                    if (j_first == desc) {
                        const float tv = c_val[t];
                        const u32 ti = c_idx[t];
                        c_val[t] = c_val[j];
                        c_idx[t] = c_idx[j];
                        c_val[j] = tv;
                        c_idx[j] = ti;
                    }
                }
            }
            __syncthreads();
        }
    }
}

// The top_k (<= SAMP_MAX_K) best candidates of `row` by (logit desc, index
// asc), NaN excluded, into c_val / c_idx in that order (then -inf up to the
// next power of two); returns how many there are (0: every logit is NaN). The k-th
// largest logit is found by a 3-pass radix select (11 + 11 + 10 bits) over
// order-preserving integer keys, the candidates are gathered in index order
// (ties at the threshold keep the lowest indices) and bitonic-sorted in
// shared memory.
__device__ __forceinline__ u32 samp_select_topk(const float* __restrict__ row, int vocab,
                                                int top_k, float* c_val, u32* c_idx) {
    __shared__ u32 hist[2048];
    __shared__ u32 scan_tmp[32];
    __shared__ u32 s_need, s_found_bin, s_total, s_bin_count;
    __shared__ u32 s_gt, s_eq;
    const int tid = threadIdx.x;

    // Radix select of the k-th largest key: 11, 11 and 10 bits.
    const int shifts[3] = {21, 10, 0};
    const int widths[3] = {11, 11, 10};
    u32 prefix = 0, prefix_mask = 0, need = 0;
    for (int pass = 0; pass < 3; ++pass) {
        const int shift = shifts[pass], bins = 1 << widths[pass];
        for (int b = tid; b < 2048; b += blockDim.x) hist[b] = 0;
        __syncthreads();
        samp_visit(row, vocab, [&](float v, int) {
            if (v != v) return;
            const u32 key = samp_key(v);
            if ((key & prefix_mask) == prefix) atomicAdd(&hist[(key >> shift) & (bins - 1)], 1u);
        });
        __syncthreads();
        if (pass == 0) {
            // Candidates exist only among non-NaN logits.
            const u32 total = samp_block_scan(hist[2 * tid] + hist[2 * tid + 1], scan_tmp);
            if (tid == blockDim.x - 1) s_total = total;
            __syncthreads();
            need = min((u32)top_k, s_total);
            if (need == 0) return 0u;
        }
        // Bins in descending order: thread t holds bins hi = bins-1-2t and
        // hi-1; a running count from the top finds the bin of the need-th.
        const int hi = bins - 1 - 2 * tid;
        const u32 c_hi = hi >= 0 ? hist[hi] : 0u;
        const u32 c_lo = hi >= 1 ? hist[hi - 1] : 0u;
        const u32 incl = samp_block_scan(c_hi + c_lo, scan_tmp);
        const u32 excl = incl - c_hi - c_lo;
        if (hi >= 0 && excl < need && excl + c_hi >= need) {
            s_found_bin = (u32)hi;
            s_need = need - excl;
            s_bin_count = c_hi;
        } else if (hi >= 1 && excl + c_hi < need && incl >= need) {
            s_found_bin = (u32)(hi - 1);
            s_need = need - excl - c_hi;
            s_bin_count = c_lo;
        }
        __syncthreads();
        prefix |= s_found_bin << shift;
        prefix_mask |= (u32)(bins - 1) << shift;
        need = s_need;
        __syncthreads();
    }
    // `prefix` is the k-th largest key; `need` equal keys are taken (lowest
    // indices first), with every larger key.
    const u32 thresh = prefix;
    const u32 k_eff = min((u32)top_k, s_total);
    // After pass 2, s_bin_count is the number of keys equal to the
    // threshold; k_eff - need keys are larger.
    const u32 n_cand = (k_eff - need) + s_bin_count;
    if (tid == 0) {
        s_gt = 0;
        s_eq = 0;
    }
    __syncthreads();
    if (n_cand <= SAMP_CAND) {
        // Fast path: gather all of them in any order; the sort below orders
        // them by (logit desc, index asc), so the first k_eff are the winners.
        samp_visit(row, vocab, [&](float v, int i) {
            if (v != v) return;
            if (samp_key(v) >= thresh) {
                const u32 slot = atomicAdd(&s_gt, 1u);
                c_val[slot] = v;
                c_idx[slot] = (u32)i;
            }
        });
        __syncthreads();
    } else {
        // Many keys tie at the threshold: an ordered pass keeps the lowest
        // indices of those.
        for (int base = 0; base < vocab; base += blockDim.x) {
            const int i = base + tid;
            u32 key = 0;
            bool valid = false;
            if (i < vocab) {
                const float v = row[i];
                valid = v == v;
                key = samp_key(v);
            }
            const u32 is_gt = valid && key > thresh;
            const u32 is_eq = valid && key == thresh;
            // Pack both counts: greater in the low 16 bits, equal in the high.
            const u32 incl = samp_block_scan(is_gt | (is_eq << 16), scan_tmp);
            const u32 gt_before = (incl & 0xffffu) - is_gt;
            const u32 eq_before = (incl >> 16) - is_eq;
            const u32 gt0 = s_gt, eq0 = s_eq;
            if (is_gt) {
                const u32 slot = gt0 + gt_before;
                c_val[slot] = row[i];
                c_idx[slot] = (u32)i;
            } else if (is_eq && eq0 + eq_before < need) {
                const u32 slot = (k_eff - need) + eq0 + eq_before;
                c_val[slot] = row[i];
                c_idx[slot] = (u32)i;
            }
            __syncthreads();
            if (tid == blockDim.x - 1) {
                s_gt = gt0 + (incl & 0xffffu);
                s_eq = eq0 + (incl >> 16);
            }
            __syncthreads();
        }
    }
    const u32 n_sorted = n_cand <= SAMP_CAND ? n_cand : k_eff;
    // The network over the next power of two only (40 candidates: 21 steps
    // of the block instead of 45); entries past it are never read.
    u32 n_sort = 2u;
    while (n_sort < n_sorted) n_sort <<= 1;
    samp_sort_desc(c_val, c_idx, n_sorted, n_sort);
    __syncthreads();
    return k_eff;
}

// ------------------------------------------------------- temperature draw
// One token per row by the CPU sampler's definition (marlin-engine
// sampler/nucleus.rs), bit for bit: candidates (non-NaN logits; with
// 0 < top_k < vocab the top_k best by (logit desc, index asc), the rank
// order), weights w = exp((logit - max) * inv_t) by the same polynomial
// with every product and sum rounded on its own (no FMA contraction, as the
// host computes them), in fixed point trunc(w * 2^30) so that every sum is
// an exact integer; min-p drops w < min_p; top-p keeps the shortest
// rank-order prefix whose weight reaches trunc(top_p * Z) (Z: every
// candidate's weight); then the first kept candidate in index order whose
// running weight exceeds trunc(u * kept weight).
// Without top-k the rank-order cut is a radix select by weight over the
// logits' order-preserving keys (11 + 11 + 10 bits; ties at the last key
// taken lowest index first), and the draw a pass over the row in index
// order, a block scan per tile of 4096 tokens. With top-k (<= SAMP_MAX_K)
// the candidates are selected by count and sorted, as samp_argmax's order.

#define SAMP_FX_ONE 1073741824.0f  // 2^30
typedef unsigned long long u64;

// exp(x) for x <= 0, as the host's exp_nonpositive: 0 below -87, for -inf
// and NaN.
__device__ __forceinline__ float samp_exp_np(float x) {
    const float xc = fminf(fmaxf(x, -87.0f), 0.0f);
    const float t = __fadd_rn(__fmul_rn(xc, 1.44269504088896340736f), 12582912.0f);
    const float n = __fsub_rn(t, 12582912.0f);
    const float r = __fsub_rn(__fsub_rn(xc, __fmul_rn(n, 0.6933594f)), __fmul_rn(n, -2.1219444e-4f));
    float p = 1.9875691e-4f;
    p = __fadd_rn(__fmul_rn(p, r), 1.3981999e-3f);
    p = __fadd_rn(__fmul_rn(p, r), 8.333452e-3f);
    p = __fadd_rn(__fmul_rn(p, r), 4.1665796e-2f);
    p = __fadd_rn(__fmul_rn(p, r), 1.6666665e-1f);
    p = __fadd_rn(__fmul_rn(p, r), 0.5f);
    const float y = __fadd_rn(__fadd_rn(__fmul_rn(__fmul_rn(p, r), r), r), 1.0f);
    const float scale = __uint_as_float((__float_as_uint(t) + 127u) << 23);
    return x >= -87.0f ? __fmul_rn(y, scale) : 0.0f;
}

__device__ __forceinline__ float samp_weight(float logit, float mx, float inv_t) {
    return samp_exp_np(__fmul_rn(__fsub_rn(logit, mx), inv_t));
}

// trunc(w * 2^30), w in [0, 1] (NaN -> 0), as the host's fx.
__device__ __forceinline__ u64 samp_fx(float w) {
    const float s = fminf(fmaxf(__fmul_rn(w, SAMP_FX_ONE), 0.0f), SAMP_FX_ONE);
    return (u64)(int)s;
}

// trunc(a * b) in double (IEEE, as the host's f64).
__device__ __forceinline__ u64 samp_fx_scale(float a, u64 b) {
    return (u64)__dmul_rn((double)a, __ull2double_rn(b));
}

// Block sum of u64 (every thread gets it).
__device__ __forceinline__ u64 samp_block_sum64(u64 v, u64* tmp) {
    const u64 incl = samp_block_scan(v, tmp);
    __shared__ u64 s_total;
    if (threadIdx.x == blockDim.x - 1) s_total = incl;
    __syncthreads();
    const u64 t = s_total;
    __syncthreads();
    return t;
}

// Block max of floats, NaN ignored (-inf when all are).
__device__ __forceinline__ float samp_block_max(float v, float* tmp) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
#pragma unroll
    for (int off = 16; off > 0; off >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, off));
    __syncthreads();
    if (lane == 0) tmp[warp] = v;
    __syncthreads();
    float m = tmp[0];
    for (int w = 1; w < (int)(blockDim.x >> 5); ++w) m = fmaxf(m, tmp[w]);
    __syncthreads();
    return m;
}

// The first index in [begin, end) of row whose running kept weight (in
// index order, from begin) exceeds r; `kept(i, v, w)` says whether token i
// of logit v and weight w is kept. Tiles of 4 tokens per thread (4096 at
// the single-row kernels' 1024 threads), 4 consecutive per thread, a block
// scan each.
template <class K>
__device__ __forceinline__ u32 samp_draw_in_index_order(const float* __restrict__ row, int begin,
                                                        int end, float mx, float inv_t, u64 r,
                                                        K kept, u64* tmp) {
    __shared__ u32 s_pick;
    __shared__ u64 s_run;
    if (threadIdx.x == 0) {
        s_pick = SAMP_NO_TOKEN;
        s_run = 0ull;
    }
    __syncthreads();
    const int tile = 4 * (int)blockDim.x;
    for (int base = begin; base < end; base += tile) {
        const int i0 = base + 4 * threadIdx.x;
        u64 f[4];
        u64 mine = 0ull;
#pragma unroll
        for (int j = 0; j < 4; ++j) {
            const int i = i0 + j;
            f[j] = 0ull;
            if (i < end) {
                const float w = samp_weight(row[i], mx, inv_t);
                if (kept(i, row[i], w)) f[j] = samp_fx(w);
            }
            mine += f[j];
        }
        const u64 incl = samp_block_scan(mine, tmp);
        const u64 run = s_run;
        const u64 excl = run + incl - mine;
        if (excl <= r && r < run + incl) {
            // This thread's tokens hold the crossing (one thread's interval
            // [excl, run + incl) contains r).
            u64 acc = excl;
            u32 pick = SAMP_NO_TOKEN;
#pragma unroll
            for (int j = 0; j < 4; ++j) {
                acc += f[j];
                if (acc > r && pick == SAMP_NO_TOKEN) pick = (u32)(i0 + j);
            }
            s_pick = pick;
        }
        __syncthreads();
        if (threadIdx.x == blockDim.x - 1) s_run = run + incl;
        __syncthreads();
        if (s_pick != SAMP_NO_TOKEN) break;
    }
    const u32 pick = s_pick;
    __syncthreads();
    return pick;
}

#define SAMP_LIN_BINS 2048  // = 2 * SAMP_THREADS (two per thread in scans)
#define SAMP_LIN_CAND 2048  // tokens of one bin sorted in shared memory
// ln(2^30) (a weight below e^-SPAN is below 2^-30), rounded up.
#define SAMP_SPAN 20.8f

// A token's linear bin by (max - logit) / T in [0, SAMP_SPAN): monotone in
// the logit (each step rounds monotonically), the last bin taking the rest.
__device__ __forceinline__ u32 samp_lin_bin(float v, float mx, float inv_t) {
    const float d = __fmul_rn(__fsub_rn(mx, v), inv_t);
    const float b = __fmul_rn(d, (float)SAMP_LIN_BINS / SAMP_SPAN);
    return b < (float)(SAMP_LIN_BINS - 1) ? (u32)b : (u32)(SAMP_LIN_BINS - 1);
}

// The draw without top-k: every non-NaN logit is a candidate.
__device__ __forceinline__ u32 samp_draw_dense(const float* __restrict__ row, int vocab,
                                               float inv_t, float top_p, float min_p, float u) {
    __shared__ float s_fmax[32];
    __shared__ u64 s_tmp[32];
    __shared__ u64 s_mass[2048];
    __shared__ u32 s_count[2048];
    __shared__ u32 s_bin, s_count_eq, s_id_cut;
    __shared__ u64 s_need;
    const int tid = threadIdx.x;
    float mx = __int_as_float(0xff800000);
    samp_visit(row, vocab, [&](float v, int) { mx = fmaxf(mx, v); });
    mx = samp_block_max(mx, s_fmax);
    if (!(mx > __int_as_float(0xff800000) && mx < __int_as_float(0x7f800000))) return SAMP_NO_TOKEN;
    const bool use_min_p = min_p > 0.0f;
    auto kept0 = [&](float w) { return samp_fx(w) > 0ull && !(use_min_p && w < min_p); };
    u64 z = 0ull, kz = 0ull;
    samp_visit(row, vocab, [&](float v, int) {
        const float w = samp_weight(v, mx, inv_t);
        const u64 f = samp_fx(w);
        z += f;
        if (kept0(w)) kz += f;
    });
    z = samp_block_sum64(z, s_tmp);
    kz = samp_block_sum64(kz, s_tmp);
    // A target of 0 keeps the first candidate, as one of 1 does.
    const u64 target = max(samp_fx_scale(top_p, z), 1ull);
    if (top_p >= 1.0f || kz < target) {
        const u64 r = samp_fx_scale(u, kz);
        return samp_draw_in_index_order(
            row, 0, vocab, mx, inv_t, r, [&](int, float, float w) { return kept0(w); }, s_tmp);
    }
    // The cut by distance from the best logit: kept tokens lie within
    // SAMP_SPAN of it in (max - logit) / T (below, a weight is under 2^-30
    // and weighs nothing), which SAMP_LIN_BINS linear bins split evenly
    // (monotone: a larger logit never falls in a later bin; equal logits
    // share one). Spread this way, the bins' shared atomics rarely collide,
    // where the float keys' top bits put most tokens in a few bins. The bin
    // where the running weight reaches the target is then ordered exactly
    // (its tokens gathered and sorted by (logit desc, index asc)) when it
    // holds at most SAMP_LIN_CAND of them; else the radix select below.
    {
        for (int b = tid; b < SAMP_LIN_BINS; b += blockDim.x) {
            s_mass[b] = 0ull;
            s_count[b] = 0u;
        }
        __syncthreads();
        samp_visit(row, vocab, [&](float v, int) {
            const float w = samp_weight(v, mx, inv_t);
            if (!kept0(w)) return;
            const u32 b = samp_lin_bin(v, mx, inv_t);
            atomicAdd(&s_mass[b], samp_fx(w));
            atomicAdd(&s_count[b], 1u);
        });
        __syncthreads();
        // Bins in ascending order (descending logits): thread t holds 2t
        // and 2t + 1.
        const u64 m0 = s_mass[2 * tid], m1 = s_mass[2 * tid + 1];
        const u64 incl = samp_block_scan(m0 + m1, s_tmp);
        const u64 excl = incl - m0 - m1;
        if (excl < target && excl + m0 >= target) {
            s_bin = 2u * tid;
            s_need = target - excl;
            s_count_eq = s_count[2 * tid];
        } else if (excl + m0 < target && incl >= target) {
            s_bin = 2u * tid + 1u;
            s_need = target - excl - m0;
            s_count_eq = s_count[2 * tid + 1];
        }
        __syncthreads();
        const u32 cut_bin = s_bin, n_bin = s_count_eq;
        const u64 need = s_need;
        __syncthreads();
        if (n_bin <= SAMP_LIN_CAND) {
            // The bin's tokens into the (now free) bin arrays' memory.
            float* c_val = reinterpret_cast<float*>(s_mass);
            u32* c_idx = reinterpret_cast<u32*>(s_mass) + SAMP_LIN_CAND;
            __shared__ u32 s_slot;
            if (tid == 0) s_slot = 0u;
            __syncthreads();
            samp_visit(row, vocab, [&](float v, int i) {
                if (samp_lin_bin(v, mx, inv_t) != cut_bin) return;
                if (!kept0(samp_weight(v, mx, inv_t))) return;
                const u32 slot = atomicAdd(&s_slot, 1u);
                c_val[slot] = v;
                c_idx[slot] = (u32)i;
            });
            __syncthreads();
            u32 n_sort = 1u;
            while (n_sort < n_bin) n_sort <<= 1;
            samp_sort_desc(c_val, c_idx, n_bin, n_sort);
            // The first sorted token whose running weight reaches `need`:
            // thread t scans positions 2t and 2t + 1.
            const u32 p0 = 2u * tid, p1 = p0 + 1u;
            const u64 f0 = p0 < n_bin ? samp_fx(samp_weight(c_val[p0], mx, inv_t)) : 0ull;
            const u64 f1 = p1 < n_bin ? samp_fx(samp_weight(c_val[p1], mx, inv_t)) : 0ull;
            const u64 pin = samp_block_scan(f0 + f1, s_tmp);
            const u64 pex = pin - f0 - f1;
            __shared__ u32 s_cut_pos;
            if (tid == 0) s_cut_pos = n_bin - 1u;
            __syncthreads();
            if (p0 < n_bin && pex < need && pex + f0 >= need) s_cut_pos = p0;
            else if (p1 < n_bin && pex + f0 < need && pin >= need) s_cut_pos = p1;
            __syncthreads();
            const u32 cut_pos = s_cut_pos;
            const float cut_val = c_val[cut_pos];
            const u32 cut_idx = c_idx[cut_pos];
            // Kept weight: the bins before the cut's and the bin's tokens
            // through the cut.
            const u64 in_bin =
                (cut_pos >= p0 && p0 < n_bin ? f0 : 0ull) + (cut_pos >= p1 && p1 < n_bin ? f1 : 0ull);
            const u64 kept_total = target - need + samp_block_sum64(in_bin, s_tmp);
            const u64 r = samp_fx_scale(u, kept_total);
            return samp_draw_in_index_order(
                row, 0, vocab, mx, inv_t, r,
                [&](int i, float v, float w) {
                    if (!kept0(w)) return false;
                    const u32 b = samp_lin_bin(v, mx, inv_t);
                    return b < cut_bin ||
                           (b == cut_bin && !samp_better(cut_val, cut_idx, v, (u32)i));
                },
                s_tmp);
        }
    }
    // Radix select by weight from the largest key down: the key K where the
    // running weight reaches the target, and what is still needed there.
    u64 need = target;
    const int shifts[3] = {21, 10, 0};
    const int widths[3] = {11, 11, 10};
    u32 prefix = 0, prefix_mask = 0;
    for (int pass = 0; pass < 3; ++pass) {
        const int shift = shifts[pass], bins = 1 << widths[pass];
        for (int b = tid; b < 2048; b += blockDim.x) {
            s_mass[b] = 0ull;
            s_count[b] = 0u;
        }
        __syncthreads();
        samp_visit(row, vocab, [&](float v, int) {
            if (v != v) return;
            const u32 key = samp_key(v);
            if ((key & prefix_mask) != prefix) return;
            const float w = samp_weight(v, mx, inv_t);
            if (!kept0(w)) return;
            const u32 b = (key >> shift) & (u32)(bins - 1);
            atomicAdd(&s_mass[b], samp_fx(w));
            atomicAdd(&s_count[b], 1u);
        });
        __syncthreads();
        // Thread t holds bins hi = bins-1-2t and hi-1, from the top.
        const int hi = bins - 1 - 2 * tid;
        const u64 m_hi = hi >= 0 ? s_mass[hi] : 0ull;
        const u64 m_lo = hi >= 1 ? s_mass[hi - 1] : 0ull;
        const u64 incl = samp_block_scan(m_hi + m_lo, s_tmp);
        const u64 excl = incl - m_hi - m_lo;
        if (hi >= 0 && excl < need && excl + m_hi >= need) {
            s_bin = (u32)hi;
            s_need = need - excl;
            s_count_eq = s_count[hi];
        } else if (hi >= 1 && excl + m_hi < need && incl >= need) {
            s_bin = (u32)(hi - 1);
            s_need = need - excl - m_hi;
            s_count_eq = s_count[hi - 1];
        }
        __syncthreads();
        prefix |= s_bin << shift;
        prefix_mask |= (u32)(bins - 1) << shift;
        need = s_need;
        __syncthreads();
    }
    // Every kept token above key K, and the first c of those at K (equal
    // logits, equal weights) in index order.
    const u32 key_k = prefix;
    const u32 count_eq = s_count_eq;
    const float logit_k =
        __uint_as_float((key_k & 0x80000000u) ? (key_k & 0x7fffffffu) : ~key_k);
    const u64 wk = samp_fx(samp_weight(logit_k, mx, inv_t));
    const u64 c = (need + wk - 1ull) / wk;
    const u64 kept_total = target - need + c * wk;
    u32 id_cut = 0xffffffffu;
    if (c < (u64)count_eq) {
        // The c-th kept token at key K in index order.
        if (tid == 0) {
            s_id_cut = 0xffffffffu;
            s_need = 0ull;  // ties counted so far
        }
        __syncthreads();
        for (int base = 0; base < vocab; base += SAMP_THREADS) {
            const int i = base + tid;
            u32 is_eq = 0u;
            if (i < vocab) {
                const float v = row[i];
                is_eq = v == v && samp_key(v) == key_k && kept0(samp_weight(v, mx, inv_t));
            }
            const u64 incl = samp_block_scan((u64)is_eq, s_tmp);
            const u64 before = s_need;
            if (is_eq && before + incl == c) s_id_cut = (u32)i;
            __syncthreads();
            if (tid == blockDim.x - 1) s_need = before + incl;
            __syncthreads();
            if (s_id_cut != 0xffffffffu) break;
        }
        id_cut = s_id_cut;
        __syncthreads();
    }
    const u64 r = samp_fx_scale(u, kept_total);
    return samp_draw_in_index_order(
        row, 0, vocab, mx, inv_t, r,
        [&](int i, float v, float w) {
            if (!kept0(w)) return false;
            const u32 key = samp_key(v);
            return key > key_k || (key == key_k && (u32)i <= id_cut);
        },
        s_tmp);
}

// The draw with 0 < top_k < vocab (top_k <= SAMP_MAX_K).
// The draw's end with top-k: c_val / c_idx hold the k best candidates
// (logits and token ids) in rank order, as samp_select_topk leaves them.
__device__ __forceinline__ u32 samp_draw_topk_finish(const float* c_val, const u32* c_idx, u32 k,
                                                     float inv_t, float top_p, float min_p,
                                                     float u) {
    __shared__ u64 s_kfx[SAMP_CAND];
    __shared__ u64 s_tmp[32];
    __shared__ u32 s_cut, s_pick;
    if (k == 0u) return SAMP_NO_TOKEN;
    const float mx = c_val[0];
    if (!(mx > __int_as_float(0xff800000) && mx < __int_as_float(0x7f800000))) return SAMP_NO_TOKEN;
    const u32 j = threadIdx.x;
    u64 f = 0ull;
    bool kept = false;
    if (j < k) {
        const float w = samp_weight(c_val[j], mx, inv_t);
        f = samp_fx(w);
        kept = f > 0ull && w >= min_p;
    }
    const u64 z = samp_block_sum64(f, s_tmp);
    if (j == 0) {
        s_cut = SAMP_NO_TOKEN;
        s_pick = SAMP_NO_TOKEN;
    }
    if (top_p < 1.0f) {
        // The candidates are in rank order: the first kept one whose running
        // weight reaches the target ends the prefix.
        const u64 target = max(samp_fx_scale(top_p, z), 1ull);
        const u64 kf = kept ? f : 0ull;
        const u64 incl = samp_block_scan(kf, s_tmp);
        if (kept && incl >= target && incl - kf < target) s_cut = j;
        __syncthreads();
        if (s_cut != SAMP_NO_TOKEN) kept = kept && j <= s_cut;
    }
    if (j < SAMP_CAND) s_kfx[j] = kept ? f : 0ull;
    const u64 total = samp_block_sum64(kept ? f : 0ull, s_tmp);
    const u64 r = samp_fx_scale(u, total);
    if (kept) {
        // Index order: the kept weight of every candidate of a lower index.
        u64 before = 0ull;
        for (u32 m = 0; m < k; ++m)
            if (c_idx[m] < c_idx[j]) before += s_kfx[m];
        if (before <= r && r < before + f) s_pick = c_idx[j];
    }
    __syncthreads();
    const u32 pick = s_pick;
    __syncthreads();
    return pick;
}

__device__ __forceinline__ u32 samp_draw_topk(const float* __restrict__ row, int vocab, int top_k,
                                              float inv_t, float top_p, float min_p, float u) {
    __shared__ float c_val[SAMP_CAND];
    __shared__ u32 c_idx[SAMP_CAND];
    const u32 k = samp_select_topk(row, vocab, top_k, c_val, c_idx);
    return samp_draw_topk_finish(c_val, c_idx, k, inv_t, top_p, min_p, u);
}

// One row's token: mode 0 the argmax, 1 the draw, 2 none (the row's
// logits go back to the host instead).
__device__ __forceinline__ void samp_row(const float* __restrict__ row, int vocab, u32 mode,
                                         float inv_t, int top_k, float top_p, float min_p, float u,
                                         u32* __restrict__ out) {
    u32 pick;
    if (mode == 2u) {
        pick = SAMP_NO_TOKEN;
    } else if (mode == 0u) {
        pick = samp_argmax_row(row, vocab);
    } else if (top_k > 0 && top_k < vocab) {
        pick = samp_draw_topk(row, vocab, top_k, inv_t, top_p, min_p, u);
    } else {
        pick = samp_draw_dense(row, vocab, inv_t, top_p, min_p, u);
    }
    if (threadIdx.x == 0) *out = pick;
}

// Every row drawn with the same parameters and its own uniform.
extern "C" __global__ void __launch_bounds__(SAMP_THREADS)
    samp_draw(const float* __restrict__ logits, const float* __restrict__ uniforms,
              u32* __restrict__ out, int vocab, int top_k, float inv_t, float top_p,
              float min_p) {
    const float* row = logits + (long long)blockIdx.x * vocab;
    samp_row(row, vocab, 1u, inv_t, top_k, top_p, min_p, uniforms[blockIdx.x], out + blockIdx.x);
}

// Each row with its own parameters: SAMP_PARAM_WORDS u32 per row (mode,
// inv_t bits, top_k, top_p bits, min_p bits, u bits, 2 unused).
#define SAMP_PARAM_WORDS 8
extern "C" __global__ void __launch_bounds__(SAMP_THREADS)
    samp_draw_rows(const float* __restrict__ logits, const u32* __restrict__ params,
                   u32* __restrict__ out, int vocab) {
    const float* row = logits + (long long)blockIdx.x * vocab;
    const u32* p = params + (long long)blockIdx.x * SAMP_PARAM_WORDS;
    samp_row(row, vocab, p[0], __uint_as_float(p[1]), (int)p[2], __uint_as_float(p[3]),
             __uint_as_float(p[4]), __uint_as_float(p[5]), out + blockIdx.x);
}

// ------------------------------------------------------- split argmax
// samp_argmax's result with many blocks per row (src/ops/sampling.rs,
// argmax_rows_ws): one block of one SM streams a 128k-entry row at a
// single SM's L2 bandwidth (~12 us at batch 1), a grid of `gridDim.x`
// blocks per row (blockIdx.y = row) in ~1 round trip. Each element's
// (value, index) is packed into a u64 key whose unsigned order is the
// argmax order: order-preserving bits of the value (-0 taken as +0, which
// compares equal to it) above ~index (lower index wins a tie); NaN has no
// key and every other value's key is > 0. Each block folds its chunk to
// one key, atomicMax-es it into best[row] and takes a ticket; the last
// block of the row writes the token (or SAMP_NO_TOKEN when no key came)
// and leaves best[row] and tickets[row] zero for the next launch.
// Launched with programmatic dependent launch (ops/launch.rs): trigger
// first, wait before reading the logits.
#define SAMP_SPLIT_THREADS 256
#define SAMP_SPLIT_UNROLL 8

__device__ __forceinline__ unsigned long long samp_key(float v, u32 i) {
    u32 b = __float_as_uint(v);
    if ((b << 1) == 0u) b = 0u;  // -0 -> +0
    const u32 ord = (b & 0x80000000u) ? ~b : (b | 0x80000000u);
    return ((unsigned long long)ord << 32) | (unsigned long long)(0xffffffffu - i);
}

// f16 bits -> f32 (exact), as marlin_common.cuh's f16_to_f32.
__device__ __forceinline__ float samp_f16_to_f32(unsigned short h) {
    float r;
    asm("cvt.f32.f16 %0, %1;" : "=f"(r) : "h"(h));
    return r;
}

// The split argmax over f32 logits (F16_IN false), or over an f16 LM
// head's output (F16_IN true), which it also converts into the f32
// `logits` (soft-capped when cap > 0, the same arithmetic as ops.cu's
// mops_logits_from_f16): one launch instead of a conversion and an
// argmax (a PDL boundary per step).
template <bool F16_IN>
__device__ __forceinline__ void samp_argmax_split_impl(const void* __restrict__ in,
                                                       float* __restrict__ logits, float cap,
                                                       u32* __restrict__ out, int vocab, int chunk,
                                                       unsigned long long* __restrict__ best,
                                                       u32* __restrict__ tickets) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
    asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
    __shared__ unsigned long long s_key[SAMP_SPLIT_THREADS / 32];
    const int row = blockIdx.y;
    const long long row_base = (long long)row * vocab;
    const float* r = static_cast<const float*>(in) + row_base;
    const unsigned short* r16 = static_cast<const unsigned short*>(in) + row_base;
    float* lo = logits + row_base;
    const float inv_cap = cap > 0.0f ? 1.0f / cap : 0.0f;
    const int begin = blockIdx.x * chunk;
    const int end = min(vocab, begin + chunk);
    unsigned long long key = 0ull;
    for (int i0 = begin + threadIdx.x; i0 < end; i0 += SAMP_SPLIT_THREADS * SAMP_SPLIT_UNROLL) {
        float v[SAMP_SPLIT_UNROLL];
#pragma unroll
        for (int u = 0; u < SAMP_SPLIT_UNROLL; ++u) {
            const int i = i0 + u * SAMP_SPLIT_THREADS;
            if (F16_IN) {
                v[u] = i < end ? samp_f16_to_f32(r16[i]) : __int_as_float(0x7fc00000);
            } else {
                v[u] = i < end ? r[i] : __int_as_float(0x7fc00000);  // NaN: no key
            }
        }
        if (F16_IN) {
#pragma unroll
            for (int u = 0; u < SAMP_SPLIT_UNROLL; ++u) {
                const int i = i0 + u * SAMP_SPLIT_THREADS;
                if (i < end) {
                    if (cap > 0.0f)
                        v[u] = cap * (1.0f - 2.0f / (expf(2.0f * v[u] * inv_cap) + 1.0f));
                    lo[i] = v[u];
                }
            }
        }
#pragma unroll
        for (int u = 0; u < SAMP_SPLIT_UNROLL; ++u) {
            if (v[u] == v[u]) {
                const unsigned long long k = samp_key(v[u], (u32)(i0 + u * SAMP_SPLIT_THREADS));
                key = k > key ? k : key;
            }
        }
    }
#pragma unroll
    for (int off = 16; off > 0; off >>= 1) {
        const unsigned long long o = __shfl_xor_sync(0xffffffffu, key, off);
        key = o > key ? o : key;
    }
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    if (lane == 0) s_key[warp] = key;
    __syncthreads();
    if (threadIdx.x == 0) {
        for (int w = 1; w < SAMP_SPLIT_THREADS / 32; ++w) key = s_key[w] > key ? s_key[w] : key;
        if (key != 0ull) atomicMax(best + row, key);
        __threadfence();  // the key is in before the ticket
        if (atomicAdd(tickets + row, 1u) == gridDim.x - 1) {
            __threadfence();
            const unsigned long long k = atomicExch(best + row, 0ull);
            tickets[row] = 0u;
            out[row] = k == 0ull ? SAMP_NO_TOKEN : 0xffffffffu - (u32)(k & 0xffffffffull);
        }
    }
}

extern "C" __global__ void __launch_bounds__(SAMP_SPLIT_THREADS)
    samp_argmax_split(const float* __restrict__ logits, u32* __restrict__ out, int vocab,
                      int chunk, unsigned long long* __restrict__ best,
                      u32* __restrict__ tickets) {
    samp_argmax_split_impl<false>(logits, nullptr, 0.0f, out, vocab, chunk, best, tickets);
}

// `x` (rows, vocab) f16 -> f32 `logits` (soft-capped when cap > 0) and
// the argmax of each row.
extern "C" __global__ void __launch_bounds__(SAMP_SPLIT_THREADS)
    samp_argmax_split_f16(const unsigned short* __restrict__ x, float* __restrict__ logits,
                          float cap, u32* __restrict__ out, int vocab, int chunk,
                          unsigned long long* __restrict__ best, u32* __restrict__ tickets) {
    samp_argmax_split_impl<true>(x, logits, cap, out, vocab, chunk, best, tickets);
}

// ------------------------------------------------------- split draw
// The split draws' entries with one parameter set for every row all start
// (logits, uniforms, out, vocab, chunk, top_k, inv_t, top_p, min_p), and
// those with each row's words (logits, params, out, vocab, chunk), so
// that the host pushes them one way (src/ops/sampling.rs push_draw_args).
// The dense draw without a top-p cut (top-k off, top-p 1: the OpenAI
// default, with or without min-p) with many blocks per row, after
// samp_argmax_split has written each row's argmax to `out` (its logit is
// the row's max, NaN ignored; the single-row kernel reads a row three
// times from one SM: 83-167 us at 262k tokens, change 84). The CPU
// sampler's definition holds exactly: every sum is of fixed-point integer
// weights, so the blocks' partial sums add up to the single-row kernel's
// in any order. Each block of a row (blockIdx.y) sums the kept weights of
// its chunk, stores the sum and takes a ticket; the last block of the row
// finds r = trunc(u * total), the chunk whose running sum (in block
// order) crosses it, and the token inside that chunk by the index-order
// scan, writes it and resets the ticket (tickets are samp_argmax_split's:
// zero between launches). Launched with programmatic dependent launch:
// trigger first, wait before reading anything.

// The chunk of [0, n_blocks) whose running value (block order) crosses r,
// and r minus the values before it (every thread gets both); `value(b)`.
template <class V>
__device__ __forceinline__ u32 samp_crossing_block(int n_blocks, u64 r, V value, u64& r_in,
                                                   u64* tmp) {
    __shared__ u32 s_block;
    __shared__ u64 s_rc;
    if (threadIdx.x == 0) s_block = SAMP_NO_TOKEN;
    u64 run = 0ull;
    for (int b0 = 0; b0 < n_blocks; b0 += blockDim.x) {
        const int b = b0 + threadIdx.x;
        const u64 v = b < n_blocks ? value(b) : 0ull;
        const u64 incl = samp_block_scan(v, tmp);
        const u64 excl = run + incl - v;
        if (excl <= r && r < excl + v) {
            s_block = (u32)b;
            s_rc = r - excl;
        }
        run += samp_block_sum64(v, tmp);  // ends with a barrier: s_block is in
        if (s_block != SAMP_NO_TOKEN) break;
    }
    const u32 c = s_block;
    r_in = s_rc;
    __syncthreads();
    return c;
}

// Whether row parameters (SAMP_PARAM_WORDS) take the split draw: a draw
// (mode 1) with top-k off and no top-p cut.
__device__ __forceinline__ bool samp_split_draw_row(const u32* __restrict__ p) {
    return p[0] == 1u && p[2] == 0u && __uint_as_float(p[3]) >= 1.0f;
}

template <bool EACH>
__device__ __forceinline__ void samp_draw_split_impl(const float* __restrict__ logits,
                                                     const float* __restrict__ uniforms,
                                                     const u32* __restrict__ params,
                                                     u32* __restrict__ out, int vocab, int chunk,
                                                     float inv_t, float min_p,
                                                     u64* __restrict__ sums,
                                                     u32* __restrict__ tickets) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
    asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
    __shared__ u64 s_tmp[32];
    __shared__ u32 s_last;
    const int row = blockIdx.y;
    float u;
    if (EACH) {
        // Rows of other choices: every block of the row leaves (no ticket).
        const u32* p = params + (long long)row * SAMP_PARAM_WORDS;
        if (!samp_split_draw_row(p)) return;
        inv_t = __uint_as_float(p[1]);
        min_p = __uint_as_float(p[4]);
        u = __uint_as_float(p[5]);
    } else {
        u = uniforms[row];
    }
    // Every block reads the argmax before it takes its ticket, so before
    // the last block overwrites it.
    const u32 best = out[row];
    if (best == SAMP_NO_TOKEN) return;  // every logit NaN: no token, as written
    const float* r = logits + (long long)row * vocab;
    const float mx = r[best];
    if (!(mx > __int_as_float(0xff800000) && mx < __int_as_float(0x7f800000))) {
        // As samp_draw_dense: no token (every block sees the same max).
        if (blockIdx.x == 0 && threadIdx.x == 0) out[row] = SAMP_NO_TOKEN;
        return;
    }
    const bool use_min_p = min_p > 0.0f;
    auto kept = [&](float w) { return samp_fx(w) > 0ull && !(use_min_p && w < min_p); };
    const int begin = blockIdx.x * chunk;
    const int end = min(vocab, begin + chunk);
    u64 kz = 0ull;
    for (int i0 = begin + threadIdx.x; i0 < end; i0 += SAMP_SPLIT_THREADS * SAMP_SPLIT_UNROLL) {
        float v[SAMP_SPLIT_UNROLL];
#pragma unroll
        for (int j = 0; j < SAMP_SPLIT_UNROLL; ++j) {
            const int i = i0 + j * SAMP_SPLIT_THREADS;
            v[j] = i < end ? r[i] : __int_as_float(0x7fc00000);  // NaN weighs 0
        }
#pragma unroll
        for (int j = 0; j < SAMP_SPLIT_UNROLL; ++j) {
            const float w = samp_weight(v[j], mx, inv_t);
            if (kept(w)) kz += samp_fx(w);
        }
    }
    kz = samp_block_sum64(kz, s_tmp);
    const int n_blocks = gridDim.x;
    u64* row_sums = sums + (long long)row * n_blocks;
    if (threadIdx.x == 0) {
        row_sums[blockIdx.x] = kz;
        __threadfence();  // the sum is in before the ticket
        s_last = atomicAdd(tickets + row, 1u) == (u32)(n_blocks - 1) ? 1u : 0u;
    }
    __syncthreads();
    if (!s_last) return;
    __threadfence();
    // The last block: the total, then the crossing chunk in block order.
    u64 mine = 0ull;
    for (int b = threadIdx.x; b < n_blocks; b += blockDim.x) mine += __ldcg(row_sums + b);
    const u64 total = samp_block_sum64(mine, s_tmp);
    u64 rc = 0ull;
    const u32 c = samp_crossing_block(
        n_blocks, samp_fx_scale(u, total), [&](int b) { return __ldcg(row_sums + b); }, rc, s_tmp);
    u32 pick = SAMP_NO_TOKEN;
    if (c != SAMP_NO_TOKEN) {
        const int c_begin = (int)c * chunk;
        pick = samp_draw_in_index_order(
            r, c_begin, min(vocab, c_begin + chunk), mx, inv_t, rc,
            [&](int, float, float w) { return kept(w); }, s_tmp);
    }
    if (threadIdx.x == 0) {
        out[row] = pick;
        tickets[row] = 0u;  // ready for the next launch
    }
}

// Every row drawn with the same parameters (top-k off, top-p 1) and its
// own uniform.
extern "C" __global__ void __launch_bounds__(SAMP_SPLIT_THREADS)
    samp_draw_split(const float* __restrict__ logits, const float* __restrict__ uniforms,
                    u32* __restrict__ out, int vocab, int chunk, int /* top_k: 0 */, float inv_t,
                    float /* top_p: 1 */, float min_p, u64* __restrict__ sums,
                    u32* __restrict__ tickets) {
    samp_draw_split_impl<false>(logits, uniforms, nullptr, out, vocab, chunk, inv_t, min_p, sums,
                                tickets);
}

// Each row by its own parameters: the rows samp_split_draw_row takes; the
// others are left to samp_draw_rows_rest.
extern "C" __global__ void __launch_bounds__(SAMP_SPLIT_THREADS)
    samp_draw_split_rows(const float* __restrict__ logits, const u32* __restrict__ params,
                         u32* __restrict__ out, int vocab, int chunk, u64* __restrict__ sums,
                         u32* __restrict__ tickets) {
    samp_draw_split_impl<true>(logits, nullptr, params, out, vocab, chunk, 0.0f, 0.0f, sums,
                               tickets);
}

// ------------------------------------------------------- split top-k draw
// The draw with 0 < top_k < vocab (top-p and min-p allowed: llama.cpp's
// defaults, the engine's) with many blocks per row: each block selects its
// chunk's top_k by samp_select_topk (1024 threads) and stores them in rank
// order at row list position b * top_k (NaN past the chunk's candidates),
// then takes a ticket; the last block of the row selects the top_k of the
// list the same way and finishes the draw as the single-row kernel. Any
// token of the row's top_k is in its chunk's top_k, and in the list equal
// logits stand in token order (rank order inside a chunk, chunks in
// order), so the list's ties at the threshold keep the lowest token ids,
// as the row's do: the same candidates in the same order, the same token.
// Tickets are samp_argmax_split's (zero between launches).

// Whether row parameters take the split top-k draw.
__device__ __forceinline__ bool samp_split_topk_row(const u32* __restrict__ p, int vocab) {
    return p[0] == 1u && p[2] > 0u && p[2] < (u32)vocab && p[2] <= (u32)SAMP_MAX_K;
}

template <bool EACH>
__device__ __forceinline__ void samp_topk_split_impl(
    const float* __restrict__ logits, const float* __restrict__ uniforms,
    const u32* __restrict__ params, u32* __restrict__ out, int vocab, int chunk, int top_k,
    float inv_t, float top_p, float min_p, float* __restrict__ cand_val,
    u32* __restrict__ cand_idx, u32* __restrict__ tickets) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
    asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
    __shared__ float c_val[SAMP_CAND];
    __shared__ u32 c_idx[SAMP_CAND];
    __shared__ u32 s_last;
    const int row = blockIdx.y;
    float u;
    if (EACH) {
        const u32* p = params + (long long)row * SAMP_PARAM_WORDS;
        if (!samp_split_topk_row(p, vocab)) return;
        inv_t = __uint_as_float(p[1]);
        top_k = (int)p[2];
        top_p = __uint_as_float(p[3]);
        min_p = __uint_as_float(p[4]);
        u = __uint_as_float(p[5]);
    } else {
        u = uniforms[row];
    }
    const int n_blocks = gridDim.x;
    const int begin = blockIdx.x * chunk;
    const int end = min(vocab, begin + chunk);
    const float* r = logits + (long long)row * vocab;
    const long long list0 = (long long)row * n_blocks * top_k;
    const u32 n = samp_select_topk(r + begin, end - begin, top_k, c_val, c_idx);
    const long long at = list0 + (long long)blockIdx.x * top_k;
    for (int j = threadIdx.x; j < top_k; j += blockDim.x) {
        cand_val[at + j] = (u32)j < n ? c_val[j] : __int_as_float(0x7fc00000);
        cand_idx[at + j] = (u32)j < n ? (u32)begin + c_idx[j] : SAMP_NO_TOKEN;
    }
    __syncthreads();
    if (threadIdx.x == 0) {
        __threadfence();  // the candidates are in before the ticket
        s_last = atomicAdd(tickets + row, 1u) == (u32)(n_blocks - 1) ? 1u : 0u;
    }
    __syncthreads();
    if (!s_last) return;
    __threadfence();
    // The last block: the row's top_k among the chunks' (list positions),
    // then their token ids.
    const u32 k = samp_select_topk(cand_val + list0, n_blocks * top_k, top_k, c_val, c_idx);
    for (u32 j = threadIdx.x; j < k; j += blockDim.x) c_idx[j] = __ldcg(cand_idx + list0 + c_idx[j]);
    __syncthreads();
    const u32 pick = samp_draw_topk_finish(c_val, c_idx, k, inv_t, top_p, min_p, u);
    if (threadIdx.x == 0) {
        out[row] = pick;
        tickets[row] = 0u;  // ready for the next launch
    }
}

// Every row drawn with the same parameters (0 < top_k < vocab) and its own
// uniform.
extern "C" __global__ void __launch_bounds__(SAMP_THREADS)
    samp_draw_topk_split(const float* __restrict__ logits, const float* __restrict__ uniforms,
                         u32* __restrict__ out, int vocab, int chunk, int top_k, float inv_t,
                         float top_p, float min_p, float* __restrict__ cand_val,
                         u32* __restrict__ cand_idx, u32* __restrict__ tickets) {
    samp_topk_split_impl<false>(logits, uniforms, nullptr, out, vocab, chunk, top_k, inv_t, top_p,
                                min_p, cand_val, cand_idx, tickets);
}

// Each row by its own parameters: the rows samp_split_topk_row takes.
extern "C" __global__ void __launch_bounds__(SAMP_THREADS)
    samp_draw_topk_split_rows(const float* __restrict__ logits, const u32* __restrict__ params,
                              u32* __restrict__ out, int vocab, int chunk,
                              float* __restrict__ cand_val, u32* __restrict__ cand_idx,
                              u32* __restrict__ tickets) {
    samp_topk_split_impl<true>(logits, nullptr, params, out, vocab, chunk, 0, 0.0f, 0.0f, 0.0f,
                               cand_val, cand_idx, tickets);
}

// ------------------------------------------------------- split top-p draw
// The draw with a top-p cut and no top-k with many blocks per row, in two
// launches after samp_argmax_split (the row's max is its argmax's logit):
// (a) each block adds its chunk's weights (all, and kept by min-p) and the
//     kept mass and count of each linear bin (samp_lin_bin, as the
//     single-row kernel) into the row's global histogram, then takes a
//     ticket; the last block finds the target and, when the kept weight
//     reaches it, the cut bin and what is needed inside it (the state
//     below), else draws at once as the split draw does;
// (b) each block gathers its chunk's tokens of the cut bin into the row's
//     candidate list and sums the kept weight of its tokens in earlier
//     bins; the last block sorts the candidates (logit desc, index asc),
//     finds the cut token, adds each chunk's share of the bin's kept
//     tokens to its sum, finds the chunk whose running kept weight crosses
//     r and scans it.
// Integer sums throughout: the same token as the single-row kernel. A cut
// bin of more than SAMP_LIN_CAND tokens (heavy ties) is left to the
// single-row kernel (flag FALLBACK). The histogram is zeroed and the slot
// counter reset by the launch that used them; tickets are
// samp_argmax_split's.
#define SAMP_TOPP_CUT 0u       // (a) set the cut: (b) draws the row
#define SAMP_TOPP_DONE 1u      // drawn (or no token) in (a)
#define SAMP_TOPP_FALLBACK 2u  // the single-row kernel draws the row
// Row state: u32 words flag, cut bin, tokens in it, candidate slot counter;
// u64 words target, need.
#define SAMP_TOPP_WORDS 4

// Whether row parameters take the split top-p draw.
__device__ __forceinline__ bool samp_split_topp_row(const u32* __restrict__ p) {
    return p[0] == 1u && p[2] == 0u && __uint_as_float(p[3]) < 1.0f;
}

struct SampDrawParams {
    float inv_t, top_p, min_p, u;
};

// This row's draw parameters, or false when the row is not a split top-p
// draw (per-row words only).
template <bool EACH>
__device__ __forceinline__ bool samp_topp_params(const float* __restrict__ uniforms,
                                                 const u32* __restrict__ params, int row,
                                                 SampDrawParams& dp) {
    if (EACH) {
        const u32* p = params + (long long)row * SAMP_PARAM_WORDS;
        if (!samp_split_topp_row(p)) return false;
        dp.inv_t = __uint_as_float(p[1]);
        dp.top_p = __uint_as_float(p[3]);
        dp.min_p = __uint_as_float(p[4]);
        dp.u = __uint_as_float(p[5]);
    } else {
        dp.u = uniforms[row];
    }
    return true;
}

template <bool EACH>
__device__ __forceinline__ void samp_topp_split_a_impl(
    const float* __restrict__ logits, const float* __restrict__ uniforms,
    const u32* __restrict__ params, u32* __restrict__ out, int vocab, int chunk,
    SampDrawParams dp, u64* __restrict__ sums, u64* __restrict__ hist_mass,
    u32* __restrict__ hist_count, u32* __restrict__ state, u64* __restrict__ state64,
    u32* __restrict__ tickets) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
    asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
    __shared__ u64 s_mass[SAMP_LIN_BINS];
    __shared__ u32 s_count[SAMP_LIN_BINS];
    __shared__ u64 s_tmp[32];
    __shared__ u32 s_last;
    const int row = blockIdx.y;
    if (!samp_topp_params<EACH>(uniforms, params, row, dp)) return;
    u32* st = state + (long long)row * SAMP_TOPP_WORDS;
    const u32 best = out[row];
    const float* r = logits + (long long)row * vocab;
    const float mx = best == SAMP_NO_TOKEN ? __int_as_float(0x7fc00000) : r[best];
    if (!(mx > __int_as_float(0xff800000) && mx < __int_as_float(0x7f800000))) {
        // No token (every block sees the same max): (b) and the fallback
        // leave the row.
        if (blockIdx.x == 0 && threadIdx.x == 0) {
            out[row] = SAMP_NO_TOKEN;
            st[0] = SAMP_TOPP_DONE;
        }
        return;
    }
    const bool use_min_p = dp.min_p > 0.0f;
    auto kept0 = [&](float w) { return samp_fx(w) > 0ull && !(use_min_p && w < dp.min_p); };
    for (int b = threadIdx.x; b < SAMP_LIN_BINS; b += blockDim.x) {
        s_mass[b] = 0ull;
        s_count[b] = 0u;
    }
    __syncthreads();
    const int begin = blockIdx.x * chunk;
    const int end = min(vocab, begin + chunk);
    u64 z = 0ull, kz = 0ull;
    for (int i = begin + threadIdx.x; i < end; i += blockDim.x) {
        const float v = r[i];
        const float w = samp_weight(v, mx, dp.inv_t);
        const u64 f = samp_fx(w);
        z += f;
        if (kept0(w)) {
            kz += f;
            const u32 b = samp_lin_bin(v, mx, dp.inv_t);
            atomicAdd(&s_mass[b], f);
            atomicAdd(&s_count[b], 1u);
        }
    }
    __syncthreads();
    u64* hm = hist_mass + (long long)row * SAMP_LIN_BINS;
    u32* hc = hist_count + (long long)row * SAMP_LIN_BINS;
    for (int b = threadIdx.x; b < SAMP_LIN_BINS; b += blockDim.x) {
        if (s_count[b] != 0u) {
            atomicAdd(hm + b, s_mass[b]);
            atomicAdd(hc + b, s_count[b]);
        }
    }
    z = samp_block_sum64(z, s_tmp);
    kz = samp_block_sum64(kz, s_tmp);
    const int n_blocks = gridDim.x;
    u64* row_sums = sums + 2ll * row * n_blocks;
    if (threadIdx.x == 0) {
        row_sums[2 * blockIdx.x] = z;
        row_sums[2 * blockIdx.x + 1] = kz;
        __threadfence();  // the sums and the histogram are in before the ticket
        s_last = atomicAdd(tickets + row, 1u) == (u32)(n_blocks - 1) ? 1u : 0u;
    }
    __syncthreads();
    if (!s_last) return;
    __threadfence();
    u64 mz = 0ull, mkz = 0ull;
    for (int b = threadIdx.x; b < n_blocks; b += blockDim.x) {
        mz += __ldcg(row_sums + 2 * b);
        mkz += __ldcg(row_sums + 2 * b + 1);
    }
    z = samp_block_sum64(mz, s_tmp);
    kz = samp_block_sum64(mkz, s_tmp);
    const u64 target = max(samp_fx_scale(dp.top_p, z), 1ull);
    if (kz < target) {
        // No cut: the split draw's crossing chunk and scan.
        u64 rc = 0ull;
        const u32 c = samp_crossing_block(
            n_blocks, samp_fx_scale(dp.u, kz), [&](int b) { return __ldcg(row_sums + 2 * b + 1); },
            rc, s_tmp);
        u32 pick = SAMP_NO_TOKEN;
        if (c != SAMP_NO_TOKEN) {
            const int c_begin = (int)c * chunk;
            pick = samp_draw_in_index_order(
                r, c_begin, min(vocab, c_begin + chunk), mx, dp.inv_t, rc,
                [&](int, float, float w) { return kept0(w); }, s_tmp);
        }
        if (threadIdx.x == 0) {
            out[row] = pick;
            st[0] = SAMP_TOPP_DONE;
        }
    } else {
        // The cut bin: bins in ascending order, two per thread.
        __shared__ u32 s_bin, s_n_bin;
        __shared__ u64 s_need;
        for (int t0 = 0; 2 * t0 < SAMP_LIN_BINS; t0 += blockDim.x) {
            const int t = t0 + threadIdx.x;
            const u64 m0 = 2 * t < SAMP_LIN_BINS ? __ldcg(hm + 2 * t) : 0ull;
            const u64 m1 = 2 * t + 1 < SAMP_LIN_BINS ? __ldcg(hm + 2 * t + 1) : 0ull;
            __shared__ u64 s_run;
            if (t0 == 0 && threadIdx.x == 0) s_run = 0ull;
            __syncthreads();
            const u64 incl = s_run + samp_block_scan(m0 + m1, s_tmp);
            const u64 excl = incl - m0 - m1;
            if (excl < target && excl + m0 >= target) {
                s_bin = 2u * t;
                s_need = target - excl;
                s_n_bin = __ldcg(hc + 2 * t);
            } else if (excl + m0 < target && incl >= target) {
                s_bin = 2u * t + 1u;
                s_need = target - excl - m0;
                s_n_bin = __ldcg(hc + 2 * t + 1);
            }
            __syncthreads();
            if (threadIdx.x == blockDim.x - 1) s_run = incl;
            __syncthreads();
        }
        if (threadIdx.x == 0) {
            st[0] = s_n_bin <= SAMP_LIN_CAND ? SAMP_TOPP_CUT : SAMP_TOPP_FALLBACK;
            st[1] = s_bin;
            st[2] = s_n_bin;
            st[3] = 0u;
            state64[2 * row] = target;
            state64[2 * row + 1] = s_need;
        }
    }
    // The histogram is used: zero for the next launch.
    for (int b = threadIdx.x; b < SAMP_LIN_BINS; b += blockDim.x) {
        hm[b] = 0ull;
        hc[b] = 0u;
    }
    if (threadIdx.x == 0) tickets[row] = 0u;
}

template <bool EACH>
__device__ __forceinline__ void samp_topp_split_b_impl(
    const float* __restrict__ logits, const float* __restrict__ uniforms,
    const u32* __restrict__ params, u32* __restrict__ out, int vocab, int chunk,
    SampDrawParams dp, u64* __restrict__ sums, float* __restrict__ cand_val,
    u32* __restrict__ cand_idx, u32* __restrict__ state, const u64* __restrict__ state64,
    u32* __restrict__ tickets) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
    asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
    __shared__ float c_val[SAMP_LIN_CAND];
    __shared__ u32 c_idx[SAMP_LIN_CAND];
    __shared__ u64 s_kb[SAMP_LIN_CAND];
    __shared__ u64 s_tmp[32];
    __shared__ u32 s_last, s_cut_pos;
    const int row = blockIdx.y;
    if (!samp_topp_params<EACH>(uniforms, params, row, dp)) return;
    u32* st = state + (long long)row * SAMP_TOPP_WORDS;
    if (st[0] != SAMP_TOPP_CUT) return;
    const float* r = logits + (long long)row * vocab;
    const float mx = r[out[row]];  // (a) left the argmax there
    const u32 cut_bin = st[1];
    const bool use_min_p = dp.min_p > 0.0f;
    auto kept0 = [&](float w) { return samp_fx(w) > 0ull && !(use_min_p && w < dp.min_p); };
    const int begin = blockIdx.x * chunk;
    const int end = min(vocab, begin + chunk);
    float* cv = cand_val + (long long)row * SAMP_LIN_CAND;
    u32* ci = cand_idx + (long long)row * SAMP_LIN_CAND;
    u64 below = 0ull;
    for (int i = begin + threadIdx.x; i < end; i += blockDim.x) {
        const float v = r[i];
        const float w = samp_weight(v, mx, dp.inv_t);
        if (!kept0(w)) continue;
        const u32 b = samp_lin_bin(v, mx, dp.inv_t);
        if (b < cut_bin) {
            below += samp_fx(w);
        } else if (b == cut_bin) {
            const u32 slot = atomicAdd(st + 3, 1u);
            if (slot < SAMP_LIN_CAND) {
                cv[slot] = v;
                ci[slot] = (u32)i;
            }
        }
    }
    below = samp_block_sum64(below, s_tmp);
    const int n_blocks = gridDim.x;
    u64* row_sums = sums + 2ll * row * n_blocks;
    if (threadIdx.x == 0) {
        row_sums[2 * blockIdx.x] = below;
        __threadfence();  // the sum and the candidates are in before the ticket
        s_last = atomicAdd(tickets + row, 1u) == (u32)(n_blocks - 1) ? 1u : 0u;
    }
    __syncthreads();
    if (!s_last) return;
    __threadfence();
    const u32 n_bin = min(__ldcg(st + 3), (u32)SAMP_LIN_CAND);
    for (u32 j = threadIdx.x; j < n_bin; j += blockDim.x) {
        c_val[j] = __ldcg(cv + j);
        c_idx[j] = __ldcg(ci + j);
    }
    __syncthreads();
    u32 n_sort = 2u;
    while (n_sort < n_bin) n_sort <<= 1;
    samp_sort_desc(c_val, c_idx, n_bin, n_sort);
    // The cut token: the first sorted one whose running weight reaches
    // `need` (as the single-row kernel, 2 positions per thread per round).
    const u64 target = __ldcg(state64 + 2 * row), need = __ldcg(state64 + 2 * row + 1);
    if (threadIdx.x == 0) s_cut_pos = n_bin - 1u;
    u64 run = 0ull, in_bin = 0ull;
    for (u32 p0 = 0; p0 < n_bin; p0 += 2 * blockDim.x) {
        const u32 q0 = p0 + 2u * threadIdx.x, q1 = q0 + 1u;
        const u64 f0 = q0 < n_bin ? samp_fx(samp_weight(c_val[q0], mx, dp.inv_t)) : 0ull;
        const u64 f1 = q1 < n_bin ? samp_fx(samp_weight(c_val[q1], mx, dp.inv_t)) : 0ull;
        const u64 pin = run + samp_block_scan(f0 + f1, s_tmp);
        const u64 pex = pin - f0 - f1;
        if (q0 < n_bin && pex < need && pex + f0 >= need) s_cut_pos = q0;
        else if (q1 < n_bin && pex + f0 < need && pin >= need) s_cut_pos = q1;
        run += samp_block_sum64(f0 + f1, s_tmp);
    }
    const u32 cut_pos = s_cut_pos;
    const float cut_val = c_val[cut_pos];
    const u32 cut_idx = c_idx[cut_pos];
    // Each chunk's kept weight: its earlier bins' plus its tokens of the
    // bin through the cut.
    for (int b = threadIdx.x; b < n_blocks; b += blockDim.x) s_kb[b] = __ldcg(row_sums + 2 * b);
    __syncthreads();
    for (u32 q = threadIdx.x; q <= cut_pos; q += blockDim.x) {
        const u64 f = samp_fx(samp_weight(c_val[q], mx, dp.inv_t));
        in_bin += f;
        atomicAdd(&s_kb[c_idx[q] / (u32)chunk], f);
    }
    in_bin = samp_block_sum64(in_bin, s_tmp);
    const u64 kept_total = target - need + in_bin;
    u64 rc = 0ull;
    const u32 c = samp_crossing_block(
        n_blocks, samp_fx_scale(dp.u, kept_total), [&](int b) { return s_kb[b]; }, rc, s_tmp);
    u32 pick = SAMP_NO_TOKEN;
    if (c != SAMP_NO_TOKEN) {
        const int c_begin = (int)c * chunk;
        pick = samp_draw_in_index_order(
            r, c_begin, min(vocab, c_begin + chunk), mx, dp.inv_t, rc,
            [&](int i, float v, float w) {
                if (!kept0(w)) return false;
                const u32 b = samp_lin_bin(v, mx, dp.inv_t);
                return b < cut_bin || (b == cut_bin && !samp_better(cut_val, cut_idx, v, (u32)i));
            },
            s_tmp);
    }
    if (threadIdx.x == 0) {
        out[row] = pick;
        st[3] = 0u;
        tickets[row] = 0u;  // ready for the next launch
    }
}

extern "C" __global__ void __launch_bounds__(SAMP_THREADS)
    samp_draw_topp_split_a(const float* __restrict__ logits, const float* __restrict__ uniforms,
                           u32* __restrict__ out, int vocab, int chunk, int /* top_k: 0 */,
                           float inv_t, float top_p, float min_p, u64* __restrict__ sums, u64* __restrict__ hist_mass,
                           u32* __restrict__ hist_count, u32* __restrict__ state,
                           u64* __restrict__ state64, u32* __restrict__ tickets) {
    samp_topp_split_a_impl<false>(logits, uniforms, nullptr, out, vocab, chunk,
                                  SampDrawParams{inv_t, top_p, min_p, 0.0f}, sums, hist_mass,
                                  hist_count, state, state64, tickets);
}

extern "C" __global__ void __launch_bounds__(SAMP_THREADS)
    samp_draw_topp_split_rows_a(const float* __restrict__ logits, const u32* __restrict__ params,
                                u32* __restrict__ out, int vocab, int chunk,
                                u64* __restrict__ sums, u64* __restrict__ hist_mass,
                                u32* __restrict__ hist_count, u32* __restrict__ state,
                                u64* __restrict__ state64, u32* __restrict__ tickets) {
    samp_topp_split_a_impl<true>(logits, nullptr, params, out, vocab, chunk, SampDrawParams{},
                                 sums, hist_mass, hist_count, state, state64, tickets);
}

extern "C" __global__ void __launch_bounds__(SAMP_THREADS)
    samp_draw_topp_split_b(const float* __restrict__ logits, const float* __restrict__ uniforms,
                           u32* __restrict__ out, int vocab, int chunk, int /* top_k: 0 */,
                           float inv_t, float top_p, float min_p, u64* __restrict__ sums, float* __restrict__ cand_val,
                           u32* __restrict__ cand_idx, u32* __restrict__ state,
                           const u64* __restrict__ state64, u32* __restrict__ tickets) {
    samp_topp_split_b_impl<false>(logits, uniforms, nullptr, out, vocab, chunk,
                                  SampDrawParams{inv_t, top_p, min_p, 0.0f}, sums, cand_val,
                                  cand_idx, state, state64, tickets);
}

extern "C" __global__ void __launch_bounds__(SAMP_THREADS)
    samp_draw_topp_split_rows_b(const float* __restrict__ logits, const u32* __restrict__ params,
                                u32* __restrict__ out, int vocab, int chunk,
                                u64* __restrict__ sums, float* __restrict__ cand_val,
                                u32* __restrict__ cand_idx, u32* __restrict__ state,
                                const u64* __restrict__ state64, u32* __restrict__ tickets) {
    samp_topp_split_b_impl<true>(logits, nullptr, params, out, vocab, chunk, SampDrawParams{},
                                 sums, cand_val, cand_idx, state, state64, tickets);
}

// The rows (a) left to the single-row kernel (heavy ties in the cut bin),
// every row with the same parameters.
extern "C" __global__ void __launch_bounds__(SAMP_THREADS)
    samp_draw_topp_fallback(const float* __restrict__ logits, const float* __restrict__ uniforms,
                            u32* __restrict__ out, int vocab, float inv_t, float top_p,
                            float min_p, const u32* __restrict__ state) {
    if (state[(long long)blockIdx.x * SAMP_TOPP_WORDS] != SAMP_TOPP_FALLBACK) return;
    const float* row = logits + (long long)blockIdx.x * vocab;
    samp_row(row, vocab, 1u, inv_t, 0, top_p, min_p, uniforms[blockIdx.x], out + blockIdx.x);
}

// samp_draw_rows for the rows the split kernels did not finish: argmax rows
// (samp_argmax_split's token stands), split draws, split top-k draws and
// split top-p draws (but those (a) left to this kernel) are left as they
// are.
extern "C" __global__ void __launch_bounds__(SAMP_THREADS)
    samp_draw_rows_rest(const float* __restrict__ logits, const u32* __restrict__ params,
                        u32* __restrict__ out, int vocab, const u32* __restrict__ state) {
    const u32* p = params + (long long)blockIdx.x * SAMP_PARAM_WORDS;
    if (p[0] == 0u || samp_split_draw_row(p) || samp_split_topk_row(p, vocab)) return;
    if (samp_split_topp_row(p) &&
        state[(long long)blockIdx.x * SAMP_TOPP_WORDS] != SAMP_TOPP_FALLBACK)
        return;
    const float* row = logits + (long long)blockIdx.x * vocab;
    samp_row(row, vocab, p[0], __uint_as_float(p[1]), (int)p[2], __uint_as_float(p[3]),
             __uint_as_float(p[4]), __uint_as_float(p[5]), out + blockIdx.x);
}
