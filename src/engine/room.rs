//! Room names: validation, namespaces and user-limited rooms
//! (spec/03-messages.md, "Rooms").

use std::fmt;
use std::sync::Arc;

/// Longest room name, in bytes.
pub const MAX_ROOM_NAME: usize = 255;

/// A validated room name: 1–255 bytes of printable ASCII (0x21–0x7E).
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RoomName(Arc<str>);

/// Why a room name was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid room name: {0}")]
pub struct InvalidRoomName(&'static str);

impl RoomName {
    /// Validates a room name.
    pub fn parse(name: &str) -> Result<Self, InvalidRoomName> {
        if name.is_empty() {
            return Err(InvalidRoomName("empty"));
        }
        if name.len() > MAX_ROOM_NAME {
            return Err(InvalidRoomName("longer than 255 bytes"));
        }
        if !name.bytes().all(|b| (0x21..=0x7e).contains(&b)) {
            return Err(InvalidRoomName(
                "only printable ASCII without spaces is allowed",
            ));
        }
        Ok(Self(Arc::from(name)))
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The shared name, for maps keyed by room.
    pub fn as_arc(&self) -> &Arc<str> {
        &self.0
    }

    /// The namespace: the part before the first `:`, or `""` without one.
    pub fn namespace(&self) -> &str {
        self.0.split_once(':').map_or("", |(ns, _)| ns)
    }

    /// For a user-limited room (`dm:#alice,bob`), the users allowed in it:
    /// the comma-separated list after the first `#`.
    pub fn allowed_users(&self) -> Option<impl Iterator<Item = &str>> {
        self.0.split_once('#').map(|(_, users)| users.split(','))
    }

    /// The personal room of `user` in `namespace`: `<namespace>:#<user>`.
    pub fn personal(namespace: &str, user: &str) -> Result<Self, InvalidRoomName> {
        Self::parse(&format!("{namespace}:#{user}"))
    }
}

impl fmt::Debug for RoomName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

impl fmt::Display for RoomName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert_eq!(RoomName::parse("chat:lobby").unwrap().namespace(), "chat");
        assert_eq!(RoomName::parse("lobby").unwrap().namespace(), "");
        assert_eq!(RoomName::parse("a:b:c").unwrap().namespace(), "a");
        assert!(RoomName::parse("").is_err());
        assert!(RoomName::parse("has space").is_err());
        assert!(RoomName::parse("é").is_err());
        assert!(RoomName::parse(&"x".repeat(256)).is_err());
        assert!(RoomName::parse(&"x".repeat(255)).is_ok());
        let dm = RoomName::parse("dm:#alice,bob").unwrap();
        assert_eq!(
            dm.allowed_users().unwrap().collect::<Vec<_>>(),
            ["alice", "bob"]
        );
        assert!(
            RoomName::parse("chat:lobby")
                .unwrap()
                .allowed_users()
                .is_none()
        );
        assert_eq!(
            RoomName::personal("personal", "alice").unwrap().as_str(),
            "personal:#alice"
        );
    }
}
