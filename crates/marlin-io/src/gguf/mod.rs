//! GGUF v2/v3 reader, hardened against malformed files.
