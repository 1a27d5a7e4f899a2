//! The OpenAPI 3.0.3 document of the JSON server API, generated from the
//! protobuf descriptors of `proto/switchboard/v1/api.proto` (spec/10-server-api.md).
//!
//! The proto file is the only definition of the API; this module derives the
//! document from it at run time, and `spec/openapi.json` is its committed
//! copy (a test fails when the two drift; `SWITCHBOARD_BLESS=1` rewrites it).
//! The schemas follow the proto3 JSON mapping exactly as our codec implements
//! it (spec/02-framing.md, "JSON mapping"), so that a tool generating requests
//! from them (schemathesis in CI) sends what the server accepts, and a reply
//! checked against them is what the server emits:
//!
//! - property names are the fields' lowerCamelCase JSON names (the proto
//!   names are accepted on input too, but are not listed);
//! - `uint32`, `int32`, `bool`, `string` and `double` are the JSON types;
//!   `int64`/`uint64` are decimal strings in replies and decimal strings or
//!   JSON integers in requests;
//! - a payload field ([`HAND_MAPPED_FIELDS`]' `bytes` fields) is any JSON
//!   value under its name, or a base64 string under `<name>Base64`, never both;
//! - the members of a oneof are mutually exclusive optional properties;
//! - request schemas allow unknown properties (the server ignores them),
//!   reply schemas list exactly what this version emits.
//!
//! This module never touches the network: it only turns descriptors into
//! JSON. Output is deterministic (object keys are sorted), so the document can
//! be compared byte for byte.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use prost::Message as _;
use prost_types::field_descriptor_proto::{Label, Type};
use prost_types::{DescriptorProto, EnumDescriptorProto, FieldDescriptorProto, FileDescriptorSet};
use serde_json::{Map, Value, json};

use crate::codec::payload::HAND_MAPPED_FIELDS;
use crate::wire::DESCRIPTORS;

/// Where the server serves the document.
pub const PATH: &str = "/api/v1/openapi.json";

/// The prefix of every method's path: `POST /api/v1/<method>`.
pub const METHOD_PREFIX: &str = "/api/v1/";

/// The proto package of the server API.
pub const PACKAGE: &str = "switchboard.api.v1";

/// One method of the server API: `POST /api/v1/<name>`, with a request and a
/// result message of [`PACKAGE`] (names without the package).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Method {
    /// The method name, the last segment of its path.
    pub name: &'static str,
    /// The request message.
    pub request: &'static str,
    /// The result message.
    pub result: &'static str,
}

/// Every method, in the order of `ApiCall`'s oneof (then `batch`). A test
/// checks this table against `ApiCall` and `ApiReply`.
pub const METHODS: &[Method] = &[
    method("publish", "PublishRequest", "PublishResult"),
    method("broadcast", "BroadcastRequest", "BroadcastResult"),
    method("presence", "PresenceRequest", "PresenceResult"),
    method(
        "presence_stats",
        "PresenceStatsRequest",
        "PresenceStatsResult",
    ),
    method("history", "HistoryRequest", "HistoryResult"),
    method(
        "history_remove",
        "HistoryRemoveRequest",
        "HistoryRemoveResult",
    ),
    method("subscribe", "SubscribeRequest", "SubscribeResult"),
    method("unsubscribe", "UnsubscribeRequest", "UnsubscribeResult"),
    method("disconnect", "DisconnectRequest", "DisconnectResult"),
    method("refresh", "RefreshRequest", "RefreshResult"),
    method("rooms", "RoomsRequest", "RoomsResult"),
    method("info", "InfoRequest", "InfoResult"),
    method("tickets", "TicketRequest", "TicketResult"),
    method("batch", "BatchRequest", "BatchResult"),
];

const fn method(name: &'static str, request: &'static str, result: &'static str) -> Method {
    Method {
        name,
        request,
        result,
    }
}

