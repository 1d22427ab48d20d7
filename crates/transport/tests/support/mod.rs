//! Support for the behavioural suite: one `Driver` trait over both clients, so every test is
//! written once and run through each; and a scripted loopback server that misbehaves on cue.

#![allow(dead_code, unreachable_pub)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use gptimage_transport::{
    CallOptions, ClientBuilder, Error, FromConfig, Image, ManyEvent, Pacing, PollSchedule,
    Progress, RetryPolicy, Stopper,
};
use gptimage_types::{CreatedTask, GenerateRequest, TaskInfo};

/// The settings a test gives a client, applied to either builder.
#[derive(Clone)]
pub struct Settings {
    pub base_url: String,
    pub key: String,
    pub request_timeout: Duration,
    pub retry: RetryPolicy,
    pub poll: PollSchedule,
    /// Leave the client's own poll schedule (and, with webhooks, its slow fallback) in place:
    /// `poll` is not applied.
    pub default_poll: bool,
    pub wait_timeout: Duration,
    pub max_download_bytes: u64,
    pub webhooks: Option<gptimage_transport::webhook::Receiver>,
    pub rate: Option<gptimage_transport::Rate>,
}

impl Settings {
    pub fn new(base_url: &str, key: &str) -> Self {
        Self {
            base_url: base_url.to_owned(),
            key: key.to_owned(),
            request_timeout: Duration::from_secs(10),
            retry: RetryPolicy::default()
                .backoff(Duration::from_millis(20), Duration::from_millis(100)),
            poll: PollSchedule::fixed(Duration::from_millis(20)),
            default_poll: false,
            wait_timeout: Duration::from_secs(20),
            max_download_bytes: 64 * 1024 * 1024,
            webhooks: None,
            rate: None,
        }
    }

    pub fn apply<C: FromConfig>(&self, builder: ClientBuilder<C>) -> ClientBuilder<C> {
        let builder = match &self.webhooks {
            Some(receiver) => builder.webhooks(receiver.clone()),
            None => builder,
        };
        let builder = match self.rate {
            Some(rate) => builder.rate_limit(rate),
            None => builder,
        };
        let builder = if self.default_poll {
            builder
        } else {
            builder.poll(self.poll)
        };
        builder
            .api_key(self.key.clone())
            .base_url(self.base_url.clone())
            .request_timeout(self.request_timeout)
            .retry(self.retry)
            .wait_timeout(self.wait_timeout)
            .max_download_bytes(self.max_download_bytes)
    }
}

/// What a test needs of a client; implemented by both.
pub trait Driver: Sized + Send + Sync + Clone + std::fmt::Debug + 'static {
    fn connect(settings: &Settings) -> Result<Self, Error>;
    /// A client over a scripted transport.
    fn scripted(script: &gptimage_transport::test_util::Scripted) -> Self;
    fn submit(&self, request: &GenerateRequest) -> Result<CreatedTask, Error>;
    fn status(&self, task_id: &str) -> Result<TaskInfo, Error>;
    fn wait(&self, task_id: &str) -> Result<TaskInfo, Error>;
    fn generate(&self, request: &GenerateRequest) -> Result<TaskInfo, Error>;
    fn download(&self, task: &TaskInfo) -> Result<Vec<Image>, Error>;
    fn download_to_dir(&self, task: &TaskInfo, dir: &Path) -> Result<Vec<PathBuf>, Error>;
    /// Every step of a watch, in order.
    fn watch(&self, task_id: &str) -> Vec<Result<TaskInfo, Error>>;
    /// `generate_with`: what it reported (`submitted ID`, `changed STATUS`), and its end.
    fn generate_with(&self, request: &GenerateRequest) -> (Vec<String>, Result<TaskInfo, Error>);
    /// `generate_many`'s events, in order; the stop is given once `stop_after` tasks were
    /// submitted.
    fn generate_many(
        &self,
        requests: Vec<GenerateRequest>,
        concurrency: usize,
        stop_after: Option<usize>,
    ) -> Vec<ManyEvent>;
    fn with_options(&self, options: &CallOptions) -> Result<Self, Error>;
    fn pacing(&self) -> Pacing;
}

fn reported(progress: Progress<'_>) -> String {
    match progress {
        Progress::Submitted(created) => format!("submitted {}", created.task_id),
        Progress::Changed(info) => format!("changed {}", info.status),
        other => format!("{other:?}"),
    }
}

/// Collects `generate_many`'s events, stopping once `stop_after` were submitted.
fn collect_many(
    mut next: impl FnMut() -> Option<ManyEvent>,
    stopper: Stopper,
    stop_after: Option<usize>,
) -> Vec<ManyEvent> {
    let mut events = Vec::new();
    let mut submitted = 0;
    while let Some(event) = next() {
        if matches!(event, ManyEvent::Submitted { .. }) {
            submitted += 1;
            if stop_after == Some(submitted) {
                stopper.stop();
            }
        }
        events.push(event);
    }
    events
}

