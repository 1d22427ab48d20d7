//! What `Debug` shows of the public types: never a signed URL's query, a callback's token or a
//! password, while `Serialize` still sends the request whole (the API needs it).

use gptimage_types::{GenerateRequest, RawGenerateRequest, TaskInfo};

const SIGNED: &str =
    "https://bucket.s3.amazonaws.com/in.png?X-Amz-Signature=deadbeef&X-Amz-Security-Token=SESSION";
const CALLBACK: &str = "https://hooks.example/cb/0123456789abcdef0123456789abcdef0123456789abcdef";

fn assert_hidden(shown: &str) {
    for secret in [
        "deadbeef",
        "SESSION",
        "0123456789abcdef0123456789abcdef",
        "hunter2",
    ] {
        assert!(!shown.contains(secret), "{secret} shown in {shown}");
    }
}

#[test]
fn debug_of_requests_and_task_documents_hides_their_secrets() {
    let builder = GenerateRequest::image_to_image("make it night", [SIGNED]).callback_url(CALLBACK);
    assert_hidden(&format!("{builder:?}"));
    let request = builder.build().unwrap();
    let shown = format!("{request:?}");
    assert_hidden(&shown);
    assert!(shown.contains("bucket.s3.amazonaws.com/in.png"), "{shown}");
    assert!(shown.contains("make it night"), "{shown}");
    let sent = serde_json::to_string(&request).unwrap();
    assert!(
        sent.contains("deadbeef") && sent.contains(CALLBACK),
        "{sent}"
    );

    let raw: RawGenerateRequest = serde_json::from_str(&sent).unwrap();
    assert_hidden(&format!("{raw:?}"));

    let info: TaskInfo = serde_json::from_value(serde_json::json!({
        "task_id": "t1",
        "status": "FAILED",
        "error_message": format!("could not fetch {SIGNED} with postgres://u:hunter2@db/x"),
        "request": serde_json::from_str::<serde_json::Value>(&sent).unwrap(),
        "response": [SIGNED],
    }))
    .unwrap();
    let shown = format!("{info:?}");
    assert_hidden(&shown);
    assert!(
        shown.contains("t1") && shown.contains("could not fetch"),
        "{shown}"
    );
}

mod properties {
    use gptimage_types::{redact, redact_with};
    use proptest::prelude::*;

    proptest! {
        /// Any text at all: no panic, and a second pass changes nothing more than the first.
        #[test]
        fn redaction_never_panics(text in any::<String>(), secret in any::<String>()) {
            let once = redact_with(&text, &[secret.as_str()]);
            let _ = redact(&once);
        }

        /// A signed URL's query, a URL's password and a named secret are gone, wherever in the
        /// text they stand and whatever surrounds them.
        #[test]
        fn secrets_in_any_surroundings_are_removed(
            before in "[ -~]{0,20}",
            after in "[ -~]{0,20}",
            host in "[a-z][a-z0-9.-]{0,15}",
            signature in "[A-Za-z0-9]{12,20}",
            password in "[A-Za-z0-9/]{6,12}",
        ) {
            let signed = format!("https://{host}/a.png?X-Amz-Signature=SIG{signature}");
            let text = format!("{before} {signed} {after}");
            let sig = format!("SIG{signature}");
            prop_assert!(!redact(&text).contains(&sig), "{}", redact(&text));
            let state = format!("postgres://u:PW{password}@{host}/db");
            let text = format!("{before} {state} {after}");
            let pw = format!("PW{password}");
            prop_assert!(!redact(&text).contains(&pw), "{}", redact(&text));
            let named = format!("{before}NAMED{signature}{after}");
            let secret = format!("NAMED{signature}");
            let shown = redact_with(&named, &[secret.as_str()]);
            prop_assert!(!shown.contains(&secret), "{}", shown);
        }
    }
}

#[test]
fn a_refused_url_is_shown_without_its_secrets() {
    let error = GenerateRequest::image_to_image(
        "x",
        ["https://u:hunter2@h/a b.png?X-Amz-Signature=deadbeef"],
    )
    .build()
    .unwrap_err();
    let shown = format!("{error} {error:?}");
    assert!(shown.contains("'images'[0]"), "{shown}");
    assert_hidden(&format!("{error}"));
}
