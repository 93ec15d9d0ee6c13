//! The response a handler fills in.

use std::fmt;
use std::io::Read;
use std::mem;
use std::sync::Arc;

use super::deferred::{Binding, Deferred, Slot};
use super::hijack::{HijackFn, Hijacked};
use crate::error::{Error, ErrorKind};

/// The response a handler fills in. The engine keeps one per connection (one per job with
/// handler threads) and reuses it: no allocation per request once warm.
///
/// The body is either buffered (`write`/`set_body`, sent with `Content-Length`) or streamed
/// (`set_body_stream`, for a length not known in advance: sent chunked to HTTP/1.1 clients and
/// delimited by closing the connection for HTTP/1.0 clients). A 204 or 304 response has neither
/// (RFC 9110 §6.4.1): the engine sends it without Content-Length, Transfer-Encoding or body,
/// drops any body the handler set, and logs that once per child process.
///
/// Beyond filling it in, a handler may take the response over ([`Response::defer`]: answer
/// later, from any thread) or take the connection after it ([`Response::hijack`]: a protocol
/// upgrade).
pub struct Response {
    pub(crate) status: u16,
    /// Pre-encoded `Name: value\r\n` lines.
    pub(crate) headers: Vec<u8>,
    pub(crate) body: Vec<u8>,
    pub(crate) close: bool,
    pub(crate) stream: Option<Box<dyn Read + Send>>,
    /// What the handler did beyond filling it in; the engine looks once per response.
    pub(crate) takeover: Option<Takeover>,
    /// What the engine allows beyond filling it in (`power`), set before each handler call.
    pub(crate) powers: u8,
}

/// A response the handler took over, or whose connection it takes after it.
pub(crate) enum Takeover {
    /// `defer`: this response is spent; the `Deferred` brings the real one.
    Deferred(Binding),
    /// `hijack`: once this response is written, the connection goes to this callback.
    Hijack(HijackFn),
}

/// Bits of `Response::powers`. A response a program builds itself has none.
pub(crate) mod power {
    /// It is the one a handler was given and not deferred yet.
    pub const DEFER: u8 = 1;
    /// The engine sends it: the handler's, or a `Deferred`'s.
    pub const ENGINE: u8 = 2;
    /// Its connection's transport is a plain socket, which a new owner can take as it is.
    pub const PLAIN: u8 = 4;
}

impl Default for Response {
    fn default() -> Self {
        Response {
            status: 200,
            headers: Vec::new(),
            body: Vec::new(),
            close: false,
            stream: None,
            takeover: None,
            powers: 0,
        }
    }
}

impl fmt::Debug for Response {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Response")
            .field("status", &self.status)
            .field("headers", &String::from_utf8_lossy(&self.headers))
            .field("body_len", &self.body.len())
            .field("close", &self.close)
            .field("streamed", &self.stream.is_some())
            .field(
                "takeover",
                &match self.takeover {
                    None => "none",
                    Some(Takeover::Deferred(_)) => "deferred",
                    Some(Takeover::Hijack(_)) => "hijack",
                },
            )
            .finish()
    }
}

/// Buffers above this are released after a response instead of being kept for the next one.
const KEEP_CAPACITY: usize = 1 << 20;

#[inline(always)]
fn check_status(code: u16) -> Result<(), Error> {
    if (200..=599).contains(&code) {
        Ok(())
    } else {
        Err(Error::invalid(format!(
            "status {code} is outside 200..=599"
        )))
    }
}

#[inline(always)]
fn check_value(value: &[u8]) -> Result<(), Error> {
    if super::bytes::has_control(value) {
        Err(Error::invalid("header value contains a control character"))
    } else {
        Ok(())
    }
}

impl Response {
    /// Sets the status code; 200 until set. Must be 200..=599 (interim responses are the
    /// engine's), or 101 (Switching Protocols) once [`hijack`](Response::hijack) was called.
    pub fn set_status(&mut self, code: u16) -> Result<(), Error> {
        if let Err(e) = check_status(code) {
            return self.set_switching(code, e);
        }
        self.status = code;
        Ok(())
    }

