//! Where a batch's state is: a SQLite file or a PostgreSQL URL, parsed, shown without its
//! password, and turned into what the driver connects to.

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use crate::Error;

/// Where the state of a batch is kept: `sqlite:PATH` or `postgres://…`.
///
/// ```
/// use gptimage_batch::StateUrl;
///
/// let local: StateUrl = "sqlite:results/gptimage-batch.sqlite".parse().unwrap();
/// assert_eq!(local.to_string(), "sqlite:results/gptimage-batch.sqlite");
/// let shared: StateUrl = "postgres://batch:secret@db.internal/images".parse().unwrap();
/// assert_eq!(shared.to_string(), "postgres://batch:***@db.internal/images"); // never the password
/// assert!("mysql://x".parse::<StateUrl>().is_err());
/// ```
#[derive(Clone, PartialEq, Eq)]
pub enum StateUrl {
    /// A SQLite database file (created when missing).
    Sqlite(PathBuf),
    /// A PostgreSQL connection URL (`postgres://` or `postgresql://`).
    Postgres(String),
}

impl StateUrl {
    /// The default: `gptimage-batch.sqlite` in the output folder.
    pub fn in_folder(out: &Path) -> Self {
        StateUrl::Sqlite(out.join("gptimage-batch.sqlite"))
    }

    pub(super) fn connect_url(&self, create: bool) -> Result<String, Error> {
        match self {
            StateUrl::Sqlite(path) => {
                let text = path.to_str().ok_or_else(|| {
                    Error::BadStateUrl(format!(
                        "the SQLite path {} is not valid UTF-8",
                        path.display()
                    ))
                })?;
                let encoded = text
                    .replace('%', "%25")
                    .replace('?', "%3F")
                    .replace('#', "%23");
                let mode = if create { "rwc" } else { "rw" };
                Ok(format!("sqlite://{encoded}?mode={mode}"))
            }
            StateUrl::Postgres(url) => Ok(url.clone()),
        }
    }
}

impl FromStr for StateUrl {
    type Err = Error;

    fn from_str(text: &str) -> Result<Self, Error> {
        if let Some(path) = text
            .strip_prefix("sqlite://")
            .or_else(|| text.strip_prefix("sqlite:"))
        {
            if path.is_empty() || path.starts_with(":memory:") {
                return Err(Error::BadStateUrl(
                    "give a file after sqlite: (a batch's state must outlive the process)".into(),
                ));
            }
            return Ok(StateUrl::Sqlite(PathBuf::from(path)));
        }
        if text.starts_with("postgres://") || text.starts_with("postgresql://") {
            return Ok(StateUrl::Postgres(text.to_owned()));
        }
        Err(Error::BadStateUrl(format!(
            "{:?} is not a state URL: use sqlite:PATH or postgres://USER@HOST/DATABASE",
            redact(text)
        )))
    }
}

/// A URL with its password replaced by `***`.
fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let (authority, tail) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    match authority.rsplit_once('@') {
        Some((userinfo, host)) => match userinfo.split_once(':') {
            Some((user, _)) => format!("{scheme}://{user}:***@{host}{tail}"),
            None => url.to_owned(),
        },
        None => url.to_owned(),
    }
}

impl fmt::Display for StateUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StateUrl::Sqlite(path) => write!(f, "sqlite:{}", path.display()),
            StateUrl::Postgres(url) => f.write_str(&redact(url)),
        }
    }
}

impl fmt::Debug for StateUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "StateUrl({self})")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_parse_and_never_show_a_password() {
        assert_eq!(
            "sqlite:a/b.db".parse::<StateUrl>().unwrap(),
            StateUrl::Sqlite("a/b.db".into())
        );
        assert_eq!(
            "sqlite:///tmp/b.db".parse::<StateUrl>().unwrap(),
            StateUrl::Sqlite("/tmp/b.db".into())
        );
        assert!("sqlite::memory:".parse::<StateUrl>().is_err());
        assert!("sqlite:".parse::<StateUrl>().is_err());
        let pg: StateUrl = "postgresql://u:p%40ss@h:5432/d?sslmode=require"
            .parse()
            .unwrap();
        assert_eq!(
            pg.to_string(),
            "postgresql://u:***@h:5432/d?sslmode=require"
        );
        assert!(!format!("{pg:?}").contains("p%40ss"));
        let error = "redis://u:pw@h"
            .parse::<StateUrl>()
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("sqlite:PATH") && !error.contains("pw"),
            "{error}"
        );
    }

    #[test]
    fn sqlite_paths_with_url_characters_survive() {
        let url = StateUrl::Sqlite("dir with space/a?b#c%d.db".into());
        assert_eq!(
            url.connect_url(true).unwrap(),
            "sqlite://dir with space/a%3Fb%23c%25d.db?mode=rwc"
        );
    }
}
