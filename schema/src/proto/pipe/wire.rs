//! The gRPC wire form of a `Chunk` stream, written and read without copying
//! payloads. A message is the 5-byte gRPC prefix (uncompressed flag, big
//! endian length), the protobuf key of `Chunk.data` (field 1,
//! length-delimited), the varint payload length, then the payload.
//!
//! tonic's codec copies every payload into its encode buffer and again into
//! its decode buffer; on the intercepted path those two copies (and the
//! page faults of the buffers they grow) cost more than the HTTP/2 framing.
//! Here the sender reads socket data straight after room for the header and
//! the receiver hands out slices of the received frames. The bytes on the
//! wire are what prost would write, so any gRPC peer interoperates.

use bytes::{Buf, Bytes, BytesMut};

/// Room kept in front of a payload for its header: prefix, key, varint.
const HEADROOM: usize = 5 + 1 + 5;
/// The protobuf key of `Chunk.data`: field 1, wire type 2.
const DATA_KEY: u8 = 1 << 3 | 2;

/// A buffer to read a payload into, with room for its header in front.
pub fn buffer(payload: usize) -> BytesMut {
    let mut buf = BytesMut::with_capacity(HEADROOM + payload);
    buf.resize(HEADROOM, 0);
    buf
}

/// Bytes of payload in a buffer from [`buffer`].
pub fn payload_len(buf: &BytesMut) -> usize {
    buf.len() - HEADROOM
}

/// Writes the header in front of the payload of a buffer from [`buffer`]
/// and returns the whole message.
pub fn seal(mut buf: BytesMut) -> Bytes {
    let len = payload_len(&buf);
    let mut header = [0u8; HEADROOM];
    let n = encode_header(len, &mut header);
    let start = HEADROOM - n;
    buf[start..HEADROOM].copy_from_slice(&header[..n]);
    buf.freeze().slice(start..)
}

/// One message carrying a copy of `data` (for writers that lend their bytes).
pub fn message(data: &[u8]) -> Bytes {
    let mut buf = buffer(data.len());
    buf.extend_from_slice(data);
    seal(buf)
}

/// Writes the header of a `len`-byte payload; returns its length.
fn encode_header(len: usize, out: &mut [u8; HEADROOM]) -> usize {
    let mut varint = [0u8; 5];
    let mut v = u32::try_from(len).expect("a chunk is far below 4 GiB");
    let mut varint_len = 0;
    loop {
        let byte = (v & 0x7f) as u8;
        v >>= 7;
        if v == 0 {
            varint[varint_len] = byte;
            varint_len += 1;
            break;
        }
        varint[varint_len] = byte | 0x80;
        varint_len += 1;
    }
    // proto3 leaves an empty `bytes` field out: an empty message.
    let message_len = if len == 0 { 0 } else { 1 + varint_len + len };
    out[0] = 0;
    out[1..5].copy_from_slice(&(message_len as u32).to_be_bytes());
    if len == 0 {
        return 5;
    }
    out[5] = DATA_KEY;
    out[6..6 + varint_len].copy_from_slice(&varint[..varint_len]);
    6 + varint_len
}

/// Why a received stream is not a `Chunk` stream.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    #[error("compressed gRPC messages are not supported on a byte stream")]
    Compressed,
    #[error("malformed Chunk message: {0}")]
    Malformed(&'static str),
    #[error("the stream ended inside a message")]
    Truncated,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// The 5-byte gRPC prefix of the next message.
    Prefix,
    /// The key of the next field of the current message.
    Key,
    /// The length of a length-delimited field (`data` or unknown).
    Length { data: bool },
    /// Bytes of a length-delimited field.
    Field { data: bool, left: usize },
    /// An unknown varint field.
    Varint,
    /// An unknown fixed-size field.
    Fixed(usize),
}

/// Parses `Chunk` messages from frames cut anywhere, yielding payload
/// slices of the frames (no copy).
#[derive(Debug)]
pub struct Decoder {
    state: State,
    /// A prefix or varint cut by a frame boundary.
    partial: Vec<u8>,
    /// Bytes of the current message not parsed yet.
    message_left: usize,
}

