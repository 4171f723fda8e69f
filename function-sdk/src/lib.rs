//! Write persistent Tariff functions in Rust.
//!
//! A persistent function is one process that serves many invocations: Tariff starts it once
//! (the cold start) and then sends it one request at a time as length-prefixed frames on its
//! stdin, reading each answer from its stdout. Warm invocations skip process creation and the
//! function's own initialisation. [`serve`] is the whole loop; the frame helpers are public for
//! tests and for other transports. The protocol is specified in `docs/persistent-functions.md`.
//!
//! ```no_run
//! fn main() -> std::io::Result<()> {
//!     let mut seen = 0u64;
//!     tariff_function::serve(|payload| {
//!         seen += 1;
//!         if payload.is_empty() {
//!             return Err("empty payload".to_owned());
//!         }
//!         Ok(format!("request {seen}: {} bytes", payload.len()).into_bytes())
//!     })
//! }
//! ```
//!
//! Std only, no dependencies, so functions stay small and start fast.

use std::ffi::c_int;
use std::fs::File;
use std::io::{self, BufWriter, Read, Write};
use std::os::fd::{AsFd, AsRawFd};
use std::sync::atomic::{AtomicBool, Ordering};

pub mod context;
pub mod frame;
pub mod http;

use frame::{FrameError, Status};
pub use frame::{ANSWER_HEADER_BYTES, REQUEST_HEADER_BYTES, STATUS_ERROR, STATUS_OK};

/// Bytes reserved up front for a frame body. Larger bodies grow as their bytes arrive, so a
/// corrupt length cannot make the function allocate gigabytes before reading anything.
const INITIAL_BODY_CAPACITY: usize = 64 * 1024;

/// What a handler answers: the output, or an error message for the caller.
pub type Answer = Result<Vec<u8>, String>;

/// Set by the first [`serve`]: a second one would find stdout already redirected.
static SERVING: AtomicBool = AtomicBool::new(false);

extern "C" {
    /// POSIX `dup2` from libc (which std links anyway): makes `newfd` a copy of `oldfd`.
    fn dup2(oldfd: c_int, newfd: c_int) -> c_int;
}

/// Serves invocations until Tariff closes stdin: reads each request frame from stdin, calls
/// `handler` with its payload, and writes its answer frame to stdout, flushing each.
///
/// Returns `Ok(())` when stdin closes on a frame boundary (Tariff's "shut down now"), and an
/// error if stdin ends mid-frame or a pipe fails. Call it once per process.
///
/// Before serving, the protocol stream is moved off file descriptor 1 and stdout is pointed at
/// stderr, so a stray `println!` in the handler (or in a library it uses) lands in the log
/// Tariff keeps instead of corrupting the frame stream, which would kill the instance.
///
/// A handler that panics ends the process: Tariff reports that invocation as crashed, with the
/// panic message from the stderr tail, and starts a fresh instance next time.
pub fn serve<F>(handler: F) -> io::Result<()>
where
    F: FnMut(&[u8]) -> Answer,
{
    if SERVING.swap(true, Ordering::SeqCst) {
        return Err(io::Error::new(
            io::ErrorKind::AlreadyExists,
            "tariff_function::serve called twice in one process",
        ));
    }
    let answers = take_stdout_for_frames()?;
    serve_on(io::stdin().lock(), BufWriter::new(answers), handler)
}

