//! The admin REST API against its contract (docs/ADMIN-API.md), over real HTTP to the real
//! `tollgate run` binary: sign-up and login, who may call what, what a user can see, credit
//! moves racing a burst of charged calls, changes reaching the gateway (and a second gateway
//! on the same Redis and MongoDB) within 2 s, refused bodies that write nothing, the OpenAPI
//! document, and usage-log pagination. The main flows run on both stores: the embedded
//! SQLite and MongoDB (skipped, saying so, when no MongoDB is configured).

use tollgate_testkit as common;

use common::{admin_token, client, header_i64, token, wait_until, Gateway, RedisServer, Upstream};
use reqwest::Method;
use serde_json::{json, Value};
use std::collections::HashSet;
use std::fmt::Write as _;
use std::time::{Duration, Instant};

/// What a self-registered tenant starts with (`admin.signup_credits` in the YAML).
const SIGNUP_CREDITS: i64 = 1000;
/// The YAML tenants' balance: enough for every poll a propagation test makes.
const INITIAL: i64 = 1_000_000;
const CHEAP: i64 = 1;
const EXPENSIVE: i64 = 7;
/// The top of a balance's range (ADMIN-API.md, conventions).
const MAX_BALANCE: i64 = 1_000_000_000_000_000;
const PASSWORD: &str = "correct horse battery";
/// How long a change may take to reach a gateway: the contract's 2 s plus slack for polling.
const PROPAGATION_BOUND: Duration = Duration::from_millis(2500);
/// How long a test polls for a propagated change before failing.
const PROPAGATION_DEADLINE: Duration = Duration::from_secs(5);
/// Usage logs reach the store asynchronously; the MongoDB stand-in is slow.
const LOG_DEADLINE: Duration = Duration::from_secs(30);

/// Every route of docs/ADMIN-API.md, path templates exactly as written there.
const ROUTES: &[(&str, &str)] = &[
    ("POST", "/auth/register"),
    ("POST", "/auth/login"),
    ("GET", "/me"),
    ("GET", "/me/balance"),
    ("GET", "/me/usage"),
    ("GET", "/me/invoices"),
    ("GET", "/me/notifications"),
    ("GET", "/me/tenant"),
    ("GET", "/me/usage/series"),
    ("GET", "/me/usage-logs"),
    ("POST", "/me/keys"),
    ("GET", "/me/keys"),
    ("PATCH", "/me/keys/{key_id}"),
    ("DELETE", "/me/keys/{key_id}"),
    ("POST", "/me/keys/{key_id}/roll"),
    ("POST", "/admin/tenants"),
    ("GET", "/admin/tenants"),
    ("GET", "/admin/tenants/{id}"),
    ("PATCH", "/admin/tenants/{id}"),
    ("POST", "/admin/tenants/{id}/credits"),
    ("PUT", "/admin/tenants/{id}/credits"),
    ("GET", "/admin/tenants/{id}/credits/transactions"),
    ("GET", "/admin/tenants/{id}/usage/series"),
    ("POST", "/admin/tenants/{id}/keys"),
    ("GET", "/admin/tenants/{id}/keys"),
    ("PATCH", "/admin/tenants/{id}/keys/{key_id}"),
    ("POST", "/admin/tenants/{id}/keys/{key_id}/roll"),
    ("DELETE", "/admin/tenants/{id}/keys/{key_id}"),
    ("GET", "/admin/users"),
    ("GET", "/admin/users/{id}"),
    ("PATCH", "/admin/users/{id}"),
    ("POST", "/admin/plans"),
    ("GET", "/admin/plans"),
    ("GET", "/admin/plans/{id}"),
    ("PATCH", "/admin/plans/{id}"),
    ("DELETE", "/admin/plans/{id}"),
    ("POST", "/admin/subscriptions"),
    ("GET", "/admin/subscriptions"),
    ("GET", "/admin/subscriptions/{id}"),
    ("PATCH", "/admin/subscriptions/{id}"),
    ("DELETE", "/admin/subscriptions/{id}"),
    ("POST", "/admin/services"),
    ("GET", "/admin/services"),
    ("GET", "/admin/services/{name}"),
    ("PATCH", "/admin/services/{name}"),
    ("DELETE", "/admin/services/{name}"),
    ("POST", "/admin/services/{name}/endpoints"),
    ("PUT", "/admin/services/{name}/endpoints"),
    ("DELETE", "/admin/services/{name}/endpoints"),
    ("GET", "/admin/usage-logs"),
    ("GET", "/admin/summaries"),
    ("GET", "/admin/invoices"),
    ("GET", "/admin/notifications"),
    ("GET", "/admin/reports/activity"),
    ("GET", "/admin/ops/metrics"),
];

const ME_ROUTES: [&str; 9] = [
    "/me",
    "/me/balance",
    "/me/usage",
    "/me/invoices",
    "/me/notifications",
    "/me/keys",
    "/me/tenant",
    "/me/usage/series",
    "/me/usage-logs",
];

/// `ops` only hosts the admin token; `acme` and `zeta` are ordinary paying tenants.
fn yaml(upstream: &str) -> String {
    format!(
        r#"
admin: {{ signup_credits: {SIGNUP_CREDITS} }}
usage: {{ batch_size: 50, flush_interval_ms: 50 }}
services:
  - name: notes
    upstream: {upstream}
    endpoints:
      - {{ method: GET, path: /cheap, credits: {CHEAP} }}
      - {{ method: POST, path: /expensive, credits: {EXPENSIVE} }}
tenants:
  - {{ id: ops, name: Ops }}
  - {{ id: acme, name: Acme, credits: {INITIAL} }}
  - {{ id: zeta, name: Zeta, credits: {INITIAL} }}
"#
    )
}

#[derive(Clone, Copy, Debug)]
enum Ledger {
    Embedded,
    Redis,
}

enum StoreKind {
    Sqlite,
    Mongo { uri: String, db: String },
}

impl StoreKind {
    fn env(&self) -> Vec<(String, String)> {
        match self {
            StoreKind::Sqlite => vec![],
            StoreKind::Mongo { uri, db } => vec![
                ("TOLLGATE_MONGODB_URI".into(), uri.clone()),
                ("TOLLGATE_MONGODB_DB".into(), db.clone()),
            ],
        }
    }
}

/// A response read whole; `body` is `Null` when it is empty or not JSON.
#[derive(Debug)]
struct Answer {
    status: u16,
    headers: reqwest::header::HeaderMap,
    body: Value,
}

