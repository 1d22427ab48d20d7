//! Building requests: each API call as a plain `http::Request`, the key only to the API's origin.

use gptimage_types::GenerateRequest;
use http::Method;
use http::header::{self, HeaderValue};
use url::Url;

use crate::config::Config;
use crate::error::{Error, Result};
use crate::transport::{HttpRequest, SendOptions};

/// What a call does, which decides what may be retried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Op {
    /// `POST /generate`: not idempotent; it costs credits.
    Submit,
    /// `GET /status`: safe to repeat.
    Status,
    /// `GET` of a result image: safe to repeat; never carries the key.
    Download,
}

/// One API call, ready to be turned into an HTTP request for each attempt.
#[derive(Debug, Clone)]
pub(crate) struct Call {
    pub(crate) op: Op,
    method: Method,
    pub(crate) url: Url,
    /// Whether the call goes to the API's origin, and so carries the key.
    to_api: bool,
    body: Vec<u8>,
    /// The task a status call asks about.
    pub(crate) task_id: Option<String>,
}

impl Call {
    /// `POST {base}/generate` with the request's documented JSON, and `callback`, a URL this
    /// client issued, as its `callback_url` when the request names none.
    pub(crate) fn submit(
        config: &Config,
        request: &GenerateRequest,
        callback: Option<&str>,
    ) -> Self {
        let url = config.base.generate.clone();
        // A request always serializes; were it ever not to, the body would be one the API
        // refuses (no task), never a panic.
        let mut value = serde_json::to_value(request).unwrap_or_default();
        if let Some(callback) = callback.filter(|_| request.callback_url().is_none())
            && let Some(fields) = value.as_object_mut()
        {
            fields.insert("callback_url".to_owned(), serde_json::Value::from(callback));
        }
        let body = serde_json::to_vec(&value).unwrap_or_default();
        Self {
            op: Op::Submit,
            method: Method::POST,
            url,
            to_api: true,
            body,
            task_id: None,
        }
    }

    /// `GET {base}/status?task_id=…`.
    pub(crate) fn status(config: &Config, task_id: &str) -> Result<Self> {
        check_task_id(task_id)?;
        let mut url = config.base.status.clone();
        url.query_pairs_mut().append_pair("task_id", task_id);
        Ok(Self {
            op: Op::Status,
            method: Method::GET,
            url,
            to_api: true,
            body: Vec::new(),
            task_id: Some(task_id.to_owned()),
        })
    }

    /// `GET` of a result image URL (the task's, or a redirect's `Location`: the server's
    /// words, so anything an HTTP request line cannot carry is refused here, never later).
    pub(crate) fn download(url: &str) -> Result<Self> {
        let parsed = Url::parse(url)
            .ok()
            .filter(|u| matches!(u.scheme(), "http" | "https") && u.host().is_some())
            .filter(|u| http::Uri::try_from(u.as_str()).is_ok())
            .ok_or_else(|| {
                Error::download(
                    format!("the image URL {url:?} is not an absolute http(s) URL"),
                    None,
                )
            })?;
        if parsed.scheme() == "https" && !crate::tls::AVAILABLE {
            return Err(Error::download(
                format!("cannot download {url}: {}", crate::tls::MISSING),
                None,
            ));
        }
        Ok(Self {
            op: Op::Download,
            method: Method::GET,
            url: parsed,
            to_api: false,
            body: Vec::new(),
            task_id: None,
        })
    }

    /// The HTTP request of one attempt. Only API calls carry the key, and only to the API's
    /// origin (which they always go to, as their URL is built from the base URL). The parsed URL
    /// rides along, so a transport whose stack wants one need not parse the URI again.
    pub(crate) fn to_http(&self, config: &Config) -> HttpRequest {
        let mut request = http::Request::new(self.body.clone());
        *request.method_mut() = self.method.clone();
        // Every URL a call is made with was checked to be a URI (`download`, the base URL);
        // were one not, the request would go nowhere (a relative URI no transport sends).
        *request.uri_mut() = http::Uri::try_from(self.url.as_str()).unwrap_or_default();
        request.extensions_mut().insert(ParsedUrl(self.url.clone()));
        let headers = request.headers_mut();
        if let Some(agent) = &config.agent_header {
            headers.insert(header::USER_AGENT, agent.clone());
        }
        if self.to_api {
            headers.insert(header::AUTHORIZATION, config.auth_header.clone());
            headers.insert(header::ACCEPT, HeaderValue::from_static("application/json"));
        }
        if self.method == Method::POST {
            headers.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
        }
        request
    }

