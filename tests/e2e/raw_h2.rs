//! Hand-made HTTP/2 for the hostile-input tests: frames and gRPC messages
//! written byte by byte, so a test can send what no well-behaved client
//! would (a message shorter than its length prefix, a length prefix of
//! 4 GiB, bytes that are not protobuf, a header block that is not HPACK)
//! and see how the server's answer ends.
//!
//! Answers are read at the frame level only: the server's header blocks are
//! HPACK with Huffman-coded strings, which this module does not decode. An
//! error answer is recognised by its shape: stream 1 ends with a HEADERS
//! frame (trailers carrying `grpc-status`) and no DATA frame, or is reset.

use std::{net::SocketAddr, time::Duration};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
    time::Instant,
};

pub const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

pub const DATA: u8 = 0x0;
pub const HEADERS: u8 = 0x1;
pub const RST_STREAM: u8 = 0x3;
pub const SETTINGS: u8 = 0x4;
pub const PING: u8 = 0x6;
pub const GOAWAY: u8 = 0x7;

pub const END_STREAM: u8 = 0x1;
pub const ACK: u8 = 0x1;
pub const END_HEADERS: u8 = 0x4;

/// One frame: 9-byte header, then the payload.
pub fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len() as u32;
    assert!(len < 1 << 24, "frame payload too long");
    let mut f = Vec::with_capacity(9 + payload.len());
    f.extend_from_slice(&len.to_be_bytes()[1..]);
    f.push(kind);
    f.push(flags);
    f.extend_from_slice(&(stream & 0x7fff_ffff).to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// The client preface and an empty SETTINGS frame: the start of every
/// connection.
pub fn handshake() -> Vec<u8> {
    let mut b = PREFACE.to_vec();
    b.extend(frame(SETTINGS, 0, 0, &[]));
    b
}

/// An HPACK integer with an `n`-bit prefix whose high bits are `first`.
fn hpack_int(value: usize, n: u8, first: u8, out: &mut Vec<u8>) {
    let max = (1usize << n) - 1;
    if value < max {
        out.push(first | value as u8);
        return;
    }
    out.push(first | max as u8);
    let mut rest = value - max;
    while rest >= 128 {
        out.push((rest % 128) as u8 | 0x80);
        rest /= 128;
    }
    out.push(rest as u8);
}

fn hpack_str(s: &str, out: &mut Vec<u8>) {
    hpack_int(s.len(), 7, 0, out); // not Huffman-coded
    out.extend_from_slice(s.as_bytes());
}

/// A literal header without indexing, its name from the static table.
fn hpack_indexed_name(index: usize, value: &str, out: &mut Vec<u8>) {
    hpack_int(index, 4, 0x00, out);
    hpack_str(value, out);
}

/// The header block of a gRPC call to `path` (`/package.Service/Method`).
pub fn grpc_header_block(path: &str) -> Vec<u8> {
    let mut b = vec![0x83, 0x86]; // :method POST, :scheme http (static 3, 6)
    hpack_indexed_name(4, path, &mut b); // :path
    hpack_indexed_name(1, "localhost", &mut b); // :authority
    hpack_indexed_name(31, "application/grpc", &mut b); // content-type
    b.push(0x00); // te: trailers, a literal name
    hpack_str("te", &mut b);
    hpack_str("trailers", &mut b);
    b
}

/// A gRPC message prefix claiming `declared` bytes follow.
pub fn grpc_prefix(compressed: bool, declared: u32) -> Vec<u8> {
    let mut p = vec![u8::from(compressed)];
    p.extend_from_slice(&declared.to_be_bytes());
    p
}

/// A well-framed gRPC message around `payload`.
pub fn grpc_message(payload: &[u8]) -> Vec<u8> {
    let mut m = grpc_prefix(false, payload.len() as u32);
    m.extend_from_slice(payload);
    m
}

/// How the server answered stream 1 (or the connection).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Answer {
    /// DATA frames on stream 1 (a reply message).
    pub data_frames: usize,
    /// Stream 1 ended with a HEADERS frame (the trailers).
    pub ended_by_trailers: bool,
    /// RST_STREAM on stream 1, with its error code.
    pub reset: Option<u32>,
    /// GOAWAY, with its error code.
    pub goaway: Option<u32>,
    /// The server closed the connection.
    pub closed: bool,
    /// Nothing ended within the time limit.
    pub timed_out: bool,
}

