//! What a distribution (or `cargo install`) takes from the tree: the man pages and completions
//! each binary writes from its clap definition cover every subcommand its `--help` lists, and
//! the crates that hold the published binaries carry complete metadata.

use std::path::Path;
use std::process::Command;

use e2e_tests::{bin_dir, describe};

/// The subcommands `BINARY --help` lists (the indented names under "Commands:").
fn help_subcommands(binary: &Path) -> Vec<String> {
    let out = Command::new(binary).arg("--help").output().unwrap();
    assert!(out.status.success(), "{}", describe(&out));
    let text = String::from_utf8(out.stdout).unwrap();
    text.lines()
        .skip_while(|l| !l.starts_with("Commands:"))
        .skip(1)
        .take_while(|l| l.starts_with("  "))
        // A name is indented by two; a wrapped description further.
        .filter(|l| !l.starts_with("   "))
        .filter_map(|l| l.split_whitespace().next())
        .filter(|name| *name != "help")
        .map(str::to_string)
        .collect()
}

#[test]
fn man_pages_and_completions_cover_every_subcommand_in_help() {
    // bin_dir builds all three (with the harness's features: a second build here without them
    // would replace the binaries other tests are running).
    for name in ["updog", "signpost", "updata"] {
        let binary = bin_dir().join(name);
        let dir = tempfile::tempdir().unwrap();
        let out = Command::new(&binary)
            .arg("__generate-docs")
            .arg(dir.path())
            .output()
            .unwrap();
        assert!(out.status.success(), "{name}: {}", describe(&out));
        let subcommands = help_subcommands(&binary);
        assert!(subcommands.len() >= 3, "{name}: {subcommands:?}");
        let main_page = std::fs::read_to_string(dir.path().join(format!("man/{name}.1"))).unwrap();
        assert!(
            main_page.starts_with(".ie \\n(.g .ds Aq") || main_page.contains(".TH"),
            "{name}.1 is not roff"
        );
        assert!(
            main_page.contains("log\\-level"),
            "{name}.1 lacks --log-level"
        );
        let bash =
            std::fs::read_to_string(dir.path().join(format!("completions/{name}.bash"))).unwrap();
        for sub in &subcommands {
            let page = dir.path().join(format!("man/{name}-{sub}.1"));
            assert!(page.is_file(), "no man page for `{name} {sub}`");
            assert!(
                main_page.contains(&sub.replace('-', "\\-")),
                "{name}.1 does not list {sub}"
            );
            assert!(
                bash.contains(sub.as_str()),
                "bash completion of {name} lacks {sub}"
            );
        }
        for f in [
            format!("completions/_{name}"),
            format!("completions/{name}.fish"),
        ] {
            let text = std::fs::read_to_string(dir.path().join(&f)).unwrap();
            assert!(text.contains(subcommands[0].as_str()), "{f}");
        }
        // Completions offer what --help shows: not updog's hidden --os-release (a test hook),
        // while they do offer its visible global options.
        for f in [
            format!("completions/{name}.bash"),
            format!("completions/_{name}"),
            format!("completions/{name}.fish"),
        ] {
            let text = std::fs::read_to_string(dir.path().join(&f)).unwrap();
            assert!(!text.contains("os-release="), "{f} offers --os-release");
            assert!(!text.contains("--os-release "), "{f} offers --os-release");
            assert!(!text.contains("-l os-release"), "{f} offers --os-release");
            assert!(text.contains("log-level"), "{f} lacks --log-level");
        }
        // updog writes the updog.toml(5) page too, listing every key.
        if name == "updog" {
            let page = std::fs::read_to_string(dir.path().join("man/updog.toml.5")).unwrap();
            for key in updog::config::known_keys() {
                assert!(
                    page.contains(&format!("\\fB{}\\fR", key.replace('-', "\\-"))),
                    "updog.toml.5 lacks {key}"
                );
            }
        }
        // The hidden argument is in no help text and no page.
        let help = Command::new(&binary).arg("--help").output().unwrap();
        assert!(!String::from_utf8_lossy(&help.stdout).contains("__generate-docs"));
        assert!(!main_page.contains("generate\\-docs") && !main_page.contains("generate-docs"));
    }
}

#[test]
fn published_binaries_carry_complete_crate_metadata() {
    let out = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
        .args([
            "metadata",
            "--no-deps",
            "--format-version",
            "1",
            "--offline",
        ])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", describe(&out));
    let meta: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let packages = meta["packages"].as_array().unwrap();
    let mut bins = Vec::new();
    for package in packages {
        let name = package["name"].as_str().unwrap();
        let has_bin = package["targets"].as_array().unwrap().iter().any(|t| {
            t["kind"].as_array().unwrap().iter().any(|k| k == "bin")
                && ["updog", "signpost", "updata"].contains(&t["name"].as_str().unwrap())
        });
        // Their library dependencies are installed with them, so they need the same.
        if !has_bin && name != "cli-support" {
            continue;
        }
        for t in package["targets"].as_array().unwrap() {
            if t["kind"].as_array().unwrap().iter().any(|k| k == "bin") {
                bins.push(t["name"].as_str().unwrap().to_string());
            }
        }
        for key in ["description", "license", "repository", "readme", "homepage"] {
            let v = package[key].as_str().unwrap_or("");
            assert!(!v.trim().is_empty(), "{name}: {key} is not set");
        }
        let manifest_dir = Path::new(package["manifest_path"].as_str().unwrap())
            .parent()
            .unwrap();
        let readme = manifest_dir.join(package["readme"].as_str().unwrap());
        assert!(
            readme.is_file(),
            "{name}: readme {} missing",
            readme.display()
        );
        assert!(
            !package["keywords"].as_array().unwrap().is_empty(),
            "{name}: keywords"
        );
    }
    bins.sort();
    for b in ["signpost", "updata", "updog"] {
        assert!(bins.iter().any(|x| x == b), "no crate ships {b}: {bins:?}");
    }
}
