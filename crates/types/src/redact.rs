//! Redaction: the one place that decides what of a secret may leave a program. Every string
//! the SDK, the batch crate and the command show (errors, `--json`, status pages, generated
//! HTML, logs, `Debug`) passes through [`redact`] or [`redact_with`], and so does every string
//! that came from a server (an envelope's message, a failed task's reason, an upload host's or
//! an HTTP library's error text), which may repeat what was sent.
//!
//! What is removed:
//!
//! - the password of a URL's user information (`postgres://batch:***@db/x`, `https://:***@h/`);
//! - the query and fragment of an `http(s)` URL, where signatures, credentials and tokens live
//!   (`https://bucket.s3/x.png?…`): a signed URL is a secret like the key;
//! - in other URLs (`postgres://…?sslmode=require&password=x`), the values of parameters whose
//!   names speak of a secret (password, secret, token, key, signature, credential);
//! - long runs of hex digits in a URL's path (a webhook callback's token:
//!   `https://hooks.example/cb/0123abcd…`);
//! - `password=VALUE` (and `secret=`, `signature=`, `sig=`, `token=`, `credential=`) outside
//!   URLs (a connection string's key-value form, a query cut off from its URL), the values of
//!   `"password"`, `"secret"`, `"api_key"`, `"signature"` and `"callback_url"` in JSON, and
//!   anything shaped like an API key (`sk-` and eight or more key characters);
//! - a URL's user name alone when it is long enough to be a token (`https://TOKEN@host`), runs
//!   of 32 hex digits or more in a path (dashes allowed: a UUID), a URL whose slashes JSON
//!   escaped (`https:\/\/…`), a host in brackets (IPv6);
//! - with [`redact_with`], each secret the caller names (the key, a database password, a cloud
//!   session token), wherever it appears.

/// `text` with every secret-shaped part removed (see the module's documentation).
///
/// ```
/// use gptimage_types::redact;
///
/// assert_eq!(
///     redact("GET https://bucket.s3.amazonaws.com/a.png?X-Amz-Signature=abc failed"),
///     "GET https://bucket.s3.amazonaws.com/a.png?… failed"
/// );
/// assert_eq!(
///     redact("postgres://batch:pa/ss@db.internal/images?sslmode=require&password=x"),
///     "postgres://batch:***@db.internal/images?sslmode=require&password=***"
/// );
/// assert_eq!(redact("Incorrect API key provided: sk-abc123def456"), "Incorrect API key provided: sk-***");
/// assert_eq!(redact("nothing to hide"), "nothing to hide");
/// ```
pub fn redact(text: &str) -> String {
    redact_with(text, &[])
}

/// Like [`redact`], and every occurrence of each of `secrets` (at least four characters each;
/// shorter ones are too likely to be ordinary text) replaced by `***`.
///
/// ```
/// use gptimage_types::redact_with;
///
/// let key = "my-custom-key-1234";
/// assert_eq!(redact_with("rejected key my-custom-key-1234", &[key]), "rejected key ***");
/// ```
pub fn redact_with(text: &str, secrets: &[&str]) -> String {
    // A URL inside JSON may have its slashes escaped (`https:\/\/host\/a.png?…`): read it as
    // the URL it is.
    let mut text = if text.contains(":\\/\\/") {
        text.replace("\\/", "/")
    } else {
        text.to_owned()
    };
    for secret in secrets.iter().filter(|s| s.chars().count() >= 4) {
        if text.contains(secret) {
            text = text.replace(secret, "***");
        }
    }
    let text = urls(&text);
    let text = key_values(&text);
    api_keys(&text)
}

/// Where a URL's text ends in prose: at white space, a quote, a bracket or a comma.
fn url_end(c: char) -> bool {
    c.is_whitespace()
        || matches!(
            c,
            '"' | '\'' | '<' | '>' | '(' | ')' | '[' | ']' | '{' | '}' | ',' | '`'
        )
}

