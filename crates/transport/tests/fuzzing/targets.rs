//! The fuzz targets: what a peer or a server sends, fed to the code that reads it. Each takes
//! any bytes and must neither panic nor break its invariant. They are shared by the bounded run
//! in the test suite (`tests/fuzz.rs`) and by cargo-fuzz (`fuzz/` at the workspace's root), and
//! each has a corpus in `fuzz/corpus/<target>/`.

#![allow(dead_code, unreachable_pub)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::OnceLock;
use std::time::Duration;

use gptimage_transport::blocking::Client;
use gptimage_transport::transport::{HttpRequest, HttpResponse, SendOptions, TransportError};
use gptimage_transport::webhook::{Listener, Receiver};
use gptimage_transport::{PollSchedule, RetryPolicy};
use gptimage_types::{CreatedTask, Envelope, GenerateRequest, TaskInfo, TaskStatus};

/// A fuzz target: any bytes in, nothing out; a panic is a finding.
pub type Target = fn(&[u8]);

/// The targets by name, as their corpus folders are named.
pub const TARGETS: &[(&str, Target)] = &[
    ("webhook_request", webhook_request),
    ("api_answer", api_answer),
    ("status_document", status_document),
    ("listener_stream", listener_stream),
];

/// Reads an input as a sequence of parts.
struct Input<'a>(&'a [u8]);

impl<'a> Input<'a> {
    fn byte(&mut self) -> u8 {
        let (first, rest) = self.0.split_first().map_or((0, &[][..]), |(f, r)| (*f, r));
        self.0 = rest;
        first
    }

    /// A part: its length (one byte, or two after a 255), then its bytes.
    fn part(&mut self) -> &'a [u8] {
        let mut len = usize::from(self.byte());
        if len == 255 {
            len = usize::from(u16::from_le_bytes([self.byte(), self.byte()]));
        }
        let (part, rest) = self.0.split_at(len.min(self.0.len()));
        self.0 = rest;
        part
    }

    fn rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.0)
    }
}

/// One receiver with one genuine token, for every input.
fn receiver() -> &'static (Receiver, String) {
    static RECEIVER: OnceLock<(Receiver, String)> = OnceLock::new();
    RECEIVER.get_or_init(|| {
        let receiver = Receiver::new("http://127.0.0.1:9/hooks/").unwrap();
        let path = genuine_path(&receiver);
        (receiver, path)
    })
}

/// A genuine callback path of `receiver`: a submission through a client whose transport
/// answers at once, and the callback URL it carried.
fn genuine_path(receiver: &Receiver) -> String {
    let sent = std::sync::Arc::new(std::sync::Mutex::new(None::<String>));
    let seen = std::sync::Arc::clone(&sent);
    let transport = move |request: HttpRequest, _: SendOptions| {
        let body: serde_json::Value = serde_json::from_slice(request.body()).unwrap_or_default();
        if let Some(url) = body["callback_url"].as_str() {
            *seen.lock().unwrap() = Some(url.to_owned());
        }
        let created = br#"{"code":200,"data":{"task_id":"t1","status":"IN_PROGRESS"}}"#;
        Ok::<_, TransportError>(HttpResponse::new(created.to_vec()))
    };
    let config = Client::builder()
        .api_key("sk-fuzz")
        .base_url("http://127.0.0.1:9/api")
        .webhooks(receiver.clone())
        .config()
        .unwrap();
    let client = Client::with_transport(config, transport);
    client
        .submit(&GenerateRequest::text_to_image("a fox").build().unwrap())
        .unwrap();
    let url = sent.lock().unwrap().clone().unwrap();
    url.strip_prefix("http://127.0.0.1:9").unwrap().to_owned()
}

