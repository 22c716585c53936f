//! IPAM on custom resources: the compare-and-swap [`store`] the allocator
//! writes through, and the [`view`] of the blocks the rest of the agent
//! reads.

pub mod gc;
pub mod podips;
pub mod pools;
pub mod store;
pub mod view;
