//! A simulated server and network that drive a [`Machine`] and check its
//! promises (spec/08-client.md, "Conformance"). Not part of the public API:
//! it exists for the property tests beside the machine and for a fuzz target.
//!
//! The model: one server with four rooms (`a` keeps a long history, `b` a
//! history of three, `c` a stream without history, `d` no stream at all),
//! tokens that expire, heartbeats, and a network that delays, partitions and
//! drops. A [`Step`] is one thing that happens: time passes, frames arrive,
//! the server publishes, restarts (possibly losing every stream's epoch),
//! fails a command or drops the connection with any close code, or the
//! application calls the machine. [`Sim::step`] applies one, answers the
//! machine's actions as a server would, and checks every invariant after
//! each machine input; [`Sim::settle`] then heals everything and checks that
//! the machine catches up.
//!
//! A fuzz target needs only [`run_bytes`] (`fuzz/fuzz_targets/client_machine.rs`):
//!
//! ```
//! let data = [7u8; 64]; // any bytes
//! if let Err(violation) = switchboard::client::sim::run_bytes(&data) {
//!     panic!("{violation}");
//! }
//! ```

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fmt;
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::machine::{Action, Config, Event, Machine, PublishError, State};
use crate::codes::{CloseCode, ErrorCode, UnsubscribeCode};
use crate::wire::v1::{self, ClientFrame, ServerFrame, client_frame::Command, server_frame::Body};

/// The simulated rooms.
pub const ROOMS: [&str; 4] = ["a", "b", "c", "d"];
/// History kept per room, in publications; `None`: the room has no stream.
const HISTORY: [Option<usize>; 4] = [Some(1000), Some(3), Some(0), None];
/// The server's heartbeat interval.
pub const PING_INTERVAL: Duration = Duration::from_secs(5);
/// How long a token the simulated application hands out stays valid.
pub const TOKEN_TTL: Duration = Duration::from_secs(60);
/// How many trace lines a violation carries.
const TRACE_LINES: usize = 80;
/// Timer firings one `Advance` may take before the simulation calls it a
/// livelock.
const MAX_FIRINGS: usize = 10_000;

/// The machine configuration the simulation uses: short timers so that a few
/// dozen steps cover many reconnects, a small publish queue so it fills.
pub fn config(seed: u64) -> Config {
    Config {
        token: "t0".to_owned(),
        min_backoff: Duration::from_millis(100),
        max_backoff: Duration::from_secs(3),
        max_queued_publishes: 4,
        ping_margin: Duration::from_secs(2),
        connect_timeout: Duration::from_secs(3),
        token_refresh_lead: Duration::from_secs(20),
        token_timeout: Duration::from_secs(30),
        jitter_seed: seed,
        ..Config::default()
    }
}

/// How the server answers a new transport.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Accepts it.
    Up,
    /// Refuses it at once (connection refused: 1006).
    Refuse,
    /// Never answers (the machine's connect timeout fires).
    Blackhole,
}

/// One thing that happens in the simulation.
#[derive(Clone, Debug)]
pub enum Step {
    /// Simulated time passes, in milliseconds: frames in flight arrive,
    /// heartbeats are sent, sessions expire, the machine's timers fire.
    Advance(u16),
    /// Up to this many frames in flight reach the client.
    Deliver(u8),
    /// Another client publishes in `ROOMS[n % 4]`.
    Publish(u8),
    /// The server drops the connection with this close code (1006: abruptly,
    /// losing frames in flight), optionally after a `disconnect` push.
    Drop {
        /// The close code.
        code: u16,
        /// Send a `disconnect` push first.
        push: bool,
    },
    /// The server restarts (close 3000); with `lose_history` every stream
    /// starts over in a new epoch.
    Restart {
        /// Every stream gets a new epoch.
        lose_history: bool,
    },
    /// The room `ROOMS[n % 4]` loses its stream (new epoch); subscribers get
    /// `unsubscribed` with code 2000.
    LoseRoom(u8),
    /// The server ends the client's subscription to `ROOMS[room % 4]`.
    ServerUnsubscribe {
        /// Room index.
        room: u8,
        /// Whether the code asks the client to resubscribe (2000) or not (2500).
        resubscribe: bool,
    },
    /// The next connect, subscribe, publish or refresh gets this error.
    FailNext {
        /// Error code.
        code: u32,
        /// The error's `temporary` flag.
        temporary: bool,
    },
    /// How the server answers new transports.
    SetMode(Mode),
    /// Frames stop flowing both ways (held, not lost).
    Partition,
    /// Frames flow again.
    Heal,
    /// Every token issued so far expires now; a live session is closed with
    /// 3002.
    ExpireTokens,
    /// Whether a `connect` with an expired token is refused with error 109
    /// (true) or by closing with 3002 (false).
    ExpiredReplyIsError(bool),
    /// The application subscribes to `ROOMS[n % 4]`.
    AppSubscribe(u8),
    /// The application unsubscribes from `ROOMS[n % 4]`.
    AppUnsubscribe(u8),
    /// The application publishes in `ROOMS[n % 4]`.
    AppPublish(u8),
    /// The application calls `connect`.
    AppConnect,
    /// The application calls `disconnect`.
    AppDisconnect,
    /// The application gets a fresh token and calls `set_token`.
    AppSetToken,
    /// The server or network misbehaves once, in a way the machine must
    /// absorb.
    Glitch(Glitch),
}

