//! Close codes, error codes and unsubscribe codes: the numbers a peer sees.
//!
//! spec/05-codes.md is normative; this file is its mirror. Whether a client
//! reconnects after a close follows from the code's range alone
//! ([`CloseCode::reconnect`]), so a client needs no table of codes to behave
//! correctly, including for codes added after it was written.

use std::fmt;

/// A connection close code (the WebSocket close code, and the WebTransport
/// session close code).
///
/// | range       | meaning                                                      |
/// |-------------|--------------------------------------------------------------|
/// | 1000–2999   | RFC 6455 codes; reconnect except 1002, 1003, 1007, 1009, 1010 |
/// | 3000–3499   | server: reconnect (with backoff)                              |
/// | 3500–3999   | server: terminal, do not reconnect                            |
/// | 4000–4499   | application: reconnect                                        |
/// | 4500–4999   | application: terminal                                         |
/// | other       | reconnect (treated like a transport failure)                  |
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CloseCode(pub u16);

impl CloseCode {
    /// RFC 6455: normal closure (the client's own close, echoed).
    pub const NORMAL: Self = Self(1000);
    /// RFC 6455: the transport failed without a close frame. Never sent;
    /// reported locally by clients.
    pub const ABNORMAL: Self = Self(1006);
    /// RFC 6455: a message exceeded the maximum message size. Terminal: the
    /// same message would be rejected again.
    pub const MESSAGE_TOO_BIG: Self = Self(1009);

    /// The server is shutting down or restarting. Reconnect.
    pub const SHUTDOWN: Self = Self(3000);
    /// The server failed internally. Reconnect.
    pub const INTERNAL: Self = Self(3001);
    /// The session's token expired and was not refreshed in time. Refresh the
    /// token, then reconnect.
    pub const EXPIRED: Self = Self(3002);
    /// The client did not read fast enough; its outbound queue overflowed.
    /// Reconnect and recover.
    pub const SLOW: Self = Self(3003);
    /// The client did not answer a heartbeat in time. Reconnect.
    pub const NO_PONG: Self = Self(3004);
    /// The client sent no `connect` command in time. Reconnect.
    pub const CONNECT_TIMEOUT: Self = Self(3005);
    /// The client sent commands faster than its rate limit. Reconnect after
    /// backoff.
    pub const TOO_MANY_REQUESTS: Self = Self(3006);
    /// The server is at its connection limit. Reconnect after backoff.
    pub const SERVER_FULL: Self = Self(3007);
    /// The application asked the client to reconnect (server API).
    pub const FORCE_RECONNECT: Self = Self(3008);
    /// The server lost state the connection depends on. Reconnect and recover.
    pub const STATE_LOST: Self = Self(3009);

    /// The token is invalid: malformed, bad signature, wrong algorithm,
    /// audience or issuer. Terminal.
    pub const INVALID_TOKEN: Self = Self(3500);
    /// The client broke the protocol: malformed frame, command before
    /// `connect`, a second `connect`. Terminal.
    pub const BAD_REQUEST: Self = Self(3501);
    /// No credentials were given and the server does not allow anonymous
    /// connections. Terminal.
    pub const UNAUTHORIZED: Self = Self(3502);
    /// The connection ticket is unknown, already used or expired (the reason
    /// says which). Terminal: get a new ticket.
    pub const INVALID_TICKET: Self = Self(3503);
    /// The application disconnected the client for good (server API). Terminal.
    pub const FORCE_DISCONNECT: Self = Self(3504);
    /// The user has too many open connections. Terminal.
    pub const USER_CONNECTION_LIMIT: Self = Self(3505);
    /// The client asked for a protocol version, framing or codec the server
    /// does not speak. Terminal.
    pub const UNSUPPORTED: Self = Self(3506);

    /// Whether a client should reconnect after this close (spec/05-codes.md).
    pub const fn reconnect(self) -> bool {
        !matches!(self.0, 1002 | 1003 | 1007 | 1009 | 1010 | 3500..=3999 | 4500..=4999)
    }

    /// The constant's name for codes this version defines, for logs and
    /// metrics labels.
    pub const fn name(self) -> Option<&'static str> {
        Some(match self.0 {
            1000 => "normal",
            1006 => "abnormal",
            1009 => "message_too_big",
            3000 => "shutdown",
            3001 => "internal",
            3002 => "expired",
            3003 => "slow",
            3004 => "no_pong",
            3005 => "connect_timeout",
            3006 => "too_many_requests",
            3007 => "server_full",
            3008 => "force_reconnect",
            3009 => "state_lost",
            3500 => "invalid_token",
            3501 => "bad_request",
            3502 => "unauthorized",
            3503 => "invalid_ticket",
            3504 => "force_disconnect",
            3505 => "user_connection_limit",
            3506 => "unsupported",
            _ => return None,
        })
    }
}

impl fmt::Display for CloseCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.name() {
            Some(name) => write!(f, "{} ({name})", self.0),
            None => write!(f, "{}", self.0),
        }
    }
}

