//! The command line: `sluice [--config FILE] [--listen ADDR]`, `sluice check-config FILE` and
//! `sluice admin ...` (the admin API's client, in [`crate::admin_cli`]).

use crate::config;

const USAGE: &str = "usage:
  sluice [--config FILE] [--listen ADDR] [--admin-listen ADDR] [--region NAME]
                                           run the gateway (default: the embedded conf/default.toml)
  sluice check-config FILE                 validate a configuration file and exit
  sluice admin ...                         call the admin API (sluice admin --help)
  sluice audit verify [--postgres URL] [--day YYYY-MM-DD]
                                           walk the audit trail's hash chains (URL: also a reference,
                                           env:NAME or file:PATH; default $SLUICE_POSTGRES_URL)
  sluice audit verify ... --sealed DIR      also check the table still holds every sealed export
  sluice audit export --dir DIR [--day YYYY-MM-DD|today] [--postgres URL]
                                           seal a day's chain (default: yesterday) into DIR
  sluice db migrate [--postgres URL]       apply the schema's migrations (as the tables' owner)
  sluice db grant ROLE [--postgres URL]    let ROLE run the gateway: INSERT and SELECT on the
                                           ledger and the audit trail, never UPDATE or DELETE";

enum Command {
    Run {
        config: Option<String>,
        listen: Option<String>,
        admin_listen: Option<String>,
        region: Option<String>,
    },
    Check {
        file: String,
    },
    Help,
}

fn parse_args(args: &[String]) -> Result<Command, String> {
    match args.first().map(String::as_str) {
        Some("check-config") => match args.get(1..) {
            Some([file]) => Ok(Command::Check { file: file.clone() }),
            _ => Err("check-config takes exactly one FILE".into()),
        },
        Some("-h" | "--help" | "help") => Ok(Command::Help),
        _ => {
            let (mut config, mut listen, mut admin_listen, mut region) = (None, None, None, None);
            let mut it = args.iter();
            while let Some(a) = it.next() {
                let (flag, inline) = match a.split_once('=') {
                    Some((f, v)) => (f, Some(v.to_owned())),
                    None => (a.as_str(), None),
                };
                let slot = match flag {
                    "--config" | "-c" => &mut config,
                    "--listen" | "-l" => &mut listen,
                    "--admin-listen" => &mut admin_listen,
                    "--region" => &mut region,
                    other => return Err(format!("unknown argument `{other}`")),
                };
                let value = match inline {
                    Some(v) => v,
                    None => it.next().cloned().ok_or_else(|| format!("{flag} needs a value"))?,
                };
                *slot = Some(value);
            }
            Ok(Command::Run { config, listen, admin_listen, region })
        }
    }
}

fn read(path: Option<&str>) -> Result<(config::file::ConfigFile, String), String> {
    let (text, origin) = match path {
        Some(p) => (std::fs::read_to_string(p).map_err(|e| format!("cannot read {p}: {e}"))?, p.to_owned()),
        None => (config::DEFAULT_TOML.to_owned(), "embedded conf/default.toml".to_owned()),
    };
    Ok((config::parse(&text, &origin)?, origin))
}

/// The gateway of a configuration; `region` (`--region`) replaces `server.region`.
fn load(path: Option<&str>, region: Option<String>) -> Result<crate::proxy::Gateway, String> {
    let (mut file, origin) = read(path)?;
    if region.is_some() {
        file.server.region = region;
    }
    config::build(file).map_err(|e| format!("{origin}: {e}"))
}

/// `check-config`: a file with `[regions]` and no `server.region` is checked once per region.
fn check(path: &str) -> Result<String, String> {
    let (file, origin) = read(Some(path))?;
    let regions: Vec<String> =
        if file.server.region.is_none() { file.regions.keys().cloned().collect() } else { Vec::new() };
    if regions.is_empty() {
        let gw = config::build(file).map_err(|e| format!("{origin}: {e}"))?;
        return Ok(format!("{} models, {} plugins", gw.router.routes.len(), gw.plugins.len()));
    }
    let mut seen = Vec::new();
    for region in regions {
        let mut one = file.clone();
        one.server.region = Some(region.clone());
        let gw = config::build(one).map_err(|e| format!("{origin} (region {region}): {e}"))?;
        seen.push(format!("{} models in {region}", gw.router.routes.len()));
    }
    Ok(seen.join(", "))
}

