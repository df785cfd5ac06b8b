//! A provider's endpoints: a pingora-load-balancing pool, re-resolved by DNS and actively probed.
//!
//! Each base URL of a provider resolves to one or more addresses; every address is a [`Backend`]
//! carrying its [`EndpointInfo`]. A probe (`GET {base}/models` by default) runs every interval;
//! backends that fail it are skipped by selection until they pass again. The last probe of each
//! backend is kept for `/health`.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use async_trait::async_trait;
use pingora::connectors::http::Connector;
use pingora::http::RequestHeader;
use pingora::lb::discovery::ServiceDiscovery;
use pingora::lb::health_check::HealthCheck;
use pingora::lb::selection::RoundRobin;
use pingora::lb::{Backend, Backends, LoadBalancer};
use pingora::prelude::HttpPeer;
use pingora::protocols::ALPN;
use pingora::protocols::l4::socket::SocketAddr;
use pingora::{Error, ErrorType, Result};

/// One base URL of a provider, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndpointInfo {
    pub tls: bool,
    pub host: String,
    pub port: u16,
    /// Path prefix, without a trailing slash (`/v1`).
    pub base_path: String,
    /// The `Host` header value, made once (a clone of it is a reference count).
    authority: http::HeaderValue,
}

impl EndpointInfo {
    /// Parses `http(s)://host[:port][/path]`.
    pub fn parse(url: &str) -> std::result::Result<Self, String> {
        let (tls, rest) = if let Some(r) = url.strip_prefix("https://") {
            (true, r)
        } else if let Some(r) = url.strip_prefix("http://") {
            (false, r)
        } else {
            return Err(format!("`{url}` must start with http:// or https://"));
        };
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, ""),
        };
        let default = if tls { 443 } else { 80 };
        let invalid_port = || format!("`{url}` has an invalid port");
        let (host, port) = if let Some(bracketed) = authority.strip_prefix('[') {
            // An IPv6 address: `[::1]` or `[::1]:8000`.
            let (host, after) =
                bracketed.split_once(']').ok_or_else(|| format!("`{url}` has no closing `]`"))?;
            let port = match after {
                "" => default,
                p => p.strip_prefix(':').and_then(|p| p.parse().ok()).ok_or_else(invalid_port)?,
            };
            (host, port)
        } else {
            match authority.rsplit_once(':') {
                Some((h, p)) => (h, p.parse().map_err(|_| invalid_port())?),
                None => (authority, default),
            }
        };
        if !host.is_ascii() {
            // `Host` carries the name as it goes on the wire: an international name in punycode.
            return Err(format!(
                "`{url}` has a host that is not ASCII (write an international name in punycode)"
            ));
        }
        if host.is_empty() {
            return Err(format!("`{url}` has no host"));
        }
        // An IPv6 address keeps its brackets in `Host` (RFC 9110 §7.2).
        let shown = if host.contains(':') { format!("[{host}]") } else { host.to_owned() };
        let authority = if port == default { shown } else { format!("{shown}:{port}") };
        let authority =
            http::HeaderValue::try_from(authority).map_err(|_| format!("`{url}` has an invalid host"))?;
        Ok(Self {
            tls,
            host: host.to_owned(),
            port,
            base_path: path.trim_end_matches('/').to_owned(),
            authority,
        })
    }

    /// The `Host` header value.
    pub fn authority(&self) -> &str {
        self.authority.to_str().unwrap_or_default()
    }

    /// The `Host` header.
    pub fn host_header(&self) -> http::HeaderValue {
        self.authority.clone()
    }
}

/// Connection settings shared by every endpoint of one provider.
#[derive(Debug, Clone)]
pub struct PeerSettings {
    pub connect_timeout: Duration,
    pub first_byte_timeout: Duration,
    pub idle_timeout: Duration,
}