    /// The limits of one attempt that may take at most `timeout`.
    pub(crate) fn options(&self, config: &Config, timeout: std::time::Duration) -> SendOptions {
        let max = match self.op {
            Op::Download => config.max_download_bytes,
            _ => config.max_response_bytes,
        };
        SendOptions::new(timeout, max)
    }

    /// Where the call goes, for messages: the origin, never the query.
    pub(crate) fn destination(&self) -> String {
        self.url.origin().ascii_serialization()
    }

    /// The full URL (for downloads, whose URL is not secret to the caller).
    pub(crate) fn url(&self) -> &str {
        self.url.as_str()
    }
}

/// The URL a request was built from, carried in its extensions.
#[derive(Debug, Clone)]
pub(crate) struct ParsedUrl(pub(crate) Url);

impl ParsedUrl {
    /// Takes the URL out of `parts`, if it is still the one its URI says (a transport wrapped
    /// around another may have changed the URI, and then the URI wins).
    #[cfg_attr(not(feature = "async"), allow(dead_code))]
    pub(crate) fn take(parts: &mut http::request::Parts) -> Option<Url> {
        let Self(url) = parts.extensions.remove::<Self>()?;
        let uri = &parts.uri;
        let same = uri.scheme_str() == Some(url.scheme())
            && uri.authority().map(|a| a.as_str())
                == Some(&url[url::Position::BeforeUsername..url::Position::AfterPort])
            && uri.path_and_query().map(|p| p.as_str())
                == Some(&url[url::Position::BeforePath..url::Position::AfterQuery]);
        same.then_some(url)
    }
}

fn check_task_id(task_id: &str) -> Result<()> {
    let trimmed = task_id.trim();
    if trimmed.is_empty() || trimmed.len() > 256 || trimmed.chars().any(char::is_control) {
        return Err(Error::invalid_request(format!(
            "the task id {:?} is not one the API gives: expected a short non-empty string",
            task_id.chars().take(40).collect::<String>()
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::tests::config;
    use crate::error::ErrorKind;

    #[test]
    fn the_submission_request_is_exactly_the_documented_one() {
        let config = config();
        let request = GenerateRequest::text_to_image("a cat").build().unwrap();
        let request = Call::submit(&config, &request, None).to_http(&config);
        assert_eq!(request.method(), Method::POST);
        assert_eq!(request.uri(), "https://api.example/api/generate");
        assert_eq!(request.headers()["authorization"], "Bearer sk-secret-key");
        assert!(request.headers()["authorization"].is_sensitive());
        assert_eq!(request.headers()["content-type"], "application/json");
        assert_eq!(request.body(), br#"{"prompt":"a cat"}"#);
    }

    #[test]
    fn status_ids_are_encoded_and_checked() {
        let config = config();
        let call = Call::status(&config, "n36 abc&x=1").unwrap();
        assert_eq!(
            call.to_http(&config).uri(),
            "https://api.example/api/status?task_id=n36+abc%26x%3D1"
        );
        for bad in ["", "  ", "a\nb"] {
            let err = Call::status(&config, bad).unwrap_err();
            assert_eq!(err.kind(), ErrorKind::InvalidRequest);
        }
    }

    #[test]
    fn the_parsed_url_rides_along_only_while_the_uri_agrees() {
        let config = config();
        let call = Call::status(&config, "t 1").unwrap();
        let (mut parts, _) = call.to_http(&config).into_parts();
        assert_eq!(ParsedUrl::take(&mut parts), Some(call.url.clone()));
        // Taken once: a second look finds nothing.
        assert_eq!(ParsedUrl::take(&mut parts), None);

        // A transport wrapped around another changed the URI: the URI wins.
        for changed in [
            "https://api.example/api/status?task_id=other",
            "https://elsewhere.example/api/status?task_id=t+1",
            "http://api.example/api/status?task_id=t+1",
        ] {
            let (mut parts, _) = call.to_http(&config).into_parts();
            parts.uri = changed.parse().unwrap();
            assert_eq!(ParsedUrl::take(&mut parts), None, "{changed}");
        }
    }

    #[test]
    fn downloads_never_carry_the_key() {
        let config = config();
        for url in [
            "https://cdn.example/a.png",
            "https://api.example/files/a.png",
        ] {
            let request = Call::download(url).unwrap().to_http(&config);
            assert!(request.headers().get("authorization").is_none(), "{url}");
        }
        assert!(Call::download("file:///etc/passwd").is_err());
        assert!(Call::download("/relative.png").is_err());
    }
}
