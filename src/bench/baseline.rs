//! The baseline: a bare tokio-tungstenite broadcast server, what the library
//! alone can do (`switchboard bench baseline-server`, started by `bench run`).
//!
//! Every text or binary message received from any connection is sent to
//! every other connection: the same `Bytes` for all of them (a `Message`
//! clone shares its buffer), through a bounded queue per connection whose
//! writer feeds everything queued and then flushes once. A connection whose
//! queue is full is dropped, as Switchboard closes a slow consumer. The
//! WebSocket buffers are Switchboard's defaults ([`Limits`]), so the memory
//! comparison is like for like. No protocol, no auth, no rooms: this is the
//! floor a real server is measured against.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

use crate::config::Limits;

/// Arguments of `switchboard bench baseline-server`.
#[derive(clap::Args, Debug)]
pub struct BaselineArgs {
    /// Address to listen on (port 0: any free port, announced on stdout).
    #[arg(long, default_value = "127.0.0.1:0")]
    pub listen: SocketAddr,
}

/// Messages queued per connection before it counts as too slow: about the
/// 1 MiB of Switchboard's default outbound queue in 200-byte messages.
const QUEUE: usize = 4096;

type Peers = Arc<RwLock<HashMap<u64, mpsc::Sender<Message>>>>;

/// Serves until killed.
pub async fn serve(args: BaselineArgs) -> Result<(), String> {
    let listener = TcpListener::bind(args.listen)
        .await
        .map_err(|e| format!("cannot listen on {}: {e}", args.listen))?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    println!("baseline listening on {addr}");
    let peers = Peers::default();
    for id in 0u64.. {
        match listener.accept().await {
            Ok((stream, _)) => {
                let _ = stream.set_nodelay(true);
                tokio::spawn(connection(stream, id, peers.clone()));
            }
            Err(err) => {
                // Out of file descriptors, typically: wait for some to close.
                eprintln!("baseline: accept failed: {err}");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
    Ok(())
}

fn config() -> WebSocketConfig {
    let limits = Limits::default();
    WebSocketConfig::default()
        .read_buffer_size(limits.websocket_read_buffer)
        .write_buffer_size(limits.websocket_write_buffer)
        .max_write_buffer_size(
            limits.websocket_write_buffer + limits.outbound_queue_bytes + limits.max_message_size,
        )
        .max_message_size(Some(limits.max_message_size))
        .max_frame_size(Some(limits.max_message_size))
}

async fn connection(stream: TcpStream, id: u64, peers: Peers) {
    let Ok(socket) = tokio_tungstenite::accept_async_with_config(stream, Some(config())).await
    else {
        return;
    };
    let (mut sink, mut source) = socket.split();
    let (tx, mut rx) = mpsc::channel::<Message>(QUEUE);
    write(&peers).insert(id, tx);
    let reader = async {
        while let Some(Ok(message)) = source.next().await {
            match message {
                Message::Text(_) | Message::Binary(_) => broadcast(&peers, id, &message),
                Message::Close(_) => break,
                _ => {}
            }
        }
        // Drops the only sender: the writer ends once the queue is drained.
        write(&peers).remove(&id);
    };
    let writer = async {
        while let Some(message) = rx.recv().await {
            if sink.feed(message).await.is_err() {
                return;
            }
            // Everything queued meanwhile goes out with one flush.
            while let Ok(message) = rx.try_recv() {
                if sink.feed(message).await.is_err() {
                    return;
                }
            }
            if sink.flush().await.is_err() {
                return;
            }
        }
        let _ = sink.close().await;
    };
    tokio::join!(reader, writer);
}

/// Queues `message` for every connection but `from`; drops the ones that
/// cannot take it.
fn broadcast(peers: &Peers, from: u64, message: &Message) {
    let mut slow = Vec::new();
    for (&id, tx) in read(peers).iter() {
        if id != from && tx.try_send(message.clone()).is_err() {
            slow.push(id);
        }
    }
    if !slow.is_empty() {
        let mut peers = write(peers);
        slow.iter().for_each(|id| drop(peers.remove(id)));
    }
}

// Every critical section is one map operation: a poisoned lock holds a valid map.
fn read(peers: &Peers) -> std::sync::RwLockReadGuard<'_, HashMap<u64, mpsc::Sender<Message>>> {
    peers.read().unwrap_or_else(PoisonError::into_inner)
}

fn write(peers: &Peers) -> std::sync::RwLockWriteGuard<'_, HashMap<u64, mpsc::Sender<Message>>> {
    peers.write().unwrap_or_else(PoisonError::into_inner)
}