impl Answer {
    async fn read(response: reqwest::Response) -> Answer {
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let text = response.text().await.unwrap();
        let body = serde_json::from_str(&text).unwrap_or(Value::Null);
        Answer {
            status,
            headers,
            body,
        }
    }

    fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }
}

async fn send(url: &str, method: Method, bearer: Option<&str>, body: Option<Value>) -> Answer {
    let mut request = client().request(method, url);
    if let Some(bearer) = bearer {
        request = request.bearer_auth(bearer);
    }
    if let Some(body) = &body {
        request = request.json(body);
    }
    Answer::read(request.send().await.unwrap()).await
}

async fn cheap(gateway: &Gateway, bearer: &str) -> reqwest::Response {
    client()
        .get(gateway.url("/api/proxy/notes/cheap"))
        .bearer_auth(bearer)
        .send()
        .await
        .unwrap()
}

async fn expensive(gateway: &Gateway, bearer: &str) -> reqwest::Response {
    client()
        .post(gateway.url("/api/proxy/notes/expensive"))
        .bearer_auth(bearer)
        .send()
        .await
        .unwrap()
}

/// A self-registered user, logged in.
struct Account {
    tenant: String,
    user: String,
    email: String,
    token: String,
}

/// One gateway (with its admin API) on one store and one ledger, with its upstream.
struct Setup {
    gateway: Gateway,
    upstream: Upstream,
    _redis: Option<RedisServer>,
    admin_token: String,
}

impl Setup {
    async fn new(store: &StoreKind, ledger: Ledger) -> Setup {
        let upstream = Upstream::start().await;
        let redis = matches!(ledger, Ledger::Redis).then(RedisServer::start);
        let mut env = store.env();
        env.extend(
            redis
                .as_ref()
                .map(|r| ("TOLLGATE_REDIS_URL".to_owned(), r.url())),
        );
        let gateway = Gateway::start_with(&yaml(&upstream.url()), env);
        Setup {
            gateway,
            upstream,
            _redis: redis,
            admin_token: admin_token("ops", "root"),
        }
    }

    async fn api(
        &self,
        method: Method,
        path: &str,
        bearer: Option<&str>,
        body: Option<Value>,
    ) -> Answer {
        send(&self.gateway.admin_url(path), method, bearer, body).await
    }

    async fn as_admin(&self, method: Method, path: &str, body: Option<Value>) -> Answer {
        self.api(method, path, Some(self.admin_token.as_str()), body)
            .await
    }

    async fn login(&self, email: &str, password: &str) -> Answer {
        let body = json!({"email": email, "password": password});
        self.api(Method::POST, "/auth/login", None, Some(body))
            .await
    }

    async fn sign_up(&self, email: &str, tenant_name: &str) -> Account {
        let body = registration(email, PASSWORD, tenant_name);
        let registered = self
            .api(Method::POST, "/auth/register", None, Some(body))
            .await;
        assert_eq!(registered.status, 201, "register {email}: {registered:?}");
        let login = self.login(email, PASSWORD).await;
        assert_eq!(login.status, 200, "login {email}: {login:?}");
        Account {
            tenant: text(&registered.body["tenant_id"]),
            user: text(&registered.body["user_id"]),
            email: email.to_owned(),
            token: text(&login.body["access_token"]),
        }
    }

    /// The live balance, as the admin API reports it.
    async fn balance_of(&self, tenant: &str) -> i64 {
        let answer = self
            .as_admin(Method::GET, &format!("/admin/tenants/{tenant}"), None)
            .await;
        assert_eq!(answer.status, 200, "{answer:?}");
        answer.body["balance"]
            .as_i64()
            .unwrap_or_else(|| panic!("no balance in {answer:?}"))
    }
}

fn registration(email: &str, password: &str, tenant_name: &str) -> Value {
    json!({"email": email, "password": password, "tenant_name": tenant_name})
}

fn text(value: &Value) -> String {
    value
        .as_str()
        .unwrap_or_else(|| panic!("not a string: {value}"))
        .to_owned()
}

fn items(list: &Value) -> &[Value] {
    list["items"]
        .as_array()
        .unwrap_or_else(|| panic!("no items in {list}"))
}

/// The `id`s of a list's items (nothing for a body that is not a list).
fn ids(list: &Value) -> HashSet<String> {
    list["items"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|item| item["id"].as_str().map(str::to_owned))
        .collect()
}

/// Every value of a `tenant_id` key anywhere in `value`.
fn tenant_ids<'a>(value: &'a Value, out: &mut Vec<&'a str>) {
    match value {
        Value::Object(map) => {
            for (key, v) in map {
                if key == "tenant_id" {
                    if let Some(id) = v.as_str() {
                        out.push(id);
                    }
                }
                tenant_ids(v, out);
            }
        }
        Value::Array(list) => {
            for v in list {
                tenant_ids(v, out);
            }
        }
        _ => {}
    }
}

/// Percent-encodes a query value or path segment.
fn encode(raw: &str) -> String {
    let mut out = String::new();
    for b in raw.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(char::from(b));
        } else {
            write!(out, "%{b:02X}").unwrap();
        }
    }
    out
}

fn assert_problem(answer: &Answer, statuses: &[u16], what: &str) {
    assert!(statuses.contains(&answer.status), "{what}: {answer:?}");
    assert!(
        answer
            .header("content-type")
            .starts_with("application/problem+json"),
        "{what}: {answer:?}"
    );
    assert_eq!(answer.body["status"], answer.status, "{what}: {answer:?}");
    assert!(
        answer.body["type"]
            .as_str()
            .is_some_and(|t| t.starts_with("urn:tollgate:problem:")),
        "{what}: {answer:?}"
    );
}

fn assert_prompt(since: Instant, what: &str) {
    let took = since.elapsed();
    assert!(
        took <= PROPAGATION_BOUND,
        "{what} took {took:?} to reach the gateway"
    );
}

