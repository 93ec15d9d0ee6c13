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
        handle_batch: None,
    }
}

/// Hooks with every member unset but the user data and its finalizer.
fn no_hooks(
    user_data: *mut c_void,
    user_data_free: Option<unsafe extern "C" fn(*mut c_void)>,
) -> prefork_hooks {
    prefork_hooks {
        user_data,
        on_child_spawn: None,
        on_master_ready: None,
        on_child_recover: None,
        on_child_exit: None,
        on_master_death: None,
        command_producer: None,
        user_data_free,
        on_reload: None,
        on_reload_failed: None,
        on_upgrade: None,
    }
}

#[test]
fn every_code_has_its_own_description() {
    let all: Vec<String> = (0..=12)
        .map(|c| text(unsafe { prefork_result_str(c) }))
        .collect();
    let mut unique = all.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), all.len(), "{all:?}");
    assert!(!all.contains(&"unknown".to_string()));
    for bad in [-1, 13, c_int::MAX, c_int::MIN] {
        assert_eq!(text(unsafe { prefork_result_str(bad) }), "unknown");
    }
    assert_eq!(prefork_result::PREFORK_ERR_PANIC as c_int, 10);
    assert_eq!(prefork_result::PREFORK_ERR_UNSUPPORTED as c_int, 11);
    assert_eq!(prefork_result::PREFORK_ERR_TLS as c_int, 12);
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

unsafe extern "C" fn never(_: *mut c_void, _: *mut prefork_conn) {
    unreachable!("a refused hijack never calls on_conn");
}

