//! Fuzz the snapshot index decoder: it must never panic, and whatever it accepts must
//! re-encode into something it decodes to the same index.
#![no_main]

use ateom_store::SnapshotIndex;
use ateom_store::index::LatestPointer;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(index) = SnapshotIndex::decode(data) {
        let bytes = index.encode().expect("a decoded index encodes");
        let again = SnapshotIndex::decode(&bytes).expect("an encoded index decodes");
        assert_eq!(again, index);
        let _ = index.logical_bytes();
        let _ = index.stored_bytes();
    }
    let _ = LatestPointer::decode(data);
});
