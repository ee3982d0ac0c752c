//! Spin's HTTP routing: exact routes (`/health`), single-segment wildcards (`/user/:id`)
//! and trailing wildcards (`/functions/v1/...`, which also match `/functions/v1` itself).
//! The most specific route wins: exact beats wildcard, and among trailing wildcards the
//! longest prefix wins.

use anyhow::{bail, Result};

#[derive(Debug, Clone)]
pub struct Router {
    routes: Vec<Route>,
}

#[derive(Debug, Clone)]
struct Route {
    raw: String,
    segments: Vec<Segment>,
    trailing: bool,
    component: String,
}

#[derive(Debug, Clone, PartialEq)]
enum Segment {
    Lit(String),
    Param(String),
}

/// What a request path matched.
#[derive(Debug, Clone, PartialEq)]
pub struct RouteMatch {
    pub component: String,
    /// The route as written in `spin.toml` (`/functions/v1/...`).
    pub raw_route: String,
    /// The route without its trailing wildcard (`/functions/v1`).
    pub route_prefix: String,
    /// The part of the path after the matched prefix (`/x` for `/functions/v1/x`).
    pub path_info: String,
    /// `:name` captures.
    pub params: Vec<(String, String)>,
}

fn split(path: &str) -> Vec<&str> {
    path.split('/').filter(|s| !s.is_empty()).collect()
}

impl Router {
    pub fn new<'a>(routes: impl IntoIterator<Item = (&'a str, &'a str)>) -> Result<Self> {
        let mut parsed: Vec<Route> = Vec::new();
        for (raw, component) in routes {
            let (body, trailing) = match raw.strip_suffix("/...") {
                Some(b) => (b, true),
                None if raw == "/..." => ("", true),
                None => (raw, false),
            };
            let segments = split(body)
                .into_iter()
                .map(|s| match s.strip_prefix(':') {
                    Some(name) => Segment::Param(name.to_string()),
                    None => Segment::Lit(s.to_string()),
                })
                .collect();
            let route = Route { raw: raw.to_string(), segments, trailing, component: component.to_string() };
            if parsed.iter().any(|r| r.segments == route.segments && r.trailing == route.trailing) {
                bail!("duplicate route {raw:?}");
            }
            parsed.push(route);
        }
        Ok(Router { routes: parsed })
    }

    /// The best route for `path` (without query), if any.
    pub fn route(&self, path: &str) -> Option<RouteMatch> {
        let parts = split(path);
        self.routes
            .iter()
            .filter_map(|r| r.matches(&parts).map(|params| (r, params)))
            // Rank: exact before wildcard, then more segments, then more literal segments.
            .max_by_key(|(r, _)| {
                let literals = r.segments.iter().filter(|s| matches!(s, Segment::Lit(_))).count();
                (!r.trailing, r.segments.len(), literals)
            })
            .map(|(r, params)| {
                let prefix_len = r.segments.len();
                let path_info = if r.trailing {
                    let rest = &parts[prefix_len..];
                    let mut info = rest.iter().map(|s| format!("/{s}")).collect::<String>();
                    if path.ends_with('/') && !rest.is_empty() {
                        info.push('/');
                    }
                    info
                } else {
                    String::new()
                };
                RouteMatch {
                    component: r.component.clone(),
                    raw_route: r.raw.clone(),
                    route_prefix: r.raw.strip_suffix("/...").unwrap_or(&r.raw).to_string(),
                    path_info,
                    params,
                }
            })
    }
}

impl Route {
    fn matches(&self, parts: &[&str]) -> Option<Vec<(String, String)>> {
        if parts.len() < self.segments.len() || (!self.trailing && parts.len() != self.segments.len()) {
            return None;
        }
        let mut params = Vec::new();
        for (seg, part) in self.segments.iter().zip(parts) {
            match seg {
                Segment::Lit(l) if l == part => {}
                Segment::Lit(_) => return None,
                Segment::Param(name) => params.push((name.clone(), part.to_string())),
            }
        }
        Some(params)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn router() -> Router {
        Router::new([
            ("/tts", "tts"),
            ("/functions/v1/tts", "tts"),
            ("/functions/v1/...", "catch"),
            ("/functions/v1/special/...", "special"),
            ("/user/:id", "user"),
        ])
        .unwrap()
    }

    #[test]
    fn exact_beats_wildcard_and_longest_prefix_wins() {
        let r = router();
        assert_eq!(r.route("/functions/v1/tts").unwrap().component, "tts");
        let m = r.route("/functions/v1/other/x").unwrap();
        assert_eq!((m.component.as_str(), m.path_info.as_str()), ("catch", "/other/x"));
        assert_eq!(r.route("/functions/v1/special/y").unwrap().component, "special");
        assert_eq!(r.route("/functions/v1").unwrap().path_info, "");
        assert_eq!(r.route("/user/42").unwrap().params, vec![("id".to_string(), "42".to_string())]);
        assert!(r.route("/nope").is_none());
        assert!(r.route("/tts/extra").is_none());
    }

    #[test]
    fn duplicates_are_rejected() {
        assert!(Router::new([("/a", "x"), ("/a", "y")]).is_err());
    }
}
