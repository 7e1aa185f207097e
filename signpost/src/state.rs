//! The pure boot-selection state machine over GPT attribute bits.
//!
//! Nothing in this module touches a disk: [`BootFlags`] is a snapshot of the attribute words of
//! the two BOOT partitions (and the PRIVATE partition), and every transition is a method that
//! either changes that snapshot as a whole or returns an error and changes nothing. The disk side
//! ([`crate::Signpost`]) reads a snapshot from the GPT, applies one transition, and writes the
//! table back crash-safely.
//!
//! Bit layout (the ChromeOS / GRUB `gptprio` layout, so `cgpt show -P/-T/-S` reads it):
//!
//! | bits  | meaning                                             | partition |
//! |-------|-----------------------------------------------------|-----------|
//! | 48-51 | priority (0-15; 0 = never boot)                     | BOOT      |
//! | 52-55 | tries left (0-15)                                   | BOOT      |
//! | 56    | successful                                          | BOOT      |
//! | 57    | a boot has ever succeeded on this disk              | PRIVATE   |
//!
//! Every other bit of an attribute word is preserved exactly by every transition.

use std::fmt;

use serde::Serialize;

use crate::error::Error;
use bootpart::SetId;

/// First bit of the 4-bit priority field.
pub const PRIORITY_SHIFT: u32 = 48;
/// First bit of the 4-bit tries-left field.
pub const TRIES_LEFT_SHIFT: u32 = 52;
/// The "successful" bit.
pub const SUCCESSFUL_BIT: u32 = 56;
/// The bit on the PRIVATE partition recording that a boot has ever succeeded.
pub const BOOT_EVER_SUCCEEDED_BIT: u32 = 57;
/// Largest value of the priority and tries-left fields.
pub const FIELD_MAX: u8 = 15;

/// Mask of the bits a [`SetState`] owns in a BOOT partition's attribute word (48-56).
pub const SET_STATE_MASK: u64 =
    (0xF << PRIORITY_SHIFT) | (0xF << TRIES_LEFT_SHIFT) | (1 << SUCCESSFUL_BIT);

/// The priority used for the set that should boot next after an upgrade or rollback.
const PRIORITY_PREFERRED: u8 = 2;
/// The priority used for the fallback set after an upgrade or rollback.
const PRIORITY_FALLBACK: u8 = 1;

/// The boot-selection state of one partition set: the `gptprio` fields of its BOOT partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize)]
pub struct SetState {
    /// 0-15; 0 means the bootloader never picks this set.
    pub priority: u8,
    /// 0-15; the bootloader decrements it on each boot attempt.
    pub tries_left: u8,
    /// The set booted and was marked good.
    pub successful: bool,
}

impl SetState {
    /// A state with range-checked fields.
    ///
    /// ```
    /// use signpost::SetState;
    /// let s = SetState::new(2, 1, false).unwrap();
    /// assert!(s.is_bootable());
    /// assert!(SetState::new(16, 0, false).is_err());
    /// ```
    pub fn new(priority: u8, tries_left: u8, successful: bool) -> Result<Self, Error> {
        for (field, value) in [("priority", priority), ("tries_left", tries_left)] {
            if value > FIELD_MAX {
                return Err(Error::FieldOutOfRange { field, value });
            }
        }
        Ok(Self {
            priority,
            tries_left,
            successful,
        })
    }

    /// Decodes bits 48-56 of a BOOT partition's attribute word.
    pub fn from_attributes(attributes: u64) -> Self {
        Self {
            priority: ((attributes >> PRIORITY_SHIFT) & 0xF) as u8,
            tries_left: ((attributes >> TRIES_LEFT_SHIFT) & 0xF) as u8,
            successful: attributes & (1 << SUCCESSFUL_BIT) != 0,
        }
    }

    /// Encodes this state into bits 48-56 of `attributes`, leaving every other bit as it was.
    ///
    /// Fields above 15 are truncated to their low 4 bits; [`SetState::new`] prevents that.
    pub fn apply_to(self, attributes: u64) -> u64 {
        let bits = (u64::from(self.priority & 0xF) << PRIORITY_SHIFT)
            | (u64::from(self.tries_left & 0xF) << TRIES_LEFT_SHIFT)
            | (u64::from(self.successful) << SUCCESSFUL_BIT);
        (attributes & !SET_STATE_MASK) | bits
    }

    /// Whether GRUB's `gptprio.next` would consider this set at all: priority above 0 and
    /// either tries left or already successful.
    pub fn is_bootable(self) -> bool {
        self.priority > 0 && (self.tries_left > 0 || self.successful)
    }

    /// The reference's "will boot" test used as the precondition of a rollback: the set either
    /// booted successfully before, or has a priority and tries left.
    pub fn can_roll_back_to(self) -> bool {
        (self.priority > 0 && self.tries_left > 0) || self.successful
    }
}