/// The active probe of a pool: `GET {base}{path}` every `interval`, with these headers.
#[derive(Debug, Clone)]
pub struct ProbeSpec {
    pub path: String,
    pub interval: Duration,
    pub headers: Vec<(String, String)>,
    /// The provider's key, read at each probe (it may be refreshed): header, prefix, key.
    pub key: Option<(&'static str, &'static str, sluice_core::secret::LiveSecret)>,
}

/// Last probe of one backend, for `/health`.
#[derive(Debug, Clone)]
pub struct ProbeResult {
    pub ok: bool,
    pub latency: Duration,
    pub at: SystemTime,
    pub detail: String,
}

/// The balanced, health-checked endpoints of one provider.
pub struct EndpointPool {
    pub lb: Arc<LoadBalancer<RoundRobin>>,
    pub settings: PeerSettings,
    pub probes: Arc<Mutex<HashMap<String, ProbeResult>>>,
    pub probe_interval: Option<Duration>,
}

impl EndpointPool {
    pub fn new(
        endpoints: Vec<EndpointInfo>,
        settings: PeerSettings,
        probe: Option<ProbeSpec>,
        ca: Option<CaRoots>,
    ) -> Self {
        let discovery = DnsDiscovery { endpoints: endpoints.into_iter().map(Arc::new).collect() };
        let mut lb = LoadBalancer::<RoundRobin>::from_backends(Backends::new(Box::new(discovery)));
        let probes = Arc::new(Mutex::new(HashMap::new()));
        let probe_interval = probe.as_ref().map(|p| p.interval);
        if let Some(ProbeSpec { path, interval, headers, key }) = probe {
            lb.set_health_check(Box::new(Probe {
                path,
                headers,
                key,
                timeout: settings.connect_timeout.max(Duration::from_secs(2)),
                log: probes.clone(),
                ca,
            }));
            lb.health_check_frequency = Some(interval);
            lb.parallel_health_check = true;
        }
        lb.update_frequency = Some(Duration::from_secs(60));
        Self { lb: Arc::new(lb), settings, probes, probe_interval }
    }

    /// Picks a healthy backend not in `skip` (addresses that already failed in this request).
    pub fn select(&self, skip: &[std::net::SocketAddr]) -> Option<(std::net::SocketAddr, Arc<EndpointInfo>)> {
        let backend = self.lb.select_with(b"", 64, |b, healthy| {
            healthy && b.addr.as_inet().is_some_and(|a| !skip.contains(a))
        })?;
        let addr = *backend.addr.as_inet()?;
        let info = backend.ext.get::<Arc<EndpointInfo>>()?.clone();
        Some((addr, info))
    }

    /// Every backend with its probe state, for `/health`.
    pub fn report(&self) -> Vec<(String, bool, Option<ProbeResult>)> {
        let probes = self.probes.lock().map(|p| p.clone()).unwrap_or_default();
        self.lb
            .backends()
            .get_backend()
            .iter()
            .map(|b| {
                let addr = b.addr.to_string();
                let probe = probes.get(&addr).cloned();
                (addr, self.lb.backends().ready(b), probe)
            })
            .collect()
    }
}

thread_local! {
    static CONNECTOR: Arc<Connector> = Arc::new(Connector::new(None));
}

/// This thread's upstream connector. Worker runtimes are single-threaded and never steal work, so a
/// pooled connection stays on the thread (and the reactor) that owns its socket: reusing it never
/// needs a cross-thread wake.
pub fn connector() -> Arc<Connector> {
    CONNECTOR.with(Arc::clone)
}

/// Makes this thread's connector now, if it has none yet. Its two TLS contexts (HTTP/1 and HTTP/2)
/// each read the system's CA bundle, about 110 ms in all, which the thread's first use would
/// otherwise wait for: called where a thread starts (each worker before it accepts, the health
/// probes' thread before its first probe).
pub fn make_connector() {
    CONNECTOR.with(|_| ());
}

/// Trusted roots for a provider's TLS certificates, when not the system's.
pub type CaRoots = Arc<Box<[pingora::tls::x509::X509]>>;

