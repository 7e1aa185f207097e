//! Partition sets found by partition type GUID.

use std::collections::BTreeMap;
use std::path::PathBuf;

use crate::SetId;
use crate::error::{Error, LayoutError, Result};
use crate::gpt::{GptEntry, GptTable};
use crate::guid::{Guid, PartitionType};

/// One partition, as a byte range on its disk.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Partition {
    /// 1-based partition number.
    pub number: u32,
    /// Partition type GUID.
    #[serde(serialize_with = "ser_guid")]
    pub type_guid: Guid,
    /// Unique partition GUID.
    #[serde(serialize_with = "ser_guid")]
    pub unique_guid: Guid,
    /// Partition name from the GPT.
    pub name: String,
    /// First sector.
    pub first_lba: u64,
    /// Last sector (inclusive).
    pub last_lba: u64,
    /// Attribute bits when the disk was read.
    pub attributes: u64,
    /// Sector size in bytes.
    pub sector_size: u64,
    /// The partition's own device node, for block devices whose partitions the kernel knows.
    pub device_node: Option<PathBuf>,
}

fn ser_guid<S: serde::Serializer>(g: &Guid, s: S) -> std::result::Result<S::Ok, S::Error> {
    s.collect_str(g)
}

impl Partition {
    /// Build from a GPT entry.
    pub fn from_entry(e: &GptEntry, sector_size: u64, device_node: Option<PathBuf>) -> Partition {
        Partition {
            number: e.number,
            type_guid: e.type_guid,
            unique_guid: e.unique_guid,
            name: e.name.to_string_lossy(),
            first_lba: e.first_lba,
            last_lba: e.last_lba,
            attributes: e.attributes,
            sector_size,
            device_node,
        }
    }

    /// Offset of the first byte on the disk.
    pub fn byte_offset(&self) -> u64 {
        self.first_lba * self.sector_size
    }

    /// Size in bytes.
    pub fn byte_len(&self) -> u64 {
        (self.last_lba - self.first_lba + 1) * self.sector_size
    }

    /// The reference-layout type, if the type GUID is one of them.
    pub fn kind(&self) -> Option<PartitionType> {
        PartitionType::from_guid(self.type_guid)
    }

    /// Short name of the kind ("BOOT", ...), or "partition" for unknown types.
    pub fn kind_name(&self) -> &'static str {
        self.kind().map_or("partition", PartitionType::name)
    }
}

/// The BOOT, ROOT and HASH partitions (and RESERVED, when present) of one set.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct PartitionSet {
    /// Which set.
    pub id: SetId,
    /// BOOT partition (carries the boot-selection attribute bits).
    pub boot: Partition,
    /// ROOT partition.
    pub root: Partition,
    /// HASH partition.
    pub hash: Partition,
    /// RESERVED partition, when the disk has one for this set.
    pub reserved: Option<Partition>,
}

impl PartitionSet {
    /// The set's partitions: boot, root, hash, then reserved when present.
    pub fn partitions(&self) -> impl Iterator<Item = &Partition> {
        [&self.boot, &self.root, &self.hash]
            .into_iter()
            .chain(self.reserved.as_ref())
    }

    /// Whether a partition number belongs to this set.
    pub fn contains(&self, number: u32) -> bool {
        self.partitions().any(|p| p.number == number)
    }
}

/// The A/B layout of a disk.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Layout {
    /// Set A (first BOOT/ROOT/HASH partitions by partition number).
    pub a: PartitionSet,
    /// Set B (second ones), absent in single-set mode.
    pub b: Option<PartitionSet>,
    /// PRIVATE partition, when present.
    pub private: Option<Partition>,
    /// DATA partition, when present.
    pub data: Option<Partition>,
}

