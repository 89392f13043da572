//! Masking secret values in what an attempt writes: executors' error
//! messages, and (in the runtime, [`Masker`]) every log line, progress
//! message, error and output an attempt publishes.

use std::borrow::Cow;

use serde_json::Value;

/// Values shorter than this are not masked: masking `1` or `yes` in a
/// message hides more than it protects.
const MIN_MASKED_LEN: usize = 4;

/// What a masked value is replaced by.
const MASK: &str = "***";

/// `message` with every occurrence of the `secrets` replaced by `***`.
pub(crate) fn mask<'a>(message: &str, secrets: impl IntoIterator<Item = &'a str>) -> String {
    Masker::new(secrets).mask(message).into_owned()
}

/// Replaces the values of an attempt's environment wherever they appear.
#[derive(Debug, Clone, Default)]
pub(crate) struct Masker {
    /// Longest first, so a secret containing another is masked whole.
    values: Vec<String>,
}

impl Masker {
    /// A masker of `values` (those shorter than 4 bytes are left alone).
    pub(crate) fn new<'a>(values: impl IntoIterator<Item = &'a str>) -> Masker {
        let mut values: Vec<String> = values
            .into_iter()
            .filter(|s| s.len() >= MIN_MASKED_LEN)
            .map(str::to_owned)
            .collect();
        values.sort_by_key(|s| std::cmp::Reverse(s.len()));
        values.dedup();
        Masker { values }
    }

    /// Whether it masks nothing.
    pub(crate) fn is_empty(&self) -> bool {
        self.values.is_empty()
    }

    /// `text` with every value replaced by `***`.
    pub(crate) fn mask<'t>(&self, text: &'t str) -> Cow<'t, str> {
        let mut text = Cow::Borrowed(text);
        for value in &self.values {
            if text.contains(value.as_str()) {
                text = Cow::Owned(text.replace(value.as_str(), MASK));
            }
        }
        text
    }

    /// Masks `text` in place.
    pub(crate) fn mask_string(&self, text: &mut String) {
        if let Cow::Owned(masked) = self.mask(text) {
            *text = masked;
        }
    }

    /// Masks every string in `value`, object keys too.
    pub(crate) fn mask_json(&self, value: &mut Value) {
        if self.is_empty() {
            return;
        }
        match value {
            Value::String(text) => self.mask_string(text),
            Value::Array(items) => items.iter_mut().for_each(|v| self.mask_json(v)),
            Value::Object(map) => {
                let leaks = map.keys().any(|k| matches!(self.mask(k), Cow::Owned(_)));
                if leaks {
                    *map = std::mem::take(map)
                        .into_iter()
                        .map(|(k, v)| (self.mask(&k).into_owned(), v))
                        .collect();
                }
                map.values_mut().for_each(|v| self.mask_json(v));
            }
            Value::Null | Value::Bool(_) | Value::Number(_) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn mask_hides_long_values_and_keeps_short_ones() {
        let masked = mask(
            "token s3cr3t-abc and s3cr3t, id 42",
            ["s3cr3t", "s3cr3t-abc", "42"],
        );
        assert_eq!(masked, "token *** and ***, id 42");
    }

    #[test]
    fn json_is_masked_in_values_and_keys() {
        let masker = Masker::new(["hunter22"]);
        let mut output = json!({"stdout": "pw=hunter22\n", "list": ["x", "hunter22"],
                                "hunter22": 1, "n": 5});
        masker.mask_json(&mut output);
        assert_eq!(
            output,
            json!({"stdout": "pw=***\n", "list": ["x", "***"], "***": 1, "n": 5})
        );
        assert!(matches!(masker.mask("clean"), Cow::Borrowed(_)));
    }
}
