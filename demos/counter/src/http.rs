//! The small slice of HTTP/1.1 the counter speaks: parsing a request head from a bounded
//! buffer, routing it, and formatting a `Connection: close` response.
//!
//! Parsing never panics: every malformed input maps to a [`ParseError`], which knows the
//! status code the client gets.

use std::fmt;

/// Largest request head (request line + headers + the blank line) the server accepts.
pub const MAX_HEAD: usize = 16 * 1024;

/// The parts of a request the server acts on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request {
    /// The method token, as sent (methods are case-sensitive).
    pub method: String,
    /// The request target in origin form (`/path?query`) or `*`.
    pub target: String,
    /// `HTTP/1.0` or `HTTP/1.1`.
    pub version: &'static str,
    /// Header fields in order, names as sent.
    pub headers: Vec<(String, String)>,
}

impl Request {
    /// The target without its query string.
    pub fn path(&self) -> &str {
        self.target.split_once('?').map_or(self.target.as_str(), |(p, _)| p)
    }
}

/// Why a request head was refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ParseError {
    /// No end of head within [`MAX_HEAD`] bytes.
    HeadTooLarge,
    /// The head is not UTF-8.
    NotUtf8,
    /// The request line is not `METHOD SP target SP HTTP/x.y`.
    BadRequestLine(String),
    /// An HTTP version other than 1.0 and 1.1.
    UnsupportedVersion(String),
    /// A header line that is not `name: value` (obsolete line folding included).
    BadHeader(String),
}

impl ParseError {
    /// The status code and reason phrase to answer with.
    pub fn status(&self) -> Status {
        match self {
            Self::HeadTooLarge => Status::HEADERS_TOO_LARGE,
            Self::UnsupportedVersion(_) => Status::VERSION_NOT_SUPPORTED,
            Self::NotUtf8 | Self::BadRequestLine(_) | Self::BadHeader(_) => Status::BAD_REQUEST,
        }
    }
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::HeadTooLarge => write!(f, "request head larger than {MAX_HEAD} bytes"),
            Self::NotUtf8 => write!(f, "request head is not UTF-8"),
            Self::BadRequestLine(l) => write!(f, "malformed request line {l:?}"),
            Self::UnsupportedVersion(v) => write!(f, "unsupported HTTP version {v:?}"),
            Self::BadHeader(h) => write!(f, "malformed header line {h:?}"),
        }
    }
}

impl std::error::Error for ParseError {}

/// A response status: code and reason phrase.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Status(pub u16, pub &'static str);

impl Status {
    /// 200 OK.
    pub const OK: Status = Status(200, "OK");
    /// 400 Bad Request.
    pub const BAD_REQUEST: Status = Status(400, "Bad Request");
    /// 404 Not Found.
    pub const NOT_FOUND: Status = Status(404, "Not Found");
    /// 405 Method Not Allowed.
    pub const METHOD_NOT_ALLOWED: Status = Status(405, "Method Not Allowed");
    /// 408 Request Timeout.
    pub const REQUEST_TIMEOUT: Status = Status(408, "Request Timeout");
    /// 431 Request Header Fields Too Large.
    pub const HEADERS_TOO_LARGE: Status = Status(431, "Request Header Fields Too Large");
    /// 500 Internal Server Error.
    pub const INTERNAL_ERROR: Status = Status(500, "Internal Server Error");
    /// 505 HTTP Version Not Supported.
    pub const VERSION_NOT_SUPPORTED: Status = Status(505, "HTTP Version Not Supported");
}

