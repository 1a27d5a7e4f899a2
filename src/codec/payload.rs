//! Payloads in the JSON framing, and the hand-written JSON mapping of the
//! messages that carry them (spec/03-messages.md, "Payloads").
//!
//! A payload is bytes in the schema. A JSON client sees those bytes:
//!
//! - as `"data": <value>` when they are a JSON text (RFC 8259, UTF-8) nested at
//!   most [`PAYLOAD_MAX_DEPTH`] levels: the value is embedded as is, except
//!   that line breaks between tokens are removed (a frame is one line);
//! - as `"dataBase64": "<standard base64>"` otherwise.
//!
//! A JSON client publishes either form; `data` is stored as the exact text of
//! the value. Nothing is ever converted silently: the field name says which
//! form a payload is in. The same rule holds for `ClientInfo.info`
//! (`info` / `infoBase64`).
//!
//! pbjson generates the JSON mapping of every other message; these four are
//! excluded in `build.rs` and mapped here, following proto3 JSON for every
//! non-payload field (lowerCamelCase names, proto names accepted on input,
//! 64-bit integers as strings, defaults omitted, unknown fields ignored).
//! A test checks the fields handled here against the schema.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt;

use base64::Engine as _;
use bytes::Bytes;
use serde::de::{self, IgnoredAny, MapAccess, Visitor};
use serde::ser::SerializeStruct;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::value::RawValue;

use super::PAYLOAD_MAX_DEPTH;
use crate::wire::api;
use crate::wire::v1::{ClientInfo, Message, Publication, PublishRequest};

/// The start of the error a too-deep payload produces, so the decoder can
/// report [`super::DecodeError::TooDeep`].
pub(crate) const TOO_DEEP_MARKER: &str = "payload nested deeper than";

/// Standard base64 alphabet; padding optional on input, written on output.
const BASE64: base64::engine::GeneralPurpose = base64::engine::GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    base64::engine::GeneralPurposeConfig::new()
        .with_decode_padding_mode(base64::engine::DecodePaddingMode::Indifferent),
);

/// A payload that is JSON, as it is embedded in a JSON frame.
enum JsonPayload<'a> {
    /// The bytes as they are.
    Borrowed(&'a RawValue),
    /// The bytes with line breaks between tokens removed.
    Owned(Box<RawValue>),
}

/// Parses a payload as JSON once: `None` when it travels as base64.
fn json_payload(payload: &[u8]) -> Option<JsonPayload<'_>> {
    if payload.is_empty() || super::json::depth(payload) > PAYLOAD_MAX_DEPTH {
        return None;
    }
    let raw: &RawValue = serde_json::from_slice(payload).ok()?;
    let text = raw.get();
    if text.bytes().any(|b| b == b'\n' || b == b'\r') {
        RawValue::from_string(without_line_breaks(text)).ok().map(JsonPayload::Owned)
    } else {
        Some(JsonPayload::Borrowed(raw))
    }
}

/// The payload's JSON text as a JSON client sees it, or `None` when the bytes
/// are not a JSON payload and travel as base64.
pub fn as_json(payload: &[u8]) -> Option<Cow<'_, str>> {
    json_payload(payload).map(|p| match p {
        JsonPayload::Borrowed(raw) => Cow::Borrowed(raw.get()),
        JsonPayload::Owned(raw) => Cow::Owned(raw.get().to_owned()),
    })
}

/// The bytes a JSON client would publish back for this payload: equal to the
/// input unless it is JSON with whitespace around it or line breaks inside
/// (spec/03-messages.md, "Payloads"). Tests use it to state round trips.
pub fn normalized(payload: &Bytes) -> Bytes {
    match as_json(payload) {
        Some(text) if text.as_bytes() != &payload[..] => Bytes::from(text.into_owned()),
        _ => payload.clone(),
    }
}

/// Removes CR and LF outside strings (inside strings JSON forbids them raw).
fn without_line_breaks(text: &str) -> String {
    text.chars().filter(|&c| c != '\n' && c != '\r').collect()
}