/// [`Receiver::handle`] and [`Receiver::refusal`] over any method, path, headers and body. Only
/// a POST to the genuine path (hex digits in either case) with a small body may be accepted.
pub fn webhook_request(data: &[u8]) {
    let (receiver, genuine) = receiver();
    let mut input = Input(data);
    let methods = ["POST", "GET", "PUT", "post", "OPTIONS", "CONNECT"];
    let choice = input.byte();
    let method = match methods.get(usize::from(choice % 8)) {
        Some(method) => http::Method::from_bytes(method.as_bytes()),
        None => http::Method::from_bytes(input.part()),
    };
    let Ok(method) = method else { return };
    // The path: made up, or the genuine one with some bytes changed.
    let mut path = if input.byte() % 2 == 0 {
        input.part().to_vec()
    } else {
        let mut path = genuine.as_bytes().to_vec();
        for _ in 0..input.byte() % 4 {
            let at = usize::from(input.byte()) % path.len();
            path[at] = input.byte();
        }
        path
    };
    if path.is_empty() {
        path.push(b'/');
    }
    let mut request = http::Request::builder().method(method).uri(path.as_slice());
    for _ in 0..input.byte() % 6 {
        let (name, value) = (input.part(), input.part());
        if let (Ok(name), Ok(value)) = (
            http::HeaderName::from_bytes(name),
            http::HeaderValue::from_bytes(value),
        ) {
            request = request.header(name, value);
        }
    }
    let Ok(request) = request.body(input.rest().to_vec()) else {
        return;
    };
    let refused = receiver.refusal(&request).is_some();
    let lowered = request.uri().path().to_ascii_lowercase();
    let response = receiver.handle(request);
    if response.status() == 200 {
        assert!(!refused, "refused on its head, accepted whole");
        assert_eq!(
            lowered, *genuine,
            "accepted a path that is not the genuine one"
        );
    }
    assert!(
        response.status() == 200 || response.status().is_client_error(),
        "{}",
        response.status()
    );
}

/// The answer the shared client of [`api_answer`] gets next (its transport reads it here).
static ANSWER: std::sync::Mutex<Option<Answer>> = std::sync::Mutex::new(None);

/// An answer: status, headers, body.
type Answer = (u16, Vec<(Vec<u8>, Vec<u8>)>, Vec<u8>);

/// One client for every input, paced (a configured rate), so the pacer's learning carries from
/// input to input as it does from answer to answer; its transport answers what the current
/// input says.
fn paced_client() -> &'static Client {
    static CLIENT: OnceLock<Client> = OnceLock::new();
    CLIENT.get_or_init(|| {
        let config = Client::builder()
            .api_key("sk-fuzz")
            .base_url("http://127.0.0.1:9/api")
            .rate_limit(gptimage_transport::Rate::new(1000, Duration::from_secs(1)))
            .retry(
                RetryPolicy::default()
                    .max_retries(1)
                    .max_rate_limited(1)
                    .backoff(Duration::from_millis(1), Duration::from_millis(1))
                    .max_retry_after(Duration::from_millis(1)),
            )
            .poll(PollSchedule::fixed(Duration::from_millis(1)))
            .wait_timeout(Duration::from_millis(5))
            .config()
            .unwrap();
        Client::with_transport(config, |_: HttpRequest, _: SendOptions| {
            let answer = ANSWER.lock().unwrap_or_else(|e| e.into_inner()).clone();
            let (status, headers, body) = answer.unwrap_or((200, Vec::new(), Vec::new()));
            respond(status, &headers, body)
        })
    })
}

/// An answer as the transport gives it: an invalid status is what a broken server would send,
/// and the transport's error then.
fn respond(
    status: u16,
    headers: &[(Vec<u8>, Vec<u8>)],
    body: Vec<u8>,
) -> Result<HttpResponse, TransportError> {
    let mut response = http::Response::builder().status(status);
    for (name, value) in headers {
        if let (Ok(name), Ok(value)) = (
            http::HeaderName::from_bytes(name),
            http::HeaderValue::from_bytes(value),
        ) {
            response = response.header(name, value);
        }
    }
    response.body(body).map_err(|_| {
        TransportError::new(
            gptimage_transport::transport::TransportErrorKind::Other,
            gptimage_transport::transport::RequestSent::Maybe,
            "an invalid status",
        )
    })
}