    /// The one status outside 200..=599 a handler may set: 101, on a response whose connection
    /// it takes over.
    #[cold]
    fn set_switching(&mut self, code: u16, refused: Error) -> Result<(), Error> {
        if code != 101 || !matches!(self.takeover, Some(Takeover::Hijack(_))) {
            return Err(refused);
        }
        self.status = code;
        Ok(())
    }

    pub fn status(&self) -> u16 {
        self.status
    }

    /// Adds a header field. The name must be an RFC 9110 token and the value visible ASCII,
    /// space, tab or bytes >= 0x80. Content-Length, Transfer-Encoding and Date belong to the
    /// engine and are refused. Connection belongs to the engine too: a value with the `close`
    /// token closes the connection after this response (the engine then sends
    /// `Connection: close`), other values are dropped.
    pub fn add_header(&mut self, name: &[u8], value: &[u8]) -> Result<(), Error> {
        if name.is_empty()
            || !name
                .iter()
                .fold(true, |ok, &b| ok & super::parse::is_tchar(b))
        {
            return Err(Error::invalid(format!(
                "header name {:?} is not a token",
                String::from_utf8_lossy(name)
            )));
        }
        check_value(value)?;
        let owned: &[u8] = match name.len() {
            4 => b"date",
            10 => b"connection",
            14 => b"content-length",
            17 => b"transfer-encoding",
            _ => b"",
        };
        if !owned.is_empty() && name.eq_ignore_ascii_case(owned) {
            if owned != b"connection" {
                return Err(Error::new(
                    ErrorKind::InvalidArgument,
                    format!(
                        "the {} header is set by the engine",
                        String::from_utf8_lossy(owned)
                    ),
                ));
            }
            if value
                .split(|&b| b == b',')
                .any(|t| t.trim_ascii().eq_ignore_ascii_case(b"close"))
            {
                self.close = true;
            }
            return Ok(());
        }
        self.push_header(name, value);
        Ok(())
    }

    /// `set_status`, `add_header("Content-Type", content_type)` (none when it is empty) and
    /// `set_body` in one step, for the C ABI's one-call answer. Changes nothing on error.
    pub(crate) fn reply(
        &mut self,
        status: u16,
        content_type: &[u8],
        body: &[u8],
    ) -> Result<(), Error> {
        check_status(status)?;
        check_value(content_type)?;
        self.status = status;
        if !content_type.is_empty() {
            self.push_header(b"Content-Type", content_type);
        }
        self.set_body(body);
        Ok(())
    }

