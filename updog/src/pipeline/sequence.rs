//! The sequencer stage: puts decoded buffers back in frame order, checks the content size and
//! checksum, and computes the digest the read-back is compared with.

use std::sync::mpsc::{Receiver, SyncSender};

use xxhash_rust::xxh3::Xxh3;

use super::StageError;
use super::control::{Shared, recv};
use super::decode::Decoded;
use super::lz4frame::{ContentCheck, FrameHeader};
use super::write::{WriteDone, WriteMsg};

pub(super) fn sequence_stage(
    header: &FrameHeader,
    shared: &Shared,
    results: &[Receiver<Decoded>],
    out: &SyncSender<WriteMsg>,
) -> Result<(), StageError> {
    let mut digest = Xxh3::new();
    let mut content = ContentCheck::new(header);
    for i in 0.. {
        let Some(msg) = recv(&results[i % results.len()], || shared.decoding_stopped()) else {
            return Ok(());
        };
        match msg {
            Decoded::Data(buf) => {
                content.update(buf.buf.data())?;
                digest.update(buf.buf.data());
                if out.send(WriteMsg::Data(buf)).is_err() {
                    return Ok(());
                }
            }
            Decoded::End(end) => {
                let decoded_len = content.finish(end)?;
                let _ = out.send(WriteMsg::End(WriteDone {
                    decoded_len,
                    digest: digest.digest128(),
                }));
                return Ok(());
            }
        }
    }
    Ok(())
}
