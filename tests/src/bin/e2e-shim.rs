//! The tests' multi-call binary: `updog`, `signpost`, `updata`, `agent` or `embed`, by the name
//! it is run as ([`e2e_tests::shim`]).

fn main() -> std::process::ExitCode {
    e2e_tests::shim::main()
}
