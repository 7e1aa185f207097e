//! GUIDs as GPT stores them (mixed-endian), and the partition type GUIDs of the reference layout.

use std::fmt;
use std::str::FromStr;

/// A GUID, holding the 16 bytes exactly as they are stored on disk in a GPT.
///
/// GPT stores the first three fields little-endian and the last two big-endian, so the on-disk
/// bytes of `6b636168-7420-6568-2070-6c616e657421` start with `68 61 63 6b`.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct Guid([u8; 16]);

impl Guid {
    /// The all-zero GUID; an entry with this type GUID is unused.
    pub const ZERO: Guid = Guid([0; 16]);

    /// From the 16 on-disk bytes.
    pub const fn from_disk_bytes(bytes: [u8; 16]) -> Guid {
        Guid(bytes)
    }

    /// The 16 on-disk bytes.
    pub const fn to_disk_bytes(self) -> [u8; 16] {
        self.0
    }

    /// From the GUID written as one 128-bit number, e.g.
    /// `Guid::from_u128(0x6b636168_7420_6568_2070_6c616e657421)` for
    /// `6b636168-7420-6568-2070-6c616e657421`.
    pub const fn from_u128(v: u128) -> Guid {
        let be = v.to_be_bytes();
        Guid([
            be[3], be[2], be[1], be[0], // time_low, little-endian
            be[5], be[4], // time_mid, little-endian
            be[7], be[6], // time_hi, little-endian
            be[8], be[9], be[10], be[11], be[12], be[13], be[14], be[15],
        ])
    }

    /// The GUID as one 128-bit number (the inverse of [`Guid::from_u128`]).
    pub const fn to_u128(self) -> u128 {
        let d = self.0;
        u128::from_be_bytes([
            d[3], d[2], d[1], d[0], d[5], d[4], d[7], d[6], d[8], d[9], d[10], d[11], d[12], d[13],
            d[14], d[15],
        ])
    }

    /// Whether this is the all-zero GUID.
    pub fn is_zero(self) -> bool {
        self.0 == [0; 16]
    }
}

impl fmt::Display for Guid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let v = self.to_u128();
        write!(
            f,
            "{:08x}-{:04x}-{:04x}-{:04x}-{:012x}",
            (v >> 96) as u32,
            (v >> 80) as u16,
            (v >> 64) as u16,
            (v >> 48) as u16,
            v & 0xffff_ffff_ffff
        )
    }
}

impl fmt::Debug for Guid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// A string that is not a GUID of the form `xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not a GUID (expected xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx): {0:?}")]
pub struct ParseGuidError(pub String);

impl FromStr for Guid {
    type Err = ParseGuidError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || ParseGuidError(s.chars().take(64).collect());
        let groups: Vec<&str> = s.split('-').collect();
        let lens: Vec<usize> = groups.iter().map(|g| g.len()).collect();
        if lens != [8, 4, 4, 4, 12] {
            return Err(err());
        }
        let hex: String = groups.concat();
        if !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(err());
        }
        let v = u128::from_str_radix(&hex, 16).map_err(|_| err())?;
        Ok(Guid::from_u128(v))
    }
}

/// The partition types of the reference layout, with their type GUIDs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PartitionType {
    /// Kernel and bootloader config of one set; carries the boot-selection attribute bits.
    Boot,
    /// Root filesystem of one set.
    Root,
    /// dm-verity hash tree of one set.
    Hash,
    /// Reserved space of one set.
    Reserved,
    /// Persistent private partition (bit 57: a boot has ever succeeded).
    Private,
    /// Persistent data partition.
    Data,
}

impl PartitionType {
    /// All types, in the order of the reference layout.
    pub const ALL: [PartitionType; 6] = [
        PartitionType::Boot,
        PartitionType::Root,
        PartitionType::Hash,
        PartitionType::Reserved,
        PartitionType::Private,
        PartitionType::Data,
    ];

    /// The partition type GUID.
    pub const fn guid(self) -> Guid {
        match self {
            PartitionType::Boot => Guid::from_u128(0x6b636168_7420_6568_2070_6c616e657421),
            PartitionType::Root => Guid::from_u128(0x5526016a_1a97_4ea4_b39a_b7c8c6ca4502),
            PartitionType::Hash => Guid::from_u128(0x598f10af_c955_4456_6a99_7720068a6cea),
            PartitionType::Reserved => Guid::from_u128(0x0c5d99a5_d331_4147_baef_08e2b855bdc9),
            PartitionType::Private => Guid::from_u128(0x440408bb_eb0b_4328_a6e5_a29038fad706),
            PartitionType::Data => Guid::from_u128(0x626f7474_6c65_6474_6861_726d61726b73),
        }
    }

    /// The type whose GUID this is, if any.
    pub fn from_guid(guid: Guid) -> Option<PartitionType> {
        PartitionType::ALL.into_iter().find(|t| t.guid() == guid)
    }

    /// Upper-case name, as in the reference layout ("BOOT", "ROOT", ...).
    pub const fn name(self) -> &'static str {
        match self {
            PartitionType::Boot => "BOOT",
            PartitionType::Root => "ROOT",
            PartitionType::Hash => "HASH",
            PartitionType::Reserved => "RESERVED",
            PartitionType::Private => "PRIVATE",
            PartitionType::Data => "DATA",
        }
    }
}

impl fmt::Display for PartitionType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.name(), self.guid())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_text_and_disk_order() {
        let g: Guid = "6b636168-7420-6568-2070-6c616e657421".parse().unwrap();
        assert_eq!(g, PartitionType::Boot.guid());
        assert_eq!(g.to_string(), "6b636168-7420-6568-2070-6c616e657421");
        // Mixed-endian: "hact" then " te" ... spells "hack the planet!" in ASCII.
        assert_eq!(&g.to_disk_bytes(), b"hack the planet!");
        assert_eq!(
            &PartitionType::Data.guid().to_disk_bytes(),
            b"ttobeltdharmarks"
        );
    }

    #[test]
    fn rejects_malformed() {
        for s in [
            "",
            "6b636168-7420-6568-2070-6c616e65742",
            "6b636168-7420-6568-2070-6c616e6574211",
            "6b636168x7420-6568-2070-6c616e657421",
            "6b63616g-7420-6568-2070-6c616e657421",
            "+b636168-7420-6568-2070-6c616e657421",
        ] {
            assert!(s.parse::<Guid>().is_err(), "{s:?}");
        }
    }

    #[test]
    fn every_type_round_trips() {
        for t in PartitionType::ALL {
            assert_eq!(PartitionType::from_guid(t.guid()), Some(t));
            let text = t.guid().to_string();
            assert_eq!(text.parse::<Guid>().unwrap(), t.guid());
        }
    }
}