/// Runs the command line; returns the process exit code.
pub fn main() -> i32 {
    crate::logging::init();
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("audit") {
        return audit_verify(&args[1..]);
    }
    if args.first().map(String::as_str) == Some("db") {
        return db(&args[1..]);
    }
    if args.first().map(String::as_str) == Some("admin") {
        if matches!(args.get(1).map(String::as_str), None | Some("-h" | "--help" | "help")) {
            println!("usage:\n{}", crate::admin_cli::USAGE);
            return 0;
        }
        return crate::admin_cli::main(&args[1..]);
    }
    let command = match parse_args(&args) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("sluice: {e}\n{USAGE}");
            return 2;
        }
    };
    match command {
        Command::Help => {
            println!("{USAGE}");
            0
        }
        Command::Check { file } => match check(&file) {
            Ok(summary) => {
                println!("{file}: ok ({summary})");
                0
            }
            Err(e) => {
                eprintln!("{e}");
                1
            }
        },
        Command::Run { config, listen, admin_listen, region } => {
            let result = load(config.as_deref(), region)
                .and_then(|gw| with_admin_listen(gw, admin_listen))
                .and_then(|gw| crate::server::run(gw, listen));
            match result {
                Ok(()) => 0,
                Err(e) => {
                    log::error!("{e}");
                    eprintln!("sluice: {e}");
                    1
                }
            }
        }
    }
}

/// `--admin-listen` moves the admin API (a demo token stays on loopback addresses).
fn with_admin_listen(
    mut gw: crate::proxy::Gateway,
    addr: Option<String>,
) -> Result<crate::proxy::Gateway, String> {
    let Some(addr) = addr else { return Ok(gw) };
    let Some((listen, _)) = gw.settings.admin.as_mut() else {
        return Err("--admin-listen: the configuration has no [admin] section".into());
    };
    if gw.settings.admin_demo_token && !config::is_loopback(&addr) {
        return Err(format!(
            "--admin-listen: the admin API has a demo token, so it stays on loopback, not `{addr}`"
        ));
    }
    *listen = addr;
    Ok(gw)
}

/// `sluice audit verify`: exit 0 when every chain is intact, 1 at the first broken link, 2 on usage
/// or connection errors.
fn audit_verify(args: &[String]) -> i32 {
    let (mut url, mut day, mut sealed, mut dir) =
        (std::env::var("SLUICE_POSTGRES_URL").ok(), None, None, None);
    let mut it = args.iter();
    let export = match it.next().map(String::as_str) {
        Some("verify") => false,
        Some("export") => true,
        _ => {
            eprintln!("usage:\n{USAGE}");
            return 2;
        }
    };
    while let Some(a) = it.next() {
        match a.as_str() {
            "--postgres" => url = it.next().cloned(),
            "--day" => day = it.next().cloned(),
            "--sealed" if !export => sealed = it.next().cloned(),
            "--dir" if export => dir = it.next().cloned(),
            other => {
                eprintln!("sluice audit verify: unknown argument `{other}`");
                return 2;
            }
        }
    }
    let url = match postgres_url(url) {
        Ok(u) => u,
        Err(e) => {
            eprintln!("sluice audit verify: {e}");
            return 2;
        }
    };
    if export {
        let Some(dir) = dir else {
            eprintln!("sluice audit export: --dir DIR is needed");
            return 2;
        };
        return audit_export(&url, day.as_deref(), std::path::Path::new(&dir));
    }
    with_db("sluice audit verify", &url, async |client| {
        match crate::audit::verify(&client, day.as_deref()).await {
            Ok(crate::audit::Verdict::Intact { rows, days }) => {
                if let Some(dir) = &sealed {
                    match crate::audit_export::check_seals(&client, std::path::Path::new(dir)).await {
                        Ok(None) => {}
                        Ok(Some(broken)) => {
                            println!("audit trail BROKEN on {broken}");
                            return 1;
                        }
                        Err(e) => {
                            eprintln!("sluice audit verify: {e}");
                            return 2;
                        }
                    }
                }
                let seals = if sealed.is_some() { " and every sealed export" } else { "" };
                println!("audit trail intact: {rows} rows in {days} daily chains{seals}");
                0
            }
            Ok(crate::audit::Verdict::Broken { day, seq, record_id, reason }) => {
                println!("audit trail BROKEN on {day} at row {seq} (record {record_id}): {reason}");
                1
            }
            Err(e) => {
                eprintln!("sluice audit verify: cannot read the audit trail: {e}");
                2
            }
        }
    })
}