/// A misbehaviour the machine must absorb without breaking its promises.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Glitch {
    /// The next publication is kept in history but its push to the client is
    /// lost (an at-most-once broker): a live gap.
    LoseNextPush,
    /// The next publication in a room with a stream is pushed twice (an
    /// at-least-once broker).
    DuplicateNextPush,
    /// The last two frames in flight swap places.
    ReorderInFlight,
    /// The next `recovered = true` reply leaves out its first publication.
    HoleInNextRecovery,
    /// The next `recovered = true` reply repeats its first publication.
    RepeatInNextRecovery,
    /// The next recovery that fails is answered `recovered = true` anyway,
    /// with whatever the room's history holds (a server bug across epochs).
    ClaimRecovered,
}

/// Every glitch, for decoders and strategies.
pub const GLITCHES: [Glitch; 6] = [
    Glitch::LoseNextPush,
    Glitch::DuplicateNextPush,
    Glitch::ReorderInFlight,
    Glitch::HoleInNextRecovery,
    Glitch::RepeatInNextRecovery,
    Glitch::ClaimRecovered,
];

impl Step {
    /// Decodes one step from the front of `bytes` (for fuzzing); `None` when
    /// they are used up. Every byte string decodes to some steps.
    pub fn decode(bytes: &mut &[u8]) -> Option<Step> {
        let (&tag, rest) = bytes.split_first()?;
        *bytes = rest;
        let mut arg = || match bytes.split_first() {
            Some((&byte, rest)) => {
                *bytes = rest;
                byte
            }
            None => 0,
        };
        Some(match tag % 22 {
            0..=2 => Step::Advance(u16::from(arg()) * 40),
            3..=4 => Step::Deliver(arg() % 8),
            5..=6 => Step::Publish(arg()),
            7 => {
                let code = u16::from_le_bytes([arg(), arg()]);
                Step::Drop {
                    code: if tag & 0x80 == 0 {
                        DROP_CODES[usize::from(code) % DROP_CODES.len()]
                    } else {
                        code
                    },
                    push: tag & 0x40 != 0,
                }
            }
            8 => Step::Restart {
                lose_history: tag & 0x80 != 0,
            },
            9 => Step::LoseRoom(arg()),
            10 => Step::ServerUnsubscribe {
                room: arg(),
                resubscribe: tag & 0x80 != 0,
            },
            11 => {
                let (code, temporary) = FAIL_CODES[usize::from(arg()) % FAIL_CODES.len()];
                Step::FailNext { code, temporary }
            }
            12 => Step::SetMode([Mode::Up, Mode::Refuse, Mode::Blackhole][usize::from(arg() % 3)]),
            13 => {
                if tag & 0x80 == 0 {
                    Step::Partition
                } else {
                    Step::Heal
                }
            }
            14 => Step::ExpireTokens,
            15 => Step::ExpiredReplyIsError(tag & 0x80 != 0),
            16 => Step::AppSubscribe(arg()),
            17 => Step::AppUnsubscribe(arg()),
            18 => Step::AppPublish(arg()),
            19 => {
                if tag & 0x80 == 0 {
                    Step::AppConnect
                } else {
                    Step::AppDisconnect
                }
            }
            20 => Step::AppSetToken,
            _ => Step::Glitch(GLITCHES[usize::from(arg()) % GLITCHES.len()]),
        })
    }
}

/// Close codes a `Drop` usually picks: every range of spec/05-codes.md.
pub const DROP_CODES: [u16; 16] = [
    1000, 1001, 1006, 1006, 1011, 3000, 3001, 3003, 3004, 3006, 3008, 3009, 4000, 1002, 3500, 4500,
];

/// Errors a `FailNext` picks: temporary ones, permanent ones, and "position
/// not recoverable".
pub const FAIL_CODES: [(u32, bool); 5] = [
    (100, true),
    (111, true),
    (114, true),
    (103, false),
    (113, false),
];

/// An invariant the machine broke, with the last things that happened.
#[derive(Clone, Debug)]
pub struct Violation {
    /// What went wrong.
    pub message: String,
    /// The last steps, actions and events, oldest first.
    pub trace: Vec<String>,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "{}", self.message)?;
        writeln!(f, "last {} trace lines:", self.trace.len())?;
        for line in &self.trace {
            writeln!(f, "  {line}")?;
        }
        Ok(())
    }
}

impl std::error::Error for Violation {}

/// Decodes `data` into steps (the first eight bytes seed the jitter), runs
/// them, settles, and reports the first broken invariant. The fuzz entry point.
pub fn run_bytes(data: &[u8]) -> Result<(), Violation> {
    let (seed, mut rest) = match data.split_first_chunk::<8>() {
        Some((seed, rest)) => (u64::from_le_bytes(*seed), rest),
        None => (0, data),
    };
    let mut sim = Sim::new(seed, Instant::now());
    let mut steps = 0;
    while let Some(step) = Step::decode(&mut rest) {
        sim.step(&step)?;
        steps += 1;
        if steps == 512 {
            break;
        }
    }
    sim.settle()
}

/// What a simulation measured, for properties that look across runs.
#[derive(Clone, Debug, Default)]
pub struct Stats {
    /// Every reconnect delay the machine chose, in order.
    pub backoff_delays: Vec<Duration>,
    /// `OpenTransport` actions.
    pub transports: usize,
    /// Publications delivered to the application.
    pub delivered: usize,
    /// `Subscribed { recovered: Some(false) }` events.
    pub gaps_reported: usize,
    /// `Subscribed { recovered: Some(true) }` events.
    pub recoveries: usize,
    /// The machine ended closed for good.
    pub closed: bool,
}

/// The simulation: machine, server, network and the application's view.
pub struct Sim {
    machine: Machine,
    config: Config,
    now: Instant,
    server: Server,
    /// The transport the machine asked for, from the server's side.
    conn: Option<Conn>,
    /// The machine has a transport (between `OpenTransport` and its close).
    machine_transport: bool,
    /// Transport events to report once the current actions are drained.
    deferred: VecDeque<Deferred>,
    app: App,
    stats: Stats,
    trace: VecDeque<String>,
    violation: Option<String>,
    next_app_publish: u64,
}

