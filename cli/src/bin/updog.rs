//! `updog`: check for, stage, apply and revert OS image updates ([`updog_cli::updog`]).

fn main() -> std::process::ExitCode {
    updog_cli::updog::main()
}