async fn a_new_user_registers_logs_in_and_pays_for_a_call(store: StoreKind) {
    let s = Setup::new(&store, Ledger::Embedded).await;
    let email = "alice@example.com";
    let body = registration(email, PASSWORD, "Alice Co");
    let registered = s
        .api(Method::POST, "/auth/register", None, Some(body))
        .await;
    assert_eq!(registered.status, 201, "{registered:?}");
    assert_eq!(registered.body["email"], email);
    assert_eq!(registered.body["role"], "user");
    let tenant = text(&registered.body["tenant_id"]);
    let user = text(&registered.body["user_id"]);
    let copycat = registration("ALICE@example.com", PASSWORD, "Copycat");
    let taken = s
        .api(Method::POST, "/auth/register", None, Some(copycat))
        .await;
    assert_problem(&taken, &[409], "an email taken, in another case");

    let login = s.login(email, PASSWORD).await;
    assert_eq!(login.status, 200, "{login:?}");
    assert_eq!(login.body["token_type"], "Bearer");
    assert!(
        login.body["expires_in"].as_i64().is_some_and(|e| e > 0),
        "{login:?}"
    );
    let bearer = text(&login.body["access_token"]);
    let me = |path: &'static str| s.api(Method::GET, path, Some(bearer.as_str()), None);

    let before = me("/me/balance").await;
    assert_eq!(before.body["tenant_id"], tenant, "{before:?}");
    assert_eq!(before.body["balance"], SIGNUP_CREDITS, "{before:?}");
    let call = expensive(&s.gateway, &bearer).await;
    assert_eq!(call.status(), 200);
    assert_eq!(header_i64(&call, "x-credits-cost"), Some(EXPENSIVE));
    let after = me("/me/balance").await;
    assert_eq!(
        after.body["balance"],
        SIGNUP_CREDITS - EXPENSIVE,
        "{after:?}"
    );
    let profile = me("/me").await;
    assert_eq!(profile.status, 200, "{profile:?}");
    assert_eq!(profile.body["user_id"], user);
    assert_eq!(profile.body["email"], email);
    assert_eq!(profile.body["tenant_id"], tenant);
    assert_eq!(profile.body["role"], "user");

    let wrong_password = s.login(email, "not the password").await;
    let unknown_email = s.login("nobody@example.com", PASSWORD).await;
    assert_problem(&wrong_password, &[401], "a wrong password");
    assert_problem(&unknown_email, &[401], "an unknown email");
    assert_eq!(
        wrong_password.body, unknown_email.body,
        "a failed login must not tell which half was wrong"
    );

    let bob = "bob@example.com";
    s.sign_up(bob, "Bob Co").await;
    for attempt in 1..=5 {
        let refused = s.login(bob, "a wrong guess").await;
        assert_eq!(refused.status, 401, "bad login {attempt}: {refused:?}");
    }
    let locked = s.login(bob, "a wrong guess").await;
    assert_problem(&locked, &[429], "the 6th bad login");
    let retry_after: u64 = locked
        .header("retry-after")
        .parse()
        .unwrap_or_else(|_| panic!("Retry-After in seconds: {locked:?}"));
    assert!((1..=900).contains(&retry_after), "{locked:?}");
    assert_eq!(
        s.login(bob, PASSWORD).await.status,
        429,
        "the right password does not lift the lock"
    );
    assert_eq!(
        s.login(email, PASSWORD).await.status,
        200,
        "the lock is per email"
    );
}

/// One admin route with real ids, a valid body, and what an admin gets.
struct Row {
    method: Method,
    template: &'static str,
    path: String,
    body: Option<Value>,
    admin_status: u16,
}

/// Every admin route, in an order where each admin call succeeds: creates before the
/// reads, updates and deletes of what they created. A row's `fill` is `id?query`: the id
/// takes the place of the template's `{id}` or `{name}`, the query follows.
#[rustfmt::skip]
fn admin_rows(user_id: &str, subscription_id: &str, key_id: &str, upstream: &str) -> Vec<Row> {
    use reqwest::Method as M;
    let row = |method: Method, template: &'static str, fill: &str, body: Option<Value>| {
        let (id, query) = fill.split_at(fill.find('?').unwrap_or(fill.len()));
        let path = template
            .replace("{id}", id)
            .replace("{name}", id)
            .replace("{key_id}", key_id)
            + query;
        let admin_status = if method == M::POST && !template.ends_with("/credits") {
            201
        } else if method == M::DELETE && !template.ends_with("/endpoints") {
            204
        } else {
            200
        };
        Row {
            method,
            template,
            path,
            body,
            admin_status,
        }
    };
    let (user, sub, acme) = (encode(user_id), encode(subscription_id), "?tenant_id=acme");
    let tenant = json!({"id": "matrix", "name": "Matrix"});
    let top_up = json!({"amount": 10, "reason": "matrix"});
    let set = json!({"balance": 5000, "reason": "matrix"});
    let plan = json!({"id": "spare", "name": "Spare", "monthly_credits": 10});
    let subscription = json!({"tenant_id": "zeta", "plan_id": "basic"});
    let service = json!({"name": "matrix", "upstream": upstream,
        "endpoints": [{"method": "GET", "path": "/x", "credits": 1}]});
    let endpoint = |credits: i64| json!({"method": "GET", "path": "/extra", "credits": credits});
    vec![
        row(M::POST, "/admin/tenants", "", Some(tenant)),
        row(M::GET, "/admin/tenants", "", None),
        row(M::GET, "/admin/tenants/{id}", "acme", None),
        row(M::PATCH, "/admin/tenants/{id}", "acme", Some(json!({"name": "Acme Inc"}))),
        row(M::POST, "/admin/tenants/{id}/credits", "acme", Some(top_up)),
        row(M::PUT, "/admin/tenants/{id}/credits", "acme", Some(set)),
        row(M::GET, "/admin/tenants/{id}/credits/transactions", "acme", None),
        row(M::POST, "/admin/tenants/{id}/keys", "acme", Some(json!({"name": "matrix"}))),
        row(M::GET, "/admin/tenants/{id}/keys", "acme", None),
        row(M::PATCH, "/admin/tenants/{id}/keys/{key_id}", "acme", Some(json!({"name": "renamed"}))),
        row(M::POST, "/admin/tenants/{id}/keys/{key_id}/roll", "acme", Some(json!({"overlap_secs": 60}))),
        row(M::DELETE, "/admin/tenants/{id}/keys/{key_id}", "acme", None),
        row(M::GET, "/admin/users", acme, None),
        row(M::GET, "/admin/users/{id}", &user, None),
        row(M::PATCH, "/admin/users/{id}", &user, Some(json!({"disabled": false}))),
        row(M::POST, "/admin/plans", "", Some(plan)),
        row(M::GET, "/admin/plans", "", None),
        row(M::GET, "/admin/plans/{id}", "basic", None),
        row(M::PATCH, "/admin/plans/{id}", "basic", Some(json!({"name": "Basic+"}))),
        row(M::DELETE, "/admin/plans/{id}", "spare", None),
        row(M::POST, "/admin/subscriptions", "", Some(subscription)),
        row(M::GET, "/admin/subscriptions", acme, None),
        row(M::GET, "/admin/subscriptions/{id}", &sub, None),
        row(M::PATCH, "/admin/subscriptions/{id}", &sub, Some(json!({"status": "cancelled"}))),
        row(M::DELETE, "/admin/subscriptions/{id}", &sub, None),
        row(M::POST, "/admin/services", "", Some(service)),
        row(M::GET, "/admin/services", "", None),
        row(M::GET, "/admin/services/{name}", "notes", None),
        row(M::PATCH, "/admin/services/{name}", "matrix", Some(json!({"refund_on_5xx": true}))),
        row(M::POST, "/admin/services/{name}/endpoints", "matrix", Some(endpoint(1))),
        row(M::PUT, "/admin/services/{name}/endpoints", "matrix", Some(endpoint(2))),
        row(M::DELETE, "/admin/services/{name}/endpoints", "matrix?method=GET&path=%2Fextra", None),
        row(M::DELETE, "/admin/services/{name}", "matrix", None),
        row(M::GET, "/admin/usage-logs", acme, None),
        row(M::GET, "/admin/summaries", acme, None),
        row(M::GET, "/admin/invoices", acme, None),
        row(M::GET, "/admin/notifications", acme, None),
        row(M::GET, "/admin/tenants/{id}/usage/series", "acme", None),
        row(M::GET, "/admin/reports/activity", "", None),
        row(M::GET, "/admin/ops/metrics", "", None),
    ]
}

