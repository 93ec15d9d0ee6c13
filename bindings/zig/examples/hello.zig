//! prefork-hello: a preforking HTTP/1.1 server in Zig on libprefork.
//!
//!   prefork-hello [--addr HOST:PORT] [--children N]
//!
//! Routes: "/" answers "Hello, World!", "/pid" the pid of the child that served the request,
//! anything else 404. When every child listens, the master prints
//! "ready pid=<master> children=<pid>,<pid>,..." on stdout, and for each child that ends,
//! "child-exit pid=<pid> code=<exit code or -1> signal=<signal or 0>". SIGTERM or SIGINT stops
//! it gracefully with exit status 0 (the library handles both signals).
//!
//! The master re-executes this program once per child with the same arguments, so `main`
//! runs in every process: each builds the same handle, and `prefork_listen_and_serve`
//! supervises in the master and serves in the children.

const std = @import("std");
const c = @import("prefork_c");

const usage =
    \\usage: prefork-hello [--addr HOST:PORT] [--children N]
    \\  --addr      where to listen (default 127.0.0.1:8080; port 0 picks a free port)
    \\  --children  child processes (default 0: one per CPU)
    \\routes: /  /pid
    \\
;

/// State the callbacks share, reached through their `user_data`. It lives in `main`'s frame,
/// which outlasts the handle, so no `user_data_free` is needed.
const App = struct {
    io: std.Io,
};

/// A borrowed view of the library's bytes; valid only while the callback that got it runs.
fn view(s: c.prefork_str) []const u8 {
    return s.ptr[0..s.len];
}

/// Child, event-loop thread: answers one request. Must not fail, so a refused response call
/// (only possible on a bug) is logged rather than ignored.
fn handle(
    user_data: ?*anyopaque,
    req: ?*const c.prefork_request,
    resp: ?*c.prefork_response,
) callconv(.c) void {
    _ = user_data;
    const path = view(c.prefork_request_path(req));
    if (std.mem.eql(u8, path, "/")) {
        reply(resp, 200, "Hello, World!");
    } else if (std.mem.eql(u8, path, "/pid")) {
        var buf: [16]u8 = undefined;
        const text = std.fmt.bufPrint(&buf, "{d}", .{std.c.getpid()}) catch unreachable; // i32 fits
        reply(resp, 200, text);
    } else {
        reply(resp, 404, "Not Found\n");
    }
}

fn reply(resp: ?*c.prefork_response, status: c_int, body: []const u8) void {
    const content_type = "text/plain; charset=utf-8";
    check("prefork_response_set_status", c.prefork_response_set_status(resp, status));
    check("prefork_response_add_header", c.prefork_response_add_header(
        resp,
        "Content-Type",
        "Content-Type".len,
        content_type,
        content_type.len,
    ));
    check("prefork_response_write", c.prefork_response_write(resp, body.ptr, body.len));
}

fn check(what: []const u8, r: c.prefork_result) void {
    if (r != c.PREFORK_OK) std.log.err("{s}: {s}", .{ what, std.mem.span(c.prefork_last_error()) });
}

/// Master, once: every child is listening. A nonzero return would stop the server, so a
/// stdout that cannot be written (the reader of the ready line is gone) stops it.
fn onMasterReady(user_data: ?*anyopaque, pids: [*c]const i32, count: usize) callconv(.c) c_int {
    const app: *App = @ptrCast(@alignCast(user_data.?));
    printReady(app.io, pids[0..count]) catch return 1;
    return 0;
}

fn printReady(io: std.Io, pids: []const i32) !void {
    var buf: [512]u8 = undefined;
    var stdout = stdoutWriter(io, &buf);
    const out = &stdout.interface;
    try out.print("ready pid={d} children=", .{std.c.getpid()});
    for (pids, 0..) |pid, i| try out.print("{s}{d}", .{ if (i == 0) "" else ",", pid });
    try out.writeAll("\n");
    try out.flush();
}

