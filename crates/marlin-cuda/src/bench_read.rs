//! The streaming-read peer of the GEMM benchmark (`kernels/bench_read.cu`):
//! the time a kernel that only reads a weight's bytes takes, launched the
//! way the INT4 GEMMs are (programmatic dependent launch, back to back,
//! rotating over copies that do not fit in L2 together). It is the bandwidth
//! limit at that size, with the launch ramp and tail that the asymptotic copy
//! bandwidth (a 1 GiB device-to-device copy) does not have: `read us` and
//! `%read` in `marlin-cuda-bench`'s table.

use std::sync::Arc;

use cudarc::driver::{CudaSlice, LaunchConfig};

use crate::device::CudaDevice;
use crate::error::{CudaError, Result};
use crate::int4::random::XorShift;
use crate::ops::launch::KernelLaunch;

const MODULE: &str = "bench_read";
const SOURCE: &str = include_str!("kernels/bench_read.cu");
const FUNC: &str = "bench_stream_read";
const TILE_FUNC: &str = "bench_tile_read";
/// The kernels' `never`: the XOR of random bytes equals it with probability
/// 2^-32 per thread; a store then is harmless (the sink is ours).
const NEVER: u32 = 0xA5C3_0F96;
/// Threads per block (the kernel's `__launch_bounds__`).
const THREADS: u32 = 512;
/// Blocks per SM tried; the fastest counts (the peer is the best plain read).
const BLOCKS_PER_SM: [usize; 3] = [1, 2, 4];

/// The ring read peers of `kernels/bench_read.cu`: where each lane's ring
/// of 16-byte slots lives, and how many slots it has.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RingPeer {
    /// cp.async.cg into shared memory, one group per chunk (the decode
    /// kernel's delivery).
    SharedCpAsync { stages: usize },
    /// A rolling `ld.global.nc` per chunk into a register ring.
    Registers { stages: usize },
    /// 8-stage cp.async rings in 16-warp blocks (4 tiles each), one block
    /// per SM; `pad`: the launch asks for 200 KiB of shared memory, so the
    /// next call's blocks cannot be resident beside this call's (as with
    /// the whole-column decode plan's blocks) instead of 64 KiB.
    Wide { pad: bool },
    /// The decode kernel's quad-loop delivery in 16-warp blocks: 8 slots,
    /// one wait per 4 chunks, their 4 shared loads, then their 4 refills;
    /// `act`: also its activation loads (2 x 16 B per lane and chunk from
    /// a 128 KiB tile).
    WideQuad { act: bool },
    /// `WideQuad { act: true }` with the kernel's tensor work: 4 mma per
    /// chunk in 4 chains of 4, folded at the end of the quad or
    /// (`late`) one quad later.
    WideQuadMma { late: bool },
    /// `WideQuadMma { late: false }` in the whole-column decode plan's
    /// blocks: 14 warps (3.5 tiles, a tile's 2 KiB per chunk shared by two
    /// blocks); parts of the kernel's prologue (change 74), waited before
    /// the first chunk: `scales`, the block's scale rows before the ring
    /// and their fold per chunk pair; `act`, the 8-row activation tile
    /// after the PDL wait.
    KernelBlock { scales: bool, act: bool },
}

impl RingPeer {
    /// Every compiled ring peer.
    pub const ALL: [RingPeer; 15] = [
        RingPeer::SharedCpAsync { stages: 4 },
        RingPeer::SharedCpAsync { stages: 8 },
        RingPeer::SharedCpAsync { stages: 16 },
        RingPeer::Registers { stages: 4 },
        RingPeer::Registers { stages: 8 },
        RingPeer::Wide { pad: false },
        RingPeer::Wide { pad: true },
        RingPeer::WideQuad { act: false },
        RingPeer::WideQuad { act: true },
        RingPeer::WideQuadMma { late: false },
        RingPeer::WideQuadMma { late: true },
        RingPeer::KernelBlock {
            scales: false,
            act: false,
        },
        RingPeer::KernelBlock {
            scales: true,
            act: false,
        },
        RingPeer::KernelBlock {
            scales: false,
            act: true,
        },
        RingPeer::KernelBlock {
            scales: true,
            act: true,
        },
    ];

    /// Warps per block.
    fn warps(self) -> usize {
        match self {
            RingPeer::Wide { .. } | RingPeer::WideQuad { .. } | RingPeer::WideQuadMma { .. } => 16,
            RingPeer::KernelBlock { .. } => 14,
            _ => 4,
        }
    }

