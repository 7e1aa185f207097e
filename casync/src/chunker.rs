//! The content-defined chunker casync uses: a 48-byte buzhash window, cutting where the hash
//! modulo a discriminator derived from the average size equals the discriminator minus one, never
//! before the minimum size, always at the maximum.
//!
//! Boundaries depend only on the bytes (not on how they are read), so an unchanged stretch of an
//! image cuts into the same chunks in every version: that is what makes chunks reusable. With
//! [`ChunkSizes::CASYNC_DEFAULT`] the boundaries and ids equal `casync make`'s (a test compares
//! them on real ext4 images).

use std::io::{self, Read};

use super::index::{BlobIndex, ChunkId, ChunkSizes};

/// The rolling hash window.
const WINDOW: usize = 48;

/// The largest maximum chunk size we chunk with (the buffer is a few times this).
const MAX_SUPPORTED: u64 = 16 * 1024 * 1024;

/// casync's buzhash table: one pseudo-random 32-bit value per byte value (a fact of the format:
/// the same table gives the same boundaries).
#[rustfmt::skip]
static BUZHASH: [u32; 256] = [
    0x458b_e752, 0xc107_48cc, 0xfbbc_dbb8, 0x6ded_5b68, 0xb10a_82b5, 0x20d7_5648,
    0xdfc5_665f, 0xa842_8801, 0x7ebf_5191, 0x8411_35c7, 0x65cc_53b3, 0x280a_597c,
    0x16f6_0255, 0xc78c_bc3e, 0x2944_15f5, 0xb938_d494, 0xec85_c4e6, 0xb7d3_3edc,
    0xe549_b544, 0xfded_a5aa, 0x882b_f287, 0x3116_737c, 0x0556_9956, 0xe8cc_1f68,
    0x0806_ac5e, 0x22a1_4443, 0x1529_7e10, 0x50d0_90e7, 0x4ba6_0f6f, 0xefd9_f1a7,
    0x5c5c_885c, 0x8248_2f93, 0x9bfd_7c64, 0x0b3e_7276, 0xf268_8e77, 0x8fad_8abc,
    0xb050_9568, 0xf1ad_a29f, 0xa53e_fdfe, 0xcb2b_1d00, 0xf2a9_e986, 0x6463_432b,
    0x9509_4051, 0x5a22_3ad2, 0x9be8_401b, 0x61e5_79cb, 0x1a55_6a14, 0x5840_fdc2,
    0x9261_ddf6, 0xcde0_02bb, 0x5243_2bb0, 0xbf17_373e, 0x7b7c_222f, 0x2955_ed16,
    0x9f10_ca59, 0xe840_c4c9, 0xccab_d806, 0x1454_3f34, 0x1462_417a, 0x0d4a_1f9c,
    0x087e_d925, 0xd7f8_f24c, 0x7338_c425, 0xcf86_c8f5, 0xb191_65cd, 0x9891_c393,
    0x3253_84ac, 0x0308_459d, 0x8614_1d7e, 0xc922_116a, 0xe2ff_a6b6, 0x53f5_2aed,
    0x2cd8_6197, 0xf5b9_f498, 0xbf31_9c8f, 0xe041_1fae, 0x977e_b18c, 0xd877_0976,
    0x9833_466a, 0xc674_df7f, 0x8c29_7d45, 0x8ca4_8d26, 0xc49e_d8e2, 0x7344_f874,
    0x556f_79c7, 0x6b25_eaed, 0xa03e_2b42, 0xf68f_66a4, 0x8e8b_09a2, 0xf2e0_e62a,
    0x0d3a_9806, 0x9729_e493, 0x8c72_b0fc, 0x160b_94f6, 0x450e_4d3d, 0x7a32_0e85,
    0xbef8_f0e1, 0x21d7_3653, 0x4e3d_977a, 0x1e7b_3929, 0x1cc6_c719, 0xbe47_8d53,
    0x8d75_2809, 0xe6d8_c2c6, 0x275f_0892, 0xc8ac_c273, 0x4cc2_1580, 0xecc4_a617,
    0xf5f7_be70, 0xe795_248a, 0x375a_2fe9, 0x4255_70b6, 0x8898_dcf8, 0xdc2d_97c4,
    0x0106_114b, 0x364d_c22f, 0x1e0c_ad1f, 0xbe63_803c, 0x5f69_fac2, 0x4d5a_fa6f,
    0x1bc0_dfb5, 0xfb27_3589, 0x0ea4_7f7b, 0x3c1c_2b50, 0x21b2_a932, 0x6b12_23fd,
    0x2fe7_06a8, 0xf9bd_6ce2, 0xa268_e64e, 0xe987_f486, 0x3eac_f563, 0x1ca2_018c,
    0x65e1_8228, 0x2207_360a, 0x57cf_1715, 0x34c3_7d2b, 0x1f8f_3cde, 0x93b6_57cf,
    0x31a0_19fd, 0xe69e_b729, 0x8bca_7b9b, 0x4c9d_5bed, 0x277e_beaf, 0xe0d8_f8ae,
    0xd150_821c, 0x3138_1871, 0xafc3_f1b0, 0x927d_b328, 0xe95e_ffac, 0x305a_47bd,
    0x426b_a35b, 0x1233_af3f, 0x686a_5b83, 0x50e0_72e5, 0xd9d3_bb2a, 0x8bef_c475,
    0x487f_0de6, 0xc88d_ff89, 0xbd66_4d5e, 0x971b_5d18, 0x63b1_4847, 0xd7d3_c1ce,
    0x7f58_3cf3, 0x72cb_cb09, 0xc0d0_a81c, 0x7fa3_429b, 0xe915_8a1b, 0x225e_a19a,
    0xd8ca_9ea3, 0xc763_b282, 0xbb0c_6341, 0x020b_8293, 0xd4cd_299d, 0x58cf_a7f8,
    0x91b4_ee53, 0x37e4_d140, 0x95ec_764c, 0x30f7_6b06, 0x5ee6_8d24, 0x679c_8661,
    0xa419_79c2, 0xf2b6_1284, 0x4fac_1475, 0x0adb_49f9, 0x1972_7a23, 0x15a7_e374,
    0xc43a_18d5, 0x3fb1_aa73, 0x342f_c615, 0x924c_0793, 0xbee2_d7f0, 0x8a27_9de9,
    0x4aa2_d70c, 0xe24d_d37f, 0xbe86_2c0b, 0x177c_22c2, 0x5388_e5ee, 0xcd8a_7510,
    0xf901_b4fd, 0xdbc1_3dbc, 0x6c0b_ae5b, 0x64ef_e8c7, 0x48b0_2079, 0x8033_1a49,
    0xca3d_8ae6, 0xf354_6190, 0xfed7_108b, 0xc49b_941b, 0x32ba_f4a9, 0xeb83_3a4a,
    0x88a3_f1a5, 0x3a91_ce0a, 0x3cc2_7da1, 0x7112_e684, 0x4a30_96b1, 0x3794_574c,
    0xa3c8_b6f3, 0x1d21_3941, 0x6e0a_2e00, 0x2334_79f1, 0x0f4c_d82f, 0x6093_edd2,
    0x5d7d_209e, 0x464f_e319, 0xd4dc_ac9e, 0x0db8_45cb, 0xfb5e_4bc3, 0xe025_6ce1,
    0x09fb_4ed1, 0x0914_be1e, 0xa5bd_b2c3, 0xc6eb_57bb, 0x3032_0350, 0x3f39_7e91,
    0xa677_91bc, 0x86bc_0e2c, 0xefa0_a7e2, 0xe9ff_7543, 0xe733_612c, 0xd185_897b,
    0x329e_5388, 0x91dd_236b, 0x2ecb_0d93, 0xf4d8_2a3d, 0x35b5_c03f, 0xe4e6_06f0,
    0x05b2_1843, 0x37b4_5964, 0x5eff_22f4, 0x6027_f4cc, 0x7717_8b3c, 0xae50_7131,
    0x7bf7_cabc, 0xf9c1_8d66, 0x593a_de65, 0xd95d_df11,
];

