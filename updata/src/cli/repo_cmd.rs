//! The repository subcommands: `key`, `root`, `compress`, `publish`, `refresh-timestamp`,
//! `rotate-root`, `check`. The work is in `updata`; this file parses, calls and prints.

use crate::metadata::SignedFile;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use crate::keys::{self, KeySource, KeyType, PublicKey};
use crate::metadata::Envelope;
use crate::repo::{Delegation, Expiries, Release, Report, Repository};
use crate::{Error, check, image, offline, root};
use chrono::{DateTime, Duration, Utc};
use clap::{Args, Subcommand};
use waves::time::{parse_relative, parse_time_or_relative};

type CliResult = Result<ExitCode, Box<dyn std::error::Error>>;

#[derive(Subcommand)]
pub enum RepoCommand {
    /// Signing keys: generate one, or show a key's id.
    #[command(subcommand)]
    Key(KeyCommand),
    /// Make or change a root.json: roles, keys, thresholds, expiry, signatures.
    #[command(subcommand)]
    Root(RootCommand),
    /// Sign a root (or any role) on a machine that never sees the repository.
    ///
    /// `export` writes the metadata to sign; on each offline machine `sign` makes a signature
    /// file with a local key (file or pkcs11: URI); back here `import` checks each one (same
    /// content, a key the root lists for the role, a valid signature) before adding it.
    #[command(subcommand)]
    Offline(OfflineCommand),
    /// Compress a raw partition image into an lz4 frame as the reference builds them.
    ///
    /// The frame has lz4 -9's parameters (4 MiB independent blocks, content checksum), so
    /// `lz4 -d` and every updater read it.
    Compress {
        /// The raw image (boot.ext4, root.ext4, root.verity, ...).
        image: PathBuf,
        /// The lz4 file to write, named as the manifest names the target.
        output: PathBuf,
    },
    /// Publish a release: add targets and the manifest, sign targets, snapshot and timestamp.
    ///
    /// Checks everything before writing: the root, the keys (each must be a targets, snapshot
    /// or timestamp key of the root; every threshold met), the manifest (valid; every image and
    /// migration it names must be a target). Then writes the target files, N.targets.json,
    /// N.snapshot.json and timestamp.json last, each atomically, so an interrupted publish
    /// leaves the previous release in place.
    Publish {
        /// The repository directory (metadata/ and targets/ are created in it).
        repo: PathBuf,
        /// The root to start a new repository from (written as metadata/N.root.json).
        #[arg(long, value_name = "ROOT_JSON")]
        root: Option<PathBuf>,
        /// The manifest to publish as target manifest.json [default: keep the current one].
        #[arg(short = 'm', long, value_name = "FILE")]
        manifest: Option<PathBuf>,
        /// A file to add as a target, named by its file name (repeat for more).
        #[arg(short = 't', long = "target", value_name = "FILE")]
        targets: Vec<PathBuf>,
        /// Add every file in this directory as a target.
        #[arg(long, value_name = "DIR")]
        add_targets: Vec<PathBuf>,
        /// The chunk store `make-index` wrote (`DIR/<4 hex>/<id>.cacnk`): its chunks are copied
        /// into the store every delta of the manifest names (`targets/<store>/`), before any
        /// metadata is written; chunks already there are kept. Needs --manifest.
        #[arg(long, value_name = "STORE_DIR", requires = "manifest")]
        chunks: Option<PathBuf>,
        #[command(flatten)]
        keys: KeyArgs,
        /// Sign targets offline, step 1: check everything, write the unsigned targets metadata
        /// of this release to FILE (never overwritten) and stop; nothing else is written.
        /// Sign it with `updata offline sign`, import with `updata offline import FILE SIG...
        /// --root ROOT_JSON`.
        #[arg(long, value_name = "FILE", conflicts_with = "signed_targets")]
        draft_targets: Option<PathBuf>,
        /// Sign targets offline, step 2: publish with the signed FILE as the targets metadata
        /// (the same release options as step 1; -k takes the snapshot and timestamp keys).
        #[arg(long, value_name = "FILE")]
        signed_targets: Option<PathBuf>,
        /// When targets.json expires.
        #[arg(long, value_name = "TIME", default_value = "in 13 weeks")]
        targets_expires: String,
        /// When the snapshot expires.
        #[arg(long, value_name = "TIME", default_value = "in 13 weeks")]
        snapshot_expires: String,
        /// When the timestamp expires (refresh it before: refresh-timestamp).
        #[arg(long, value_name = "TIME", default_value = "in 7 days")]
        timestamp_expires: String,
        /// Warn when the root or targets expire within this long.
        #[arg(long, value_name = "DURATION", default_value = "30 days")]
        warn_within: String,
    },
    /// Delegate target paths to a role with its own keys and threshold.
    ///
    /// Adds (or replaces) the delegation in the top-level targets role and publishes new
    /// targets, snapshot and timestamp versions, signed with the root's keys for them (-k).
    /// The delegated role's own targets are published with publish-delegated.
    Delegate {
        /// The repository directory (with a published release).
        repo: PathBuf,
        /// The delegated role's name.
        #[arg(long, value_name = "NAME")]
        role: String,
        /// A target name pattern it is trusted for, such as 'extras-*' (`*` matches within one
        /// '/'-separated segment; repeat for more).
        #[arg(long = "path", value_name = "PATTERN", required = true)]
        paths: Vec<String>,
        /// One of its keys: a public or private key file, or a pkcs11: URI (repeat for more).
        #[arg(long = "delegate-key", value_name = "FILE|URI", required = true)]
        delegate_keys: Vec<String>,
        /// How many of its keys must sign its metadata.
        #[arg(long, default_value_t = 1)]
        threshold: u64,
        /// Hosts that match a path here search no further delegation.
        #[arg(long)]
        terminating: bool,
        #[command(flatten)]
        keys: KeyArgs,
        /// When the new targets.json expires.
        #[arg(long, value_name = "TIME", default_value = "in 13 weeks")]
        targets_expires: String,
        /// When the snapshot expires.
        #[arg(long, value_name = "TIME", default_value = "in 13 weeks")]
        snapshot_expires: String,
        /// When the timestamp expires.
        #[arg(long, value_name = "TIME", default_value = "in 7 days")]
        timestamp_expires: String,
    },
    /// Publish targets of a delegated role: its next version, a snapshot and a timestamp.
    ///
    /// -k takes the role's own keys (its threshold) and the root's snapshot and timestamp
    /// keys. Every target name must match the paths the role is delegated.
    PublishDelegated {
        /// The repository directory.
        repo: PathBuf,
        /// The delegated role.
        #[arg(long, value_name = "NAME")]
        role: String,
        /// A file to add as a target, named by its file name (repeat for more).
        #[arg(short = 't', long = "target", value_name = "FILE")]
        targets: Vec<PathBuf>,
        /// Add every file in this directory as a target.
        #[arg(long, value_name = "DIR")]
        add_targets: Vec<PathBuf>,
        #[command(flatten)]
        keys: KeyArgs,
        /// When the role's new metadata expires.
        #[arg(long, value_name = "TIME", default_value = "in 13 weeks")]
        expires: String,
        /// When the snapshot expires.
        #[arg(long, value_name = "TIME", default_value = "in 13 weeks")]
        snapshot_expires: String,
        /// When the timestamp expires.
        #[arg(long, value_name = "TIME", default_value = "in 7 days")]
        timestamp_expires: String,
    },
    /// Sign a new timestamp (and with --snapshot-expires a new snapshot) for a cron job.
    ///
    /// Warns on stderr when the root or targets expire within --warn-within.
    RefreshTimestamp {
        /// The repository directory.
        repo: PathBuf,
        #[command(flatten)]
        keys: KeyArgs,
        /// When the new timestamp expires: the horizon hosts can go without a refresh.
        #[arg(long, value_name = "TIME", default_value = "in 7 days")]
        expires: String,
        /// Also sign a new snapshot version, expiring then.
        #[arg(long, value_name = "TIME")]
        snapshot_expires: Option<String>,
        /// Warn when the root or targets expire within this long.
        #[arg(long, value_name = "DURATION", default_value = "30 days")]
        warn_within: String,
    },
    /// Publish root version N+1 from an edited root.json, signed by the old root and the new.
    ///
    /// The file gets version N+1, is signed with the given keys (root keys of version N or of
    /// the new root; others may have signed it already with `root sign --previous`), must carry
    /// both thresholds, and is written as metadata/(N+1).root.json. Hosts follow the chain.
    RotateRoot {
        /// The repository directory.
        repo: PathBuf,
        /// The edited root file.
        #[arg(long, value_name = "ROOT_JSON")]
        root: PathBuf,
        #[command(flatten)]
        keys: KeyArgs,
    },
    /// Verify a repository as a host would, before uploading it (exit 1 on any problem).
    ///
    /// Refreshes the metadata with updog's TUF client from the given root, then fetches every
    /// target the manifest names, checks its signed length and hashes, and decodes every image
    /// to its declared size. Reports when each role expires.
    Check {
        /// The repository: a directory, or a file://, http:// or https:// URL of the folder
        /// holding metadata/ and targets/.
        repo: String,
        /// The root hosts ship with (their trusted root).
        #[arg(long, value_name = "ROOT_JSON")]
        root: PathBuf,
        /// Warn when a role expires within this long.
        #[arg(long, value_name = "DURATION", default_value = "30 days")]
        warn_within: String,
    },
}

