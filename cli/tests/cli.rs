//! The `tollgate` binary's contract: `token`, `check-config`, and refusing bad config at
//! start with the key named.

use std::process::Command;
use tollgate::auth::Verifier;
use tollgate_testkit as common;

fn tollgate(args: &[&str], env: &[(&str, &str)]) -> (bool, String, String) {
    let mut command = Command::new(common::tollgate_bin());
    command
        .args(args)
        .current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/.."));
    for var in [
        "TOLLGATE_REDIS_URL",
        "TOLLGATE_MONGODB_URI",
        "TOLLGATE_MQTT_URL",
        "TOLLGATE_JWT_SECRET",
    ] {
        command.env_remove(var);
    }
    command.envs(env.iter().copied());
    let out = command.output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn write_config(yaml: &str) -> std::path::PathBuf {
    let path = std::env::temp_dir().join(format!("tollgate-cli-{}.yaml", uuid::Uuid::now_v7()));
    std::fs::write(&path, yaml).unwrap();
    path
}

#[test]
fn token_mints_a_verifiable_token_for_the_default_config() {
    let (ok, stdout, stderr) = tollgate(
        &[
            "token", "--tenant", "abc123", "--user", "alice", "--role", "admin", "--ttl", "60",
        ],
        &[],
    );
    assert!(ok, "{stderr}");
    let config = tollgate::app::load_config(std::path::Path::new(concat!(
        concat!(env!("CARGO_MANIFEST_DIR"), "/.."),
        "/conf/tollgate.yaml"
    )))
    .unwrap();
    let claims = Verifier::new(&config.auth)
        .unwrap()
        .verify(stdout.trim())
        .unwrap();
    assert_eq!(
        (claims.tenant_id.as_str(), claims.sub.as_str()),
        ("abc123", "alice")
    );
    assert_eq!(claims.role, tollgate::auth::Role::Admin);
    // Issued to the millisecond (a fractional NumericDate), so revocations are exact.
    let issued = claims.iat.unwrap();
    assert!(issued > 1.7e9, "{issued}");
    // A token may not outlive the revocation of a change to its user.
    let (ok, _, stderr) = tollgate(
        &[
            "token", "--tenant", "abc123", "--user", "alice", "--ttl", "604801",
        ],
        &[],
    );
    assert!(!ok);
    assert!(stderr.contains("--ttl"), "{stderr}");
}

#[test]
fn check_config_accepts_the_shipped_configs() {
    let (ok, stdout, stderr) = tollgate(&["check-config", "--config", "conf/tollgate.yaml"], &[]);
    assert!(ok && stdout.contains("ok"), "{stderr}");
    let secret = ("TOLLGATE_JWT_SECRET", "0123456789abcdef0123456789abcdef-x");
    let (ok, _, stderr) = tollgate(
        &["check-config", "--config", "conf/distributed.example.yaml"],
        &[secret],
    );
    assert!(ok, "{stderr}");
}

#[test]
fn bad_config_stops_the_start_naming_the_key() {
    let unknown = write_config("services: []\ntennants: []\n");
    let (ok, _, stderr) = tollgate(&["run", "--config", unknown.to_str().unwrap()], &[]);
    assert!(!ok);
    assert!(stderr.contains("tennants"), "{stderr}");

    let demo_secret_with_redis = write_config("tenants: [{ id: a }]\n");
    let (ok, _, stderr) = tollgate(
        &["run", "--config", demo_secret_with_redis.to_str().unwrap()],
        &[("TOLLGATE_REDIS_URL", "redis://127.0.0.1:1/")],
    );
    assert!(!ok);
    assert!(stderr.contains("auth.secret"), "{stderr}");

    let bad_listen = write_config("");
    let (ok, _, stderr) = tollgate(
        &["run", "--config", bad_listen.to_str().unwrap()],
        &[("TOLLGATE_LISTEN", "everywhere")],
    );
    assert!(!ok);
    assert!(stderr.contains("`listen`"), "{stderr}");

    let (ok, _, stderr) = tollgate(&["run", "--config", "/nonexistent/tollgate.yaml"], &[]);
    assert!(!ok);
    assert!(stderr.contains("/nonexistent/tollgate.yaml"), "{stderr}");

    // An identity provider's keys: a URL, an audience, sane refresh bounds, claim names.
    let jwks = "https://idp.example.com/.well-known/jwks.json";
    for (auth, key) in [
        (format!("jwks_url: {jwks}"), "auth.audience"),
        ("jwks_url: ftp://idp.example.com/keys\n  audience: a".to_owned(), "auth.jwks_url"),
        (format!("jwks_url: {jwks}\n  audience: a\n  jwks: {{ min_refetch_secs: 0 }}"), "auth.jwks.min_refetch_secs"),
        (format!("jwks_url: {jwks}\n  audience: a\n  jwks: {{ refresh_secs: 600, max_stale_secs: 60 }}"), "auth.jwks.max_stale_secs"),
        ("claims: { tenant_id: \"\" }".to_owned(), "auth.claims.tenant_id"),
    ] {
        let config = write_config(&format!("auth:\n  {auth}\n"));
        let (ok, _, stderr) = tollgate(&["run", "--config", config.to_str().unwrap()], &[]);
        assert!(!ok, "{auth}");
        assert!(stderr.contains(key), "{auth}: {stderr}");
    }
}
