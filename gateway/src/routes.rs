//! The route table: which HTTP method and path go to which function, at which price class, for
//! which tenant, with which limits. Read from TOML (format in `docs/gateway.md`), replaced as a
//! whole on reload so a request sees one table or the other, never half of each.
//!
//! Routes are tried in file order and the first whose method and path both match wins, so a
//! reader of the file can tell which route a request takes without knowing any precedence
//! rules. A path pattern is literal segments, `{name}` (one non-empty segment) and, last only,
//! `{*name}` (the rest of the path, possibly empty). Captured segments reach the function as
//! `tariff-param-NAME` headers.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use tariff_types::tenant::Token;

use crate::rate::{RateLimit, RateSpec};

/// Body limit of a route that sets none: enough for forms and JSON, small enough that a
/// default route cannot be used to push large uploads through the cluster.
pub const DEFAULT_BODY_LIMIT: u64 = 1024 * 1024;
/// Timeout of a route that sets none: the shard's own default invocation timeout.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
/// Written as a route's method, matches every method.
pub const ANY_METHOD: &str = "*";

/// Why a route table could not be loaded. The gateway keeps its previous table when a reload
/// fails, so a typo in the file never takes the site down.
#[derive(Debug, thiserror::Error)]
pub enum RoutesError {
    /// The file could not be read.
    #[error("reading route table {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not a valid route table.
    #[error("route table {path}: {source}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// Where and why, from the TOML parser.
        source: toml::de::Error,
    },
    /// A route is invalid.
    #[error("route {index} ({method} {path}): {reason}")]
    Invalid {
        /// Its position in the file, from 1.
        index: usize,
        /// Its method.
        method: String,
        /// Its path pattern.
        path: String,
        /// What is wrong.
        reason: String,
    },
    /// A public route's owner has no token file, so the gateway could not invoke for it.
    #[error(
        "public route {index} ({path}) is billed to tenant `{tenant}`, but {file} holds no token"
    )]
    NoToken {
        /// Its position in the file, from 1.
        index: usize,
        /// Its path pattern.
        path: String,
        /// The owner tenant.
        tenant: String,
        /// The token file looked for.
        file: PathBuf,
    },
    /// A token file could not be read.
    #[error(transparent)]
    Tenancy(#[from] tariff_cluster::tenancy::TenancyError),
}

/// The file as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RouteFile {
    #[serde(default, rename = "route")]
    routes: Vec<RouteSpec>,
}

/// One `[[route]]` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RouteSpec {
    method: String,
    path: String,
    function: String,
    class: String,
    #[serde(default)]
    tenant: Option<String>,
    #[serde(default)]
    public: bool,
    #[serde(default)]
    body_limit: Option<u64>,
    #[serde(default)]
    timeout: Option<String>,
    #[serde(default)]
    rate: Option<RateSpec>,
}

/// One segment of a path pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    Literal(String),
    Param(String),
    Rest(String),
}

/// A route, checked and ready to match.
#[derive(Debug, Clone)]
pub struct Route {
    /// The method it answers (upper case), or [`ANY_METHOD`].
    pub method: String,
    /// The pattern as written, for logs and errors.
    pub pattern: String,
    segments: Vec<Segment>,
    /// The function invoked.
    pub function: String,
    /// The price class it is invoked at.
    pub class: String,
    /// The tenant that owns the function; a public route is billed to it.
    pub tenant: Option<String>,
    /// For a public route, the owner's token, presented for every caller; `None` means the
    /// caller's own bearer token is required.
    pub public_token: Option<Token>,
    /// Largest request body accepted, in bytes.
    pub body_limit: u64,
    /// How long the caller waits: the invocation's timeout, and the limit on reading the body.
    pub timeout: Duration,
    /// Requests per second per caller, if limited; shared by the clones of this route in one
    /// table (a reload starts every caller afresh).
    pub rate_limit: Option<Arc<RateLimit>>,
}