/// An example request per method, for the documentation and for the
/// examples phase of schemathesis (random strings rarely make valid room
/// names). A test decodes each one with the server's own JSON mapping.
pub fn example(request: &str) -> Option<Value> {
    let value = match request {
        "PublishRequest" => json!({
            "room": "project:42",
            "data": { "agent": "planner", "progress": 10 },
            "tags": { "kind": "progress" },
            "idempotencyKey": "project-42-step-1",
        }),
        "BroadcastRequest" => json!({
            "rooms": ["project:42", "project:43"],
            "data": { "notice": "maintenance at 18:00" },
        }),
        "PresenceRequest" | "PresenceStatsRequest" | "HistoryRemoveRequest" => {
            json!({ "room": "project:42" })
        }
        "HistoryRequest" => json!({ "room": "project:42", "limit": 10, "reverse": true }),
        "SubscribeRequest" | "UnsubscribeRequest" => {
            json!({ "user": "alice", "room": "project:42" })
        }
        "DisconnectRequest" => json!({ "user": "alice", "code": 3504, "reason": "account closed" }),
        "RefreshRequest" => json!({ "user": "alice", "expireAt": "1893456000" }),
        "RoomsRequest" => json!({ "pattern": "project:*", "limit": 100 }),
        "InfoRequest" => json!({}),
        "TicketRequest" => json!({
            "user": "alice",
            "info": { "name": "Alice" },
            "subscribe": ["project:42"],
            "ttlSeconds": 60,
        }),
        "BatchRequest" => json!({
            "calls": [
                { "publish": { "room": "project:42", "data": { "progress": 100 } } },
                { "presenceStats": { "room": "project:42" } },
            ],
        }),
        _ => return None,
    };
    Some(value)
}

/// The message every non-2xx reply carries.
pub const ERROR_MESSAGE: &str = "Error";

/// The error statuses of every method: (status, component name, description).
/// spec/10-server-api.md maps error codes to statuses; this is its summary.
const ERROR_STATUSES: &[(&str, &str, &str)] = &[
    (
        "400",
        "BadRequest",
        "Invalid request (error code 107 `bad_request`): the body is not a valid request \
         message (malformed JSON, a value of the wrong type, an integer out of range, a payload \
         given twice) or an argument is invalid (empty or malformed room name, ...).",
    ),
    (
        "401",
        "Unauthorized",
        "No API key, or one that is not configured (error code 101 `unauthorized`); send \
         `Authorization: apikey <key>` or `X-API-Key: <key>`.",
    ),
    (
        "403",
        "Forbidden",
        "Not allowed (error code 103 `permission_denied`).",
    ),
    (
        "404",
        "NotFound",
        "The room's namespace is not configured (error code 102 `unknown_room`), or there is \
         no such method (error code 104 `unknown_command`).",
    ),
    (
        "409",
        "Conflict",
        "The room's state does not allow the call: the feature is disabled for the room \
         (error code 108 `not_available`, e.g. presence or history) or the stream position is \
         not in the room's history (error code 113 `unrecoverable_position`).",
    ),
    (
        "413",
        "PayloadTooLarge",
        "The body is larger than `api.max_body_size` (error code 107 `bad_request`).",
    ),
    (
        "422",
        "UnprocessableEntity",
        "A limit would be exceeded (error code 106 `limit_exceeded`).",
    ),
    (
        "429",
        "TooManyRequests",
        "Try again later (`temporary` is true): rate limited (error code 111 \
         `too_many_requests`) or the room is full (error code 114 `room_full`).",
    ),
    (
        "500",
        "InternalError",
        "The server failed internally (error code 100 `internal`).",
    ),
    (
        "503",
        "Unavailable",
        "The broker is unavailable or the node is shutting down (error code 100 with \
         `temporary` true): retry with backoff.",
    ),
];

/// Schemes accepted for the API key; a request needs one of them.
const SECURITY_SCHEMES: &[(&str, &str, &str)] = &[
    (
        "apiKeyHeader",
        "X-API-Key",
        "An API key from `[api] keys` in the server's config: `X-API-Key: <key>`.",
    ),
    (
        "apiKeyAuthorization",
        "Authorization",
        "An API key from `[api] keys` in the server's config, with the scheme `apikey`: \
         `Authorization: apikey <key>`.",
    ),
];

