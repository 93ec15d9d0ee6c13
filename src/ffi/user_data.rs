//! A caller's `user_data` pointer and its optional finalizer: what the handler, the hooks and
//! the logger each hand the library, and what it must let go of exactly once.

use std::ffi::c_void;

pub(crate) type FreeFn = unsafe extern "C" fn(user_data: *mut c_void);

/// Owns a caller's `user_data`: the finalizer runs once, when this is dropped.
pub(crate) struct UserData {
    ptr: *mut c_void,
    free: Option<FreeFn>,
}

// SAFETY: the library only passes the pointer back to the caller's own callbacks; each
// callback struct's documentation makes its use from the threads it names the caller's
// responsibility.
unsafe impl Send for UserData {}
// SAFETY: as above (handler threads may call `handle` concurrently, which the caller allows by
// setting handler_threads).
unsafe impl Sync for UserData {}

impl UserData {
    /// Takes ownership: from now on the finalizer is the library's to call. Build it only once
    /// the call that takes `user_data` can no longer fail ("never when ... failed").
    pub(crate) fn new(ptr: *mut c_void, free: Option<FreeFn>) -> UserData {
        UserData { ptr, free }
    }

    pub(crate) fn ptr(&self) -> *mut c_void {
        self.ptr
    }
}

impl Drop for UserData {
    fn drop(&mut self) {
        if let Some(free) = self.free {
            // SAFETY: the caller's finalizer, called once with its own user_data.
            unsafe { free(self.ptr) }
        }
    }
}
