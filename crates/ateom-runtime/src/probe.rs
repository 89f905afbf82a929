//! The HTTP readiness probe.
//!
//! Hand-written rather than built on hyper's client: the probe must control exactly how its
//! connection ends. It closes with SO_LINGER 0 (a RST), so the workload's socket goes
//! straight to CLOSED and never sits in TIME_WAIT, which would make the next gVisor
//! checkpoint fail. It speaks just enough HTTP/1.1 for `GET <path>` and a status line.

use std::time::{Duration, Instant};

use ateom_core::{Dialer, HttpProbe};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// One attempt: connects (giving up after `connect_timeout`), sends `GET`, returns the
/// status code (all within `timeout`).
pub async fn http_get_status(
    dialer: &dyn Dialer,
    probe: &HttpProbe,
    connect_timeout: Duration,
    timeout: Duration,
) -> std::io::Result<u16> {
    let attempt = async {
        let mut stream = tokio::time::timeout(connect_timeout, dialer.dial(probe.port))
            .await
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timed out"))??;
        let req = format!(
            "GET {} HTTP/1.1\r\nHost: {}:{}\r\nUser-Agent: ateom-probe\r\nConnection: close\r\n\r\n",
            probe.path,
            dialer.ip(),
            probe.port
        );
        stream.write_all(req.as_bytes()).await?;
        let mut buf = [0u8; 64];
        let mut filled = 0;
        while filled < 12 {
            let n = stream.read(&mut buf[filled..]).await?;
            if n == 0 {
                break;
            }
            filled += n;
        }
        // RST instead of FIN: see the module docs. (tokio deprecates set_linger because a
        // non-zero linger blocks on drop; a zero linger never does.)
        #[allow(deprecated)]
        let _ = stream.set_linger(Some(Duration::ZERO));
        drop(stream);
        parse_status(&buf[..filled])
            .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::InvalidData, "no HTTP status line"))
    };
    tokio::time::timeout(timeout, attempt)
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "probe timed out"))?
}

/// Sends `GET path` with `Connection: close` on an open stream and reads the response:
/// status and body (by `Content-Length`, or to EOF without one). Used by clients, demos and
/// tests talking to a workload through ateom's forwarder.
pub async fn http_get<S>(stream: &mut S, host: &str, path: &str) -> std::io::Result<(u16, Vec<u8>)>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let bad = |m: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, m.to_owned());
    let req =
        format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: ateom\r\nConnection: close\r\n\r\n");
    stream.write_all(req.as_bytes()).await?;
    let mut buf = Vec::with_capacity(1024);
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        if buf.len() > 64 * 1024 {
            return Err(bad("response headers larger than 64 KiB"));
        }
        let mut chunk = [0u8; 4096];
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Err(bad("connection closed before the response headers ended"));
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let status = parse_status(&buf).ok_or_else(|| bad("no HTTP status line"))?;
    let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
    let length = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse::<usize>().ok());
    let mut body = buf[head_end..].to_vec();
    match length {
        Some(len) => {
            while body.len() < len {
                let mut chunk = [0u8; 4096];
                let n = stream.read(&mut chunk).await?;
                if n == 0 {
                    return Err(bad("connection closed before the body ended"));
                }
                body.extend_from_slice(&chunk[..n]);
            }
            body.truncate(len);
        }
        None => {
            stream.read_to_end(&mut body).await?;
        }
    }
    Ok((status, body))
}

fn parse_status(head: &[u8]) -> Option<u16> {
    let line = head.strip_prefix(b"HTTP/1.")?;
    let code = line.get(2..5)?;
    std::str::from_utf8(code).ok()?.parse().ok()
}

/// Why a workload never became ready.
#[derive(Debug, thiserror::Error)]
pub enum NotReady {
    #[error(
        "readiness probe GET {path} on port {port} did not answer 200 within {waited_ms} ms (last: {last})"
    )]
    Timeout { path: String, port: u16, waited_ms: u128, last: String },
    #[error("the sandbox stopped before it became ready: {0}")]
    Exited(String),
}

/// Polls until the probe answers 200, `deadline` passes, or `exited` reports that the
/// sandbox died. Starts fast (1 ms between attempts) because a restored workload usually
/// answers at once, then backs off to 50 ms. Connects time out quickly too (25 ms, growing
/// to 1 s): a SYN sent before a restoring sandbox attached its network is lost, and the
/// kernel would only retransmit it after a full second, so a fresh attempt is faster.
pub async fn wait_ready(
    dialer: &dyn Dialer,
    probe: &HttpProbe,
    deadline: Duration,
    exited: &(dyn Fn() -> Option<String> + Send + Sync),
) -> Result<Duration, NotReady> {
    let start = Instant::now();
    let mut pause = Duration::from_millis(1);
    let mut connect_timeout = Duration::from_millis(25);
    let mut last = String::from("no attempt");
    loop {
        if let Some(why) = exited() {
            return Err(NotReady::Exited(why));
        }
        let left = deadline.saturating_sub(start.elapsed());
        if left.is_zero() {
            return Err(NotReady::Timeout {
                path: probe.path.clone(),
                port: probe.port,
                waited_ms: start.elapsed().as_millis(),
                last,
            });
        }
        match http_get_status(dialer, probe, connect_timeout.min(left), left.min(Duration::from_secs(5)))
            .await
        {
            Ok(200) => return Ok(start.elapsed()),
            Ok(code) => last = format!("HTTP {code}"),
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {
                last = e.to_string();
                connect_timeout = (connect_timeout * 2).min(Duration::from_secs(1));
                continue;
            }
            Err(e) => last = e.to_string(),
        }
        tokio::time::sleep(pause.min(deadline.saturating_sub(start.elapsed()))).await;
        pause = (pause * 2).min(Duration::from_millis(50));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_lines() {
        assert_eq!(parse_status(b"HTTP/1.1 200 OK\r\n"), Some(200));
        assert_eq!(parse_status(b"HTTP/1.0 503 Busy"), Some(503));
        assert_eq!(parse_status(b"HTTP/1.1 20"), None);
        assert_eq!(parse_status(b"SSH-2.0"), None);
        assert_eq!(parse_status(b""), None);
    }
}
