//! Invocations answered `202 Accepted` (`Prefer: respond-async`) and their results until
//! they are fetched, in bounded memory.
//!
//! Each holds an unguessable id (128 random bits) and the hash of the token that started it:
//! only the same token can read the result (a public route's are readable by anyone who has
//! the id, as the route itself is). The book holds at most `capacity` entries; a new one
//! pushes out the oldest *finished* one, and when every entry is still running the request
//! is refused with 503 rather than growing without bound. A result is handed out once and
//! then dropped.

use std::collections::{HashMap, VecDeque};
use std::sync::{Mutex, MutexGuard};

use crate::reply::Reply;

/// What polling an id finds.
#[derive(Debug)]
pub enum Poll {
    /// No such id for this caller (never was, fetched already, pushed out, or another
    /// token's): the same answer for each, so ids of others reveal nothing.
    Unknown,
    /// Still running.
    Running,
    /// Finished; removed from the book by this poll.
    Done(Reply),
}

/// Every entry is still running: the book is full.
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error("{0} asynchronous invocations are already running")]
pub struct BookFull(pub usize);

#[derive(Debug)]
struct Entry {
    owner: Option<String>,
    result: Option<Reply>,
}

#[derive(Debug, Default)]
struct Inner {
    entries: HashMap<String, Entry>,
    order: VecDeque<String>,
}

/// The asynchronous invocations.
#[derive(Debug)]
pub struct PendingBook {
    capacity: usize,
    inner: Mutex<Inner>,
}

impl PendingBook {
    /// A book of at most `capacity` entries (at least one).
    pub fn new(capacity: usize) -> Self {
        Self {
            capacity: capacity.max(1),
            inner: Mutex::default(),
        }
    }

    fn inner(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records a new running invocation for `owner` (a token's hash, `None` for a public
    /// route) and returns its id.
    pub fn start(&self, owner: Option<String>) -> Result<String, BookFull> {
        let mut inner = self.inner();
        if inner.entries.len() >= self.capacity {
            let finished = inner
                .order
                .iter()
                .position(|id| inner.entries.get(id).is_some_and(|e| e.result.is_some()))
                .ok_or(BookFull(self.capacity))?;
            if let Some(id) = inner.order.remove(finished) {
                inner.entries.remove(&id);
            }
        }
        let id = format!("{:032x}", rand::random::<u128>());
        inner.order.push_back(id.clone());
        inner.entries.insert(
            id.clone(),
            Entry {
                owner,
                result: None,
            },
        );
        Ok(id)
    }

    /// Stores the result of invocation `id` (ignored if it was dropped meanwhile).
    pub fn finish(&self, id: &str, result: Reply) {
        if let Some(entry) = self.inner().entries.get_mut(id) {
            entry.result = Some(result);
        }
    }

    /// What `owner` finds under `id`; a finished result is handed out once.
    pub fn poll(&self, id: &str, owner: Option<&str>) -> Poll {
        let mut inner = self.inner();
        let Some(entry) = inner.entries.get(id) else {
            return Poll::Unknown;
        };
        if entry.owner.is_some() && entry.owner.as_deref() != owner {
            return Poll::Unknown;
        }
        if entry.result.is_none() {
            return Poll::Running;
        }
        inner.order.retain(|i| i != id);
        match inner.entries.remove(id).and_then(|e| e.result) {
            Some(reply) => Poll::Done(reply),
            None => Poll::Unknown,
        }
    }

    /// Entries held, running or finished.
    pub fn len(&self) -> usize {
        self.inner().entries.len()
    }

    /// Whether the book is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stored(body: &'static str) -> Reply {
        Reply {
            status: http::StatusCode::OK,
            headers: http::HeaderMap::new(),
            body: bytes::Bytes::from_static(body.as_bytes()),
            invoke_time: None,
        }
    }

    #[test]
    fn results_go_to_their_owner_once() {
        let book = PendingBook::new(4);
        let id = book.start(Some("alice".into())).unwrap();
        assert!(matches!(book.poll(&id, Some("alice")), Poll::Running));
        book.finish(&id, stored("done"));
        assert!(matches!(book.poll(&id, Some("mallory")), Poll::Unknown));
        assert!(matches!(book.poll(&id, None), Poll::Unknown));
        match book.poll(&id, Some("alice")) {
            Poll::Done(s) => assert_eq!(s.body, "done"),
            other => panic!("{other:?}"),
        }
        assert!(matches!(book.poll(&id, Some("alice")), Poll::Unknown));
        assert!(book.is_empty());
    }

    #[test]
    fn the_book_is_bounded_and_pushes_out_finished_entries_first() {
        let book = PendingBook::new(2);
        let running = book.start(None).unwrap();
        let finished = book.start(None).unwrap();
        book.finish(&finished, stored("old"));
        let third = book.start(None).unwrap();
        assert_eq!(book.len(), 2);
        assert!(matches!(book.poll(&finished, None), Poll::Unknown));
        assert!(matches!(book.poll(&running, None), Poll::Running));
        assert!(book.start(None).is_err(), "both entries are running");
        book.finish(&third, stored("new"));
        assert!(book.start(None).is_ok());
        assert_ne!(running, third);
    }
}
