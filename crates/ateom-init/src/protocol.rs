//! The control channel between ateom (host) and `ateom-init` (guest).
//!
//! ## Transport
//!
//! `ateom-init` listens on TCP `<ateom.ip address>:<ateom.ctl_port>` (default
//! [`DEFAULT_CTL_PORT`](crate::DEFAULT_CTL_PORT); `0.0.0.0` when `ateom.ip` is absent). ateom
//! dials it from inside the workload's network namespace (the host end of the tap). One
//! request per connection: the client writes one request frame, the guest answers with one
//! response frame and closes. Connections from the guest's own addresses (loopback or the
//! guest IP, i.e. from the workload) are answered with an [`ErrorKind::Refused`] error: only
//! the host may set the clock.
//!
//! ## Frames
//!
//! A frame is one JSON object on one line: UTF-8, no newline inside, terminated by `\n`, at
//! most [`MAX_FRAME_LEN`] bytes including the `\n`. Every frame has `"version"`
//! ([`PROTOCOL_VERSION`]) and `"type"`:
//!
//! ```text
//! → {"version":1,"type":"hello"}
//! ← {"version":1,"type":"hello","init_version":"0.1.0","uptime_ns":812345678,
//!    "boot_id":"1c0b…","unix_time_ns":1767225600123456789,"workload_pid":97}
//! → {"version":1,"type":"ping"}
//! ← {"version":1,"type":"pong","uptime_ns":912345678}
//! → {"version":1,"type":"sync","unix_time_ns":1767225600123456789,"entropy":"<128 hex digits>"}
//! ← {"version":1,"type":"synced","before_unix_ns":…,"after_unix_ns":…,"delta_ns":…,
//!    "entropy_bits":512,"reseeded":true}
//! ← {"version":1,"type":"error","kind":"bad_request","message":"…"}
//! ```
//!
//! `sync` sets the guest's `CLOCK_REALTIME` to `unix_time_ns`, adds the 64 entropy bytes to
//! the kernel's input pool with `RNDADDENTROPY` crediting 512 bits, then forces a CRNG reseed
//! (`RNDRESEEDCRNG`), so that every later read of `/dev/urandom`/`getrandom` depends on the
//! fresh bytes (clones of one snapshot stop sharing their random state). The answer says the
//! guest's time just before and just after, and `delta_ns = unix_time_ns - before_unix_ns`
//! (how far the clock was moved). Any failure answers `error` with kind `failed`.
//!
//! Decoding is total: any byte string gives a [`Request`]/[`Response`] or a
//! [`ProtocolError`], never a panic. A frame with another `version` is refused with
//! [`ProtocolError::UnsupportedVersion`] before its body is read.
//!
//! ## Host side
//!
//! ```no_run
//! use ateom_init::protocol::{self, Request, Response};
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! // (inside the workload's network namespace)
//! let mut stream = std::net::TcpStream::connect(("169.254.0.2", ateom_init::DEFAULT_CTL_PORT))?;
//! stream.set_read_timeout(Some(std::time::Duration::from_secs(5)))?;
//! match protocol::call(&mut stream, &Request::sync_now()?)? {
//!     Response::Synced { after_unix_ns, .. } => println!("guest clock now {after_unix_ns}"),
//!     other => println!("unexpected {other:?}"),
//! }
//! # Ok(()) }
//! ```
//!
//! With Tokio: write [`encode_request`], read with `AsyncBufReadExt::read_until(b'\n')` on a
//! reader limited to [`MAX_FRAME_LEN`] bytes (`take`), then [`decode_response`].

use std::fmt;
use std::io::{Read, Write};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use thiserror::Error;

/// The protocol version this crate speaks; every frame carries it.
pub const PROTOCOL_VERSION: u32 = 1;
/// The largest frame, newline included.
pub const MAX_FRAME_LEN: usize = 16 * 1024;
/// The number of entropy bytes a `sync` carries.
pub const ENTROPY_LEN: usize = 64;
/// Error messages in responses are cut to this many bytes.
pub const MAX_MESSAGE_LEN: usize = 1024;