/// Reads a PEM file of CA certificates.
pub fn load_ca(path: &str) -> std::result::Result<CaRoots, String> {
    let pem = std::fs::read(path).map_err(|e| format!("cannot read {path}: {e}"))?;
    let certs = pingora::tls::x509::X509::stack_from_pem(&pem).map_err(|e| format!("{path}: {e}"))?;
    if certs.is_empty() {
        return Err(format!("{path}: no certificate found"));
    }
    Ok(Arc::new(certs.into_boxed_slice()))
}

/// Builds the peer for one attempt: pooled connections, h2 over TLS when offered, certificates
/// verified (against `ca` when given, else the system roots).
pub fn peer(
    addr: std::net::SocketAddr,
    info: &EndpointInfo,
    settings: &PeerSettings,
    ca: Option<CaRoots>,
) -> HttpPeer {
    let mut peer = HttpPeer::new(addr, info.tls, info.host.clone());
    peer.options.ca = ca;
    peer.options.connection_timeout = Some(settings.connect_timeout);
    peer.options.total_connection_timeout = Some(settings.connect_timeout * 2);
    peer.options.read_timeout = Some(settings.idle_timeout);
    peer.options.write_timeout = Some(settings.idle_timeout);
    peer.options.idle_timeout = Some(Duration::from_secs(90));
    if info.tls {
        peer.options.alpn = ALPN::H2H1;
        peer.options.max_h2_streams = 100;
        peer.options.h2_ping_interval = Some(Duration::from_secs(30));
    }
    peer
}

/// Resolves each endpoint's host into backends, asynchronously (never `HttpPeer::new`'s blocking DNS).
struct DnsDiscovery {
    endpoints: Vec<Arc<EndpointInfo>>,
}

#[async_trait]
impl ServiceDiscovery for DnsDiscovery {
    async fn discover(&self) -> Result<(BTreeSet<Backend>, HashMap<u64, bool>)> {
        let mut backends = BTreeSet::new();
        for info in &self.endpoints {
            let addrs = match tokio::net::lookup_host((info.host.as_str(), info.port)).await {
                Ok(a) => a,
                Err(e) => {
                    log::warn!("cannot resolve {}: {e}", info.host);
                    continue;
                }
            };
            for addr in addrs {
                let mut ext = http::Extensions::new();
                ext.insert(info.clone());
                backends.insert(Backend { addr: SocketAddr::Inet(addr), weight: 1, ext });
            }
        }
        if backends.is_empty() && !self.endpoints.is_empty() {
            return Error::e_explain(ErrorType::InternalError, "no endpoint address resolved");
        }
        Ok((backends, HashMap::new()))
    }
}

/// The active health probe: `GET {base}{path}` with the provider's auth, 2xx means healthy.
struct Probe {
    path: String,
    headers: Vec<(String, String)>,
    key: Option<(&'static str, &'static str, sluice_core::secret::LiveSecret)>,
    timeout: Duration,
    log: Arc<Mutex<HashMap<String, ProbeResult>>>,
    ca: Option<CaRoots>,
}

impl Probe {
    async fn probe(
        &self,
        addr: std::net::SocketAddr,
        info: &EndpointInfo,
    ) -> std::result::Result<u16, String> {
        let settings = PeerSettings {
            connect_timeout: self.timeout,
            first_byte_timeout: self.timeout,
            idle_timeout: self.timeout,
        };
        let peer = peer(addr, info, &settings, self.ca.clone());
        let connector = connector();
        let (mut session, _) = connector.get_http_session(&peer).await.map_err(|e| e.to_string())?;
        let path = format!("{}{}", info.base_path, self.path);
        let mut req = RequestHeader::build("GET", path.as_bytes(), None).map_err(|e| e.to_string())?;
        req.insert_header("host", info.host_header()).map_err(|e| e.to_string())?;
        for (k, v) in &self.headers {
            req.insert_header(k.clone(), v.as_str()).map_err(|e| e.to_string())?;
        }
        if let Some((name, prefix, key)) = &self.key {
            req.insert_header(*name, format!("{prefix}{}", key.get())).map_err(|e| e.to_string())?;
        }
        session.write_request_header(Box::new(req)).await.map_err(|e| e.to_string())?;
        session.finish_request_body().await.map_err(|e| e.to_string())?;
        session.read_response_header().await.map_err(|e| e.to_string())?;
        let status = session.response_header().map_or(0, |h| h.status.as_u16());
        while let Some(_chunk) = session.read_response_body().await.map_err(|e| e.to_string())? {}
        connector.release_http_session(session, &peer, Some(Duration::from_secs(60))).await;
        Ok(status)
    }
}

