//! The test kit (feature `test-util`): a scripted transport drives both clients through a
//! whole task, a refusal, a dropped connection and an unscripted request, with no network, and
//! records what they asked.

mod support;

use gptimage_transport::ErrorKind;
use gptimage_transport::test_util::{Endpoint, Scripted, TINY_PNG};
use gptimage_types::{GenerateRequest, Size};
use support::Driver;

both_clients!(
    a_scripted_task_runs_end_to_end_and_every_request_is_recorded,
    a_scripted_refusal_is_the_services_error_and_costs_one_request,
    a_dropped_submission_is_an_unknown_outcome_never_sent_again,
    a_dropped_status_is_asked_again,
    an_unscripted_request_says_what_to_script,
);

fn request() -> GenerateRequest {
    GenerateRequest::text_to_image("a fox in the snow")
        .size(Size::Landscape)
        .build()
        .unwrap()
}

fn a_scripted_task_runs_end_to_end_and_every_request_is_recorded<D: Driver>() {
    let script = Scripted::new()
        .created("task-7")
        .pending()
        .running()
        .succeeded(["https://cdn.test/a.png", "https://cdn.test/b.png"])
        .image("https://cdn.test/a.png", TINY_PNG)
        .image("https://cdn.test/b.png", TINY_PNG);
    let client = D::scripted(&script);
    let task = client.generate(&request()).unwrap();
    assert_eq!(task.task_id, "task-7");
    assert_eq!(task.images().len(), 2);
    let images = client.download(&task).unwrap();
    assert!(images.iter().all(|i| i.bytes == TINY_PNG));
    let sent = script.requests();
    let kinds: Vec<Endpoint> = sent.iter().map(|r| r.endpoint).collect();
    use Endpoint::*;
    assert_eq!(kinds, [Submit, Status, Status, Status, Download, Download]);
    assert_eq!(sent[0].json()["prompt"], "a fox in the snow");
    assert_eq!(sent[0].json()["size"], "1536*1024");
    assert!(
        sent[1..4]
            .iter()
            .all(|r| r.task_id.as_deref() == Some("task-7"))
    );
    assert_eq!(sent[4].url, "https://cdn.test/a.png");
}

fn a_scripted_refusal_is_the_services_error_and_costs_one_request<D: Driver>() {
    let script = Scripted::new().refused(402, "Insufficient credits");
    let error = D::scripted(&script).submit(&request()).unwrap_err();
    assert_eq!(error.http_status(), Some(402));
    assert_eq!(error.server_message(), Some("Insufficient credits"));
    assert_eq!(script.count(Endpoint::Submit), 1);
}

fn a_dropped_submission_is_an_unknown_outcome_never_sent_again<D: Driver>() {
    let script = Scripted::new()
        .dropped(Endpoint::Submit)
        .created("never-seen");
    let error = D::scripted(&script).submit(&request()).unwrap_err();
    assert_eq!(error.kind(), ErrorKind::OutcomeUnknown);
    assert_eq!(
        script.count(Endpoint::Submit),
        1,
        "never sent again blindly"
    );
}

fn a_dropped_status_is_asked_again<D: Driver>() {
    let script = Scripted::new()
        .dropped(Endpoint::Status)
        .succeeded(["https://cdn.test/a.png"]);
    let task = D::scripted(&script).wait("task-1").unwrap();
    assert_eq!(task.task_id, "task-1");
    assert_eq!(script.count(Endpoint::Status), 2);
}

fn an_unscripted_request_says_what_to_script<D: Driver>() {
    let script = Scripted::new();
    let error = D::scripted(&script).status("task-1").unwrap_err();
    let mut text = error.to_string();
    let mut source = std::error::Error::source(&error);
    while let Some(s) = source {
        text.push_str(&format!(": {s}"));
        source = s.source();
    }
    assert!(text.contains("Scripted::running"), "{text}");
}
