//! `updata`: edit a manifest and publish signed TUF repositories ([`updata::cli`]).

fn main() -> std::process::ExitCode {
    updata::cli::main()
}
