//! The ABI's growth path: callback structs that gain members without breaking programs built
//! against an older header.
//!
//! A struct that crosses the boundary only ever grows at its end, and every function that
//! takes one also takes the size the caller compiled it with (the header's function-like
//! macros pass `sizeof` for C and C++; Go and Zig pass it themselves). This is the rule of
//! Linux's extensible system-call structs (`clone3`, `openat2`: `copy_struct_from_user`):
//!
//! - an older caller's struct is shorter: the members it does not know read as zero, which
//!   every member's documentation defines as "unset", so it keeps its old behaviour;
//! - a newer caller's struct is longer: accepted when the members this library does not know
//!   are all zero, refused with PREFORK_ERR_INVALID_ARGUMENT otherwise, so a program never
//!   silently loses a callback it set on a library too old to call it.
//!
//! A leading size member filled by an init macro was the other candidate; it would have moved
//! every member of the 0.1 layout, which programs built today pass, and a forgotten
//! initialisation would be read as garbage rather than caught by the compiler.

use std::mem::{MaybeUninit, align_of, size_of};

use super::error::FfiError;

/// A `#[repr(C)]` struct the caller passes with its size.
///
/// # Safety
/// Every member is a raw pointer, an `Option` of a function pointer or an integer, so the
/// all-zero bit pattern is a valid value (the "unset" one), and any prefix of whole members
/// copied over zeroes is too.
pub(crate) unsafe trait Extensible: Copy {
    /// The struct's C name, for error messages.
    const NAME: &'static str;
    /// The first release that had the struct, for error messages ("0.1").
    const SINCE: &'static str;
    /// Its size in that release: the smallest a caller can pass. For the 0.1 structs it is also
    /// what the 0.1 entry points (which take no size) read.
    const FIRST_SIZE: usize;
}

/// Copies the caller's `size`-byte struct at `ptr` into this library's layout.
///
/// # Safety
/// `ptr` is NULL or points to `size` readable bytes.
pub(crate) unsafe fn read<T: Extensible>(
    ptr: *const T,
    size: usize,
    arg: &str,
) -> Result<T, FfiError> {
    if ptr.is_null() {
        return Err(FfiError::null(arg));
    }
    if size < T::FIRST_SIZE || !size.is_multiple_of(align_of::<T>()) || size > isize::MAX as usize {
        return Err(FfiError::invalid(format!(
            "{arg}_size: {size} is not the size of a {name} (pass sizeof({name}); the smallest, \
             that of libprefork {since}, is {min})",
            name = T::NAME,
            since = T::SINCE,
            min = T::FIRST_SIZE,
        )));
    }
    let known = size_of::<T>();
    // SAFETY: the caller's contract: `size` bytes at `ptr` are readable.
    let theirs = unsafe { std::slice::from_raw_parts(ptr.cast::<u8>(), size) };
    if let Some(at) = theirs.iter().skip(known).position(|&b| b != 0) {
        return Err(FfiError::invalid(format!(
            "{arg}: the program's {size}-byte {name} sets a member at byte {at}, past the {known} \
             bytes this library ({version}) knows: link a newer libprefork",
            name = T::NAME,
            at = known + at,
            version = env!("CARGO_PKG_VERSION"),
        )));
    }
    let mut ours = MaybeUninit::<T>::zeroed();
    // SAFETY: at most size_of::<T>() bytes into `ours`; `size` is a multiple of T's alignment
    // and every member is pointer-aligned or smaller, so only whole members are copied, over a
    // zeroed value that is valid by the trait's contract.
    unsafe {
        std::ptr::copy_nonoverlapping(
            theirs.as_ptr(),
            ours.as_mut_ptr().cast::<u8>(),
            size.min(known),
        );
        Ok(ours.assume_init())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[repr(C)]
    #[derive(Clone, Copy, Debug, PartialEq)]
    struct Grown {
        a: usize,
        b: usize,
        added: usize,
    }

    // SAFETY: integers only.
    unsafe impl Extensible for Grown {
        const NAME: &'static str = "grown";
        const SINCE: &'static str = "0.1";
        const FIRST_SIZE: usize = size_of::<[usize; 2]>();
    }

    #[repr(C)]
    #[derive(Clone, Copy)]
    struct Newer {
        old: Grown,
        future: usize,
    }

    fn read_bytes<S>(s: &S, size: usize) -> Result<Grown, FfiError> {
        unsafe { read((s as *const S).cast::<Grown>(), size, "grown") }
    }

    #[test]
    fn an_older_struct_reads_its_members_and_zero_for_the_rest() {
        let old = [7usize, 8];
        let got = read_bytes(&old, size_of_val(&old)).unwrap();
        assert_eq!(
            got,
            Grown {
                a: 7,
                b: 8,
                added: 0
            }
        );
    }

    #[test]
    fn the_current_struct_reads_whole() {
        let now = Grown {
            a: 1,
            b: 2,
            added: 3,
        };
        assert_eq!(read_bytes(&now, size_of::<Grown>()).unwrap(), now);
    }

    #[test]
    fn a_newer_struct_is_accepted_only_when_its_unknown_members_are_unset() {
        let mut newer = Newer {
            old: Grown {
                a: 1,
                b: 2,
                added: 3,
            },
            future: 0,
        };
        assert_eq!(read_bytes(&newer, size_of::<Newer>()).unwrap(), newer.old);
        newer.future = 9;
        let err = read_bytes(&newer, size_of::<Newer>()).unwrap_err();
        assert!(
            err.message()
                .contains("sets a member at byte 24, past the 24 bytes"),
            "{}",
            err.message()
        );
    }

    #[test]
    fn sizes_that_are_no_struct_are_refused() {
        let now = Grown {
            a: 1,
            b: 2,
            added: 3,
        };
        for size in [0, 8, 17, 23] {
            let err = read_bytes(&now, size).unwrap_err();
            assert!(
                err.message().contains("is not the size of a grown"),
                "{size}: {}",
                err.message()
            );
        }
        let null = unsafe { read::<Grown>(std::ptr::null(), 24, "grown") }.unwrap_err();
        assert!(null.message().contains("grown is NULL"));
    }
}
