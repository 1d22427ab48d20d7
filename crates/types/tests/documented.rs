//! Every JSON example of the service's documentation, parsed and written back byte for byte, and
//! every variant that API.md section 2 lists, parsed as the same thing.

use gptimage_types::{
    ApiCode, CreatedTask, GenerateRequest, GenerateResponse, InputFidelity, Quality,
    RawGenerateRequest, Size, StatusResponse, TaskInfo, TaskStatus, Timestamp, parse_webhook,
};
use serde_json::json;

/// Removes the whitespace between JSON tokens of a documented example (not inside strings).
fn compact(pretty: &str) -> String {
    let mut out = String::new();
    let mut in_string = false;
    let mut escaped = false;
    for c in pretty.chars() {
        if in_string {
            out.push(c);
            match (escaped, c) {
                (true, _) => escaped = false,
                (false, '\\') => escaped = true,
                (false, '"') => in_string = false,
                _ => {}
            }
        } else if c == '"' {
            in_string = true;
            out.push(c);
        } else if !c.is_whitespace() {
            out.push(c);
        }
    }
    out
}

/// Parses `pretty` as `T` and asserts that it serializes back to the same bytes (compacted).
fn round_trip<T>(pretty: &str) -> T
where
    T: serde::Serialize + serde::de::DeserializeOwned,
{
    let parsed: T = serde_json::from_str(pretty).expect("the documented example parses");
    assert_eq!(serde_json::to_string(&parsed).unwrap(), compact(pretty));
    parsed
}

#[test]
fn text_to_image_request() {
    let documented = r#"{
        "prompt": "A serene mountain landscape...",
        "size": "1536*1024",
        "quality": "high"
    }"#;
    let request: GenerateRequest = round_trip(documented);
    let built = GenerateRequest::text_to_image("A serene mountain landscape...")
        .size(Size::Landscape)
        .quality(Quality::High)
        .build()
        .unwrap();
    assert_eq!(request, built);
}

#[test]
fn image_to_image_request() {
    let documented = r#"{
        "prompt": "Add a rainbow in the sky",
        "images": [
            "https://example.com/landscape.jpg"
        ],
        "input_fidelity": "high",
        "quality": "medium"
    }"#;
    let request: GenerateRequest = round_trip(documented);
    assert!(request.is_image_to_image());
    assert_eq!(request.input_fidelity(), Some(InputFidelity::High));
    assert_eq!(request.effective_size(), Size::Square);
}

#[test]
fn generate_success() {
    let documented = r#"{
        "code": 200,
        "data": {
            "task_id": "n36abc123def456gptimg",
            "status": "IN_PROGRESS"
        }
    }"#;
    let response: GenerateResponse = round_trip(documented);
    assert!(response.is_success());
    assert_eq!(
        response.data,
        Some(CreatedTask::new(
            "n36abc123def456gptimg",
            TaskStatus::InProgress
        ))
    );
}

#[test]
fn generate_error() {
    let documented = r#"{
        "code": 400,
        "message": "Bad Request: 'prompt' is required.",
        "data": null
    }"#;
    let response: GenerateResponse = round_trip(documented);
    assert_eq!(response.api_code(), ApiCode::BadRequest);
    assert_eq!(response.data, None);
}

#[test]
fn status_in_progress() {
    let documented = r#"{
        "code": 200,
        "data": {
            "task_id": "n36abc123def456gptimg",
            "status": "IN_PROGRESS",
            "consumed_credits": 10,
            "created_at": "2024-12-19T10:00:00Z"
        }
    }"#;
    let response: StatusResponse = round_trip(documented);
    let task = response.data.unwrap();
    assert_eq!(task.status, TaskStatus::InProgress);
    assert_eq!(task.consumed_credits, Some(10));
    assert_eq!(task.created_at.unwrap().unix_seconds(), 1_734_602_400);
    assert!(!task.is_terminal());
}

#[test]
fn status_success() {
    let documented = r#"{
        "code": 200,
        "data": {
            "task_id": "n36abc123def456gptimg",
            "status": "SUCCESS",
            "response": [
                "https://cdn.example.com/image.png"
            ]
        }
    }"#;
    let response: StatusResponse = round_trip(documented);
    assert_eq!(
        response.data.unwrap().images(),
        ["https://cdn.example.com/image.png"]
    );
}

