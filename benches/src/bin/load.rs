//! The end-to-end load benchmark: the same fixed request rate sent straight to a fast mock upstream,
//! through Sluice, through plain Pingora and through nginx's plain `proxy_pass`, the paths taking
//! turns in 2-second slices (so a shared machine's changing load falls on all alike); prints latency
//! percentiles, the gateway's overhead, CPU time per request (and the kernel's share of it), and
//! first the slowest of a freshly started proxy's first answers.
//!
//! ```text
//! cargo run --release -p sluice-benches --bin load -- [--rate 1000] [--seconds 10] [--stream]
//!     [--threads N] [--limits] [--governance] [--no-leases] [--lease-ttl D] [--callers N]
//! ```
//! `--limits` turns the limits plugin on over Redis; `--governance` turns on everything #4 adds:
//! a managed key (PostgreSQL, issued through the admin API), limits and budgets over Redis, and
//! the cost ledger in PostgreSQL (a database of its own, dropped at the end). `--no-leases` makes
//! every request reserve in Redis (`limits.lease_percent = 0`): the load is one caller, whose
//! requests a lease otherwise mostly admits without a round trip; `--lease-ttl 5s` sets
//! `limits.lease_ttl`. `--callers N` (with `--governance`) spreads the requests over N managed
//! keys of N apps, each request the next key in turn (each caller its own limits, lease and key
//! budget).
//! (`scripts/bench-load` installs nginx when missing and runs exactly that.) Exits 1 when Sluice's
//! p99 overhead reaches 1 ms or its CPU per request exceeds twice nginx's.
//!
//! `--instructions N` measures instead of timing: Sluice, plain Pingora and nginx each run alone
//! (one worker thread or process) under valgrind's callgrind, get 200 warm-up requests and then `N`
//! sequential requests on one connection, and the user-space instructions each spent on those `N`
//! are printed per request. Unlike CPU time on a shared machine, the count repeats from run to run,
//! so it shows what a change to the request path did (valgrind is needed; `scripts/bench-load`
//! installs it). `LOAD_CALLGRIND_DIR=DIR` keeps the counts as `DIR/<name>.out`.
//! `LOAD_SLUICE_EXTRA=TOML` is appended to Sluice's configuration (e.g. `[records]` settings).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "a benchmark harness stops loudly"
)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use hyper::Response;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

const KEY: &str = "sk-sluice-load-key";
/// Answers timed right after start, each on a new connection.
const FIRST_ANSWERS: usize = 8;

/// Seconds each path is driven for before the next takes its turn.
const SLICE: u64 = 2;

struct Args {
    rate: u64,
    seconds: u64,
    stream: bool,
    /// Sluice's worker threads (0 = one per core, its default).
    threads: usize,
    /// Turn the limits plugin on (org, team and app, requests and tokens), counters in Redis on
    /// 127.0.0.1:6379; limits high enough that nothing is refused.
    limits: bool,
    /// `limits.lease_percent = 0`.
    no_leases: bool,
    /// `limits.lease_ttl`, when given.
    lease_ttl: Option<String>,
    /// Managed keys (one app each) the requests take turns with, with `--governance`.
    callers: usize,
    /// Managed keys, limits, budgets and the ledger: Redis and PostgreSQL on their usual ports.
    governance: bool,
    /// Count instructions per request under callgrind over this many requests instead of timing.
    instructions: Option<u64>,
}

/// Where callgrind writes its counts, in `--instructions` mode.
static CALLGRIND: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();

/// A command for `program`; under callgrind (counts in `<dir>/<name>.<pid>.out.1` once dumped) in
/// `--instructions` mode.
fn launch(program: &Path, name: &str) -> Command {
    match CALLGRIND.get() {
        None => Command::new(program),
        Some(dir) => {
            let mut c = Command::new("valgrind");
            c.arg("--tool=callgrind")
                .arg(format!("--callgrind-out-file={}/{name}.%p.out", dir.display()))
                .arg(program);
            c
        }
    }
}

