//! Request bodies that stop or crawl are cut off: a body that sends nothing for
//! `REQUEST_BODY_TIMEOUT_SECS`, or that brings fewer than `REQUEST_BODY_MIN_RATE` ×
//! `REQUEST_BODY_RATE_WINDOW_SECS` bytes in a window, ends with [`BodyTimeoutError`]; the
//! handlers answer 408 and their clean-up guards remove what the request had begun.
//!
//! Only the time spent waiting for the client counts (the body is `Pending`): while a handler
//! is busy writing to a slow disk, the client's clock stands still, so a slow server never
//! blames its client. The rate is checked at the end of each window, so a small body that
//! ends within its first window is never cut for being small.

use std::future::Future as _;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Request, State};
use bytes::Bytes;
use http_body::{Body as HttpBody, Frame, SizeHint};
use tokio::time::{Instant, Sleep};

/// Why a body was cut off.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum BodyTimeoutError {
    /// Nothing arrived for the idle timeout.
    #[error("request body timeout: nothing received for the idle timeout")]
    Idle,
    /// Too few bytes arrived in a window.
    #[error("request body too slow: below the minimum rate")]
    TooSlow,
}

/// The limits every request body gets.
#[derive(Debug, Clone, Copy)]
pub struct BodyTimeouts {
    /// Longest wait for the next bytes.
    pub idle: Duration,
    /// Least bytes per second, averaged over `window`; 0 = no rate rule.
    pub min_rate: u64,
    /// The window the rate is averaged over.
    pub window: Duration,
}

impl BodyTimeouts {
    /// From the settings.
    pub fn from_settings(s: &crate::config::Settings) -> Self {
        Self {
            idle: s.request_body_timeout,
            min_rate: s.request_body_min_rate,
            window: s.request_body_rate_window,
        }
    }

    /// Bytes a window must bring.
    fn per_window(&self) -> u64 {
        (self.min_rate as f64 * self.window.as_secs_f64()).ceil() as u64
    }
}

/// Middleware (`map_request_with_state`): gives the request's body the limits.
pub async fn limit_request_body(State(limits): State<BodyTimeouts>, req: Request) -> Request {
    req.map(|body| Body::new(TimedBody::new(body, limits)))
}

/// A request body with an idle timeout and a minimum rate.
pub struct TimedBody<B> {
    inner: B,
    limits: BodyTimeouts,
    /// When the current wait for the client began (the inner body is `Pending`): the idle
    /// clock.
    wait_start: Option<Instant>,
    /// From when the current wait counts towards the current window (the wait's start, or
    /// the moment a window ended during it).
    window_mark: Option<Instant>,
    /// Waiting time of the current window before `window_mark`.
    window_waited: Duration,
    /// Bytes received in the current window.
    window_bytes: u64,
    /// Wakes us at the nearer of the two deadlines.
    sleep: Option<Pin<Box<Sleep>>>,
    sleep_at: Option<Instant>,
    /// Once cut off, the body stays failed.
    failed: Option<BodyTimeoutError>,
}

impl<B> TimedBody<B> {
    /// Wraps `inner`.
    pub fn new(inner: B, limits: BodyTimeouts) -> Self {
        Self {
            inner,
            limits,
            wait_start: None,
            window_mark: None,
            window_waited: Duration::ZERO,
            window_bytes: 0,
            sleep: None,
            sleep_at: None,
            failed: None,
        }
    }

    fn rate_on(&self) -> bool {
        self.limits.min_rate > 0
    }

    /// Ends a window whose waiting time is over: fails if it brought too little, else
    /// starts the next one.
    fn close_window(&mut self) -> Result<(), BodyTimeoutError> {
        if self.window_bytes < self.limits.per_window() {
            return Err(BodyTimeoutError::TooSlow);
        }
        self.window_waited = Duration::ZERO;
        self.window_bytes = 0;
        Ok(())
    }

    /// Arms the timer for `at` and polls it: `Ready` when `at` has passed.
    fn poll_deadline(&mut self, at: Instant, cx: &mut Context<'_>) -> Poll<()> {
        match &mut self.sleep {
            Some(s) if self.sleep_at == Some(at) => s.as_mut().poll(cx),
            Some(s) => {
                s.as_mut().reset(at);
                self.sleep_at = Some(at);
                s.as_mut().poll(cx)
            }
            None => {
                let mut s = Box::pin(tokio::time::sleep_until(at));
                self.sleep_at = Some(at);
                let r = s.as_mut().poll(cx);
                self.sleep = Some(s);
                r
            }
        }
    }
}

