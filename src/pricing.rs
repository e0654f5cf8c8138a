//! What a call costs (docs/DESIGN.md §Pricing): the endpoint's price — a number, or a CEL
//! expression over the request ([`PriceExpression`]) — unless the tenant's plan overrides
//! it. A plan's `price_overrides` name an endpoint by service, method and declared path;
//! the catalog keeps them current with the plans and the tenants' plan (set by a
//! subscription), so a plan change reaches every replica within the catalog's reload
//! bound. The request path looks them up without allocating.

use crate::store::Doc;
use crate::vocab::MAX_ENDPOINT_CREDITS;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::{Arc, LazyLock};

/// One endpoint's price on a plan, as a plan document stores it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PriceOverride {
    pub service: String,
    pub method: String,
    /// The endpoint's declared path (`/notes/{id}`), as the service lists it.
    pub path: String,
    pub credits: u32,
}

/// A plan's overrides, by service: (method, path, credits).
#[derive(Debug, Default)]
struct PlanOverrides {
    plan: Arc<str>,
    by_service: HashMap<String, Vec<(String, String, u32)>>,
}

/// Every plan's overrides, by plan id.
#[derive(Debug, Default)]
pub struct PlanPrices {
    plans: HashMap<String, PlanOverrides>,
}

/// What a call costs and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Price {
    pub credits: u32,
    /// The plan whose override applied; `None`: the service's own price.
    pub plan: Option<Arc<str>>,
}

/// An endpoint's price as the router keeps it: compiled once, when the service is loaded.
#[derive(Debug, Clone)]
pub enum EndpointPrice {
    Fixed(u32),
    Expression(Arc<PriceExpression>),
}

impl EndpointPrice {
    /// This price for `call`: the number, or what the expression makes of the call.
    pub fn evaluate(&self, call: &Call<'_>) -> Result<u32, String> {
        match self {
            EndpointPrice::Fixed(credits) => Ok(*credits),
            EndpointPrice::Expression(expression) => expression.evaluate(call),
        }
    }

    /// The expression's text, or the number as text.
    pub fn source(&self) -> String {
        match self {
            EndpointPrice::Fixed(credits) => credits.to_string(),
            EndpointPrice::Expression(expression) => expression.source().to_owned(),
        }
    }
}

/// The longest price expression accepted, in bytes.
pub const MAX_EXPRESSION_BYTES: usize = 1024;

/// The deepest expression tree accepted: `a + b + c` is three levels deep.
pub const MAX_DEPTH: usize = 32;

/// How deep the expression tree under `e` is.
fn depth(e: &cel::IdedExpr) -> usize {
    use cel::common::ast::{EntryExpr, Expr};
    let deepest =
        |children: &mut dyn Iterator<Item = &cel::IdedExpr>| children.map(depth).max().unwrap_or(0);
    1 + match &e.expr {
        Expr::Call(call) => deepest(&mut call.target.iter().map(|t| &**t).chain(&call.args)),
        Expr::Select(select) => depth(&select.operand),
        Expr::List(list) => deepest(&mut list.elements.iter()),
        Expr::Map(map) => deepest(&mut map.entries.iter().flat_map(|e| match &e.expr {
            EntryExpr::MapEntry(m) => vec![&m.key, &m.value],
            EntryExpr::StructField(f) => vec![&f.value],
        })),
        Expr::Struct(s) => deepest(&mut s.entries.iter().flat_map(|e| match &e.expr {
            EntryExpr::MapEntry(m) => vec![&m.key, &m.value],
            EntryExpr::StructField(f) => vec![&f.value],
        })),
        Expr::Comprehension(c) => deepest(
            &mut [
                &c.iter_range,
                &c.accu_init,
                &c.loop_cond,
                &c.loop_step,
                &c.result,
            ]
            .into_iter(),
        ),
        Expr::Ident(_) | Expr::Literal(_) | Expr::Unspecified => 0,
    }
}

