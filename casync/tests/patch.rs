//! Patches of new chunks against an older image's chunks (`casync::patch`): an image rebuilt
//! from chunks in place, patched chunks and the rest from the new image (standing in for the
//! store) is byte-equal to the new image; the patch costs less than the store for the same
//! chunks; zstd's own CLI decodes our frames against the same window; tampered windows, frames
//! and indexes are refused with errors that name the chunk.

use std::process::Command;

use casync::patch::{self, PatchError, PatchIndex};
use casync::{BlobIndex, Chunker};

/// Deterministic bytes that compress somewhat, like a file system of binaries and text.
fn image(seed: u64, len: usize) -> Vec<u8> {
    let mut rng = fastrand::Rng::with_seed(seed);
    let words: Vec<Vec<u8>> = (0..512)
        .map(|_| (0..rng.usize(2..12)).map(|_| rng.u8(b'a'..=b'z')).collect())
        .collect();
    let mut out = Vec::with_capacity(len);
    while out.len() < len {
        if rng.u8(..) < 40 {
            // A stretch of noise (compressed data, keys).
            out.extend((0..rng.usize(64..2048)).map(|_| rng.u8(..)));
        } else {
            out.extend_from_slice(&words[rng.usize(..words.len())]);
            out.push(b' ');
        }
    }
    out.truncate(len);
    out
}

/// The old image with small edits spread over it: bytes changed in place, a stretch inserted,
/// a stretch removed. Most chunks stay, the changed ones differ only a little.
fn edited(old: &[u8], seed: u64) -> Vec<u8> {
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut new = old.to_vec();
    for _ in 0..40 {
        let at = rng.usize(..new.len() - 64);
        for b in &mut new[at..at + rng.usize(1..64)] {
            *b = rng.u8(..);
        }
    }
    let at = rng.usize(..new.len());
    let inserted = image(seed ^ 0xabc, 100_000);
    new.splice(at..at, inserted);
    let at = rng.usize(..new.len() - 50_000);
    new.drain(at..at + 50_000);
    new
}

fn index(data: &[u8]) -> BlobIndex {
    Chunker::casync_default()
        .index(data, |_, _| Ok(()))
        .expect("indexing in memory")
}

fn reader(data: &[u8]) -> impl FnMut(u64, &mut [u8]) -> std::io::Result<()> + '_ {
    move |offset, buf| {
        let start = usize::try_from(offset).unwrap();
        let src = data.get(start..start + buf.len()).ok_or_else(|| {
            std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "past the end")
        })?;
        buf.copy_from_slice(src);
        Ok(())
    }
}

/// The newer image built in `target`: what `apply_stream` writes there, and reads back.
// Closures have no type to name: the two `impl` bounds are the whole of it.
#[allow(clippy::type_complexity)]
fn building(
    target: &std::cell::RefCell<Vec<u8>>,
) -> patch::NewImage<
    impl FnMut(u64, &[u8]) -> std::io::Result<()> + '_,
    impl FnMut(u64, &mut [u8]) -> std::io::Result<()> + '_,
> {
    patch::NewImage {
        write: move |offset, bytes: &[u8]| {
            let at = usize::try_from(offset).unwrap();
            target.borrow_mut()[at..at + bytes.len()].copy_from_slice(bytes);
            Ok(())
        },
        read: move |offset, buf: &mut [u8]| {
            let at = usize::try_from(offset).unwrap();
            buf.copy_from_slice(&target.borrow()[at..at + buf.len()]);
            Ok(())
        },
    }
}

/// The first chunk of an entry's window that its frame needs (not in `zeroed`): the host reads
/// and verifies it.
fn needed_chunk(e: &patch::PatchEntry) -> u64 {
    e.ranges()
        .flat_map(Clone::clone)
        .enumerate()
        .find(|(i, _)| !e.zeroed_at(*i as u64))
        .map(|(_, n)| n)
        .expect("an entry that needs part of its window")
}

struct Made {
    old: Vec<u8>,
    new: Vec<u8>,
    old_index: BlobIndex,
    new_index: BlobIndex,
    patch: PatchIndex,
    data: Vec<u8>,
    stats: patch::PatchStats,
}

