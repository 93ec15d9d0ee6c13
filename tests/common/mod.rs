//! Helpers shared by the integration tests that read the repository's files as text.

use std::collections::BTreeMap;
use std::path::Path;

/// A file of this repository, by its path from the root.
pub fn read(rel: &str) -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(rel))
        .unwrap_or_else(|e| panic!("{rel}: {e}"))
}

/// Setter name -> the text after "Default:" in its doc comment in include/prefork.h.
pub fn header_defaults() -> BTreeMap<String, String> {
    let header = read("include/prefork.h");
    let mut out = BTreeMap::new();
    let mut doc = String::new();
    for line in header.lines() {
        let t = line.trim();
        if t.starts_with("/**") {
            doc.clear();
        } else if let Some(text) = t.strip_prefix("* ") {
            doc.push_str(text);
            doc.push(' ');
        } else if let Some(i) = t.find("prefork_set_") {
            let name: String = t[i..].chars().take_while(|c| *c != '(').collect();
            if let Some(d) = doc.split("Default: ").nth(1) {
                out.insert(name, d.trim_end().trim_end_matches('.').to_string());
            }
        }
    }
    assert!(
        out.len() > 10,
        "read only {} Default: lines from include/prefork.h",
        out.len()
    );
    out
}
