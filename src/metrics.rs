//! Metric names and the few functions that record them, so every name is
//! written once. Exported in Prometheus format at `/metrics` (src/api).
//!
//! Recording goes through the `metrics` facade: without an installed recorder
//! (library use, tests) every call is a cheap no-op. Nothing here is per
//! subscriber: fan-out records one increment per publication.

use std::time::Duration;

use metrics::{counter, gauge, histogram};

use crate::auth::AuthError;
use crate::codec::Encoding;
use crate::engine::hub::Fanout;

/// Describes every metric (help texts), once at start.
pub fn describe() {
    use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
    describe_gauge!("switchboard_connections", "Open client connections.");
    describe_counter!(
        "switchboard_connections_total",
        "Client connections accepted, by encoding."
    );
    describe_gauge!(
        "switchboard_subscriptions",
        "Active subscriptions (connection × room)."
    );
    describe_gauge!("switchboard_rooms", "Rooms with at least one local member.");
    describe_counter!("switchboard_frames_in_total", "Commands received, by kind.");
    describe_counter!(
        "switchboard_bytes_in_total",
        Unit::Bytes,
        "Bytes received from clients."
    );
    describe_counter!(
        "switchboard_frames_out_total",
        "Frames queued for clients by fan-out."
    );
    describe_counter!(
        "switchboard_bytes_out_total",
        Unit::Bytes,
        "Bytes sent to clients."
    );
    describe_counter!(
        "switchboard_publications_total",
        "Publications accepted from clients."
    );
    describe_counter!(
        "switchboard_encodings_total",
        "Frames encoded for fan-out (once per publication and encoding)."
    );
    describe_counter!(
        "switchboard_disconnects_total",
        "Connections closed, by close code name."
    );
    describe_counter!(
        "switchboard_rejected_total",
        "Connections or commands refused, by reason."
    );
    describe_counter!(
        "switchboard_auth_failures_total",
        "Tokens refused, by reason."
    );
    describe_counter!(
        "switchboard_decode_errors_total",
        "Malformed client input, by error kind."
    );
    describe_counter!(
        "switchboard_recoveries_failed_total",
        "Recoveries answered with recovered = false."
    );
    describe_histogram!(
        "switchboard_command_seconds",
        Unit::Seconds,
        "Time to handle a command, by kind."
    );
    describe_counter!(
        "switchboard_api_calls_total",
        "Server API requests, by method and HTTP status."
    );
    describe_histogram!(
        "switchboard_api_call_seconds",
        Unit::Seconds,
        "Time to answer a server API request, by method."
    );
}

pub(crate) fn connection_opened(encoding: Encoding) {
    gauge!("switchboard_connections").increment(1.0);
    counter!("switchboard_connections_total", "encoding" => encoding.name()).increment(1);
}

pub(crate) fn connection_closed() {
    gauge!("switchboard_connections").decrement(1.0);
}

/// A connection closed with a code.
pub fn disconnected(code: crate::codes::CloseCode) {
    counter!("switchboard_disconnects_total", "code" => code.name().unwrap_or("other"))
        .increment(1);
}

pub(crate) fn rejected(reason: &'static str) {
    counter!("switchboard_rejected_total", "reason" => reason).increment(1);
}

pub(crate) fn auth_failure(err: &AuthError) {
    let reason = match err {
        AuthError::Expired => "expired",
        _ => "invalid",
    };
    counter!("switchboard_auth_failures_total", "reason" => reason).increment(1);
}

pub(crate) fn decode_error(kind: &'static str) {
    counter!("switchboard_decode_errors_total", "kind" => kind).increment(1);
}

pub(crate) fn bytes_in(n: usize) {
    counter!("switchboard_bytes_in_total").increment(n as u64);
}

/// Bytes written to a client.
pub fn bytes_out(n: usize) {
    counter!("switchboard_bytes_out_total").increment(n as u64);
}

pub(crate) fn command(kind: &'static str, took: Duration, ok: bool) {
    counter!("switchboard_frames_in_total", "kind" => kind, "ok" => if ok { "true" } else { "false" }).increment(1);
    histogram!("switchboard_command_seconds", "kind" => kind).record(took.as_secs_f64());
}

pub(crate) fn published() {
    counter!("switchboard_publications_total").increment(1);
}

pub(crate) fn subscribed(delta: i32) {
    gauge!("switchboard_subscriptions").increment(f64::from(delta));
}

pub(crate) fn recovery(recovered: bool) {
    if !recovered {
        counter!("switchboard_recoveries_failed_total").increment(1);
    }
}

pub(crate) fn fanout(fanout: &Fanout) {
    counter!("switchboard_frames_out_total").increment(fanout.delivered as u64);
    counter!("switchboard_encodings_total").increment(fanout.encodings as u64);
    if fanout.compressions > 0 {
        counter!("switchboard_compressions_total").increment(fanout.compressions as u64);
    }
    if fanout.overflowed > 0 {
        counter!("switchboard_rejected_total", "reason" => "slow")
            .increment(fanout.overflowed as u64);
    }
}

pub(crate) fn rooms(n: usize) {
    gauge!("switchboard_rooms").set(n as f64);
}

/// A server API request was answered. `method` is one of the API's method
/// names, or `unknown` (never the raw path: a caller must not be able to
/// create label values at will).
pub(crate) fn api_call(method: &'static str, status: u16, took: Duration) {
    counter!("switchboard_api_calls_total", "method" => method, "status" => status.to_string())
        .increment(1);
    histogram!("switchboard_api_call_seconds", "method" => method).record(took.as_secs_f64());
}
