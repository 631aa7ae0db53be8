//! Values that start with a hyphen (`-1`, `-5s`) are values, not flags:
//! forkmaster's own parser answers with its one line naming the flag and
//! the value, never clap's usage error with its `-- -1` tip (`--` starts
//! the app's command here).

use crate::config_errors::assert_one_line_error;
use crate::support::*;

#[test]
fn negative_values_get_the_one_line_error_naming_the_flag() {
    let cases: &[(&str, &str)] = &[
        ("--max-worker-memory", "-1"),
        ("--max-worker-age", "-5s"),
        ("--max-worker-age-jitter", "-1%"),
        ("--memory-check-interval", "-1s"),
        ("--graceful-timeout", "-30s"),
        ("--workers", "-2"),
        ("--max-surge", "-1"),
        ("--min-ready", "-1"),
    ];
    for (flag, value) in cases {
        let out = run(&[flag, value, "-l", "127.0.0.1:0", "--", demo()], secs(10));
        let line = assert_one_line_error(&out, 1, &[value]);
        let name = flag.trim_start_matches("--");
        assert!(
            line.contains(name) || line.contains(&name.replace('-', "_")),
            "{flag}: {line}"
        );
        assert!(!line.contains("'-- "), "{flag}: {line}");
    }
}
