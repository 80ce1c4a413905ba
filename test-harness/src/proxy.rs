//! A TCP proxy in front of a broker that understands just enough of the Kafka framing (4-byte
//! length, api key, correlation id) to swallow one Produce response and cut the connection.
//! The client then cannot know whether its batch was written and must retry it: exactly the
//! situation the idempotent producer exists for.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

const PRODUCE_API_KEY: i16 = 0;

/// The proxy; stops accepting when dropped.
#[derive(Debug)]
pub struct FaultProxy {
    pub port: u16,
    armed: Arc<AtomicBool>,
    swallowed: Arc<AtomicUsize>,
    accept: JoinHandle<()>,
}

impl FaultProxy {
    /// Listens on `port` and forwards every connection to `upstream` (`host:port`).
    pub async fn start(port: u16, upstream: String) -> Self {
        let listener = TcpListener::bind(("127.0.0.1", port))
            .await
            .expect("bind proxy");
        let armed = Arc::new(AtomicBool::new(false));
        let swallowed = Arc::new(AtomicUsize::new(0));
        let accept = tokio::spawn({
            let (armed, swallowed) = (armed.clone(), swallowed.clone());
            async move {
                while let Ok((client, _)) = listener.accept().await {
                    let Ok(server) = TcpStream::connect(&upstream).await else {
                        continue;
                    };
                    tokio::spawn(relay(client, server, armed.clone(), swallowed.clone()));
                }
            }
        });
        Self {
            port,
            armed,
            swallowed,
            accept,
        }
    }

    /// The next Produce request is forwarded, but its response is swallowed and the
    /// connection closed.
    pub fn swallow_next_produce_response(&self) {
        self.armed.store(true, Ordering::SeqCst);
    }

    /// How many responses were swallowed so far.
    pub fn swallowed(&self) -> usize {
        self.swallowed.load(Ordering::SeqCst)
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

async fn relay(
    client: TcpStream,
    server: TcpStream,
    armed: Arc<AtomicBool>,
    swallowed: Arc<AtomicUsize>,
) {
    let (client_read, client_write) = client.into_split();
    let (server_read, server_write) = server.into_split();
    let target: Arc<Mutex<Option<i32>>> = Arc::new(Mutex::new(None));
    let upstream = tokio::spawn(requests(client_read, server_write, armed, target.clone()));
    responses(server_read, client_write, target, swallowed).await;
    upstream.abort();
}

async fn read_frame(reader: &mut OwnedReadHalf) -> Option<Vec<u8>> {
    let mut length = [0u8; 4];
    reader.read_exact(&mut length).await.ok()?;
    let size = usize::try_from(i32::from_be_bytes(length)).ok()?;
    let mut frame = vec![0u8; 4 + size];
    frame[..4].copy_from_slice(&length);
    reader.read_exact(&mut frame[4..]).await.ok()?;
    Some(frame)
}

/// Client to broker: note the correlation id of a Produce request when armed.
async fn requests(
    mut from: OwnedReadHalf,
    mut to: OwnedWriteHalf,
    armed: Arc<AtomicBool>,
    target: Arc<Mutex<Option<i32>>>,
) {
    while let Some(frame) = read_frame(&mut from).await {
        if frame.len() >= 12 {
            let api_key = i16::from_be_bytes([frame[4], frame[5]]);
            let correlation = i32::from_be_bytes([frame[8], frame[9], frame[10], frame[11]]);
            if api_key == PRODUCE_API_KEY && armed.swap(false, Ordering::SeqCst) {
                if let Ok(mut slot) = target.lock() {
                    *slot = Some(correlation);
                }
            }
        }
        if to.write_all(&frame).await.is_err() {
            return;
        }
    }
}

/// Broker to client: drop the marked response and close the connection instead.
async fn responses(
    mut from: OwnedReadHalf,
    mut to: OwnedWriteHalf,
    target: Arc<Mutex<Option<i32>>>,
    swallowed: Arc<AtomicUsize>,
) {
    while let Some(frame) = read_frame(&mut from).await {
        if frame.len() >= 8 {
            let correlation = i32::from_be_bytes([frame[4], frame[5], frame[6], frame[7]]);
            let marked = target
                .lock()
                .map(|slot| *slot == Some(correlation))
                .unwrap_or(false);
            if marked {
                swallowed.fetch_add(1, Ordering::SeqCst);
                let _ = to.shutdown().await;
                return;
            }
        }
        if to.write_all(&frame).await.is_err() {
            return;
        }
    }
}