/// Why a frame could not be read or decoded.
#[derive(Debug, Error)]
pub enum ProtocolError {
    /// The frame is empty (or only whitespace).
    #[error("empty frame")]
    Empty,
    /// More than [`MAX_FRAME_LEN`] bytes.
    #[error("frame is {len} bytes or more, more than the {MAX_FRAME_LEN} allowed")]
    TooLong {
        /// How many bytes were seen.
        len: usize,
    },
    /// A newline inside the frame (only the terminating one is allowed).
    #[error("frame has a newline before its end (one JSON object per line)")]
    EmbeddedNewline,
    /// No `version` field.
    #[error("frame has no \"version\" field")]
    MissingVersion,
    /// Another protocol version.
    #[error("protocol version {found} is not supported (this side speaks version {supported})")]
    UnsupportedVersion {
        /// The `version` value in the frame, as JSON.
        found: String,
        /// [`PROTOCOL_VERSION`].
        supported: u32,
    },
    /// Not JSON, or not a known message of this version.
    #[error("malformed frame: {0}")]
    Malformed(#[source] serde_json::Error),
    /// A field has an impossible value.
    #[error("invalid {field}: {reason}")]
    Invalid {
        /// The field.
        field: &'static str,
        /// Why.
        reason: String,
    },
    /// Encoding failed (cannot happen for these types; reported rather than panicking).
    #[error("encoding a frame: {0}")]
    Encode(#[source] serde_json::Error),
    /// The connection ended before a whole frame arrived.
    #[error("connection closed after {received} bytes, before the end of the frame")]
    Truncated {
        /// Bytes received.
        received: usize,
    },
    /// Reading or writing the connection failed.
    #[error("{op} the control connection: {source}")]
    Io {
        /// `"writing to"` or `"reading from"`.
        op: &'static str,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// The guest answered `error`.
    #[error("the guest refused the request ({kind}): {message}")]
    Remote {
        /// Its kind.
        kind: ErrorKind,
        /// Its message.
        message: String,
    },
}

/// 64 bytes of entropy, carried as 128 lowercase hex digits. Its `Debug` does not show the
/// bytes.
#[derive(Clone, PartialEq, Eq)]
pub struct Entropy(pub [u8; ENTROPY_LEN]);

impl Entropy {
    /// Fresh bytes from the host kernel (`getrandom(2)`).
    pub fn from_host() -> std::io::Result<Entropy> {
        let mut bytes = [0u8; ENTROPY_LEN];
        let mut filled = 0;
        while filled < ENTROPY_LEN {
            let rest = &mut bytes[filled..];
            // SAFETY: the pointer and length describe `rest`, which is writable.
            let n = unsafe { libc::getrandom(rest.as_mut_ptr().cast(), rest.len(), 0) };
            if n < 0 {
                let e = std::io::Error::last_os_error();
                if e.kind() == std::io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            filled += n.unsigned_abs();
        }
        Ok(Entropy(bytes))
    }
}

impl fmt::Debug for Entropy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Entropy({ENTROPY_LEN} bytes)")
    }
}

impl Serialize for Entropy {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&hex::encode(self.0))
    }
}

impl<'de> Deserialize<'de> for Entropy {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        let text = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
        if text.len() != 2 * ENTROPY_LEN {
            return Err(D::Error::custom(format!(
                "entropy must be {} hex digits ({ENTROPY_LEN} bytes), got {}",
                2 * ENTROPY_LEN,
                text.len()
            )));
        }
        let mut bytes = [0u8; ENTROPY_LEN];
        hex::decode_to_slice(text.as_bytes(), &mut bytes)
            .map_err(|e| D::Error::custom(format!("entropy is not hex: {e}")))?;
        Ok(Entropy(bytes))
    }
}