enum Deferred {
    Open,
    Closed(CloseCode, String),
}

struct Server {
    mode: Mode,
    rooms: Vec<ServerRoom>,
    epochs: u64,
    fail_next: Option<v1::Error>,
    expired_reply_is_error: bool,
    /// Token -> when it expires.
    tokens: BTreeMap<String, Instant>,
    next_token: u64,
    next_client: u64,
    /// The number in the last application publish received (`p<n>`).
    last_app_publish: u64,
    /// A glitch waiting for its occasion.
    glitch: Option<Glitch>,
}

struct ServerRoom {
    name: &'static str,
    /// `None`: no stream (offsets are 0).
    history: Option<usize>,
    epoch: String,
    top: u64,
    kept: VecDeque<v1::Publication>,
    /// Publications of the stream-less room, for unique payloads.
    sequence: u64,
}

struct Conn {
    opened: bool,
    authed: bool,
    closing: bool,
    /// Close the transport with this once everything in flight is delivered.
    close_after_flush: Option<(CloseCode, String)>,
    partitioned: bool,
    session_expires: Option<Instant>,
    next_heartbeat: Instant,
    subs: BTreeSet<String>,
    to_client: VecDeque<ServerFrame>,
    held_to_server: VecDeque<ClientFrame>,
    /// Request ids whose reply has not reached the client yet.
    awaiting: BTreeSet<u32>,
}

/// The application: what it asked for and what it saw.
#[derive(Default)]
struct App {
    /// Rooms it wants, with where delivery must continue.
    rooms: BTreeMap<String, Want>,
    /// Payloads delivered: each publication's payload is unique.
    seen: BTreeSet<Bytes>,
    issued: BTreeSet<u64>,
    outcomes: BTreeSet<u64>,
    token_wanted: bool,
}

#[derive(Default)]
struct Want {
    /// (epoch, offset) delivery continues after.
    after: Option<(String, u64)>,
    subscribed_once: bool,
}

impl Sim {
    /// A simulation starting at `now`: the machine connects and subscribes to
    /// rooms `a` and `b`.
    pub fn new(seed: u64, now: Instant) -> Self {
        let config = config(seed);
        let mut server = Server {
            mode: Mode::Up,
            rooms: ROOMS
                .iter()
                .zip(HISTORY)
                .map(|(name, history)| ServerRoom {
                    name,
                    history,
                    epoch: if history.is_some() {
                        "e0".to_owned()
                    } else {
                        String::new()
                    },
                    top: 0,
                    kept: VecDeque::new(),
                    sequence: 0,
                })
                .collect(),
            epochs: 0,
            fail_next: None,
            expired_reply_is_error: false,
            tokens: BTreeMap::new(),
            next_token: 1,
            next_client: 1,
            last_app_publish: 0,
            glitch: None,
        };
        server.tokens.insert(config.token.clone(), now + TOKEN_TTL);
        let mut sim = Self {
            machine: Machine::new(config.clone()),
            config,
            now,
            server,
            conn: None,
            machine_transport: false,
            deferred: VecDeque::new(),
            app: App::default(),
            stats: Stats::default(),
            trace: VecDeque::new(),
            violation: None,
            next_app_publish: 1,
        };
        sim.app_subscribe(0);
        sim.app_subscribe(1);
        sim.input("connect", |machine, now| machine.connect(now));
        sim
    }

    /// The machine under test.
    pub fn machine(&self) -> &Machine {
        &self.machine
    }

    /// The machine under test, to break it on purpose (tests of the checker).
    #[cfg(test)]
    pub(crate) fn machine_mut(&mut self) -> &mut Machine {
        &mut self.machine
    }

    /// What was measured so far.
    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    /// Applies one step and checks every invariant.
    pub fn step(&mut self, step: &Step) -> Result<(), Violation> {
        self.note(format!("STEP {step:?}"));
        match *step {
            Step::Advance(ms) => self.advance(Duration::from_millis(u64::from(ms))),
            Step::Deliver(n) => self.deliver(usize::from(n)),
            Step::Publish(room) => {
                self.server_publish(usize::from(room) % ROOMS.len());
            }
            Step::Drop { code, push } => self.server_drop(CloseCode(code), push),
            Step::Restart { lose_history } => {
                if lose_history {
                    for index in 0..ROOMS.len() {
                        self.new_epoch(index);
                    }
                }
                self.server_drop(CloseCode::SHUTDOWN, true);
            }
            Step::LoseRoom(room) => self.lose_room(usize::from(room) % ROOMS.len()),
            Step::ServerUnsubscribe { room, resubscribe } => {
                let code = if resubscribe {
                    UnsubscribeCode::STATE_LOST
                } else {
                    UnsubscribeCode::SERVER
                };
                self.server_unsubscribe(ROOMS[usize::from(room) % ROOMS.len()], code);
            }
            Step::FailNext { code, temporary } => {
                self.server.fail_next = Some(v1::Error {
                    code,
                    message: "injected".to_owned(),
                    temporary,
                });
            }
            Step::SetMode(mode) => self.server.mode = mode,
            Step::Partition => {
                if let Some(conn) = &mut self.conn {
                    conn.partitioned = true;
                }
            }
            Step::Heal => self.heal(),
            Step::ExpireTokens => {
                let now = self.now;
                for expiry in self.server.tokens.values_mut() {
                    *expiry = now;
                }
                if self.conn.as_ref().is_some_and(|conn| conn.authed) {
                    self.server_close(CloseCode::EXPIRED, "token expired", true);
                }
            }
            Step::ExpiredReplyIsError(yes) => self.server.expired_reply_is_error = yes,
            Step::AppSubscribe(room) => self.app_subscribe(usize::from(room) % ROOMS.len()),
            Step::AppUnsubscribe(room) => {
                let room = ROOMS[usize::from(room) % ROOMS.len()];
                self.app.rooms.remove(room);
                self.input("unsubscribe", |machine, now| machine.unsubscribe(room, now));
            }
            Step::AppPublish(room) => self.app_publish(ROOMS[usize::from(room) % ROOMS.len()]),
            Step::AppConnect => self.input("connect", |machine, now| machine.connect(now)),
            Step::AppDisconnect => self.input("disconnect", |machine, now| machine.disconnect(now)),
            Step::AppSetToken => self.app_set_token(),
            Step::Glitch(Glitch::ReorderInFlight) => {
                if let Some(conn) = &mut self.conn {
                    let len = conn.to_client.len();
                    if len >= 2 {
                        conn.to_client.swap(len - 2, len - 1);
                    }
                }
            }
            Step::Glitch(glitch) => self.server.glitch = Some(glitch),
        }
        self.verdict()
    }