impl fmt::Display for SetState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "priority={} tries_left={} successful={}",
            self.priority, self.tries_left, self.successful
        )
    }
}

/// One partition's number and full 64-bit attribute word.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PartitionFlags {
    /// 1-based GPT partition number.
    pub number: u32,
    /// The whole attribute word, including bits signpost does not own.
    pub attributes: u64,
}

/// A snapshot of every attribute word signpost reads or changes, plus which set is running.
///
/// Transitions change the snapshot only when all their preconditions hold; on error the
/// snapshot is untouched.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct BootFlags {
    /// The set the host is running from.
    pub active: SetId,
    /// Set A's BOOT partition.
    pub a: PartitionFlags,
    /// Set B's BOOT partition; `None` on a single-set disk.
    pub b: Option<PartitionFlags>,
    /// The PRIVATE partition, if the disk has one.
    pub private: Option<PartitionFlags>,
}

/// The transitions that change the disk, by their CLI names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Transition {
    /// `clear-inactive`: inactive set priority 0, tries 0, not successful.
    ClearInactive,
    /// `mark-inactive-valid`: inactive set tries 1 (priority unchanged).
    MarkInactiveValid,
    /// `upgrade-to-inactive`: inactive priority 2 and not successful, active priority 1.
    UpgradeToInactive,
    /// `cancel-upgrade`: inactive priority 0, active priority 2.
    CancelUpgrade,
    /// `rollback-to-inactive`: inactive priority 2, active priority 1.
    RollbackToInactive,
    /// `mark-successful-boot`: active successful, PRIVATE bit 57 set.
    MarkSuccessfulBoot,
}

impl Transition {
    /// Every transition, in CLI order.
    pub const ALL: [Transition; 6] = [
        Transition::ClearInactive,
        Transition::MarkInactiveValid,
        Transition::UpgradeToInactive,
        Transition::CancelUpgrade,
        Transition::RollbackToInactive,
        Transition::MarkSuccessfulBoot,
    ];

    /// The CLI subcommand name.
    pub fn name(self) -> &'static str {
        match self {
            Transition::ClearInactive => "clear-inactive",
            Transition::MarkInactiveValid => "mark-inactive-valid",
            Transition::UpgradeToInactive => "upgrade-to-inactive",
            Transition::CancelUpgrade => "cancel-upgrade",
            Transition::RollbackToInactive => "rollback-to-inactive",
            Transition::MarkSuccessfulBoot => "mark-successful-boot",
        }
    }
    /// The transition whose CLI subcommand name is `name`.
    ///
    /// ```
    /// use signpost::Transition;
    /// assert_eq!(Transition::from_name("cancel-upgrade"), Some(Transition::CancelUpgrade));
    /// assert_eq!(Transition::from_name("status"), None);
    /// ```
    pub fn from_name(name: &str) -> Option<Transition> {
        Self::ALL.into_iter().find(|t| t.name() == name)
    }

    /// What the transition does, in one line for a user (the CLI's `--help`).
    pub fn summary(self) -> &'static str {
        match self {
            Transition::ClearInactive => {
                "Clear the inactive set (priority 0, tries 0, not successful) before writing \
                 images to it"
            }
            Transition::MarkInactiveValid => {
                "Mark the inactive set as holding a complete image (tries 1)"
            }
            Transition::UpgradeToInactive => {
                "Boot the inactive set next, once, falling back to the running set"
            }
            Transition::CancelUpgrade => "Undo upgrade-to-inactive",
            Transition::RollbackToInactive => "Boot the inactive (previous) set next",
            Transition::MarkSuccessfulBoot => "Mark the running set as successfully booted",
        }
    }
}

impl fmt::Display for Transition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl BootFlags {
    /// The set that is not running.
    pub fn inactive(&self) -> SetId {
        self.active.other()
    }

    /// The BOOT partition of `set`, if the disk has that set.
    pub fn partition(&self, set: SetId) -> Option<PartitionFlags> {
        match set {
            SetId::A => Some(self.a),
            SetId::B => self.b,
        }
    }

    /// The state of `set`, if the disk has that set.
    pub fn state(&self, set: SetId) -> Option<SetState> {
        self.partition(set)
            .map(|p| SetState::from_attributes(p.attributes))
    }

    /// The state of the running set.
    pub fn active_state(&self) -> Result<SetState, Error> {
        self.state(self.active).ok_or(Error::ActiveSetMissing {
            active: self.active,
        })
    }

    /// Whether PRIVATE bit 57 is set; `None` without a PRIVATE partition.
    pub fn boot_ever_succeeded(&self) -> Option<bool> {
        self.private
            .map(|p| p.attributes & (1 << BOOT_EVER_SUCCEEDED_BIT) != 0)
    }