fn serialize_payload<S: SerializeStruct>(
    out: &mut S,
    json_name: &'static str,
    base64_name: &'static str,
    payload: &[u8],
) -> Result<(), S::Error> {
    if payload.is_empty() {
        return Ok(());
    }
    match json_payload(payload) {
        Some(JsonPayload::Borrowed(raw)) => out.serialize_field(json_name, raw),
        Some(JsonPayload::Owned(raw)) => out.serialize_field(json_name, &raw),
        None => out.serialize_field(base64_name, &BASE64.encode(payload)),
    }
}

/// A payload read from a JSON frame: `data` (a JSON value) or `dataBase64`.
#[derive(Default)]
struct PayloadField(Option<Bytes>);

impl PayloadField {
    fn json<'de, A: MapAccess<'de>>(&mut self, map: &mut A, name: &str) -> Result<(), A::Error> {
        let raw: Box<RawValue> = map.next_value()?;
        if super::json::depth(raw.get().as_bytes()) > PAYLOAD_MAX_DEPTH {
            return Err(de::Error::custom(format_args!(
                "{TOO_DEEP_MARKER} {PAYLOAD_MAX_DEPTH} levels"
            )));
        }
        let text: Box<str> = raw.into();
        self.set(Bytes::from(text.into_boxed_bytes()), name)
    }

    fn base64<'de, A: MapAccess<'de>>(&mut self, map: &mut A, name: &str) -> Result<(), A::Error> {
        let text: Option<String> = map.next_value()?;
        let bytes = BASE64
            .decode(text.unwrap_or_default())
            .map_err(|e| de::Error::custom(format_args!("{name}: invalid base64: {e}")))?;
        self.set(Bytes::from(bytes), name)
    }

    fn set<E: de::Error>(&mut self, bytes: Bytes, name: &str) -> Result<(), E> {
        if self.0.is_some() {
            return Err(E::custom(format_args!(
                "{name}: a payload is given twice (as a JSON value and as base64)"
            )));
        }
        self.0 = Some(bytes);
        Ok(())
    }

    fn into_bytes(self) -> Bytes {
        self.0.unwrap_or_default()
    }
}

/// A uint64 or int64 field: proto3 JSON writes them as decimal strings and
/// accepts strings or numbers.
fn serialize_int<S: SerializeStruct, T: fmt::Display>(
    out: &mut S,
    name: &'static str,
    value: T,
) -> Result<(), S::Error> {
    out.serialize_field(name, &AsString(value))
}

/// Serializes a number as a JSON string without an intermediate `String`.
struct AsString<T>(T);

impl<T: fmt::Display> Serialize for AsString<T> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(&self.0)
    }
}

struct Int<T>(T);

impl<'de, T> Deserialize<'de> for Int<T>
where
    T: TryFrom<u64> + TryFrom<i64> + std::str::FromStr + Default,
{
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct IntVisitor<T>(std::marker::PhantomData<T>);
        impl<T> Visitor<'_> for IntVisitor<T>
        where
            T: TryFrom<u64> + TryFrom<i64> + std::str::FromStr + Default,
        {
            type Value = Int<T>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an integer, or a string holding one")
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
                T::try_from(v)
                    .map(Int)
                    .map_err(|_| E::custom("integer out of range"))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
                T::try_from(v)
                    .map(Int)
                    .map_err(|_| E::custom("integer out of range"))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                v.parse()
                    .map(Int)
                    .map_err(|_| E::custom("invalid integer string"))
            }
            fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
                Ok(Int(T::default()))
            }
        }
        deserializer.deserialize_any(IntVisitor(std::marker::PhantomData))
    }
}

/// Reads a non-payload field where `null` means the default (proto3 JSON).
fn value_or_default<'de, A: MapAccess<'de>, T: Deserialize<'de> + Default>(
    map: &mut A,
) -> Result<T, A::Error> {
    Ok(map.next_value::<Option<T>>()?.unwrap_or_default())
}

/// Rejects a field given twice.
fn once<E: de::Error>(seen: &mut Vec<&'static str>, field: &'static str) -> Result<(), E> {
    if seen.contains(&field) {
        return Err(E::duplicate_field(field));
    }
    seen.push(field);
    Ok(())
}

