//! Gives the shared library its soname, so programs linked against `libprefork.so` record the
//! ABI major version (`libprefork.so.0`) and keep working across compatible upgrades.

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    if std::env::var("CARGO_CFG_TARGET_OS").as_deref() == Ok("linux") {
        println!("cargo:rustc-cdylib-link-arg=-Wl,-soname,libprefork.so.0");
    }
}
