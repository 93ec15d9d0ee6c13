//! The Go binding's options (bindings/go) against the "Default:" lines of include/prefork.h,
//! as tests/ffi_options.rs checks those lines against src/config.rs; and the README's option
//! table against the same lines. It reads the Go source as text, so it needs no Go toolchain.
//!
//! The convention it checks in bindings/go/prefork.go:
//! - Every field of `Prefork` that `configure` passes to a `prefork_set_*` setter is an option
//!   field, and its doc comment says its default once, in Go terms: `Default: 5s.`,
//!   `Default: 16 KiB.`, `Default: 100.`, `Default: false.`, `Default: "tcp4".` (whatever
//!   follows the value, such as a parenthesis, is prose). It must equal the header's default,
//!   converted to the setter's unit (milliseconds for `_ms` setters, bytes for sizes).
//! - A zero field means the default: `configure` skips the setter, so the library's default
//!   applies, or passes the default itself. A field whose zero is something else must say
//!   "Zero is not the default" (or "Empty ...") in its doc, and then `New` must set it to the
//!   default. A doc that says "Zero means the default" is held to it.
//! - The values `New` fills in are the header's defaults.
//! - Every header option is a field, except those in [`NOT_EXPOSED`].
//!
//! What a zero field does is found by walking the statement of `configure` that reads the
//! field, with the field at its zero value: `if` conditions are evaluated, a helper such as
//! `count` or `duration` that receives the field counts as skipping it when its `switch` opens
//! with an empty case for zero, and otherwise the setter's argument is evaluated. A shape this
//! walk does not know fails the test with the statement it could not read.

use std::collections::{BTreeMap, BTreeSet};
use std::ops::Range;
use std::path::Path;

mod common;
use common::{header_defaults, read};

/// Header options that the Go binding does not offer as a `Prefork` field, and why.
const NOT_EXPOSED: &[(&str, &str)] = &[(
    "prefork_set_handle_signals",
    // install() always sets it to false: the binding relays SIGTERM and SIGINT through
    // os/signal (signals.go), so the Go runtime keeps its own signal handling.
    "owned by the binding, which always sets false and relays signals through os/signal",
)];

// ---- Reading Go (and C) source as text ----------------------------------------------------

/// A source file twice, with equal byte offsets: `text` has its comments blanked, `mask`
/// also the insides of its string and rune literals, so brackets and separators in `mask`
/// are code.
struct Source {
    text: String,
    mask: String,
}

impl Source {
    fn new(src: &str) -> Source {
        Source {
            text: blank(src, false),
            mask: blank(src, true),
        }
    }

    fn code(&self) -> Code<'_> {
        Code {
            text: &self.text,
            mask: &self.mask,
        }
    }
}

#[derive(Clone, Copy)]
struct Code<'a> {
    text: &'a str,
    mask: &'a str,
}

impl<'a> Code<'a> {
    fn at(&self, r: Range<usize>) -> Code<'a> {
        Code {
            text: &self.text[r.clone()],
            mask: &self.mask[r],
        }
    }

    fn trim(&self) -> Code<'a> {
        let start = self.text.len() - self.text.trim_start().len();
        let end = self.text.trim_end().len().max(start);
        self.at(start..end)
    }

    /// The text with runs of whitespace as one space, for messages and comparisons.
    fn flat(&self) -> String {
        self.text.split_whitespace().collect::<Vec<_>>().join(" ")
    }
}

/// Blanks comments (and, with `strings`, the insides of literals) byte by byte, keeping
/// newlines, so offsets stay those of `src`.
fn blank(src: &str, strings: bool) -> String {
    let b = src.as_bytes();
    let mut out = b.to_vec();
    let mut clear = |from: usize, to: usize| {
        for c in &mut out[from..to] {
            if *c != b'\n' {
                *c = b' ';
            }
        }
    };
    let mut i = 0;
    while i < b.len() {
        match (b[i], b.get(i + 1)) {
            (b'/', Some(b'/')) => {
                let end = b[i..]
                    .iter()
                    .position(|&c| c == b'\n')
                    .map_or(b.len(), |n| i + n);
                clear(i, end);
                i = end;
            }
            (b'/', Some(b'*')) => {
                let end = src[i + 2..].find("*/").map_or(b.len(), |n| i + 2 + n + 2);
                clear(i, end);
                i = end;
            }
            (q @ (b'"' | b'\'' | b'`'), _) => {
                let mut j = i + 1;
                while j < b.len() && b[j] != q {
                    if b[j] == b'\\' && q != b'`' {
                        j += 1;
                    }
                    j += 1;
                }
                let j = j.min(b.len());
                if strings {
                    clear(i + 1, j);
                }
                i = j + 1;
            }
            _ => i += 1,
        }
    }
    String::from_utf8(out).expect("blanking keeps UTF-8")
}

/// The offset of the bracket closing the one at `open`.
fn matching(mask: &str, open: usize) -> Option<usize> {
    let mut depth = 0usize;
    for (i, c) in mask.bytes().enumerate().skip(open) {
        match c {
            b'(' | b'[' | b'{' => depth += 1,
            b')' | b']' | b'}' => {
                depth = depth.checked_sub(1)?;
                if depth == 0 {
                    return Some(i);
                }
            }
            _ => {}
        }
    }
    None
}

