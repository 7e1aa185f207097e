//! `signpost`: show and change the A/B boot selection bits on the OS disk
//! ([`updog_cli::signpost`]).

fn main() -> std::process::ExitCode {
    updog_cli::signpost::main()
}
