//! include/prefork.h must be exactly what cbindgen makes of src/ffi today: the C API's
//! reference manual cannot drift from the code. `PREFORK_UPDATE_HEADER=1` rewrites it (what
//! scripts/gen-header does).

use std::path::Path;

fn generate() -> String {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let config =
        cbindgen::Config::from_file(root.join("cbindgen.toml")).expect("read cbindgen.toml");
    let bindings = cbindgen::Builder::new()
        .with_config(config)
        .with_src(root.join("src/ffi/mod.rs"))
        .generate()
        .expect("cbindgen could not generate the header from src/ffi");
    let mut out = Vec::new();
    bindings.write(&mut out);
    String::from_utf8(out).expect("generated header is UTF-8")
}

#[test]
fn header_matches_the_source() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("include/prefork.h");
    let fresh = generate();
    if std::env::var_os("PREFORK_UPDATE_HEADER").is_some() {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, &fresh).unwrap();
        return;
    }
    let checked_in = std::fs::read_to_string(&path).unwrap_or_default();
    if checked_in != fresh {
        let first = checked_in
            .lines()
            .zip(fresh.lines())
            .position(|(a, b)| a != b);
        let line = first.unwrap_or(checked_in.lines().count().min(fresh.lines().count()));
        panic!(
            "include/prefork.h is out of date with src/ffi (first difference at line {}:\n  \
             checked in: {:?}\n  generated:  {:?}).\nRegenerate it with scripts/gen-header \
             (PREFORK_UPDATE_HEADER=1 cargo test --test header) and commit it.",
            line + 1,
            checked_in.lines().nth(line).unwrap_or("<end of file>"),
            fresh.lines().nth(line).unwrap_or("<end of file>"),
        );
    }
}

/// The version macros are literal text in cbindgen.toml: keep them on Cargo.toml's version.
#[test]
fn version_macros_follow_the_package_version() {
    let header = generate();
    let expect = [
        format!(
            "#define PREFORK_VERSION_MAJOR {}\n",
            env!("CARGO_PKG_VERSION_MAJOR")
        ),
        format!(
            "#define PREFORK_VERSION_MINOR {}\n",
            env!("CARGO_PKG_VERSION_MINOR")
        ),
        format!(
            "#define PREFORK_VERSION_PATCH {}\n",
            env!("CARGO_PKG_VERSION_PATCH")
        ),
        format!(
            "#define PREFORK_VERSION \"{}\"\n",
            env!("CARGO_PKG_VERSION")
        ),
    ];
    for line in expect {
        assert!(
            header.contains(&line),
            "cbindgen.toml's after_includes lacks {line:?}"
        );
    }
    // SAFETY: prefork_version returns a static NUL-terminated string.
    let runtime = unsafe { std::ffi::CStr::from_ptr(prefork::ffi::prefork_version()) };
    assert_eq!(runtime.to_str().unwrap(), env!("CARGO_PKG_VERSION"));
}
