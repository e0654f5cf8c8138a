//! Step 1 of the request path: from `/api/proxy/{service}/{path...}` to a registered
//! service, its priced endpoint and the upstream path to forward to.
//!
//! Hostile paths (`..`, encoded dots and slashes, backslashes, NULs, empty segments) are
//! refused before any lookup, and the upstream is always the service's registered base
//! URL: nothing in the request can choose a host.

mod table;
mod upstream;

pub use table::{EndpointTable, ANY_METHOD};
pub use upstream::Upstream;

use crate::config::{
    ConfigError, Credits, EndpointConfig, OnLedgerError, Overage, ServiceConfig, SettleConfig,
    TimeoutsConfig,
};
use crate::pricing::{EndpointPrice, PriceExpression, SettleRule};
use crate::vocab::{is_valid_service_name, MAX_ENDPOINT_CREDITS};
use std::collections::HashMap;
use std::sync::Arc;

/// Every metered call lives under this prefix.
pub const PROXY_PREFIX: &str = "/api/proxy/";

/// A registered service, ready for the request path.
#[derive(Debug)]
pub struct Service {
    pub name: String,
    pub upstream: Upstream,
    pub timeouts: TimeoutsConfig,
    pub refund_on_5xx: bool,
    pub on_ledger_error: OnLedgerError,
    pub public: bool,
    /// The request headers a price expression may read (`price_headers`).
    pub price_headers: Vec<http::HeaderName>,
    pub endpoints: Vec<Endpoint>,
    pub metrics: crate::metrics::ServiceMetrics,
    table: EndpointTable,
}

#[derive(Debug, Clone)]
pub struct Endpoint {
    pub method: String,
    /// The declared pattern, e.g. `/notes/{id}`: what usage logs and bills group by.
    pub path: String,
    pub credits: EndpointPrice,
    /// Settled from the response (docs/DESIGN.md §Settled prices): what is held first, and
    /// where the cost is read; `None`: `credits` is the price.
    pub settle: Option<Arc<Settled>>,
    /// Evaluated and logged, never charged (`shadow_credits`).
    pub shadow: Option<EndpointPrice>,
}

/// A settled endpoint's terms.
#[derive(Debug)]
pub struct Settled {
    /// Held before forwarding; `None`: the endpoint's price (`credits`, or its plan's).
    pub reserve: Option<EndpointPrice>,
    pub rule: SettleRule,
    pub overage: Overage,
}

/// The outcome of routing one request.
#[derive(Debug)]
pub struct RouteMatch {
    pub service: Arc<Service>,
    pub endpoint: usize,
    /// Base path of the upstream + the request's path after `{service}` + the query.
    pub upstream_path: String,
}

impl RouteMatch {
    pub fn endpoint(&self) -> &Endpoint {
        &self.service.endpoints[self.endpoint]
    }
}

