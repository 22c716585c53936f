//! `margay-node`: the per-node agent.
fn main() {}