    /// Appends a checked field.
    #[inline(always)]
    fn push_header(&mut self, name: &[u8], value: &[u8]) {
        self.headers.extend_from_slice(name);
        self.headers.extend_from_slice(b": ");
        self.headers.extend_from_slice(value.trim_ascii());
        self.headers.extend_from_slice(b"\r\n");
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

    /// The buffered body so far.
    pub fn body(&self) -> &[u8] {
        &self.body
    }

    /// Streams the body from `stream` instead of a buffer, for bodies whose length is not
    /// known in advance. It replaces any buffered body (and `write` after it is ignored).
    ///
    /// After the handler returns, the engine pulls from `stream` on the child's event-loop
    /// thread whenever the connection's output buffer has room (so a slow client never makes
    /// it buffer more than `max_output_buffer`), until `read` returns `Ok(0)`. Each `read`
    /// should return promptly: a read that blocks stalls every connection of this child.
    /// An error (or a panic) from `read` ends the response early: the connection is closed
    /// without the final chunk, so an HTTP/1.1 client sees the body as truncated.
    ///
    /// HTTP/1.1 clients get `Transfer-Encoding: chunked`; HTTP/1.0 clients get the bytes as they
    /// come and the connection is closed after them. For HEAD requests and 204/304 responses
    /// the stream is dropped unread (for 204/304, with a log line once per child process).
    pub fn set_body_stream(&mut self, stream: impl Read + Send + 'static) {
        self.body.clear();
        self.stream = Some(Box::new(stream));
    }

    /// Takes the response over: the handler may return at once, and any thread completes the
    /// returned [`Deferred`] later (fill it like this response, then
    /// [`Deferred::complete`]). What was set so far moves into it. Completing wakes the
    /// child's event loop, which sends the response in its turn: a connection's later
    /// (pipelined) requests wait for it, so responses keep their order.
    ///
    /// A `Deferred` dropped without being completed answers 500 and closes the connection. One
    /// still pending when the child drains is answered 503 as the grace period ends (at most
    /// 250 ms before, so that the child may still exit by itself). A
    /// completion after the client left (or after the child stopped) is dropped. A client that
    /// closes its side of the connection meanwhile counts as gone: the connection is closed at
    /// once rather than held until the completion.
    ///
    /// Only the response a handler was given can be deferred, once: otherwise an
    /// `InvalidState` error. Copy what is needed of the request first: it is only valid until
    /// `handle` returns.
    pub fn defer(&mut self) -> Result<Deferred, Error> {
        if self.powers & power::DEFER == 0 {
            return Err(Error::new(
                ErrorKind::InvalidState,
                "only the response a handler was given can be deferred, and only once",
            ));
        }
        let slot = Arc::new(Slot::default());
        let mut resp = mem::take(self);
        resp.powers = power::ENGINE | (resp.powers & power::PLAIN);
        self.takeover = Some(Takeover::Deferred(Binding::new(&slot)));
        Ok(Deferred::new(resp, slot))
    }

    /// Takes the connection after this response: once it is written (and every response
    /// before it on the connection), the child forgets the connection and calls `on_conn`
    /// with it on its event-loop thread: the socket, blocking, and the bytes the client sent
    /// after this request that were already read (pipelined requests, or the new protocol's
    /// first bytes). `on_conn` should return promptly, handing the connection to a thread of
    /// its own.
    ///
    /// For a protocol upgrade, set the status to 101 after this call, and add an `Upgrade`
    /// field naming the protocol (only to an HTTP/1.1 request that asked for it in its own
    /// `Upgrade` field); the engine sends `Connection: Upgrade` with it. Any other response
    /// is sent with `Connection: close` (the HTTP exchange ends with it), then the connection
    /// is handed over.
    ///
    /// The connection counts toward `max_connections` until the [`Hijacked`] is dropped (or
    /// [`Hijacked::into_parts`] ends the count). The child's drain does not wait for it: it
    /// closes when the process exits. If the connection closes before the response is
    /// written, `on_conn` is dropped uncalled.
    ///
    /// Works on the response a handler was given and on a [`Deferred`]'s, once. Refused with
    /// an `Unsupported` error when the connection's transport is not a plain socket (a
    /// connection whose bytes pass through a layer of the child's own could not be handed
    /// over as a socket), and with `InvalidState` on a response the engine does not send or
    /// one already hijacked.
    pub fn hijack(&mut self, on_conn: impl FnOnce(Hijacked) + Send + 'static) -> Result<(), Error> {
        self.check_hijack()?;
        self.takeover = Some(Takeover::Hijack(Box::new(on_conn)));
        Ok(())
    }

    /// Whether `hijack` would accept: the C ABI asks before it takes the caller's user_data.
    pub(crate) fn check_hijack(&self) -> Result<(), Error> {
        if self.powers & power::ENGINE == 0 || self.takeover.is_some() {
            return Err(Error::new(
                ErrorKind::InvalidState,
                "only a response the engine sends can take its connection over, once",
            ));
        }
        if self.powers & power::PLAIN == 0 {
            return Err(Error::new(
                ErrorKind::Unsupported,
                "this connection's transport is not a plain socket, so it cannot be handed over",
            ));
        }
        Ok(())
    }

    /// Whether a batch must end with this response (`Handler::handle_batch`): it is taken
    /// over (deferred, or its connection hijacked), streams its body, or closes the
    /// connection, so the engine cannot answer the next request right after it.
    pub fn ends_batch(&self) -> bool {
        self.takeover.is_some() || self.stream.is_some() || self.close
    }

    /// Makes the response ready for the next request, keeping its buffers. Its takeover is
    /// gone already: the engine took it (or use `abandon`).
    pub(crate) fn reset(&mut self) {
        debug_assert!(self.takeover.is_none());
        self.status = 200;
        self.close = false;
        self.stream = None;
        for buf in [&mut self.headers, &mut self.body] {
            buf.clear();
            if buf.capacity() > KEEP_CAPACITY {
                *buf = Vec::new();
            }
        }
    }

    /// `reset` for a response whose takeover may not have happened (its handler panicked, its
    /// connection went away): what the handler took over is dropped, which may run a C
    /// finalizer.
    pub(crate) fn abandon(&mut self) {
        if self.takeover.is_some() {
            self.takeover = None;
        }
        self.reset();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_rules() {
        let mut r = Response::default();
        assert!(r.add_header(b"X-A", b" v ").is_ok());
        assert!(r.add_header(b"Bad Name", b"v").is_err());
        assert!(r.add_header(b"X-B", b"a\r\nb").is_err());
        assert!(r.add_header(b"content-length", b"3").is_err());
        assert!(r.add_header(b"Transfer-Encoding", b"chunked").is_err());
        assert!(r.add_header(b"Date", b"x").is_err());
        assert!(r.add_header(b"Connection", b"keep-alive").is_ok());
        assert!(!r.close);
        assert!(r.add_header(b"Connection", b"foo, Close").is_ok());
        assert!(r.close);
        assert_eq!(r.headers, b"X-A: v\r\n");
        assert!(r.set_status(199).is_err());
        assert!(r.set_status(600).is_err());
        assert!(r.set_status(404).is_ok());
        r.reset();
        assert_eq!((r.status, r.headers.len(), r.close), (200, 0, false));
    }

    #[test]
    fn reply_sets_all_three_or_nothing() {
        let mut r = Response::default();
        r.add_header(b"X-A", b"1").unwrap();
        r.write(b"old");
        assert!(r.reply(199, b"text/plain", b"new").is_err());
        assert!(
            r.reply(404, b"text/plain\r\nX-Injected: 1", b"new")
                .is_err()
        );
        assert_eq!(
            (r.status, &r.headers[..], r.body()),
            (200, &b"X-A: 1\r\n"[..], &b"old"[..])
        );
        r.reply(404, b" text/plain ", b"new").unwrap();
        assert_eq!(r.status, 404);
        assert_eq!(r.headers, b"X-A: 1\r\nContent-Type: text/plain\r\n");
        assert_eq!(r.body(), b"new");
        // An empty type adds no field.
        r.reply(200, b"", b"").unwrap();
        assert_eq!((r.status, r.headers.len(), r.body().len()), (200, 34, 0));
    }

    #[test]
    fn taking_over_needs_the_engines_leave() {
        let kind = |r: Result<(), Error>| r.unwrap_err().kind();
        let mut own = Response::default();
        assert_eq!(own.defer().unwrap_err().kind(), ErrorKind::InvalidState);
        assert_eq!(kind(own.hijack(drop)), ErrorKind::InvalidState);
        assert_eq!(kind(own.set_status(101)), ErrorKind::InvalidArgument);

        // A handler's response on a connection that is not a plain socket.
        let mut r = Response {
            powers: power::DEFER | power::ENGINE,
            ..Response::default()
        };
        assert_eq!(kind(r.hijack(drop)), ErrorKind::Unsupported);
        r.write(b"moves");
        let mut d = r.defer().unwrap();
        assert_eq!(d.body(), b"moves");
        assert_eq!(r.defer().unwrap_err().kind(), ErrorKind::InvalidState);
        assert_eq!(d.defer().unwrap_err().kind(), ErrorKind::InvalidState);
        assert_eq!(kind(d.hijack(drop)), ErrorKind::Unsupported);

        // On a plain socket: once, and then 101 is allowed.
        let mut r = Response {
            powers: power::DEFER | power::ENGINE | power::PLAIN,
            ..Response::default()
        };
        r.hijack(drop).unwrap();
        assert_eq!(kind(r.hijack(drop)), ErrorKind::InvalidState);
        r.set_status(101).unwrap();
        assert_eq!(kind(r.set_status(102)), ErrorKind::InvalidArgument);
        r.abandon();
        assert!(r.takeover.is_none());
    }

    #[test]
    fn stream_replaces_the_body() {
        let mut r = Response::default();
        r.write(b"abc");
        r.set_body_stream(std::io::Cursor::new(b"xyz".to_vec()));
        assert!(r.body().is_empty());
        assert!(r.stream.is_some());
    }
}
