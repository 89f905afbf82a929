//! Bounds on what unpacking an untrusted image may cost, and the readers that enforce them.
//!
//! A layer is read through two meters: one under the decompressor, counting the compressed
//! bytes it consumes, and one over it, counting the tar stream it produces. The upper meter
//! refuses to hand out more bytes once a limit is crossed, so a bomb stops within one read
//! of its limit instead of after filling the disk; which limit tripped is kept on the side
//! so that the error can say so precisely (the tar crate only sees an `io::Error`).

use std::cell::Cell;
use std::fmt;
use std::io::{self, BufRead, Read};
use std::rc::Rc;

/// Limits applied while unpacking the layers of one image.
///
/// Images are untrusted input: these bound the disk, memory and time one image can cost.
/// The defaults fit very large real images (CUDA and ML stacks of tens of GiB, a million
/// files) while stopping decompression bombs within their first 64 MiB. Change them with
/// [`ImageStore::with_limits`](crate::ImageStore::with_limits):
///
/// ```
/// use ateom_image::{ImageStore, UnpackLimits};
/// let store = ImageStore::new("/var/lib/ateom/cache/images")
///     .with_limits(UnpackLimits { max_image_bytes: 8 << 30, ..UnpackLimits::default() });
/// assert_eq!(store.limits().max_image_bytes, 8 << 30);
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UnpackLimits {
    /// Largest uncompressed layer: neither its tar stream nor the sum of its files' sizes
    /// (sparse files count with their apparent size) may exceed it. Default 16 GiB.
    pub max_layer_bytes: u64,
    /// The same, summed over all layers of the image. Default 32 GiB.
    pub max_image_bytes: u64,
    /// Tar entries (files, directories, links, whiteouts…) over all layers. Default 1,000,000.
    pub max_entries: u64,
    /// Longest entry path or link target, in bytes, as written in the tar. Default 4096
    /// (Linux's `PATH_MAX`).
    pub max_path_bytes: usize,
    /// Deepest entry, counted in directories below the root after symlinks are resolved
    /// (so that chained symlinks cannot build an unbounded tree). Default 256.
    pub max_path_depth: usize,
    /// Largest ratio of a compressed layer's tar stream to the compressed bytes consumed to
    /// produce it, checked continuously once [`Self::ratio_grace_bytes`] were produced.
    /// Real layers compress 2–20×; deflate cannot exceed ~1032×. Default 100.
    pub max_compression_ratio: u64,
    /// Uncompressed bytes a layer may produce before the ratio is checked (small layers of
    /// zeros are harmless). Default 64 MiB.
    pub ratio_grace_bytes: u64,
}

/// The metadata of one tar entry (PAX extended headers, GNU long names and link names)
/// that the tar reader may buffer in memory: 1 MiB, plus the blocks around it.
pub(crate) const MAX_ENTRY_METADATA: u64 = 1 << 20;

impl Default for UnpackLimits {
    fn default() -> Self {
        Self {
            max_layer_bytes: 16 << 30,
            max_image_bytes: 32 << 30,
            max_entries: 1_000_000,
            max_path_bytes: 4096,
            max_path_depth: 256,
            max_compression_ratio: 100,
            ratio_grace_bytes: 64 << 20,
        }
    }
}

/// Which of the [`UnpackLimits`] a layer went beyond, with the figures.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Limit {
    /// [`UnpackLimits::max_layer_bytes`].
    LayerBytes {
        /// The limit.
        max: u64,
    },
    /// [`UnpackLimits::max_image_bytes`].
    ImageBytes {
        /// The limit.
        max: u64,
    },
    /// [`UnpackLimits::max_entries`].
    Entries {
        /// The limit.
        max: u64,
    },
    /// [`UnpackLimits::max_path_bytes`].
    PathBytes {
        /// The length of the path (or link target) refused.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// [`UnpackLimits::max_path_depth`].
    PathDepth {
        /// The limit.
        max: usize,
    },
    /// [`UnpackLimits::max_compression_ratio`].
    CompressionRatio {
        /// The limit.
        max: u64,
        /// Uncompressed bytes produced when the layer was stopped.
        uncompressed: u64,
        /// Compressed bytes consumed to produce them.
        compressed: u64,
    },
    /// The metadata of one entry (PAX headers, GNU long names) is larger than the 1 MiB
    /// this crate buffers; not configurable.
    EntryMetadata {
        /// The limit.
        max: u64,
    },
}

