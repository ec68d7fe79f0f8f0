//! Errors of the offline quantizers.

use marlin_quant::QuantError;

/// Errors of GPTQ, MR-GPTQ, AWQ and their helpers. Every bad input (shape,
/// NaN, scheme, calibration) is reported before any long work starts.
#[derive(Debug, thiserror::Error)]
pub enum QuantizeError {
    /// A scheme, packing or reference-format error from `marlin-quant`
    /// (e.g. a group size that does not divide K, a code width out of range).
    #[error(transparent)]
    Quant(#[from] QuantError),
    #[error("invalid shape: {0}")]
    Shape(String),
    #[error("non-finite value {value} in {what} at index {index}")]
    NonFinite {
        what: &'static str,
        index: usize,
        value: f32,
    },
    #[error(
        "|weight| {value} at index {index} exceeds 2^125: its dequantized value could overflow f32"
    )]
    WeightTooLarge { index: usize, value: f32 },
    #[error("empty calibration: {0}")]
    EmptyCalibration(String),
    #[error("Hessian is {got} x {got}, expected K x K = {k} x {k}")]
    HessianSize { got: usize, k: usize },
    #[error("Hessian is not positive definite even with dampening {percdamp} x mean(diag)")]
    NotPositiveDefinite { percdamp: f64 },
    #[error("numerical failure: {0}")]
    Numerical(String),
    #[error("invalid option: {0}")]
    InvalidOption(String),
    #[error("unsupported: {0}")]
    Unsupported(String),
    /// A model, file or option the pipeline cannot use (reported before
    /// any long work).
    #[error("bad input: {0}")]
    BadInput(String),
    #[error(transparent)]
    Model(#[from] marlin_models::ModelError),
    #[error(transparent)]
    Io(#[from] marlin_io::IoError),
    #[error(transparent)]
    Tokenizer(#[from] marlin_io::tokenizer::TokenizerError),
    #[error("{}: {source}", path.display())]
    File {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
}

/// Index and value of the first non-finite entry of `values`, as an error.
pub(crate) fn check_finite(what: &'static str, values: &[f32]) -> Result<(), QuantizeError> {
    match values.iter().position(|v| !v.is_finite()) {
        Some(index) => Err(QuantizeError::NonFinite {
            what,
            index,
            value: values[index],
        }),
        None => Ok(()),
    }
}

/// Checks the weights are finite and within ±`marlin_quant::rtn::MAX_WEIGHT`
/// (beyond it dequantized values could overflow f32).
pub(crate) fn check_weights(w: &[f32]) -> Result<(), QuantizeError> {
    check_finite("weights", w)?;
    match w
        .iter()
        .position(|v| v.abs() > marlin_quant::rtn::MAX_WEIGHT)
    {
        Some(index) => Err(QuantizeError::WeightTooLarge {
            index,
            value: w[index],
        }),
        None => Ok(()),
    }
}

/// `rows * cols`, or a shape error on overflow.
pub(crate) fn checked_area(rows: usize, cols: usize) -> Result<usize, QuantizeError> {
    rows.checked_mul(cols)
        .ok_or_else(|| QuantizeError::Shape(format!("{rows} x {cols} overflows")))
}

/// Checks that a row-major buffer holds exactly `rows x cols` values.
pub(crate) fn check_len(
    what: &str,
    len: usize,
    rows: usize,
    cols: usize,
) -> Result<(), QuantizeError> {
    let expected = checked_area(rows, cols)?;
    if len != expected {
        return Err(QuantizeError::Shape(format!(
            "{what} has {len} values, expected {rows} x {cols} = {expected}"
        )));
    }
    Ok(())
}
