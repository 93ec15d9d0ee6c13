//! The HTTP/1.1 engine each child runs: the handler interface (`Handler`, `Request`,
//! `Response`) and `serve`, the event loop.
//!
//! PLACEHOLDER ENGINE: `serve` below is a minimal blocking accept-and-reply loop that lets the
//! process engine be tested; it is being replaced by the mio engine (issue 3).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::os::fd::{AsRawFd, RawFd};
use std::sync::Arc;
use std::time::Duration;

use crate::config::HttpConfig;
use crate::error::{Error, ErrorKind, HookError};
use crate::log::Logger;

/// The application's request handler. One value serves every child: each child process gets
/// its own copy of the program, so `init_child` is where per-process state is built.
pub trait Handler: Send + Sync + 'static {
    /// Runs once in each child, on its serving thread, before the child reports ready. An error
    /// makes the child exit (the master counts it as a crash).
    fn init_child(&self) -> Result<(), HookError> {
        Ok(())
    }

    /// Answers one request. Runs on the child's event-loop thread, or on one of its handler
    /// threads when `handler_threads > 0`. A panic becomes a 500 and closes the connection.
    fn handle(&self, req: &Request<'_>, resp: &mut Response);

    /// Runs once in each child after it stopped serving, on its serving thread.
    fn exit_child(&self) {}
}

/// One header field of a request, borrowed from the connection's buffer.
#[derive(Clone, Copy, Debug)]
pub struct Header<'a> {
    pub name: &'a str,
    pub value: &'a [u8],
}

/// A parsed request, borrowed from the connection's buffers for the duration of
/// `Handler::handle`.
#[derive(Debug)]
pub struct Request<'a> {
    pub(crate) method: &'a str,
    pub(crate) target: &'a str,
    pub(crate) minor_version: u8,
    pub(crate) headers: &'a [Header<'a>],
    pub(crate) body: &'a [u8],
    pub(crate) peer: Option<SocketAddr>,
}

impl<'a> Request<'a> {
    pub fn method(&self) -> &'a str {
        self.method
    }

    /// The request-target as received (origin-form `/p?q`, absolute-form, or `*`).
    pub fn target(&self) -> &'a str {
        self.target
    }

    /// The path part of the target (for absolute-form, the path after the authority).
    pub fn path(&self) -> &'a str {
        let t = self.origin();
        t.split_once('?').map_or(t, |(p, _)| p)
    }

    /// The query after `?`, without the `?`; empty when there is none.
    pub fn query(&self) -> &'a str {
        self.origin().split_once('?').map_or("", |(_, q)| q)
    }

    fn origin(&self) -> &'a str {
        let t = self.target;
        match t.find("://") {
            Some(i) => {
                let rest = &t[i + 3..];
                rest.find('/').map_or("/", |j| &rest[j..])
            }
            None => t,
        }
    }

    /// 0 for HTTP/1.0, 1 for HTTP/1.1.
    pub fn minor_version(&self) -> u8 {
        self.minor_version
    }

    pub fn headers(&self) -> &'a [Header<'a>] {
        self.headers
    }

    /// The first value of the named header, compared case-insensitively.
    pub fn header(&self, name: &str) -> Option<&'a [u8]> {
        self.headers.iter().find(|h| h.name.eq_ignore_ascii_case(name)).map(|h| h.value)
    }

    /// The whole body, de-chunked.
    pub fn body(&self) -> &'a [u8] {
        self.body
    }

    pub fn peer_addr(&self) -> Option<SocketAddr> {
        self.peer
    }
}

/// The response a handler fills in. Reused across requests: no allocation once warm.
#[derive(Debug)]
pub struct Response {
    pub(crate) status: u16,
    /// Pre-encoded `Name: value\r\n` lines.
    pub(crate) headers: Vec<u8>,
    pub(crate) body: Vec<u8>,
    pub(crate) close: bool,
}

impl Default for Response {
    fn default() -> Self {
        Response { status: 200, headers: Vec::new(), body: Vec::new(), close: false }
    }
}

impl Response {
    /// Sets the status code; 200 until set. Must be 200..=599 (interim responses are the
    /// engine's).
    pub fn set_status(&mut self, code: u16) -> Result<(), Error> {
        if !(200..=599).contains(&code) {
            return Err(Error::invalid(format!("status {code} is outside 200..=599")));
        }
        self.status = code;
        Ok(())
    }

    pub fn status(&self) -> u16 {
        self.status
    }