/// Implements `Deserialize` through a map visitor; `$body` handles one key.
macro_rules! map_deserialize {
    ($ty:ty, $name:literal, |$map:ident, $key:ident, $seen:ident, $out:ident| $body:block) => {
        impl<'de> Deserialize<'de> for $ty {
            fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                struct V;
                impl<'de> Visitor<'de> for V {
                    type Value = $ty;
                    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                        f.write_str(concat!("a JSON object for ", $name))
                    }
                    fn visit_map<A: MapAccess<'de>>(self, mut $map: A) -> Result<$ty, A::Error> {
                        let mut $out = <$ty>::default();
                        let mut $seen: Vec<&'static str> = Vec::new();
                        while let Some($key) = $map.next_key::<Cow<'de, str>>()? {
                            $body
                        }
                        Ok($out)
                    }
                }
                deserializer.deserialize_map(V)
            }
        }
    };
}

/// Proto field names handled by the hand-written mapping of each message,
/// checked against the schema by a test.
pub const HAND_MAPPED_FIELDS: &[(&str, &[&str])] = &[
    ("switchboard.v1.ClientInfo", &["user", "client", "info"]),
    ("switchboard.v1.PublishRequest", &["room", "data", "tags", "exclude_self"]),
    ("switchboard.v1.Publication", &["room", "offset", "data", "info", "tags", "time"]),
    ("switchboard.v1.Message", &["data"]),
    ("switchboard.api.v1.PublishRequest", &["room", "data", "tags", "idempotency_key"]),
    ("switchboard.api.v1.BroadcastRequest", &["rooms", "data", "tags", "idempotency_key"]),
    (
        "switchboard.api.v1.TicketRequest",
        &["user", "info", "subscribe", "publish", "ttl_seconds", "expire_at"],
    ),
];

impl Serialize for ClientInfo {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut out = serializer.serialize_struct("switchboard.v1.ClientInfo", 3)?;
        if !self.user.is_empty() {
            out.serialize_field("user", &self.user)?;
        }
        if !self.client.is_empty() {
            out.serialize_field("client", &self.client)?;
        }
        serialize_payload(&mut out, "info", "infoBase64", &self.info)?;
        out.end()
    }
}

map_deserialize!(
    ClientInfo,
    "switchboard.v1.ClientInfo",
    |map, key, seen, out| {
        let mut info = PayloadField::default();
        match key.as_ref() {
            "user" => {
                once(&mut seen, "user")?;
                out.user = value_or_default(&mut map)?;
            }
            "client" => {
                once(&mut seen, "client")?;
                out.client = value_or_default(&mut map)?;
            }
            "info" => {
                once(&mut seen, "info")?;
                info.json(&mut map, "info")?;
            }
            "infoBase64" | "info_base64" => {
                once(&mut seen, "info")?;
                info.base64(&mut map, "infoBase64")?;
            }
            _ => {
                map.next_value::<IgnoredAny>()?;
            }
        }
        if info.0.is_some() {
            out.info = info.into_bytes();
        }
    }
);

impl Serialize for PublishRequest {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut out = serializer.serialize_struct("switchboard.v1.PublishRequest", 4)?;
        if !self.room.is_empty() {
            out.serialize_field("room", &self.room)?;
        }
        serialize_payload(&mut out, "data", "dataBase64", &self.data)?;
        if !self.tags.is_empty() {
            out.serialize_field("tags", &self.tags)?;
        }
        if self.exclude_self {
            out.serialize_field("excludeSelf", &true)?;
        }
        out.end()
    }
}

map_deserialize!(
    PublishRequest,
    "switchboard.v1.PublishRequest",
    |map, key, seen, out| {
        let mut data = PayloadField::default();
        match key.as_ref() {
            "room" => {
                once(&mut seen, "room")?;
                out.room = value_or_default(&mut map)?;
            }
            "data" => {
                once(&mut seen, "data")?;
                data.json(&mut map, "data")?;
            }
            "dataBase64" | "data_base64" => {
                once(&mut seen, "data")?;
                data.base64(&mut map, "dataBase64")?;
            }
            "tags" => {
                once(&mut seen, "tags")?;
                out.tags = value_or_default::<_, BTreeMap<String, String>>(&mut map)?;
            }
            "excludeSelf" | "exclude_self" => {
                once(&mut seen, "excludeSelf")?;
                out.exclude_self = value_or_default(&mut map)?;
            }
            _ => {
                map.next_value::<IgnoredAny>()?;
            }
        }
        if data.0.is_some() {
            out.data = data.into_bytes();
        }
    }
);