const DESCRIPTION: &str = "\
The Switchboard server API: what application backends call to publish, read presence and \
history, manage users' connections and issue connection tickets. It is generated from \
`proto/switchboard/v1/api.proto`; the normative description is `spec/10-server-api.md` in the \
Switchboard repository.

Every method is `POST /api/v1/<method>`. The body is the method's request message and the \
reply the method's result message. This document describes the JSON format: the proto3 JSON \
mapping of spec/02-framing.md (lowerCamelCase names, proto names also accepted on input; \
64-bit integers as decimal strings, accepted as strings or integers; defaults omitted in \
replies; unknown request fields ignored), with payloads as JSON values (`data`, or \
`dataBase64` for bytes that are not JSON text). The same methods take and return protobuf \
with `Content-Type: application/x-protobuf`. The server serves this document at \
`GET /api/v1/openapi.json`.

Authenticate every call with an API key: `Authorization: apikey <key>` or `X-API-Key: <key>`.

A failed call gets a non-2xx status and an `Error` body: 400 for code 107 (`bad_request`), 401 \
for a missing or wrong API key, 403 for 103 (`permission_denied`), 404 for 102 \
(`unknown_room`), 409 for 108 (`not_available`) and 113 (`unrecoverable_position`), 413 for a \
body over `api.max_body_size`, 422 for 106 (`limit_exceeded`), 429 for 111 \
(`too_many_requests`) and 114 (`room_full`), 500 for 100 (`internal`), 503 when the broker is \
unavailable. In `batch`, each call's error is its reply's `error` and the batch itself \
succeeds.

Reply schemas list exactly what this version emits (`additionalProperties: false`); clients \
must still ignore unknown fields, which later v1 versions may add (spec/07-versioning.md).";

/// Whether a schema describes what a client sends or what the server emits:
/// the JSON mapping accepts more than it writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Direction {
    Request,
    Reply,
}

/// The descriptors, indexed by full name (without the leading dot).
struct Schema {
    messages: BTreeMap<String, MessageEntry>,
    enums: BTreeMap<String, EnumDescriptorProto>,
}

struct MessageEntry {
    descriptor: DescriptorProto,
    /// Leading comment of the message.
    comment: String,
    /// Leading comment of each field, by field index.
    field_comments: Vec<String>,
}

/// The OpenAPI document of the JSON server API.
pub fn document() -> Value {
    // DESCRIPTORS is what build.rs encoded with prost from protox's output:
    // decoding it fails only if the build itself is broken.
    #[allow(clippy::expect_used)]
    let set = FileDescriptorSet::decode(DESCRIPTORS).expect("build.rs writes valid descriptors");
    Schema::new(&set).document()
}

/// [`document`] as pretty-printed JSON with a trailing newline: the text of
/// `spec/openapi.json`, and what the server serves at [`PATH`].
pub fn document_text() -> String {
    let mut text = serde_json::to_string_pretty(&document()).unwrap_or_default();
    text.push('\n');
    text
}

impl Schema {
    fn new(set: &FileDescriptorSet) -> Self {
        let mut schema = Self {
            messages: BTreeMap::new(),
            enums: BTreeMap::new(),
        };
        for file in &set.file {
            let comments: BTreeMap<&[i32], &str> = file
                .source_code_info
                .iter()
                .flat_map(|info| &info.location)
                .filter_map(|l| Some((l.path.as_slice(), l.leading_comments.as_deref()?)))
                .collect();
            for (i, message) in file.message_type.iter().enumerate() {
                // 4: FileDescriptorProto.message_type.
                schema.add_message(file.package(), message, vec![4, index(i)], &comments);
            }
            for e in &file.enum_type {
                schema
                    .enums
                    .insert(format!("{}.{}", file.package(), e.name()), e.clone());
            }
        }
        schema
    }

