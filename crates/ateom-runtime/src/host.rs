//! The host fingerprint: what a snapshot that needs "the same host" must find again.

use ateom_core::HostFingerprint;
use sha2::{Digest, Sha256};

/// Builds a fingerprint from `/proc/cpuinfo` text, the kernel release and a host id.
pub fn fingerprint_from(cpuinfo: &str, kernel_release: &str, host_id: &str) -> HostFingerprint {
    let field = |key: &str| {
        cpuinfo
            .lines()
            .filter_map(|l| l.split_once(':'))
            .find(|(k, _)| k.trim() == key)
            .map(|(_, v)| v.trim().to_owned())
            .unwrap_or_default()
    };
    let mut flags: Vec<&str> = cpuinfo
        .lines()
        .filter_map(|l| l.split_once(':'))
        .find(|(k, _)| k.trim() == "flags")
        .map(|(_, v)| v.split_whitespace().collect())
        .unwrap_or_default();
    flags.sort_unstable();
    flags.dedup();
    let digest = hex::encode(Sha256::digest(flags.join(" ").as_bytes()));
    let family = field("cpu family");
    let model_no = field("model");
    let name = field("model name");
    HostFingerprint {
        cpu_vendor: field("vendor_id"),
        cpu_model: format!("{name} (family {family} model {model_no})"),
        cpu_flags_digest: digest[..16].to_owned(),
        host_kernel: kernel_release.trim().to_owned(),
        host_id: host_id.to_owned(),
    }
}

/// Reads this machine's fingerprint. `host_id` defaults to `/etc/machine-id`.
pub fn probe(host_id: Option<&str>) -> HostFingerprint {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let id = match host_id {
        Some(id) => id.to_owned(),
        None => std::fs::read_to_string("/etc/machine-id")
            .map(|s| s.trim().chars().take(12).collect())
            .unwrap_or_else(|_| "unknown".into()),
    };
    fingerprint_from(&cpuinfo, &kernel, &id)
}

#[cfg(test)]
mod tests {
    use super::*;

    const CPUINFO: &str = "processor\t: 0\nvendor_id\t: AuthenticAMD\ncpu family\t: 25\nmodel\t\t: 17\nmodel name\t: AMD EPYC\nflags\t\t: sse2 avx2 fpu\n\nprocessor\t: 1\nvendor_id\t: AuthenticAMD\nflags\t\t: sse2 avx2 fpu\n";

    #[test]
    fn parses_vendor_model_and_digests_sorted_flags() {
        let f = fingerprint_from(CPUINFO, "6.1.0\n", "node-a");
        assert_eq!(f.cpu_vendor, "AuthenticAMD");
        assert_eq!(f.cpu_model, "AMD EPYC (family 25 model 17)");
        assert_eq!(f.host_kernel, "6.1.0");
        assert_eq!(f.host_id, "node-a");
        let reordered = CPUINFO.replace("sse2 avx2 fpu", "fpu sse2 avx2");
        assert_eq!(fingerprint_from(&reordered, "6.1.0", "x").cpu_flags_digest, f.cpu_flags_digest);
        let fewer = CPUINFO.replace("sse2 avx2 fpu", "fpu sse2");
        assert_ne!(fingerprint_from(&fewer, "6.1.0", "x").cpu_flags_digest, f.cpu_flags_digest);
    }

    #[test]
    fn probes_this_machine() {
        let f = probe(Some("me"));
        assert!(!f.cpu_vendor.is_empty());
        assert!(!f.host_kernel.is_empty());
        assert_eq!(f.cpu_flags_digest.len(), 16);
    }
}