/// The managed keys issued for `--governance` (else requests carry the config's `KEY`).
static SLUICE_KEYS: std::sync::OnceLock<Vec<String>> = std::sync::OnceLock::new();

/// The key of request `i`: the config's, or the managed keys in turn.
fn sluice_key(i: u64) -> &'static str {
    match SLUICE_KEYS.get() {
        Some(keys) if !keys.is_empty() => &keys[(i % keys.len() as u64) as usize],
        _ => KEY,
    }
}

fn args() -> Args {
    let mut a = Args {
        rate: 1000,
        seconds: 10,
        stream: false,
        threads: 0,
        limits: false,
        no_leases: false,
        lease_ttl: None,
        callers: 1,
        governance: false,
        instructions: None,
    };
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let mut it = argv.iter();
    while let Some(flag) = it.next() {
        match flag.as_str() {
            "--rate" => a.rate = it.next().and_then(|v| v.parse().ok()).expect("--rate N"),
            "--seconds" => a.seconds = it.next().and_then(|v| v.parse().ok()).expect("--seconds N"),
            "--stream" => a.stream = true,
            "--limits" => a.limits = true,
            "--no-leases" => a.no_leases = true,
            "--lease-ttl" => a.lease_ttl = Some(it.next().expect("--lease-ttl 5s").clone()),
            "--callers" => a.callers = it.next().and_then(|v| v.parse().ok()).expect("--callers N"),
            "--governance" => {
                a.limits = true;
                a.governance = true;
            }
            "--threads" => a.threads = it.next().and_then(|v| v.parse().ok()).expect("--threads N"),
            "--instructions" => {
                a.instructions = Some(it.next().and_then(|v| v.parse().ok()).expect("--instructions N"));
                a.threads = 1;
            }
            other => panic!("unknown argument {other}"),
        }
    }
    a
}

/// A fast OpenAI-shaped upstream: a fixed answer, at once (JSON or a short SSE stream).
async fn mock_upstream() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let json = Bytes::from_static(br#"{"id":"chatcmpl-load","object":"chat.completion","created":1,"model":"m","choices":[{"index":0,"message":{"role":"assistant","content":"Hello! How can I help you today?"},"finish_reason":"stop"}],"usage":{"prompt_tokens":12,"completion_tokens":9,"total_tokens":21}}"#);
    let sse = Bytes::from(sluice_benches::sse_stream(20));
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            let (json, sse) = (json.clone(), sse.clone());
            tokio::spawn(async move {
                let service =
                    hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                        let (json, sse) = (json.clone(), sse.clone());
                        async move {
                            use http_body_util::BodyExt;
                            let body =
                                req.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
                            let streaming = body.windows(13).any(|w| w == b"\"stream\":true");
                            let (ct, payload) = if streaming {
                                ("text/event-stream", sse)
                            } else {
                                ("application/json", json)
                            };
                            Ok::<_, std::convert::Infallible>(
                                Response::builder()
                                    .header("content-type", ct)
                                    .body(Full::new(payload))
                                    .unwrap(),
                            )
                        }
                    });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    addr
}

/// The load run's own database (`--governance`).
fn load_db() -> String {
    format!("sluice_load_{}", std::process::id())
}

fn psql(sql: &str) {
    let ok = Command::new("psql")
        .args(["-h", "127.0.0.1", "-U", "postgres", "-q", "-c", sql])
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        ok,
        "psql failed: {sql} (PostgreSQL on 127.0.0.1:5432, user postgres, is needed for --governance)"
    );
}

/// Creates org `o`, team `t`, `callers` apps (`a`, `a1`, `a2`, …) and a managed key for each
/// through the admin API; returns the keys.
async fn issue_keys(client: &reqwest::Client, admin: u16, callers: usize) -> Vec<String> {
    admin_post(client, admin, "orgs", serde_json::json!({"id": "o"})).await;
    admin_post(client, admin, "teams", serde_json::json!({"id": "t", "org": "o"})).await;
    let mut keys = Vec::with_capacity(callers);
    for i in 0..callers.max(1) {
        let app = if i == 0 { "a".to_owned() } else { format!("a{i}") };
        admin_post(client, admin, "apps", serde_json::json!({"id": app, "team": "t"})).await;
        let v = admin_post(client, admin, "keys", serde_json::json!({"app": app, "name": "load"})).await;
        keys.push(v["key"].as_str().expect("a key").to_owned());
    }
    keys
}

