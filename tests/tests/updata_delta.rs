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

#[test]
fn make_check_and_register_an_index() {
    if !fixtures::ext4::have_mkfs() {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "mkfs.ext4 missing under CI=true"
        );
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
