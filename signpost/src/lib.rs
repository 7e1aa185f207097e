//! The boot-selection state machine on GPT attribute bits, with crash-safe GPT writes; library and the `signpost` CLI.
