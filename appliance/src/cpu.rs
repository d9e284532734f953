//! CPU and memory hints for the fast path. With `dpdk`, the only module with `unsafe`.

/// Asks the CPU to start loading the cache line holding `r`.
#[inline(always)]
pub fn prefetch<T>(r: &T) {
    prefetch_addr((r as *const T).cast());
}

/// Asks the CPU to start loading the cache line at `p`. A hint only: it
/// never faults, whatever the address, and changes no memory.
#[inline(always)]
pub fn prefetch_addr(p: *const u8) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: SSE is part of the x86_64 baseline; a prefetch has no
    // architectural effect and does not fault on any address.
    unsafe {
        use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
        _mm_prefetch::<_MM_HINT_T0>(p.cast::<i8>());
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = p;
}

/// Asks the kernel to back `buf` with transparent 2 MiB pages where it can
/// (the 2 MiB-aligned part of it). Call before the memory is first touched:
/// a session table spread over 4 KiB pages costs a TLB miss per lookup.
/// Returns whether the advice was taken; either way the memory is unchanged.
pub fn advise_hugepages<T>(buf: &mut [std::mem::MaybeUninit<T>]) -> bool {
    const HUGE: usize = 2 << 20;
    let start = buf.as_mut_ptr() as usize;
    let end = start + std::mem::size_of_val(buf);
    let (a, b) = (start.next_multiple_of(HUGE), end / HUGE * HUGE);
    if a >= b {
        return false;
    }
    // SAFETY: [a, b) lies inside `buf`, which we borrow mutably; MADV_HUGEPAGE
    // changes how pages are backed, never their contents.
    unsafe { libc::madvise(a as *mut libc::c_void, b - a, libc::MADV_HUGEPAGE) == 0 }
}
