//! The serial console of a VM, reachable from the host through a unix socket (mode 0600:
//! root's only) in the sandbox's work directory.
//!
//! The hub keeps reading the guest's output (so the VMM never blocks on it), remembers the
//! last 64 KiB of it, lets the backend wait for a line (readiness of guests without a
//! network), and connects one client at a time to the socket: what the client sends goes to
//! the guest, what the guest prints goes to the client. A new client replaces the previous
//! one. A client that does not keep up (more than [`CLIENT_BACKLOG`] chunks behind) is
//! disconnected: a slow reader never holds up the guest's output (it can reattach; the
//! history is kept).
//!
//! Clients name the socket as `unix://<path>`; [`connect`] reaches it even when the path is
//! longer than a socket address allows.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::UnixListener;
use tokio::sync::{Notify, mpsc};
use tokio::task::JoinHandle;
use tracing::{debug, warn};

const HISTORY: usize = 64 << 10;
/// Chunks of guest output queued for a client before it counts as too slow.
pub const CLIENT_BACKLOG: usize = 256;

struct Inner {
    /// The last bytes the guest printed, and how many it printed in all.
    history: Mutex<(VecDeque<u8>, u64)>,
    printed: Notify,
    /// The attached client's queue of guest output.
    client: Mutex<Option<mpsc::Sender<Vec<u8>>>>,
}

/// A running console hub. Dropping it stops its tasks and removes its socket.
pub struct Console {
    path: PathBuf,
    inner: Arc<Inner>,
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for Console {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Connects to a console hub's `unix://` address.
pub async fn connect(addr: &str) -> std::io::Result<tokio::net::UnixStream> {
    let path = addr.strip_prefix("unix://").ok_or_else(|| {
        std::io::Error::new(std::io::ErrorKind::InvalidInput, format!("{addr:?} is not a unix:// console"))
    })?;
    let short = crate::SocketPath::new(Path::new(path))?;
    tokio::net::UnixStream::connect(short.path()).await
}

impl Console {
    /// Starts the hub on `from_guest` / `to_guest`, serving clients on the unix socket `path`
    /// (created with mode 0600; a stale file there is replaced).
    pub async fn start<R, W>(
        from_guest: R,
        to_guest: W,
        label: String,
        path: &Path,
    ) -> std::io::Result<Console>
    where
        R: AsyncRead + Unpin + Send + 'static,
        W: AsyncWrite + Unpin + Send + 'static,
    {
        let _ = std::fs::remove_file(path);
        let short = crate::SocketPath::new(path)?;
        // Created private: no window in which another user could connect.
        let old = nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o177));
        let listener = UnixListener::bind(short.path());
        nix::sys::stat::umask(old);
        let listener = listener?;
        let inner = Arc::new(Inner {
            history: Mutex::new((VecDeque::with_capacity(4096), 0)),
            printed: Notify::new(),
            client: Mutex::new(None),
        });
        let (tx, rx) = mpsc::channel::<Vec<u8>>(64);
        let tasks = vec![
            tokio::spawn(pump_output(from_guest, inner.clone(), label)),
            tokio::spawn(pump_input(rx, to_guest)),
            tokio::spawn(accept(listener, inner.clone(), tx)),
        ];
        Ok(Console { path: path.to_owned(), inner, tasks })
    }

    /// The address clients connect to: `unix://<path>`.
    pub fn addr(&self) -> String {
        format!("unix://{}", self.path.display())
    }

    /// How many bytes the guest has printed so far (a mark for [`Console::wait_for`]).
    pub fn printed(&self) -> u64 {
        self.inner.history.lock().expect("console lock").1
    }

    /// Waits until the guest prints a complete line containing `needle` after byte `since`.
    pub async fn wait_for(&self, needle: &str, since: u64, timeout: Duration) -> Result<(), String> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let notified = self.inner.printed.notified();
            {
                let h = self.inner.history.lock().expect("console lock");
                let (buf, total) = &*h;
                let start = total.saturating_sub(buf.len() as u64);
                let skip = since.saturating_sub(start) as usize;
                let text: Vec<u8> = buf.iter().skip(skip).copied().collect();
                // Complete lines only: a line whose newline has not arrived yet is not
                // printed yet (a client attaching now would still receive its end).
                let complete = text.iter().rposition(|b| *b == b'\n').map_or(&text[..0], |i| &text[..=i]);
                if String::from_utf8_lossy(complete).lines().any(|l| l.contains(needle)) {
                    return Ok(());
                }
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return Err(format!(
                    "no console line containing {needle:?} within {timeout:?}; last output: {}",
                    self.tail(512)
                ));
            }
        }
    }

    /// The last `n` bytes the guest printed, as text.
    pub fn tail(&self, n: usize) -> String {
        let h = self.inner.history.lock().expect("console lock");
        let skip = h.0.len().saturating_sub(n);
        let bytes: Vec<u8> = h.0.iter().skip(skip).copied().collect();
        String::from_utf8_lossy(&bytes).into_owned()
    }
}

