//! How values read back in `--check` and in logs, where a value takes more
//! than its `Display`: listeners with their fds, a command as shell words.

use crate::listen::ListenSpec;
use std::ffi::OsString;

/// Each listener with the fd a worker finds it on.
pub fn listeners(specs: &[ListenSpec]) -> impl Iterator<Item = String> + '_ {
    specs.iter().enumerate().map(|(i, spec)| {
        let mode = spec.mode.map(|m| format!(" mode={m:04o}"));
        format!(
            "fd={} {} name={} backlog={}{}",
            3 + i,
            spec.address,
            spec.fd_name(),
            spec.backlog,
            mode.unwrap_or_default()
        )
    })
}

/// The command as a shell would read it back, for logs and `--check`.
pub fn shell_words(words: &[OsString]) -> String {
    words
        .iter()
        .map(|w| {
            let w = w.to_string_lossy();
            if !w.is_empty()
                && w.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"/._-=:,@+%".contains(&b))
            {
                w.into_owned()
            } else {
                format!("'{}'", w.replace('\'', r"'\''"))
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}
