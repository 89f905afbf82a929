//! Snapshot ids and what the control plane says about snapshots that exist (or do not), as
//! pure functions.
//!
//! * [`new_snapshot_id`]: the id an intent records *before* the worker is called (the worker
//!   writes the snapshot under exactly that id, or refuses), in ateom's own format
//!   `<UTC yyyymmddThhmmss.mmm>-<8 hex>`, so ids of one actor sort by age;
//! * [`Seen`]: one snapshot of an actor that exists somewhere (a worker's local snapshot,
//!   complete or quarantined; a durable one; the template's golden one), with its age;
//! * [`missing_reason`]: the reason of a CRASHED actor whose recorded snapshot does not
//!   exist: it names the newest snapshot that does, its age, and the explicit command that
//!   would resume from it — never a silent fallback to older state.
//!
//! ```
//! use ate_core::snapshot::{Place, Seen, missing_reason, new_snapshot_id};
//! let id = new_snapshot_id(1_764_347_462_123, 0xdeadbeef);
//! assert_eq!(id, "20251128T163102.123-deadbeef");
//! let seen = [Seen { id: "s1".into(), place: Place::Durable, created_ms: Some(1_000) }];
//! let why = missing_reason("a1", "paused snapshot s2 on worker w1", "s2", &seen, 181_000);
//! assert!(why.contains("s1") && why.contains("3m old") && why.contains("--from-snapshot s1"));
//! ```

use serde::{Deserialize, Serialize};

/// `yyyymmddThhmmss.mmm-xxxxxxxx` for `now_ms` (UTC) and 32 bits of entropy: a valid ateom
/// snapshot id that sorts by creation time.
pub fn new_snapshot_id(now_ms: u64, entropy: u32) -> String {
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_millis(now_ms);
    // `2025-11-28T16:31:02.123Z` without its separators and zone: `20251128T163102.123`.
    let compact: String = humantime::format_rfc3339_millis(t)
        .to_string()
        .chars()
        .filter(|c| !matches!(c, '-' | ':' | 'Z'))
        .collect();
    format!("{compact}-{entropy:08x}")
}

/// Checks that `id` is a snapshot id ateom accepts (1..=128 bytes of `[A-Za-z0-9._-]`,
/// alphanumeric first: a safe single path component). The error says why not.
pub fn check_snapshot_id(id: &str) -> Result<(), String> {
    if id.is_empty() || id.len() > 128 {
        return Err(format!("snapshot id {id:?} must be 1 to 128 bytes long"));
    }
    if !id.as_bytes()[0].is_ascii_alphanumeric() {
        return Err(format!("snapshot id {id:?} must start with a letter or digit"));
    }
    if let Some(bad) = id.chars().find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))) {
        return Err(format!(
            "snapshot id {id:?} contains {bad:?}; only letters, digits, '.', '_' and '-' are allowed"
        ));
    }
    Ok(())
}

/// Parses the RFC 3339 UTC timestamps ateom writes (`2025-11-28T16:31:02.123Z`, fraction
/// optional) into Unix ms. Anything else is `None` (an unknown age, never a guess).
pub fn parse_rfc3339_ms(s: &str) -> Option<u64> {
    let s = match s.strip_suffix("+00:00") {
        Some(rest) => std::borrow::Cow::Owned(format!("{rest}Z")),
        None => std::borrow::Cow::Borrowed(s),
    };
    let t = humantime::parse_rfc3339(&s).ok()?;
    u64::try_from(t.duration_since(std::time::UNIX_EPOCH).ok()?.as_millis()).ok()
}

/// When a snapshot id made by [`new_snapshot_id`] was chosen (Unix ms); `None` for ids of
/// another shape (a golden snapshot named by a worker, a node agent's id).
pub fn snapshot_id_time_ms(id: &str) -> Option<u64> {
    let stamp = id.split('-').next()?;
    let b = stamp.as_bytes();
    if b.len() != 19 || b[8] != b'T' || b[15] != b'.' {
        return None;
    }
    let f = |r: std::ops::Range<usize>| stamp.get(r).filter(|p| p.bytes().all(|c| c.is_ascii_digit()));
    let rfc = format!(
        "{}-{}-{}T{}:{}:{}.{}Z",
        f(0..4)?,
        f(4..6)?,
        f(6..8)?,
        f(9..11)?,
        f(11..13)?,
        f(13..15)?,
        f(16..19)?
    );
    parse_rfc3339_ms(&rfc)
}

