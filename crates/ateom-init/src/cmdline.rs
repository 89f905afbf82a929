//! Boot parameters: the `ateom.*` words of the kernel command line.
//!
//! The kernel hands unknown `name=value` words to PID 1 as environment variables, but drops
//! the ones whose name contains a dot, so `ateom-init` reads `/proc/cmdline` and picks the
//! words that start with `ateom.` itself. Words after a lone `--` belong to init's argv and
//! are ignored here, like the kernel does.
//!
//! | word | meaning | default |
//! |---|---|---|
//! | `ateom.ip=169.254.0.2/30` | IPv4 address and prefix length of [`BootParams::iface`] | none: the interface stays unconfigured (still brought up) |
//! | `ateom.gw=169.254.0.1` | default route via this gateway | no default route |
//! | `ateom.mac=06:00:a9:fe:00:02` | set this MAC on the interface before bringing it up | keep the VMM's MAC |
//! | `ateom.iface=eth0` | the interface the words above apply to | `eth0` |
//! | `ateom.hostname=name` | hostname (wins over [`crate::WorkloadConfig::hostname`]) | config's, else `ateom` |
//! | `ateom.ctl_port=10789` | TCP port of the control channel ([`crate::protocol`]) | [`DEFAULT_CTL_PORT`] |
//! | `ateom.grace_ms=10000` | after a SIGTERM to PID 1: how long the workload may take to exit before it is killed | 10 000 |
//!
//! The host builds these words with [`BootParams::kernel_args`]; the guest parses them with
//! [`BootParams::parse_lenient`] (a bad word is reported and skipped, the rest still apply)
//! or [`BootParams::parse`] (the first bad word is an error).
//!
//! ```
//! use ateom_init::cmdline::BootParams;
//! let p = BootParams::parse("console=ttyS0 ateom.ip=169.254.0.2/30 ateom.gw=169.254.0.1").unwrap();
//! assert_eq!(p.ip.unwrap().to_string(), "169.254.0.2/30");
//! assert_eq!(p.ctl_port, ateom_init::DEFAULT_CTL_PORT);
//! ```

use std::fmt;
use std::net::Ipv4Addr;
use std::str::FromStr;
use std::time::Duration;

use thiserror::Error;

/// The control channel's TCP port when `ateom.ctl_port` is not given.
pub const DEFAULT_CTL_PORT: u16 = 10789;
/// The interface `ateom.ip`/`ateom.gw`/`ateom.mac` apply to when `ateom.iface` is not given.
pub const DEFAULT_IFACE: &str = "eth0";
/// The hostname when neither the command line nor the workload config names one.
pub const DEFAULT_HOSTNAME: &str = "ateom";
/// How long the workload may take to exit after a SIGTERM to PID 1, by default.
pub const DEFAULT_GRACE: Duration = Duration::from_secs(10);
/// The prefix of every word this module reads.
pub const PREFIX: &str = "ateom.";

/// A bad `ateom.*` word on the kernel command line.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum CmdlineError {
    /// The word has a known name but its value does not parse.
    #[error("kernel command line: {key}={value:?}: {reason}")]
    InvalidValue {
        /// The full parameter name, e.g. `ateom.ip`.
        key: String,
        /// The value as written.
        value: String,
        /// Why it was refused.
        reason: String,
    },
    /// A known parameter without `=value`.
    #[error("kernel command line: {key} needs a value ({key}=...)")]
    MissingValue {
        /// The full parameter name.
        key: String,
    },
}

/// An IPv4 address with a prefix length, written `a.b.c.d/len`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Ipv4Cidr {
    /// The interface address.
    pub addr: Ipv4Addr,
    /// The prefix length, 1..=32.
    pub prefix_len: u8,
}

impl Ipv4Cidr {
    /// `addr/prefix_len`; `None` if `prefix_len` is not in 1..=32.
    pub fn new(addr: Ipv4Addr, prefix_len: u8) -> Option<Ipv4Cidr> {
        (1..=32).contains(&prefix_len).then_some(Ipv4Cidr { addr, prefix_len })
    }

    /// Whether `ip` is inside this address's subnet.
    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        let mask = u32::MAX.checked_shl(32 - u32::from(self.prefix_len)).unwrap_or(0);
        (u32::from(self.addr) & mask) == (u32::from(ip) & mask)
    }
}

