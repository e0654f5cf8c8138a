//! Step 4's header policy: what the upstream must not see (the client's credentials,
//! spoofed identity, hop-by-hop headers) and what it receives instead (the verified
//! tenant and user, the request id, the real client address).

use pingora::http::RequestHeader;
use pingora::Result;

/// Hop-by-hop headers (RFC 9110 §7.6.1) and headers only the gateway may set.
const STRIPPED: &[&str] = &[
    "authorization",
    "x-api-key",
    "proxy-authorization",
    "proxy-connection",
    "keep-alive",
    "te",
    "trailer",
    "upgrade",
    "x-tenant-id",
    "x-user-id",
    "x-request-id",
    "x-forwarded-for",
    "x-forwarded-host",
    "x-forwarded-proto",
    "x-real-ip",
    "forwarded",
];

/// Who the gateway vouches for, sent upstream.
pub struct Identity<'a> {
    /// (tenant id, user id) of the verified token; `None` on a public service.
    pub user: Option<(&'a str, &'a str)>,
    pub request_id: &'a str,
    pub client_ip: Option<String>,
    /// `Host` for the upstream: its own authority, never the client's.
    pub authority: &'a str,
}

pub fn rewrite(req: &mut RequestHeader, identity: &Identity<'_>) -> Result<()> {
    // Headers named in `Connection` are hop-by-hop too.
    let listed: Vec<String> = req
        .headers
        .get_all("connection")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|name| name.trim().to_ascii_lowercase())
        .filter(|name| !name.is_empty())
        .collect();
    for name in &listed {
        req.remove_header(name.as_str());
    }
    req.remove_header("connection");
    for name in STRIPPED {
        req.remove_header(*name);
    }
    req.insert_header("host", identity.authority)?;
    if let Some((tenant_id, user_id)) = identity.user {
        req.insert_header("x-tenant-id", tenant_id)?;
        req.insert_header("x-user-id", user_id)?;
    }
    req.insert_header("x-request-id", identity.request_id)?;
    if let Some(ip) = &identity.client_ip {
        req.insert_header("x-forwarded-for", ip)?;
    }
    req.insert_header("x-forwarded-proto", "http")?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strips_credentials_spoofing_and_hop_by_hop() {
        let mut req = RequestHeader::build("POST", b"/x", None).unwrap();
        for (k, v) in [
            ("authorization", "Bearer secret"),
            ("x-tenant-id", "victim"),
            ("x-user-id", "admin"),
            ("x-forwarded-for", "1.2.3.4"),
            ("connection", "keep-alive, x-secret"),
            ("x-secret", "1"),
            ("te", "trailers"),
            ("content-type", "application/json"),
        ] {
            req.append_header(k, v).unwrap();
        }
        let identity = Identity {
            user: Some(("acme", "u1")),
            request_id: "r1",
            client_ip: Some("127.0.0.1".into()),
            authority: "up:9000",
        };
        rewrite(&mut req, &identity).unwrap();
        let get = |k: &str| req.headers.get(k).map(|v| v.to_str().unwrap().to_owned());
        assert_eq!(get("authorization"), None);
        assert_eq!(get("x-secret"), None);
        assert_eq!(get("te"), None);
        assert_eq!(get("connection"), None);
        assert_eq!(get("x-tenant-id").as_deref(), Some("acme"));
        assert_eq!(get("x-user-id").as_deref(), Some("u1"));
        assert_eq!(get("x-forwarded-for").as_deref(), Some("127.0.0.1"));
        assert_eq!(get("host").as_deref(), Some("up:9000"));
        assert_eq!(get("content-type").as_deref(), Some("application/json"));
        assert_eq!(req.headers.get_all("x-tenant-id").iter().count(), 1);
    }
}