impl Serialize for Publication {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut out = serializer.serialize_struct("switchboard.v1.Publication", 6)?;
        if !self.room.is_empty() {
            out.serialize_field("room", &self.room)?;
        }
        if self.offset != 0 {
            serialize_int(&mut out, "offset", self.offset)?;
        }
        serialize_payload(&mut out, "data", "dataBase64", &self.data)?;
        if let Some(info) = &self.info {
            out.serialize_field("info", info)?;
        }
        if !self.tags.is_empty() {
            out.serialize_field("tags", &self.tags)?;
        }
        if self.time != 0 {
            serialize_int(&mut out, "time", self.time)?;
        }
        out.end()
    }
}

map_deserialize!(
    Publication,
    "switchboard.v1.Publication",
    |map, key, seen, out| {
        let mut data = PayloadField::default();
        match key.as_ref() {
            "room" => {
                once(&mut seen, "room")?;
                out.room = value_or_default(&mut map)?;
            }
            "offset" => {
                once(&mut seen, "offset")?;
                out.offset = map.next_value::<Int<u64>>()?.0;
            }
            "data" => {
                once(&mut seen, "data")?;
                data.json(&mut map, "data")?;
            }
            "dataBase64" | "data_base64" => {
                once(&mut seen, "data")?;
                data.base64(&mut map, "dataBase64")?;
            }
            "info" => {
                once(&mut seen, "info")?;
                out.info = map.next_value()?;
            }
            "tags" => {
                once(&mut seen, "tags")?;
                out.tags = value_or_default::<_, BTreeMap<String, String>>(&mut map)?;
            }
            "time" => {
                once(&mut seen, "time")?;
                out.time = map.next_value::<Int<i64>>()?.0;
            }
            _ => {
                map.next_value::<IgnoredAny>()?;
            }
        }
        if data.0.is_some() {
            out.data = data.into_bytes();
        }
    }
);

impl Serialize for Message {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut out = serializer.serialize_struct("switchboard.v1.Message", 1)?;
        serialize_payload(&mut out, "data", "dataBase64", &self.data)?;
        out.end()
    }
}

map_deserialize!(Message, "switchboard.v1.Message", |map, key, seen, out| {
    let mut data = PayloadField::default();
    match key.as_ref() {
        "data" => {
            once(&mut seen, "data")?;
            data.json(&mut map, "data")?;
        }
        "dataBase64" | "data_base64" => {
            once(&mut seen, "data")?;
            data.base64(&mut map, "dataBase64")?;
        }
        _ => {
            map.next_value::<IgnoredAny>()?;
        }
    }
    if data.0.is_some() {
        out.data = data.into_bytes();
    }
});

impl Serialize for api::PublishRequest {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut out = serializer.serialize_struct("switchboard.api.v1.PublishRequest", 4)?;
        if !self.room.is_empty() {
            out.serialize_field("room", &self.room)?;
        }
        serialize_payload(&mut out, "data", "dataBase64", &self.data)?;
        if !self.tags.is_empty() {
            out.serialize_field("tags", &self.tags)?;
        }
        if !self.idempotency_key.is_empty() {
            out.serialize_field("idempotencyKey", &self.idempotency_key)?;
        }
        out.end()
    }
}

map_deserialize!(api::PublishRequest, "switchboard.api.v1.PublishRequest", |map, key, seen, out| {
    let mut data = PayloadField::default();
    match key.as_ref() {
        "room" => {
            once(&mut seen, "room")?;
            out.room = value_or_default(&mut map)?;
        }
        "data" => {
            once(&mut seen, "data")?;
            data.json(&mut map, "data")?;
        }
        "dataBase64" | "data_base64" => {
            once(&mut seen, "data")?;
            data.base64(&mut map, "dataBase64")?;
        }
        "tags" => {
            once(&mut seen, "tags")?;
            out.tags = value_or_default::<_, BTreeMap<String, String>>(&mut map)?;
        }
        "idempotencyKey" | "idempotency_key" => {
            once(&mut seen, "idempotencyKey")?;
            out.idempotency_key = value_or_default(&mut map)?;
        }
        _ => {
            map.next_value::<IgnoredAny>()?;
        }
    }
    if data.0.is_some() {
        out.data = data.into_bytes();
    }
});

