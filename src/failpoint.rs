//! Failpoints: named places where a test build can be told to fail, so a test proves what
//! happens when a step fails instead of arguing it. Armed by `TOLLGATE_FAILPOINTS` (a
//! comma-separated list of names) and compiled in only with debug assertions, as in the
//! test build: a release binary never reads the variable.

/// Whether the failpoint `name` is armed.
#[cfg(debug_assertions)]
pub fn hit(name: &str) -> bool {
    static ARMED: std::sync::OnceLock<Vec<String>> = std::sync::OnceLock::new();
    ARMED
        .get_or_init(|| {
            std::env::var("TOLLGATE_FAILPOINTS")
                .unwrap_or_default()
                .split(',')
                .map(|s| s.trim().to_owned())
                .filter(|s| !s.is_empty())
                .collect()
        })
        .iter()
        .any(|armed| armed == name)
}

#[cfg(not(debug_assertions))]
#[inline(always)]
pub fn hit(_name: &str) -> bool {
    false
}

/// Waits `pause` when the failpoint `name` is armed: a slow step, for a test to act during.
pub async fn delay(name: &str, pause: std::time::Duration) {
    if hit(name) {
        tokio::time::sleep(pause).await;
    }
}

/// Ends the process on the spot (SIGABRT: nothing flushed, nothing cleaned up) when the
/// failpoint `name` is armed: a crash between two steps, exactly there.
pub fn crash(name: &str) {
    if hit(name) {
        eprintln!("failpoint {name}: crashing");
        std::process::abort();
    }
}
