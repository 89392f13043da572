//! Masking secret values in the messages an executor writes.

/// Values shorter than this are not masked: masking `1` or `yes` in a
/// message hides more than it protects.
const MIN_MASKED_LEN: usize = 4;

/// `message` with every occurrence of the `secrets` replaced by `***`.
pub(crate) fn mask<'a>(message: &str, secrets: impl IntoIterator<Item = &'a str>) -> String {
    let mut secrets: Vec<&str> = secrets
        .into_iter()
        .filter(|s| s.len() >= MIN_MASKED_LEN)
        .collect();
    // Longest first, so a secret containing another is masked whole.
    secrets.sort_by_key(|s| std::cmp::Reverse(s.len()));
    let mut message = message.to_owned();
    for secret in secrets {
        if message.contains(secret) {
            message = message.replace(secret, "***");
        }
    }
    message
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mask_hides_long_values_and_keeps_short_ones() {
        let masked = mask(
            "token s3cr3t-abc and s3cr3t, id 42",
            ["s3cr3t", "s3cr3t-abc", "42"],
        );
        assert_eq!(masked, "token *** and ***, id 42");
    }
}