fn make(len: usize) -> Made {
    let old = image(1, len);
    let new = edited(&old, 2);
    made(old, new)
}

/// Indexes both images and makes the patch.
fn made(old: Vec<u8>, new: Vec<u8>) -> Made {
    let old_index = index(&old);
    let new_index = index(&new);
    let mut data = Vec::new();
    let (patch, stats) = patch::make_patch(
        &old_index,
        reader(&old),
        &new_index,
        reader(&new),
        &mut data,
    )
    .unwrap();
    Made {
        old,
        new,
        old_index,
        new_index,
        patch,
        data,
        stats,
    }
}

#[test]
fn an_image_rebuilt_from_reused_and_patched_chunks_is_the_new_image_for_fewer_bytes() {
    let m = make(12 << 20);
    let bytes = serde_json::to_vec(&m.patch).unwrap();
    let patch = PatchIndex::parse(&bytes, &m.old_index, &m.new_index).unwrap();
    assert!(m.stats.patched_chunks > 0, "{:?}", m.stats);
    // Where the host's chunks come from: patched, in place in the old image, or the store.
    let mut rebuilt = vec![None::<Vec<u8>>; m.new_index.len()];
    for e in &patch.entries {
        let window = patch::reference_window(e, &m.old_index, reader(&m.old)).unwrap();
        let frame = &m.data[e.offset as usize..(e.offset + e.len) as usize];
        let out = patch::apply_entry(e, frame, &window, &m.new_index).unwrap();
        let base = m.new_index.chunk(e.chunks.start as usize).unwrap().offset;
        for n in e.chunks.clone() {
            let c = m.new_index.chunk(n as usize).unwrap();
            let at = (c.offset - base) as usize;
            rebuilt[n as usize] = Some(out[at..at + c.len as usize].to_vec());
        }
    }
    let old_by_id: std::collections::HashMap<_, _> =
        m.old_index.chunks().map(|c| (c.id, c)).collect();
    let mut from_store = 0u64;
    let mut image = Vec::new();
    for c in m.new_index.chunks() {
        let bytes = match (&rebuilt[c.number], old_by_id.get(&c.id)) {
            (Some(b), _) => b.clone(),
            (None, Some(o)) => m.old[o.offset as usize..o.end() as usize].to_vec(),
            (None, None) => {
                from_store += 1;
                m.new[c.offset as usize..c.end() as usize].to_vec()
            }
        };
        image.extend(bytes);
    }
    assert!(
        image == m.new,
        "the rebuilt image differs from the new image"
    );
    // What goes over the wire: the patch against the store for the same chunks.
    assert_eq!(m.stats.patched_chunks + from_store, m.stats.new_chunks);
    assert!(
        m.stats.patch_bytes * 3 < m.stats.store_bytes,
        "a patch of small edits should cost a fraction of the chunks: {:?}",
        m.stats
    );
    eprintln!(
        "new chunks {} ({} bytes): store {} bytes, patch {} bytes ({:.3}x)",
        m.stats.new_chunks,
        m.stats.new_bytes,
        m.stats.store_bytes,
        m.stats.patch_bytes,
        m.stats.patch_bytes as f64 / m.stats.store_bytes as f64
    );
}

#[test]
fn zstds_own_cli_decodes_each_frame_against_the_same_window() {
    if Command::new("zstd").arg("--version").output().is_err() {
        assert!(std::env::var_os("CI").is_none(), "zstd missing under CI");
        return;
    }
    let m = make(4 << 20);
    let dir = tempfile::tempdir().unwrap();
    assert!(!m.patch.entries.is_empty());
    for (i, e) in m.patch.entries.iter().enumerate() {
        let window = patch::reference_window(e, &m.old_index, reader(&m.old)).unwrap();
        let (w, f, o) = (
            dir.path().join(format!("{i}.window")),
            dir.path().join(format!("{i}.zst")),
            dir.path().join(format!("{i}.out")),
        );
        std::fs::write(&w, &window).unwrap();
        std::fs::write(&f, &m.data[e.offset as usize..(e.offset + e.len) as usize]).unwrap();
        let out = Command::new("zstd")
            .arg("-d")
            .arg("-q")
            .arg("--long=27")
            .arg(format!("--patch-from={}", w.display()))
            .arg(&f)
            .arg("-o")
            .arg(&o)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let first = m.new_index.chunk(e.chunks.start as usize).unwrap();
        let last = m.new_index.chunk(e.chunks.end as usize - 1).unwrap();
        assert!(
            std::fs::read(&o).unwrap() == m.new[first.offset as usize..last.end() as usize],
            "entry {i}: zstd decoded other bytes"
        );
    }
}