/// The compiler thread's stack: reserved, not used, unless an expression needs it.
const PARSER_STACK: usize = 256 * 1024 * 1024;

/// The variables a price may read.
const VARIABLES: &[&str] = &["request", "tenant"];

/// CEL's standard functions, built once for every evaluation.
static CEL: LazyLock<Arc<cel::Env>> = LazyLock::new(|| Arc::new(cel::Env::stdlib()));

/// A price in CEL over the call: `request.method`, `request.path` (after the service),
/// `request.params.<name>` (the declared path's `{name}` segments), `request.query.<name>`
/// (the first value of each query parameter), `request.size` (the declared body size,
/// `Content-Length`, 0 when absent), `tenant.id` and `tenant.plan` (`""` without one).
/// It must come to an integer from 0 to [`MAX_ENDPOINT_CREDITS`]. Evaluation is bounded:
/// the expression is at most [`MAX_EXPRESSION_BYTES`] and may not loop (CEL has no loops;
/// its comprehension macros, `all`, `exists`, `map`, `filter`, are refused at compile
/// time), so it costs time in proportion to its length.
#[derive(Debug)]
pub struct PriceExpression {
    source: String,
    program: cel::Program,
}

/// Why an expression was refused, and where (line and column, from 1) when the parser knows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExpressionError {
    pub position: Option<(usize, usize)>,
    pub reason: String,
}

impl std::fmt::Display for ExpressionError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.position {
            Some((line, column)) => write!(f, "line {line}, column {column}: {}", self.reason),
            None => f.write_str(&self.reason),
        }
    }
}

/// What an expression can see of a call.
#[derive(Debug, Default)]
pub struct Call<'a> {
    pub method: &'a str,
    /// The request's path after `/api/proxy/{service}`.
    pub path: &'a str,
    /// The endpoint's declared path (`/notes/{id}`), for `request.params`.
    pub pattern: &'a str,
    /// The raw query string, if any.
    pub query: Option<&'a str>,
    /// The declared body size (`Content-Length`), if any.
    pub size: Option<u64>,
    pub tenant: &'a str,
    pub plan: Option<&'a str>,
    /// The service's `price_headers`: (lower-case name, the request's value or `""`).
    pub headers: &'a [(&'a str, &'a str)],
}

impl PriceExpression {
    /// Compiles `source`, or says what is wrong with it and where.
    pub fn compile(source: &str) -> Result<PriceExpression, ExpressionError> {
        PriceExpression::compile_over(source, VARIABLES)
    }

