//! Absence checks that cannot pass by a rename: before a test asserts that
//! some log text is NOT there, the text's shape is proven to occur in the
//! sources under `src/` (the master's and the demo app's), so renaming an
//! event there fails the test instead of making it vacuous.
//!
//! The shape of a needle: each `event=<name>` must occur in src/ as that
//! whole name; each other `key=value` needs `key=` in src/ (values are often
//! formatted in); each run of plain words (numbers dropped) must occur as
//! written.

use std::path::Path;
use std::sync::OnceLock;

/// All `.rs` files under src/, concatenated.
fn sources() -> &'static str {
    static TEXT: OnceLock<String> = OnceLock::new();
    TEXT.get_or_init(|| {
        fn read(dir: &Path, out: &mut String) {
            let entries =
                std::fs::read_dir(dir).unwrap_or_else(|e| panic!("read {}: {e}", dir.display()));
            let mut paths: Vec<_> = entries.flatten().map(|e| e.path()).collect();
            paths.sort();
            for path in paths {
                if path.is_dir() {
                    read(&path, out);
                } else if path.extension().is_some_and(|e| e == "rs") {
                    out.push_str(&std::fs::read_to_string(&path).unwrap_or_default());
                    out.push('\n');
                }
            }
        }
        let mut text = String::new();
        read(
            Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/src")),
            &mut text,
        );
        text
    })
}

/// Whether src/ holds `event=<name>` as a whole event name.
fn has_event(name: &str) -> bool {
    let needle = format!("event={name}");
    sources().match_indices(&needle).any(|(at, _)| {
        let next = sources()[at + needle.len()..].chars().next();
        !next.is_some_and(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    })
}

/// Returns `needle` once its shape is proven to occur in src/; panics
/// naming what is missing otherwise.
pub fn in_source(needle: &str) -> &str {
    let mut words: Vec<&str> = Vec::new();
    let mut runs: Vec<String> = Vec::new();
    let mut flush = |words: &mut Vec<&str>| {
        if !words.is_empty() {
            runs.push(words.join(" "));
            words.clear();
        }
    };
    for token in needle.split_whitespace() {
        if let Some((key, value)) = token.split_once('=') {
            flush(&mut words);
            if key == "event" {
                assert!(
                    has_event(value),
                    "event `{value}` no longer exists in src/: update this test"
                );
            } else if !key.is_empty() {
                let key = format!("{key}=");
                assert!(
                    sources().contains(&key),
                    "log key `{key}` (of {needle:?}) no longer exists in src/: update this test"
                );
                // A word value is written somewhere too (numbers, paths and
                // signal names come from elsewhere).
                let word = value.chars().all(|c| c.is_ascii_lowercase() || c == '-');
                assert!(
                    !word || value.is_empty() || sources().contains(value),
                    "log value `{value}` (of {needle:?}) no longer exists in src/: update this test"
                );
            }
        } else if token.chars().any(|c| c.is_ascii_digit()) {
            flush(&mut words);
        } else {
            words.push(token);
        }
    }
    flush(&mut words);
    for run in runs {
        assert!(
            sources().contains(&run),
            "log text {run:?} (of {needle:?}) no longer exists in src/: update this test"
        );
    }
    needle
}

/// Returns the event name once src/ is proven to log `event=<name>`.
pub fn event_in_source(name: &str) -> &str {
    assert!(
        has_event(name),
        "event `{name}` no longer exists in src/: update this test"
    );
    name
}

/// Asserts `text` (a log, an error output) does not hold `needle`, once
/// `needle` is proven to be something src/ can write.
#[track_caller]
pub fn assert_not_logged(text: &str, needle: &str) {
    assert!(
        !text.contains(in_source(needle)),
        "unexpected {needle:?} in:\n{text}"
    );
}

/// Asserts no `event=<name>` in `log`, once src/ is proven to log it.
#[track_caller]
pub fn assert_no_event(log: &str, name: &str) {
    assert_not_logged(log, &format!("event={name}"));
}

/// Asserts no Rust panic message in `text` (the runtime's words, not ours,
/// so there is nothing in src/ to check them against).
#[track_caller]
pub fn assert_no_panic(text: &str) {
    assert!(!text.contains("panicked"), "a panic in:\n{text}");
}
