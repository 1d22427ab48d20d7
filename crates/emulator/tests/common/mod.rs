//! Helpers shared by the emulator's integration tests: a plain HTTP client, and a checker of
//! responses against the emulator's own OpenAPI document.

#![allow(dead_code, unreachable_pub)]

use std::time::Duration;

use gptimage_emulator::{Config, Emulator};
use serde_json::{Value, json};

/// A plain reqwest client that talks to the emulator directly (no SDK).
pub struct Api {
    pub emulator: Emulator,
    pub http: reqwest::Client,
    pub key: String,
}

/// An answer, kept whole for assertions and for the OpenAPI check.
#[derive(Debug, Clone)]
pub struct Answer {
    pub method: &'static str,
    pub path: String,
    pub status: u16,
    pub content_type: String,
    pub headers: reqwest::header::HeaderMap,
    pub body: Vec<u8>,
}

impl Answer {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }

    pub fn message(&self) -> String {
        self.json()["message"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }
}

impl Api {
    pub async fn start(config: Config) -> Self {
        let emulator = Emulator::start(config).await.expect("the emulator starts");
        let key = emulator.api_key().to_owned();
        // This test client's reqwest has rustls without a provider (the emulator turns it on);
        // a test may install one for itself (the emulator's own client needs none).
        let _ = rustls::crypto::ring::default_provider().install_default();
        let http = reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(20))
            .build()
            .unwrap();
        Self {
            emulator,
            http,
            key,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.emulator.origin())
    }

    pub async fn send(
        &self,
        method: &'static str,
        path: &str,
        request: reqwest::RequestBuilder,
    ) -> Answer {
        let response = request.send().await.expect("the emulator answers");
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let content_type = headers
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        let body = response.bytes().await.expect("the body arrives").to_vec();
        Answer {
            method,
            path: path.split('?').next().unwrap_or_default().to_owned(),
            status,
            content_type,
            headers,
            body,
        }
    }

    pub async fn generate_with_key(&self, key: &str, body: Value) -> Answer {
        let request = self
            .http
            .post(self.url("/api/generate"))
            .bearer_auth(key)
            .json(&body);
        self.send("post", "/api/generate", request).await
    }

    pub async fn generate(&self, body: Value) -> Answer {
        self.generate_with_key(&self.key.clone(), body).await
    }

    pub async fn status_with_key(&self, key: &str, id: &str) -> Answer {
        let path = format!("/api/status?task_id={id}");
        let request = self.http.get(self.url(&path)).bearer_auth(key);
        self.send("get", &path, request).await
    }

    pub async fn status(&self, id: &str) -> Answer {
        self.status_with_key(&self.key.clone(), id).await
    }

    /// Submits `body` and returns the new task's id.
    pub async fn submit(&self, body: Value) -> String {
        let answer = self.generate(body).await;
        assert_eq!(
            answer.status,
            200,
            "{}",
            String::from_utf8_lossy(&answer.body)
        );
        answer.json()["data"]["task_id"]
            .as_str()
            .unwrap()
            .to_owned()
    }

    /// Polls until the task ends (at most 10 s), and returns its `data`.
    pub async fn wait(&self, id: &str) -> Value {
        for _ in 0..1000 {
            let data = self.status(id).await.json()["data"].clone();
            if matches!(data["status"].as_str(), Some("SUCCESS" | "FAILED")) {
                return data;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("task {id} did not end within 10 s");
    }

    /// Submits `body`, waits for the task to succeed, and returns its first image's PNG bytes.
    pub async fn render(&self, body: Value) -> Vec<u8> {
        let id = self.submit(body).await;
        let data = self.wait(&id).await;
        assert_eq!(data["status"], "SUCCESS", "{data}");
        self.download(data["response"][0].as_str().unwrap())
            .await
            .body
    }

    /// Downloads a result image (its answer is filed under the document's path template).
    pub async fn download(&self, url: &str) -> Answer {
        self.send("get", "/files/{task_id}/{file}", self.http.get(url))
            .await
    }
}

/// Decodes a PNG.
pub fn decode(png: &[u8]) -> image::RgbImage {
    image::load_from_memory_with_format(png, image::ImageFormat::Png)
        .expect("a PNG")
        .to_rgb8()
}

/// Checks that `answer` is one the OpenAPI document lists for its path and method, with the
/// documented content type and a body that matches the documented schema.
pub fn conforms(doc: &Value, answer: &Answer) -> Result<(), String> {
    let operation = &doc["paths"][&answer.path][answer.method];
    if operation.is_null() {
        return Err(format!(
            "{} {} is not in the document",
            answer.method, answer.path
        ));
    }
    let response = &operation["responses"][answer.status.to_string()];
    if response.is_null() {
        return Err(format!(
            "{} {} answered {}, which the document does not list",
            answer.method, answer.path, answer.status
        ));
    }
    let content = response["content"].as_object().ok_or("no content listed")?;
    let media = answer
        .content_type
        .split(';')
        .next()
        .unwrap_or_default()
        .trim();
    let entry = content
        .get(media)
        .ok_or_else(|| format!("content type {media:?} is not listed for {}", answer.status))?;
    for (name, _) in response["headers"].as_object().into_iter().flatten() {
        if !answer.headers.contains_key(name.as_str()) {
            return Err(format!("header {name} is missing"));
        }
    }
    if media == "application/json" {
        validate(doc, &entry["schema"], &answer.json(), "$")?;
    }
    Ok(())
}

/// A small JSON-schema checker for the subset the document uses.
fn validate(doc: &Value, schema: &Value, value: &Value, at: &str) -> Result<(), String> {
    if let Some(reference) = schema["$ref"].as_str() {
        let name = reference.rsplit('/').next().unwrap_or_default();
        return validate(doc, &doc["components"]["schemas"][name], value, at);
    }
    if value.is_null() && schema["nullable"] == json!(true) {
        return Ok(());
    }
    if let Some(allowed) = schema["enum"].as_array()
        && !allowed.contains(value)
    {
        return Err(format!("{at}: {value} is not one of {allowed:?}"));
    }
    let type_ok = match schema["type"].as_str() {
        None => true,
        Some("object") => value.is_object(),
        Some("array") => value.is_array(),
        Some("string") => value.is_string(),
        Some("integer") => value.is_i64() || value.is_u64(),
        Some("number") => value.is_number(),
        Some("boolean") => value.is_boolean(),
        Some(other) => return Err(format!("{at}: unknown type {other}")),
    };
    if !type_ok {
        return Err(format!("{at}: {value} is not of type {}", schema["type"]));
    }
    if let Some(min) = schema["minimum"].as_i64()
        && value.as_i64().is_some_and(|v| v < min)
    {
        return Err(format!("{at}: {value} is below {min}"));
    }
    if let Some(s) = value.as_str() {
        let chars = s.chars().count() as u64;
        if schema["maxLength"].as_u64().is_some_and(|m| chars > m)
            || schema["minLength"].as_u64().is_some_and(|m| chars < m)
        {
            return Err(format!("{at}: length {chars} is out of bounds"));
        }
        if schema["format"] == json!("date-time") && s.parse::<gptimage_types::Timestamp>().is_err()
        {
            return Err(format!("{at}: {s:?} is not a date-time"));
        }
        if schema["format"] == json!("uri") && gptimage_types::check_url(s).is_err() {
            return Err(format!("{at}: {s:?} is not a URI"));
        }
    }
    if let Some(object) = value.as_object() {
        for required in schema["required"].as_array().into_iter().flatten() {
            let name = required.as_str().unwrap_or_default();
            if !object.contains_key(name) {
                return Err(format!("{at}: required field {name} is missing"));
            }
        }
        for (name, field) in object {
            let field_schema = &schema["properties"][name];
            if !field_schema.is_null() {
                validate(doc, field_schema, field, &format!("{at}.{name}"))?;
            }
        }
    }
    if let Some(items) = value.as_array() {
        if schema["minItems"]
            .as_u64()
            .is_some_and(|m| (items.len() as u64) < m)
        {
            return Err(format!("{at}: too few items"));
        }
        for (i, item) in items.iter().enumerate() {
            validate(doc, &schema["items"], item, &format!("{at}[{i}]"))?;
        }
    }
    Ok(())
}
