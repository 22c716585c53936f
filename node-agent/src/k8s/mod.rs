//! Everything that talks to the API server: Margay's custom resources
//! ([`crd`]), the watched objects ([`cluster`]), IPAM on the CRDs
//! ([`ipam`]), this node's identity and annotations ([`node`]); what of a
//! Pod is read and cached ([`pod`]); this node's pods published as compact
//! `PodEndpoint`s ([`podendpoints`]) and every node's kept compact
//! ([`endpointcache`]). Label selectors are
//! `margay_types::Selector`.

pub mod client;
pub mod cluster;
pub mod crd;
pub mod endpointcache;
pub mod ipam;
pub mod node;
pub mod pod;
pub mod podendpoints;
pub mod policycache;
pub mod policystatus;
