//! Allocation counting: only on one thread, named by its id (the monitor's poll thread in
//! idle-poll).

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::atomic::{AtomicI32, AtomicU64, Ordering};

struct CountingAllocator;

thread_local! {
    /// The calling thread's id, asked of the kernel once (0: not yet); no allocation.
    static THREAD_ID: Cell<libc::pid_t> = const { Cell::new(0) };
}
/// The thread whose allocations count (0: none).
static COUNTED_THREAD: AtomicI32 = AtomicI32::new(0);
static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);
static ALLOCATED_BYTES: AtomicU64 = AtomicU64::new(0);

fn count(size: usize) {
    let counted = COUNTED_THREAD.load(Ordering::Relaxed);
    if counted == 0 {
        return;
    }
    let this_thread = THREAD_ID
        .try_with(|id| {
            if id.get() == 0 {
                // SAFETY: gettid has no preconditions.
                id.set(unsafe { libc::gettid() });
            }
            id.get()
        })
        .unwrap_or(0);
    if this_thread == counted {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        ALLOCATED_BYTES.fetch_add(size as u64, Ordering::Relaxed);
    }
}

// SAFETY: every call is forwarded unchanged to the system allocator.
unsafe impl GlobalAlloc for CountingAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count(layout.size());
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        count(layout.size());
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count(new_size);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: CountingAllocator = CountingAllocator;

/// Counts every allocation made on thread `tid` of this process from now on.
pub fn count_thread(tid: libc::pid_t) {
    COUNTED_THREAD.store(tid, Ordering::Relaxed);
}

/// Allocations and bytes allocated so far on the counted thread.
pub fn counted() -> (u64, u64) {
    (
        ALLOCATIONS.load(Ordering::Relaxed),
        ALLOCATED_BYTES.load(Ordering::Relaxed),
    )
}