impl fmt::Display for Limit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::LayerBytes { max } => write!(
                f,
                "the layer unpacks to more than {max} bytes (UnpackLimits::max_layer_bytes; raise it if the image is legitimately this large)"
            ),
            Self::ImageBytes { max } => write!(
                f,
                "the image unpacks to more than {max} bytes over all its layers (UnpackLimits::max_image_bytes; raise it if the image is legitimately this large)"
            ),
            Self::Entries { max } => write!(
                f,
                "the image has more than {max} entries over all its layers (UnpackLimits::max_entries)"
            ),
            Self::PathBytes { len, max } => write!(
                f,
                "a path of {len} bytes is longer than the {max} allowed (UnpackLimits::max_path_bytes)"
            ),
            Self::PathDepth { max } => write!(
                f,
                "the entry would lie more than {max} directories below the root (UnpackLimits::max_path_depth)"
            ),
            Self::CompressionRatio { max, uncompressed, compressed } => write!(
                f,
                "decompression bomb? {compressed} compressed bytes produced {uncompressed} bytes, more than {max} times as many (UnpackLimits::max_compression_ratio; raise it if the layer legitimately holds long runs of zeros)"
            ),
            Self::EntryMetadata { max } => {
                write!(f, "the entry's metadata (PAX headers, GNU long names) is larger than {max} bytes")
            }
        }
    }
}

/// Counters shared by the readers of one layer and the code applying its entries.
#[derive(Debug)]
pub(crate) struct Meter {
    limits: UnpackLimits,
    /// Whether the layer is compressed (the ratio is only checked then).
    compressed: bool,
    /// Compressed bytes consumed by the decompressor.
    consumed: Cell<u64>,
    /// Tar stream bytes produced in this layer.
    produced: Cell<u64>,
    /// Tar stream bytes of the image's earlier layers.
    produced_before: u64,
    /// Bytes the tar reader may still read while it parses headers, `None` outside.
    header_budget: Cell<Option<u64>>,
    /// The limit that stopped the layer, if one did.
    tripped: std::cell::RefCell<Option<Limit>>,
    /// Whether it stopped while the tar reader was between entries (reading headers).
    tripped_between: Cell<bool>,
}

impl Meter {
    pub(crate) fn new(limits: UnpackLimits, compressed: bool, produced_before: u64) -> Rc<Self> {
        Rc::new(Self {
            limits,
            compressed,
            consumed: Cell::new(0),
            produced: Cell::new(0),
            produced_before,
            header_budget: Cell::new(None),
            tripped: std::cell::RefCell::new(None),
            tripped_between: Cell::new(false),
        })
    }

    /// Tar stream bytes produced in this layer so far.
    pub(crate) fn produced(&self) -> u64 {
        self.produced.get()
    }

    /// The limit that stopped the layer, if one did.
    pub(crate) fn tripped(&self) -> Option<Limit> {
        self.tripped.borrow().clone()
    }

    /// Whether the limit was reached while the tar reader was reading headers, that is
    /// before it could say which entry they belong to.
    pub(crate) fn tripped_between_entries(&self) -> bool {
        self.tripped_between.get()
    }

    /// From now on the tar reader is parsing headers: it may read at most the metadata
    /// allowance (plus a few blocks of headers and padding) until [`Self::end_headers`].
    pub(crate) fn begin_headers(&self) {
        self.header_budget.set(Some(MAX_ENTRY_METADATA + 8 * 512));
    }

    /// The tar reader handed out an entry: its data is not metadata.
    pub(crate) fn end_headers(&self) {
        self.header_budget.set(None);
    }

    fn trip(&self, limit: Limit) -> io::Error {
        let err = io::Error::other(limit.to_string());
        let mut tripped = self.tripped.borrow_mut();
        if tripped.is_none() {
            *tripped = Some(limit);
            self.tripped_between.set(self.header_budget.get().is_some());
        }
        err
    }

    /// Accounts for `n` more bytes of tar stream.
    fn produce(&self, n: u64) -> io::Result<()> {
        if let Some(limit) = self.tripped() {
            // Whoever ignores the first error gets it again.
            return Err(io::Error::other(limit.to_string()));
        }
        let produced = self.produced.get().saturating_add(n);
        self.produced.set(produced);
        let l = &self.limits;
        if produced > l.max_layer_bytes {
            return Err(self.trip(Limit::LayerBytes { max: l.max_layer_bytes }));
        }
        if self.produced_before.saturating_add(produced) > l.max_image_bytes {
            return Err(self.trip(Limit::ImageBytes { max: l.max_image_bytes }));
        }
        if self.compressed && produced > l.ratio_grace_bytes {
            let consumed = self.consumed.get();
            if produced > consumed.saturating_mul(l.max_compression_ratio) {
                return Err(self.trip(Limit::CompressionRatio {
                    max: l.max_compression_ratio,
                    uncompressed: produced,
                    compressed: consumed,
                }));
            }
        }
        if let Some(budget) = self.header_budget.get() {
            match budget.checked_sub(n) {
                Some(left) => self.header_budget.set(Some(left)),
                None => return Err(self.trip(Limit::EntryMetadata { max: MAX_ENTRY_METADATA })),
            }
        }
        Ok(())
    }
}

/// The tar stream coming out of the decompressor, metered.
pub(crate) struct Produced<R> {
    inner: R,
    meter: Rc<Meter>,
}