    /// Compiles `source` as an expression that reads only `variables`.
    fn compile_over(
        source: &str,
        variables: &'static [&'static str],
    ) -> Result<PriceExpression, ExpressionError> {
        let refuse = |reason: String| ExpressionError {
            position: None,
            reason,
        };
        if source.trim().is_empty() {
            return Err(refuse("an empty expression".into()));
        }
        if source.len() > MAX_EXPRESSION_BYTES {
            return Err(refuse(format!("longer than {MAX_EXPRESSION_BYTES} bytes")));
        }
        // The parser recurses deeply per level of the expression (a dozen parentheses took
        // 2 MiB of stack in a debug build): it runs on a thread of its own with room to spare.
        let text = source.to_owned();
        let parsed = std::thread::Builder::new()
            .name("price-compile".into())
            .stack_size(PARSER_STACK)
            .spawn(move || {
                CEL.compile(&text).map(|program| {
                    let depth = depth(program.expression());
                    (program, depth)
                })
            })
            .map_err(|e| refuse(format!("cannot start the compiler: {e}")))?
            .join()
            .map_err(|_| refuse("the expression could not be parsed".into()))?;
        let (program, depth) = parsed.map_err(|e| {
            let first = e.errors.first();
            ExpressionError {
                position: first.and_then(|e| {
                    Some((
                        usize::try_from(e.pos.0).ok()?,
                        usize::try_from(e.pos.1).ok()? + 1,
                    ))
                }),
                reason: first.map_or_else(|| "does not parse".to_owned(), |e| e.msg.clone()),
            }
        })?;
        // The interpreter recurses once per level of the tree, on the request's thread.
        if depth > MAX_DEPTH {
            return Err(refuse(format!(
                "{depth} levels deep; at most {MAX_DEPTH} (split long sums with parentheses)"
            )));
        }
        // A comprehension binds a variable of its own: refusing every other name refuses
        // them too, and with them the only way CEL has to repeat work.
        let references = program.references();
        if let Some(name) = references
            .variables()
            .into_iter()
            .find(|v| !variables.contains(v))
        {
            let known = variables
                .iter()
                .map(|v| format!("`{v}`"))
                .collect::<Vec<_>>();
            return Err(refuse(format!(
                "unknown name `{name}`: this expression reads {}, and may not loop \
                 (all, exists, exists_one, map, filter)",
                known.join(" and ")
            )));
        }
        Ok(PriceExpression {
            source: source.to_owned(),
            program,
        })
    }

    pub fn source(&self) -> &str {
        &self.source
    }

    /// The price of `call`, or why there is none. The variables borrow the request's own
    /// bytes (no copies of the path or query).
    pub fn evaluate(&self, call: &Call<'_>) -> Result<u32, String> {
        use cel::common::types::{CelInt, CelMap, CelMapKey, CelString};
        use cel::common::value::Val;
        fn map<'v>(entries: Vec<(CelMapKey<'v>, Box<dyn Val + 'v>)>) -> Box<dyn Val + 'v> {
            Box::new(CelMap::from(entries.into_iter().collect::<HashMap<_, _>>()))
        }
        fn text<'v>(s: impl Into<CelString<'v>>) -> Box<dyn Val + 'v> {
            Box::new(s.into())
        }
        let params = path_params(call.pattern, call.path)
            .map(|(name, value)| (CelMapKey::from(name), text(value)))
            .collect();
        let mut query: Vec<(CelMapKey<'_>, Box<dyn Val + '_>)> = Vec::new();
        let mut seen = std::collections::HashSet::new();
        for (name, value) in form_urlencoded::parse(call.query.unwrap_or("").as_bytes()) {
            // The first value of each parameter.
            if seen.insert(name.clone()) {
                let key = match name {
                    std::borrow::Cow::Borrowed(name) => CelMapKey::from(name),
                    std::borrow::Cow::Owned(name) => CelMapKey::from(name),
                };
                query.push((key, text(value)));
            }
        }
        let size = i64::try_from(call.size.unwrap_or(0)).unwrap_or(i64::MAX);
        let request = map(vec![
            ("method".into(), text(call.method)),
            ("path".into(), text(call.path)),
            ("params".into(), map(params)),
            ("query".into(), map(query)),
            ("size".into(), Box::new(CelInt::from(size))),
            (
                "headers".into(),
                map(call
                    .headers
                    .iter()
                    .map(|(name, value)| (CelMapKey::from(*name), text(*value)))
                    .collect()),
            ),
        ]);
        let tenant = map(vec![
            ("id".into(), text(call.tenant)),
            ("plan".into(), text(call.plan.unwrap_or(""))),
        ]);
        let mut context = cel::Context::with_env(Arc::clone(&CEL));
        context.add_variable_as_val("request", request);
        context.add_variable_as_val("tenant", tenant);
        credits(self.program.execute(&context))
    }

    /// What the expression makes of a value read from the response (`response` or
    /// `event`): whole credits, or why not.
    pub fn evaluate_response(
        &self,
        name: &'static str,
        value: &serde_json::Value,
    ) -> Result<u32, String> {
        let value = cel::to_value(Signed(value)).map_err(|e| e.to_string())?;
        let value: Box<dyn cel::common::value::Val> = value
            .try_into()
            .map_err(|e: cel::ExecutionError| e.to_string())?;
        let mut context = cel::Context::with_env(Arc::clone(&CEL));
        context.add_variable_as_val(name, value);
        credits(self.program.execute(&context))
    }
}

