//! With the `tracing` feature, each request and each wait opens a span; retries, the service's
//! pushbacks, status changes, webhook hints and deadlines are events; none records the API key.
#![cfg(all(feature = "tracing", feature = "blocking"))]

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use gptimage_emulator::{Config, Emulator};
use gptimage_transport::blocking::Client;
use gptimage_types::GenerateRequest;
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Metadata, Subscriber};

/// Records every span's name and fields as text.
#[derive(Clone, Default)]
struct Recorder {
    spans: Arc<Mutex<Vec<String>>>,
    next: Arc<AtomicU64>,
}

struct Text<'a>(&'a mut String);

impl Visit for Text<'_> {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        let _ = write!(self.0, " {}={value:?}", field.name());
    }
}

impl Subscriber for Recorder {
    fn enabled(&self, _: &Metadata<'_>) -> bool {
        true
    }
    fn new_span(&self, span: &Attributes<'_>) -> Id {
        let mut text = span.metadata().name().to_owned();
        span.record(&mut Text(&mut text));
        let _ = write!(text, " @{}", span.metadata().target());
        self.spans.lock().unwrap().push(text);
        Id::from_u64(self.next.fetch_add(1, Ordering::Relaxed) + 1)
    }
    fn record(&self, _: &Id, values: &Record<'_>) {
        let mut text = String::new();
        values.record(&mut Text(&mut text));
        self.spans.lock().unwrap().push(text);
    }
    fn record_follows_from(&self, _: &Id, _: &Id) {}
    fn event(&self, event: &Event<'_>) {
        let mut text = String::from("event");
        event.record(&mut Text(&mut text));
        let meta = event.metadata();
        let _ = write!(text, " @{} {}", meta.target(), meta.level());
        self.spans.lock().unwrap().push(text);
    }
    fn enter(&self, _: &Id) {}
    fn exit(&self, _: &Id) {}
}

#[test]
fn requests_and_waits_have_spans_without_the_key() {
    let emulator = Emulator::spawn(Config::instant()).unwrap();
    let client = Client::builder()
        .api_key(emulator.api_key())
        .base_url(emulator.base_url())
        .build()
        .unwrap();
    let recorder = Recorder::default();
    tracing::subscriber::with_default(recorder.clone(), || {
        client
            .generate(&GenerateRequest::text_to_image("traced").build().unwrap())
            .unwrap();
    });
    let spans = recorder.spans.lock().unwrap().join("\n");
    assert!(spans.contains("gptimage.request op=Submit"), "{spans}");
    assert!(spans.contains("gptimage.request op=Status"), "{spans}");
    assert!(spans.contains("gptimage.wait task_id="), "{spans}");
    assert!(
        !spans.contains(emulator.api_key()),
        "the key was recorded: {spans}"
    );
}

#[test]
fn retries_pushbacks_changes_and_deadlines_are_events_without_the_key() {
    use gptimage_emulator::{Endpoint, Fault, FaultKind};
    use gptimage_transport::{CallOptions, PollSchedule, Rate, RetryPolicy};
    use std::time::Duration;

    let emulator = Emulator::spawn(
        Config::instant()
            .with_timings(Duration::from_millis(300), Duration::from_millis(300))
            .with_fault(
                Fault::new(FaultKind::ServerError)
                    .on(Endpoint::Status)
                    .times(1),
            )
            .with_bare_rate_limit(2, Duration::from_secs(30)),
    )
    .unwrap();
    let client = Client::builder()
        .api_key(emulator.api_key())
        .base_url(emulator.base_url())
        .poll(PollSchedule::fixed(Duration::from_millis(100)))
        .retry(
            RetryPolicy::default()
                .backoff(Duration::from_millis(10), Duration::from_millis(20))
                .max_rate_limited(0),
        )
        .rate_limit(Rate::new(20, Duration::from_secs(1)))
        .build()
        .unwrap();
    let recorder = Recorder::default();
    tracing::subscriber::with_default(recorder.clone(), || {
        let request = |p: &str| GenerateRequest::text_to_image(p).build().unwrap();
        // A status answered 500 once (a retry), then the changes to the end.
        client.generate(&request("traced")).unwrap();
        // A task whose wait passes its deadline.
        let task = client.submit(&request("slow")).unwrap();
        let impatient = client
            .with_options(&CallOptions::new().wait_timeout(Duration::from_millis(150)))
            .unwrap();
        assert!(impatient.wait(&task.task_id).is_err());
        // A third submission inside the window: the service pushes back.
        assert!(client.submit(&request("one too many")).is_err());
    });
    let events = recorder.spans.lock().unwrap().join("\n");
    let has = |needle: &str| {
        events
            .lines()
            .any(|l| l.starts_with("event") && l.contains(needle))
    };
    assert!(
        has("retrying") && has("attempt=1") && has("op=Status"),
        "{events}"
    );
    assert!(has("delay_ms="), "{events}");
    assert!(has("status changed") && has("status=PENDING"), "{events}");
    assert!(
        has("status=IN_PROGRESS") && has("status=SUCCESS"),
        "{events}"
    );
    assert!(has("task_id="), "{events}");
    assert!(has("deadline passed"), "{events}");
    assert!(has("pushed back") && has("pushbacks=1"), "{events}");
    assert!(!events.contains(emulator.api_key()), "the key was recorded");
    // The two lines an operator reconciles charges with, and one target for everything.
    let line = |needle: &str| {
        events
            .lines()
            .find(|l| l.starts_with("event") && l.contains(needle))
            .unwrap_or_default()
            .to_owned()
    };
    assert!(line("task created").ends_with("@gptimage INFO"), "{events}");
    assert!(
        line("status changed").ends_with("@gptimage DEBUG"),
        "{events}"
    );
    assert!(
        events
            .lines()
            .filter(|l| !l.trim().is_empty() && l.contains('@'))
            .all(|l| l.contains("@gptimage")),
        "every span and event has the target gptimage: {events}"
    );
}

#[test]
fn a_webhook_hint_is_an_event() {
    use gptimage_transport::webhook::Receiver;
    use std::time::Duration;

    let emulator =
        Emulator::spawn(Config::instant().with_timings(Duration::ZERO, Duration::from_millis(300)))
            .unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let receiver = Receiver::new(&format!("http://127.0.0.1:{port}/hooks/")).unwrap();
    let _listener = receiver.listen(("127.0.0.1", port)).unwrap();
    let client = Client::builder()
        .api_key(emulator.api_key())
        .base_url(emulator.base_url())
        .webhooks(receiver)
        .build()
        .unwrap();
    let recorder = Recorder::default();
    tracing::subscriber::with_default(recorder.clone(), || {
        client
            .generate(&GenerateRequest::text_to_image("hinted").build().unwrap())
            .unwrap();
    });
    let events = recorder.spans.lock().unwrap().join("\n");
    assert!(events.contains("webhook hint"), "{events}");
}
