// The paged f16 KV pool of the serving engine (src/ops/paged.rs): its write
// through per-sequence block tables.
//
// Pool layout [layer][block][kv_head][slot][head_dim] (f16 bits): one
// (block, kv head) of a layer is block_size * head_dim contiguous halves.
// Block tables (n_tables, table_width) of block ids: position p of table t
// lives in block tables[t * table_width + p / block_size], slot
// p % block_size. Row r of a forward pass belongs to table row_seq[r] at
// position row_pos[r].
//
// Every index that comes from the device (table, position, block id) is
// checked: a row outside the tables writes nothing and attends nothing
// (zeros), a key in a block id outside the pool is skipped. The host
// validates the tables before uploading them, so these paths only keep a
// bad buffer from becoming an out-of-bounds access.
//
// - paged_kv_write: grid-stride store of (rows, n_kv_heads * head_dim) f32
//   keys and values as f16.
//
// Attention over the pool runs in kernels/attention.cu, which reads keys
// through the same tables: the decode kernel's attn_paged_* entries (rows
// of any sequence, roped f32 queries) and attn_paged_rope_* (a pass of one
// row per sequence: QK-norm, RoPE and this step's KV write in the launch),
// and the tensor-core prefill loop's paged_attn_prefill_tc_* (prompt rows).
//
// Shared helpers (f16 conversions, ld_cg_f32, pdl_wait, ...) come from
// marlin_common.cuh, an in-memory NVRTC header (no search path).

#include "marlin_common.cuh"

// Element offset of (layer, block, kv head, slot) in the pool.
__device__ __forceinline__ long long pa_offset(int layer, int blk, int kvh, int slot,
                                               int n_blocks, int n_kv_heads, int block_size,
                                               int hd) {
    return ((((long long)layer * n_blocks + blk) * n_kv_heads + kvh) * block_size + slot) *
           (long long)hd;
}

extern "C" __global__ void paged_kv_write(u16* __restrict__ k_pool, u16* __restrict__ v_pool,
                                          const float* __restrict__ k,
                                          const float* __restrict__ v,
                                          const int* __restrict__ row_seq,
                                          const int* __restrict__ row_pos,
                                          const int* __restrict__ tables, int rows, int layer,
                                          int n_blocks, int n_kv_heads, int head_dim,
                                          int block_size, int n_tables, int table_width) {
    const long long per_row = (long long)n_kv_heads * head_dim;
    const long long total = (long long)rows * per_row;
    const long long positions = (long long)table_width * block_size;
    for (long long t = (long long)blockIdx.x * blockDim.x + threadIdx.x; t < total;
         t += (long long)gridDim.x * blockDim.x) {
        const int row = (int)(t / per_row);
        const int within = (int)(t % per_row);
        const int seq = row_seq[row], pos = row_pos[row];
        if (seq < 0 || seq >= n_tables || pos < 0 || pos >= positions) continue;
        const int blk = tables[(long long)seq * table_width + pos / block_size];
        if (blk < 0 || blk >= n_blocks) continue;
        const int kvh = within / head_dim, d = within % head_dim;
        const long long dst =
            pa_offset(layer, blk, kvh, pos % block_size, n_blocks, n_kv_heads, block_size,
                      head_dim) +
            d;
        k_pool[dst] = f32_to_f16(k[t]);
        v_pool[dst] = f32_to_f16(v[t]);
    }
}