/// `sluice audit export`: seals `day` (default yesterday, UTC; `today` for today so far) into `dir`.
fn audit_export(url: &str, day: Option<&str>, dir: &std::path::Path) -> i32 {
    let today = sluice_core::calendar::unix_us(std::time::SystemTime::now())
        .div_euclid(sluice_core::calendar::DAY_US);
    let day = match day {
        None => sluice_core::calendar::date(today - 1),
        Some("today") => sluice_core::calendar::date(today),
        Some(d) if sluice_core::calendar::parse_date(d).is_some() => d.to_owned(),
        Some(d) => {
            eprintln!("sluice audit export: --day `{d}` is not YYYY-MM-DD or `today`");
            return 2;
        }
    };
    with_db("sluice audit export", url, async |client| {
        match crate::audit_export::export_day(&client, &day, dir).await {
            Ok(Some(seal)) => {
                println!("sealed {} rows of {day} (head {}) in {}", seal.rows, seal.head, dir.display());
                0
            }
            Ok(None) => {
                println!("nothing to seal for {day}: no rows, or sealed already up to its last row");
                0
            }
            Err(e) => {
                eprintln!("sluice audit export: {e}");
                1
            }
        }
    })
}

/// Runs `f` with a connection to `url` on a runtime of its own; exit code 2 when there is none.
fn with_db(command: &str, url: &str, f: impl AsyncFnOnce(tokio_postgres::Client) -> i32) -> i32 {
    let Ok(rt) = tokio::runtime::Builder::new_current_thread().enable_all().build() else { return 2 };
    rt.block_on(async {
        match crate::ledger::postgres::connect(url, std::time::Duration::from_secs(5)).await {
            Ok(client) => f(client).await,
            Err(e) => {
                eprintln!("{command}: {e}");
                2
            }
        }
    })
}

/// `--postgres URL` (or a reference to one), else `$SLUICE_POSTGRES_URL`.
fn postgres_url(url: Option<String>) -> Result<String, String> {
    let url = url.ok_or("no database: pass --postgres URL or set SLUICE_POSTGRES_URL")?;
    if url.starts_with("env:") || url.starts_with("file:") {
        return sluice_core::secret::Secret::resolve(&url)
            .map(|s| s.expose().to_owned())
            .map_err(|e| format!("--postgres: {e}"));
    }
    Ok(url)
}

/// `sluice db migrate` and `sluice db grant ROLE`: exit 0 when done, 1 when the database refused,
/// 2 on usage or connection errors.
fn db(args: &[String]) -> i32 {
    let (mut url, mut words) = (std::env::var("SLUICE_POSTGRES_URL").ok(), Vec::new());
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--postgres" => url = it.next().cloned(),
            _ => words.push(a.as_str()),
        }
    }
    let command = match words.as_slice() {
        ["migrate"] => None,
        ["grant", role] => Some((*role).to_owned()),
        _ => {
            eprintln!("usage:\n{USAGE}");
            return 2;
        }
    };
    let url = match postgres_url(url) {
        Ok(u) => u,
        Err(e) => {
            eprintln!("sluice db: {e}");
            return 2;
        }
    };
    with_db("sluice db", &url, async |mut client| {
        if let Err(e) = crate::ledger::postgres::migrate(&mut client).await {
            eprintln!(
                "sluice db: cannot apply the migrations: {}",
                e.as_db_error().map_or(e.to_string(), |d| d.message().to_owned())
            );
            return 1;
        }
        let Some(role) = command else {
            println!("the schema is up to date");
            return 0;
        };
        match crate::ledger::postgres::grant(&client, &role).await {
            Ok(()) => {
                println!(
                    "role {role} may now run the gateway (INSERT and SELECT on the ledger and the audit trail)"
                );
                0
            }
            Err(e) => {
                eprintln!("sluice db grant: {e}");
                1
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(s: &[&str]) -> Vec<String> {
        s.iter().map(|a| (*a).to_owned()).collect()
    }

    #[test]
    fn parses_the_two_commands() {
        assert!(matches!(
            parse_args(&args(&[])),
            Ok(Command::Run { config: None, listen: None, admin_listen: None, region: None })
        ));
        let Ok(Command::Run { config, listen, admin_listen, .. }) = parse_args(&args(&[
            "--config",
            "a.toml",
            "--listen=127.0.0.1:1",
            "--admin-listen",
            "127.0.0.1:2",
        ])) else {
            panic!("run")
        };
        assert_eq!((config.as_deref(), listen.as_deref()), (Some("a.toml"), Some("127.0.0.1:1")));
        assert_eq!(admin_listen.as_deref(), Some("127.0.0.1:2"));
        assert!(matches!(parse_args(&args(&["check-config", "f"])), Ok(Command::Check { .. })));
        assert!(parse_args(&args(&["--bogus"])).is_err());
        assert!(parse_args(&args(&["--config"])).is_err());
    }
}
