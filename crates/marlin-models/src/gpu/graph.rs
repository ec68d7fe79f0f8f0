//! CUDA-graph capture of a piece of work on the device's one stream.

use std::sync::Arc;

use cudarc::driver::sys::{CUgraphInstantiate_flags, CUstreamCaptureMode};
use cudarc::driver::CudaGraph;
use marlin_cuda::CudaDevice;

use super::{driver_err, GpuError, Result};

/// Records the kernels and copies `work` enqueues on `dev`'s stream into a
/// graph instead of running them. `work` must not allocate, synchronise or
/// copy from pageable host memory (capture forbids it; the driver reports
/// an error, which is returned). The capture is always ended, so the
/// stream stays usable after an error.
pub(crate) fn capture(
    dev: &Arc<CudaDevice>,
    work: impl FnOnce() -> Result<()>,
) -> Result<CudaGraph> {
    let stream = dev.stream();
    stream
        .begin_capture(CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL)
        .map_err(|e| driver_err("cuStreamBeginCapture", e))?;
    let result = work();
    let graph = stream.end_capture(CUgraphInstantiate_flags(0));
    result?;
    let graph = graph.map_err(|e| driver_err("cuStreamEndCapture / cuGraphInstantiate", e))?;
    let graph = graph.ok_or_else(|| GpuError::Invalid("graph capture recorded no work".into()))?;
    graph.upload().map_err(|e| driver_err("cuGraphUpload", e))?;
    Ok(graph)
}

/// Replays a captured graph on the stream it was captured on.
pub(crate) fn replay(graph: &CudaGraph) -> Result<()> {
    graph.launch().map_err(|e| driver_err("cuGraphLaunch", e))
}
