//! The guest side of the control channel, as pure logic over [`GuestOps`].
//!
//! `ateom-init` implements [`GuestOps`] with the real system calls (`clock_settime`,
//! `RNDADDENTROPY`, `RNDRESEEDCRNG`, ...); tests implement it with a fake. The socket handling
//! (accept, timeouts, peer check with [`is_host_peer`]) lives in the binary.

use std::net::{IpAddr, Ipv4Addr};

use thiserror::Error;

use crate::protocol::{self, Entropy, ErrorKind, Request, Response};

/// A guest operation failed; `op` names it (`"clock_settime(CLOCK_REALTIME)"`, ...).
#[derive(Debug, Error)]
#[error("{op}: {source}")]
pub struct GuestOpError {
    /// What was being done.
    pub op: String,
    /// The system error.
    #[source]
    pub source: std::io::Error,
}

impl GuestOpError {
    /// `op` failed with `source`.
    pub fn new(op: impl Into<String>, source: std::io::Error) -> GuestOpError {
        GuestOpError { op: op.into(), source }
    }
}

/// What the control channel needs from the guest system.
pub trait GuestOps {
    /// `CLOCK_REALTIME`, ns since the epoch.
    fn realtime_ns(&self) -> Result<i64, GuestOpError>;
    /// Sets `CLOCK_REALTIME`.
    fn set_realtime_ns(&mut self, unix_ns: i64) -> Result<(), GuestOpError>;
    /// Adds `entropy` to the kernel's input pool, crediting it; returns the bits credited.
    fn add_entropy(&mut self, entropy: &Entropy) -> Result<u32, GuestOpError>;
    /// Forces the kernel CRNG to reseed from the input pool.
    fn reseed_crng(&mut self) -> Result<(), GuestOpError>;
    /// `CLOCK_BOOTTIME`, ns.
    fn uptime_ns(&self) -> Result<u64, GuestOpError>;
    /// The kernel's boot id.
    fn boot_id(&self) -> Result<String, GuestOpError>;
    /// The workload's pid while it runs.
    fn workload_pid(&self) -> Option<u32>;
}

/// Carries out one decoded request.
pub fn handle(request: &Request, ops: &mut impl GuestOps) -> Response {
    let result = match request {
        Request::Hello => hello(ops),
        Request::Ping => ops.uptime_ns().map(|uptime_ns| Response::Pong { uptime_ns }),
        Request::Sync { unix_time_ns, entropy } => sync(*unix_time_ns, entropy, ops),
    };
    result.unwrap_or_else(|e| Response::error(ErrorKind::Failed, e.to_string()))
}

fn hello(ops: &mut impl GuestOps) -> Result<Response, GuestOpError> {
    Ok(Response::Hello {
        init_version: env!("CARGO_PKG_VERSION").to_owned(),
        uptime_ns: ops.uptime_ns()?,
        boot_id: ops.boot_id()?,
        unix_time_ns: ops.realtime_ns()?,
        workload_pid: ops.workload_pid(),
    })
}

fn sync(unix_time_ns: i64, entropy: &Entropy, ops: &mut impl GuestOps) -> Result<Response, GuestOpError> {
    let before_unix_ns = ops.realtime_ns()?;
    ops.set_realtime_ns(unix_time_ns)?;
    let entropy_bits = ops.add_entropy(entropy)?;
    ops.reseed_crng()?;
    let after_unix_ns = ops.realtime_ns()?;
    Ok(Response::Synced {
        before_unix_ns,
        after_unix_ns,
        delta_ns: unix_time_ns.saturating_sub(before_unix_ns),
        entropy_bits,
        reseeded: true,
    })
}

/// Decodes a request frame and carries it out; a frame that does not decode is answered
/// with an error response (never a panic, whatever the bytes).
pub fn answer(frame: &[u8], ops: &mut impl GuestOps) -> Response {
    match protocol::decode_request(frame) {
        Ok(request) => handle(&request, ops),
        Err(e) => Response::for_decode_error(&e),
    }
}