impl fmt::Display for Ipv4Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix_len)
    }
}

impl FromStr for Ipv4Cidr {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (addr, len) = s.split_once('/').ok_or("expected a.b.c.d/prefix_len")?;
        let addr: Ipv4Addr = addr.parse().map_err(|_| format!("{addr:?} is not an IPv4 address"))?;
        let prefix_len: u8 =
            len.parse().map_err(|_| format!("prefix length {len:?} is not a number in 1..=32"))?;
        Ipv4Cidr::new(addr, prefix_len).ok_or_else(|| format!("prefix length {prefix_len} is not in 1..=32"))
    }
}

/// A MAC address, written `aa:bb:cc:dd:ee:ff`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct MacAddr(pub [u8; 6]);

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let [a, b, c, d, e, g] = self.0;
        write!(f, "{a:02x}:{b:02x}:{c:02x}:{d:02x}:{e:02x}:{g:02x}")
    }
}

impl FromStr for MacAddr {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut out = [0u8; 6];
        let mut parts = s.split(':');
        for byte in &mut out {
            let part = parts.next().ok_or("expected six hex bytes separated by ':'")?;
            if part.len() != 2 {
                return Err(format!("{part:?} is not two hex digits"));
            }
            *byte = u8::from_str_radix(part, 16).map_err(|_| format!("{part:?} is not two hex digits"))?;
        }
        if parts.next().is_some() {
            return Err("more than six bytes".into());
        }
        if out[0] & 1 == 1 {
            return Err("a multicast address cannot be an interface's MAC".into());
        }
        Ok(MacAddr(out))
    }
}

/// Checks a hostname: 1..=64 bytes of ASCII letters, digits, `-` and `.`, not starting or
/// ending with `-` or `.` (what `sethostname(2)` takes and resolvers expect).
pub fn validate_hostname(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > 64 {
        return Err(format!("must be 1 to 64 bytes long, is {}", name.len()));
    }
    if let Some(c) = name.chars().find(|c| !(c.is_ascii_alphanumeric() || *c == '-' || *c == '.')) {
        return Err(format!("{c:?} is not allowed (letters, digits, '-' and '.' only)"));
    }
    if name.starts_with(['-', '.']) || name.ends_with(['-', '.']) {
        return Err("must not start or end with '-' or '.'".into());
    }
    Ok(())
}

/// What `ateom-init` reads from the kernel command line. [`Default`] is what an empty
/// command line gives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootParams {
    /// `ateom.ip`: the guest interface's address.
    pub ip: Option<Ipv4Cidr>,
    /// `ateom.gw`: the default gateway.
    pub gateway: Option<Ipv4Addr>,
    /// `ateom.mac`: a MAC to set on the interface.
    pub mac: Option<MacAddr>,
    /// `ateom.iface`: the interface to configure.
    pub iface: String,
    /// `ateom.hostname`.
    pub hostname: Option<String>,
    /// `ateom.ctl_port`: the control channel's TCP port.
    pub ctl_port: u16,
    /// `ateom.grace_ms`: the stop grace period.
    pub grace: Duration,
    /// Names of `ateom.*` words this version does not know (reported, otherwise ignored).
    pub unknown: Vec<String>,
}

impl Default for BootParams {
    fn default() -> Self {
        BootParams {
            ip: None,
            gateway: None,
            mac: None,
            iface: DEFAULT_IFACE.to_owned(),
            hostname: None,
            ctl_port: DEFAULT_CTL_PORT,
            grace: DEFAULT_GRACE,
            unknown: Vec::new(),
        }
    }
}

impl BootParams {
    /// Parses a kernel command line; the first bad `ateom.*` word is an error.
    pub fn parse(cmdline: &str) -> Result<BootParams, CmdlineError> {
        let (params, mut errors) = BootParams::parse_lenient(cmdline);
        if errors.is_empty() { Ok(params) } else { Err(errors.swap_remove(0)) }
    }