/// Why a chunker cannot be made with some sizes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "cannot chunk with min {} / avg {} / max {}: need {WINDOW} <= min <= avg <= max <= {MAX_SUPPORTED}",
    .0.min, .0.avg, .0.max
)]
pub struct BadChunkSizes(pub ChunkSizes);

/// Why a `MIN:AVG:MAX` chunk size argument was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ChunkSizesError {
    /// Not `AVG` or `MIN:AVG:MAX` of sizes such as `16384`, `16K`, `1M`.
    #[error(
        "{0:?}: expected MIN:AVG:MAX (or AVG) in bytes, with an optional K, M or G suffix, e.g. 4K:16K:64K"
    )]
    Syntax(String),
    /// Well formed, but not sizes the chunker can cut with.
    #[error(transparent)]
    Bad(#[from] BadChunkSizes),
}

/// One size: bytes, or a number with a binary `K`/`M`/`G` suffix (casync's spelling; `KiB`,
/// `MiB`, `GiB` and a trailing `B` are accepted too).
fn parse_size(text: &str) -> Option<u64> {
    let t = text.trim();
    let t = t
        .strip_suffix("iB")
        .or_else(|| t.strip_suffix('B'))
        .unwrap_or(t);
    let (digits, unit) = match t.char_indices().last()? {
        (i, 'K' | 'k') => (&t[..i], 1u64 << 10),
        (i, 'M' | 'm') => (&t[..i], 1 << 20),
        (i, 'G' | 'g') => (&t[..i], 1 << 30),
        _ => (t, 1),
    };
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse::<u64>().ok()?.checked_mul(unit)
}