#[async_trait]
impl HealthCheck for Probe {
    async fn check(&self, target: &Backend) -> Result<()> {
        let Some(addr) = target.addr.as_inet().copied() else {
            return Error::e_explain(ErrorType::InternalError, "not an inet backend");
        };
        let Some(info) = target.ext.get::<Arc<EndpointInfo>>() else {
            return Error::e_explain(ErrorType::InternalError, "backend without endpoint info");
        };
        let started = Instant::now();
        let outcome = tokio::time::timeout(self.timeout, self.probe(addr, info)).await;
        let (ok, detail) = match outcome {
            Ok(Ok(status)) if (200..300).contains(&status) => (true, format!("HTTP {status}")),
            Ok(Ok(status)) => (false, format!("HTTP {status}")),
            Ok(Err(e)) => (false, e),
            Err(_) => (false, format!("no answer within {} ms", self.timeout.as_millis())),
        };
        if let Ok(mut log) = self.log.lock() {
            log.insert(
                target.addr.to_string(),
                ProbeResult { ok, latency: started.elapsed(), at: SystemTime::now(), detail: detail.clone() },
            );
        }
        if ok { Ok(()) } else { Error::e_explain(ErrorType::HTTPStatus(503), detail) }
    }

    fn health_threshold(&self, success: bool) -> usize {
        // One failed probe takes an endpoint out; two good ones bring it back.
        if success { 2 } else { 1 }
    }

    async fn health_status_change(&self, target: &Backend, healthy: bool) {
        log::warn!("endpoint {} is now {}", target.addr, if healthy { "healthy" } else { "unhealthy" });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_base_urls() {
        let e = EndpointInfo::parse("https://api.openai.com/v1/").unwrap();
        assert_eq!(
            (e.tls, e.host.as_str(), e.port, e.base_path.as_str()),
            (true, "api.openai.com", 443, "/v1")
        );
        assert_eq!(e.authority(), "api.openai.com");
        let e = EndpointInfo::parse("http://127.0.0.1:8000").unwrap();
        assert_eq!((e.tls, e.port, e.base_path.as_str()), (false, 8000, ""));
        assert_eq!(e.authority(), "127.0.0.1:8000");
        let e = EndpointInfo::parse("http://[::1]:8000/v1").unwrap();
        assert_eq!((e.host.as_str(), e.port, e.authority()), ("::1", 8000, "[::1]:8000"));
        assert_eq!(EndpointInfo::parse("https://[2001:db8::1]").unwrap().authority(), "[2001:db8::1]");
        assert!(EndpointInfo::parse("ftp://x").is_err());
        assert!(EndpointInfo::parse("http://:80").is_err());
        assert!(EndpointInfo::parse("http://h:x/").is_err());
        assert!(EndpointInfo::parse("http://[::1/").is_err());
        assert!(EndpointInfo::parse("http://[::1]x/").is_err());
        assert!(EndpointInfo::parse("http://[]:80/").is_err());
        assert!(EndpointInfo::parse("http://h\u{7f}st/").is_err());
        assert!(EndpointInfo::parse("https://bücher.example/v1").is_err());
        assert_eq!(
            EndpointInfo::parse("https://xn--bcher-kva.example/v1").unwrap().authority(),
            "xn--bcher-kva.example"
        );
    }
}