#[derive(Args)]
pub struct KeyArgs {
    /// A key to sign with (repeat for more; each role takes the keys the root lists for it): a
    /// private key file, or a key in a hardware token named by a pkcs11: URI (RFC 7512), such as
    /// 'pkcs11:token=T;object=L?module-path=M&pin-source=file:PIN_FILE'.
    #[arg(short = 'k', long = "key", value_name = "KEY")]
    keys: Vec<String>,
}

impl KeyArgs {
    fn load(&self) -> Result<Vec<Box<dyn KeySource>>, Error> {
        self.keys
            .iter()
            .map(|k| keys::open(k, prompt().as_ref().map(|p| p as _)))
            .collect()
    }
}

/// Asks for a token's PIN on the terminal (without echo) when updata runs on one; `None`
/// otherwise, so that a cron job fails with a message instead of waiting.
fn prompt() -> Option<impl Fn(&str) -> std::io::Result<String>> {
    use std::io::IsTerminal;
    std::io::stdin()
        .is_terminal()
        .then_some(super::tty::read_secret)
}

fn refs(keys: &[Box<dyn KeySource>]) -> Vec<&dyn KeySource> {
    keys.iter().map(AsRef::as_ref).collect()
}

#[derive(Subcommand)]
pub enum KeyCommand {
    /// Generate a signing key: FILE (private, mode 0600) and FILE's .pub.pem (public), or a key
    /// pair in a hardware token.
    ///
    /// Never overwrites a file, nor a key of the same label or id in a token. Give the public
    /// file to whoever edits the root. For a pkcs11: URI the key is generated in the token
    /// (object= is its label; it is sensitive and never leaves the token) and the public key
    /// is written to --public, or printed.
    Generate {
        /// The private key file to create, such as keys/root.pem, or a pkcs11: URI such as
        /// 'pkcs11:token=T;object=root?module-path=M&pin-source=file:PIN_FILE'.
        #[arg(value_name = "FILE|URI")]
        file: String,
        /// ed25519 or ecdsa-p256.
        #[arg(long = "type", default_value = "ed25519")]
        kind: KeyType,
        /// For a key in a token: where to write its public key (PEM) [default: print it].
        #[arg(long, value_name = "FILE")]
        public: Option<PathBuf>,
    },
    /// Print a key's TUF key id (private or public key file, or pkcs11: URI).
    Id {
        /// The key file or pkcs11: URI.
        #[arg(value_name = "FILE|URI")]
        file: String,
    },
}

