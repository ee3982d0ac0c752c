//! `allowed_outbound_hosts`: entries of the form `scheme://host[:port]`, after variable
//! expansion (`"{{ openai_base_url }}"`, `"postgres://{{ db_host }}"`). Each part may be
//! `*`; a host may be `*.example.com` (any subdomain); a port may be a range `a..b`. A
//! missing port means the scheme's default. A path after the authority is ignored, so a
//! base-URL variable such as `https://api.openai.com/v1` can serve as an entry.

use anyhow::{anyhow, bail, Result};

#[derive(Debug, Clone, Default)]
pub struct AllowedHosts {
    entries: Vec<Entry>,
}

#[derive(Debug, Clone, PartialEq)]
struct Entry {
    scheme: Option<String>,
    host: HostPattern,
    port: PortPattern,
}

#[derive(Debug, Clone, PartialEq)]
enum HostPattern {
    Any,
    /// `*.example.com`: stored as `.example.com`.
    Subdomains(String),
    Exact(String),
}

#[derive(Debug, Clone, PartialEq)]
enum PortPattern {
    Any,
    /// The default port of whatever scheme the request uses (`*://host`).
    SchemeDefault,
    Range(u16, u16),
}

/// The port a scheme uses when none is given.
pub fn default_port(scheme: &str) -> Option<u16> {
    match scheme {
        "http" => Some(80),
        "https" => Some(443),
        "postgres" | "postgresql" => Some(5432),
        "mysql" => Some(3306),
        "redis" => Some(6379),
        "mqtt" => Some(1883),
        _ => None,
    }
}

impl AllowedHosts {
    /// Parses rendered entries.
    pub fn parse<S: AsRef<str>>(entries: &[S]) -> Result<Self> {
        let entries = entries
            .iter()
            .map(|e| {
                parse_entry(e.as_ref()).map_err(|err| anyhow!("allowed_outbound_hosts entry {:?}: {err}", e.as_ref()))
            })
            .collect::<Result<_>>()?;
        Ok(AllowedHosts { entries })
    }

    /// Whether a connection to `scheme://host[:port]` is allowed.
    pub fn allows(&self, scheme: &str, host: &str, port: Option<u16>) -> bool {
        let scheme = scheme.to_ascii_lowercase();
        let host = host.trim_start_matches('[').trim_end_matches(']').to_ascii_lowercase();
        let Some(port) = port.or_else(|| default_port(&scheme)) else {
            return false;
        };
        self.entries.iter().any(|e| {
            let scheme_ok = e.scheme.as_deref().is_none_or(|s| s == scheme);
            let host_ok = match &e.host {
                HostPattern::Any => true,
                HostPattern::Subdomains(suffix) => host.ends_with(suffix.as_str()),
                HostPattern::Exact(h) => *h == host,
            };
            let port_ok = match e.port {
                PortPattern::Any => true,
                PortPattern::SchemeDefault => default_port(&scheme) == Some(port),
                PortPattern::Range(lo, hi) => (lo..=hi).contains(&port),
            };
            scheme_ok && host_ok && port_ok
        })
    }

    /// Whether an outbound HTTP request to `uri` is allowed.
    pub fn allows_uri(&self, uri: &http::Uri) -> bool {
        match (uri.scheme_str(), uri.host()) {
            (Some(scheme), Some(host)) => self.allows(scheme, host, uri.port_u16()),
            _ => false,
        }
    }
}

fn parse_entry(entry: &str) -> Result<Entry> {
    let (scheme, rest) = entry.split_once("://").ok_or_else(|| anyhow!("must be of the form scheme://host[:port]"))?;
    if scheme.is_empty() {
        bail!("missing scheme");
    }
    let scheme = (scheme != "*").then(|| scheme.to_ascii_lowercase());
    let authority = rest.split('/').next().unwrap_or_default();
    let (host, port) = if let Some(stripped) = authority.strip_prefix('[') {
        // [ipv6]:port
        let (h, after) = stripped.split_once(']').ok_or_else(|| anyhow!("unterminated IPv6 address"))?;
        (h, after.strip_prefix(':'))
    } else {
        match authority.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (authority, None),
        }
    };
    if host.is_empty() {
        bail!("missing host");
    }
    let host = host.to_ascii_lowercase();
    let host = if host == "*" {
        HostPattern::Any
    } else if let Some(domain) = host.strip_prefix("*.") {
        HostPattern::Subdomains(format!(".{domain}"))
    } else {
        HostPattern::Exact(host)
    };
    let port = match port {
        Some("*") => PortPattern::Any,
        Some(p) => match p.split_once("..") {
            Some((lo, hi)) => PortPattern::Range(lo.parse()?, hi.parse()?),
            None => {
                let p: u16 = p.parse().map_err(|_| anyhow!("invalid port {p:?}"))?;
                PortPattern::Range(p, p)
            }
        },
        None => match scheme.as_deref() {
            None => PortPattern::SchemeDefault,
            Some(s) => {
                let p = default_port(s).ok_or_else(|| anyhow!("no default port for scheme {s:?}: give one"))?;
                PortPattern::Range(p, p)
            }
        },
    };
    Ok(Entry { scheme, host, port })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hosts(entries: &[&str]) -> AllowedHosts {
        AllowedHosts::parse(entries).unwrap()
    }

    #[test]
    fn scheme_host_and_default_port_must_match() {
        let h = hosts(&["https://api.stripe.com"]);
        assert!(h.allows("https", "api.stripe.com", None));
        assert!(h.allows("https", "api.stripe.com", Some(443)));
        assert!(!h.allows("https", "api.stripe.com", Some(8443)));
        assert!(!h.allows("http", "api.stripe.com", None));
        assert!(!h.allows("https", "evil.com", None));
    }

    #[test]
    fn wildcards_ranges_and_paths() {
        let h = hosts(&[
            "http://127.0.0.1:*",
            "https://*.example.com",
            "https://api.openai.com/v1",
            "postgres://db:6000..6010",
        ]);
        assert!(h.allows("http", "127.0.0.1", Some(41234)));
        assert!(h.allows("https", "a.example.com", None));
        assert!(!h.allows("https", "example.com", None));
        assert!(h.allows("https", "api.openai.com", None));
        assert!(h.allows("postgres", "db", Some(6005)));
        assert!(!h.allows("postgres", "db", None));
        assert!(hosts(&["postgres://localhost:5432"]).allows("postgres", "localhost", None));
    }

    #[test]
    fn entries_need_a_scheme() {
        assert!(AllowedHosts::parse(&["api.stripe.com"]).is_err());
    }
}