/// What a lookup found.
#[derive(Debug)]
pub enum Lookup<'a> {
    /// This route, with the captured path segments by name.
    Found(&'a Route, Vec<(String, String)>),
    /// Some route has this path, but none this method; the methods that would match.
    MethodNotAllowed(Vec<String>),
    /// No route has this path.
    NotFound,
}

/// Every route, in file order.
#[derive(Debug, Clone, Default)]
pub struct RouteTable {
    routes: Vec<Route>,
}

impl RouteTable {
    /// Reads and checks the table in `path`; public routes take their owner's token from
    /// `token_dir/TENANT` (the cluster directory's `tokens/` unless told otherwise).
    pub fn load(path: &Path, token_dir: &Path) -> Result<Self, RoutesError> {
        let text = std::fs::read_to_string(path).map_err(|source| RoutesError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(&text, path, token_dir)
    }

    /// Checks the table in `text` (read from `path`, for messages).
    pub fn parse(text: &str, path: &Path, token_dir: &Path) -> Result<Self, RoutesError> {
        let file: RouteFile = toml::from_str(text).map_err(|source| RoutesError::Parse {
            path: path.to_owned(),
            source,
        })?;
        let routes = file
            .routes
            .into_iter()
            .enumerate()
            .map(|(i, spec)| Route::check(i + 1, spec, token_dir))
            .collect::<Result<_, _>>()?;
        Ok(Self { routes })
    }

    /// How many routes there are.
    pub fn len(&self) -> usize {
        self.routes.len()
    }

    /// Whether the table has no routes.
    pub fn is_empty(&self) -> bool {
        self.routes.is_empty()
    }

    /// The first route matching `method` and `path`.
    pub fn lookup(&self, method: &str, path: &str) -> Lookup<'_> {
        let mut allowed = Vec::new();
        for route in &self.routes {
            let Some(params) = route.match_path(path) else {
                continue;
            };
            if route.method == ANY_METHOD || route.method.eq_ignore_ascii_case(method) {
                return Lookup::Found(route, params);
            }
            if !allowed.contains(&route.method) {
                allowed.push(route.method.clone());
            }
        }
        if allowed.is_empty() {
            Lookup::NotFound
        } else {
            Lookup::MethodNotAllowed(allowed)
        }
    }
}

impl Route {
    fn check(index: usize, spec: RouteSpec, token_dir: &Path) -> Result<Self, RoutesError> {
        let invalid = |reason: String| RoutesError::Invalid {
            index,
            method: spec.method.clone(),
            path: spec.path.clone(),
            reason,
        };
        let method = spec.method.to_ascii_uppercase();
        if method != ANY_METHOD && http::Method::from_bytes(method.as_bytes()).is_err() {
            return Err(invalid("not an HTTP method".into()));
        }
        let segments = parse_pattern(&spec.path).map_err(invalid)?;
        if spec.function.is_empty() || spec.class.is_empty() {
            return Err(invalid("function and class must not be empty".into()));
        }
        let timeout = match &spec.timeout {
            Some(text) => humantime::parse_duration(text)
                .map_err(|e| invalid(format!("timeout `{text}`: {e}")))?,
            None => DEFAULT_TIMEOUT,
        };
        if timeout.is_zero() {
            return Err(invalid("timeout must be more than zero".into()));
        }
        let rate_limit = spec
            .rate
            .map(RateLimit::new)
            .transpose()
            .map_err(invalid)?
            .map(Arc::new);
        let public_token = if spec.public {
            let Some(tenant) = &spec.tenant else {
                return Err(invalid(
                    "a public route needs `tenant`, the owner it is billed to".into(),
                ));
            };
            let file = token_dir.join(tenant);
            let token = tariff_cluster::tenancy::read_token_file(&file)?.ok_or_else(|| {
                RoutesError::NoToken {
                    index,
                    path: spec.path.clone(),
                    tenant: tenant.clone(),
                    file: file.clone(),
                }
            })?;
            Some(token)
        } else {
            None
        };
        Ok(Self {
            method,
            pattern: spec.path,
            segments,
            function: spec.function,
            class: spec.class,
            tenant: spec.tenant,
            public_token,
            body_limit: spec.body_limit.unwrap_or(DEFAULT_BODY_LIMIT),
            timeout,
            rate_limit,
        })
    }