#[test]
fn a_running_image_that_is_not_the_release_is_refused_before_any_decoding() {
    let m = make(4 << 20);
    let e = &m.patch.entries[0];
    let mut tampered = m.old.clone();
    let victim = m.old_index.chunk(needed_chunk(e) as usize).unwrap();
    tampered[victim.offset as usize + 7] ^= 0x40;
    match patch::reference_window(e, &m.old_index, reader(&tampered)) {
        Err(PatchError::ReferenceMismatch { number, .. }) => assert_eq!(number, victim.number),
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_damaged_frame_never_yields_a_chunk() {
    let m = make(4 << 20);
    let e = &m.patch.entries[0];
    let window = patch::reference_window(e, &m.old_index, reader(&m.old)).unwrap();
    let mut frame = m.data[e.offset as usize..(e.offset + e.len) as usize].to_vec();
    let mid = frame.len() / 2;
    frame[mid] ^= 0x01;
    let err = patch::apply_entry(e, &frame, &window, &m.new_index).unwrap_err();
    assert!(
        matches!(
            err,
            PatchError::Decode { .. } | PatchError::ChunkMismatch { .. }
        ),
        "{err:?}"
    );
    // The right frame against another window: the output cannot hash right.
    let frame = &m.data[e.offset as usize..(e.offset + e.len) as usize];
    let other = vec![0u8; window.len()];
    assert!(patch::apply_entry(e, frame, &other, &m.new_index).is_err());
}

#[test]
// One-range vectors are the point here: `also` lists ranges.
#[allow(clippy::single_range_in_vec_init)]
fn a_patch_index_that_breaks_the_format_is_refused() {
    let m = make(4 << 20);
    let reparse = |p: &PatchIndex| {
        PatchIndex::parse(&serde_json::to_vec(p).unwrap(), &m.old_index, &m.new_index)
    };
    let malformed = |p: &PatchIndex| matches!(reparse(p), Err(PatchError::Malformed(_)));
    assert!(reparse(&m.patch).is_ok());
    let mut p = m.patch.clone();
    p.format = "other".into();
    assert!(malformed(&p));
    let mut p = m.patch.clone();
    p.entries[0].chunks.end = m.new_index.len() as u64 + 1;
    assert!(malformed(&p));
    let mut p = m.patch.clone();
    p.entries[0].reference = 0..m.old_index.len() as u64 + 1;
    assert!(malformed(&p));
    let mut p = m.patch.clone();
    p.entries[0].reference = 3..3;
    assert!(malformed(&p));
    let mut p = m.patch.clone();
    p.data_len += 1;
    assert!(malformed(&p));
    let mut p = m.patch.clone();
    p.reference_len += 1;
    assert!(malformed(&p));
    // Several window ranges: only in format 2, at most MAX_RANGES, at most MAX_WINDOW in all.
    let mut p = m.patch.clone();
    p.format = patch::PATCH_FORMAT.into();
    p.entries[0].also = vec![0..1];
    assert!(malformed(&p));
    p.format = patch::PATCH_FORMAT_2.into();
    assert!(reparse(&p).is_ok());
    p.entries[0].also = vec![0..1; patch::MAX_RANGES];
    assert!(malformed(&p));
    let whole = 0..m.old_index.len() as u64;
    assert!(m.old_index.total_len() <= patch::MAX_WINDOW);
    p.entries[0].also = vec![whole.clone(), whole];
    assert!(
        m.old_index.total_len() * 2 <= patch::MAX_WINDOW || malformed(&p),
        "a window over the limit was accepted"
    );
    p.entries[0].also = vec![m.old_index.len() as u64..m.old_index.len() as u64 + 1];
    assert!(malformed(&p));
    // Zeroed window chunks: in order, not empty, inside the window.
    let mut p = m.patch.clone();
    let chunks: u64 = p.entries[0].ranges().map(|r| r.end - r.start).sum();
    p.entries[0].zeroed = vec![0..chunks];
    assert!(reparse(&p).is_ok());
    p.entries[0].zeroed = vec![0..chunks + 1];
    assert!(malformed(&p));
    p.entries[0].zeroed = vec![1..1];
    assert!(malformed(&p));
    p.entries[0].zeroed = vec![1..2, 0..1];
    assert!(malformed(&p));
    assert!(matches!(
        PatchIndex::parse(b"{not json", &m.old_index, &m.new_index),
        Err(PatchError::Malformed(_))
    ));
}

#[test]
fn a_patch_streamed_in_once_writes_verified_chunks_and_skips_an_entry_it_cannot_use() {
    let m = make(12 << 20);
    assert!(m.patch.entries.len() >= 2, "{:?}", m.patch.entries);
    // The running image with the first entry's reference damaged: that entry is skipped.
    let mut running = m.old.clone();
    let victim = m
        .old_index
        .chunk(needed_chunk(&m.patch.entries[0]) as usize)
        .unwrap();
    running[victim.offset as usize] ^= 1;
    let target = std::cell::RefCell::new(vec![0u8; m.new.len()]);
    let applied = patch::apply_stream(
        &m.patch,
        &m.old_index,
        &m.new_index,
        &mut m.data.as_slice(),
        reader(&running),
        building(&target),
        &|| false,
    )
    .unwrap();
    assert_eq!(applied.data_read, m.patch.data_len);
    assert_eq!(applied.failed.len(), 1, "{:?}", applied.failed);
    assert_eq!(applied.failed[0].0, m.patch.entries[0].chunks);
    assert!(
        applied.failed[0].1.contains("reference chunk"),
        "{:?}",
        applied.failed
    );
    assert_eq!(applied.written.len(), m.patch.entries.len() - 1);
    let target = target.into_inner();
    for range in &applied.written {
        for n in range.clone() {
            let c = m.new_index.chunk(n as usize).unwrap();
            let at = c.offset as usize..c.end() as usize;
            assert!(target[at.clone()] == m.new[at], "chunk {n}");
        }
    }
    // The skipped entry's chunks were not written.
    let c = m
        .new_index
        .chunk(m.patch.entries[0].chunks.start as usize)
        .unwrap();
    assert!(
        target[c.offset as usize..c.end() as usize]
            .iter()
            .all(|&b| b == 0)
    );

    // A stream that ends early is an error, not a short patch.
    let short = &m.data[..m.data.len() - 1];
    let err = patch::apply_stream(
        &m.patch,
        &m.old_index,
        &m.new_index,
        &mut &short[..],
        reader(&m.old),
        patch::NewImage {
            write: |_, _: &[u8]| Ok(()),
            read: reader(&m.new),
        },
        &|| false,
    )
    .unwrap_err();
    assert!(matches!(err, PatchError::Io { .. }), "{err:?}");
}

/// The old image, and a new one where a megabyte of it moved far away and was edited every few
/// kilobytes, like a rebuilt binary the file system laid out elsewhere: no chunk of the stretch
/// stays the same, so none of its chunks is a known neighbour that would point at its old place.
fn moved() -> Made {
    let old = image(7, 24 << 20);
    let stretch = 16 << 20..17 << 20;
    let mut moved = old[stretch.clone()].to_vec();
    let mut rng = fastrand::Rng::with_seed(8);
    for _ in 0..400 {
        let at = rng.usize(..moved.len() - 4);
        for b in &mut moved[at..at + 4] {
            *b = rng.u8(..);
        }
    }
    let mut new = old.clone();
    new.drain(stretch);
    new.splice(2 << 20..2 << 20, moved);
    made(old, new)
}

/// The moved stretch is patched against where it was: the chunks around it in the new image are
/// the old image's neighbours of another place, and a window taken between them would not hold
/// its content.
#[test]
fn a_moved_and_edited_stretch_is_patched_against_where_it_was() {
    let m = moved();
    let stats = m.stats;
    // The moved megabyte and its edits cost a few kilobytes, not what the store charges.
    assert!(stats.new_bytes >= 1 << 19, "{stats:?}");
    assert!(
        stats.patch_bytes * 8 < stats.store_bytes,
        "the patch is not much smaller than the store: {stats:?}"
    );
    for e in &m.patch.entries {
        let window = patch::reference_window(e, &m.old_index, reader(&m.old)).unwrap();
        let frame = &m.data[e.offset as usize..(e.offset + e.len) as usize];
        let out = patch::apply_entry(e, frame, &window, &m.new_index).unwrap();
        let at = m.new_index.chunk(e.chunks.start as usize).unwrap().offset as usize;
        assert!(
            out == m.new[at..at + out.len()],
            "entry {:?} differs",
            e.chunks
        );
    }
}

/// Streaming a patch whose entries have overlapping windows reads the shared chunks of the
/// running image once, and still refuses a damaged chunk in the overlap for every entry that
/// needs it.
#[test]
fn overlapping_windows_are_read_once_and_still_verified() {
    let m = moved();
    let entries = &m.patch.entries;
    let chunks_of = |e: &patch::PatchEntry| -> std::collections::BTreeSet<u64> {
        e.ranges().flat_map(Clone::clone).collect()
    };
    let (overlap, shared) = entries
        .windows(2)
        .enumerate()
        .find_map(|(i, w)| {
            let both: Vec<u64> = chunks_of(&w[0])
                .intersection(&chunks_of(&w[1]))
                .copied()
                .collect();
            both.first().map(|&n| (i, n))
        })
        .expect("neighbouring entries with overlapping windows");
    let windows: u64 = entries
        .iter()
        .flat_map(patch::PatchEntry::ranges)
        .map(|r| {
            let first = m.old_index.chunk(r.start as usize).unwrap();
            let last = m.old_index.chunk(r.end as usize - 1).unwrap();
            last.end() - first.offset
        })
        .sum();
    let apply = |running: &[u8]| {
        let read = std::sync::atomic::AtomicU64::new(0);
        let target = std::cell::RefCell::new(vec![0u8; m.new.len()]);
        let mut source = reader(running);
        let applied = patch::apply_stream(
            &m.patch,
            &m.old_index,
            &m.new_index,
            &mut m.data.as_slice(),
            |offset, buf| {
                read.fetch_add(buf.len() as u64, std::sync::atomic::Ordering::Relaxed);
                source(offset, buf)
            },
            building(&target),
            &|| false,
        )
        .unwrap();
        (applied, read.into_inner(), target.into_inner())
    };
    let (applied, read, target) = apply(&m.old);
    assert!(applied.failed.is_empty(), "{:?}", applied.failed);
    assert!(
        read < windows,
        "read {read} bytes for {windows} bytes of windows"
    );
    for range in &applied.written {
        for n in range.clone() {
            let c = m.new_index.chunk(n as usize).unwrap();
            let at = c.offset as usize..c.end() as usize;
            assert!(target[at.clone()] == m.new[at], "chunk {n}");
        }
    }
    // A chunk both windows hold, damaged on the running image: neither entry uses it.
    let (a, b) = (&entries[overlap], &entries[overlap + 1]);
    let c = m.old_index.chunk(shared as usize).unwrap();
    let mut running = m.old.clone();
    running[c.offset as usize + 7] ^= 0x40;
    let (applied, _, _) = apply(&running);
    let failed: Vec<_> = applied.failed.iter().map(|(r, _)| r.clone()).collect();
    assert!(
        failed.contains(&a.chunks) && failed.contains(&b.chunks),
        "{failed:?}"
    );
}

/// A run of new bytes made of two stretches from places of the old image too far apart for one
/// window (a file assembled from two older ones) is patched against both places, in a format-2
/// index that round-trips.
#[test]
fn a_run_from_two_distant_places_is_patched_against_both() {
    let old = image(9, 32 << 20);
    let mut rng = fastrand::Rng::with_seed(10);
    let mut run = Vec::new();
    for place in [4usize << 20, 24 << 20] {
        let mut stretch = old[place..place + (512 << 10)].to_vec();
        for _ in 0..200 {
            let at = rng.usize(..stretch.len() - 4);
            for b in &mut stretch[at..at + 4] {
                *b = rng.u8(..);
            }
        }
        run.extend(stretch);
    }
    let mut new = old.clone();
    new.splice(2 << 20..2 << 20, run);
    let (old_index, new_index) = (index(&old), index(&new));
    let mut data = Vec::new();
    let (made, stats) = patch::make_patch(
        &old_index,
        reader(&old),
        &new_index,
        reader(&new),
        &mut data,
    )
    .unwrap();
    assert!(stats.new_bytes >= 1 << 19, "{stats:?}");
    assert!(
        stats.patch_bytes * 8 < stats.store_bytes,
        "the patch is not much smaller than the store: {stats:?}"
    );
    assert!(
        made.entries.iter().any(|e| !e.also.is_empty()),
        "{:?}",
        made.entries
    );
    assert_eq!(made.format, patch::PATCH_FORMAT_2);
    let parsed =
        PatchIndex::parse(&serde_json::to_vec(&made).unwrap(), &old_index, &new_index).unwrap();
    assert_eq!(parsed, made);
    let applied = patch::apply_stream(
        &parsed,
        &old_index,
        &new_index,
        &mut data.as_slice(),
        reader(&old),
        patch::NewImage {
            write: |offset, bytes: &[u8]| {
                let at = offset as usize;
                assert!(
                    bytes == &new[at..at + bytes.len()],
                    "bytes at {offset} differ"
                );
                Ok(())
            },
            read: reader(&new),
        },
        &|| false,
    )
    .unwrap();
    assert!(applied.failed.is_empty(), "{:?}", applied.failed);
    assert_eq!(applied.chunks(), stats.patched_chunks);
}

/// Window chunks an entry's frame does not need (`PatchEntry::zeroed`) are neither read from the
/// running image nor trusted: damaged there, they change nothing; and a list that claims a
/// needed chunk costs that entry alone, which is then left to the store.
#[test]
// One-range vectors are the point here: `zeroed` lists ranges.
#[allow(clippy::single_range_in_vec_init)]
fn window_chunks_a_frame_does_not_need_are_not_read_and_a_false_claim_costs_one_entry() {
    let m = moved();
    let zeroed_somewhere = |n: u64| {
        m.patch.entries.iter().any(|e| {
            e.ranges()
                .flat_map(Clone::clone)
                .enumerate()
                .any(|(i, c)| c == n && e.zeroed_at(i as u64))
        })
    };
    let needed_somewhere = |n: u64| {
        m.patch.entries.iter().any(|e| {
            e.ranges()
                .flat_map(Clone::clone)
                .enumerate()
                .any(|(i, c)| c == n && !e.zeroed_at(i as u64))
        })
    };
    // Chunks no entry needs but some window holds.
    let unneeded: Vec<u64> = (0..m.old_index.len() as u64)
        .filter(|&n| zeroed_somewhere(n) && !needed_somewhere(n))
        .collect();
    assert!(
        m.stats.zeroed_bytes > 0 && !unneeded.is_empty(),
        "no window chunk was found unneeded: {:?}",
        m.stats
    );
    let apply = |running: &[u8], p: &PatchIndex| {
        let target = std::cell::RefCell::new(vec![0u8; m.new.len()]);
        let applied = patch::apply_stream(
            p,
            &m.old_index,
            &m.new_index,
            &mut m.data.as_slice(),
            reader(running),
            building(&target),
            &|| false,
        )
        .unwrap();
        (applied, target.into_inner())
    };
    let check = |applied: &patch::Applied, target: &[u8]| {
        for n in applied.written.iter().flat_map(Clone::clone) {
            let c = m.new_index.chunk(n as usize).unwrap();
            let at = c.offset as usize..c.end() as usize;
            assert!(target[at.clone()] == m.new[at], "chunk {n}");
        }
    };
    // Damage every unneeded chunk on the running image: every entry still applies.
    let mut running = m.old.clone();
    for &n in &unneeded {
        let c = m.old_index.chunk(n as usize).unwrap();
        running[c.offset as usize..c.end() as usize].fill(0x5a);
    }
    let (applied, target) = apply(&running, &m.patch);
    assert!(applied.failed.is_empty(), "{:?}", applied.failed);
    assert_eq!(applied.chunks(), m.stats.patched_chunks);
    check(&applied, &target);
    // A publisher that claims an entry needs none of its window: that entry fails on its
    // output (never written), every other entry applies.
    let mut lying = m.patch.clone();
    let victim = lying
        .entries
        .iter()
        .position(|e| {
            let chunks: u64 = e.ranges().map(|r| r.end - r.start).sum();
            e.zeroed.iter().map(|z| z.end - z.start).sum::<u64>() < chunks
        })
        .expect("an entry that needs part of its window");
    let chunks: u64 = lying.entries[victim]
        .ranges()
        .map(|r| r.end - r.start)
        .sum();
    lying.entries[victim].zeroed = vec![0..chunks];
    let (applied, target) = apply(&m.old, &lying);
    assert_eq!(applied.failed.len(), 1, "{:?}", applied.failed);
    assert_eq!(applied.failed[0].0, lying.entries[victim].chunks);
    assert!(
        !applied.written.contains(&lying.entries[victim].chunks),
        "the entry was written"
    );
    assert_eq!(
        applied.chunks(),
        m.stats.patched_chunks
            - (lying.entries[victim].chunks.end - lying.entries[victim].chunks.start)
    );
    check(&applied, &target);
}

/// A new image that holds the same new content twice, far apart (a file and its copy in an
/// initrd, say), and nothing like it in the old image: the second copy is patched against the
/// first, read back from the partition being written and verified (format 3). When the entry
/// that wrote the first copy fails, the entry that reads it back fails too, never writing
/// anything wrong.
#[test]
fn a_run_that_repeats_new_content_is_patched_against_what_an_earlier_entry_wrote() {
    let old = image(21, 12 << 20);
    let fresh = image(22, 600 << 10);
    let mut copy = fresh.clone();
    let mut rng = fastrand::Rng::with_seed(23);
    for _ in 0..20 {
        let at = rng.usize(..copy.len() - 4);
        copy[at..at + 4].copy_from_slice(b"EDIT");
    }
    let mut new = old.clone();
    new.splice(9 << 20..9 << 20, copy);
    new.splice(1 << 20..1 << 20, fresh);
    let Made {
        old,
        new,
        old_index,
        new_index,
        patch: made,
        data,
        stats,
    } = made(old, new);
    assert_eq!(made.format, patch::PATCH_FORMAT_3, "{:?}", made.entries);
    let repeating = made
        .entries
        .iter()
        .position(|e| !e.produced.is_empty())
        .expect("an entry that takes from what an earlier one produced");
    let e = &made.entries[repeating];
    assert!(e.produced.iter().all(|r| r.end <= e.chunks.start), "{e:?}");
    // The entries that wrote what it takes; the copy costs a small part of what they did.
    let sources: Vec<&patch::PatchEntry> = made
        .entries
        .iter()
        .filter(|f| {
            e.produced
                .iter()
                .any(|r| r.start < f.chunks.end && f.chunks.start < r.end)
        })
        .collect();
    let first_len: u64 = sources.iter().map(|f| f.len).sum();
    assert!(e.len * 4 < first_len, "{} against {first_len}", e.len);
    let parsed =
        PatchIndex::parse(&serde_json::to_vec(&made).unwrap(), &old_index, &new_index).unwrap();
    let apply = |running: &[u8]| {
        let target = std::cell::RefCell::new(vec![0u8; new.len()]);
        let applied = patch::apply_stream(
            &parsed,
            &old_index,
            &new_index,
            &mut data.as_slice(),
            reader(running),
            building(&target),
            &|| false,
        )
        .unwrap();
        (applied, target.into_inner())
    };
    let (applied, target) = apply(&old);
    assert!(applied.failed.is_empty(), "{:?}", applied.failed);
    assert_eq!(applied.chunks(), stats.patched_chunks);
    for n in applied.written.iter().flat_map(Clone::clone) {
        let c = new_index.chunk(n as usize).unwrap();
        let at = c.offset as usize..c.end() as usize;
        assert!(target[at.clone()] == new[at], "chunk {n}");
    }
    // Damage what the entries that wrote the first copy need from the running image: they
    // fail, and so does the one that would read their chunks back.
    let mut running = old.clone();
    for f in &sources {
        for n in f.ranges().flat_map(Clone::clone) {
            let c = old_index.chunk(n as usize).unwrap();
            running[c.offset as usize] ^= 0x80;
        }
    }
    let (applied, target) = apply(&running);
    let failed: Vec<_> = applied.failed.iter().map(|(c, _)| c.clone()).collect();
    assert!(failed.contains(&e.chunks), "{:?}", applied.failed);
    let why = &applied.failed[failed.iter().position(|c| *c == e.chunks).unwrap()].1;
    assert!(why.contains("read back"), "{why}");
    for n in applied.written.iter().flat_map(Clone::clone) {
        let c = new_index.chunk(n as usize).unwrap();
        let at = c.offset as usize..c.end() as usize;
        assert!(target[at.clone()] == new[at], "chunk {n}");
    }
    // A partition that gives back other bytes than were written (one bit, in a chunk the
    // repeating entry reads back and that is not zeroed for it): the check of what was read
    // back catches it, the entry fails and leaves its chunks to the store.
    let produced: Vec<u64> = e.produced.iter().flat_map(Clone::clone).collect();
    let before: u64 = e.ranges().map(|r| r.end - r.start).sum();
    let flipped = produced
        .iter()
        .enumerate()
        .find(|(i, _)| !e.zeroed_at(before + *i as u64))
        .map(|(_, &n)| new_index.chunk(n as usize).unwrap())
        .expect("a produced chunk the frame needs");
    let target = std::cell::RefCell::new(vec![0u8; new.len()]);
    let mut image = building(&target);
    let forgetful = patch::NewImage {
        write: &mut image.write,
        read: |offset: u64, buf: &mut [u8]| {
            (image.read)(offset, buf)?;
            if offset == flipped.offset {
                buf[buf.len() / 2] ^= 1;
            }
            Ok(())
        },
    };
    let applied = patch::apply_stream(
        &parsed,
        &old_index,
        &new_index,
        &mut data.as_slice(),
        reader(&old),
        forgetful,
        &|| false,
    )
    .unwrap();
    assert_eq!(applied.failed.len(), 1, "{:?}", applied.failed);
    assert_eq!(applied.failed[0].0, e.chunks);
    assert!(
        applied.failed[0].1.contains("read back"),
        "{:?}",
        applied.failed
    );
    drop(image);
    let target = target.into_inner();
    for n in applied.written.iter().flat_map(Clone::clone) {
        let c = new_index.chunk(n as usize).unwrap();
        let at = c.offset as usize..c.end() as usize;
        assert!(target[at.clone()] == new[at], "chunk {n}");
    }
    // The parser: produced ranges only in format 3, and only before the entry's chunks.
    let reparse =
        |p: &PatchIndex| PatchIndex::parse(&serde_json::to_vec(p).unwrap(), &old_index, &new_index);
    let mut p = made.clone();
    p.format = patch::PATCH_FORMAT_2.into();
    assert!(matches!(reparse(&p), Err(PatchError::Malformed(_))));
    let mut p = made.clone();
    p.entries[repeating].produced = vec![e.chunks.clone()];
    assert!(matches!(reparse(&p), Err(PatchError::Malformed(_))));
}
