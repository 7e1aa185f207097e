//! The reader stage: fills pooled buffers from the source, at most one byte past the signed
//! length.

use std::io::{self, Read};
use std::sync::mpsc::{Receiver, SyncSender};

use super::control::{Filled, Shared, recv};

/// What the reader (and, verified, the hasher) passes on.
pub(super) enum Chunk {
    Data(Filled<Vec<u8>>),
    End,
    Failed(io::Error),
}

pub(super) fn read_stage(
    mut source: Box<dyn Read + Send>,
    length: u64,
    shared: &Shared,
    pool: &Receiver<Vec<u8>>,
    out: &SyncSender<Chunk>,
) {
    // Read at most one byte past the signed length, to tell "too long" from "exact".
    let limit = length.saturating_add(1);
    let mut total = 0u64;
    loop {
        let Some(mut buf) = recv(pool, || shared.aborted()) else {
            return;
        };
        let mut n = 0;
        let mut eof = false;
        while n < buf.len() && !eof {
            let left = usize::try_from(limit - total).unwrap_or(usize::MAX);
            let room = (buf.len() - n).min(left);
            if room == 0 {
                break;
            }
            match source.read(&mut buf[n..n + room]) {
                Ok(0) => eof = true,
                Ok(k) => {
                    let k = k.min(room);
                    n += k;
                    total += k as u64;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    if n > 0 && out.send(Chunk::Data(Filled::new(buf, n))).is_err() {
                        return;
                    }
                    let _ = out.send(Chunk::Failed(e));
                    return;
                }
            }
            if shared.aborted() {
                return;
            }
        }
        if n > 0 && out.send(Chunk::Data(Filled::new(buf, n))).is_err() {
            return;
        }
        if eof || total >= limit {
            let _ = out.send(Chunk::End);
            return;
        }
    }
}
