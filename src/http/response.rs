//! The response a handler fills in.

use std::fmt;
use std::io::Read;

use crate::error::{Error, ErrorKind};

/// The response a handler fills in. The engine keeps one per connection (one per job with
/// handler threads) and reuses it: no allocation per request once warm.
///
/// The body is either buffered (`write`/`set_body`, sent with `Content-Length`) or streamed
/// (`set_body_stream`, for a length not known in advance: sent chunked to HTTP/1.1 clients and
/// delimited by closing the connection for HTTP/1.0 clients). A 204 or 304 response has neither
/// (RFC 9110 §6.4.1): the engine sends it without Content-Length, Transfer-Encoding or body,
/// drops any body the handler set, and logs that once per child process.
pub struct Response {
    pub(crate) status: u16,
    /// Pre-encoded `Name: value\r\n` lines.
    pub(crate) headers: Vec<u8>,
    pub(crate) body: Vec<u8>,
    pub(crate) close: bool,
    pub(crate) stream: Option<Box<dyn Read + Send>>,
}

impl Default for Response {
    fn default() -> Self {
        Response {
            status: 200,
            headers: Vec::new(),
            body: Vec::new(),
            close: false,
            stream: None,
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
    /// engine's).
    pub fn set_status(&mut self, code: u16) -> Result<(), Error> {
        check_status(code)?;
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

    /// Makes the response ready for the next request, keeping its buffers.
    pub(crate) fn reset(&mut self) {
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
    fn stream_replaces_the_body() {
        let mut r = Response::default();
        r.write(b"abc");
        r.set_body_stream(std::io::Cursor::new(b"xyz".to_vec()));
        assert!(r.body().is_empty());
        assert!(r.stream.is_some());
    }
}
