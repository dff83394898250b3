//! What the store knows of the cluster, for discovery's console
//! (`/api/cluster`): the replicas it lists and, for etcd, whether each
//! member answers. The memory store knows of no other replica.

use serde::Serialize;

/// A replica listed in the store (a key on a lease).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct ListedReplica {
    pub replica_id: String,
    /// Where it serves, when it was started with `advertise_url`.
    pub advertise_url: Option<String>,
}

/// One etcd member, asked directly (no failover).
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct MemberHealth {
    pub endpoint: String,
    pub answers: bool,
    /// How long its answer took.
    pub latency_ms: Option<f64>,
    /// Why it did not answer.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// The store's view of the cluster.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct StoreCluster {
    /// This replica's id (etcd), `None` for memory.
    pub replica_id: Option<String>,
    /// The replicas listed now; `None` when the list could not be read.
    pub replicas: Option<Vec<ListedReplica>>,
    /// Why the replica list could not be read.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub replicas_error: Option<String>,
    /// Each etcd member (empty for memory).
    pub members: Vec<MemberHealth>,
}
