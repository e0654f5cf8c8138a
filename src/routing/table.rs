//! The endpoint table of one service: a segment trie matching `(method, path)` to the
//! endpoint's index, most specific first.
//!
//! Specificity is decided segment by segment from the left: a literal segment beats a
//! `{param}`, which beats a trailing `*`; at the same place an exact method beats `ANY`.
//! When a more specific branch has no endpoint for the method, matching backtracks to the
//! next branch, so `GET /notes/create` still finds `GET /notes/{id}` beside
//! `POST /notes/create`. Lookups allocate nothing.

use std::collections::HashMap;

/// The method wildcard accepted in endpoint declarations.
pub const ANY_METHOD: &str = "ANY";

#[derive(Debug, Default)]
pub struct EndpointTable {
    root: Node,
}

#[derive(Debug, Default)]
struct Node {
    literal: HashMap<Box<str>, Node>,
    param: Option<Box<Node>>,
    /// Endpoints whose path ends at this node.
    here: Methods,
    /// Endpoints declared as this node's path followed by `/*`.
    rest: Methods,
}

#[derive(Debug, Default)]
struct Methods {
    exact: Vec<(Box<str>, usize)>,
    any: Option<usize>,
}

impl Methods {
    fn get(&self, method: &str) -> Option<usize> {
        self.exact
            .iter()
            .find(|(m, _)| &**m == method)
            .map(|(_, i)| *i)
            .or(self.any)
    }

    fn insert(&mut self, method: &str, index: usize) -> Result<(), String> {
        let taken = if method == ANY_METHOD {
            self.any.replace(index).is_some()
        } else if self.exact.iter().any(|(m, _)| &**m == method) {
            true
        } else {
            self.exact.push((method.into(), index));
            false
        };
        if taken {
            return Err(format!("duplicate endpoint for method {method}"));
        }
        Ok(())
    }
}

impl EndpointTable {
    /// Adds an endpoint; `index` is what [`EndpointTable::find`] returns for it.
    pub fn insert(&mut self, method: &str, path: &str, index: usize) -> Result<(), String> {
        if method != ANY_METHOD
            && (method.is_empty() || !method.bytes().all(|b| b.is_ascii_uppercase()))
        {
            return Err(format!(
                "method `{method}` must be an upper-case HTTP method or ANY"
            ));
        }
        let Some(segments) = path.strip_prefix('/') else {
            return Err(format!("path `{path}` must start with /"));
        };
        let segments: Vec<&str> = segments.split('/').collect();
        let last = segments.len() - 1;
        let mut node = &mut self.root;
        for (i, segment) in segments.iter().enumerate() {
            if *segment == "*" {
                if i != last {
                    return Err(format!(
                        "path `{path}`: `*` is only allowed as the last segment"
                    ));
                }
                return node.rest.insert(method, index);
            }
            if segment.is_empty() && i != last {
                return Err(format!("path `{path}` has an empty segment"));
            }
            if let Some(name) = segment.strip_prefix('{').and_then(|s| s.strip_suffix('}')) {
                if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
                {
                    return Err(format!("path `{path}`: bad parameter name `{name}`"));
                }
                node = node.param.get_or_insert_with(Default::default);
            } else if segment.contains(['{', '}', '*', '%', '\\']) || matches!(*segment, "." | "..")
            {
                return Err(format!("path `{path}`: segment `{segment}` is not allowed"));
            } else {
                node = node.literal.entry((*segment).into()).or_default();
            }
        }
        node.here.insert(method, index)
    }

    /// The most specific endpoint for `method` and `path` (which starts with `/`).
    pub fn find(&self, method: &str, path: &str) -> Option<usize> {
        let rest = path.strip_prefix('/').unwrap_or(path);
        find_in(&self.root, method, rest)
    }
}

/// `rest` is the path after the node's own segment, without its leading `/`.
fn find_in(node: &Node, method: &str, rest: &str) -> Option<usize> {
    let (segment, tail) = match rest.split_once('/') {
        Some((segment, tail)) => (segment, Some(tail)),
        None => (rest, None),
    };
    let descend = |child: &Node| match tail {
        Some(tail) => find_in(child, method, tail),
        None => child.here.get(method),
    };
    if let Some(found) = node.literal.get(segment).and_then(descend) {
        return Some(found);
    }
    if !segment.is_empty() {
        if let Some(found) = node.param.as_deref().and_then(descend) {
            return Some(found);
        }
    }
    node.rest.get(method)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(routes: &[(&str, &str)]) -> EndpointTable {
        let mut t = EndpointTable::default();
        for (i, (m, p)) in routes.iter().enumerate() {
            t.insert(m, p, i).unwrap();
        }
        t
    }

    #[test]
    fn most_specific_wins_and_backtracks_on_method() {
        let t = table(&[
            ("POST", "/notes/create"),
            ("GET", "/notes/{id}"),
            ("ANY", "/search/*"),
            ("GET", "/search/special"),
            ("ANY", "/notes/{id}"),
        ]);
        assert_eq!(t.find("POST", "/notes/create"), Some(0));
        assert_eq!(t.find("GET", "/notes/create"), Some(1));
        assert_eq!(t.find("GET", "/notes/42"), Some(1));
        assert_eq!(t.find("DELETE", "/notes/42"), Some(4));
        assert_eq!(t.find("GET", "/search/special"), Some(3));
        assert_eq!(t.find("POST", "/search/special"), Some(2));
        assert_eq!(t.find("PUT", "/search/a/b/c"), Some(2));
        assert_eq!(t.find("GET", "/search"), None);
        assert_eq!(t.find("GET", "/notes"), None);
        assert_eq!(t.find("GET", "/notes/42/extra"), None);
        assert_eq!(t.find("GET", "/other"), None);
    }

    #[test]
    fn params_never_match_empty_segments() {
        let t = table(&[("GET", "/notes/{id}")]);
        assert_eq!(t.find("GET", "/notes/"), None);
    }

    #[test]
    fn root_and_trailing_slash_are_distinct() {
        let t = table(&[("GET", "/"), ("GET", "/a/")]);
        assert_eq!(t.find("GET", "/"), Some(0));
        assert_eq!(t.find("GET", "/a/"), Some(1));
        assert_eq!(t.find("GET", "/a"), None);
    }

    #[test]
    fn bad_declarations_are_refused() {
        let mut t = EndpointTable::default();
        assert!(t.insert("get", "/a", 0).is_err());
        assert!(t.insert("GET", "a", 0).is_err());
        assert!(t.insert("GET", "/a/*/b", 0).is_err());
        assert!(t.insert("GET", "/a//b", 0).is_err());
        assert!(t.insert("GET", "/{}", 0).is_err());
        assert!(t.insert("GET", "/../x", 0).is_err());
        t.insert("GET", "/a", 0).unwrap();
        assert!(t.insert("GET", "/a", 1).is_err());
        t.insert("ANY", "/a", 2).unwrap();
        assert!(t.insert("ANY", "/a", 3).is_err());
    }

    #[test]
    fn a_thousand_endpoints_resolve() {
        let mut t = EndpointTable::default();
        for i in 0..1000 {
            t.insert("GET", &format!("/v1/resource{i}/{{id}}"), i)
                .unwrap();
        }
        assert_eq!(t.find("GET", "/v1/resource999/abc"), Some(999));
        assert_eq!(t.find("GET", "/v1/resource1000/abc"), None);
    }
}
