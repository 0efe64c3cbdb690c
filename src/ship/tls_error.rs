//! Recognises, in a reqwest error's chain of causes, the TLS failures an operator causes when setting
//! up the listener connection, and says them in words. rustls alone says "received corrupt message
//! of type InvalidContentType" for an `https://` URL to a plain-HTTP port and "CaUsedAsEndEntity"
//! for a CA certificate served as the listener's own. It owns the wording only: the requests are
//! [`super::http`]'s, `check`'s verdict [`super::probe`]'s.

use std::error::Error as StdError;

use rustls::{CertificateError, InvalidMessage};

/// A TLS failure found in an error's causes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TlsProblem {
    /// The URL says `https://`, the port answered in plain HTTP.
    PlainHttp,
    /// The listener's certificate is a CA certificate (`CA:TRUE`) used as the server's own.
    CaAsServerCertificate,
    /// The certificate is signed by no trusted CA (the system store, `listener.ca_file`).
    UnknownIssuer,
    /// The certificate does not name the URL's host.
    WrongName,
    /// Any other TLS failure, as rustls says it.
    Other,
}

/// The first rustls error among `e` and its causes, classified, with rustls' own words.
pub fn find(e: &(dyn StdError + 'static)) -> Option<(TlsProblem, String)> {
    let mut next: Option<&(dyn StdError + 'static)> = Some(e);
    while let Some(err) = next {
        if let Some(tls) = err.downcast_ref::<rustls::Error>() {
            return Some((classify(tls), tls.to_string()));
        }
        // An `io::Error` wrapping another error (tokio-rustls and hyper wrap the rustls error in
        // one or two) names, as its `source`, the source of what it wraps: step into it instead.
        next = match err
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
        {
            Some(inner) => Some(inner as &(dyn StdError + 'static)),
            None => err.source(),
        };
    }
    None
}

fn classify(e: &rustls::Error) -> TlsProblem {
    match e {
        rustls::Error::InvalidMessage(InvalidMessage::InvalidContentType) => TlsProblem::PlainHttp,
        rustls::Error::InvalidCertificate(cert) => match cert {
            CertificateError::UnknownIssuer => TlsProblem::UnknownIssuer,
            CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. } => {
                TlsProblem::WrongName
            }
            CertificateError::Other(other) => {
                let inner: &(dyn StdError + 'static) = &*other.0;
                match inner.downcast_ref::<webpki::Error>() {
                    Some(webpki::Error::CaUsedAsEndEntity) => TlsProblem::CaAsServerCertificate,
                    _ => TlsProblem::Other,
                }
            }
            _ => TlsProblem::Other,
        },
        _ => TlsProblem::Other,
    }
}

impl TlsProblem {
    /// What went wrong with the listener at `url`, in words.
    pub fn explain(&self, url: &str) -> String {
        match self {
            TlsProblem::PlainHttp => format!(
                "the listener answered in plain HTTP; use http:// or point at the TLS port \
                 ({url})"
            ),
            TlsProblem::CaAsServerCertificate => format!(
                "the listener at {url} serves a CA certificate (CA:TRUE) as its own server \
                 certificate, which TLS clients refuse even when it is trusted: it needs a server \
                 certificate signed by a CA, and [listener] ca_file set to the CA that signed it \
                 (docs/operations.md, \"TLS to the listener\")"
            ),
            TlsProblem::UnknownIssuer => format!(
                "the certificate of {url} is not signed by a trusted CA (the system store or \
                 [listener] ca_file)"
            ),
            TlsProblem::WrongName => format!("the certificate of {url} does not name its host"),
            TlsProblem::Other => format!("the TLS handshake with {url} failed"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_rustls_errors_behind_io_errors() {
        let plain = std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            rustls::Error::InvalidMessage(InvalidMessage::InvalidContentType),
        );
        let (problem, said) = find(&plain).unwrap();
        assert_eq!(problem, TlsProblem::PlainHttp);
        assert!(said.contains("InvalidContentType"), "{said}");

        let ca = rustls::Error::InvalidCertificate(CertificateError::Other(rustls::OtherError(
            std::sync::Arc::new(webpki::Error::CaUsedAsEndEntity),
        )));
        assert_eq!(find(&ca).unwrap().0, TlsProblem::CaAsServerCertificate);
        let other = std::io::Error::other("connection refused");
        assert_eq!(find(&other), None);
    }
}