    fn add_message(
        &mut self,
        scope: &str,
        message: &DescriptorProto,
        path: Vec<i32>,
        comments: &BTreeMap<&[i32], &str>,
    ) {
        let name = format!("{scope}.{}", message.name());
        let comment_at = |path: &[i32]| comments.get(path).map(|c| clean(c)).unwrap_or_default();
        let field_comments = (0..message.field.len())
            .map(|i| comment_at(&[path.as_slice(), &[2, index(i)]].concat())) // 2: field
            .collect();
        for (i, nested) in message.nested_type.iter().enumerate() {
            // 3: DescriptorProto.nested_type.
            self.add_message(
                &name,
                nested,
                [path.as_slice(), &[3, index(i)]].concat(),
                comments,
            );
        }
        for e in &message.enum_type {
            self.enums.insert(format!("{name}.{}", e.name()), e.clone());
        }
        self.messages.insert(
            name,
            MessageEntry {
                descriptor: message.clone(),
                comment: comment_at(&path),
                field_comments,
            },
        );
    }

    fn document(&self) -> Value {
        let reachable = self.reachable();
        let mut schemas = Map::new();
        for (direction, names) in &reachable {
            for name in names {
                let key = schema_name(name, *direction, &reachable);
                schemas.insert(key, self.message_schema(name, *direction, &reachable));
            }
        }

        let error_ref = schema_ref(
            &format!("{PACKAGE}.{ERROR_MESSAGE}"),
            Direction::Reply,
            &reachable,
        );
        let mut responses = Map::new();
        for (_, component, description) in ERROR_STATUSES {
            responses.insert(
                (*component).to_owned(),
                json!({
                    "description": description,
                    "content": { "application/json": { "schema": error_ref } },
                }),
            );
        }

        let mut security_schemes = Map::new();
        for (name, header, description) in SECURITY_SCHEMES {
            security_schemes.insert(
                (*name).to_owned(),
                json!({ "type": "apiKey", "in": "header", "name": header, "description": description }),
            );
        }
        let security: Vec<Value> = SECURITY_SCHEMES
            .iter()
            .map(|(name, _, _)| json!({ *name: [] }))
            .collect();

        let mut paths = Map::new();
        for method in METHODS {
            paths.insert(
                format!("{METHOD_PREFIX}{}", method.name),
                self.operation(method, &reachable),
            );
        }

        json!({
            "openapi": "3.0.3",
            "info": {
                "title": "Switchboard server API",
                "version": env!("CARGO_PKG_VERSION"),
                "description": DESCRIPTION,
                "license": { "name": "Apache-2.0" },
            },
            "security": security,
            "paths": paths,
            "components": {
                "schemas": schemas,
                "responses": responses,
                "securitySchemes": security_schemes,
            },
        })
    }

    fn operation(&self, method: &Method, reachable: &Reachable) -> Value {
        let request = format!("{PACKAGE}.{}", method.request);
        let result = format!("{PACKAGE}.{}", method.result);
        let comment = self
            .messages
            .get(&request)
            .map(|m| m.comment.as_str())
            .unwrap_or_default();
        let result_comment = self
            .messages
            .get(&result)
            .map(|m| m.comment.as_str())
            .unwrap_or_default();
        let mut responses = Map::new();
        responses.insert(
            "200".into(),
            json!({
                "description": non_empty(result_comment, "The result."),
                "content": {
                    "application/json": {
                        "schema": schema_ref(&result, Direction::Reply, reachable),
                    },
                },
            }),
        );
        for (status, component, _) in ERROR_STATUSES {
            responses.insert(
                (*status).to_owned(),
                json!({ "$ref": format!("#/components/responses/{component}") }),
            );
        }
        json!({
            "post": {
                "operationId": method.name,
                "summary": summary(method.name, comment),
                "description": comment,
                "requestBody": {
                    "required": true,
                    "content": {
                        "application/json": {
                            "schema": schema_ref(&request, Direction::Request, reachable),
                        },
                    },
                },
                "responses": responses,
            }
        })
    }