    /// Heals the network and the server, answers the machine's token
    /// requests, lets time pass until everything is delivered, and checks that
    /// the application caught up: every wanted room is subscribed, delivery
    /// reached each stream's newest offset (or a gap was reported), every
    /// publish has an outcome. A publication whose push was lost is only
    /// noticed when a later one arrives (publications carry offsets;
    /// heartbeats carry no positions), so the check that delivery reached each
    /// stream's newest offset comes after the server publishes once more in
    /// every wanted room.
    pub fn settle(&mut self) -> Result<(), Violation> {
        self.note("SETTLE".to_owned());
        self.server.mode = Mode::Up;
        self.server.fail_next = None;
        self.server.glitch = None;
        self.heal();
        if self.machine.state() == State::Disconnected {
            self.input("connect", |machine, now| machine.connect(now));
        }
        for round in 0..2 {
            let mut settled = false;
            for _ in 0..100 {
                if self.app.token_wanted && self.machine.state() != State::Closed {
                    self.app_set_token();
                }
                self.advance(Duration::from_secs(1));
                self.verdict()?;
                if self.machine.state() == State::Closed || self.caught_up(round == 1).is_ok() {
                    settled = true;
                    break;
                }
            }
            if self.machine.state() == State::Closed {
                self.stats.closed = true;
                if self.app.issued.len() != self.app.outcomes.len() {
                    self.fail("closed with publishes that never got an outcome".to_owned());
                }
                return self.verdict();
            }
            if !settled {
                let why = self.caught_up(round == 1).err().unwrap_or_default();
                self.fail(format!("did not catch up after healing: {why}"));
                return self.verdict();
            }
            if round == 0 {
                let wanted: Vec<usize> = ROOMS
                    .iter()
                    .enumerate()
                    .filter(|(_, room)| self.app.rooms.contains_key(**room))
                    .map(|(index, _)| index)
                    .collect();
                for index in wanted {
                    self.server_publish(index);
                }
            }
        }
        self.verdict()
    }

    /// Why the application has not caught up yet, if it has not; `offsets`:
    /// also require delivery to have reached every stream's newest offset.
    fn caught_up(&self, offsets: bool) -> Result<(), String> {
        if self.machine.state() != State::Connected {
            return Err(format!("machine is {:?}", self.machine.state()));
        }
        let Some(conn) = &self.conn else {
            return Err("no transport".to_owned());
        };
        if !conn.authed || !conn.to_client.is_empty() || conn.closing {
            return Err("frames still in flight".to_owned());
        }
        if self.machine.pending_publishes() != 0 || self.app.issued.len() != self.app.outcomes.len()
        {
            return Err("publishes without an outcome".to_owned());
        }
        for (room, want) in &self.app.rooms {
            if !conn.subs.contains(room) {
                return Err(format!("room {room} is not subscribed on the server"));
            }
            let Some(server_room) = self.server.rooms.iter().find(|r| r.name == room) else {
                return Err(format!("room {room} unknown"));
            };
            if offsets && server_room.history.is_some() {
                let expected = (server_room.epoch.clone(), server_room.top);
                if want.after.as_ref() != Some(&expected) {
                    return Err(format!(
                        "room {room}: delivered up to {:?}, server is at {expected:?}",
                        want.after
                    ));
                }
            }
        }
        Ok(())
    }

    // ------------------------------------------------------------------
    // Driving the machine
    // ------------------------------------------------------------------

    /// Calls the machine, performs its actions, then reports the transport
    /// events they caused.
    fn input(&mut self, name: &str, call: impl FnOnce(&mut Machine, Instant)) {
        self.note(format!("INPUT {name}"));
        call(&mut self.machine, self.now);
        self.drain(0);
        self.run_deferred();
    }

    fn run_deferred(&mut self) {
        while let Some(event) = self.deferred.pop_front() {
            match event {
                Deferred::Open => {
                    let Some(conn) = &mut self.conn else { continue };
                    if !self.machine_transport || conn.opened {
                        continue;
                    }
                    conn.opened = true;
                    self.note("INPUT transport open".to_owned());
                    self.machine.handle_transport_open(self.now);
                    self.drain(0);
                }
                Deferred::Closed(code, reason) => {
                    if !self.machine_transport {
                        continue;
                    }
                    self.machine_transport = false;
                    self.conn = None;
                    self.note(format!("INPUT transport closed {code} {reason:?}"));
                    self.machine
                        .handle_transport_closed(code, &reason, self.now);
                    self.drain(0);
                    if !code.reconnect() && self.machine.state() != State::Closed {
                        self.fail(format!("terminal close {code} did not close the machine"));
                    }
                }
            }
        }
    }

