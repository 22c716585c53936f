//! bgp (Margay).