#[derive(Subcommand)]
pub enum OfflineCommand {
    /// Write the metadata to sign (without its signatures) for the offline machines.
    ///
    /// Prints the SHA-256 of the bytes a signature is over: every signature file made from
    /// the export carries it, so a signer can compare it with what the publisher announced.
    Export {
        /// The metadata file (a root.json edited with the root commands, say).
        metadata: PathBuf,
        /// The file to write (never overwritten).
        #[arg(short = 'o', long, value_name = "FILE")]
        out: PathBuf,
        /// Write the canonical JSON bytes a signature is over instead, for a signing tool
        /// that signs bytes.
        #[arg(long)]
        canonical: bool,
    },
    /// Sign exported metadata with a local key: writes a signature file, nothing else.
    Sign {
        /// The exported metadata file.
        metadata: PathBuf,
        /// The key: a private key file or a pkcs11: URI.
        #[arg(short = 'k', long = "key", value_name = "KEY")]
        key: String,
        /// The signature file to write (never overwritten).
        #[arg(short = 'o', long, value_name = "FILE")]
        out: PathBuf,
    },
    /// Check signature files and add them to the metadata file (all or none).
    ///
    /// For a root, its own root keys (and with --previous those of the version before it)
    /// may sign; for another role, the keys the --root file lists for it. Prints which
    /// thresholds are still unmet.
    Import {
        /// The metadata file to add the signatures to.
        metadata: PathBuf,
        /// The signature files, in any order.
        #[arg(required = true, value_name = "SIG_FILE")]
        signatures: Vec<PathBuf>,
        /// For a rotation: the root version before this one.
        #[arg(long, value_name = "ROOT_JSON")]
        previous: Option<PathBuf>,
        /// For a role other than root: the root that lists its keys.
        #[arg(long, value_name = "ROOT_JSON")]
        root: Option<PathBuf>,
    },
}