    fn func(self) -> &'static str {
        match self {
            RingPeer::SharedCpAsync { stages: 4 } => "bench_ring_read_s4",
            RingPeer::SharedCpAsync { stages: 8 } => "bench_ring_read_s8",
            RingPeer::SharedCpAsync { .. } => "bench_ring_read_s16",
            RingPeer::Registers { stages: 4 } => "bench_reg_read_s4",
            RingPeer::Registers { .. } => "bench_reg_read_s8",
            RingPeer::Wide { .. } => "bench_ring_read_w16_s8",
            RingPeer::WideQuad { act: false } => "bench_ring_quad_w16",
            RingPeer::WideQuad { act: true } => "bench_ring_quad_act_w16",
            RingPeer::WideQuadMma { late: false } => "bench_ring_quad_mma_w16",
            RingPeer::WideQuadMma { late: true } => "bench_ring_quad_mma_late_w16",
            RingPeer::KernelBlock {
                scales: false,
                act: false,
            } => "bench_ring_quad_mma_w14",
            RingPeer::KernelBlock {
                scales: true,
                act: false,
            } => "bench_ring_quad_mma_scl_w14",
            RingPeer::KernelBlock {
                scales: false,
                act: true,
            } => "bench_ring_quad_mma_act_w14",
            RingPeer::KernelBlock {
                scales: true,
                act: true,
            } => "bench_ring_quad_mma_pro_w14",
        }
    }

    fn shared_bytes(self) -> u32 {
        match self {
            // 4 warps x stages x 32 lanes x 16 B.
            RingPeer::SharedCpAsync { stages } => (stages * 2048) as u32,
            RingPeer::Registers { .. } => 0,
            // 16 warps x 8 stages x 512 B; padded to 200 KiB.
            RingPeer::Wide { pad: false } => 64 * 1024,
            RingPeer::Wide { pad: true } => 200 * 1024,
            // 16 warps x 8 stages x 512 B, then (`act`) 8 rows x (128
            // chunks x 64 + 8) halves.
            RingPeer::WideQuad { act: false } => 64 * 1024,
            RingPeer::WideQuad { act: true } | RingPeer::WideQuadMma { .. } => {
                (64 * 1024 + 8 * (128 * 64 + 8) * 2) as u32
            }
            // 14 warps x 8 stages x 512 B, the activation tile, then
            // (`scales`) 65 scale rows (128 chunks in groups of 128, + 1)
            // x 14 x 8 u32.
            RingPeer::KernelBlock { scales, .. } => {
                (14 * 4096 + 8 * (128 * 64 + 8) * 2 + if scales { 65 * 448 } else { 0 }) as u32
            }
        }
    }

    /// Short label for the benchmark's lines.
    pub fn label(self) -> String {
        match self {
            RingPeer::SharedCpAsync { stages } => format!("cp.async s{stages}"),
            RingPeer::Registers { stages } => format!("regs s{stages}"),
            RingPeer::Wide { pad: false } => "16 warps s8 64K".into(),
            RingPeer::Wide { pad: true } => "16 warps s8 200K".into(),
            RingPeer::WideQuad { act: false } => "16 warps quad".into(),
            RingPeer::WideQuad { act: true } => "16 warps quad+act".into(),
            RingPeer::WideQuadMma { late: false } => "16 warps quad+act+mma".into(),
            RingPeer::WideQuadMma { late: true } => "16 warps quad+act+mma late fold".into(),
            RingPeer::KernelBlock { scales, act } => format!(
                "14 warps quad+act+mma{}{}",
                if scales { " +scale rows" } else { "" },
                if act { " +act tile" } else { "" }
            ),
        }
    }
}

/// Weight-sized buffers the read kernel rotates over (as the GEMM rotates
/// over weight copies), filled with random bytes.
pub struct ReadPeer {
    copies: Vec<CudaSlice<u8>>,
    sink: CudaSlice<u32>,
    words: i64,
}

impl ReadPeer {
    /// `copies` buffers of `bytes` bytes (rounded down to 16-byte words).
    pub fn new(dev: &CudaDevice, bytes: usize, copies: usize) -> Result<Self> {
        let words = bytes / 16;
        if words == 0 || copies == 0 {
            return Err(CudaError::Shape(format!(
                "streaming-read peer of {bytes} bytes x {copies} copies (needs >= 16 bytes, >= 1 copy)"
            )));
        }
        let mut rng = XorShift::new(bytes as u64 ^ 0x5EED);
        let host: Vec<u8> = (0..words * 16).map(|_| rng.next_u64() as u8).collect();
        let copies = (0..copies)
            .map(|_| dev.upload("streaming-read peer buffer", &host))
            .collect::<Result<_>>()?;
        let words = i64::try_from(words)
            .map_err(|_| CudaError::Shape(format!("{bytes} bytes exceed i64 words")))?;
        Ok(Self {
            copies,
            sink: dev.alloc_zeros::<u32>("streaming-read sink", 1)?,
            words,
        })
    }

