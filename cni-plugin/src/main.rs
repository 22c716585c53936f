//! `margay`: the CNI plugin.
fn main() {}
