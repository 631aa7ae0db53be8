//! What the property tests beside each parser share: how many cases they
//! run, the inputs they explore (valid samples with a stretch cut out and
//! random text put in, or random text alone), and what an error must be.

use proptest::prelude::*;
use proptest::sample::{select, Index};
use proptest::test_runner::{Config, TestCaseError};

/// 2000 cases a property unless `PROPTEST_CASES` says otherwise.
pub fn config() -> Config {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(2000);
    Config::with_cases(cases)
}

/// Inputs near `samples`, with pieces over the regex character class
/// `alphabet` (e.g. `[0-9.ms]`), or any text at all.
pub fn mutated(samples: &'static [&'static str], alphabet: &str) -> impl Strategy<Value = String> {
    let text = |len: &str| {
        proptest::string::string_regex(&format!("{alphabet}{{0,{len}}}"))
            .expect("a valid character class")
    };
    prop_oneof![
        3 => (select(samples), any::<Index>(), any::<Index>(), text("8")).prop_map(
            |(sample, a, b, piece)| {
                let (a, b) = (a.index(sample.len() + 1), b.index(sample.len() + 1));
                format!("{}{piece}{}", &sample[..a.min(b)], &sample[a.max(b)..])
            }
        ),
        1 => text("64"),
        1 => any::<String>(),
    ]
}

/// An error a person reads: one line, something said.
pub fn explains(input: &str, err: &str) -> Result<(), TestCaseError> {
    prop_assert!(!err.trim().is_empty(), "empty error for {input:?}");
    prop_assert!(
        !err.contains('\n'),
        "multi-line error for {input:?}: {err:?}"
    );
    Ok(())
}