/// The async client, driven from a synchronous test through a runtime of its own.
#[derive(Clone, Debug)]
pub struct Async {
    client: gptimage_transport::Client,
    runtime: Arc<tokio::runtime::Runtime>,
}

impl Async {
    fn block<T>(&self, future: impl std::future::Future<Output = T>) -> T {
        self.runtime.block_on(future)
    }
}

impl Driver for Async {
    fn connect(settings: &Settings) -> Result<Self, Error> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let client = settings
            .apply(gptimage_transport::Client::builder())
            .build()?;
        Ok(Self {
            client,
            runtime: Arc::new(runtime),
        })
    }
    fn scripted(script: &gptimage_transport::test_util::Scripted) -> Self {
        use gptimage_transport::test_util::Scripted;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let client = gptimage_transport::Client::with_transport(Scripted::config(), script.clone());
        Self {
            client,
            runtime: Arc::new(runtime),
        }
    }
    fn submit(&self, request: &GenerateRequest) -> Result<CreatedTask, Error> {
        self.block(self.client.submit(request))
    }
    fn status(&self, task_id: &str) -> Result<TaskInfo, Error> {
        self.block(self.client.status(task_id))
    }
    fn wait(&self, task_id: &str) -> Result<TaskInfo, Error> {
        self.block(self.client.wait(task_id))
    }
    fn generate(&self, request: &GenerateRequest) -> Result<TaskInfo, Error> {
        self.block(self.client.generate(request))
    }
    fn download(&self, task: &TaskInfo) -> Result<Vec<Image>, Error> {
        self.block(self.client.download(task))
    }
    fn download_to_dir(&self, task: &TaskInfo, dir: &Path) -> Result<Vec<PathBuf>, Error> {
        self.block(self.client.download_to_dir(task, dir))
    }
    fn watch(&self, task_id: &str) -> Vec<Result<TaskInfo, Error>> {
        let mut watch = self.client.watch(task_id);
        let mut steps = Vec::new();
        while let Some(step) = self.block(watch.next()) {
            steps.push(step);
        }
        steps
    }
    fn generate_with(&self, request: &GenerateRequest) -> (Vec<String>, Result<TaskInfo, Error>) {
        let mut seen = Vec::new();
        let end = self.block(
            self.client
                .generate_with(request, |p| seen.push(reported(p))),
        );
        (seen, end)
    }
    fn generate_many(
        &self,
        requests: Vec<GenerateRequest>,
        concurrency: usize,
        stop_after: Option<usize>,
    ) -> Vec<ManyEvent> {
        // `generate_many` spawns on the runtime; each `next` drives it again.
        let mut many = self.block(async { self.client.generate_many(requests, concurrency) });
        let stopper = many.stopper();
        collect_many(|| self.block(many.next()), stopper, stop_after)
    }
    fn with_options(&self, options: &CallOptions) -> Result<Self, Error> {
        Ok(Self {
            client: self.client.with_options(options)?,
            runtime: Arc::clone(&self.runtime),
        })
    }
    fn pacing(&self) -> Pacing {
        self.client.pacing()
    }
}

/// The blocking client.
#[derive(Clone, Debug)]
pub struct Blocking(gptimage_transport::blocking::Client);

impl Driver for Blocking {
    fn connect(settings: &Settings) -> Result<Self, Error> {
        Ok(Self(
            settings
                .apply(gptimage_transport::blocking::Client::builder())
                .build()?,
        ))
    }
    fn scripted(script: &gptimage_transport::test_util::Scripted) -> Self {
        use gptimage_transport::test_util::Scripted;
        Self(gptimage_transport::blocking::Client::with_transport(
            Scripted::config(),
            script.clone(),
        ))
    }
    fn submit(&self, request: &GenerateRequest) -> Result<CreatedTask, Error> {
        self.0.submit(request)
    }
    fn status(&self, task_id: &str) -> Result<TaskInfo, Error> {
        self.0.status(task_id)
    }
    fn wait(&self, task_id: &str) -> Result<TaskInfo, Error> {
        self.0.wait(task_id)
    }
    fn generate(&self, request: &GenerateRequest) -> Result<TaskInfo, Error> {
        self.0.generate(request)
    }
    fn download(&self, task: &TaskInfo) -> Result<Vec<Image>, Error> {
        self.0.download(task)
    }
    fn download_to_dir(&self, task: &TaskInfo, dir: &Path) -> Result<Vec<PathBuf>, Error> {
        self.0.download_to_dir(task, dir)
    }
    fn watch(&self, task_id: &str) -> Vec<Result<TaskInfo, Error>> {
        self.0.watch(task_id).collect()
    }
    fn generate_with(&self, request: &GenerateRequest) -> (Vec<String>, Result<TaskInfo, Error>) {
        let mut seen = Vec::new();
        let end = self.0.generate_with(request, |p| seen.push(reported(p)));
        (seen, end)
    }
    fn generate_many(
        &self,
        requests: Vec<GenerateRequest>,
        concurrency: usize,
        stop_after: Option<usize>,
    ) -> Vec<ManyEvent> {
        let mut many = self.0.generate_many(requests, concurrency);
        let stopper = many.stopper();
        collect_many(|| many.next(), stopper, stop_after)
    }
    fn with_options(&self, options: &CallOptions) -> Result<Self, Error> {
        Ok(Self(self.0.with_options(options)?))
    }
    fn pacing(&self) -> Pacing {
        self.0.pacing()
    }
}