/// Splits at any of `seps` outside brackets; empty pieces are dropped.
fn split_top<'a>(c: Code<'a>, seps: &[&str]) -> Vec<Code<'a>> {
    let m = c.mask.as_bytes();
    let (mut depth, mut start, mut i) = (0i32, 0, 0);
    let mut out = Vec::new();
    while i < m.len() {
        match m[i] {
            b'(' | b'[' | b'{' => depth += 1,
            b')' | b']' | b'}' => depth -= 1,
            _ if depth == 0 => {
                if let Some(s) = seps.iter().find(|s| c.mask[i..].starts_with(**s)) {
                    out.push(c.at(start..i).trim());
                    i += s.len();
                    start = i;
                    continue;
                }
            }
            _ => {}
        }
        i += 1;
    }
    out.push(c.at(start..m.len()).trim());
    out.retain(|p| !p.text.is_empty());
    out
}

/// The inside of the block that opens at the first `{` after `head`, as a range of `c`.
fn find_block(c: Code, head: &str) -> Result<Range<usize>, String> {
    let at = c
        .mask
        .find(head)
        .ok_or_else(|| format!("`{head}` not found"))?;
    let open = at
        + c.mask[at..]
            .find('{')
            .ok_or_else(|| format!("no block after `{head}`"))?;
    let close = matching(c.mask, open).ok_or_else(|| format!("unclosed block of `{head}`"))?;
    Ok(open + 1..close)
}

fn is_ident(c: u8) -> bool {
    c.is_ascii_alphanumeric() || c == b'_'
}

/// The identifiers that follow `prefix` where `prefix` starts a name (not `x.p.` or `gop`).
fn idents_after(text: &str, prefix: &str) -> BTreeSet<String> {
    let b = text.as_bytes();
    let mut out = BTreeSet::new();
    let mut from = 0;
    while let Some(k) = text[from..].find(prefix) {
        let at = from + k;
        from = at + prefix.len();
        if at > 0 && (is_ident(b[at - 1]) || b[at - 1] == b'.') {
            continue;
        }
        let n = b[from..].iter().take_while(|c| is_ident(**c)).count();
        if n > 0 {
            out.insert(text[from..from + n].to_string());
        }
    }
    out
}

/// One field of the Go `Prefork` struct.
struct Field {
    name: String,
    ty: String,
    doc: String,
}

/// The exported fields of a struct body (with its comments), each with its doc comment.
fn struct_fields(body: &str) -> Vec<Field> {
    let mut out = Vec::new();
    let mut doc = String::new();
    for line in body.lines().map(str::trim) {
        if line.is_empty() {
            doc.clear();
        } else if let Some(text) = line.strip_prefix("//") {
            doc.push_str(text.trim());
            doc.push(' ');
        } else {
            let (name, ty) = line.split_once(char::is_whitespace).unwrap_or((line, ""));
            if name.starts_with(|c: char| c.is_ascii_uppercase()) {
                out.push(Field {
                    name: name.to_string(),
                    ty: ty.trim().to_string(),
                    doc: doc.trim_end().to_string(),
                });
            }
            doc.clear();
        }
    }
    out
}

/// `const NAME = VALUE` lines (also inside `const ( ... )` blocks), from comment-free text.
fn consts(text: &str, out: &mut BTreeMap<String, String>) {
    let mut in_block = false;
    for line in text.lines().map(str::trim) {
        if line == "const (" {
            in_block = true;
        } else if in_block && line == ")" {
            in_block = false;
        } else if let Some(decl) = line.strip_prefix("const ").or(in_block.then_some(line))
            && let Some((name, value)) = decl.split_once(" = ")
        {
            let name = name.split_whitespace().next().unwrap_or("");
            out.insert(name.to_string(), value.trim().to_string());
        }
    }
}

// ---- Values ---------------------------------------------------------------------------------

/// A value a Go expression evaluates to; durations are integers of nanoseconds.
#[derive(Clone, Debug, PartialEq)]
enum Val {
    Int(i128),
    Bool(bool),
    Str(String),
}

/// What the Go code has in hand while walking one statement: the field and its value.
struct Env<'a> {
    field: &'a str,
    value: Val,
    consts: &'a BTreeMap<String, String>,
}

/// Type conversions that keep the value (cgo's `C.*` types are handled apart).
const CONVERSIONS: &[&str] = &[
    "int", "int32", "int64", "uint", "uint32", "uint64", "uintptr", "bool", "string",
];

