//! The Pingora server: thread-per-core listeners, the endpoint upkeep services, and shutdown.
//!
//! SIGTERM drains: the gateway reports `draining` on `/health`, lets in-flight requests and streams
//! finish for up to `server.shutdown_grace`, then closes its listeners and exits — without Pingora's
//! fixed five-minute wait. SIGINT exits at once.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use pingora::lb::LoadBalancer;
use pingora::lb::selection::RoundRobin;
use pingora::listeners::TcpSocketOptions;
use pingora::prelude::background_service;
use pingora::server::configuration::ServerConf;
use pingora::server::{
    ListenFds, RunArgs, RuntimeOpts, Server, ShutdownSignal, ShutdownSignalWatch, ShutdownWatch,
};
use pingora::services::background::BackgroundService;
use pingora::services::{ServiceReadyNotifier, ServiceWithDependents};
use tokio::signal::unix::{SignalKind, signal};

use crate::providers::Transport;
use crate::proxy::{Gateway, Worker};

/// Requests in flight and whether a shutdown is draining them.
#[derive(Debug, Default)]
pub struct Lifecycle {
    inflight: AtomicUsize,
    draining: AtomicBool,
    /// Signal handlers are installed: until then a SIGTERM or SIGINT could be lost, so the gateway
    /// reports itself as starting.
    started: AtomicBool,
}

impl Lifecycle {
    pub fn started(&self) -> bool {
        self.started.load(Ordering::Relaxed)
    }

    pub fn draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }

    /// Counts one request in flight until the guard drops.
    pub fn enter(self: &Arc<Self>) -> InflightGuard {
        self.inflight.fetch_add(1, Ordering::Relaxed);
        InflightGuard(self.clone())
    }
}

pub struct InflightGuard(Arc<Lifecycle>);