    /// Adds a header field. The name must be an RFC 9110 token and the value visible ASCII,
    /// space or tab. Content-Length, Transfer-Encoding and Date belong to the engine and are
    /// refused; `Connection: close` closes the connection after this response.
    pub fn add_header(&mut self, name: &[u8], value: &[u8]) -> Result<(), Error> {
        if name.is_empty() || !name.iter().all(|&b| is_tchar(b)) {
            return Err(Error::invalid(format!(
                "header name {:?} is not a token",
                String::from_utf8_lossy(name)
            )));
        }
        if !value.iter().all(|&b| b == b'\t' || (b' '..=b'~').contains(&b) || b >= 0x80) {
            return Err(Error::invalid("header value contains a control character"));
        }
        for owned in ["content-length", "transfer-encoding", "date"] {
            if name.eq_ignore_ascii_case(owned.as_bytes()) {
                return Err(Error::new(
                    ErrorKind::InvalidArgument,
                    format!("the {owned} header is set by the engine"),
                ));
            }
        }
        if name.eq_ignore_ascii_case(b"connection")
            && value.split(|&b| b == b',').any(|t| t.trim_ascii().eq_ignore_ascii_case(b"close"))
        {
            self.close = true;
        }
        self.headers.extend_from_slice(name);
        self.headers.extend_from_slice(b": ");
        self.headers.extend_from_slice(value);
        self.headers.extend_from_slice(b"\r\n");
        Ok(())
    }

    /// Appends to the body.
    pub fn write(&mut self, bytes: &[u8]) {
        self.body.extend_from_slice(bytes);
    }

    /// Replaces the body.
    pub fn set_body(&mut self, bytes: &[u8]) {
        self.body.clear();
        self.body.extend_from_slice(bytes);
    }

    pub fn body(&self) -> &[u8] {
        &self.body
    }
}

fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// How the process side steers a serving child.
pub(crate) struct ServeControl<'a> {
    /// Readable when a graceful stop was requested (SIGTERM or `shutdown()`); the bytes must be
    /// drained. See `crate::control`.
    pub wake_fd: RawFd,
    /// The child's end of the lifeline: readable with EOF when the master is gone.
    pub lifeline_fd: Option<RawFd>,
    /// Called once when the master is gone, before draining.
    pub on_master_death: Option<&'a mut (dyn FnMut() + Send)>,
    /// Longest drain before the remaining connections are dropped.
    pub grace_period: Duration,
}

/// Serves `listener` until a stop is requested or the master dies, then drains.
pub(crate) fn serve(
    listener: TcpListener,
    handler: &Arc<dyn Handler>,
    _cfg: &HttpConfig,
    mut ctl: ServeControl<'_>,
    log: &dyn Logger,
) -> Result<(), Error> {
    let lfd = listener.as_raw_fd();
    loop {
        let mut fds = vec![
            libc::pollfd { fd: lfd, events: libc::POLLIN, revents: 0 },
            libc::pollfd { fd: ctl.wake_fd, events: libc::POLLIN, revents: 0 },
        ];
        if let Some(fd) = ctl.lifeline_fd {
            fds.push(libc::pollfd { fd, events: libc::POLLIN, revents: 0 });
        }
        let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as _, -1) };
        if n < 0 {
            continue;
        }
        if fds[1].revents != 0 {
            return Ok(());
        }
        if fds.len() > 2 && fds[2].revents != 0 {
            if let Some(hook) = ctl.on_master_death.take() {
                hook();
            }
            return Ok(());
        }
        if fds[0].revents != 0 {
            let Ok((mut s, peer)) = listener.accept() else { continue };
            let _ = s.set_nonblocking(false);
            let mut buf = Vec::new();
            let mut chunk = [0u8; 4096];
            while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                match s.read(&mut chunk) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => buf.extend_from_slice(&chunk[..n]),
                }
            }
            let text = String::from_utf8_lossy(&buf);
            let mut parts = text.split(' ');
            let method = parts.next().unwrap_or("GET");
            let target = parts.next().unwrap_or("/");
            let req = Request {
                method,
                target,
                minor_version: 1,
                headers: &[],
                body: &[],
                peer: Some(peer),
            };
            let mut resp = Response::default();
            handler.handle(&req, &mut resp);
            let head = format!(
                "HTTP/1.1 {} X\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                resp.status,
                resp.body.len()
            );
            if s.write_all(head.as_bytes()).and_then(|_| s.write_all(&resp.body)).is_err() {
                log.log(crate::log::Level::Debug, "placeholder engine: write failed");
            }
        }
    }
}