impl Default for Decoder {
    fn default() -> Self {
        Decoder {
            state: State::Prefix,
            partial: Vec::with_capacity(10),
            message_left: 0,
        }
    }
}

impl Decoder {
    /// Consumes one received frame; `out` gets each payload slice in order.
    pub fn decode(
        &mut self,
        mut input: Bytes,
        out: &mut impl FnMut(Bytes),
    ) -> Result<(), WireError> {
        while !input.is_empty() {
            match self.state {
                State::Prefix => {
                    let take = (5 - self.partial.len()).min(input.len());
                    self.partial.extend_from_slice(&input[..take]);
                    input.advance(take);
                    if self.partial.len() == 5 {
                        if self.partial[0] != 0 {
                            return Err(WireError::Compressed);
                        }
                        let len = u32::from_be_bytes(self.partial[1..5].try_into().unwrap());
                        self.partial.clear();
                        self.message_left = len as usize;
                        self.next_field();
                    }
                }
                State::Key => {
                    let Some(key) = self.varint(&mut input)? else {
                        continue;
                    };
                    self.state = match key & 7 {
                        0 => State::Varint,
                        1 => State::Fixed(8),
                        2 => State::Length {
                            data: key >> 3 == 1,
                        },
                        5 => State::Fixed(4),
                        _ => return Err(WireError::Malformed("unknown wire type")),
                    };
                }
                State::Length { data } => {
                    let Some(len) = self.varint(&mut input)? else {
                        continue;
                    };
                    let left = usize::try_from(len).unwrap_or(usize::MAX);
                    if left > self.message_left {
                        return Err(WireError::Malformed("field longer than its message"));
                    }
                    self.state = State::Field { data, left };
                    if left == 0 {
                        self.next_field();
                    }
                }
                State::Field { data, left } => {
                    let take = left.min(input.len());
                    let bytes = input.split_to(take);
                    self.message_left -= take;
                    if data {
                        out(bytes);
                    }
                    if take == left {
                        self.next_field();
                    } else {
                        self.state = State::Field {
                            data,
                            left: left - take,
                        };
                    }
                }
                State::Varint => {
                    if self.varint(&mut input)?.is_some() {
                        self.next_field();
                    }
                }
                State::Fixed(left) => {
                    let take = left.min(input.len());
                    self.consume(take)?;
                    input.advance(take);
                    if take == left {
                        self.next_field();
                    } else {
                        self.state = State::Fixed(left - take);
                    }
                }
            }
        }
        Ok(())
    }

    /// The stream ended: it must end between messages.
    pub fn finish(&self) -> Result<(), WireError> {
        if self.state == State::Prefix && self.partial.is_empty() {
            Ok(())
        } else {
            Err(WireError::Truncated)
        }
    }

    fn next_field(&mut self) {
        self.state = if self.message_left == 0 {
            State::Prefix
        } else {
            State::Key
        };
    }

    fn consume(&mut self, n: usize) -> Result<(), WireError> {
        self.message_left = self
            .message_left
            .checked_sub(n)
            .ok_or(WireError::Malformed("field crosses the end of its message"))?;
        Ok(())
    }

