//! The console's session (docs/DESIGN.md §Console): the same bearer token `/auth/login`
//! issues, kept in an `HttpOnly`, `SameSite=Strict` cookie, and the CSRF check every
//! state-changing request made with that cookie passes.
//!
//! CSRF is a signed double-submit: beside the session cookie the browser holds a readable
//! `tg_csrf` cookie whose value is derived from the session token (a hash no page of
//! another origin can compute without the token, which it cannot read), and the console's
//! script echoes it in `X-CSRF-Token`. Before sign-in the `tg_csrf` cookie is random and
//! the sign-in post must echo it, so a login form on another site cannot sign a browser in.
//! A request with an `Authorization` header is not cookie-borne and needs no such token.

use crate::problem::Problem;
use axum::http::header::{COOKIE, SET_COOKIE};
use axum::http::{HeaderMap, HeaderValue, Method};
use cookie::{Cookie, SameSite};
use sha2::{Digest, Sha256};

/// The cookie holding the session's bearer token (`HttpOnly`: no script reads it).
pub const SESSION_COOKIE: &str = "tg_session";
/// The readable cookie the console's script echoes in [`CSRF_HEADER`].
pub const CSRF_COOKIE: &str = "tg_csrf";
/// The header a cookie-borne, state-changing request carries.
pub const CSRF_HEADER: &str = "x-csrf-token";

/// The value of cookie `name` in the request, if sent.
pub fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.trim_matches('"'))
        .filter(|v| !v.is_empty())
}

/// The CSRF token of a session: a hash of its bearer token, so the server keeps no state
/// and a new sign-in changes it.
pub fn csrf_for(token: &str) -> String {
    let digest = Sha256::new()
        .chain_update(b"tollgate console csrf\0")
        .chain_update(token.as_bytes())
        .finalize();
    digest[..16].iter().map(|b| format!("{b:02x}")).collect()
}

/// A random CSRF token for a browser that has not signed in.
pub fn fresh_csrf() -> String {
    use rand::RngCore;
    let mut bytes = [0u8; 16];
    rand::thread_rng().fill_bytes(&mut bytes);
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Whether `method` may change state (every method but GET, HEAD and OPTIONS).
pub fn changes_state(method: &Method) -> bool {
    !matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS)
}

/// Refuses a state-changing request whose `X-CSRF-Token` is not `expected`.
pub fn check_csrf(headers: &HeaderMap, expected: &str) -> Result<(), Problem> {
    let sent = headers.get(CSRF_HEADER).map(HeaderValue::as_bytes);
    // Compared in full whatever the first difference: the time tells nothing.
    let same = sent.is_some_and(|sent| {
        sent.len() == expected.len()
            && sent
                .iter()
                .zip(expected.as_bytes())
                .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                == 0
    });
    if same {
        Ok(())
    } else {
        Err(Problem::new(
            403,
            "csrf-failed",
            "CSRF check failed",
            "a request made with the console's session cookie must carry the X-CSRF-Token header the console sends",
        ))
    }
}

/// Whether the browser reached us over TLS (a TLS-terminating proxy says so): then the
/// cookies are `Secure`.
pub fn over_tls(headers: &HeaderMap) -> bool {
    headers
        .get("x-forwarded-proto")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("https"))
}

/// `Set-Cookie` values for a session holding `token` for `max_age_secs` (`None`: the
/// session ends, the cookies are cleared) and its CSRF token.
pub fn set_cookies(token: Option<&str>, max_age_secs: u64, secure: bool) -> Vec<HeaderValue> {
    let age = cookie::time::Duration::seconds(i64::try_from(max_age_secs).unwrap_or(i64::MAX));
    let (session, csrf, age) = match token {
        Some(token) => (token.to_owned(), csrf_for(token), age),
        None => (String::new(), fresh_csrf(), cookie::time::Duration::ZERO),
    };
    let session = Cookie::build((SESSION_COOKIE, session))
        .path("/")
        .http_only(true)
        .same_site(SameSite::Strict)
        .secure(secure)
        .max_age(age);
    let csrf = Cookie::build((CSRF_COOKIE, csrf))
        .path("/")
        .same_site(SameSite::Strict)
        .secure(secure);
    [session.to_string(), csrf.to_string()]
        .into_iter()
        .filter_map(|c| HeaderValue::from_str(&c).ok())
        .collect()
}

/// Adds `cookies` to `headers`.
pub fn append_cookies(headers: &mut HeaderMap, cookies: Vec<HeaderValue>) {
    for c in cookies {
        headers.append(SET_COOKIE, c);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cookies_are_read_among_others_and_csrf_is_compared_exactly() {
        let mut headers = HeaderMap::new();
        headers.insert(
            COOKIE,
            HeaderValue::from_static("a=1; tg_session=tok; tg_csrf=x"),
        );
        assert_eq!(cookie(&headers, SESSION_COOKIE), Some("tok"));
        assert_eq!(cookie(&headers, "missing"), None);
        let expected = csrf_for("tok");
        assert!(check_csrf(&headers, &expected).is_err(), "no header");
        headers.insert(
            CSRF_HEADER,
            HeaderValue::from_str(&csrf_for("other")).unwrap(),
        );
        assert!(
            check_csrf(&headers, &expected).is_err(),
            "another session's"
        );
        headers.insert(CSRF_HEADER, HeaderValue::from_str(&expected).unwrap());
        assert!(check_csrf(&headers, &expected).is_ok());
    }

    #[test]
    fn the_session_cookie_is_http_only_and_strict() {
        let cookies = set_cookies(Some("tok"), 60, true);
        let session = cookies[0].to_str().unwrap();
        for part in [
            "tg_session=tok",
            "HttpOnly",
            "SameSite=Strict",
            "Secure",
            "Max-Age=60",
        ] {
            assert!(session.contains(part), "{session} lacks {part}");
        }
        let csrf = cookies[1].to_str().unwrap();
        assert!(!csrf.contains("HttpOnly") && csrf.contains(&csrf_for("tok")));
    }
}