#[derive(Debug, PartialEq, Eq)]
pub enum RouteError {
    /// 400: the path is malformed or tries to escape its prefix.
    BadPath(&'static str),
    /// 404: no such service or endpoint.
    NotFound(&'static str),
}

/// All services, by name.
#[derive(Debug, Default)]
pub struct Router {
    services: HashMap<String, Arc<Service>>,
}

impl Router {
    /// Builds the router, resolving each upstream's host once (config was validated).
    pub fn new(services: &[ServiceConfig]) -> Result<Router, String> {
        let (router, mut errors) = Router::lenient(services);
        match errors.pop() {
            Some(error) => Err(error),
            None => Ok(router),
        }
    }

    /// Builds the router from the services that can be routed; the others are left out
    /// and explained, one message each.
    pub fn lenient(services: &[ServiceConfig]) -> (Router, Vec<String>) {
        let mut map = HashMap::new();
        let mut errors = Vec::new();
        for config in services {
            match Router::service(config) {
                Ok(service) => {
                    map.insert(config.name.clone(), Arc::new(service));
                }
                Err(e) => errors.push(format!("service `{}`: {e}", config.name)),
            }
        }
        (Router { services: map }, errors)
    }

    fn service(config: &ServiceConfig) -> Result<Service, String> {
        let upstream = Upstream::parse(&config.upstream).and_then(Upstream::resolve)?;
        let mut table = EndpointTable::default();
        let mut endpoints = Vec::with_capacity(config.endpoints.len());
        for (i, e) in config.endpoints.iter().enumerate() {
            table.insert(&e.method, &e.path, i)?;
            endpoints.push(Endpoint {
                method: e.method.clone(),
                path: e.path.clone(),
                credits: compile(&e.credits).map_err(|e| format!("endpoints[{i}].credits: {e}"))?,
                settle: settled(e)
                    .map_err(|(field, e)| format!("endpoints[{i}].{field}: {e}"))?
                    .map(Arc::new),
                shadow: e
                    .shadow_credits
                    .as_ref()
                    .map(compile)
                    .transpose()
                    .map_err(|e| format!("endpoints[{i}].shadow_credits: {e}"))?,
            });
        }
        Ok(Service {
            name: config.name.clone(),
            upstream,
            timeouts: config.timeouts,
            refund_on_5xx: config.refund_on_5xx,
            on_ledger_error: config.on_ledger_error,
            public: config.public,
            price_headers: price_headers(&config.price_headers)?,
            endpoints,
            metrics: crate::metrics::ServiceMetrics::new(&config.name),
            table,
        })
    }

    /// Routes `method` + `path` (the request target's path) + `query`.
    pub fn route(
        &self,
        method: &str,
        path: &str,
        query: Option<&str>,
    ) -> Result<RouteMatch, RouteError> {
        check_path(path)?;
        let Some(after) = path.strip_prefix(PROXY_PREFIX) else {
            return Err(RouteError::NotFound(
                "no route; metered calls go to /api/proxy/{service}/...",
            ));
        };
        let (name, rest) = match after.find('/') {
            Some(i) => after.split_at(i),
            None => (after, "/"),
        };
        let service = self
            .services
            .get(name)
            .ok_or(RouteError::NotFound("unknown service"))?;
        let endpoint = service
            .table
            .find(method, rest)
            .ok_or(RouteError::NotFound(
                "unknown endpoint for this service and method",
            ))?;
        let base = service.upstream.base_path.as_str();
        let mut upstream_path =
            String::with_capacity(base.len() + rest.len() + 1 + query.map_or(0, str::len));
        upstream_path.push_str(base);
        upstream_path.push_str(rest);
        if let Some(q) = query {
            upstream_path.push('?');
            upstream_path.push_str(q);
        }
        Ok(RouteMatch {
            service: Arc::clone(service),
            endpoint,
            upstream_path,
        })
    }
}

/// Refuses paths that could mean something else after decoding or normalisation upstream.
fn check_path(path: &str) -> Result<(), RouteError> {
    let bytes = path.as_bytes();
    if bytes.first() != Some(&b'/') {
        return Err(RouteError::BadPath("the path must start with /"));
    }
    if bytes.iter().any(|&b| b == b'\\' || b < 0x20 || b == 0x7f) {
        return Err(RouteError::BadPath(
            "backslashes and control characters are not allowed in the path",
        ));
    }
    for window in bytes.windows(3) {
        if window[0] == b'%' {
            let code = [
                window[1].to_ascii_lowercase(),
                window[2].to_ascii_lowercase(),
            ];
            if matches!(&code, b"2e" | b"2f" | b"5c" | b"00") {
                return Err(RouteError::BadPath(
                    "encoded dots, slashes, backslashes and NULs are not allowed in the path",
                ));
            }
        }
    }
    let mut segments = path[1..].split('/').peekable();
    while let Some(segment) = segments.next() {
        if segment == "." || segment == ".." {
            return Err(RouteError::BadPath(
                "`.` and `..` segments are not allowed in the path",
            ));
        }
        if segment.is_empty() && segments.peek().is_some() {
            return Err(RouteError::BadPath(
                "empty path segments (//) are not allowed",
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests;

/// The longest timeout a service may set, ms: an hour.
pub const MAX_TIMEOUT_MS: u64 = 3_600_000;

/// Checks the config's services: each as [`check_service`] does, names unique.
pub fn check_services(services: &[ServiceConfig]) -> Result<(), ConfigError> {
    let mut names = std::collections::HashSet::new();
    for (i, service) in services.iter().enumerate() {
        check_service(service, &format!("services[{i}]"))?;
        if !names.insert(service.name.as_str()) {
            return Err(ConfigError::invalid(
                format!("services[{i}].name"),
                format!("duplicate service name `{}`", service.name),
            ));
        }
    }
    Ok(())
}

/// Checks a service as the config loader and the admin API accept it (an upstream this
/// module can reach, endpoints its table can hold); errors name the key below `key`.
/// Checks the service as the config loader and the admin API accept it; errors name
/// the key below `key`.
pub fn check_service(service: &ServiceConfig, key: &str) -> Result<(), ConfigError> {
    if !is_valid_service_name(&service.name) {
        return Err(ConfigError::invalid(
            format!("{key}.name"),
            "1 to 64 characters of a-z A-Z 0-9 _ . -",
        ));
    }
    Upstream::parse(&service.upstream)
        .map_err(|msg| ConfigError::invalid(format!("{key}.upstream"), msg))?;
    let t = &service.timeouts;
    for (name, value) in [
        ("connect_ms", t.connect_ms),
        ("read_ms", t.read_ms),
        ("write_ms", t.write_ms),
    ] {
        if !(1..=MAX_TIMEOUT_MS).contains(&value) {
            return Err(ConfigError::invalid(
                format!("{key}.timeouts.{name}"),
                format!("1 to {MAX_TIMEOUT_MS} (an hour)"),
            ));
        }
    }
    price_headers(&service.price_headers)
        .map_err(|msg| ConfigError::invalid(format!("{key}.price_headers"), msg))?;
    if service.endpoints.is_empty() {
        return Err(ConfigError::invalid(
            format!("{key}.endpoints"),
            "a service needs at least one endpoint",
        ));
    }
    let mut table = EndpointTable::default();
    for (i, endpoint) in service.endpoints.iter().enumerate() {
        compile(&endpoint.credits)
            .map_err(|msg| ConfigError::invalid(format!("{key}.endpoints[{i}].credits"), msg))?;
        settled(endpoint).map_err(|(field, msg)| {
            ConfigError::invalid(format!("{key}.endpoints[{i}].{field}"), msg)
        })?;
        if let Some(shadow) = &endpoint.shadow_credits {
            compile(shadow).map_err(|msg| {
                ConfigError::invalid(format!("{key}.endpoints[{i}].shadow_credits"), msg)
            })?;
        }
        table
            .insert(&endpoint.method, &endpoint.path, i)
            .map_err(|msg| ConfigError::invalid(format!("{key}.endpoints[{i}]"), msg))?;
    }
    Ok(())
}

/// The most headers a service may offer its prices.
const MAX_PRICE_HEADERS: usize = 16;

/// `price_headers` as header names (lower-case), or why not.
fn price_headers(names: &[String]) -> Result<Vec<http::HeaderName>, String> {
    if names.len() > MAX_PRICE_HEADERS {
        return Err(format!("at most {MAX_PRICE_HEADERS} headers"));
    }
    names
        .iter()
        .map(|name| {
            http::HeaderName::from_bytes(name.as_bytes())
                .map_err(|_| format!("`{name}` is not a header name"))
        })
        .collect()
}

/// A settled endpoint's terms, compiled; `Err((field, why))` names the field at fault.
fn settled(endpoint: &EndpointConfig) -> Result<Option<Settled>, (&'static str, String)> {
    let Some(settle) = &endpoint.settle else {
        if endpoint.reserve.is_some() {
            return Err((
                "reserve",
                "a reserve needs `settle`: where the final cost is read".into(),
            ));
        }
        if endpoint.overage != Overage::Cap {
            return Err(("overage", "an overage policy needs `settle`".into()));
        }
        return Ok(None);
    };
    let reserve = endpoint
        .reserve
        .as_ref()
        .map(compile)
        .transpose()
        .map_err(|e| ("reserve", e))?;
    let rule = match settle {
        SettleConfig {
            header: Some(name),
            json: None,
            sse: None,
        } => SettleRule::header(name).map_err(|e| ("settle.header", e.to_string()))?,
        SettleConfig {
            header: None,
            json: Some(source),
            sse: None,
        } => SettleRule::json(source).map_err(|e| ("settle.json", e.to_string()))?,
        SettleConfig {
            header: None,
            json: None,
            sse: Some(source),
        } => SettleRule::sse(source).map_err(|e| ("settle.sse", e.to_string()))?,
        _ => {
            return Err((
                "settle",
                "exactly one of `header`, `json` (an expression over `response`) or `sse` \
                 (an expression over `event`)"
                    .into(),
            ))
        }
    };
    Ok(Some(Settled {
        reserve,
        rule,
        overage: endpoint.overage,
    }))
}

/// An endpoint's price as the request path uses it: a number in range, or an expression
/// compiled once (docs/DESIGN.md §Pricing).
fn compile(credits: &Credits) -> Result<EndpointPrice, String> {
    match credits {
        Credits::Fixed(n) if *n > MAX_ENDPOINT_CREDITS => {
            Err(format!("at most {MAX_ENDPOINT_CREDITS}"))
        }
        Credits::Fixed(n) => Ok(EndpointPrice::Fixed(*n)),
        Credits::Expression(source) => PriceExpression::compile(source)
            .map(|e| EndpointPrice::Expression(Arc::new(e)))
            .map_err(|e| format!("the expression does not compile: {e}")),
    }
}
