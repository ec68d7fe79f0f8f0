//! Bad input is an error, never a panic.

use marlin_quant::{QuantError, QuantScheme};
use marlin_quantize::{
    awq_quantize, gptq_quantize, mr_gptq_quantize, output_error, AwqOptions, GptqOptions, Hessian,
    HessianAccumulator, MrGptqOptions, QuantizeError, Rotation, ScaleSearch,
};

fn identity(k: usize) -> Hessian {
    let mut h = vec![0.0; k * k];
    for i in 0..k {
        h[i * k + i] = 1.0;
    }
    Hessian::from_matrix(h, k, 1).unwrap()
}

#[test]
fn nan_weights() {
    let mut w = vec![0.5f32; 4 * 64];
    w[70] = f32::NAN;
    let h = identity(64);
    let s = QuantScheme::int4_asym(32);
    assert!(matches!(
        gptq_quantize(&w, 4, 64, &h, &s, &GptqOptions::default()),
        Err(QuantizeError::NonFinite { index: 70, .. })
    ));
    assert!(matches!(
        mr_gptq_quantize(&w, 4, 64, &h, &s, &MrGptqOptions::default()),
        Err(QuantizeError::NonFinite { index: 70, .. })
    ));
    assert!(matches!(
        awq_quantize(&w, 4, 64, &[1.0; 64], 1, &s, &AwqOptions::default()),
        Err(QuantizeError::NonFinite { index: 70, .. })
    ));
    let mut x = vec![1.0f32; 64];
    x[5] = f32::INFINITY;
    assert!(matches!(
        awq_quantize(&[0.5; 4 * 64], 4, 64, &x, 1, &s, &AwqOptions::default()),
        Err(QuantizeError::NonFinite {
            what: "activations",
            index: 5,
            ..
        })
    ));
}

#[test]
fn huge_weights() {
    let mut w = vec![0.5f32; 4 * 64];
    w[9] = 1e38;
    let h = identity(64);
    let s = QuantScheme::int4_asym(32);
    assert!(matches!(
        gptq_quantize(&w, 4, 64, &h, &s, &GptqOptions::default()),
        Err(QuantizeError::WeightTooLarge { index: 9, .. })
    ));
    assert!(matches!(
        awq_quantize(&w, 4, 64, &[1.0; 64], 1, &s, &AwqOptions::default()),
        Err(QuantizeError::WeightTooLarge { index: 9, .. })
    ));
}

#[test]
fn group_not_dividing_k() {
    let w = vec![0.5f32; 4 * 96];
    let h = identity(96);
    let s = QuantScheme::int4_asym(64);
    for result in [
        gptq_quantize(&w, 4, 96, &h, &s, &GptqOptions::default()).map(|_| ()),
        mr_gptq_quantize(&w, 4, 96, &h, &s, &MrGptqOptions::default()).map(|_| ()),
        awq_quantize(&w, 4, 96, &[1.0; 96], 1, &s, &AwqOptions::default()).map(|_| ()),
    ] {
        assert!(matches!(
            result,
            Err(QuantizeError::Quant(QuantError::GroupSize {
                group: 64,
                k: 96
            }))
        ));
    }
}

#[test]
fn wrong_shapes() {
    let h = identity(64);
    let s = QuantScheme::int4_asym(32);
    assert!(matches!(
        gptq_quantize(
            &[0.5; 4 * 64],
            4,
            64,
            &identity(32),
            &s,
            &GptqOptions::default()
        ),
        Err(QuantizeError::HessianSize { got: 32, k: 64 })
    ));
    assert!(matches!(
        mr_gptq_quantize(
            &[0.5; 4 * 64],
            4,
            64,
            &identity(32),
            &s,
            &MrGptqOptions::default()
        ),
        Err(QuantizeError::HessianSize { got: 32, k: 64 })
    ));
    assert!(matches!(
        gptq_quantize(&[0.5; 100], 4, 64, &h, &s, &GptqOptions::default()),
        Err(QuantizeError::Shape(_))
    ));
    assert!(matches!(
        gptq_quantize(&[], 0, 64, &h, &s, &GptqOptions::default()),
        Err(QuantizeError::Quant(QuantError::Shape(_)))
    ));
    assert!(matches!(
        awq_quantize(
            &[0.5; 4 * 64],
            4,
            64,
            &[1.0; 65],
            1,
            &s,
            &AwqOptions::default()
        ),
        Err(QuantizeError::Shape(_))
    ));
    assert!(Rotation::new(64, 24).is_err());
    assert!(Rotation::new(64, 32)
        .unwrap()
        .rotate_rows(&[1.0; 63], 1)
        .is_err());
}

