//! Everything that talks to the API server: Margay's custom resources
//! ([`crd`]), the watched objects ([`cluster`]), IPAM on the CRDs
//! ([`ipam`]), this node's identity and annotations ([`node`]), and label
//! selectors ([`selector`]); what of a Pod is read and cached ([`pod`]);
//! this node's pods published as compact `PodEndpoint`s ([`podendpoints`]).

pub mod client;
pub mod cluster;
pub mod crd;
pub mod ipam;
pub mod node;
pub mod pod;
pub mod podendpoints;
pub mod selector;
