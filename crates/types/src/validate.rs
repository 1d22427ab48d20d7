//! The validation rules of a generation request, and the error that names a broken one.

use std::fmt;

/// The most characters a prompt may have, counted as Unicode scalar values (not bytes).
///
/// ```
/// use gptimage_types::{GenerateRequest, MAX_PROMPT_CHARS};
///
/// // 2000 Japanese characters are 6000 bytes of UTF-8, and still allowed.
/// let prompt = "山".repeat(MAX_PROMPT_CHARS);
/// assert!(GenerateRequest::text_to_image(prompt).build().is_ok());
/// ```
pub const MAX_PROMPT_CHARS: usize = 2000;

/// How many characters of an offending value an error message repeats.
const SHOWN_CHARS: usize = 80;

/// Why a generation request is not valid. Nothing was sent when this error is returned.
///
/// Each rule has its own variant, and [`field`](Self::field) names the JSON field at fault, so a
/// caller can match on the rule and a server can answer `Bad Request: '<field>' …`. The message
/// says what was wrong and what is allowed.
///
/// ```
/// use gptimage_types::{GenerateRequest, ValidationError};
///
/// let err = GenerateRequest::text_to_image("   ").build().unwrap_err();
/// assert_eq!(err, ValidationError::BlankPrompt);
/// assert_eq!(err.field(), "prompt");
/// assert_eq!(err.to_string(), "'prompt' is blank; it must contain at least one visible character");
/// ```
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ValidationError {
    /// The request has no `prompt` field at all.
    #[error("'prompt' is required")]
    MissingPrompt,
    /// The prompt is empty or holds only whitespace (of any kind) and invisible format characters.
    #[error("'prompt' is blank; it must contain at least one visible character")]
    BlankPrompt,
    /// The prompt has more than [`MAX_PROMPT_CHARS`] characters.
    #[error("'prompt' has {chars} characters; at most {max} are allowed")]
    PromptTooLong {
        /// How many characters (Unicode scalar values) the prompt has.
        chars: usize,
        /// The limit, [`MAX_PROMPT_CHARS`].
        max: usize,
    },
    /// The size is not one of the documented sizes.
    #[error(
        "'size' {} is not supported; use 1024*1024 (square), 1024*1536 (portrait) or 1536*1024 (landscape)",
        Shown(.value)
    )]
    InvalidSize {
        /// The value that was given.
        value: String,
    },
    /// The quality is not one of the documented qualities.
    #[error("'quality' {} is not supported; use low, medium or high", Shown(.value))]
    InvalidQuality {
        /// The value that was given.
        value: String,
    },
    /// The input fidelity is not one of the documented values.
    #[error("'input_fidelity' {} is not supported; use low or high", Shown(.value))]
    InvalidInputFidelity {
        /// The value that was given.
        value: String,
    },
    /// `input_fidelity` was given without any input image.
    #[error("'input_fidelity' applies only to image-to-image requests; add 'images' or remove it")]
    InputFidelityWithoutImages,
    /// `images` was given but holds no URL.
    #[error("'images' is empty; give at least one image URL or omit the field for text-to-image")]
    EmptyImages,
    /// One of the `images` is not an absolute `http` or `https` URL.
    #[error("'images'[{index}] {} is not a valid image URL: {problem}", Shown(.url))]
    InvalidImageUrl {
        /// The position of the URL in `images`, from 0.
        index: usize,
        /// The URL that was given.
        url: String,
        /// What is wrong with it.
        problem: UrlProblem,
    },
    /// `callback_url` is not an absolute `http` or `https` URL.
    #[error("'callback_url' {} is not a valid webhook URL: {problem}", Shown(.url))]
    InvalidCallbackUrl {
        /// The URL that was given.
        url: String,
        /// What is wrong with it.
        problem: UrlProblem,
    },
}

impl ValidationError {
    /// The name of the JSON field that broke a rule, as the API spells it.
    ///
    /// ```
    /// use gptimage_types::ValidationError;
    ///
    /// assert_eq!(ValidationError::EmptyImages.field(), "images");
    /// assert_eq!(ValidationError::InputFidelityWithoutImages.field(), "input_fidelity");
    /// ```
    pub fn field(&self) -> &'static str {
        match self {
            Self::MissingPrompt | Self::BlankPrompt | Self::PromptTooLong { .. } => "prompt",
            Self::InvalidSize { .. } => "size",
            Self::InvalidQuality { .. } => "quality",
            Self::InvalidInputFidelity { .. } | Self::InputFidelityWithoutImages => {
                "input_fidelity"
            }
            Self::EmptyImages | Self::InvalidImageUrl { .. } => "images",
            Self::InvalidCallbackUrl { .. } => "callback_url",
        }
    }
}