/// Each URL in `text`, redacted.
fn urls(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find("://") {
        // The scheme: letters, digits, `+`, `-`, `.` before `://`, starting with a letter.
        let before = &rest[..at];
        let scheme_start = before
            .char_indices()
            .rev()
            .take_while(|(_, c)| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'))
            .last()
            .map_or(at, |(i, _)| i);
        let scheme_start = before[scheme_start..]
            .char_indices()
            .find(|(_, c)| c.is_ascii_alphabetic())
            .map_or(at, |(i, _)| scheme_start + i);
        let scheme = &rest[scheme_start..at];
        let tail = &rest[at + 3..];
        let end = url_extent(tail);
        out.push_str(&rest[..scheme_start]);
        if scheme.is_empty() {
            out.push_str("://");
            rest = tail;
            continue;
        }
        out.push_str(scheme);
        out.push_str("://");
        out.push_str(&url_after_scheme(scheme, &tail[..end]));
        rest = &tail[end..];
    }
    out.push_str(rest);
    out
}

/// How far a URL reaches into `tail` (what follows `scheme://`): its user information runs to
/// the last `@` before any white space whose text holds a `:` in its first segment (a password
/// may hold any character a person types: `/`, `{`, `"`…); a host in brackets (IPv6) is whole;
/// the rest ends where prose resumes.
fn url_extent(tail: &str) -> usize {
    let span = &tail[..tail.find(char::is_whitespace).unwrap_or(tail.len())];
    let mut start = 0;
    if let Some(at) = span.rfind('@') {
        let before = &span[..at];
        let first = before.split(['/', '?', '#']).next().unwrap_or_default();
        if before
            .split('/')
            .next()
            .is_some_and(|user| user.contains(':'))
            || first == before
        {
            start = at + 1;
        }
    }
    if span[start..].starts_with('[')
        && let Some(close) = span[start..].find(']')
    {
        start += close + 1;
    }
    start + span[start..].find(url_end).unwrap_or(span.len() - start)
}

/// What follows `scheme://`, redacted. User information ends at the last `@` before the query
/// whose text before it holds a `:` in its first segment: a password with a `/` in it (which
/// a URL should escape, and people write anyway) is still a password.
fn url_after_scheme(scheme: &str, url: &str) -> String {
    let before_query = url.find(['?', '#']).unwrap_or(url.len());
    let userinfo_end = url[..before_query].rfind('@').filter(|at| {
        url[..*at]
            .split('/')
            .next()
            .is_some_and(|user| user.contains(':'))
    });
    let authority_end = match userinfo_end {
        Some(at) => at + url[at..].find(['/', '?', '#']).unwrap_or(url.len() - at),
        None => url.find(['/', '?', '#']).unwrap_or(url.len()),
    };
    let (authority, rest) = url.split_at(authority_end);
    let authority = match authority.rsplit_once('@') {
        Some((userinfo, host)) => match userinfo.split_once(':') {
            Some((user, _)) => format!("{user}:***@{host}"),
            // A long name alone is a token (`https://TOKEN@host`).
            None if userinfo.chars().count() >= 12 => format!("***@{host}"),
            None => authority.to_owned(),
        },
        None => authority.to_owned(),
    };
    let (path, query) = match rest.find(['?', '#']) {
        Some(i) => rest.split_at(i),
        None => (rest, ""),
    };
    let path = long_hex_runs(path);
    let web = scheme.eq_ignore_ascii_case("http") || scheme.eq_ignore_ascii_case("https");
    let query = if query.is_empty() {
        String::new()
    } else if web {
        "?…".to_owned()
    } else {
        secret_parameters(query)
    };
    format!("{authority}{path}{query}")
}

/// Runs of 32 or more hex digits, dashes allowed between them (callback tokens, UUIDs,
/// signatures in a path), cut to their first 8 characters.
fn long_hex_runs(path: &str) -> String {
    let mut out = String::with_capacity(path.len());
    let mut run = String::new();
    let flush = |run: &mut String, out: &mut String| {
        if run.chars().filter(char::is_ascii_hexdigit).count() >= 32 {
            out.push_str(&run[..8]);
            out.push('…');
        } else {
            out.push_str(run);
        }
        run.clear();
    };
    for c in path.chars() {
        if c.is_ascii_hexdigit() || (c == '-' && !run.is_empty()) {
            run.push(c);
        } else {
            flush(&mut run, &mut out);
            out.push(c);
        }
    }
    flush(&mut run, &mut out);
    out
}

/// Whether a parameter's name speaks of a secret.
fn secret_name(name: &str) -> bool {
    let name = name.to_ascii_lowercase();
    [
        "password",
        "passwd",
        "secret",
        "token",
        "key",
        "sig",
        "credential",
        "auth",
    ]
    .iter()
    .any(|word| name.contains(word))
}

/// A query (`?…` or `#…`) with the values of its secret-named parameters replaced.
fn secret_parameters(query: &str) -> String {
    let (mark, pairs) = query.split_at(1);
    let pairs: Vec<String> = pairs
        .split('&')
        .map(|pair| match pair.split_once('=') {
            Some((name, _)) if secret_name(name) => format!("{name}=***"),
            _ => pair.to_owned(),
        })
        .collect();
    format!("{mark}{}", pairs.join("&"))
}

/// `password=VALUE` (and the like) outside URLs, and the same names' values in JSON.
fn key_values(text: &str) -> String {
    let lower = text.to_ascii_lowercase();
    let mut out = String::with_capacity(text.len());
    let (mut from, mut search) = (0, 0);
    // `name=value` (a connection string, a query outside a URL) and `"name":"value"` (JSON).
    // (Not `"token":` in JSON: a batch's outcome tokens are named so, and are no secret.)
    const WORDS: [&str; 13] = [
        "password=",
        "passwd=",
        "secret=",
        "signature=",
        "sig=",
        "token=",
        "credential=",
        "\"password\":\"",
        "\"passwd\":\"",
        "\"secret\":\"",
        "\"api_key\":\"",
        "\"callback_url\":\"",
        "\"signature\":\"",
    ];
    while let Some(found) = WORDS
        .iter()
        .filter_map(|w| lower[search..].find(w).map(|i| (search + i, w.len())))
        .min()
    {
        let (at, len) = found;
        let value_start = at + len;
        if text[value_start..].starts_with("***") {
            search = value_start + 3;
            continue;
        }
        let quoted = text[..value_start].ends_with('"');
        let value_end = text[value_start..]
            .find(|c: char| {
                if quoted {
                    c == '"'
                } else {
                    c.is_whitespace() || matches!(c, '&' | ';' | '"' | '\'' | ',')
                }
            })
            .map_or(text.len(), |i| value_start + i);
        out.push_str(&text[from..value_start]);
        out.push_str("***");
        from = value_end;
        search = value_end;
    }
    out.push_str(&text[from..]);
    out
}

/// Anything shaped like an API key: `sk-` and eight or more key characters.
fn api_keys(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find("sk-") {
        let boundary = rest[..at]
            .chars()
            .next_back()
            .is_none_or(|c| !c.is_ascii_alphanumeric());
        let body = &rest[at + 3..];
        let len = body
            .find(|c: char| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_')))
            .unwrap_or(body.len());
        out.push_str(&rest[..at]);
        if boundary && len >= 8 {
            out.push_str("sk-***");
        } else {
            out.push_str(&rest[at..at + 3 + len]);
        }
        rest = &body[len..];
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_of_secret_is_removed() {
        let cases = [
            (
                "https://b.s3.amazonaws.com/i.png?X-Amz-Credential=AKIA&X-Amz-Signature=f00",
                "https://b.s3.amazonaws.com/i.png?…",
            ),
            (
                "see http://u:p@h:80/x#frag and more",
                "see http://u:***@h:80/x?… and more",
            ),
            ("https://:only-a-password@h/", "https://:***@h/"),
            (
                "postgres://u:p%40ss/word@h:5432/d?sslmode=require",
                "postgres://u:***@h:5432/d?sslmode=require",
            ),
            (
                "postgresql://u@h/d?password=hunter2&sslmode=verify-full",
                "postgresql://u@h/d?password=***&sslmode=verify-full",
            ),
            (
                "callback https://hooks.example/cb/0123456789abcdef0123456789abcdef0123456789abcdef.",
                "callback https://hooks.example/cb/01234567….",
            ),
            (
                "host=db user=u password=hunter2 sslmode=require",
                "host=db user=u password=*** sslmode=require",
            ),
            ("key sk-proj-ABCDEFGH1234 refused", "key sk-*** refused"),
            ("(https://x/a?b=c)", "(https://x/a?…)"),
            ("task-sk-short and desk-top", "task-sk-short and desk-top"),
            ("s3://bucket/prefix/a.png", "s3://bucket/prefix/a.png"),
            ("no scheme://here", "no scheme://here"),
            ("ends with ://", "ends with ://"),
            ("é://x?y", "é://x?y"),
            // Found by an outside review:
            (
                "callback http://[::1]:8787/0123456789abcdef0123456789abcdef0123456789abcdef",
                "callback http://[::1]:8787/01234567…",
            ),
            (
                "http://[fd00::5]:9000/b/in.png?X-Amz-Signature=abc",
                "http://[fd00::5]:9000/b/in.png?…",
            ),
            (
                r#"{"images":["https:\/\/b.s3\/in.png?X-Amz-Signature=abc"]}"#,
                r#"{"images":["https://b.s3/in.png?…"]}"#,
            ),
            (
                "state postgres://u:pa{ss}word@127.0.0.1:1/d failed",
                "state postgres://u:***@127.0.0.1:1/d failed",
            ),
            (r#"postgres://u:pa"ss<w>ord@db/d"#, "postgres://u:***@db/d"),
            (
                "https://ghp_0123456789abcdefXYZ@github.com/o/r",
                "https://***@github.com/o/r",
            ),
            (
                "https://hooks.example/cb/550e8400-e29b-41d4-a716-446655440000 failed",
                "https://hooks.example/cb/550e8400… failed",
            ),
            ("mail me at https://h/p?x=a@b.c", "mail me at https://h/p?…"),
            ("ssh://git@github.com/o/r", "ssh://git@github.com/o/r"),
            (
                r#"{"token":"a1b2c3.1.1","prompt":"x"}"#,
                r#"{"token":"a1b2c3.1.1","prompt":"x"}"#,
            ),
            (r#"{"password":"hunter2"}"#, r#"{"password":"***"}"#),
        ];
        for (text, expected) in cases {
            assert_eq!(redact(text), expected, "{text}");
        }
    }

    #[test]
    fn named_secrets_go_wherever_they_are() {
        assert_eq!(
            redact_with(
                "the token IQoJb3JpZ2luX2VjEJr in a message",
                &["IQoJb3JpZ2luX2VjEJr"]
            ),
            "the token *** in a message"
        );
        assert_eq!(
            redact_with("abc", &["ab"]),
            "abc",
            "too short to be told from text"
        );
    }

    #[test]
    fn any_text_is_redacted_without_a_panic_and_twice_is_once() {
        let samples = [
            "://",
            "a://",
            "a://@",
            "x://u:@",
            "é://ü",
            "sk-",
            "password=",
            "http://[::1]:80/?",
            "https://h/é?x",
            "://://://",
            "\u{1F600}://x",
        ];
        for text in samples {
            let once = redact(text);
            assert_eq!(redact(&once), once, "{text}");
        }
    }
}
