//! The tokio driver: runs a [`Machine`] over a [`Connector`]'s transports.
//!
//! It only moves bytes and time: every decision is the machine's. After each
//! input it drains the machine's actions (encoding consecutive `Send`s into one
//! message, a batch), then waits for the next input: an application request,
//! a transport opening, a message, or the machine's timeout. Every queue is
//! bounded; a slow application slows reading, which the server sees as a slow
//! client (it closes with 3003, and the machine reconnects and recovers).

use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant as TokioInstant;

use super::machine::{Action, Config, Event, Machine, PublishError, PublishId};
use super::transport::{
    BoxFuture, Connector, Incoming, MAX_INCOMING_MESSAGE, Transport, WebSocketConnector,
};
use crate::codec::{self, DecodeLimits, Encoding, unit};
use crate::codes::CloseCode;
use crate::wire::v1::ServerFrame;

/// Requests from the application to the driver.
enum Request {
    Connect,
    Disconnect,
    Subscribe(String),
    Unsubscribe(String),
    Publish(
        String,
        Bytes,
        oneshot::Sender<Result<PublishId, PublishError>>,
    ),
    SetToken(String),
}

/// The driver has stopped (its [`Client`] was dropped or it failed).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("the client has stopped")]
pub struct Stopped;

/// A Switchboard client: the handle to a running driver. Dropping it stops
/// the driver and closes the connection.
pub struct Client {
    requests: mpsc::Sender<Request>,
    events: mpsc::Receiver<Event>,
}

/// Events buffered between the driver and the application.
const EVENT_BUFFER: usize = 256;

impl Client {
    /// Starts a client over WebSocket and connects.
    pub fn websocket(url: impl Into<String>, encoding: Encoding, config: Config) -> Self {
        Self::start(Arc::new(WebSocketConnector::new(url, encoding)), config)
    }

    /// Starts a client over any transport and connects.
    pub fn start(connector: Arc<dyn Connector>, config: Config) -> Self {
        let (requests, requests_rx) = mpsc::channel(64);
        let (events_tx, events) = mpsc::channel(EVENT_BUFFER);
        let machine = Machine::new(config);
        tokio::spawn(run(machine, connector, requests_rx, events_tx));
        let client = Self { requests, events };
        let _ = client.requests.try_send(Request::Connect);
        client
    }

    async fn request(&self, request: Request) -> Result<(), Stopped> {
        self.requests.send(request).await.map_err(|_| Stopped)
    }

    /// Subscribes to a room; the outcome arrives as [`Event::Subscribed`] or
    /// [`Event::Error`]. Subscriptions survive reconnects.
    pub async fn subscribe(&self, room: &str) -> Result<(), Stopped> {
        self.request(Request::Subscribe(room.to_owned())).await
    }

    /// Leaves a room.
    pub async fn unsubscribe(&self, room: &str) -> Result<(), Stopped> {
        self.request(Request::Unsubscribe(room.to_owned())).await
    }

    /// Publishes into a room (queued, bounded, while disconnected). The
    /// outcome arrives as [`Event::Published`] or [`Event::PublishFailed`].
    pub async fn publish(
        &self,
        room: &str,
        data: Bytes,
    ) -> Result<Result<PublishId, PublishError>, Stopped> {
        let (tx, rx) = oneshot::channel();
        self.request(Request::Publish(room.to_owned(), data, tx))
            .await?;
        rx.await.map_err(|_| Stopped)
    }

    /// Hands the client a fresh token (the answer to [`Event::NeedToken`]).
    pub async fn set_token(&self, token: String) -> Result<(), Stopped> {
        self.request(Request::SetToken(token)).await
    }

    /// Disconnects and stays disconnected until [`Client::reconnect`].
    pub async fn disconnect(&self) -> Result<(), Stopped> {
        self.request(Request::Disconnect).await
    }

    /// Connects again after [`Client::disconnect`].
    pub async fn reconnect(&self) -> Result<(), Stopped> {
        self.request(Request::Connect).await
    }

    /// The next event; `None` once the driver has stopped.
    pub async fn next_event(&mut self) -> Option<Event> {
        self.events.recv().await
    }
}

fn now() -> std::time::Instant {
    TokioInstant::now().into_std()
}

struct Driver {
    machine: Machine,
    connector: Arc<dyn Connector>,
    encoding: Encoding,
    transport: Option<Transport>,
    opening: Option<BoxFuture<'static, Result<Transport, String>>>,
    events: mpsc::Sender<Event>,
    limits: DecodeLimits,
}

