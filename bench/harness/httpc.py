"""A minimal HTTP/1.1 client over raw sockets: the harness must talk to every subject,
including the canned responder, which never parses requests nor closes connections, so a
response ends where its Content-Length says, never at EOF."""

import socket
import ssl
import time

HELLO = b"Hello, World!"


class HttpError(Exception):
    pass


def read_response(sock, buf=b""):
    """Reads one response; returns (status, head_bytes, body, rest_of_buffer)."""
    while b"\r\n\r\n" not in buf:
        chunk = sock.recv(65536)
        if not chunk:
            raise HttpError("connection closed before the response head")
        buf += chunk
    head, _, rest = buf.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    parts = lines[0].split(b" ", 2)
    if len(parts) < 2 or not parts[0].startswith(b"HTTP/1."):
        raise HttpError(f"bad status line {lines[0]!r}")
    length = None
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value.strip())
    if length is None:
        raise HttpError("response without Content-Length")
    while len(rest) < length:
        chunk = sock.recv(65536)
        if not chunk:
            raise HttpError("connection closed inside the body")
        rest += chunk
    return int(parts[1]), head + b"\r\n\r\n", rest[:length], rest[length:]


def _unverified():
    # The harness made the certificate itself a moment ago: nothing to verify it against.
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


def get(port, path="/", timeout=2.0, tls=False):
    """One GET on a new connection (HTTPS with tls); returns (status, head, body)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as raw:
        s = _unverified().wrap_socket(raw, server_hostname="localhost") if tls else raw
        s.sendall(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n".encode())
        status, head, body, _ = read_response(s)
        return status, head, body


def wait_hello(port, timeout, interval=0.001, tls=False):
    """Polls GET / until it answers 200 "Hello, World!"; returns the monotonic time it did,
    or None at the deadline."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            status, _, body = get(port, "/", timeout=max(0.05, deadline - time.monotonic()), tls=tls)
            if status == 200 and body == HELLO:
                return time.monotonic()
        except (OSError, HttpError):
            pass
        time.sleep(interval)
    return None
