//! Serving the app on a listener: HTTP/1.1 with `TCP_NODELAY`, the peer address for the
//! handlers (`ConnectInfo`), three connection timeouts, a cap on open connections, and
//! graceful shutdown. `main.rs` and the API tests both serve through [`serve`].
//!
//! The timeouts close connections that hold a descriptor while doing nothing:
//! - **header read** (`REQUEST_HEADER_TIMEOUT_SECS`): a request head must be complete within
//!   this time, counted from the connection's start, or on a kept-alive connection from the
//!   first byte of the next request (a slowloris sending its head a byte at a time, or a
//!   client that connects and never sends, is closed);
//! - **idle keep-alive** (`KEEPALIVE_TIMEOUT_SECS`): between a response and the first byte
//!   of the next request. Kept above nginx's upstream `keepalive_timeout` (60 s) so the
//!   proxy, not us, closes a pooled connection, and never while it sends a request;
//! - **response stall** (`RESPONSE_STALL_TIMEOUT_SECS`): a response the client stops reading
//!   (the socket accepts no byte for this long) fails its connection, which drops the body
//!   and with it the file descriptor, the ZIP task and the buffers it held.
//!
//! hyper's own `header_read_timeout` cannot tell the two apart (hyper 1.x starts it when it
//! begins waiting for a head, idle time included), so the connection's reads are timed
//! here: `TimedIo` fails a read that waits past the deadline, and the service marks a
//! connection busy from a request's head until its response body is done, when no deadline
//! applies (request bodies have their own limits, [`crate::body_timeout`]). Writes are timed
//! only once the socket is full, so a response that flows costs no timer work.
//!
//! Each connection may hold a socket, a file and up to a few hundred KiB of response bytes
//! (hyper's write buffer is kept small, see [`WRITE_BUF_MAX`]), so their number is capped
//! (`MAX_CONNECTIONS`): past it a new connection gets a short `503` and is closed, rather
//! than the process running out of descriptors and failing every accept.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::Router;
use bytes::Bytes;
use http_body::{Body as HttpBody, Frame, SizeHint};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio::time::{Instant, Sleep};
use tower::ServiceExt as _;

/// hyper's buffer limit, for both directions. Writing, hyper takes a next body frame while it
/// holds less than this, so a connection whose client stopped reading holds about one frame
/// (a 256 KiB chunk of a cached file or a ZIP; 1 MiB read from the disk); its default
/// (~400 KiB) let it take two. Reading, it is also the most hyper reads at once, so a smaller
/// one costs uploads CPU: 128 KiB cost raw uploads ~15 % more server CPU than 256 KiB or the
/// default, and 64 KiB cost downloads 5–20 % (bench/RESULTS.md, "Session 4" and
/// `stalled_readers`). As the head limit it is still sixteen times the old service's (h11
/// refuses heads over 16 KiB).
const WRITE_BUF_MAX: usize = 256 * 1024;

/// Descriptors kept back from the connection cap for the rest of the process (listener,
/// store, logs, blocking reads).
const RESERVED_FDS: u64 = 128;

/// The cap when `MAX_CONNECTIONS` is not set and the descriptor limit allows more.
const DEFAULT_MAX_CONNECTIONS: usize = 10_000;

/// Connections past the cap being answered `503` at once; more are closed without a word.
const TURN_AWAY_AT_ONCE: usize = 64;

/// Longest time spent answering and closing a connection past the cap.
const TURN_AWAY_TIME: Duration = Duration::from_secs(2);

/// The connection timeouts and the cap on open connections.
#[derive(Debug, Clone, Copy)]
pub struct ConnLimits {
    /// Longest time to receive a request head.
    pub header: Duration,
    /// Longest idle time between a response and the next request's first byte.
    pub idle: Duration,
    /// Longest time a response may wait for the client to take a byte.
    pub stall: Duration,
    /// Most connections open at once.
    pub max_connections: usize,
}

impl ConnLimits {
    /// From the settings; without `MAX_CONNECTIONS`, the cap follows the descriptor limit.
    pub fn from_settings(s: &crate::config::Settings) -> Self {
        let by_fds = max_connections_for_fds();
        let max_connections = match s.max_connections {
            Some(n) => {
                if n > by_fds {
                    tracing::warn!(
                        max_connections = n,
                        fd_limit_allows = by_fds,
                        "MAX_CONNECTIONS is above what the descriptor limit (ulimit -n) allows"
                    );
                }
                n
            }
            None => by_fds,
        };
        Self {
            header: s.request_header_timeout,
            idle: s.keepalive_timeout,
            stall: s.response_stall_timeout,
            max_connections,
        }
    }
}

/// Connections the descriptor limit has room for: each may hold a socket and a file.
fn max_connections_for_fds() -> usize {
    let soft = rustix::process::getrlimit(rustix::process::Resource::Nofile).current;
    match soft {
        None => DEFAULT_MAX_CONNECTIONS,
        Some(n) => usize::try_from(n.saturating_sub(RESERVED_FDS) / 2)
            .unwrap_or(usize::MAX)
            .clamp(1, DEFAULT_MAX_CONNECTIONS),
    }
}

