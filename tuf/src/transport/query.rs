//! Query parameters that change while a transport is in use.
//!
//! The reference updater tells the server who is asking: `seed` and `version` on every request,
//! and once an update is chosen also `target` (the version being fetched) and `migrations` (the
//! migration targets of the jump, comma-separated, then `manifest.json`). Servers count hosts by
//! them. Parameters are appended sorted by name, as the reference sends them.

use std::sync::{Arc, PoisonError, RwLock};

/// A shared, changeable list of query parameters (cloning shares it).
///
/// ```
/// use tuf::transport::QueryParams;
///
/// let params = QueryParams::default();
/// params.set("version", "1.2.0");
/// params.set("seed", "7");
/// let shared = params.clone();
/// shared.set("target", "1.3.0");
/// assert_eq!(
///     params.pairs(),
///     [("seed".to_string(), "7".to_string()),
///      ("target".to_string(), "1.3.0".to_string()),
///      ("version".to_string(), "1.2.0".to_string())]
/// );
/// ```
#[derive(Debug, Clone, Default)]
pub struct QueryParams(Arc<RwLock<Vec<(String, String)>>>);

impl QueryParams {
    /// Sets `name` to `value`, replacing an earlier value of the same name.
    pub fn set(&self, name: impl Into<String>, value: impl Into<String>) {
        let (name, value) = (name.into(), value.into());
        let mut params = self.0.write().unwrap_or_else(PoisonError::into_inner);
        match params.iter_mut().find(|(n, _)| *n == name) {
            Some(slot) => slot.1 = value,
            None => params.push((name, value)),
        }
    }

    /// The parameters now, sorted by name.
    pub fn pairs(&self) -> Vec<(String, String)> {
        let mut pairs = self
            .0
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        pairs.sort_by(|a, b| a.0.cmp(&b.0));
        pairs
    }
}

impl PartialEq for QueryParams {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0) || self.pairs() == other.pairs()
    }
}

impl Eq for QueryParams {}
