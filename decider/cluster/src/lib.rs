//! Decider HA on etcd (`[cluster]`): several deciders judge every node, one
//! leads and only it acts.
//!
//! - [`leader`]: the lease, the term, and the leadership permit every action
//!   needs ([`Leadership::permit`]).
//! - [`journal`]: the journal in etcd, every write conditioned on the term
//!   (the fencing token).
//! - [`views`]: each decider's view of the nodes, published for the leader,
//!   which does not fence a node another live decider still sees alive.
//! - [`etcd`]: the bounded etcd client every part uses.

pub mod config;
pub mod etcd;
pub mod journal;
pub mod leader;
pub mod views;

pub use config::{ClusterConfig, ClusterConfigError};
pub use etcd::{Etcd, EtcdError};
pub use journal::EtcdJournal;
pub use leader::{LeaderPermit, Leadership, NotLeader, Role, Status};
