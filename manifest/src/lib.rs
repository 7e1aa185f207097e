//! The Bottlerocket-compatible `manifest.json`: schema, update selection, migration-chain search, validation; and the `updata` publisher CLI.