/// A JSON value as CEL sees it: a whole number that fits is an `int` (so that
/// `usage.total_tokens / 10` divides two ints), not the `uint` serde would make of it.
struct Signed<'a>(&'a serde_json::Value);

impl Serialize for Signed<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::{SerializeMap, SerializeSeq};
        use serde_json::Value;
        match self.0 {
            Value::Number(n) => match (n.as_i64(), n.as_u64(), n.as_f64()) {
                (Some(i), _, _) => serializer.serialize_i64(i),
                (None, Some(u), _) => serializer.serialize_u64(u),
                (None, None, Some(f)) => serializer.serialize_f64(f),
                (None, None, None) => serializer.serialize_unit(),
            },
            Value::Array(items) => {
                let mut seq = serializer.serialize_seq(Some(items.len()))?;
                for item in items {
                    seq.serialize_element(&Signed(item))?;
                }
                seq.end()
            }
            Value::Object(entries) => {
                let mut map = serializer.serialize_map(Some(entries.len()))?;
                for (key, value) in entries {
                    map.serialize_entry(key, &Signed(value))?;
                }
                map.end()
            }
            other => other.serialize(serializer),
        }
    }
}

/// An expression's result as credits: an integer from 0 to [`MAX_ENDPOINT_CREDITS`].
fn credits(result: Result<cel::Value, cel::ExecutionError>) -> Result<u32, String> {
    let range = 0..=i64::from(MAX_ENDPOINT_CREDITS);
    match result {
        Ok(cel::Value::Int(n)) if range.contains(&n) => Ok(n as u32),
        Ok(cel::Value::UInt(n)) if n <= u64::from(MAX_ENDPOINT_CREDITS) => Ok(n as u32),
        Ok(cel::Value::Int(n)) => Err(format!(
            "the price came to {n}, outside 0 to {MAX_ENDPOINT_CREDITS}"
        )),
        Ok(cel::Value::UInt(n)) => Err(format!(
            "the price came to {n}, above {MAX_ENDPOINT_CREDITS}"
        )),
        Ok(other) => Err(format!(
            "the price must be an integer, not {:?} (wrap it in int())",
            other.type_of()
        )),
        Err(e) => Err(e.to_string()),
    }
}

/// Where a settled endpoint's cost is read from the upstream's answer (docs/DESIGN.md
/// §Settled prices), compiled once with the service.
#[derive(Debug)]
pub enum SettleRule {
    /// A response header holding whole credits.
    Header(http::HeaderName),
    /// An expression over `response.body` (the JSON body, kept up to a cap) and
    /// `response.status`.
    Json(PriceExpression),
    /// An expression over `event`: the last server-sent `data:` event with a `usage`.
    Sse(PriceExpression),
}

impl SettleRule {
    pub fn header(name: &str) -> Result<SettleRule, ExpressionError> {
        http::HeaderName::from_bytes(name.as_bytes())
            .map(SettleRule::Header)
            .map_err(|_| ExpressionError {
                position: None,
                reason: format!("`{name}` is not a header name"),
            })
    }

    pub fn json(source: &str) -> Result<SettleRule, ExpressionError> {
        PriceExpression::compile_over(source, &["response"]).map(SettleRule::Json)
    }

    pub fn sse(source: &str) -> Result<SettleRule, ExpressionError> {
        PriceExpression::compile_over(source, &["event"]).map(SettleRule::Sse)
    }
}

/// The declared path's `{name}` segments and their values in `path`.
fn path_params<'a>(pattern: &'a str, path: &'a str) -> impl Iterator<Item = (&'a str, &'a str)> {
    pattern
        .split('/')
        .zip(path.split('/'))
        .take_while(|(declared, _)| *declared != "*")
        .filter_map(|(declared, value)| {
            let name = declared.strip_prefix('{')?.strip_suffix('}')?;
            Some((name, value))
        })
}