    /// The set GRUB's `gptprio.next` would boot: the highest priority among bootable sets
    /// (priority > 0 and tries left or successful), ties going to the lower partition number.
    /// `None` when no set is bootable.
    ///
    /// ```
    /// use signpost::{BootFlags, PartitionFlags, SetId, SetState};
    /// let word = |s: SetState| s.apply_to(0);
    /// let flags = BootFlags {
    ///     active: SetId::A,
    ///     a: PartitionFlags { number: 2, attributes: word(SetState::new(1, 0, true).unwrap()) },
    ///     b: Some(PartitionFlags { number: 6, attributes: word(SetState::new(2, 1, false).unwrap()) }),
    ///     private: None,
    /// };
    /// assert_eq!(flags.next_boot(), Some(SetId::B));
    /// ```
    pub fn next_boot(&self) -> Option<SetId> {
        let mut best: Option<(SetId, u32, SetState)> = None;
        for set in [SetId::A, SetId::B] {
            let Some(p) = self.partition(set) else {
                continue;
            };
            let state = SetState::from_attributes(p.attributes);
            if !state.is_bootable() {
                continue;
            }
            let better = match best {
                None => true,
                Some((_, number, s)) => {
                    state.priority > s.priority
                        || (state.priority == s.priority && p.number < number)
                }
            };
            if better {
                best = Some((set, p.number, state));
            }
        }
        best.map(|(set, _, _)| set)
    }

    /// What the bootloader does at boot (GRUB `gptprio.next`): picks [`BootFlags::next_boot`]
    /// and, if that set has tries left, decrements them. Returns the set booted, `None` when
    /// no set is bootable. For tests and demos that "reboot" a disk image; `active` is not
    /// changed (the caller decides what runs next).
    pub fn simulate_boot(&mut self) -> Option<SetId> {
        let set = self.next_boot()?;
        let mut state = self.state(set)?;
        state.tries_left = state.tries_left.saturating_sub(1);
        self.set_state(set, state);
        Some(set)
    }

    /// Applies one transition (see the methods of the same name), unless it would take away
    /// the disk's fallback: a transition is refused with [`Error::WouldLeaveNoFallback`] when
    /// before it the bootloader could boot a set and afterwards it could boot none, or when
    /// before it a set that booted successfully was reachable (see
    /// [`BootFlags::reaches_a_confirmed_set`]) and afterwards none is. Marking a boot
    /// successful only adds a confirmed set and is never refused for this. On any error the
    /// flags are unchanged.
    pub fn apply(&mut self, transition: Transition) -> Result<(), Error> {
        let mut after = *self;
        after.apply_unchecked(transition)?;
        let lost_boot = self.next_boot().is_some() && after.next_boot().is_none();
        let lost_fallback = self.reaches_a_confirmed_set() && !after.reaches_a_confirmed_set();
        if transition != Transition::MarkSuccessfulBoot && (lost_boot || lost_fallback) {
            let state = |f: &BootFlags, set| f.state(set).unwrap_or_default();
            return Err(Error::WouldLeaveNoFallback {
                operation: transition.name(),
                active: self.active,
                a: state(&after, SetId::A),
                b: state(&after, SetId::B),
                no_set_boots: lost_boot,
            });
        }
        *self = after;
        Ok(())
    }

    /// The transition as the reference defines it, without the fallback rule.
    fn apply_unchecked(&mut self, transition: Transition) -> Result<(), Error> {
        match transition {
            Transition::ClearInactive => self.raw_clear_inactive(),
            Transition::MarkInactiveValid => self.raw_mark_inactive_valid(),
            Transition::UpgradeToInactive => self.raw_upgrade_to_inactive(),
            Transition::CancelUpgrade => self.raw_cancel_upgrade(),
            Transition::RollbackToInactive => self.raw_rollback_to_inactive(),
            Transition::MarkSuccessfulBoot => self.raw_mark_successful_boot(),
        }
    }

    /// Whether the bootloader reaches a set that booted successfully before, even if every boot
    /// of a set not yet confirmed fails: boots are simulated (the chosen set loses a try) until
    /// a successful set is chosen, or none is bootable.
    pub fn reaches_a_confirmed_set(&self) -> bool {
        let mut flags = *self;
        // Each simulated boot of an unconfirmed set uses up one of at most 15 tries per set.
        for _ in 0..=2 * usize::from(FIELD_MAX) + 1 {
            let Some(set) = flags.next_boot() else {
                return false;
            };
            if flags.state(set).is_some_and(|s| s.successful) {
                return true;
            }
            flags.simulate_boot();
        }
        false
    }

    /// `clear-inactive` (see [`BootFlags::apply`] for the fallback rule).
    pub fn clear_inactive(&mut self) -> Result<(), Error> {
        self.apply(Transition::ClearInactive)
    }

    /// `mark-inactive-valid` (see [`BootFlags::apply`]).
    pub fn mark_inactive_valid(&mut self) -> Result<(), Error> {
        self.apply(Transition::MarkInactiveValid)
    }

