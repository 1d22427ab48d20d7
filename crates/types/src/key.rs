//! The API key: a secret that no `Debug` or `Display` output ever shows.

use std::fmt;
use std::str::FromStr;

/// An API key (`sk-…`), sent as `Authorization: Bearer <key>`.
///
/// Its `Debug` and `Display` never show the key; only [`expose_secret`](Self::expose_secret)
/// does, for the one place that builds the header. It has no `Serialize` impl, so it cannot end up
/// in JSON by accident.
///
/// ```
/// use gptimage_types::ApiKey;
///
/// let key = ApiKey::new("sk-live-0123456789")?;
/// assert_eq!(format!("{key:?}"), "ApiKey(<redacted>)");
/// assert_eq!(key.to_string(), "<redacted>");
/// assert_eq!(key.expose_secret(), "sk-live-0123456789");
/// # Ok::<(), gptimage_types::InvalidApiKey>(())
/// ```
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct ApiKey(String);

/// A string that cannot be an API key: empty, or with characters an HTTP header cannot carry.
///
/// Its message does not repeat the key.
///
/// ```
/// use gptimage_types::ApiKey;
///
/// let err = ApiKey::new("sk-with a space").unwrap_err();
/// assert!(!err.to_string().contains("sk-with"));
/// ```
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum InvalidApiKey {
    /// The key is empty or only whitespace.
    #[error("the API key is empty; set GPTIMAGE_API_KEY or pass a key")]
    Empty,
    /// The key holds whitespace, control or non-ASCII characters.
    #[error(
        "the API key contains whitespace, control or non-ASCII characters; check that it was copied whole and alone"
    )]
    InvalidCharacter,
}

impl ApiKey {
    /// Checks and wraps a key. Surrounding whitespace (a trailing newline from a file) is removed.
    pub fn new(key: impl Into<String>) -> Result<Self, InvalidApiKey> {
        let key = key.into();
        let trimmed = key.trim();
        if trimmed.is_empty() {
            return Err(InvalidApiKey::Empty);
        }
        if !trimmed.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(InvalidApiKey::InvalidCharacter);
        }
        Ok(Self(trimmed.to_owned()))
    }

    /// The key itself. Use it only to build the `Authorization` header.
    pub fn expose_secret(&self) -> &str {
        &self.0
    }
}

impl FromStr for ApiKey {
    type Err = InvalidApiKey;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::new(s)
    }
}

impl fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ApiKey(<redacted>)")
    }
}

impl fmt::Display for ApiKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys() {
        assert_eq!(ApiKey::new("  sk-a\n").unwrap().expose_secret(), "sk-a");
        assert_eq!(ApiKey::new(" \t"), Err(InvalidApiKey::Empty));
        assert_eq!(ApiKey::new("sk-é"), Err(InvalidApiKey::InvalidCharacter));
        assert_eq!(
            ApiKey::new("sk-a\u{0}"),
            Err(InvalidApiKey::InvalidCharacter)
        );
        let key = ApiKey::new("sk-secret").unwrap();
        assert!(!format!("{key:?} {key} {key:#?}").contains("secret"));
    }
}