/// An error code in an `Error` reply. The connection stays open.
///
/// 100–999 are the server's; 1000 and above are reserved for applications.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ErrorCode(pub u32);

impl ErrorCode {
    /// The server failed internally. Temporary.
    pub const INTERNAL: Self = Self(100);
    /// The command needs an authenticated connection (`connect` first).
    pub const UNAUTHORIZED: Self = Self(101);
    /// The room's namespace is not configured.
    pub const UNKNOWN_ROOM: Self = Self(102);
    /// The connection may not do this in this room.
    pub const PERMISSION_DENIED: Self = Self(103);
    /// The frame carried no command this server knows.
    pub const UNKNOWN_COMMAND: Self = Self(104);
    /// The connection is already subscribed to the room.
    pub const ALREADY_SUBSCRIBED: Self = Self(105);
    /// A per-connection limit would be exceeded (rooms per connection, ...).
    pub const LIMIT_EXCEEDED: Self = Self(106);
    /// The command's arguments are invalid (empty or malformed room name,
    /// missing request id, ...).
    pub const BAD_REQUEST: Self = Self(107);
    /// The feature is disabled for this room (presence, history, ...).
    pub const NOT_AVAILABLE: Self = Self(108);
    /// The token given to `refresh` or `subscribe` has expired.
    pub const TOKEN_EXPIRED: Self = Self(109);
    /// `connect` was sent twice.
    pub const ALREADY_CONNECTED: Self = Self(110);
    /// The command rate limit was hit. Temporary.
    pub const TOO_MANY_REQUESTS: Self = Self(111);
    /// The connection is not subscribed to the room.
    pub const NOT_SUBSCRIBED: Self = Self(112);
    /// The requested stream position is not in the room's history (another
    /// epoch, or older than what is kept).
    pub const UNRECOVERABLE_POSITION: Self = Self(113);
    /// The room has reached its member limit. Temporary.
    pub const ROOM_FULL: Self = Self(114);
    /// The token given to `refresh` or `subscribe` is invalid.
    pub const INVALID_TOKEN: Self = Self(115);

    /// Whether the same command may succeed if retried later.
    pub const fn temporary(self) -> bool {
        matches!(self.0, 100 | 111 | 114)
    }
}

/// Why the server ended a subscription (`Unsubscribed.code`).
///
/// 2000–2499: the client should subscribe again (with recovery);
/// 2500–2999: final, do not resubscribe.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct UnsubscribeCode(pub u32);

impl UnsubscribeCode {
    /// The server lost the subscription's stream state. Resubscribe, recovering.
    pub const STATE_LOST: Self = Self(2000);
    /// The subscription token expired. Resubscribe with a fresh one.
    pub const EXPIRED: Self = Self(2001);
    /// The application unsubscribed the connection (server API). Final.
    pub const SERVER: Self = Self(2500);

    /// Whether the client should subscribe again.
    pub const fn resubscribe(self) -> bool {
        self.0 < 2500
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reconnect_follows_the_range() {
        for code in [
            1000, 1001, 1006, 1011, 1012, 3000, 3003, 3499, 4000, 4499, 0, 5000,
        ] {
            assert!(CloseCode(code).reconnect(), "{code}");
        }
        for code in [1002, 1003, 1007, 1009, 1010, 3500, 3506, 3999, 4500, 4999] {
            assert!(!CloseCode(code).reconnect(), "{code}");
        }
    }

    #[test]
    fn every_named_code_is_in_the_range_its_doc_says() {
        let reconnecting = [
            CloseCode::SHUTDOWN,
            CloseCode::INTERNAL,
            CloseCode::EXPIRED,
            CloseCode::SLOW,
            CloseCode::NO_PONG,
            CloseCode::CONNECT_TIMEOUT,
            CloseCode::TOO_MANY_REQUESTS,
            CloseCode::SERVER_FULL,
            CloseCode::FORCE_RECONNECT,
            CloseCode::STATE_LOST,
        ];
        let terminal = [
            CloseCode::MESSAGE_TOO_BIG,
            CloseCode::INVALID_TOKEN,
            CloseCode::BAD_REQUEST,
            CloseCode::UNAUTHORIZED,
            CloseCode::INVALID_TICKET,
            CloseCode::FORCE_DISCONNECT,
            CloseCode::USER_CONNECTION_LIMIT,
            CloseCode::UNSUPPORTED,
        ];
        for code in reconnecting {
            assert!(code.reconnect() && code.name().is_some(), "{code}");
        }
        for code in terminal {
            assert!(!code.reconnect() && code.name().is_some(), "{code}");
        }
    }

    #[test]
    fn temporary_errors_and_resubscribe() {
        assert!(ErrorCode::INTERNAL.temporary());
        assert!(!ErrorCode::PERMISSION_DENIED.temporary());
        assert!(UnsubscribeCode::STATE_LOST.resubscribe());
        assert!(!UnsubscribeCode::SERVER.resubscribe());
    }
}
