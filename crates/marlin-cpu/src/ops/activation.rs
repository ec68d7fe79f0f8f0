//! Gated MLP activations and logit soft-capping.

use super::simd::kernels;
use crate::CpuError;

fn same_len(what: &str, a: usize, b: usize) -> Result<(), CpuError> {
    if a != b {
        return Err(CpuError::Shape(format!("{what}: {a} vs {b} values")));
    }
    Ok(())
}

/// SwiGLU: `gate = silu(gate) · up`, elementwise.
pub fn silu_mul(gate: &mut [f32], up: &[f32]) -> Result<(), CpuError> {
    same_len("silu_mul", gate.len(), up.len())?;
    (kernels().silu_mul)(gate, up);
    Ok(())
}

/// GeGLU with the tanh approximation of GELU (Gemma): `gate = gelu(gate) · up`.
pub fn gelu_tanh_mul(gate: &mut [f32], up: &[f32]) -> Result<(), CpuError> {
    same_len("gelu_tanh_mul", gate.len(), up.len())?;
    (kernels().gelu_tanh_mul)(gate, up);
    Ok(())
}

/// `x = cap · tanh(x / cap)` (Gemma's final logit soft-capping).
pub fn soft_cap(x: &mut [f32], cap: f32) {
    for v in x.iter_mut() {
        *v = cap * (*v / cap).tanh();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn soft_cap_bounds_and_keeps_small_values() {
        let mut x = vec![-1000.0, -1.0, 0.0, 0.5, 1000.0];
        soft_cap(&mut x, 30.0);
        assert!((x[0] + 30.0).abs() < 1e-4 && (x[4] - 30.0).abs() < 1e-4);
        assert!((x[1] + 0.999_63).abs() < 1e-4 && x[2] == 0.0);
        assert!(silu_mul(&mut [0.0; 3], &[0.0; 2]).is_err());
    }
}