    /// Parses a kernel command line, skipping (and returning) the bad `ateom.*` words so
    /// that the good ones still apply. A repeated word: the last one wins, as in the kernel.
    pub fn parse_lenient(cmdline: &str) -> (BootParams, Vec<CmdlineError>) {
        let mut params = BootParams::default();
        let mut errors = Vec::new();
        for word in split_words(cmdline) {
            if word == "--" {
                break;
            }
            let (key, value) = match word.split_once('=') {
                Some((k, v)) => (k, Some(unquote(v))),
                None => (word.as_str(), None),
            };
            let Some(name) = key.strip_prefix(PREFIX) else { continue };
            if let Err(e) = params.apply(name, value) {
                errors.push(e);
            }
        }
        (params, errors)
    }

    fn apply(&mut self, name: &str, value: Option<&str>) -> Result<(), CmdlineError> {
        const KNOWN: [&str; 7] = ["ip", "gw", "mac", "iface", "hostname", "ctl_port", "grace_ms"];
        let key = format!("{PREFIX}{name}");
        if !KNOWN.contains(&name) {
            self.unknown.push(key);
            return Ok(());
        }
        let Some(value) = value else { return Err(CmdlineError::MissingValue { key }) };
        let invalid =
            |reason: String| CmdlineError::InvalidValue { key: key.clone(), value: value.to_owned(), reason };
        match name {
            "ip" => self.ip = Some(value.parse().map_err(invalid)?),
            "gw" => self.gateway = Some(value.parse().map_err(|_| invalid("not an IPv4 address".into()))?),
            "mac" => self.mac = Some(value.parse().map_err(invalid)?),
            "iface" => {
                if value.is_empty() || value.len() > 15 || value.contains(['/', ' ', '\0']) {
                    return Err(invalid("not an interface name (1 to 15 bytes, no '/')".into()));
                }
                self.iface = value.to_owned();
            }
            "hostname" => {
                validate_hostname(value).map_err(invalid)?;
                self.hostname = Some(value.to_owned());
            }
            "ctl_port" => {
                self.ctl_port = match value.parse::<u16>() {
                    Ok(0) | Err(_) => return Err(invalid("not a TCP port in 1..=65535".into())),
                    Ok(port) => port,
                };
            }
            // "grace_ms": the last of KNOWN.
            _ => {
                let ms: u64 =
                    value.parse().map_err(|_| invalid("not a whole number of milliseconds".into()))?;
                self.grace = Duration::from_millis(ms);
            }
        }
        Ok(())
    }

    /// The kernel command-line words that make `ateom-init` see these parameters (only the
    /// ones that differ from the defaults; `unknown` is not written). Space-separated.
    pub fn kernel_args(&self) -> String {
        let mut words = Vec::new();
        if let Some(ip) = self.ip {
            words.push(format!("{PREFIX}ip={ip}"));
        }
        if let Some(gw) = self.gateway {
            words.push(format!("{PREFIX}gw={gw}"));
        }
        if let Some(mac) = self.mac {
            words.push(format!("{PREFIX}mac={mac}"));
        }
        if self.iface != DEFAULT_IFACE {
            words.push(format!("{PREFIX}iface={}", self.iface));
        }
        if let Some(hostname) = &self.hostname {
            words.push(format!("{PREFIX}hostname={hostname}"));
        }
        if self.ctl_port != DEFAULT_CTL_PORT {
            words.push(format!("{PREFIX}ctl_port={}", self.ctl_port));
        }
        if self.grace != DEFAULT_GRACE {
            words.push(format!("{PREFIX}grace_ms={}", self.grace.as_millis()));
        }
        words.join(" ")
    }
}

/// Splits a command line into words like the kernel's `next_arg`: whitespace separates
/// words except inside double quotes; the quotes stay in the word (see [`unquote`]).
fn split_words(cmdline: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut current = String::new();
    let mut in_quotes = false;
    for c in cmdline.chars() {
        if c == '"' {
            in_quotes = !in_quotes;
            current.push(c);
        } else if c.is_whitespace() && !in_quotes {
            if !current.is_empty() {
                words.push(std::mem::take(&mut current));
            }
        } else {
            current.push(c);
        }
    }
    if !current.is_empty() {
        words.push(current);
    }
    // A word that started with a quote (`"name=value"`) is unquoted as a whole.
    words
        .into_iter()
        .map(|w| match w.strip_prefix('"') {
            Some(inner) if !inner.contains('"') || inner.ends_with('"') => {
                inner.strip_suffix('"').unwrap_or(inner).to_owned()
            }
            _ => w,
        })
        .collect()
}