impl PlanPrices {
    /// The overrides of the stored plan documents; a document without a readable
    /// `price_overrides` contributes none (and is logged: the admin API never writes one).
    pub fn from_docs(docs: &[Doc]) -> PlanPrices {
        #[derive(Deserialize)]
        struct Stored {
            id: String,
            #[serde(default)]
            price_overrides: Vec<PriceOverride>,
        }
        let mut plans = HashMap::new();
        for doc in docs {
            let stored: Stored = match serde_json::from_value(serde_json::Value::Object(
                doc.clone(),
            )) {
                Ok(stored) => stored,
                Err(e) => {
                    tracing::error!(error = %e, "stored plan's prices unreadable; its tenants pay the services' prices");
                    continue;
                }
            };
            let mut overrides = PlanOverrides {
                plan: Arc::from(stored.id.as_str()),
                by_service: HashMap::new(),
            };
            for o in stored.price_overrides {
                overrides.by_service.entry(o.service).or_default().push((
                    o.method.to_ascii_uppercase(),
                    o.path,
                    o.credits,
                ));
            }
            plans.insert(stored.id, overrides);
        }
        PlanPrices { plans }
    }

    /// The price `plan` sets for `service`'s endpoint `method path` (its declared pattern),
    /// if it sets one.
    pub fn override_for(
        &self,
        plan: Option<&str>,
        service: &str,
        method: &str,
        path: &str,
    ) -> Option<Price> {
        let p = self.plans.get(plan?)?;
        let (_, _, credits) = p
            .by_service
            .get(service)?
            .iter()
            .find(|(m, p, _)| m == method && p == path)?;
        Some(Price {
            credits: *credits,
            plan: Some(Arc::clone(&p.plan)),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn doc(value: serde_json::Value) -> Doc {
        match value {
            serde_json::Value::Object(doc) => doc,
            _ => unreachable!(),
        }
    }

    #[test]
    fn a_plan_overrides_only_the_endpoints_it_names() {
        let prices = PlanPrices::from_docs(&[
            doc(serde_json::json!({
                "id": "pro", "name": "Pro", "monthly_credits": 10,
                "price_overrides": [
                    {"service": "notes", "method": "get", "path": "/notes/{id}", "credits": 1},
                    {"service": "notes", "method": "POST", "path": "/notes", "credits": 0},
                ],
            })),
            doc(serde_json::json!({"id": "free", "name": "Free"})),
            doc(serde_json::json!({"id": "broken", "price_overrides": "nope"})),
        ]);
        let pro = |method, path| prices.override_for(Some("pro"), "notes", method, path);
        let one = pro("GET", "/notes/{id}").unwrap();
        assert_eq!((one.credits, one.plan.as_deref()), (1, Some("pro")));
        assert_eq!(
            pro("POST", "/notes").unwrap().credits,
            0,
            "free on this plan"
        );
        assert_eq!(pro("DELETE", "/notes/{id}"), None);
        assert_eq!(
            prices.override_for(Some("pro"), "other", "GET", "/notes/{id}"),
            None
        );
        for plan in [None, Some("free"), Some("broken"), Some("gone")] {
            assert_eq!(
                prices.override_for(plan, "notes", "GET", "/notes/{id}"),
                None,
                "{plan:?}"
            );
        }
    }

    fn call<'a>(query: Option<&'a str>, size: Option<u64>) -> Call<'a> {
        Call {
            method: "GET",
            path: "/models/large/complete",
            pattern: "/models/{model}/complete",
            query,
            size,
            tenant: "acme",
            plan: Some("pro"),
            headers: &[("x-model", "large")],
        }
    }

    fn price(source: &str, call: &Call<'_>) -> Result<u32, String> {
        PriceExpression::compile(source).unwrap().evaluate(call)
    }

    #[test]
    fn the_documented_examples_price_what_they_say() {
        let expr = "1 + int(request.query.pages)";
        assert_eq!(price(expr, &call(Some("pages=4&pages=9"), None)), Ok(5));
        let expr = "request.size > 1048576 ? 10 : 2";
        assert_eq!(price(expr, &call(None, Some(2_000_000))), Ok(10));
        assert_eq!(price(expr, &call(None, None)), Ok(2));
        let expr = "request.params.model == \"large\" ? 8 : 1";
        assert_eq!(price(expr, &call(None, None)), Ok(8));
        let expr = "tenant.plan == \"pro\" && request.method == \"GET\" ? 0 : 3";
        assert_eq!(price(expr, &call(None, None)), Ok(0));
    }

    #[test]
    fn a_call_it_cannot_price_is_an_error_never_a_wrong_price() {
        let pages = "1 + int(request.query.pages)";
        for query in [
            None,
            Some("pages=many"),
            Some("pages=-5"),
            Some("pages=99999999"),
        ] {
            let result = price(pages, &call(query, None));
            assert!(result.is_err(), "{query:?}: {result:?}");
        }
        assert!(price("double(request.size) / 3.0", &call(None, Some(9)))
            .unwrap_err()
            .contains("integer"));
        let overflow = "9223372036854775807 + int(request.query.n)";
        assert!(price(overflow, &call(Some("n=1"), None)).is_err());
        assert!(price("1 / int(request.query.n)", &call(Some("n=0"), None)).is_err());
    }

    #[test]
    fn a_bad_expression_is_refused_with_where_and_why() {
        let err = PriceExpression::compile("1 +\n  * 2").unwrap_err();
        assert_eq!(err.position.map(|p| p.0), Some(2), "{err}");
        assert!(!err.reason.is_empty());
        for (source, says) in [
            ("", "empty"),
            ("secrets.key", "unknown name `secrets`"),
            ("[1, 2].map(x, x * 2)[0]", "may not loop"),
            ("request.query.all(k, k == \"a\") ? 1 : 2", "may not loop"),
        ] {
            let err = PriceExpression::compile(source).unwrap_err();
            assert!(err.to_string().contains(says), "{source}: {err}");
        }
        let long = format!("1{}", " + 1".repeat(MAX_EXPRESSION_BYTES));
        assert!(PriceExpression::compile(&long)
            .unwrap_err()
            .reason
            .contains("longer"));
    }
}

#[cfg(test)]
mod deep_expressions {
    use super::*;