/// What is wrong with a URL that must be absolute `http` or `https`.
///
/// ```
/// use gptimage_types::{UrlProblem, check_url};
///
/// assert_eq!(check_url("ftp://example.com/a.png"), Err(UrlProblem::UnsupportedScheme("ftp".into())));
/// assert_eq!(check_url("/images/a.png"), Err(UrlProblem::NotAbsolute));
/// assert_eq!(check_url("https://example.com/a.png"), Ok(()));
/// ```
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum UrlProblem {
    /// The URL has no scheme: it is relative, or a bare host name.
    #[error("it is not an absolute URL; write it as http://host/path or https://host/path")]
    NotAbsolute,
    /// The scheme is not `http` or `https`.
    #[error("the scheme {0:?} is not supported; only http and https are allowed")]
    UnsupportedScheme(String),
    /// Nothing names a host after `scheme://`.
    #[error("it names no host")]
    MissingHost,
    /// The port is not a number from 1 to 65535.
    #[error("its port is not a number from 1 to 65535")]
    InvalidPort,
    /// The URL holds whitespace, control characters or other characters a URI cannot hold
    /// (a double quote, `<`, `>`, a backslash, `^`, a backtick, `{`, `|` or `}`), which must be
    /// percent-encoded.
    #[error(
        "it contains whitespace, a control character or one of \"<>\\^`{{|}}, which a URI cannot \
         hold; percent-encode them"
    )]
    InvalidCharacter,
    /// The URL holds characters outside ASCII: it is not an RFC 3986 URI, and a strict server
    /// refuses it.
    #[error(
        "it contains characters outside ASCII ({0:?}), which a URI cannot hold: write an \
         international host name in its ASCII form (xn--…, punycode) and percent-encode the rest \
         as UTF-8"
    )]
    NotAscii(char),
}

/// Checks that `url` is an absolute `http` or `https` URL with a host.
///
/// This is the rule for `images` and `callback_url`. It is deliberately small: it checks the
/// shape the service needs, not every detail of RFC 3986.
///
/// ```
/// use gptimage_types::{UrlProblem, check_url};
///
/// assert!(check_url("http://127.0.0.1:8080/cat.png").is_ok());
/// assert!(check_url("HTTPS://Example.com").is_ok());
/// assert!(check_url("https://").is_err());
/// assert!(check_url("example.com/cat.png").is_err());
/// // Not a URI: refused, never sent as is.
/// assert_eq!(check_url("https://Ï"), Err(UrlProblem::NotAscii('Ï')));
/// assert!(check_url("https://xn--bea.example/caf%C3%A9.png").is_ok());
/// assert!(check_url("https://example.com/a b.png").is_err());
/// ```
pub fn check_url(url: &str) -> Result<(), UrlProblem> {
    if let Some(c) = url.chars().find(|c| !c.is_ascii()) {
        return Err(UrlProblem::NotAscii(c));
    }
    if url
        .chars()
        .any(|c| c.is_ascii_whitespace() || c.is_ascii_control() || "\"<>\\^`{|}".contains(c))
    {
        return Err(UrlProblem::InvalidCharacter);
    }
    let Some((scheme, rest)) = url.split_once("://") else {
        // `mailto:x` or `data:…` has a scheme; `localhost:8080/a` and `example.com:80` do not.
        return Err(match url.split_once(':') {
            Some((scheme, rest))
                if is_scheme(scheme)
                    && !scheme.contains('.')
                    && !rest.starts_with(|c: char| c.is_ascii_digit()) =>
            {
                UrlProblem::UnsupportedScheme(scheme.to_owned())
            }
            _ => UrlProblem::NotAbsolute,
        });
    };
    if !is_scheme(scheme) {
        return Err(UrlProblem::NotAbsolute);
    }
    if !scheme.eq_ignore_ascii_case("http") && !scheme.eq_ignore_ascii_case("https") {
        return Err(UrlProblem::UnsupportedScheme(scheme.to_owned()));
    }
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    let host_port = authority.rsplit_once('@').map_or(authority, |(_, hp)| hp);
    let (host, port) = if let Some(bracketed) = host_port.strip_prefix('[') {
        // An IPv6 literal: `[::1]` or `[::1]:8080`.
        match bracketed.split_once(']') {
            Some((ip, after)) => (ip, after.strip_prefix(':')),
            None => return Err(UrlProblem::MissingHost),
        }
    } else {
        match host_port.split_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (host_port, None),
        }
    };
    if host.is_empty() {
        return Err(UrlProblem::MissingHost);
    }
    if let Some(port) = port {
        let valid = !port.is_empty()
            && port.len() <= 5
            && port.bytes().all(|b| b.is_ascii_digit())
            && port.parse::<u32>().is_ok_and(|p| (1..=65535).contains(&p));
        if !valid {
            return Err(UrlProblem::InvalidPort);
        }
    }
    Ok(())
}

