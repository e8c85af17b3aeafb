//! Slow clients: a connection whose writes make no progress for `RELAY_WRITE_TIMEOUT` is closed.
//!
//! A client that stops reading fills the socket buffers; the relay then stops pulling the SSE
//! body, the body stops pulling its consumer, and JetStream — not the relay — holds the backlog.
//! The relay's own share is bounded (the kernel's buffers, the frame being written, and about
//! one and a half consumer pulls in consumer mode). This guard ends such a connection so its slot and consumer are released; the
//! client, if it ever wakes up, resumes with its Last-Event-ID.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use axum::serve::Listener;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::{Instant, Sleep};

/// Accepts TCP connections whose writes time out when stalled.
pub struct StallGuardedListener {
    inner: TcpListener,
    write_timeout: Duration,
}

impl StallGuardedListener {
    pub fn new(inner: TcpListener, write_timeout: Duration) -> Self {
        Self {
            inner,
            write_timeout,
        }
    }
}

impl Listener for StallGuardedListener {
    type Io = StallGuardedStream;
    type Addr = std::net::SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        let (stream, addr) = Listener::accept(&mut self.inner).await;
        stream.set_nodelay(true).ok();
        (
            StallGuardedStream {
                inner: Arc::new(stream),
                write_timeout: self.write_timeout,
                stalled: None,
            },
            addr,
        )
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        self.inner.local_addr()
    }
}

/// A TCP stream whose `poll_write`/`poll_flush` fail with `TimedOut` once they have been
/// pending, without any progress, for the write timeout.
///
/// The socket is shared (`Arc`): in shared mode the live tail may write an event stream's frames
/// to it itself while the connection's task waits (`crate::fanout`'s direct writes), so reads and
/// writes here go through the socket's readiness and `try_*` calls, which need no `&mut`.
pub struct StallGuardedStream {
    inner: Arc<TcpStream>,
    write_timeout: Duration,
    /// Armed when a write first returns pending; cleared by any progress.
    stalled: Option<Pin<Box<Sleep>>>,
}

impl StallGuardedStream {
    /// The TCP socket underneath (readiness and reads that need no `&mut`).
    pub fn socket(&self) -> &Arc<TcpStream> {
        &self.inner
    }

    /// Runs a non-blocking socket call once the socket is ready for `write` (or read), until it
    /// does not return `WouldBlock` (which clears the readiness, so the task is woken by the next).
    fn poll_io<T>(
        &self,
        cx: &mut Context<'_>,
        write: bool,
        mut io: impl FnMut(&TcpStream) -> io::Result<T>,
    ) -> Poll<io::Result<T>> {
        loop {
            if write {
                ready!(self.inner.poll_write_ready(cx))?;
            } else {
                ready!(self.inner.poll_read_ready(cx))?;
            }
            match io(&self.inner) {
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => continue,
                result => return Poll::Ready(result),
            }
        }
    }

    fn check<T>(&mut self, cx: &mut Context<'_>, poll: Poll<io::Result<T>>) -> Poll<io::Result<T>> {
        match poll {
            Poll::Ready(result) => {
                self.stalled = None;
                Poll::Ready(result)
            }
            Poll::Pending => {
                let timeout = self.write_timeout;
                let timer = self.stalled.get_or_insert_with(|| {
                    Box::pin(tokio::time::sleep_until(Instant::now() + timeout))
                });
                match timer.as_mut().poll(cx) {
                    Poll::Ready(()) => Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "client stopped reading",
                    ))),
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }
}

impl AsyncRead for StallGuardedStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let read = ready!(self.poll_io(cx, false, |s| s.try_read(buf.initialize_unfilled())))?;
        buf.advance(read);
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for StallGuardedStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let poll = self.poll_io(cx, true, |s| s.try_write(buf));
        self.check(cx, poll)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let poll = self.poll_io(cx, true, |s| s.try_write_vectored(bufs));
        self.check(cx, poll)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // A TCP socket has nothing of its own to flush.
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // What tokio's own `poll_shutdown` does: end the write side (never blocks).
        Poll::Ready(socket2::SockRef::from(&*self.inner).shutdown(std::net::Shutdown::Write))
    }
}
