//! Everything the command prints passes through here: `say!` (stderr, for people) and `out!`
//! (stdout: files, JSON) write their text after the one redaction
//! (`gptimage::types::redact_with`), with the secrets this process knows: the API key, the
//! password of the batch's state URL, and the cloud credentials the environment gives the
//! image host. A server's words, a signed URL, a callback token: none reaches a terminal, a
//! log or a script's input. Tidy checks that no other part of the command prints.

use std::sync::OnceLock;

static SECRETS: OnceLock<Vec<String>> = OnceLock::new();

/// Names the secrets this process holds (the key, a state URL's password); called once, early.
/// The cloud credentials are taken from the environment here.
pub(crate) fn know(given: impl IntoIterator<Item = String>) {
    let from_environment = [
        "AWS_SECRET_ACCESS_KEY",
        "AWS_SESSION_TOKEN",
        "AZURE_STORAGE_ACCOUNT_KEY",
        "AZURE_STORAGE_ACCESS_KEY",
        "AZURE_STORAGE_MASTER_KEY",
        "AZURE_STORAGE_SAS_TOKEN",
        "PGPASSWORD",
        "GOOGLE_SERVICE_ACCOUNT_KEY",
        "GPTIMAGE_API_KEY",
    ]
    .into_iter()
    .filter_map(|name| std::env::var(name).ok());
    let secrets = given
        .into_iter()
        .chain(from_environment)
        .filter(|s| s.chars().count() >= 4)
        .collect();
    let _ = SECRETS.set(secrets);
}

/// `text` as it may be shown.
pub(crate) fn shown(text: &str) -> String {
    let secrets: Vec<&str> = SECRETS
        .get()
        .map(|s| s.iter().map(String::as_str).collect())
        .unwrap_or_default();
    gptimage::types::redact_with(text, &secrets)
}

/// Prints a `--json` report on stdout, redacted, with each stored object's `location` and the
/// signed URL the user asked for (`--sign-for`) set after the redaction: a location is a
/// bucket's URL without user, password or query (refused when the bucket is opened), which
/// the redaction would only mangle (a task id's long hex run); a signed URL is printed here
/// only, on stdout, in JSON.
pub(crate) fn out_json_with_objects(report: &serde_json::Value, objects: &[(&str, Option<&str>)]) {
    let redacted = shown(&report.to_string());
    let Ok(mut value) = serde_json::from_str::<serde_json::Value>(&redacted) else {
        #[allow(clippy::disallowed_macros)]
        {
            println!("{redacted}");
        }
        return;
    };
    if let Some(list) = value.get_mut("objects").and_then(|o| o.as_array_mut()) {
        for (object, (location, url)) in list.iter_mut().zip(objects) {
            object["location"] = serde_json::Value::from(*location);
            if let Some(url) = url {
                object["url"] = serde_json::Value::from(*url);
            }
        }
    }
    #[allow(clippy::disallowed_macros)]
    {
        println!("{value}");
    }
}

/// Prints a stored object's location on stdout (see [`out_json_with_objects`]).
pub(crate) fn out_location(location: &str) {
    #[allow(clippy::disallowed_macros)]
    {
        println!("{location}");
    }
}

/// Prints a line on stderr, redacted.
macro_rules! say {
    ($($arg:tt)*) => {{
        #[allow(clippy::disallowed_macros)]
        {
            eprintln!("{}", $crate::say::shown(&format!($($arg)*)))
        }
    }};
}
pub(crate) use say;

/// Prints a line on stdout, redacted.
macro_rules! out {
    ($($arg:tt)*) => {{
        #[allow(clippy::disallowed_macros)]
        {
            println!("{}", $crate::say::shown(&format!($($arg)*)))
        }
    }};
}
pub(crate) use out;

#[cfg(test)]
mod tests {
    #[test]
    fn known_secrets_and_secret_shapes_are_never_shown() {
        super::know(["hunter2-db-password".to_owned()]);
        let shown = super::shown(
            "state postgres://u:hunter2-db-password@db/x failed, and hunter2-db-password again; \
             https://b.s3/x.png?X-Amz-Signature=abc",
        );
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(!shown.contains("Signature"), "{shown}");
    }
}