/// A client's every read of the API's answers (status, headers such as `Retry-After`, `Date`,
/// `Location` and `Content-Type`, body) through each call a client makes: status, submission
/// (with its pacer, whose learning carries across inputs), wait and download. A client with no
/// real time to spend: every pause is bounded to milliseconds.
pub fn api_answer(data: &[u8]) {
    let mut input = Input(data);
    let status = u16::from_le_bytes([input.byte(), input.byte()]);
    let mut headers = Vec::new();
    for _ in 0..input.byte() % 6 {
        let names = [
            "retry-after",
            "date",
            "location",
            "content-type",
            "content-length",
        ];
        let pick = input.byte();
        let name = match names.get(usize::from(pick % 8)) {
            Some(name) => name.as_bytes().to_vec(),
            None => input.part().to_vec(),
        };
        headers.push((name, input.part().to_vec()));
    }
    let body = input.rest().to_vec();
    *ANSWER.lock().unwrap_or_else(|e| e.into_inner()) = Some((status, headers, body));
    let client = paced_client();
    let _ = client.status("t1");
    let _ = client.submit(&GenerateRequest::text_to_image("a fox").build().unwrap());
    let _ = client.wait("t1");
    let mut task = TaskInfo::new("t1", TaskStatus::Success);
    task.response = Some(vec!["http://127.0.0.1:9/image.png".to_owned()]);
    let _ = client.download(&task);
}

/// The documents the service sends, read as every shape the client accepts: the envelope of a
/// status and of a created task, and a webhook's body. Reading never panics, and what is read
/// serializes again.
pub fn status_document(data: &[u8]) {
    if let Ok(envelope) = serde_json::from_slice::<Envelope<TaskInfo>>(data) {
        let _ = serde_json::to_vec(&envelope);
    }
    if let Ok(envelope) = serde_json::from_slice::<Envelope<CreatedTask>>(data) {
        let _ = serde_json::to_vec(&envelope);
    }
    if let Ok(info) = gptimage_types::parse_webhook(data) {
        let _ = serde_json::to_vec(&info);
        let _ = info.images();
    }
}

/// The built-in listener over any byte stream, sent in pieces (a 0xFE byte splits the input
/// into writes): it answers or closes, and goes on serving. `/hooks/TOKEN` in the input stands
/// for the genuine callback path (whose token is random in each process), so genuine requests,
/// their bodies and keep-alive are fuzzed too. A panic on its thread aborts under cargo-fuzz,
/// and fails the bounded run (which counts them).
pub fn listener_stream(data: &[u8]) {
    let addr = listener();
    let genuine = receiver().1.as_bytes();
    let placeholder = b"/hooks/TOKEN";
    let mut bytes = Vec::with_capacity(data.len() + 64);
    let mut rest = data;
    while let Some(at) = rest
        .windows(placeholder.len())
        .position(|w| w == placeholder)
    {
        bytes.extend_from_slice(&rest[..at]);
        bytes.extend_from_slice(genuine);
        rest = &rest[at + placeholder.len()..];
    }
    bytes.extend_from_slice(rest);
    let data = bytes.as_slice();
    let Ok(mut stream) = TcpStream::connect(addr) else {
        return;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
    let _ = stream.set_nodelay(true);
    for piece in data.split(|b| *b == 0xFE) {
        if stream.write_all(piece).is_err() {
            break;
        }
    }
    let _ = stream.shutdown(std::net::Shutdown::Write);
    let mut answer = Vec::new();
    let _ = stream.take(1 << 20).read_to_end(&mut answer);
}

fn listener() -> SocketAddr {
    static LISTENER: OnceLock<Listener> = OnceLock::new();
    LISTENER
        .get_or_init(|| {
            let options = gptimage_transport::webhook::ListenOptions::new()
                .read_timeout(Duration::from_millis(300))
                .write_timeout(Duration::from_millis(300));
            receiver().0.listen_with("127.0.0.1:0", &options).unwrap()
        })
        .local_addr()
}
