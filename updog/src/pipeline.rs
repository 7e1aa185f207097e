//! The streaming image pipeline: bounded stages for reading, hashing, lz4 decoding and writing.