/// Whether a connection from `peer` may use the control channel: not from the guest itself
/// (loopback, the unspecified address, or the guest's own `guest_ip`), since only the host
/// side may set the clock.
pub fn is_host_peer(peer: IpAddr, guest_ip: Option<Ipv4Addr>) -> bool {
    let peer = peer.to_canonical();
    if peer.is_loopback() || peer.is_unspecified() {
        return false;
    }
    match (peer, guest_ip) {
        (IpAddr::V4(p), Some(own)) => p != own,
        _ => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{ENTROPY_LEN, encode_request};

    #[derive(Default)]
    struct Fake {
        now: i64,
        pool: Vec<u8>,
        reseeds: u32,
        fail_settime: bool,
        calls: Vec<&'static str>,
    }

    impl GuestOps for Fake {
        fn realtime_ns(&self) -> Result<i64, GuestOpError> {
            Ok(self.now)
        }
        fn set_realtime_ns(&mut self, unix_ns: i64) -> Result<(), GuestOpError> {
            self.calls.push("settime");
            if self.fail_settime {
                return Err(GuestOpError::new(
                    "clock_settime(CLOCK_REALTIME)",
                    std::io::Error::from_raw_os_error(libc::EPERM),
                ));
            }
            self.now = unix_ns;
            Ok(())
        }
        fn add_entropy(&mut self, entropy: &Entropy) -> Result<u32, GuestOpError> {
            self.calls.push("entropy");
            self.pool.extend_from_slice(&entropy.0);
            Ok(8 * ENTROPY_LEN as u32)
        }
        fn reseed_crng(&mut self) -> Result<(), GuestOpError> {
            self.calls.push("reseed");
            self.reseeds += 1;
            Ok(())
        }
        fn uptime_ns(&self) -> Result<u64, GuestOpError> {
            Ok(1234)
        }
        fn boot_id(&self) -> Result<String, GuestOpError> {
            Ok("boot-1".into())
        }
        fn workload_pid(&self) -> Option<u32> {
            Some(7)
        }
    }

    #[test]
    fn sync_sets_the_clock_then_adds_entropy_then_reseeds() {
        let mut fake = Fake { now: 1_000, ..Fake::default() };
        let request = Request::Sync { unix_time_ns: 5_000, entropy: Entropy([9; ENTROPY_LEN]) };
        let response = handle(&request, &mut fake);
        assert_eq!(
            response,
            Response::Synced {
                before_unix_ns: 1_000,
                after_unix_ns: 5_000,
                delta_ns: 4_000,
                entropy_bits: 512,
                reseeded: true
            }
        );
        assert_eq!(fake.calls, ["settime", "entropy", "reseed"]);
        assert_eq!(fake.pool, [9; ENTROPY_LEN]);
        assert_eq!(fake.reseeds, 1);
    }

    #[test]
    fn a_failed_step_answers_failed_naming_it_and_stops() {
        let mut fake = Fake { fail_settime: true, ..Fake::default() };
        let response =
            handle(&Request::Sync { unix_time_ns: 5, entropy: Entropy([0; ENTROPY_LEN]) }, &mut fake);
        let Response::Error { kind: ErrorKind::Failed, message } = response else { panic!("{response:?}") };
        assert!(message.contains("clock_settime(CLOCK_REALTIME)"), "{message}");
        assert_eq!(fake.calls, ["settime"]);
    }

    #[test]
    fn hello_and_ping() {
        let mut fake = Fake { now: 99, ..Fake::default() };
        assert_eq!(
            answer(&encode_request(&Request::Hello).unwrap(), &mut fake),
            Response::Hello {
                init_version: env!("CARGO_PKG_VERSION").into(),
                uptime_ns: 1234,
                boot_id: "boot-1".into(),
                unix_time_ns: 99,
                workload_pid: Some(7),
            }
        );
        assert_eq!(
            answer(b"{\"version\":1,\"type\":\"ping\"}\n", &mut fake),
            Response::Pong { uptime_ns: 1234 }
        );
    }

    #[test]
    fn garbage_is_answered_not_panicked_on() {
        let mut fake = Fake::default();
        for frame in [&b""[..], b"\xff\xfe", b"{", b"{\"version\":3,\"type\":\"ping\"}", b"null"] {
            assert!(matches!(answer(frame, &mut fake), Response::Error { .. }), "{frame:?}");
        }
        assert!(fake.calls.is_empty());
    }

    #[test]
    fn only_the_host_side_is_a_host_peer() {
        let guest = Some(Ipv4Addr::new(169, 254, 0, 2));
        assert!(is_host_peer("169.254.0.1".parse().unwrap(), guest));
        assert!(!is_host_peer("169.254.0.2".parse().unwrap(), guest));
        assert!(!is_host_peer("127.0.0.1".parse().unwrap(), guest));
        assert!(!is_host_peer("127.9.9.9".parse().unwrap(), None));
        assert!(!is_host_peer("::1".parse().unwrap(), guest));
        assert!(!is_host_peer("::ffff:169.254.0.2".parse().unwrap(), guest));
        assert!(!is_host_peer("0.0.0.0".parse().unwrap(), None));
        assert!(is_host_peer("169.254.0.1".parse().unwrap(), None));
    }

    proptest::proptest! {
        #[test]
        fn answer_is_total(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..400)) {
            let mut fake = Fake::default();
            let _ = answer(&bytes, &mut fake);
        }
    }
}
