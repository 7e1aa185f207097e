//! The read-back: regions flushed while later ones are still written (the verifier thread),
//! then the rest after the final flush; every byte is read back once, in order, into one
//! running xxh3-128.

use std::sync::mpsc::{self, Receiver};
use std::thread;
use std::time::Instant;

use bootpart::io::AlignedBuf;
use xxhash_rust::xxh3::Xxh3;

use super::control::{Filled, Shared, recv, spawn_scoped};
use super::sink::ReadBack;
use super::{BUF_ALIGN, CancelHandle, Phase, Progress, Sink, StageError, StageOptions};

/// Read-back chunk size.
const READ_BACK_CHUNK: usize = 4 << 20;

/// The length of the next read-back chunk at `offset` of `total` bytes.
fn chunk_len(offset: u64, total: u64) -> usize {
    usize::try_from(total - offset).map_or(READ_BACK_CHUNK, |l| l.min(READ_BACK_CHUNK))
}

/// Read back, while the writer goes on, each region the writer announces: wait until every
/// write below the announced offset has returned, `fdatasync`, then read the region from the
/// device and digest it. Returns how far it got and the running digest; stops early (with
/// what it has) when staging is aborted or cancelled.
pub(super) fn verify_stage(
    mut handle: Box<dyn ReadBack>,
    shared: &Shared,
    cancel: &CancelHandle,
    checkpoints: &Receiver<u64>,
) -> Result<(u64, Xxh3), StageError> {
    let stop = || shared.aborted() || cancel.is_cancelled();
    let mut digest = Xxh3::new();
    let mut done = 0u64;
    let mut buf: Option<AlignedBuf> = None;
    while let Some(mut upto) = recv(checkpoints, stop) {
        // Catch up in one go when behind: one flush for all the announced regions.
        while let Ok(later) = checkpoints.try_recv() {
            upto = upto.max(later);
        }
        if upto <= done {
            continue;
        }
        if !shared.completed.wait_for(upto, stop) {
            break;
        }
        handle
            .sync_data()
            .map_err(|source| StageError::Sync { source })?;
        let buf = buf.get_or_insert_with(|| AlignedBuf::new(READ_BACK_CHUNK, BUF_ALIGN));
        while done < upto {
            if stop() {
                return Ok((done, digest));
            }
            let chunk = &mut buf[..chunk_len(done, upto)];
            handle
                .read_exact_at(chunk, done)
                .map_err(|source| StageError::ReadBack {
                    offset: done,
                    source,
                })?;
            digest.update(chunk);
            done += chunk.len() as u64;
        }
    }
    Ok((done, digest))
}

/// Read the written range from `start` on back and digest it; the digest runs on a helper
/// thread so that it overlaps the next read.
pub(super) fn read_back<S: Sink + ?Sized>(
    sink: &mut S,
    start: u64,
    mut digest: Xxh3,
    total: u64,
    opts: &StageOptions,
    progress: &dyn Fn(Progress),
) -> Result<u128, StageError> {
    let report = |done| {
        progress(Progress {
            phase: Phase::Verifying,
            done,
            total,
            written: total,
        });
    };
    report(start);
    let (full_tx, full_rx) = mpsc::sync_channel::<Filled<AlignedBuf>>(1);
    let (free_tx, free_rx) = mpsc::sync_channel::<AlignedBuf>(2);
    for _ in 0..2 {
        let _ = free_tx.send(AlignedBuf::new(READ_BACK_CHUNK, BUF_ALIGN));
    }
    let digest = thread::scope(|s| -> Result<u128, StageError> {
        let hasher = spawn_scoped(s, "updog-readback-xxh3", move || {
            while let Ok(buf) = full_rx.recv() {
                digest.update(buf.data());
                let _ = free_tx.send(buf.into_inner());
            }
            digest.digest128()
        })?;
        let mut offset = start;
        let mut last_report = Instant::now();
        while offset < total {
            if opts.cancel.is_cancelled() {
                return Err(StageError::Cancelled);
            }
            let Ok(mut buf) = free_rx.recv() else {
                return Err(StageError::Internal("read-back digest thread ended".into()));
            };
            let len = chunk_len(offset, total);
            sink.read_exact_at(&mut buf[..len], offset)
                .map_err(|source| StageError::ReadBack { offset, source })?;
            if full_tx.send(Filled::new(buf, len)).is_err() {
                return Err(StageError::Internal("read-back digest thread ended".into()));
            }
            offset += len as u64;
            if last_report.elapsed() >= opts.progress_interval {
                report(offset);
                last_report = Instant::now();
            }
        }
        drop(full_tx);
        hasher
            .join()
            .map_err(|_| StageError::Internal("read-back digest thread panicked".into()))
    })?;
    report(total);
    Ok(digest)
}
