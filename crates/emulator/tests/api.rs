//! The emulator driven over real loopback HTTP with a plain client: every endpoint, every error
//! code, the lifecycle, credits, key isolation, both image modes, and conformance to its own
//! OpenAPI document.

mod common;

use std::time::Duration;

use common::{Answer, Api, conforms, decode};
use gptimage_emulator::{Config, KeyConfig};
use serde_json::{Value, json};

async fn openapi(api: &Api) -> Value {
    let answer = api
        .send(
            "get",
            "/openapi.json",
            api.http.get(api.url("/openapi.json")),
        )
        .await;
    assert_eq!(answer.status, 200);
    let doc = answer.json();
    assert_eq!(doc["openapi"], "3.0.3");
    doc
}

fn assert_error(answer: &Answer, status: u16, message: &str) {
    assert_eq!(
        answer.status,
        status,
        "{}",
        String::from_utf8_lossy(&answer.body)
    );
    assert_eq!(answer.content_type, "application/json");
    let body = answer.json();
    assert_eq!(body["code"], status);
    assert_eq!(body["data"], Value::Null);
    assert!(
        body["message"].as_str().unwrap().contains(message),
        "{:?} does not contain {message:?}",
        body["message"]
    );
}

#[tokio::test]
async fn a_task_goes_through_its_lifecycle_and_makes_a_real_png() {
    let config =
        Config::instant().with_timings(Duration::from_millis(300), Duration::from_millis(300));
    let api = Api::start(config).await;
    let doc = openapi(&api).await;

    let created = api
        .generate(json!({"prompt": "A serene mountain landscape", "size": "1536*1024", "quality": "high"}))
        .await;
    conforms(&doc, &created).unwrap();
    let id = created.json()["data"]["task_id"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(created.json()["data"]["status"], "PENDING");

    let mut seen = Vec::new();
    let data = loop {
        let answer = api.status(&id).await;
        conforms(&doc, &answer).unwrap();
        let data = answer.json()["data"].clone();
        let status = data["status"].as_str().unwrap().to_owned();
        if seen.last() != Some(&status) {
            seen.push(status.clone());
        }
        if status == "SUCCESS" {
            break data;
        }
        assert!(seen.len() <= 3, "{seen:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(seen, ["PENDING", "IN_PROGRESS", "SUCCESS"]);
    assert_eq!(data["consumed_credits"], 10);
    assert_eq!(data["request"]["prompt"], "A serene mountain landscape");
    data["created_at"]
        .as_str()
        .unwrap()
        .parse::<gptimage_types::Timestamp>()
        .unwrap();

    let url = data["response"][0].as_str().unwrap();
    let image = api.download(url).await;
    conforms(&doc, &image).unwrap();
    assert_eq!(image.content_type, "image/png");
    assert_eq!(decode(&image.body).dimensions(), (1536, 1024));

    let counters = api.emulator.counters();
    assert_eq!(counters.tasks_created, 1);
    assert_eq!(counters.tasks_succeeded, 1);
    assert_eq!(counters.credits_charged, 10);
    assert_eq!(counters.file_requests, 1);
}

#[tokio::test]
async fn every_size_has_its_dimensions_and_the_picture_depends_on_the_request() {
    let api = Api::start(Config::instant()).await;
    let mut pictures = Vec::new();
    for (size, dimensions) in [
        ("1024*1024", (1024, 1024)),
        ("1024*1536", (1024, 1536)),
        ("1536*1024", (1536, 1024)),
    ] {
        let png = api
            .render(json!({"prompt": "a lighthouse", "size": size, "quality": "low"}))
            .await;
        assert_eq!(decode(&png).dimensions(), dimensions, "{size}");
        pictures.push(png);
    }
    // The default size is square.
    let default = api
        .render(json!({"prompt": "a lighthouse", "quality": "low"}))
        .await;
    // Deterministic: the same request gives the same bytes; another prompt gives another picture.
    assert_eq!(default, pictures[0]);
    let other = api
        .render(json!({"prompt": "a windmill", "quality": "low"}))
        .await;
    assert_ne!(other, pictures[0]);
}

/// How many 8×8 blocks of the top half hold a single colour: the low-quality picture is drawn at
/// 1/8 resolution, so nearly all of its blocks are flat.
fn flat_block_share(image: &image::RgbImage) -> f64 {
    let (w, h) = image.dimensions();
    let (mut flat, mut total) = (0, 0);
    for by in (40..h / 2).step_by(8).map(|y| y / 8 * 8) {
        for bx in (0..w).step_by(8) {
            let first = image.get_pixel(bx, by);
            let same = (0..8).all(|dy| (0..8).all(|dx| image.get_pixel(bx + dx, by + dy) == first));
            flat += u32::from(same);
            total += 1;
        }
    }
    f64::from(flat) / f64::from(total)
}

#[tokio::test]
async fn quality_makes_a_visible_difference() {
    let api = Api::start(Config::instant()).await;
    let mut shares = Vec::new();
    for quality in ["low", "medium", "high"] {
        let png = api
            .render(json!({"prompt": "a harbour at dusk", "quality": quality}))
            .await;
        shares.push(flat_block_share(&decode(&png)));
    }
    assert!(shares[0] > 0.9, "low quality should be blocky: {shares:?}");
    assert!(
        shares[2] < 0.1,
        "high quality should have detail everywhere: {shares:?}"
    );
    assert!(shares[0] > shares[1] && shares[1] > shares[2], "{shares:?}");
}

#[tokio::test]
async fn a_field_the_api_does_not_have_is_refused_by_name_unless_allowed() {
    let api = Api::start(Config::instant()).await;
    let typo = api
        .generate(json!({"prompt": "a typo", "qualty": "high"}))
        .await;
    assert_error(&typo, 400, "'qualty' is not a field of this API");
    let message = typo.json()["message"].as_str().unwrap().to_owned();
    for field in [
        "prompt",
        "size",
        "quality",
        "images",
        "input_fidelity",
        "callback_url",
    ] {
        assert!(message.contains(field), "{message}");
    }
    assert_eq!(api.emulator.counters().tasks_created, 0, "nothing was made");
    // Lenient on request, as some servers are: the unknown field is ignored.
    let lenient = Api::start(Config::instant().with_unknown_fields_allowed(true)).await;
    let answer = lenient
        .generate(json!({"prompt": "a typo", "qualty": "high"}))
        .await;
    assert_eq!(answer.status, 200);
}

#[test]
fn the_sdk_sends_only_the_fields_the_api_documents() {
    use gptimage_types::{GenerateRequest, InputFidelity, Quality, Size};
    let every = GenerateRequest::image_to_image("all of it", ["https://x.test/a.png"])
        .size(Size::Landscape)
        .quality(Quality::High)
        .input_fidelity(InputFidelity::Low)
        .callback_url("https://hooks.test/cb")
        .build()
        .unwrap();
    let sent = serde_json::to_value(&every).unwrap();
    let mut keys: Vec<&str> = sent
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    keys.sort_unstable();
    assert_eq!(
        keys,
        [
            "callback_url",
            "images",
            "input_fidelity",
            "prompt",
            "quality",
            "size"
        ]
    );
}

#[tokio::test]
async fn invalid_requests_are_400_with_the_field_and_the_rule() {
    let api = Api::start(Config::instant()).await;
    let doc = openapi(&api).await;
    let cases = [
        (json!({}), "Bad Request: 'prompt' is required."),
        (json!({"prompt": "  \n"}), "'prompt' is blank"),
        (
            json!({"prompt": "é".repeat(2001)}),
            "'prompt' has 2001 characters; at most 2000 are allowed",
        ),
        (
            json!({"prompt": "a", "size": "1536x1024"}),
            "'size' \"1536x1024\" is not supported",
        ),
        (
            json!({"prompt": "a", "quality": "ultra"}),
            "'quality' \"ultra\" is not supported",
        ),
        (
            json!({"prompt": "a", "input_fidelity": "high"}),
            "'input_fidelity' applies only to image-to-image",
        ),
        (json!({"prompt": "a", "images": []}), "'images' is empty"),
        (
            json!({"prompt": "a", "images": ["ftp://x/y.png"]}),
            "'images'[0]",
        ),
        (
            json!({"prompt": "a", "images": "http://x/y.png"}),
            "'images' must be an array",
        ),
        (
            json!({"prompt": "a", "callback_url": "/hook"}),
            "'callback_url'",
        ),
        // Not RFC 3986 URIs: a strict server refuses them, and so does the emulator.
        (
            json!({"prompt": "a", "callback_url": "https://Ï"}),
            "'callback_url' \"https://Ï\" is not a valid webhook URL: it contains characters outside ASCII",
        ),
        (
            json!({"prompt": "a", "callback_url": "https://example.com/a{b}"}),
            "'callback_url'",
        ),
        (
            json!({"prompt": "a", "images": ["https://example.com/café.png"]}),
            "'images'[0]",
        ),
        (json!({"prompt": 5}), "'prompt' must be a string"),
        // The documentation types each field as a string or an array: null is neither.
        (
            json!({"prompt": null}),
            "'prompt' must be a string, not null",
        ),
        (
            json!({"prompt": "a", "size": null}),
            "'size' must be a string, not null",
        ),
        (
            json!({"prompt": "a", "quality": null}),
            "'quality' must be a string, not null",
        ),
        (
            json!({"prompt": "a", "images": ["https://example.com/a.png"], "input_fidelity": null}),
            "'input_fidelity' must be a string, not null",
        ),
        (
            json!({"prompt": "a", "callback_url": null}),
            "'callback_url' must be a string, not null",
        ),
        (
            json!({"prompt": "a", "images": null}),
            "'images' must be an array of URL strings, not null",
        ),
        (json!(["prompt"]), "the body must be a JSON object"),
    ];
    for (body, message) in cases {
        let answer = api.generate(body.clone()).await;
        assert_error(&answer, 400, message);
        conforms(&doc, &answer).unwrap();
    }
    // 2000 characters of a multi-byte script pass.
    let ok = api.generate(json!({"prompt": "日".repeat(2000)})).await;
    assert_eq!(ok.status, 200);

    let raw = |body: &'static str, content_type: &'static str| {
        api.http
            .post(api.url("/api/generate"))
            .bearer_auth(&api.key)
            .header("content-type", content_type)
            .body(body)
    };
    let malformed = api
        .send(
            "post",
            "/api/generate",
            raw("{\"prompt\": \"a\"", "application/json"),
        )
        .await;
    assert_error(&malformed, 400, "the body is not valid JSON");
    let form = api
        .send(
            "post",
            "/api/generate",
            raw("prompt=a", "application/x-www-form-urlencoded"),
        )
        .await;
    assert_error(&form, 400, "Content-Type: application/json");
    conforms(&doc, &form).unwrap();
    let huge = format!("{{\"prompt\": \"{}\"}}", "a".repeat(100 * 1024));
    let request = api
        .http
        .post(api.url("/api/generate"))
        .bearer_auth(&api.key)
        .header("content-type", "application/json")
        .body(huge);
    let oversized = api.send("post", "/api/generate", request).await;
    assert_error(&oversized, 400, "the body is larger than 65536 bytes");

    let missing = api
        .send(
            "get",
            "/api/status",
            api.http.get(api.url("/api/status")).bearer_auth(&api.key),
        )
        .await;
    assert_error(&missing, 400, "'task_id' is required");
    conforms(&doc, &missing).unwrap();
    // Nothing invalid created a task.
    assert_eq!(api.emulator.counters().tasks_created, 1);
}

#[tokio::test]
async fn keys_are_checked_and_isolated() {
    let config = Config::instant().with_keys([
        KeyConfig::new("alice", "sk-alice", 100),
        KeyConfig::new("bob", "sk-bob", 100),
    ]);
    let api = Api::start(config).await;
    let doc = openapi(&api).await;

    let anonymous = api
        .send(
            "post",
            "/api/generate",
            api.http
                .post(api.url("/api/generate"))
                .json(&json!({"prompt": "a"})),
        )
        .await;
    assert_error(&anonymous, 401, "missing API key");
    conforms(&doc, &anonymous).unwrap();
    let wrong = api
        .generate_with_key("sk-mallory", json!({"prompt": "a"}))
        .await;
    assert_error(&wrong, 401, "invalid API key");
    let wrong_status = api.status_with_key("sk-mallory", "x").await;
    assert_error(&wrong_status, 401, "invalid API key");
    conforms(&doc, &wrong_status).unwrap();

    let id = api.submit(json!({"prompt": "alice's cat"})).await;
    assert_eq!(api.status_with_key("sk-alice", &id).await.status, 200);
    let foreign = api.status_with_key("sk-bob", &id).await;
    assert_error(&foreign, 404, "no task with id");
    conforms(&doc, &foreign).unwrap();
    let unknown = api.status("n00000000000000gptimg").await;
    assert_error(&unknown, 404, "no task with id 'n00000000000000gptimg'");

    let counters = api.emulator.counters();
    assert_eq!(counters.tasks_created_by_key.get("alice"), Some(&1));
    assert_eq!(counters.tasks_created_by_key.get("bob"), None);
}

#[tokio::test]
async fn credits_run_out_with_402_and_failed_tasks_give_them_back() {
    let config = Config::instant()
        .with_keys([KeyConfig::new("small", "sk-small", 20)])
        .with_fail_phrase("forbidden-thing");
    let api = Api::start(config).await;
    let doc = openapi(&api).await;

    // A failed task refunds its 10 credits, as the documentation shows.
    let failing = api
        .submit(json!({"prompt": "draw a FORBIDDEN-THING please"}))
        .await;
    let data = api.wait(&failing).await;
    assert_eq!(data["status"], "FAILED");
    assert_eq!(data["consumed_credits"], 0);
    assert_eq!(data["error_message"], "Content policy violation detected");
    assert_eq!(data["response"], Value::Null);
    conforms(&doc, &api.status(&failing).await).unwrap();

    // So the balance still pays for two tasks, and no more.
    api.submit(json!({"prompt": "one"})).await;
    api.submit(json!({"prompt": "two"})).await;
    let broke = api.generate(json!({"prompt": "three"})).await;
    assert_error(&broke, 402, "Insufficient credits");
    conforms(&doc, &broke).unwrap();

    let counters = api.emulator.counters();
    assert_eq!(counters.tasks_created, 3);
    assert_eq!(counters.credits_charged, 20);
    assert_eq!(counters.credits_refunded, 10);
    assert_eq!(counters.credits_charged_by_key.get("small"), Some(&20));
}

#[tokio::test]
async fn wrong_methods_and_paths_answer_in_the_envelope() {
    let api = Api::start(Config::instant()).await;
    let doc = openapi(&api).await;
    for (method, path, allow) in [
        ("get", "/api/generate", "POST"),
        ("put", "/api/generate", "POST"),
        ("post", "/api/status", "GET"),
        ("delete", "/api/status", "GET"),
        ("post", "/files/{task_id}/{file}", "GET"),
    ] {
        let url = api.url(&path.replace("{task_id}", "x").replace("{file}", "0.png"));
        let request = api
            .http
            .request(method.to_uppercase().parse().unwrap(), url);
        let mut answer = api.send("get", path, request).await;
        assert_error(&answer, 405, &format!("takes {allow}"));
        assert_eq!(answer.headers["allow"], allow);
        answer.method = if path.starts_with("/files") {
            "get"
        } else if allow == "POST" {
            "post"
        } else {
            "get"
        };
        conforms(&doc, &answer).unwrap();
    }
    let nowhere = api
        .send("get", "/nowhere", api.http.get(api.url("/api/v2/generate")))
        .await;
    assert_error(&nowhere, 404, "no endpoint at '/api/v2/generate'");
    let no_image = api.download(&api.url("/files/nope/0.png")).await;
    assert_error(&no_image, 404, "no such image");
    conforms(&doc, &no_image).unwrap();
}

/// Starts a loopback server that serves `body` at every path, with this content type.
async fn serve_bytes(body: Vec<u8>, content_type: &'static str) -> String {
    use axum::routing::get;
    let app = axum::Router::new().route(
        "/{*path}",
        get(move || {
            let body = body.clone();
            async move { ([("content-type", content_type)], body) }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let origin = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    origin
}

/// Mean absolute difference of two same-sized pictures, per channel, from 0 to 255.
fn difference(a: &image::RgbImage, b: &image::RgbImage) -> f64 {
    let total: u64 = a
        .as_raw()
        .iter()
        .zip(b.as_raw())
        .map(|(x, y)| u64::from(x.abs_diff(*y)))
        .sum();
    total as f64 / a.as_raw().len() as f64
}

#[tokio::test]
async fn an_edit_derives_visibly_from_its_input() {
    let api = Api::start(Config::instant()).await;
    // An input: a half-black, half-white picture of another shape, served from loopback.
    let input = image::RgbImage::from_fn(600, 400, |x, _| {
        if x < 300 {
            image::Rgb([0, 0, 0])
        } else {
            image::Rgb([255, 255, 255])
        }
    });
    let mut png = Vec::new();
    input
        .write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)
        .unwrap();
    let origin = serve_bytes(png, "image/png").await;
    let input_url = format!("{origin}/input.png");
    let resized = image::imageops::resize(&input, 1024, 1536, image::imageops::Triangle);

    let mut pictures = Vec::new();
    for fidelity in ["high", "low"] {
        let body = json!({"prompt": "add a rainbow", "images": [input_url], "size": "1024*1536",
                          "input_fidelity": fidelity});
        let picture = decode(&api.render(body).await);
        assert_eq!(picture.dimensions(), (1024, 1536));
        pictures.push(picture);
    }
    // The same prompt without an input, for comparison.
    let scene = decode(
        &api.render(json!({"prompt": "add a rainbow", "size": "1024*1536"}))
            .await,
    );

    let (high, low) = (
        difference(&pictures[0], &resized),
        difference(&pictures[1], &resized),
    );
    let unrelated = difference(&scene, &resized);
    assert!(
        high < low,
        "high fidelity stays closer to the input: {high} vs {low}"
    );
    assert!(
        low < unrelated,
        "even low fidelity derives from the input: {low} vs {unrelated}"
    );
}

#[tokio::test]
async fn an_input_that_cannot_be_used_fails_the_task_clearly() {
    let api = Api::start(Config::instant()).await;
    let closed = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap()
    };
    let not_an_image = serve_bytes(b"<html>hello</html>".to_vec(), "text/html").await;
    let cases = [
        (format!("http://{closed}/a.png"), "input image 1"),
        (format!("{not_an_image}/a.png"), "could not be decoded"),
        (
            "http://example.com/a.png".to_owned(),
            "not on a loopback host",
        ),
    ];
    for (url, message) in cases {
        let id = api.submit(json!({"prompt": "edit", "images": [url]})).await;
        let data = api.wait(&id).await;
        assert_eq!(data["status"], "FAILED", "{url}");
        assert_eq!(data["consumed_credits"], 0);
        let error = data["error_message"].as_str().unwrap();
        assert!(
            error.contains(message),
            "{error:?} should contain {message:?}"
        );
        assert!(error.contains(&url), "{error:?} should name {url}");
    }
    assert_eq!(api.emulator.counters().credits_charged, 0);
}

#[tokio::test]
async fn finished_tasks_and_their_images_expire() {
    let api = Api::start(Config::instant().with_task_ttl(Duration::from_millis(100))).await;
    let id = api
        .submit(json!({"prompt": "ephemeral", "quality": "low"}))
        .await;
    let data = api.wait(&id).await;
    let url = data["response"][0].as_str().unwrap().to_owned();
    assert_eq!(api.download(&url).await.status, 200);
    tokio::time::sleep(Duration::from_millis(250)).await;
    assert_eq!(api.status(&id).await.status, 404);
    assert_eq!(api.download(&url).await.status, 404);
    assert_eq!(api.emulator.counters().tasks_expired, 1);
}

#[tokio::test]
async fn counters_are_served_over_http_too() {
    let api = Api::start(Config::instant()).await;
    let id = api.submit(json!({"prompt": "count me"})).await;
    api.wait(&id).await;
    let answer = api
        .send(
            "get",
            "/_emulator/counters",
            api.http.get(api.url("/_emulator/counters")),
        )
        .await;
    let remote: gptimage_emulator::Counters = serde_json::from_slice(&answer.body).unwrap();
    let local = api.emulator.counters();
    assert_eq!(remote.tasks_created, 1);
    assert_eq!(remote.tasks_created, local.tasks_created);
    assert_eq!(remote.generate_requests, local.generate_requests);
}

#[tokio::test]
async fn task_ids_are_unique() {
    let api = Api::start(Config::instant()).await;
    let mut ids = std::collections::HashSet::new();
    for i in 0..30 {
        let id = api
            .submit(json!({"prompt": format!("task {i}"), "quality": "low"}))
            .await;
        assert!(id.ends_with("gptimg") && id.len() == 21, "{id}");
        assert!(ids.insert(id));
    }
}
