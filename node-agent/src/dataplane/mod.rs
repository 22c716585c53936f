//! Policy dataplane: applies the `policy` crate's nftables plans to the kernel.
