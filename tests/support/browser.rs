//! Headless Chromium (Debian's `chromium` + `chromium-driver`) driven over WebDriver: each
//! `Browser` is one Chromium with fake camera and microphone, its own profile and process.
//! On a failing test every open page is saved as a PNG screenshot (see `artifacts_dir`).
#![allow(dead_code)]

use base64::Engine;
use serde_json::{Value, json};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Where failure screenshots go: `$SLUICE_TEST_ARTIFACTS`, else a temp directory.
pub fn artifacts_dir() -> PathBuf {
    let d = std::env::var_os("SLUICE_TEST_ARTIFACTS")
        .map(PathBuf::from)
        .unwrap_or_else(|| std::env::temp_dir().join("sluice-test-artifacts"));
    let _ = std::fs::create_dir_all(&d);
    d
}

fn executable(var: &str, default: &str, package: &str) -> PathBuf {
    let p = std::env::var_os(var)
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(default));
    assert!(
        p.exists(),
        "{} not found: install Debian's {package} (scripts/test does it when run as root) or set {var}",
        p.display()
    );
    p
}

/// A chromedriver process; its Chromium children live in its process group.
pub struct ChromeDriver {
    child: Child,
    base: String,
    http: reqwest::Client,
}

impl ChromeDriver {
    /// Starts chromedriver on a free loopback port and waits until it is ready.
    pub async fn start() -> ChromeDriver {
        let driver = executable("CHROMEDRIVER", "/usr/bin/chromedriver", "chromium-driver");
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        use std::os::unix::process::CommandExt;
        let mut cmd = Command::new(driver);
        // SLUICE_CHROMEDRIVER_LOG=FILE: chromedriver's and Chromium's logs, for debugging.
        if let Some(log) = std::env::var_os("SLUICE_CHROMEDRIVER_LOG") {
            cmd.arg(format!("--log-path={}", log.to_string_lossy()))
                .arg("--enable-chrome-logs");
        }
        let child = cmd
            .arg(format!("--port={port}"))
            .arg("--allowed-ips=127.0.0.1")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .expect("chromedriver starts");
        let d = ChromeDriver {
            child,
            base: format!("http://127.0.0.1:{port}"),
            http: reqwest::Client::new(),
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(r) = d.http.get(format!("{}/status", d.base)).send().await
                && let Ok(v) = r.json::<Value>().await
                && v["value"]["ready"] == true
            {
                return d;
            }
            assert!(Instant::now() < deadline, "chromedriver did not start");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Opens a new Chromium with fake media devices; `name` labels its screenshots.
    pub async fn browser(&self, name: &str) -> Browser {
        let chromium = executable("CHROMIUM", "/usr/bin/chromium", "chromium");
        let profile = std::env::temp_dir().join(format!(
            "sluice-chromium-{}-{name}-{}",
            std::process::id(),
            super::matrix::unique("p")
        ));
        let args = [
            "--headless=new",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-dev-shm-usage",
            "--use-fake-device-for-media-stream",
            "--use-fake-ui-for-media-stream",
            "--autoplay-policy=no-user-gesture-required",
            // Real loopback addresses in host candidates (Sluice does not resolve mDNS names).
            "--disable-features=WebRtcHideLocalIpsWithMdns",
            "--window-size=1280,900",
            &format!("--user-data-dir={}", profile.display()),
        ];
        let mut args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        // SLUICE_CHROMIUM_ARGS: extra Chromium flags (e.g. logging), space-separated.
        if let Ok(extra) = std::env::var("SLUICE_CHROMIUM_ARGS") {
            args.extend(extra.split_whitespace().map(str::to_owned));
        }
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {"binary": chromium, "args": args},
        }}});
        let r: Value = self
            .http
            .post(format!("{}/session", self.base))
            .json(&caps)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let session = r["value"]["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("chromedriver could not start Chromium: {r}"))
            .to_owned();
        Browser {
            name: name.to_owned(),
            url: format!("{}/session/{session}", self.base),
            http: self.http.clone(),
            profile,
        }
    }
}

impl Drop for ChromeDriver {
    fn drop(&mut self) {
        // chromedriver and every Chromium it started.
        unsafe {
            libc::kill(-(self.child.id() as i32), libc::SIGKILL);
        }
        let _ = self.child.wait();
    }
}

/// One Chromium window.
pub struct Browser {
    pub name: String,
    url: String,
    http: reqwest::Client,
    profile: PathBuf,
}

