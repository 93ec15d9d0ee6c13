//! Builds the Zig example server against libprefork and runs its end-to-end test.
//!
//!   zig build                         # zig-out/bin/prefork-hello + zig-out/lib/libprefork.so.0
//!   zig build run -- --addr 127.0.0.1:8080 --children 2
//!   zig build test                    # starts the example and checks it over HTTP
//!   -Dprefork-lib-dir=DIR             # where libprefork.so is (default ../../target/debug)
//!
//! The C API comes from include/prefork.h through the translate-c build step (this Zig has no
//! @cImport): the generated module is imported as "prefork_c".
const std = @import("std");

pub fn build(b: *std.Build) void {
    const target = b.standardTargetOptions(.{});
    const optimize = b.standardOptimizeOption(.{});

    // `cargo build` in the repository root leaves libprefork.so here; point elsewhere for a
    // release build (../../target/release) or an installed copy (/usr/local/lib).
    const lib_dir = b.option(
        std.Build.LazyPath,
        "prefork-lib-dir",
        "Directory holding libprefork.so (default: ../../target/debug)",
    ) orelse b.path("../../target/debug");

    const header = b.addTranslateC(.{
        .root_source_file = b.path("../../include/prefork.h"),
        .target = target,
        .optimize = optimize,
    });
    const prefork_c = header.createModule();

    const hello_mod = b.createModule(.{
        .root_source_file = b.path("examples/hello.zig"),
        .target = target,
        .optimize = optimize,
        .link_libc = true,
        .imports = &.{.{ .name = "prefork_c", .module = prefork_c }},
    });
    hello_mod.addLibraryPath(lib_dir);
    hello_mod.linkSystemLibrary("prefork", .{ .use_pkg_config = .no, .preferred_link_mode = .dynamic });
    // The library's soname is libprefork.so.0 and cargo only writes libprefork.so, so the
    // install step ships the library next to the program, as libprefork.so.0 in lib/, and the
    // program finds it there wherever the prefix is moved.
    hello_mod.addRPathSpecial("$ORIGIN/../lib");

    const hello = b.addExecutable(.{ .name = "prefork-hello", .root_module = hello_mod });
    // No rpath to the build-time library directory (a relative one would depend on the cwd).
    hello.each_lib_rpath = false;
    const install_hello = b.addInstallArtifact(hello, .{});
    const install_lib = b.addInstallLibFile(lib_dir.path(b, "libprefork.so"), "libprefork.so.0");
    b.getInstallStep().dependOn(&install_hello.step);
    b.getInstallStep().dependOn(&install_lib.step);

    // The installed program, not the cache copy: only the installed one has lib/ beside it.
    const installed_hello = b.graph.path(.install_bin, "prefork-hello");

    const run = std.Build.Step.Run.create(b, "run prefork-hello");
    run.addFileArg(installed_hello);
    run.addPassthruArgs();
    run.step.dependOn(b.getInstallStep());
    b.step("run", "Run the example server (pass its flags after --)").dependOn(&run.step);

    const e2e = b.addExecutable(.{
        .name = "e2e",
        .root_module = b.createModule(.{
            .root_source_file = b.path("test/e2e.zig"),
            .target = target,
            .optimize = optimize,
            .link_libc = true,
        }),
    });
    const run_e2e = b.addRunArtifact(e2e);
    run_e2e.addFileArg(installed_hello);
    run_e2e.step.dependOn(b.getInstallStep());
    b.step("test", "Start the example server and check it end to end").dependOn(&run_e2e.step);
}