/// Returns a private copy of stdout for the frames and redirects file descriptor 1 to stderr.
fn take_stdout_for_frames() -> io::Result<File> {
    let stdout = io::stdout();
    // Whatever was printed before serving still belongs to the old stdout; nothing should be,
    // but flushing keeps it out of the first frame's way.
    stdout.lock().flush()?;
    let frames = stdout.as_fd().try_clone_to_owned()?;
    // SAFETY: `dup2` only rewires this process's descriptor table; both descriptors are open
    // (the standard streams), and the frame stream lives on in the copy taken above.
    let rc = unsafe { dup2(io::stderr().as_raw_fd(), stdout.as_raw_fd()) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(File::from(frames))
}

/// [`serve`] over any reader and writer: reads requests from `reader`, answers on `writer`,
/// flushing after every answer; returns `Ok(())` at a clean end of `reader`.
///
/// An output too long for a frame (over `u32::MAX` bytes) is answered with an error frame.
pub fn serve_on<R, W, F>(mut reader: R, mut writer: W, mut handler: F) -> io::Result<()>
where
    R: Read,
    W: Write,
    F: FnMut(&[u8]) -> Answer,
{
    while let Some(payload) = read_request(&mut reader)? {
        match handler(&payload) {
            Ok(output) if frame::body_length(output.len()).is_err() => {
                let message = format!(
                    "output of {} bytes exceeds the frame limit of {} bytes",
                    output.len(),
                    frame::MAX_BODY_BYTES
                );
                write_answer(&mut writer, Err(&message))?;
            }
            Ok(output) => write_answer(&mut writer, Ok(&output))?,
            Err(message) => write_answer(&mut writer, Err(&message))?,
        }
        writer.flush()?;
    }
    Ok(())
}

/// Reads one request frame and returns its payload, or `None` if `reader` ended cleanly
/// before the frame began. Ending inside a frame is [`io::ErrorKind::UnexpectedEof`].
pub fn read_request<R: Read>(reader: &mut R) -> io::Result<Option<Vec<u8>>> {
    let mut header = [0u8; REQUEST_HEADER_BYTES];
    if !read_header(reader, &mut header)? {
        return Ok(None);
    }
    read_body(reader, frame::decode_request_header(header)).map(Some)
}

/// Writes one request frame (what Tariff sends); does not flush.
///
/// A payload over `u32::MAX` bytes is [`io::ErrorKind::InvalidInput`].
pub fn write_request<W: Write>(writer: &mut W, payload: &[u8]) -> io::Result<()> {
    writer.write_all(&frame::encode_request_header(payload.len()).map_err(invalid_input)?)?;
    writer.write_all(payload)
}

/// Writes one answer frame: `Ok(output)` with [`STATUS_OK`], `Err(message)` with
/// [`STATUS_ERROR`]; does not flush.
///
/// A body over `u32::MAX` bytes is [`io::ErrorKind::InvalidInput`], and nothing is written.
pub fn write_answer<W: Write>(writer: &mut W, answer: Result<&[u8], &str>) -> io::Result<()> {
    let (status, body) = match answer {
        Ok(output) => (Status::Ok, output),
        Err(message) => (Status::Error, message.as_bytes()),
    };
    let header = frame::encode_answer_header(status, body.len()).map_err(invalid_input)?;
    writer.write_all(&header)?;
    writer.write_all(body)
}

/// Reads one answer frame (what Tariff reads): the output, or the function's error message
/// (lossily decoded). A body longer than `max_len` is [`io::ErrorKind::InvalidData`] and is
/// left unread, as is an unknown status byte.
pub fn read_answer<R: Read>(reader: &mut R, max_len: usize) -> io::Result<Answer> {
    let mut header = [0u8; ANSWER_HEADER_BYTES];
    reader.read_exact(&mut header)?;
    let (status, length) = frame::decode_answer_header(header)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
    if usize::try_from(length).unwrap_or(usize::MAX) > max_len {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("answer of {length} bytes exceeds the limit of {max_len} bytes"),
        ));
    }
    Ok(frame::answer_of(status, read_body(reader, length)?))
}

/// A body too long for a frame, as [`io::ErrorKind::InvalidInput`].
fn invalid_input(error: FrameError) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, error)
}

/// Fills `header`; `false` if `reader` was already at its end, an error if it ended partway.
fn read_header<R: Read>(reader: &mut R, header: &mut [u8]) -> io::Result<bool> {
    let mut filled = 0;
    while filled < header.len() {
        match reader.read(&mut header[filled..]) {
            Ok(0) if filled == 0 => return Ok(false),
            Ok(0) => {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!(
                        "input ended {filled} bytes into a {}-byte frame header",
                        header.len()
                    ),
                ))
            }
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(true)
}

