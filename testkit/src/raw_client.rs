//! The benchmark's SSE client, which the tests use too where a client must control its socket
//! (a small receive window): HTTP/1.1 over a plain `TcpStream`, one task per connection.
//!
//! The load generator shares two cores with the server it measures, so every microsecond it
//! spends per event is taken from the relay. A general HTTP client (reqwest over hyper) runs a
//! connection task beside the task reading the body, two wake-ups per event; this reads the
//! socket, undoes the chunked encoding and feeds the bytes to the same SSE parser the tests use,
//! in the task that records them.

use std::net::{Ipv4Addr, SocketAddr};

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

/// Dials from one loopback source address, so 10 000+ connections (and a reconnect storm on
/// top) do not run out of ephemeral ports.
#[derive(Clone, Copy)]
pub struct Dialer {
    source: Ipv4Addr,
}

impl Dialer {
    /// Dials from `source` (the benchmark's address on a test net's bridge).
    pub fn from_source(source: Ipv4Addr) -> Dialer {
        Dialer { source }
    }
}

/// Dialers over different loopback source addresses.
pub fn dialers() -> Vec<Dialer> {
    (2..10)
        .map(|i| Dialer {
            source: Ipv4Addr::new(127, 0, 0, i),
        })
        .collect()
}

/// An SSE response whose head said 200; its body is read with [`SseStream::chunk`].
pub struct SseStream {
    socket: TcpStream,
    /// Bytes read but not yet handed out.
    buffer: BytesMut,
    body: Framing,
}

enum Framing {
    /// `Transfer-Encoding: chunked`: bytes left in the current chunk, or None between chunks.
    Chunked(Option<usize>),
    /// Delimited by the end of the connection.
    UntilClose,
}

impl Dialer {
    /// `GET url` with `headers`; the stream if the answer is 200, None otherwise or on any error.
    pub async fn open(&self, url: &str, headers: &[(&str, String)]) -> Option<SseStream> {
        self.open_with(url, headers, None).await
    }

    /// [`Dialer::open`] on a socket whose receive buffer is set to `bytes` before it connects
    /// (`SO_RCVBUF`, which the kernel doubles; the window the server sees follows it).
    pub async fn open_with_recv_buffer(&self, url: &str, bytes: u32) -> Option<SseStream> {
        self.open_with(url, &[], Some(bytes)).await
    }

    async fn open_with(
        &self,
        url: &str,
        headers: &[(&str, String)],
        recv_buffer: Option<u32>,
    ) -> Option<SseStream> {
        let rest = url.strip_prefix("http://")?;
        let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
        let addr: SocketAddr = authority.parse().ok()?;
        let socket = TcpSocket::new_v4().ok()?;
        if let Some(bytes) = recv_buffer {
            socket.set_recv_buffer_size(bytes).ok()?;
        }
        socket.bind(SocketAddr::new(self.source.into(), 0)).ok()?;
        let mut socket = socket.connect(addr).await.ok()?;
        socket.set_nodelay(true).ok()?;
        let mut request = format!(
            "GET {} HTTP/1.1\r\nHost: {authority}\r\nAccept: text/event-stream\r\n",
            if path.is_empty() { "/" } else { path }
        );
        for (name, value) in headers {
            request.push_str(&format!("{name}: {value}\r\n"));
        }
        request.push_str("\r\n");
        socket.write_all(request.as_bytes()).await.ok()?;
        let mut buffer = BytesMut::with_capacity(4096);
        let head_end = loop {
            if let Some(end) = find(&buffer, b"\r\n\r\n") {
                break end + 4;
            }
            if buffer.len() > 64 * 1024 || socket.read_buf(&mut buffer).await.ok()? == 0 {
                return None;
            }
        };
        let head = std::str::from_utf8(&buffer[..head_end])
            .ok()?
            .to_ascii_lowercase();
        let status = head.split_ascii_whitespace().nth(1)?;
        if status != "200" {
            return None;
        }
        let chunked = head
            .lines()
            .any(|l| l.starts_with("transfer-encoding:") && l.contains("chunked"));
        buffer.advance(head_end);
        Some(SseStream {
            socket,
            buffer,
            body: if chunked {
                Framing::Chunked(None)
            } else {
                Framing::UntilClose
            },
        })
    }
}

impl SseStream {
    /// The client's end of the connection.
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.socket.local_addr().ok()
    }

    /// The next body bytes; None when the body or the connection ended, or on a framing error.
    pub async fn chunk(&mut self) -> Option<BytesMut> {
        loop {
            match self.body {
                Framing::UntilClose => {
                    if !self.buffer.is_empty() {
                        return Some(self.buffer.split());
                    }
                }
                Framing::Chunked(Some(left)) => {
                    if !self.buffer.is_empty() {
                        let take = left.min(self.buffer.len());
                        let out = self.buffer.split_to(take);
                        self.body = Framing::Chunked(Some(left - take).filter(|&l| l > 0));
                        return Some(out);
                    }
                }
                Framing::Chunked(None) => {
                    // The CRLF that ends the previous chunk, then `<hex size>[;ext]\r\n`.
                    let mut from = 0;
                    if self.buffer.starts_with(b"\r\n") {
                        from = 2;
                    }
                    if let Some(end) = find(&self.buffer[from..], b"\r\n") {
                        let line = std::str::from_utf8(&self.buffer[from..from + end]).ok()?;
                        let size =
                            usize::from_str_radix(line.split(';').next()?.trim(), 16).ok()?;
                        if size == 0 {
                            return None;
                        }
                        self.buffer.advance(from + end + 2);
                        self.body = Framing::Chunked(Some(size));
                        continue;
                    }
                }
            }
            if self.buffer.capacity() - self.buffer.len() < 1024 {
                self.buffer.reserve(4096);
            }
            if self.socket.read_buf(&mut self.buffer).await.ok()? == 0 {
                return None;
            }
        }
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}
