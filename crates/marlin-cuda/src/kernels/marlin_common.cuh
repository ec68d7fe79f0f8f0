// Device helpers shared by the kernel files (`#include "marlin_common.cuh"`).
//
// NVRTC gets this file from memory as a named header (src/nvrtc_cache.rs,
// COMMON_HEADER; scripts/check_kernels_nvrtc.py does the same): no include
// search path, and the on-disk kernel cache key hashes it with the source.
// Only helpers whose code is the same in every user live here; a file that
// needs a variant (other cache hint, other operand form) keeps its own under
// its own name. w4a16_gemm.cu does not include it yet and still has its own
// copies under the same names (lop3_and_or, hsub2, ..., mma_16816).
//
// Everything is __forceinline__ (no code of its own in a module); PTX that
// exists only on newer targets is guarded so that every file still compiles
// for sm_80.

#pragma once

typedef unsigned int u32;
typedef unsigned short u16;
typedef unsigned long long u64;

// ------------------------------------------------------------ f16 values
// f16 values are carried as raw bits (u16, or two in a u32, low half first).

__device__ __forceinline__ u16 f32_to_f16(float x) {
    u16 r;
    asm("cvt.rn.f16.f32 %0, %1;" : "=h"(r) : "f"(x));
    return r;
}
__device__ __forceinline__ float f16_to_f32(u16 h) {
    float r;
    asm("cvt.f32.f16 %0, %1;" : "=f"(r) : "h"(h));
    return r;
}
// Two f16 in one 32-bit word -> two floats (low half first).
__device__ __forceinline__ void f16x2_to_f32(u32 w, float& a, float& b) {
    a = f16_to_f32((u16)(w & 0xffffu));
    b = f16_to_f32((u16)(w >> 16));
}
// The low / high f16 of a word as f32, converted in registers.
__device__ __forceinline__ float f16_lo_to_f32(u32 x) {
    float r;
    asm("{ .reg .b16 lo, hi; mov.b32 {lo, hi}, %1; cvt.f32.f16 %0, lo; }" : "=f"(r) : "r"(x));
    return r;
}
__device__ __forceinline__ float f16_hi_to_f32(u32 x) {
    float r;
    asm("{ .reg .b16 lo, hi; mov.b32 {lo, hi}, %1; cvt.f32.f16 %0, hi; }" : "=f"(r) : "r"(x));
    return r;
}
// Activations in either storage type (f32, or f16 bits) as f32: element i
// of p read / written.
__device__ __forceinline__ float ld_as_f32(const float* p, long long i) { return p[i]; }
__device__ __forceinline__ float ld_as_f32(const u16* p, long long i) { return f16_to_f32(p[i]); }
__device__ __forceinline__ void st_from_f32(float* p, long long i, float v) { p[i] = v; }
__device__ __forceinline__ void st_from_f32(u16* p, long long i, float v) { p[i] = f32_to_f16(v); }
// (lo, lo) and (hi, hi) of an f16x2.
__device__ __forceinline__ u32 dup_lo(u32 x) { return (x & 0xFFFFu) | (x << 16); }
__device__ __forceinline__ u32 dup_hi(u32 x) { return (x >> 16) | (x & 0xFFFF0000u); }

// (a & b) | c
__device__ __forceinline__ u32 lop3_and_or(u32 a, u32 b, u32 c) {
    u32 r;
    asm("lop3.b32 %0, %1, %2, %3, 0xEA;" : "=r"(r) : "r"(a), "r"(b), "r"(c));
    return r;
}
__device__ __forceinline__ u32 hsub2(u32 a, u32 b) {
    u32 r;
    asm("sub.rn.f16x2 %0, %1, %2;" : "=r"(r) : "r"(a), "r"(b));
    return r;
}
__device__ __forceinline__ u32 hmul2(u32 a, u32 b) {
    u32 r;
    asm("mul.rn.f16x2 %0, %1, %2;" : "=r"(r) : "r"(a), "r"(b));
    return r;
}
__device__ __forceinline__ u32 hfma2(u32 a, u32 b, u32 c) {
    u32 r;
    asm("fma.rn.f16x2 %0, %1, %2, %3;" : "=r"(r) : "r"(a), "r"(b), "r"(c));
    return r;
}

// ------------------------------------------------------------ attention

#define MARLIN_LOG2E 1.4426950408889634f

