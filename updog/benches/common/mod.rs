//! What the `harness = false` bench binaries share.

/// Whether this bench binary should run its benchmark.
///
/// `cargo bench` passes `--bench`; the bench's own child processes pass their `--child*` flag.
/// Anything else is a test runner probing the binary: `cargo nextest run --all-targets` calls it
/// with `--list --format terse` (answered with an empty list: nothing printed, exit 0) and
/// `cargo test --benches` runs it without arguments (answered with a one-line notice). Neither
/// should run a benchmark that takes minutes.
pub fn should_run(args: &[String], name: &str) -> bool {
    let has = |flag: &str| args.iter().any(|a| a == flag);
    if args.first().is_some_and(|a| a.starts_with("--child")) {
        return true;
    }
    if has("--list") {
        return false;
    }
    if has("--bench") {
        return true;
    }
    println!("{name}: benchmark skipped (run it with `cargo bench -p updog --bench {name}`)");
    false
}
