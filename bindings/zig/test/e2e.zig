//! End-to-end test of examples/hello.zig, run by `zig build test` with the installed program's
//! path as its argument.
//!
//! Starts the program as a user would (a master on 127.0.0.1 port 0 with two children), finds
//! the port the master bound, checks real HTTP requests, then sends SIGTERM and checks a
//! graceful stop: exit status 0, every child exited by itself with status 0, no process left,
//! the port closed. Every wait has a deadline; on any failure the processes it started are
//! killed by PID before it exits non-zero.

const std = @import("std");
const Io = std.Io;
const linux = std.os.linux;

const children = 2;
/// Bound on each phase; the library's own bounds (startup 10 s, grace 5 s) fit inside.
const phase_timeout_ms = 15_000;
const pid_requests = 8;

const Failure = error{TestFailed};

fn fail(comptime fmt: []const u8, args: anytype) Failure {
    std.debug.print("e2e: FAILED: " ++ fmt ++ "\n", args);
    return error.TestFailed;
}

fn pass(comptime fmt: []const u8, args: anytype) void {
    std.debug.print("e2e: ok   " ++ fmt ++ "\n", args);
}

pub fn main(init: std.process.Init) u8 {
    const args = init.minimal.args.toSlice(init.arena.allocator()) catch return 1;
    if (args.len != 2) {
        std.debug.print("usage: e2e PATH-TO-prefork-hello\n", .{});
        return 2;
    }
    run(init.io, init.gpa, args[1]) catch |err| {
        if (err != error.TestFailed) std.debug.print("e2e: FAILED: {t}\n", .{err});
        return 1;
    };
    return 0;
}

/// The server under test and what is known of its processes, so that a failure at any
/// point can stop them.
const Server = struct {
    proc: std.process.Child,
    master: i32,
    /// Filled from the ready line. A child's PID stays ours to signal until the master
    /// reports it reaped (its child-exit line sets `exited`).
    pids: [children]i32 = @splat(0),
    exited: [children]bool = @splat(false),
    /// Set once the master is reaped: from then on no PID here may be signalled.
    reaped: bool = false,

    fn killAll(s: *Server, io: Io) void {
        if (s.reaped) return;
        for (s.pids, s.exited) |pid, gone| if (pid > 0 and !gone) std.posix.kill(pid, .KILL) catch {};
        s.proc.kill(io); // SIGKILL and reap
        s.reaped = true;
    }
};