#[test]
fn status_failed() {
    // The documentation elides the echoed request as `{ ... }`; a concrete one stands in for it.
    let documented = r#"{
        "code": 200,
        "message": "success",
        "data": {
            "task_id": "n36abc123def456gptimg",
            "status": "FAILED",
            "consumed_credits": 0,
            "error_message": "Content policy violation detected",
            "created_at": "2024-12-19T10:00:00Z",
            "request": {"prompt": "A serene mountain landscape..."},
            "response": null
        }
    }"#;
    let response: StatusResponse = round_trip(documented);
    assert_eq!(response.message.as_deref(), Some("success"));
    let task = response.data.unwrap();
    assert_eq!(task.status, TaskStatus::Failed);
    assert_eq!(task.consumed_credits, Some(0));
    assert_eq!(
        task.error_message.as_deref(),
        Some("Content policy violation detected")
    );
    assert!(task.images().is_empty());
}

#[test]
fn insufficient_credits() {
    let body = r#"{"code":402,"message":"Insufficient credits","data":null}"#;
    let response: GenerateResponse = round_trip(body);
    assert_eq!(response.api_code(), ApiCode::InsufficientCredits);
}

#[test]
fn every_documented_error_code_is_distinct() {
    let codes = [400, 401, 402, 404, 429, 500];
    let kinds: Vec<ApiCode> = codes.iter().map(|c| ApiCode::from_code(*c)).collect();
    for (i, a) in kinds.iter().enumerate() {
        assert_eq!(a.code(), codes[i]);
        for b in &kinds[i + 1..] {
            assert_ne!(a, b);
        }
    }
}

/// The reference task every variant below must parse to.
fn reference() -> TaskInfo {
    let mut task = TaskInfo::new("n36abc123def456gptimg", TaskStatus::Success);
    task.consumed_credits = Some(10);
    task.created_at = Some("2024-12-19T10:00:00Z".parse::<Timestamp>().unwrap());
    task.request = Some(json!({"prompt": "a cat", "size": "1024*1024"}));
    task.response = Some(vec![
        "https://cdn.example.com/a.png".into(),
        "https://cdn.example.com/b.png".into(),
    ]);
    task
}

#[test]
fn every_shape_of_the_status_document_is_the_same_task() {
    let variants = [
        // The documented shape.
        json!({"task_id": "n36abc123def456gptimg", "status": "SUCCESS", "consumed_credits": 10,
               "created_at": "2024-12-19T10:00:00Z",
               "request": {"prompt": "a cat", "size": "1024*1024"},
               "response": ["https://cdn.example.com/a.png", "https://cdn.example.com/b.png"]}),
        // Numeric status, singular credits, the other date format, strings holding JSON.
        json!({"task_id": "n36abc123def456gptimg", "status": 1, "consumed_credit": 10,
               "created_at": "2024-12-19 10:00:00",
               "request": "{\"prompt\":\"a cat\",\"size\":\"1024*1024\"}",
               "response": "[\"https://cdn.example.com/a.png\",\"https://cdn.example.com/b.png\"]"}),
        // Lowercase status, extra fields anywhere, message absent.
        json!({"task_id": "n36abc123def456gptimg", "status": "success", "consumed_credits": "10",
               "created_at": "2024-12-19T10:00:00.000+00:00", "type": "text-to-image",
               "updated_at": "2024-12-19 10:00:05",
               "request": {"prompt": "a cat", "size": "1024*1024"},
               "response": ["https://cdn.example.com/a.png", "https://cdn.example.com/b.png"]}),
    ];
    for variant in variants {
        let task: TaskInfo = serde_json::from_value(variant.clone()).unwrap();
        assert_eq!(task, reference(), "{variant}");
        // Wrapped in the envelope, with or without a message, and as a webhook, it is the same.
        for envelope in [
            json!({"code": 200, "data": variant}),
            json!({"code": "200", "message": "success", "data": variant, "extra": [1, 2]}),
        ] {
            let response: StatusResponse = serde_json::from_value(envelope.clone()).unwrap();
            assert_eq!(response.data.as_ref(), Some(&reference()));
            let hook = parse_webhook(envelope.to_string().as_bytes()).unwrap();
            assert_eq!(hook, reference());
        }
        assert_eq!(
            parse_webhook(variant.to_string().as_bytes()).unwrap(),
            reference()
        );
    }
    // And it serializes in the documented form.
    assert_eq!(
        serde_json::to_value(reference()).unwrap(),
        json!({"task_id": "n36abc123def456gptimg", "status": "SUCCESS", "consumed_credits": 10,
               "created_at": "2024-12-19T10:00:00Z",
               "request": {"prompt": "a cat", "size": "1024*1024"},
               "response": ["https://cdn.example.com/a.png", "https://cdn.example.com/b.png"]})
    );
}

