//! A guard around each Modbus connection's byte stream: it checks every MBAP header as the
//! bytes pass (protocol id 0, length 2..=254 as Modbus/TCP allows) and closes connections
//! that stay silent longer than the idle timeout.
//!
//! Why: the tokio-modbus codec waits for the whole length an MBAP header claims before it
//! validates anything, so a garbage header claiming 65535 bytes would hold a connection
//! (and its task) forever. PLCs poll continuously, so an idle timeout costs them nothing.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

const MBAP_HEADER: usize = 7;
/// Unit id plus the largest PDU (253 bytes).
const MAX_LENGTH: u16 = 254;

/// Tracks MBAP frame boundaries in a request stream. Pure.
#[derive(Debug, Default)]
pub struct FrameGuard {
    header: [u8; MBAP_HEADER],
    have: usize,
    remaining_pdu: usize,
}

impl FrameGuard {
    /// Feeds the next bytes of the stream; an error means the stream is not Modbus/TCP.
    pub fn feed(&mut self, mut bytes: &[u8]) -> Result<(), String> {
        while !bytes.is_empty() {
            if self.remaining_pdu > 0 {
                let take = self.remaining_pdu.min(bytes.len());
                self.remaining_pdu -= take;
                bytes = &bytes[take..];
                continue;
            }
            let take = (MBAP_HEADER - self.have).min(bytes.len());
            self.header[self.have..self.have + take].copy_from_slice(&bytes[..take]);
            self.have += take;
            bytes = &bytes[take..];
            if self.have == MBAP_HEADER {
                let protocol = u16::from_be_bytes([self.header[2], self.header[3]]);
                let length = u16::from_be_bytes([self.header[4], self.header[5]]);
                if protocol != 0 {
                    return Err(format!("MBAP protocol id {protocol} is not 0"));
                }
                if !(2..=MAX_LENGTH).contains(&length) {
                    return Err(format!("MBAP length {length} is outside 2..={MAX_LENGTH}"));
                }
                self.have = 0;
                self.remaining_pdu = length as usize - 1;
            }
        }
        Ok(())
    }
}

/// The guarded stream handed to tokio-modbus.
pub struct GuardedStream<S> {
    inner: S,
    frames: FrameGuard,
    idle: Duration,
    /// Fires when the peer has sent nothing for `idle`; reset by every byte received.
    deadline: Pin<Box<Sleep>>,
}

impl<S> GuardedStream<S> {
    pub fn new(inner: S, idle: Duration) -> GuardedStream<S> {
        GuardedStream { inner, frames: FrameGuard::default(), idle, deadline: Box::pin(tokio::time::sleep(idle)) }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for GuardedStream<S> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        let before = buf.filled().len();
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                let fresh = &buf.filled()[before..];
                if !fresh.is_empty() {
                    this.frames.feed(fresh).map_err(|reason| io::Error::new(io::ErrorKind::InvalidData, reason))?;
                    let next = Instant::now() + this.idle;
                    this.deadline.as_mut().reset(next);
                }
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(err)) => Poll::Ready(Err(err)),
            Poll::Pending => match this.deadline.as_mut().poll(cx) {
                Poll::Ready(()) => Poll::Ready(Err(io::Error::new(io::ErrorKind::TimedOut, "Modbus client idle"))),
                Poll::Pending => Poll::Pending,
            },
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for GuardedStream<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Read Coils, unit 1, transaction 7.
    const READ_COILS: [u8; 12] = [0, 7, 0, 0, 0, 6, 1, 1, 0, 0, 0, 3];

    #[test]
    fn valid_frames_pass_in_any_split() {
        let stream: Vec<u8> = READ_COILS.iter().chain(READ_COILS.iter()).copied().collect();
        for split in 0..stream.len() {
            let mut guard = FrameGuard::default();
            guard.feed(&stream[..split]).unwrap();
            guard.feed(&stream[split..]).unwrap();
            assert_eq!((guard.have, guard.remaining_pdu), (0, 0), "split at {split}");
        }
    }

    #[test]
    fn bad_headers_are_refused() {
        let mut wrong_protocol = READ_COILS;
        wrong_protocol[2] = 0x12;
        assert!(FrameGuard::default().feed(&wrong_protocol).unwrap_err().contains("protocol id"));
        let mut huge = READ_COILS;
        huge[4..6].copy_from_slice(&0xffffu16.to_be_bytes());
        assert!(FrameGuard::default().feed(&huge).unwrap_err().contains("length 65535"));
        let mut empty = READ_COILS;
        empty[4..6].copy_from_slice(&1u16.to_be_bytes());
        assert!(FrameGuard::default().feed(&empty).is_err());
    }

    #[tokio::test(start_paused = true)]
    async fn silence_closes_the_connection() {
        use tokio::io::AsyncReadExt;
        let (client, server) = tokio::io::duplex(64);
        let mut guarded = GuardedStream::new(server, Duration::from_secs(60));
        let mut buf = [0u8; 16];
        let err = guarded.read(&mut buf).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        drop(client);
    }
}