/// POSTs `body` to the admin API's `path`; returns the answer's JSON.
async fn admin_post(
    client: &reqwest::Client,
    admin: u16,
    path: &str,
    body: serde_json::Value,
) -> serde_json::Value {
    let r = client
        .post(format!("http://127.0.0.1:{admin}/admin/{path}"))
        .bearer_auth("load-admin-token")
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = r.status();
    let text = r.text().await.unwrap_or_default();
    assert!(status.is_success(), "admin {path}: {text}");
    serde_json::from_str(&text).unwrap_or(serde_json::Value::Null)
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

/// Where cargo puts release binaries (`CARGO_TARGET_DIR` when set, as cargo itself reads it).
fn release_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map_or_else(|| workspace().join("target"), PathBuf::from)
        .join("release")
}

fn gateway_binary() -> PathBuf {
    let bin = release_dir().join("sluice");
    let status = Command::new("cargo")
        .args(["build", "--release", "--locked", "-p", "sluice", "--bin", "sluice"])
        .current_dir(workspace())
        .status()
        .expect("cargo build");
    assert!(status.success(), "building the gateway failed");
    bin
}

struct Proc(Child, Vec<u32>);

impl Drop for Proc {
    fn drop(&mut self) {
        // SIGTERM lets nginx's master take its workers down with it.
        let _ = Command::new("kill").arg("-TERM").arg(self.0.id().to_string()).status();
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_sluice(
    dir: &Path,
    upstream: SocketAddr,
    port: u16,
    threads: usize,
    args: &Args,
    admin: u16,
) -> Proc {
    let mut limits = if args.limits {
        "[state]\nredis = \"redis://127.0.0.1:6379\"\nkey_prefix = \"sluice-load:\"\n\
         [limits]\norg = { rpm = 10000000, tpm = 10000000000 }\nteam = { rpm = 10000000, tpm = 10000000000 }\n\
         app = { rpm = 10000000, tpm = 10000000000 }\n"
            .to_owned()
            + if args.no_leases { "lease_percent = 0\n" } else { "" }
            + &args.lease_ttl.as_ref().map(|t| format!("lease_ttl = \"{t}\"\n")).unwrap_or_default()
    } else {
        String::new()
    };
    if args.governance {
        std::fs::write(dir.join("admin.token"), "load-admin-token").unwrap();
        limits = limits.replace(
            "[state]\n",
            &format!("[state]\npostgres = \"postgres://postgres@127.0.0.1:5432/{}\"\n", load_db()),
        );
        limits.push_str(&format!(
            "[budgets]\nteam = {{ daily = \"1000000.00\", monthly = \"1000000.00\" }}\nkey = {{ daily = \"1000000.00\" }}\n\
             [records]\nspool_dir = \"{}/spool\"\n[pricing.models.m]\ninput = \"0.15\"\noutput = \"0.60\"\n\
             [admin]\nlisten = \"127.0.0.1:{admin}\"\ntoken = \"file:{}/admin.token\"\n",
            dir.display(),
            dir.display()
        ));
    } else {
        limits.push_str("[pricing.default]\ninput = \"0.15\"\noutput = \"0.60\"\n");
    }
    let config = format!(
        "[server]\nthreads = {threads}\n\
         [providers.up]\nkind = \"openai_compatible\"\nbase_url = \"http://{upstream}/v1\"\nhealth_check = {{ enabled = false }}\n\
         [models.m]\ntargets = [{{ provider = \"up\", model = \"m\" }}]\n\
         [[keys.key]]\nid = \"load\"\ndemo_key = \"{KEY}\"\norg = \"o\"\nteam = \"t\"\napp = \"a\"\n{limits}"
    );
    // `LOAD_SLUICE_EXTRA=TOML` is appended to Sluice's configuration, for a comparison of settings.
    let config = config + &std::env::var("LOAD_SLUICE_EXTRA").unwrap_or_default();
    let path = dir.join("sluice.toml");
    std::fs::write(&path, config).unwrap();
    let child = launch(&gateway_binary(), "sluice")
        .arg("--config")
        .arg(&path)
        .arg("--listen")
        .arg(format!("127.0.0.1:{port}"))
        .env("SLUICE_LOG", "error")
        // `LOAD_ACCESS_LOG=FILE` keeps Sluice's access log (one JSON line per request) for a look at
        // where slow requests fall.
        .stdout(match std::env::var_os("LOAD_ACCESS_LOG") {
            Some(path) => Stdio::from(std::fs::File::create(path).expect("LOAD_ACCESS_LOG")),
            None => Stdio::null(),
        })
        .stderr(Stdio::null())
        .spawn()
        .expect("start sluice");
    let pid = child.id();
    Proc(child, vec![pid])
}

/// Plain Pingora with nothing on it (`pingora-baseline`), built next to this binary.
fn start_pingora(upstream: SocketAddr, port: u16, threads: usize) -> Option<Proc> {
    let status = Command::new("cargo")
        .args(["build", "--release", "--locked", "-p", "sluice-benches", "--bin", "pingora-baseline"])
        .current_dir(workspace())
        .status()
        .ok()?;
    if !status.success() {
        return None;
    }
    let threads =
        if threads == 0 { std::thread::available_parallelism().map_or(1, |n| n.get()) } else { threads };
    let child = launch(&release_dir().join("pingora-baseline"), "pingora")
        .arg(format!("127.0.0.1:{port}"))
        .arg(upstream.to_string())
        .arg(threads.to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .ok()?;
    let pid = child.id();
    Some(Proc(child, vec![pid]))
}

fn start_nginx(dir: &Path, upstream: SocketAddr, port: u16) -> Option<Proc> {
    let nginx = ["/usr/sbin/nginx", "/usr/local/sbin/nginx"].into_iter().find(|p| Path::new(p).exists())?;
    let d = dir.display();
    // One process, the worker itself, when counting instructions (callgrind follows one process).
    let processes = if CALLGRIND.get().is_some() {
        "worker_processes 1;\nmaster_process off;"
    } else {
        "worker_processes 2;"
    };
    let conf = format!(
        "{processes}\npid {d}/nginx.pid;\nerror_log {d}/nginx-error.log;\nevents {{ worker_connections 4096; }}\n\
         http {{\n  access_log off;\n  client_body_temp_path {d}/body;\n  proxy_temp_path {d}/proxy;\n\
         fastcgi_temp_path {d}/fcgi;\n  uwsgi_temp_path {d}/uwsgi;\n  scgi_temp_path {d}/scgi;\n\
         upstream up {{ server {upstream}; keepalive 64; }}\n\
         server {{ listen 127.0.0.1:{port}; location / {{ proxy_pass http://up; proxy_http_version 1.1;\n\
         proxy_set_header Connection \"\"; proxy_buffering off; }} }}\n}}\n"
    );
    let path = dir.join("nginx.conf");
    std::fs::write(&path, conf).unwrap();
    let child = launch(Path::new(nginx), "nginx")
        .args(["-p", &d.to_string(), "-c"])
        .arg(&path)
        .args(["-g", "daemon off;"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .ok()?;
    let pid = child.id();
    // Its CPU is its workers': wait until both are there (a loaded machine may take a while).
    let mut pids = vec![pid];
    for _ in 0..100 {
        std::thread::sleep(Duration::from_millis(50));
        let workers = children(pid);
        if workers.len() >= 2 {
            pids.extend(workers);
            break;
        }
    }
    Some(Proc(child, pids))
}

fn children(parent: u32) -> Vec<u32> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else { continue };
        if let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) {
            let fields: Vec<&str> = stat.rsplit(')').next().unwrap_or("").split_whitespace().collect();
            if fields.get(1).and_then(|p| p.parse::<u32>().ok()) == Some(parent) {
                out.push(pid);
            }
        }
    }
    out
}

/// CPU time of the processes in clock ticks: (user, system).
fn cpu_ticks(pids: &[u32]) -> (u64, u64) {
    pids.iter()
        .filter_map(|pid| std::fs::read_to_string(format!("/proc/{pid}/stat")).ok())
        .map(|stat| {
            let f: Vec<&str> = stat.rsplit(')').next().unwrap_or("").split_whitespace().collect();
            let tick = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
            (tick(11), tick(12))
        })
        .fold((0, 0), |(u, s), (du, ds)| (u + du, s + ds))
}

/// Context switches (voluntary + involuntary) of every thread of the processes.
fn context_switches(pids: &[u32]) -> u64 {
    let mut total = 0;
    for pid in pids {
        let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else { continue };
        for task in tasks.flatten() {
            let Ok(status) = std::fs::read_to_string(task.path().join("status")) else { continue };
            for line in status.lines() {
                if line.starts_with("voluntary_ctxt_switches")
                    || line.starts_with("nonvoluntary_ctxt_switches")
                {
                    total += line.split_whitespace().nth(1).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
                }
            }
        }
    }
    total
}

fn clock_ticks_per_second() -> u64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100)
}

