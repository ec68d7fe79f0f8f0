//! NF4 (NormalFloat4, QLoRA / bitsandbytes): 16 levels, quantiles of a
//! standard normal rescaled to [-1, 1], with an exact zero at code 7.

/// The NF4 levels, indexed by code (ascending): bitsandbytes' table
/// rounded to f32 (shortest round-trip literals).
pub const NF4_VALUES: [f32; 16] = [
    -1.0,
    -0.6961928,
    -0.52507305,
    -0.3949175,
    -0.28444138,
    -0.18477343,
    -0.091050036,
    0.0,
    0.0795803,
    0.1609302,
    0.2461123,
    0.33791524,
    0.44070983,
    0.562617,
    0.72295684,
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
