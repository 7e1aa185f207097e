//! The listening socket (systemd socket activation, or a path of our own) and the accept loop:
//! one thread per connection, a bounded number of them, one request each.

use std::io::{Read, Write};
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use crate::http::{self, Limits, Response};
use crate::service::Service;

/// Why the socket could not be set up.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ListenError {
    /// `LISTEN_FDS`/`LISTEN_PID` name this process, but fd 3 is no Unix socket.
    #[error("the socket systemd passed (fd 3) is not a listening Unix socket")]
    NotUnixSocket(#[source] std::io::Error),
    /// Something that is not a socket is in the way.
    #[error("{0} exists and is not a socket; refusing to replace it")]
    NotASocket(PathBuf),
    /// A server is listening on the path already.
    #[error("another server is listening on {0}")]
    InUse(PathBuf),
    /// Binding or setting up the socket failed.
    #[error("listening on {path}")]
    Bind {
        /// The socket path.
        path: PathBuf,
        /// What failed.
        #[source]
        source: std::io::Error,
    },
}

/// The listening socket systemd passed, when this process was socket-activated
/// (`LISTEN_PID` is this process and `LISTEN_FDS` is at least 1: the socket is fd 3).
/// `Ok(None)` when it was not.
pub fn listener_from_systemd() -> Result<Option<UnixListener>, ListenError> {
    let ours = std::env::var("LISTEN_PID")
        .ok()
        .and_then(|p| p.trim().parse::<u32>().ok())
        == Some(std::process::id());
    let count = std::env::var("LISTEN_FDS")
        .ok()
        .and_then(|n| n.trim().parse::<u32>().ok())
        .unwrap_or(0);
    if !ours || count == 0 {
        return Ok(None);
    }
    if count > 1 {
        log::warn!("systemd passed {count} sockets; serving the first (fd 3) only");
    }
    adopt_fd3().map(Some)
}

/// Takes fd 3 as a Unix listener (checked to be one) and marks it close-on-exec, so that the
/// reboot command does not inherit it.
#[allow(unsafe_code)]
fn adopt_fd3() -> Result<UnixListener, ListenError> {
    use std::os::fd::{AsFd, BorrowedFd, FromRawFd, OwnedFd};
    const FD: i32 = 3;
    // SAFETY: fd 3 stays open for the whole process (systemd passed it and nothing else in
    // this process closes it); borrowing it to inspect it does not change ownership.
    let borrowed = unsafe { BorrowedFd::borrow_raw(FD) };
    let stat = nix::sys::stat::fstat(borrowed)
        .map_err(|e| ListenError::NotUnixSocket(std::io::Error::from(e)))?;
    use nix::sys::stat::SFlag;
    if SFlag::from_bits_truncate(stat.st_mode) & SFlag::S_IFMT != SFlag::S_IFSOCK {
        return Err(ListenError::NotUnixSocket(std::io::Error::other(
            "fd 3 is not a socket",
        )));
    }
    // SAFETY: fd 3 is an open socket (checked above) that systemd handed to this process and
    // that nothing else owns; the listener becomes its only owner.
    let owned = unsafe { OwnedFd::from_raw_fd(FD) };
    let listener = UnixListener::from(owned);
    // getsockname: fails for a socket that is not AF_UNIX.
    listener.local_addr().map_err(ListenError::NotUnixSocket)?;
    nix::fcntl::fcntl(
        listener.as_fd(),
        nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC),
    )
    .map_err(|e| ListenError::NotUnixSocket(std::io::Error::from(e)))?;
    Ok(listener)
}

/// Listens on `path`, mode 0600 (root only when run as root). A stale socket left by a server
/// that is gone is replaced; a live one, or anything that is not a socket, is not.
pub fn bind(path: &Path) -> Result<UnixListener, ListenError> {
    let bind_err = |source| ListenError::Bind {
        path: path.to_path_buf(),
        source,
    };
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => {
            if UnixStream::connect(path).is_ok() {
                return Err(ListenError::InUse(path.to_path_buf()));
            }
            std::fs::remove_file(path).map_err(bind_err)?;
        }
        Ok(_) => return Err(ListenError::NotASocket(path.to_path_buf())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(bind_err(e)),
    }
    // Created 0600 from the start: no moment where another user may connect.
    let old = nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o177));
    let bound = UnixListener::bind(path);
    nix::sys::stat::umask(old);
    let listener = bound.map_err(bind_err)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(bind_err)?;
    Ok(listener)
}