    /// Performs every action the machine queued, and checks the per-input
    /// invariants. `publications` is how many publications the input carried,
    /// each of which may become an event.
    fn drain(&mut self, publications: usize) {
        let mut count = 0;
        while let Some(action) = self.machine.poll_action() {
            count += 1;
            self.note(format!("  {action:?}"));
            match action {
                Action::OpenTransport => self.open_transport(),
                Action::Send(frame) => {
                    let open = self.conn.as_ref().is_some_and(|conn| conn.opened);
                    if !self.machine_transport || !open {
                        self.fail(format!("sent {frame:?} without an open transport"));
                        continue;
                    }
                    self.send_to_server(frame);
                }
                Action::CloseTransport { .. } => {
                    if !self.machine_transport {
                        self.fail("closed a transport it does not have".to_owned());
                    }
                    self.machine_transport = false;
                    self.conn = None;
                    self.deferred.clear();
                }
                Action::Emit(event) => self.observe(event),
            }
        }
        // spec/08-client.md, "Bounds": an input adds O(rooms + publish
        // queue + publications it carries) actions.
        let bound = 16 + 4 * ROOMS.len() + 2 * self.config.max_queued_publishes + publications;
        if count > bound {
            self.fail(format!(
                "one input produced {count} actions (bound {bound})"
            ));
        }
        if self.machine.pending_publishes() > self.config.max_queued_publishes {
            self.fail(format!(
                "{} publishes pending, limit {}",
                self.machine.pending_publishes(),
                self.config.max_queued_publishes
            ));
        }
        if self.machine.state() == State::Closed {
            self.stats.closed = true;
            self.app.rooms.clear();
        }
        if let Some(at) = self.machine.reconnect_at() {
            if at > self.now + self.config.max_backoff {
                self.fail(format!(
                    "reconnect scheduled {:?} ahead, above the maximum",
                    at - self.now
                ));
            }
        }
    }

    fn open_transport(&mut self) {
        self.stats.transports += 1;
        if self.stats.closed {
            self.fail("OpenTransport after the machine closed for good".to_owned());
        }
        if self.machine_transport {
            self.fail("OpenTransport while a transport is open".to_owned());
        }
        self.machine_transport = true;
        match self.server.mode {
            Mode::Up => {
                self.conn = Some(Conn {
                    opened: false,
                    authed: false,
                    closing: false,
                    close_after_flush: None,
                    partitioned: false,
                    session_expires: None,
                    next_heartbeat: self.now + PING_INTERVAL,
                    subs: BTreeSet::new(),
                    to_client: VecDeque::new(),
                    held_to_server: VecDeque::new(),
                    awaiting: BTreeSet::new(),
                });
                self.deferred.push_back(Deferred::Open);
            }
            Mode::Refuse => self.deferred.push_back(Deferred::Closed(
                CloseCode::ABNORMAL,
                "connection refused".to_owned(),
            )),
            Mode::Blackhole => {}
        }
    }

    /// The application's checks on every event.
    fn observe(&mut self, event: Event) {
        match event {
            Event::Subscribed {
                room,
                recovered,
                position,
            } => {
                let Some(want) = self.app.rooms.get_mut(&room) else {
                    self.fail(format!(
                        "Subscribed for {room}, which the app does not want"
                    ));
                    return;
                };
                match recovered {
                    None if want.subscribed_once => {
                        self.fail(format!("resubscription of {room} reported recovered: None"));
                        return;
                    }
                    Some(true) => {
                        let at = Some((position.epoch.clone(), position.offset));
                        if want.after != at && want.after.is_some() {
                            let after = want.after.clone();
                            self.fail(format!(
                                "{room} recovered from {at:?} but delivery was at {after:?}"
                            ));
                            return;
                        }
                        self.stats.recoveries += 1;
                    }
                    Some(false) => self.stats.gaps_reported += 1,
                    None => {}
                }
                want.subscribed_once = true;
                want.after = Some((position.epoch, position.offset));
            }
            Event::Publication(publication) => self.observe_publication(publication),
            Event::Unsubscribed { room, code, .. } => {
                if code.is_some_and(|code| code.resubscribe()) {
                    self.fail(format!(
                        "gave up {room} although the server said to resubscribe"
                    ));
                }
                self.app.rooms.remove(&room);
            }
            Event::Error {
                room: Some(room),
                temporary: false,
                ..
            } => {
                self.app.rooms.remove(&room);
            }
            Event::NeedToken => self.app.token_wanted = true,
            Event::Published { id, .. } | Event::PublishFailed { id, .. } => {
                if !self.app.issued.contains(&id.get()) {
                    self.fail(format!("outcome for {id}, never issued"));
                } else if !self.app.outcomes.insert(id.get()) {
                    self.fail(format!("second outcome for {id}"));
                }
            }
            Event::Disconnected {
                will_reconnect: true,
                ..
            } => {
                if let Some(at) = self.machine.reconnect_at() {
                    self.stats.backoff_delays.push(at - self.now);
                }
            }
            _ => {}
        }
    }

    fn observe_publication(&mut self, publication: v1::Publication) {
        let room = publication.room.clone();
        if !self.app.seen.insert(publication.data.clone()) {
            self.fail(format!(
                "publication {:?} delivered twice",
                publication.data
            ));
            return;
        }
        self.stats.delivered += 1;
        let Some(want) = self.app.rooms.get_mut(&room) else {
            self.fail(format!(
                "publication in {room}, which the app does not want"
            ));
            return;
        };
        let text = String::from_utf8_lossy(&publication.data).into_owned();
        let mut fields = text.split('|');
        let (Some(name), Some(epoch), Some(offset)) = (fields.next(), fields.next(), fields.next())
        else {
            self.fail(format!("unexpected payload {text}"));
            return;
        };
        if name != room {
            self.fail(format!("publication of {name} delivered as {room}"));
            return;
        }
        if epoch.is_empty() {
            return; // The stream-less room: no order to check.
        }
        let offset: u64 = offset.parse().unwrap_or(0);
        if offset != publication.offset {
            self.fail(format!(
                "payload says offset {offset}, frame {}",
                publication.offset
            ));
            return;
        }
        let expected = want
            .after
            .as_ref()
            .map(|(epoch, offset)| (epoch.clone(), offset + 1));
        if expected != Some((epoch.to_owned(), offset)) {
            let after = want.after.clone();
            self.fail(format!(
                "{room}: delivered {epoch}/{offset} after {after:?}: a duplicate, a reorder or a silent gap"
            ));
            return;
        }
        want.after = Some((epoch.to_owned(), offset));
    }