    /// `upgrade-to-inactive` (see [`BootFlags::apply`]).
    pub fn upgrade_to_inactive(&mut self) -> Result<(), Error> {
        self.apply(Transition::UpgradeToInactive)
    }

    /// `cancel-upgrade` (see [`BootFlags::apply`]).
    pub fn cancel_upgrade(&mut self) -> Result<(), Error> {
        self.apply(Transition::CancelUpgrade)
    }

    /// `rollback-to-inactive` (see [`BootFlags::apply`]).
    pub fn rollback_to_inactive(&mut self) -> Result<(), Error> {
        self.apply(Transition::RollbackToInactive)
    }

    /// `mark-successful-boot` (see [`BootFlags::apply`]).
    pub fn mark_successful_boot(&mut self) -> Result<(), Error> {
        self.apply(Transition::MarkSuccessfulBoot)
    }

    /// Inactive set: priority 0, tries 0, not successful. Run before writing images to it.
    fn raw_clear_inactive(&mut self) -> Result<(), Error> {
        self.inactive_state(Transition::ClearInactive)?;
        self.set_state(self.inactive(), SetState::default());
        Ok(())
    }

    /// Inactive set: tries left 1, priority unchanged (it holds a complete, verified image).
    fn raw_mark_inactive_valid(&mut self) -> Result<(), Error> {
        let (mut inactive, _) = self.inactive_state(Transition::MarkInactiveValid)?;
        inactive.tries_left = 1;
        self.set_state(self.inactive(), inactive);
        Ok(())
    }

    /// Inactive set priority 2 and not successful, active set priority 1: the bootloader tries
    /// the inactive set next (once per try left) and falls back to the active one.
    ///
    /// Errors: [`Error::InactiveAlreadyMarked`] when the inactive set has a priority or is
    /// marked successful; [`Error::InactiveNotValid`] when it has no tries left.
    fn raw_upgrade_to_inactive(&mut self) -> Result<(), Error> {
        let (mut inactive, active) = self.inactive_state(Transition::UpgradeToInactive)?;
        let set = self.inactive();
        if inactive.priority != 0 || inactive.successful {
            return Err(Error::InactiveAlreadyMarked {
                set,
                state: inactive,
            });
        }
        if inactive.tries_left == 0 {
            return Err(Error::InactiveNotValid {
                set,
                state: inactive,
            });
        }
        inactive.successful = false;
        self.prefer_inactive(inactive, active);
        Ok(())
    }

    /// Undoes [`BootFlags::upgrade_to_inactive`]: inactive priority 0, active priority 2; tries
    /// and successful bits are kept.
    fn raw_cancel_upgrade(&mut self) -> Result<(), Error> {
        let (mut inactive, mut active) = self.inactive_state(Transition::CancelUpgrade)?;
        inactive.priority = 0;
        active.priority = PRIORITY_PREFERRED;
        self.set_both(inactive, active);
        Ok(())
    }

    /// Inactive priority 2, active priority 1, so the next boot goes back to the inactive set.
    ///
    /// Errors: [`Error::InactiveNotBootable`] unless the inactive set booted successfully
    /// before, or has both a priority and tries left.
    fn raw_rollback_to_inactive(&mut self) -> Result<(), Error> {
        let (inactive, active) = self.inactive_state(Transition::RollbackToInactive)?;
        if !inactive.can_roll_back_to() {
            return Err(Error::InactiveNotBootable {
                set: self.inactive(),
                state: inactive,
            });
        }
        self.prefer_inactive(inactive, active);
        Ok(())
    }

    /// Active set successful, and PRIVATE bit 57 ("a boot has ever succeeded") set.
    ///
    /// Errors: [`Error::NoPrivatePartition`] without a PRIVATE partition (nothing changes).
    fn raw_mark_successful_boot(&mut self) -> Result<(), Error> {
        let mut active = self.active_state()?;
        let Some(mut private) = self.private else {
            return Err(Error::NoPrivatePartition {
                operation: Transition::MarkSuccessfulBoot.name(),
            });
        };
        active.successful = true;
        private.attributes |= 1 << BOOT_EVER_SUCCEEDED_BIT;
        self.set_state(self.active, active);
        self.private = Some(private);
        Ok(())
    }

    /// Whether a boot has ever succeeded on this disk (PRIVATE bit 57).
    pub fn has_boot_ever_succeeded(&self) -> Result<bool, Error> {
        self.boot_ever_succeeded().ok_or(Error::NoPrivatePartition {
            operation: "has-boot-ever-succeeded",
        })
    }

    /// The inactive set boots next and the running one is the fallback (priorities 2 and 1):
    /// the rule `upgrade-to-inactive` and `rollback-to-inactive` share.
    fn prefer_inactive(&mut self, mut inactive: SetState, mut active: SetState) {
        inactive.priority = PRIORITY_PREFERRED;
        active.priority = PRIORITY_FALLBACK;
        self.set_both(inactive, active);
    }