async fn run(
    machine: Machine,
    connector: Arc<dyn Connector>,
    mut requests: mpsc::Receiver<Request>,
    events: mpsc::Sender<Event>,
) {
    let limits = DecodeLimits {
        max_frame_size: super::transport::MAX_INCOMING_MESSAGE,
        max_frames_per_batch: usize::MAX,
    };
    let encoding = connector.encoding();
    let mut driver = Driver {
        machine,
        connector,
        encoding,
        transport: None,
        opening: None,
        events,
        limits,
    };
    loop {
        if driver.perform().await.is_err() {
            break;
        }
        let timeout = driver.machine.poll_timeout();
        let sleep = async move {
            match timeout {
                Some(at) => tokio::time::sleep_until(TokioInstant::from_std(at)).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            request = requests.recv() => match request {
                Some(request) => driver.apply(request),
                None => break,
            },
            opened = async { driver.opening.as_mut().expect("guarded").await }, if driver.opening.is_some() => {
                driver.opening = None;
                match opened {
                    Ok(transport) => {
                        driver.transport = Some(transport);
                        driver.machine.handle_transport_open(now());
                    }
                    Err(reason) => driver.machine.handle_transport_closed(CloseCode::ABNORMAL, &reason, now()),
                }
            }
            incoming = async { driver.transport.as_mut().expect("guarded").incoming.recv().await }, if driver.transport.is_some() => {
                driver.receive(incoming);
            }
            () = sleep => driver.machine.handle_timeout(now()),
        }
    }
    if let Some(mut transport) = driver.transport.take() {
        transport
            .sink
            .close(CloseCode::NORMAL, "client stopped".into())
            .await;
    }
}

impl Driver {
    fn apply(&mut self, request: Request) {
        let now = now();
        match request {
            Request::Connect => self.machine.connect(now),
            Request::Disconnect => self.machine.disconnect(now),
            Request::Subscribe(room) => self.machine.subscribe(&room, now),
            Request::Unsubscribe(room) => self.machine.unsubscribe(&room, now),
            Request::Publish(room, data, reply) => {
                let _ = reply.send(self.machine.publish(&room, data, now));
            }
            Request::SetToken(token) => self.machine.set_token(token, now),
        }
    }

    fn receive(&mut self, incoming: Option<Incoming>) {
        match incoming {
            Some(Incoming::Batch(batch)) => self.handle_batches(vec![Ok(batch)]),
            Some(Incoming::Message(bytes)) => {
                let batches = match self.connector.codec() {
                    None => vec![Ok(bytes)],
                    Some(codec) => unit::units(&bytes, codec, MAX_INCOMING_MESSAGE)
                        .map(|b| b.map_err(|e| (e.close_code(), e.to_string())))
                        .collect(),
                };
                self.handle_batches(batches);
            }
            Some(Incoming::Closed { code, reason }) => {
                self.transport = None;
                self.machine.handle_transport_closed(code, &reason, now());
            }
            None => {
                self.transport = None;
                self.machine
                    .handle_transport_closed(CloseCode::ABNORMAL, "transport ended", now());
            }
        }
    }

    /// Hands the frames of each batch to the machine; the first undecodable
    /// batch or frame ends the transport.
    fn handle_batches(&mut self, batches: Vec<Result<Bytes, (CloseCode, String)>>) {
        for batch in batches {
            let batch = match batch {
                Ok(batch) => batch,
                Err((code, reason)) => {
                    self.transport = None;
                    self.machine.handle_transport_closed(
                        code,
                        &format!("undecodable message from the server: {reason}"),
                        now(),
                    );
                    return;
                }
            };
            let frames: Vec<_> =
                codec::decode_batch::<ServerFrame>(&batch, self.encoding, &self.limits).collect();
            for frame in frames {
                match frame {
                    Ok(frame) => self.machine.handle_frame(frame, now()),
                    Err(err) => {
                        // A server that sends what cannot be decoded broke the protocol.
                        self.transport = None;
                        self.machine.handle_transport_closed(
                            err.close_code(),
                            &format!("undecodable frame from the server: {err}"),
                            now(),
                        );
                        return;
                    }
                }
            }
        }
    }

    /// Performs every pending action. `Err` when the application is gone.
    async fn perform(&mut self) -> Result<(), Stopped> {
        let mut batch = BytesMut::new();
        while let Some(action) = self.machine.poll_action() {
            match action {
                Action::OpenTransport => {
                    self.transport = None;
                    self.opening = Some(self.connector.open());
                }
                Action::Send(frame) => codec::encode_into(&frame, self.encoding, &mut batch),
                Action::CloseTransport { code, reason } => {
                    self.flush(&mut batch).await;
                    self.opening = None;
                    if let Some(mut transport) = self.transport.take() {
                        transport.sink.close(code, reason).await;
                    }
                }
                Action::Emit(event) => self.events.send(event).await.map_err(|_| Stopped)?,
            }
        }
        self.flush(&mut batch).await;
        Ok(())
    }

    async fn flush(&mut self, batch: &mut BytesMut) {
        if batch.is_empty() {
            return;
        }
        let message = match self.connector.codec() {
            None => batch.split().freeze(),
            // Commands are small: an identity unit unless worth compressing.
            Some(codec) => {
                let mut unit = BytesMut::new();
                unit::seal_into(codec, batch, 256, unit::Levels::default(), &mut unit);
                batch.clear();
                unit.freeze()
            }
        };
        let Some(transport) = self.transport.as_mut() else {
            return;
        };
        if let Err(reason) = transport.sink.send(message).await {
            self.transport = None;
            self.machine.handle_transport_closed(
                CloseCode::ABNORMAL,
                &format!("send failed: {reason}"),
                now(),
            );
        }
    }
}