/// A request from the host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Request {
    /// Who are you? Answered with [`Response::Hello`].
    Hello,
    /// Are you there? Answered with [`Response::Pong`].
    Ping,
    /// Set the wall clock and reseed the RNG. Answered with [`Response::Synced`].
    Sync {
        /// The host's `CLOCK_REALTIME` in nanoseconds since the Unix epoch; positive.
        unix_time_ns: i64,
        /// Fresh host entropy.
        entropy: Entropy,
    },
}

impl Request {
    /// A `sync` with the host's current time and [`Entropy::from_host`].
    pub fn sync_now() -> std::io::Result<Request> {
        Ok(Request::Sync { unix_time_ns: unix_time_ns(SystemTime::now()), entropy: Entropy::from_host()? })
    }
}

/// Nanoseconds since the Unix epoch (negative before it, saturating at the `i64` range).
pub fn unix_time_ns(t: SystemTime) -> i64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_nanos()).unwrap_or(i64::MAX),
        Err(e) => i64::try_from(e.duration().as_nanos()).map(|n| -n).unwrap_or(i64::MIN),
    }
}

/// What kind of failure an [`Response::Error`] reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    /// The request frame did not decode (see the message).
    BadRequest,
    /// The request's protocol version is not spoken by this guest.
    UnsupportedVersion,
    /// The connection did not come from the host side.
    Refused,
    /// The request was understood but carrying it out failed (see the message).
    Failed,
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ErrorKind::BadRequest => "bad_request",
            ErrorKind::UnsupportedVersion => "unsupported_version",
            ErrorKind::Refused => "refused",
            ErrorKind::Failed => "failed",
        })
    }
}

/// A response from the guest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Response {
    /// The answer to [`Request::Hello`].
    Hello {
        /// `ateom-init`'s crate version.
        init_version: String,
        /// Time since the guest booted (`CLOCK_BOOTTIME`), ns. Restored snapshots continue
        /// from the uptime they were taken at.
        uptime_ns: u64,
        /// `/proc/sys/kernel/random/boot_id`: the same for every restore of one boot.
        boot_id: String,
        /// The guest's `CLOCK_REALTIME`, ns since the epoch.
        unix_time_ns: i64,
        /// The workload's pid, while it runs.
        workload_pid: Option<u32>,
    },
    /// The answer to [`Request::Ping`].
    Pong {
        /// Time since the guest booted, ns.
        uptime_ns: u64,
    },
    /// The answer to [`Request::Sync`].
    Synced {
        /// Guest `CLOCK_REALTIME` just before it was set, ns.
        before_unix_ns: i64,
        /// Guest `CLOCK_REALTIME` after setting it and reseeding, ns.
        after_unix_ns: i64,
        /// `unix_time_ns - before_unix_ns`: how far the clock was moved, ns.
        delta_ns: i64,
        /// Bits of entropy credited to the input pool.
        entropy_bits: u32,
        /// Whether the CRNG reseed was done.
        reseeded: bool,
    },
    /// The request failed.
    Error {
        /// What kind of failure.
        kind: ErrorKind,
        /// What failed, at most [`MAX_MESSAGE_LEN`] bytes.
        message: String,
    },
}

impl Response {
    /// An [`Response::Error`] whose message is cut to [`MAX_MESSAGE_LEN`] bytes.
    pub fn error(kind: ErrorKind, message: impl Into<String>) -> Response {
        let mut message = message.into();
        if message.len() > MAX_MESSAGE_LEN {
            let mut end = MAX_MESSAGE_LEN;
            while !message.is_char_boundary(end) {
                end -= 1;
            }
            message.truncate(end);
        }
        Response::Error { kind, message }
    }

    /// The error response that answers a request frame that failed to decode.
    pub fn for_decode_error(error: &ProtocolError) -> Response {
        let kind = match error {
            ProtocolError::UnsupportedVersion { .. } => ErrorKind::UnsupportedVersion,
            _ => ErrorKind::BadRequest,
        };
        Response::error(kind, error.to_string())
    }
}

#[derive(Serialize)]
struct Frame<'a, T> {
    version: u32,
    #[serde(flatten)]
    body: &'a T,
}

