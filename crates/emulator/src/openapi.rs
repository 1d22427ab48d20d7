//! The OpenAPI 3 document of the API the emulator serves, listing every status it can return.

use serde_json::{Value, json};

/// The document served at `GET /openapi.json`.
pub(crate) fn document() -> Value {
    let error = |description: &str| {
        json!({
            "description": description,
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorEnvelope"}}}
        })
    };
    let auth_errors = |mut responses: Value| {
        responses["401"] = error("The API key is missing or invalid.");
        responses["405"] = error("Wrong method; the `Allow` header names the right one.");
        responses["500"] = error("The service failed; try again.");
        responses["429"] = json!({
            "description": "Too many requests; wait as long as `Retry-After` says.",
            "headers": {"Retry-After": {"schema": {"type": "integer", "minimum": 0}}},
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorEnvelope"}}}
        });
        responses
    };
    json!({
        "openapi": "3.0.3",
        "info": {
            "title": "GPT Image 1.5 API (gptimage-emulator)",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "The GPT Image 1.5 API as the local emulator serves it. Every error is the JSON envelope {code, message, data: null}."
        },
        "servers": [{"url": "/"}],
        "security": [{"bearer": []}],
        "paths": {
            "/api/generate": {
                "post": {
                    "summary": "Start a generation task (10 credits).",
                    "operationId": "generate",
                    "requestBody": {
                        "required": true,
                        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/GenerateRequest"}}}
                    },
                    "responses": auth_errors(json!({
                        "200": {
                            "description": "The task was created.",
                            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/GenerateEnvelope"}}}
                        },
                        "400": error("The request is invalid; the message names the field and the rule."),
                        "402": error("The account has not enough credits."),
                    }))
                }
            },
            "/api/status": {
                "get": {
                    "summary": "Report a task.",
                    "operationId": "status",
                    "parameters": [{
                        "name": "task_id", "in": "query", "required": true,
                        "schema": {"type": "string"}
                    }],
                    "responses": auth_errors(json!({
                        "200": {
                            "description": "The task's status.",
                            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/StatusEnvelope"}}}
                        },
                        "400": error("`task_id` is missing."),
                        "404": error("No task with this id belongs to this key."),
                    }))
                }
            },
            "/files/{task_id}/{file}": {
                "get": {
                    "summary": "Download a result image (no key needed; the URL is the secret).",
                    "operationId": "file",
                    "security": [],
                    "parameters": [
                        {"name": "task_id", "in": "path", "required": true, "schema": {"type": "string"}},
                        {"name": "file", "in": "path", "required": true, "schema": {"type": "string", "pattern": "^[0-9]+\\.png$"}}
                    ],
                    "responses": {
                        "200": {"description": "The image.", "content": {"image/png": {"schema": {"type": "string", "format": "binary"}}}},
                        "404": error("No such image, or it expired."),
                        "405": error("Wrong method."),
                        "500": error("The service failed; try again."),
                        "429": error("Too many requests.")
                    }
                }
            }
        },
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": {
                "GenerateRequest": {
                    "type": "object",
                    "required": ["prompt"],
                    "additionalProperties": false,
                    "properties": {
                        "prompt": {"type": "string", "minLength": 1, "maxLength": 2000},
                        "size": {"type": "string", "enum": ["1024*1024", "1024*1536", "1536*1024"], "default": "1024*1024"},
                        "quality": {"type": "string", "enum": ["low", "medium", "high"], "default": "medium"},
                        "images": {"type": "array", "minItems": 1, "items": {"type": "string", "format": "uri"}},
                        "input_fidelity": {"type": "string", "enum": ["low", "high"], "default": "high"},
                        "callback_url": {"type": "string", "format": "uri"}
                    }
                },
                "ErrorEnvelope": {
                    "type": "object",
                    "required": ["code", "message", "data"],
                    "properties": {
                        "code": {"type": "integer"},
                        "message": {"type": "string"},
                        "data": {"nullable": true, "enum": [null]}
                    }
                },
                "GenerateEnvelope": {
                    "type": "object",
                    "required": ["code", "data"],
                    "properties": {
                        "code": {"type": "integer", "enum": [200]},
                        "message": {"type": "string"},
                        "data": {"$ref": "#/components/schemas/CreatedTask"}
                    }
                },
                "CreatedTask": {
                    "type": "object",
                    "required": ["task_id", "status"],
                    "properties": {
                        "task_id": {"type": "string"},
                        "status": {"$ref": "#/components/schemas/Status"}
                    }
                },
                "StatusEnvelope": {
                    "type": "object",
                    "required": ["code", "data"],
                    "properties": {
                        "code": {"type": "integer", "enum": [200]},
                        "message": {"type": "string"},
                        "data": {"$ref": "#/components/schemas/Task"}
                    }
                },
                "Status": {"type": "string", "enum": ["PENDING", "IN_PROGRESS", "SUCCESS", "FAILED"]},
                "Task": {
                    "type": "object",
                    "required": ["task_id", "status", "consumed_credits", "created_at"],
                    "properties": {
                        "task_id": {"type": "string"},
                        "status": {"$ref": "#/components/schemas/Status"},
                        "consumed_credits": {"type": "integer", "minimum": 0},
                        "created_at": {"type": "string", "format": "date-time"},
                        "error_message": {"type": "string"},
                        "request": {"$ref": "#/components/schemas/GenerateRequest"},
                        "response": {"type": "array", "nullable": true, "items": {"type": "string", "format": "uri"}}
                    }
                }
            }
        }
    })
}
