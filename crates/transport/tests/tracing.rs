//! With the `tracing` feature, each request and each wait opens a span, and no span records the
//! API key.
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
