//! Status codes the engine itself produces, and the status lines of every response.

/// A status code the engine answers with on its own.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Status(pub u16);

impl Status {
    pub const BAD_REQUEST: Status = Status(400);
    pub const REQUEST_TIMEOUT: Status = Status(408);
    pub const CONTENT_TOO_LARGE: Status = Status(413);
    pub const URI_TOO_LONG: Status = Status(414);
    pub const HEADER_FIELDS_TOO_LARGE: Status = Status(431);
    pub const INTERNAL_SERVER_ERROR: Status = Status(500);
    pub const NOT_IMPLEMENTED: Status = Status(501);
    pub const SERVICE_UNAVAILABLE: Status = Status(503);
    pub const VERSION_NOT_SUPPORTED: Status = Status(505);
}

/// Appends `HTTP/1.1 <code> <reason>\r\n`. The reason phrase is optional in HTTP/1.1
/// (RFC 9112 §4): codes without a registered one get an empty phrase.
pub(crate) fn write_status_line(out: &mut Vec<u8>, code: u16) {
    let line: &[u8] = match code {
        101 => b"HTTP/1.1 101 Switching Protocols\r\n",
        200 => b"HTTP/1.1 200 OK\r\n",
        201 => b"HTTP/1.1 201 Created\r\n",
        202 => b"HTTP/1.1 202 Accepted\r\n",
        203 => b"HTTP/1.1 203 Non-Authoritative Information\r\n",
        204 => b"HTTP/1.1 204 No Content\r\n",
        205 => b"HTTP/1.1 205 Reset Content\r\n",
        206 => b"HTTP/1.1 206 Partial Content\r\n",
        300 => b"HTTP/1.1 300 Multiple Choices\r\n",
        301 => b"HTTP/1.1 301 Moved Permanently\r\n",
        302 => b"HTTP/1.1 302 Found\r\n",
        303 => b"HTTP/1.1 303 See Other\r\n",
        304 => b"HTTP/1.1 304 Not Modified\r\n",
        307 => b"HTTP/1.1 307 Temporary Redirect\r\n",
        308 => b"HTTP/1.1 308 Permanent Redirect\r\n",
        400 => b"HTTP/1.1 400 Bad Request\r\n",
        401 => b"HTTP/1.1 401 Unauthorized\r\n",
        402 => b"HTTP/1.1 402 Payment Required\r\n",
        403 => b"HTTP/1.1 403 Forbidden\r\n",
        404 => b"HTTP/1.1 404 Not Found\r\n",
        405 => b"HTTP/1.1 405 Method Not Allowed\r\n",
        406 => b"HTTP/1.1 406 Not Acceptable\r\n",
        407 => b"HTTP/1.1 407 Proxy Authentication Required\r\n",
        408 => b"HTTP/1.1 408 Request Timeout\r\n",
        409 => b"HTTP/1.1 409 Conflict\r\n",
        410 => b"HTTP/1.1 410 Gone\r\n",
        411 => b"HTTP/1.1 411 Length Required\r\n",
        412 => b"HTTP/1.1 412 Precondition Failed\r\n",
        413 => b"HTTP/1.1 413 Content Too Large\r\n",
        414 => b"HTTP/1.1 414 URI Too Long\r\n",
        415 => b"HTTP/1.1 415 Unsupported Media Type\r\n",
        416 => b"HTTP/1.1 416 Range Not Satisfiable\r\n",
        417 => b"HTTP/1.1 417 Expectation Failed\r\n",
        418 => b"HTTP/1.1 418 I'm a teapot\r\n",
        421 => b"HTTP/1.1 421 Misdirected Request\r\n",
        422 => b"HTTP/1.1 422 Unprocessable Content\r\n",
        425 => b"HTTP/1.1 425 Too Early\r\n",
        426 => b"HTTP/1.1 426 Upgrade Required\r\n",
        428 => b"HTTP/1.1 428 Precondition Required\r\n",
        429 => b"HTTP/1.1 429 Too Many Requests\r\n",
        431 => b"HTTP/1.1 431 Request Header Fields Too Large\r\n",
        451 => b"HTTP/1.1 451 Unavailable For Legal Reasons\r\n",
        500 => b"HTTP/1.1 500 Internal Server Error\r\n",
        501 => b"HTTP/1.1 501 Not Implemented\r\n",
        502 => b"HTTP/1.1 502 Bad Gateway\r\n",
        503 => b"HTTP/1.1 503 Service Unavailable\r\n",
        504 => b"HTTP/1.1 504 Gateway Timeout\r\n",
        505 => b"HTTP/1.1 505 HTTP Version Not Supported\r\n",
        511 => b"HTTP/1.1 511 Network Authentication Required\r\n",
        _ => {
            // Response::set_status keeps codes within 200..=599 (or 101): always three digits.
            let mut line = *b"HTTP/1.1 000 \r\n";
            line[9] = b'0' + (code / 100 % 10) as u8;
            line[10] = b'0' + (code / 10 % 10) as u8;
            line[11] = b'0' + (code % 10) as u8;
            out.extend_from_slice(&line);
            return;
        }
    };
    out.extend_from_slice(line);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_and_unknown_codes() {
        let mut out = Vec::new();
        write_status_line(&mut out, 404);
        write_status_line(&mut out, 299);
        assert_eq!(out, b"HTTP/1.1 404 Not Found\r\nHTTP/1.1 299 \r\n");
    }
}
