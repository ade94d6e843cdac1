//! `vigil-nova`: Keystone v3 + Nova compute API client for Vigil's decider.
//!
//! - [`CloudConfig`]: credentials from `clouds.yaml` (`OS_CLOUD`) or `OS_*`.
//! - [`NovaClient`]: token reuse and renewal (before expiry and on 401),
//!   compute endpoint from the catalog, microversion negotiation, bounded
//!   retries; typed calls for the witness (services, hypervisors, servers)
//!   and for recovery (disable, force down, evacuate, reset state, start,
//!   migrations, instance actions, aggregates).
//! - [`NovaError::Unreachable`] is "Nova did not answer" — never evidence
//!   that a compute node is dead.
//! - [`NovaRead`] / [`NovaActions`]: the same calls behind traits, for the
//!   decider's and the recovery workflow's tests.

pub mod client;
pub mod config;
pub mod decode;
pub mod error;
pub mod evacuate;
pub mod keystone;
pub mod microversion;
pub mod secret;
pub mod types;

pub use client::{
    AuthInfo, ClientOptions, EvacuateAccepted, MigrationQuery, NovaClient, ResetState, RetryPolicy,
    ServerQuery,
};
pub use config::{
    AppCredRef, Auth, CloudConfig, ConfigError, DomainRef, Interface, ProjectRef, SearchPath,
    UserRef,
};
pub use error::NovaError;
pub use evacuate::{evacuate_body, evacuation_plan, EvacuateRequest, EvacuationPlan, LandAs};
pub use microversion::{Microversion, VersionRange};
pub use secret::Secret;
pub use types::{
    Aggregate, ComputeService, Hypervisor, InstanceAction, Migration, Server, ServerAddress,
    ServerFault, ServerFlavor, ServerStatus, ServiceState, ServiceStatus,
};

use std::future::Future;

/// The reads the decider's Nova witness makes, so its tests can feed it
/// canned answers. [`NovaClient`] implements it.
pub trait NovaRead: Send + Sync {
    fn list_compute_services(
        &self,
    ) -> impl Future<Output = Result<Vec<ComputeService>, NovaError>> + Send;
    fn list_hypervisors(&self) -> impl Future<Output = Result<Vec<Hypervisor>, NovaError>> + Send;
    fn list_servers_on_host(
        &self,
        host: &str,
    ) -> impl Future<Output = Result<Vec<Server>, NovaError>> + Send;
}

/// The calls the recovery workflow makes. [`NovaClient`] implements it.
pub trait NovaActions: NovaRead {
    fn versions(&self) -> impl Future<Output = Result<VersionRange, NovaError>> + Send;
    fn get_server(&self, server_id: &str)
        -> impl Future<Output = Result<Server, NovaError>> + Send;
    /// An image's properties (opt-in/out and priority by image property).
    fn image_properties(
        &self,
        image_id: &str,
    ) -> impl Future<Output = Result<std::collections::BTreeMap<String, String>, NovaError>> + Send;
    fn disable_service(
        &self,
        svc: &ComputeService,
        reason: &str,
    ) -> impl Future<Output = Result<(), NovaError>> + Send;
    fn enable_service(
        &self,
        svc: &ComputeService,
    ) -> impl Future<Output = Result<(), NovaError>> + Send;
    fn set_forced_down(
        &self,
        svc: &ComputeService,
        forced_down: bool,
    ) -> impl Future<Output = Result<(), NovaError>> + Send;
    fn evacuate(
        &self,
        server_id: &str,
        req: &EvacuateRequest,
        mv: Microversion,
    ) -> impl Future<Output = Result<EvacuateAccepted, NovaError>> + Send;
    fn reset_state(
        &self,
        server_id: &str,
        state: ResetState,
    ) -> impl Future<Output = Result<(), NovaError>> + Send;
    fn start_server(&self, server_id: &str) -> impl Future<Output = Result<(), NovaError>> + Send;
    fn list_migrations(
        &self,
        q: &MigrationQuery,
    ) -> impl Future<Output = Result<Vec<Migration>, NovaError>> + Send;
    fn list_instance_actions(
        &self,
        server_id: &str,
    ) -> impl Future<Output = Result<Vec<InstanceAction>, NovaError>> + Send;
    fn list_aggregates(&self) -> impl Future<Output = Result<Vec<Aggregate>, NovaError>> + Send;
    fn aggregate_add_host(
        &self,
        aggregate_id: &str,
        host: &str,
    ) -> impl Future<Output = Result<Aggregate, NovaError>> + Send;
}

impl NovaRead for NovaClient {
    async fn list_compute_services(&self) -> Result<Vec<ComputeService>, NovaError> {
        NovaClient::list_compute_services(self).await
    }
    async fn list_hypervisors(&self) -> Result<Vec<Hypervisor>, NovaError> {
        NovaClient::list_hypervisors(self).await
    }
    async fn list_servers_on_host(&self, host: &str) -> Result<Vec<Server>, NovaError> {
        NovaClient::list_servers_on_host(self, host).await
    }
}

impl NovaActions for NovaClient {
    async fn versions(&self) -> Result<VersionRange, NovaError> {
        NovaClient::versions(self).await
    }
    async fn get_server(&self, server_id: &str) -> Result<Server, NovaError> {
        NovaClient::get_server(self, server_id).await
    }
    async fn image_properties(
        &self,
        image_id: &str,
    ) -> Result<std::collections::BTreeMap<String, String>, NovaError> {
        NovaClient::image_properties(self, image_id).await
    }
    async fn disable_service(&self, svc: &ComputeService, reason: &str) -> Result<(), NovaError> {
        NovaClient::disable_service(self, svc, reason).await
    }
    async fn enable_service(&self, svc: &ComputeService) -> Result<(), NovaError> {
        NovaClient::enable_service(self, svc).await
    }
    async fn set_forced_down(
        &self,
        svc: &ComputeService,
        forced_down: bool,
    ) -> Result<(), NovaError> {
        NovaClient::set_forced_down(self, svc, forced_down).await
    }
    async fn evacuate(
        &self,
        server_id: &str,
        req: &EvacuateRequest,
        mv: Microversion,
    ) -> Result<EvacuateAccepted, NovaError> {
        NovaClient::evacuate(self, server_id, req, mv).await
    }
    async fn reset_state(&self, server_id: &str, state: ResetState) -> Result<(), NovaError> {
        NovaClient::reset_state(self, server_id, state).await
    }
    async fn start_server(&self, server_id: &str) -> Result<(), NovaError> {
        NovaClient::start_server(self, server_id).await
    }
    async fn list_migrations(&self, q: &MigrationQuery) -> Result<Vec<Migration>, NovaError> {
        NovaClient::list_migrations(self, q).await
    }
    async fn list_instance_actions(
        &self,
        server_id: &str,
    ) -> Result<Vec<InstanceAction>, NovaError> {
        NovaClient::list_instance_actions(self, server_id).await
    }
    async fn list_aggregates(&self) -> Result<Vec<Aggregate>, NovaError> {
        NovaClient::list_aggregates(self).await
    }
    async fn aggregate_add_host(
        &self,
        aggregate_id: &str,
        host: &str,
    ) -> Result<Aggregate, NovaError> {
        NovaClient::aggregate_add_host(self, aggregate_id, host).await
    }
}