/// Master: a child ended and was reaped (on a stop, or before it is replaced).
fn onChildExit(user_data: ?*anyopaque, pid: i32, exit_code: i32, signal: i32) callconv(.c) void {
    const app: *App = @ptrCast(@alignCast(user_data.?));
    var buf: [128]u8 = undefined;
    var stdout = stdoutWriter(app.io, &buf);
    stdout.interface.print("child-exit pid={d} code={d} signal={d}\n", .{ pid, exit_code, signal }) catch {};
    stdout.interface.flush() catch {};
}

/// Streaming (plain write(2)), not positional: stdout may be a file that others append to.
fn stdoutWriter(io: std.Io, buf: []u8) std.Io.File.Writer {
    return .initStreaming(.stdout(), io, buf);
}

pub fn main(init: std.process.Init) u8 {
    const args = init.minimal.args.toSlice(init.arena.allocator()) catch {
        std.log.err("out of memory reading the arguments", .{});
        return 1;
    };
    var addr: [:0]const u8 = "127.0.0.1:8080";
    var children: u32 = 0;
    var i: usize = 1;
    while (i < args.len) : (i += 1) {
        const flag = args[i];
        if (std.mem.eql(u8, flag, "--help") or std.mem.eql(u8, flag, "-h")) {
            std.Io.File.stdout().writeStreamingAll(init.io, usage) catch return 1;
            return 0;
        }
        if (i + 1 == args.len) return badUsage("missing value or unknown flag: ", flag);
        i += 1;
        const value = args[i];
        if (std.mem.eql(u8, flag, "--addr")) {
            addr = value;
        } else if (std.mem.eql(u8, flag, "--children")) {
            children = std.fmt.parseInt(u32, value, 10) catch
                return badUsage("--children needs a number, not ", value);
        } else {
            return badUsage("unknown flag: ", flag);
        }
    }

    // The header was translated at build time, the library is loaded at run time.
    const lib_version = std.mem.span(c.prefork_version());
    if (!std.mem.eql(u8, lib_version, c.PREFORK_VERSION))
        std.log.warn("built against prefork.h {s}, running with libprefork {s}", .{ c.PREFORK_VERSION, lib_version });

    var app: App = .{ .io = init.io };
    const handler: c.prefork_handler = .{ .user_data = &app, .handle = handle };
    var server: ?*c.prefork = null;
    // The header's prefork_new macro passes C's sizeof; from Zig, the _sized call with ours.
    if (c.prefork_new_sized(&handler, @sizeOf(c.prefork_handler), &server) != c.PREFORK_OK)
        return failed("prefork_new");
    defer c.prefork_free(server);

    if (c.prefork_set_children(server, children) != c.PREFORK_OK)
        return failed("--children");
    const hooks: c.prefork_hooks = .{
        .user_data = &app,
        .on_master_ready = onMasterReady,
        .on_child_exit = onChildExit,
    };
    if (c.prefork_set_hooks_sized(server, &hooks, @sizeOf(c.prefork_hooks)) != c.PREFORK_OK)
        return failed("prefork_set_hooks");

    const r = c.prefork_listen_and_serve(server, addr.ptr);
    if (r != c.PREFORK_OK) {
        std.log.err("{s}{s} ({s})", .{
            if (c.prefork_is_child()) "child: " else "",
            std.mem.span(c.prefork_last_error()),
            std.mem.span(c.prefork_result_str(@intCast(r))),
        });
        return 1;
    }
    return 0;
}

fn badUsage(problem: []const u8, arg: []const u8) u8 {
    std.debug.print("prefork-hello: {s}{s}\n{s}", .{ problem, arg, usage });
    return 2;
}

fn failed(what: []const u8) u8 {
    std.log.err("{s}: {s}", .{ what, std.mem.span(c.prefork_last_error()) });
    return 1;
}
