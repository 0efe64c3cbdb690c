//! The process-wide rustls crypto provider: installed once, before the first TLS client is built
//! (rustls panics without one). A leaf: both the PostgreSQL connection (`db::tls`) and the listener
//! client (`ship::http`) call it, neither through the other.

/// Installs the ring crypto provider once per process; later calls do nothing.
pub fn install_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}