impl std::str::FromStr for ChunkSizes {
    type Err = ChunkSizesError;

    /// `MIN:AVG:MAX`, or `AVG` alone (then min is avg/4 and max avg*4, as `casync make
    /// --chunk-size=AVG` does); each a byte count with an optional `K`/`M`/`G` suffix. Sizes the
    /// chunker cannot cut with are refused.
    fn from_str(text: &str) -> Result<ChunkSizes, ChunkSizesError> {
        let syntax = || ChunkSizesError::Syntax(text.to_owned());
        let parts: Vec<u64> = text
            .split(':')
            .map(parse_size)
            .collect::<Option<_>>()
            .ok_or_else(syntax)?;
        let sizes = match parts[..] {
            [avg] => ChunkSizes {
                min: avg / 4,
                avg,
                max: avg.saturating_mul(4),
            },
            [min, avg, max] => ChunkSizes { min, avg, max },
            _ => return Err(syntax()),
        };
        Chunker::new(sizes)?;
        Ok(sizes)
    }
}

impl std::fmt::Display for ChunkSizes {
    /// `MIN:AVG:MAX` in casync's spelling (`16K:64K:256K`), bytes where a size is not a whole
    /// number of KiB.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let one = |n: u64| match n {
            n if n >= 1 << 20 && n % (1 << 20) == 0 => format!("{}M", n >> 20),
            n if n >= 1 << 10 && n % (1 << 10) == 0 => format!("{}K", n >> 10),
            n => n.to_string(),
        };
        write!(f, "{}:{}:{}", one(self.min), one(self.avg), one(self.max))
    }
}

/// Finds chunk boundaries.
#[derive(Debug, Clone)]
pub struct Chunker {
    sizes: ChunkSizes,
    min: usize,
    max: usize,
    discriminator: u64,
}

impl Chunker {
    /// A chunker with casync's default sizes (16 / 64 / 256 KiB).
    pub fn casync_default() -> Chunker {
        // The defaults satisfy every bound `new` checks.
        match Chunker::new(ChunkSizes::CASYNC_DEFAULT) {
            Ok(c) => c,
            Err(_) => unreachable!("casync's default sizes are valid"),
        }
    }

    /// A chunker with `sizes`.
    pub fn new(sizes: ChunkSizes) -> Result<Chunker, BadChunkSizes> {
        if !(WINDOW as u64 <= sizes.min
            && sizes.min <= sizes.avg
            && sizes.avg <= sizes.max
            && sizes.max <= MAX_SUPPORTED)
        {
            return Err(BadChunkSizes(sizes));
        }
        // casync's empirical correction, so that the mean chunk comes out near `avg`; it is
        // computed in double precision and truncated, then clamped to [min, max].
        let avg = sizes.avg as f64;
        let d = (avg / (-1.428_888_52e-7 * avg + 1.332_375_15)) as u64;
        Ok(Chunker {
            sizes,
            min: sizes.min as usize,
            max: sizes.max as usize,
            discriminator: d.clamp(sizes.min, sizes.max),
        })
    }

    /// The sizes it cuts with.
    pub fn sizes(&self) -> ChunkSizes {
        self.sizes
    }