fn encode<T: Serialize>(body: &T) -> Result<Vec<u8>, ProtocolError> {
    let mut bytes =
        serde_json::to_vec(&Frame { version: PROTOCOL_VERSION, body }).map_err(ProtocolError::Encode)?;
    bytes.push(b'\n');
    Ok(bytes)
}

fn decode<T: for<'de> Deserialize<'de>>(frame: &[u8]) -> Result<T, ProtocolError> {
    if frame.len() > MAX_FRAME_LEN {
        return Err(ProtocolError::TooLong { len: frame.len() });
    }
    let body = frame.strip_suffix(b"\n").unwrap_or(frame);
    let body = body.strip_suffix(b"\r").unwrap_or(body);
    if body.contains(&b'\n') {
        return Err(ProtocolError::EmbeddedNewline);
    }
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(ProtocolError::Empty);
    }
    #[derive(Deserialize)]
    struct Probe {
        version: Option<serde_json::Value>,
    }
    let probe: Probe = serde_json::from_slice(body).map_err(ProtocolError::Malformed)?;
    match probe.version {
        None => return Err(ProtocolError::MissingVersion),
        Some(v) if v.as_u64() == Some(u64::from(PROTOCOL_VERSION)) => {}
        Some(v) => {
            return Err(ProtocolError::UnsupportedVersion {
                found: v.to_string(),
                supported: PROTOCOL_VERSION,
            });
        }
    }
    serde_json::from_slice(body).map_err(ProtocolError::Malformed)
}

/// One request frame, newline included.
pub fn encode_request(request: &Request) -> Result<Vec<u8>, ProtocolError> {
    encode(request)
}

/// Decodes one request frame (the trailing `\n` is optional). Total: never panics.
pub fn decode_request(frame: &[u8]) -> Result<Request, ProtocolError> {
    let request: Request = decode(frame)?;
    if let Request::Sync { unix_time_ns, .. } = &request
        && *unix_time_ns <= 0
    {
        return Err(ProtocolError::Invalid {
            field: "unix_time_ns",
            reason: format!("{unix_time_ns} is not after the Unix epoch"),
        });
    }
    Ok(request)
}

/// One response frame, newline included.
pub fn encode_response(response: &Response) -> Result<Vec<u8>, ProtocolError> {
    encode(response)
}

/// Decodes one response frame (the trailing `\n` is optional). Total: never panics.
pub fn decode_response(frame: &[u8]) -> Result<Response, ProtocolError> {
    decode(frame)
}

/// The length of the first complete frame at the start of `buf` (through its `\n`), `None`
/// if `buf` holds no `\n` yet, or [`ProtocolError::TooLong`] once [`MAX_FRAME_LEN`] bytes
/// have no `\n`. For readers that buffer themselves.
pub fn frame_len(buf: &[u8]) -> Result<Option<usize>, ProtocolError> {
    match buf.iter().take(MAX_FRAME_LEN).position(|b| *b == b'\n') {
        Some(i) => Ok(Some(i + 1)),
        None if buf.len() >= MAX_FRAME_LEN => Err(ProtocolError::TooLong { len: buf.len() }),
        None => Ok(None),
    }
}

/// Reads one frame (through its `\n`, or to EOF) from `reader`, at most [`MAX_FRAME_LEN`]
/// bytes. Reads byte-wise chunks from `reader` as they come; use a timeout on the stream.
pub fn read_frame(reader: &mut impl Read) -> Result<Vec<u8>, ProtocolError> {
    let mut frame = Vec::with_capacity(256);
    let mut chunk = [0u8; 1024];
    loop {
        let n = match reader.read(&mut chunk) {
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(source) => return Err(ProtocolError::Io { op: "reading from", source }),
        };
        if n == 0 {
            return if frame.is_empty() {
                Err(ProtocolError::Truncated { received: 0 })
            } else {
                // A frame without its newline, ended by EOF: accept it (decode checks it).
                Ok(frame)
            };
        }
        frame.extend_from_slice(&chunk[..n]);
        if let Some(len) = frame_len(&frame)? {
            frame.truncate(len);
            return Ok(frame);
        }
    }
}

