//! Malformed request heads: Host rules, request-target bytes and forms, versions, field syntax
//! and line endings (RFC 9112 §2-§5).

use crate::case;

case!(
    missing_host_in_http11,
    b"GET / HTTP/1.1\r\n\r\n",
    [400],
    closed
);
case!(
    duplicate_host,
    b"GET / HTTP/1.1\r\nHost: a\r\nHost: a\r\n\r\n",
    [400],
    closed
);
case!(
    duplicate_host_in_http10,
    b"GET / HTTP/1.0\r\nHost: a\r\nHost: b\r\n\r\n",
    [400],
    closed
);
case!(
    host_with_space,
    b"GET / HTTP/1.1\r\nHost: a b\r\n\r\n",
    [400],
    closed
);
case!(
    host_with_slash,
    b"GET / HTTP/1.1\r\nHost: a/b\r\n\r\n",
    [400],
    closed
);
case!(
    http10_without_host_is_fine,
    b"GET / HTTP/1.0\r\n\r\n",
    [200],
    closed
);
case!(
    target_with_non_ascii,
    b"GET /caf\xc3\xa9 HTTP/1.1\r\nHost: t\r\n\r\n",
    [400],
    closed
);
case!(
    target_with_nul,
    b"GET /a\x00b HTTP/1.1\r\nHost: t\r\n\r\n",
    [400],
    closed
);
case!(
    target_with_control,
    b"GET /a\x01b HTTP/1.1\r\nHost: t\r\n\r\n",
    [400],
    closed
);
case!(
    target_with_del,
    b"GET /a\x7fb HTTP/1.1\r\nHost: t\r\n\r\n",
    [400],
    closed
);
case!(
    target_with_tab,
    b"GET /a\tb HTTP/1.1\r\nHost: t\r\n\r\n",
    [400],
    closed
);
case!(
    obs_fold,
    b"GET / HTTP/1.1\r\nHost: t\r\nX-A: 1\r\n 2\r\n\r\n",
    [400],
    closed
);
case!(
    obs_fold_tab,
    b"GET / HTTP/1.1\r\nHost: t\r\nX-A: 1\r\n\t2\r\n\r\n",
    [400],
    closed
);
case!(
    space_before_colon,
    b"GET / HTTP/1.1\r\nHost: t\r\nX-A : 1\r\n\r\n",
    [400],
    closed
);
case!(
    space_before_first_field,
    b"GET / HTTP/1.1\r\n Host: t\r\n\r\n",
    [400],
    closed
);
case!(
    version_2_is_505,
    b"GET / HTTP/2.0\r\nHost: t\r\n\r\n",
    [505],
    closed
);
case!(
    version_0_9_is_505,
    b"GET / HTTP/0.9\r\nHost: t\r\n\r\n",
    [505],
    closed
);
case!(
    version_without_minor,
    b"GET / HTTP/1\r\nHost: t\r\n\r\n",
    [400],
    closed
);
case!(
    version_lowercase,
    b"GET / http/1.1\r\nHost: t\r\n\r\n",
    [400],
    closed
);
case!(
    version_two_digit_minor,
    b"GET / HTTP/1.10\r\nHost: t\r\n\r\n",
    [400],
    closed
);
case!(version_missing, b"GET /\r\nHost: t\r\n\r\n", [400], closed);
case!(
    token_after_version,
    b"GET / HTTP/1.1 x\r\nHost: t\r\n\r\n",
    [400],
    closed
);
case!(
    asterisk_with_get,
    b"GET * HTTP/1.1\r\nHost: t\r\n\r\n",
    [400],
    closed
);
case!(
    authority_form_with_get,
    b"GET t.example:80 HTTP/1.1\r\nHost: t\r\n\r\n",
    [400],
    closed
);
case!(
    connect_is_not_implemented,
    b"CONNECT t.example:443 HTTP/1.1\r\nHost: t.example:443\r\n\r\n",
    [501],
    closed
);
case!(
    method_with_bad_char,
    b"GE(T / HTTP/1.1\r\nHost: t\r\n\r\n",
    [400],
    closed
);
case!(
    leading_space_before_method,
    b" GET / HTTP/1.1\r\nHost: t\r\n\r\n",
    [400],
    closed
);
case!(
    double_space_in_request_line,
    b"GET  / HTTP/1.1\r\nHost: t\r\n\r\n",
    [400],
    closed
);
case!(
    empty_header_name,
    b"GET / HTTP/1.1\r\nHost: t\r\n: x\r\n\r\n",
    [400],
    closed
);
case!(
    header_name_with_bad_char,
    b"GET / HTTP/1.1\r\nHost: t\r\nX(A): 1\r\n\r\n",
    [400],
    closed
);
case!(
    header_without_colon,
    b"GET / HTTP/1.1\r\nHost: t\r\nX-A\r\n\r\n",
    [400],
    closed
);
case!(
    nul_in_header_value,
    b"GET / HTTP/1.1\r\nHost: t\r\nX-A: a\x00b\r\n\r\n",
    [400],
    closed
);
case!(
    bare_lf_line_endings,
    b"GET / HTTP/1.1\nHost: t\n\n",
    [400],
    closed
);
case!(
    bare_lf_ending_the_head,
    b"GET / HTTP/1.1\r\nHost: t\r\n\n",
    [400],
    closed
);
case!(
    bare_cr_in_header,
    b"GET / HTTP/1.1\r\nHost: t\rX: 1\r\n\r\n",
    [400],
    closed
);
case!(
    leading_bare_lf,
    b"\nGET / HTTP/1.1\r\nHost: t\r\n\r\n",
    [400],
    closed
);
case!(
    binary_garbage,
    b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n",
    [400],
    closed
);