impl Drop for InflightGuard {
    fn drop(&mut self) {
        self.0.inflight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Lowers the calling thread's scheduling priority (niceness +10). Background threads — the
/// ledger's writer above all, whose batches (serializing, hashing the audit chain, talking to
/// PostgreSQL) come in bursts — then give way to the request workers when they share cores, and a
/// burst no longer shows up in the requests' tail latency. The work itself is not delayed when the
/// cores have room.
#[expect(unsafe_code, reason = "setpriority(2) on the calling thread: plain integers, no memory")]
pub fn yield_to_requests() {
    // SAFETY: gettid and setpriority take and return integers only; they touch no memory of ours.
    let done = unsafe {
        let tid = libc::syscall(libc::SYS_gettid) as libc::id_t;
        libc::setpriority(libc::PRIO_PROCESS, tid, 10)
    };
    if done != 0 {
        log::debug!("cannot lower a background thread's priority: {}", std::io::Error::last_os_error());
    }
}

/// Runs the gateway until a signal stops it. `listen` overrides `server.listen`.
pub fn run(mut gateway: Gateway, listen: Option<String>) -> Result<(), String> {
    let settings = gateway.settings.clone();
    let listen = listen.unwrap_or_else(|| settings.listen.clone());
    let threads = if settings.threads == 0 {
        std::thread::available_parallelism().map_or(1, |n| n.get())
    } else {
        settings.threads
    };
    let pools = pools(&gateway);
    // Resolve every endpoint before the first request arrives.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start a runtime: {e}"))?;
    rt.block_on(async {
        for lb in &pools {
            if let Err(e) = lb.update().await {
                log::warn!("endpoint discovery failed at start (will retry): {e}");
            }
        }
    });
    drop(rt);

    // The ledger's writer starts before the listener: no record is taken before it can be kept.
    let ledger = gateway.ledger.start()?;
    let gateway_ledger = gateway.ledger.clone();
    let gateway_reader = gateway.reader.clone();
    if let Some(webhook) = &gateway.webhook {
        webhook.start()?;
    }
    if let Some(keys) = &gateway.managed {
        keys.start()?;
    }
    if let Some(keys) = &gateway.memory_keys {
        keys.start()?;
    }
    if let Some(vault) = &gateway.vault {
        vault.start()?;
    }
    if let (Some((dir, delay)), Some(url)) = (&settings.audit_export, gateway.ledger.postgres_url()) {
        crate::audit_export::start_sealer(url.to_owned(), dir.clone(), *delay, gateway.ledger.clone())?;
    }
    let directory = gateway.directory.clone();
    let reload =
        Arc::new(crate::reload::Reload { vault: gateway.vault.clone(), certs: gateway.certs.clone() });
    let certs = gateway.certs.clone();
    let lifecycle = Arc::new(Lifecycle::default());
    gateway.lifecycle = lifecycle.clone();
    let conf = ServerConf {
        threads,
        work_stealing: false,
        grace_period_seconds: Some(0),
        graceful_shutdown_timeout_seconds: Some(1),
        upstream_keepalive_pool_size: 512,
        // Pingora's own timeouts (connect, upstream reads and writes, the pool's idle timeout) of a
        // second or more on Tokio's timers rather than its "fast" timers: those need a thread that
        // wakes 100 times a second for the life of the process (2.3 ms of CPU a second here, idle
        // or not), where Tokio's cost nothing while nothing is due (see `keep_a_timer_ahead`).
        fast_timeout_to_tokio_threshold_seconds: Some(0),
        ..Default::default()
    };
    let mut server = Server::new_with_opt_and_conf(None, conf);
    server.bootstrap();
    // One Pingora service per worker thread, each a single-threaded runtime with listening sockets
    // of its own (SO_REUSEPORT: the kernel spreads connections over them). A connection then lives
    // on the thread that accepted it, and so do the upstream connections it takes from the pool.
    // One service with N threads would hand each accepted connection, and each idle upstream
    // connection's watcher, to a random thread: the socket stays registered with the accepting
    // thread's reactor, so every readiness event wakes two threads, and a pooled connection
    // watched on the other thread is often still locked when it is wanted again (Pingora then
    // logs "failed to acquire reusable stream" and opens a new one).
    let listeners = Listeners::new(&listen, settings.tls.as_ref(), threads)?;
    let gateway = Arc::new(gateway);
    let mut workers = Vec::with_capacity(threads);
    for i in 0..threads {
        let mut proxy =
            pingora::services::listening::Service::new(format!("sluice-{i}"), Worker::new(gateway.clone()));
        proxy.threads = Some(1);
        proxy.add_tcp_with_settings(&worker_address(&listen, i), listeners.options());
        if let (Some(tls), Some(certs)) = (&settings.tls, &certs) {
            let addr = worker_address(&tls.listen, i);
            proxy.add_tls_with_settings(&addr, Some(listeners.options()), certs.settings(tls)?);
        }
        workers.push(proxy);
    }
    if let (Some(tls), Some(certs)) = (&settings.tls, &certs) {
        let interval = sluice_core::duration::parse(&tls.reload_interval)
            .map_err(|e| format!("server.tls.reload_interval: {e}"))?;
        certs.watch(interval)?;
    }
    let admin = match (settings.admin.as_ref(), directory) {
        (Some((listen, token)), Some(directory)) => Some((
            listen.clone(),
            crate::admin::AdminApi::new(
                token,
                gateway_ledger.clone(),
                gateway_reader.clone(),
                directory,
                reload.clone(),
            ),
        )),
        _ => None,
    };
    for proxy in workers {
        server.add_service(WorkerService { inner: proxy, gateway: gateway.clone() });
    }
    if let Some((admin_listen, api)) = admin {
        let mut svc = pingora::services::listening::Service::new("admin".into(), api);
        svc.add_tcp(&admin_listen);
        svc.threads = Some(1);
        server.add_service(svc);
        log::info!("admin API listening on {admin_listen}");
    }
    for (i, lb) in pools.into_iter().enumerate() {
        let mut svc = background_service(&format!("endpoints-{i}"), Upkeep(lb));
        svc.threads = Some(1);
        server.add_service(svc);
    }
    log::info!("sluice listening on {listen} with {threads} threads");
    crate::logging::start_access_flusher();
    server.run(RunArgs {
        shutdown_signal: Box::new(Drain { lifecycle, grace: settings.shutdown_grace, reload }),
    });
    ledger.finish();
    crate::logging::flush_access();
    Ok(())
}

/// How the workers bind the gateway's addresses. The addresses are checked free first: the workers
/// bind them with SO_REUSEPORT, and a port another process holds must fail the start with a clear
/// error, not be shared with that process.
struct Listeners {
    reuse_port: bool,
}

impl Listeners {
    fn new(listen: &str, tls: Option<&crate::config::file::TlsFile>, threads: usize) -> Result<Self, String> {
        let tls = tls.map(|t| (t.listen.as_str(), "server.tls.listen"));
        for (addr, what) in std::iter::once((listen, "server.listen")).chain(tls) {
            std::net::TcpListener::bind(addr).map_err(|e| format!("{what}: cannot listen on {addr}: {e}"))?;
        }
        Ok(Self { reuse_port: threads > 1 })
    }

    fn options(&self) -> TcpSocketOptions {
        let mut options = TcpSocketOptions::default();
        options.so_reuseport = self.reuse_port.then_some(true);
        options
    }
}

/// `addr` as worker `worker` spells it. Pingora keeps the process's listening sockets in one table
/// keyed by the address *as written*, and a second service listening on an address already in the
/// table is handed the same file descriptor: two owners, one socket, closed twice at shutdown (a
/// debug build aborts on it). Each worker therefore writes the port with its own number of leading
/// zeros — `h:8080`, `h:08080`, … — the same socket address, its own key, its own SO_REUSEPORT
/// socket.
pub fn worker_address(addr: &str, worker: usize) -> String {
    match addr.rsplit_once(':') {
        Some((host, port)) => format!("{host}:{}{port}", "0".repeat(worker)),
        None => addr.to_owned(),
    }
}

fn pools(gateway: &Gateway) -> Vec<Arc<LoadBalancer<RoundRobin>>> {
    let mut seen: Vec<Arc<LoadBalancer<RoundRobin>>> = Vec::new();
    for t in gateway.router.targets() {
        if let Transport::Http(up) = &t.provider.transport
            && !seen.iter().any(|s| Arc::ptr_eq(s, &up.pool.lb))
        {
            seen.push(up.pool.lb.clone());
        }
    }
    seen
}

/// A worker's proxy service, which first makes the worker thread's upstream connector and connects
/// the thread to Redis (when state lives there), so that no request waits for either.
struct WorkerService<S> {
    inner: S,
    gateway: Arc<Gateway>,
}

#[async_trait]
impl<S: ServiceWithDependents> ServiceWithDependents for WorkerService<S> {
    async fn start_service(
        &mut self,
        fds: Option<ListenFds>,
        shutdown: ShutdownWatch,
        listeners_per_fd: usize,
        ready_notifier: ServiceReadyNotifier,
    ) {
        // This runs on the worker's own runtime, before its listeners accept: the connector and
        // the Redis connection are the worker thread's. Without the connector made here, the
        // thread's first request waited for it, with every request queued behind it.
        crate::routing::endpoints::make_connector();
        if let Some(redis) = self.gateway.redis_warmup.clone() {
            tokio::spawn(async move { redis.connect().await });
        }
        tokio::spawn(keep_a_timer_ahead());
        self.inner.start_service(fds, shutdown, listeners_per_fd, ready_notifier).await
    }

    fn name(&self) -> &str {
        self.inner.name()
    }

    fn threads(&self) -> Option<usize> {
        self.inner.threads()
    }

    fn runtime_opts_override(&self, global: &RuntimeOpts) -> Option<RuntimeOpts> {
        self.inner.runtime_opts_override(global)
    }

    fn listen_addresses(&self) -> Option<Vec<String>> {
        self.inner.listen_addresses()
    }
}

/// How far ahead of now each worker keeps a timer pending: no further than the shortest timeout a
/// request arms on Tokio's timers (a second: Pingora's shorter ones stay on its fast timers, see
/// `run`).
const TIMER_AHEAD: Duration = Duration::from_secs(1);

/// Keeps a timer pending on the worker's runtime, due at most [`TIMER_AHEAD`] from now. Tokio's
/// timer driver wakes its thread (a write to the runtime's eventfd: one more system call and one
/// more turn of the event loop) whenever a new timer is due before every timer it already waits
/// for. With this one always nearer, the timers of a request — first byte, idle, Pingora's
/// connect, read, write and pool timeouts, a second or longer — are armed without a system call;
/// this timer itself fires once a second.
async fn keep_a_timer_ahead() {
    loop {
        tokio::time::sleep(TIMER_AHEAD).await;
    }
}

/// Runs a pool's discovery and health checks (a `LoadBalancer` is itself a background service).
struct Upkeep(Arc<LoadBalancer<RoundRobin>>);

#[async_trait]
impl BackgroundService for Upkeep {
    async fn start(&self, shutdown: ShutdownWatch) {
        // The probes run on this thread; /health reports the first probe's latency too.
        crate::routing::endpoints::make_connector();
        self.0.start(shutdown).await;
    }
}

/// SIGINT: stop now, without draining. Pingora's own fast shutdown never tells its listeners to
/// stop, and a listener whose runtime is being torn down can spin on failing `accept()` calls and
/// keep the process alive (seen here); its graceful path stops the listeners first. With the grace
/// period at 0, that is immediate: requests still in flight are dropped when the runtimes stop.
fn stop_now() -> ShutdownSignal {
    log::info!("SIGINT: stopping now");
    ShutdownSignal::GracefulTerminate
}

/// SIGTERM: drain, then a graceful stop; SIGINT: stop now.
struct Drain {
    lifecycle: Arc<Lifecycle>,
    grace: Duration,
    /// SIGHUP reloads what can be reloaded (and never stops the gateway, as SIGHUP's default would).
    reload: Arc<crate::reload::Reload>,
}

#[async_trait]
impl ShutdownSignalWatch for Drain {
    async fn recv(&self) -> ShutdownSignal {
        let (Ok(mut term), Ok(mut int), Ok(mut hup)) =
            (signal(SignalKind::terminate()), signal(SignalKind::interrupt()), signal(SignalKind::hangup()))
        else {
            log::error!("cannot install signal handlers; stop with SIGKILL");
            return std::future::pending().await;
        };
        self.lifecycle.started.store(true, Ordering::Relaxed);
        loop {
            tokio::select! {
                _ = int.recv() => return stop_now(),
                _ = term.recv() => break,
                _ = hup.recv() => {
                    log::info!("SIGHUP: reloading secrets and the TLS certificate");
                    self.reload.run().await;
                }
            }
        }
        self.lifecycle.draining.store(true, Ordering::Relaxed);
        let deadline = Instant::now() + self.grace;
        log::info!("SIGTERM: draining in-flight requests for up to {} s", self.grace.as_secs_f64());
        loop {
            let inflight = self.lifecycle.inflight.load(Ordering::Relaxed);
            if inflight == 0 || Instant::now() >= deadline {
                log::info!("shutting down with {inflight} requests in flight");
                return ShutdownSignal::GracefulTerminate;
            }
            tokio::select! {
                _ = int.recv() => return stop_now(),
                _ = tokio::time::sleep(Duration::from_millis(50)) => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::worker_address;

    #[test]
    fn each_worker_spells_the_address_its_own_way() {
        let spelled: Vec<String> = (0..3).map(|i| worker_address("0.0.0.0:8080", i)).collect();
        assert_eq!(spelled, ["0.0.0.0:8080", "0.0.0.0:08080", "0.0.0.0:008080"]);
        assert_eq!(worker_address("[::1]:443", 1), "[::1]:0443");
        for a in &spelled {
            let resolved: Vec<std::net::SocketAddr> = std::net::ToSocketAddrs::to_socket_addrs(a.as_str())
                .map(Iterator::collect)
                .unwrap_or_default();
            assert_eq!(resolved, vec![std::net::SocketAddr::from(([0, 0, 0, 0], 8080))]);
        }
    }
}
