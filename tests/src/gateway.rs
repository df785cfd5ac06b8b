//! Starts the real gateway binary for one test.

use std::io::Read;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The provider key every test config reads with `api_key = "file:{dir}/provider.key"`.
pub const PROVIDER_KEY: &str = "sk-provider-secret-0123456789";

/// The price of every model in a test config that sets no `[pricing]`: $1 per million prompt
/// tokens, $2 per million completion tokens.
pub const TEST_PRICING: &str = "\n[pricing.default]\ninput = \"1.00\"\noutput = \"2.00\"\n";

/// The admin token every test gateway can use: `token = "file:{dir}/admin.token"`.
pub const ADMIN_TOKEN: &str = "admin-token-for-tests-0001";

pub struct TestGateway {
    pub port: u16,
    /// A free port reserved for `[admin] listen = "127.0.0.1:{admin_port}"`.
    pub admin_port: u16,
    child: Option<Child>,
    dir: PathBuf,
    with_config: bool,
    /// The admin API is on (the embedded default, or a config naming `{admin_port}`).
    with_admin: bool,
    /// Extra environment of the process.
    env: Vec<(String, String)>,
    /// The admin port's and the gateway port's leases, held while the gateway lives.
    leases: (PortLease, Option<PortLease>),
}

impl TestGateway {
    /// Writes `config` (its `[server]` table is added here) and starts `bin` on a free port; returns
    /// once `/health` answers.
    pub async fn start(bin: &str, config: &str) -> Self {
        Self::launch(bin, Some(config), &[]).await
    }

    /// Like [`Self::start`], with extra files (name, content) written to the gateway's directory first.
    pub async fn start_with_files(bin: &str, config: &str, files: &[(&str, &str)]) -> Self {
        Self::launch(bin, Some(config), files).await
    }

    /// Like [`Self::start`], with extra environment variables (e.g. `SLUICE_FAULTS` in debug builds).
    pub async fn start_with_env(bin: &str, config: &str, env: &[(&str, &str)]) -> Self {
        Self::start_with(bin, config, &[], env).await
    }

    /// Extra files and extra environment variables.
    pub async fn start_with(bin: &str, config: &str, files: &[(&str, &str)], env: &[(&str, &str)]) -> Self {
        let mut gw = Self::prepare(Some(config), files);
        gw.env = env.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect();
        gw.spawn(bin).await;
        gw
    }

    /// Starts the gateway without `--config`: the embedded default.
    pub async fn start_default(bin: &str) -> Self {
        Self::launch(bin, None, &[]).await
    }

    async fn launch(bin: &str, config: Option<&str>, files: &[(&str, &str)]) -> Self {
        let mut gw = Self::prepare(config, files);
        gw.spawn(bin).await;
        gw
    }

