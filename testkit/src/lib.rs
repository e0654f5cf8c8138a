//! The integration harness of the workspace's tests: real servers on free loopback ports,
//! one set per test, so tests stay hermetic and parallel-safe. The root crate's contract
//! suites (`tests/`) and the end-to-end suites of the binary (`cli/tests/`) share it.
//!
//! - [`RedisServer`]: a `redis-server` child process (pause, resume, kill, restart);
//!   [`cluster::RedisCluster`]: six of them as one Redis Cluster.
//! - [`Upstream`]: the echo upstream (`tollgate::demo_upstream`) in this test process,
//!   counting what reaches it.
//! - [`Gateway`]: the `tollgate` binary itself, started with a generated config.
//! - [`browser::Browser`]: headless Chromium driven over WebDriver (`chromedriver`).
//!
//! Readiness is polled with a deadline, never slept for.

pub mod browser;
pub mod cluster;
pub mod gate;
pub mod jwks;
pub mod llm;
pub mod mqtt;
pub mod raw;
pub mod store;

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tollgate::auth::{self, Role};
use tollgate::config::AuthConfig;
use tollgate::demo_upstream::Counters;

/// The HS256 secret of every test gateway (32+ bytes, so distributed mode accepts it).
pub const SECRET: &str = "tollgate-integration-tests-secret-0123456789";

/// The `tollgate` binary under test: `TOLLGATE_BIN` when set, else the one Cargo built
/// beside the running test (`target/<profile>/tollgate`; a test runs from
/// `target/<profile>/deps/`, and Cargo builds a package's binaries before its integration
/// tests).
pub fn tollgate_bin() -> PathBuf {
    if let Some(path) = std::env::var_os("TOLLGATE_BIN") {
        return PathBuf::from(path);
    }
    let exe = std::env::current_exe().expect("the test executable's path");
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("a test executable under target/<profile>/deps");
    let bin = profile_dir.join("tollgate");
    assert!(
        bin.exists(),
        "{} is missing: build the tollgate binary (cargo build -p tollgate-cli) or set TOLLGATE_BIN",
        bin.display()
    );
    bin
}

/// How long any server gets to become ready.
const READY_DEADLINE: Duration = Duration::from_secs(30);

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