fn run(io: Io, gpa: std.mem.Allocator, exe: []const u8) !void {
    const started = Io.Timestamp.now(io, .awake);
    var server: Server = .{
        .proc = try std.process.spawn(io, .{
            .argv = &.{ exe, "--addr", "127.0.0.1:0", "--children", std.fmt.comptimePrint("{d}", .{children}) },
            .stdout = .pipe,
            .stderr = .inherit,
        }),
        .master = undefined,
    };
    server.master = server.proc.id.?;
    defer server.killAll(io);

    var out: LineReader = .{ .io = io, .fd = server.proc.stdout.?.handle };

    // 1. The ready line names the master and its children.
    const ready = try out.line(deadlineAfter(io, phase_timeout_ms)) orelse
        return fail("the program exited before printing its ready line", .{});
    try parseReady(ready, &server);
    pass("ready: master {d}, children {any}", .{ server.master, server.pids });

    // 2. Port 0 was asked for: the master's listening socket says which port it got.
    const port = try listeningPort(io, gpa, server.master);
    pass("master {d} listens on 127.0.0.1:{d}", .{ server.master, port });

    // 3. Real requests, each on a fresh connection.
    {
        const r = try get(io, port, "/");
        if (r.status != 200 or !std.mem.eql(u8, r.body(), "Hello, World!"))
            return fail("GET / gave {d} {q}, want 200 \"Hello, World!\"", .{ r.status, r.body() });
        if (!std.mem.eql(u8, r.contentType(), "text/plain; charset=utf-8"))
            return fail("GET / has Content-Type {q}, want the handler's text/plain", .{r.contentType()});
        pass("GET / -> 200 \"Hello, World!\" (text/plain)", .{});
    }
    var served_by: [children]usize = @splat(0);
    for (0..pid_requests) |_| {
        const r = try get(io, port, "/pid");
        const pid = std.fmt.parseInt(i32, r.body(), 10) catch
            return fail("GET /pid gave {d} {q}, want a pid", .{ r.status, r.body() });
        const slot = std.mem.indexOfScalar(i32, &server.pids, pid) orelse
            return fail("GET /pid answered by pid {d}, not one of the children {any}", .{ pid, server.pids });
        if (r.status != 200) return fail("GET /pid gave status {d}", .{r.status});
        served_by[slot] += 1;
    }
    pass("GET /pid x{d} -> 200, answered by children (per child: {any})", .{ pid_requests, served_by });
    {
        const r = try get(io, port, "/no-such-path");
        if (r.status != 404) return fail("GET /no-such-path gave {d}, want 404", .{r.status});
        pass("GET /no-such-path -> 404", .{});
    }

    // 4. Graceful stop. Every child writes to the same stdout pipe, so its EOF means the
    // master and every child are gone; the master's child-exit lines say how each ended.
    const stop_started = Io.Timestamp.now(io, .awake);
    try std.posix.kill(server.master, .TERM);
    const stop_deadline = deadlineAfter(io, phase_timeout_ms);
    while (try out.line(stop_deadline)) |line| {
        if (!std.mem.startsWith(u8, line, "child-exit ")) continue;
        const pid, const code, const signal = parseChildExit(line) orelse
            return fail("bad child-exit line {q}", .{line});
        const slot = std.mem.indexOfScalar(i32, &server.pids, pid) orelse
            return fail("child-exit for {d}, not a child of this master", .{pid});
        server.exited[slot] = true;
        if (code != 0 or signal != 0)
            return fail("child {d} did not stop gracefully: exit code {d}, signal {d}", .{ pid, code, signal });
    }
    try awaitExit(io, server.master, stop_deadline);
    const term = try server.proc.wait(io);
    server.reaped = true;
    const stop_ms = Io.Timestamp.now(io, .awake).nanoseconds - stop_started.nanoseconds;
    if (!term.success()) return fail("master after SIGTERM: {f}, want exit code 0", .{term});
    for (server.exited, server.pids) |ok, pid| if (!ok) return fail("no child-exit line for child {d}", .{pid});
    pass("SIGTERM -> master exited 0, both children exited 0 by themselves, in {d} ms", .{@divTrunc(stop_ms, std.time.ns_per_ms)});

    // 5. Nothing left behind: the children were reaped by the master (no orphan, no zombie),
    // and nothing listens on the port any more.
    for (server.pids) |pid| {
        var buf: [32]u8 = undefined;
        const path = try std.fmt.bufPrint(&buf, "/proc/{d}", .{pid});
        if (Io.Dir.cwd().access(io, path, .{})) |_| {
            return fail("child {d} still exists after the master exited", .{pid});
        } else |err| if (err != error.FileNotFound) return err;
    }
    const address: Io.net.IpAddress = .{ .ip4 = .loopback(port) };
    if (address.connect(io, .{ .mode = .stream })) |stream| {
        stream.close(io);
        return fail("127.0.0.1:{d} still accepts connections after the stop", .{port});
    } else |err| if (err != error.ConnectionRefused) return err;
    pass("no process left, port {d} closed", .{port});

    const total_ms = @divTrunc(Io.Timestamp.now(io, .awake).nanoseconds - started.nanoseconds, std.time.ns_per_ms);
    std.debug.print("e2e: all checks passed in {d} ms\n", .{total_ms});
}

/// "ready pid=<master> children=<pid>,<pid>"
fn parseReady(line: []const u8, server: *Server) !void {
    var words = std.mem.tokenizeScalar(u8, line, ' ');
    const head = words.next() orelse "";
    const pid_field = words.next() orelse "";
    const children_field = words.next() orelse "";
    if (!std.mem.eql(u8, head, "ready") or !std.mem.startsWith(u8, pid_field, "pid=") or
        !std.mem.startsWith(u8, children_field, "children=") or words.next() != null)
        return fail("ready line {q}, want \"ready pid=<pid> children=<pid>,...\"", .{line});
    const master = std.fmt.parseInt(i32, pid_field["pid=".len..], 10) catch
        return fail("ready line {q}: bad master pid", .{line});
    if (master != server.master)
        return fail("ready line names master {d}, but the program started is {d}", .{ master, server.master });
    var pids = std.mem.splitScalar(u8, children_field["children=".len..], ',');
    var n: usize = 0;
    while (pids.next()) |text| : (n += 1) {
        if (n == children) return fail("ready line {q}: more than {d} children", .{ line, children });
        const pid = std.fmt.parseInt(i32, text, 10) catch
            return fail("ready line {q}: bad child pid {q}", .{ line, text });
        if (pid <= 0 or pid == master or std.mem.indexOfScalar(i32, server.pids[0..n], pid) != null)
            return fail("ready line {q}: child pid {d} is not a distinct child", .{ line, pid });
        server.pids[n] = pid;
    }
    if (n != children) return fail("ready line {q}: want {d} children", .{ line, children });
}

/// "child-exit pid=<pid> code=<code> signal=<signal>"
fn parseChildExit(line: []const u8) ?struct { i32, i32, i32 } {
    var words = std.mem.tokenizeScalar(u8, line, ' ');
    _ = words.next();
    var values: [3]i32 = undefined;
    for (&values, [_][]const u8{ "pid=", "code=", "signal=" }) |*v, key| {
        const word = words.next() orelse return null;
        if (!std.mem.startsWith(u8, word, key)) return null;
        v.* = std.fmt.parseInt(i32, word[key.len..], 10) catch return null;
    }
    if (words.next() != null) return null;
    return .{ values[0], values[1], values[2] };
}