/// Parses a request head from the start of `buf`.
///
/// Returns `Ok(None)` while the head is incomplete (read more and call again), the request
/// once the blank line that ends the head has arrived. Bytes after the head (a body) are
/// ignored. Lines may end in CRLF or a bare LF; empty lines before the request line are
/// skipped (RFC 9112 §2.2).
pub fn parse_head(buf: &[u8]) -> Result<Option<Request>, ParseError> {
    let Some(end) = head_end(buf) else {
        return if buf.len() >= MAX_HEAD { Err(ParseError::HeadTooLarge) } else { Ok(None) };
    };
    if end > MAX_HEAD {
        return Err(ParseError::HeadTooLarge);
    }
    let head = std::str::from_utf8(&buf[..end]).map_err(|_| ParseError::NotUtf8)?;
    let mut lines = head.split('\n').map(|l| l.strip_suffix('\r').unwrap_or(l)).skip_while(|l| l.is_empty());
    let request_line = lines.next().unwrap_or_default();
    let (method, target, version) = parse_request_line(request_line)?;
    let mut headers = Vec::new();
    for line in lines.take_while(|l| !l.is_empty()) {
        headers.push(parse_header(line)?);
    }
    Ok(Some(Request { method: method.to_owned(), target, version, headers }))
}

/// The index just past the blank line that ends the head, skipping leading empty lines.
fn head_end(buf: &[u8]) -> Option<usize> {
    // Leading CRLFs/LFs before the request line are not the end of the head.
    let start = buf.iter().position(|b| *b != b'\r' && *b != b'\n')?;
    let mut line_start = start;
    for (i, b) in buf.iter().enumerate().skip(start) {
        if *b == b'\n' {
            let line = &buf[line_start..i];
            if line.is_empty() || line == b"\r" {
                return Some(i + 1);
            }
            line_start = i + 1;
        }
    }
    None
}

fn parse_request_line(line: &str) -> Result<(&str, String, &'static str), ParseError> {
    let bad = || ParseError::BadRequestLine(line.to_owned());
    let mut parts = line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(bad());
    };
    if method.is_empty() || !method.bytes().all(is_tchar) {
        return Err(bad());
    }
    let version = match version {
        "HTTP/1.1" => "HTTP/1.1",
        "HTTP/1.0" => "HTTP/1.0",
        v if v.starts_with("HTTP/") => return Err(ParseError::UnsupportedVersion(v.to_owned())),
        _ => return Err(bad()),
    };
    if target.is_empty() || target.bytes().any(|b| b.is_ascii_control() || b == b' ') {
        return Err(bad());
    }
    let target = if target == "*" || target.starts_with('/') {
        target.to_owned()
    } else if let Some(rest) = target.strip_prefix("http://").or_else(|| target.strip_prefix("https://")) {
        // Absolute form: keep the path (and query) after the authority.
        match rest.find(['/', '?']) {
            Some(i) if rest.as_bytes()[i] == b'/' => rest[i..].to_owned(),
            Some(i) => format!("/{}", &rest[i..]),
            None => "/".to_owned(),
        }
    } else {
        return Err(bad());
    };
    Ok((method, target, version))
}

fn parse_header(line: &str) -> Result<(String, String), ParseError> {
    let bad = || ParseError::BadHeader(line.to_owned());
    let (name, value) = line.split_once(':').ok_or_else(bad)?;
    // A name must be a token: this also refuses obsolete line folding (leading whitespace)
    // and whitespace before the colon (RFC 9112 §5.1).
    if name.is_empty() || !name.bytes().all(is_tchar) {
        return Err(bad());
    }
    let value = value.trim_matches([' ', '\t']);
    if value.bytes().any(|b| b.is_ascii_control() && b != b'\t') {
        return Err(bad());
    }
    Ok((name.to_owned(), value.to_owned()))
}

/// RFC 9110 `tchar`.
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// What the server does for a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Route {
    /// `GET /`: count.
    Count,
    /// `GET /readyz`.
    Readyz,
    /// `GET /random`: 16 fresh random bytes, hex.
    Random,
    /// `GET /time`: wall clock in unix milliseconds.
    Time,
    /// `GET /secret`: `COUNTER_SECRET` as it was at start.
    Secret,
    /// `GET /alloc?mib=N`: hold N MiB more (N ≤ 4096).
    Alloc(u32),
    /// `GET /connect?addr=IP:PORT`: try a TCP connection from inside the sandbox.
    Connect(std::net::SocketAddr),
    /// A known path with a method other than GET.
    MethodNotAllowed,
    /// Anything else.
    NotFound,
}

