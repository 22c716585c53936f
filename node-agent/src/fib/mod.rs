//! Kernel FIB adapter: programs BGP best paths and local routes with rtnetlink.