/// Serves `app` on `listener` until `shutdown` completes, then stops accepting and waits
/// for the open connections to finish their requests in flight (idle ones close at once,
/// stalled ones at the stall timeout).
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: ConnLimits,
    shutdown: impl Future<Output = ()>,
) -> io::Result<()> {
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let mut http = hyper::server::conn::http1::Builder::new();
    // Our own timing (above) instead of hyper's; without a timer hyper keeps none.
    http.header_read_timeout(None::<Duration>);
    http.max_buf_size(WRITE_BUF_MAX);
    let open = Arc::new(Semaphore::new(limits.max_connections));
    let turning_away = Arc::new(Semaphore::new(TURN_AWAY_AT_ONCE));
    let mut last_full_warning: Option<Instant> = None;
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let (tcp, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    if !is_connection_error(&e) {
                        // Out of descriptors, say: wait a little rather than spin.
                        tracing::error!("accept error: {e}");
                        tokio::select! {
                            () = tokio::time::sleep(Duration::from_secs(1)) => {}
                            () = &mut shutdown => break,
                        }
                    }
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let Ok(permit) = Arc::clone(&open).try_acquire_owned() else {
            if last_full_warning.is_none_or(|t| t.elapsed() >= Duration::from_secs(10)) {
                last_full_warning = Some(Instant::now());
                tracing::warn!(
                    max_connections = limits.max_connections,
                    "connection cap reached: new connections get 503"
                );
            }
            turn_away(tcp, &turning_away);
            continue;
        };
        // Small answers must not wait for Nagle's delayed ACK (~40 ms on a kept-alive
        // connection).
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(error = %e, "TCP_NODELAY not set");
        }
        let clock = Arc::new(Mutex::new(ConnClock::new(limits)));
        let io = TokioIo::new(TimedIo::new(tcp, clock.clone(), limits.stall));
        let app = app.clone();
        let service = hyper::service::service_fn(move |mut req: hyper::Request<Incoming>| {
            let busy = Busy::enter(clock.clone());
            req.extensions_mut().insert(ConnectInfo(peer));
            let app = app.clone();
            async move {
                let res = match app.oneshot(req.map(Body::new)).await {
                    Ok(res) => res,
                    Err(never) => match never {},
                };
                Ok::<_, Infallible>(res.map(|body| BusyBody { body, _busy: busy }))
            }
        });
        let conn = graceful.watch(http.serve_connection(io, service));
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::trace!(error = %e, "connection ended with an error");
            }
            // The connection's place is free once its body and socket are gone.
            drop(permit);
        });
    }
    drop(listener);
    graceful.shutdown().await;
    Ok(())
}

/// Answers a connection past the cap with a `503` and closes it, on its own task and within
/// [`TURN_AWAY_TIME`]; when many are being answered already, just closes it.
fn turn_away(mut tcp: TcpStream, turning_away: &Arc<Semaphore>) {
    let Ok(permit) = Arc::clone(turning_away).try_acquire_owned() else {
        return;
    };
    tokio::spawn(async move {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let body = r#"{"detail":"Too many connections, try again later"}"#;
        let answer = format!(
            "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\n\
             content-length: {}\r\nretry-after: 1\r\nconnection: close\r\n\r\n{body}",
            body.len()
        );
        let _ = tokio::time::timeout(TURN_AWAY_TIME, async {
            if tcp.write_all(answer.as_bytes()).await.is_err() {
                return;
            }
            let _ = tcp.shutdown().await;
            // Read what the client sends until it closes: closing with its request unread
            // would reset the connection, and the client could lose the answer.
            let mut sink = [0u8; 1024];
            while tcp.read(&mut sink).await.is_ok_and(|n| n > 0) {}
        })
        .await;
        drop(permit);
    });
}

/// Errors of one connection attempt that say nothing about the listener.
fn is_connection_error(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
    )
}

/// Where a connection stands, for its read deadline.
#[derive(Debug)]
struct ConnClock {
    timeouts: ConnLimits,
    /// Requests whose response is not done yet.
    busy: usize,
    /// The head being received must be complete by then.
    head_by: Option<Instant>,
    /// Idle since the last response ended (no byte of a next request yet).
    idle_since: Option<Instant>,
    /// The task of a read waiting without a deadline: woken when one begins (a response
    /// ends after hyper's last read of the socket, so nothing else would arm the timer).
    reader: Option<Waker>,
}

impl ConnClock {
    fn new(timeouts: ConnLimits) -> Self {
        Self {
            timeouts,
            busy: 0,
            head_by: Some(Instant::now() + timeouts.header),
            idle_since: None,
            reader: None,
        }
    }

    /// Bytes arrived: on an idle connection they begin a request head.
    fn got_bytes(&mut self) {
        if self.busy == 0 && self.head_by.is_none() {
            self.head_by = Some(Instant::now() + self.timeouts.header);
            self.idle_since = None;
        }
    }