fn deadlineAfter(io: Io, ms: i64) Io.Timestamp {
    const now = Io.Timestamp.now(io, .awake);
    return .{ .nanoseconds = now.nanoseconds + @as(i96, ms) * std.time.ns_per_ms };
}

/// Waits until `fd` is readable (data, EOF or an error to read) or `deadline` passes.
fn waitReadable(io: Io, fd: std.posix.fd_t, deadline: Io.Timestamp, what: []const u8) !void {
    while (true) {
        const now = Io.Timestamp.now(io, .awake);
        const left = @divTrunc(deadline.nanoseconds - now.nanoseconds, std.time.ns_per_ms);
        if (left <= 0) return fail("timed out waiting for {s}", .{what});
        var fds = [_]std.posix.pollfd{.{ .fd = fd, .events = std.posix.POLL.IN, .revents = 0 }};
        if (try std.posix.poll(&fds, @intCast(@min(left, std.math.maxInt(i32)))) > 0) return;
    }
}

/// Lines of the program's stdout, each read against a deadline.
const LineReader = struct {
    io: Io,
    fd: std.posix.fd_t,
    buf: [4096]u8 = undefined,
    start: usize = 0,
    end: usize = 0,

    /// The next line without its '\n', valid until the next call; null at EOF.
    fn line(r: *LineReader, deadline: Io.Timestamp) !?[]const u8 {
        while (true) {
            if (std.mem.indexOfScalar(u8, r.buf[r.start..r.end], '\n')) |i| {
                defer r.start += i + 1;
                return r.buf[r.start..][0..i];
            }
            std.mem.copyForwards(u8, &r.buf, r.buf[r.start..r.end]);
            r.end -= r.start;
            r.start = 0;
            if (r.end == r.buf.len) return fail("a line of over {d} bytes on stdout", .{r.buf.len});
            try waitReadable(r.io, r.fd, deadline, "the program's stdout");
            const n = try std.posix.read(r.fd, r.buf[r.end..]);
            if (n == 0) {
                if (r.end > 0) return fail("stdout ended inside a line: {q}", .{r.buf[0..r.end]});
                return null;
            }
            r.end += n;
        }
    }
};

/// Waits for process `pid` (our child, not yet reaped) to exit, through a pidfd.
fn awaitExit(io: Io, pid: i32, deadline: Io.Timestamp) !void {
    const rc = linux.pidfd_open(pid, 0);
    if (linux.errno(rc) != .SUCCESS) return fail("pidfd_open({d}): {t}", .{ pid, linux.errno(rc) });
    const fd: std.posix.fd_t = @intCast(rc);
    defer _ = linux.close(fd);
    try waitReadable(io, fd, deadline, "the master to exit after SIGTERM");
}

const Response = struct {
    buf: [4096]u8 = undefined,
    len: usize = 0,
    status: u16 = 0,
    body_start: usize = 0,
    /// Where the Content-Type value is in `buf` (offsets: a Response is returned by value).
    content_type: [2]usize = .{ 0, 0 },

    fn body(r: *const Response) []const u8 {
        return r.buf[r.body_start..r.len];
    }

    fn contentType(r: *const Response) []const u8 {
        return r.buf[r.content_type[0]..r.content_type[1]];
    }

    /// True once a whole response is in `buf`: a head and Content-Length bytes of body.
    fn complete(r: *Response, path: []const u8) !bool {
        const head_len = (std.mem.indexOf(u8, r.buf[0..r.len], "\r\n\r\n") orelse return false) + 4;
        var lines = std.mem.splitSequence(u8, r.buf[0 .. head_len - 4], "\r\n");
        const status_line = lines.next().?;
        if (!std.mem.startsWith(u8, status_line, "HTTP/1.1 ") or status_line.len < 12)
            return fail("GET {s}: bad status line {q}", .{ path, status_line });
        r.status = std.fmt.parseInt(u16, status_line[9..12], 10) catch
            return fail("GET {s}: bad status line {q}", .{ path, status_line });
        var content_length: ?usize = null;
        while (lines.next()) |field| {
            const colon = std.mem.indexOfScalar(u8, field, ':') orelse
                return fail("GET {s}: bad header field {q}", .{ path, field });
            const value = std.mem.trim(u8, field[colon + 1 ..], " \t");
            if (std.ascii.eqlIgnoreCase(field[0..colon], "content-type")) {
                const at = value.ptr - &r.buf;
                r.content_type = .{ at, at + value.len };
            }
            if (!std.ascii.eqlIgnoreCase(field[0..colon], "content-length")) continue;
            content_length = std.fmt.parseInt(usize, value, 10) catch
                return fail("GET {s}: bad Content-Length {q}", .{ path, value });
        }
        const want = content_length orelse return fail("GET {s}: no Content-Length", .{path});
        r.body_start = head_len;
        if (r.len - head_len > want)
            return fail("GET {s}: {d} body bytes, Content-Length says {d}", .{ path, r.len - head_len, want });
        return r.len - head_len == want;
    }
};