    /// Sets the states of the inactive and the running set.
    fn set_both(&mut self, inactive: SetState, active: SetState) {
        self.set_state(self.inactive(), inactive);
        self.set_state(self.active, active);
    }

    /// The (inactive, active) states, or an error naming the operation in single-set mode.
    fn inactive_state(&self, op: Transition) -> Result<(SetState, SetState), Error> {
        let active = self.active_state()?;
        let inactive = self.state(self.inactive()).ok_or(Error::SingleSet {
            operation: op.name(),
            inactive: self.inactive(),
        })?;
        Ok((inactive, active))
    }

    fn set_state(&mut self, set: SetId, state: SetState) {
        let slot = match set {
            SetId::A => Some(&mut self.a),
            SetId::B => self.b.as_mut(),
        };
        if let Some(p) = slot {
            p.attributes = state.apply_to(p.attributes);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_transition_is_found_by_its_cli_name_and_names_are_distinct() {
        for t in Transition::ALL {
            assert_eq!(Transition::from_name(t.name()), Some(t));
            assert!(!t.summary().is_empty());
        }
        let mut names: Vec<_> = Transition::ALL.iter().map(|t| t.name()).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), Transition::ALL.len());
    }

    /// Every (priority, tries, successful) combination.
    fn all_states() -> impl Iterator<Item = SetState> {
        (0..=FIELD_MAX).flat_map(|p| {
            (0..=FIELD_MAX)
                .flat_map(move |t| [false, true].map(|s| SetState::new(p, t, s).unwrap()))
        })
    }

    /// A deterministic stream of 64-bit words (xorshift), for "other bits" patterns.
    fn words(n: usize) -> Vec<u64> {
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        let mut v = vec![0, u64::MAX, 0x5555_5555_5555_5555, 0xAAAA_AAAA_AAAA_AAAA];
        while v.len() < n {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            v.push(x);
        }
        v
    }

    fn flags(active: SetId, a: SetState, b: SetState, other_bits: u64) -> BootFlags {
        BootFlags {
            active,
            a: PartitionFlags {
                number: 2,
                attributes: a.apply_to(other_bits),
            },
            b: Some(PartitionFlags {
                number: 6,
                attributes: b.apply_to(other_bits.rotate_left(7)),
            }),
            private: Some(PartitionFlags {
                number: 9,
                attributes: other_bits.rotate_left(13) & !(1 << BOOT_EVER_SUCCEEDED_BIT),
            }),
        }
    }

    #[test]
    fn field_encoding_matches_cgpt_layout() {
        // priority 5, tries 10, successful: 0x5 at 48, 0xA at 52, bit 56.
        let s = SetState::new(5, 10, true).unwrap();
        assert_eq!(s.apply_to(0), (5 << 48) | (10 << 52) | (1 << 56));
        assert_eq!(s.apply_to(0), 0x01A5_0000_0000_0000);
        assert_eq!(SetState::from_attributes(0x01A5_0000_0000_0000), s);
        // The reference's worked example: 0x5555... decodes to p5 t5 s1.
        assert_eq!(
            SetState::from_attributes(0x5555_5555_5555_5555),
            SetState::new(5, 5, true).unwrap()
        );
    }

    #[test]
    fn encode_decode_round_trips_and_preserves_other_bits() {
        let mut n = 0;
        for other in words(64) {
            for s in all_states() {
                let w = s.apply_to(other);
                assert_eq!(SetState::from_attributes(w), s);
                assert_eq!(
                    w & !SET_STATE_MASK,
                    other & !SET_STATE_MASK,
                    "other bits changed"
                );
                n += 1;
            }
        }
        assert_eq!(n, 64 * 512);
    }

    #[test]
    fn new_rejects_out_of_range_fields() {
        assert!(matches!(
            SetState::new(16, 0, false),
            Err(Error::FieldOutOfRange {
                field: "priority",
                value: 16
            })
        ));
        assert!(matches!(
            SetState::new(0, 200, false),
            Err(Error::FieldOutOfRange {
                field: "tries_left",
                value: 200
            })
        ));
        assert!(SetState::new(15, 15, true).is_ok());
    }

