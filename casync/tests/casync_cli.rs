//! Our casync pieces against Debian's `casync` on real ext4 images: the same chunk boundaries and
//! ids (our index is byte-identical to `casync make`'s, with the default sizes and with
//! `--chunk-size=4K:16K:64K`), `casync extract` rebuilds the image from our index and store, and
//! we read and verify every chunk of casync's store.
//!
//! Needs `casync` and `mkfs.ext4`; without them the test is skipped, except under `CI=true`
//! where it fails (CI installs both).

use std::fs;
use std::path::Path;
use std::process::Command;

use casync::store::{StoreWriter, chunk_path, decode_chunk};
use casync::{BlobIndex, ChunkSizes, Chunker};

fn tools_present() -> bool {
    let casync = Command::new("casync").arg("--version").output().is_ok();
    let ok = casync && fixtures::ext4::have_mkfs();
    if !ok {
        fixtures::gate::skip("casync or mkfs.ext4 is not installed");
    }
    ok
}

fn run(cmd: &mut Command) {
    let out = cmd.output().expect("run tool");
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Indexes `image` with our chunker into `ours` (+ store) and with casync, both with `sizes`
/// (given to casync as `--chunk-size`), and compares.
fn compare(dir: &Path, image: &Path, sizes: ChunkSizes) {
    let store = StoreWriter::new(dir.join("our-store")).unwrap();
    let ours = Chunker::new(sizes)
        .unwrap()
        .index(fs::File::open(image).unwrap(), |id, chunk| {
            store.put(id, chunk).map(|_| ())
        })
        .unwrap();
    let our_index = dir.join("ours.caibx");
    fs::write(&our_index, ours.to_bytes()).unwrap();

    let casync_index = dir.join("casync.caibx");
    run(Command::new("casync")
        .arg("make")
        .arg(format!("--chunk-size={sizes}"))
        .arg(format!("--store={}", dir.join("casync-store").display()))
        .arg(&casync_index)
        .arg(image));
    let theirs_bytes = fs::read(&casync_index).unwrap();
    let theirs = BlobIndex::parse(&theirs_bytes).expect("casync's index parses");
    assert_eq!(theirs.total_len(), fs::metadata(image).unwrap().len());
    assert_eq!(
        theirs.sizes(),
        sizes,
        "casync's index records the sizes asked for"
    );
    assert!(
        ours.len() > 10,
        "a real image has many chunks ({})",
        ours.len()
    );
    let differ = ours.chunks().zip(theirs.chunks()).position(|(a, b)| a != b);
    assert_eq!(differ, None, "first differing chunk");
    assert_eq!(ours.len(), theirs.len());
    assert_eq!(ours.to_bytes(), theirs_bytes, "index files byte-identical");

    // casync rebuilds the image from our index and our store.
    let extracted = dir.join("extracted.img");
    run(Command::new("casync")
        .arg("extract")
        .arg(format!("--store={}", store.root().display()))
        .arg(&our_index)
        .arg(&extracted));
    assert!(
        fs::read(&extracted).unwrap() == fs::read(image).unwrap(),
        "casync extract of our store"
    );

    // We decode and verify every chunk casync stored.
    let mut out = Vec::new();
    for chunk in theirs.chunks() {
        let file = fs::read(dir.join("casync-store").join(chunk_path(&chunk.id))).unwrap();
        decode_chunk(&chunk, &file, &mut out).unwrap();
    }
}

#[test]
fn chunker_matches_casync_make_on_ext4_images() {
    if !tools_present() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    for version in [1, 2] {
        let tree = dir.path().join(format!("tree{version}"));
        fixtures::ext4::write_tree(&tree, &fixtures::ext4::release_tree(version, 30)).unwrap();
        let image = dir.path().join(format!("v{version}.img"));
        fixtures::ext4::build_image(&tree, 12 << 20, &image).unwrap();
        let small = "4K:16K:64K".parse().unwrap();
        for (name, sizes) in [("default", ChunkSizes::CASYNC_DEFAULT), ("small", small)] {
            let sub = dir.path().join(format!("cmp{version}-{name}"));
            fs::create_dir_all(&sub).unwrap();
            compare(&sub, &image, sizes);
        }
    }
}

#[test]
fn chunker_matches_casync_make_on_odd_blobs() {
    if !tools_present() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    // Noise, a long zero run, more noise, and a short tail: every kind of cut.
    let mut rng = fastrand::Rng::with_seed(11);
    let mut blob: Vec<u8> = (0..900_000).map(|_| rng.u8(..)).collect();
    blob.extend(std::iter::repeat_n(0u8, 1_300_000));
    blob.extend((0..300_123).map(|_| rng.u8(..)));
    let image = dir.path().join("odd.img");
    fs::write(&image, &blob).unwrap();
    compare(dir.path(), &image, ChunkSizes::CASYNC_DEFAULT);
}

#[test]
fn ext4_images_are_reproducible() {
    if !fixtures::ext4::have_mkfs() {
        fixtures::gate::skip("mkfs.ext4 is not installed");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let files = fixtures::ext4::release_tree(1, 10);
    let mut images = Vec::new();
    for n in 0..2 {
        let tree = dir.path().join(format!("t{n}"));
        fixtures::ext4::write_tree(&tree, &files).unwrap();
        let image = dir.path().join(format!("{n}.img"));
        fixtures::ext4::build_image(&tree, 4 << 20, &image).unwrap();
        images.push(fs::read(&image).unwrap());
    }
    assert!(images[0] == images[1], "two builds of one tree differ");
}