impl OfflineCommand {
    fn run(self) -> CliResult {
        match self {
            Self::Export {
                metadata,
                out,
                canonical,
            } => {
                let form = if canonical {
                    offline::ExportForm::Canonical
                } else {
                    offline::ExportForm::Unsigned
                };
                let sha = offline::export(&metadata, &out, form)?;
                println!("wrote {} (signed content sha256 {sha})", out.display());
            }
            Self::Sign { metadata, key, out } => {
                let key = keys::open(&key, prompt().as_ref().map(|p| p as _))?;
                let sig = offline::sign(&metadata, key.as_ref())?;
                offline::save_signature(&sig, &out)?;
                println!(
                    "wrote {}: {} version {} (sha256 {}) signed by {} ({})",
                    out.display(),
                    sig.role,
                    sig.version,
                    sig.signed_sha256,
                    key.describe(),
                    sig.keyid
                );
            }
            Self::Import {
                metadata,
                signatures,
                previous,
                root,
            } => {
                let done =
                    offline::import(&metadata, &signatures, root.as_deref(), previous.as_deref())?;
                for k in &done.keyids {
                    println!("imported the signature of key {k}");
                }
                match done.incomplete {
                    None => println!("{}: every threshold is met", metadata.display()),
                    Some(e) => println!("{}: not complete yet: {e}", metadata.display()),
                }
            }
        }
        Ok(ExitCode::SUCCESS)
    }
}

