//! `updog/examples/embed.rs`, built from the `updog` crate's exports alone: it finds the update
//! of a served repository, and tells an unreachable repository and an untrusted one apart with
//! `UpdateError::kind()`.

use e2e_tests::{Host, RepoSpec, bin_dir, describe};

fn embed(host: &Host, meta: &str, targets: &str, root: &std::path::Path) -> (i32, String) {
    let out = std::process::Command::new(bin_dir().join("embed"))
        .arg(meta)
        .arg(targets)
        .arg(&host.disk_path)
        .arg(root)
        .arg(&host.os_release)
        // A fresh state directory each run: no root trusted earlier.
        .arg(
            tempfile::tempdir_in(host.dir.path())
                .expect("state dir")
                .keep(),
        )
        .output()
        .expect("running the embed example");
    (
        out.status.code().unwrap_or(-1),
        format!("{}{}", String::from_utf8_lossy(&out.stdout), describe(&out)),
    )
}

#[test]
fn the_embed_example_checks_and_classifies_failures() {
    let spec = RepoSpec::two_releases();
    let host = Host::new(&spec, "1.0.0");
    let meta = host.server.url_for(host.repo.metadata_path);
    let targets = host.server.url_for(host.repo.targets_path);
    let (code, text) = embed(&host, &meta, &targets, &host.repo.root_json);
    assert_eq!(code, 0, "{text}");
    assert!(text.starts_with("available: 1.1.0"), "{text}");

    let (code, text) = embed(
        &host,
        "http://127.0.0.1:9/metadata/",
        "http://127.0.0.1:9/targets/",
        &host.repo.root_json,
    );
    assert_eq!(code, 1, "{text}");
    assert!(
        text.starts_with("error kind: Unreachable (retry later)"),
        "{text}"
    );

    // A trusted root that is not there: untrusted, not unreachable.
    let (code, text) = embed(
        &host,
        &meta,
        &targets,
        &host.dir.path().join("no-such-root.json"),
    );
    assert_eq!(code, 1, "{text}");
    assert!(text.starts_with("error kind: Untrusted"), "{text}");
}
