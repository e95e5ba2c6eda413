//! Serving the app on a listener: HTTP/1.1 with `TCP_NODELAY`, the peer address for the
//! handlers (`ConnectInfo`), two connection timeouts, and graceful shutdown. `main.rs` and
//! the API tests both serve through [`serve`].
//!
//! The timeouts close connections that hold a descriptor while doing nothing:
//! - **header read** (`REQUEST_HEADER_TIMEOUT_SECS`): a request head must be complete within
//!   this time, counted from the connection's start, or on a kept-alive connection from the
//!   first byte of the next request (a slowloris sending its head a byte at a time, or a
//!   client that connects and never sends, is closed);
//! - **idle keep-alive** (`KEEPALIVE_TIMEOUT_SECS`): between a response and the first byte
//!   of the next request. Kept above nginx's upstream `keepalive_timeout` (60 s) so the
//!   proxy, not us, closes a pooled connection, and never while it sends a request.
//!
//! hyper's own `header_read_timeout` cannot tell the two apart (hyper 1.x starts it when it
//! begins waiting for a head, idle time included), so the connection's reads are timed
//! here: `TimedIo` fails a read that waits past the deadline, and the service marks a
//! connection busy from a request's head until its response body is done, when no deadline
//! applies (request bodies have their own limits, [`crate::body_timeout`]).

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
use tokio::time::{Instant, Sleep};
use tower::ServiceExt as _;

/// The two connection timeouts.
#[derive(Debug, Clone, Copy)]
pub struct ConnTimeouts {
    /// Longest time to receive a request head.
    pub header: Duration,
    /// Longest idle time between a response and the next request's first byte.
    pub idle: Duration,
}

impl ConnTimeouts {
    /// From the settings.
    pub fn from_settings(s: &crate::config::Settings) -> Self {
        Self {
            header: s.request_header_timeout,
            idle: s.keepalive_timeout,
        }
    }
}

/// Serves `app` on `listener` until `shutdown` completes, then stops accepting and waits
/// for the open connections to finish their requests in flight (idle ones close at once).
pub async fn serve(
    listener: TcpListener,
    app: Router,
    timeouts: ConnTimeouts,
    shutdown: impl Future<Output = ()>,
) -> io::Result<()> {
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let mut http = hyper::server::conn::http1::Builder::new();
    // Our own timing (above) instead of hyper's; without a timer hyper keeps none.
    http.header_read_timeout(None::<Duration>);
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
        // Small answers must not wait for Nagle's delayed ACK (~40 ms on a kept-alive
        // connection).
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(error = %e, "TCP_NODELAY not set");
        }
        let clock = Arc::new(Mutex::new(ConnClock::new(timeouts)));
        let io = TokioIo::new(TimedIo::new(tcp, clock.clone()));
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
        });
    }
    drop(listener);
    graceful.shutdown().await;
    Ok(())
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
    timeouts: ConnTimeouts,
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
    fn new(timeouts: ConnTimeouts) -> Self {
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
/// connection's deadline.
struct TimedIo {
    tcp: TcpStream,
    clock: Arc<Mutex<ConnClock>>,
    sleep: Option<Pin<Box<Sleep>>>,
    sleep_at: Option<Instant>,
}

impl TimedIo {
    fn new(tcp: TcpStream, clock: Arc<Mutex<ConnClock>>) -> Self {
        Self {
            tcp,
            clock,
            sleep: None,
            sleep_at: None,
        }
    }

    /// Arms the timer for `at` and polls it.
    fn poll_deadline(&mut self, at: Instant, cx: &mut Context<'_>) -> Poll<()> {
        // The timer is moved lazily: a deadline that moved later (the idle deadline moves with
        // every request on a kept-alive connection) keeps the armed timer, which is re-armed
        // only when it fires early. Resetting it per request cost a timer-wheel update each
        // time (~15 % of the requests per second for a small file).
        let sleep = self
            .sleep
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(at)));
        match self.sleep_at {
            Some(armed) if armed <= at => {}
            _ => {
                sleep.as_mut().reset(at);
                self.sleep_at = Some(at);
            }
        }
        loop {
            std::task::ready!(sleep.as_mut().poll(cx));
            if self.sleep_at.is_some_and(|armed| armed >= at) {
                return Poll::Ready(());
            }
            // Fired for an earlier deadline that has since moved: wait for the real one.
            sleep.as_mut().reset(at);
            self.sleep_at = Some(at);
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
                    Some(at) if this.poll_deadline(at, cx).is_ready() => Poll::Ready(Err(
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
        Pin::new(&mut self.get_mut().tcp).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().tcp).poll_write_vectored(cx, bufs)
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
