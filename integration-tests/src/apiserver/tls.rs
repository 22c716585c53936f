//! TLS for the test server, as every real API server serves: kubectl sends
//! no credentials over plain HTTP, and a client in a pod reaches the API
//! server over `https` with the cluster's CA.
//!
//! A CA and a server certificate (for the listen address, loopback,
//! `localhost` and the in-cluster names) are generated at the first start
//! and kept next to the state file (`<state>.tls.json`), so kubeconfigs
//! written earlier stay valid across restarts; without a state file they
//! are new each start. Clients trust the CA ([`Tls::ca_pem`]), which every
//! kubeconfig the server writes carries.

use std::net::IpAddr;
use std::path::Path;
use std::sync::Arc;

use base64::Engine as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use serde::{Deserialize, Serialize};

use super::error::ServerError;

/// The server's certificates.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Tls {
    /// The CA certificate, PEM (what clients trust).
    pub ca_pem: String,
    /// The CA certificate, DER (base64 in the file).
    #[serde(with = "b64")]
    pub ca_der: Vec<u8>,
    /// The server certificate, DER.
    #[serde(with = "b64")]
    cert_der: Vec<u8>,
    /// The server key, PKCS#8 DER.
    #[serde(with = "b64")]
    key_der: Vec<u8>,
    /// The names and addresses the certificate is valid for.
    sans: Vec<String>,
}

mod b64 {
    use base64::Engine as _;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&base64::engine::general_purpose::STANDARD.encode(v))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let s = String::deserialize(d)?;
        base64::engine::general_purpose::STANDARD
            .decode(s)
            .map_err(serde::de::Error::custom)
    }
}

fn tls_err(what: &str, e: impl std::fmt::Display) -> ServerError {
    ServerError::Tls(format!("{what}: {e}"))
}

/// The names a server listening on `ip` is reached by.
pub fn sans_for(ip: IpAddr) -> Vec<String> {
    let mut s: Vec<String> = [
        "localhost",
        "kubernetes",
        "kubernetes.default",
        "kubernetes.default.svc",
        "127.0.0.1",
        "::1",
    ]
    .iter()
    .map(|x| x.to_string())
    .collect();
    if !ip.is_unspecified() && !s.contains(&ip.to_string()) {
        s.push(ip.to_string());
    }
    s
}

impl Tls {
    /// Generates a CA and a server certificate for `sans`.
    pub fn generate(sans: &[String]) -> Result<Tls, ServerError> {
        use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
        let ca_key = KeyPair::generate().map_err(|e| tls_err("CA key", e))?;
        let mut ca_params = CertificateParams::new(Vec::<String>::new())
            .map_err(|e| tls_err("CA parameters", e))?;
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "margay test API server CA");
        let ca_cert = ca_params
            .self_signed(&ca_key)
            .map_err(|e| tls_err("CA certificate", e))?;
        let issuer = Issuer::new(ca_params, ca_key);
        let key = KeyPair::generate().map_err(|e| tls_err("server key", e))?;
        let mut params =
            CertificateParams::new(sans.to_vec()).map_err(|e| tls_err("server names", e))?;
        params
            .distinguished_name
            .push(DnType::CommonName, "kube-apiserver");
        let cert = params
            .signed_by(&key, &issuer)
            .map_err(|e| tls_err("server certificate", e))?;
        Ok(Tls {
            ca_pem: ca_cert.pem(),
            ca_der: ca_cert.der().to_vec(),
            cert_der: cert.der().to_vec(),
            key_der: key.serialize_der(),
            sans: sans.to_vec(),
        })
    }

    /// The certificates kept at `file` if they cover `sans`, else new ones
    /// (written there). Without a file, new ones.
    pub fn load_or_generate(file: Option<&Path>, sans: &[String]) -> Result<Tls, ServerError> {
        let Some(file) = file else {
            return Self::generate(sans);
        };
        if let Ok(raw) = std::fs::read(file)
            && let Ok(t) = serde_json::from_slice::<Tls>(&raw)
            && sans.iter().all(|s| t.sans.contains(s))
        {
            return Ok(t);
        }
        let t = Self::generate(sans)?;
        let body = serde_json::to_vec_pretty(&t).map_err(|e| tls_err("encode", e))?;
        {
            use std::io::Write as _;
            use std::os::unix::fs::OpenOptionsExt as _;
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(file)
                .map_err(|e| tls_err(&file.display().to_string(), e))?;
            f.write_all(&body)
                .and_then(|()| f.sync_all())
                .map_err(|e| tls_err(&file.display().to_string(), e))?;
        }
        Ok(t)
    }

    /// The CA, base64 of its PEM (a kubeconfig's `certificate-authority-data`).
    pub fn ca_data(&self) -> String {
        base64::engine::general_purpose::STANDARD.encode(&self.ca_pem)
    }

    /// A rustls server configuration (h2 and HTTP/1.1).
    pub fn server_config(&self) -> Result<Arc<rustls::ServerConfig>, ServerError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut c = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| tls_err("TLS versions", e))?
            .with_no_client_auth()
            .with_single_cert(
                vec![CertificateDer::from(self.cert_der.clone())],
                PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.key_der.clone())),
            )
            .map_err(|e| tls_err("server certificate", e))?;
        c.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(Arc::new(c))
    }

    /// A rustls client configuration that trusts this server's CA (for
    /// tests that speak raw HTTP over TLS).
    pub fn client_config(&self) -> Result<Arc<rustls::ClientConfig>, ServerError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(CertificateDer::from(self.ca_der.clone()))
            .map_err(|e| tls_err("CA", e))?;
        Ok(Arc::new(
            rustls::ClientConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .map_err(|e| tls_err("TLS versions", e))?
                .with_root_certificates(roots)
                .with_no_client_auth(),
        ))
    }
}
