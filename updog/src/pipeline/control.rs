//! What the stages share: stop flags and counters, the record of which writes have returned,
//! a receive that watches the stop flags, thread starting, and the filled-buffer type that
//! travels between stages.

use std::collections::BTreeMap;
use std::ops::Deref;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::{Condvar, Mutex};
use std::thread;
use std::time::Duration;

use super::StageError;

/// How often blocked stages look at the stop flags.
pub(super) const TICK: Duration = Duration::from_millis(20);

/// State shared by all stages.
#[derive(Default)]
pub(super) struct Shared {
    /// Stop everything now (cancelled, fatal error, or finished with an error).
    pub abort: AtomicBool,
    /// Stop decoding and writing, but keep reading and hashing to the end.
    pub stop_decode: AtomicBool,
    /// Compressed bytes received.
    pub received: AtomicU64,
    /// Decoded bytes written.
    pub written: AtomicU64,
    /// Which writes have returned.
    pub completed: Completion,
}

impl Shared {
    pub fn aborted(&self) -> bool {
        self.abort.load(Ordering::Relaxed)
    }

    pub fn decoding_stopped(&self) -> bool {
        self.aborted() || self.stop_decode.load(Ordering::Relaxed)
    }
}

/// A reusable buffer and how many of its bytes hold data.
pub(super) struct Filled<B> {
    buf: B,
    len: usize,
}

impl<B: Deref<Target = [u8]>> Filled<B> {
    /// The first `len` bytes of `buf` (at most all of them).
    pub fn new(buf: B, len: usize) -> Self {
        let len = len.min(buf.len());
        Self { buf, len }
    }

    /// The bytes that hold data.
    pub fn data(&self) -> &[u8] {
        &self.buf[..self.len]
    }

    /// How many bytes hold data.
    pub fn len(&self) -> usize {
        self.len
    }

    /// The buffer, for reuse.
    pub fn into_inner(self) -> B {
        self.buf
    }
}

/// The prefix of the partition whose writes have all returned (writes finish out of order
/// when several are in flight).
#[derive(Default)]
pub(super) struct Completion {
    state: Mutex<CompletionState>,
    changed: Condvar,
}

#[derive(Default)]
struct CompletionState {
    /// Every write below this offset has returned.
    prefix: u64,
    /// Returned writes past the prefix: start -> end.
    ahead: BTreeMap<u64, u64>,
}

impl Completion {
    /// The write of `[start, end)` returned successfully.
    pub fn done(&self, start: u64, end: u64) {
        let Ok(mut st) = self.state.lock() else {
            return;
        };
        st.ahead.insert(start, end);
        loop {
            let prefix = st.prefix;
            match st.ahead.remove(&prefix) {
                Some(e) => st.prefix = e,
                None => break,
            }
        }
        drop(st);
        self.changed.notify_all();
    }

    /// Wait until every write below `upto` has returned; `false` when `stop` said so first.
    pub fn wait_for(&self, upto: u64, stop: impl Fn() -> bool) -> bool {
        let Ok(mut st) = self.state.lock() else {
            return false;
        };
        while st.prefix < upto {
            if stop() {
                return false;
            }
            st = match self.changed.wait_timeout(st, TICK) {
                Ok((st, _)) => st,
                Err(_) => return false,
            };
        }
        true
    }
}

/// Receive, looking at `stop` every tick; `None` when stopped or disconnected.
pub(super) fn recv<T>(rx: &Receiver<T>, stop: impl Fn() -> bool) -> Option<T> {
    loop {
        match rx.recv_timeout(TICK) {
            Ok(v) => return Some(v),
            Err(RecvTimeoutError::Timeout) => {
                if stop() {
                    return None;
                }
            }
            Err(RecvTimeoutError::Disconnected) => return None,
        }
    }
}

fn cannot_start(e: std::io::Error) -> StageError {
    StageError::Internal(format!("cannot start a staging thread: {e}"))
}

/// Start a detached stage thread (it owns everything it touches).
pub(super) fn spawn<T: Send + 'static>(
    name: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<thread::JoinHandle<T>, StageError> {
    thread::Builder::new()
        .name(name.into())
        .spawn(f)
        .map_err(cannot_start)
}

/// Start a stage thread inside a scope.
pub(super) fn spawn_scoped<'scope, 'env, T: Send + 'scope>(
    s: &'scope thread::Scope<'scope, 'env>,
    name: &str,
    f: impl FnOnce() -> T + Send + 'scope,
) -> Result<thread::ScopedJoinHandle<'scope, T>, StageError> {
    thread::Builder::new()
        .name(name.into())
        .spawn_scoped(s, f)
        .map_err(cannot_start)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn completion_waits_for_the_whole_prefix() {
        let c = Completion::default();
        c.done(4, 8);
        // [0, 4) has not returned: the prefix is still 0.
        assert!(!c.wait_for(8, || true));
        c.done(0, 4);
        assert!(c.wait_for(8, || true));
    }

    #[test]
    fn filled_never_reaches_past_its_buffer() {
        let f = Filled::new(vec![1u8, 2, 3], 10);
        assert_eq!(f.data(), &[1, 2, 3]);
        assert_eq!(Filled::new(vec![1u8, 2, 3], 2).data(), &[1, 2]);
    }
}