    /// One launch reading copy `i % copies` with `blocks` blocks.
    fn launch(&self, dev: &Arc<CudaDevice>, i: usize, blocks: u32) -> Result<()> {
        let func = dev.function(MODULE, SOURCE, FUNC, 0)?;
        let cfg = LaunchConfig {
            grid_dim: (blocks, 1, 1),
            block_dim: (THREADS, 1, 1),
            shared_mem_bytes: 0,
        };
        let n = self.copies.len();
        let mut launch = KernelLaunch::new(dev, &func, FUNC);
        launch
            .arg(&self.copies[i % n])
            .arg(&self.words)
            .arg(&self.sink)
            .arg(&NEVER);
        // SAFETY: parameters as in the kernel (const uint4*, long long,
        // u32*, u32); the kernel reads `words` 16-byte words of the buffer
        // (which holds words * 16 bytes) and may write sink[0]; it writes
        // only after griddepcontrol.wait.
        unsafe { launch.launch_pdl(cfg) }
    }

    /// Time per read (us) with the best blocks-per-SM count, timed by
    /// `time` (the benchmark's CUDA-event timer: fastest of batches of
    /// back-to-back calls).
    pub fn time_us(
        &self,
        dev: &Arc<CudaDevice>,
        mut time: impl FnMut(&mut dyn FnMut(usize) -> Result<()>) -> Result<f64>,
    ) -> Result<f64> {
        let mut best = f64::INFINITY;
        for per_sm in BLOCKS_PER_SM {
            let blocks = u32::try_from(dev.sm_count().max(1) * per_sm)
                .map_err(|_| CudaError::Shape("SM count exceeds u32".into()))?;
            let us = time(&mut |i| self.launch(dev, i, blocks))?;
            best = best.min(us);
        }
        Ok(best)
    }

    /// Time of reading `n_tiles` x `k_chunks` 2 KiB code blocks of the
    /// INT4 pack the way the decode kernel delivers them
    /// (`bench_ring_read_s*` / `bench_reg_read_s*`): one 128-thread block
    /// per tile (16-warp blocks: per 4 tiles) and split, each lane streaming its column block's 16-byte
    /// words through a private ring of `ring.stages()` slots, in shared
    /// memory (cp.async) or in registers.
    pub fn time_ring_us(
        &self,
        dev: &Arc<CudaDevice>,
        (n_tiles, k_chunks): (usize, usize),
        (ring, splits): (RingPeer, usize),
        time: impl FnOnce(&mut dyn FnMut(usize) -> Result<()>) -> Result<f64>,
    ) -> Result<f64> {
        let codes = n_tiles
            .checked_mul(k_chunks)
            .and_then(|x| x.checked_mul(128))
            .ok_or_else(|| CudaError::Shape("ring read size overflows".into()))?;
        if splits == 0 || splits > k_chunks || i64::try_from(codes).map_or(true, |c| c > self.words)
        {
            return Err(CudaError::Shape(format!(
                "ring read of {n_tiles} tiles x {k_chunks} chunks x {splits} splits over {} words",
                self.words
            )));
        }
        let to_u32 = |what: &str, v: usize| {
            u32::try_from(v).map_err(|_| CudaError::Shape(format!("{what} {v} exceeds u32")))
        };
        // Warp w of block y streams column block y * warps + w (4 per tile).
        let column_blocks = n_tiles
            .checked_mul(4)
            .ok_or_else(|| CudaError::Shape("ring read column blocks overflow".into()))?;
        if !column_blocks.is_multiple_of(ring.warps()) {
            return Err(CudaError::Shape(format!(
                "ring read of {column_blocks} column blocks in blocks of {} warps",
                ring.warps()
            )));
        }
        // The kernel-block peers' activation tile and scale rows hold 128 chunks.
        if matches!(ring, RingPeer::KernelBlock { .. }) && k_chunks > 128 {
            return Err(CudaError::Shape(format!(
                "{} holds 128 chunks, not {k_chunks}",
                ring.label()
            )));
        }
        let grid = (
            1,
            to_u32("column blocks", column_blocks / ring.warps())?,
            to_u32("splits", splits)?,
        );
        let threads = to_u32("threads", 32 * ring.warps())?;
        let k_chunks = i32::try_from(k_chunks).map_err(|_| CudaError::Shape("k_chunks".into()))?;
        let name = ring.func();
        let smem = ring.shared_bytes();
        // The function's attribute is set once, at its first load: the
        // largest launch of the entry.
        let max_smem = match ring {
            RingPeer::Wide { .. } => RingPeer::Wide { pad: true }.shared_bytes(),
            _ => smem,
        };
        let func = dev.function(MODULE, SOURCE, name, max_smem)?;
        let n = self.copies.len();
        time(&mut |i| {
            let cfg = LaunchConfig {
                grid_dim: grid,
                block_dim: (threads, 1, 1),
                shared_mem_bytes: smem,
            };
            let mut launch = KernelLaunch::new(dev, &func, name);
            launch
                .arg(&self.copies[i % n])
                .arg(&k_chunks)
                .arg(&self.sink)
                .arg(&NEVER)
                .arg(&self.copies[(i + 1) % n]);
            // SAFETY: parameters as in the kernel (const uint4*, int, u32*,
            // u32, const uint4*); block (y, z) reads only words of its
            // column blocks (< n_tiles * 4, a multiple of the warps per
            // block) below n_tiles * k_chunks * 128 (checked above against
            // `words`); the kernel-block peers also read the first 8 x
            // k_chunks x 8 words of the same copy and (k_chunks / 2 + 1) x
            // n_tiles x 8 words of the next one (k_chunks <= 128, both
            // below that bound); its rings, tile and rows are within
            // `smem` bytes of dynamic shared memory, and it may write
            // sink[0] after griddepcontrol.wait.
            unsafe { launch.launch_pdl(cfg) }
        })
    }