#[derive(Default)]
struct Run {
    latencies: Vec<Duration>,
    overheads_us: Vec<u64>,
    errors: usize,
    /// Requests sent, and the processes' CPU ticks (user + system, and system alone) and context
    /// switches over them (when measured).
    requests: u64,
    ticks: Option<u64>,
    system_ticks: Option<u64>,
    switches: Option<u64>,
}

impl Run {
    /// Adds another slice of the same target.
    fn absorb(&mut self, other: Run) {
        self.latencies.extend(other.latencies);
        self.overheads_us.extend(other.overheads_us);
        self.errors += other.errors;
        self.requests += other.requests;
        let add = |a: Option<u64>, b: Option<u64>| match (a, b) {
            (Some(a), Some(b)) => Some(a + b),
            (a, b) => a.or(b),
        };
        self.ticks = add(self.ticks, other.ticks);
        self.system_ticks = add(self.system_ticks, other.system_ticks);
        self.switches = add(self.switches, other.switches);
    }

    /// `None` when not measured, or when no CPU time showed at all (the processes were not found).
    fn cpu_us_per_request(&self) -> Option<f64> {
        let ticks = self.ticks.filter(|t| *t > 0)?;
        Some(ticks as f64 * 1e6 / clock_ticks_per_second() as f64 / self.requests.max(1) as f64)
    }