#[derive(Subcommand)]
pub enum RootCommand {
    /// Create a root.json: version 1, consistent snapshots, the four top-level roles with no
    /// keys yet and threshold 1.
    Init {
        /// The root file to create.
        root: PathBuf,
        /// When it expires.
        #[arg(long, value_name = "TIME", default_value = "in 52 weeks")]
        expires: String,
        /// Overwrite the file if it exists.
        #[arg(long)]
        force: bool,
    },
    /// List keys (private or public key files, or pkcs11: URIs) for a role. Drops the root's
    /// signatures.
    AddKey {
        /// The root file.
        root: PathBuf,
        /// root, targets, snapshot or timestamp.
        #[arg(long)]
        role: String,
        /// The key files or pkcs11: URIs.
        #[arg(required = true, value_name = "FILE|URI")]
        keys: Vec<String>,
    },
    /// Remove a key (a key file, a pkcs11: URI or a key id) from a role. Drops the root's
    /// signatures.
    RemoveKey {
        /// The root file.
        root: PathBuf,
        /// root, targets, snapshot or timestamp.
        #[arg(long)]
        role: String,
        /// A key file, a pkcs11: URI or a key id.
        key: String,
    },
    /// Set how many keys must sign a role. Drops the root's signatures.
    SetThreshold {
        /// The root file.
        root: PathBuf,
        /// root, targets, snapshot or timestamp.
        #[arg(long)]
        role: String,
        /// The threshold (at least 1).
        threshold: u64,
    },
    /// Set when the root expires. Drops the root's signatures.
    SetExpires {
        /// The root file.
        root: PathBuf,
        /// An RFC 3339 time or "in N days|weeks|...".
        expires: String,
    },
    /// Raise the version by one (the first step of a rotation that several people sign).
    /// Drops the root's signatures.
    BumpVersion {
        /// The root file.
        root: PathBuf,
    },
    /// Add signatures to a root file; several key holders sign the same file in turn.
    ///
    /// Each key must be a root key of this root, or, for a rotation, of the previous root
    /// given with --previous. Prints how many signatures each threshold still needs.
    Sign {
        /// The root file.
        root: PathBuf,
        #[command(flatten)]
        keys: KeyArgs,
        /// The root version before this one (its keys sign a rotation too).
        #[arg(long, value_name = "ROOT_JSON")]
        previous: Option<PathBuf>,
    },
}

fn time(value: &str, now: DateTime<Utc>) -> Result<DateTime<Utc>, Error> {
    Ok(parse_time_or_relative(value, now)?)
}

fn duration(value: &str) -> Result<Duration, Error> {
    Ok(parse_relative(value)?)
}

fn print_report(report: &Report) {
    for path in &report.written {
        println!("wrote {}", path.display());
    }
    for w in &report.warnings {
        eprintln!("updata: warning: {w}");
    }
}