#[test]
fn empty_calibration() {
    let acc = HessianAccumulator::new(64).unwrap();
    assert!(matches!(
        acc.finish(),
        Err(QuantizeError::EmptyCalibration(_))
    ));
    let mut acc = HessianAccumulator::new(64).unwrap();
    acc.add_batch(&[], 0).unwrap();
    assert!(matches!(
        acc.finish(),
        Err(QuantizeError::EmptyCalibration(_))
    ));
    assert!(matches!(
        awq_quantize(
            &[0.5; 4 * 64],
            4,
            64,
            &[],
            0,
            &QuantScheme::int4_asym(32),
            &AwqOptions::default()
        ),
        Err(QuantizeError::EmptyCalibration(_))
    ));
}

#[test]
fn bad_options_and_schemes() {
    let w = [0.5f32; 4 * 64];
    let h = identity(64);
    let s = QuantScheme::int4_asym(32);
    let bad = [
        GptqOptions {
            percdamp: f64::NAN,
            ..GptqOptions::default()
        },
        GptqOptions {
            percdamp: -1.0,
            ..GptqOptions::default()
        },
        GptqOptions {
            block_size: 0,
            ..GptqOptions::default()
        },
        GptqOptions {
            scale_search: ScaleSearch::Grid {
                candidates: 0,
                low: 0.5,
                high: 1.0,
            },
            ..GptqOptions::default()
        },
        GptqOptions {
            scale_search: ScaleSearch::Grid {
                candidates: 4,
                low: 1.5,
                high: 1.0,
            },
            ..GptqOptions::default()
        },
    ];
    for opts in bad {
        assert!(
            matches!(
                gptq_quantize(&w, 4, 64, &h, &s, &opts),
                Err(QuantizeError::InvalidOption(_))
            ),
            "{opts:?}"
        );
    }
    assert!(matches!(
        gptq_quantize(
            &w,
            4,
            64,
            &h,
            &QuantScheme::fp8_e4m3_per_tensor(),
            &GptqOptions::default()
        ),
        Err(QuantizeError::Unsupported(_))
    ));
    // A signed grid with a zero point is rejected by the scheme itself.
    let broken = QuantScheme::int4_sym(32).with_zero_point(marlin_quant::ZeroPoint::Int);
    assert!(matches!(
        gptq_quantize(&w, 4, 64, &h, &broken, &GptqOptions::default()),
        Err(QuantizeError::Quant(QuantError::Unsupported(_)))
    ));
    assert!(matches!(
        awq_quantize(
            &w,
            4,
            64,
            &[1.0; 64],
            1,
            &s,
            &AwqOptions {
                grid: 0,
                ..AwqOptions::default()
            }
        ),
        Err(QuantizeError::InvalidOption(_))
    ));
    assert!(matches!(
        mr_gptq_quantize(
            &w,
            4,
            64,
            &h,
            &s,
            &MrGptqOptions {
                max_rotation_block: 0,
                ..MrGptqOptions::default()
            }
        ),
        Err(QuantizeError::InvalidOption(_))
    ));
}

#[test]
fn output_error_with_k_zero_and_huge_rows_times_n() {
    // K = 0 makes every buffer empty, so only rows x N can overflow.
    assert!(matches!(
        output_error(&[], usize::MAX, &[], &[], 2, 0),
        Err(QuantizeError::Shape(_))
    ));
    assert_eq!(output_error(&[], 3, &[], &[], 2, 0).unwrap(), 0.0);
}

#[test]
fn awq_result_with_edited_scales_is_an_error() {
    let scheme = QuantScheme::int4_sym(32);
    let x: Vec<f32> = (0..2 * 64).map(|i| (i % 7) as f32 - 3.0).collect();
    let w: Vec<f32> = (0..4 * 64).map(|i| (i % 5) as f32 * 0.1 - 0.2).collect();
    let mut r = awq_quantize(&w, 4, 64, &x, 2, &scheme, &AwqOptions::default()).unwrap();
    assert!(r.dequantize_unscaled().is_ok());
    r.scales.clear();
    assert!(matches!(
        r.dequantize_unscaled(),
        Err(QuantizeError::Shape(_))
    ));
}
