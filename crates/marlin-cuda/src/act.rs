//! Activation element types of the mixed-input GEMMs: f16 and bf16.
//!
//! The GEMM entry points ([`crate::int4::gemm::int4_gemm`],
//! [`crate::int4::gemm::int4_gemm_prepared`], and the `wgemm` ones) are
//! generic over [`ActDtype`], implemented for `half::f16` and `half::bf16`
//! only (sealed): A and C have that type, accumulation is fp32. Existing
//! f16 callers infer `f16` and see no change.
//!
//! Kernels: the same `.cu` source is compiled a second time with
//! `#define MARLIN_ACT_BF16 1` in front (a module of its own name, so a
//! cache key of its own); `kernels/marlin_common.cuh` switches the
//! activation-type helpers on it (mma / wgmma operand type, the INT4 magic
//! number dequantisers, fma, conversions, stores). The f16 modules are
//! compiled from unchanged text, so their code does not change.
//!
//! Weight scales stay f16 in the device weights for both types: the bf16
//! kernels convert a scale (and a `-zero * scale` term) to bf16 when they
//! load it, or apply it in fp32 where the f16 kernels do (the symmetric
//! decode kernels). Precision is discussed in docs/CUDA.md (change 45).

use cudarc::cublas::{CudaBlas, Gemm, GemmConfig};
use cudarc::driver::{CudaView, CudaViewMut, DevicePtr, DevicePtrMut, DeviceRepr, ValidAsZeroBits};
use half::{bf16, f16};

/// The activation type of a call, as a value (the type parameter of the
/// generic entry points is [`ActDtype`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Act {
    F16,
    Bf16,
}

impl Act {
    /// "f16" or "bf16".
    pub fn name(self) -> &'static str {
        match self {
            Act::F16 => "f16",
            Act::Bf16 => "bf16",
        }
    }

    /// Parses "f16" / "fp16" / "half" and "bf16".
    pub fn parse(s: &str) -> Option<Act> {
        match s.to_ascii_lowercase().as_str() {
            "f16" | "fp16" | "half" => Some(Act::F16),
            "bf16" => Some(Act::Bf16),
            _ => None,
        }
    }
}

mod sealed {
    pub trait Sealed {}
    impl Sealed for half::f16 {}
    impl Sealed for half::bf16 {}
}

/// An activation element type of the GEMMs: `half::f16` or `half::bf16`.
pub trait ActDtype:
    sealed::Sealed + DeviceRepr + ValidAsZeroBits + Copy + Default + Send + Sync + Unpin + 'static
{
    const ACT: Act;
    const ONE: Self;
    const ZERO: Self;
    const NAN: Self;
    fn from_f32(x: f32) -> Self;
    fn to_f32(self) -> f32;

    /// cuBLAS GemmEx of this type (fp32 compute).
    ///
    /// # Safety
    /// As [`Gemm::gemm`]: the buffers must hold the matrices `cfg` describes.
    #[doc(hidden)]
    unsafe fn blas_gemm<A: DevicePtr<Self>, B: DevicePtr<Self>, C: DevicePtrMut<Self>>(
        blas: &CudaBlas,
        cfg: GemmConfig<Self>,
        a: &A,
        b: &B,
        c: &mut C,
    ) -> Result<(), cudarc::cublas::result::CublasError>;

    /// The same view as f16 where `Self` is f16 (the f16-only kernels'
    /// launchers take f16 views), else None.
    #[doc(hidden)]
    fn as_f16<'a, 'b>(v: &'a CudaView<'b, Self>) -> Option<&'a CudaView<'b, f16>>;
    #[doc(hidden)]
    fn as_f16_mut<'a, 'b>(v: &'a mut CudaViewMut<'b, Self>)
        -> Option<&'a mut CudaViewMut<'b, f16>>;
}

impl ActDtype for f16 {
    const ACT: Act = Act::F16;
    const ONE: Self = f16::ONE;
    const ZERO: Self = f16::ZERO;
    const NAN: Self = f16::NAN;
    fn from_f32(x: f32) -> Self {
        f16::from_f32(x)
    }
    fn to_f32(self) -> f32 {
        f16::to_f32(self)
    }
    unsafe fn blas_gemm<A: DevicePtr<Self>, B: DevicePtr<Self>, C: DevicePtrMut<Self>>(
        blas: &CudaBlas,
        cfg: GemmConfig<Self>,
        a: &A,
        b: &B,
        c: &mut C,
    ) -> Result<(), cudarc::cublas::result::CublasError> {
        blas.gemm(cfg, a, b, c)
    }
    fn as_f16<'a, 'b>(v: &'a CudaView<'b, Self>) -> Option<&'a CudaView<'b, f16>> {
        Some(v)
    }
    fn as_f16_mut<'a, 'b>(
        v: &'a mut CudaViewMut<'b, Self>,
    ) -> Option<&'a mut CudaViewMut<'b, f16>> {
        Some(v)
    }
}