    /// The captured segments if `path` matches this route's pattern.
    fn match_path(&self, path: &str) -> Option<Vec<(String, String)>> {
        let mut parts = path.strip_prefix('/')?.split('/');
        let mut params = Vec::new();
        for segment in &self.segments {
            match segment {
                Segment::Rest(name) => {
                    let rest: Vec<&str> = parts.by_ref().collect();
                    params.push((name.clone(), rest.join("/")));
                    return Some(params);
                }
                Segment::Literal(literal) => {
                    if parts.next()? != literal {
                        return None;
                    }
                }
                Segment::Param(name) => {
                    let part = parts.next().filter(|p| !p.is_empty())?;
                    params.push((name.clone(), part.to_owned()));
                }
            }
        }
        parts.next().is_none().then_some(params)
    }
}

/// The segments of a pattern such as `/profile/{id}` or `/static/{*file}`; `/` is one empty
/// literal segment, as the path `/` splits.
fn parse_pattern(pattern: &str) -> Result<Vec<Segment>, String> {
    let rest = pattern
        .strip_prefix('/')
        .ok_or_else(|| "the path must start with `/`".to_owned())?;
    let mut names = HashSet::new();
    let parts: Vec<&str> = rest.split('/').collect();
    let last = parts.len() - 1;
    parts
        .iter()
        .enumerate()
        .map(|(i, part)| {
            let Some(inner) = part.strip_prefix('{').and_then(|p| p.strip_suffix('}')) else {
                if part.contains(['{', '}']) {
                    return Err(format!("segment `{part}` mixes text and a parameter"));
                }
                return Ok(Segment::Literal((*part).to_owned()));
            };
            let (rest, name) = match inner.strip_prefix('*') {
                Some(name) if i == last => (true, name),
                Some(_) => return Err("`{*name}` must be the last segment".into()),
                None => (false, inner),
            };
            let valid = !name.is_empty()
                && name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
            if !valid {
                return Err(format!("parameter name `{name}` is not [A-Za-z0-9_-]+"));
            }
            if !names.insert(name.to_owned()) {
                return Err(format!("parameter `{name}` appears twice"));
            }
            Ok(if rest {
                Segment::Rest(name.to_owned())
            } else {
                Segment::Param(name.to_owned())
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(text: &str, token_dir: &Path) -> Result<RouteTable, RoutesError> {
        RouteTable::parse(text, Path::new("routes.toml"), token_dir)
    }

    const SITE: &str = r#"
        [[route]]
        method = "GET"
        path = "/"
        function = "home"
        class = "critical"

        [[route]]
        method = "get"
        path = "/profile/{id}"
        function = "profile"
        class = "high"
        timeout = "2s"

        [[route]]
        method = "POST"
        path = "/images"
        function = "resize"
        class = "batch"
        body_limit = 10

        [[route]]
        method = "*"
        path = "/static/{*file}"
        function = "files"
        class = "standard"
    "#;

    fn found<'a>(
        table: &'a RouteTable,
        method: &str,
        path: &str,
    ) -> (&'a str, Vec<(String, String)>) {
        match table.lookup(method, path) {
            Lookup::Found(route, params) => (route.function.as_str(), params),
            other => panic!("{method} {path}: {other:?}"),
        }
    }

    #[test]
    fn routes_match_by_method_and_pattern() {
        let dir = tempfile::tempdir().unwrap();
        let table = table(SITE, dir.path()).unwrap();
        assert_eq!(table.len(), 4);
        assert_eq!(found(&table, "GET", "/").0, "home");
        let (function, params) = found(&table, "GET", "/profile/42");
        assert_eq!(function, "profile");
        assert_eq!(params, vec![("id".to_owned(), "42".to_owned())]);
        assert_eq!(found(&table, "DELETE", "/static/a/b.css").1[0].1, "a/b.css");
        assert_eq!(found(&table, "GET", "/static/").1[0].1, "");
        assert!(matches!(table.lookup("GET", "/profile"), Lookup::NotFound));
        assert!(matches!(table.lookup("GET", "/profile/"), Lookup::NotFound));
        assert!(matches!(
            table.lookup("GET", "/profile/1/2"),
            Lookup::NotFound
        ));
        assert!(matches!(table.lookup("GET", "/nowhere"), Lookup::NotFound));
        match table.lookup("GET", "/images") {
            Lookup::MethodNotAllowed(methods) => assert_eq!(methods, vec!["POST".to_owned()]),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn limits_take_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let table = table(SITE, dir.path()).unwrap();
        let Lookup::Found(home, _) = table.lookup("GET", "/") else {
            panic!()
        };
        assert_eq!(home.body_limit, DEFAULT_BODY_LIMIT);
        assert_eq!(home.timeout, DEFAULT_TIMEOUT);
        let Lookup::Found(profile, _) = table.lookup("GET", "/profile/1") else {
            panic!()
        };
        assert_eq!(profile.timeout, Duration::from_secs(2));
        let Lookup::Found(images, _) = table.lookup("POST", "/images") else {
            panic!()
        };
        assert_eq!(images.body_limit, 10);
        assert!(images.public_token.is_none());
        assert!(home.rate_limit.is_none());
        let limited = "[[route]]\nmethod = \"GET\"\npath = \"/\"\nfunction = \"f\"\n\
                       class = \"high\"\nrate = { per_second = 20, burst = 40 }\n";
        let table = super::RouteTable::parse(limited, Path::new("t.toml"), dir.path()).unwrap();
        let Lookup::Found(route, _) = table.lookup("GET", "/") else {
            panic!()
        };
        let spec = route.rate_limit.as_ref().expect("limited").spec();
        assert_eq!((spec.per_second, spec.burst), (20, Some(40)));
    }

    #[test]
    fn public_routes_carry_their_owners_token() {
        let dir = tempfile::tempdir().unwrap();
        let route = r#"
            [[route]]
            method = "GET"
            path = "/"
            function = "home"
            class = "critical"
            tenant = "shop"
            public = true
        "#;
        let err = table(route, dir.path()).unwrap_err();
        assert!(matches!(err, RoutesError::NoToken { .. }), "{err}");
        std::fs::write(dir.path().join("shop"), "tariff_secret\n").unwrap();
        let table = table(route, dir.path()).unwrap();
        let Lookup::Found(home, _) = table.lookup("GET", "/") else {
            panic!()
        };
        assert_eq!(
            home.public_token.as_ref().map(|t| t.expose_secret()),
            Some("tariff_secret")
        );
        assert!(!format!("{table:?}").contains("tariff_secret"));
    }

    #[test]
    fn bad_tables_are_refused_with_the_route() {
        let dir = tempfile::tempdir().unwrap();
        let route = |method: &str, path: &str, extra: &str| {
            format!(
                "[[route]]\nmethod = \"{method}\"\npath = \"{path}\"\nfunction = \"f\"\n\
                 class = \"high\"\n{extra}\n"
            )
        };
        for (text, needle) in [
            (route("GET", "nope", ""), "start with"),
            (route("GET", "/{*a}/b", ""), "last segment"),
            (route("GET", "/{a}/{a}", ""), "twice"),
            (route("GET", "/x{a}", ""), "mixes"),
            (route("GE T", "/", ""), "method"),
            (route("GET", "/", "timeout = \"soon\""), "timeout"),
            (route("GET", "/", "public = true"), "tenant"),
            (route("GET", "/", "colour = 1"), "colour"),
            (route("GET", "/", "rate = { per_second = 0 }"), "per_second"),
            (
                route("GET", "/", "rate = { per_second = 5, burst = 0 }"),
                "burst",
            ),
            (route("GET", "/", "rate = { per_minute = 5 }"), "per_minute"),
        ] {
            let err = table(&text, dir.path()).unwrap_err().to_string();
            assert!(err.contains(needle), "{err} should mention {needle}");
        }
    }
}
