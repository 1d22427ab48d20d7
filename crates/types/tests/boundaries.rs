//! The edges of every validation rule: prompt lengths in several scripts, every kind of blank,
//! and URLs that are not absolute http(s).

use gptimage_types::{
    GenerateRequest, InputFidelity, MAX_PROMPT_CHARS, RawGenerateRequest, UrlProblem,
    ValidationError,
};

/// One character each from scripts whose UTF-8 takes 1 to 4 bytes.
const SCRIPTS: &[(&str, &str)] = &[
    ("ascii", "a"),
    ("turkish", "ğ"),
    ("french", "é"),
    ("japanese", "日"),
    ("emoji", "🎨"),
];

#[test]
fn the_prompt_limit_counts_characters_not_bytes() {
    for (script, c) in SCRIPTS {
        let at_limit = c.repeat(MAX_PROMPT_CHARS);
        let request = GenerateRequest::text_to_image(at_limit.clone())
            .build()
            .unwrap_or_else(|e| panic!("{script}: {e}"));
        assert_eq!(request.prompt().chars().count(), 2000, "{script}");

        let over = c.repeat(MAX_PROMPT_CHARS + 1);
        assert_eq!(
            GenerateRequest::text_to_image(over).build(),
            Err(ValidationError::PromptTooLong {
                chars: 2001,
                max: 2000
            }),
            "{script} ({} bytes)",
            at_limit.len()
        );
    }
}

#[test]
fn a_mixed_script_prompt_at_the_limit() {
    let mixed: String = "Ağaç çiçek 日本 🎨 "
        .chars()
        .cycle()
        .take(MAX_PROMPT_CHARS)
        .collect();
    assert!(
        GenerateRequest::text_to_image(mixed.clone())
            .build()
            .is_ok()
    );
    let over = format!("{mixed}x");
    let err = GenerateRequest::text_to_image(over).build().unwrap_err();
    assert_eq!(
        err.to_string(),
        "'prompt' has 2001 characters; at most 2000 are allowed"
    );
}

#[test]
fn blank_prompts_of_every_kind() {
    let blanks = [
        "",
        " ",
        "\t",
        "\n",
        "\r\n",
        "\u{0B}",
        "\u{0C}",
        "\u{85}",
        "\u{A0}",
        "\u{1680}",
        "\u{2000}\u{2001}\u{2002}\u{2003}\u{2004}\u{2005}\u{2006}\u{2007}\u{2008}\u{2009}\u{200A}",
        "\u{2028}\u{2029}",
        "\u{202F}\u{205F}",
        "\u{3000}",
        "\u{200B}",
        "\u{FEFF}",
        " \u{3000}\t\u{200B}\n ",
    ];
    for blank in blanks {
        assert_eq!(
            GenerateRequest::text_to_image(blank).build(),
            Err(ValidationError::BlankPrompt),
            "{blank:?}"
        );
    }
    // One visible character among the blanks is enough.
    assert!(
        GenerateRequest::text_to_image(" \u{3000}x\n")
            .build()
            .is_ok()
    );
}

#[test]
fn a_missing_prompt_is_not_a_blank_one() {
    let raw = RawGenerateRequest::default();
    let err = raw.validate().unwrap_err();
    assert_eq!(err, ValidationError::MissingPrompt);
    assert_eq!(err.to_string(), "'prompt' is required");
}

#[test]
fn image_urls_must_be_absolute_http() {
    let cases = [
        ("landscape.jpg", UrlProblem::NotAbsolute),
        ("/images/landscape.jpg", UrlProblem::NotAbsolute),
        ("../landscape.jpg", UrlProblem::NotAbsolute),
        ("example.com/landscape.jpg", UrlProblem::NotAbsolute),
        ("www.example.com:443/a.jpg", UrlProblem::NotAbsolute),
        ("//example.com/landscape.jpg", UrlProblem::NotAbsolute),
        (
            "ftp://example.com/landscape.jpg",
            UrlProblem::UnsupportedScheme("ftp".into()),
        ),
        (
            "file:///tmp/landscape.jpg",
            UrlProblem::UnsupportedScheme("file".into()),
        ),
        ("https://", UrlProblem::MissingHost),
        ("https://exa mple.com/a.jpg", UrlProblem::InvalidCharacter),
    ];
    for (url, problem) in cases {
        let err = GenerateRequest::image_to_image("edit", ["https://ok.example/a.png", url])
            .build()
            .unwrap_err();
        assert_eq!(
            err,
            ValidationError::InvalidImageUrl {
                index: 1,
                url: url.into(),
                problem: problem.clone()
            },
            "{url}"
        );
        assert_eq!(err.field(), "images");

        let err = GenerateRequest::text_to_image("hook")
            .callback_url(url)
            .build()
            .unwrap_err();
        assert_eq!(
            err,
            ValidationError::InvalidCallbackUrl {
                url: url.into(),
                problem
            },
            "{url}"
        );
    }
}

#[test]
fn input_fidelity_needs_images() {
    let err = GenerateRequest::text_to_image("a")
        .input_fidelity(InputFidelity::High)
        .build()
        .unwrap_err();
    assert_eq!(err, ValidationError::InputFidelityWithoutImages);
    let raw: RawGenerateRequest =
        serde_json::from_str(r#"{"prompt":"a","input_fidelity":"low"}"#).unwrap();
    assert_eq!(
        raw.validate().unwrap_err(),
        ValidationError::InputFidelityWithoutImages
    );
    let ok: RawGenerateRequest = serde_json::from_str(
        r#"{"prompt":"a","images":["http://127.0.0.1:1/x.png"],"input_fidelity":"low"}"#,
    )
    .unwrap();
    assert_eq!(
        ok.validate().unwrap().input_fidelity(),
        Some(InputFidelity::Low)
    );
}

#[test]
fn strict_wire_values_name_what_is_allowed() {
    let cases = [
        (
            r#"{"prompt":"a","size":"1536x1024"}"#,
            "'size' \"1536x1024\" is not supported; use 1024*1024 (square), 1024*1536 (portrait) or 1536*1024 (landscape)",
        ),
        (
            r#"{"prompt":"a","quality":"HIGH"}"#,
            "'quality' \"HIGH\" is not supported; use low, medium or high",
        ),
        (
            r#"{"prompt":"a","images":["http://h/x.png"],"input_fidelity":"max"}"#,
            "'input_fidelity' \"max\" is not supported; use low or high",
        ),
        (
            r#"{"prompt":"a","images":[]}"#,
            "'images' is empty; give at least one image URL or omit the field for text-to-image",
        ),
    ];
    for (body, message) in cases {
        let raw: RawGenerateRequest = serde_json::from_str(body).unwrap();
        assert_eq!(raw.validate().unwrap_err().to_string(), message, "{body}");
        // Deserializing the validated type applies the same rules.
        let err = serde_json::from_str::<GenerateRequest>(body).unwrap_err();
        assert!(err.to_string().contains(message), "{err}");
    }
}
