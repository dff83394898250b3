//! Executions per `Idempotency-Key`: each business request that carries
//! the header is counted under its key, and the admin port shows the
//! counts (`GET /executions`), so a test or `loadtest --idempotency` can
//! check that the gateway let each key run exactly once.

use std::collections::HashMap;
use std::sync::Mutex;

/// Keys remembered at most; beyond, new keys are counted in `untracked`
/// only, so a flood of keys costs bounded memory.
const MAX_KEYS: usize = 1_000_000;

/// Longest key counted as itself; longer ones count as untracked.
const MAX_KEY_LEN: usize = 512;

#[derive(Debug, Default)]
pub(crate) struct Executions {
    inner: Mutex<Counts>,
}

#[derive(Debug, Default, serde::Serialize)]
struct Counts {
    /// Requests with a key that was not remembered (too many, or too long).
    untracked: u64,
    executions: HashMap<String, u64>,
}

impl Executions {
    /// Counts one execution of the request with `key`.
    pub(crate) fn count(&self, key: &str) {
        let mut c = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let known = c.executions.contains_key(key);
        if key.len() > MAX_KEY_LEN || (!known && c.executions.len() >= MAX_KEYS) {
            c.untracked += 1;
            return;
        }
        *c.executions.entry(key.to_string()).or_default() += 1;
    }

    /// `{"untracked": n, "executions": {key: count, ...}}`.
    pub(crate) fn to_json(&self) -> String {
        let c = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        serde_json::to_string(&*c).unwrap_or_else(|_| "{}".into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_key_counts_its_own_executions() {
        let e = Executions::default();
        e.count("a");
        e.count("a");
        e.count("b");
        e.count(&"x".repeat(MAX_KEY_LEN + 1));
        let v: serde_json::Value = serde_json::from_str(&e.to_json()).unwrap();
        assert_eq!(v["executions"]["a"], 2);
        assert_eq!(v["executions"]["b"], 1);
        assert_eq!(v["untracked"], 1);
    }
}