    // ------------------------------------------------------------------
    // The application
    // ------------------------------------------------------------------

    fn app_subscribe(&mut self, index: usize) {
        let room = ROOMS[index];
        if self.machine.state() != State::Closed {
            self.app.rooms.entry(room.to_owned()).or_default();
        }
        self.input("subscribe", |machine, now| machine.subscribe(room, now));
    }

    fn app_publish(&mut self, room: &'static str) {
        let number = self.next_app_publish;
        self.next_app_publish += 1;
        let data = Bytes::from(format!("p{number}"));
        let result = self.machine.publish(room, data, self.now);
        self.note(format!("INPUT publish {room} p{number} -> {result:?}"));
        match result {
            Ok(id) => {
                self.app.issued.insert(id.get());
            }
            Err(PublishError::QueueFull { limit }) => {
                if self.machine.pending_publishes() < limit {
                    self.fail("QueueFull with room in the queue".to_owned());
                }
            }
            Err(PublishError::Closed) => {
                if self.machine.state() != State::Closed {
                    self.fail("publish refused as Closed while not closed".to_owned());
                }
            }
        }
        self.drain(0);
        self.run_deferred();
    }

    fn app_set_token(&mut self) {
        let token = format!("t{}", self.server.next_token);
        self.server.next_token += 1;
        self.server
            .tokens
            .insert(token.clone(), self.now + TOKEN_TTL);
        self.app.token_wanted = false;
        self.input("set_token", |machine, now| machine.set_token(token, now));
    }

    // ------------------------------------------------------------------
    // Time and the network
    // ------------------------------------------------------------------

    fn advance(&mut self, by: Duration) {
        let target = self.now + by;
        for _ in 0..MAX_FIRINGS {
            self.deliver(usize::MAX);
            let mut next = target;
            if let Some(at) = self.machine.poll_timeout() {
                next = next.min(at);
            }
            if let Some(conn) = &self.conn {
                if conn.authed && !conn.closing {
                    next = next.min(conn.next_heartbeat);
                    if let Some(expires) = conn.session_expires {
                        next = next.min(expires);
                    }
                }
            }
            self.now = self.now.max(next);
            let now = self.now;
            let mut fired = false;
            if let Some(conn) = &mut self.conn {
                if conn.authed && !conn.closing && conn.next_heartbeat <= now {
                    conn.next_heartbeat = now + PING_INTERVAL;
                    conn.to_client.push_back(ServerFrame {
                        id: 0,
                        body: Some(Body::Heartbeat(v1::Heartbeat {})),
                    });
                    fired = true;
                }
                if conn.authed && !conn.closing && conn.session_expires.is_some_and(|e| e <= now) {
                    conn.session_expires = None;
                    self.server_close(CloseCode::EXPIRED, "session expired", true);
                    fired = true;
                }
            }
            if self.machine.poll_timeout().is_some_and(|at| at <= now) {
                self.input("timeout", |machine, now| machine.handle_timeout(now));
                if self.machine.poll_timeout().is_some_and(|at| at <= now) {
                    self.fail("handle_timeout left a timeout in the past".to_owned());
                    return;
                }
                fired = true;
            }
            if !fired && self.now >= target {
                self.deliver(usize::MAX);
                return;
            }
        }
        self.fail("time does not advance: too many timer firings".to_owned());
    }

    /// Delivers up to `limit` frames in flight to the client, then the
    /// server's close once nothing is left in flight.
    fn deliver(&mut self, limit: usize) {
        for _ in 0..limit {
            let Some(conn) = &mut self.conn else { return };
            if conn.partitioned {
                return;
            }
            let Some(frame) = conn.to_client.pop_front() else {
                break;
            };
            conn.awaiting.remove(&frame.id);
            let publications = match &frame.body {
                Some(Body::Subscribe(result)) => result.publications.len(),
                _ => 0,
            };
            let terminal_push = match &frame.body {
                Some(Body::Disconnect(push)) => {
                    !CloseCode(u16::try_from(push.code).unwrap_or(0)).reconnect()
                }
                _ => false,
            };
            self.note(format!("FRAME {frame:?}"));
            self.machine.handle_frame(frame, self.now);
            self.drain(publications);
            self.run_deferred();
            if terminal_push && self.machine.state() != State::Closed {
                self.fail("a terminal disconnect push did not close the machine".to_owned());
            }
        }
        if let Some(conn) = &mut self.conn {
            if conn.to_client.is_empty() && !conn.partitioned {
                if let Some((code, reason)) = conn.close_after_flush.take() {
                    self.deferred.push_back(Deferred::Closed(code, reason));
                    self.run_deferred();
                }
            }
        }
    }

    fn heal(&mut self) {
        let Some(conn) = &mut self.conn else { return };
        conn.partitioned = false;
        let held = std::mem::take(&mut conn.held_to_server);
        for frame in held {
            self.server_receive(frame);
        }
    }