    /// Writes the gateway's directory and config; the process is not started yet.
    fn prepare(config: Option<&str>, files: &[(&str, &str)]) -> Self {
        let dir = std::env::temp_dir().join(format!("sluice-test-{}-{}", std::process::id(), unique()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let path = dir.join("sluice.toml");
        std::fs::write(dir.join("provider.key"), format!("{PROVIDER_KEY}\n")).expect("write key");
        std::fs::write(dir.join("admin.token"), format!("{ADMIN_TOKEN}\n")).expect("write token");
        let admin = lease_port();
        let admin_port = admin.port;
        for (name, content) in files {
            std::fs::write(dir.join(name), content).expect("write file");
        }
        if let Some(config) = config {
            let mut text = config
                .replace("{dir}", &dir.display().to_string())
                .replace("{admin_port}", &admin_port.to_string());
            // Test configs route to made-up upstream models (`ok`, `fail-500`, ...), which have no
            // price: they get one here unless the test prices its own.
            if !text.contains("[pricing") {
                text.push_str(TEST_PRICING);
            }
            std::fs::write(&path, text).expect("write config");
        }
        let with_admin = config.is_none_or(|c| c.contains("{admin_port}"));
        Self {
            port: 0,
            admin_port,
            child: None,
            dir,
            with_config: config.is_some(),
            with_admin,
            env: Vec::new(),
            leases: (admin, None),
        }
    }

    /// Starts the process on a free port (a few tries) and waits until it is ready. Logs are
    /// appended, so a restarted gateway's lines follow the first run's.
    async fn spawn(&mut self, bin: &str) {
        for _ in 0..5 {
            let lease = lease_port();
            let port = lease.port;
            let mut command = Command::new(bin);
            if self.with_config {
                command.arg("--config").arg(self.dir.join("sluice.toml"));
            } else {
                // The embedded default's admin API, moved off its fixed port.
                command.arg("--admin-listen").arg(format!("127.0.0.1:{}", self.admin_port));
            }
            let log = |name: &str| {
                Stdio::from(
                    std::fs::OpenOptions::new()
                        .create(true)
                        .append(true)
                        .open(self.dir.join(name))
                        .expect("log file"),
                )
            };
            let child = command
                .arg("--listen")
                .arg(format!("127.0.0.1:{port}"))
                .env("SLUICE_LOG", "warn")
                .envs(self.env.iter().map(|(k, v)| (k, v)))
                .stdout(log("stdout.log"))
                .stderr(log("stderr.log"))
                .spawn()
                .expect("spawn gateway");
            self.port = port;
            self.leases.1 = Some(lease);
            self.child = Some(child);
            if self.wait_ready().await {
                return;
            }
            self.kill();
        }
        panic!("the gateway did not start; stderr:\n{}", self.stderr());
    }

    /// Starts the gateway again after it exited: same config and directory, a new port.
    pub async fn restart(&mut self, bin: &str) {
        self.kill();
        self.spawn(bin).await;
    }

    async fn wait_ready(&mut self) -> bool {
        let deadline = Instant::now() + Duration::from_secs(15);
        let client = reqwest::Client::new();
        while Instant::now() < deadline {
            if let Some(child) = self.child.as_mut()
                && let Ok(Some(_)) = child.try_wait()
            {
                return false;
            }
            // Ready once /health answers with anything but "starting" (signal handlers installed).
            if let Ok(r) = client.get(self.url("/health")).send().await
                && let Ok(body) = r.text().await
                && !body.contains("\"status\":\"starting\"")
                && (!self.with_admin
                    || tokio::net::TcpStream::connect(("127.0.0.1", self.admin_port)).await.is_ok())
            {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        false
    }

    /// The gateway's private temp directory (`{dir}` in a config is replaced by it).
    pub fn dir(&self) -> &std::path::Path {
        &self.dir
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{}", self.port, path)
    }

    /// Everything the gateway wrote to stdout (the access log) so far.
    pub fn access_log(&self) -> String {
        std::fs::read_to_string(self.dir.join("stdout.log")).unwrap_or_default()
    }

    pub fn stderr(&self) -> String {
        std::fs::read_to_string(self.dir.join("stderr.log")).unwrap_or_default()
    }

    /// The gateway's threads: name and /proc directory of each. None when the process is gone.
    fn tasks(&self) -> Option<Vec<(String, PathBuf)>> {
        let child = self.child.as_ref()?;
        let tasks = std::fs::read_dir(format!("/proc/{}/task", child.id())).ok()?;
        Some(
            tasks
                .flatten()
                .filter_map(|t| {
                    let name = std::fs::read_to_string(t.path().join("comm")).ok()?;
                    Some((name.trim().to_owned(), t.path()))
                })
                .collect(),
        )
    }

    /// The gateway's threads and their states (`name:state` from /proc), for diagnosing hangs.
    pub fn threads(&self) -> String {
        let Some(tasks) = self.tasks() else { return "gone".into() };
        tasks
            .into_iter()
            .filter_map(|(name, path)| {
                let stat = std::fs::read_to_string(path.join("stat")).ok()?;
                let state = stat.rsplit(')').next()?.split_whitespace().next()?.to_owned();
                let wchan = std::fs::read_to_string(path.join("wchan")).unwrap_or_default();
                Some(format!("{name}:{state}:{wchan}"))
            })
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// Sends `signal` (e.g. `libc::SIGTERM`) to the gateway.
    pub fn signal(&self, signal: i32) {
        if let Some(child) = &self.child {
            let pid = child.id() as i32;
            // SAFETY-free: libc::kill has no memory effects; it only sends a signal to our child.
            unsafe_kill(pid, signal);
        }
    }

    /// Waits for the process to exit; returns how long it took, or None on timeout.
    pub async fn wait_exit(&mut self, limit: Duration) -> Option<Duration> {
        let started = Instant::now();
        self.wait_exit_status(limit).await.map(|_| started.elapsed())
    }

    /// Waits for the process to exit; returns its exit status, or None on timeout.
    pub async fn wait_exit_status(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        let started = Instant::now();
        while started.elapsed() < limit {
            if let Some(child) = self.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                return Some(status);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        None
    }

    /// Voluntary context switches of each thread whose name starts with `prefix` (from /proc),
    /// by thread name: how often each has woken to do work.
    pub fn thread_wakeups(&self, prefix: &str) -> std::collections::BTreeMap<String, u64> {
        self.tasks()
            .unwrap_or_default()
            .into_iter()
            .filter(|(name, _)| name.starts_with(prefix))
            .filter_map(|(name, path)| {
                let status = std::fs::read_to_string(path.join("status")).ok()?;
                let n = status
                    .lines()
                    .find_map(|l| l.strip_prefix("voluntary_ctxt_switches:"))?
                    .trim()
                    .parse()
                    .ok()?;
                Some((name, n))
            })
            .collect()
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
            let mut s = String::new();
            if let Some(mut out) = child.stdout.take() {
                let _ = out.read_to_string(&mut s);
            }
        }
    }
}

impl Drop for TestGateway {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[expect(unsafe_code, reason = "sending a signal to our own child process needs libc::kill")]
fn unsafe_kill(pid: i32, signal: i32) {
    // SAFETY: kill(2) takes plain integers and touches no memory of ours.
    unsafe {
        libc::kill(pid, signal);
    }
}

#[expect(unsafe_code, reason = "geteuid is a plain libc call")]
pub fn euid() -> u32 {
    // SAFETY: geteuid(2) has no preconditions and touches no memory of ours.
    unsafe { libc::geteuid() }
}

/// A free port that no other test process takes while this lease lives: a port the kernel says
/// is free, plus an exclusive lock on a file named after it. Gateways bind their port with
/// SO_REUSEPORT (one socket per worker thread), so two gateways handed the same free port at the
/// same moment would share it instead of the second one failing to bind; the lock rules that out
/// between tests (nextest runs each test in a process of its own).
pub struct PortLease {
    pub port: u16,
    _lock: std::fs::File,
}

pub fn lease_port() -> PortLease {
    let dir = std::env::temp_dir().join("sluice-test-ports");
    std::fs::create_dir_all(&dir).expect("port lease dir");
    loop {
        let port = free_port();
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(dir.join(port.to_string()))
            .expect("port lease file");
        if try_lock(&file) {
            return PortLease { port, _lock: file };
        }
    }
}

#[expect(unsafe_code, reason = "flock is a plain libc call")]
fn try_lock(file: &std::fs::File) -> bool {
    use std::os::fd::AsRawFd;
    // SAFETY: flock(2) takes a descriptor we keep open and touches no memory of ours.
    unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) == 0 }
}

pub fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr").port()
}

pub fn unique() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed)
        ^ (std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos() as u64)
            << 20)
}
