//! Framing and encoding: the only module that knows how messages become bytes.
//!
//! A frame is a 4-byte big-endian length, then a body of that many bytes: one protocol-version
//! byte followed by the message encoded with bincode 2 (standard configuration). The length is
//! checked against [`MAX_FRAME_BYTES`] before anything is read or allocated, so a hostile peer
//! cannot make a process allocate more than that. Swapping bincode for another encoding means
//! changing this file only.

use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Version byte at the start of every frame body; a peer with another version is refused with
/// a clear error instead of misreading its bytes.
pub const PROTOCOL_VERSION: u8 = 1;

/// Largest frame body accepted or sent: 8 MiB, room for the largest payload a shard accepts
/// (1 MiB by default) plus its envelope, with space to raise that limit.
pub const MAX_FRAME_BYTES: usize = 8 << 20;

const LENGTH_PREFIX_BYTES: usize = 4;

/// Why a frame could not be read, written or understood.
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    /// The peer announced a frame larger than the limit.
    #[error("frame of {size} bytes is larger than the limit of {limit} bytes")]
    TooLarge {
        /// Announced size.
        size: usize,
        /// The limit.
        limit: usize,
    },
    /// A frame with an empty body.
    #[error("empty frame")]
    Empty,
    /// The peer speaks another protocol version.
    #[error("protocol version {got} is not supported (this build speaks {PROTOCOL_VERSION})")]
    Version {
        /// The version byte received.
        got: u8,
    },
    /// The body does not decode as the expected message.
    #[error("malformed frame: {0}")]
    Malformed(String),
    /// The body decoded but had bytes left over.
    #[error("malformed frame: {0} trailing bytes")]
    Trailing(usize),
    /// The stream ended in the middle of a frame.
    #[error("stream ended inside a frame")]
    Truncated,
    /// The transport failed.
    #[error("transport: {0}")]
    Io(#[from] std::io::Error),
}

impl CodecError {
    /// True when the peer sent bytes that are not a valid frame (as opposed to the transport
    /// failing): such peers get a protocol error answer before the stream is closed.
    pub fn is_protocol_violation(&self) -> bool {
        !matches!(self, CodecError::Io(_) | CodecError::Truncated)
    }
}

fn config() -> bincode::config::Configuration<
    bincode::config::BigEndian,
    bincode::config::Varint,
    bincode::config::Limit<MAX_FRAME_BYTES>,
> {
    bincode::config::standard()
        .with_big_endian()
        .with_limit::<MAX_FRAME_BYTES>()
}

/// Encodes `message` as one complete frame, length prefix included.
pub fn encode<T: Serialize>(message: &T) -> Result<Vec<u8>, CodecError> {
    let mut frame = vec![0u8; LENGTH_PREFIX_BYTES];
    frame.push(PROTOCOL_VERSION);
    bincode::serde::encode_into_std_write(message, &mut frame, config())
        .map_err(|e| CodecError::Malformed(e.to_string()))?;
    let body = frame.len() - LENGTH_PREFIX_BYTES;
    if body > MAX_FRAME_BYTES {
        return Err(CodecError::TooLarge {
            size: body,
            limit: MAX_FRAME_BYTES,
        });
    }
    frame[..LENGTH_PREFIX_BYTES].copy_from_slice(&(body as u32).to_be_bytes());
    Ok(frame)
}

/// Encodes `message` as a frame body (version byte and message, no length prefix): for bytes
/// kept rather than sent, such as an answer stored under its idempotency key.
pub fn encode_body<T: Serialize>(message: &T) -> Result<Vec<u8>, CodecError> {
    let mut frame = encode(message)?;
    frame.drain(..LENGTH_PREFIX_BYTES);
    Ok(frame)
}

/// Decodes one frame body (version byte and message, without the length prefix).
pub fn decode<T: DeserializeOwned>(body: &[u8]) -> Result<T, CodecError> {
    let (&version, rest) = body.split_first().ok_or(CodecError::Empty)?;
    if version != PROTOCOL_VERSION {
        return Err(CodecError::Version { got: version });
    }
    let (message, used) = bincode::serde::decode_from_slice(rest, config())
        .map_err(|e| CodecError::Malformed(e.to_string()))?;
    if used != rest.len() {
        return Err(CodecError::Trailing(rest.len() - used));
    }
    Ok(message)
}

