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
        RawValue::from_string(without_line_breaks(text))
            .ok()
            .map(JsonPayload::Owned)
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

/// Reads a payload given as a JSON value (`data`).
fn read_payload_json<'de, A: MapAccess<'de>>(map: &mut A) -> Result<Bytes, A::Error> {
    let raw: Box<RawValue> = map.next_value()?;
    if super::json::depth(raw.get().as_bytes()) > PAYLOAD_MAX_DEPTH {
        return Err(de::Error::custom(format_args!(
            "{TOO_DEEP_MARKER} {PAYLOAD_MAX_DEPTH} levels"
        )));
    }
    let text: Box<str> = raw.into();
    Ok(Bytes::from(text.into_boxed_bytes()))
}

/// Reads a payload given as base64 (`dataBase64`).
fn read_payload_base64<'de, A: MapAccess<'de>>(map: &mut A, name: &str) -> Result<Bytes, A::Error> {
    let text: Option<String> = map.next_value()?;
    BASE64
        .decode(text.unwrap_or_default())
        .map(Bytes::from)
        .map_err(|e| de::Error::custom(format_args!("{name}: invalid base64: {e}")))
}

/// A uint64 or int64 field: proto3 JSON writes them as decimal strings and
/// accepts strings or numbers.
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

/// A non-payload field of a hand-mapped message, as proto3 JSON writes and
/// reads it: defaults are omitted, `null` reads as the default.
trait JsonField: Sized {
    /// Whether the field holds its default value (and is omitted).
    fn is_default(&self) -> bool;
    /// Writes the field under `name`.
    fn write<S: SerializeStruct>(&self, out: &mut S, name: &'static str) -> Result<(), S::Error>;
    /// Reads the field's value.
    fn read<'de, A: MapAccess<'de>>(map: &mut A) -> Result<Self, A::Error>;
}

/// Fields JSON writes as themselves.
macro_rules! plain_json_field {
    ($($ty:ty),*) => {$(
        impl JsonField for $ty {
            fn is_default(&self) -> bool {
                *self == <$ty>::default()
            }
            fn write<S: SerializeStruct>(&self, out: &mut S, name: &'static str) -> Result<(), S::Error> {
                out.serialize_field(name, self)
            }
            fn read<'de, A: MapAccess<'de>>(map: &mut A) -> Result<Self, A::Error> {
                Ok(map.next_value::<Option<Self>>()?.unwrap_or_default())
            }
        }
    )*};
}

plain_json_field!(String, bool, Vec<String>, BTreeMap<String, String>, Option<ClientInfo>);

/// Integers: 64-bit ones are written as strings; all accept either form.
macro_rules! int_json_field {
    ($($ty:ty => $as_string:literal),*) => {$(
        impl JsonField for $ty {
            fn is_default(&self) -> bool {
                *self == 0
            }
            fn write<S: SerializeStruct>(&self, out: &mut S, name: &'static str) -> Result<(), S::Error> {
                if $as_string {
                    out.serialize_field(name, &AsString(*self))
                } else {
                    out.serialize_field(name, self)
                }
            }
            fn read<'de, A: MapAccess<'de>>(map: &mut A) -> Result<Self, A::Error> {
                Ok(map.next_value::<Int<$ty>>()?.0)
            }
        }
    )*};
}

int_json_field!(u32 => false, u64 => true, i64 => true);

/// Rejects a field given twice.
fn once<E: de::Error>(seen: &mut Vec<&'static str>, field: &'static str) -> Result<(), E> {
    if seen.contains(&field) {
        return Err(E::duplicate_field(field));
    }
    seen.push(field);
    Ok(())
}

/// The JSON mapping of a payload-carrying message: each field with its
/// lowerCamelCase name (the proto name is the Rust field name and is
/// accepted on input too); the one marked `payload` is a JSON value under
/// its name or base64 under `<name>Base64`.
macro_rules! json_mapping {
    ($ty:ty, $name:literal, { $($field:ident: $($kind:ident)? $json:literal),* $(,)? }) => {
        impl Serialize for $ty {
            fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                // serde_json writes `{}` at once for a length of 0: give the
                // field count (an upper bound of what is written).
                let fields = [$(stringify!($field)),*].len();
                let mut out = serializer.serialize_struct($name, fields)?;
                $( json_mapping!(@write $($kind)?; &self.$field, &mut out, $json); )*
                out.end()
            }
        }

        impl<'de> Deserialize<'de> for $ty {
            fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                struct V;
                impl<'de> Visitor<'de> for V {
                    type Value = $ty;
                    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                        f.write_str(concat!("a JSON object for ", $name))
                    }
                    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<$ty, A::Error> {
                        let mut out = <$ty>::default();
                        let mut seen: Vec<&'static str> = Vec::new();
                        while let Some(key) = map.next_key::<Cow<'de, str>>()? {
                            let key = key.as_ref();
                            $(
                                if json_mapping!(@read $($kind)?; key, map, seen, out.$field, $json, stringify!($field)) {
                                    continue;
                                }
                            )*
                            map.next_value::<IgnoredAny>()?;
                        }
                        Ok(out)
                    }
                }
                deserializer.deserialize_map(V)
            }
        }
    };
    (@write payload; $value:expr, $out:expr, $json:literal) => {
        serialize_payload($out, $json, concat!($json, "Base64"), $value)?
    };
    (@write ; $value:expr, $out:expr, $json:literal) => {
        if !JsonField::is_default($value) {
            JsonField::write($value, $out, $json)?;
        }
    };
    (@read payload; $key:ident, $map:ident, $seen:ident, $place:expr, $json:literal, $proto:expr) => {
        if $key == $json || $key == $proto {
            once(&mut $seen, $json)?;
            $place = read_payload_json(&mut $map)?;
            true
        } else if $key == concat!($json, "Base64") || $key == concat!($proto, "_base64") {
            once(&mut $seen, $json)?;
            $place = read_payload_base64(&mut $map, concat!($json, "Base64"))?;
            true
        } else {
            false
        }
    };
    (@read ; $key:ident, $map:ident, $seen:ident, $place:expr, $json:literal, $proto:expr) => {
        if $key == $json || $key == $proto {
            once(&mut $seen, $json)?;
            $place = JsonField::read(&mut $map)?;
            true
        } else {
            false
        }
    };
}

