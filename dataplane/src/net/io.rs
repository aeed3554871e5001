//! Stream types and the buffered packet reader used during handshakes.

use std::io;
use std::os::fd::{AsRawFd, RawFd};

use monoio::buf::{IoBuf, IoBufMut, IoVecBuf, IoVecBufMut, SliceMut};
use monoio::io::{AsyncReadRent, AsyncWriteRent, Split};
use monoio::net::TcpStream;
use monoio::BufResult;

/// A TCP stream, plain or wrapped in TLS. One enum per side so the relay
/// is written once.
pub enum MaybeTls<T> {
    Plain(TcpStream),
    Tls(Box<T>),
}

/// Client side: TLS terminated by Sluice.
pub type ClientIo = MaybeTls<monoio_rustls::ServerTlsStream<TcpStream>>;
/// Target side: TLS originated by Sluice.
pub type TargetIo = MaybeTls<monoio_rustls::ClientTlsStream<TcpStream>>;

// SAFETY: both variants are `Split` (TcpStream is, and monoio-rustls streams
// are whenever their inner IO is): reads and writes may proceed on separate
// halves on the one thread that owns the stream.
unsafe impl<T: Split> Split for MaybeTls<T> {}

impl<T: AsyncReadRent> AsyncReadRent for MaybeTls<T> {
    async fn read<B: IoBufMut>(&mut self, buf: B) -> BufResult<usize, B> {
        match self {
            MaybeTls::Plain(s) => s.read(buf).await,
            MaybeTls::Tls(s) => s.read(buf).await,
        }
    }
    async fn readv<B: IoVecBufMut>(&mut self, buf: B) -> BufResult<usize, B> {
        match self {
            MaybeTls::Plain(s) => s.readv(buf).await,
            MaybeTls::Tls(s) => s.readv(buf).await,
        }
    }
}

impl<T: AsyncWriteRent> AsyncWriteRent for MaybeTls<T> {
    async fn write<B: IoBuf>(&mut self, buf: B) -> BufResult<usize, B> {
        match self {
            MaybeTls::Plain(s) => s.write(buf).await,
            MaybeTls::Tls(s) => s.write(buf).await,
        }
    }
    async fn writev<B: IoVecBuf>(&mut self, buf: B) -> BufResult<usize, B> {
        match self {
            MaybeTls::Plain(s) => s.writev(buf).await,
            MaybeTls::Tls(s) => s.writev(buf).await,
        }
    }
    async fn flush(&mut self) -> io::Result<()> {
        match self {
            MaybeTls::Plain(s) => s.flush().await,
            MaybeTls::Tls(s) => s.flush().await,
        }
    }
    async fn shutdown(&mut self) -> io::Result<()> {
        match self {
            MaybeTls::Plain(s) => s.shutdown().await,
            MaybeTls::Tls(s) => s.shutdown().await,
        }
    }
}

/// Close both directions of a socket by fd, waking any pending read with
/// EOF. Used to end the other half of a relay.
pub fn shutdown_fd(fd: RawFd) {
    // SAFETY: shutdown(2) on an fd we still own (the stream is alive in the
    // caller); it does not close or invalidate the descriptor.
    unsafe {
        libc::shutdown(fd, libc::SHUT_RDWR);
    }
}

pub fn raw_fd(s: &TcpStream) -> RawFd {
    s.as_raw_fd()
}

/// Why a handshake read failed.
#[derive(Debug)]
pub enum ReadError {
    Io(io::Error),
    /// The peer closed the connection.
    Eof,
    /// Length prefix outside the allowed range.
    BadLength(u32),
}

impl From<io::Error> for ReadError {
    fn from(e: io::Error) -> Self {
        ReadError::Io(e)
    }
}

/// Reads whole packets during handshakes (startup, authentication). Keeps
/// bytes that arrive past a packet for the next call, and hands any left
/// over at the end to the relay.
pub struct PacketReader {
    buf: Vec<u8>,
    start: usize,
}

impl Default for PacketReader {
    fn default() -> Self {
        Self::new()
    }
}

impl PacketReader {
    pub fn new() -> Self {
        PacketReader {
            buf: Vec::with_capacity(512),
            start: 0,
        }
    }

    fn available(&self) -> usize {
        self.buf.len() - self.start
    }

    /// Bytes read but not consumed.
    pub fn leftover(&self) -> &[u8] {
        &self.buf[self.start..]
    }

    /// Drop the first `n` bytes held (a PROXY protocol header).
    pub(crate) fn consume(&mut self, n: usize) {
        self.start += n.min(self.available());
    }

    /// Read until at least `need` bytes are held (more if they come with
    /// the same read).
    pub(crate) async fn fill<R: AsyncReadRent>(
        &mut self,
        io: &mut R,
        need: usize,
    ) -> Result<(), ReadError> {
        while self.available() < need {
            if self.start > 0 {
                self.buf.copy_within(self.start.., 0);
                self.buf.truncate(self.buf.len() - self.start);
                self.start = 0;
            }
            if self.buf.capacity() < need {
                self.buf.reserve(need - self.buf.len());
            }
            let len = self.buf.len();
            let cap = self.buf.capacity();
            let slice: SliceMut<Vec<u8>> = std::mem::take(&mut self.buf).slice_mut(len..cap);
            let (res, slice) = io.read(slice).await;
            self.buf = slice.into_inner();
            match res? {
                0 => return Err(ReadError::Eof),
                _ => continue,
            }
        }
        Ok(())
    }

    /// Read an untagged packet (`len:u32` including itself, then payload),
    /// returned whole.
    pub async fn read_untagged<R: AsyncReadRent>(
        &mut self,
        io: &mut R,
        max: u32,
    ) -> Result<Vec<u8>, ReadError> {
        self.fill(io, 4).await?;
        let s = self.start;
        let len = crate::protocol::be_u32(&self.buf[s..s + 4]);
        if !(8..=max).contains(&len) {
            return Err(ReadError::BadLength(len));
        }
        self.fill(io, len as usize).await?;
        let s = self.start;
        let pkt = self.buf[s..s + len as usize].to_vec();
        self.start += len as usize;
        Ok(pkt)
    }

    /// Read a tagged message; returns the tag and body.
    pub async fn read_tagged<R: AsyncReadRent>(
        &mut self,
        io: &mut R,
        max: u32,
    ) -> Result<(u8, Vec<u8>), ReadError> {
        self.fill(io, 5).await?;
        let s = self.start;
        let tag = self.buf[s];
        let len = crate::protocol::be_u32(&self.buf[s + 1..s + 5]);
        if len < 4 || len > max {
            return Err(ReadError::BadLength(len));
        }
        self.fill(io, 1 + len as usize).await?;
        let s = self.start;
        let body = self.buf[s + 5..s + 1 + len as usize].to_vec();
        self.start += 1 + len as usize;
        Ok((tag, body))
    }

    /// Read exactly one byte (the answer to an SSLRequest).
    pub async fn read_byte<R: AsyncReadRent>(&mut self, io: &mut R) -> Result<u8, ReadError> {
        self.fill(io, 1).await?;
        let b = self.buf[self.start];
        self.start += 1;
        Ok(b)
    }
}

/// Write all of `data` (a handshake reply); returns the buffer for reuse.
pub async fn write_all<W: AsyncWriteRent>(io: &mut W, data: Vec<u8>) -> io::Result<Vec<u8>> {
    if data.is_empty() {
        return Ok(data);
    }
    let (res, data) = monoio::io::AsyncWriteRentExt::write_all(io, data).await;
    res?;
    Ok(data)
}