/// Anonymous and user attempts come first on every row, so an admin create that answers
/// 201 (not 409) also proves the refused attempts wrote nothing.
async fn admin_routes_answer_401_without_a_token_403_to_users_and_2xx_to_admins(store: StoreKind) {
    let s = Setup::new(&store, Ledger::Embedded).await;
    let user = s.sign_up("matrix@example.com", "Matrix Co").await;
    let plan = json!({"id": "basic", "name": "Basic", "monthly_credits": 100});
    let plan = s.as_admin(Method::POST, "/admin/plans", Some(plan)).await;
    assert_eq!(plan.status, 201, "{plan:?}");
    let subscription = json!({"tenant_id": "acme", "plan_id": "basic"});
    let subscription = s
        .as_admin(Method::POST, "/admin/subscriptions", Some(subscription))
        .await;
    assert_eq!(subscription.status, 201, "{subscription:?}");
    let key = json!({"name": "for the matrix"});
    let key = s
        .as_admin(Method::POST, "/admin/tenants/acme/keys", Some(key))
        .await;
    assert_eq!(key.status, 201, "{key:?}");
    let rows = admin_rows(
        &user.user,
        &text(&subscription.body["id"]),
        &text(&key.body["id"]),
        &s.upstream.url(),
    );
    let covered: HashSet<(&str, &str)> = rows
        .iter()
        .map(|r| (r.method.as_str(), r.template))
        .collect();
    let documented: HashSet<(&str, &str)> = ROUTES
        .iter()
        .copied()
        .filter(|(_, path)| path.starts_with("/admin"))
        .collect();
    assert_eq!(covered, documented, "the matrix covers every admin route");

    for row in &rows {
        let what = format!("{} {}", row.method, row.path);
        for bearer in [None, Some("not.a.jwt")] {
            let answer = s
                .api(row.method.clone(), &row.path, bearer, row.body.clone())
                .await;
            assert_problem(&answer, &[401], &format!("{what} with {bearer:?}"));
        }
        let answer = s
            .api(
                row.method.clone(),
                &row.path,
                Some(user.token.as_str()),
                row.body.clone(),
            )
            .await;
        assert_problem(&answer, &[403], &format!("{what} by a user"));
        let answer = s
            .as_admin(row.method.clone(), &row.path, row.body.clone())
            .await;
        assert_eq!(answer.status, row.admin_status, "{what}: {answer:?}");
    }
    for route in ME_ROUTES {
        let answer = s.api(Method::GET, route, None, None).await;
        assert_problem(&answer, &[401], &format!("{route} without a token"));
    }
}

/// The ids of everything the admin API lists for `tenant`.
async fn owned_ids(s: &Setup, tenant: &str) -> HashSet<String> {
    let tenant = encode(tenant);
    let mut owned = HashSet::new();
    for path in [
        format!("/admin/invoices?tenant_id={tenant}"),
        format!("/admin/notifications?tenant_id={tenant}"),
        format!("/admin/usage-logs?tenant_id={tenant}&limit=1000"),
        format!("/admin/subscriptions?tenant_id={tenant}"),
        format!("/admin/tenants/{tenant}/credits/transactions"),
        format!("/admin/tenants/{tenant}/keys"),
    ] {
        let answer = s.as_admin(Method::GET, &path, None).await;
        assert_eq!(answer.status, 200, "{path}: {answer:?}");
        owned.extend(ids(&answer.body));
    }
    owned
}

