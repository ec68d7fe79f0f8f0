//! Generation engine: sampling, stop conditions, streaming.
