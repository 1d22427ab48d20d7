//! Properties over generated inputs: accepted requests round-trip, every string is judged by the
//! documented rules, and no JSON makes a parser panic.

use gptimage_types::{
    GenerateRequest, GenerateResponse, InputFidelity, MAX_PROMPT_CHARS, Quality,
    RawGenerateRequest, Size, StatusResponse, TaskInfo, ValidationError, check_url, parse_webhook,
};
use proptest::prelude::*;
use serde_json::{Map, Value, json};

fn size() -> impl Strategy<Value = Size> {
    prop::sample::select(Size::ALL.to_vec())
}

fn quality() -> impl Strategy<Value = Quality> {
    prop::sample::select(Quality::ALL.to_vec())
}

fn fidelity() -> impl Strategy<Value = InputFidelity> {
    prop::sample::select(InputFidelity::ALL.to_vec())
}

fn url() -> impl Strategy<Value = String> {
    (
        prop::sample::select(vec!["http", "https", "HTTPS"]),
        "[a-z0-9.-]{1,20}",
        prop::option::of(1u16..),
        "[a-zA-Z0-9/._~%-]{0,30}",
    )
        .prop_map(|(scheme, host, port, path)| match port {
            Some(port) => format!("{scheme}://{host}:{port}/{path}"),
            None => format!("{scheme}://{host}/{path}"),
        })
}

/// Prompts from any script, with a visible character, within the limit.
fn prompt() -> impl Strategy<Value = String> {
    ("\\PC{0,300}", "[\\p{L}\\p{N}]", "\\PC{0,300}").prop_map(|(a, b, c)| format!("{a}{b}{c}"))
}

fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<f64>()
            .prop_map(|f| serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)),
        "\\PC{0,20}".prop_map(Value::from),
        prop::sample::select(vec![
            "SUCCESS",
            "FAILED",
            "1",
            "-1",
            "[",
            "[\"x\"]",
            "2024-12-19 10:00:00",
            "200",
        ])
        .prop_map(Value::from),
    ];
    leaf.prop_recursive(4, 40, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::vec((field_name(), inner), 0..8)
                .prop_map(|fields| Value::Object(fields.into_iter().collect::<Map<_, _>>())),
        ]
    })
}