/// Reads a frame body of `length` bytes, growing the buffer as bytes arrive.
fn read_body<R: Read>(reader: &mut R, length: u32) -> io::Result<Vec<u8>> {
    let wanted = usize::try_from(length).unwrap_or(usize::MAX);
    let mut body = Vec::with_capacity(wanted.min(INITIAL_BODY_CAPACITY));
    reader.take(u64::from(length)).read_to_end(&mut body)?;
    if body.len() != wanted {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            format!(
                "input ended {} bytes into a {length}-byte frame body",
                body.len()
            ),
        ));
    }
    Ok(body)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Answer limit for reads that are not about the limit.
    const MAX_LEN: usize = 1 << 20;

    fn requests(payloads: &[&[u8]]) -> Vec<u8> {
        let mut input = Vec::new();
        for payload in payloads {
            write_request(&mut input, payload).unwrap();
        }
        input
    }

    /// Runs `handler` over `payloads` and decodes every answer it wrote.
    fn serve_all<F>(payloads: &[&[u8]], handler: F) -> Vec<Answer>
    where
        F: FnMut(&[u8]) -> Answer,
    {
        let input = requests(payloads);
        let mut output = Vec::new();
        serve_on(input.as_slice(), &mut output, handler).unwrap();
        let mut reader = output.as_slice();
        let mut answers = Vec::new();
        while !reader.is_empty() {
            answers.push(read_answer(&mut reader, MAX_LEN).unwrap());
        }
        answers
    }

    #[test]
    fn request_frame_layout() {
        assert_eq!(requests(&[b"hi"]), [0, 0, 0, 2, b'h', b'i']);
    }

    #[test]
    fn answer_frame_layout() {
        let mut out = Vec::new();
        write_answer(&mut out, Ok(b"ok")).unwrap();
        write_answer(&mut out, Err("no")).unwrap();
        let expected = [
            &[STATUS_OK, 0, 0, 0, 2][..],
            b"ok",
            &[STATUS_ERROR, 0, 0, 0, 2],
            b"no",
        ]
        .concat();
        assert_eq!(out, expected);
    }

    #[test]
    fn serves_each_request_in_order_with_state() {
        let mut count = 0;
        let answers = serve_all(&[b"a", b"", b"ccc"], |payload| {
            count += 1;
            Ok(format!("{count}:{}", payload.len()).into_bytes())
        });
        assert_eq!(
            answers,
            vec![
                Ok(b"1:1".to_vec()),
                Ok(b"2:0".to_vec()),
                Ok(b"3:3".to_vec())
            ]
        );
    }

    #[test]
    fn handler_errors_become_error_frames_and_serving_goes_on() {
        let answers = serve_all(&[b"bad", b"good"], |payload| {
            if payload == b"bad" {
                Err("bad payload".to_owned())
            } else {
                Ok(payload.to_vec())
            }
        });
        assert_eq!(
            answers,
            vec![Err("bad payload".to_owned()), Ok(b"good".to_vec())]
        );
    }

    #[test]
    fn empty_input_is_a_clean_end() {
        let mut output = Vec::new();
        serve_on(&[][..], &mut output, |_| Ok(Vec::new())).unwrap();
        assert!(output.is_empty());
    }

    #[test]
    fn input_ending_mid_frame_is_an_error() {
        let truncated_header = [0u8, 0];
        let err = read_request(&mut &truncated_header[..]).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);

        let mut truncated_body = requests(&[b"hello"]);
        truncated_body.pop();
        let err = serve_on(truncated_body.as_slice(), Vec::new(), |p| Ok(p.to_vec())).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);
    }

    #[test]
    fn bogus_length_does_not_preallocate() {
        // Claims 4 GiB but carries 3 bytes: fails as truncated instead of allocating.
        let mut input = vec![0xff, 0xff, 0xff, 0xff];
        input.extend_from_slice(b"abc");
        let err = read_request(&mut input.as_slice()).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);
    }

    #[test]
    fn large_payloads_round_trip() {
        let big = vec![7u8; 3 * INITIAL_BODY_CAPACITY + 1];
        let answers = serve_all(&[&big], |payload| Ok(payload.to_vec()));
        assert_eq!(answers, vec![Ok(big)]);
    }

    #[test]
    fn read_answer_refuses_what_it_should() {
        let mut out = Vec::new();
        write_answer(&mut out, Ok(&[0u8; 10])).unwrap();
        let err = read_answer(&mut out.as_slice(), 9).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        assert_eq!(
            read_answer(&mut out.as_slice(), 10).unwrap(),
            Ok(vec![0; 10])
        );

        let bad_status = [9u8, 0, 0, 0, 0];
        let err = read_answer(&mut &bad_status[..], MAX_LEN).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
    }

    #[test]
    fn each_answer_is_flushed() {
        /// Records how many bytes had been written at each flush.
        #[derive(Default)]
        struct Recorder {
            written: Vec<u8>,
            flushed_at: Vec<usize>,
        }
        impl Write for Recorder {
            fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
                self.written.extend_from_slice(buf);
                Ok(buf.len())
            }
            fn flush(&mut self) -> io::Result<()> {
                self.flushed_at.push(self.written.len());
                Ok(())
            }
        }
        let input = requests(&[b"x", b"yy"]);
        let mut recorder = Recorder::default();
        serve_on(input.as_slice(), &mut recorder, |p| Ok(p.to_vec())).unwrap();
        let first = ANSWER_HEADER_BYTES + 1;
        assert_eq!(
            recorder.flushed_at,
            vec![first, first + ANSWER_HEADER_BYTES + 2]
        );
    }
}
