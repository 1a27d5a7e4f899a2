//! `switchboard sub` and `switchboard pub`: the client as a command-line tool
//! (a wscat for this protocol). Publications go to stdout as JSON lines;
//! connection events go to stderr, so pipes see only data.

use std::io::Write;
use std::time::Duration;

use bytes::Bytes;

use super::driver::Client;
use super::machine::{Config, Event};
use crate::codec::Encoding;

/// Where and how to connect.
#[derive(Clone, Debug)]
pub struct Target {
    /// WebSocket URL.
    pub url: String,
    /// JWT; empty for anonymous.
    pub token: String,
    /// Framing.
    pub encoding: Encoding,
}

fn config(target: &Target) -> Config {
    Config {
        token: target.token.clone(),
        name: "switchboard-cli".into(),
        version: env!("CARGO_PKG_VERSION").into(),
        ..Config::default()
    }
}

/// Subscribes to `rooms` and prints every publication as a JSON line until
/// the connection closes for good. Returns the reason it stopped.
pub async fn subscribe(target: Target, rooms: Vec<String>) -> Result<(), String> {
    let mut client = Client::websocket(&target.url, target.encoding, config(&target));
    for room in &rooms {
        client.subscribe(room).await.map_err(|e| e.to_string())?;
    }
    let stdout = std::io::stdout();
    while let Some(event) = client.next_event().await {
        match event {
            Event::Publication(publication) => {
                let line = serde_json::to_string(&publication).map_err(|e| e.to_string())?;
                let mut out = stdout.lock();
                // A closed stdout (`| head`) ends the program quietly.
                if writeln!(out, "{line}").and_then(|()| out.flush()).is_err() {
                    return Ok(());
                }
            }
            Event::Disconnected {
                code,
                reason,
                will_reconnect: false,
            } => {
                return Err(format!("disconnected for good: {code}: {reason}"));
            }
            other => eprintln!("{}", describe(&other)),
        }
    }
    Ok(())
}

/// Publishes one payload and prints the assigned position as JSON.
pub async fn publish(target: Target, room: String, data: Bytes) -> Result<(), String> {
    let mut client = Client::websocket(&target.url, target.encoding, config(&target));
    let id = client
        .publish(&room, data)
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| e.to_string())?;
    let wait = async {
        while let Some(event) = client.next_event().await {
            match event {
                Event::Published {
                    id: done,
                    offset,
                    epoch,
                    ..
                } if done == id => {
                    println!(
                        "{}",
                        serde_json::json!({ "room": room, "offset": offset.to_string(), "epoch": epoch })
                    );
                    return Ok(());
                }
                Event::PublishFailed {
                    id: failed,
                    failure,
                    ..
                } if failed == id => {
                    return Err(format!("publish failed: {failure:?}"));
                }
                Event::Disconnected {
                    code,
                    reason,
                    will_reconnect: false,
                } => {
                    return Err(format!("disconnected: {code}: {reason}"));
                }
                other => eprintln!("{}", describe(&other)),
            }
        }
        Err("the client stopped".to_owned())
    };
    tokio::time::timeout(Duration::from_secs(30), wait)
        .await
        .map_err(|_| "no reply within 30 s".to_owned())?
}

fn describe(event: &Event) -> String {
    match event {
        Event::Connecting => "connecting...".into(),
        Event::Connected {
            client,
            user,
            server_version,
        } => {
            format!("connected as {user:?} (client {client}, {server_version})")
        }
        Event::Disconnected {
            code,
            reason,
            will_reconnect,
        } => {
            format!(
                "disconnected: {code}: {reason}{}",
                if *will_reconnect {
                    " (reconnecting)"
                } else {
                    ""
                }
            )
        }
        Event::Subscribed {
            room,
            recovered,
            position,
        } => match recovered {
            None => format!(
                "subscribed to {room} at offset {} (epoch {})",
                position.offset, position.epoch
            ),
            Some(true) => format!("resubscribed to {room}: recovered everything missed"),
            Some(false) => format!(
                "resubscribed to {room}: could NOT recover missed publications; continuing from offset {}",
                position.offset
            ),
        },
        Event::Unsubscribed { room, reason, .. } => format!("unsubscribed from {room}: {reason}"),
        Event::Error {
            command,
            room,
            code,
            message,
            ..
        } => {
            format!(
                "error in {command:?}{}: {} {message}",
                room.as_deref().map(|r| format!(" {r}")).unwrap_or_default(),
                code.0
            )
        }
        Event::NeedToken => "the token expired: restart with a fresh --token".into(),
        other => format!("{other:?}"),
    }
}