/// One GET on a fresh connection to 127.0.0.1:`port`, read until the response is complete.
fn get(io: Io, port: u16, path: []const u8) !Response {
    const address: Io.net.IpAddress = .{ .ip4 = .loopback(port) };
    const stream = address.connect(io, .{ .mode = .stream }) catch |err|
        return fail("GET {s}: connect to 127.0.0.1:{d}: {t}", .{ path, port, err });
    defer stream.close(io);
    var request_buf: [256]u8 = undefined;
    const request = try std.fmt.bufPrint(
        &request_buf,
        "GET {s} HTTP/1.1\r\nHost: 127.0.0.1:{d}\r\nConnection: close\r\n\r\n",
        .{ path, port },
    );
    var writer = stream.writer(io, &.{});
    writer.interface.writeAll(request) catch return fail("GET {s}: sending the request failed", .{path});

    var r: Response = .{};
    const deadline = deadlineAfter(io, 5_000);
    while (!try r.complete(path)) {
        if (r.len == r.buf.len) return fail("GET {s}: response over {d} bytes", .{ path, r.buf.len });
        try waitReadable(io, stream.socket.handle, deadline, "a response");
        const n = std.posix.read(stream.socket.handle, r.buf[r.len..]) catch |err|
            return fail("GET {s}: reading the response: {t}", .{ path, err });
        if (n == 0) return fail("GET {s}: connection closed mid-response: {q}", .{ path, r.buf[0..r.len] });
        r.len += n;
    }
    return r;
}

/// The port of the TCP socket that `pid` holds in LISTEN state: its descriptors name socket
/// inodes, and its network namespace's /proc/PID/net/tcp maps inodes to addresses.
fn listeningPort(io: Io, gpa: std.mem.Allocator, pid: i32) !u16 {
    var path_buf: [64]u8 = undefined;
    var inodes: std.ArrayList(u64) = .empty;
    defer inodes.deinit(gpa);
    {
        var dir = try Io.Dir.cwd().openDir(io, try std.fmt.bufPrint(&path_buf, "/proc/{d}/fd", .{pid}), .{ .iterate = true });
        defer dir.close(io);
        var it = dir.iterate();
        while (try it.next(io)) |entry| {
            var link_buf: [64]u8 = undefined;
            const n = dir.readLink(io, entry.name, &link_buf) catch continue; // closed meanwhile
            const link = link_buf[0..n];
            if (!std.mem.startsWith(u8, link, "socket:[") or !std.mem.endsWith(u8, link, "]")) continue;
            try inodes.append(gpa, std.fmt.parseInt(u64, link["socket:[".len .. link.len - 1], 10) catch continue);
        }
    }
    // Streaming read, a row at a time: /proc files report size 0, and the table holds every
    // TCP socket of the namespace (tens of thousands in TIME_WAIT after a load test).
    const file = try Io.Dir.cwd().openFile(io, try std.fmt.bufPrint(&path_buf, "/proc/{d}/net/tcp", .{pid}), .{});
    defer file.close(io);
    var read_buf: [4096]u8 = undefined;
    var reader = file.readerStreaming(io, &read_buf);
    var first = true;
    while (true) {
        const line = reader.interface.takeDelimiterInclusive('\n') catch |err| switch (err) {
            error.EndOfStream => break,
            else => return err,
        };
        if (first) { // the column names
            first = false;
            continue;
        }
        const row = std.mem.trimEnd(u8, line, "\n");
        // sl local_address rem_address st tx_queue:rx_queue tr:tm->when retrnsmt uid timeout inode
        var cols = std.mem.tokenizeScalar(u8, row, ' ');
        var col: [10][]const u8 = undefined;
        var n: usize = 0;
        while (n < col.len) : (n += 1) col[n] = cols.next() orelse break;
        if (n < col.len or !std.mem.eql(u8, col[3], "0A")) continue; // 0A: TCP_LISTEN
        const inode = std.fmt.parseInt(u64, col[9], 10) catch continue;
        if (std.mem.indexOfScalar(u64, inodes.items, inode) == null) continue;
        const colon = std.mem.indexOfScalar(u8, col[1], ':') orelse continue;
        return std.fmt.parseInt(u16, col[1][colon + 1 ..], 16);
    }
    return fail("master {d} holds no listening TCP socket", .{pid});
}