    /// The messages each direction's schemas need: requests from the
    /// methods' request messages, replies from their results and `Error`.
    fn reachable(&self) -> Reachable {
        let mut out = Reachable::new();
        let requests = METHODS.iter().map(|m| m.request);
        let replies = METHODS.iter().map(|m| m.result).chain([ERROR_MESSAGE]);
        for (direction, roots) in [
            (Direction::Request, requests.collect::<Vec<_>>()),
            (Direction::Reply, replies.collect::<Vec<_>>()),
        ] {
            let seen = out.entry(direction).or_default();
            let mut queue: VecDeque<String> =
                roots.iter().map(|r| format!("{PACKAGE}.{r}")).collect();
            while let Some(name) = queue.pop_front() {
                let Some(entry) = self.messages.get(&name) else {
                    continue;
                };
                if !seen.insert(name) {
                    continue;
                }
                for field in &entry.descriptor.field {
                    if let Some(target) = self.field_message(field) {
                        queue.push_back(target);
                    }
                }
            }
        }
        out
    }

    /// The message a field refers to, looking through map entries.
    fn field_message(&self, field: &FieldDescriptorProto) -> Option<String> {
        if !matches!(field.r#type(), Type::Message | Type::Group) {
            return None;
        }
        let name = field.type_name().trim_start_matches('.').to_owned();
        match self.map_entry(&name) {
            Some(entry) => entry
                .field
                .get(1)
                .and_then(|value| self.field_message(value)),
            None => Some(name),
        }
    }

    /// The map entry message of this name, when it is one.
    fn map_entry(&self, name: &str) -> Option<&DescriptorProto> {
        let message = &self.messages.get(name)?.descriptor;
        message
            .options
            .as_ref()
            .is_some_and(|o| o.map_entry())
            .then_some(message)
    }

    fn message_schema(&self, name: &str, direction: Direction, reachable: &Reachable) -> Value {
        let Some(entry) = self.messages.get(name) else {
            return json!({});
        };
        let message = &entry.descriptor;
        let payload_fields = HAND_MAPPED_FIELDS.iter().any(|(n, _)| *n == name);

        let mut properties = Map::new();
        let mut constraints: Vec<Value> = Vec::new();
        let mut notes: Vec<String> = Vec::new();
        for (i, field) in message.field.iter().enumerate() {
            let json_name = json_name(field);
            let comment = entry
                .field_comments
                .get(i)
                .map(String::as_str)
                .unwrap_or_default();
            if payload_fields && field.r#type() == Type::Bytes && field.label() != Label::Repeated {
                let base64_name = format!("{json_name}Base64");
                let (value_note, base64_note) = match direction {
                    Direction::Request => (
                        format!(
                            "Any JSON value, stored as its exact text (nested at most 32 levels); \
                             for bytes that are not JSON text use `{base64_name}` instead, not both."
                        ),
                        format!(
                            "`{json_name}` as standard base64 (padding optional), for bytes that \
                             are not JSON text; not together with `{json_name}`."
                        ),
                    ),
                    Direction::Reply => (
                        format!(
                            "A JSON value; present when the payload is JSON text, otherwise \
                             `{base64_name}` is."
                        ),
                        format!(
                            "`{json_name}` as standard base64; present instead of `{json_name}` \
                             when the payload is not JSON text."
                        ),
                    ),
                };
                properties.insert(
                    json_name.clone(),
                    json!({ "description": join(comment, &value_note) }),
                );
                properties.insert(
                    base64_name.clone(),
                    json!({ "type": "string", "format": "byte", "description": base64_note }),
                );
                constraints.push(at_most_one(&[json_name, base64_name]));
                continue;
            }
            let mut schema = self.field_schema(field, direction, reachable);
            if !comment.is_empty() {
                schema = describe(schema, comment);
            }
            properties.insert(json_name, schema);
        }
        for (k, oneof) in message.oneof_decl.iter().enumerate() {
            let members: Vec<String> = message
                .field
                .iter()
                .filter(|f| f.oneof_index == Some(index(k)) && !f.proto3_optional())
                .map(json_name)
                .collect();
            if members.len() < 2 {
                continue; // a proto3 `optional` field's synthetic oneof
            }
            notes.push(format!(
                "At most one of {} (oneof `{}`).",
                members
                    .iter()
                    .map(|m| format!("`{m}`"))
                    .collect::<Vec<_>>()
                    .join(", "),
                oneof.name()
            ));
            constraints.push(at_most_one(&members));
        }