/// A duration in ms as people read an age: `42s`, `7m`, `3h`, `2d`.
pub fn format_age(ms: u64) -> String {
    let s = ms / 1000;
    match s {
        0..=119 => format!("{s}s"),
        120..=7_199 => format!("{}m", s / 60),
        7_200..=172_799 => format!("{}h", s / 3600),
        _ => format!("{}d", s / 86_400),
    }
}

/// Where a snapshot exists.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "tier", rename_all = "lowercase")]
pub enum Place {
    /// On one worker's disk. `quarantined`: captured whole but not committed (a full disk):
    /// `ateom snapshots recover` on that worker commits it under the same id.
    Local { worker: String, quarantined: bool },
    /// The actor's own, in object storage.
    Durable,
    /// The template's golden snapshot (the actor's state at creation).
    Golden,
}

impl std::fmt::Display for Place {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Place::Local { worker, quarantined: false } => write!(f, "local on worker {worker}"),
            Place::Local { worker, quarantined: true } => write!(f, "quarantined on worker {worker}"),
            Place::Durable => f.write_str("durable"),
            Place::Golden => f.write_str("the template's golden snapshot"),
        }
    }
}

/// One existing snapshot of an actor.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Seen {
    pub id: String,
    pub place: Place,
    /// When it was made (Unix ms), if known.
    pub created_ms: Option<u64>,
}

impl Seen {
    /// Usable for a resume now (quarantined snapshots need `ateom snapshots recover` first).
    pub fn usable(&self) -> bool {
        !matches!(self.place, Place::Local { quarantined: true, .. })
    }

    fn age(&self, now_ms: u64) -> String {
        match self.created_ms {
            Some(c) => format!("{} old", format_age(now_ms.saturating_sub(c))),
            None => "age unknown".into(),
        }
    }
}

/// The newest usable snapshot: by creation time, then by id (ids sort by time too); one of
/// unknown age counts as older than any dated one.
pub fn newest(seen: &[Seen]) -> Option<&Seen> {
    seen.iter().filter(|s| s.usable()).max_by(|a, b| (a.created_ms, &a.id).cmp(&(b.created_ms, &b.id)))
}

/// The reason of an actor that cannot resume because snapshot `id`, described by `what`
/// (e.g. "paused snapshot X on worker w1"), does not exist: the newest snapshot that does,
/// how old it is, and the explicit resume that would use it; or that none exists. When `id`
/// itself sits in quarantine, how to recover it instead.
pub fn missing_reason(actor: &str, what: &str, id: &str, seen: &[Seen], now_ms: u64) -> String {
    let mut out = format!("{what} does not exist");
    if let Some(q) = seen.iter().find(|s| s.id == id && !s.usable()) {
        out.push_str(&format!(
            " as a complete snapshot: it is {} ({}); free space there, run `ateom snapshots recover`, then `ate resume actor {actor}`",
            q.place,
            q.age(now_ms)
        ));
        return out;
    }
    out.push_str("; ");
    out.push_str(&newest_hint(actor, seen, now_ms, true));
    out
}