/// Whether `s` has the shape of a URL scheme (RFC 3986: a letter, then letters, digits, `+-.`).
fn is_scheme(s: &str) -> bool {
    let mut chars = s.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'))
}

/// Checks the prompt rules: present, not blank, at most [`MAX_PROMPT_CHARS`] characters.
pub(crate) fn check_prompt(prompt: &str) -> Result<(), ValidationError> {
    if prompt.chars().all(is_blank_char) {
        return Err(ValidationError::BlankPrompt);
    }
    let chars = prompt.chars().count();
    if chars > MAX_PROMPT_CHARS {
        return Err(ValidationError::PromptTooLong {
            chars,
            max: MAX_PROMPT_CHARS,
        });
    }
    Ok(())
}

/// Whitespace of every kind, and the invisible format characters that render as nothing.
fn is_blank_char(c: char) -> bool {
    c.is_whitespace()
        || matches!(
            c,
            '\u{200B}'..='\u{200D}' | '\u{2060}' | '\u{FEFF}' | '\u{180E}' | '\u{00AD}'
        )
}

/// Shows a user-supplied value in an error message: quoted, and cut short when it is long.
struct Shown<'a>(&'a str);

/// A value as an error shows it: redacted (a URL's password, a signed URL's query), then cut.
impl fmt::Display for Shown<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let shown = crate::redact(self.0);
        if shown.chars().count() <= SHOWN_CHARS {
            write!(f, "{shown:?}")
        } else {
            let head: String = shown.chars().take(SHOWN_CHARS).collect();
            write!(f, "{head:?}…")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        let ok = [
            "http://a",
            "https://example.com/x.png?y=1#z",
            "http://user:pw@host:8080/p",
            "http://[::1]:3000/a.png",
            "http://[::1]/a.png",
            "HtTpS://example.com",
        ];
        for url in ok {
            assert_eq!(check_url(url), Ok(()), "{url}");
        }
        let bad = [
            ("", UrlProblem::NotAbsolute),
            ("example.com/a.png", UrlProblem::NotAbsolute),
            ("localhost:8080/a.png", UrlProblem::NotAbsolute),
            ("example.com:8080/a.png", UrlProblem::NotAbsolute),
            (
                "mailto:someone",
                UrlProblem::UnsupportedScheme("mailto".into()),
            ),
            ("/a/b.png", UrlProblem::NotAbsolute),
            ("./b.png", UrlProblem::NotAbsolute),
            ("//example.com/a.png", UrlProblem::NotAbsolute),
            (
                "ftp://example.com/a.png",
                UrlProblem::UnsupportedScheme("ftp".into()),
            ),
            (
                "file:///etc/passwd",
                UrlProblem::UnsupportedScheme("file".into()),
            ),
            (
                "data:image/png;base64,AAAA",
                UrlProblem::UnsupportedScheme("data".into()),
            ),
            ("https://", UrlProblem::MissingHost),
            ("https:///path", UrlProblem::MissingHost),
            ("http://:80/", UrlProblem::MissingHost),
            ("http://[::1/", UrlProblem::MissingHost),
            ("http://host:/", UrlProblem::InvalidPort),
            ("http://host:0/", UrlProblem::InvalidPort),
            ("http://host:65536/", UrlProblem::InvalidPort),
            ("http://host:8o/", UrlProblem::InvalidPort),
            ("http://host/a b.png", UrlProblem::InvalidCharacter),
            (" http://host/", UrlProblem::InvalidCharacter),
            ("http://host/\n", UrlProblem::InvalidCharacter),
        ];
        for (url, problem) in bad {
            assert_eq!(check_url(url), Err(problem), "{url:?}");
        }
    }

    #[test]
    fn long_values_are_cut_in_messages() {
        let err = ValidationError::InvalidSize {
            value: "x".repeat(1000),
        };
        let message = err.to_string();
        assert!(message.len() < 300, "{message}");
        assert!(message.contains('…'));
    }
}