fn eval(e: Code, env: &Env) -> Result<Val, String> {
    let e = e.trim();
    let t = e.text;
    let n = t.len();
    if t.starts_with('(') && matching(e.mask, 0) == Some(n - 1) {
        return eval(e.at(1..n - 1), env);
    }
    if t == format!("p.{}", env.field) {
        return Ok(env.value.clone());
    }
    match t {
        "true" => return Ok(Val::Bool(true)),
        "false" => return Ok(Val::Bool(false)),
        _ => {}
    }
    if n >= 2 && t.starts_with('"') && t.ends_with('"') && !t[1..n - 1].contains(['"', '\\']) {
        return Ok(Val::Str(t[1..n - 1].to_string()));
    }
    if let Ok(i) = t.parse::<i128>() {
        return Ok(Val::Int(i));
    }
    if let Some(open) = e.mask.find('(')
        && matching(e.mask, open) == Some(n - 1)
    {
        let name = t[..open].trim();
        let args = split_top(e.at(open + 1..n - 1), &[","]);
        let ints = || -> Result<Vec<i128>, String> {
            args.iter()
                .map(|a| match eval(*a, env)? {
                    Val::Int(i) => Ok(i),
                    other => Err(format!("`{}` is {other:?}, not a number", a.flat())),
                })
                .collect()
        };
        match name {
            "max" | "min" if !args.is_empty() => {
                let v = ints()?;
                let pick = if name == "max" {
                    v.iter().max()
                } else {
                    v.iter().min()
                };
                return Ok(Val::Int(*pick.unwrap()));
            }
            _ if args.len() == 1 && (name.starts_with("C.") || CONVERSIONS.contains(&name)) => {
                return eval(args[0], env);
            }
            _ => {}
        }
    }
    if let Some(value) = env.consts.get(t) {
        let s = Source::new(value);
        return eval(s.code(), env);
    }
    Err(format!("cannot evaluate `{}`", e.flat()))
}

fn truth(c: Code, env: &Env) -> Result<bool, String> {
    let c = c.trim();
    let ors = split_top(c, &["||"]);
    if ors.len() > 1 {
        for o in ors {
            if truth(o, env)? {
                return Ok(true);
            }
        }
        return Ok(false);
    }
    let ands = split_top(c, &["&&"]);
    if ands.len() > 1 {
        for a in ands {
            if !truth(a, env)? {
                return Ok(false);
            }
        }
        return Ok(true);
    }
    if c.text.starts_with('!') && !c.text.starts_with("!=") {
        return Ok(!truth(c.at(1..c.text.len()), env)?);
    }
    for op in ["==", "!=", "<=", ">=", "<", ">"] {
        let sides = split_top(c, &[op]);
        if sides.len() == 2 {
            let (a, b) = (eval(sides[0], env)?, eval(sides[1], env)?);
            return match (op, &a, &b) {
                ("==", _, _) => Ok(a == b),
                ("!=", _, _) => Ok(a != b),
                (_, Val::Int(x), Val::Int(y)) => Ok(match op {
                    "<=" => x <= y,
                    ">=" => x >= y,
                    "<" => x < y,
                    _ => x > y,
                }),
                _ => Err(format!("cannot order {a:?} and {b:?} in `{}`", c.flat())),
            };
        }
    }
    match eval(c, env)? {
        Val::Bool(b) => Ok(b),
        other => Err(format!("`{}` is {other:?}, not a condition", c.flat())),
    }
}

/// A value written in a Go doc comment: `"tcp4"`, `false`, `-1`, `16 KiB`, `5s`, `1m30s`.
#[derive(Debug, PartialEq)]
enum DocVal {
    Plain(Val),
    /// Nanoseconds.
    Duration(i128),
}

/// Reads the value at the start of `s`; returns it and the text it was read from.
fn doc_value(s: &str) -> Result<(DocVal, &str), String> {
    let bad = || {
        format!(
            "`Default: {}` does not start with a value (a number, a duration such as 5s, a \
             size such as 16 KiB, true, false or a quoted string)",
            s.chars().take(24).collect::<String>()
        )
    };
    if let Some(rest) = s.strip_prefix('"') {
        let end = rest.find('"').ok_or_else(bad)?;
        return Ok((
            DocVal::Plain(Val::Str(rest[..end].to_string())),
            &s[..end + 2],
        ));
    }
    let word_end = |n: usize| !s[n..].starts_with(|c: char| c.is_alphanumeric() || c == '_');
    for (word, b) in [("true", true), ("false", false)] {
        if s.starts_with(word) && word_end(word.len()) {
            return Ok((DocVal::Plain(Val::Bool(b)), word));
        }
    }
    let digits = |from: usize| s[from..].bytes().take_while(u8::is_ascii_digit).count();
    let neg = usize::from(s.starts_with('-'));
    let n = digits(neg);
    if n == 0 {
        return Err(bad());
    }
    let number: i128 = s[..neg + n].parse().map_err(|_| bad())?;
    let mut at = neg + n;
    const UNITS: [(&str, i128); 7] = [
        ("ms", 1_000_000),
        ("us", 1_000),
        ("µs", 1_000),
        ("ns", 1),
        ("h", 3_600_000_000_000),
        ("m", 60_000_000_000),
        ("s", 1_000_000_000),
    ];
    let unit = |at: usize| UNITS.iter().find(|(u, _)| s[at..].starts_with(u)).copied();
    if let Some((u, scale)) = unit(at) {
        // A Go duration: one or more number-unit pairs.
        let mut total = number * scale;
        at += u.len();
        loop {
            let k = digits(at);
            if k == 0 {
                break;
            }
            let part: i128 = s[at..at + k].parse().map_err(|_| bad())?;
            let (u, scale) = unit(at + k).ok_or_else(bad)?;
            total += if neg == 1 { -part } else { part } * scale;
            at += k + u.len();
        }
        if !word_end(at) {
            return Err(bad());
        }
        return Ok((DocVal::Duration(total), &s[..at]));
    }
    for (suffix, scale) in [(" KiB", 1 << 10), (" MiB", 1 << 20), (" GiB", 1 << 30)] {
        if s[at..].starts_with(suffix) && word_end(at + suffix.len()) {
            let end = at + suffix.len();
            return Ok((DocVal::Plain(Val::Int(number * scale)), &s[..end]));
        }
    }
    if !word_end(at) {
        return Err(bad());
    }
    Ok((DocVal::Plain(Val::Int(number)), &s[..at]))
}