impl<B> HttpBody for TimedBody<B>
where
    B: HttpBody<Data = Bytes> + Unpin,
    B::Error: Into<axum::BoxError>,
{
    type Data = Bytes;
    type Error = axum::BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = &mut *self;
        if let Some(e) = this.failed {
            return Poll::Ready(Some(Err(e.into())));
        }
        loop {
            match Pin::new(&mut this.inner).poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) => {
                    this.wait_start = None;
                    if let Some(mark) = this.window_mark.take() {
                        this.window_waited += mark.elapsed();
                    }
                    if let Some(data) = frame.data_ref() {
                        this.window_bytes += data.len() as u64;
                    }
                    if this.rate_on() && this.window_waited >= this.limits.window {
                        if let Err(e) = this.close_window() {
                            this.failed = Some(e);
                            return Poll::Ready(Some(Err(e.into())));
                        }
                    }
                    return Poll::Ready(Some(Ok(frame)));
                }
                Poll::Ready(Some(Err(e))) => return Poll::Ready(Some(Err(e.into()))),
                Poll::Ready(None) => return Poll::Ready(None),
                Poll::Pending => {}
            }
            let now = Instant::now();
            let idle_at = *this.wait_start.get_or_insert(now) + this.limits.idle;
            let mark = *this.window_mark.get_or_insert(now);
            let window_at = this
                .rate_on()
                .then(|| mark + this.limits.window.saturating_sub(this.window_waited));
            let at = window_at.map_or(idle_at, |w| w.min(idle_at));
            if this.poll_deadline(at, cx).is_pending() {
                return Poll::Pending;
            }
            let now = Instant::now();
            if now >= idle_at {
                this.failed = Some(BodyTimeoutError::Idle);
                return Poll::Ready(Some(Err(BodyTimeoutError::Idle.into())));
            }
            // A window ended while we waited: judge it, then go on waiting in the next one
            // (the idle clock keeps counting from the start of the wait).
            this.window_waited += now - mark;
            this.window_mark = Some(now);
            if let Err(e) = this.close_window() {
                this.failed = Some(e);
                return Poll::Ready(Some(Err(e.into())));
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use http_body_util::{BodyExt as _, StreamBody};
    use std::convert::Infallible;
    use tokio::sync::mpsc;
    use tokio_stream::wrappers::ReceiverStream;

    type Chan = StreamBody<ReceiverStream<Result<Frame<Bytes>, Infallible>>>;

    fn body(
        limits: BodyTimeouts,
    ) -> (
        mpsc::Sender<Result<Frame<Bytes>, Infallible>>,
        TimedBody<Chan>,
    ) {
        let (tx, rx) = mpsc::channel(1024);
        (
            tx,
            TimedBody::new(StreamBody::new(ReceiverStream::new(rx)), limits),
        )
    }

    /// Sends `chunk` every `every`, `times` times, then ends the body.
    fn feed(
        tx: mpsc::Sender<Result<Frame<Bytes>, Infallible>>,
        chunk: usize,
        every: Duration,
        times: usize,
    ) {
        tokio::spawn(async move {
            for _ in 0..times {
                if tx
                    .send(Ok(Frame::data(Bytes::from(vec![b'x'; chunk]))))
                    .await
                    .is_err()
                {
                    return;
                }
                tokio::time::sleep(every).await;
            }
        });
    }

    /// Reads the body to its end: the bytes, or the error that cut it.
    async fn drain(mut b: TimedBody<Chan>) -> Result<usize, BodyTimeoutError> {
        let mut n = 0;
        while let Some(frame) = b.frame().await {
            match frame {
                Ok(f) => n += f.into_data().map(|d| d.len()).unwrap_or(0),
                Err(e) => return Err(*e.downcast::<BodyTimeoutError>().unwrap()),
            }
        }
        Ok(n)
    }

    const LIMITS: BodyTimeouts = BodyTimeouts {
        idle: Duration::from_secs(5),
        min_rate: 100,
        window: Duration::from_millis(300),
    };

    #[tokio::test]
    async fn a_trickle_is_cut_at_the_end_of_its_first_window() {
        let (tx, b) = body(LIMITS);
        // 1 byte every 20 ms: 50 B/s, never idle, below 100 B/s.
        feed(tx, 1, Duration::from_millis(20), 1000);
        let started = Instant::now();
        assert_eq!(drain(b).await, Err(BodyTimeoutError::TooSlow));
        let took = started.elapsed();
        assert!(took >= Duration::from_millis(290), "{took:?}");
        assert!(took < Duration::from_secs(3), "{took:?}");
    }

    #[tokio::test]
    async fn a_slow_body_above_the_rate_gets_through() {
        let (tx, b) = body(LIMITS);
        // 100 bytes every 50 ms (2,000 B/s) for a second: many windows.
        feed(tx, 100, Duration::from_millis(50), 20);
        assert_eq!(drain(b).await, Ok(2000));
    }

    #[tokio::test]
    async fn a_small_body_that_ends_within_its_first_window_is_not_judged() {
        let (tx, b) = body(LIMITS);
        feed(tx, 1, Duration::from_millis(20), 5);
        assert_eq!(drain(b).await, Ok(5));
    }

    #[tokio::test]
    async fn a_stall_is_cut_at_the_idle_timeout() {
        let limits = BodyTimeouts {
            idle: Duration::from_millis(200),
            min_rate: 0,
            window: Duration::from_secs(30),
        };
        let (tx, b) = body(limits);
        tx.send(Ok(Frame::data(Bytes::from_static(b"abc"))))
            .await
            .unwrap();
        let started = Instant::now();
        assert_eq!(drain(b).await, Err(BodyTimeoutError::Idle));
        assert!(started.elapsed() >= Duration::from_millis(190));
        drop(tx);
    }

    #[tokio::test]
    async fn time_the_server_spends_elsewhere_does_not_count_against_the_client() {
        let (tx, mut b) = body(LIMITS);
        // Everything is there at once; the reader takes its time between frames.
        feed(tx, 10, Duration::ZERO, 5);
        let mut n = 0;
        while let Some(frame) = b.frame().await {
            n += frame.unwrap().into_data().unwrap().len();
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        assert_eq!(n, 50);
    }
}