impl Answer {
    /// The call was refused: stream 1 ended without a reply message, or the
    /// connection was torn down.
    pub fn is_refusal(&self) -> bool {
        !self.timed_out
            && self.data_frames == 0
            && (self.ended_by_trailers
                || self.reset.is_some()
                || self.goaway.is_some()
                || self.closed)
    }
}

/// Reads one frame; `None` at end of stream.
async fn read_frame(s: &mut TcpStream) -> std::io::Result<Option<(u8, u8, u32, Vec<u8>)>> {
    let mut head = [0u8; 9];
    match s.read_exact(&mut head).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
    let stream = u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff;
    let mut payload = vec![0u8; len];
    s.read_exact(&mut payload).await?;
    Ok(Some((head[3], head[4], stream, payload)))
}

/// Sends `bytes` on a fresh connection to `addr`, then reads frames until
/// stream 1 ends, the connection ends, or `limit` passes. Server SETTINGS
/// and PINGs are acknowledged, as a client must.
pub async fn exchange(addr: SocketAddr, bytes: &[u8], limit: Duration) -> Answer {
    let mut s = TcpStream::connect(addr).await.expect("connect");
    let mut a = Answer::default();
    if s.write_all(bytes).await.is_err() {
        a.closed = true;
        return a;
    }
    let deadline = Instant::now() + limit;
    loop {
        let next = tokio::time::timeout_at(deadline, read_frame(&mut s)).await;
        let (kind, flags, stream, payload) = match next {
            Err(_) => {
                a.timed_out = true;
                return a;
            }
            Ok(Err(_)) | Ok(Ok(None)) => {
                a.closed = true;
                return a;
            }
            Ok(Ok(Some(f))) => f,
        };
        match (kind, stream) {
            (SETTINGS, 0) if flags & ACK == 0 => {
                let _ = s.write_all(&frame(SETTINGS, ACK, 0, &[])).await;
            }
            (PING, 0) if flags & ACK == 0 => {
                let _ = s.write_all(&frame(PING, ACK, 0, &payload)).await;
            }
            (GOAWAY, 0) => {
                a.goaway = payload
                    .get(4..8)
                    .map(|c| u32::from_be_bytes([c[0], c[1], c[2], c[3]]));
                return a;
            }
            (DATA, 1) => {
                a.data_frames += 1;
                if flags & END_STREAM != 0 {
                    return a;
                }
            }
            (HEADERS, 1) if flags & END_STREAM != 0 => {
                a.ended_by_trailers = true;
                return a;
            }
            (RST_STREAM, 1) => {
                a.reset = payload
                    .get(0..4)
                    .map(|c| u32::from_be_bytes([c[0], c[1], c[2], c[3]]));
                return a;
            }
            _ => {}
        }
    }
}

/// A whole call: handshake, the header block for `path`, then `body` as
/// one DATA frame ending the stream.
pub fn call(path: &str, body: &[u8]) -> Vec<u8> {
    let mut b = handshake();
    b.extend(frame(HEADERS, END_HEADERS, 1, &grpc_header_block(path)));
    b.extend(frame(DATA, END_STREAM, 1, body));
    b
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_and_integers_are_laid_out_as_rfc_9113_and_7541_say() {
        assert_eq!(
            frame(SETTINGS, ACK, 0, &[]),
            vec![0, 0, 0, 4, 1, 0, 0, 0, 0]
        );
        let mut out = Vec::new();
        hpack_int(1337, 5, 0, &mut out); // RFC 7541, C.1.2
        assert_eq!(out, vec![31, 154, 10]);
        let mut out = Vec::new();
        hpack_indexed_name(31, "x", &mut out);
        assert_eq!(out, vec![0x0f, 0x10, 1, b'x']);
    }
}
