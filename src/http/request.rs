//! The handler interface: the `Handler` trait and the borrowed `Request` it receives.

use std::net::SocketAddr;
use std::sync::Arc;

use super::Response;
use super::proxy::ProxyHeader;
use crate::error::HookError;
use crate::listen::ListenAddr;

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
    ///
    /// The engine has already answered every malformed request (400, 413, 414, 431, 501, 505),
    /// so a request that reaches the handler is well-formed and its body is complete.
    fn handle(&self, req: &Request<'_>, resp: &mut Response);

    /// Whether the event loop hands this handler its requests in batches (`handle_batch`)
    /// instead of one by one. Asked once per child; false unless overridden.
    fn batches(&self) -> bool {
        false
    }

    /// Answers several requests at once: for a handler behind a costly call (a
    /// foreign-language runtime), one crossing per turn of the event loop instead of one per
    /// request. When `batches` is true, the event loop calls it instead of `handle` for the
    /// complete requests at the start of connections' inputs: those one turn of the loop
    /// found on several connections (at depth 1, one on each connection that was ready), and
    /// the pipelined requests of a connection's read. `reqs.len() == resps.len()`, between 1
    /// and [`MAX_BATCH`](crate::MAX_BATCH) requests; a batch may hold requests of several
    /// connections, each connection's next to each other and in the order received, each with
    /// its head and whole body (not chunked) in, and ending after a request that closes the
    /// connection. A request completed otherwise (its head began in an earlier read, its body
    /// came later or chunked), those of a lone connection whose last read brought only one
    /// (where a batch of one costs more than `handle`), and every request on the handler
    /// threads go to `handle`.
    ///
    /// Answer `reqs[i]` in `resps[i]` and return how many requests were answered, from the
    /// first: the others (`reqs[k..]`) are not consumed and come again in a later batch. A
    /// response that is deferred, hijacked, streamed or closes the connection must be the
    /// last answered of its connection's requests (returning its index + 1 is always right):
    /// the connection waits for it, or ends with it. If a later request of that connection is
    /// answered anyway, the engine drops those answers, logs an error, and closes the
    /// connection after it; other connections' answers stand. A count of 0 or above
    /// `reqs.len()` counts as all. A panic answers the first request of each connection in the
    /// batch 500 and closes those connections (which of their requests the handler ran is
    /// not known).
    ///
    /// The default answers each with `handle`, and stops after one that ends the batch
    /// ([`Response::ends_batch`]).
    fn handle_batch(&self, reqs: &[Request<'_>], resps: &mut [Response]) -> usize {
        for (i, (req, resp)) in reqs.iter().zip(resps.iter_mut()).enumerate() {
            self.handle(req, resp);
            if resp.ends_batch() {
                return i + 1;
            }
        }
        reqs.len()
    }

    /// Runs once in each child after it stopped serving, on its serving thread.
    fn exit_child(&self) {}
}

/// One header field of a request, borrowed from the connection's buffer. The name is as
/// received (compare it case-insensitively); the value has no leading or trailing whitespace
/// and may hold bytes >= 0x80 (obs-text), never a control character other than tab.
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
    /// Borrowed from the connection (a pointer is cheaper to hand over than the address).
    pub(crate) peer: &'a Peer,
}

/// Who sends a connection's requests: the socket's peer, or the client its PROXY protocol
/// header names; the header itself is kept for its TLVs.
#[derive(Clone, Debug, Default)]
pub(crate) struct Peer {
    pub addr: Option<SocketAddr>,
    pub proxy: Option<Arc<ProxyHeader>>,
    /// The listener that accepted the connection.
    pub local: Option<Arc<ListenAddr>>,
}