/// A value as the header writes it for `setter`: milliseconds for an `_ms` setter.
fn header_form(v: &DocVal, setter: &str) -> Result<String, String> {
    let ms = setter.ends_with("_ms");
    match v {
        DocVal::Duration(ns) if ms => {
            if ns % 1_000_000 == 0 {
                Ok((ns / 1_000_000).to_string())
            } else {
                Err(format!("{ns} ns is not a whole number of milliseconds"))
            }
        }
        DocVal::Duration(_) => Err(format!("a duration, but {setter} takes no duration")),
        DocVal::Plain(Val::Int(0)) => Ok("0".to_string()),
        DocVal::Plain(Val::Int(_)) if ms => Err(format!(
            "{setter} takes a duration: write it with a unit (5s, 500ms)"
        )),
        DocVal::Plain(v) => Ok(plain(v)),
    }
}

/// A value the Go code passes to a setter, as the header writes it.
fn plain(v: &Val) -> String {
    match v {
        Val::Int(i) => i.to_string(),
        Val::Bool(b) => b.to_string(),
        Val::Str(s) => format!("\"{s}\""),
    }
}

fn zero_of(ty: &str) -> Option<Val> {
    match ty {
        "string" => Some(Val::Str(String::new())),
        "bool" => Some(Val::Bool(false)),
        "time.Duration" | "int" | "int32" | "int64" | "uint" | "uint32" | "uint64" => {
            Some(Val::Int(0))
        }
        _ => None,
    }
}

// ---- What configure does with a zero field --------------------------------------------------

#[derive(Debug, PartialEq)]
enum Zero {
    /// The setter is not called: the library's default applies.
    Skip,
    /// The setter is called with this value.
    Pass(Val),
}

/// The parameter names of a helper `name := func(a T, b U, ...) { ... }`.
fn helper_params(helper: Code) -> Result<Vec<String>, String> {
    let open = helper.mask.find("func(").ok_or("no func(")? + 4;
    let close = matching(helper.mask, open).ok_or("unclosed parameters")?;
    Ok(split_top(helper.at(open + 1..close), &[","])
        .iter()
        .map(|p| p.text.split_whitespace().next().unwrap_or("").to_string())
        .collect())
}

/// Whether the helper's first `switch` case is an empty one that a zero `param` takes.
fn helper_skips_zero(helper: Code, param: &str) -> bool {
    let Some(at) = helper.mask.find("switch {") else {
        return false;
    };
    let after = helper.at(at + "switch {".len()..helper.text.len()).trim();
    let Some(cond) = after.text.strip_prefix("case ") else {
        return false;
    };
    let Some(colon) = after.mask.find(':') else {
        return false;
    };
    let body = after.text[colon + 1..].trim_start();
    let empty = ["case ", "default:", "}"]
        .iter()
        .any(|k| body.starts_with(k));
    let zero_case = cond[..colon - "case ".len()]
        .split("||")
        .map(|c| c.split_whitespace().collect::<Vec<_>>().join(" "))
        .any(|c| c == format!("{param} == 0") || c == format!("{param} == \"\""));
    empty && zero_case
}

