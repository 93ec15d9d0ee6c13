//! The option setters of the C API against src/config.rs: every field of ProcessConfig and
//! HttpConfig has a setter in include/prefork.h, and each setter's "Default:" line states the
//! default that Config::default() really has.

use std::collections::BTreeMap;
use std::time::Duration;

use prefork::{Config, Network};

mod common;
use common::{header_defaults as documented_defaults, read};

/// An optional name as the header writes it: unset is "".
fn quoted(name: Option<&str>) -> String {
    format!("\"{}\"", name.unwrap_or_default())
}

fn ms(d: Duration) -> String {
    d.as_millis().to_string()
}

#[test]
fn documented_defaults_are_the_real_ones() {
    let c = Config::default();
    let (p, h) = (&c.process, &c.http);
    let network = match p.network {
        Network::Tcp4 => "\"tcp4\"",
        Network::Tcp6 => "\"tcp6\"",
        Network::Tcp => "\"tcp\"",
    };
    let allow: Vec<String> = h.proxy_allow.iter().map(ToString::to_string).collect();
    let allow = allow.join(",");
    let threshold = p
        .recover_threshold
        .map_or("-1".to_string(), |n| n.to_string());
    let expected: BTreeMap<String, String> = [
        ("children", p.children.to_string()),
        ("reuseport", p.reuseport.to_string()),
        ("network", network.to_string()),
        ("backlog", p.backlog.to_string()),
        ("recover_threshold", threshold),
        ("recover_interval_ms", ms(p.recover_interval)),
        ("recover_window_ms", ms(p.recover_window)),
        ("recover_backoff_max_ms", ms(p.recover_backoff_max)),
        ("recover_min_uptime_ms", ms(p.recover_min_uptime)),
        ("recover_every_exit", p.recover_every_exit.to_string()),
        ("grace_period_ms", ms(p.grace_period)),
        ("shutdown_delay_ms", ms(p.shutdown_delay)),
        ("startup_timeout_ms", ms(p.startup_timeout)),
        ("handle_signals", p.handle_signals.to_string()),
        ("user", quoted(p.user.as_deref())),
        ("group", quoted(p.group.as_deref())),
        ("cpu_affinity", p.cpu_affinity.to_string()),
        ("child_timeout_ms", ms(p.child_timeout)),
        ("max_requests", p.max_requests.to_string()),
        ("max_requests_jitter", p.max_requests_jitter.to_string()),
        ("max_child_age_ms", ms(p.max_child_age)),
        ("max_request_line", h.max_request_line.to_string()),
        ("max_head_size", h.max_head_size.to_string()),
        ("max_headers", h.max_headers.to_string()),
        ("max_body_size", h.max_body_size.to_string()),
        ("header_timeout_ms", ms(h.header_timeout)),
        ("body_timeout_ms", ms(h.body_timeout)),
        ("idle_timeout_ms", ms(h.idle_timeout)),
        ("write_timeout_ms", ms(h.write_timeout)),
        ("max_connections", h.max_connections.to_string()),
        ("handler_threads", h.handler_threads.to_string()),
        ("max_output_buffer", h.max_output_buffer.to_string()),
        ("max_chunk_ext_size", h.max_chunk_ext_size.to_string()),
        ("max_trailer_size", h.max_trailer_size.to_string()),
        ("max_bytes_per_turn", h.max_bytes_per_turn.to_string()),
        ("min_body_rate", h.min_body_rate.to_string()),
        ("min_write_rate", h.min_write_rate.to_string()),
        ("min_rate_window_ms", ms(h.min_rate_window)),
        ("proxy_protocol", h.proxy_protocol.to_string()),
        ("proxy_allow", format!("\"{allow}\"")),
        ("proxy_timeout_ms", ms(h.proxy_timeout)),
    ]
    .into_iter()
    .map(|(k, v)| (format!("prefork_set_{k}"), v))
    .collect();
    assert_eq!(documented_defaults(), expected);
}

/// Field names of `pub struct NAME { ... }` in src/config.rs.
fn fields(source: &str, name: &str) -> Vec<String> {
    let start = source.find(&format!("pub struct {name} {{")).expect(name);
    let body = &source[start..source[start..].find("\n}").unwrap() + start];
    body.lines()
        .filter_map(|l| l.trim().strip_prefix("pub "))
        .filter_map(|l| l.split_once(':').map(|(f, _)| f.trim().to_string()))
        .collect()
}

#[test]
fn every_option_has_a_setter() {
    let config = read("src/config.rs");
    let header = read("include/prefork.h");
    let mut missing = Vec::new();
    for field in fields(&config, "ProcessConfig")
        .into_iter()
        .chain(fields(&config, "HttpConfig"))
    {
        let plain = format!("prefork_set_{field}(");
        let millis = format!("prefork_set_{field}_ms(");
        if !header.contains(&plain) && !header.contains(&millis) {
            missing.push(field);
        }
    }
    assert!(
        missing.is_empty(),
        "options without a C setter in src/ffi/options.rs: {missing:?}"
    );
}
