//! The frame format of persistent functions, and nothing else: header layouts, the status
//! byte, the body limit. No I/O.
//!
//! Both ends of the protocol use this one module, so they cannot drift apart: the SDK's
//! blocking std loop ([`crate::serve_on`]) on the function's side, and the machine
//! scheduler's async tokio driver (`tariff_machine_sched::persistent`) on Tariff's side. Each
//! end does its own reading and writing, which is why only the pure layout lives here.
//!
//! A request is a big-endian `u32` body length, then the payload. An answer is a status byte
//! ([`Status`]), a big-endian `u32` body length, then the body. `docs/persistent-functions.md`
//! specifies the protocol around the frames.

use std::fmt;

/// Answer status byte: the body is the invocation's output.
pub const STATUS_OK: u8 = 0;

/// Answer status byte: the body is a UTF-8 error message. An error answer fails only the
/// invocation; the instance keeps serving.
pub const STATUS_ERROR: u8 = 1;

/// Size of a request header: the payload length as a big-endian `u32`.
pub const REQUEST_HEADER_BYTES: usize = 4;

/// Size of an answer header: the status byte, then the body length as a big-endian `u32`.
pub const ANSWER_HEADER_BYTES: usize = 5;

/// Longest body a frame can carry: its length field is a `u32`.
pub const MAX_BODY_BYTES: u64 = u32::MAX as u64;

/// What an answer's body is, by its status byte.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// [`STATUS_OK`]: the body is the invocation's output.
    Ok,
    /// [`STATUS_ERROR`]: the body is the function's error message.
    Error,
}

impl Status {
    /// The status byte on the wire.
    pub fn byte(self) -> u8 {
        match self {
            Status::Ok => STATUS_OK,
            Status::Error => STATUS_ERROR,
        }
    }
}

/// A frame that cannot be encoded or decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FrameError {
    /// A body longer than [`MAX_BODY_BYTES`] does not fit a frame.
    BodyTooLarge {
        /// The body's length.
        len: usize,
    },
    /// An answer header began with a status byte that is neither [`STATUS_OK`] nor
    /// [`STATUS_ERROR`].
    UnknownStatus(u8),
}

impl fmt::Display for FrameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FrameError::BodyTooLarge { len } => write!(
                f,
                "frame body of {len} bytes exceeds the limit of {MAX_BODY_BYTES} bytes"
            ),
            FrameError::UnknownStatus(byte) => write!(f, "unknown answer status byte {byte}"),
        }
    }
}

impl std::error::Error for FrameError {}

/// `len` as a frame's length field, or [`FrameError::BodyTooLarge`].
pub fn body_length(len: usize) -> Result<u32, FrameError> {
    u32::try_from(len).map_err(|_| FrameError::BodyTooLarge { len })
}

/// The header of a request frame carrying `body_len` bytes.
pub fn encode_request_header(body_len: usize) -> Result<[u8; REQUEST_HEADER_BYTES], FrameError> {
    Ok(body_length(body_len)?.to_be_bytes())
}

/// The body length a request header declares.
pub fn decode_request_header(header: [u8; REQUEST_HEADER_BYTES]) -> u32 {
    u32::from_be_bytes(header)
}

/// The header of an answer frame with `status` carrying `body_len` bytes.
pub fn encode_answer_header(
    status: Status,
    body_len: usize,
) -> Result<[u8; ANSWER_HEADER_BYTES], FrameError> {
    let [l0, l1, l2, l3] = body_length(body_len)?.to_be_bytes();
    Ok([status.byte(), l0, l1, l2, l3])
}

/// The status and body length an answer header declares, or
/// [`FrameError::UnknownStatus`].
pub fn decode_answer_header(
    header: [u8; ANSWER_HEADER_BYTES],
) -> Result<(Status, u32), FrameError> {
    let [status, length @ ..] = header;
    let status = match status {
        STATUS_OK => Status::Ok,
        STATUS_ERROR => Status::Error,
        other => return Err(FrameError::UnknownStatus(other)),
    };
    Ok((status, u32::from_be_bytes(length)))
}

/// An answer's body as what the function answered: the output for [`Status::Ok`], the error
/// message (lossily decoded) for [`Status::Error`].
pub fn answer_of(status: Status, body: Vec<u8>) -> Result<Vec<u8>, String> {
    match status {
        Status::Ok => Ok(body),
        Status::Error => Err(String::from_utf8_lossy(&body).into_owned()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_round_trip() {
        let request = encode_request_header(2).unwrap();
        assert_eq!(request, [0, 0, 0, 2]);
        assert_eq!(decode_request_header(request), 2);
        let answer = encode_answer_header(Status::Error, 258).unwrap();
        assert_eq!(answer, [STATUS_ERROR, 0, 0, 1, 2]);
        assert_eq!(decode_answer_header(answer), Ok((Status::Error, 258)));
    }

    #[test]
    fn unknown_status_is_refused() {
        assert_eq!(
            decode_answer_header([7, 0, 0, 0, 0]),
            Err(FrameError::UnknownStatus(7))
        );
        assert_eq!(
            FrameError::UnknownStatus(7).to_string(),
            "unknown answer status byte 7"
        );
    }

    #[test]
    fn error_bodies_decode_lossily() {
        assert_eq!(answer_of(Status::Ok, b"x".to_vec()), Ok(b"x".to_vec()));
        assert_eq!(
            answer_of(Status::Error, vec![b'n', 0xff]),
            Err("n\u{fffd}".to_owned())
        );
    }
}
