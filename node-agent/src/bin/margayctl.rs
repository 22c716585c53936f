//! `margayctl`: inspect and operate Margay.
fn main() {}
