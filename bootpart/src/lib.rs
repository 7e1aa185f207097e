//! Disks and A/B partition sets: GPT reading, set discovery by partition type GUID, the running set, bounded partition readers and writers.