        let mut schema = Map::new();
        schema.insert("type".into(), "object".into());
        let description = notes.iter().fold(entry.comment.clone(), |d, n| join(&d, n));
        if !description.is_empty() {
            schema.insert("description".into(), description.into());
        }
        if !properties.is_empty() {
            schema.insert("properties".into(), properties.into());
        }
        schema.insert(
            "additionalProperties".into(),
            (direction == Direction::Request).into(),
        );
        if direction == Direction::Request {
            let short = name.strip_prefix(PACKAGE).and_then(|n| n.strip_prefix('.'));
            if let Some(example) = short.and_then(example) {
                schema.insert("example".into(), example);
            }
        }
        match constraints.len() {
            0 => {}
            1 => {
                if let Some(Value::Object(c)) = constraints.pop() {
                    schema.extend(c);
                }
            }
            _ => {
                schema.insert("allOf".into(), constraints.into());
            }
        }
        Value::Object(schema)
    }

    fn field_schema(
        &self,
        field: &FieldDescriptorProto,
        direction: Direction,
        reachable: &Reachable,
    ) -> Value {
        let type_name = field.type_name().trim_start_matches('.');
        if let Some(entry) = self.map_entry(type_name) {
            let value = entry
                .field
                .get(1)
                .map(|v| self.value_schema(v, direction, reachable))
                .unwrap_or_else(|| json!({}));
            return json!({ "type": "object", "additionalProperties": value });
        }
        let value = self.value_schema(field, direction, reachable);
        if field.label() == Label::Repeated {
            json!({ "type": "array", "items": value })
        } else {
            value
        }
    }

    /// The schema of one value of a field (an element of a repeated field).
    fn value_schema(
        &self,
        field: &FieldDescriptorProto,
        direction: Direction,
        reachable: &Reachable,
    ) -> Value {
        let request = direction == Direction::Request;
        match field.r#type() {
            Type::Double | Type::Float => json!({ "type": "number" }),
            Type::Int32 | Type::Sint32 | Type::Sfixed32 => {
                json!({ "type": "integer", "format": "int32" })
            }
            Type::Uint32 | Type::Fixed32 => {
                json!({ "type": "integer", "minimum": 0, "maximum": u32::MAX })
            }
            Type::Int64 | Type::Sint64 | Type::Sfixed64 if request => json!({
                "oneOf": [
                    { "type": "string", "pattern": "^-?[0-9]{1,18}$" },
                    { "type": "integer", "format": "int64", "minimum": i64::MIN, "maximum": i64::MAX },
                ],
                "description": "A 64-bit integer: a decimal string or a JSON integer.",
            }),
            Type::Int64 | Type::Sint64 | Type::Sfixed64 => json!({
                "type": "string",
                "pattern": "^-?[0-9]+$",
                "description": "A 64-bit integer as a decimal string.",
            }),
            Type::Uint64 | Type::Fixed64 if request => json!({
                "oneOf": [
                    { "type": "string", "pattern": "^[0-9]{1,19}$" },
                    { "type": "integer", "minimum": 0, "maximum": u64::MAX },
                ],
                "description": "An unsigned 64-bit integer: a decimal string or a JSON integer.",
            }),
            Type::Uint64 | Type::Fixed64 => json!({
                "type": "string",
                "pattern": "^[0-9]+$",
                "description": "An unsigned 64-bit integer as a decimal string.",
            }),
            Type::Bool => json!({ "type": "boolean" }),
            Type::String => json!({ "type": "string" }),
            Type::Bytes => json!({ "type": "string", "format": "byte" }),
            Type::Enum => {
                let names: Vec<&str> = self
                    .enums
                    .get(field.type_name().trim_start_matches('.'))
                    .map(|e| e.value.iter().map(|v| v.name()).collect())
                    .unwrap_or_default();
                let by_name = json!({ "type": "string", "enum": names });
                if request {
                    json!({ "oneOf": [by_name, { "type": "integer", "format": "int32" }] })
                } else {
                    by_name
                }
            }
            Type::Message | Type::Group => schema_ref(
                field.type_name().trim_start_matches('.'),
                direction,
                reachable,
            ),
        }
    }
}