/// Tenant A gets calls, a top-up, a subscription and a low-credit threshold it is under;
/// B only its sign-up. Each user, asking every `/me` route plainly or naming the other
/// tenant (query, header), sees its own tenant only; no admin route opens to either.
async fn me_routes_show_each_user_only_its_own_tenant(store: StoreKind) {
    let s = Setup::new(&store, Ledger::Embedded).await;
    let a = s.sign_up("ann@a.example", "Tenant A").await;
    let b = s.sign_up("ben@b.example", "Tenant B").await;
    let a_path = encode(&a.tenant);
    for (method, path, body) in [
        (
            Method::POST,
            "/admin/plans".to_owned(),
            json!({"id": "gold", "name": "Gold", "monthly_credits": 500}),
        ),
        (
            Method::POST,
            "/admin/subscriptions".to_owned(),
            json!({"tenant_id": a.tenant, "plan_id": "gold"}),
        ),
        (
            Method::PATCH,
            format!("/admin/tenants/{a_path}"),
            json!({"low_credit_threshold": INITIAL}),
        ),
        (
            Method::POST,
            format!("/admin/tenants/{a_path}/credits"),
            json!({"amount": 25, "reason": "goodwill"}),
        ),
        (
            Method::POST,
            format!("/admin/tenants/{a_path}/keys"),
            json!({"name": "A's key"}),
        ),
    ] {
        let answer = s.as_admin(method, &path, Some(body)).await;
        assert!(matches!(answer.status, 200 | 201), "{path}: {answer:?}");
    }
    for _ in 0..5 {
        assert_eq!(expensive(&s.gateway, &a.token).await.status(), 200);
    }
    let a_logs = format!("/admin/usage-logs?tenant_id={a_path}");
    wait_until(
        "A's five calls in the usage logs",
        LOG_DEADLINE,
        async || {
            let logs = s.as_admin(Method::GET, &a_logs, None).await;
            logs.body["items"].as_array().map_or(0, Vec::len) == 5
        },
    )
    .await;

    let a_balance = SIGNUP_CREDITS + 500 + 25 - 5 * EXPENSIVE;
    for (me, other, balance, calls) in [(&a, &b, a_balance, 5), (&b, &a, SIGNUP_CREDITS, 0)] {
        let others = owned_ids(&s, &other.tenant).await;
        let smuggled = format!("?tenant_id={}", encode(&other.tenant));
        for route in ME_ROUTES {
            for (how, query, header) in [
                ("plainly", "", false),
                (
                    "naming the other tenant in the query",
                    smuggled.as_str(),
                    false,
                ),
                ("naming the other tenant in X-Tenant-Id", "", true),
            ] {
                let mut request = client()
                    .get(s.gateway.admin_url(&format!("{route}{query}")))
                    .bearer_auth(me.token.as_str());
                if header {
                    request = request.header("x-tenant-id", other.tenant.as_str());
                }
                let answer = Answer::read(request.send().await.unwrap()).await;
                let what = format!("{} asking {route} {how}", me.email);
                let allowed: &[u16] = if query.is_empty() {
                    &[200]
                } else {
                    &[200, 400]
                };
                assert!(allowed.contains(&answer.status), "{what}: {answer:?}");
                let mut seen = Vec::new();
                tenant_ids(&answer.body, &mut seen);
                assert!(
                    seen.iter().all(|t| *t == me.tenant),
                    "{what} shows another tenant: {answer:?}"
                );
                assert!(
                    ids(&answer.body).is_disjoint(&others),
                    "{what} shows the other tenant's items: {answer:?}"
                );
            }
        }
        let token = Some(me.token.as_str());
        let profile = s.api(Method::GET, "/me", token, None).await;
        assert_eq!(profile.body["user_id"], me.user, "{profile:?}");
        assert_eq!(profile.body["email"], me.email, "{profile:?}");
        assert_eq!(profile.body["tenant_id"], me.tenant, "{profile:?}");
        assert_eq!(profile.body["role"], "user", "{profile:?}");
        let wallet = s.api(Method::GET, "/me/balance", token, None).await;
        assert_eq!(wallet.body["tenant_id"], me.tenant, "{wallet:?}");
        assert_eq!(wallet.body["balance"], balance, "{wallet:?}");
        let usage = s.api(Method::GET, "/me/usage", token, None).await;
        assert_eq!(usage.body["tenant_id"], me.tenant, "{usage:?}");
        assert_eq!(usage.body["calls"], calls, "{usage:?}");
        assert_eq!(usage.body["credits"], calls * EXPENSIVE, "{usage:?}");
        let lines = usage.body["lines"].as_array().map_or(0, Vec::len);
        assert_eq!(lines, usize::from(calls > 0), "{usage:?}");
    }

    for path in [
        format!("/admin/tenants/{a_path}"),
        format!("/admin/tenants/{a_path}/credits/transactions"),
        format!("/admin/usage-logs?tenant_id={a_path}"),
        format!("/admin/invoices?tenant_id={a_path}"),
        format!("/admin/notifications?tenant_id={a_path}"),
    ] {
        for user in [&a, &b] {
            let answer = s
                .api(Method::GET, &path, Some(user.token.as_str()), None)
                .await;
            assert_problem(&answer, &[403], &format!("{} asking {path}", user.email));
        }
    }
}

/// 300 concurrent calls of cost 7 against a balance of 1000, while five top-ups land at
/// marks spread over the burst: every credit is accounted for.
async fn top_ups_during_a_burst(store: StoreKind, ledger: Ledger) {
    const TOP_UPS: [i64; 5] = [50, 60, 70, 80, 90];
    let s = Setup::new(&store, ledger).await;
    let account = s.sign_up("burst@example.com", "Burst").await;
    let http = client();
    let calls = (0..300).map(|_| {
        let request = http
            .post(s.gateway.url("/api/proxy/notes/expensive"))
            .bearer_auth(account.token.as_str());
        async move { request.send().await.unwrap().status().as_u16() }
    });
    let (setup, tenant) = (&s, account.tenant.as_str());
    let top_ups = TOP_UPS.iter().enumerate().map(|(i, &amount)| async move {
        // The first 142 calls are covered by the starting balance, so every mark is reached.
        let mark = 30 * i as u64;
        wait_until("the burst to pass a mark", LOG_DEADLINE, async || {
            setup.upstream.requests() >= mark
        })
        .await;
        let body = json!({"amount": amount, "reason": format!("burst top-up {i}")});
        let path = format!("/admin/tenants/{}/credits", encode(tenant));
        setup.as_admin(Method::POST, &path, Some(body)).await
    });
    let (statuses, top_ups) = tokio::join!(
        futures_util::future::join_all(calls),
        futures_util::future::join_all(top_ups)
    );

    assert!(
        statuses.iter().all(|status| matches!(status, 200 | 402)),
        "{statuses:?}"
    );
    let ok = statuses.iter().filter(|status| **status == 200).count();
    assert_eq!(
        s.upstream.requests(),
        ok as u64,
        "only paid calls go through"
    );
    let expected = SIGNUP_CREDITS + TOP_UPS.iter().sum::<i64>() - EXPENSIVE * ok as i64;
    assert_eq!(
        s.balance_of(tenant).await,
        expected,
        "{ok} calls went through"
    );
    let wallet = s
        .api(
            Method::GET,
            "/me/balance",
            Some(account.token.as_str()),
            None,
        )
        .await;
    assert_eq!(wallet.body["balance"], expected, "{wallet:?}");

    let path = format!("/admin/tenants/{}/credits/transactions", encode(tenant));
    let transactions = s.as_admin(Method::GET, &path, None).await;
    for (i, (amount, answer)) in TOP_UPS.iter().zip(&top_ups).enumerate() {
        assert_eq!(answer.status, 200, "top-up {i}: {answer:?}");
        assert_eq!(answer.body["tenant_id"], tenant, "{answer:?}");
        assert_eq!(answer.body["amount"], *amount, "{answer:?}");
        let reason = format!("burst top-up {i}");
        let row = items(&transactions.body)
            .iter()
            .find(|t| t["reason"] == reason.as_str())
            .unwrap_or_else(|| panic!("no {reason:?} in {transactions:?}"));
        assert_eq!(row["amount"], *amount, "{row}");
        assert_eq!(row["id"], answer.body["transaction_id"], "{row}");
        assert_eq!(row["tenant_id"], tenant, "{row}");
    }
}