    /// When a read waiting now must give up; `None` while a request is in flight.
    fn deadline(&self) -> Option<Instant> {
        if self.busy > 0 {
            return None;
        }
        self.head_by
            .or_else(|| self.idle_since.map(|t| t + self.timeouts.idle))
    }
}

fn lock(clock: &Mutex<ConnClock>) -> std::sync::MutexGuard<'_, ConnClock> {
    clock.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A request in flight, from its head until its response body is done (or dropped).
struct Busy(Arc<Mutex<ConnClock>>);

impl Busy {
    fn enter(clock: Arc<Mutex<ConnClock>>) -> Self {
        {
            let mut c = lock(&clock);
            c.busy += 1;
            c.head_by = None;
            c.idle_since = None;
        }
        Self(clock)
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        let reader = {
            let mut c = lock(&self.0);
            c.busy = c.busy.saturating_sub(1);
            if c.busy > 0 {
                return;
            }
            c.idle_since = Some(Instant::now());
            c.reader.take()
        };
        if let Some(w) = reader {
            w.wake();
        }
    }
}

/// A response body that keeps its connection busy until it is done.
struct BusyBody {
    body: Body,
    _busy: Busy,
}

impl HttpBody for BusyBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// A connection's socket whose reads fail with `TimedOut` once they wait past the
/// connection's deadline, and whose writes fail so once the socket has taken no byte for the
/// stall timeout.
struct TimedIo {
    tcp: TcpStream,
    clock: Arc<Mutex<ConnClock>>,
    read_timer: LazyTimer,
    stall: Duration,
    /// When a write waiting now gives up; set by the first write that finds the socket full,
    /// cleared by any write that goes through.
    stalled_by: Option<Instant>,
    write_timer: LazyTimer,
}

impl TimedIo {
    fn new(tcp: TcpStream, clock: Arc<Mutex<ConnClock>>, stall: Duration) -> Self {
        Self {
            tcp,
            clock,
            read_timer: LazyTimer::default(),
            stall,
            stalled_by: None,
            write_timer: LazyTimer::default(),
        }
    }

    /// After a write that found the socket full: `Ready` with the error once the stall has
    /// lasted too long, else `Pending` (the socket or the timer wakes the task).
    fn poll_stalled<T>(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<T>> {
        let at = *self
            .stalled_by
            .get_or_insert_with(|| Instant::now() + self.stall);
        match self.write_timer.poll(at, cx) {
            Poll::Ready(()) => Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "the client took no response byte in time",
            ))),
            Poll::Pending => Poll::Pending,
        }
    }

    /// A write's outcome: one that went through ends a stall.
    fn wrote<T>(&mut self, r: Poll<io::Result<T>>, cx: &mut Context<'_>) -> Poll<io::Result<T>> {
        match r {
            Poll::Pending => self.poll_stalled(cx),
            done => {
                self.stalled_by = None;
                done
            }
        }
    }
}

/// A timer moved lazily: a deadline that moved later keeps the armed timer, which is re-armed
/// only when it fires early. The idle deadline moves with every request on a kept-alive
/// connection and the stall deadline with every full socket; resetting the timer each time
/// cost a timer-wheel update (~15 % of the requests per second for a small file).
#[derive(Default)]
struct LazyTimer {
    sleep: Option<Pin<Box<Sleep>>>,
    armed: Option<Instant>,
}

impl LazyTimer {
    /// Arms the timer for `at` (or keeps it armed earlier) and polls it: `Ready` once `at`
    /// has passed.
    fn poll(&mut self, at: Instant, cx: &mut Context<'_>) -> Poll<()> {
        let sleep = self
            .sleep
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(at)));
        match self.armed {
            Some(armed) if armed <= at => {}
            _ => {
                sleep.as_mut().reset(at);
                self.armed = Some(at);
            }
        }
        loop {
            std::task::ready!(sleep.as_mut().poll(cx));
            if self.armed.is_some_and(|armed| armed >= at) {
                return Poll::Ready(());
            }
            // Fired for an earlier deadline that has since moved: wait for the real one.
            sleep.as_mut().reset(at);
            self.armed = Some(at);
        }
    }
}

impl AsyncRead for TimedIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        match Pin::new(&mut this.tcp).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                if buf.filled().len() > before {
                    lock(&this.clock).got_bytes();
                }
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => {
                let deadline = {
                    let mut c = lock(&this.clock);
                    let d = c.deadline();
                    if d.is_none() && !c.reader.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                        c.reader = Some(cx.waker().clone());
                    }
                    d
                };
                match deadline {
                    Some(at) if this.read_timer.poll(at, cx).is_ready() => Poll::Ready(Err(
                        io::Error::new(io::ErrorKind::TimedOut, "no complete request head in time"),
                    )),
                    _ => Poll::Pending,
                }
            }
        }
    }
}

impl AsyncWrite for TimedIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.tcp).poll_write(cx, buf);
        this.wrote(r, cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.tcp).poll_write_vectored(cx, bufs);
        this.wrote(r, cx)
    }

    fn is_write_vectored(&self) -> bool {
        self.tcp.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().tcp).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().tcp).poll_shutdown(cx)
    }
}
