//! Log lines: `2026-11-23T17:57:26.123Z INFO forkmaster[4242] worker=2 pid=4243 event=ready`.
//!
//! Timestamped, with the master's pid (two masters share stderr during an
//! upgrade), and `key=value` fields so grep and log tools can read them.
//!
//! One event is always one line: every value that comes from outside (a
//! command, a path, a reason, an error) goes into a log line through `esc`,
//! which escapes `\`, `"`, newlines and other control characters, so it can
//! end neither the line nor the quoted value it sits in. The format function
//! escapes control characters in the whole record once more, so even a value
//! logged without `esc` cannot start a line of its own.

use std::fmt::{self, Display, Write as _};
use std::io::Write;

/// Sets up logging at `level` (a `--log-level` value), else from `RUST_LOG`,
/// else `info`.
pub fn init(level: Option<&str>) {
    let mut builder = env_logger::Builder::new();
    match (level, std::env::var("RUST_LOG")) {
        (Some(level), _) => builder.parse_filters(level),
        (None, Ok(filters)) => builder.parse_filters(&filters),
        (None, Err(_)) => builder.parse_filters("info"),
    };
    let pid = std::process::id();
    builder
        .format(move |buf, record| {
            writeln!(
                buf,
                "{} {} forkmaster[{pid}] {}",
                buf.timestamp_millis(),
                record.level(),
                OneLine(record.args())
            )
        })
        .target(env_logger::Target::Stderr)
        .init();
}

/// A value from outside, escaped for a log line (`esc(path.display())`).
pub struct Escaped<T>(T);

/// Escapes `value` for a log line: `\` `"` and control characters.
pub fn esc<T: Display>(value: T) -> Escaped<T> {
    Escaped(value)
}

/// `value` escaped as `esc` does, as a string (for reasons shown elsewhere
/// too: `status`, the clients).
pub fn escape(value: &str) -> String {
    esc(value).to_string()
}

impl<T: Display> Display for Escaped<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            Escaper {
                out: f,
                quotes: true
            },
            "{}",
            self.0
        )
    }
}

/// A whole record with its control characters escaped: one record, one line.
struct OneLine<T>(T);

impl<T: Display> Display for OneLine<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            Escaper {
                out: f,
                quotes: false
            },
            "{}",
            self.0
        )
    }
}

/// Writes text through, escaping control characters (and, with `quotes`,
/// `\` and `"`).
struct Escaper<'a, 'b> {
    out: &'a mut fmt::Formatter<'b>,
    quotes: bool,
}

impl fmt::Write for Escaper<'_, '_> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        let mut plain = 0;
        for (i, c) in s.char_indices() {
            let escaped = match c {
                '\n' => "\\n",
                '\r' => "\\r",
                '\t' => "\\t",
                '"' if self.quotes => "\\\"",
                '\\' if self.quotes => "\\\\",
                c if c.is_control() || c == '\u{2028}' || c == '\u{2029}' => "",
                _ => continue,
            };
            self.out.write_str(&s[plain..i])?;
            if escaped.is_empty() {
                write!(self.out, "\\u{{{:x}}}", c as u32)?;
            } else {
                self.out.write_str(escaped)?;
            }
            plain = i + c.len_utf8();
        }
        self.out.write_str(&s[plain..])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_escaped_to_one_piece() {
        assert_eq!(
            escape("a\nevent=forged \"q\" \\ \r\t\u{1b}[31m\u{85}\u{2028}é"),
            "a\\nevent=forged \\\"q\\\" \\\\ \\r\\t\\u{1b}[31m\\u{85}\\u{2028}é"
        );
        assert_eq!(escape("plain text"), "plain text");
    }

    #[test]
    fn a_record_keeps_its_quotes_and_loses_its_newlines() {
        let line = OneLine(format_args!("reason=\"{}\"", "x\ny")).to_string();
        assert_eq!(line, "reason=\"x\\ny\"");
    }
}