impl<'a> Request<'a> {
    /// The request a parsed head stands for; `headers` holds the head's fields as `Header`s.
    pub(crate) fn from_parsed(
        parsed: &httparse::Request<'a, '_>,
        headers: &'a [Header<'a>],
        body: &'a [u8],
        peer: &'a Peer,
    ) -> Request<'a> {
        Request {
            method: parsed.method.unwrap_or(""),
            target: parsed.path.unwrap_or(""),
            minor_version: parsed.version.unwrap_or(1),
            headers,
            body,
            peer,
        }
    }

    /// The request `index` recorded; `headers` holds its fields, from `HeadIndex::fields`.
    pub(crate) fn from_index(
        index: &'a HeadIndex,
        headers: &'a [Header<'a>],
        body: &'a [u8],
        peer: &'a Peer,
    ) -> Request<'a> {
        Request {
            method: &index.text[..index.method_end],
            target: &index.text[index.method_end..index.target_end],
            minor_version: index.minor_version,
            headers,
            body,
            peer,
        }
    }

    /// The method token, case-sensitive as received (`GET`, `POST`, ...).
    pub fn method(&self) -> &'a str {
        self.method
    }

    /// The request-target as received: origin-form `/p?q`, absolute-form `http://h/p?q`, or
    /// `*` (OPTIONS only). Always visible ASCII.
    pub fn target(&self) -> &'a str {
        self.target
    }

    /// The path part of the target (for absolute-form, the path after the authority; `/` when
    /// it has none). Not percent-decoded.
    #[inline]
    pub fn path(&self) -> &'a str {
        let t = self.origin();
        let p = split_query(t).map_or(t, |(p, _)| p);
        if p.is_empty() { "/" } else { p }
    }

    /// The query after `?`, without the `?`; empty when there is none.
    pub fn query(&self) -> &'a str {
        split_query(self.origin()).map_or("", |(_, q)| q)
    }

    // Inline for the origin form of nearly every request; the other forms are out of line.
    #[inline]
    fn origin(&self) -> &'a str {
        let t = self.target;
        if t.starts_with('/') {
            t
        } else {
            not_origin_form(t)
        }
    }

    /// 0 for HTTP/1.0, 1 for HTTP/1.1 (a request announcing HTTP/1.2 or later minor versions
    /// is served as HTTP/1.1, as RFC 9112 §2.3 asks).
    pub fn minor_version(&self) -> u8 {
        self.minor_version
    }

    /// Every header field in the order received (repeated names stay separate entries).
    pub fn headers(&self) -> &'a [Header<'a>] {
        self.headers
    }

    /// The first value of the named header, compared case-insensitively.
    pub fn header(&self, name: &str) -> Option<&'a [u8]> {
        self.headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .map(|h| h.value)
    }

    /// The whole body, de-chunked; empty when the request has none.
    pub fn body(&self) -> &'a [u8] {
        self.body
    }

    /// The client's address: `None` for a connection of a Unix-socket listener (see
    /// [`local_addr`](Self::local_addr)), or when the socket could not report it. With the
    /// PROXY protocol on, the client's address from the connection's header (over a Unix
    /// socket too, which is how a balancer in front on the same machine passes it); for a
    /// header that carries none (LOCAL, `UNKNOWN`, AF_UNSPEC, AF_UNIX) the socket's peer,
    /// which is the balancer.
    pub fn peer_addr(&self) -> Option<SocketAddr> {
        self.peer.addr
    }

    /// The address of the listener that accepted the connection, as it is bound (so
    /// `0.0.0.0:8080` for a listener on every interface): which of the server's listeners the
    /// request came in on. `None` only outside a server (the engine's test entry points).
    pub fn local_addr(&self) -> Option<&'a ListenAddr> {
        self.peer.local.as_deref()
    }

    /// The PROXY protocol header the connection started with (`None` unless the
    /// `proxy_protocol` option is on): its addresses, and the TLVs a version 2 header carries
    /// (`ProxyHeader::tlv`). Borrowed for the duration of `Handler::handle`.
    pub fn proxy_header(&self) -> Option<&'a ProxyHeader> {
        self.peer.proxy.as_deref()
    }
}

/// A parsed request head in a form that outlives its borrow of the head's bytes: a request
/// whose body arrives after its head (the input buffer may move meanwhile), or that a handler
/// thread answers from a copy of the head, is rebuilt from this instead of parsing the head
/// again.
#[derive(Debug)]
pub(crate) struct HeadIndex {
    /// The method, the target, then every field name, one after the other. Copied as text:
    /// making a `&str` of the head's bytes again would check them as UTF-8, which costs more.
    text: String,
    method_end: usize,
    target_end: usize,
    minor_version: u8,
    /// Each field: where its name ends in `text` (it starts where the previous one ended),
    /// and where its value is in the head.
    fields: Vec<(usize, Span)>,
}