/// What the statement `stmt` of configure does when `env.field` holds `env.value`.
fn classify(stmt: Code, env: &Env, helpers: &BTreeMap<String, Code>) -> Result<Zero, String> {
    let s = stmt.trim();
    let n = s.text.len();
    if s.text.starts_with("if ") {
        let mut depth = 0;
        let open = s
            .mask
            .bytes()
            .enumerate()
            .skip(3)
            .find(|(_, c)| {
                match c {
                    b'(' | b'[' => depth += 1,
                    b')' | b']' => depth -= 1,
                    _ => {}
                }
                *c == b'{' && depth == 0
            })
            .map(|(i, _)| i)
            .ok_or("an if without a block")?;
        let close = matching(s.mask, open).ok_or("an unclosed if")?;
        let after = s.at(close + 1..n).trim();
        let branch = if truth(s.at(3..open), env)? {
            Some(s.at(open + 1..close))
        } else if after.text.is_empty() {
            None
        } else if let Some(rest) = after.text.strip_prefix("else") {
            let e = after
                .at(after.text.len() - rest.len()..after.text.len())
                .trim();
            if e.text.starts_with("if ") {
                return classify(e, env, helpers);
            }
            if !e.text.starts_with('{') {
                return Err(format!("cannot read the else of `{}`", s.flat()));
            }
            let end = matching(e.mask, 0).ok_or("an unclosed else")?;
            Some(e.at(1..end))
        } else {
            return Err(format!("cannot read `{}`", s.flat()));
        };
        let Some(block) = branch else {
            return Ok(Zero::Skip);
        };
        let calls: Vec<_> = split_top(block, &["\n", ";"])
            .into_iter()
            .filter(|st| st.text.contains("C.prefork_set_"))
            .collect();
        return match calls.as_slice() {
            [] => Ok(Zero::Skip),
            [one] => classify(*one, env, helpers),
            _ => Err(format!(
                "several setter calls in one branch of `{}`",
                s.flat()
            )),
        };
    }
    let name_len = s.text.bytes().take_while(|c| is_ident(*c)).count();
    let name = &s.text[..name_len];
    if let Some(helper) = helpers.get(name)
        && s.text[name_len..].starts_with('(')
    {
        let close = matching(s.mask, name_len).ok_or("an unclosed call")?;
        let args = split_top(s.at(name_len + 1..close), &[","]);
        let field = format!("p.{}", env.field);
        if let Some(k) = args.iter().position(|a| a.text == field) {
            let params = helper_params(*helper)?;
            let param = params.get(k).ok_or("more arguments than parameters")?;
            return if helper_skips_zero(*helper, param) {
                Ok(Zero::Skip)
            } else {
                Err(format!(
                    "configure hands {field} to its helper {name}, whose switch does not \
                     open with an empty case for a zero {param}"
                ))
            };
        }
    }
    // The setter itself, called with an expression of the field.
    let call = s.mask.find("C.prefork_set_").ok_or("no setter call")?;
    let open = call
        + s.mask[call..]
            .find('(')
            .ok_or("a setter without arguments")?;
    let close = matching(s.mask, open).ok_or("an unclosed setter call")?;
    let args = split_top(s.at(open + 1..close), &[","]);
    let arg = args.get(1).ok_or("a setter call without a value")?;
    Ok(Zero::Pass(eval(*arg, env)?))
}

// ---- The check ------------------------------------------------------------------------------

