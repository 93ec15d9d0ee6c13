//! Request smuggling and framing attacks (RFC 9112 §6, §7.1). Each attack is followed by a
//! second request that must never be answered: after a framing error the engine sends one
//! error response and closes, parsing nothing more.

use crate::case;

/// An attack followed by a request that would be answered if the framing were misread.
macro_rules! attack {
    ($name:ident, $head:expr, $status:expr) => {
        #[test]
        fn $name() {
            let mut req: Vec<u8> = $head.to_vec();
            req.extend_from_slice(b"GET /smuggled HTTP/1.1\r\nHost: t\r\n\r\n");
            let rs = $crate::support::check(&req, &[$status], true);
            assert!(
                rs[0].closes(),
                "an engine error response says Connection: close"
            );
            assert_eq!(rs[0].header("content-length"), Some("0"));
        }
    };
}

attack!(
    content_length_with_transfer_encoding,
    b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    400
);
attack!(
    transfer_encoding_with_content_length,
    b"POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\nContent-Length: 4\r\n\r\n0\r\n\r\n",
    400
);
attack!(
    duplicate_differing_content_length,
    b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd",
    400
);
attack!(
    content_length_list_differing,
    b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 3, 4\r\n\r\nabcd",
    400
);
attack!(
    content_length_plus_sign,
    b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: +3\r\n\r\nabc",
    400
);
attack!(
    content_length_negative,
    b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: -3\r\n\r\nabc",
    400
);
attack!(
    content_length_hex,
    b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 0x3\r\n\r\nabc",
    400
);
attack!(
    content_length_inner_space,
    b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 1 0\r\n\r\n0123456789",
    400
);
attack!(
    content_length_overflow,
    b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 18446744073709551617\r\n\r\n",
    400
);
attack!(
    content_length_empty,
    b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length:\r\n\r\n",
    400
);
attack!(
    content_length_trailing_comma,
    b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 3,\r\n\r\nabc",
    400
);
attack!(
    content_length_space_before_colon,
    b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length : 3\r\n\r\nabc",
    400
);
attack!(
    chunked_not_last,
    b"POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked, gzip\r\n\r\n0\r\n\r\n",
    400
);
attack!(
    chunked_twice,
    b"POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked, chunked\r\n\r\n0\r\n\r\n",
    400
);
attack!(
    chunked_twice_in_two_fields,
    b"POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    400
);
attack!(
    unknown_coding_before_chunked,
    b"POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n",
    501
);
attack!(
    unknown_coding_in_separate_field,
    b"POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: x-custom\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    501
);
attack!(
    only_an_unknown_coding,
    b"POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: gzip\r\n\r\n0\r\n\r\n",
    400
);
attack!(
    chunked_with_parameters,
    b"POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked;q=1\r\n\r\n0\r\n\r\n",
    400
);
attack!(
    transfer_encoding_with_control_char,
    b"POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: \x0bchunked\r\n\r\n0\r\n\r\n",
    400
);
attack!(
    transfer_encoding_empty_element,
    b"POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: , chunked\r\n\r\n0\r\n\r\n",
    400
);

/// A chunked request whose body is `$body`.
macro_rules! bad_chunks {
    ($name:ident, $body:expr, $status:expr) => {
        attack!(
            $name,
            [
                &b"POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"[..],
                $body
            ]
            .concat(),
            $status
        );
    };
}

bad_chunks!(chunk_size_not_hex, b"zz\r\nabc\r\n0\r\n\r\n", 400);
bad_chunks!(chunk_size_with_0x, b"0x3\r\nabc\r\n0\r\n\r\n", 400);
bad_chunks!(chunk_size_negative, b"-3\r\nabc\r\n0\r\n\r\n", 400);
bad_chunks!(chunk_size_plus, b"+3\r\nabc\r\n0\r\n\r\n", 400);
bad_chunks!(
    chunk_size_overflow,
    b"10000000000000003\r\nabc\r\n0\r\n\r\n",
    400
);
bad_chunks!(chunk_size_leading_space, b" 3\r\nabc\r\n0\r\n\r\n", 400);
bad_chunks!(chunk_size_trailing_space, b"3 \r\nabc\r\n0\r\n\r\n", 400);
bad_chunks!(chunk_size_missing, b"\r\nabc\r\n0\r\n\r\n", 400);
bad_chunks!(chunk_size_bare_lf, b"3\nabc\r\n0\r\n\r\n", 400);
bad_chunks!(chunk_size_bare_cr, b"3\rabc\r\n0\r\n\r\n", 400);
bad_chunks!(chunk_data_missing_crlf, b"3\r\nabc0\r\n\r\n", 400);
bad_chunks!(chunk_data_longer_than_size, b"3\r\nabcd\r\n0\r\n\r\n", 400);
bad_chunks!(chunk_data_bare_lf, b"3\r\nabc\n0\r\n\r\n", 400);
bad_chunks!(
    chunk_extension_bad_char,
    b"3;a=b\x01\r\nabc\r\n0\r\n\r\n",
    400
);
bad_chunks!(
    chunk_extension_unterminated_quote,
    b"3;a=\"b\r\nabc\r\n0\r\n\r\n",
    400
);
bad_chunks!(chunk_extension_empty_name, b"3;=b\r\nabc\r\n0\r\n\r\n", 400);
bad_chunks!(last_chunk_bare_lf, b"0\r\n\n", 400);
bad_chunks!(trailer_bare_lf, b"0\r\nX: 1\n\r\n", 400);
bad_chunks!(trailer_obs_fold, b"0\r\nX: 1\r\n  more\r\n\r\n", 400);
bad_chunks!(trailer_space_before_colon, b"0\r\nX : 1\r\n\r\n", 400);

// RFC 9112 §6.1: Transfer-Encoding in HTTP/1.0 is faulty framing: answer, then close, even
// when the client asked to keep the connection.
case!(
    transfer_encoding_in_http10_closes,
    b"POST / HTTP/1.0\r\nConnection: keep-alive\r\nTransfer-Encoding: chunked\r\n\r\n1\r\nx\r\n0\r\n\r\n",
    [200],
    closed
);

// A request after an engine error is never answered, even a valid one in the same packet.
#[test]
fn nothing_is_parsed_after_an_error() {
    let rs = crate::support::check(
        b"GET /\x7f HTTP/1.1\r\nHost: t\r\n\r\nGET /ok HTTP/1.1\r\nHost: t\r\n\r\n",
        &[400],
        true,
    );
    assert_eq!(rs.len(), 1);
}
