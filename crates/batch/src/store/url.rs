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
            StateUrl::Postgres(url) => verified(url),
        }
    }
}

/// The URL the driver connects to for the PostgreSQL state at `text`: for a server that is not
/// provably this machine, TLS with its certificate checked against the platform's roots (or
/// the CA file `sslrootcert` names) and its name against the URL's host (`sslmode=verify-full`),
/// whatever weaker mode the URL asks for (`prefer`, the driver's default, continues in plain text
/// with a server that declines TLS, and `require` checks no certificate: a server that merely
/// pretends would get the password). `sslmode=disable` to such a server is refused. A loopback
/// address, `localhost` (resolving to loopback only) and a Unix socket keep what the URL says.
fn verified(text: &str) -> Result<String, Error> {
    let mut url = url::Url::parse(text).map_err(|e| {
        Error::BadStateUrl(format!(
            "{} is not a PostgreSQL URL ({e}): use postgres://USER@HOST/DATABASE",
            redact(text)
        ))
    })?;
    if is_local(&url) {
        return Ok(text.to_owned());
    }
    let mode = url
        .query_pairs()
        .find(|(k, _)| k == "sslmode")
        .map(|(_, v)| v.to_ascii_lowercase());
    if mode.as_deref() == Some("disable") {
        return Err(Error::BadStateUrl(format!(
            "{}: sslmode=disable to {} would send the password, and every line's state, across \
             the network in the clear; the state connects with TLS and checks the server's \
             certificate and name (give a CA with sslrootcert=FILE if it is not the platform's), \
             or reach the server through a tunnel to this machine",
            redact(text),
            url.host_str().unwrap_or_default()
        )));
    }
    let kept: Vec<(String, String)> = url
        .query_pairs()
        .filter(|(k, _)| k != "sslmode")
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect();
    url.query_pairs_mut()
        .clear()
        .extend_pairs(kept)
        .append_pair("sslmode", "verify-full");
    Ok(url.into())
}

/// Whether the server the driver will reach is provably this machine: the address it connects
/// to, as the driver resolves it (a `hostaddr` parameter or `PGHOSTADDR` first; then the URL's
/// host, a `host` parameter, or `PGHOST`; else its default, a local socket), is a Unix socket
/// (a folder), a loopback address, or exactly `localhost` resolving to loopback only.
fn is_local(url: &url::Url) -> bool {
    let parameter = |name: &str| {
        url.query_pairs()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.into_owned())
    };
    let environment = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
    // The address connected to, whatever name the certificate is checked against.
    if let Some(address) = parameter("hostaddr").or_else(|| environment("PGHOSTADDR")) {
        return address
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback());
    }
    let host = match url.host() {
        Some(url::Host::Ipv4(ip)) => return ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => return ip.is_loopback(),
        Some(url::Host::Domain(name)) if !name.is_empty() => Some(name.to_owned()),
        _ => parameter("host").or_else(|| environment("PGHOST")),
    };
    let Some(host) = host else {
        // The driver's default: a socket of this machine's.
        return true;
    };
    // Several hosts (libpq's `h1,h2`): each must be local.
    host.split(',').all(|host| {
        use std::net::ToSocketAddrs;
        if host.starts_with('/') {
            return true;
        }
        // `postgres:` is not one of the URL standard's special schemes: its host comes as
        // text, addresses included.
        let bare = host.trim_start_matches('[').trim_end_matches(']');
        if let Ok(ip) = bare.parse::<std::net::IpAddr>() {
            return ip.is_loopback();
        }
        host.eq_ignore_ascii_case("localhost")
            && (host, 5432).to_socket_addrs().is_ok_and(|addrs| {
                let addrs: Vec<_> = addrs.collect();
                !addrs.is_empty() && addrs.iter().all(|a| a.ip().is_loopback())
            })
    })
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

/// A URL without its secrets: the one redaction (`gptimage::types::redact`).
fn redact(url: &str) -> String {
    gptimage::types::redact(url)
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
        // A password in any form: plain, with a `/` in it, as a parameter.
        for (url, shown) in [
            (
                "postgresql://u:p%40ss@h:5432/d?sslmode=require",
                "postgresql://u:***@h:5432/d?sslmode=require",
            ),
            ("postgres://u:pa/ss@h/d", "postgres://u:***@h/d"),
            (
                "postgres://u@h/d?password=p%40ss&sslmode=require",
                "postgres://u@h/d?password=***&sslmode=require",
            ),
        ] {
            let pg: StateUrl = url.parse().unwrap();
            assert_eq!(pg.to_string(), shown);
            assert!(!format!("{pg:?}").contains("ss@") && !format!("{pg:?}").contains("p%40"));
        }
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
    fn a_remote_server_is_always_verified_and_a_local_one_kept_as_given() {
        let connect = |text: &str| {
            text.parse::<StateUrl>()
                .unwrap()
                .connect_url(true)
                .map_err(|e| e.to_string())
        };
        for weak in [
            "",
            "?sslmode=prefer",
            "?sslmode=require",
            "?sslmode=verify-ca",
        ] {
            let url = connect(&format!("postgres://u:pw@db.example.com:5432/d{weak}")).unwrap();
            assert!(url.ends_with("sslmode=verify-full"), "{weak}: {url}");
            assert_eq!(url.matches("sslmode").count(), 1, "{url}");
        }
        let with_ca =
            connect("postgres://u@10.1.2.3/d?sslrootcert=/etc/ca.pem&sslmode=require").unwrap();
        assert_eq!(
            with_ca,
            "postgres://u@10.1.2.3/d?sslrootcert=%2Fetc%2Fca.pem&sslmode=verify-full"
        );
        let refused = connect("postgres://u:hunter2@db.example.com/d?sslmode=disable").unwrap_err();
        assert!(
            refused.contains("in the clear") && !refused.contains("hunter2"),
            "{refused}"
        );
        for local in [
            "postgres://u@127.0.0.1:5432/d",
            "postgres://u@[::1]/d?sslmode=disable",
            "postgres://u@localhost/d",
            "postgres:///d?host=/var/run/postgresql",
        ] {
            assert_eq!(connect(local).unwrap(), local);
        }
        // A name that looks local is not.
        assert!(
            connect("postgres://u@db.localhost/d")
                .unwrap()
                .ends_with("verify-full")
        );
        // Where the driver really connects decides (an outside review found these sent the
        // password in the clear): a `hostaddr` elsewhere, a `host` parameter naming a remote
        // server, or a name with a trailing dot.
        for remote in [
            "postgres://u:pw@localhost:5433/d?hostaddr=192.0.2.2",
            "postgres:///d?host=db.example.com",
            "postgres://u@localhost./d",
            "postgres:///d?host=/var/run/postgresql,db.example.com",
        ] {
            assert!(
                connect(remote).unwrap().ends_with("sslmode=verify-full"),
                "{remote}"
            );
        }
        assert_eq!(
            connect("postgres://u@localhost/d?hostaddr=127.0.0.1").unwrap(),
            "postgres://u@localhost/d?hostaddr=127.0.0.1"
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