impl Default for HeadIndex {
    fn default() -> HeadIndex {
        HeadIndex {
            text: String::new(),
            method_end: 0,
            target_end: 0,
            minor_version: 1,
            fields: Vec::new(),
        }
    }
}

impl HeadIndex {
    /// Records `req`, whose field values borrow `head`.
    pub(crate) fn record(&mut self, req: &Request<'_>, head: &[u8]) {
        self.text.clear();
        self.text.push_str(req.method);
        self.method_end = self.text.len();
        self.text.push_str(req.target);
        self.target_end = self.text.len();
        self.minor_version = req.minor_version;
        self.fields.clear();
        for h in req.headers {
            self.text.push_str(h.name);
            self.fields
                .push((self.text.len(), Span::within(head, h.value)));
        }
    }

    /// Appends the recorded fields to `headers`, their values from `head`: the recorded bytes,
    /// wherever they are now.
    pub(crate) fn fields<'a>(&'a self, head: &'a [u8], headers: &mut Vec<Header<'a>>) {
        let mut name_start = self.target_end;
        headers.extend(self.fields.iter().map(|&(name_end, value)| {
            let name = &self.text[name_start..name_end];
            name_start = name_end;
            Header {
                name,
                value: value.of(head),
            }
        }));
    }
}

/// Where a field value is in its head: `len` bytes from offset `at`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Span {
    at: usize,
    len: usize,
}

impl Span {
    /// Where `part`, a subslice of `head`, is in it.
    fn within(head: &[u8], part: &[u8]) -> Span {
        if part.is_empty() {
            // An empty value need not point into the head.
            return Span { at: 0, len: 0 };
        }
        let at = part.as_ptr() as usize - head.as_ptr() as usize;
        debug_assert!(at + part.len() <= head.len());
        Span {
            at,
            len: part.len(),
        }
    }

    fn of(self, head: &[u8]) -> &[u8] {
        &head[self.at..self.at + self.len]
    }
}

/// The origin-form part of an absolute-form target (`http://h/p?q` gives `/p?q`), or `t`
/// itself (`*`).
#[inline(never)]
fn not_origin_form(t: &str) -> &str {
    match t.find("://") {
        Some(i) => {
            let rest = &t[i + 3..];
            match rest.find(['/', '?']) {
                Some(j) if rest.as_bytes()[j] == b'/' => &rest[j..],
                // `http://h?q`: an empty path with a query.
                Some(j) => &rest[j..],
                None => "/",
            }
        }
        None => t,
    }
}

/// `t.split_once('?')`, cheaper: for the short targets of most requests, the setup of a char
/// searcher or of memchr costs more than a plain loop over the bytes.
fn split_query(t: &str) -> Option<(&str, &str)> {
    let b = t.as_bytes();
    let i = if b.len() < 32 {
        b.iter().position(|&c| c == b'?')
    } else {
        memchr::memchr(b'?', b)
    }?;
    // '?' is ASCII, so both sides are on char boundaries.
    Some((&t[..i], &t[i + 1..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    static NO_PEER: Peer = Peer {
        addr: None,
        proxy: None,
        local: None,
    };

    fn req(target: &str) -> Request<'_> {
        Request {
            method: "GET",
            target,
            minor_version: 1,
            headers: &[],
            body: &[],
            peer: &NO_PEER,
        }
    }

    #[test]
    fn path_and_query_of_every_form() {
        let cases = [
            ("/a/b?x=1&y", "/a/b", "x=1&y"),
            ("/", "/", ""),
            ("/p?", "/p", ""),
            ("*", "*", ""),
            ("http://h.example/p/q?z", "/p/q", "z"),
            ("http://h.example", "/", ""),
            ("http://h.example?q=1", "/", "q=1"),
            // 32 bytes and over: the memchr branch of split_query.
            (
                "/a/path/of/more/than/thirty-two/bytes?x=1?y",
                "/a/path/of/more/than/thirty-two/bytes",
                "x=1?y",
            ),
            (
                "/a/path/of/more/than/thirty-two/bytes",
                "/a/path/of/more/than/thirty-two/bytes",
                "",
            ),
        ];
        for (target, path, query) in cases {
            let r = req(target);
            assert_eq!((r.path(), r.query()), (path, query), "{target}");
        }
    }
}