    #[test]
    fn next_boot_follows_grub_gptprio() {
        let st = |p, t, s| SetState::new(p, t, s).unwrap();
        let f = |a, b| flags(SetId::A, a, b, 0);
        // Highest priority wins.
        assert_eq!(
            f(st(1, 0, true), st(2, 1, false)).next_boot(),
            Some(SetId::B)
        );
        assert_eq!(
            f(st(3, 0, true), st(2, 1, false)).next_boot(),
            Some(SetId::A)
        );
        // Priority 0 never boots, even when successful.
        assert_eq!(f(st(0, 5, true), st(0, 5, true)).next_boot(), None);
        // No tries and not successful never boots, whatever the priority.
        assert_eq!(
            f(st(15, 0, false), st(1, 0, true)).next_boot(),
            Some(SetId::B)
        );
        assert_eq!(f(st(15, 0, false), st(15, 0, false)).next_boot(), None);
        // Ties go to the lower partition number, whichever set that is.
        assert_eq!(
            f(st(2, 1, false), st(2, 0, true)).next_boot(),
            Some(SetId::A)
        );
        let mut swapped = f(st(2, 1, false), st(2, 0, true));
        swapped.a.number = 7;
        assert_eq!(swapped.next_boot(), Some(SetId::B));
        // Single-set disk.
        let mut single = f(st(1, 0, true), st(0, 0, false));
        single.b = None;
        assert_eq!(single.next_boot(), Some(SetId::A));
    }

    #[test]
    fn next_boot_agrees_with_a_literal_grub_loop_on_every_pair() {
        // GRUB: iterate partitions in table order, keep one only if strictly higher priority.
        for a in all_states() {
            for b in all_states() {
                let f = flags(SetId::A, a, b, 0);
                let mut found: Option<(SetId, u8)> = None;
                for (set, s) in [(SetId::A, a), (SetId::B, b)] {
                    let old = found.map_or(0, |(_, p)| p);
                    if (s.tries_left > 0 || s.successful) && s.priority > old {
                        found = Some((set, s.priority));
                    }
                }
                assert_eq!(f.next_boot(), found.map(|(s, _)| s), "a={a} b={b}");
            }
        }
    }

    /// Checks one transition from one starting point against the reference semantics.
    fn check(before: BootFlags, t: Transition) {
        let mut after = before;
        let result = after.apply_unchecked(t);
        // The fallback rule depends on which priority is highest, not on its value: priorities
        // up to 3 cover every ordering (and keep this exhaustive test fast); tries cover 0-15.
        let low = |set| before.state(set).is_some_and(|s| s.priority <= 3);
        if low(SetId::A) && low(SetId::B) {
            check_fallback_rule(before, t, &result, after);
        }
        let act = before.active;
        let ina = before.inactive();
        let (a0, i0) = (before.state(act).unwrap(), before.state(ina).unwrap());
        if result.is_err() {
            assert_eq!(after, before, "{t} changed flags on error");
        }
        let (a1, i1) = (after.state(act).unwrap(), after.state(ina).unwrap());
        match t {
            Transition::ClearInactive => {
                result.unwrap();
                assert_eq!(i1, SetState::default());
                assert_eq!(a1, a0);
            }
            Transition::MarkInactiveValid => {
                result.unwrap();
                assert_eq!(
                    i1,
                    SetState {
                        tries_left: 1,
                        ..i0
                    }
                );
                assert_eq!(a1, a0);
            }
            Transition::UpgradeToInactive => {
                if i0.priority != 0 || i0.successful {
                    assert!(
                        matches!(result, Err(Error::InactiveAlreadyMarked { set, state }) if set == ina && state == i0)
                    );
                } else if i0.tries_left == 0 {
                    assert!(
                        matches!(result, Err(Error::InactiveNotValid { set, state }) if set == ina && state == i0)
                    );
                } else {
                    result.unwrap();
                    assert_eq!(
                        i1,
                        SetState {
                            priority: 2,
                            successful: false,
                            ..i0
                        }
                    );
                    assert_eq!(a1, SetState { priority: 1, ..a0 });
                    assert_eq!(after.next_boot(), Some(ina));
                }
            }
            Transition::CancelUpgrade => {
                result.unwrap();
                assert_eq!(i1, SetState { priority: 0, ..i0 });
                assert_eq!(a1, SetState { priority: 2, ..a0 });
            }
            Transition::RollbackToInactive => {
                if (i0.priority > 0 && i0.tries_left > 0) || i0.successful {
                    result.unwrap();
                    assert_eq!(i1, SetState { priority: 2, ..i0 });
                    assert_eq!(a1, SetState { priority: 1, ..a0 });
                    assert_eq!(after.next_boot(), Some(ina));
                } else {
                    assert!(
                        matches!(result, Err(Error::InactiveNotBootable { set, state }) if set == ina && state == i0)
                    );
                }
            }
            Transition::MarkSuccessfulBoot => {
                result.unwrap();
                assert_eq!(
                    a1,
                    SetState {
                        successful: true,
                        ..a0
                    }
                );
                assert_eq!(i1, i0);
                assert_eq!(after.boot_ever_succeeded(), Some(true));
            }
        }
        // Bits outside 48-56 on BOOT, and outside 57 on PRIVATE, never change.
        for set in [SetId::A, SetId::B] {
            let (x, y) = (
                before.partition(set).unwrap(),
                after.partition(set).unwrap(),
            );
            assert_eq!(x.number, y.number);
            assert_eq!(
                x.attributes & !SET_STATE_MASK,
                y.attributes & !SET_STATE_MASK,
                "{t}: set {set} other bits"
            );
        }
        let (x, y) = (before.private.unwrap(), after.private.unwrap());
        assert_eq!(
            x.attributes & !(1 << BOOT_EVER_SUCCEEDED_BIT),
            y.attributes & !(1 << BOOT_EVER_SUCCEEDED_BIT)
        );
        if t != Transition::MarkSuccessfulBoot {
            assert_eq!(x, y, "{t} touched PRIVATE");
        }
    }