    /// The part of the CPU time spent in the kernel, in percent.
    fn system_percent(&self) -> Option<f64> {
        let ticks = self.ticks.filter(|t| *t > 0)?;
        Some(self.system_ticks? as f64 * 100.0 / ticks as f64)
    }

    fn switches_per_request(&self) -> Option<f64> {
        self.cpu_us_per_request()?;
        Some(self.switches? as f64 / self.requests.max(1) as f64)
    }
}

async fn wait_up(client: &reqwest::Client, url: &str) {
    // Under callgrind a start takes seconds.
    for _ in 0..1200 {
        if client.get(url).send().await.is_ok() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{url} did not come up");
}

/// Sends `rate` requests per second for `seconds`, open-loop: each request leaves at its scheduled
/// time whatever the previous ones do, and its latency counts from that time.
async fn drive(
    client: &reqwest::Client,
    url: &str,
    body: Bytes,
    rate: u64,
    seconds: u64,
    pids: &[u32],
) -> Run {
    let total = rate * seconds;
    let start = Instant::now() + Duration::from_millis(50);
    let ticks_before = cpu_ticks(pids);
    let switches_before = context_switches(pids);
    let mut tasks = Vec::with_capacity(total as usize);
    for i in 0..total {
        let at = start + Duration::from_nanos(i * 1_000_000_000 / rate);
        tokio::time::sleep_until(at.into()).await;
        let (client, url, body) = (client.clone(), url.to_owned(), body.clone());
        tasks.push(tokio::spawn(async move {
            // Latency counts from the send: the timer that released this task has 1 ms granularity.
            let sent = Instant::now();
            let r = client
                .post(url)
                .bearer_auth(sluice_key(i))
                .header("content-type", "application/json")
                .body(body)
                .send()
                .await;
            let ok = match r {
                Ok(r) if r.status().is_success() => {
                    let overhead = r
                        .headers()
                        .get("x-sluice-overhead-us")
                        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
                    r.bytes().await.ok().map(|_| overhead)
                }
                _ => None,
            };
            (sent.elapsed(), ok)
        }));
    }
    let mut run = Run { requests: total, ..Run::default() };
    for t in tasks {
        let (latency, ok) = t.await.unwrap();
        match ok {
            Some(overhead) => {
                run.latencies.push(latency);
                run.overheads_us.extend(overhead);
            }
            None => run.errors += 1,
        }
    }
    if !pids.is_empty() {
        let (user, system) = cpu_ticks(pids);
        run.ticks = Some(user + system - ticks_before.0 - ticks_before.1);
        run.system_ticks = Some(system - ticks_before.1);
        run.switches = Some(context_switches(pids) - switches_before);
    }
    run
}

/// `n` requests one after the other on one keep-alive connection; how many were answered 2xx.
async fn sequential(url: &str, body: &Bytes, n: u64) -> u64 {
    let client = reqwest::Client::builder().pool_max_idle_per_host(1).build().unwrap();
    let mut ok = 0;
    for i in 0..n {
        let r = client
            .post(url)
            .bearer_auth(sluice_key(i))
            .header("content-type", "application/json")
            .body(body.clone())
            .send()
            .await;
        if let Ok(r) = r
            && r.status().is_success()
            && r.bytes().await.is_ok()
        {
            ok += 1;
        }
    }
    ok
}

/// `--instructions`: each proxy's user-space instructions per request, from callgrind's counts
/// over `n` sequential requests after a warm-up. Returns whether every count was read.
async fn count_instructions(dir: &Path, targets: &[(&str, String, Vec<u32>)], body: Bytes, n: u64) -> bool {
    println!("instructions: {n} sequential requests on one connection, JSON body of {} bytes", body.len());
    println!("\n| path | instructions/request | vs nginx |\n|---|---|---|");
    let mut counts: Vec<(&str, Option<u64>)> = Vec::new();
    for (name, url, pids) in targets {
        let Some(pid) = pids.first() else { continue };
        sequential(url, &body, 200).await;
        let control = |flag: &str| {
            Command::new("callgrind_control")
                .args([flag, &pid.to_string()])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        };
        let answered = control("-z") && sequential(url, &body, n).await == n && control("-d");
        let dump = dir.join(format!("{name}.{pid}.out.1"));
        // `LOAD_CALLGRIND_DIR=DIR` keeps each proxy's counts (`DIR/<name>.out`) for
        // `callgrind_annotate`.
        if let Some(keep) = std::env::var_os("LOAD_CALLGRIND_DIR") {
            let _ = std::fs::copy(&dump, Path::new(&keep).join(format!("{name}.out")));
        }
        let total = std::fs::read_to_string(&dump).ok().and_then(|text| {
            text.lines()
                .find_map(|l| l.strip_prefix("totals:").or_else(|| l.strip_prefix("summary:")))
                .and_then(|v| v.trim().parse::<u64>().ok())
        });
        counts.push((*name, total.filter(|_| answered).map(|t| t / n)));
    }
    let nginx = counts.iter().find(|(name, _)| *name == "nginx").and_then(|(_, c)| *c);
    for (name, count) in &counts {
        let ratio = match (count, nginx) {
            (Some(c), Some(n)) => format!("{:.1}x", *c as f64 / n as f64),
            _ => "-".into(),
        };
        println!("| {name} | {} | {ratio} |", count.map_or("(not read)".into(), |c| c.to_string()));
    }
    counts.iter().all(|(_, c)| c.is_some())
}

fn pct<T: Copy + Ord>(sorted: &[T], p: f64) -> T {
    sorted[((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1]
}

fn ms(d: Duration) -> String {
    format!("{:.3}", d.as_secs_f64() * 1000.0)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let args = args();
    let dir = std::env::temp_dir().join(format!("sluice-load-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    if args.instructions.is_some() {
        assert!(
            Command::new("valgrind").arg("--version").output().is_ok_and(|o| o.status.success()),
            "--instructions needs valgrind (scripts/bench-load installs it)"
        );
        CALLGRIND.set(dir.clone()).unwrap();
    }
    let upstream = mock_upstream().await;
    let (sluice_port, nginx_port, pingora_port) = (free_port(), free_port(), free_port());
    let admin_port = free_port();
    if args.governance {
        psql(&format!("CREATE DATABASE {}", load_db()));
    }
    let sluice = start_sluice(&dir, upstream, sluice_port, args.threads, &args, admin_port);
    let nginx = start_nginx(&dir, upstream, nginx_port);
    let pingora = start_pingora(upstream, pingora_port, args.threads);
    let client = reqwest::Client::builder().pool_max_idle_per_host(256).build().unwrap();
    wait_up(&client, &format!("http://127.0.0.1:{sluice_port}/health")).await;
    if args.governance {
        SLUICE_KEYS.set(issue_keys(&client, admin_port, args.callers).await).unwrap();
    }
    if pingora.is_some() {
        wait_up(&client, &format!("http://127.0.0.1:{pingora_port}/")).await;
    }

    let body = Bytes::from(sluice_benches::chat_body(1024, args.stream));
    let body = {
        let mut v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        v["model"] = "m".into();
        Bytes::from(serde_json::to_vec(&v).unwrap())
    };
    let targets: Vec<(&str, String, Vec<u32>)> = [
        Some(("direct", format!("http://{upstream}/v1/chat/completions"), Vec::new())),
        Some(("sluice", format!("http://127.0.0.1:{sluice_port}/v1/chat/completions"), sluice.1.clone())),
        pingora.as_ref().map(|p| {
            ("pingora", format!("http://127.0.0.1:{pingora_port}/v1/chat/completions"), p.1.clone())
        }),
        nginx
            .as_ref()
            .map(|n| ("nginx", format!("http://127.0.0.1:{nginx_port}/v1/chat/completions"), n.1.clone())),
    ]
    .into_iter()
    .flatten()
    .collect();

    if let Some(n) = args.instructions {
        let counted = count_instructions(&dir, &targets, body.clone(), n).await;
        finish([Some(sluice), pingora, nginx], args.governance, &dir, counted);
    }
    println!(
        "load: {} req/s for {} s per path (in turns of {} s), {} body of {} bytes, {} cores",
        args.rate,
        args.seconds,
        SLICE.min(args.seconds),
        if args.stream { "streaming" } else { "JSON" },
        body.len(),
        std::thread::available_parallelism().map_or(1, |n| n.get())
    );
    // A freshly started proxy's first answers, each on a connection of its own (so that, with
    // SO_REUSEPORT, every worker thread very likely gets one): what a thread makes on first use
    // shows here rather than in the timed runs.
    let firsts: Vec<String> = {
        let fresh = reqwest::Client::builder().pool_max_idle_per_host(0).build().unwrap();
        let mut out = Vec::new();
        for (name, url, _) in &targets {
            let mut slowest = Duration::ZERO;
            for _ in 0..FIRST_ANSWERS {
                let sent = Instant::now();
                let r = fresh.post(url).bearer_auth(sluice_key(0)).header("content-type", "application/json");
                if let Ok(r) = r.body(body.clone()).send().await {
                    let _ = r.bytes().await;
                }
                slowest = slowest.max(sent.elapsed());
            }
            out.push(format!("{name} {}", ms(slowest)));
        }
        out
    };
    println!("slowest of the first {FIRST_ANSWERS} answers after start, in ms: {}", firsts.join(", "));
    for (_, url, _) in &targets {
        // Warm-up: connections, caches, allocator.
        drive(&client, url, body.clone(), args.rate, 1, &[]).await;
    }
    // The paths take turns in slices of SLICE seconds, so that a change in the load of a shared
    // machine falls on all of them alike instead of on whichever ran last.
    let mut results: Vec<(&str, Run)> = targets.iter().map(|(name, ..)| (*name, Run::default())).collect();
    let slice = SLICE.min(args.seconds);
    for _ in 0..args.seconds.div_ceil(slice) {
        for ((_, url, pids), (_, run)) in targets.iter().zip(results.iter_mut()) {
            run.absorb(drive(&client, url, body.clone(), args.rate, slice, pids).await);
        }
    }
    for (_, run) in &mut results {
        run.latencies.sort();
        run.overheads_us.sort();
    }
    println!(
        "\n| path | p50 ms | p95 ms | p99 ms | errors | CPU µs/request | of it in the kernel | context switches/request |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    for (name, run) in &results {
        if run.latencies.is_empty() {
            println!("| {name} | - | - | - | {} | - | - | - |", run.errors);
            continue;
        }
        println!(
            "| {name} | {} | {} | {} | {} | {} | {} | {} |",
            ms(pct(&run.latencies, 0.50)),
            ms(pct(&run.latencies, 0.95)),
            ms(pct(&run.latencies, 0.99)),
            run.errors,
            run.cpu_us_per_request().map_or("-".into(), |c| format!("{c:.1}")),
            run.system_percent().map_or("-".into(), |p| format!("{p:.0} %")),
            run.switches_per_request().map_or("-".into(), |c| format!("{c:.2}"))
        );
    }
    let get = |n: &str| results.iter().find(|(name, _)| *name == n).map(|(_, r)| r);
    let (direct, sluice_run) = (get("direct").unwrap(), get("sluice").unwrap());
    let mut ok = sluice_run.errors == 0 && !sluice_run.latencies.is_empty();
    if !sluice_run.overheads_us.is_empty() {
        let o = &sluice_run.overheads_us;
        let p99 = pct(o, 0.99);
        println!(
            "\nsluice self-measured overhead (x-sluice-overhead-us): p50 {} µs, p95 {} µs, p99 {} µs",
            pct(o, 0.50),
            pct(o, 0.95),
            p99
        );
        let added = pct(&sluice_run.latencies, 0.99).saturating_sub(pct(&direct.latencies, 0.99));
        println!("added latency at p99 (sluice p99 - direct p99): {} ms", ms(added));
        let pass = p99 < 1000;
        ok &= pass;
        println!("target: overhead p99 < 1 ms: {}", if pass { "PASS" } else { "FAIL" });
    }
    if let (Some(n), Some(s)) =
        (get("nginx").and_then(Run::cpu_us_per_request), sluice_run.cpu_us_per_request())
    {
        let ratio = s / n.max(0.1);
        let pass = ratio <= 2.0;
        ok &= pass;
        println!(
            "CPU per request: sluice {s:.1} µs, nginx {n:.1} µs, ratio {ratio:.2} (target <= 2.0): {}",
            if pass { "PASS" } else { "FAIL" }
        );
    } else {
        println!(
            "nginx not found or its CPU not measured: CPU comparison skipped (scripts/bench-load installs it)"
        );
    }
    finish([Some(sluice), pingora, nginx], args.governance, &dir, ok);
}

/// Stops the proxies (in order), drops the run's database and directory, and exits 0 when `ok`.
fn finish(proxies: [Option<Proc>; 3], governance: bool, dir: &Path, ok: bool) -> ! {
    for proxy in proxies {
        drop(proxy);
    }
    if governance {
        psql(&format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", load_db()));
    }
    let _ = std::fs::remove_dir_all(dir);
    std::process::exit(if ok { 0 } else { 1 });
}
