use chrono::{DateTime, Utc};

/// Everything that can go wrong in this crate; each variant names what was wrong.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A seed outside `0..=2047`.
    #[error("seed {seed} is out of range: seeds are 0..=2047")]
    SeedOutOfRange {
        /// The rejected value.
        seed: u32,
    },
    /// A seed that is not a number.
    #[error("seed {value:?} is not a number in 0..=2047")]
    BadSeed {
        /// The rejected text.
        value: String,
    },
    /// A timestamp that is not RFC 3339.
    #[error("time {value:?} is not an RFC 3339 time such as 2026-08-06T15:00:00Z: {reason}")]
    BadTime {
        /// The rejected text.
        value: String,
        /// What the parser said.
        reason: String,
    },
    /// A relative time (`in 4 hours`) that is neither relative nor absolute.
    #[error(
        "{value:?} is neither \"N minutes|hours|days|weeks\" (optionally prefixed \"in\") nor an RFC 3339 time"
    )]
    BadStartAfter {
        /// The rejected text.
        value: String,
    },
    /// A time computation that leaves the representable range.
    #[error("{what} is outside the range of representable times")]
    TimeOverflow {
        /// What was being computed.
        what: String,
    },
    /// A policy file that is not valid TOML or has the wrong shape.
    #[error("wave policy is not valid")]
    PolicyToml {
        /// The TOML error (it carries line and column).
        #[source]
        source: toml::de::Error,
    },
    /// A policy file with no `[[waves]]`.
    #[error("wave policy has no [[waves]]")]
    PolicyEmpty,
    /// A policy wave whose `start_after` is invalid.
    #[error("wave {wave}: start_after")]
    PolicyStartAfter {
        /// 1-based index of the wave in the policy.
        wave: usize,
        /// What was wrong.
        #[source]
        source: Box<Error>,
    },
    /// A policy wave whose fleet percentage is outside `1..=100`.
    #[error("wave {wave}: fleet_percentage {percentage} is outside 1..=100")]
    PercentageOutOfRange {
        /// 1-based index of the wave in the policy.
        wave: usize,
        /// The rejected percentage.
        percentage: u32,
    },
    /// A policy wave whose fleet percentage is not above the previous wave's.
    #[error(
        "wave {wave}: fleet_percentage {percentage} does not rise above the previous wave's {previous}"
    )]
    PercentageNotRising {
        /// 1-based index of the wave in the policy.
        wave: usize,
        /// This wave's percentage.
        percentage: u32,
        /// The previous wave's percentage.
        previous: u32,
    },
    /// A policy wave that does not start after the previous one.
    #[error("wave {wave}: starts at {at}, not after the previous wave ({previous})")]
    StartNotRising {
        /// 1-based index of the wave in the policy.
        wave: usize,
        /// This wave's start.
        at: DateTime<Utc>,
        /// The previous wave's start.
        previous: DateTime<Utc>,
    },
    /// A fleet simulation request that cannot be honoured.
    #[error("fleet simulation: {reason}")]
    Simulation {
        /// What was wrong.
        reason: String,
    },
}
