//! A minimal, strictly bounded HTTP/1.1 server side: one request per connection, read within a
//! deadline, head and body under fixed limits, and one answer with `Connection: close`.
//!
//! The API's requests are a method, a path and (at most) a small JSON body, from local clients
//! (`apiclient`, an agent); nothing here needs keep-alive, pipelining or chunked bodies. What
//! does not fit is refused with the status code that says so (400, 408, 411, 413, 431, 505),
//! and a client that hangs up part-way costs a thread for at most the deadline.

use std::io::{self, Read, Write};
use std::time::{Duration, Instant};

/// Limits of one request.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// The request line and headers, in bytes (431 beyond).
    pub max_head: usize,
    /// How many headers (431 beyond).
    pub max_headers: usize,
    /// The body, in bytes (413 beyond).
    pub max_body: usize,
    /// The whole request must arrive within this (408 beyond).
    pub read_deadline: Duration,
    /// Writing the answer must not block longer than this.
    pub write_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_head: 8 * 1024,
            max_headers: 32,
            max_body: 4 * 1024,
            read_deadline: Duration::from_secs(10),
            write_timeout: Duration::from_secs(10),
        }
    }
}

/// A request as the routes need it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// The method (`GET`, `POST`, ...).
    pub method: String,
    /// The path, without the query string.
    pub path: String,
    /// The body (at most [`Limits::max_body`] bytes).
    pub body: Vec<u8>,
}

/// Why a request was not read; each maps to the answer the client gets, if any.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RequestError {
    /// The client closed the connection before a whole request arrived (no answer is sent).
    #[error("the client closed the connection after {received} bytes of a request")]
    Closed {
        /// Bytes received before.
        received: usize,
    },
    /// Reading failed (no answer is sent).
    #[error("reading the request")]
    Io(#[source] io::Error),
    /// The request did not arrive within the deadline.
    #[error("the request did not arrive within {0:?}")]
    Timeout(Duration),
    /// The head is over the limit.
    #[error("the request head is over {0} bytes")]
    HeadTooLarge(usize),
    /// Too many headers.
    #[error("the request has more than {0} headers")]
    TooManyHeaders(usize),
    /// The body is over the limit.
    #[error("the request body of {length} bytes is over {limit} bytes")]
    BodyTooLarge {
        /// The announced length.
        length: u64,
        /// The limit.
        limit: usize,
    },
    /// A body without a length (chunked transfer coding) is not accepted.
    #[error("a request body needs a Content-Length")]
    LengthRequired,
    /// The head is not HTTP/1.x.
    #[error("malformed request: {0}")]
    Malformed(String),
    /// An HTTP version other than 1.0 and 1.1.
    #[error("HTTP version not supported")]
    Version,
}

impl RequestError {
    /// The status code to answer with; `None` when the client is gone.
    pub fn status(&self) -> Option<u16> {
        match self {
            RequestError::Closed { .. } | RequestError::Io(_) => None,
            RequestError::Timeout(_) => Some(408),
            RequestError::HeadTooLarge(_) | RequestError::TooManyHeaders(_) => Some(431),
            RequestError::BodyTooLarge { .. } => Some(413),
            RequestError::LengthRequired => Some(411),
            RequestError::Malformed(_) => Some(400),
            RequestError::Version => Some(505),
        }
    }
}

/// A stream with a settable read timeout (a Unix socket; a test's pipe).
pub trait TimedStream: Read + Write {
    /// Sets the read timeout (`None`: block).
    fn set_read_timeout(&self, timeout: Option<Duration>) -> io::Result<()>;
}

impl TimedStream for std::os::unix::net::UnixStream {
    fn set_read_timeout(&self, timeout: Option<Duration>) -> io::Result<()> {
        std::os::unix::net::UnixStream::set_read_timeout(self, timeout)
    }
}