type Reachable = BTreeMap<Direction, BTreeSet<String>>;

/// A message's component name: its full proto name, with a suffix only if
/// requests and replies both use it (their schemas differ).
fn schema_name(name: &str, direction: Direction, reachable: &Reachable) -> String {
    let in_both = reachable.values().all(|names| names.contains(name));
    match (in_both, direction) {
        (false, _) => name.to_owned(),
        (true, Direction::Request) => format!("{name}.Input"),
        (true, Direction::Reply) => format!("{name}.Output"),
    }
}

fn schema_ref(name: &str, direction: Direction, reachable: &Reachable) -> Value {
    json!({ "$ref": format!("#/components/schemas/{}", schema_name(name, direction, reachable)) })
}

/// At most one of these properties: for two, "not both"; for more, exactly
/// one of "has this one" for each, or "has none".
fn at_most_one(names: &[String]) -> Value {
    let has = |name: &String| json!({ "required": [name] });
    if let [a, b] = names {
        return json!({ "not": { "required": [a, b] } });
    }
    let mut alternatives: Vec<Value> = names.iter().map(has).collect();
    alternatives.push(json!({ "not": { "anyOf": names.iter().map(has).collect::<Vec<_>>() } }));
    json!({ "oneOf": alternatives })
}

/// Adds a description to a field schema. OpenAPI 3.0 ignores siblings of
/// `$ref`, so a reference is wrapped in `allOf`.
fn describe(schema: Value, comment: &str) -> Value {
    match schema {
        Value::Object(mut map) if !map.contains_key("$ref") => {
            let text = match map.get("description").and_then(Value::as_str) {
                Some(existing) => join(comment, existing),
                None => comment.to_owned(),
            };
            map.insert("description".into(), text.into());
            Value::Object(map)
        }
        other => json!({ "allOf": [other], "description": comment }),
    }
}

fn json_name(field: &FieldDescriptorProto) -> String {
    match &field.json_name {
        Some(name) if !name.is_empty() => name.clone(),
        _ => lower_camel(field.name()),
    }
}

/// The proto3 JSON name of a field name (protoc's rule).
fn lower_camel(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    let mut upper = false;
    for c in name.chars() {
        if c == '_' {
            upper = true;
        } else if upper {
            out.extend(c.to_uppercase());
            upper = false;
        } else {
            out.push(c);
        }
    }
    out
}

/// A proto comment as one paragraph per blank-line-separated block.
fn clean(comment: &str) -> String {
    comment
        .split("\n\n")
        .map(|block| block.split_whitespace().collect::<Vec<_>>().join(" "))
        .filter(|p| !p.is_empty())
        .collect::<Vec<_>>()
        .join("\n\n")
}

/// An operation's summary: the request comment without its "`method`: "
/// prefix, to the end of its first sentence, capitalised.
fn summary(method: &str, comment: &str) -> String {
    let text = comment
        .strip_prefix(&format!("`{method}`: "))
        .unwrap_or(comment);
    let first = text
        .split(". ")
        .next()
        .unwrap_or(text)
        .trim_end_matches('.');
    let mut chars = first.chars();
    match chars.next() {
        Some(c) => c.to_uppercase().chain(chars).collect(),
        None => method.to_owned(),
    }
}

fn join(a: &str, b: &str) -> String {
    match (a.is_empty(), b.is_empty()) {
        (true, _) => b.to_owned(),
        (_, true) => a.to_owned(),
        _ => format!("{a} {b}"),
    }
}

