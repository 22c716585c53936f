//! policy (Margay).