impl RepoCommand {
    pub fn run(self) -> CliResult {
        let now = Utc::now();
        match self {
            Self::Key(c) => c.run(),
            Self::Root(c) => c.run(now),
            Self::Offline(c) => c.run(),
            Self::Compress { image, output } => {
                let c = image::compress(&image, &output)?;
                println!(
                    "{}: {} bytes -> {} bytes",
                    output.display(),
                    c.decompressed_length,
                    c.length
                );
                Ok(ExitCode::SUCCESS)
            }
            Self::Publish {
                repo,
                root,
                manifest,
                mut targets,
                add_targets,
                chunks,
                keys,
                draft_targets,
                signed_targets,
                targets_expires,
                snapshot_expires,
                timestamp_expires,
                warn_within,
            } => {
                for dir in &add_targets {
                    targets.extend(files_in(dir)?);
                }
                let release = Release {
                    root,
                    manifest,
                    targets,
                };
                let expires = Expiries {
                    targets: time(&targets_expires, now)?,
                    snapshot: time(&snapshot_expires, now)?,
                    timestamp: time(&timestamp_expires, now)?,
                    warn_within: duration(&warn_within)?,
                };
                let repository_dir = repo.clone();
                let repository = Repository::new(repo);
                if let Some(out) = draft_targets {
                    if out.exists() {
                        return Err(Box::new(Error::State(format!(
                            "{} exists: give a new file for the draft",
                            out.display()
                        ))));
                    }
                    let draft = repository.draft_targets(&release, expires.targets, now)?;
                    draft.save(&out)?;
                    println!(
                        "wrote {} (targets version {}, unsigned): sign it with `updata offline \
                         sign`, import the signatures, then publish with --signed-targets {0}",
                        out.display(),
                        draft.signed.header.version
                    );
                    return Ok(ExitCode::SUCCESS);
                }
                let keys = keys.load()?;
                if let (Some(store), Some(manifest)) = (&chunks, &release.manifest) {
                    // Before the metadata: hosts that see the release find its chunks.
                    place_chunks(&repository_dir, manifest, store)?;
                }
                let report = match signed_targets {
                    Some(path) => {
                        let signed = Envelope::load(&path)?;
                        repository.publish_signed_targets(
                            &release,
                            &signed,
                            &refs(&keys),
                            &expires,
                            now,
                        )?
                    }
                    None => repository.publish(&release, &refs(&keys), &expires, now)?,
                };
                print_report(&report);
                Ok(ExitCode::SUCCESS)
            }
            Self::RefreshTimestamp {
                repo,
                keys,
                expires,
                snapshot_expires,
                warn_within,
            } => {
                let keys = keys.load()?;
                let snapshot = snapshot_expires.map(|s| time(&s, now)).transpose()?;
                let report = Repository::new(repo).refresh(
                    &refs(&keys),
                    time(&expires, now)?,
                    snapshot,
                    duration(&warn_within)?,
                    now,
                )?;
                print_report(&report);
                Ok(ExitCode::SUCCESS)
            }
            Self::Delegate {
                repo,
                role,
                paths,
                delegate_keys,
                threshold,
                terminating,
                keys,
                targets_expires,
                snapshot_expires,
                timestamp_expires,
            } => {
                let publics = delegate_keys
                    .iter()
                    .map(|k| keys::public_key_of(k, prompt().as_ref().map(|p| p as _)))
                    .collect::<Result<Vec<_>, _>>()?;
                let d = Delegation {
                    name: role,
                    keys: publics,
                    threshold,
                    paths,
                    terminating,
                };
                let expires = Expiries {
                    targets: time(&targets_expires, now)?,
                    snapshot: time(&snapshot_expires, now)?,
                    timestamp: time(&timestamp_expires, now)?,
                    warn_within: Duration::zero(),
                };
                let keys = keys.load()?;
                let report = Repository::new(repo).delegate(&d, &refs(&keys), &expires, now)?;
                print_report(&report);
                Ok(ExitCode::SUCCESS)
            }
            Self::PublishDelegated {
                repo,
                role,
                mut targets,
                add_targets,
                keys,
                expires,
                snapshot_expires,
                timestamp_expires,
            } => {
                for dir in &add_targets {
                    targets.extend(files_in(dir)?);
                }
                let expires = Expiries {
                    targets: time(&expires, now)?,
                    snapshot: time(&snapshot_expires, now)?,
                    timestamp: time(&timestamp_expires, now)?,
                    warn_within: Duration::zero(),
                };
                let keys = keys.load()?;
                let report = Repository::new(repo).publish_delegated(
                    &role,
                    &targets,
                    &refs(&keys),
                    &expires,
                    now,
                )?;
                print_report(&report);
                Ok(ExitCode::SUCCESS)
            }
            Self::RotateRoot { repo, root, keys } => {
                let keys = keys.load()?;
                let report = Repository::new(repo).rotate_root(&root, &refs(&keys), now)?;
                print_report(&report);
                Ok(ExitCode::SUCCESS)
            }
            Self::Check {
                repo,
                root,
                warn_within,
            } => {
                let report = check::check(&repo, &root, duration(&warn_within)?, now);
                for n in &report.notes {
                    println!("ok: {n}");
                }
                for w in &report.warnings {
                    println!("warning: {w}");
                }
                if report.problems.is_empty() {
                    println!("{repo}: no problems found");
                    return Ok(ExitCode::SUCCESS);
                }
                for p in &report.problems {
                    println!("problem: {p}");
                }
                println!("{repo}: {} problem(s)", report.problems.len());
                Ok(ExitCode::FAILURE)
            }
        }
    }
}

