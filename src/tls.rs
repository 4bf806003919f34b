//! The agent's one rustls crypto provider. The shipped binary compiles in ring only, and
//! reqwest is built without a provider of its own, so every client the crate builds
//! (IMDS, webhook, Kubernetes) first makes sure a process-wide provider is installed.
//! Idempotent: `main` and the tests call it too, and the first install stays.

pub fn ensure_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}
