//! The real [`GuestOps`]: clocks, the kernel RNG ioctls, the boot id.

use std::fs::OpenOptions;
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use ateom_init::protocol::{ENTROPY_LEN, Entropy};
use ateom_init::server::{GuestOpError, GuestOps};
use nix::sys::time::TimeSpec;
use nix::time::{ClockId, clock_gettime, clock_settime};

/// `RNDADDENTROPY`: `_IOW('R', 0x03, int[2])` from `<linux/random.h>`.
const RNDADDENTROPY: libc::c_ulong = 0x4008_5203;
/// `RNDRESEEDCRNG`: `_IO('R', 0x07)`.
const RNDRESEEDCRNG: libc::c_ulong = 0x5207;
/// The device the RNG ioctls go to.
const RANDOM_DEVICE: &str = "/dev/urandom";

/// `struct rand_pool_info` with its flexible `buf` sized for one `sync`'s entropy.
#[repr(C)]
struct RandPoolInfo {
    entropy_count: libc::c_int,
    buf_size: libc::c_int,
    buf: [u8; ENTROPY_LEN],
}

/// The guest system, as the control channel sees it.
#[derive(Clone, Default)]
pub struct SystemOps {
    /// The workload's pid, 0 when none runs.
    pub workload_pid: Arc<AtomicU32>,
}

fn read_clock(clock: ClockId, name: &str) -> Result<i64, GuestOpError> {
    let t =
        clock_gettime(clock).map_err(|e| GuestOpError::new(format!("clock_gettime({name})"), e.into()))?;
    Ok(t.tv_sec().saturating_mul(1_000_000_000).saturating_add(t.tv_nsec()))
}

impl GuestOps for SystemOps {
    fn realtime_ns(&self) -> Result<i64, GuestOpError> {
        read_clock(ClockId::CLOCK_REALTIME, "CLOCK_REALTIME")
    }

    fn set_realtime_ns(&mut self, unix_ns: i64) -> Result<(), GuestOpError> {
        let spec = TimeSpec::new(unix_ns.div_euclid(1_000_000_000), unix_ns.rem_euclid(1_000_000_000));
        clock_settime(ClockId::CLOCK_REALTIME, spec)
            .map_err(|e| GuestOpError::new(format!("clock_settime(CLOCK_REALTIME, {unix_ns} ns)"), e.into()))
    }

    fn add_entropy(&mut self, entropy: &Entropy) -> Result<u32, GuestOpError> {
        let bits = 8 * ENTROPY_LEN as u32;
        let device = OpenOptions::new()
            .read(true)
            .write(true)
            .open(RANDOM_DEVICE)
            .map_err(|e| GuestOpError::new(format!("opening {RANDOM_DEVICE}"), e))?;
        let info = RandPoolInfo {
            entropy_count: bits as libc::c_int,
            buf_size: ENTROPY_LEN as libc::c_int,
            buf: entropy.0,
        };
        // SAFETY: RNDADDENTROPY reads a rand_pool_info whose buf has buf_size bytes; `info`
        // is exactly that and lives across the call.
        let rc = unsafe { libc::ioctl(device.as_raw_fd(), RNDADDENTROPY, &info as *const RandPoolInfo) };
        if rc < 0 {
            return Err(GuestOpError::new(
                format!("ioctl(RNDADDENTROPY, {bits} bits) on {RANDOM_DEVICE}"),
                std::io::Error::last_os_error(),
            ));
        }
        Ok(bits)
    }

    fn reseed_crng(&mut self) -> Result<(), GuestOpError> {
        let device = OpenOptions::new()
            .read(true)
            .open(RANDOM_DEVICE)
            .map_err(|e| GuestOpError::new(format!("opening {RANDOM_DEVICE}"), e))?;
        // SAFETY: RNDRESEEDCRNG takes no argument.
        let rc = unsafe { libc::ioctl(device.as_raw_fd(), RNDRESEEDCRNG, 0) };
        if rc < 0 {
            return Err(GuestOpError::new(
                format!("ioctl(RNDRESEEDCRNG) on {RANDOM_DEVICE}"),
                std::io::Error::last_os_error(),
            ));
        }
        Ok(())
    }

    fn uptime_ns(&self) -> Result<u64, GuestOpError> {
        read_clock(ClockId::CLOCK_BOOTTIME, "CLOCK_BOOTTIME").map(|ns| ns.max(0).unsigned_abs())
    }

    fn boot_id(&self) -> Result<String, GuestOpError> {
        let path = "/proc/sys/kernel/random/boot_id";
        std::fs::read_to_string(path)
            .map(|s| s.trim().to_owned())
            .map_err(|e| GuestOpError::new(format!("reading {path}"), e))
    }

    fn workload_pid(&self) -> Option<u32> {
        Some(self.workload_pid.load(Ordering::Relaxed)).filter(|pid| *pid != 0)
    }
}

/// Seconds since boot, for log lines.
pub fn uptime_s() -> f64 {
    SystemOps::default().uptime_ns().map_or(0.0, |ns| ns as f64 / 1e9)
}