impl ActDtype for bf16 {
    const ACT: Act = Act::Bf16;
    const ONE: Self = bf16::ONE;
    const ZERO: Self = bf16::ZERO;
    const NAN: Self = bf16::NAN;
    fn from_f32(x: f32) -> Self {
        bf16::from_f32(x)
    }
    fn to_f32(self) -> f32 {
        bf16::to_f32(self)
    }
    unsafe fn blas_gemm<A: DevicePtr<Self>, B: DevicePtr<Self>, C: DevicePtrMut<Self>>(
        blas: &CudaBlas,
        cfg: GemmConfig<Self>,
        a: &A,
        b: &B,
        c: &mut C,
    ) -> Result<(), cudarc::cublas::result::CublasError> {
        blas.gemm(cfg, a, b, c)
    }
    fn as_f16<'a, 'b>(_: &'a CudaView<'b, Self>) -> Option<&'a CudaView<'b, f16>> {
        None
    }
    fn as_f16_mut<'a, 'b>(
        _: &'a mut CudaViewMut<'b, Self>,
    ) -> Option<&'a mut CudaViewMut<'b, f16>> {
        None
    }
}

/// Host emulation of the bf16 INT4 dequantisers of
/// `kernels/marlin_common.cuh` (MARLIN_ACT_BF16): the magic numbers and the
/// nibble-to-fragment mapping, bit for bit, against direct arithmetic.
#[cfg(test)]
mod tests {
    use half::{bf16, f16};

    use super::Act;
    use crate::int4::random::XorShift;

    const MAGIC: u32 = 0x4300_4300; // (128, 128)
    const M136: u32 = 0x4308_4308; // (136, 136)
    const LO: u32 = 0x000F_000F;
    const NEG8: u32 = 0xC100_C100;

    fn halves(x: u32) -> [bf16; 2] {
        [bf16::from_bits(x as u16), bf16::from_bits((x >> 16) as u16)]
    }
    fn pack(lo: bf16, hi: bf16) -> u32 {
        u32::from(lo.to_bits()) | (u32::from(hi.to_bits()) << 16)
    }
    /// fma.rn.bf16x2: exact a * b + c (two 8-bit significands: exact in
    /// f64 at these magnitudes), rounded once to bf16.
    fn fma2(a: u32, b: u32, c: u32) -> u32 {
        let (a, b, c) = (halves(a), halves(b), halves(c));
        let f = |i: usize| bf16::from_f64(a[i].to_f64() * b[i].to_f64() + c[i].to_f64());
        pack(f(0), f(1))
    }
    fn sub2(a: u32, b: u32) -> u32 {
        fma2(b, 0xBF80_BF80, a)
    }
    fn mul2(a: u32, b: u32) -> u32 {
        fma2(a, b, 0x8000_8000)
    }
    fn lop3(a: u32, b: u32, c: u32) -> u32 {
        (a & b) | c
    }
    /// scale2_to_act2: f16x2 -> f32 (exact) -> bf16 (cvt.rn).
    fn scale2_to_act2(s: u32) -> u32 {
        let f = |h: u32| bf16::from_f32(f16::from_bits(h as u16).to_f32());
        pack(f(s & 0xFFFF), f(s >> 16))
    }
    fn dequant_word(q: u32, s0: u32, s1: u32, z0: u32, z1: u32) -> [[u32; 2]; 2] {
        [
            [
                fma2(sub2(lop3(q, LO, MAGIC), MAGIC), s0, z0),
                fma2(sub2(lop3(q >> 4, LO, MAGIC), MAGIC), s0, z0),
            ],
            [
                fma2(sub2(lop3(q >> 8, LO, MAGIC), MAGIC), s1, z1),
                fma2(sub2(lop3(q >> 12, LO, MAGIC), MAGIC), s1, z1),
            ],
        ]
    }
    fn dequant_word_unscaled(q: u32) -> [u32; 4] {
        [
            sub2(lop3(q, LO, MAGIC), M136),
            sub2(lop3(q >> 8, LO, MAGIC), M136),
            sub2(lop3(q >> 4, LO, MAGIC), M136),
            sub2(lop3(q >> 12, LO, MAGIC), M136),
        ]
    }
    fn nibble(q: u32, pos: u32) -> f64 {
        f64::from((q >> (4 * pos)) & 15)
    }

    #[test]
    fn bf16_constants() {
        for u in 0..16u16 {
            assert_eq!(bf16::from_bits(0x4300 | u).to_f64(), 128.0 + f64::from(u));
        }
        assert_eq!(bf16::from_bits(0x4308).to_f64(), 136.0);
        assert_eq!(bf16::from_bits(0xC100).to_f64(), -8.0);
        assert_eq!(bf16::from_bits(0xBF80).to_f64(), -1.0);
        // The high nibble of a byte may not be OR-ed in place (f16's
        // x/16 - 64 trick): bit 7 is bf16's lowest exponent bit.
        // (u = 9 there: 0x4390 is 288, not 128 + 16 * 9 = 272.)
        assert_eq!(bf16::from_bits(0x4300 | 0x90).to_f64(), 288.0);
    }

