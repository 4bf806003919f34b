//! The agent's one rustls crypto provider. The shipped binary compiles in ring only, and
//! reqwest is built without a provider of its own, so every client the crate builds
//! (IMDS, webhook, Kubernetes) first makes sure a process-wide provider is installed.
//! Idempotent: when one is already installed (by `main`, or by a test that chose another
//! provider), that one stays.

pub fn ensure_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}