impl Layout {
    /// Find the sets in a partition table. Per-set types are assigned in partition-number
    /// order: the first of each type belongs to A, the second to B. `device_node` maps a
    /// partition number to its device node, when known.
    ///
    /// Errors name the partition type and the set: a missing partition of set A (or of set B
    /// when any other set-B partition exists), a third partition of a per-set type, a
    /// duplicated PRIVATE or DATA.
    pub fn from_table(
        table: &GptTable,
        device_node: &dyn Fn(u32) -> Option<PathBuf>,
    ) -> std::result::Result<Layout, LayoutError> {
        let mut by_kind: BTreeMap<u8, Vec<Partition>> = BTreeMap::new();
        let mut entries: Vec<&GptEntry> = table.entries.iter().collect();
        entries.sort_by_key(|e| e.number);
        for e in entries {
            if let Some(kind) = PartitionType::from_guid(e.type_guid) {
                by_kind
                    .entry(kind_index(kind))
                    .or_default()
                    .push(Partition::from_entry(
                        e,
                        table.sector_size,
                        device_node(e.number),
                    ));
            }
        }
        let mut take = |kind: PartitionType| by_kind.remove(&kind_index(kind)).unwrap_or_default();
        let boots = take(PartitionType::Boot);
        let roots = take(PartitionType::Root);
        let hashes = take(PartitionType::Hash);
        let reserved = take(PartitionType::Reserved);
        let privates = take(PartitionType::Private);
        let datas = take(PartitionType::Data);

        for (kind, list) in [
            (PartitionType::Boot, &boots),
            (PartitionType::Root, &roots),
            (PartitionType::Hash, &hashes),
            (PartitionType::Reserved, &reserved),
        ] {
            if let Some(third) = list.get(2) {
                return Err(LayoutError::TooManySets {
                    kind,
                    number: third.number,
                });
            }
        }
        for (kind, list) in [
            (PartitionType::Private, &privates),
            (PartitionType::Data, &datas),
        ] {
            if let [first, second, ..] = list.as_slice() {
                return Err(LayoutError::Duplicate {
                    kind,
                    first: first.number,
                    second: second.number,
                });
            }
        }
        let has_b = boots.len() > 1 || roots.len() > 1 || hashes.len() > 1 || reserved.len() > 1;
        let build = |id: SetId| -> std::result::Result<PartitionSet, LayoutError> {
            let i = match id {
                SetId::A => 0,
                SetId::B => 1,
            };
            let get = |kind: PartitionType, list: &[Partition]| {
                list.get(i)
                    .cloned()
                    .ok_or(LayoutError::Missing { kind, set: id })
            };
            Ok(PartitionSet {
                id,
                boot: get(PartitionType::Boot, &boots)?,
                root: get(PartitionType::Root, &roots)?,
                hash: get(PartitionType::Hash, &hashes)?,
                reserved: reserved.get(i).cloned(),
            })
        };
        let a = build(SetId::A)?;
        let b = if has_b { Some(build(SetId::B)?) } else { None };
        // RESERVED is optional, but when one set has it the other must too.
        if let Some(b) = &b
            && a.reserved.is_some() != b.reserved.is_some()
        {
            return Err(LayoutError::Missing {
                kind: PartitionType::Reserved,
                set: if a.reserved.is_none() {
                    SetId::A
                } else {
                    SetId::B
                },
            });
        }
        Ok(Layout {
            a,
            b,
            private: privates.into_iter().next(),
            data: datas.into_iter().next(),
        })
    }

    /// The set with this id; a clear error for set B in single-set mode.
    pub fn set(&self, id: SetId) -> Result<&PartitionSet> {
        match id {
            SetId::A => Ok(&self.a),
            SetId::B => self.b.as_ref().ok_or(Error::SingleSet { wanted: id }),
        }
    }

    /// Whether the disk has only set A.
    pub fn is_single_set(&self) -> bool {
        self.b.is_none()
    }

    /// The set a partition number belongs to.
    pub fn set_of(&self, number: u32) -> Option<SetId> {
        [Some(&self.a), self.b.as_ref()]
            .into_iter()
            .flatten()
            .find(|s| s.contains(number))
            .map(|s| s.id)
    }

    /// Every partition of the layout.
    pub fn partitions(&self) -> impl Iterator<Item = &Partition> {
        self.a
            .partitions()
            .chain(self.b.iter().flat_map(PartitionSet::partitions))
            .chain(self.private.as_ref())
            .chain(self.data.as_ref())
    }
}

fn kind_index(kind: PartitionType) -> u8 {
    match kind {
        PartitionType::Boot => 0,
        PartitionType::Root => 1,
        PartitionType::Hash => 2,
        PartitionType::Reserved => 3,
        PartitionType::Private => 4,
        PartitionType::Data => 5,
    }
}
