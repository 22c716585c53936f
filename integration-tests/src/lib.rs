//! Margay's lab: network namespaces, daemons, the Kubernetes API test server.
