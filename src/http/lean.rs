//! The lean path for event streams: the relay reads a connection's first request head itself
//! (`httparse`), and when it asks for an event stream (`GET /v1/…/events`, HTTP/1.1) runs it
//! through the same router — auth, limits, CORS, errors, the SSE body — and writes the answer
//! straight to the socket: the head, then every frame as the body yields it, the response
//! delimited by closing the connection. No HTTP connection object lives beside the stream, so an
//! open stream holds no read or write buffer of its own (hyper keeps 8 KiB to read and queues up
//! to 16 frames to write for every connection, idle or stuck).
//!
//! Every other first request, a head that does not parse or does not fit, goes to hyper with the
//! bytes read so far put back in front of the socket. The head must arrive within the same
//! `RELAY_HEADER_READ_TIMEOUT` either way.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, Method, Request, Response, Version};
use axum::Router;
use bytes::{Bytes, BytesMut};
use http_body::Body as _;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tower::ServiceExt;

use super::stall::StallGuardedStream;

/// The longest request head read here; a longer one goes to hyper (which has its own limits).
const MAX_HEAD: usize = 8 * 1024;
/// Headers a request head may have on the lean path.
const MAX_HEADERS: usize = 64;

/// What a connection's first request turned out to be.
pub enum First {
    /// An event stream: served here.
    Stream(Box<Request<Body>>),
    /// Anything else: hyper serves the connection, reading these bytes first.
    Other(Bytes),
    /// The peer closed, or no complete head arrived in time: nothing to answer.
    Closed,
}

/// The socket of a request served on the lean path, a request extension: the lean path writes
/// every frame the SSE body yields before polling it again, so its socket is the one kind the
/// live tail may write to while the body waits (`crate::fanout`'s direct writes). Absent on
/// hyper's connections; handlers take it as `Option<Extension<LeanSocket>>`.
#[derive(Clone)]
pub struct LeanSocket(pub Arc<TcpStream>);

/// Reads the first request head, within `timeout`.
pub async fn first_request(
    stream: &mut StallGuardedStream,
    timeout: Duration,
    peer: SocketAddr,
) -> First {
    let mut read = BytesMut::with_capacity(1024);
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        match tokio::time::timeout_at(deadline, stream.read_buf(&mut read)).await {
            Ok(Ok(0)) | Ok(Err(_)) | Err(_) => return First::Closed,
            Ok(Ok(_)) => {}
        }
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut parsed = httparse::Request::new(&mut headers);
        match parsed.parse(&read) {
            Ok(httparse::Status::Complete(length)) => {
                let request = stream_request(&parsed, length == read.len(), peer);
                return match request {
                    Some(mut request) => {
                        let socket = LeanSocket(stream.socket().clone());
                        request.extensions_mut().insert(socket);
                        First::Stream(Box::new(request))
                    }
                    None => First::Other(read.freeze()),
                };
            }
            Ok(httparse::Status::Partial) if read.len() < MAX_HEAD => {}
            // Too long or malformed: hyper gives the usual error.
            _ => return First::Other(read.freeze()),
        }
    }
}

/// The request, if it is one the lean path serves: a GET of an event stream over HTTP/1.1 with
/// nothing after its head.
fn stream_request(
    parsed: &httparse::Request<'_, '_>,
    head_only: bool,
    peer: SocketAddr,
) -> Option<Request<Body>> {
    let path = parsed.path?;
    let route = path.split('?').next().unwrap_or_default();
    let is_stream = route.starts_with("/v1/") && route.ends_with("/events");
    if !head_only || parsed.method != Some("GET") || parsed.version != Some(1) || !is_stream {
        return None;
    }
    let mut headers = HeaderMap::with_capacity(parsed.headers.len());
    for h in parsed.headers.iter() {
        let name = HeaderName::from_bytes(h.name.as_bytes()).ok()?;
        let value = HeaderValue::from_bytes(h.value).ok()?;
        headers.append(name, value);
    }
    // A body, or a protocol switch, is not for an event stream: hyper answers those.
    if headers.contains_key(header::CONTENT_LENGTH)
        || headers.contains_key(header::TRANSFER_ENCODING)
        || headers.contains_key(header::UPGRADE)
    {
        return None;
    }
    let mut request = Request::builder()
        .method(Method::GET)
        .uri(path)
        .version(Version::HTTP_11)
        .body(Body::empty())
        .ok()?;
    *request.headers_mut() = headers;
    request.extensions_mut().insert(ConnectInfo(peer));
    Some(request)
}

