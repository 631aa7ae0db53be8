//! Finds a key written twice in the same YAML mapping, by its line. The
//! YAML parser either names only the document's first line ("duplicate
//! field" on line 1) or, for maps such as `env:`, keeps the last value
//! without a word; an operator needs the line of the second one.
//!
//! A line scan of block mappings, not a YAML parser: it follows indentation
//! and sequence items (`- `), and skips block scalars (`|`, `>`), comments
//! and what continues an unclosed flow collection (`[`, `{`). Keys inside
//! flow collections are left to the parser.

use std::collections::HashSet;

/// The first key repeated within one mapping: its 1-based line and name.
pub fn find_duplicate(text: &str) -> Option<(usize, String)> {
    // Open mappings, innermost last: their indent and the keys seen.
    let mut scopes: Vec<(usize, HashSet<String>)> = Vec::new();
    // Lines more indented than this belong to a block scalar.
    let mut block_scalar: Option<usize> = None;
    // Unclosed `[` and `{` of a flow collection spanning lines.
    let mut flow_depth = 0usize;
    for (i, line) in text.lines().enumerate() {
        let content = line.trim_start_matches(' ');
        let mut indent = line.len() - content.len();
        if content.is_empty() || content.starts_with('#') {
            continue;
        }
        if let Some(limit) = block_scalar {
            if indent > limit {
                continue;
            }
            block_scalar = None;
        }
        if flow_depth > 0 {
            flow_depth = depth_after(content, flow_depth);
            continue;
        }
        if content.starts_with("---") || content.starts_with("...") {
            scopes.clear();
            continue;
        }
        let mut rest = content;
        // Each `- ` opens a new item: a mapping in it starts afresh.
        while let Some(item) = rest.strip_prefix("- ").or((rest == "-").then_some("")) {
            let inner = item.trim_start_matches(' ');
            indent += rest.len() - inner.len();
            rest = inner;
            scopes.retain(|(at, _)| *at < indent);
        }
        let Some((key, value)) = split_key(rest) else {
            flow_depth = depth_after(rest, 0);
            continue;
        };
        scopes.retain(|(at, _)| *at <= indent);
        if scopes.last().is_none_or(|(at, _)| *at < indent) {
            scopes.push((indent, HashSet::new()));
        }
        if let Some((_, keys)) = scopes.last_mut() {
            if !keys.insert(key.clone()) {
                return Some((i + 1, key));
            }
        }
        let value = value.trim_start_matches(' ');
        if value.starts_with('|') || value.starts_with('>') {
            block_scalar = Some(indent);
        } else {
            flow_depth = depth_after(value, 0);
        }
    }
    None
}

/// `key: value` or `key:` at the start of `text`, the key unquoted; `None`
/// if the line is no block mapping entry.
fn split_key(text: &str) -> Option<(String, &str)> {
    let (key, rest) = match text.chars().next()? {
        quote @ ('"' | '\'') => {
            let end = text[1..].find(quote)? + 1;
            (text[1..end].to_string(), &text[end + 1..])
        }
        '{' | '[' | '&' | '*' | '!' | '|' | '>' | '%' | '@' | '`' | '#' => return None,
        _ => {
            let colon = text.match_indices(':').map(|(i, _)| i).find(|&i| {
                text[i + 1..]
                    .chars()
                    .next()
                    .is_none_or(|c| c == ' ' || c == '\t')
            })?;
            (text[..colon].trim_end().to_string(), &text[colon..])
        }
    };
    let value = rest.trim_start_matches(' ').strip_prefix(':')?;
    if !(value.is_empty() || value.starts_with(' ') || value.starts_with('\t')) {
        return None;
    }
    (!key.contains(" #")).then_some((key, value))
}

/// The depth of unclosed flow brackets after `text`, starting from `depth`;
/// brackets inside quotes do not count, a comment ends the line.
fn depth_after(text: &str, mut depth: usize) -> usize {
    let mut quote: Option<char> = None;
    let mut previous = ' ';
    for c in text.chars() {
        match quote {
            Some(q) if c == q => quote = None,
            Some(_) => {}
            None => match c {
                '"' | '\'' => quote = Some(c),
                '#' if previous == ' ' => break,
                '[' | '{' => depth += 1,
                ']' | '}' => depth = depth.saturating_sub(1),
                _ => {}
            },
        }
        previous = c;
    }
    depth
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_second_occurrence_at_any_depth() {
        let dup = |text: &str| find_duplicate(text);
        assert_eq!(dup("a: 1\nb: 2\na: 3\n"), Some((3, "a".into())));
        assert_eq!(
            dup("env:\n  A: x\n  B: y\n  'A': z\n"),
            Some((4, "A".into()))
        );
        assert_eq!(
            dup("listen:\n  - address: 80\n    name: a\n    name: b\n"),
            Some((4, "name".into()))
        );
    }

    #[test]
    fn the_same_key_in_different_mappings_is_no_duplicate() {
        let none = |text: &str| assert_eq!(find_duplicate(text), None, "{text}");
        none("env:\n  A: x\nother:\n  A: y\n");
        none("listen:\n  - address: 80\n    name: a\n  - address: 81\n    name: b\n");
        none("- a: 1\n- a: 2\n");
        none("command: |\n  a: 1\n  a: 2\nworkers: 1\n");
        none("listen: [{name: a,\n  address: 80}, {name: b,\n  address: 81}]\n");
        none("# a: 1\na: 1 # a: 2\n---\na: 2\n");
        none("url: http://x\nhost: a:b\n");
    }

    #[test]
    fn odd_text_never_panics() {
        for text in [
            "- ",
            "-",
            "'a: 1",
            "\"é\": 1\n\"é\": 2",
            ": x",
            "a:\n- - b: 1\n  - b: 2",
        ] {
            let _ = find_duplicate(text);
        }
        assert_eq!(find_duplicate("\"é\": 1\n\"é\": 2"), Some((2, "é".into())));
    }
}
