//! A minimal QMP (QEMU Machine Protocol) client: JSON lines over the VM's unix socket.
//!
//! Hand-written: QMP is one JSON object per line, a greeting, `qmp_capabilities`, then
//! commands answered by `return` or `error` with asynchronous `event`s interleaved; the Rust
//! crates for it (`qapi`) generate the whole schema of one QEMU version, while ateom needs
//! six commands and must work with the distribution's QEMU, whatever its version.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};

/// Errors of QMP calls; `Refused` carries QEMU's own class and description.
#[derive(Debug, thiserror::Error)]
pub enum QmpError {
    #[error("QMP socket {path}: {source}")]
    Connect {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("QEMU did not answer {command} within {timeout:?}")]
    Timeout { command: String, timeout: Duration },
    #[error("QEMU refused {command}: {class}: {desc}")]
    Refused { command: String, class: String, desc: String },
    #[error("QMP {command}: {detail}")]
    Protocol { command: String, detail: String },
}

/// A QMP session (capabilities negotiated).
pub struct Qmp {
    lines: tokio::io::Lines<BufReader<OwnedReadHalf>>,
    w: OwnedWriteHalf,
}

impl Qmp {
    /// Connects and negotiates capabilities.
    pub async fn connect(path: &Path) -> Result<Qmp, QmpError> {
        let err = |source| QmpError::Connect { path: path.to_owned(), source };
        // Deep work directories exceed sockaddr_un: connect through the directory's fd.
        let short = ateom_microvm::SocketPath::new(path).map_err(err)?;
        let stream = UnixStream::connect(short.path()).await.map_err(err)?;
        let (r, w) = stream.into_split();
        let mut qmp = Qmp { lines: BufReader::new(r).lines(), w };
        let greeting = qmp.read_value("greeting", Duration::from_secs(10)).await?;
        if greeting.get("QMP").is_none() {
            return Err(QmpError::Protocol {
                command: "greeting".into(),
                detail: format!("unexpected {greeting}"),
            });
        }
        qmp.execute("qmp_capabilities", None).await?;
        Ok(qmp)
    }

    async fn read_value(&mut self, command: &str, timeout: Duration) -> Result<Value, QmpError> {
        let line = tokio::time::timeout(timeout, self.lines.next_line())
            .await
            .map_err(|_| QmpError::Timeout { command: command.into(), timeout })?
            .map_err(|e| QmpError::Protocol { command: command.into(), detail: e.to_string() })?
            .ok_or_else(|| QmpError::Protocol {
                command: command.into(),
                detail: "QEMU closed the QMP socket".into(),
            })?;
        serde_json::from_str(&line).map_err(|e| QmpError::Protocol {
            command: command.into(),
            detail: format!("bad JSON {line:?}: {e}"),
        })
    }

    /// Runs a command and returns its `return` value (events are skipped).
    pub async fn execute(&mut self, command: &str, arguments: Option<Value>) -> Result<Value, QmpError> {
        self.execute_timeout(command, arguments, Duration::from_secs(30)).await
    }

    pub async fn execute_timeout(
        &mut self,
        command: &str,
        arguments: Option<Value>,
        timeout: Duration,
    ) -> Result<Value, QmpError> {
        let mut msg = json!({ "execute": command });
        if let Some(a) = arguments {
            msg["arguments"] = a;
        }
        let mut line = msg.to_string();
        line.push('\n');
        self.w
            .write_all(line.as_bytes())
            .await
            .map_err(|e| QmpError::Protocol { command: command.into(), detail: e.to_string() })?;
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let v = self.read_value(command, left).await?;
            if let Some(r) = v.get("return") {
                return Ok(r.clone());
            }
            if let Some(e) = v.get("error") {
                return Err(QmpError::Refused {
                    command: command.into(),
                    class: e["class"].as_str().unwrap_or_default().into(),
                    desc: e["desc"].as_str().unwrap_or_default().into(),
                });
            }
            // An asynchronous event: not our answer.
        }
    }

    /// Hands QEMU an open file as `fdname` (`getfd` with the descriptor attached to the
    /// command's bytes, SCM_RIGHTS): QEMU then reads or writes it itself, for example a
    /// migration to `fd:<fdname>` — no helper process, so `-sandbox spawn=deny` holds and a
    /// QEMU that dropped root and chrooted still reaches the snapshot file.
    pub async fn pass_fd(&mut self, fdname: &str, fd: std::os::fd::BorrowedFd<'_>) -> Result<(), QmpError> {
        use std::os::fd::AsRawFd;
        let command = "getfd";
        let line = format!("{}\n", json!({ "execute": command, "arguments": { "fdname": fdname } }));
        let proto = |detail: String| QmpError::Protocol { command: command.into(), detail };
        let stream: &UnixStream = self.w.as_ref();
        let fds = [fd.as_raw_fd()];
        loop {
            stream.writable().await.map_err(|e| proto(e.to_string()))?;
            let sent = stream.try_io(tokio::io::Interest::WRITABLE, || {
                let iov = [std::io::IoSlice::new(line.as_bytes())];
                let cmsg = [nix::sys::socket::ControlMessage::ScmRights(&fds)];
                nix::sys::socket::sendmsg::<()>(
                    stream.as_raw_fd(),
                    &iov,
                    &cmsg,
                    nix::sys::socket::MsgFlags::empty(),
                    None,
                )
                .map_err(std::io::Error::from)
            });
            match sent {
                Ok(n) if n == line.len() => break,
                Ok(n) => return Err(proto(format!("sent {n} of {} bytes", line.len()))),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                Err(e) => return Err(proto(e.to_string())),
            }
        }
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let v = self.read_value(command, left).await?;
            if v.get("return").is_some() {
                return Ok(());
            }
            if let Some(e) = v.get("error") {
                return Err(QmpError::Refused {
                    command: command.into(),
                    class: e["class"].as_str().unwrap_or_default().into(),
                    desc: e["desc"].as_str().unwrap_or_default().into(),
                });
            }
        }
    }

    /// Polls `query-migrate` until it completes (or fails).
    pub async fn wait_migration(&mut self, timeout: Duration) -> Result<Value, QmpError> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let r = self.execute("query-migrate", None).await?;
            match r["status"].as_str().unwrap_or("") {
                "completed" => return Ok(r),
                "failed" | "cancelled" => {
                    return Err(QmpError::Refused {
                        command: "migrate".into(),
                        class: r["status"].as_str().unwrap_or_default().into(),
                        desc: r["error-desc"].as_str().unwrap_or("migration failed").into(),
                    });
                }
                _ => {}
            }
            if tokio::time::Instant::now() > deadline {
                return Err(QmpError::Timeout { command: "migrate".into(), timeout });
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }
}
