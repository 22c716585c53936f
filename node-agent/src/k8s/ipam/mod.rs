//! IPAM on custom resources: the compare-and-swap [`store`] the allocator
//! writes through, and the [`view`] of the blocks the rest of the agent
//! reads.

pub mod store;
pub mod view;
