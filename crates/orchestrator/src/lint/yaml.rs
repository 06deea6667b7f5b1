//! Reading the YAML tree the rules walk: documents, fields by path, and the
//! numbers and durations orchestrators accept in several spellings.

use std::time::Duration;

use saphyr::{LoadableYamlNode, YamlOwned};

use super::LintError;

/// Every document of a YAML stream.
pub(super) fn documents(source: &str) -> Result<Vec<YamlOwned>, LintError> {
    YamlOwned::load_from_str(source).map_err(|e| LintError::Yaml(e.to_string()))
}

/// The node at `path` (mapping keys) under `node`, if every key is there.
pub(super) fn get<'a>(node: &'a YamlOwned, path: &[&str]) -> Option<&'a YamlOwned> {
    path.iter()
        .try_fold(node, |node, key| node.as_mapping_get(key))
        .filter(|node| !node.is_null())
}

/// A string field.
pub(super) fn string<'a>(node: &'a YamlOwned, path: &[&str]) -> Option<&'a str> {
    get(node, path).and_then(YamlOwned::as_str)
}

/// An integer field, written as a number or a quoted number.
pub(super) fn integer(node: &YamlOwned, path: &[&str]) -> Option<i64> {
    let node = get(node, path)?;
    node.as_integer()
        .or_else(|| node.as_str().and_then(|s| s.trim().parse().ok()))
}

/// A compose duration (`40s`, `1m30s`, `500ms`; a bare number is seconds):
/// `None` when absent, `Some(Err(text))` when it cannot be read.
pub(super) fn duration(node: &YamlOwned, path: &[&str]) -> Option<Result<Duration, String>> {
    let node = get(node, path)?;
    if let Some(n) = node.as_integer() {
        return Some(
            u64::try_from(n)
                .map(Duration::from_secs)
                .map_err(|_| n.to_string()),
        );
    }
    let text = node.as_str().map(str::trim).unwrap_or_default();
    Some(humantime::parse_duration(text).map_err(|_| text.to_owned()))
}

/// A sequence field's items (none when absent or not a sequence).
pub(super) fn items<'a>(node: &'a YamlOwned, path: &[&str]) -> &'a [YamlOwned] {
    get(node, path)
        .and_then(YamlOwned::as_sequence)
        .map_or(&[], Vec::as_slice)
}

/// A scalar as text (strings, numbers, booleans), for commands and lists.
pub(super) fn text(node: &YamlOwned) -> Option<String> {
    node.as_str()
        .map(str::to_owned)
        .or_else(|| node.as_integer().map(|n| n.to_string()))
        .or_else(|| node.as_floating_point().map(|n| n.to_string()))
        .or_else(|| node.as_bool().map(|b| b.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_paths_numbers_and_durations() {
        let doc =
            &documents("a:\n  b: 3\n  c: \"4\"\n  d: 1m30s\n  e: soon\n  f: null\n").unwrap()[0];
        assert_eq!(integer(doc, &["a", "b"]), Some(3));
        assert_eq!(integer(doc, &["a", "c"]), Some(4));
        assert_eq!(
            duration(doc, &["a", "d"]),
            Some(Ok(Duration::from_secs(90)))
        );
        assert_eq!(duration(doc, &["a", "e"]), Some(Err("soon".into())));
        assert_eq!(duration(doc, &["a", "b"]), Some(Ok(Duration::from_secs(3))));
        assert!(get(doc, &["a", "f"]).is_none());
        assert!(get(doc, &["a", "x", "y"]).is_none());
        assert!(documents("a: [").is_err());
    }
}