fn non_empty<'a>(text: &'a str, fallback: &'a str) -> &'a str {
    if text.is_empty() { fallback } else { text }
}

/// A descriptor index as the `i32` of a source-code-info path. Schemas have
/// far fewer than 2^31 elements.
fn index(i: usize) -> i32 {
    i32::try_from(i).unwrap_or(i32::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_comments() {
        assert_eq!(lower_camel("idempotency_key"), "idempotencyKey");
        assert_eq!(lower_camel("room"), "room");
        assert_eq!(clean(" Room name.\n"), "Room name.");
        assert_eq!(clean(" A\n B.\n\n C.\n"), "A B.\n\nC.");
        assert_eq!(
            summary("publish", "`publish`: publish a payload into one room."),
            "Publish a payload into one room"
        );
        assert_eq!(
            summary("batch", "`batch`: several calls. Then more."),
            "Several calls"
        );
    }

    #[test]
    fn every_method_has_an_example_the_server_decodes() {
        use crate::wire::api;
        fn decodes<T: serde::de::DeserializeOwned>(value: &Value) {
            if let Err(e) = serde_json::from_value::<T>(value.clone()) {
                panic!("{value}: {e}");
            }
        }
        for method in METHODS {
            let value =
                example(method.request).unwrap_or_else(|| panic!("{}: no example", method.request));
            match method.request {
                "PublishRequest" => decodes::<api::PublishRequest>(&value),
                "BroadcastRequest" => decodes::<api::BroadcastRequest>(&value),
                "PresenceRequest" => decodes::<api::PresenceRequest>(&value),
                "PresenceStatsRequest" => decodes::<api::PresenceStatsRequest>(&value),
                "HistoryRequest" => decodes::<api::HistoryRequest>(&value),
                "HistoryRemoveRequest" => decodes::<api::HistoryRemoveRequest>(&value),
                "SubscribeRequest" => decodes::<api::SubscribeRequest>(&value),
                "UnsubscribeRequest" => decodes::<api::UnsubscribeRequest>(&value),
                "DisconnectRequest" => decodes::<api::DisconnectRequest>(&value),
                "RefreshRequest" => decodes::<api::RefreshRequest>(&value),
                "RoomsRequest" => decodes::<api::RoomsRequest>(&value),
                "InfoRequest" => decodes::<api::InfoRequest>(&value),
                "TicketRequest" => decodes::<api::TicketRequest>(&value),
                "BatchRequest" => decodes::<api::BatchRequest>(&value),
                other => panic!("{other}: add it to this test"),
            }
            let doc = document();
            let schema = &doc["components"]["schemas"][format!("{PACKAGE}.{}", method.request)];
            assert_eq!(schema["example"], value, "{}", method.request);
        }
    }

    #[test]
    fn payloads_oneofs_and_integers() {
        let doc = document();
        let schemas = &doc["components"]["schemas"];
        let publish = &schemas["switchboard.api.v1.PublishRequest"];
        assert_eq!(publish["additionalProperties"], true);
        assert_eq!(publish["properties"]["dataBase64"]["format"], "byte");
        assert_eq!(publish["not"]["required"], json!(["data", "dataBase64"]));
        assert!(publish["properties"]["idempotencyKey"].is_object());
        let result = &schemas["switchboard.api.v1.PublishResult"];
        assert_eq!(result["additionalProperties"], false);
        assert_eq!(result["properties"]["offset"]["type"], "string");
        let refresh = &schemas["switchboard.api.v1.RefreshRequest"];
        assert!(refresh["properties"]["expireAt"]["oneOf"].is_array());
        let call = &schemas["switchboard.api.v1.ApiCall"];
        assert_eq!(call["oneOf"].as_array().map(Vec::len), Some(14));
        let presence = &schemas["switchboard.api.v1.PresenceResult"];
        assert_eq!(
            presence["properties"]["clients"]["additionalProperties"]["$ref"],
            "#/components/schemas/switchboard.v1.ClientInfo"
        );
    }
}