/// Every disagreement between the Go package in `files` (name, source) and `header`
/// (setter -> default), one message each.
fn check_go(header: &BTreeMap<String, String>, files: &[(&str, &str)]) -> Vec<String> {
    let mut problems = Vec::new();
    let mut values = BTreeMap::new();
    for (name, src) in files {
        if name.ends_with(".go") {
            consts(&blank(src, false), &mut values);
        }
    }
    let Some((_, main)) = files.iter().find(|(n, _)| *n == "prefork.go") else {
        return vec!["bindings/go/prefork.go not found".to_string()];
    };
    let source = Source::new(main);
    let code = source.code();
    let found = find_block(code, "type Prefork struct").and_then(|s| {
        let c = find_block(code, "func (p *Prefork) configure(")?;
        Ok((s, c, find_block(code, "func New(")?))
    });
    let (fields_at, configure_at, new_at) = match found {
        Ok(f) => f,
        Err(e) => return vec![format!("bindings/go/prefork.go: {e}")],
    };
    let fields = struct_fields(&main[fields_at]);
    let field = |name: &str| fields.iter().find(|f| f.name == name);

    // configure: its helpers, and for each field the one statement that passes it on.
    let body = code.at(configure_at.clone());
    let mut helpers = BTreeMap::new();
    let mut options: BTreeMap<String, (String, Code)> = BTreeMap::new(); // field -> setter
    for st in split_top(body, &["\n", ";"]) {
        if let Some((name, rest)) = st.text.split_once(" := ")
            && rest.starts_with("func(")
            && name.bytes().all(is_ident)
        {
            helpers.insert(name.to_string(), st);
            continue;
        }
        let setters = idents_after(st.text, "C.prefork_set_");
        if setters.is_empty() {
            continue;
        }
        let read: BTreeSet<_> = idents_after(st.text, "p.")
            .into_iter()
            .filter(|f| f.starts_with(|c: char| c.is_ascii_uppercase()))
            .collect();
        let (Some(f), Some(s), 1, 1) = (read.first(), setters.first(), read.len(), setters.len())
        else {
            problems.push(format!(
                "configure: a statement that calls {setters:?} reads the fields {read:?}: \
                 expected one field and one setter in `{}`",
                st.flat()
            ));
            continue;
        };
        let setter = format!("prefork_set_{s}");
        if let Some((other, _)) = options.insert(f.clone(), (setter.clone(), st)) {
            problems.push(format!(
                "{f}: configure passes it to both {other} and {setter}"
            ));
        }
    }

    for (name, (setter, st)) in &options {
        let tag = format!("{name} ({setter})");
        let Some(default) = header.get(setter) else {
            problems.push(format!(
                "{tag}: the Go binding passes {name} to {setter}, which include/prefork.h \
                 does not document as an option (no `Default:` line)"
            ));
            continue;
        };
        let Some(f) = field(name) else {
            problems.push(format!(
                "{tag}: configure reads p.{name}, not a Prefork field"
            ));
            continue;
        };
        if (f.ty == "time.Duration") != setter.ends_with("_ms") {
            problems.push(format!(
                "{tag}: a field of type {} passed to {setter}: a time.Duration field goes \
                 with an _ms setter and only there",
                f.ty
            ));
        }

        // (a) The documented default.
        let mentions: Vec<&str> = f.doc.split("Default: ").skip(1).collect();
        match mentions.as_slice() {
            [] => problems.push(format!(
                "{tag}: its Go doc has no `Default:` sentence; the header says Default: {default}"
            )),
            [said] => match doc_value(said) {
                Err(e) => problems.push(format!("{tag}: {e}")),
                Ok((v, written)) => match header_form(&v, setter) {
                    Err(e) => {
                        problems.push(format!("{tag}: the Go doc says `Default: {written}`: {e}"))
                    }
                    Ok(h) if h != *default => problems.push(format!(
                        "{tag}: the Go doc says `Default: {written}` ({h} in the header's \
                         unit), but include/prefork.h says `Default: {default}`"
                    )),
                    Ok(_) => {}
                },
            },
            _ => problems.push(format!(
                "{tag}: its Go doc has {} `Default:` sentences; write one",
                mentions.len()
            )),
        }

        // (b) What a zero field does.
        let Some(zero) = zero_of(&f.ty) else {
            problems.push(format!("{tag}: no zero value known for type {}", f.ty));
            continue;
        };
        let lower = f.doc.to_lowercase();
        let not_default = ["zero is not the default", "empty is not the default"]
            .iter()
            .any(|p| lower.contains(p));
        let is_default = ["zero means the default", "empty means the default"]
            .iter()
            .any(|p| lower.contains(p));
        let env = Env {
            field: name,
            value: zero.clone(),
            consts: &values,
        };
        let zero_shown = plain(&zero);
        match classify(*st, &env, &helpers) {
            Err(e) => problems.push(format!(
                "{tag}: cannot tell what configure does with a zero {name} ({e}) in `{}`",
                st.flat()
            )),
            Ok(Zero::Skip) if not_default => problems.push(format!(
                "{tag}: the Go doc says zero is not the default, but configure skips {setter} \
                 for a zero {name}, so the header's default {default} applies"
            )),
            Ok(Zero::Skip) => {}
            Ok(Zero::Pass(v)) => {
                let passed = plain(&v);
                if passed == *default && not_default {
                    problems.push(format!(
                        "{tag}: the Go doc says zero is not the default, but configure passes \
                         the default, {passed}, to {setter} for a zero {name}"
                    ));
                } else if passed != *default && !not_default {
                    problems.push(format!(
                        "{tag}: for a zero {name} ({zero_shown}) configure calls {setter} with \
                         {passed}, not the header's default {default}{}; skip the setter for \
                         zero, or say \"Zero is not the default: ...\" in the field's doc",
                        if is_default {
                            ", though the Go doc says zero means the default"
                        } else {
                            ""
                        }
                    ));
                }
            }
        }
    }

    // Fields that document a default without being passed on.
    for f in &fields {
        if f.doc.contains("Default: ") && !options.contains_key(&f.name) {
            problems.push(format!(
                "{}: its Go doc states a default, but configure passes it to no prefork_set_* setter",
                f.name
            ));
        }
    }

    // New's values are the defaults, and it sets every field whose zero is not the default.
    let new_body = code.at(new_at);
    let mut set_by_new = BTreeSet::new();
    match new_body.mask.find("&Prefork{") {
        None => problems.push("New: no `&Prefork{` literal".to_string()),
        Some(at) => {
            let open = at + "&Prefork".len();
            let close = matching(new_body.mask, open).unwrap_or(new_body.mask.len());
            for entry in split_top(new_body.at(open + 1..close), &[",", "\n"]) {
                let Some(colon) = entry.mask.find(':') else {
                    continue;
                };
                let name = entry.text[..colon].trim();
                set_by_new.insert(name.to_string());
                let (Some((setter, _)), Some(f)) = (options.get(name), field(name)) else {
                    continue;
                };
                let expr = entry.at(colon + 1..entry.text.len());
                let env = Env {
                    field: "",
                    value: Val::Int(0),
                    consts: &values,
                };
                let shown = expr.flat();
                let value = eval(expr, &env).map(|v| match (v, f.ty.as_str()) {
                    (Val::Int(ns), "time.Duration") => DocVal::Duration(ns),
                    (v, _) => DocVal::Plain(v),
                });
                match value.and_then(|v| header_form(&v, setter)) {
                    Err(e) => problems.push(format!("{name} ({setter}): New sets `{shown}`: {e}")),
                    Ok(h) if h != header[setter] => problems.push(format!(
                        "{name} ({setter}): New sets it to `{shown}` ({h}), but include/prefork.h \
                         says `Default: {}`",
                        header[setter]
                    )),
                    Ok(_) => {}
                }
            }
        }
    }
    for (name, (setter, _)) in &options {
        let lower = field(name).map_or(String::new(), |f| f.doc.to_lowercase());
        if lower.contains("is not the default") && !set_by_new.contains(name) {
            problems.push(format!(
                "{name} ({setter}): its zero is not the default, and New does not set it, so a \
                 Prefork from New does not get the default {}",
                header.get(setter).map_or("?", String::as_str)
            ));
        }
    }

    // Setters the binding calls outside configure must be allowlisted when they are options.
    let mut elsewhere = BTreeSet::new();
    for (fname, src) in files {
        let text = blank(src, false);
        let text = if *fname == "prefork.go" {
            let mut t = text.clone();
            t.replace_range(configure_at.clone(), &" ".repeat(configure_at.len()));
            t
        } else {
            text
        };
        let prefix = if fname.ends_with(".go") {
            "C.prefork_set_"
        } else {
            "prefork_set_"
        };
        for s in idents_after(&text, prefix) {
            let setter = format!("prefork_set_{s}");
            if header.contains_key(&setter)
                && !NOT_EXPOSED.iter().any(|(n, _)| *n == setter)
                && elsewhere.insert(setter.clone())
            {
                problems.push(format!(
                    "{setter}: bindings/go/{fname} sets this option outside configure; give it a \
                     Prefork field or add it to NOT_EXPOSED in tests/go_options.rs with the reason"
                ));
            }
        }
    }

    // Every header option is a field or allowlisted, and the allowlist is not stale.
    let exposed: BTreeSet<&str> = options.values().map(|(s, _)| s.as_str()).collect();
    let missing: Vec<&str> = header
        .keys()
        .map(String::as_str)
        .filter(|s| !exposed.contains(s) && !NOT_EXPOSED.iter().any(|(n, _)| n == s))
        .collect();
    if !missing.is_empty() {
        problems.push(format!(
            "header options with no Prefork field in bindings/go: {missing:?}; expose them, or \
             list them in NOT_EXPOSED in tests/go_options.rs with the reason"
        ));
    }
    for (setter, why) in NOT_EXPOSED {
        if !header.contains_key(*setter) {
            problems.push(format!(
                "NOT_EXPOSED lists {setter} ({why}), which is not an option of include/prefork.h"
            ));
        } else if exposed.contains(setter) {
            problems.push(format!(
                "NOT_EXPOSED lists {setter} ({why}), but a Prefork field passes it on: drop it \
                 from the list"
            ));
        }
    }
    problems
}