    /// Time of reading `n_tiles` x `k_chunks` 2 KiB code blocks of the
    /// INT4 pack in the split-K GEMMs' order (`bench_tile_read`): blocks of
    /// `tiles_per_block` (<= 8) tiles x `splits` K splits, one 512-thread
    /// block each; `grouped`: in a layout where a block's pieces of one
    /// chunk are contiguous instead of the pack's tile-major one.
    pub fn time_tiles_us(
        &self,
        dev: &Arc<CudaDevice>,
        (n_tiles, k_chunks): (usize, usize),
        (tiles_per_block, splits, grouped): (usize, usize, bool),
        time: impl FnOnce(&mut dyn FnMut(usize) -> Result<()>) -> Result<f64>,
    ) -> Result<f64> {
        let codes = n_tiles
            .checked_mul(k_chunks)
            .and_then(|x| x.checked_mul(128))
            .ok_or_else(|| CudaError::Shape("tile read size overflows".into()))?;
        if !(1..=8).contains(&tiles_per_block)
            || !n_tiles.is_multiple_of(tiles_per_block)
            || splits == 0
            || splits > k_chunks
            || i64::try_from(codes).map_or(true, |c| c > self.words)
        {
            return Err(CudaError::Shape(format!(
                "tile read of {n_tiles} tiles x {k_chunks} chunks in blocks of {tiles_per_block} \
                 x {splits} splits over {} words",
                self.words
            )));
        }
        let to_u32 = |what: &str, v: usize| {
            u32::try_from(v).map_err(|_| CudaError::Shape(format!("{what} {v} exceeds u32")))
        };
        let grid = (
            1,
            to_u32("column blocks", n_tiles / tiles_per_block)?,
            to_u32("splits", splits)?,
        );
        let args = (
            i32::try_from(k_chunks).map_err(|_| CudaError::Shape("k_chunks".into()))?,
            tiles_per_block as i32,
            i32::from(grouped),
        );
        let func = dev.function(MODULE, SOURCE, TILE_FUNC, 0)?;
        let n = self.copies.len();
        time(&mut |i| {
            let cfg = LaunchConfig {
                grid_dim: grid,
                block_dim: (THREADS, 1, 1),
                shared_mem_bytes: 0,
            };
            let mut launch = KernelLaunch::new(dev, &func, TILE_FUNC);
            launch
                .arg(&self.copies[i % n])
                .arg(&args.0)
                .arg(&args.1)
                .arg(&args.2)
                .arg(&self.sink)
                .arg(&NEVER);
            // SAFETY: parameters as in the kernel (const uint4*, int, int,
            // int, u32*, u32); it reads only words below n_tiles * k_chunks
            // * 128 (the grid covers n_tiles / G column blocks of G tiles,
            // checked above against the buffer's `words`) and may write
            // sink[0] after griddepcontrol.wait.
            unsafe { launch.launch_pdl(cfg) }
        })
    }
}