/// Reads one frame body; `Ok(None)` when the stream ended cleanly between frames.
pub async fn read_frame<R: AsyncRead + Unpin>(
    reader: &mut R,
) -> Result<Option<Vec<u8>>, CodecError> {
    let mut prefix = [0u8; LENGTH_PREFIX_BYTES];
    let mut filled = 0;
    while filled < LENGTH_PREFIX_BYTES {
        let n = reader.read(&mut prefix[filled..]).await?;
        if n == 0 {
            return if filled == 0 {
                Ok(None)
            } else {
                Err(CodecError::Truncated)
            };
        }
        filled += n;
    }
    let size = u32::from_be_bytes(prefix) as usize;
    if size > MAX_FRAME_BYTES {
        return Err(CodecError::TooLarge {
            size,
            limit: MAX_FRAME_BYTES,
        });
    }
    if size == 0 {
        return Err(CodecError::Empty);
    }
    let mut body = vec![0u8; size];
    reader.read_exact(&mut body).await.map_err(|e| {
        if e.kind() == std::io::ErrorKind::UnexpectedEof {
            CodecError::Truncated
        } else {
            CodecError::Io(e)
        }
    })?;
    Ok(Some(body))
}

/// Reads and decodes one message; `Ok(None)` at a clean end of stream.
pub async fn read_message<T: DeserializeOwned, R: AsyncRead + Unpin>(
    reader: &mut R,
) -> Result<Option<T>, CodecError> {
    match read_frame(reader).await? {
        Some(body) => decode(&body).map(Some),
        None => Ok(None),
    }
}

/// Encodes and writes one message.
pub async fn write_message<T: Serialize, W: AsyncWrite + Unpin>(
    writer: &mut W,
    message: &T,
) -> Result<(), CodecError> {
    let frame = encode(message)?;
    writer.write_all(&frame).await?;
    Ok(())
}

/// Sends `beat()` on `outbox` four times per `liveness` until the channel closes: the
/// heartbeat of a control stream (shard and dispatcher each send one), so a healthy peer is
/// never silent for `liveness`, however quiet it is.
pub async fn heartbeats<T>(
    outbox: tokio::sync::mpsc::UnboundedSender<T>,
    liveness: std::time::Duration,
    beat: impl Fn() -> T,
) {
    let mut tick = tokio::time::interval(liveness / 4);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if outbox.send(beat()).is_err() {
            return;
        }
    }
}

