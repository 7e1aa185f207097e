//! `updog-playground DIR`: everything needed to try `signpost` and `updog` by hand, without
//! root and without a server, in a new directory (see the README's "Five-minute playground"):
//!
//! - `disk.img`: a GPT disk image with the reference layout (sets A and B: BOOT, ROOT, HASH,
//!   RESERVED; then PRIVATE and DATA, the reference's type GUIDs), with the bits of a freshly
//!   installed host: set A priority 1, successful (as an OS image is built), set B empty,
//!   PRIVATE's "a boot has ever succeeded" bit not yet set (the first boot sets it);
//! - `repo/`: a signed TUF repository (releases 1.0.0 and 1.1.0 of `demo-variant`, one
//!   migration), read through `file://` URLs; `root.json`, the root a host ships with;
//! - `os-release` (1.0.0 runs on set A) and `updog.toml` pointing at all of the above, with
//!   state under `state/` and a reboot command that only prints.
//!
//! Built on the same generators the tests use (`fixtures`), so the playground is the layout
//! the tests prove things on.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use e2e_tests::{BOOTED_OK, RepoSpec, VARIANT, publish};
use fixtures::disk::DiskImageBuilder;

fn main() -> ExitCode {
    let mut args = std::env::args_os().skip(1);
    let (Some(dir), None) = (args.next(), args.next()) else {
        eprintln!("usage: updog-playground DIR   (DIR must not exist yet, or be empty)");
        return ExitCode::from(2);
    };
    match make(Path::new(&dir)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("updog-playground: {e}");
            ExitCode::FAILURE
        }
    }
}

fn make(dir: &Path) -> Result<(), String> {
    let in_dir = |what: &str| format!("{what} in {}", dir.display());
    if std::fs::read_dir(dir).is_ok_and(|mut d| d.next().is_some()) {
        return Err(format!(
            "{} is not empty: give a new directory (nothing is overwritten)",
            dir.display()
        ));
    }
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", in_dir("creating")))?;
    // Absolute paths in updog.toml, so it works from any directory.
    let dir = std::fs::canonicalize(dir).map_err(|e| format!("{}: {e}", dir.display()))?;

    let repo = publish(&RepoSpec::two_releases(), &dir.join("repo"));
    let root = dir.join("root.json");
    std::fs::copy(&repo.root_json, &root).map_err(|e| format!("{}: {e}", root.display()))?;

    // Partition 1 is set A's BOOT partition: priority 1, successful.
    let disk = dir.join("disk.img");
    let image = DiskImageBuilder::new()
        .attributes(1, BOOTED_OK)
        .build(&disk)
        .map_err(|e| format!("{}: {e}", disk.display()))?;

    let os_release = dir.join("os-release");
    write(
        &os_release,
        &format!("NAME=Playground\nVARIANT_ID={VARIANT}\nVERSION_ID=1.0.0\nBUILD_ID=playground\n"),
    )?;
    let url =
        |p: &Path| url_of(p).ok_or_else(|| format!("{} cannot be a file:// URL", p.display()));
    let state = dir.join("state");
    let config = format!(
        r#"# updog-playground: a disk image and a signed repository on this machine.
metadata_base_url = "{meta}"
targets_base_url = "{targets}"
seed = 1000
trusted_root = "{root}"
metadata_dir = "{state}/metadata"
state_file = "{state}/state.json"
migrations_dir = "{state}/migrations"
migrations_metadata_dir = "{state}/migrations-metadata"
disk = "{disk}"
active_set = "A"
os_release = "{os}"
reboot_command = ["echo", "updog-playground: a real host would reboot now"]
"#,
        meta = url(&repo.dir.join(repo.metadata_path))?,
        targets = url(&repo.dir.join(repo.targets_path))?,
        root = root.display(),
        state = state.display(),
        disk = image.path.display(),
        os = os_release.display(),
    );
    write(&dir.join("updog.toml"), &config)?;

    println!("made in {}:", dir.display());
    println!("  disk.img     GPT disk image, reference layout; set A: priority 1, successful");
    println!("  repo/        signed TUF repository: {VARIANT} 1.0.0 and 1.1.0, one migration");
    println!("  root.json    the repository's root, as a host ships it");
    println!("  os-release   this host runs {VARIANT} 1.0.0 (from set A)");
    println!("  updog.toml   all of the above, state in state/");
    println!("try: signpost --disk disk.img --active A status; updog -c updog.toml check-update");
    Ok(())
}

fn write(path: &Path, text: &str) -> Result<(), String> {
    std::fs::write(path, text).map_err(|e| format!("{}: {e}", path.display()))
}

/// `file://` URL of a directory, with the trailing slash base URLs need.
fn url_of(dir: &Path) -> Option<String> {
    let text = dir.to_str()?;
    let text: PathBuf = text.trim_end_matches('/').into();
    Some(format!("file://{}/", text.display()))
}
