//! The TLS listener's certificate, reloaded without a restart.
//!
//! The certificate chain and key are handed to each handshake from a store that a background
//! thread refreshes when either file changes (checked every `reload_interval`). A renewal tool
//! (certbot, cert-manager, a Vault agent) only has to replace the files: new handshakes get the new
//! certificate, connections already open keep theirs. A file that does not load, or a key that does
//! not match the certificate (a renewal caught half-written), is logged and the previous pair keeps
//! serving, so a bad write never takes the listener down.

use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use pingora::listeners::TlsAccept;
use pingora::listeners::tls::TlsSettings;
use pingora::tls::ext;
use pingora::tls::pkey::{PKey, Private};
use pingora::tls::ssl::{SslRef, SslVersion};
use pingora::tls::x509::X509;

use crate::config::file::TlsFile;

/// A certificate chain (leaf first) and its private key.
struct Pair {
    chain: Vec<X509>,
    key: PKey<Private>,
}

/// What the files looked like when last loaded: modification time and length of each.
type Stamp = [(Option<SystemTime>, u64); 2];

pub struct CertStore {
    cert_path: String,
    key_path: String,
    current: RwLock<Arc<Pair>>,
    stamp: RwLock<Stamp>,
}

impl CertStore {
    /// Loads the pair now: a listener never starts without a valid certificate.
    pub fn open(cert_path: &str, key_path: &str) -> Result<Arc<Self>, String> {
        let stamp = stamp(cert_path, key_path);
        let pair = load(cert_path, key_path)?;
        Ok(Arc::new(Self {
            cert_path: cert_path.to_owned(),
            key_path: key_path.to_owned(),
            current: RwLock::new(Arc::new(pair)),
            stamp: RwLock::new(stamp),
        }))
    }

    fn current(&self) -> Arc<Pair> {
        self.current.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Reloads the pair if either file changed; `Ok(true)` when a new pair now serves.
    pub fn reload_if_changed(&self) -> Result<bool, String> {
        let now = stamp(&self.cert_path, &self.key_path);
        if *self.stamp.read().unwrap_or_else(|p| p.into_inner()) == now {
            return Ok(false);
        }
        self.reload()
    }

    /// Loads the pair from its files now, changed or not.
    pub fn reload(&self) -> Result<bool, String> {
        let now = stamp(&self.cert_path, &self.key_path);
        let pair = load(&self.cert_path, &self.key_path)?;
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(pair);
        *self.stamp.write().unwrap_or_else(|p| p.into_inner()) = now;
        Ok(true)
    }

    /// Watches the files every `interval` from a thread of its own.
    pub fn watch(self: &Arc<Self>, interval: Duration) -> Result<(), String> {
        let me = Arc::downgrade(self);
        std::thread::Builder::new()
            .name("sluice-tls".into())
            .spawn(move || {
                // The last failure, so a file that stays broken is reported once, not every tick.
                let mut failing: Option<String> = None;
                loop {
                    std::thread::sleep(interval);
                    let Some(store) = me.upgrade() else { return };
                    match store.reload_if_changed() {
                        Ok(true) => {
                            failing = None;
                            log::info!("tls: reloaded the certificate from {}", store.cert_path);
                        }
                        Ok(false) => {}
                        Err(e) if failing.as_ref() != Some(&e) => {
                            log::error!("tls: {e}; the previous certificate keeps serving");
                            failing = Some(e);
                        }
                        Err(_) => {}
                    }
                }
            })
            .map(drop)
            .map_err(|e| format!("cannot start the certificate watcher: {e}"))
    }

    /// The listener's settings: certificates from this store, `min_version` and up, h2 by ALPN.
    pub fn settings(self: &Arc<Self>, tls: &TlsFile) -> Result<TlsSettings, String> {
        let mut settings = TlsSettings::with_callbacks(Box::new(Handshakes(self.clone())))
            .map_err(|e| format!("server.tls: {e}"))?;
        settings
            .set_min_proto_version(Some(min_version(&tls.min_version)?))
            .map_err(|e| format!("server.tls.min_version: {e}"))?;
        settings.enable_h2();
        Ok(settings)
    }
}

/// `"1.3"` (the default) or `"1.2"`.
pub fn min_version(text: &str) -> Result<SslVersion, String> {
    match text {
        "1.3" => Ok(SslVersion::TLS1_3),
        "1.2" => Ok(SslVersion::TLS1_2),
        other => Err(format!("server.tls.min_version: `{other}` is not \"1.2\" or \"1.3\"")),
    }
}

fn stamp(cert_path: &str, key_path: &str) -> Stamp {
    let of = |p: &str| std::fs::metadata(p).map_or((None, 0), |m| (m.modified().ok(), m.len()));
    [of(cert_path), of(key_path)]
}

fn load(cert_path: &str, key_path: &str) -> Result<Pair, String> {
    let pem = std::fs::read(cert_path).map_err(|e| format!("cannot read certificate {cert_path}: {e}"))?;
    let chain =
        X509::stack_from_pem(&pem).map_err(|e| format!("{cert_path} is not a PEM certificate: {e}"))?;
    let Some(leaf) = chain.first() else {
        return Err(format!("{cert_path} holds no certificate"));
    };
    let pem = std::fs::read(key_path).map_err(|e| format!("cannot read key {key_path}: {e}"))?;
    let key =
        PKey::private_key_from_pem(&pem).map_err(|e| format!("{key_path} is not a PEM private key: {e}"))?;
    let matches = leaf.public_key().is_ok_and(|public| public.public_eq(&key));
    if !matches {
        return Err(format!("the key in {key_path} does not belong to the certificate in {cert_path}"));
    }
    Ok(Pair { chain, key })
}

/// Hands each handshake the current pair.
struct Handshakes(Arc<CertStore>);

#[async_trait]
impl TlsAccept for Handshakes {
    async fn certificate_callback(&self, ssl: &mut SslRef) {
        let pair = self.0.current();
        let mut chain = pair.chain.iter();
        let used = chain.next().map(|leaf| ext::ssl_use_certificate(ssl, leaf)).transpose().and_then(|_| {
            ext::ssl_use_private_key(ssl, &pair.key)?;
            chain.try_for_each(|c| ext::ssl_add_chain_cert(ssl, c))
        });
        if let Err(e) = used {
            log::error!("tls: cannot use the certificate in a handshake: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_are_1_2_or_1_3() {
        assert!(min_version("1.3").is_ok() && min_version("1.2").is_ok());
        assert!(min_version("1.1").unwrap_err().contains("\"1.2\" or \"1.3\""));
    }

    #[test]
    fn a_missing_pair_is_refused() {
        let Err(e) = load("/nonexistent/cert.pem", "/nonexistent/key.pem") else { panic!("loaded") };
        assert!(e.contains("cannot read"), "{e}");
    }
}