    fn send_to_server(&mut self, frame: ClientFrame) {
        let Some(conn) = &mut self.conn else { return };
        if conn.partitioned {
            conn.held_to_server.push_back(frame);
        } else {
            self.server_receive(frame);
        }
    }

    // ------------------------------------------------------------------
    // The server
    // ------------------------------------------------------------------

    fn reply(&mut self, id: u32, body: Body) {
        if let Some(conn) = &mut self.conn {
            conn.to_client.push_back(ServerFrame {
                id,
                body: Some(body),
            });
        }
    }

    fn server_receive(&mut self, frame: ClientFrame) {
        let Some(conn) = &mut self.conn else { return };
        if conn.closing {
            return;
        }
        let id = frame.id;
        let Some(command) = frame.command else {
            self.fail("a frame without a command".to_owned());
            return;
        };
        if matches!(command, Command::Pong(_)) {
            if id != 0 {
                self.fail(format!("pong with id {id}"));
            }
            return;
        }
        if id == 0 {
            self.fail(format!("command with id 0: {command:?}"));
            return;
        }
        if !conn.awaiting.insert(id) {
            self.fail(format!("request id {id} reused while awaiting its reply"));
            return;
        }
        let authed = conn.authed;
        match command {
            Command::Connect(request) => {
                if authed {
                    self.fail("a second connect on one transport".to_owned());
                    return;
                }
                self.server_connect(id, request);
            }
            _ if !authed => self.fail(format!("{command:?} before connect was answered")),
            Command::Subscribe(request) => self.server_subscribe(id, request),
            Command::Unsubscribe(request) => {
                if let Some(conn) = &mut self.conn {
                    conn.subs.remove(&request.room);
                }
                self.reply(id, Body::Unsubscribe(v1::UnsubscribeResult {}));
            }
            Command::Publish(request) => {
                if let Some(error) = self.server.fail_next.take() {
                    self.reply(id, Body::Error(error));
                    return;
                }
                let number: u64 = String::from_utf8_lossy(&request.data)
                    .trim_start_matches('p')
                    .parse()
                    .unwrap_or(0);
                if number <= self.server.last_app_publish {
                    self.fail(format!(
                        "publish p{number} arrived after p{}: resent or reordered",
                        self.server.last_app_publish
                    ));
                }
                self.server.last_app_publish = number;
                let Some(index) = ROOMS.iter().position(|room| *room == request.room) else {
                    return;
                };
                let (offset, epoch) = self.server_publish(index);
                self.reply(id, Body::Publish(v1::PublishResult { offset, epoch }));
            }
            Command::Refresh(request) => {
                if let Some(error) = self.server.fail_next.take() {
                    self.reply(id, Body::Error(error));
                    return;
                }
                let now = self.now;
                match self.server.tokens.get(&request.token) {
                    Some(&expires) if expires > now + Duration::from_secs(1) => {
                        if let Some(conn) = &mut self.conn {
                            conn.session_expires = Some(expires);
                        }
                        let expires_in_seconds =
                            u32::try_from((expires - now).as_secs()).unwrap_or(u32::MAX);
                        self.reply(id, Body::Refresh(v1::RefreshResult { expires_in_seconds }));
                    }
                    _ => self.reply(
                        id,
                        Body::Error(v1::Error {
                            code: ErrorCode::TOKEN_EXPIRED.0,
                            message: "token expired".to_owned(),
                            temporary: false,
                        }),
                    ),
                }
            }
            other => self.fail(format!("the machine sent {other:?}, which it never should")),
        }
    }

    fn server_connect(&mut self, id: u32, request: v1::ConnectRequest) {
        if let Some(error) = self.server.fail_next.take() {
            self.reply(id, Body::Error(error));
            return;
        }
        let now = self.now;
        let expires = match self.server.tokens.get(&request.token) {
            Some(&expires) if expires > now + Duration::from_secs(1) => expires,
            _ => {
                if self.server.expired_reply_is_error {
                    self.reply(
                        id,
                        Body::Error(v1::Error {
                            code: ErrorCode::TOKEN_EXPIRED.0,
                            message: "token expired".to_owned(),
                            temporary: false,
                        }),
                    );
                } else {
                    self.server_close(CloseCode::EXPIRED, "token expired", true);
                }
                return;
            }
        };
        let client = format!("c{}", self.server.next_client);
        self.server.next_client += 1;
        let Some(conn) = &mut self.conn else { return };
        conn.authed = true;
        conn.session_expires = Some(expires);
        conn.next_heartbeat = now + PING_INTERVAL;
        let expires_in_seconds = u32::try_from((expires - now).as_secs()).unwrap_or(u32::MAX);
        self.reply(
            id,
            Body::Connect(v1::ConnectResult {
                client,
                user: "u".to_owned(),
                version: "sim".to_owned(),
                expires_in_seconds,
                ping_interval_ms: u32::try_from(PING_INTERVAL.as_millis()).unwrap_or(u32::MAX),
                pong_timeout_ms: 1000,
                codec: String::new(),
            }),
        );
    }

