//! Handing memory the process no longer uses back to the system between the
//! phases of a load (peak resident set: docs/BENCHMARKS.md, "Session 5").

/// Makes every thread allocate from glibc's main arena. By default each thread that
/// allocates (the engine's thread, the kernel pool's workers) gets an arena of its own, whose
/// freed chunks glibc hands back to the system far less readily than the main heap's: with
/// one arena, a 922-token `marlin run` of SmolLM2 peaks 3 MiB lower (docs/BENCHMARKS.md,
/// "Session 5"). The hot loops allocate a few large buffers per layer, so one lock costs
/// nothing measurable. Must run before any thread is spawned.
pub fn use_one_malloc_arena() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: mallopt takes no pointers; M_ARENA_MAX only bounds future arena creation.
        unsafe {
            libc::mallopt(libc::M_ARENA_MAX, 1);
        }
    }
}

/// Returns what the load phase just finished left behind: the allocator's
/// free pages and the mappings of the executable's read-only pages.
pub fn release_unused_memory() {
    release_free_heap();
    release_code_pages();
}

/// Hands the allocator's free pages back to the system (glibc keeps the memory of freed small
/// allocations, such as the hundreds of thousands of vocabulary strings of a GGUF parse, and
/// would otherwise count it in the resident set for the whole run).
fn release_free_heap() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: glibc's malloc_trim takes no pointers and only returns free memory to the
        // system; it is safe to call at any time from any thread.
        unsafe {
            libc::malloc_trim(0);
        }
    }
}

/// Unmaps the pages of the read-only segments (code, read-only data, unwind tables,
/// relocation tables) of the executable and of the shared libraries it loaded. They stay in
/// the page cache, and the next instruction or load that needs one maps it back with a minor
/// fault, so what stays resident is the code that runs from here on: the forward pass, not
/// the argument parser, the GGUF parser, the tokenizer build or the loader. The marlin binary
/// is about 10 MB of code and read-only data, several MiB of which a load touches once (the
/// kernel maps a faulting page's neighbours with it), against a peak-memory allowance of 10%
/// of a 94 MiB model.
///
/// Correct because these segments are never written: they are private file mappings without
/// `PF_W` (the relocated RELRO data lives in a writable segment and is left alone), so the
/// page mapped after the fault holds the bytes the unmapped one held. An object with text
/// relocations (its code pages are then private, relocated copies) is skipped.
fn release_code_pages() {
    #[cfg(all(target_os = "linux", target_pointer_width = "64"))]
    {
        // SAFETY: the callback only reads the headers dl_iterate_phdr hands it and calls
        // madvise on read-only segments (see `release_object_code_pages`).
        unsafe {
            libc::dl_iterate_phdr(Some(release_object_code_pages), std::ptr::null_mut());
        }
    }
}

/// `dl_iterate_phdr` callback: `MADV_DONTNEED` over the whole pages of each read-only
/// `PT_LOAD` segment of one object. Always returns 0 (visit every object).
#[cfg(all(target_os = "linux", target_pointer_width = "64"))]
unsafe extern "C" fn release_object_code_pages(
    info: *mut libc::dl_phdr_info,
    _size: libc::size_t,
    _data: *mut libc::c_void,
) -> libc::c_int {
    use libc::{Elf64_Phdr, MADV_DONTNEED, PF_W, PT_DYNAMIC, PT_LOAD};
    // SAFETY: dl_iterate_phdr passes a valid info for the duration of the call.
    let Some(info) = (unsafe { info.as_ref() }) else {
        return 0;
    };
    // The executable has an empty name; shared libraries have their path. Anything else (the
    // vDSO) is a kernel mapping, not a file's pages.
    // SAFETY: dlpi_name is a NUL-terminated string or null.
    let name = (!info.dlpi_name.is_null())
        .then(|| unsafe { std::ffi::CStr::from_ptr(info.dlpi_name) }.to_bytes());
    if !matches!(name, Some(n) if n.is_empty() || n.starts_with(b"/")) {
        return 0;
    }
    if info.dlpi_phdr.is_null() {
        return 0;
    }
    // SAFETY: dlpi_phdr points at dlpi_phnum program headers mapped with the object.
    let headers: &[Elf64_Phdr] =
        unsafe { std::slice::from_raw_parts(info.dlpi_phdr, info.dlpi_phnum as usize) };
    let bias = info.dlpi_addr as usize;
    if let Some(dynamic) = headers.iter().find(|h| h.p_type == PT_DYNAMIC) {
        let at = bias.wrapping_add(dynamic.p_vaddr as usize) as *const ElfDyn;
        // SAFETY: PT_DYNAMIC is mapped with the object and ends with a DT_NULL entry.
        if unsafe { has_text_relocations(at) } {
            return 0;
        }
    }
    // SAFETY: sysconf has no preconditions.
    let page = match unsafe { libc::sysconf(libc::_SC_PAGESIZE) } {
        p if p > 0 => p as usize,
        _ => return 0,
    };
    for h in headers
        .iter()
        .filter(|h| h.p_type == PT_LOAD && h.p_flags & PF_W == 0)
    {
        let start = bias.wrapping_add(h.p_vaddr as usize);
        let Some(end) = start.checked_add(h.p_filesz as usize) else {
            continue;
        };
        // Whole pages only: a page shared with a neighbouring segment is left mapped.
        let (start, end) = (start.div_ceil(page) * page, end / page * page);
        if end > start {
            // SAFETY: [start, end) lies inside a read-only, never-written segment of a loaded
            // object (see `release_code_pages`); MADV_DONTNEED on it only drops page-table
            // entries, and the kernel maps the unchanged file pages again on the next access.
            unsafe {
                libc::madvise(start as *mut libc::c_void, end - start, MADV_DONTNEED);
            }
        }
    }
    0
}

/// An `Elf64_Dyn` entry (not in the `libc` crate).
#[cfg(all(target_os = "linux", target_pointer_width = "64"))]
#[repr(C)]
struct ElfDyn {
    tag: i64,
    val: u64,
}

/// Whether the dynamic section at `at` has `DT_TEXTREL` or `DF_TEXTREL` in `DT_FLAGS`.
///
/// # Safety
/// `at` must point at a mapped dynamic section that ends with a `DT_NULL` entry.
#[cfg(all(target_os = "linux", target_pointer_width = "64"))]
unsafe fn has_text_relocations(mut at: *const ElfDyn) -> bool {
    const DT_NULL: i64 = 0;
    const DT_TEXTREL: i64 = 22;
    const DT_FLAGS: i64 = 30;
    const DF_TEXTREL: u64 = 0x4;
    loop {
        // SAFETY: within the dynamic section until its DT_NULL entry (caller's contract).
        let entry = unsafe { &*at };
        match entry.tag {
            DT_NULL => return false,
            DT_TEXTREL => return true,
            DT_FLAGS if entry.val & DF_TEXTREL != 0 => return true,
            _ => {}
        }
        // SAFETY: the entry after a non-DT_NULL entry is still in the section.
        at = unsafe { at.add(1) };
    }
}
