// Act-order (GPTQ desc_act) weights: gather the activation columns through
// the load-time permutation, A_perm[row, j] = A[row, perm[j]], so that the
// permuted weight's K groups are contiguous and it runs as a plain grouped
// weight (src/int4/act_order.rs). One thread per output element; any K.
// The elements are moved as 16-bit words: f16 or bf16 activations alike.
// Self-contained (no #include).

typedef unsigned int u32;
typedef unsigned short u16;

extern "C" __global__ void __launch_bounds__(256)
    act_order_gather_u16(const u16* __restrict__ A, const u32* __restrict__ perm, u16* __restrict__ out,
                         int M, int K) {
    const long long idx = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= (long long)M * K) return;
    const long long row = idx / K;
    const int j = (int)(idx - row * K);
    out[idx] = A[row * K + perm[j]];
}
