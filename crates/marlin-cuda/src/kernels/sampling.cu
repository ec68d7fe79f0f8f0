// On-device token selection from f32 logits (rows, vocab), one block of
// 1024 threads per row (src/ops/sampling.rs).
//
// - samp_argmax: largest logit, lowest index on ties, NaN never chosen; a
//   row of NaN only gives 0xffffffff.
// - samp_topk_topp: the CPU sampler's order (marlin-engine sampler.rs):
//   top-k by (logit desc, index asc) ignoring NaN, softmax at temperature
//   over those, the smallest prefix whose mass reaches top_p, then one draw
//   with the row's uniform u in [0, 1): the first candidate whose running
//   mass reaches u * total. The k-th largest logit is found by a 3-pass
//   radix select (11 + 11 + 10 bits) over order-preserving integer keys, the
//   candidates are gathered in index order (ties at the threshold keep the
//   lowest indices) and bitonic-sorted in shared memory.
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

extern "C" __global__ void __launch_bounds__(SAMP_THREADS)
    samp_argmax(const float* __restrict__ logits, u32* __restrict__ out, int vocab) {
    __shared__ float s_val[32];
    __shared__ u32 s_idx[32];
    const float* row = logits + (long long)blockIdx.x * vocab;
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
        if (lane == 0) out[blockIdx.x] = best_i;
    }
}

// Order-preserving key of a float (larger float, larger key); NaN -> 0 and
// is excluded by the callers.
__device__ __forceinline__ u32 samp_key(float v) {
    if (v != v) return 0u;
    const u32 b = __float_as_uint(v);
    return (b & 0x80000000u) ? ~b : (b | 0x80000000u);
}

// Inclusive prefix sum over the block (1024 threads); `tmp` holds 32 u32.
__device__ __forceinline__ u32 samp_block_scan(u32 v, u32* tmp) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
#pragma unroll
    for (int off = 1; off < 32; off <<= 1) {
        const u32 o = __shfl_up_sync(0xffffffffu, v, off);
        if (lane >= off) v += o;
    }
    __syncthreads();
    if (lane == 31) tmp[warp] = v;
    __syncthreads();
    if (warp == 0) {
        u32 w = tmp[lane];
#pragma unroll
        for (int off = 1; off < 32; off <<= 1) {
            const u32 o = __shfl_up_sync(0xffffffffu, w, off);
            if (lane >= off) w += o;
        }
        tmp[lane] = w;
    }
    __syncthreads();
    return v + (warp > 0 ? tmp[warp - 1] : 0u);
}

extern "C" __global__ void __launch_bounds__(SAMP_THREADS)
    samp_topk_topp(const float* __restrict__ logits, const float* __restrict__ uniforms,
                   u32* __restrict__ out, int vocab, int top_k, float inv_temp, float top_p) {
    __shared__ u32 hist[2048];
    __shared__ u32 scan_tmp[32];
    __shared__ u32 s_need, s_found_bin, s_total, s_bin_count;
    __shared__ u32 s_gt, s_eq;
    // Candidates: the k_eff winners, or (fast path) every key above the
    // threshold and every key equal to it, when that fits.
    __shared__ float c_val[SAMP_CAND];
    __shared__ u32 c_idx[SAMP_CAND];
    const float* row = logits + (long long)blockIdx.x * vocab;
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
            if (need == 0) {
                if (tid == 0) out[blockIdx.x] = SAMP_NO_TOKEN;
                return;
            }
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
    // Bitonic sort of the candidates (padded to SAMP_CAND).
    for (int i = tid; i < SAMP_CAND; i += blockDim.x) {
        if (i >= (int)n_sorted) {
            c_val[i] = __int_as_float(0xff800000);
            c_idx[i] = SAMP_NO_TOKEN;
        }
    }
    __syncthreads();
    for (int size = 2; size <= SAMP_CAND; size <<= 1) {
        for (int stride = size >> 1; stride > 0; stride >>= 1) {
            if (tid < SAMP_CAND) {
                const int j = tid ^ stride;
                if (j > tid) {
                    const bool desc = (tid & size) == 0;
                    const bool j_first = samp_better(c_val[j], c_idx[j], c_val[tid], c_idx[tid]);
                    if (j_first == desc) {
                        const float tv = c_val[tid];
                        const u32 ti = c_idx[tid];
                        c_val[tid] = c_val[j];
                        c_idx[tid] = c_idx[j];
                        c_val[j] = tv;
                        c_idx[j] = ti;
                    }
                }
            }
            __syncthreads();
        }
    }
    if (tid != 0) return;
    // Softmax at temperature, top-p cut, one draw (sequential, <= 256).
    const float mx = c_val[0];
    if (!(mx > __int_as_float(0xff800000) && mx < __int_as_float(0x7f800000))) {
        out[blockIdx.x] = c_idx[0];  // -inf / +inf top logit: CPU errors; take the top
        return;
    }
    double sum = 0.0;
    for (u32 i = 0; i < k_eff; ++i) sum += (double)__expf((c_val[i] - mx) * inv_temp);
    const float inv_sum = (float)(1.0 / sum);
    u32 cut = k_eff;
    if (top_p < 1.0f) {
        float mass = 0.0f;
        for (u32 i = 0; i < k_eff; ++i) {
            mass += __expf((c_val[i] - mx) * inv_temp) * inv_sum;
            if (mass >= top_p) {
                cut = i + 1;
                break;
            }
        }
    }
    float total = 0.0f;
    for (u32 i = 0; i < cut; ++i) total += __expf((c_val[i] - mx) * inv_temp) * inv_sum;
    float r = uniforms[blockIdx.x] * total;
    u32 pick = c_idx[cut - 1];
    for (u32 i = 0; i < cut; ++i) {
        r -= __expf((c_val[i] - mx) * inv_temp) * inv_sum;
        if (r <= 0.0f) {
            pick = c_idx[i];
            break;
        }
    }
    out[blockIdx.x] = pick;
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
