//! Where things live in etcd, under `/<prefix>/`:
//!
//! - `instances/<namespace>/<host:port>`: one key per instance, its [`Record`](crate::store::Record) as JSON;
//! - `replicas/<replica_id>`: one key per live replica, on that replica's own lease.
//!
//! The namespace and the authority are percent-encoded (every byte outside
//! `A-Z a-z 0-9 - . _ : [ ]`), so a `/`, a space or a byte above 0x7F in a
//! namespace can neither split a key nor reach outside the prefix.

/// What a key under the prefix is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Key {
    Instance,
    Replica(String),
}

/// The key layout of one prefix.
#[derive(Clone, Debug)]
pub struct Keys {
    root: Vec<u8>,
    instances: Vec<u8>,
    replicas: Vec<u8>,
}

fn encode(out: &mut Vec<u8>, part: &str) {
    for b in part.bytes() {
        if b.is_ascii_alphanumeric() || b"-._:[]".contains(&b) {
            out.push(b);
        } else {
            out.extend_from_slice(format!("%{b:02X}").as_bytes());
        }
    }
}

impl Keys {
    /// `prefix` without leading or trailing `/` (as `StoreUrl` gives it).
    pub fn new(prefix: &str) -> Keys {
        let root = format!("/{}/", prefix.trim_matches('/'));
        Keys {
            instances: format!("{root}instances/").into_bytes(),
            replicas: format!("{root}replicas/").into_bytes(),
            root: root.into_bytes(),
        }
    }

    /// Every key of this registry starts with this.
    pub fn root(&self) -> &[u8] {
        &self.root
    }

    pub fn instance(&self, namespace: &str, authority: &str) -> Vec<u8> {
        let mut key = self.instances.clone();
        encode(&mut key, namespace);
        key.push(b'/');
        encode(&mut key, authority);
        key
    }

    /// Every replica key starts with this.
    pub fn replicas(&self) -> &[u8] {
        &self.replicas
    }

    pub fn replica(&self, replica_id: &str) -> Vec<u8> {
        let mut key = self.replicas.clone();
        encode(&mut key, replica_id);
        key
    }

    pub fn parse(&self, key: &[u8]) -> Option<Key> {
        if key.starts_with(&self.instances) {
            Some(Key::Instance)
        } else {
            let id = key.strip_prefix(self.replicas.as_slice())?;
            Some(Key::Replica(String::from_utf8_lossy(id).into_owned()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn namespaces_cannot_split_keys_or_leave_the_prefix() {
        let k = Keys::new("disco");
        assert_eq!(
            k.instance("a/../b é", "[::1]:80"),
            b"/disco/instances/a%2F..%2Fb%20%C3%A9/[::1]:80".to_vec()
        );
        assert_eq!(k.parse(&k.instance("x", "h:1")), Some(Key::Instance));
        assert_eq!(k.parse(&k.replica("r-1")), Some(Key::Replica("r-1".into())));
        assert_eq!(k.parse(b"/disco/other"), None);
        assert!(k.instance("n", "h:1").starts_with(k.root()));
    }
}
