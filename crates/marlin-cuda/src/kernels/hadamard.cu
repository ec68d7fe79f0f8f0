// Block-diagonal Hadamard rotation of activation rows (MR-GPTQ checkpoints):
// out (rows, padded_k) = x (rows, k) zero-padded to padded_k, then the
// normalised fast Walsh-Hadamard transform (Sylvester order) of every block
// of `block` consecutive values. The same transform as the CPU's
// marlin_models::layers::hadamard::rotate_rows.
//
// Grid: (padded_k / block, rows); one thread block of `block` threads per
// (row, Hadamard block), the block's values in dynamic shared memory; each
// of the log2(block) butterfly stages pairs element i with i + h for the
// threads whose bit h is clear.

extern "C" __global__ void hadamard_rotate_rows(const float* __restrict__ x,
                                                float* __restrict__ out,
                                                int k, int padded_k, int block,
                                                float norm) {
    extern __shared__ float buf[];
    const int t = threadIdx.x;
    const long long row = blockIdx.y;
    const int col = blockIdx.x * block + t;
    buf[t] = col < k ? x[row * k + col] : 0.0f;
    __syncthreads();
    for (int h = 1; h < block; h <<= 1) {
        if ((t & h) == 0) {
            const float a = buf[t];
            const float b = buf[t + h];
            buf[t] = a + b;
            buf[t + h] = a - b;
        }
        __syncthreads();
    }
    out[row * padded_k + col] = buf[t] * norm;
}
