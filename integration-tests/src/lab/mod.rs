//! Network-namespace lab harness.