/// Writes every message that arrives on `outbox` to `writer`, in order, until the channel
/// closes or a write fails. Long-lived streams use one such task each, so that many tasks can
/// send on a stream without sharing its writer.
pub async fn forward<T: Serialize, W: AsyncWrite + Unpin>(
    mut outbox: tokio::sync::mpsc::UnboundedReceiver<T>,
    mut writer: W,
) {
    while let Some(message) = outbox.recv().await {
        if write_message(&mut writer, &message).await.is_err() {
            break;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tariff_types::wire::{ClientRequest, InvokeRequest, StreamOpen};

    fn sample() -> StreamOpen {
        StreamOpen::Client {
            token: Some(tariff_types::Token::new("tariff_x")),
            request: ClientRequest::Invoke(InvokeRequest {
                function: "echo".into(),
                class: "critical".into(),
                payload: b"hello".to_vec(),
                timeout_ms: 10,
                limits: Default::default(),
                idempotency_key: None,
            }),
        }
    }

    #[tokio::test]
    async fn round_trip_through_a_stream() {
        let (mut a, mut b) = tokio::io::duplex(1024);
        write_message(&mut a, &sample()).await.unwrap();
        drop(a);
        let got: StreamOpen = read_message(&mut b).await.unwrap().unwrap();
        assert!(
            matches!(got, StreamOpen::Client { request: ClientRequest::Invoke(r), .. } if r.payload == b"hello")
        );
        assert!(read_message::<StreamOpen, _>(&mut b)
            .await
            .unwrap()
            .is_none());
    }

    #[tokio::test]
    async fn oversized_length_is_refused_before_reading() {
        let (mut a, mut b) = tokio::io::duplex(64);
        a.write_all(&u32::MAX.to_be_bytes()).await.unwrap();
        let err = read_frame(&mut b).await.unwrap_err();
        assert!(matches!(err, CodecError::TooLarge { .. }), "{err}");
        assert!(err.is_protocol_violation());
    }

    #[test]
    fn garbage_and_wrong_versions_are_errors_not_panics() {
        let mut frame = encode(&sample()).unwrap();
        assert!(matches!(
            decode::<StreamOpen>(&[9, 1, 2]),
            Err(CodecError::Version { got: 9 })
        ));
        assert!(decode::<StreamOpen>(&[PROTOCOL_VERSION, 0xff, 0xff, 0xff]).is_err());
        frame.push(0);
        assert!(matches!(
            decode::<StreamOpen>(&frame[LENGTH_PREFIX_BYTES..]),
            Err(CodecError::Trailing(1))
        ));
        let mut state = 0x2545_f491_u32;
        for _ in 0..2000 {
            let body: Vec<u8> = (0..(state % 64))
                .map(|_| {
                    state ^= state << 13;
                    state ^= state >> 17;
                    state ^= state << 5;
                    state as u8
                })
                .collect();
            let _ = decode::<StreamOpen>(&body);
        }
    }

    #[tokio::test]
    async fn truncated_frame_is_reported() {
        let (mut a, mut b) = tokio::io::duplex(64);
        a.write_all(&10u32.to_be_bytes()).await.unwrap();
        a.write_all(&[1, 2]).await.unwrap();
        drop(a);
        assert!(matches!(
            read_frame(&mut b).await,
            Err(CodecError::Truncated)
        ));
    }
}

/// The decoder fed arbitrary and mutated bytes: whatever a peer sends, reading a frame ends in
/// a message, a clean end or an error, never a panic, and a length past the limit is refused
/// before anything is allocated (bounded: proptest's default 256 cases per property).
#[cfg(test)]
mod fuzz {
    use super::*;
    use proptest::prelude::*;
    use tariff_types::wire::{
        ClientRequest, Completion, DispatcherToShard, InvocationId, InvokeRequest, Placement,
        SessionRequest, StreamOpen,
    };

    /// Every message type a shard or a dispatcher reads from a peer.
    async fn read_all(bytes: &[u8]) {
        macro_rules! read {
            ($($t:ty),*) => {$(
                let mut reader = bytes;
                let _ = read_message::<$t, _>(&mut reader).await;
            )*};
        }
        read!(
            StreamOpen,
            SessionRequest,
            DispatcherToShard,
            Completion,
            Placement,
            tariff_types::wire::ShardToDispatcher,
            tariff_types::wire::ClientResponse,
            tariff_types::wire::SessionResponse
        );
    }

    /// A valid frame to mutate: an invocation request on a client stream.
    async fn valid_frame() -> Vec<u8> {
        let open = StreamOpen::Client {
            token: Some(tariff_types::Token::new("tariff_0123")),
            request: ClientRequest::Invoke(InvokeRequest {
                function: "echo".into(),
                class: "critical".into(),
                payload: b"payload".to_vec(),
                timeout_ms: 5,
                limits: Default::default(),
                idempotency_key: None,
            }),
        };
        let mut bytes = Vec::new();
        write_message(&mut bytes, &open).await.unwrap();
        let completion = Completion {
            id: InvocationId(1),
            result: Err(tariff_types::InvokeError::Cancelled),
        };
        write_message(&mut bytes, &completion).await.unwrap();
        bytes
    }

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            runtime().block_on(read_all(&bytes));
        }

        #[test]
        fn mutated_frames_never_panic(
            edits in proptest::collection::vec((any::<usize>(), any::<u8>(), 0u8..3), 1..8)
        ) {
            runtime().block_on(async {
                let mut bytes = valid_frame().await;
                for (at, byte, kind) in edits {
                    let at = at % (bytes.len() + 1);
                    match kind {
                        0 if at < bytes.len() => bytes[at] = byte,
                        1 => bytes.insert(at, byte),
                        _ if at < bytes.len() => {
                            bytes.remove(at);
                        }
                        _ => {}
                    }
                }
                read_all(&bytes).await;
            });
        }

        #[test]
        fn lengths_past_the_limit_are_refused_unread(extra in 1usize..(u32::MAX as usize - MAX_FRAME_BYTES)) {
            let length = (MAX_FRAME_BYTES + extra) as u32;
            let mut bytes = length.to_be_bytes().to_vec();
            bytes.push(PROTOCOL_VERSION);
            runtime().block_on(async {
                let mut reader = bytes.as_slice();
                let got = read_message::<StreamOpen, _>(&mut reader).await;
                let refused = matches!(got, Err(CodecError::TooLarge { .. }));
                prop_assert!(refused, "a length of {} was not refused", length);
                Ok(())
            })?;
        }
    }
}