    fn is_cut(&self, h: u32) -> bool {
        u64::from(h) % self.discriminator == self.discriminator - 1
    }

    /// The length of the chunk that starts at `data[0]`. `None` when `data` is shorter than the
    /// maximum, holds no boundary, and more data may follow (`at_eof` false); at the end of the
    /// input the rest is the last chunk.
    pub fn cut(&self, data: &[u8], at_eof: bool) -> Option<usize> {
        let len = data.len();
        if len == 0 {
            return None;
        }
        if len < self.min {
            return at_eof.then_some(len);
        }
        // Hash of the window that ends at the minimum size: byte j of the window is rotated by
        // (WINDOW - 1 - j).
        let mut h = data[self.min - WINDOW..self.min]
            .iter()
            .fold(0u32, |h, &b| h.rotate_left(1) ^ BUZHASH[usize::from(b)]);
        if self.min >= self.max || self.is_cut(h) {
            return Some(self.min);
        }
        let limit = len.min(self.max);
        for i in self.min..limit {
            let leave = BUZHASH[usize::from(data[i - WINDOW])];
            h = h.rotate_left(1)
                ^ leave.rotate_left(WINDOW as u32 % 32)
                ^ BUZHASH[usize::from(data[i])];
            if i + 1 >= self.max || self.is_cut(h) {
                return Some(i + 1);
            }
        }
        at_eof.then_some(len)
    }

    /// Cuts everything `reader` yields into chunks, calling `each` with every chunk in order.
    /// Memory: a buffer of four maximum-size chunks. Returns the number of bytes read.
    pub fn for_each_chunk<R: Read>(
        &self,
        mut reader: R,
        mut each: impl FnMut(&[u8]) -> io::Result<()>,
    ) -> io::Result<u64> {
        let mut buf = vec![0u8; self.max * 4];
        let mut filled = 0;
        let mut total = 0u64;
        let mut eof = false;
        loop {
            while !eof && filled < buf.len() {
                match reader.read(&mut buf[filled..]) {
                    Ok(0) => eof = true,
                    Ok(n) => {
                        filled += n;
                        total += n as u64;
                    }
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(e),
                }
            }
            let mut start = 0;
            while let Some(n) = self.cut(&buf[start..filled], eof) {
                each(&buf[start..start + n])?;
                start += n;
            }
            if eof && start == filled {
                return Ok(total);
            }
            buf.copy_within(start..filled, 0);
            filled -= start;
        }
    }

