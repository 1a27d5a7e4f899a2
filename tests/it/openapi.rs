//! The OpenAPI document of the server API against the proto it is generated
//! from: `spec/openapi.json` must be exactly what `document()` generates, and
//! every method of `ApiCall` must have its path with schemas that resolve.
//!
//! `SWITCHBOARD_BLESS=1 cargo test openapi` rewrites `spec/openapi.json`
//! after a deliberate change to `proto/switchboard/v1/api.proto` (or to the
//! generator); review the diff before committing it. Structural validation
//! (openapi-spec-validator) and the schemathesis run against a live server
//! are in `scripts/schemathesis.sh`.

use std::collections::BTreeSet;
use std::path::PathBuf;

use prost::Message as _;
use prost_types::field_descriptor_proto::Type;
use prost_types::{DescriptorProto, FileDescriptorProto, FileDescriptorSet};
use serde_json::Value;
use switchboard::api::openapi::{self, METHOD_PREFIX, METHODS, PACKAGE};
use switchboard::codec::payload::HAND_MAPPED_FIELDS;

fn committed_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("spec/openapi.json")
}

fn bless() -> bool {
    std::env::var_os("SWITCHBOARD_BLESS").is_some()
}

fn descriptors() -> FileDescriptorSet {
    FileDescriptorSet::decode(switchboard::wire::DESCRIPTORS).expect("descriptors decode")
}

fn api_file(set: &FileDescriptorSet) -> &FileDescriptorProto {
    set.file
        .iter()
        .find(|f| f.package() == PACKAGE)
        .expect("api.proto is compiled")
}

fn message<'a>(file: &'a FileDescriptorProto, name: &str) -> &'a DescriptorProto {
    file.message_type
        .iter()
        .find(|m| m.name() == name)
        .unwrap_or_else(|| panic!("{name} is in api.proto"))
}

/// The message name of a field of api.proto, without the package.
fn api_type(type_name: &str) -> &str {
    type_name
        .strip_prefix(&format!(".{PACKAGE}."))
        .unwrap_or_else(|| panic!("{type_name} is not a message of {PACKAGE}"))
}

fn schema_ref(name: &str) -> Value {
    Value::String(format!("#/components/schemas/{PACKAGE}.{name}"))
}

/// Every `$ref` anywhere under `value`.
fn refs<'a>(value: &'a Value, out: &mut Vec<&'a str>) {
    match value {
        Value::Object(map) => {
            for (key, v) in map {
                match (key.as_str(), v) {
                    ("$ref", Value::String(target)) => out.push(target),
                    _ => refs(v, out),
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|v| refs(v, out)),
        _ => {}
    }
}

/// Resolves a local reference (`#/a/b`) in the document.
fn resolve<'a>(doc: &'a Value, target: &str) -> Option<&'a Value> {
    let pointer = target.strip_prefix('#')?;
    doc.pointer(pointer)
}

#[test]
fn the_committed_document_is_the_generated_one() {
    let generated = openapi::document_text();
    let path = committed_path();
    if bless() {
        std::fs::write(&path, &generated).expect("write spec/openapi.json");
        return;
    }
    let committed = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "cannot read {}: {e}; generate it with `SWITCHBOARD_BLESS=1 cargo test openapi`",
            path.display()
        )
    });
    if committed != generated {
        let line = committed
            .lines()
            .zip(generated.lines())
            .position(|(a, b)| a != b)
            .unwrap_or_else(|| committed.lines().count().min(generated.lines().count()));
        panic!(
            "spec/openapi.json drifted from proto/switchboard/v1/api.proto (first difference at \
             line {}: committed {:?}, generated {:?}); after a deliberate change run \
             `SWITCHBOARD_BLESS=1 cargo test openapi` and review the diff",
            line + 1,
            committed.lines().nth(line).unwrap_or("<end>"),
            generated.lines().nth(line).unwrap_or("<end>"),
        );
    }
}

#[test]
fn the_document_is_deterministic_and_versioned() {
    assert_eq!(openapi::document_text(), openapi::document_text());
    let doc = openapi::document();
    assert_eq!(doc["openapi"], "3.0.3");
    assert_eq!(doc["info"]["version"], env!("CARGO_PKG_VERSION"));
    let description = doc["info"]["description"].as_str().expect("a description");
    assert!(
        description.contains("spec/10-server-api.md"),
        "{description}"
    );
    assert!(description.contains(openapi::PATH), "{description}");
}