// Soft-capped attention score in the log2 domain. Without a cap
// (softcap <= 0) the query already carries scale * log2(e).
__device__ __forceinline__ float softcap_log2(float s, float softcap) {
    if (softcap > 0.0f) {
        const float u = s / softcap;
        s = softcap * (1.0f - 2.0f / (__expf(2.0f * u) + 1.0f)) * MARLIN_LOG2E;
    }
    return s;
}

// ------------------------------------------------------------ memory

// Written by other blocks of the same launch (split-K partials): read from
// L2, not a possibly stale L1 line.
__device__ __forceinline__ float ld_cg_f32(const float* p) {
    float r;
    asm volatile("ld.global.cg.f32 %0, [%1];" : "=f"(r) : "l"(p));
    return r;
}

__device__ __forceinline__ u32 smem_addr(const void* p) { return (u32)__cvta_generic_to_shared(p); }

__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;" ::); }
template <int N>
__device__ __forceinline__ void cp_async_wait() { asm volatile("cp.async.wait_group %0;" ::"n"(N)); }

// ------------------------------------------------------------ tensor cores

// c (16x8 f32) += a (16x16 f16, row) . b (16x8 f16, col).
__device__ __forceinline__ void mma_16816(float* c, const u32* a, const u32* b) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 "
        "{%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
}

// ------------------------------------------------------------ launch

// Programmatic dependent launch (src/ops/launch.rs). pdl_trigger(): the next
// kernel's grid may launch once every block of this one has called it (its
// own wait still waits for this grid's completion). pdl_wait(): wait until
// the previous kernel in the stream has completed and its writes are
// visible; before it a kernel reads only constants and host-copied values.
// No-ops for a plain launch and below sm_90.
__device__ __forceinline__ void pdl_trigger() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
#endif
}
__device__ __forceinline__ void pdl_wait() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
}

// ------------------------------------------------------------ Hopper only

#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900

// mbarrier in shared memory (bar = shared-window address).
__device__ __forceinline__ void mbar_init(u32 bar, u32 count) {
    asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;" ::"r"(bar), "r"(count) : "memory");
}
__device__ __forceinline__ void mbar_arrive_expect_tx(u32 bar, u32 bytes) {
    asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;" ::"r"(bar), "r"(bytes) : "memory");
}
__device__ __forceinline__ void mbar_arrive(u32 bar) {
    asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];" ::"r"(bar) : "memory");
}
__device__ __forceinline__ void mbar_wait(u32 bar, u32 parity) {
    u32 done;
    do {
        asm volatile(
            "{ .reg .pred p; mbarrier.try_wait.parity.shared::cta.b64 p, [%1], %2; selp.u32 %0, 1, 0, p; }"
            : "=r"(done)
            : "r"(bar), "r"(parity)
            : "memory");
    } while (!done);
}
// 1-D bulk copy global -> shared (16-B aligned, bytes % 16 == 0), completion
// counted in bytes on `bar`. A launch without clusters is a cluster of one
// CTA, whose shared::cta addresses are valid shared::cluster addresses.
__device__ __forceinline__ void bulk_copy(u32 dst, const void* src, u32 bytes, u32 bar) {
    asm volatile(
        "cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1], %2, [%3];" ::"r"(dst),
        "l"(src), "r"(bytes), "r"(bar)
        : "memory");
}

#endif  // __CUDA_ARCH__ >= 900

#if defined(__CUDA_ARCH_FEAT_SM90_ALL)

// wgmma (sm_90a).
__device__ __forceinline__ void wgmma_fence() { asm volatile("wgmma.fence.sync.aligned;" ::: "memory"); }
__device__ __forceinline__ void wgmma_commit() { asm volatile("wgmma.commit_group.sync.aligned;" ::: "memory"); }
template <int N>
__device__ __forceinline__ void wgmma_wait() { asm volatile("wgmma.wait_group.sync.aligned %0;" ::"n"(N) : "memory"); }
// Compiler-only fence on an accumulator register: keeps reads and writes of
// it on their side of the wgmma wait (the compiler does not know that
// wgmma.wait_group is what makes the asynchronous result available).
__device__ __forceinline__ void fence_operand(float& r) { asm volatile("" : "+f"(r)::"memory"); }

#endif  // __CUDA_ARCH_FEAT_SM90_ALL
