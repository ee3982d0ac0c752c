//! Connections to Postgres for the operator's commands: TLS unless the address says
//! `sslmode=disable` (Supabase requires TLS; a local cluster has none), as Spin does.

use std::sync::Arc;

use anyhow::{Context, Result};
use tokio_postgres::config::SslMode;
use tokio_postgres::{Client, Config, NoTls};

/// Connects and drives the connection on a background task.
pub async fn connect(url: &str) -> Result<Client> {
    let config: Config = url.parse().with_context(|| format!("not a Postgres address: {}", redact(url)))?;
    let context = || format!("connecting to Postgres at {}", redact(url));
    // `prefer` (the default) on a server without TLS falls back to plain, as libpq does.
    let client = if config.get_ssl_mode() == SslMode::Disable {
        let (client, connection) = config.connect(NoTls).await.with_context(context)?;
        tokio::spawn(connection);
        client
    } else {
        let (client, connection) = config.connect(tls_connector()?).await.with_context(context)?;
        tokio::spawn(connection);
        client
    };
    Ok(client)
}

fn tls_connector() -> Result<tokio_postgres_rustls::MakeRustlsConnect> {
    let roots = rustls::RootCertStore { roots: webpki_roots::TLS_SERVER_ROOTS.to_vec() };
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(tokio_postgres_rustls::MakeRustlsConnect::new(config))
}

/// The address without its password, for messages.
pub fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => {
            let creds = &url[s + 3..at];
            match creds.split_once(':') {
                Some((user, _)) => format!("{}{user}:***{}", &url[..s + 3], &url[at..]),
                None => url.to_string(),
            }
        }
        _ => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_redacted() {
        assert_eq!(redact("postgres://u:secret@h/db"), "postgres://u:***@h/db");
        assert_eq!(redact("postgres://u@h/db"), "postgres://u@h/db");
    }
}
