// Kernel timeline of a process on the GPU machine, which has no Nsight
// Systems: a CUPTI injection library (the driver loads the library named by
// CUDA_INJECTION64_PATH at cuInit and calls InitializeInjection). Every
// kernel's GPU start and end, CUDA-graph nodes included, is appended to
// $KTRACE_OUT (default /tmp/ktrace.csv) as "start_ns,end_ns,blocks,name".
// Built on the GPU machine by scripts/gpu_ktrace.sh; analysed by ktrace.py.
#include <cupti.h>

#include <cstdio>
#include <cstdlib>

static FILE* trace_file = nullptr;

static void CUPTIAPI buffer_requested(uint8_t** buffer, size_t* size, size_t* max_records) {
    *size = 16u << 20;
    *buffer = static_cast<uint8_t*>(aligned_alloc(8, *size));
    *max_records = 0;  // as many as fit
}

static void CUPTIAPI buffer_completed(CUcontext, uint32_t, uint8_t* buffer, size_t, size_t valid) {
    CUpti_Activity* record = nullptr;
    while (cuptiActivityGetNextRecord(buffer, valid, &record) == CUPTI_SUCCESS) {
        if (record->kind != CUPTI_ACTIVITY_KIND_CONCURRENT_KERNEL && record->kind != CUPTI_ACTIVITY_KIND_KERNEL)
            continue;
        const auto* k = reinterpret_cast<const CUpti_ActivityKernel10*>(record);
        if (trace_file)
            fprintf(trace_file, "%llu,%llu,%u,%s\n", static_cast<unsigned long long>(k->start),
                    static_cast<unsigned long long>(k->end), k->gridX * k->gridY * k->gridZ,
                    k->name ? k->name : "?");
    }
    free(buffer);
}

static void flush_at_exit() {
    cuptiActivityFlushAll(1);
    if (trace_file) fclose(trace_file);
    trace_file = nullptr;
}

extern "C" int InitializeInjection(void) {
    const char* path = getenv("KTRACE_OUT");
    trace_file = fopen(path ? path : "/tmp/ktrace.csv", "w");
    if (!trace_file) return 0;
    if (cuptiActivityRegisterCallbacks(buffer_requested, buffer_completed) != CUPTI_SUCCESS) return 0;
    // Concurrent-kernel records: kernels overlapping under programmatic
    // dependent launch keep their own start and end.
    if (cuptiActivityEnable(CUPTI_ACTIVITY_KIND_CONCURRENT_KERNEL) != CUPTI_SUCCESS) return 0;
    atexit(flush_at_exit);
    return 1;
}
