//! PostgreSQL URLs as libpq reads them, TLS included.
//!
//! tokio-postgres knows `sslmode` `disable`, `prefer` and `require` only, and no `sslrootcert`.
//! Operators write libpq's URLs, so Sluice reads those two itself and hands tokio-postgres the rest:
//!
//! | `sslmode`            | TLS      | certificate checked                  |
//! |----------------------|----------|--------------------------------------|
//! | absent, `disable`    | no       | -                                    |
//! | `prefer`             | if offered | no                                 |
//! | `require`            | yes      | no (as libpq without a root cert)    |
//! | `verify-ca`          | yes      | chain, against `sslrootcert` or the system's roots |
//! | `verify-full`        | yes      | chain and host name                  |

use pingora::tls::ssl::{SslConnector, SslMethod, SslVerifyMode};
use postgres_openssl::MakeTlsConnector;
use tokio_postgres::config::SslMode;

/// The connection settings and the TLS connector of a PostgreSQL URL (or `key=value` string).
pub fn config(url: &str) -> Result<(tokio_postgres::Config, MakeTlsConnector), String> {
    let (rest, mode, root) = take_tls_params(url);
    let mut config: tokio_postgres::Config =
        rest.parse().map_err(|e| format!("invalid PostgreSQL URL: {e}"))?;
    let mut builder = SslConnector::builder(SslMethod::tls()).map_err(|e| format!("TLS: {e}"))?;
    let (ssl_mode, verify, hostname) = match mode.as_deref() {
        None | Some("disable") => (SslMode::Disable, false, false),
        Some("prefer") => (SslMode::Prefer, false, false),
        Some("require") => (SslMode::Require, false, false),
        Some("verify-ca") => (SslMode::Require, true, false),
        Some("verify-full") => (SslMode::Require, true, true),
        Some(other) => {
            return Err(format!(
                "sslmode `{other}` is not one of disable, prefer, require, verify-ca, verify-full"
            ));
        }
    };
    config.ssl_mode(ssl_mode);
    if verify {
        builder.set_verify(SslVerifyMode::PEER);
        if let Some(path) = &root {
            builder.set_ca_file(path).map_err(|e| format!("sslrootcert {path}: {e}"))?;
        }
    } else {
        builder.set_verify(SslVerifyMode::NONE);
    }
    let mut connector = MakeTlsConnector::new(builder.build());
    if !hostname {
        connector.set_callback(|c, _| {
            c.set_verify_hostname(false);
            Ok(())
        });
    }
    Ok((config, connector))
}

/// An error with its causes (tokio-postgres says "error performing TLS handshake" and keeps the
/// reason — an unknown CA, a host name mismatch — in its source).
pub fn describe(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let more = c.to_string();
        if !text.contains(&more) {
            text.push_str(": ");
            text.push_str(&more);
        }
        cause = c.source();
    }
    text
}

/// Splits `sslmode` and `sslrootcert` off a URL's query (or a `key=value` string).
fn take_tls_params(url: &str) -> (String, Option<String>, Option<String>) {
    let (mut mode, mut root) = (None, None);
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        let Some((base, query)) = url.split_once('?') else { return (url.to_owned(), None, None) };
        let kept: Vec<&str> = query
            .split('&')
            .filter(|pair| match pair.split_once('=') {
                Some(("sslmode", v)) => {
                    mode = Some(v.to_owned());
                    false
                }
                Some(("sslrootcert", v)) => {
                    root = Some(crate::ledger::spend::percent_decode(v));
                    false
                }
                _ => true,
            })
            .collect();
        let rest = if kept.is_empty() { base.to_owned() } else { format!("{base}?{}", kept.join("&")) };
        return (rest, mode, root);
    }
    let kept: Vec<&str> = url
        .split_whitespace()
        .filter(|pair| match pair.split_once('=') {
            Some(("sslmode", v)) => {
                mode = Some(v.to_owned());
                false
            }
            Some(("sslrootcert", v)) => {
                root = Some(v.to_owned());
                false
            }
            _ => true,
        })
        .collect();
    (kept.join(" "), mode, root)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn libpq_tls_parameters_are_read_and_the_rest_passed_on() {
        let (rest, mode, root) = take_tls_params(
            "postgres://u@db:5432/x?sslmode=verify-full&application_name=a&sslrootcert=%2Fetc%2Fca.pem",
        );
        assert_eq!(rest, "postgres://u@db:5432/x?application_name=a");
        assert_eq!((mode.as_deref(), root.as_deref()), (Some("verify-full"), Some("/etc/ca.pem")));
        let (rest, mode, _) = take_tls_params("host=db user=u sslmode=require");
        assert_eq!((rest.as_str(), mode.as_deref()), ("host=db user=u", Some("require")));
        assert_eq!(take_tls_params("postgres://u@db/x").0, "postgres://u@db/x");
    }

    #[test]
    fn modes_map_to_tls_and_checks() {
        assert_eq!(config("postgres://u@db/x").unwrap().0.get_ssl_mode(), SslMode::Disable);
        assert_eq!(
            config("postgres://u@db/x?sslmode=verify-full").unwrap().0.get_ssl_mode(),
            SslMode::Require
        );
        let Err(e) = config("postgres://u@db/x?sslmode=allow") else { panic!("accepted") };
        assert!(e.contains("is not one of"), "{e}");
        let Err(e) = config("postgres://u@db/x?sslmode=verify-ca&sslrootcert=/nonexistent.pem") else {
            panic!("accepted")
        };
        assert!(e.contains("sslrootcert /nonexistent.pem"), "{e}");
    }
}