async fn top_ups_during_a_burst_are_never_lost_on_the_embedded_ledger(store: StoreKind) {
    top_ups_during_a_burst(store, Ledger::Embedded).await;
}

async fn top_ups_during_a_burst_are_never_lost_on_redis(store: StoreKind) {
    top_ups_during_a_burst(store, Ledger::Redis).await;
}

async fn a_suspended_tenant_is_refused_within_two_seconds_and_served_once_active(store: StoreKind) {
    let s = Setup::new(&store, Ledger::Embedded).await;
    let acme = token("acme", "u1");
    assert_eq!(cheap(&s.gateway, &acme).await.status(), 200);

    let suspend = json!({"status": "suspended"});
    let suspended = s
        .as_admin(Method::PATCH, "/admin/tenants/acme", Some(suspend))
        .await;
    let since = Instant::now();
    assert_eq!(suspended.status, 200, "{suspended:?}");
    assert_eq!(suspended.body["status"], "suspended");
    wait_until(
        "the gateway to refuse acme",
        PROPAGATION_DEADLINE,
        async || cheap(&s.gateway, &acme).await.status() == 403,
    )
    .await;
    assert_prompt(since, "the suspension");
    let balance = s.balance_of("acme").await;
    let refused = Answer::read(cheap(&s.gateway, &acme).await).await;
    assert_problem(&refused, &[403], "a suspended tenant's call");
    assert_eq!(
        s.balance_of("acme").await,
        balance,
        "a refused call is free"
    );
    assert_eq!(
        cheap(&s.gateway, &token("zeta", "u2")).await.status(),
        200,
        "other tenants are served"
    );

    let resume = json!({"status": "active"});
    let resumed = s
        .as_admin(Method::PATCH, "/admin/tenants/acme", Some(resume))
        .await;
    let since = Instant::now();
    assert_eq!(resumed.body["status"], "active", "{resumed:?}");
    wait_until(
        "the gateway to serve acme again",
        PROPAGATION_DEADLINE,
        async || cheap(&s.gateway, &acme).await.status() == 200,
    )
    .await;
    assert_prompt(since, "the reactivation");
}

async fn setting_a_balance_records_the_difference(store: StoreKind) {
    let s = Setup::new(&store, Ledger::Embedded).await;
    let acme = token("acme", "u1");
    assert_eq!(expensive(&s.gateway, &acme).await.status(), 200);
    let previous = s.balance_of("acme").await;
    assert_eq!(previous, INITIAL - EXPENSIVE);

    let body = json!({"balance": 50, "reason": "reset to 50"});
    let set = s
        .as_admin(Method::PUT, "/admin/tenants/acme/credits", Some(body))
        .await;
    assert_eq!(set.status, 200, "{set:?}");
    assert_eq!(set.body["tenant_id"], "acme", "{set:?}");
    assert_eq!(set.body["balance"], 50, "{set:?}");
    assert_eq!(set.body["amount"], 50 - previous, "{set:?}");
    assert_eq!(s.balance_of("acme").await, 50);

    let transactions = s
        .as_admin(
            Method::GET,
            "/admin/tenants/acme/credits/transactions",
            None,
        )
        .await;
    let row = items(&transactions.body)
        .iter()
        .find(|t| t["id"] == set.body["transaction_id"])
        .unwrap_or_else(|| panic!("no transaction of {set:?} in {transactions:?}"));
    assert_eq!(row["amount"], 50 - previous, "{row}");
    assert_eq!(row["balance_after"], 50, "{row}");
    assert_eq!(row["reason"], "reset to 50", "{row}");
    assert_eq!(row["tenant_id"], "acme", "{row}");
    assert!(
        row["actor"].as_str().is_some_and(|a| !a.is_empty()),
        "{row}"
    );
    let call = cheap(&s.gateway, &acme).await;
    assert_eq!(header_i64(&call, "x-credits-remaining"), Some(50 - CHEAP));
}

/// What a refused request could have touched, lists sorted so order cannot differ.
async fn snapshot(s: &Setup) -> Value {
    let mut state = serde_json::Map::new();
    for path in [
        "/admin/services",
        "/admin/services/notes",
        "/admin/tenants",
        "/admin/tenants/acme",
        "/admin/tenants/acme/credits/transactions",
        "/admin/users",
    ] {
        let answer = s.as_admin(Method::GET, path, None).await;
        assert_eq!(answer.status, 200, "{path}: {answer:?}");
        let mut body = answer.body;
        if let Some(list) = body.get_mut("items").and_then(Value::as_array_mut) {
            list.sort_by_key(|item| item.to_string());
        }
        state.insert(path.to_owned(), body);
    }
    Value::Object(state)
}