/// Field names the parsers look at, and some they do not.
fn field_name() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::sample::select(vec![
            "code",
            "message",
            "data",
            "task_id",
            "status",
            "response",
            "request",
            "consumed_credits",
            "consumed_credit",
            "created_at",
            "error_message",
            "prompt",
            "size",
            "quality",
            "images",
            "input_fidelity",
            "callback_url",
        ])
        .prop_map(String::from),
        "[a-z_]{1,8}",
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn accepted_requests_round_trip(
        prompt in prompt(),
        size in prop::option::of(size()),
        quality in prop::option::of(quality()),
        images in prop::option::of(prop::collection::vec(url(), 1..4)),
        fidelity in prop::option::of(fidelity()),
        callback in prop::option::of(url()),
    ) {
        let mut builder = match &images {
            Some(images) => GenerateRequest::image_to_image(prompt.clone(), images.clone()),
            None => GenerateRequest::text_to_image(prompt.clone()),
        };
        if let Some(size) = size { builder = builder.size(size); }
        if let Some(quality) = quality { builder = builder.quality(quality); }
        if let Some(fidelity) = fidelity { builder = builder.input_fidelity(fidelity); }
        if let Some(callback) = &callback { builder = builder.callback_url(callback.clone()); }

        match builder.build() {
            Ok(request) => {
                let json = serde_json::to_string(&request).unwrap();
                let back: GenerateRequest = serde_json::from_str(&json).unwrap();
                prop_assert_eq!(&back, &request);
                // Omitted fields are absent, never null, and sizes use the documented `*`.
                prop_assert!(!json.contains("null"));
                let value: Value = serde_json::from_str(&json).unwrap();
                if let Some(size) = size {
                    prop_assert_eq!(&value["size"], &json!(size.as_str()));
                    prop_assert!(size.as_str().contains('*'));
                }
            }
            Err(err) => {
                // The only rule these inputs can break is fidelity without images.
                prop_assert_eq!(err, ValidationError::InputFidelityWithoutImages);
                prop_assert!(fidelity.is_some() && images.is_none());
            }
        }
    }

    #[test]
    fn any_prompt_is_judged_by_the_documented_rules(prompt in "\\PC{0,40}|\\s{0,10}|.{1990,2010}") {
        let chars = prompt.chars().count();
        match GenerateRequest::text_to_image(prompt.clone()).build() {
            Ok(request) => {
                prop_assert!(chars <= MAX_PROMPT_CHARS);
                prop_assert!(!prompt.trim().is_empty());
                prop_assert_eq!(request.prompt(), prompt.as_str());
            }
            Err(ValidationError::BlankPrompt) => prop_assert!(prompt.trim().is_empty()
                || prompt.chars().all(|c| c.is_whitespace() || c.is_control() || !c.is_alphanumeric())),
            Err(ValidationError::PromptTooLong { chars: counted, max }) => {
                prop_assert_eq!(counted, chars);
                prop_assert_eq!(max, MAX_PROMPT_CHARS);
                prop_assert!(chars > MAX_PROMPT_CHARS);
            }
            Err(other) => prop_assert!(false, "unexpected error {other:?}"),
        }
    }

    #[test]
    fn any_size_or_quality_string_is_accepted_only_if_documented(s in "\\PC{0,12}|[0-9xX* ]{0,12}|(?i)(square|portrait|landscape|low|medium|high)") {
        match s.parse::<Size>() {
            Ok(size) => prop_assert_eq!(size.as_str().parse::<Size>(), Ok(size)),
            Err(err) => prop_assert_eq!(err, ValidationError::InvalidSize { value: s.clone() }),
        }
        match s.parse::<Quality>() {
            Ok(quality) => prop_assert!(s.trim().eq_ignore_ascii_case(quality.as_str())),
            Err(err) => prop_assert_eq!(err, ValidationError::InvalidQuality { value: s.clone() }),
        }
        // The strict form accepts exactly the documented spellings.
        prop_assert_eq!(Size::from_documented(&s).is_some(), Size::ALL.iter().any(|v| v.as_str() == s));
    }

    #[test]
    fn any_accepted_url_is_absolute_http(s in "\\PC{0,30}|(?i)(https?|ftp|file)://\\PC{0,20}") {
        if check_url(&s).is_ok() {
            let lower = s.to_ascii_lowercase();
            prop_assert!(lower.starts_with("http://") || lower.starts_with("https://"));
            prop_assert!(!s.chars().any(char::is_whitespace));
            prop_assert!(s.len() > "http://".len());
        }
    }

    #[test]
    fn no_json_makes_a_parser_panic(value in json_value()) {
        let text = value.to_string();
        let _ = serde_json::from_str::<StatusResponse>(&text);
        let _ = serde_json::from_str::<GenerateResponse>(&text);
        let _ = serde_json::from_str::<TaskInfo>(&text);
        let _ = serde_json::from_str::<RawGenerateRequest>(&text);
        let _ = serde_json::from_str::<GenerateRequest>(&text);
        let _ = parse_webhook(text.as_bytes());
        // Wrapped as the status envelope the parsers take the deeper path.
        let wrapped = json!({"code": 200, "data": value}).to_string();
        if let Ok(response) = serde_json::from_str::<StatusResponse>(&wrapped) {
            // What parses serializes, and parses again to the same thing.
            let again = serde_json::to_string(&response).unwrap();
            let reparsed: StatusResponse = serde_json::from_str(&again).unwrap();
            prop_assert_eq!(reparsed.data.map(|t| t.status), response.data.map(|t| t.status));
        }
    }

    #[test]
    fn no_bytes_make_a_parser_panic(bytes in prop::collection::vec(any::<u8>(), 0..200)) {
        let _ = serde_json::from_slice::<StatusResponse>(&bytes);
        let _ = serde_json::from_slice::<GenerateResponse>(&bytes);
        let _ = parse_webhook(&bytes);
    }
}