#[test]
fn every_api_call_method_has_a_path() {
    let set = descriptors();
    let file = api_file(&set);
    let call = message(file, "ApiCall");
    let reply = message(file, "ApiReply");
    let doc = openapi::document();
    let paths = doc["paths"].as_object().expect("paths");

    let members: Vec<_> = call
        .field
        .iter()
        .filter(|f| f.oneof_index.is_some())
        .collect();
    assert_eq!(members.len(), call.field.len(), "ApiCall is its oneof");
    for member in &members {
        let request = api_type(member.type_name());
        let method = METHODS
            .iter()
            .find(|m| m.request == request)
            .unwrap_or_else(|| panic!("ApiCall.{} ({request}) has no method", member.name()));
        let reply_member = reply
            .field
            .iter()
            .find(|f| f.name() == member.name())
            .unwrap_or_else(|| panic!("ApiReply has no member {}", member.name()));
        assert_eq!(
            api_type(reply_member.type_name()),
            method.result,
            "ApiReply.{} is the result of {}",
            member.name(),
            method.name
        );

        let path = format!("{METHOD_PREFIX}{}", method.name);
        let post = &paths
            .get(&path)
            .unwrap_or_else(|| panic!("no path {path} for ApiCall.{}", member.name()))["post"];
        assert_eq!(post["operationId"], method.name);
        assert_eq!(
            post["requestBody"]["content"]["application/json"]["schema"]["$ref"],
            schema_ref(method.request),
            "{path}"
        );
        assert_eq!(
            post["responses"]["200"]["content"]["application/json"]["schema"]["$ref"],
            schema_ref(method.result),
            "{path}"
        );
    }
    // Every API call, plus batch, and nothing else.
    assert_eq!(METHODS.len(), members.len() + 1);
    let batch = METHODS
        .iter()
        .find(|m| m.name == "batch")
        .expect("a batch method");
    assert_eq!(
        (batch.request, batch.result),
        ("BatchRequest", "BatchResult")
    );
    assert_eq!(
        api_type(message(file, "BatchRequest").field[0].type_name()),
        "ApiCall"
    );
    assert_eq!(
        api_type(message(file, "BatchResult").field[0].type_name()),
        "ApiReply"
    );
    let expected: BTreeSet<String> = METHODS
        .iter()
        .map(|m| format!("{METHOD_PREFIX}{}", m.name))
        .collect();
    let actual: BTreeSet<String> = paths.keys().cloned().collect();
    assert_eq!(actual, expected);
    // ApiReply: an error, or one result per method but batch.
    assert_eq!(reply.field.len(), members.len() + 1);
}

#[test]
fn every_reference_resolves_and_every_status_has_a_schema() {
    let doc = openapi::document();
    let mut targets = Vec::new();
    refs(&doc, &mut targets);
    assert!(!targets.is_empty());
    for target in targets {
        assert!(
            resolve(&doc, target).is_some(),
            "unresolved reference {target}"
        );
    }
    let error = schema_ref("Error");
    for (path, item) in doc["paths"].as_object().expect("paths") {
        let responses = item["post"]["responses"].as_object().expect("responses");
        for status in [
            "200", "400", "401", "403", "404", "409", "422", "429", "500", "503",
        ] {
            let response = &responses
                .get(status)
                .unwrap_or_else(|| panic!("{path}: no {status} response"));
            let response = match response["$ref"].as_str() {
                Some(target) => resolve(&doc, target).expect("resolved above"),
                None => response,
            };
            let schema = &response["content"]["application/json"]["schema"];
            assert!(
                schema["$ref"].is_string(),
                "{path} {status}: no JSON schema"
            );
            if status != "200" {
                assert_eq!(schema["$ref"], error, "{path} {status}");
            }
        }
    }
}

#[test]
fn schemas_follow_the_json_mapping() {
    let set = descriptors();
    let doc = openapi::document();
    let schemas = doc["components"]["schemas"].as_object().expect("schemas");
    let request_messages: BTreeSet<String> = METHODS
        .iter()
        .map(|m| format!("{PACKAGE}.{}", m.request))
        .collect();
    let mut checked = 0;
    for file in &set.file {
        for message in &file.message_type {
            let name = format!("{}.{}", file.package(), message.name());
            let Some(schema) = schemas.get(&name) else {
                assert_ne!(file.package(), PACKAGE, "{name} has no schema");
                continue;
            };
            checked += 1;
            let properties = schema["properties"]
                .as_object()
                .cloned()
                .unwrap_or_default();
            let payload = HAND_MAPPED_FIELDS.iter().any(|(n, _)| *n == name);
            for field in &message.field {
                let json_name = field.json_name();
                assert!(properties.contains_key(json_name), "{name}.{json_name}");
                if payload && field.r#type() == Type::Bytes {
                    let base64 = format!("{json_name}Base64");
                    assert_eq!(properties[&base64]["format"], "byte", "{name}.{base64}");
                    assert_eq!(
                        schema["not"]["required"],
                        serde_json::json!([json_name, base64]),
                        "{name}: payload forms are exclusive"
                    );
                }
                match field.r#type() {
                    Type::Uint64 | Type::Int64 if !request_messages.contains(&name) => {}
                    Type::Uint64 | Type::Int64 => {
                        let forms = &properties[json_name]["oneOf"];
                        assert_eq!(forms[0]["type"], "string", "{name}.{json_name}");
                        assert_eq!(forms[1]["type"], "integer", "{name}.{json_name}");
                    }
                    _ => {}
                }
            }
            let keys: BTreeSet<&str> = properties.keys().map(String::as_str).collect();
            let expected = message.field.len()
                + message
                    .field
                    .iter()
                    .filter(|f| payload && f.r#type() == Type::Bytes)
                    .count();
            assert_eq!(keys.len(), expected, "{name}: {keys:?}");
        }
    }
    assert_eq!(checked, schemas.len(), "every schema is a proto message");
    // Requests ignore unknown fields; replies are exactly what is emitted.
    assert_eq!(
        schemas[&format!("{PACKAGE}.PublishRequest")]["additionalProperties"],
        true
    );
    assert_eq!(
        schemas[&format!("{PACKAGE}.ApiCall")]["additionalProperties"],
        true
    );
    assert_eq!(
        schemas[&format!("{PACKAGE}.PublishResult")]["additionalProperties"],
        false
    );
    assert_eq!(
        schemas[&format!("{PACKAGE}.PublishResult")]["properties"]["offset"]["type"],
        "string"
    );
    assert_eq!(
        schemas["switchboard.v1.Publication"]["additionalProperties"],
        false
    );
}