async fn invalid_bodies_are_refused_naming_the_field_and_write_nothing(store: StoreKind) {
    use reqwest::Method as M;
    let s = Setup::new(&store, Ledger::Embedded).await;
    let up = s.upstream.url();
    let endpoints = json!([{"method": "GET", "path": "/x", "credits": 1}]);
    let priced = |credits: Value| {
        let endpoint = json!({"method": "GET", "path": "/x", "credits": credits});
        json!({"name": "bad", "upstream": up, "endpoints": [endpoint]})
    };
    let aimed =
        |upstream: &str| json!({"name": "bad", "upstream": upstream, "endpoints": endpoints});
    let balance = s.balance_of("acme").await;
    let before = snapshot(&s).await;

    let (services, credits, register) = (
        "/admin/services",
        "/admin/tenants/acme/credits",
        "/auth/register",
    );
    let moved = |amount: Value| json!({"amount": amount, "reason": "x"});
    let repriced = json!({"endpoints": [{"method": "GET", "path": "/cheap", "credits": -1}]});
    #[rustfmt::skip]
    let cases = [
        ("a service without a name", M::POST, services, json!({"upstream": up, "endpoints": endpoints}), "name"),
        ("a negative price", M::POST, services, priced(json!(-1)), "endpoints[0].credits"),
        ("a price over 1,000,000", M::POST, services, priced(json!(1_000_001)), "endpoints[0].credits"),
        ("a price as a string", M::POST, services, priced(json!("five")), "endpoints[0].credits"),
        ("an ftp upstream", M::POST, services, aimed("ftp://x"), "upstream"),
        ("an upstream that is no URL", M::POST, services, aimed("not a url"), "upstream"),
        ("a negative price by PATCH", M::PATCH, "/admin/services/notes", repriced, "endpoints[0].credits"),
        ("a PUT of an endpoint the service lacks", M::PUT, "/admin/services/notes/endpoints", json!({"method": "GET", "path": "/nowhere", "credits": 1}), "path"),
        ("an unknown tenant status", M::PATCH, "/admin/tenants/acme", json!({"status": "frozen"}), "status"),
        ("an amount of 1e20", M::POST, credits, moved(json!(1e20)), "amount"),
        ("an amount of i64::MAX", M::POST, credits, moved(json!(i64::MAX)), "amount"),
        ("an amount of 0", M::POST, credits, moved(json!(0)), "amount"),
        ("a top-up past the maximum", M::POST, credits, moved(json!(MAX_BALANCE - balance + 1)), "amount"),
        ("a debit below zero", M::POST, credits, moved(json!(-(balance + 1))), "amount"),
        ("a balance past the maximum", M::PUT, credits, json!({"balance": MAX_BALANCE + 1, "reason": "x"}), "balance"),
        ("a bad email", M::POST, register, registration("not an email", PASSWORD, "Bad"), "email"),
        ("a short password", M::POST, register, registration("short@example.com", "seven77", "Bad"), "password"),
        ("an empty tenant name", M::POST, register, registration("empty@example.com", PASSWORD, ""), "tenant_name"),
    ];
    for (what, method, path, body, field) in cases {
        let bearer = path.starts_with("/admin").then_some(s.admin_token.as_str());
        let answer = s.api(method, path, bearer, Some(body)).await;
        assert_problem(&answer, &[400, 422], what);
        assert_eq!(answer.body["field"], field, "{what}: {answer:?}");
    }

    let unknown = json!({"nme": "bad", "upstream": up, "endpoints": endpoints});
    let unknown = s.as_admin(Method::POST, services, Some(unknown)).await;
    assert_problem(&unknown, &[400, 422], "an unknown field");
    assert_eq!(
        unknown.body["field"], "nme",
        "the problem names the unknown field: {unknown:?}"
    );
    let raw = |content_type: &str, body: Vec<u8>| {
        client()
            .post(s.gateway.admin_url(services))
            .bearer_auth(s.admin_token.as_str())
            .header("content-type", content_type)
            .body(body)
    };
    let garbage = raw("application/json", b"{not json".to_vec()).send();
    let garbage = Answer::read(garbage.await.unwrap()).await;
    assert_problem(&garbage, &[400], "a body that is not JSON");
    let valid = json!({"name": "plain", "upstream": up, "endpoints": endpoints});
    let valid = serde_json::to_vec(&valid).unwrap();
    let plain = Answer::read(raw("text/plain", valid).send().await.unwrap()).await;
    assert_problem(&plain, &[400, 415], "a text/plain body");
    let huge = json!({"name": "h".repeat(1 << 20), "upstream": up, "endpoints": endpoints});
    let huge = serde_json::to_vec(&huge).unwrap();
    let huge = Answer::read(raw("application/json", huge).send().await.unwrap()).await;
    assert_problem(&huge, &[413, 400], "a 1 MB body");
    // Query parameters are refused the same way: a problem naming the parameter.
    for (query, field) in [
        ("/admin/usage-logs?limit=abc", "limit"),
        ("/admin/usage-logs?tenant_id=a&tenant_id=b", "tenant_id"),
        ("/admin/services/notes/endpoints?method=GET", "path"),
    ] {
        let method = if query.contains("endpoints") {
            Method::DELETE
        } else {
            Method::GET
        };
        let answer = s.as_admin(method, query, None).await;
        assert_problem(&answer, &[422], query);
        assert_eq!(answer.body["field"], field, "{query}: {answer:?}");
    }
    // A whole number written as a float is that number (JSON Schema's integers include it).
    let floated = json!({"name": "floated", "upstream": up,
        "endpoints": [{"method": "GET", "path": "/x", "credits": 3.0}]});
    let floated = s.as_admin(Method::POST, services, Some(floated)).await;
    assert_eq!(floated.status, 201, "{floated:?}");
    assert_eq!(floated.body["endpoints"][0]["credits"], 3);
    let deleted = s
        .as_admin(Method::DELETE, "/admin/services/floated", None)
        .await;
    assert_eq!(deleted.status, 204, "{deleted:?}");

    assert_eq!(
        snapshot(&s).await,
        before,
        "a refused request wrote something"
    );
}

/// 25 calls for acme, interleaved with zeta's, paged 10 at a time.
async fn usage_logs_page_oldest_first_until_the_cursor_runs_out(store: StoreKind) {
    let s = Setup::new(&store, Ledger::Embedded).await;
    let (acme, zeta) = (token("acme", "u1"), token("zeta", "u2"));
    let mut sent = Vec::new();
    for i in 0..25 {
        let call = cheap(&s.gateway, &acme).await;
        assert_eq!(call.status(), 200);
        sent.push(call.headers()["x-request-id"].to_str().unwrap().to_owned());
        if i % 5 == 0 {
            assert_eq!(cheap(&s.gateway, &zeta).await.status(), 200);
        }
    }
    wait_until("all 30 usage logs", LOG_DEADLINE, async || {
        let all = s
            .as_admin(Method::GET, "/admin/usage-logs?limit=1000", None)
            .await;
        all.body["items"].as_array().map_or(0, Vec::len) >= 30
    })
    .await;

    let (mut got, mut pages, mut cursor) = (Vec::new(), Vec::new(), None::<String>);
    loop {
        let mut path = "/admin/usage-logs?tenant_id=acme&limit=10".to_owned();
        if let Some(cursor) = &cursor {
            write!(path, "&cursor={}", encode(cursor)).unwrap();
        }
        let page = s.as_admin(Method::GET, &path, None).await;
        assert_eq!(page.status, 200, "{path}: {page:?}");
        assert!(page.body.get("next_cursor").is_some(), "{page:?}");
        pages.push(items(&page.body).len());
        got.extend(items(&page.body).iter().cloned());
        assert!(pages.len() <= 3, "25 logs take 3 pages of 10: {pages:?}");
        match &page.body["next_cursor"] {
            Value::Null => break,
            Value::String(next) => cursor = Some(next.clone()),
            other => panic!("next_cursor is {other}"),
        }
    }
    assert_eq!(pages, [10, 10, 5]);
    assert!(got.iter().all(|log| log["tenant_id"] == "acme"), "{got:?}");
    let order: Vec<&str> = got
        .iter()
        .map(|log| log["request_id"].as_str().unwrap_or(""))
        .collect();
    assert_eq!(order, sent, "each log once, oldest first");
}

