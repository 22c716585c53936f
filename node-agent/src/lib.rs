//! The Margay node agent: Kubernetes and kernel adapters around the cores.