    /// GRUB's loop, written out independently: the highest priority among bootable sets, in
    /// table order, keeping only a strictly higher one.
    fn literal_pick(f: &BootFlags) -> Option<SetId> {
        let mut found: Option<(SetId, u8)> = None;
        for set in [SetId::A, SetId::B] {
            let Some(s) = f.state(set) else { continue };
            if (s.tries_left > 0 || s.successful) && s.priority > found.map_or(0, |(_, p)| p) {
                found = Some((set, s.priority));
            }
        }
        found.map(|(set, _)| set)
    }

    /// Worst case: every boot of an unconfirmed set fails. Does the bootloader still come to
    /// a set that booted successfully?
    fn worst_case_reaches_confirmed(mut f: BootFlags) -> bool {
        while let Some(set) = literal_pick(&f) {
            let mut s = f.state(set).unwrap();
            if s.successful {
                return true;
            }
            s.tries_left -= 1;
            f.set_state(set, s);
        }
        false
    }

    /// The fallback rule of `apply`: it refuses exactly the reference transitions that lose the
    /// last bootable set or the last reachable confirmed one, and changes nothing when it does.
    fn check_fallback_rule(
        before: BootFlags,
        t: Transition,
        reference: &Result<(), Error>,
        reference_after: BootFlags,
    ) {
        let mut checked = before;
        let guarded = checked.apply(t);
        let loses = t != Transition::MarkSuccessfulBoot
            && ((literal_pick(&before).is_some() && literal_pick(&reference_after).is_none())
                || (worst_case_reaches_confirmed(before)
                    && !worst_case_reaches_confirmed(reference_after)));
        match (reference, guarded) {
            (Err(_), Err(_)) => assert_eq!(checked, before),
            (Ok(()), Ok(())) => {
                assert!(!loses, "{t} from {before:?} lost the fallback");
                assert_eq!(checked, reference_after);
            }
            (Ok(()), Err(Error::WouldLeaveNoFallback { .. })) => {
                assert!(loses, "{t} from {before:?} refused without cause");
                assert_eq!(checked, before);
            }
            (r, g) => panic!("{t} from {before:?}: reference {r:?}, guarded {g:?}"),
        }
    }

    /// Issue 24's cases: reverting (cancel-upgrade) while the running set was never confirmed
    /// and the other set is the confirmed one, and clearing that set, are refused; so is a
    /// revert that leaves no set bootable at all.
    #[test]
    fn operations_that_would_take_away_the_last_fallback_are_refused() {
        let st = |p, t, s| SetState::new(p, t, s).unwrap();
        // Running A, never confirmed; B booted before and is preferred.
        let f = flags(SetId::A, st(1, 0, false), st(2, 0, true), 0);
        for t in [Transition::CancelUpgrade, Transition::ClearInactive] {
            let mut g = f;
            let err = g.apply(t).unwrap_err();
            assert!(
                matches!(err, Error::WouldLeaveNoFallback { .. }),
                "{t}: {err}"
            );
            assert_eq!(g, f);
            assert!(err.to_string().contains("mark-successful-boot"), "{err}");
        }
        // Running A unconfirmed, B applied and untried: reverting would leave nothing bootable.
        let f = flags(SetId::A, st(1, 0, false), st(2, 1, false), 0);
        let err = f.clone().apply(Transition::CancelUpgrade).unwrap_err();
        assert!(err.to_string().contains("no set would boot"), "{err}");
        // Once A is marked, both go through.
        let mut g = f;
        g.mark_successful_boot().unwrap();
        g.cancel_upgrade().unwrap();
        g.clear_inactive().unwrap();
    }

