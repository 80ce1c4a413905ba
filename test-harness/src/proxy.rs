//! A TCP proxy in front of a broker that understands just enough of the Kafka framing (4-byte
//! length, api key, correlation id) to tamper with Produce responses: swallow one and cut the
//! connection (the client cannot know whether its batch was written and must retry it: what
//! the idempotent producer exists for), or hold every one back for a while (the broker has
//! written the batch; the client times out first and cannot know either).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

const PRODUCE_API_KEY: i16 = 0;

/// The proxy; stops accepting when dropped.
#[derive(Debug)]
pub struct FaultProxy {
    pub port: u16,
    faults: Faults,
    accept: JoinHandle<()>,
}

/// What the proxy does to Produce traffic, shared by every connection.
#[derive(Debug, Clone, Default)]
struct Faults {
    armed: Arc<AtomicBool>,
    swallowed: Arc<AtomicUsize>,
    delay: Arc<Mutex<Option<Duration>>>,
    request_delay: Arc<Mutex<Option<Duration>>>,
}

impl Faults {
    fn delay(&self) -> Option<Duration> {
        self.delay.lock().ok().and_then(|d| *d)
    }

    fn request_delay(&self) -> Option<Duration> {
        self.request_delay.lock().ok().and_then(|d| *d)
    }
}

impl FaultProxy {
    /// Listens on `port` and forwards every connection to `upstream` (`host:port`).
    pub async fn start(port: u16, upstream: String) -> Self {
        let listener = TcpListener::bind(("127.0.0.1", port))
            .await
            .expect("bind proxy");
        let faults = Faults::default();
        let accept = tokio::spawn({
            let faults = faults.clone();
            async move {
                while let Ok((client, _)) = listener.accept().await {
                    let Ok(server) = TcpStream::connect(&upstream).await else {
                        continue;
                    };
                    tokio::spawn(relay(client, server, faults.clone()));
                }
            }
        });
        Self {
            port,
            faults,
            accept,
        }
    }

    /// The next Produce request is forwarded, but its response is swallowed and the
    /// connection closed.
    pub fn swallow_next_produce_response(&self) {
        self.faults.armed.store(true, Ordering::SeqCst);
    }

    /// How many responses were swallowed so far.
    pub fn swallowed(&self) -> usize {
        self.faults.swallowed.load(Ordering::SeqCst)
    }

    /// Produce requests sent from now on are forwarded at once, but their responses are held
    /// back for `delay` (later responses on the same connection wait behind them, as they
    /// would behind a slow broker).
    pub fn delay_produce_responses(&self, delay: Duration) {
        if let Ok(mut slot) = self.faults.delay.lock() {
            *slot = Some(delay);
        }
    }

    /// Produce requests are held back for `delay` before they reach the broker (and every
    /// later request of the same connection behind them, as on a slow link): a writer's
    /// appends land well after it sent them, while other clients' reads go on.
    pub fn delay_produce_requests(&self, delay: Duration) {
        if let Ok(mut slot) = self.faults.request_delay.lock() {
            *slot = Some(delay);
        }
    }

    /// Requests sent from now on reach the broker and are answered without delay.
    pub fn stop_delaying(&self) {
        if let Ok(mut slot) = self.faults.delay.lock() {
            *slot = None;
        }
        if let Ok(mut slot) = self.faults.request_delay.lock() {
            *slot = None;
        }
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

/// One connection's marks: the Produce response to swallow, and those to hold back.
#[derive(Debug, Default)]
struct Marks {
    swallow: Option<i32>,
    delayed: HashMap<i32, Duration>,
}

async fn relay(client: TcpStream, server: TcpStream, faults: Faults) {
    let (client_read, client_write) = client.into_split();
    let (server_read, server_write) = server.into_split();
    let marks: Arc<Mutex<Marks>> = Arc::default();
    let upstream = tokio::spawn(requests(
        client_read,
        server_write,
        faults.clone(),
        marks.clone(),
    ));
    responses(server_read, client_write, marks, faults).await;
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

/// Client to broker: note the correlation id of a Produce request to swallow or delay.
async fn requests(
    mut from: OwnedReadHalf,
    mut to: OwnedWriteHalf,
    faults: Faults,
    marks: Arc<Mutex<Marks>>,
) {
    while let Some(frame) = read_frame(&mut from).await {
        if frame.len() >= 12 {
            let api_key = i16::from_be_bytes([frame[4], frame[5]]);
            let correlation = i32::from_be_bytes([frame[8], frame[9], frame[10], frame[11]]);
            if api_key == PRODUCE_API_KEY {
                if let Ok(mut marks) = marks.lock() {
                    if faults.armed.swap(false, Ordering::SeqCst) {
                        marks.swallow = Some(correlation);
                    }
                    if let Some(delay) = faults.delay() {
                        marks.delayed.insert(correlation, delay);
                    }
                }
                if let Some(delay) = faults.request_delay() {
                    tokio::time::sleep(delay).await;
                }
            }
        }
        if to.write_all(&frame).await.is_err() {
            return;
        }
    }
}

/// Broker to client: drop the response marked to swallow and close the connection instead;
/// hold back the responses marked to delay.
async fn responses(
    mut from: OwnedReadHalf,
    mut to: OwnedWriteHalf,
    marks: Arc<Mutex<Marks>>,
    faults: Faults,
) {
    while let Some(frame) = read_frame(&mut from).await {
        if frame.len() >= 8 {
            let correlation = i32::from_be_bytes([frame[4], frame[5], frame[6], frame[7]]);
            let (swallow, delayed) = marks
                .lock()
                .map(|mut marks| {
                    (
                        marks.swallow == Some(correlation),
                        marks.delayed.remove(&correlation),
                    )
                })
                .unwrap_or((false, None));
            if swallow {
                faults.swallowed.fetch_add(1, Ordering::SeqCst);
                let _ = to.shutdown().await;
                return;
            }
            // The delay in force when the request went out: a later stop_delaying does not
            // shorten it.
            if let Some(delay) = delayed {
                tokio::time::sleep(delay).await;
            }
        }
        if to.write_all(&frame).await.is_err() {
            return;
        }
    }
}