    fn server_subscribe(&mut self, id: u32, request: v1::SubscribeRequest) {
        if let Some(error) = self.server.fail_next.take() {
            // 113 only makes sense for a recovering subscribe.
            if error.code != ErrorCode::UNRECOVERABLE_POSITION.0 || request.since.is_some() {
                self.reply(id, Body::Error(error));
                return;
            }
        }
        let Some(room) = self.server.rooms.iter().find(|r| r.name == request.room) else {
            self.reply(
                id,
                Body::Error(v1::Error {
                    code: ErrorCode::UNKNOWN_ROOM.0,
                    message: "no such room".to_owned(),
                    temporary: false,
                }),
            );
            return;
        };
        let Some(conn) = &mut self.conn else { return };
        if !conn.subs.insert(request.room.clone()) {
            self.fail(format!("subscribe to {}, already subscribed", request.room));
            return;
        }
        let mut result = v1::SubscribeResult {
            epoch: room.epoch.clone(),
            offset: room.top,
            recoverable: room.history.is_some_and(|kept| kept > 0),
            recovered: false,
            publications: Vec::new(),
        };
        if let (Some(since), true) = (&request.since, result.recoverable) {
            let oldest_kept = room.top - room.kept.len() as u64;
            if since.epoch == room.epoch && since.offset <= room.top && since.offset >= oldest_kept
            {
                result.recovered = true;
                result.publications = room
                    .kept
                    .iter()
                    .filter(|publication| publication.offset > since.offset)
                    .cloned()
                    .collect();
                if let Some(first) = result.publications.first().cloned() {
                    match self.server.glitch {
                        Some(Glitch::HoleInNextRecovery) => {
                            result.publications.remove(0);
                            self.server.glitch = None;
                        }
                        Some(Glitch::RepeatInNextRecovery) => {
                            result.publications.insert(0, first);
                            self.server.glitch = None;
                        }
                        _ => {}
                    }
                }
            }
        }
        if request.since.is_some()
            && !result.recovered
            && self.server.glitch == Some(Glitch::ClaimRecovered)
        {
            self.server.glitch = None;
            result.recovered = true;
            result.publications = room.kept.iter().cloned().collect();
        }
        self.reply(id, Body::Subscribe(result));
    }

    /// Publishes in a room; returns the offset and epoch.
    fn server_publish(&mut self, index: usize) -> (u64, String) {
        let room = &mut self.server.rooms[index];
        let publication = match room.history {
            Some(kept) => {
                room.top += 1;
                let publication = v1::Publication {
                    room: room.name.to_owned(),
                    offset: room.top,
                    data: Bytes::from(format!("{}|{}|{}", room.name, room.epoch, room.top)),
                    ..Default::default()
                };
                room.kept.push_back(publication.clone());
                while room.kept.len() > kept {
                    room.kept.pop_front();
                }
                publication
            }
            None => {
                room.sequence += 1;
                v1::Publication {
                    room: room.name.to_owned(),
                    offset: 0,
                    data: Bytes::from(format!("{}||#{}", room.name, room.sequence)),
                    ..Default::default()
                }
            }
        };
        let position = (room.top, room.epoch.clone());
        if let Some(conn) = &mut self.conn {
            if conn.authed && !conn.closing && conn.subs.contains(&publication.room) {
                let copies = match self.server.glitch {
                    Some(Glitch::LoseNextPush) => 0,
                    // Without offsets a duplicate cannot be recognised by any
                    // client (spec/08-client.md, "Delivery"): only rooms with
                    // a stream get them.
                    Some(Glitch::DuplicateNextPush) if publication.offset > 0 => 2,
                    _ => 1,
                };
                if copies != 1 {
                    self.server.glitch = None;
                }
                for _ in 0..copies {
                    conn.to_client.push_back(ServerFrame {
                        id: 0,
                        body: Some(Body::Publication(publication.clone())),
                    });
                }
            }
        }
        position
    }

    fn new_epoch(&mut self, index: usize) {
        self.server.epochs += 1;
        let room = &mut self.server.rooms[index];
        if room.history.is_some() {
            room.epoch = format!("e{}", self.server.epochs);
            room.top = 0;
            room.kept.clear();
        }
    }

    fn lose_room(&mut self, index: usize) {
        self.new_epoch(index);
        self.server_unsubscribe(ROOMS[index], UnsubscribeCode::STATE_LOST);
    }

    fn server_unsubscribe(&mut self, room: &str, code: UnsubscribeCode) {
        let Some(conn) = &mut self.conn else { return };
        if conn.closing || !conn.subs.remove(room) {
            return;
        }
        conn.to_client.push_back(ServerFrame {
            id: 0,
            body: Some(Body::Unsubscribed(v1::Unsubscribed {
                room: room.to_owned(),
                code: code.0,
                reason: "server".to_owned(),
            })),
        });
    }

    /// Drops the connection: 1006 abruptly (frames in flight are lost),
    /// anything else after delivering what is in flight.
    fn server_drop(&mut self, code: CloseCode, push: bool) {
        if code == CloseCode::ABNORMAL {
            if self.conn.is_some() {
                self.conn = None;
                self.deferred
                    .push_back(Deferred::Closed(code, "connection reset".to_owned()));
                self.run_deferred();
            }
        } else {
            self.server_close(code, "dropped", push);
        }
    }

    fn server_close(&mut self, code: CloseCode, reason: &str, push: bool) {
        let Some(conn) = &mut self.conn else { return };
        if conn.closing {
            return;
        }
        conn.closing = true;
        if push {
            conn.to_client.push_back(ServerFrame {
                id: 0,
                body: Some(Body::Disconnect(v1::Disconnect {
                    code: u32::from(code.0),
                    reason: reason.to_owned(),
                    reconnect: code.reconnect(),
                })),
            });
        }
        conn.close_after_flush = Some((code, reason.to_owned()));
    }

    // ------------------------------------------------------------------
    // Bookkeeping
    // ------------------------------------------------------------------

    fn note(&mut self, line: String) {
        if self.trace.len() == TRACE_LINES {
            self.trace.pop_front();
        }
        self.trace.push_back(line);
    }

    fn fail(&mut self, message: String) {
        if self.violation.is_none() {
            self.note(format!("VIOLATION {message}"));
            self.violation = Some(message);
        }
    }

    fn verdict(&self) -> Result<(), Violation> {
        match &self.violation {
            None => Ok(()),
            Some(message) => Err(Violation {
                message: message.clone(),
                trace: self.trace.iter().cloned().collect(),
            }),
        }
    }
}
