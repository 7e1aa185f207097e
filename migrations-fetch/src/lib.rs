//! Fetch the data migrations a version jump needs into a cache that can be verified offline; prune what is stale.