/// Regular files directly in `dir`, sorted, skipping hidden ones.
/// Copies the chunk files of `store` (`<4 hex>/<64 hex>.cacnk`) into every store the manifest's
/// deltas name under `repo/targets/`, each atomically, keeping chunks already there (a chunk's
/// name is its content's hash). Anything else in `store` is left out.
fn place_chunks(
    repo: &Path,
    manifest: &Path,
    store: &Path,
) -> Result<(), Box<dyn std::error::Error>> {
    let m = manifest::fs::load(manifest)?;
    let mut dests = std::collections::BTreeSet::new();
    for u in &m.updates {
        let Some(delta) = &u.delta else { continue };
        let rel = Path::new(&delta.store);
        if delta.store.contains("://")
            || rel.is_absolute()
            || rel
                .components()
                .any(|c| !matches!(c, std::path::Component::Normal(_)))
        {
            return Err(format!(
                "--chunks: the store of {} is {:?}, not a path under the repository's targets; \
                 copy the chunks there yourself",
                u.id(),
                delta.store
            )
            .into());
        }
        dests.insert(repo.join("targets").join(rel));
    }
    if dests.is_empty() {
        return Err(format!(
            "--chunks: {} names no delta store (set-delta names it)",
            manifest.display()
        )
        .into());
    }
    let is_hex = |s: &str, n: usize| s.len() == n && s.bytes().all(|b| b.is_ascii_hexdigit());
    let mut files = Vec::new();
    for dir in std::fs::read_dir(store)
        .map_err(|e| format!("{}: {e}", store.display(), e = cli_support::error_chain(&e)))?
    {
        let dir = dir?;
        let name = dir.file_name().to_string_lossy().into_owned();
        if !is_hex(&name, 4) || !dir.file_type()?.is_dir() {
            continue;
        }
        for file in std::fs::read_dir(dir.path())? {
            let file = file?;
            let fname = file.file_name().to_string_lossy().into_owned();
            let id = fname.strip_suffix(".cacnk").unwrap_or_default();
            if is_hex(id, 64) && id.starts_with(&name) && file.file_type()?.is_file() {
                files.push((name.clone(), fname, file.path()));
            }
        }
    }
    let opts = atomic_write::AtomicWrite {
        create_dir: true,
        ..atomic_write::AtomicWrite::for_published_file()
    };
    for dest in &dests {
        let (mut copied, mut present) = (0, 0);
        for (sub, fname, src) in &files {
            let to = dest.join(sub).join(fname);
            if to.exists() {
                present += 1;
                continue;
            }
            let mut input = std::fs::File::open(src)
                .map_err(|e| format!("{}: {e}", src.display(), e = cli_support::error_chain(&e)))?;
            opts.write(&to, |f| std::io::copy(&mut input, f).map(|_| ()))
                .map_err(|e| format!("{}: {e}", to.display(), e = cli_support::error_chain(&e)))?;
            copied += 1;
        }
        println!(
            "chunks: {copied} copied, {present} already in {}",
            dest.display()
        );
    }
    Ok(())
}

fn files_in(dir: &Path) -> Result<Vec<PathBuf>, Error> {
    let io = |source| Error::Io {
        action: "reading the directory",
        path: dir.to_owned(),
        source,
    };
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(io)? {
        let entry = entry.map_err(io)?;
        let hidden = entry.file_name().to_string_lossy().starts_with('.');
        if !hidden && entry.file_type().map_err(io)?.is_file() {
            out.push(entry.path());
        }
    }
    out.sort();
    Ok(out)
}

impl KeyCommand {
    fn run(self) -> CliResult {
        match self {
            Self::Generate { file, kind, public } => {
                if crate::pkcs11::is_uri(&file) {
                    // Checked first: the key is not made when its public file cannot be.
                    if let Some(path) = public.as_ref().filter(|p| p.exists()) {
                        return Err(Box::new(Error::KeyExists { path: path.clone() }));
                    }
                    let key =
                        crate::pkcs11::generate(&file, kind, prompt().as_ref().map(|p| p as _))?;
                    if let Some(path) = public {
                        keys::write_public(&path, &key)?;
                        println!(
                            "{file}: key id {} (public key in {})",
                            key.id(),
                            path.display()
                        );
                    } else {
                        println!("{file}: key id {}", key.id());
                        print!("{}", key.to_pem());
                    }
                } else {
                    let path = Path::new(&file);
                    let public = keys::generate(path, kind)?;
                    println!(
                        "{file}: key id {} (public key in {})",
                        public.id(),
                        keys::public_key_path(path).display()
                    );
                }
            }
            Self::Id { file } => println!(
                "{}",
                keys::public_key_of(&file, prompt().as_ref().map(|p| p as _))?.id()
            ),
        }
        Ok(ExitCode::SUCCESS)
    }
}

