//! Reading a secret (a token's PIN) from the terminal without echoing it.

use std::fs::File;
use std::io::{BufRead, BufReader, Write};

use nix::sys::termios::{self, LocalFlags, SetArg};

/// Prints `prompt` on the terminal and reads one line from it with echo off; echo is restored
/// afterwards, whatever happened.
pub fn read_secret(prompt: &str) -> std::io::Result<String> {
    let tty = File::options().read(true).write(true).open("/dev/tty")?;
    let saved = termios::tcgetattr(&tty).map_err(std::io::Error::from)?;
    let mut quiet = saved.clone();
    quiet.local_flags.remove(LocalFlags::ECHO);
    quiet.local_flags.insert(LocalFlags::ECHONL);
    // Echo goes off before the prompt shows: whatever is typed after it is never echoed.
    termios::tcsetattr(&tty, SetArg::TCSAFLUSH, &quiet).map_err(std::io::Error::from)?;
    if let Err(e) = (&tty).write_all(format!("{prompt}: ").as_bytes()) {
        let _ = termios::tcsetattr(&tty, SetArg::TCSAFLUSH, &saved);
        return Err(e);
    }
    let mut line = String::new();
    let read = BufReader::new(&tty).read_line(&mut line);
    let restored = termios::tcsetattr(&tty, SetArg::TCSAFLUSH, &saved);
    read?;
    restored.map_err(std::io::Error::from)?;
    Ok(line.trim_end_matches(['\r', '\n']).to_owned())
}