/// Routes a parsed request.
pub fn route(req: &Request) -> Route {
    let route = match req.path() {
        "/" => Route::Count,
        "/readyz" => Route::Readyz,
        "/random" => Route::Random,
        "/time" => Route::Time,
        "/secret" => Route::Secret,
        "/connect" => {
            let addr = req
                .target
                .split_once('?')
                .and_then(|(_, q)| q.split('&').find_map(|kv| kv.strip_prefix("addr=")))
                .and_then(|v| v.parse::<std::net::SocketAddr>().ok());
            match addr {
                Some(a) => Route::Connect(a),
                None => return Route::NotFound,
            }
        }
        "/alloc" => {
            let mib = req
                .target
                .split_once('?')
                .and_then(|(_, q)| q.split('&').find_map(|kv| kv.strip_prefix("mib=")))
                .and_then(|v| v.parse::<u32>().ok())
                .filter(|n| (1..=4096).contains(n));
            match mib {
                Some(n) => Route::Alloc(n),
                None => return Route::NotFound,
            }
        }
        _ => return Route::NotFound,
    };
    if req.method == "GET" { route } else { Route::MethodNotAllowed }
}

/// Formats a complete `Connection: close` response.
pub fn response(status: Status, content_type: &str, body: &[u8]) -> Vec<u8> {
    let Status(code, reason) = status;
    let mut out = format!(
        "HTTP/1.1 {code} {reason}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    out.extend_from_slice(body);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<Option<Request>, ParseError> {
        parse_head(s.as_bytes())
    }

    #[test]
    fn simple_get() {
        let r = parse("GET /?x=1 HTTP/1.1\r\nHost: a\r\nUser-Agent:  t/1 \r\n\r\n").unwrap().unwrap();
        assert_eq!(r.method, "GET");
        assert_eq!(r.target, "/?x=1");
        assert_eq!(r.path(), "/");
        assert_eq!(r.version, "HTTP/1.1");
        assert_eq!(r.headers, vec![("Host".into(), "a".into()), ("User-Agent".into(), "t/1".into())]);
    }

    #[test]
    fn incomplete_heads_ask_for_more() {
        for partial in
            ["", "GET", "GET / HTTP/1.1", "GET / HTTP/1.1\r\n", "GET / HTTP/1.1\r\nHost: a\r\n", "\r\n"]
        {
            assert_eq!(parse(partial), Ok(None), "{partial:?}");
        }
    }

    #[test]
    fn lenient_line_endings_and_leading_blank_lines() {
        let r = parse("\r\n\nGET /time HTTP/1.0\nHost: a\n\n").unwrap().unwrap();
        assert_eq!((r.path(), r.version), ("/time", "HTTP/1.0"));
    }

    #[test]
    fn a_body_after_the_head_is_ignored() {
        let r = parse("GET /readyz HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc").unwrap().unwrap();
        assert_eq!(r.path(), "/readyz");
    }

    #[test]
    fn absolute_form_targets_keep_their_path() {
        let r = parse("GET http://h:1/random?q HTTP/1.1\r\n\r\n").unwrap().unwrap();
        assert_eq!(r.target, "/random?q");
        assert_eq!(parse("GET http://h HTTP/1.1\r\n\r\n").unwrap().unwrap().target, "/");
        assert_eq!(parse("GET http://h?a HTTP/1.1\r\n\r\n").unwrap().unwrap().target, "/?a");
    }

    #[test]
    fn malformed_request_lines_are_400() {
        for bad in [
            "GET  / HTTP/1.1\r\n\r\n",
            "GET /\r\n\r\n",
            "GET / HTTP/1.1 extra\r\n\r\n",
            "G(T / HTTP/1.1\r\n\r\n",
            "GET nopath HTTP/1.1\r\n\r\n",
            "GET / FTP/1.0\r\n\r\n",
            "GET /\x01 HTTP/1.1\r\n\r\n",
            " / HTTP/1.1\r\n\r\n",
        ] {
            let err = parse(bad).unwrap_err();
            assert!(matches!(err, ParseError::BadRequestLine(_)), "{bad:?}: {err:?}");
            assert_eq!(err.status().0, 400);
        }
    }

    #[test]
    fn other_versions_are_505() {
        let err = parse("GET / HTTP/2.0\r\n\r\n").unwrap_err();
        assert_eq!(err, ParseError::UnsupportedVersion("HTTP/2.0".into()));
        assert_eq!(err.status().0, 505);
    }

    #[test]
    fn malformed_headers_are_400() {
        for bad in [
            "GET / HTTP/1.1\r\nNoColon\r\n\r\n",
            "GET / HTTP/1.1\r\nName : v\r\n\r\n",
            "GET / HTTP/1.1\r\nA: b\r\n folded\r\n\r\n",
            "GET / HTTP/1.1\r\n: v\r\n\r\n",
            "GET / HTTP/1.1\r\nA: b\x00c\r\n\r\n",
        ] {
            let err = parse(bad).unwrap_err();
            assert!(matches!(err, ParseError::BadHeader(_)), "{bad:?}: {err:?}");
            assert_eq!(err.status().0, 400);
        }
    }

    #[test]
    fn non_utf8_is_400() {
        let err = parse_head(b"GET /\xff HTTP/1.1\r\n\r\n").unwrap_err();
        assert_eq!(err, ParseError::NotUtf8);
        assert_eq!(err.status().0, 400);
    }

    #[test]
    fn head_size_is_bounded() {
        // No end of head within MAX_HEAD bytes: refuse without waiting for more.
        let mut big = b"GET / HTTP/1.1\r\nX: ".to_vec();
        big.resize(MAX_HEAD, b'a');
        assert_eq!(parse_head(&big), Err(ParseError::HeadTooLarge));
        assert_eq!(ParseError::HeadTooLarge.status().0, 431);
        // One byte short and unterminated: still waiting.
        big.truncate(MAX_HEAD - 1);
        assert_eq!(parse_head(&big), Ok(None));
        // A complete head that ends past the bound is refused too.
        big.extend_from_slice(b"aa\r\n\r\n");
        assert_eq!(parse_head(&big), Err(ParseError::HeadTooLarge));
        // A head of exactly MAX_HEAD bytes is fine.
        big.truncate(MAX_HEAD - 4);
        big.extend_from_slice(b"\r\n\r\n");
        assert_eq!(big.len(), MAX_HEAD);
        assert!(parse_head(&big).unwrap().is_some());
    }

    #[test]
    fn arbitrary_bytes_never_panic() {
        // A cheap deterministic fuzz: every prefix of a few nasty inputs, plus a xorshift stream.
        let samples: [&[u8]; 4] =
            [b"GET http://\r\n\r\n", b"\n\n\n", b"GET / HTTP/1.1\r\n\r\r\n\n", b"GET http://a? HTTP/1.1\n\n"];
        for s in samples {
            for i in 0..=s.len() {
                let _ = parse_head(&s[..i]);
            }
        }
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let alphabet = b"GET /?:http\r\n \t\x00\xffHTTP/1.1";
        for _ in 0..2000 {
            let mut buf = Vec::new();
            for _ in 0..64 {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                buf.push(alphabet[(x % alphabet.len() as u64) as usize]);
            }
            let _ = parse_head(&buf);
        }
    }

    #[test]
    fn routing() {
        let req = |m: &str, t: &str| Request {
            method: m.into(),
            target: t.into(),
            version: "HTTP/1.1",
            headers: vec![],
        };
        assert_eq!(route(&req("GET", "/")), Route::Count);
        assert_eq!(route(&req("GET", "/?a=b")), Route::Count);
        assert_eq!(route(&req("GET", "/readyz")), Route::Readyz);
        assert_eq!(route(&req("GET", "/random")), Route::Random);
        assert_eq!(route(&req("GET", "/time")), Route::Time);
        assert_eq!(route(&req("POST", "/")), Route::MethodNotAllowed);
        assert_eq!(route(&req("get", "/")), Route::MethodNotAllowed);
        assert_eq!(route(&req("GET", "/readyz/")), Route::NotFound);
        assert_eq!(route(&req("GET", "*")), Route::NotFound);
        assert_eq!(route(&req("DELETE", "/nope")), Route::NotFound);
    }

    #[test]
    fn responses_carry_length_and_close() {
        let r = response(Status::OK, "text/plain", b"ok");
        assert_eq!(
            r,
            b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok"
        );
    }
}