    /// Fragment register (h, r) of dequant_word holds nibble positions
    /// (2h + r, 2h + r + 4) in its (low, high) halves, as the f16 version
    /// (lop3 with 0x000F000F / 0x00F000F0 of q and q >> 8), each equal to
    /// the bf16 rounding of (u - 8) * bf16(scale) (symmetric: zero term
    /// -8 * scale, exact) or u * scale + bf16(-zero * scale).
    #[test]
    fn dequant_word_matches_direct_arithmetic() {
        let mut rng = XorShift::new(0xBF16);
        for _ in 0..2000 {
            let q = rng.next_u64() as u32;
            // Scales over several binades, as f16 bits.
            let sf = |r: &mut XorShift| {
                f16::from_f32((0.5 + r.next_f32()) * 2f32.powi(-((r.next_u64() % 10) as i32)))
            };
            let (sa, sb, sc, sd) = (sf(&mut rng), sf(&mut rng), sf(&mut rng), sf(&mut rng));
            let s_f16 =
                |lo: f16, hi: f16| u32::from(lo.to_bits()) | (u32::from(hi.to_bits()) << 16);
            let s = scale2_to_act2(s_f16(sa, sb));
            let s2 = scale2_to_act2(s_f16(sc, sd));
            let dup_lo = |x: u32| (x & 0xFFFF) | (x << 16);
            let dup_hi = |x: u32| (x >> 16) | (x & 0xFFFF_0000);
            let (s0, s1) = (dup_lo(s), dup_hi(s));
            // Symmetric.
            let (z0, z1) = (mul2(s0, NEG8), mul2(s1, NEG8));
            let b = dequant_word(q, s0, s1, z0, z1);
            let scale = |h: usize| halves(if h == 0 { s0 } else { s1 })[0].to_f64();
            for (h, regs) in b.iter().enumerate() {
                for (r, &reg) in regs.iter().enumerate() {
                    let pos = (2 * h + r) as u32;
                    let got = halves(reg);
                    for (half, p) in [(0, pos), (1, pos + 4)] {
                        let want = bf16::from_f64((nibble(q, p) - 8.0) * scale(h));
                        assert_eq!(got[half], want, "q={q:08x} h={h} r={r} half={half}");
                    }
                }
            }
            // Asymmetric: z = bf16(-zero * scale) from an f16 term.
            let zero = (rng.next_u64() % 16) as f32;
            let zt = scale2_to_act2(s_f16(
                f16::from_f32(-zero * sc.to_f32()),
                f16::from_f32(-zero * sd.to_f32()),
            ));
            let (s0, s1, z0, z1) = (dup_lo(s2), dup_hi(s2), dup_lo(zt), dup_hi(zt));
            let b = dequant_word(q, s0, s1, z0, z1);
            for (h, regs) in b.iter().enumerate() {
                let (sv, zv) = if h == 0 { (s0, z0) } else { (s1, z1) };
                for (r, &reg) in regs.iter().enumerate() {
                    let pos = (2 * h + r) as u32;
                    let got = halves(reg);
                    for (half, p) in [(0, pos), (1, pos + 4)] {
                        let want = bf16::from_f64(
                            nibble(q, p) * halves(sv)[0].to_f64() + halves(zv)[0].to_f64(),
                        );
                        assert_eq!(got[half], want, "asym q={q:08x} h={h} r={r}");
                    }
                }
            }
        }
    }

    /// dequant_word_unscaled: register i of the m16k16 fragment holds
    /// (u - 8) of nibble positions (0, 4), (2, 6), (1, 5), (3, 7) for
    /// i = 0..3, exactly.
    #[test]
    fn dequant_word_unscaled_is_exact() {
        let mut rng = XorShift::new(17);
        for _ in 0..2000 {
            let q = rng.next_u64() as u32;
            let wa = dequant_word_unscaled(q);
            for (i, pos) in [0u32, 2, 1, 3].into_iter().enumerate() {
                let got = halves(wa[i]);
                assert_eq!(got[0].to_f64(), nibble(q, pos) - 8.0, "q={q:08x} reg {i}");
                assert_eq!(
                    got[1].to_f64(),
                    nibble(q, pos + 4) - 8.0,
                    "q={q:08x} reg {i}"
                );
            }
        }
    }

    #[test]
    fn act_names_parse_back() {
        for act in [Act::F16, Act::Bf16] {
            assert_eq!(Act::parse(act.name()), Some(act));
        }
        assert_eq!(Act::parse("fp16"), Some(Act::F16));
        assert_eq!(Act::parse("f32"), None);
    }
}