/// Reads one request from `stream` within `limits`.
pub fn read_request<S: TimedStream>(
    stream: &mut S,
    limits: &Limits,
) -> Result<Request, RequestError> {
    let deadline = Instant::now() + limits.read_deadline;
    let mut buf: Vec<u8> = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    // The head: read until the blank line, never more than max_head bytes.
    let head_len = loop {
        if let Some(end) = find_head_end(&buf) {
            break end;
        }
        if buf.len() >= limits.max_head {
            return Err(RequestError::HeadTooLarge(limits.max_head));
        }
        let room = (limits.max_head - buf.len()).min(chunk.len());
        let n = read_before(stream, &mut chunk[..room], deadline, limits.read_deadline)?;
        if n == 0 {
            return Err(RequestError::Closed {
                received: buf.len(),
            });
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let mut headers = vec![httparse::EMPTY_HEADER; limits.max_headers];
    let mut parsed = httparse::Request::new(&mut headers);
    match parsed.parse(&buf[..head_len]) {
        Ok(httparse::Status::Complete(_)) => {}
        Ok(httparse::Status::Partial) => {
            return Err(RequestError::Malformed("incomplete request head".into()));
        }
        Err(httparse::Error::TooManyHeaders) => {
            return Err(RequestError::TooManyHeaders(limits.max_headers));
        }
        Err(httparse::Error::Version) => return Err(RequestError::Version),
        Err(e) => return Err(RequestError::Malformed(e.to_string())),
    }
    let method = parsed.method.unwrap_or_default().to_string();
    let target = parsed.path.unwrap_or_default();
    let path = target
        .split(['?', '#'])
        .next()
        .unwrap_or_default()
        .to_string();
    let mut length: Option<u64> = None;
    for h in parsed.headers.iter() {
        if h.name.eq_ignore_ascii_case("content-length") {
            let value = std::str::from_utf8(h.value)
                .ok()
                .and_then(|v| v.trim().parse::<u64>().ok())
                .ok_or_else(|| RequestError::Malformed("bad Content-Length".into()))?;
            if length.is_some_and(|l| l != value) {
                return Err(RequestError::Malformed("conflicting Content-Length".into()));
            }
            length = Some(value);
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            return Err(RequestError::LengthRequired);
        }
    }
    let length = length.unwrap_or(0);
    if length > limits.max_body as u64 {
        return Err(RequestError::BodyTooLarge {
            length,
            limit: limits.max_body,
        });
    }
    let length = length as usize;
    let mut body: Vec<u8> = buf[head_len..].to_vec();
    body.truncate(length);
    while body.len() < length {
        let room = (length - body.len()).min(chunk.len());
        let n = read_before(stream, &mut chunk[..room], deadline, limits.read_deadline)?;
        if n == 0 {
            return Err(RequestError::Closed {
                received: head_len + body.len(),
            });
        }
        body.extend_from_slice(&chunk[..n]);
    }
    Ok(Request { method, path, body })
}

fn find_head_end(buf: &[u8]) -> Option<usize> {
    buf.windows(4).position(|w| w == b"\r\n\r\n").map(|p| p + 4)
}

/// One read that returns before `deadline` or fails with [`RequestError::Timeout`].
fn read_before<S: TimedStream>(
    stream: &mut S,
    buf: &mut [u8],
    deadline: Instant,
    total: Duration,
) -> Result<usize, RequestError> {
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(RequestError::Timeout(total));
        }
        stream
            .set_read_timeout(Some(left))
            .map_err(RequestError::Io)?;
        match stream.read(buf) {
            Ok(n) => return Ok(n),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                return Err(RequestError::Timeout(total));
            }
            Err(e) => return Err(RequestError::Io(e)),
        }
    }
}

/// An answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    /// The status code.
    pub status: u16,
    /// `Content-Type` of the body (`None` with an empty body).
    pub content_type: Option<&'static str>,
    /// Extra headers.
    pub headers: Vec<(&'static str, String)>,
    /// The body.
    pub body: Vec<u8>,
}

impl Response {
    /// An answer without a body (204).
    pub fn no_content() -> Response {
        Response {
            status: 204,
            content_type: None,
            headers: Vec::new(),
            body: Vec::new(),
        }
    }

    /// A plain-text answer (errors, as the reference answers them).
    pub fn text(status: u16, text: impl Into<String>) -> Response {
        Response {
            status,
            content_type: Some("text/plain; charset=utf-8"),
            headers: Vec::new(),
            body: text.into().into_bytes(),
        }
    }

