//! PostgreSQL for tests: a database of its own on the shared server, or a throwaway server of its
//! own for tests that stop and start it.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use tokio_postgres::{Client, NoTls};

/// The shared server (our machines run it; `scripts/test` starts it when it is not running).
pub const SHARED: &str = "postgres://postgres@127.0.0.1:5432";

/// Connects to a URL and keeps the connection running on the current runtime.
pub async fn connect(url: &str) -> Client {
    let (client, connection) = tokio_postgres::connect(url, NoTls).await.expect("connect to PostgreSQL");
    tokio::spawn(async move {
        let _ = connection.await;
    });
    client
}

/// A database of its own on the shared server, dropped with the value.
pub struct TestDb {
    pub name: String,
}

impl TestDb {
    pub async fn create() -> Self {
        let name = format!("sluice_test_{}_{}", std::process::id(), crate::unique());
        connect(&format!("{SHARED}/postgres"))
            .await
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .await
            .expect("create database");
        Self { name }
    }

    pub fn url(&self) -> String {
        format!("{SHARED}/{}", self.name)
    }

    pub async fn client(&self) -> Client {
        connect(&self.url()).await
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        // Dropped from sync code, possibly inside a runtime: psql does it without one.
        let _ = Command::new("psql")
            .args(["-h", "127.0.0.1", "-U", "postgres", "-q", "-c"])
            .arg(format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// A PostgreSQL server of its own (initdb in a temp directory, a free port), for a test that stops
/// and starts it without disturbing any other test. Runs as `postgres` when the tests run as root
/// (PostgreSQL refuses to run as root).
pub struct Throwaway {
    pub port: u16,
    dir: PathBuf,
    bin: PathBuf,
    /// Extra server options (`-c name=value ...`).
    opts: String,
}

impl Throwaway {
    pub fn start() -> Self {
        let bin = server_bin_dir();
        let dir = std::env::temp_dir().join(format!("sluice-pg-{}-{}", std::process::id(), crate::unique()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        if is_root() {
            run(Command::new("chown").arg("postgres:postgres").arg(&dir));
        }
        let data = dir.join("data");
        run(as_owner(&bin.join("initdb"))
            .args(["-A", "trust", "-U", "postgres", "--no-sync", "-E", "UTF8", "-D"])
            .arg(&data));
        let port = crate::free_port();
        let pg = Self { port, dir, bin, opts: String::new() };
        pg.resume();
        pg
    }

    /// Like [`Self::start`], with TLS on (a self-signed certificate for `localhost` and 127.0.0.1);
    /// returns the server and the certificate's path (the CA a client must trust).
    pub fn start_tls() -> (Self, PathBuf) {
        let mut pg = Self::start();
        pg.stop();
        let tls = pg.dir.join("tls");
        let (cert, key) = crate::tls::self_signed(&tls);
        if is_root() {
            run(Command::new("chown").arg("-R").arg("postgres:postgres").arg(&tls));
        }
        run(Command::new("chmod").arg("600").arg(&key));
        pg.opts = format!("-c ssl=on -c ssl_cert_file={} -c ssl_key_file={}", cert.display(), key.display());
        pg.resume();
        (pg, cert)
    }

    pub fn url(&self, db: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{db}", self.port)
    }

    /// Starts (again) and waits until it accepts connections.
    pub fn resume(&self) {
        let opts = format!(
            "-p {} -c listen_addresses=127.0.0.1 -c unix_socket_directories={} -c fsync=off {}",
            self.port,
            self.dir.display(),
            self.opts
        );
        run(as_owner(&self.bin.join("pg_ctl"))
            .args(["start", "-w", "-t", "30", "-D"])
            .arg(self.dir.join("data"))
            .arg("-l")
            .arg(self.dir.join("server.log"))
            .arg("-o")
            .arg(opts));
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(Instant::now() < deadline, "the throwaway PostgreSQL did not come up");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Stops it at once (connections are cut, as in a crash of the database host's service).
    pub fn stop(&self) {
        run(as_owner(&self.bin.join("pg_ctl"))
            .args(["stop", "-m", "fast", "-w", "-D"])
            .arg(self.dir.join("data")));
    }
}

impl Drop for Throwaway {
    fn drop(&mut self) {
        let _ = as_owner(&self.bin.join("pg_ctl"))
            .args(["stop", "-m", "immediate", "-D"])
            .arg(self.dir.join("data"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The newest installed server's binaries (`/usr/lib/postgresql/<version>/bin` on Debian).
fn server_bin_dir() -> PathBuf {
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .expect("PostgreSQL server binaries in /usr/lib/postgresql (scripts/test installs them)")
        .flatten()
        .filter_map(|e| Some((e.file_name().to_str()?.parse().ok()?, e.path().join("bin"))))
        .filter(|(_, bin)| bin.join("initdb").exists())
        .collect();
    versions.sort();
    versions.pop().expect("an installed PostgreSQL server").1
}

fn is_root() -> bool {
    // SAFETY-free: geteuid has no preconditions.
    crate::gateway::euid() == 0
}

fn as_owner(program: &std::path::Path) -> Command {
    if is_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(program);
        c
    } else {
        Command::new(program)
    }
}

fn run(command: &mut Command) {
    let out = command.output().expect("run a PostgreSQL tool");
    assert!(
        out.status.success(),
        "{command:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