impl Browser {
    async fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        let mut req = self.http.request(method, format!("{}{path}", self.url));
        if let Some(b) = body {
            req = req.json(&b);
        }
        let v: Value = req.send().await.unwrap().json().await.unwrap();
        if let Some(err) = v["value"]["error"].as_str() {
            panic!(
                "[{}] WebDriver {path}: {err}: {}",
                self.name, v["value"]["message"]
            );
        }
        v["value"].clone()
    }

    pub async fn goto(&self, url: &str) {
        self.call(reqwest::Method::POST, "/url", Some(json!({"url": url})))
            .await;
    }

    /// Runs `script` (a function body; `arguments` holds `args`) and returns its result;
    /// a returned promise is awaited.
    pub async fn eval(&self, script: &str, args: Value) -> Value {
        self.call(
            reqwest::Method::POST,
            "/execute/sync",
            Some(json!({"script": script, "args": args})),
        )
        .await
    }

    async fn element(&self, css: &str) -> String {
        let v = self
            .call(
                reqwest::Method::POST,
                "/element",
                Some(json!({"using": "css selector", "value": css})),
            )
            .await;
        v.as_object()
            .and_then(|o| o.values().next())
            .and_then(Value::as_str)
            .unwrap_or_else(|| panic!("[{}] no element {css}", self.name))
            .to_owned()
    }

    /// Replaces the text of the input `css` as a user typing would.
    pub async fn fill(&self, css: &str, text: &str) {
        let id = self.element(css).await;
        self.call(
            reqwest::Method::POST,
            &format!("/element/{id}/clear"),
            Some(json!({})),
        )
        .await;
        self.call(
            reqwest::Method::POST,
            &format!("/element/{id}/value"),
            Some(json!({"text": text})),
        )
        .await;
    }

    pub async fn click(&self, css: &str) {
        let id = self.element(css).await;
        self.call(
            reqwest::Method::POST,
            &format!("/element/{id}/click"),
            Some(json!({})),
        )
        .await;
    }

    /// Polls `script` until it returns `true`; panics with `what` and the page's banner.
    pub async fn wait_until(&self, what: &str, timeout: Duration, script: &str) {
        self.wait_until_with(what, timeout, script, json!([])).await
    }

    /// `wait_until` with `arguments[0]` set to `arg`.
    pub async fn wait_until_with(&self, what: &str, timeout: Duration, script: &str, arg: Value) {
        let deadline = Instant::now() + timeout;
        let args = json!([arg]);
        loop {
            if self.eval(script, args.clone()).await == Value::Bool(true) {
                return;
            }
            if Instant::now() > deadline {
                let banner = self
                    .eval(
                        "const b = document.getElementById('banner'); return b && !b.hidden ? b.textContent : '';",
                        json!([]),
                    )
                    .await;
                let state = self
                    .eval(
                        "const c = window.sluice?.call; if (!c) return null;
                         const d = c.debug(); return c.inboundStats().then(s => { d.inbound = s; return d; });",
                        json!([]),
                    )
                    .await;
                panic!(
                    "[{}] timed out waiting for {what}; page error banner: {banner}\ncall state: {state:#}",
                    self.name
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// The page's error banner text ("" when hidden).
    pub async fn banner(&self) -> String {
        self.eval(
            "const b = document.getElementById('banner'); return b.hidden ? '' : b.textContent;",
            json!([]),
        )
        .await
        .as_str()
        .unwrap_or_default()
        .to_owned()
    }

    fn close_blocking(&self, screenshot: bool) {
        let url = self.url.clone();
        let name = self.name.clone();
        let profile = self.profile.clone();
        let test = std::thread::current()
            .name()
            .unwrap_or("test")
            .replace("::", "-");
        // Drop may run inside the async runtime: a plain thread with its own runtime.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let http = reqwest::Client::builder()
                    .timeout(Duration::from_secs(15))
                    .build()
                    .unwrap();
                if screenshot
                    && let Ok(r) = http.get(format!("{url}/screenshot")).send().await
                    && let Ok(v) = r.json::<Value>().await
                    && let Some(b64) = v["value"].as_str()
                    && let Ok(png) = base64::engine::general_purpose::STANDARD.decode(b64)
                {
                    let path = artifacts_dir().join(format!("{test}-{name}.png"));
                    let _ = std::fs::write(&path, png);
                    eprintln!("[{name}] screenshot saved to {}", path.display());
                }
                let _ = http.delete(&url).send().await;
            });
            let _ = std::fs::remove_dir_all(profile);
        })
        .join();
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        self.close_blocking(std::thread::panicking());
    }
}