impl RootCommand {
    fn run(self, now: DateTime<Utc>) -> CliResult {
        match self {
            Self::Init {
                root: path,
                expires,
                force,
            } => {
                if path.exists() && !force {
                    return Err(Box::new(Error::State(format!(
                        "{} exists (use --force to overwrite it)",
                        path.display()
                    ))));
                }
                let r = root::new_root(time(&expires, now)?);
                r.save(&path)?;
                println!("created {} (version 1)", path.display());
            }
            Self::AddKey {
                root: path,
                role,
                keys: args,
            } => {
                let publics: Vec<PublicKey> = args
                    .iter()
                    .map(|k| keys::public_key_of(k, prompt().as_ref().map(|p| p as _)))
                    .collect::<Result<_, _>>()?;
                edit_root(&path, |r| {
                    for k in &publics {
                        root::add_key(r, &role, k)?;
                        println!("{role}: key {}", k.id());
                    }
                    Ok(())
                })?;
            }
            Self::RemoveKey {
                root: path,
                role,
                key,
            } => {
                let keyid = if Path::new(&key).is_file() || crate::pkcs11::is_uri(&key) {
                    keys::public_key_of(&key, prompt().as_ref().map(|p| p as _))?
                        .id()
                        .to_owned()
                } else {
                    key
                };
                edit_root(&path, |r| root::remove_key(r, &role, &keyid))?;
                println!("{role}: removed key {keyid}");
            }
            Self::SetThreshold {
                root: path,
                role,
                threshold,
            } => {
                edit_root(&path, |r| root::set_threshold(r, &role, threshold))?;
                println!("{role}: threshold {threshold}");
            }
            Self::SetExpires {
                root: path,
                expires,
            } => {
                let t = time(&expires, now)?;
                edit_root(&path, |r| {
                    r.header.expires = crate::metadata::expiry(t);
                    Ok(())
                })?;
                println!("expires {}", t.format("%Y-%m-%dT%H:%M:%SZ"));
            }
            Self::BumpVersion { root: path } => {
                let mut version = 0;
                edit_root(&path, |r| {
                    r.header.version += 1;
                    version = r.header.version;
                    Ok(())
                })?;
                println!("{}: version {version}", path.display());
            }
            Self::Sign {
                root: path,
                keys,
                previous,
            } => {
                let mut r = Envelope::load(&path)?;
                let previous = previous.map(|p| Envelope::load(&p)).transpose()?;
                let what = root::describe(&r.signed, &path);
                let prev_signed = previous.as_ref().map(|p| &p.signed);
                for key in keys.load()? {
                    root::sign(&mut r, key.as_ref(), &what, prev_signed)?;
                    println!("signed with {} ({})", key.describe(), key.public_key().id());
                }
                r.save(&path)?;
                match root::check_complete(&r, &what, prev_signed) {
                    Ok(()) => println!("{what}: every threshold is met"),
                    Err(e) => println!(
                        "{what}: not complete yet: {e}",
                        e = cli_support::error_chain(&e)
                    ),
                }
            }
        }
        Ok(ExitCode::SUCCESS)
    }
}

/// Loads a root file, applies `change`, saves it; says when signatures were dropped.
fn edit_root(
    path: &Path,
    change: impl FnOnce(&mut crate::metadata::Root) -> Result<(), Error>,
) -> Result<(), Error> {
    let mut r = Envelope::load(path)?;
    let dropped = root::edit(&mut r, change)?;
    r.save(path)?;
    if dropped > 0 {
        eprintln!(
            "updata: note: the change dropped {dropped} signature(s) of {}: sign it again \
             (`updata root sign {0} -k KEY`), or, for a root that is already published, \
             publish it as the next version with `updata rotate-root REPO --root {0} -k OLD_KEY \
             -k NEW_KEY`, which signs it",
            path.display()
        );
    }
    Ok(())
}