/// `"value"` → `value`; anything else unchanged.
fn unquote(value: &str) -> &str {
    value.strip_prefix('"').and_then(|v| v.strip_suffix('"')).unwrap_or(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    const QEMU_LINE: &str = "console=ttyS0 root=/dev/vda rw rootfstype=ext4 panic=-1 pci=off reboot=t \
        tsc_early_khz=2100000 init=/sbin/ateom-init ateom.ip=169.254.0.2/30 ateom.gw=169.254.0.1 \
        virtio_mmio.device=512@0xfeb00e00:12\n";

    #[test]
    fn reads_the_words_of_a_real_qemu_command_line() {
        let p = BootParams::parse(QEMU_LINE).unwrap();
        assert_eq!(p.ip, Ipv4Cidr::new(Ipv4Addr::new(169, 254, 0, 2), 30));
        assert_eq!(p.gateway, Some(Ipv4Addr::new(169, 254, 0, 1)));
        assert_eq!(p.ctl_port, DEFAULT_CTL_PORT);
        assert_eq!(p.iface, "eth0");
        assert_eq!(p.grace, DEFAULT_GRACE);
        assert!(p.unknown.is_empty());
    }

    #[test]
    fn empty_command_line_gives_the_defaults() {
        assert_eq!(BootParams::parse("").unwrap(), BootParams::default());
        assert_eq!(BootParams::parse("   \n").unwrap(), BootParams::default());
    }

    #[test]
    fn every_parameter_round_trips_through_kernel_args() {
        let p = BootParams {
            ip: Ipv4Cidr::new(Ipv4Addr::new(169, 254, 7, 2), 30),
            gateway: Some(Ipv4Addr::new(169, 254, 7, 1)),
            mac: Some(MacAddr([0x06, 0, 0xa9, 0xfe, 0, 2])),
            iface: "eth1".into(),
            hostname: Some("actor-1.example".into()),
            ctl_port: 4000,
            grace: Duration::from_millis(1500),
            unknown: vec![],
        };
        let args = p.kernel_args();
        assert_eq!(
            args,
            "ateom.ip=169.254.7.2/30 ateom.gw=169.254.7.1 ateom.mac=06:00:a9:fe:00:02 ateom.iface=eth1 \
             ateom.hostname=actor-1.example ateom.ctl_port=4000 ateom.grace_ms=1500"
        );
        assert_eq!(BootParams::parse(&format!("console=ttyS0 {args} quiet")).unwrap(), p);
        assert_eq!(BootParams::default().kernel_args(), "");
    }

    #[test]
    fn last_word_wins_and_words_after_double_dash_are_ignored() {
        let p = BootParams::parse("ateom.ctl_port=1 ateom.ctl_port=2 -- ateom.ctl_port=3").unwrap();
        assert_eq!(p.ctl_port, 2);
    }

    #[test]
    fn quoted_values_are_unquoted() {
        let p = BootParams::parse("ateom.hostname=\"box-1\" \"ateom.iface=eth2\"").unwrap();
        assert_eq!(p.hostname.as_deref(), Some("box-1"));
        assert_eq!(p.iface, "eth2");
        // A space inside quotes keeps the word together (and then fails validation).
        let err = BootParams::parse("ateom.hostname=\"a b\" x=1").unwrap_err();
        assert!(err.to_string().contains("ateom.hostname"), "{err}");
    }

    #[test]
    fn unknown_ateom_words_are_collected_not_fatal() {
        let p = BootParams::parse("ateom.future=1 ateom.other ateom_ip=1.2.3.4/8").unwrap();
        assert_eq!(p.unknown, vec!["ateom.future".to_owned(), "ateom.other".to_owned()]);
        assert_eq!(p.ip, None, "ateom_ip (underscore) is not ours");
    }

    #[test]
    fn bad_values_name_the_key_and_the_reason() {
        let cases = [
            ("ateom.ip=169.254.0.2", "ateom.ip", "a.b.c.d/prefix_len"),
            ("ateom.ip=169.254.0.2/33", "ateom.ip", "not in 1..=32"),
            ("ateom.ip=169.254.0.2/0", "ateom.ip", "not in 1..=32"),
            ("ateom.ip=1.2.3/30", "ateom.ip", "not an IPv4 address"),
            ("ateom.gw=foo", "ateom.gw", "not an IPv4 address"),
            ("ateom.mac=06:00:a9:fe:00", "ateom.mac", "six hex bytes"),
            ("ateom.mac=01:00:5e:00:00:01", "ateom.mac", "multicast"),
            ("ateom.mac=06:00:a9:fe:00:zz", "ateom.mac", "two hex digits"),
            ("ateom.ctl_port=0", "ateom.ctl_port", "1..=65535"),
            ("ateom.ctl_port=70000", "ateom.ctl_port", "1..=65535"),
            ("ateom.grace_ms=-1", "ateom.grace_ms", "milliseconds"),
            ("ateom.hostname=-x", "ateom.hostname", "start or end"),
            ("ateom.hostname=a_b", "ateom.hostname", "not allowed"),
            ("ateom.iface=a/b", "ateom.iface", "interface name"),
        ];
        for (line, key, reason) in cases {
            let err = BootParams::parse(line).unwrap_err();
            let CmdlineError::InvalidValue { key: got, reason: why, .. } = &err else {
                panic!("{line}: unexpected {err:?}")
            };
            assert_eq!(got, key, "{line}");
            assert!(why.contains(reason), "{line}: {why}");
            assert!(err.to_string().contains(key), "{err}");
        }
        assert_eq!(
            BootParams::parse("ateom.ip").unwrap_err(),
            CmdlineError::MissingValue { key: "ateom.ip".into() }
        );
    }

    #[test]
    fn lenient_parse_keeps_the_good_words() {
        let (p, errors) =
            BootParams::parse_lenient("ateom.ip=nonsense ateom.gw=169.254.0.1 ateom.ctl_port=x");
        assert_eq!(p.gateway, Some(Ipv4Addr::new(169, 254, 0, 1)));
        assert_eq!(p.ip, None);
        assert_eq!(p.ctl_port, DEFAULT_CTL_PORT);
        assert_eq!(errors.len(), 2);
    }

    #[test]
    fn cidr_contains() {
        let c: Ipv4Cidr = "169.254.0.2/30".parse().unwrap();
        assert!(c.contains(Ipv4Addr::new(169, 254, 0, 1)));
        assert!(c.contains(Ipv4Addr::new(169, 254, 0, 3)));
        assert!(!c.contains(Ipv4Addr::new(169, 254, 0, 4)));
        let all: Ipv4Cidr = "10.0.0.1/32".parse().unwrap();
        assert!(all.contains(Ipv4Addr::new(10, 0, 0, 1)));
        assert!(!all.contains(Ipv4Addr::new(10, 0, 0, 2)));
        let wide: Ipv4Cidr = "10.0.0.1/1".parse().unwrap();
        assert!(wide.contains(Ipv4Addr::new(127, 0, 0, 1)));
        assert!(!wide.contains(Ipv4Addr::new(128, 0, 0, 1)));
    }

    #[test]
    fn hostnames() {
        assert!(validate_hostname("a").is_ok());
        assert!(validate_hostname(&"a".repeat(64)).is_ok());
        assert!(validate_hostname(&"a".repeat(65)).is_err());
        assert!(validate_hostname("").is_err());
        assert!(validate_hostname("ünï").is_err());
    }

    proptest::proptest! {
        #[test]
        fn parsing_arbitrary_text_never_panics(s in ".{0,400}") {
            let _ = BootParams::parse_lenient(&s);
            let _ = BootParams::parse(&format!("ateom.{s}"));
        }

        #[test]
        fn parsing_arbitrary_ateom_values_never_panics(
            key in proptest::sample::select(vec!["ip", "gw", "mac", "iface", "hostname", "ctl_port", "grace_ms"]),
            value in "[ -~]{0,40}",
        ) {
            let _ = BootParams::parse(&format!("ateom.{key}={value}"));
        }
    }
}