impl Serialize for api::BroadcastRequest {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut out = serializer.serialize_struct("switchboard.api.v1.BroadcastRequest", 4)?;
        if !self.rooms.is_empty() {
            out.serialize_field("rooms", &self.rooms)?;
        }
        serialize_payload(&mut out, "data", "dataBase64", &self.data)?;
        if !self.tags.is_empty() {
            out.serialize_field("tags", &self.tags)?;
        }
        if !self.idempotency_key.is_empty() {
            out.serialize_field("idempotencyKey", &self.idempotency_key)?;
        }
        out.end()
    }
}

map_deserialize!(api::BroadcastRequest, "switchboard.api.v1.BroadcastRequest", |map, key, seen, out| {
    let mut data = PayloadField::default();
    match key.as_ref() {
        "rooms" => {
            once(&mut seen, "rooms")?;
            out.rooms = value_or_default(&mut map)?;
        }
        "data" => {
            once(&mut seen, "data")?;
            data.json(&mut map, "data")?;
        }
        "dataBase64" | "data_base64" => {
            once(&mut seen, "data")?;
            data.base64(&mut map, "dataBase64")?;
        }
        "tags" => {
            once(&mut seen, "tags")?;
            out.tags = value_or_default::<_, BTreeMap<String, String>>(&mut map)?;
        }
        "idempotencyKey" | "idempotency_key" => {
            once(&mut seen, "idempotencyKey")?;
            out.idempotency_key = value_or_default(&mut map)?;
        }
        _ => {
            map.next_value::<IgnoredAny>()?;
        }
    }
    if data.0.is_some() {
        out.data = data.into_bytes();
    }
});

impl Serialize for api::TicketRequest {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut out = serializer.serialize_struct("switchboard.api.v1.TicketRequest", 6)?;
        if !self.user.is_empty() {
            out.serialize_field("user", &self.user)?;
        }
        serialize_payload(&mut out, "info", "infoBase64", &self.info)?;
        if !self.subscribe.is_empty() {
            out.serialize_field("subscribe", &self.subscribe)?;
        }
        if !self.publish.is_empty() {
            out.serialize_field("publish", &self.publish)?;
        }
        if self.ttl_seconds != 0 {
            out.serialize_field("ttlSeconds", &self.ttl_seconds)?;
        }
        if self.expire_at != 0 {
            serialize_int(&mut out, "expireAt", self.expire_at)?;
        }
        out.end()
    }
}

map_deserialize!(api::TicketRequest, "switchboard.api.v1.TicketRequest", |map, key, seen, out| {
    let mut info = PayloadField::default();
    match key.as_ref() {
        "user" => {
            once(&mut seen, "user")?;
            out.user = value_or_default(&mut map)?;
        }
        "info" => {
            once(&mut seen, "info")?;
            info.json(&mut map, "info")?;
        }
        "infoBase64" | "info_base64" => {
            once(&mut seen, "info")?;
            info.base64(&mut map, "infoBase64")?;
        }
        "subscribe" => {
            once(&mut seen, "subscribe")?;
            out.subscribe = value_or_default(&mut map)?;
        }
        "publish" => {
            once(&mut seen, "publish")?;
            out.publish = value_or_default(&mut map)?;
        }
        "ttlSeconds" | "ttl_seconds" => {
            once(&mut seen, "ttlSeconds")?;
            out.ttl_seconds = map.next_value::<Int<u32>>()?.0;
        }
        "expireAt" | "expire_at" => {
            once(&mut seen, "expireAt")?;
            out.expire_at = map.next_value::<Int<i64>>()?.0;
        }
        _ => {
            map.next_value::<IgnoredAny>()?;
        }
    }
    if info.0.is_some() {
        out.info = info.into_bytes();
    }
});
