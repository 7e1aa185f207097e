//! The hasher stage: the signed length and sha256 of the compressed stream, passing the bytes
//! on to the parser as they are hashed.

use std::sync::atomic::Ordering;
use std::sync::mpsc::{Receiver, Sender, SyncSender};

use sha2::{Digest, Sha256};

use super::control::{Shared, recv};
use super::read::Chunk;
use super::{Event, StageError, TargetInfo};

pub(super) fn hash_stage(
    expected: &TargetInfo,
    shared: &Shared,
    input: &Receiver<Chunk>,
    out: &SyncSender<Chunk>,
    events: &Sender<Event>,
) {
    let mut sha = Sha256::new();
    let mut total = 0u64;
    // Once the parser is gone (aborted), keep nothing going.
    let mut parser_alive = true;
    loop {
        let Some(chunk) = recv(input, || shared.aborted()) else {
            return;
        };
        match chunk {
            Chunk::Data(buf) => {
                sha.update(buf.data());
                total += buf.len() as u64;
                shared.received.store(total, Ordering::Relaxed);
                if total > expected.length {
                    let _ = events.send(Event::Hashed(Err(StageError::TooLong {
                        expected: expected.length,
                    })));
                    return;
                }
                if parser_alive && out.send(Chunk::Data(buf)).is_err() {
                    parser_alive = false;
                }
                if !parser_alive && shared.aborted() {
                    return;
                }
            }
            Chunk::End => {
                let verdict = if total == expected.length {
                    let actual: [u8; 32] = sha.finalize().into();
                    if actual == expected.sha256 {
                        Ok(())
                    } else {
                        Err(StageError::HashMismatch {
                            expected: hex::encode(expected.sha256),
                            actual: hex::encode(actual),
                        })
                    }
                } else {
                    Err(StageError::TooShort {
                        expected: expected.length,
                        actual: total,
                    })
                };
                let ok = verdict.is_ok();
                let _ = events.send(Event::Hashed(verdict));
                if ok && parser_alive {
                    let _ = out.send(Chunk::End);
                }
                return;
            }
            Chunk::Failed(source) => {
                let _ = events.send(Event::Failed(StageError::Read {
                    offset: total,
                    source,
                }));
                return;
            }
        }
    }
}
