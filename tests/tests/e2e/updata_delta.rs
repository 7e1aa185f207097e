//! `updata make-index`, `check-index` and `set-delta`, run as a publisher would: the index and
//! store it writes check out, an index made by Debian's `casync make` is accepted (and is
//! byte-identical to ours), a damaged index or store is refused with the problem named, and the
//! manifest gets the `delta` field.

use std::fs;
use std::process::{Command, Output};

use e2e_tests::{bin_dir, describe};

fn updata(args: &[&std::ffi::OsStr]) -> Output {
    Command::new(bin_dir().join("updata"))
        .args(args)
        .output()
        .expect("run updata")
}

fn os(s: &str) -> &std::ffi::OsStr {
    std::ffi::OsStr::new(s)
}

/// Whether mkfs.ext4 is here to build images (it must be under CI).
fn have_mkfs() -> bool {
    let here = fixtures::ext4::have_mkfs();
    assert!(
        here || std::env::var("CI").as_deref() != Ok("true"),
        "mkfs.ext4 missing under CI=true"
    );
    here
}

#[test]
fn make_check_and_register_an_index() {
    if !have_mkfs() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    fixtures::ext4::write_tree(&d.join("tree"), &fixtures::ext4::release_tree(1, 15)).unwrap();
    let image = d.join("root.img");
    fixtures::ext4::build_image(&d.join("tree"), 6 << 20, &image).unwrap();
    let (index, store) = (d.join("root.caibx"), d.join("chunks"));

    let out = updata(&[
        os("make-index"),
        image.as_os_str(),
        os("--index"),
        index.as_os_str(),
        os("--store"),
        store.as_os_str(),
    ]);
    assert!(out.status.success(), "{}", describe(&out));
    let out = updata(&[
        os("check-index"),
        index.as_os_str(),
        os("--image"),
        image.as_os_str(),
        os("--store"),
        store.as_os_str(),
    ]);
    assert!(out.status.success(), "{}", describe(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("valid casync blob index"));

    // casync's own index of the same image is accepted, and is the same file.
    if Command::new("casync").arg("--version").output().is_ok() {
        let theirs = d.join("casync.caibx");
        let st = Command::new("casync")
            .arg("make")
            .arg(format!("--store={}", d.join("casync-store").display()))
            .arg(&theirs)
            .arg(&image)
            .status()
            .unwrap();
        assert!(st.success());
        let out = updata(&[
            os("check-index"),
            theirs.as_os_str(),
            os("--image"),
            image.as_os_str(),
            os("--store"),
            d.join("casync-store").as_os_str(),
        ]);
        assert!(out.status.success(), "{}", describe(&out));
        assert!(fs::read(&theirs).unwrap() == fs::read(&index).unwrap());
    } else {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "casync missing under CI=true"
        );
    }

    // --chunk-size: the index records the sizes, is cut finer, and equals casync's with the same
    // --chunk-size (casync's spelling works for both).
    let (small, small_store) = (d.join("small.caibx"), d.join("small-chunks"));
    let out = updata(&[
        os("make-index"),
        image.as_os_str(),
        os("--index"),
        small.as_os_str(),
        os("--store"),
        small_store.as_os_str(),
        os("--chunk-size"),
        os("4K:16K:64K"),
    ]);
    assert!(out.status.success(), "{}", describe(&out));
    let default_index = updog::delta::BlobIndex::parse(&fs::read(&index).unwrap()).unwrap();
    let small_index = updog::delta::BlobIndex::parse(&fs::read(&small).unwrap()).unwrap();
    assert_eq!(small_index.sizes().to_string(), "4K:16K:64K");
    assert_eq!(default_index.sizes().to_string(), "16K:64K:256K");
    assert!(small_index.len() > default_index.len() * 2);
    let out = updata(&[
        os("check-index"),
        small.as_os_str(),
        os("--image"),
        image.as_os_str(),
        os("--store"),
        small_store.as_os_str(),
    ]);
    assert!(out.status.success(), "{}", describe(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("chunks of 4K:16K:64K"),
        "{}",
        describe(&out)
    );
    if Command::new("casync").arg("--version").output().is_ok() {
        let theirs = d.join("casync-small.caibx");
        let st = Command::new("casync")
            .arg("make")
            .arg("--chunk-size=4K:16K:64K")
            .arg(format!("--store={}", d.join("casync-store").display()))
            .arg(&theirs)
            .arg(&image)
            .status()
            .unwrap();
        assert!(st.success());
        assert!(fs::read(&theirs).unwrap() == fs::read(&small).unwrap());
    }
    // Sizes the chunker cannot cut with, or a typo, are refused with the rule named.
    for (bad, says) in [
        ("64K:16K:256K", "min <= avg <= max"),
        ("4K:16K", "expected MIN:AVG:MAX"),
    ] {
        let out = updata(&[
            os("make-index"),
            image.as_os_str(),
            os("--index"),
            d.join("refused.caibx").as_os_str(),
            os("--store"),
            small_store.as_os_str(),
            os("--chunk-size"),
            os(bad),
        ]);
        assert_eq!(out.status.code(), Some(2), "{}", describe(&out));
        assert!(describe(&out).contains(says), "{}", describe(&out));
        assert!(!d.join("refused.caibx").exists());
    }

    // A damaged index: the magic value is named.
    let mut bytes = fs::read(&index).unwrap();
    bytes[8] ^= 1;
    let bad = d.join("bad.caibx");
    fs::write(&bad, &bytes).unwrap();
    let out = updata(&[os("check-index"), bad.as_os_str()]);
    assert!(!out.status.success());
    assert!(
        describe(&out).contains("index header type"),
        "{}",
        describe(&out)
    );

    // A store missing a chunk: the chunk file is named.
    let victim = fs::read_dir(&store)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    fs::remove_dir_all(&victim).unwrap();
    let out = updata(&[
        os("check-index"),
        index.as_os_str(),
        os("--store"),
        store.as_os_str(),
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains(&*victim.to_string_lossy()));

    // set-delta names the index in the manifest.
    let manifest = d.join("manifest.json");
    for args in [
        vec!["init", manifest.to_str().unwrap()],
        vec![
            "add-update",
            manifest.to_str().unwrap(),
            "--variant",
            "demo",
            "--arch",
            "x86_64",
            "--version",
            "1.2.0",
        ],
        vec![
            "set-delta",
            manifest.to_str().unwrap(),
            "-l",
            "demo",
            "-a",
            "x86_64",
            "-v",
            "1.2.0",
            "--store",
            "chunks/",
            "--index",
            "root=root.caibx",
        ],
    ] {
        let args: Vec<&std::ffi::OsStr> = args.iter().map(|a| os(a)).collect();
        let out = updata(&args);
        assert!(out.status.success(), "{args:?}: {}", describe(&out));
    }
    let m = manifest::Manifest::from_slice(&fs::read(&manifest).unwrap()).unwrap();
    let delta = m.updates[0].delta.as_ref().expect("delta set");
    assert_eq!(delta.indexes["root"], "root.caibx");
    assert_eq!(delta.store, "chunks/");
    let out = updata(&[
        os("set-delta"),
        manifest.as_os_str(),
        os("-l"),
        os("demo"),
        os("-a"),
        os("x86_64"),
        os("-v"),
        os("1.2.0"),
        os("--store"),
        os("x"),
        os("--index"),
        os("kernel=k"),
    ]);
    assert!(!out.status.success());
}

/// `updata make-patch` and `add-patch` (issue 22), as a publisher runs them on two ext4 releases:
/// the earlier release indexed by Debian's `casync make` when installed (an independent index),
/// the patch checked to apply before it is written and cheaper than the chunk store for the same
/// chunks; an earlier image its index does not describe is refused with the chunk named; the
/// manifest names the patch, once per (from, image), only beside an index of that image.
#[test]
fn make_a_patch_against_an_earlier_release_and_name_it() {
    if !have_mkfs() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let s = |p: &std::path::Path| p.to_str().unwrap().to_string();
    let run = |args: &[String]| {
        let args: Vec<&std::ffi::OsStr> = args.iter().map(|a| os(a)).collect();
        updata(&args)
    };
    for v in [1, 2] {
        let tree = d.join(format!("tree{v}"));
        fixtures::ext4::write_tree(&tree, &fixtures::ext4::release_tree(v, 40)).unwrap();
        fixtures::ext4::build_image(&tree, 12 << 20, &d.join(format!("root{v}.img"))).unwrap();
    }
    let casync_here = Command::new("casync").arg("--version").output().is_ok();
    if casync_here {
        let st = Command::new("casync")
            .arg("make")
            .arg(format!("--store={}", d.join("casync-store").display()))
            .arg(d.join("root1.caibx"))
            .arg(d.join("root1.img"))
            .status()
            .unwrap();
        assert!(st.success());
    } else {
        assert!(std::env::var("CI").is_err(), "casync missing under CI");
        let out = run(&[
            "make-index".into(),
            s(&d.join("root1.img")),
            "--index".into(),
            s(&d.join("root1.caibx")),
            "--store".into(),
            s(&d.join("chunks")),
        ]);
        assert!(out.status.success(), "{}", describe(&out));
    }
    let out = run(&[
        "make-index".into(),
        s(&d.join("root2.img")),
        "--index".into(),
        s(&d.join("root2.caibx")),
        "--store".into(),
        s(&d.join("chunks")),
    ]);
    assert!(out.status.success(), "{}", describe(&out));

    let make = |from_image: &std::path::Path| {
        run(&[
            "make-patch".into(),
            "--from-image".into(),
            s(from_image),
            "--from-index".into(),
            s(&d.join("root1.caibx")),
            "--image".into(),
            s(&d.join("root2.img")),
            "--index".into(),
            s(&d.join("root2.caibx")),
            "--out".into(),
            s(&d.join("root.patch")),
            "--patch-index".into(),
            s(&d.join("root.patch.json")),
        ])
    };
    let out = make(&d.join("root1.img"));
    assert!(out.status.success(), "{}", describe(&out));
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    // "... in P bytes, against S bytes from the chunk store (R x)"
    let number_before = |marker: &str| -> u64 {
        let head = &text[..text.find(marker).unwrap_or_else(|| panic!("{text}"))];
        head.rsplit(' ').next().unwrap().parse().unwrap()
    };
    let (patch, store) = (
        number_before(" bytes, against"),
        number_before(" bytes from the chunk store"),
    );
    assert!(patch > 0 && patch < store, "{text}");
    let index: serde_json::Value =
        serde_json::from_slice(&fs::read(d.join("root.patch.json")).unwrap()).unwrap();
    assert_eq!(
        index["data_len"].as_u64(),
        Some(fs::metadata(d.join("root.patch")).unwrap().len())
    );
    eprintln!("{text}");

    // An earlier image that its index does not describe (one byte changed): refused, and the
    // patch files already written are left as they were.
    let before = fs::read(d.join("root.patch")).unwrap();
    let mut damaged = fs::read(d.join("root1.img")).unwrap();
    let entry = &index["entries"][0];
    let first_ref = entry["reference"]["start"].as_u64().unwrap();
    let offsets = casync_offsets(&fs::read(d.join("root1.caibx")).unwrap());
    let at = offsets[first_ref as usize] as usize + 100;
    damaged[at] ^= 0x5a;
    fs::write(d.join("damaged.img"), &damaged).unwrap();
    let out = make(&d.join("damaged.img"));
    assert!(!out.status.success());
    assert!(
        describe(&out).contains(&format!("reference chunk {first_ref} ")),
        "{}",
        describe(&out)
    );
    assert!(fs::read(d.join("root.patch")).unwrap() == before);

    // The manifest: no patch before set-delta; then one per (from, image).
    let manifest = s(&d.join("manifest.json"));
    let id = |extra: &[&str]| -> Vec<String> {
        let mut v: Vec<String> = vec![
            manifest.clone(),
            "--variant".into(),
            "demo".into(),
            "--arch".into(),
            "x86_64".into(),
            "--version".into(),
            "1.2.0".into(),
        ];
        v.extend(extra.iter().map(ToString::to_string));
        v
    };
    let add_patch = |from: &str, data: &str| {
        let mut args = vec!["add-patch".to_string()];
        args.extend(id(&[
            "--from",
            from,
            "--image",
            "root",
            "--patch-index",
            "root-1.1.0.patch.json",
            "--patch-data",
            data,
        ]));
        run(&args)
    };
    assert!(run(&["init".into(), manifest.clone()]).status.success());
    let mut add = vec!["add-update".to_string()];
    add.extend(id(&[]));
    assert!(run(&add).status.success());
    let out = add_patch("1.1.0", "root-1.1.0.patch");
    assert!(
        describe(&out).contains("run set-delta first"),
        "{}",
        describe(&out)
    );
    let mut set = vec!["set-delta".to_string()];
    set.extend(id(&["--store", "chunks/", "--index", "root=root.caibx"]));
    assert!(run(&set).status.success());
    assert!(add_patch("1.1.0", "old-name.patch").status.success());
    assert!(add_patch("1.1.0", "root-1.1.0.patch").status.success());
    assert!(
        !add_patch("1.2.0", "x").status.success(),
        "a patch from itself"
    );
    // set-delta again keeps the patch.
    assert!(run(&set).status.success());
    let m = manifest::Manifest::from_slice(&fs::read(&manifest).unwrap()).unwrap();
    let patches = &m.updates[0].delta.as_ref().unwrap().patches;
    assert_eq!(patches.len(), 1, "{patches:?}");
    assert_eq!(
        (
            patches[0].from.to_string().as_str(),
            patches[0].image.as_str(),
            patches[0].data.as_str()
        ),
        ("1.1.0", "root", "root-1.1.0.patch")
    );
}

/// Chunk start offsets of a casync index: each item's end offset (8 bytes LE) after the 48-byte
/// index header and 16-byte table header; 40 bytes per item.
fn casync_offsets(index: &[u8]) -> Vec<u64> {
    let mut offsets = vec![0];
    let mut at = 64;
    while at + 40 <= index.len() {
        let end = u64::from_le_bytes(index[at..at + 8].try_into().unwrap());
        if end == 0 {
            break; // the tail marker
        }
        offsets.push(end);
        at += 40;
    }
    offsets
}