    /// A JSON answer.
    pub fn json<T: serde::Serialize>(status: u16, value: &T) -> Response {
        match serde_json::to_vec_pretty(value) {
            Ok(body) => Response {
                status,
                content_type: Some("application/json"),
                headers: Vec::new(),
                body,
            },
            Err(e) => Response::text(500, format!("serializing the answer: {e}")),
        }
    }

    /// The bytes on the wire.
    pub fn to_bytes(&self) -> Vec<u8> {
        use std::fmt::Write as _;
        let mut out = format!("HTTP/1.1 {} {}\r\n", self.status, reason(self.status));
        // Writing to a String cannot fail.
        if let Some(ct) = self.content_type {
            let _ = write!(out, "Content-Type: {ct}\r\n");
        }
        for (name, value) in &self.headers {
            let _ = write!(out, "{name}: {value}\r\n");
        }
        if self.status != 204 {
            let _ = write!(out, "Content-Length: {}\r\n", self.body.len());
        }
        out.push_str("Connection: close\r\n\r\n");
        let mut bytes = out.into_bytes();
        if self.status != 204 {
            bytes.extend_from_slice(&self.body);
        }
        bytes
    }
}

/// The reason phrase of the codes this server sends.
pub fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        204 => "No Content",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        409 => "Conflict",
        411 => "Length Required",
        413 => "Content Too Large",
        423 => "Locked",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        505 => "HTTP Version Not Supported",
        _ => "Unknown",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;

    /// A stream over fixed bytes (reads) and a sink (writes).
    struct Fixed(Cursor<Vec<u8>>, Vec<u8>);
    impl Read for Fixed {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            self.0.read(buf)
        }
    }
    impl Write for Fixed {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.1.write(buf)
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }
    impl TimedStream for Fixed {
        fn set_read_timeout(&self, _: Option<Duration>) -> io::Result<()> {
            Ok(())
        }
    }

    fn read(bytes: &[u8]) -> Result<Request, RequestError> {
        read_request(
            &mut Fixed(Cursor::new(bytes.to_vec()), Vec::new()),
            &Limits::default(),
        )
    }

    #[test]
    fn reads_a_request_with_a_body_and_a_query() {
        let r = read(
            b"POST /actions/refresh-updates?x=1 HTTP/1.1\r\nHost: l\r\nContent-Length: 2\r\n\r\n{}",
        )
        .unwrap();
        assert_eq!(r.method, "POST");
        assert_eq!(r.path, "/actions/refresh-updates");
        assert_eq!(r.body, b"{}");
    }

    #[test]
    fn refuses_what_is_over_the_limits_with_the_right_code() {
        let big = format!("GET / HTTP/1.1\r\nX: {}\r\n\r\n", "a".repeat(9000));
        assert_eq!(read(big.as_bytes()).unwrap_err().status(), Some(431));
        let many = "X: y\r\n".repeat(40);
        let many = format!("GET / HTTP/1.1\r\n{many}\r\n");
        assert_eq!(read(many.as_bytes()).unwrap_err().status(), Some(431));
        let body = b"POST / HTTP/1.1\r\nContent-Length: 99999\r\n\r\n";
        assert_eq!(read(body).unwrap_err().status(), Some(413));
        let chunked = b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n";
        assert_eq!(read(chunked).unwrap_err().status(), Some(411));
        assert_eq!(read(b"GARBAGE\r\n\r\n").unwrap_err().status(), Some(400));
        let two = b"POST / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab";
        assert_eq!(read(two).unwrap_err().status(), Some(400));
        // A client that leaves mid-request gets no answer.
        assert_eq!(read(b"GET / HTTP/1.1\r\nHo").unwrap_err().status(), None);
        let cut = b"POST / HTTP/1.1\r\nContent-Length: 10\r\n\r\nab";
        assert_eq!(read(cut).unwrap_err().status(), None);
    }

    #[test]
    fn answers_close_the_connection() {
        let text = String::from_utf8(Response::text(409, "no").to_bytes()).unwrap();
        assert!(text.starts_with("HTTP/1.1 409 Conflict\r\n"), "{text}");
        assert!(
            text.contains("Content-Length: 2\r\nConnection: close\r\n\r\nno"),
            "{text}"
        );
        let text = String::from_utf8(Response::no_content().to_bytes()).unwrap();
        assert_eq!(text, "HTTP/1.1 204 No Content\r\nConnection: close\r\n\r\n");
    }
}