/// How the server treats connections.
#[derive(Debug, Clone, Copy)]
pub struct ServerOptions {
    /// Limits of each request.
    pub limits: Limits,
    /// Connections served at once; more are answered 503 at once and closed.
    pub max_connections: usize,
}

impl Default for ServerOptions {
    fn default() -> Self {
        ServerOptions {
            limits: Limits::default(),
            max_connections: 32,
        }
    }
}

/// Serves `service` on `listener` until `stop` is set (by a signal handler), then stops a
/// running command (see [`Service::shutdown`]) and returns. Bad, slow, oversized or abandoned
/// requests end their own connection only.
pub fn serve(
    listener: &UnixListener,
    service: &Arc<Service>,
    stop: &AtomicBool,
    options: ServerOptions,
) -> std::io::Result<()> {
    listener.set_nonblocking(true)?;
    let active = Arc::new(AtomicUsize::new(0));
    while !stop.load(Ordering::SeqCst) {
        let stream = match listener.accept() {
            Ok((stream, _)) => stream,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(25));
                continue;
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => {
                // Out of file descriptors and the like: wait for connections to end.
                log::warn!(
                    "accepting a connection: {e}",
                    e = updog::advice::error_chain(&e)
                );
                std::thread::sleep(Duration::from_millis(200));
                continue;
            }
        };
        if stream.set_nonblocking(false).is_err() {
            continue;
        }
        let _ = stream.set_write_timeout(Some(options.limits.write_timeout));
        if active.load(Ordering::SeqCst) >= options.max_connections {
            let _ = stream.set_write_timeout(Some(Duration::from_millis(200)));
            let _ = (&stream)
                .write_all(&Response::text(503, "too many connections; try again").to_bytes());
            continue;
        }
        let guard = ConnectionGuard::new(&active);
        let service = Arc::clone(service);
        let limits = options.limits;
        let spawned = std::thread::Builder::new()
            .name("update-api-conn".into())
            .spawn(move || {
                let _guard = guard;
                handle_connection(stream, &service, &limits);
            });
        if let Err(e) = spawned {
            log::warn!(
                "starting a connection thread: {e}",
                e = updog::advice::error_chain(&e)
            );
        }
    }
    log::info!("stopping");
    service.shutdown();
    Ok(())
}

/// Counts a connection for as long as it lives (also when its thread panics).
struct ConnectionGuard(Arc<AtomicUsize>);

impl ConnectionGuard {
    fn new(active: &Arc<AtomicUsize>) -> ConnectionGuard {
        active.fetch_add(1, Ordering::SeqCst);
        ConnectionGuard(Arc::clone(active))
    }
}

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

fn handle_connection(mut stream: UnixStream, service: &Arc<Service>, limits: &Limits) {
    let response = match http::read_request(&mut stream, limits) {
        Ok(req) => {
            let response = service.handle(&req);
            log::info!("{} {} -> {}", req.method, req.path, response.status);
            response
        }
        Err(e) => {
            log::debug!("refused a request: {e}", e = updog::advice::error_chain(&e));
            match e.status() {
                Some(code) => Response::text(code, updog::advice::error_chain(&e)),
                None => return,
            }
        }
    };
    if let Err(e) = stream
        .write_all(&response.to_bytes())
        .and_then(|()| stream.flush())
    {
        log::debug!(
            "the client left before the answer was written: {e}",
            e = updog::advice::error_chain(&e)
        );
    }
    // Lingering close: the client may still be sending (an oversized head or body was
    // refused part-way); closing with unread input would reset the connection and lose the
    // answer. Say we are done, then read and drop what still comes, boundedly.
    let _ = stream.shutdown(std::net::Shutdown::Write);
    let _ = stream.set_read_timeout(Some(Duration::from_millis(500)));
    let _ = std::io::copy(&mut (&stream).take(LINGER_BYTES), &mut std::io::sink());
}

/// At most this much is read and dropped after the answer.
const LINGER_BYTES: u64 = 1024 * 1024;