/// Runs each named test function once per driver.
#[macro_export]
macro_rules! both_clients {
    ($($name:ident),+ $(,)?) => {
        mod async_client {
            $( #[test] fn $name() { super::$name::<super::support::Async>() } )+
        }
        mod blocking_client {
            $( #[test] fn $name() { super::$name::<super::support::Blocking>() } )+
        }
    };
}

/// What the scripted server does with one request.
#[derive(Clone, Debug)]
pub enum Reply {
    /// Answer with this status, these headers and this body.
    Http(u16, Vec<(String, String)>, Vec<u8>),
    /// Close the connection without answering.
    Close,
    /// Answer nothing for this long, then close.
    Hang(Duration),
}

impl Reply {
    pub fn json(status: u16, body: &str) -> Self {
        Self::Http(
            status,
            vec![("content-type".into(), "application/json".into())],
            body.as_bytes().to_vec(),
        )
    }

    pub fn with_header(self, name: &str, value: &str) -> Self {
        match self {
            Self::Http(s, mut h, b) => {
                h.push((name.into(), value.into()));
                Self::Http(s, h, b)
            }
            other => other,
        }
    }
}

/// A request the scripted server received: its head (request line and headers) and body.
#[derive(Clone, Debug)]
pub struct Received {
    pub head: String,
    pub body: Vec<u8>,
}

impl Received {
    pub fn header(&self, name: &str) -> Option<String> {
        self.head.lines().find_map(|line| {
            let (n, v) = line.split_once(':')?;
            n.trim()
                .eq_ignore_ascii_case(name)
                .then(|| v.trim().to_owned())
        })
    }
}

/// A loopback HTTP/1.1 server that answers each request with the next scripted reply (the last
/// one repeats), one request per connection, and records what it received.
pub struct Scripted {
    pub addr: SocketAddr,
    pub received: Arc<Mutex<Vec<Received>>>,
}

impl Scripted {
    pub fn start(replies: Vec<Reply>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let received = Arc::new(Mutex::new(Vec::new()));
        let log = received.clone();
        thread::spawn(move || {
            for (n, stream) in listener.incoming().take(1000).enumerate() {
                let Ok(stream) = stream else { continue };
                let reply = replies[n.min(replies.len() - 1)].clone();
                let log = log.clone();
                thread::spawn(move || serve(stream, reply, &log));
            }
        });
        Self { addr, received }
    }

    pub fn origin(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn base_url(&self) -> String {
        format!("http://{}/api", self.addr)
    }

    pub fn requests(&self) -> Vec<Received> {
        self.received.lock().unwrap().clone()
    }
}

fn serve(mut stream: TcpStream, reply: Reply, log: &Mutex<Vec<Received>>) {
    let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
    let mut data = Vec::new();
    let mut buf = [0u8; 8192];
    let head_end = loop {
        if let Some(end) = data.windows(4).position(|w| w == b"\r\n\r\n") {
            break end + 4;
        }
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => data.extend_from_slice(&buf[..n]),
        }
    };
    let head = String::from_utf8_lossy(&data[..head_end]).to_string();
    let length = head
        .lines()
        .find_map(|l| {
            let (n, v) = l.split_once(':')?;
            n.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse::<usize>().ok())?
        })
        .unwrap_or(0);
    while data.len() < head_end + length {
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => data.extend_from_slice(&buf[..n]),
        }
    }
    let body = data[head_end..].to_vec();
    log.lock().unwrap().push(Received { head, body });
    match reply {
        Reply::Close => {}
        Reply::Hang(d) => thread::sleep(d),
        Reply::Http(status, headers, body) => {
            let mut out = format!(
                "HTTP/1.1 {status} Scripted\r\ncontent-length: {}\r\nconnection: close\r\n",
                body.len()
            );
            for (n, v) in headers {
                out.push_str(&format!("{n}: {v}\r\n"));
            }
            out.push_str("\r\n");
            let _ = stream.write_all(out.as_bytes());
            let _ = stream.write_all(&body);
        }
    }
}

/// A small real PNG, for servers that must serve an image.
pub fn png(width: u32, height: u32) -> Vec<u8> {
    let image = image::RgbImage::from_pixel(width, height, image::Rgb([200, 40, 40]));
    let mut bytes = Vec::new();
    image
        .write_to(
            &mut std::io::Cursor::new(&mut bytes),
            image::ImageFormat::Png,
        )
        .unwrap();
    bytes
}