impl<R> Produced<R> {
    pub(crate) fn new(inner: R, meter: Rc<Meter>) -> Self {
        Self { inner, meter }
    }

    pub(crate) fn into_inner(self) -> R {
        self.inner
    }
}

impl<R: Read> Read for Produced<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if let Some(limit) = self.meter.tripped() {
            return Err(io::Error::other(limit.to_string()));
        }
        let n = self.inner.read(buf)?;
        self.meter.produce(n as u64)?;
        Ok(n)
    }
}

/// The compressed blob going into the decompressor, counted as it is consumed.
pub(crate) struct Consumed<B> {
    inner: B,
    meter: Rc<Meter>,
}

impl<B> Consumed<B> {
    pub(crate) fn new(inner: B, meter: Rc<Meter>) -> Self {
        Self { inner, meter }
    }

    pub(crate) fn into_inner(self) -> B {
        self.inner
    }
}

impl<B: BufRead> Read for Consumed<B> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.meter.consumed.set(self.meter.consumed.get().saturating_add(n as u64));
        Ok(n)
    }
}

impl<B: BufRead> BufRead for Consumed<B> {
    fn fill_buf(&mut self) -> io::Result<&[u8]> {
        self.inner.fill_buf()
    }

    fn consume(&mut self, amt: usize) {
        self.meter.consumed.set(self.meter.consumed.get().saturating_add(amt as u64));
        self.inner.consume(amt);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> UnpackLimits {
        UnpackLimits {
            max_layer_bytes: 1000,
            max_image_bytes: 1500,
            max_compression_ratio: 10,
            ratio_grace_bytes: 100,
            ..UnpackLimits::default()
        }
    }

    fn drain(r: &mut impl Read) -> io::Result<u64> {
        io::copy(r, &mut io::sink())
    }

    #[test]
    fn layer_and_image_bytes_stop_the_stream() {
        let meter = Meter::new(limits(), false, 0);
        let mut r = Produced::new(io::repeat(0).take(1001), meter.clone());
        assert!(drain(&mut r).is_err());
        assert_eq!(meter.tripped(), Some(Limit::LayerBytes { max: 1000 }));
        // Exactly at the limit is fine.
        let meter = Meter::new(limits(), false, 0);
        assert_eq!(drain(&mut Produced::new(io::repeat(0).take(1000), meter.clone())).unwrap(), 1000);
        assert_eq!(meter.tripped(), None);
        // Earlier layers count towards the image.
        let meter = Meter::new(limits(), false, 600);
        assert!(drain(&mut Produced::new(io::repeat(0).take(901), meter.clone())).is_err());
        assert_eq!(meter.tripped(), Some(Limit::ImageBytes { max: 1500 }));
    }

    #[test]
    fn the_ratio_is_checked_after_the_grace_and_only_when_compressed() {
        let data = [7u8; 150];
        // 150 bytes out of 10 consumed: 15x > 10x, past the 100-byte grace.
        let meter = Meter::new(limits(), true, 0);
        let input = Consumed::new(io::BufReader::new(&data[..10]), meter.clone());
        let mut r = Produced::new(input.chain(&data[10..]), meter.clone());
        assert!(drain(&mut r).is_err());
        assert!(matches!(meter.tripped(), Some(Limit::CompressionRatio { max: 10, compressed: 10, .. })));
        // The same stream uncompressed is not a ratio.
        let meter = Meter::new(limits(), false, 0);
        let input = Consumed::new(io::BufReader::new(&data[..10]), meter.clone());
        assert_eq!(drain(&mut Produced::new(input.chain(&data[10..]), meter.clone())).unwrap(), 150);
        // Under the grace, any ratio goes.
        let meter = Meter::new(limits(), true, 0);
        let input = Consumed::new(io::BufReader::new(&data[..1]), meter.clone());
        assert_eq!(drain(&mut Produced::new(input.chain(&data[1..100]), meter.clone())).unwrap(), 100);
    }

    #[test]
    fn header_parsing_has_a_budget_and_a_tripped_meter_stays_tripped() {
        let meter = Meter::new(UnpackLimits::default(), false, 0);
        let mut r = Produced::new(io::repeat(0), meter.clone());
        meter.begin_headers();
        let mut buf = vec![0u8; 64 << 10];
        let mut read = 0u64;
        let err = loop {
            match r.read(&mut buf) {
                Ok(n) => read += n as u64,
                Err(e) => break e,
            }
        };
        assert!(read <= MAX_ENTRY_METADATA + 8 * 512, "{read}");
        assert!(err.to_string().contains("metadata"), "{err}");
        meter.end_headers();
        assert!(r.read(&mut buf).is_err(), "a tripped meter refuses further reads");
        assert_eq!(meter.tripped(), Some(Limit::EntryMetadata { max: MAX_ENTRY_METADATA }));
    }
}