    /// The index of everything `reader` yields, calling `each` with every chunk and its id (a
    /// publisher stores them; a host indexing its running partition passes a no-op).
    pub fn index<R: Read>(
        &self,
        reader: R,
        mut each: impl FnMut(&ChunkId, &[u8]) -> io::Result<()>,
    ) -> io::Result<BlobIndex> {
        let mut index = BlobIndex::new(self.sizes);
        self.for_each_chunk(reader, |chunk| {
            let id = ChunkId::of(chunk);
            each(&id, chunk)?;
            index.push(chunk.len() as u64, id);
            Ok(())
        })?;
        Ok(index)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Deterministic bytes that look random to the hash.
    fn noise(len: usize, seed: u64) -> Vec<u8> {
        let mut rng = fastrand::Rng::with_seed(seed);
        (0..len).map(|_| rng.u8(..)).collect()
    }

    fn lengths(chunker: &Chunker, data: &[u8], read_size: usize) -> Vec<usize> {
        struct Dribble<'a>(&'a [u8], usize);
        impl Read for Dribble<'_> {
            fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
                let n = self.0.len().min(self.1).min(out.len());
                out[..n].copy_from_slice(&self.0[..n]);
                self.0 = &self.0[n..];
                Ok(n)
            }
        }
        let mut out = Vec::new();
        let total = chunker
            .for_each_chunk(Dribble(data, read_size), |c| {
                out.push(c.len());
                Ok(())
            })
            .unwrap();
        assert_eq!(total as usize, data.len());
        out
    }

    #[test]
    fn discriminator_matches_casync_for_64k() {
        // casync's CA_CHUNKER_DISCRIMINATOR_FROM_AVG(65536), worked out by hand: 65536 / 1.32301...
        assert_eq!(Chunker::casync_default().discriminator, 49535);
    }

    #[test]
    fn chunks_respect_sizes_and_cover_the_input() {
        let chunker = Chunker::casync_default();
        let data = noise(5 << 20, 1);
        let lens = lengths(&chunker, &data, 1 << 20);
        assert_eq!(lens.iter().sum::<usize>(), data.len());
        let (last, rest) = lens.split_last().unwrap();
        assert!(*last <= 256 * 1024);
        for &n in rest {
            assert!((16 * 1024..=256 * 1024).contains(&n), "{n}");
        }
        // Content-defined: the average lands near casync's (~64 KiB), not at a fixed size.
        let mean = data.len() / lens.len();
        assert!((40_000..100_000).contains(&mean), "mean chunk {mean}");
        assert!(lens.windows(2).any(|w| w[0] != w[1]));
    }

    #[test]
    fn boundaries_do_not_depend_on_read_sizes() {
        let chunker = Chunker::casync_default();
        let data = noise(3 << 20, 2);
        let whole = lengths(&chunker, &data, usize::MAX);
        for read in [1 << 20, 65_537, 4096, 1000] {
            assert_eq!(lengths(&chunker, &data, read), whole, "read size {read}");
        }
    }

    #[test]
    fn an_insertion_changes_only_nearby_chunks() {
        let chunker = Chunker::casync_default();
        let data = noise(4 << 20, 3);
        let mut edited = data[..1_000_000].to_vec();
        edited.extend_from_slice(b"a few inserted bytes");
        edited.extend_from_slice(&data[1_000_000..]);
        let ids = |d: &[u8]| {
            let index = chunker.index(d, |_, _| Ok(())).unwrap();
            index
                .chunks()
                .map(|c| c.id)
                .collect::<std::collections::HashSet<_>>()
        };
        let (a, b) = (ids(&data), ids(&edited));
        let shared = a.intersection(&b).count();
        assert!(
            shared + 3 >= a.len(),
            "only {shared} of {} chunks survive",
            a.len()
        );
        assert!(shared < a.len());
    }

    #[test]
    fn zeros_cut_at_a_fixed_size_and_short_inputs_are_one_chunk() {
        let chunker = Chunker::casync_default();
        let lens = lengths(&chunker, &vec![0u8; 1 << 20], 1 << 20);
        assert!(lens.iter().all(|&n| n == lens[0]), "{lens:?}");
        assert_eq!(lengths(&chunker, b"tiny", 10), vec![4]);
        assert_eq!(lengths(&chunker, b"", 10), Vec::<usize>::new());
    }

    #[test]
    fn chunk_sizes_parse_in_casyncs_spelling() {
        let small = ChunkSizes {
            min: 4096,
            avg: 16384,
            max: 65536,
        };
        for text in ["4K:16K:64K", "4096:16384:65536", "4k:16KiB:64KB", "16K"] {
            assert_eq!(text.parse::<ChunkSizes>(), Ok(small), "{text}");
        }
        assert_eq!("16K:64K:256K".parse(), Ok(ChunkSizes::CASYNC_DEFAULT));
        assert_eq!(ChunkSizes::CASYNC_DEFAULT.to_string(), "16K:64K:256K");
        assert_eq!(small.to_string().parse(), Ok(small));
        for bad in [
            "",
            "4K:16K",
            "4K:16K:64K:1M",
            "a:b:c",
            "4X:16K:64K",
            "-4K:16K:64K",
            "K",
            "99999999999G",
        ] {
            assert!(
                matches!(bad.parse::<ChunkSizes>(), Err(ChunkSizesError::Syntax(_))),
                "{bad}"
            );
        }
        // Well formed but out of order, too small or too large: the bounds are named.
        for bad in ["64K:16K:256K", "16:64:256", "1M:8M:32M"] {
            let err = bad.parse::<ChunkSizes>().unwrap_err();
            assert!(matches!(err, ChunkSizesError::Bad(_)), "{bad}: {err}");
            assert!(err.to_string().contains("min <= avg <= max"), "{err}");
        }
    }

    #[test]
    fn refuses_sizes_it_cannot_chunk_with() {
        let bad = ChunkSizes {
            min: 16,
            avg: 64,
            max: 256,
        };
        assert!(Chunker::new(bad).is_err());
        let bad = ChunkSizes {
            min: 1 << 16,
            avg: 1 << 15,
            max: 1 << 18,
        };
        assert!(Chunker::new(bad).is_err());
    }
}
