//! [`Int4Weight::random_on_device`]: random symmetric INT4 weights generated
//! by a hash-based fill kernel straight into the packed layout, for
//! benchmark models too large to build and repack on the host.

use cudarc::driver::{LaunchConfig, PushKernelArg};

use super::gemm::{Int4Weight, MODULE, SOURCE};
use super::pack::{K_CHUNK, N_TILE};
use super::random::fill_seed;
use crate::device::{driver_err, CudaDevice};
use crate::error::{CudaError, Result};
use crate::ops::to_i32;

/// Grid of the grid-stride fill kernels (enough blocks to fill every SM).
fn fill_grid(total: usize) -> u32 {
    total.div_ceil(256).clamp(1, 65_535) as u32
}

/// Bounds of `w4_random_scales`' f16 scales: [2^-9, 2^-6).
const RANDOM_SCALE_MIN: f64 = 1.0 / 512.0;
const RANDOM_SCALE_MAX: f64 = 1.0 / 64.0;

impl Int4Weight {
    /// A random (N, K) symmetric INT4 weight, generated on the GPU: codes
    /// uniform over [-8, 7], one f16 scale per `group_size` along K
    /// (`group_size == 0`: per channel) in [2^-9, 2^-6). Bit-identical to
    /// packing [`super::random::hashed_int4`]`(n, k, group_size, seed)` on
    /// the host. Nothing but the packed buffers is allocated; the fill is
    /// enqueued on the device's stream (no synchronisation).
    pub fn random_on_device(
        dev: &CudaDevice,
        n: usize,
        k: usize,
        group_size: usize,
        seed: u64,
    ) -> Result<Self> {
        if n == 0 || k == 0 {
            return Err(CudaError::Shape(format!("empty weight matrix {n}x{k}")));
        }
        if group_size != 0 && !group_size.is_multiple_of(K_CHUNK) {
            return Err(CudaError::Unsupported(format!(
                "INT4 GEMM groups must be a multiple of {K_CHUNK} along K (or 0 = per channel), \
                 got {group_size}"
            )));
        }
        let n_pad = n.div_ceil(N_TILE) * N_TILE;
        let k_pad = k.div_ceil(K_CHUNK) * K_CHUNK;
        to_i32("N", n_pad)?;
        to_i32("K", k_pad)?;
        let k_chunks = k_pad / K_CHUNK;
        let (group_k32, groups) = if group_size == 0 {
            (k_pad / 32, 1)
        } else {
            (group_size / 32, k.div_ceil(group_size))
        };
        let nb_count = n_pad / 16;
        // (n_pad/16, k_chunks, 32 lanes, 4) words; (groups, n_pad/16, 8) scales.
        let word_count = nb_count
            .checked_mul(k_chunks)
            .and_then(|v| v.checked_mul(128))
            .ok_or_else(|| CudaError::Shape(format!("{n}x{k} INT4 weight overflows")))?;
        let scale_count = groups * nb_count * 8;
        let mut words = dev.alloc_zeros::<u32>("INT4 weight codes", word_count)?;
        let mut scales = dev.alloc_zeros::<u32>("INT4 weight scales", scale_count)?;
        let seed = fill_seed(seed);
        let stream = dev.stream();

        let func = dev.function(MODULE, SOURCE, "w4_random_words", 0)?;
        let (k_real, n_real) = (k as i32, n as i32);
        let (k_chunks_i32, total) = (to_i32("K chunks", k_chunks)?, word_count as i64);
        let mut launch = stream.launch_builder(&func);
        launch
            .arg(&mut words)
            .arg(&n_real)
            .arg(&k_real)
            .arg(&k_chunks_i32)
            .arg(&total)
            .arg(&seed);
        let cfg = LaunchConfig {
            grid_dim: (fill_grid(word_count), 1, 1),
            block_dim: (256, 1, 1),
            shared_mem_bytes: 0,
        };
        // SAFETY: arguments match w4_random_words; `words` holds `total`
        // u32 (grid-stride loop bounded by total).
        unsafe { launch.launch(cfg) }.map_err(|e| driver_err("launch w4_random_words", e))?;

        let func = dev.function(MODULE, SOURCE, "w4_random_scales", 0)?;
        let (nb_i32, groups_i32, total) = (
            to_i32("N/16", nb_count)?,
            to_i32("groups", groups)?,
            scale_count as i64,
        );
        let mut launch = stream.launch_builder(&func);
        launch
            .arg(&mut scales)
            .arg(&n_real)
            .arg(&nb_i32)
            .arg(&groups_i32)
            .arg(&total)
            .arg(&seed);
        let cfg = LaunchConfig {
            grid_dim: (fill_grid(scale_count), 1, 1),
            block_dim: (256, 1, 1),
            shared_mem_bytes: 0,
        };
        // SAFETY: arguments match w4_random_scales; `scales` holds `total`
        // u32 = groups * n_pad/16 * 8.
        unsafe { launch.launch(cfg) }.map_err(|e| driver_err("launch w4_random_scales", e))?;

        Ok(Self {
            n,
            k,
            n_pad,
            k_chunks,
            group_k32,
            weight_bytes: 4 * (word_count + scale_count),
            words,
            scales,
            neg_zero_scales: None,
            // Every scale lies in [2^-9, 2^-6) (w4_random_scales).
            subnormal_shift: super::wgmma_ws::subnormal_shift_for_range(
                RANDOM_SCALE_MIN,
                RANDOM_SCALE_MAX,
            ),
        })
    }

    /// The packed codes and scales, downloaded (tests; synchronises).
    pub fn download_packed(&self, dev: &CudaDevice) -> Result<(Vec<u32>, Vec<u32>)> {
        Ok((dev.download(&self.words)?, dev.download(&self.scales)?))
    }
}