#[test]
fn every_status_spelling() {
    let cases = [
        (json!("PENDING"), TaskStatus::Pending),
        (json!("pending"), TaskStatus::Pending),
        (json!("IN_PROGRESS"), TaskStatus::InProgress),
        (json!("in_progress"), TaskStatus::InProgress),
        (json!("In-Progress"), TaskStatus::InProgress),
        (json!("SUCCESS"), TaskStatus::Success),
        (json!("Success"), TaskStatus::Success),
        (json!("FAILED"), TaskStatus::Failed),
        (json!("failed"), TaskStatus::Failed),
        (json!(0), TaskStatus::InProgress),
        (json!(1), TaskStatus::Success),
        (json!(-1), TaskStatus::Failed),
        (json!("-1"), TaskStatus::Failed),
        (json!(7), TaskStatus::Unknown("7".into())),
        (json!("EXPIRED"), TaskStatus::Unknown("EXPIRED".into())),
    ];
    for (value, status) in cases {
        let task: TaskInfo =
            serde_json::from_value(json!({"task_id": "t", "status": value})).unwrap();
        assert_eq!(task.status, status, "{value}");
    }
}

#[test]
fn response_in_every_form() {
    let cases = [
        (json!(null), None),
        (json!([]), Some(vec![])),
        (
            json!(["https://x/a.png"]),
            Some(vec!["https://x/a.png".to_owned()]),
        ),
        (
            json!("[\"https://x/a.png\"]"),
            Some(vec!["https://x/a.png".to_owned()]),
        ),
        (json!("[]"), Some(vec![])),
        (json!(""), None),
        (json!("null"), None),
        (
            json!("https://x/a.png"),
            Some(vec!["https://x/a.png".to_owned()]),
        ),
    ];
    for (value, expected) in cases {
        let task: TaskInfo =
            serde_json::from_value(json!({"task_id": "t", "status": "SUCCESS", "response": value}))
                .unwrap();
        assert_eq!(task.response, expected, "{value}");
    }
}

#[test]
fn an_error_envelope_with_odd_data_still_parses() {
    for data in [json!({}), json!(""), json!([]), json!({"detail": "x"})] {
        let body = json!({"code": 500, "message": "Internal Server Error", "data": data});
        let response: StatusResponse = serde_json::from_value(body).unwrap();
        assert_eq!(response.api_code(), ApiCode::ServerError(500));
        assert_eq!(response.message.as_deref(), Some("Internal Server Error"));
    }
}

#[test]
fn a_successful_envelope_must_hold_a_task() {
    let body = json!({"code": 200, "data": {"status": "IN_PROGRESS"}});
    assert!(serde_json::from_value::<GenerateResponse>(body).is_err());
    assert!(serde_json::from_value::<GenerateResponse>(json!({"data": null})).is_err());
}

#[test]
fn a_created_task_with_a_numeric_id_and_no_status() {
    let body = json!({"code": 200, "data": {"task_id": 12345}});
    let response: GenerateResponse = serde_json::from_value(body).unwrap();
    assert_eq!(
        response.data,
        Some(CreatedTask::new("12345", TaskStatus::Pending))
    );
}

#[test]
fn webhooks_that_are_not_tasks() {
    assert!(parse_webhook(b"").is_err());
    assert!(parse_webhook(b"[1,2]").is_err());
    assert!(parse_webhook(br#"{"status":"SUCCESS"}"#).is_err());
    let err = parse_webhook(br#"{"code":500,"message":"boom","data":null}"#).unwrap_err();
    assert!(err.to_string().contains("500"), "{err}");
}

#[test]
fn a_raw_request_keeps_what_was_sent() {
    let raw: RawGenerateRequest =
        serde_json::from_str(r#"{"prompt":"p","size":"1024*1536","unknown":true}"#).unwrap();
    let request = raw.clone().validate().unwrap();
    assert_eq!(request.size(), Some(Size::Portrait));
    assert_eq!(RawGenerateRequest::from(request), raw);
}
