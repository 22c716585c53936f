//! Kubernetes API test server (a kube-apiserver stand-in for what Margay and kubectl use).