/// Proto field names handled by the hand-written mapping of each message,
/// checked against the schema by a test.
pub const HAND_MAPPED_FIELDS: &[(&str, &[&str])] = &[
    ("switchboard.v1.ClientInfo", &["user", "client", "info"]),
    (
        "switchboard.v1.PublishRequest",
        &["room", "data", "tags", "exclude_self"],
    ),
    (
        "switchboard.v1.Publication",
        &["room", "offset", "data", "info", "tags", "time", "delta"],
    ),
    ("switchboard.v1.Message", &["data"]),
    (
        "switchboard.api.v1.PublishRequest",
        &["room", "data", "tags", "idempotency_key"],
    ),
    (
        "switchboard.api.v1.BroadcastRequest",
        &["rooms", "data", "tags", "idempotency_key"],
    ),
    (
        "switchboard.api.v1.TicketRequest",
        &[
            "user",
            "info",
            "subscribe",
            "publish",
            "ttl_seconds",
            "expire_at",
        ],
    ),
];

json_mapping!(ClientInfo, "switchboard.v1.ClientInfo", {
    user: "user",
    client: "client",
    info: payload "info",
});

json_mapping!(PublishRequest, "switchboard.v1.PublishRequest", {
    room: "room",
    data: payload "data",
    tags: "tags",
    exclude_self: "excludeSelf",
});

json_mapping!(Publication, "switchboard.v1.Publication", {
    room: "room",
    offset: "offset",
    data: payload "data",
    info: "info",
    tags: "tags",
    time: "time",
    delta: "delta",
});

json_mapping!(Message, "switchboard.v1.Message", {
    data: payload "data",
});

json_mapping!(api::PublishRequest, "switchboard.api.v1.PublishRequest", {
    room: "room",
    data: payload "data",
    tags: "tags",
    idempotency_key: "idempotencyKey",
});

json_mapping!(api::BroadcastRequest, "switchboard.api.v1.BroadcastRequest", {
    rooms: "rooms",
    data: payload "data",
    tags: "tags",
    idempotency_key: "idempotencyKey",
});

json_mapping!(api::TicketRequest, "switchboard.api.v1.TicketRequest", {
    user: "user",
    info: payload "info",
    subscribe: "subscribe",
    publish: "publish",
    ttl_seconds: "ttlSeconds",
    expire_at: "expireAt",
});
