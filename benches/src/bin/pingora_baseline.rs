//! The floor under Sluice in the load benchmark: Pingora's own proxy path with nothing on it — no
//! body read, no parsing, no plugins, no metrics — forwarding to one upstream over pooled
//! connections, with the same server settings Sluice uses (thread per core, no work stealing, one
//! service and listening socket per thread).
//!
//! `pingora-baseline LISTEN UPSTREAM THREADS` (started by the `load` benchmark).

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "a benchmark harness stops loudly")]

use async_trait::async_trait;
use pingora::listeners::TcpSocketOptions;
use pingora::prelude::HttpPeer;
use pingora::proxy::{ProxyHttp, Session, http_proxy_service_with_name};
use pingora::server::Server;
use pingora::server::configuration::ServerConf;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

struct Baseline {
    upstream: std::net::SocketAddr,
}

#[async_trait]
impl ProxyHttp for Baseline {
    type CTX = ();

    fn new_ctx(&self) {}

    async fn upstream_peer(&self, _session: &mut Session, _ctx: &mut ()) -> pingora::Result<Box<HttpPeer>> {
        Ok(Box::new(HttpPeer::new(self.upstream, false, String::new())))
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (listen, upstream, threads) =
        (&args[0], args[1].parse().expect("UPSTREAM addr"), args[2].parse().expect("THREADS"));
    let conf = ServerConf {
        threads,
        work_stealing: false,
        grace_period_seconds: Some(0),
        graceful_shutdown_timeout_seconds: Some(1),
        ..Default::default()
    };
    let mut server = Server::new_with_opt_and_conf(None, conf);
    server.bootstrap();
    // As Sluice does: one single-threaded service per worker thread, each with its own listening
    // socket (SO_REUSEPORT), so a connection stays on the thread that accepted it.
    for i in 0..threads {
        let mut proxy = http_proxy_service_with_name(
            &server.configuration,
            Baseline { upstream },
            &format!("baseline-{i}"),
        );
        proxy.threads = Some(1);
        let mut options = TcpSocketOptions::default();
        options.so_reuseport = (threads > 1).then_some(true);
        proxy.add_tcp_with_settings(&sluice::server::worker_address(listen, i), options);
        server.add_service(proxy);
    }
    server.run_forever();
}
