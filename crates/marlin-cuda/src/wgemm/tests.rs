//! Host-side checks of the repack: decoding the packed layout with the
//! kernel's arithmetic must give back `QuantTensor::dequantize`.

use marlin_quant::{quantize_rtn, Granularity, QuantScheme, QuantTensor, RtnOptions, ScaleDType};

use super::pack::{pack_wx, WxFormat};
use super::random::{random_wx, BenchFormat};
use super::reference::unpack_wx_ref;
use crate::error::CudaError;
use crate::int4::random::XorShift;

fn quantized(scheme: QuantScheme, n: usize, k: usize, seed: u64) -> QuantTensor {
    let mut rng = XorShift::new(seed);
    // Rows of different magnitude so that per-row / per-block scales differ.
    let w: Vec<f32> = (0..n * k)
        .map(|i| (rng.next_f32() - 0.5) * 0.05 * (1.0 + (i / k % 7) as f32))
        .collect();
    quantize_rtn(&w, n, k, scheme, &RtnOptions::min_max()).expect("quantize")
}

fn check_roundtrip(w: &QuantTensor, want_format: WxFormat) {
    let packed = pack_wx(w).expect("supported scheme");
    assert_eq!(packed.format, want_format);
    let want = w.dequantize().expect("reference dequantize");
    let got = unpack_wx_ref(&packed);
    let max_abs = want.iter().fold(0f32, |m, v| m.max(v.abs()));
    for (i, (g, r)) in got.iter().zip(&want).enumerate() {
        // FP4: the f16 scale rounds at 2^-11 relative; 8-bit: exact.
        let tol = 1e-3 * f64::from(r.abs()) + 1e-7 * f64::from(max_abs);
        assert!(
            (g - f64::from(*r)).abs() <= tol,
            "{:?} {}x{}: element ({}, {}) got {g} want {r}",
            w.scheme,
            w.rows,
            w.cols,
            i / w.cols,
            i % w.cols
        );
    }
    assert_eq!(packed.n_pad % 64, 0);
    assert_eq!(
        packed.words.len(),
        packed.n_pad / 16 * packed.k_chunks() * 32 * want_format.lane_words()
    );
}

#[test]
fn repack_roundtrips_every_format() {
    for &(n, k) in &[(64, 128), (37, 224), (130, 1056), (16, 96)] {
        check_roundtrip(&quantized(QuantScheme::mxfp4(), n, k, 1), WxFormat::Fp4);
        check_roundtrip(&quantized(QuantScheme::nvfp4(), n, k, 2), WxFormat::Fp4);
        check_roundtrip(
            &quantized(QuantScheme::int8_per_channel(), n, k, 3),
            WxFormat::Int8,
        );
        check_roundtrip(
            &quantized(QuantScheme::fp8_e4m3_per_channel(), n, k, 4),
            WxFormat::Fp8,
        );
        check_roundtrip(
            &quantized(QuantScheme::fp8_e4m3_block128(), n, k, 5),
            WxFormat::Fp8,
        );
    }
    // K not a multiple of 8 or 64 for the formats without K groups.
    check_roundtrip(
        &quantized(QuantScheme::int8_per_channel(), 70, 1001, 6),
        WxFormat::Int8,
    );
    check_roundtrip(
        &quantized(QuantScheme::fp8_e4m3_block128(), 200, 1001, 7),
        WxFormat::Fp8,
    );
    let int8_g64 =
        QuantScheme::int_sym(8, Granularity::PerGroup { group_size: 64 }, ScaleDType::F32);
    check_roundtrip(&quantized(int8_g64, 33, 320, 8), WxFormat::Int8);
}

#[test]
fn repack_roundtrips_int3_int2() {
    for &(n, k) in &[(64, 128), (37, 256), (130, 1152), (16, 384)] {
        for (scheme, f) in [
            (QuantScheme::int3_sym(128), WxFormat::Int3),
            (QuantScheme::int3_asym(128), WxFormat::Int3),
            (QuantScheme::int2_sym(64), WxFormat::Int2),
            (QuantScheme::int2_asym(64), WxFormat::Int2),
            (QuantScheme::int2_asym(128), WxFormat::Int2),
        ] {
            check_roundtrip(&quantized(scheme, n, k, 21), f);
        }
    }
    // Per channel: K not a multiple of 8 or 64.
    for bits in [3, 2] {
        let f = if bits == 3 {
            WxFormat::Int3
        } else {
            WxFormat::Int2
        };
        let sym = QuantScheme::int_sym(bits, Granularity::PerChannel, ScaleDType::F16);
        check_roundtrip(&quantized(sym, 70, 1001, 22), f);
        let asym = QuantScheme::int_asym(bits, Granularity::PerChannel, ScaleDType::F16);
        check_roundtrip(&quantized(asym, 70, 1000, 23), f);
    }
}

#[test]
fn random_benchmark_tensors_are_valid_and_pack() {
    for f in [
        BenchFormat::Mxfp4,
        BenchFormat::Nvfp4,
        BenchFormat::Int8,
        BenchFormat::Fp8,
        BenchFormat::Fp8Block128,
        BenchFormat::Int3,
        BenchFormat::Int2,
    ] {
        let w = random_wx(f, 80, 256, 11);
        w.validate().expect("valid tensor");
        w.check_codes().expect("finite codes");
        check_roundtrip(&w, pack_wx(&w).expect("pack").format);
        assert_eq!(BenchFormat::parse(f.name()), Some(f));
    }
}

#[test]
fn unsupported_schemes_are_errors() {
    let asym = quantized(QuantScheme::int8_asym(64), 16, 128, 1);
    assert!(matches!(pack_wx(&asym), Err(CudaError::Unsupported(_))));
    let int4 = quantized(QuantScheme::int4_sym(64), 16, 128, 1);
    assert!(matches!(pack_wx(&int4), Err(CudaError::Unsupported(_))));
    let fp4_block = quantized(
        QuantScheme::fp4_e2m1(Granularity::Block2d { rows: 16, cols: 64 }, ScaleDType::F32),
        16,
        128,
        1,
    );
    assert!(matches!(
        pack_wx(&fp4_block),
        Err(CudaError::Unsupported(_))
    ));
    let int8_g32 =
        QuantScheme::int_sym(8, Granularity::PerGroup { group_size: 32 }, ScaleDType::F32);
    assert!(matches!(
        pack_wx(&quantized(int8_g32, 16, 128, 1)),
        Err(CudaError::Unsupported(_))
    ));
    // INT3 groups of 32 (not a multiple of the 64 chunk), float zeros.
    let int3_g32 = quantized(QuantScheme::int3_sym(32), 16, 128, 1);
    assert!(matches!(pack_wx(&int3_g32), Err(CudaError::Unsupported(_))));
    let float_zero =
        QuantScheme::int_asym(2, Granularity::PerGroup { group_size: 64 }, ScaleDType::F16)
            .with_zero_point(marlin_quant::ZeroPoint::Float);
    if let Ok(t) = quantize_rtn(
        &vec![0.5f32; 16 * 128],
        16,
        128,
        float_zero,
        &RtnOptions::min_max(),
    ) {
        assert!(matches!(pack_wx(&t), Err(CudaError::Unsupported(_))));
    }
    let mut nan = quantized(QuantScheme::fp8_e4m3_per_channel(), 16, 128, 1);
    nan.data[37] = 0x7F;
    assert!(matches!(pack_wx(&nan), Err(CudaError::Shape(_))));
    let mut short = quantized(QuantScheme::mxfp4(), 16, 128, 1);
    short.data.pop();
    assert!(matches!(pack_wx(&short), Err(CudaError::Shape(_))));
}