    /// From a factory disk (set A confirmed), every sequence of transitions, boots that are
    /// marked and boots that fail, explored breadth first, never reaches a disk where no set
    /// boots or no confirmed set is reachable.
    #[test]
    fn no_reachable_state_loses_the_fallback() {
        use std::collections::{HashSet, VecDeque};
        let factory = flags(
            SetId::A,
            SetState::new(1, 0, true).unwrap(),
            SetState::default(),
            0,
        );
        let mut seen = HashSet::from([factory]);
        let mut queue = VecDeque::from([factory]);
        while let Some(f) = queue.pop_front() {
            assert!(literal_pick(&f).is_some(), "nothing boots: {f:?}");
            assert!(
                worst_case_reaches_confirmed(f),
                "no confirmed fallback: {f:?}"
            );
            let mut next = Vec::new();
            for t in Transition::ALL {
                let mut g = f;
                if g.apply(t).is_ok() {
                    next.push(g);
                }
            }
            // A reboot: the bootloader picks a set (one try used); it runs it, and the boot is
            // either marked or not.
            let mut booted = f;
            if let Some(set) = booted.simulate_boot() {
                booted.active = set;
                next.push(booted);
                booted.mark_successful_boot().unwrap();
                next.push(booted);
            }
            for g in next {
                if seen.insert(g) {
                    queue.push_back(g);
                }
            }
        }
        assert!(seen.len() > 20, "explored only {} states", seen.len());
    }

    #[test]
    fn every_transition_from_every_state_pair_matches_the_reference() {
        let others = words(3);
        let mut n = 0u32;
        for (i, a) in all_states().enumerate() {
            for b in all_states() {
                let other = others[i % others.len()];
                for active in [SetId::A, SetId::B] {
                    for t in Transition::ALL {
                        check(flags(active, a, b, other), t);
                        n += 1;
                    }
                }
            }
        }
        println!("checked {n} (state pair, active, transition) cases");
        assert_eq!(n, 512 * 512 * 2 * 6);
    }

    #[test]
    fn single_set_disk_refuses_inactive_operations_and_allows_the_rest() {
        let mut f = flags(
            SetId::A,
            SetState::new(1, 0, false).unwrap(),
            SetState::default(),
            0,
        );
        f.b = None;
        for t in [
            Transition::ClearInactive,
            Transition::MarkInactiveValid,
            Transition::UpgradeToInactive,
            Transition::CancelUpgrade,
            Transition::RollbackToInactive,
        ] {
            let before = f;
            let err = f.apply(t).unwrap_err();
            assert!(
                matches!(err, Error::SingleSet { operation, inactive: SetId::B } if operation == t.name()),
                "{err}"
            );
            assert_eq!(f, before);
        }
        f.mark_successful_boot().unwrap();
        assert_eq!(
            f.state(SetId::A).unwrap(),
            SetState::new(1, 0, true).unwrap()
        );
        f.active = SetId::B;
        assert!(matches!(
            f.mark_successful_boot(),
            Err(Error::ActiveSetMissing { active: SetId::B })
        ));
    }

    #[test]
    fn mark_successful_boot_without_private_changes_nothing() {
        let mut f = flags(
            SetId::A,
            SetState::new(1, 0, false).unwrap(),
            SetState::default(),
            0,
        );
        f.private = None;
        let before = f;
        assert!(matches!(
            f.mark_successful_boot(),
            Err(Error::NoPrivatePartition { .. })
        ));
        assert_eq!(f, before);
        assert!(matches!(
            f.has_boot_ever_succeeded(),
            Err(Error::NoPrivatePartition { .. })
        ));
    }

    fn grub_boot(f: &mut BootFlags) -> Option<SetId> {
        f.simulate_boot()
    }

    #[test]
    fn update_flow_boots_new_set_once_then_falls_back_unless_marked_successful() {
        // Installed system running A, marked good.
        let mut f = flags(
            SetId::A,
            SetState::new(1, 0, true).unwrap(),
            SetState::default(),
            0,
        );
        f.clear_inactive().unwrap();
        assert_eq!(f.next_boot(), Some(SetId::A));
        f.mark_inactive_valid().unwrap();
        assert_eq!(
            f.next_boot(),
            Some(SetId::A),
            "valid but not upgraded must not boot"
        );
        f.upgrade_to_inactive().unwrap();
        assert_eq!(grub_boot(&mut f), Some(SetId::B));
        // B never marks itself successful: the next boot goes back to A.
        let mut failed = f;
        assert_eq!(grub_boot(&mut failed), Some(SetId::A));
        // B marks itself successful: it keeps booting.
        f.active = SetId::B;
        f.mark_successful_boot().unwrap();
        assert_eq!(grub_boot(&mut f), Some(SetId::B));
        assert_eq!(grub_boot(&mut f), Some(SetId::B));
        // Operator rolls back to A.
        f.rollback_to_inactive().unwrap();
        assert_eq!(grub_boot(&mut f), Some(SetId::A));
        // cancel-upgrade restores the running set's preference.
        let mut g = flags(
            SetId::A,
            SetState::new(1, 0, true).unwrap(),
            SetState::new(0, 1, false).unwrap(),
            0,
        );
        g.upgrade_to_inactive().unwrap();
        g.cancel_upgrade().unwrap();
        assert_eq!(g.next_boot(), Some(SetId::A));
        assert_eq!(
            g.state(SetId::B).unwrap(),
            SetState::new(0, 1, false).unwrap()
        );
    }
}