/// Two gateways on one Redis and one MongoDB: what one's admin API changes, the other
/// charges for within 2 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_price_change_on_one_gateway_is_charged_by_another_within_two_seconds() {
    const NEW_PRICE: i64 = 5;
    let Some(uri) = common::mongo_uri() else {
        return;
    };
    let upstream = Upstream::start().await;
    let redis = RedisServer::start();
    let mut env = StoreKind::Mongo {
        uri,
        db: common::unique_db(),
    }
    .env();
    env.push(("TOLLGATE_REDIS_URL".into(), redis.url()));
    let yaml = yaml(&upstream.url());
    let (a, b) = (
        Gateway::start_with(&yaml, env.clone()),
        Gateway::start_with(&yaml, env),
    );
    let admin = admin_token("ops", "root");
    let acme = token("acme", "u1");
    let first = cheap(&b, &acme).await;
    assert_eq!(header_i64(&first, "x-credits-cost"), Some(CHEAP));

    let repriced = json!({"endpoints": [
        {"method": "GET", "path": "/cheap", "credits": NEW_PRICE},
        {"method": "POST", "path": "/expensive", "credits": EXPENSIVE},
    ]});
    let patched = send(
        &a.admin_url("/admin/services/notes"),
        Method::PATCH,
        Some(admin.as_str()),
        Some(repriced),
    )
    .await;
    let since = Instant::now();
    assert_eq!(patched.status, 200, "{patched:?}");
    assert!(
        patched.body["endpoints"].as_array().is_some_and(|list| list
            .iter()
            .any(|e| e["path"] == "/cheap" && e["credits"] == NEW_PRICE)),
        "{patched:?}"
    );
    wait_until(
        "gateway B to charge the new price",
        PROPAGATION_DEADLINE,
        async || header_i64(&cheap(&b, &acme).await, "x-credits-cost") == Some(NEW_PRICE),
    )
    .await;
    assert_prompt(since, "the new price");
    wait_until(
        "gateway A to charge the new price",
        PROPAGATION_DEADLINE,
        async || header_i64(&cheap(&a, &acme).await, "x-credits-cost") == Some(NEW_PRICE),
    )
    .await;

    // A service created on A's admin API serves on both; deleted on B's, it is gone from both.
    let fresh = |gateway: &Gateway| {
        client()
            .get(gateway.url("/api/proxy/fresh/hello"))
            .bearer_auth(acme.as_str())
            .send()
    };
    for gateway in [&a, &b] {
        assert_eq!(fresh(gateway).await.unwrap().status(), 404);
    }
    let service = json!({"name": "fresh", "upstream": upstream.url(),
        "endpoints": [{"method": "ANY", "path": "/*", "credits": 3}]});
    let created = send(
        &a.admin_url("/admin/services"),
        Method::POST,
        Some(admin.as_str()),
        Some(service),
    )
    .await;
    assert_eq!(created.status, 201, "{created:?}");
    for gateway in [&a, &b] {
        wait_until(
            "the new service on a gateway",
            PROPAGATION_DEADLINE,
            async || {
                let r = fresh(gateway).await.unwrap();
                r.status() == 200 && header_i64(&r, "x-credits-cost") == Some(3)
            },
        )
        .await;
    }
    let deleted = send(
        &b.admin_url("/admin/services/fresh"),
        Method::DELETE,
        Some(admin.as_str()),
        None,
    )
    .await;
    assert_eq!(deleted.status, 204, "{deleted:?}");
    for gateway in [&a, &b] {
        wait_until(
            "the deleted service gone from a gateway",
            PROPAGATION_DEADLINE,
            async || fresh(gateway).await.unwrap().status() == 404,
        )
        .await;
    }
    let gone = send(
        &a.admin_url("/admin/services/fresh"),
        Method::GET,
        Some(admin.as_str()),
        None,
    )
    .await;
    assert_problem(&gone, &[404], "a deleted service");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openapi_document_describes_every_documented_route() {
    let s = Setup::new(&StoreKind::Sqlite, Ledger::Embedded).await;
    let answer = s.api(Method::GET, "/openapi.json", None, None).await;
    assert_eq!(answer.status, 200, "{answer:?}");
    let doc = answer.body;
    assert!(
        doc["openapi"]
            .as_str()
            .is_some_and(|v| v.starts_with("3.1")),
        "OpenAPI 3.1: {}",
        doc["openapi"]
    );
    assert!(doc["info"]["title"].is_string() && doc["info"]["version"].is_string());
    let paths = doc["paths"].as_object().expect("a paths object");
    let missing: Vec<String> = ROUTES
        .iter()
        .filter(|(method, path)| {
            !paths
                .get(*path)
                .and_then(|item| item.get(method.to_lowercase().as_str()))
                .is_some_and(|operation| operation["responses"].is_object())
        })
        .map(|(method, path)| format!("{method} {path}"))
        .collect();
    assert!(missing.is_empty(), "not in /openapi.json: {missing:?}");
    // The answers every operation shares are documented, as problem documents.
    let create = &paths["/admin/tenants"]["post"]["responses"];
    for status in ["401", "403", "400", "413", "415", "422", "503"] {
        assert!(
            create[status]["content"]["application/problem+json"].is_object(),
            "POST /admin/tenants documents {status} as a problem: {create}"
        );
    }
    let mut ids = HashSet::new();
    for item in paths.values() {
        for operation in item.as_object().into_iter().flat_map(|o| o.values()) {
            if let Some(id) = operation["operationId"].as_str() {
                assert!(ids.insert(id.to_owned()), "operationId {id} is used twice");
            }
        }
    }
}

macro_rules! on_both_stores {
    ($($test:ident),* $(,)?) => {
        mod sqlite {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $test() { super::$test(super::StoreKind::Sqlite).await })*
        }
        mod mongo {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $test() {
                let Some(uri) = super::common::mongo_uri() else {
                    return;
                };
                let db = super::common::unique_db();
                super::$test(super::StoreKind::Mongo { uri, db }).await
            })*
        }
    };
}

on_both_stores!(
    a_new_user_registers_logs_in_and_pays_for_a_call,
    admin_routes_answer_401_without_a_token_403_to_users_and_2xx_to_admins,
    me_routes_show_each_user_only_its_own_tenant,
    top_ups_during_a_burst_are_never_lost_on_the_embedded_ledger,
    top_ups_during_a_burst_are_never_lost_on_redis,
    a_suspended_tenant_is_refused_within_two_seconds_and_served_once_active,
    setting_a_balance_records_the_difference,
    invalid_bodies_are_refused_naming_the_field_and_write_nothing,
    usage_logs_page_oldest_first_until_the_cursor_runs_out,
);