fn report(problems: &[String]) -> String {
    problems
        .iter()
        .map(|p| format!("  - {p}\n"))
        .collect::<String>()
}

#[test]
fn go_options_agree_with_the_header() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("bindings/go");
    let mut files = Vec::new();
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        let wanted = (name.ends_with(".go") && !name.ends_with("_test.go"))
            || name.ends_with(".c")
            || name.ends_with(".h");
        if wanted {
            files.push((name, std::fs::read_to_string(&path).unwrap()));
        }
    }
    files.sort();
    let files: Vec<(&str, &str)> = files
        .iter()
        .map(|(n, s)| (n.as_str(), s.as_str()))
        .collect();
    let problems = check_go(&header_defaults(), &files);
    assert!(
        problems.is_empty(),
        "bindings/go disagrees with include/prefork.h's Default: lines:\n{}",
        report(&problems)
    );
}

/// The check on a small Go package with one mistake of each kind: it must name each.
#[test]
fn the_check_finds_each_kind_of_mistake() {
    let go = r#"package prefork

const DefaultThreshold = -1

type Prefork struct {
	// Grace is documented wrong. Default: 4s.
	Grace time.Duration
	// Backlog has the wrong type for its setter. Default: 1024.
	Backlog time.Duration
	// Threshold passes its zero on without saying so. Default: -1.
	Threshold int
	// Window claims what configure does not do. Default: 60s. Zero is not the default.
	Window time.Duration
	// Extra has no C option. Default: 1.
	Extra int
	// Lines is fine. Default: 8 KiB; zero means the default.
	Lines int
	// Stale states a default nobody passes on. Default: 3.
	Stale int
	handler RequestHandler
}

func New(handler RequestHandler) *Prefork {
	return &Prefork{
		Threshold: DefaultThreshold,
		Lines:     4096,
		handler:   handler,
	}
}

func (p *Prefork) configure(c *C.prefork) error {
	var err error
	set := func(name string, f func() C.enum_prefork_result) {
		if err == nil {
			err = lastError("set "+name, f())
		}
	}
	// zero keeps the default
	count := func(name string, v int, f func(n uint64) C.enum_prefork_result) {
		switch {
		case err != nil || v == 0:
		default:
			set(name, func() C.enum_prefork_result { return f(uint64(v)) })
		}
	}
	count("Grace", p.Grace, func(n uint64) C.enum_prefork_result { return C.prefork_set_grace_period_ms(c, n) })
	count("Backlog", p.Backlog, func(n uint64) C.enum_prefork_result { return C.prefork_set_backlog(c, C.int32_t(n)) })
	set("Threshold", func() C.enum_prefork_result {
		return C.prefork_set_recover_threshold(c, C.int32_t(max(p.Threshold, -2)))
	})
	if p.Window >= 0 { // "{" in a comment and a string must not confuse the reader
		count("Window", p.Window, func(n uint64) C.enum_prefork_result { return C.prefork_set_recover_window_ms(c, n) })
	}
	if p.Extra != 0 {
		set("Extra", func() C.enum_prefork_result { return C.prefork_set_extra(c, C.int(p.Extra)) })
	}
	count("Lines", p.Lines, func(n uint64) C.enum_prefork_result { return C.prefork_set_max_request_line(c, C.size_t(n)) })
	return err
}
"#;
    let header: BTreeMap<String, String> = [
        ("prefork_set_grace_period_ms", "5000"),
        ("prefork_set_recover_threshold", "-1"),
        ("prefork_set_recover_window_ms", "60000"),
        ("prefork_set_max_request_line", "8192"),
        ("prefork_set_backlog", "1024"),
        ("prefork_set_handle_signals", "true"),
        ("prefork_set_max_headers", "100"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    let problems = check_go(&header, &[("prefork.go", go)]);
    let all = report(&problems);
    for expected in [
        "Grace (prefork_set_grace_period_ms): the Go doc says `Default: 4s` (4000 in the \
         header's unit), but include/prefork.h says `Default: 5000`",
        "Backlog (prefork_set_backlog): a field of type time.Duration passed to \
         prefork_set_backlog",
        "Threshold (prefork_set_recover_threshold): for a zero Threshold (0) configure calls \
         prefork_set_recover_threshold with 0, not the header's default -1",
        "Window (prefork_set_recover_window_ms): the Go doc says zero is not the default, but \
         configure skips",
        "Window (prefork_set_recover_window_ms): its zero is not the default, and New does not \
         set it",
        "Extra (prefork_set_extra): the Go binding passes Extra to prefork_set_extra, which \
         include/prefork.h does not document",
        "Stale: its Go doc states a default, but configure passes it to no prefork_set_* setter",
        "Lines (prefork_set_max_request_line): New sets it to `4096` (4096), but \
         include/prefork.h says `Default: 8192`",
        "header options with no Prefork field in bindings/go: [\"prefork_set_max_headers\"]",
    ] {
        assert!(
            problems.iter().any(|p| p.contains(expected)),
            "missing {expected:?} in:\n{all}"
        );
    }
    assert_eq!(problems.len(), 9, "{all}");
}

#[test]
fn doc_values_read_as_the_header_writes_them() {
    let cases = [
        ("5s.", "prefork_set_grace_period_ms", "5000"),
        ("1m30s (x)", "prefork_set_grace_period_ms", "90000"),
        ("250ms", "prefork_set_grace_period_ms", "250"),
        ("0.", "prefork_set_recover_interval_ms", "0"),
        ("16 KiB.", "prefork_set_max_head_size", "16384"),
        ("4 MiB; a", "prefork_set_max_body_size", "4194304"),
        (
            "-1 (DefaultRecoverThreshold)",
            "prefork_set_recover_threshold",
            "-1",
        ),
        ("false.", "prefork_set_reuseport", "false"),
        ("\"tcp4\", as", "prefork_set_network", "\"tcp4\""),
    ];
    for (doc, setter, header) in cases {
        let (v, _) = doc_value(doc).unwrap();
        assert_eq!(header_form(&v, setter).unwrap(), header, "{doc}");
    }
    for (doc, setter) in [
        ("5000.", "prefork_set_grace_period_ms"), // a duration without a unit
        ("5s", "prefork_set_backlog"),            // a duration for a count
        ("5 seconds", "prefork_set_grace_period_ms"),
        ("five", "prefork_set_backlog"),
        ("5min", "prefork_set_grace_period_ms"),
    ] {
        let read = doc_value(doc).and_then(|(v, _)| header_form(&v, setter));
        assert!(read.is_err(), "{doc} read as {read:?}");
    }
}

/// README.md's option table: one row per header option, with the header's default (a row
/// may explain it after " = ", as "-1 = max(1, children / 2)").
#[test]
fn readme_option_table_agrees_with_the_header() {
    let header = header_defaults();
    let readme = read("README.md");
    let mut problems = Vec::new();
    let mut rows = BTreeSet::new();
    for line in readme.lines() {
        if !line.starts_with("| `prefork_set_") {
            continue;
        }
        let cells: Vec<&str> = line.splitn(4, '|').map(str::trim).collect();
        let (setter, said) = (cells[1].trim_matches('`'), cells[2].replace('`', ""));
        if !rows.insert(setter.to_string()) {
            problems.push(format!("{setter}: two rows"));
        }
        match header.get(setter) {
            None => problems.push(format!(
                "{setter}: a README row, but no `Default:` line in include/prefork.h"
            )),
            Some(d) if said != *d && !said.starts_with(&format!("{d} = ")) => problems.push(
                format!("{setter}: README.md says {said:?}, include/prefork.h says `Default: {d}`"),
            ),
            Some(_) => {}
        }
    }
    for setter in header.keys().filter(|s| !rows.contains(*s)) {
        problems.push(format!("{setter}: no row in README.md's option table"));
    }
    assert!(
        problems.is_empty(),
        "README.md's option table disagrees with include/prefork.h:\n{}",
        report(&problems)
    );
}