/// Names the newest usable snapshot of `actor` among `seen`, its age, and the explicit
/// resume that would use it (`older`: say that it is older than the state that was asked for).
pub fn newest_hint(actor: &str, seen: &[Seen], now_ms: u64, older: bool) -> String {
    match newest(seen) {
        Some(n) => format!(
            "the newest snapshot of this actor that exists is {} ({}, {}){}: `ate resume actor {actor} --from-snapshot {}`",
            n.id,
            n.place,
            n.age(now_ms),
            if older { ", which is OLDER state; to resume from it anyway" } else { "; to resume from it" },
            n.id
        ),
        None => "no other snapshot of this actor exists".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_match_ateoms_format_and_sort_by_time() {
        assert_eq!(new_snapshot_id(1_764_347_462_123, 1), "20251128T163102.123-00000001");
        assert_eq!(new_snapshot_id(0, 0xffff_ffff), "19700101T000000.000-ffffffff");
        let a = new_snapshot_id(1_700_000_000_000, 9);
        let b = new_snapshot_id(1_700_000_000_001, 0);
        assert!(a < b);
        // Valid as an ateom Name: [A-Za-z0-9._-], alphanumeric first.
        assert_eq!(check_snapshot_id(&a), Ok(()));
        for bad in ["", ".x", "../etc", "a/b", "a:b", "a b", &"x".repeat(129)] {
            assert!(check_snapshot_id(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn rfc3339_round_trips_with_ids() {
        for ms in [0u64, 951_782_400_000, 1_764_347_462_123, 4_102_444_800_999] {
            let t = std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms);
            let text = humantime::format_rfc3339_millis(t).to_string();
            assert_eq!(parse_rfc3339_ms(&text), Some(ms), "{text}");
        }
        assert_eq!(parse_rfc3339_ms("2025-11-28T16:31:02Z"), Some(1_764_347_462_000));
        assert_eq!(parse_rfc3339_ms("2025-11-28T16:31:02.1Z"), Some(1_764_347_462_100));
        for bad in [
            "",
            "2025-11-28",
            "2025-13-01T00:00:00Z",
            "2025-11-28T16:31:02",
            "x-y-zTa:b:cZ",
            "2025-11-28T16:31:02.1a2Z",
        ] {
            assert_eq!(parse_rfc3339_ms(bad), None, "{bad}");
        }
    }

    #[test]
    fn ids_tell_when_they_were_chosen() {
        let id = new_snapshot_id(1_764_347_462_123, 7);
        assert_eq!(snapshot_id_time_ms(&id), Some(1_764_347_462_123));
        for other in ["golden-1", "", "20251128T163102-x", "2025112xT163102.123-00000001"] {
            assert_eq!(snapshot_id_time_ms(other), None, "{other}");
        }
    }

    #[test]
    fn ages_read_like_ages() {
        assert_eq!(format_age(59_000), "59s");
        assert_eq!(format_age(3 * 60_000), "3m");
        assert_eq!(format_age(5 * 3_600_000), "5h");
        assert_eq!(format_age(3 * 86_400_000), "3d");
    }

    fn seen(id: &str, place: Place, created: Option<u64>) -> Seen {
        Seen { id: id.into(), place, created_ms: created }
    }

    #[test]
    fn the_reason_names_the_newest_usable_snapshot_and_how_to_use_it() {
        let local = |w: &str, q| Place::Local { worker: w.into(), quarantined: q };
        let all = [
            seen("g1", Place::Golden, Some(1_000)),
            seen("s1", local("w1", false), Some(60_000)),
            seen("s2", Place::Durable, Some(120_000)),
            seen("s3", local("w2", true), Some(180_000)),
            seen("s0", local("w1", false), None),
        ];
        assert_eq!(newest(&all).unwrap().id, "s2", "quarantined ones are not usable; undated ones oldest");
        let why = missing_reason("a1", "paused snapshot s9 on worker w1", "s9", &all, 300_000);
        assert!(why.starts_with("paused snapshot s9 on worker w1 does not exist"), "{why}");
        assert!(why.contains("s2 (durable, 3m old)"), "{why}");
        assert!(why.contains("OLDER") && why.contains("ate resume actor a1 --from-snapshot s2"), "{why}");
        // The intended snapshot sits in quarantine: say so and how to recover it.
        let why = missing_reason("a1", "snapshot s3 on worker w2", "s3", &all, 300_000);
        assert!(why.contains("quarantined on worker w2") && why.contains("ateom snapshots recover"), "{why}");
        assert!(!why.contains("--from-snapshot"), "{why}");
        let why = missing_reason("a1", "snapshot s9", "s9", &[], 0);
        assert!(why.ends_with("no other snapshot of this actor exists"), "{why}");
    }
}
