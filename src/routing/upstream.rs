//! A service's upstream base URL, parsed and resolved once at load so the request path
//! never parses a URL or waits on DNS.

use std::net::{SocketAddr, ToSocketAddrs};

#[derive(Debug, Clone)]
pub struct Upstream {
    pub tls: bool,
    pub host: String,
    pub port: u16,
    /// `host[:port]` as the `Host` header sends it.
    pub authority: String,
    /// The URL's path without a trailing `/` (empty for the root).
    pub base_path: String,
    /// Resolved by [`Upstream::resolve`]; a name that resolves elsewhere later needs a reload.
    pub addr: Option<SocketAddr>,
}

impl Upstream {
    /// Parses `http[s]://host[:port][/base]`. No query, fragment or user info.
    pub fn parse(url: &str) -> Result<Upstream, String> {
        let uri: http::Uri = url
            .parse()
            .map_err(|e| format!("`{url}` is not a URL: {e}"))?;
        let tls = match uri.scheme_str() {
            Some("http") => false,
            Some("https") => true,
            _ => return Err(format!("`{url}` must start with http:// or https://")),
        };
        let authority = uri
            .authority()
            .ok_or_else(|| format!("`{url}` has no host"))?;
        if authority.as_str().contains('@') {
            return Err(format!("`{url}` must not carry user info"));
        }
        if uri.query().is_some() {
            return Err(format!("`{url}` must not carry a query"));
        }
        let host = authority
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']');
        if host.is_empty() {
            return Err(format!("`{url}` has no host"));
        }
        let port = authority.port_u16().unwrap_or(if tls { 443 } else { 80 });
        Ok(Upstream {
            tls,
            host: host.to_owned(),
            port,
            authority: authority.as_str().to_owned(),
            base_path: uri.path().trim_end_matches('/').to_owned(),
            addr: None,
        })
    }

    /// Resolves the host (once, at load).
    pub fn resolve(mut self) -> Result<Upstream, String> {
        let addr = (self.host.as_str(), self.port)
            .to_socket_addrs()
            .map_err(|e| format!("cannot resolve `{}`: {e}", self.host))?
            .next()
            .ok_or_else(|| format!("`{}` resolves to no address", self.host))?;
        self.addr = Some(addr);
        Ok(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_base_urls() {
        let u = Upstream::parse("https://api.example.com/v2/").unwrap();
        assert!(u.tls);
        assert_eq!(
            (u.host.as_str(), u.port, u.base_path.as_str()),
            ("api.example.com", 443, "/v2")
        );
        let u = Upstream::parse("http://127.0.0.1:9000").unwrap();
        assert_eq!(
            (u.port, u.base_path.as_str(), u.authority.as_str()),
            (9000, "", "127.0.0.1:9000")
        );
        assert!(Upstream::parse("ftp://x").is_err());
        assert!(Upstream::parse("http://u:p@x").is_err());
        assert!(Upstream::parse("http://x/?a=1").is_err());
        assert!(Upstream::parse("not a url").is_err());
    }
}