    /// Deep expressions are compiled on a roomy stack and, past [`MAX_DEPTH`], refused; what
    /// is accepted evaluates on a 2 MiB thread (a tokio worker's) in a debug build. Before,
    /// a dozen nested parentheses overflowed the stack and aborted the process.
    #[test]
    fn deep_expressions_are_refused_or_evaluated_never_overflow() {
        let cases = [
            (format!("{}1{}", "(".repeat(24), ")".repeat(24)), Some(1)),
            (format!("{}1{}", "(".repeat(400), ")".repeat(400)), None),
            (format!("1{}", " + 1".repeat(30)), Some(31)),
            (format!("1{}", " + 1".repeat(250)), None),
            (format!("{}1{}", "[".repeat(40), "][0]".repeat(40)), None),
            (format!("1{}", " ? 1 : 1".repeat(120)), None),
            (format!("request{}", ".a".repeat(400)), None),
            (format!("{}1{}", "int(".repeat(24), ")".repeat(24)), Some(1)),
        ];
        for (source, expected) in cases {
            let outcome = std::thread::Builder::new()
                .stack_size(2 * 1024 * 1024)
                .spawn(move || {
                    PriceExpression::compile(&source)
                        .ok()
                        .map(|e| e.evaluate(&Call::default()))
                })
                .unwrap()
                .join()
                .expect("no overflow");
            assert_eq!(outcome, expected.map(Ok));
        }
    }
}