/// Answers `request` with `router` on `stream` and closes the connection: an event stream is
/// written frame by frame until it ends or the client goes; any other answer (an error) whole.
pub async fn serve_stream(
    mut stream: StallGuardedStream,
    router: Router,
    request: Box<Request<Body>>,
) {
    let Ok(response) = router.oneshot(*request).await;
    if let Err(err) = write_response(&mut stream, response).await {
        tracing::debug!(error = %err, "event stream connection ended");
    }
    let _ = stream.shutdown().await;
}

async fn write_response(
    stream: &mut StallGuardedStream,
    response: Response<Body>,
) -> io::Result<()> {
    let (parts, mut body) = response.into_parts();
    let is_stream = parts
        .headers
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"text/event-stream"));
    if !is_stream {
        // An error: small and finished. Read it whole to give its length.
        let mut whole = BytesMut::new();
        while let Some(frame) = next_frame(&mut body).await? {
            whole.extend_from_slice(&frame);
        }
        let head = head(&parts, Some(whole.len()));
        stream.write_all(&head).await?;
        return stream.write_all(&whole).await;
    }
    stream.write_all(&head(&parts, None)).await?;
    loop {
        let frame = tokio::select! {
            frame = next_frame(&mut body) => frame?,
            () = client_gone(stream) => return Ok(()),
        };
        match frame {
            Some(frame) => stream.write_all(&frame).await?,
            None => return Ok(()),
        }
    }
}

/// The body's next data frame; `None` at its end.
async fn next_frame(body: &mut Body) -> io::Result<Option<Bytes>> {
    loop {
        let frame = std::future::poll_fn(|cx| Pin::new(&mut *body).poll_frame(cx)).await;
        match frame {
            None => return Ok(None),
            Some(Err(err)) => return Err(io::Error::other(err)),
            Some(Ok(frame)) => {
                if let Ok(data) = frame.into_data() {
                    return Ok(Some(data));
                }
            }
        }
    }
}

/// Resolves once the client has closed its side (or the socket failed); what it sends after
/// its request is read and dropped.
async fn client_gone(stream: &StallGuardedStream) {
    let socket = stream.socket();
    let mut sink = [0u8; 256];
    loop {
        if socket.readable().await.is_err() {
            return;
        }
        match socket.try_read(&mut sink) {
            Ok(0) => return,
            Ok(_) => {}
            Err(err) if err.kind() == io::ErrorKind::WouldBlock => {}
            Err(_) => return,
        }
    }
}

/// The response head: status line, the response's headers, the date, and the length when
/// known; without one the body ends with the connection.
fn head(parts: &axum::http::response::Parts, length: Option<usize>) -> Vec<u8> {
    let mut head = Vec::with_capacity(256);
    head.extend_from_slice(b"HTTP/1.1 ");
    head.extend_from_slice(parts.status.as_str().as_bytes());
    head.push(b' ');
    head.extend_from_slice(
        parts
            .status
            .canonical_reason()
            .unwrap_or_default()
            .as_bytes(),
    );
    head.extend_from_slice(b"\r\n");
    for (name, value) in &parts.headers {
        head.extend_from_slice(name.as_str().as_bytes());
        head.extend_from_slice(b": ");
        head.extend_from_slice(value.as_bytes());
        head.extend_from_slice(b"\r\n");
    }
    if !parts.headers.contains_key(header::DATE) {
        head.extend_from_slice(b"date: ");
        head.extend_from_slice(http_date().as_bytes());
        head.extend_from_slice(b"\r\n");
    }
    if let (Some(length), false) = (length, parts.headers.contains_key(header::CONTENT_LENGTH)) {
        head.extend_from_slice(format!("content-length: {length}\r\n").as_bytes());
    }
    head.extend_from_slice(b"connection: close\r\n\r\n");
    head
}

/// Now as an HTTP date (`Sun, 06 Nov 1994 08:49:37 GMT`).
fn http_date() -> String {
    httpdate::fmt_http_date(std::time::SystemTime::now())
}

/// A connection with bytes already read from it put back in front.
pub struct Rewind<T> {
    read: Bytes,
    inner: T,
}

impl<T> Rewind<T> {
    pub fn new(read: Bytes, inner: T) -> Self {
        Self { read, inner }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Rewind<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if !self.read.is_empty() {
            let n = self.read.len().min(buf.remaining());
            let first = self.read.split_to(n);
            buf.put_slice(&first);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Rewind<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