    /// Reads a varint, possibly continued from an earlier frame; `None`
    /// when the frame ended inside it.
    fn varint(&mut self, input: &mut Bytes) -> Result<Option<u64>, WireError> {
        while let Some(&byte) = input.first() {
            input.advance(1);
            self.consume(1)?;
            self.partial.push(byte);
            if byte & 0x80 == 0 {
                let value = self
                    .partial
                    .iter()
                    .rev()
                    .fold(0u64, |acc, b| acc << 7 | u64::from(b & 0x7f));
                self.partial.clear();
                return Ok(Some(value));
            }
            if self.partial.len() == 10 {
                return Err(WireError::Malformed("varint longer than 10 bytes"));
            }
        }
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use prost::Message;

    use super::*;
    use crate::proto::Chunk;

    fn grpc_frame(message: &[u8]) -> Vec<u8> {
        let mut out = vec![0];
        out.extend_from_slice(&(message.len() as u32).to_be_bytes());
        out.extend_from_slice(message);
        out
    }

    fn decode_all(wire: &[u8], cut: usize) -> Result<Vec<u8>, WireError> {
        let mut decoder = Decoder::default();
        let mut got = Vec::new();
        for piece in wire.chunks(cut.max(1)) {
            decoder.decode(Bytes::copy_from_slice(piece), &mut |b| {
                got.extend_from_slice(&b)
            })?;
        }
        decoder.finish()?;
        Ok(got)
    }

    /// What we seal is what prost writes, for every varint length.
    #[test]
    fn sealed_messages_are_prost_encoded_chunks() {
        for len in [0usize, 1, 127, 128, 300, 16_383, 16_384, 65_536, 2_097_152] {
            let data: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
            let ours = message(&data);
            let prost = grpc_frame(
                &Chunk {
                    data: Bytes::from(data.clone()),
                }
                .encode_to_vec(),
            );
            assert_eq!(&ours[..], &prost[..], "payload of {len} bytes");
        }
    }

    /// prost-encoded messages, cut at every boundary, decode to the payloads.
    #[test]
    fn decodes_messages_cut_anywhere() {
        let mut wire = Vec::new();
        let mut want = Vec::new();
        for len in [3usize, 0, 200, 1, 5000] {
            let data: Vec<u8> = (0..len).map(|i| (i * 7 % 256) as u8).collect();
            want.extend_from_slice(&data);
            wire.extend(grpc_frame(
                &Chunk {
                    data: Bytes::from(data),
                }
                .encode_to_vec(),
            ));
        }
        for cut in [1, 2, 3, 5, 6, 7, 100, 4096, wire.len()] {
            assert_eq!(
                decode_all(&wire, cut).unwrap(),
                want,
                "cut every {cut} bytes"
            );
        }
    }

    /// Fields a newer peer might add are skipped, whatever their type.
    #[test]
    fn skips_unknown_fields() {
        // field 2 varint 300, field 3 fixed64, data "hi", field 4 bytes "xyz", field 5 fixed32
        let mut message = vec![0x10, 0xac, 0x02, 0x19];
        message.extend_from_slice(&[9; 8]);
        message.extend_from_slice(&[0x0a, 2, b'h', b'i', 0x22, 3, b'x', b'y', b'z', 0x2d]);
        message.extend_from_slice(&[7; 4]);
        let wire = grpc_frame(&message);
        for cut in [1, 3, wire.len()] {
            assert_eq!(decode_all(&wire, cut).unwrap(), b"hi");
        }
    }

    #[test]
    fn rejects_what_is_not_a_chunk_stream() {
        assert_eq!(decode_all(&[1, 0, 0, 0, 0], 5), Err(WireError::Compressed));
        let truncated = &message(b"hello")[..8];
        assert_eq!(decode_all(truncated, 3), Err(WireError::Truncated));
        // A field claiming more bytes than its message holds.
        let wire = grpc_frame(&[0x0a, 9, b'x']);
        assert!(matches!(decode_all(&wire, 2), Err(WireError::Malformed(_))));
        // Wire type 3 (group) does not exist in proto3.
        let wire = grpc_frame(&[0x0b]);
        assert!(matches!(decode_all(&wire, 2), Err(WireError::Malformed(_))));
    }

    /// Payload slices share the received frame's memory.
    #[test]
    fn payloads_are_slices_of_the_frame() {
        let frame = message(&[42; 1000]);
        let base = frame.as_ptr() as usize;
        let mut decoder = Decoder::default();
        let mut slices = Vec::new();
        decoder
            .decode(frame.clone(), &mut |b| slices.push(b))
            .unwrap();
        assert_eq!(slices.len(), 1);
        let at = slices[0].as_ptr() as usize;
        assert!(at > base && at < base + frame.len(), "no copy was made");
    }
}