/// Host side: sends `request` on `stream` and reads and decodes the answer. An
/// [`Response::Error`] is returned as [`ProtocolError::Remote`].
pub fn call<S: Read + Write>(stream: &mut S, request: &Request) -> Result<Response, ProtocolError> {
    let frame = encode_request(request)?;
    stream.write_all(&frame).map_err(|source| ProtocolError::Io { op: "writing to", source })?;
    stream.flush().map_err(|source| ProtocolError::Io { op: "writing to", source })?;
    match decode_response(&read_frame(stream)?)? {
        Response::Error { kind, message } => Err(ProtocolError::Remote { kind, message }),
        response => Ok(response),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entropy() -> Entropy {
        let mut bytes = [0u8; ENTROPY_LEN];
        for (i, b) in bytes.iter_mut().enumerate() {
            *b = i as u8;
        }
        Entropy(bytes)
    }

    #[test]
    fn requests_have_the_documented_wire_form() {
        assert_eq!(encode_request(&Request::Hello).unwrap(), b"{\"version\":1,\"type\":\"hello\"}\n");
        assert_eq!(encode_request(&Request::Ping).unwrap(), b"{\"version\":1,\"type\":\"ping\"}\n");
        let sync =
            encode_request(&Request::Sync { unix_time_ns: 1_700_000_000_123_456_789, entropy: entropy() })
                .unwrap();
        let text = String::from_utf8(sync).unwrap();
        assert_eq!(
            text,
            format!(
                "{{\"version\":1,\"type\":\"sync\",\"unix_time_ns\":1700000000123456789,\"entropy\":\"{}\"}}\n",
                hex::encode(entropy().0)
            )
        );
        assert_eq!(text.matches('\n').count(), 1);
    }

    #[test]
    fn every_message_round_trips() {
        let requests = [
            Request::Hello,
            Request::Ping,
            Request::Sync { unix_time_ns: i64::MAX, entropy: entropy() },
            Request::Sync { unix_time_ns: 1, entropy: Entropy([0xff; ENTROPY_LEN]) },
        ];
        for r in requests {
            assert_eq!(decode_request(&encode_request(&r).unwrap()).unwrap(), r);
        }
        let responses = [
            Response::Hello {
                init_version: "0.1.0".into(),
                uptime_ns: u64::MAX,
                boot_id: "5e1f4a6e-0c43-4b4e-9d0e-6c1d2b0f9a11".into(),
                unix_time_ns: -5,
                workload_pid: Some(42),
            },
            Response::Hello {
                init_version: "x\n\"y".into(),
                uptime_ns: 0,
                boot_id: String::new(),
                unix_time_ns: 0,
                workload_pid: None,
            },
            Response::Pong { uptime_ns: 7 },
            Response::Synced {
                before_unix_ns: i64::MIN,
                after_unix_ns: i64::MAX,
                delta_ns: -1,
                entropy_bits: 512,
                reseeded: true,
            },
            Response::error(ErrorKind::Failed, "RNDADDENTROPY on /dev/urandom: Operation not permitted"),
        ];
        for r in responses {
            let frame = encode_response(&r).unwrap();
            assert_eq!(frame.iter().filter(|b| **b == b'\n').count(), 1, "newline escaped inside strings");
            assert_eq!(decode_response(&frame).unwrap(), r);
        }
    }

    #[test]
    fn decode_accepts_missing_newline_and_crlf_and_ignores_unknown_fields() {
        assert_eq!(decode_request(br#"{"version":1,"type":"ping"}"#).unwrap(), Request::Ping);
        assert_eq!(decode_request(b"{\"version\":1,\"type\":\"ping\"}\r\n").unwrap(), Request::Ping);
        assert_eq!(decode_request(br#"{"type":"hello","trace":"abc","version":1}"#).unwrap(), Request::Hello);
    }

    #[test]
    fn decode_errors_are_precise() {
        let e = |frame: &[u8]| decode_request(frame).unwrap_err();
        assert!(matches!(e(b""), ProtocolError::Empty));
        assert!(matches!(e(b" \n"), ProtocolError::Empty));
        assert!(matches!(e(b"{\"version\":1,\n\"type\":\"ping\"}\n"), ProtocolError::EmbeddedNewline));
        assert!(matches!(e(br#"{"type":"ping"}"#), ProtocolError::MissingVersion));
        assert!(matches!(
            e(br#"{"version":2,"type":"ping"}"#),
            ProtocolError::UnsupportedVersion { ref found, supported: 1 } if found == "2"
        ));
        assert!(matches!(
            e(br#"{"version":"1","type":"ping"}"#),
            ProtocolError::UnsupportedVersion { ref found, .. } if found == "\"1\""
        ));
        assert!(matches!(e(br#"{"version":1,"type":"reboot"}"#), ProtocolError::Malformed(_)));
        assert!(matches!(e(br#"{"version":1}"#), ProtocolError::Malformed(_)));
        assert!(matches!(e(b"not json"), ProtocolError::Malformed(_)));
        assert!(matches!(e(b"[1]"), ProtocolError::Malformed(_)));
        assert!(matches!(e(&vec![b'x'; MAX_FRAME_LEN + 1]), ProtocolError::TooLong { .. }));
        let short =
            format!(r#"{{"version":1,"type":"sync","unix_time_ns":5,"entropy":"{}"}}"#, "ab".repeat(63));
        let err = e(short.as_bytes());
        assert!(err.to_string().contains("128 hex digits"), "{err}");
        let not_hex =
            format!(r#"{{"version":1,"type":"sync","unix_time_ns":5,"entropy":"{}"}}"#, "zz".repeat(64));
        assert!(e(not_hex.as_bytes()).to_string().contains("not hex"));
        let negative = format!(
            r#"{{"version":1,"type":"sync","unix_time_ns":-5,"entropy":"{}"}}"#,
            hex::encode(entropy().0)
        );
        assert!(matches!(e(negative.as_bytes()), ProtocolError::Invalid { field: "unix_time_ns", .. }));
        let huge = format!(
            r#"{{"version":1,"type":"sync","unix_time_ns":99999999999999999999,"entropy":"{}"}}"#,
            hex::encode(entropy().0)
        );
        assert!(matches!(e(huge.as_bytes()), ProtocolError::Malformed(_)));
    }

    #[test]
    fn decode_error_responses() {
        let r = Response::for_decode_error(&decode_request(br#"{"version":9,"type":"ping"}"#).unwrap_err());
        assert!(matches!(r, Response::Error { kind: ErrorKind::UnsupportedVersion, .. }));
        let r = Response::for_decode_error(&decode_request(b"garbage").unwrap_err());
        assert!(matches!(r, Response::Error { kind: ErrorKind::BadRequest, .. }));
        let Response::Error { message, .. } = Response::error(ErrorKind::Failed, "é".repeat(2000)) else {
            panic!()
        };
        assert!(message.len() <= MAX_MESSAGE_LEN);
    }

    #[test]
    fn entropy_debug_hides_the_bytes() {
        assert_eq!(format!("{:?}", entropy()), "Entropy(64 bytes)");
        let a = Entropy::from_host().unwrap();
        let b = Entropy::from_host().unwrap();
        assert_ne!(a, b);
    }

    #[test]
    fn framing_helpers() {
        assert_eq!(frame_len(b"").unwrap(), None);
        assert_eq!(frame_len(b"abc").unwrap(), None);
        assert_eq!(frame_len(b"abc\ndef").unwrap(), Some(4));
        assert!(matches!(frame_len(&vec![b'a'; MAX_FRAME_LEN]), Err(ProtocolError::TooLong { .. })));
        let mut newline_at_limit = vec![b'a'; MAX_FRAME_LEN - 1];
        newline_at_limit.push(b'\n');
        assert_eq!(frame_len(&newline_at_limit).unwrap(), Some(MAX_FRAME_LEN));

        let mut two = &b"{\"version\":1,\"type\":\"ping\"}\nrest"[..];
        assert_eq!(read_frame(&mut two).unwrap(), b"{\"version\":1,\"type\":\"ping\"}\n");
        let mut eof = &b"{\"version\":1}"[..];
        assert_eq!(read_frame(&mut eof).unwrap(), b"{\"version\":1}");
        let mut nothing = &b""[..];
        assert!(matches!(read_frame(&mut nothing), Err(ProtocolError::Truncated { received: 0 })));
        let endless = vec![b'a'; 3 * MAX_FRAME_LEN];
        assert!(matches!(read_frame(&mut &endless[..]), Err(ProtocolError::TooLong { .. })));
    }

    #[test]
    fn call_writes_the_request_and_maps_errors() {
        struct Duplex {
            input: std::io::Cursor<Vec<u8>>,
            output: Vec<u8>,
        }
        impl Read for Duplex {
            fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
                self.input.read(buf)
            }
        }
        impl Write for Duplex {
            fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
                self.output.write(buf)
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let mut ok = Duplex {
            input: std::io::Cursor::new(encode_response(&Response::Pong { uptime_ns: 3 }).unwrap()),
            output: vec![],
        };
        assert_eq!(call(&mut ok, &Request::Ping).unwrap(), Response::Pong { uptime_ns: 3 });
        assert_eq!(ok.output, encode_request(&Request::Ping).unwrap());
        let mut refused = Duplex {
            input: std::io::Cursor::new(
                encode_response(&Response::error(ErrorKind::Refused, "not from the host")).unwrap(),
            ),
            output: vec![],
        };
        assert!(matches!(
            call(&mut refused, &Request::Hello),
            Err(ProtocolError::Remote { kind: ErrorKind::Refused, .. })
        ));
    }

    #[test]
    fn unix_time_conversion() {
        assert_eq!(unix_time_ns(UNIX_EPOCH), 0);
        assert_eq!(unix_time_ns(UNIX_EPOCH + std::time::Duration::from_nanos(5)), 5);
        assert_eq!(unix_time_ns(UNIX_EPOCH - std::time::Duration::from_nanos(5)), -5);
        assert!(unix_time_ns(SystemTime::now()) > 1_600_000_000_000_000_000);
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(2000))]

        #[test]
        fn random_bytes_never_panic(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..600)) {
            let _ = decode_request(&bytes);
            let _ = decode_response(&bytes);
            let _ = frame_len(&bytes);
            let _ = read_frame(&mut &bytes[..]);
        }

        #[test]
        fn json_shaped_garbage_never_panics(
            version in proptest::sample::select(vec!["1", "0", "-1", "1.5", "\"1\"", "null", "18446744073709551616"]),
            kind in proptest::sample::select(vec!["hello", "ping", "sync", "synced", "pong", "error", "", "HELLO"]),
            extra in "[ -~]{0,80}",
        ) {
            let frame = format!(r#"{{"version":{version},"type":"{kind}",{extra}}}"#);
            let _ = decode_request(frame.as_bytes());
            let _ = decode_response(frame.as_bytes());
            let frame = format!(r#"{{"version":{version},"type":"{kind}"{extra}"#);
            let _ = decode_request(frame.as_bytes());
        }

        #[test]
        fn mutated_valid_frames_never_panic(pos in 0usize..300, byte in proptest::num::u8::ANY, cut in 0usize..300) {
            let mut frame = encode_request(&Request::Sync { unix_time_ns: 1_700_000_000_000_000_000, entropy: entropy() })
                .unwrap();
            let len = frame.len();
            frame[pos % len] = byte;
            frame.truncate(cut.min(len));
            let _ = decode_request(&frame);
            let _ = decode_response(&frame);
        }
    }
}
