//! The end of a function's stderr, kept for its error report: one buffer and one collector
//! for both kinds of process.
//!
//! A one-shot process's tail is read to end of file and goes into its failure
//! ([`crate::process::RunError::Failed`]); a persistent instance's is collected for its whole
//! life by a task, so a crash report carries the last lines it logged across all its
//! invocations ([`crate::persistent::CallError::Crashed`]). Only the end is kept because that
//! is where the error usually is, and because a chatty function must not grow our memory.

use std::io;
use std::sync::{Mutex, PoisonError};

use tokio::io::AsyncReadExt;
use tokio::net::unix::pipe;

/// How much of a function's stderr is kept: the end of it, where the error usually is.
pub const STDERR_TAIL_BYTES: usize = 4 * 1024;

/// Read size for stderr: logs arrive in small writes, and only the last
/// [`STDERR_TAIL_BYTES`] are kept anyway.
const CHUNK_BYTES: usize = STDERR_TAIL_BYTES;

/// The last [`STDERR_TAIL_BYTES`] of a stderr stream; shared between its collector and whoever
/// reports a failure (a persistent instance's tail is read while it is still collected).
#[derive(Debug, Default)]
pub(crate) struct StderrTail {
    /// At most [`STDERR_TAIL_BYTES`], oldest first.
    bytes: Mutex<Vec<u8>>,
}

impl StderrTail {
    /// Appends `chunk`, dropping from the front whatever exceeds the tail size.
    pub(crate) fn push(&self, chunk: &[u8]) {
        // A poisoned lock still holds valid bytes.
        let mut bytes = self.bytes.lock().unwrap_or_else(PoisonError::into_inner);
        bytes.extend_from_slice(chunk);
        if bytes.len() > STDERR_TAIL_BYTES {
            let excess = bytes.len() - STDERR_TAIL_BYTES;
            bytes.drain(..excess);
        }
    }

    /// The tail, lossily decoded.
    pub(crate) fn text(&self) -> String {
        let bytes = self.bytes.lock().unwrap_or_else(PoisonError::into_inner);
        String::from_utf8_lossy(&bytes).into_owned()
    }

    /// Reads `stderr` to end of file (or to a read error, after which nothing more can be
    /// learnt from it), keeping its tail here.
    pub(crate) async fn collect(&self, mut stderr: pipe::Receiver) {
        let mut chunk = vec![0u8; CHUNK_BYTES];
        loop {
            match stderr.read(&mut chunk).await {
                Ok(0) => break,
                Ok(n) => self.push(&chunk[..n]),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => break,
            }
        }
    }
}

/// Formats a stderr tail for an error message (`: tail`), or nothing if it is empty.
pub(crate) fn stderr_suffix(tail: &str) -> String {
    let tail = tail.trim();
    if tail.is_empty() {
        String::new()
    } else {
        format!(": {tail}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_end() {
        let tail = StderrTail::default();
        tail.push(&vec![b'a'; STDERR_TAIL_BYTES]);
        tail.push(b"END");
        let text = tail.text();
        assert_eq!(text.len(), STDERR_TAIL_BYTES);
        assert!(text.ends_with("aEND"));
    }

    #[test]
    fn suffix_is_empty_for_an_empty_tail() {
        assert_eq!(stderr_suffix(" \n"), "");
        assert_eq!(stderr_suffix("boom\n"), ": boom");
    }
}
