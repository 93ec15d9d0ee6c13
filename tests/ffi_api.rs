//! The C API's error conventions as a C caller sees them, called through the Rust symbols:
//! result strings, the thread-local last error, NULL handling and finalizers. (Serving, the
//! request and response accessors and the state rules while serving are covered end to end by
//! the C programs under tests/c.)

use std::ffi::{CStr, c_int, c_void};
use std::ptr;
use std::sync::atomic::{AtomicUsize, Ordering};

use ::prefork::ffi::{self, *};

fn text(p: *const std::ffi::c_char) -> String {
    assert!(!p.is_null());
    // SAFETY: the API returns NUL-terminated strings.
    unsafe { CStr::from_ptr(p) }.to_str().unwrap().to_string()
}

fn last_error() -> String {
    text(unsafe { prefork_last_error() })
}

unsafe extern "C" fn handle(_: *mut c_void, _: *const prefork_request, _: *mut prefork_response) {}

unsafe extern "C" fn count(ud: *mut c_void) {
    // SAFETY: the tests pass a live AtomicUsize as user_data.
    unsafe { &*(ud as *const AtomicUsize) }.fetch_add(1, Ordering::SeqCst);
}

fn handler(frees: &AtomicUsize) -> prefork_handler {
    prefork_handler {
        user_data: frees as *const AtomicUsize as *mut c_void,
        init_child: None,
        handle: Some(handle),
        exit_child: None,
        user_data_free: Some(count),
    }
}

#[test]
fn every_code_has_its_own_description() {
    let all: Vec<String> = (0..=10)
        .map(|c| text(unsafe { prefork_result_str(c) }))
        .collect();
    let mut unique = all.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), all.len(), "{all:?}");
    assert!(!all.contains(&"unknown".to_string()));
    for bad in [-1, 11, c_int::MAX, c_int::MIN] {
        assert_eq!(text(unsafe { prefork_result_str(bad) }), "unknown");
    }
    assert_eq!(prefork_result::PREFORK_ERR_PANIC as c_int, 10);
}

#[test]
fn the_last_error_is_per_thread_and_survives_successes() {
    std::thread::spawn(|| {
        assert_eq!(last_error(), "");
        let r = unsafe { prefork_set_children(ptr::null_mut(), 1) };
        assert_eq!(r, prefork_result::PREFORK_ERR_NULL);
        assert_eq!(last_error(), "prefork_set_children: p is NULL");
        let before = unsafe { prefork_last_error() };
        assert_eq!(
            text(unsafe { prefork_version() }),
            env!("CARGO_PKG_VERSION")
        );
        assert_eq!(
            unsafe { prefork_last_error() },
            before,
            "a success changed the last error"
        );
        std::thread::spawn(|| assert_eq!(last_error(), ""))
            .join()
            .unwrap();
    })
    .join()
    .unwrap();
}

#[test]
fn null_arguments_are_errors_not_crashes() {
    use prefork_result::*;
    let frees = AtomicUsize::new(0);
    let mut p: *mut ffi::prefork = ptr::null_mut();
    unsafe {
        assert_eq!(prefork_new(ptr::null(), &mut p), PREFORK_ERR_NULL);
        assert_eq!(
            prefork_new(&handler(&frees), ptr::null_mut()),
            PREFORK_ERR_NULL
        );
        let mut no_handle = handler(&frees);
        no_handle.handle = None;
        assert_eq!(prefork_new(&no_handle, &mut p), PREFORK_ERR_NULL);
        assert!(p.is_null());
        assert_eq!(
            frees.load(Ordering::SeqCst),
            0,
            "a failed prefork_new took user_data"
        );

        assert_eq!(
            prefork_listen_and_serve(ptr::null_mut(), c"127.0.0.1:0".as_ptr()),
            PREFORK_ERR_NULL
        );
        assert_eq!(
            prefork_set_hooks(ptr::null_mut(), ptr::null()),
            PREFORK_ERR_NULL
        );
        assert_eq!(
            prefork_set_logger(ptr::null_mut(), None, ptr::null_mut(), None),
            PREFORK_ERR_NULL
        );
        prefork_free(ptr::null_mut());

        let s = prefork_request_method(ptr::null());
        assert!(!s.ptr.is_null() && s.len == 0);
        assert_eq!(prefork_request_minor_version(ptr::null()), -1);
        assert_eq!(
            prefork_response_write(ptr::null_mut(), ptr::null(), 0),
            PREFORK_ERR_NULL
        );
        assert_eq!(last_error(), "prefork_response_write: resp is NULL");
    }
}

#[test]
fn finalizers_run_once_when_let_go() {
    use prefork_result::*;
    let (handler_frees, hook_frees, log_frees) = (
        AtomicUsize::new(0),
        AtomicUsize::new(0),
        AtomicUsize::new(0),
    );
    let hooks = prefork_hooks {
        user_data: &hook_frees as *const AtomicUsize as *mut c_void,
        on_child_spawn: None,
        on_master_ready: None,
        on_child_recover: None,
        on_child_exit: None,
        on_master_death: None,
        command_producer: None,
        user_data_free: Some(count),
    };
    unsafe extern "C" fn log(
        _: *mut c_void,
        _: prefork_log_level,
        _: *const std::ffi::c_char,
        _: usize,
    ) {
    }
    let mut p = ptr::null_mut();
    unsafe {
        assert_eq!(prefork_new(&handler(&handler_frees), &mut p), PREFORK_OK);
        assert_eq!(prefork_set_hooks(p, &hooks), PREFORK_OK);
        let ud = &log_frees as *const AtomicUsize as *mut c_void;
        assert_eq!(
            prefork_set_logger(p, Some(log), ud, Some(count)),
            PREFORK_OK
        );
        assert_eq!(
            prefork_set_logger(p, Some(log), ud, Some(count)),
            PREFORK_OK
        );
        assert_eq!(
            log_frees.load(Ordering::SeqCst),
            1,
            "the replaced logger was not let go"
        );
        assert_eq!(
            handler_frees.load(Ordering::SeqCst) + hook_frees.load(Ordering::SeqCst),
            0
        );
        prefork_free(p);
    }
    assert_eq!(handler_frees.load(Ordering::SeqCst), 1);
    assert_eq!(hook_frees.load(Ordering::SeqCst), 1);
    assert_eq!(log_frees.load(Ordering::SeqCst), 2);
}

#[test]
fn option_combinations_are_checked_at_listen() {
    // A handle whose options are invalid fails before binding, and is not "served": the
    // Rust API marks a handle served only once it passes validation.
    let frees = AtomicUsize::new(0);
    let mut p = ptr::null_mut();
    unsafe {
        assert_eq!(
            prefork_new(&handler(&frees), &mut p),
            prefork_result::PREFORK_OK
        );
        assert_eq!(
            prefork_set_max_request_line(p, 1 << 20),
            prefork_result::PREFORK_OK
        );
        let r = prefork_listen_and_serve(p, c"127.0.0.1:0".as_ptr());
        assert_eq!(r, prefork_result::PREFORK_ERR_INVALID_ARGUMENT);
        assert!(
            last_error().contains("max_request_line"),
            "{}",
            last_error()
        );
        prefork_free(p);
    }
}