/// Polls `ready` every 20 ms until it holds or `deadline` passes.
pub async fn wait_until(what: &str, deadline: Duration, mut ready: impl AsyncFnMut() -> bool) {
    let start = Instant::now();
    while !ready().await {
        assert!(
            start.elapsed() < deadline,
            "timed out after {deadline:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

pub fn wait_for_port(what: &str, port: u16, child: &mut Child) {
    if let Err(status) = listening(what, port, child) {
        panic!("{what} exited before listening: {status}");
    }
}

/// Polls until `port` accepts; the child's exit status if it exited first.
pub fn listening(what: &str, port: u16, child: &mut Child) -> Result<(), std::process::ExitStatus> {
    let start = Instant::now();
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        if let Ok(Some(status)) = child.try_wait() {
            return Err(status);
        }
        assert!(
            start.elapsed() < READY_DEADLINE,
            "{what} did not listen on {port}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

/// Sends `signal` to the process group `pid` leads.
pub fn signal_pid_group(pid: u32, signal: libc::c_int) {
    if let Ok(pid) = libc::pid_t::try_from(pid) {
        // SAFETY: kill(2) with a negative pid signals that process group; no memory is shared.
        unsafe {
            libc::kill(-pid, signal);
        }
    }
}

pub fn signal_pid(pid: u32, signal: libc::c_int) {
    // SAFETY: kill(2) on a pid of our own child has no memory-safety preconditions.
    let rc = unsafe { libc::kill(pid as libc::pid_t, signal) };
    assert_eq!(rc, 0, "kill({pid}, {signal})");
}

pub fn signal(child: &Child, signal: libc::c_int) {
    // SAFETY: kill(2) on our own child's pid has no memory-safety preconditions.
    let rc = unsafe { libc::kill(child.id() as libc::pid_t, signal) };
    assert_eq!(rc, 0, "kill({}, {signal})", child.id());
}

/// A private `redis-server` on a free port, killed on drop.
pub struct RedisServer {
    pub port: u16,
    child: Option<Child>,
}

impl RedisServer {
    pub fn start() -> RedisServer {
        let mut redis = RedisServer {
            port: 0,
            child: None,
        };
        // A port found free can be taken before redis-server binds it: it then exits, and
        // is started again on another.
        for attempt in 1.. {
            redis.port = free_port();
            match redis.try_spawn() {
                Ok(()) => break,
                Err(status) if attempt < 5 => eprintln!("redis-server exited ({status}); retrying"),
                Err(status) => panic!("redis-server exited before listening: {status}"),
            }
        }
        redis
    }

    fn spawn(&mut self) {
        if let Err(status) = self.try_spawn() {
            panic!("redis-server exited before listening: {status}");
        }
    }

    fn try_spawn(&mut self) -> Result<(), std::process::ExitStatus> {
        let mut child = Command::new("redis-server")
            .args([
                "--port",
                &self.port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server on PATH (apt-get install redis-server)");
        listening("redis-server", self.port, &mut child)?;
        self.child = Some(child);
        Ok(())
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    pub async fn connection(&self) -> redis::aio::MultiplexedConnection {
        let client = redis::Client::open(self.url()).unwrap();
        client.get_multiplexed_async_connection().await.unwrap()
    }

    pub async fn balance(&self, tenant: &str) -> Option<i64> {
        let mut conn = self.connection().await;
        redis::cmd("GET")
            .arg(format!("tg:{{{tenant}}}:bal"))
            .query_async(&mut conn)
            .await
            .unwrap()
    }

    /// SIGSTOP: the server keeps its sockets but answers nothing.
    pub fn pause(&self) {
        signal(self.child.as_ref().unwrap(), libc::SIGSTOP);
    }

    pub fn resume(&self) {
        signal(self.child.as_ref().unwrap(), libc::SIGCONT);
    }

    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// How many EVALSHA calls (scripts run) this server has served.
    pub async fn evalsha_calls(&self) -> u64 {
        let mut conn = self.connection().await;
        let stats: String = redis::cmd("INFO")
            .arg("commandstats")
            .query_async(&mut conn)
            .await
            .unwrap();
        evalsha_calls_in(&stats)
    }

    /// Starts a fresh (empty) server on the same port.
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        if let Some(child) = &self.child {
            // A paused server ignores SIGKILL until continued on some kernels' views; be sure.
            unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGCONT) };
        }
        self.kill();
    }
}

/// The EVALSHA count in an `INFO commandstats` answer.
pub fn evalsha_calls_in(stats: &str) -> u64 {
    stats
        .lines()
        .find_map(|l| l.strip_prefix("cmdstat_evalsha:calls="))
        .and_then(|rest| rest.split(',').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

/// The echo upstream, served from this test process.
pub struct Upstream {
    pub addr: SocketAddr,
    pub counters: Arc<Counters>,
    task: tokio::task::JoinHandle<()>,
}

impl Upstream {
    pub async fn start() -> Upstream {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let counters = Arc::new(Counters::default());
        let serving = Arc::clone(&counters);
        let task = tokio::spawn(async move {
            let _ = tollgate::demo_upstream::serve(listener, serving).await;
        });
        Upstream {
            addr,
            counters,
            task,
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn requests(&self) -> u64 {
        self.counters.requests()
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A `tollgate run` child process with its own config and data dir.
pub struct Gateway {
    pub port: u16,
    /// `/metrics`, `/healthz`, `/readyz`.
    pub metrics_port: u16,
    /// The admin API.
    pub admin_port: u16,
    /// The in-process MQTT broker (when the test sets no `TOLLGATE_MQTT_URL`).
    pub mqtt_port: u16,
    pub dir: PathBuf,
    child: Option<Child>,
    env: Vec<(String, String)>,
}

impl Gateway {
    /// Starts the gateway with `yaml` (services, tenants, ...) on a fresh data dir.
    pub fn start(yaml: &str, redis_url: Option<String>) -> Gateway {
        let env = redis_url.map(|url| ("TOLLGATE_REDIS_URL".to_owned(), url));
        Gateway::start_with(yaml, env.into_iter().collect())
    }

    /// Starts the gateway with extra environment (`TOLLGATE_MONGODB_URI`, ...).
    pub fn start_with(yaml: &str, env: Vec<(String, String)>) -> Gateway {
        let dir = std::env::temp_dir().join(format!("tollgate-test-{}", uuid::Uuid::now_v7()));
        std::fs::create_dir_all(&dir).unwrap();
        // Fast stops by default; a test that needs a grace period sets its own.
        let grace = if yaml.contains("grace_period_secs") {
            ""
        } else {
            "grace_period_secs: 0\n"
        };
        // The scheduler writes summaries and invoices on its own time: only where asked.
        let scheduler = if yaml.contains("scheduler:") {
            ""
        } else {
            "scheduler:\n  enabled: false\n"
        };
        // The tests' tokens are signed with SECRET: an `auth` section of the test's own
        // gets it too.
        let (auth, yaml) = if yaml.starts_with("auth:\n") {
            (
                "",
                yaml.replacen("auth:\n", &format!("auth:\n  secret: {SECRET}\n"), 1),
            )
        } else {
            ("auth:\n  secret: ", format!("{SECRET}\n{yaml}"))
        };
        let config =
            format!("{grace}{scheduler}threads: 2\nreconcile_interval_secs: 0\n{auth}{yaml}");
        std::fs::write(dir.join("tollgate.yaml"), config).unwrap();
        let mut gateway = Gateway {
            port: 0,
            metrics_port: 0,
            admin_port: 0,
            mqtt_port: 0,
            dir,
            child: None,
            env,
        };
        // A port found free can be taken by another test before the gateway binds it: the
        // gateway then refuses to start, naming the address, and is started again on others.
        for attempt in 1.. {
            gateway.port = free_port();
            gateway.metrics_port = free_port();
            gateway.admin_port = free_port();
            gateway.mqtt_port = free_port();
            match gateway.try_spawn() {
                Ok(()) => break,
                Err(e) if e.contains("cannot listen on") && attempt < 5 => continue,
                Err(e) => panic!("{e}"),
            }
        }
        gateway
    }

    fn spawn(&mut self) {
        if let Err(e) = self.try_spawn() {
            panic!("{e}");
        }
    }

    /// Starts the process; once it listens on the proxy and admin ports, `Ok`; if it exits
    /// first, why (its exit status and the last line of its log).
    fn try_spawn(&mut self) -> Result<(), String> {
        let log =
            std::fs::File::create(self.dir.join(format!("gateway-{}.log", self.port))).unwrap();
        let mut child = Command::new(tollgate_bin())
            .arg("run")
            .arg("--config")
            .arg(self.dir.join("tollgate.yaml"))
            .env("TOLLGATE_LISTEN", format!("127.0.0.1:{}", self.port))
            .env(
                "TOLLGATE_METRICS_LISTEN",
                format!("127.0.0.1:{}", self.metrics_port),
            )
            .env(
                "TOLLGATE_ADMIN_LISTEN",
                format!("127.0.0.1:{}", self.admin_port),
            )
            .env(
                "TOLLGATE_MQTT_EMBEDDED_LISTEN",
                format!("127.0.0.1:{}", self.mqtt_port),
            )
            .env("TOLLGATE_DATA_DIR", self.dir.join("data"))
            .env_remove("TOLLGATE_REDIS_URL")
            .env_remove("TOLLGATE_REDIS_CLUSTER_NODES")
            .env_remove("TOLLGATE_MONGODB_URI")
            .env_remove("TOLLGATE_MQTT_URL")
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .env("RUST_LOG", "info,tollgate=debug")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("the tollgate binary");
        for (what, port) in [
            ("tollgate", self.port),
            ("tollgate admin API", self.admin_port),
        ] {
            if let Err(status) = listening(what, port, &mut child) {
                let log = self.log();
                let last = log.lines().last().unwrap_or_default();
                return Err(format!("{what} exited before listening: {status}: {last}"));
            }
        }
        self.child = Some(child);
        Ok(())
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    pub fn metrics_url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.metrics_port)
    }

    /// The Prometheus text page of `/metrics`.
    pub async fn metrics_text(&self) -> String {
        let r = client().get(self.metrics_url("/metrics")).send().await;
        r.unwrap().text().await.unwrap()
    }

    /// A GET of the admin API with `bearer`, as JSON.
    pub async fn admin_json(&self, path: &str, bearer: &str) -> serde_json::Value {
        let r = client()
            .get(self.admin_url(path))
            .bearer_auth(bearer)
            .send()
            .await;
        r.unwrap().json().await.unwrap()
    }

    pub fn admin_url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.admin_port)
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// SIGTERM, then wait for a clean exit.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            signal(&child, libc::SIGTERM);
            let status = child.wait().unwrap();
            assert!(
                status.success(),
                "gateway exited with {status}; log in {}",
                self.dir.display()
            );
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// SIGTERM without waiting (see [`Gateway::wait`]).
    pub fn terminate(&self) {
        signal(self.child.as_ref().expect("running"), libc::SIGTERM);
    }

    /// Waits for the process to exit; true when it exited cleanly.
    pub fn wait(&mut self) -> bool {
        self.child
            .take()
            .is_some_and(|mut c| c.wait().map(|s| s.success()).unwrap_or(false))
    }

    /// SIGKILL: a crash, nothing flushed.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Sets (or, with `None`, removes) a variable of the environment the next start gets.
    pub fn set_env(&mut self, name: &str, value: Option<&str>) {
        self.env.retain(|(k, _)| k != name);
        if let Some(value) = value {
            self.env.push((name.to_owned(), value.to_owned()));
        }
    }

    /// Starts again after [`Gateway::kill`] or [`Gateway::stop`], same data dir and port.
    pub fn start_again(&mut self) {
        self.spawn();
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.join("data")
    }

    /// Stops and starts again on the same data dir and port.
    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join(format!("gateway-{}.log", self.port)))
            .unwrap_or_default()
    }

    /// Runs `tollgate reconcile` on this gateway's config and data dir, with `env` (e.g. the
    /// Redis URL without the test's gate in front); whether it passed, and what it printed.
    pub fn reconcile(&self, env: &[(&str, String)]) -> (bool, String) {
        let mut command = Command::new(tollgate_bin());
        command
            .args(["reconcile", "--config"])
            .arg(self.dir.join("tollgate.yaml"))
            .env("TOLLGATE_DATA_DIR", self.data_dir())
            .env_remove("TOLLGATE_REDIS_URL")
            .env_remove("TOLLGATE_REDIS_CLUSTER_NODES")
            .env_remove("TOLLGATE_MONGODB_URI");
        for (name, value) in env {
            command.env(name, value);
        }
        let out = command.output().unwrap();
        let printed = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.success(), printed)
    }
}

/// `tollgate admin`: the control plane alone, as its own process, on `config` and `env`.
pub struct ControlPlane {
    pub port: u16,
    child: Child,
}

impl ControlPlane {
    /// Starts it on a free port, logging to `log`; returns once it listens.
    pub fn start(config: &Path, env: &[(String, String)], log: &Path) -> ControlPlane {
        // A port found free can be taken before the process binds it: it then refuses to
        // start, naming the address, and is started again on another.
        for attempt in 1.. {
            let port = free_port();
            let mut child = Command::new(tollgate_bin())
                .args(["admin", "--config"])
                .arg(config)
                .env("TOLLGATE_ADMIN_LISTEN", format!("127.0.0.1:{port}"))
                .env_remove("TOLLGATE_REDIS_URL")
                .env_remove("TOLLGATE_REDIS_CLUSTER_NODES")
                .env_remove("TOLLGATE_MONGODB_URI")
                .envs(env.iter().map(|(k, v)| (k, v)))
                .stderr(std::fs::File::create(log).unwrap())
                .spawn()
                .unwrap();
            match listening("tollgate admin", port, &mut child) {
                Ok(()) => return ControlPlane { port, child },
                Err(status) => {
                    let said = std::fs::read_to_string(log).unwrap_or_default();
                    if !said.contains("cannot listen on") || attempt == 5 {
                        panic!("tollgate admin exited before listening: {status}: {said}");
                    }
                }
            }
        }
        unreachable!("the loop returns or panics")
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

pub fn token(tenant: &str, user: &str) -> String {
    let config = AuthConfig {
        secret: SECRET.into(),
        ..AuthConfig::default()
    };
    auth::mint(&config, tenant, user, Role::User, 3600).unwrap()
}

/// A token with role `admin` (what `tollgate create-admin` + `/auth/login` would give).
pub fn admin_token(tenant: &str, user: &str) -> String {
    let config = AuthConfig {
        secret: SECRET.into(),
        ..AuthConfig::default()
    };
    auth::mint(&config, tenant, user, Role::Admin, 3600).unwrap()
}

pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap()
}

/// The value of the sample of `metric` whose labels include all of `labels`, in a
/// Prometheus text page.
/// `n` GET calls to `path` on `gateway` as a user of `tenant`, `width` at a time: the
/// statuses (0 where no answer came).
pub async fn get_many(
    gateway: &Gateway,
    path: &str,
    tenant: &str,
    n: usize,
    width: usize,
) -> Vec<u16> {
    use futures_util::StreamExt as _;
    let url = gateway.url(path);
    futures_util::stream::iter(0..n)
        .map(|_| {
            let request = client().get(&url).bearer_auth(token(tenant, "u1"));
            async move { request.send().await.map_or(0, |r| r.status().as_u16()) }
        })
        .buffer_unordered(width)
        .collect()
        .await
}

pub fn metric_sample(text: &str, metric: &str, labels: &[(&str, &str)]) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(metric) && l[metric.len()..].starts_with(['{', ' ']))
        .find(|l| {
            labels
                .iter()
                .all(|(k, v)| l.contains(&format!("{k}=\"{v}\"")))
        })
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .unwrap_or_else(|| panic!("no {metric} {labels:?} in:\n{text}"))
}

/// Reads a response header as an integer.
pub fn header_i64(response: &reqwest::Response, name: &str) -> Option<i64> {
    response.headers().get(name)?.to_str().ok()?.parse().ok()
}

/// The MongoDB (or stand-in) the Mongo tests use, from `TOLLGATE_TEST_MONGODB_URI`. Unset,
/// the test fails, unless the run opted out with `TOLLGATE_TEST_SKIP_MONGO=1` (then the
/// caller skips, and `scripts/test.sh` says how many did): a MongoDB test that did not run
/// must not look like a pass.
pub fn mongo_uri() -> Option<String> {
    match std::env::var("TOLLGATE_TEST_MONGODB_URI") {
        Ok(uri) if !uri.is_empty() => Some(uri),
        _ if std::env::var("TOLLGATE_TEST_SKIP_MONGO").as_deref() == Ok("1") => {
            eprintln!(
                "SKIPPED (TOLLGATE_TEST_SKIP_MONGO=1): the MongoDB half of this test did not run"
            );
            None
        }
        _ => panic!(
            "TOLLGATE_TEST_MONGODB_URI is unset: point it at a MongoDB (scripts/test.sh starts \
             the stand-in), or set TOLLGATE_TEST_SKIP_MONGO=1 to skip the MongoDB tests"
        ),
    }
}

/// `host:port` of a `mongodb://host:port/...` URI.
pub fn mongo_addr(uri: &str) -> SocketAddr {
    let rest = uri.trim_start_matches("mongodb://");
    let host = rest.split(['/', '?']).next().unwrap();
    std::net::ToSocketAddrs::to_socket_addrs(host)
        .unwrap()
        .next()
        .unwrap()
}

/// A database name no other test uses.
pub fn unique_db() -> String {
    format!("tollgate_test_{}", uuid::Uuid::now_v7().simple())
}

pub fn temp_dir(prefix: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("{prefix}-{}", uuid::Uuid::now_v7()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A credit transaction without a live balance (the store records the durable one).
pub fn tx<'a>(
    tenant_id: &'a str,
    amount: i64,
    reason: &'a str,
    actor: &'a str,
) -> tollgate::store::NewTransaction<'a> {
    tollgate::store::NewTransaction {
        id: None,
        tenant_id,
        amount,
        reason,
        actor,
        live_balance: None,
    }
}

/// A loopback TCP port that refuses connections for as long as this lives: bound, so the
/// kernel gives it to no other socket (no `SO_REUSEADDR` here), but never listening. A port
/// merely found free could be taken by another test's server and answer.
pub struct ClosedPort {
    fd: libc::c_int,
    pub port: u16,
}

impl ClosedPort {
    pub fn new() -> ClosedPort {
        let size = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
        // SAFETY: plain socket calls on a zeroed sockaddr_in of the right size.
        unsafe {
            let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0);
            assert!(fd >= 0, "socket");
            let mut addr: libc::sockaddr_in = std::mem::zeroed();
            addr.sin_family = libc::AF_INET as libc::sa_family_t;
            addr.sin_addr.s_addr = u32::from_ne_bytes([127, 0, 0, 1]);
            let raw = &mut addr as *mut libc::sockaddr_in as *mut libc::sockaddr;
            assert_eq!(libc::bind(fd, raw, size), 0, "bind");
            let mut len = size;
            assert_eq!(libc::getsockname(fd, raw, &mut len), 0, "getsockname");
            ClosedPort {
                fd,
                port: u16::from_be(addr.sin_port),
            }
        }
    }
}

impl Default for ClosedPort {
    fn default() -> Self {
        ClosedPort::new()
    }
}

impl Drop for ClosedPort {
    fn drop(&mut self) {
        // SAFETY: our own descriptor, closed once.
        unsafe {
            libc::close(self.fd);
        }
    }
}
