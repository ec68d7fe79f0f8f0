//! CUDA backend (compiled only with the `cuda` feature).
