//! Headless Chromium for the console's tests, driven over WebDriver: a private
//! `chromedriver` on a free port (installed with Debian's `chromium` by
//! `scripts/ensure-deps.sh --tests`) and a `fantoccini` session to it. A missing browser
//! fails the test, saying what to install: a console test that did not run must not pass.

pub use fantoccini;

use crate::{free_port, wait_for_port};
use fantoccini::elements::Element;
use fantoccini::{Client, ClientBuilder, Locator};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long a page may take to show what a test waits for (a loaded CI machine).
pub const PAGE_DEADLINE: Duration = Duration::from_secs(20);

pub struct Browser {
    pub client: Client,
    driver: Child,
}

impl Browser {
    /// A headless Chromium at `width` × `height` CSS pixels.
    pub async fn start(width: u32, height: u32) -> Browser {
        let driver_path = std::env::var("CHROMEDRIVER").unwrap_or_else(|_| "chromedriver".into());
        let port = free_port();
        // Its own process group: dropping the browser ends chromedriver and the Chromium
        // it started, even when a test panics before closing the session.
        let mut driver = Command::new(&driver_path)
            .process_group(0)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot start {driver_path} ({e}): install Chromium and its driver \
                     (scripts/ensure-deps.sh --tests: apt-get install chromium chromium-driver)"
                )
            });
        wait_for_port("chromedriver", port, &mut driver);
        let binary = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
        let mut caps = serde_json::Map::new();
        caps.insert(
            "goog:chromeOptions".into(),
            serde_json::json!({
                "binary": binary,
                "args": [
                    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                    "--no-first-run", "--disable-extensions", "--hide-scrollbars",
                    format!("--window-size={width},{height}"),
                ],
            }),
        );
        let client = ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
            .capabilities(caps)
            .connect(&format!("http://127.0.0.1:{port}"))
            .await
            .expect("a WebDriver session with headless Chromium");
        Browser { client, driver }
    }

    pub async fn goto(&self, url: &str) {
        self.client.goto(url).await.expect("navigation");
    }

    /// Waits for the element `css` to be on the page.
    pub async fn find(&self, css: &str) -> Element {
        self.client
            .wait()
            .at_most(PAGE_DEADLINE)
            .for_element(Locator::Css(css))
            .await
            .unwrap_or_else(|e| panic!("no `{css}` on the page within {PAGE_DEADLINE:?}: {e}"))
    }

    /// Whether `css` is on the page now.
    pub async fn has(&self, css: &str) -> bool {
        self.client.find(Locator::Css(css)).await.is_ok()
    }

    /// How many `css` elements are on the page now.
    pub async fn count(&self, css: &str) -> usize {
        self.client
            .find_all(Locator::Css(css))
            .await
            .map_or(0, |found| found.len())
    }

    /// Types `text` into the input `css` (cleared first).
    pub async fn fill(&self, css: &str, text: &str) {
        let input = self.find(css).await;
        input.clear().await.expect("clear");
        input.send_keys(text).await.expect("type");
    }

    pub async fn click(&self, css: &str) {
        self.find(css).await.click().await.expect("click");
    }

    /// The attribute `name` of `css`, once present.
    pub async fn attr(&self, css: &str, name: &str) -> Option<String> {
        self.find(css).await.attr(name).await.expect("attribute")
    }

    pub async fn text(&self, css: &str) -> String {
        self.find(css).await.text().await.expect("text")
    }

    /// Waits until the page says it drew `page` with its data (`body[data-ready]`).
    pub async fn ready(&self, page: &str) {
        self.find(&format!("body[data-ready='1'][data-page='{page}']"))
            .await;
    }

    /// Polls `check` until it holds (a page refreshing on its own), with a deadline.
    pub async fn until(
        &self,
        what: &str,
        deadline: Duration,
        mut check: impl AsyncFnMut() -> bool,
    ) {
        let start = Instant::now();
        while !check().await {
            assert!(
                start.elapsed() < deadline,
                "timed out after {deadline:?} waiting for {what}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The page as a PNG.
    pub async fn screenshot(&self) -> Vec<u8> {
        self.client.screenshot().await.expect("screenshot")
    }

    /// The cookie `name` as the browser holds it (HttpOnly ones included).
    pub async fn cookie(&self, name: &str) -> Option<String> {
        self.client
            .get_named_cookie(name)
            .await
            .ok()
            .map(|c| c.value().to_owned())
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        crate::signal_pid_group(self.driver.id(), libc::SIGKILL);
        let _ = self.driver.wait();
    }
}