async fn pump_output<R: AsyncRead + Unpin>(mut from_guest: R, inner: Arc<Inner>, label: String) {
    let mut buf = vec![0u8; 4096];
    loop {
        let n = match from_guest.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let chunk = &buf[..n];
        {
            let mut h = inner.history.lock().expect("console lock");
            h.0.extend(chunk.iter().copied());
            let excess = h.0.len().saturating_sub(HISTORY);
            h.0.drain(..excess);
            h.1 += n as u64;
        }
        debug!(target: "ateom_microvm::console", vm = %label, text = %String::from_utf8_lossy(chunk).trim_end(), "guest console");
        {
            let mut client = inner.client.lock().expect("console lock");
            if let Some(tx) = client.as_ref() {
                match tx.try_send(chunk.to_vec()) {
                    Ok(()) => {}
                    Err(mpsc::error::TrySendError::Full(_)) => {
                        warn!(vm = %label, "console client too slow; disconnected (the guest is never held up)");
                        *client = None;
                    }
                    Err(mpsc::error::TrySendError::Closed(_)) => *client = None,
                }
            }
        }
        // Waiters learn of output only after it was queued for the client attached at the
        // time, so a client that attaches once a wait returned never sees that output again.
        inner.printed.notify_waiters();
    }
}

async fn pump_input<W: AsyncWrite + Unpin>(mut rx: mpsc::Receiver<Vec<u8>>, mut to_guest: W) {
    while let Some(bytes) = rx.recv().await {
        if to_guest.write_all(&bytes).await.is_err() || to_guest.flush().await.is_err() {
            break;
        }
    }
}

async fn accept(listener: UnixListener, inner: Arc<Inner>, tx: mpsc::Sender<Vec<u8>>) {
    let mut tasks: Vec<JoinHandle<()>> = Vec::new();
    while let Ok((stream, _)) = listener.accept().await {
        for t in tasks.drain(..) {
            t.abort();
        }
        let (mut r, mut w) = stream.into_split();
        let (out_tx, mut out_rx) = mpsc::channel::<Vec<u8>>(CLIENT_BACKLOG);
        *inner.client.lock().expect("console lock") = Some(out_tx);
        debug!("console client attached");
        tasks.push(tokio::spawn(async move {
            while let Some(chunk) = out_rx.recv().await {
                if w.write_all(&chunk).await.is_err() {
                    break;
                }
            }
        }));
        let tx = tx.clone();
        tasks.push(tokio::spawn(async move {
            let mut buf = vec![0u8; 1024];
            loop {
                match r.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        if tx.send(buf[..n].to_vec()).await.is_err() {
                            break;
                        }
                    }
                }
            }
        }));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncBufReadExt, BufReader};

    #[tokio::test]
    async fn relays_both_ways_and_waits_for_lines() {
        // A fake "guest": answers each byte with its count.
        let (guest_out_w, guest_out_r) = tokio::io::duplex(1024);
        let (guest_in_w, mut guest_in_r) = tokio::io::duplex(1024);
        let dir = tempfile::tempdir().unwrap();
        let console = Console::start(guest_out_r, guest_in_w, "test".into(), &dir.path().join("serial.sock"))
            .await
            .unwrap();
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.path().join("serial.sock")).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "root's only");
        let guest = tokio::spawn(async move {
            let mut out = guest_out_w;
            out.write_all(b"booting\nREADY\n").await.unwrap();
            let mut n = 0;
            let mut b = [0u8; 1];
            while guest_in_r.read_exact(&mut b).await.is_ok() {
                n += 1;
                out.write_all(format!("{n}\n").as_bytes()).await.unwrap();
            }
        });
        console.wait_for("READY", 0, Duration::from_secs(5)).await.unwrap();
        let mark = console.printed();
        assert!(
            console.wait_for("READY", mark, Duration::from_millis(50)).await.is_err(),
            "only new output counts"
        );

        let client = connect(&console.addr()).await.unwrap();
        let (r, mut w) = client.into_split();
        let mut lines = BufReader::new(r).lines();
        // Give the hub a moment to register the client before the guest answers.
        tokio::time::sleep(Duration::from_millis(50)).await;
        for want in ["1", "2", "3"] {
            w.write_all(b"x").await.unwrap();
            assert_eq!(lines.next_line().await.unwrap().unwrap(), want);
        }
        console.wait_for("3", mark, Duration::from_secs(1)).await.unwrap();
        assert!(console.tail(64).ends_with("2\n3\n"));
        drop(console);
        guest.abort();
    }

    #[tokio::test]
    async fn a_client_that_never_reads_never_holds_up_the_guest() {
        let (mut guest_out, guest_out_r) = tokio::io::duplex(4096);
        let (guest_in_w, _guest_in_r) = tokio::io::duplex(64);
        let dir = tempfile::tempdir().unwrap();
        let console = Console::start(guest_out_r, guest_in_w, "test".into(), &dir.path().join("serial.sock"))
            .await
            .unwrap();
        // Attached, never reading.
        let _stuck = connect(&console.addr()).await.unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        // 16 MiB of output: far more than socket buffers and the client's backlog.
        let line = vec![b'x'; 4095];
        let written = tokio::time::timeout(Duration::from_secs(20), async {
            for _ in 0..4096 {
                guest_out.write_all(&line).await.unwrap();
                guest_out.write_all(b"\n").await.unwrap();
            }
            guest_out.write_all(b"DONE\n").await.unwrap();
        })
        .await;
        assert!(written.is_ok(), "the guest's output was held up by a client that does not read");
        console.wait_for("DONE", 0, Duration::from_secs(5)).await.unwrap();
    }
}
