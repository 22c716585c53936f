//! The small vocabulary every Margay crate speaks, defined once:
//!
//! * [`Selector`]: a Kubernetes label selector, compiled from a
//!   `metav1.LabelSelector` (feature `k8s`) or parsed from the set-based
//!   text form (`zone=a, tier in (web, api), !spot`), printed in that form,
//!   matched against labels, and comparable (equal selectors compare and
//!   hash equal, so policy sets keyed by selector are shared).
//! * [`Family`]: IPv4 or IPv6.

mod family;
pub mod selector;

pub use family::Family;
pub use selector::{LabelLookup, Labels, Requirement, Selector, SelectorError, Values};