#[test]
fn deferring_and_hijacking_refuse_misuse() {
    use prefork_result::*;
    let frees = AtomicUsize::new(0);
    let ud = &frees as *const AtomicUsize as *mut c_void;
    // A response the program made itself, not one the engine handed to `handle`.
    let mut own = ::prefork::Response::default();
    let resp = (&mut own as *mut ::prefork::Response).cast::<prefork_response>();
    let mut d: *mut prefork_deferred = ptr::null_mut();
    unsafe {
        assert_eq!(
            prefork_response_defer(ptr::null_mut(), &mut d),
            PREFORK_ERR_NULL
        );
        assert_eq!(
            prefork_response_defer(resp, ptr::null_mut()),
            PREFORK_ERR_NULL
        );
        assert_eq!(prefork_response_defer(resp, &mut d), PREFORK_ERR_STATE);
        assert!(d.is_null());
        assert_eq!(
            prefork_response_hijack(resp, None, ud, Some(count)),
            PREFORK_ERR_NULL
        );
        assert_eq!(
            prefork_response_hijack(resp, Some(never), ud, Some(count)),
            PREFORK_ERR_STATE
        );
        assert!(last_error().starts_with("prefork_response_hijack: "));
        assert_eq!(
            frees.load(Ordering::SeqCst),
            0,
            "a refused hijack took user_data"
        );
        assert!(prefork_deferred_response(ptr::null_mut()).is_null());
        assert_eq!(prefork_deferred_complete(ptr::null_mut()), PREFORK_ERR_NULL);
        prefork_deferred_free(ptr::null_mut());
        assert_eq!(prefork_conn_fd(ptr::null()), -1);
        assert_eq!(prefork_conn_leftover(ptr::null()).len, 0);
        prefork_conn_close(ptr::null_mut());
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
    let hooks = no_hooks(
        &hook_frees as *const AtomicUsize as *mut c_void,
        Some(count),
    );
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

/// A caller's `prefork_handler` as a later header might declare it: today's members, then one
/// this library does not know.
#[repr(C)]
struct NewerHandler {
    today: prefork_handler,
    unknown: *mut c_void,
}

#[test]
fn structs_are_read_by_the_size_the_caller_passes() {
    use prefork_result::*;
    let frees = AtomicUsize::new(0);
    let size = std::mem::size_of::<prefork_handler>();
    let mut p = ptr::null_mut();
    unsafe {
        assert_eq!(
            prefork_new_sized(&handler(&frees), size, &mut p),
            PREFORK_OK
        );
        prefork_free(p);
        assert_eq!(frees.swap(0, Ordering::SeqCst), 1);

        // A 0.1 program's struct, which ends before handle_batch.
        let size_0_1 = 5 * std::mem::size_of::<usize>();
        assert_eq!(
            prefork_new_sized(&handler(&frees), size_0_1, &mut p),
            PREFORK_OK
        );
        prefork_free(p);
        assert_eq!(frees.swap(0, Ordering::SeqCst), 1);

        // Too short to be any prefork_handler, or not a whole number of members.
        for bad in [0, 8, size_0_1 - 8, size + 1] {
            p = ptr::null_mut();
            let r = prefork_new_sized(&handler(&frees), bad, &mut p);
            assert_eq!(r, PREFORK_ERR_INVALID_ARGUMENT, "size {bad}");
            assert!(
                last_error().contains("is not the size of a prefork_handler"),
                "{}",
                last_error()
            );
            assert!(p.is_null());
        }

        // A newer program's struct: fine while it leaves the unknown member unset...
        let mut newer = NewerHandler {
            today: handler(&frees),
            unknown: ptr::null_mut(),
        };
        let newer_size = std::mem::size_of::<NewerHandler>();
        let newer_ptr = (&newer as *const NewerHandler).cast::<prefork_handler>();
        assert_eq!(prefork_new_sized(newer_ptr, newer_size, &mut p), PREFORK_OK);
        prefork_free(p);
        assert_eq!(frees.swap(0, Ordering::SeqCst), 1);

        // ...and refused, taking nothing, when it counts on a member this library lacks.
        newer.unknown = &frees as *const AtomicUsize as *mut c_void;
        let newer_ptr = (&newer as *const NewerHandler).cast::<prefork_handler>();
        p = ptr::null_mut();
        let r = prefork_new_sized(newer_ptr, newer_size, &mut p);
        assert_eq!(r, PREFORK_ERR_INVALID_ARGUMENT);
        assert!(
            last_error().contains("link a newer libprefork"),
            "{}",
            last_error()
        );
        assert!(p.is_null());
        assert_eq!(
            frees.load(Ordering::SeqCst),
            0,
            "a refused struct's user_data was taken"
        );

        // The hooks follow the same rule.
        assert_eq!(
            prefork_new_sized(&handler(&frees), size, &mut p),
            PREFORK_OK
        );
        let hooks = no_hooks(ptr::null_mut(), None);
        let hooks_size = std::mem::size_of::<prefork_hooks>();
        assert_eq!(prefork_set_hooks_sized(p, &hooks, hooks_size), PREFORK_OK);
        // The 0.1 struct (eight members) and one without the last member are older sizes,
        // still taken; an odd size is no struct's.
        assert_eq!(prefork_set_hooks_sized(p, &hooks, 8 * 8), PREFORK_OK);
        assert_eq!(
            prefork_set_hooks_sized(p, &hooks, hooks_size - 8),
            PREFORK_OK
        );
        let r = prefork_set_hooks_sized(p, &hooks, hooks_size - 4);
        assert_eq!(r, PREFORK_ERR_INVALID_ARGUMENT);
        assert!(
            last_error().contains("is not the size of a prefork_hooks"),
            "{}",
            last_error()
        );
        prefork_free(p);
    }
}

/// A port some other socket holds, and the address that holds it.
fn taken_port() -> (std::net::TcpListener, String) {
    let holder = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = holder.local_addr().unwrap().to_string();
    (holder, addr)
}

#[test]
fn a_rust_error_keeps_its_os_cause() {
    use std::error::Error as _;
    struct Nothing;
    impl ::prefork::Handler for Nothing {
        fn handle(&self, _: &::prefork::Request<'_>, _: &mut ::prefork::Response) {}
    }
    let (_holder, addr) = taken_port();
    let err = ::prefork::Prefork::new(Nothing)
        .listen_and_serve(&addr)
        .expect_err("the port is taken");
    assert_eq!(err.kind(), ::prefork::ErrorKind::Bind);
    assert_eq!(err.os_error(), Some(libc::EADDRINUSE), "{}", err.message());
    let cause = err
        .source()
        .and_then(|s| s.downcast_ref::<std::io::Error>());
    assert_eq!(cause.map(|c| c.kind()), Some(std::io::ErrorKind::AddrInUse));
    assert!(
        !err.to_string().contains(&cause.unwrap().to_string()),
        "Display repeats the source"
    );
    assert!(
        err.message().ends_with(&cause.unwrap().to_string()),
        "{}",
        err.message()
    );
}

#[test]
fn the_c_side_reads_the_os_error_number() {
    use prefork_result::*;
    let frees = AtomicUsize::new(0);
    let (_holder, taken) = taken_port();
    let taken = std::ffi::CString::new(taken).unwrap();
    // TEST-NET-1 (RFC 5737) is no local address: bind(2) refuses it without sending anything.
    let foreign = c"192.0.2.1:0";
    std::thread::spawn(move || unsafe {
        assert_eq!(
            prefork_last_os_error(),
            0,
            "nothing failed on this thread yet"
        );
        for (addr, errno) in [
            (taken.as_c_str(), libc::EADDRINUSE),
            (foreign, libc::EADDRNOTAVAIL),
        ] {
            let mut p = ptr::null_mut();
            let size = std::mem::size_of::<prefork_handler>();
            assert_eq!(
                prefork_new_sized(&handler(&frees), size, &mut p),
                PREFORK_OK
            );
            assert_eq!(prefork_listen_and_serve(p, addr.as_ptr()), PREFORK_ERR_BIND);
            assert_eq!(prefork_last_os_error(), errno, "{addr:?}: {}", last_error());
            prefork_free(p);
        }
        // A failure with no OS cause replaces the number with 0, as it replaces the message.
        assert_eq!(prefork_set_children(ptr::null_mut(), 1), PREFORK_ERR_NULL);
        assert_eq!(prefork_last_os_error(), 0);
    })
    .join()
    .unwrap();
}

#[test]
fn the_tls_entry_points_check_their_arguments_and_files_before_serving() {
    use prefork_result::*;
    let frees = AtomicUsize::new(0);
    let new = || {
        let mut p = ptr::null_mut();
        assert_eq!(unsafe { prefork_new(&handler(&frees), &mut p) }, PREFORK_OK);
        p
    };
    // A thread of its own: the last error and errno checks must see this test's calls only.
    std::thread::scope(|scope| {
        scope.spawn(|| unsafe { tls_argument_checks(&new) });
    });
    assert_eq!(frees.load(Ordering::SeqCst), 2);
}

unsafe fn tls_argument_checks(new: &dyn Fn() -> *mut ffi::prefork) {
    use prefork_result::*;
    let addr = c"127.0.0.1:0".as_ptr();
    let file = c"/nonexistent/cert.pem".as_ptr();
    let pem = b"-----BEGIN CERTIFICATE-----\n".as_ptr().cast::<c_void>();
    unsafe {
        let p = new();
        assert_eq!(
            prefork_listen_and_serve_tls(ptr::null_mut(), addr, file, file),
            PREFORK_ERR_NULL
        );
        assert_eq!(
            prefork_listen_and_serve_tls(p, addr, ptr::null(), file),
            PREFORK_ERR_NULL
        );
        assert_eq!(
            last_error(),
            "prefork_listen_and_serve_tls: cert_file is NULL"
        );
        assert_eq!(
            prefork_listen_and_serve_tls_embed(p, addr, pem, 5, ptr::null(), 0),
            PREFORK_ERR_NULL
        );
        assert_eq!(prefork_add_tls_cert(p, file, ptr::null()), PREFORK_ERR_NULL);
        assert_eq!(
            prefork_add_tls_cert_embed(ptr::null_mut(), pem, 5, pem, 5),
            PREFORK_ERR_NULL
        );
        // A missing file: PREFORK_ERR_TLS naming it, with the OS's reason.
        assert_eq!(
            prefork_listen_and_serve_tls(p, addr, file, file),
            PREFORK_ERR_TLS
        );
        assert!(
            last_error().contains("/nonexistent/cert.pem"),
            "{}",
            last_error()
        );
        assert_eq!(prefork_last_os_error(), libc::ENOENT);
        prefork_free(p);

        // PEM text without a certificate, and a bad certificate added for SNI.
        let p = new();
        assert_eq!(
            prefork_listen_and_serve_tls_embed(p, addr, pem, 5, pem, 5),
            PREFORK_ERR_TLS
        );
        assert!(
            last_error().contains("in-memory TLS certificate #1"),
            "{}",
            last_error()
        );
        prefork_free(p);
    }
}

unsafe extern "C" fn serve_nothing(_: *mut c_void, _: c_int, _: c_int) -> c_int {
    0
}

fn serve_struct(frees: &AtomicUsize, ready: c_int) -> prefork_serve {
    prefork_serve {
        user_data: frees as *const AtomicUsize as *mut c_void,
        serve: Some(serve_nothing),
        ready,
        user_data_free: Some(count),
    }
}

#[test]
fn the_serve_setter_checks_its_struct_and_owns_user_data_once() {
    use prefork_result::*;
    let frees = AtomicUsize::new(0);
    let handler_frees = AtomicUsize::new(0);
    let size = std::mem::size_of::<prefork_serve>();
    assert_eq!(size, 4 * std::mem::size_of::<usize>(), "the 0.2 layout");
    let mut p = ptr::null_mut();
    unsafe {
        assert_eq!(
            prefork_new_sized(
                &handler(&handler_frees),
                std::mem::size_of::<prefork_handler>(),
                &mut p
            ),
            PREFORK_OK
        );
        let ready = serve_struct(&frees, PREFORK_SERVE_READY_ON_START);
        assert_eq!(
            prefork_set_serve_sized(ptr::null_mut(), &ready, size),
            PREFORK_ERR_NULL
        );
        assert!(
            last_error().starts_with("prefork_set_serve: p is NULL"),
            "{}",
            last_error()
        );
        assert_eq!(
            prefork_set_serve_sized(p, ptr::null(), size),
            PREFORK_ERR_NULL
        );
        let mut no_callback = ready;
        no_callback.serve = None;
        assert_eq!(
            prefork_set_serve_sized(p, &no_callback, size),
            PREFORK_ERR_NULL
        );
        assert!(
            last_error().contains("serve->serve is NULL"),
            "{}",
            last_error()
        );
        let bad_ready = serve_struct(&frees, 2);
        assert_eq!(
            prefork_set_serve_sized(p, &bad_ready, size),
            PREFORK_ERR_INVALID_ARGUMENT
        );
        assert!(
            last_error().contains("serve->ready: 2 is neither"),
            "{}",
            last_error()
        );
        let r = prefork_set_serve_sized(p, &ready, size - 8);
        assert_eq!(r, PREFORK_ERR_INVALID_ARGUMENT);
        assert!(
            last_error().contains("the smallest, that of libprefork 0.2, is 32"),
            "{}",
            last_error()
        );
        assert_eq!(
            frees.load(Ordering::SeqCst),
            0,
            "a refused struct's user_data was freed"
        );

        // Taken over on success; released when replaced, and when the handle is freed.
        assert_eq!(prefork_set_serve_sized(p, &ready, size), PREFORK_OK);
        let explicit = serve_struct(&frees, PREFORK_SERVE_READY_EXPLICIT);
        assert_eq!(prefork_set_serve_sized(p, &explicit, size), PREFORK_OK);
        assert_eq!(
            frees.load(Ordering::SeqCst),
            1,
            "the replaced struct's user_data"
        );
        prefork_free(p);
        assert_eq!(frees.load(Ordering::SeqCst), 2);
        assert_eq!(handler_frees.load(Ordering::SeqCst), 1);
    }
}

#[test]
fn child_ready_outside_a_serve_callback_is_a_state_error() {
    assert_eq!(
        unsafe { prefork_child_ready() },
        prefork_result::PREFORK_ERR_STATE
    );
    assert!(
        last_error().starts_with("prefork_child_ready: no serve function is running"),
        "{}",
        last_error()
    );
}

#[test]
fn the_tls_entry_points_refuse_serve_mode() {
    use prefork_result::*;
    let frees = AtomicUsize::new(0);
    let handler_frees = AtomicUsize::new(0);
    let size = std::mem::size_of::<prefork_serve>();
    // A thread of its own: the last error must be this test's.
    std::thread::scope(|scope| {
        scope.spawn(|| unsafe {
            let addr = c"127.0.0.1:0".as_ptr();
            let file = c"/nonexistent/cert.pem".as_ptr();
            let pem = b"-----BEGIN CERTIFICATE-----\n".as_ptr().cast::<c_void>();
            let mut p = ptr::null_mut();
            assert_eq!(prefork_new(&handler(&handler_frees), &mut p), PREFORK_OK);
            let ready = serve_struct(&frees, PREFORK_SERVE_READY_ON_START);
            assert_eq!(prefork_set_serve_sized(p, &ready, size), PREFORK_OK);
            // Refused before the files are read: the state, not the missing file, is the error.
            assert_eq!(
                prefork_listen_and_serve_tls(p, addr, file, file),
                PREFORK_ERR_STATE
            );
            assert!(
                last_error().contains("serve mode does not support TLS"),
                "{}",
                last_error()
            );
            assert_eq!(
                prefork_listen_and_serve_tls_embed(p, addr, pem, 5, pem, 5),
                PREFORK_ERR_STATE
            );
            // A refused call did not use the handle up: plain serving is still possible
            // (not run here), and a second TLS call gives the same answer.
            assert_eq!(
                prefork_listen_and_serve_tls(p, addr, file, file),
                PREFORK_ERR_STATE
            );
            prefork_free(p);
        });
    });
    assert_eq!(frees.load(Ordering::SeqCst), 1);
    assert_eq!(handler_frees.load(Ordering::SeqCst), 1);
}

/// Outside a server the stats are a state error, and sizes that are no struct's are refused
/// before anything is read; the control calls say that no master took them.
#[test]
fn stats_and_control_calls_outside_a_server() {
    use prefork_result::*;
    let child = std::mem::size_of::<prefork_child_stats>();
    let master = std::mem::size_of::<prefork_master_stats>();
    let mut count = 7usize;
    unsafe {
        let r = prefork_stats_sized(
            ptr::null_mut(),
            child,
            0,
            ptr::null_mut(),
            master,
            &mut count,
        );
        assert_eq!(r, PREFORK_ERR_STATE);
        assert_eq!(count, 7, "written on failure");
        let r = prefork_stats_sized(
            ptr::null_mut(),
            child - 8,
            0,
            ptr::null_mut(),
            master,
            &mut count,
        );
        assert_eq!(r, PREFORK_ERR_INVALID_ARGUMENT);
        let r = prefork_stats_sized(
            ptr::null_mut(),
            child,
            1,
            ptr::null_mut(),
            master,
            &mut count,
        );
        assert_eq!(r, PREFORK_ERR_NULL);
        let mut buf = [0 as std::ffi::c_char; 64];
        assert_eq!(
            prefork_stats_json(buf.as_mut_ptr(), buf.len()),
            PREFORK_ERR_STATE
        );
        assert!(!prefork_reload());
        assert!(!prefork_set_children_live(3));
        assert!(!prefork_scale_children(1));
    }
}

#[test]
fn add_listener_checks_its_address_and_options() {
    use prefork_result::*;
    let frees = AtomicUsize::new(0);
    let mut p = ptr::null_mut();
    let size = std::mem::size_of::<prefork_listener_options>();
    let opts = |proxy_protocol, unix_mode| prefork_listener_options {
        proxy_protocol,
        unix_mode,
    };
    unsafe {
        assert_eq!(prefork_new(&handler(&frees), &mut p), PREFORK_OK);
        let add = |addr: &CStr, o: Option<&prefork_listener_options>, size| {
            let o = o.map_or(ptr::null(), |o| o as *const _);
            prefork_add_listener_sized(p, addr.as_ptr(), o, size)
        };
        // NULL options are the defaults; every kind of address is taken.
        for addr in [c"127.0.0.1:0", c"unix:@x", c"unix:/tmp/x.sock", c"systemd"] {
            assert_eq!(add(addr, None, 0), PREFORK_OK, "{addr:?}: {}", last_error());
        }
        let on = opts(PREFORK_LISTENER_PROXY_ON, 0o660);
        assert_eq!(add(c"unix:/tmp/y.sock", Some(&on), size), PREFORK_OK);
        let cases = [
            (
                c"unix:",
                opts(0, 0),
                size,
                "a Unix socket path is 1 to 107 bytes",
            ),
            (
                c"unix:@",
                opts(0, 0),
                size,
                "an abstract name is 1 to 107 bytes",
            ),
            (
                c"127.0.0.1:0",
                opts(0, 0o600),
                size,
                "unix_mode applies to a unix:/path",
            ),
            (
                c"unix:/tmp/z",
                opts(0, 0o1777),
                size,
                "is not permission bits",
            ),
            (
                c"127.0.0.1:0",
                opts(3, 0),
                size,
                "no PREFORK_LISTENER_PROXY_* value",
            ),
            (
                c"127.0.0.1:0",
                opts(0, 0),
                4,
                "is not the size of a prefork_listener_options",
            ),
        ];
        for (addr, o, size, needle) in cases {
            assert_eq!(
                add(addr, Some(&o), size),
                PREFORK_ERR_INVALID_ARGUMENT,
                "{addr:?}"
            );
            assert!(last_error().contains(needle), "{addr:?}: {}", last_error());
        }
        assert_eq!(
            prefork_add_listener_sized(p, ptr::null(), ptr::null(), 0),
            PREFORK_ERR_NULL
        );
        assert_eq!(
            prefork_add_listener_sized(ptr::null_mut(), c"x:1".as_ptr(), ptr::null(), 0),
            PREFORK_ERR_NULL
        );
        prefork_free(p);
        // Nothing is served in this process: no listener to report.
        assert_eq!(prefork_listener_count(), 0);
        let mut buf = [0 as std::ffi::c_char; PREFORK_ADDR_STRLEN];
        assert_eq!(
            prefork_listener_addr(0, buf.as_mut_ptr(), buf.len()),
            PREFORK_ERR_STATE
        );
        assert_eq!(
            prefork_listener_addr(0, ptr::null_mut(), 0),
            PREFORK_ERR_NULL
        );
    }
}
