//! NF4 (NormalFloat4, QLoRA / bitsandbytes): 16 levels, quantiles of a
//! standard normal rescaled to [-1, 1], with an exact zero at code 7.

/// The NF4 levels, indexed by code (ascending). Values as in bitsandbytes.
pub const NF4_VALUES: [f32; 16] = [
    -1.0,
    -0.696_192_800_998_687_7,
    -0.525_073_051_452_636_7,
    -0.394_917_488_098_144_53,
    -0.284_441_381_692_886_35,
    -0.184_773_430_228_233_34,
    -0.091_050_036_251_544_95,
    0.0,
    0.079_580_299_556_255_34,
    0.160_930_201_411_247_25,
    0.246_112_301_945_686_34,
    0.337_915_241_718_292_24,
    0.440_709_829_330_444_34,
    0.562_617_003_917_694_1,
    0.722_956_836_223_602_3,
    1.0,
];

/// The NF4 code whose value is 0.
pub const NF4_ZERO_CODE: u8 = 7;

/// Decodes the low 4 bits of `code`.
pub fn nf4_to_f32(code: u8) -> f32 {
    NF4_VALUES[usize::from(code & 0xf)]
}

/// Nearest NF4 level (ties to the even code; never happen for f32 inputs
/// in practice). Values outside [-1, 1] and infinities saturate; NaN encodes
/// to the zero code.
pub fn f32_to_nf4(x: f32) -> u8 {
    if x.is_nan() {
        return NF4_ZERO_CODE;
    }
    let x = f64::from(x);
    let mut best = 0u8;
    let mut best_dist = f64::INFINITY;
    for (code, &level) in NF4_VALUES.iter().enumerate() {
        let dist = (x - f64::from(level)).abs();
        if dist < best_dist || (dist == best_dist && code % 2 == 0) {
            best = code as u8;
            best_dist = dist;
        }
    }
    best
}
