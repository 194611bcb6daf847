//! A minimal Matrix client-server API client over plain HTTP: what load participants need
//! (register, rooms, state, to-device, sync). No end-to-end encryption.

use serde_json::{Value, json};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::sync::mpsc;

/// One logged-in account.
#[derive(Clone)]
pub struct Account {
    http: reqwest::Client,
    base: String,
    token: String,
    /// Full user id.
    pub user_id: String,
    /// Device id.
    pub device_id: String,
}

static TXN: AtomicU64 = AtomicU64::new(0);

fn txn() -> String {
    format!(
        "lt{}-{}",
        std::process::id(),
        TXN.fetch_add(1, Ordering::Relaxed)
    )
}

fn enc(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

async fn call(req: reqwest::RequestBuilder, what: &str) -> Result<Value, String> {
    let r = req.send().await.map_err(|e| format!("{what}: {e}"))?;
    let status = r.status();
    let v: Value = r.json().await.unwrap_or(Value::Null);
    if !status.is_success() {
        return Err(format!("{what}: HTTP {status}: {v}"));
    }
    Ok(v)
}

impl Account {
    /// Registers `username` (open registration, dummy auth) on `base`.
    pub async fn register(base: &str, username: &str, password: &str) -> Result<Account, String> {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(40))
            .build()
            .map_err(|e| e.to_string())?;
        let v = call(
            http.post(format!("{base}/_matrix/client/v3/register"))
                .json(&json!({"username": username, "password": password,
                              "auth": {"type": "m.login.dummy"},
                              "initial_device_display_name": "sluice-loadtest"})),
            "register",
        )
        .await?;
        Ok(Account {
            http,
            base: base.trim_end_matches('/').to_owned(),
            token: v["access_token"].as_str().unwrap_or_default().to_owned(),
            user_id: v["user_id"].as_str().unwrap_or_default().to_owned(),
            device_id: v["device_id"].as_str().unwrap_or_default().to_owned(),
        })
    }

    fn url(&self, path: &str) -> String {
        format!("{}/_matrix/client/v3{path}", self.base)
    }

    async fn post(&self, path: &str, body: Value, what: &str) -> Result<Value, String> {
        call(
            self.http
                .post(self.url(path))
                .bearer_auth(&self.token)
                .json(&body),
            what,
        )
        .await
    }

    async fn put(&self, path: &str, body: Value, what: &str) -> Result<Value, String> {
        call(
            self.http
                .put(self.url(path))
                .bearer_auth(&self.token)
                .json(&body),
            what,
        )
        .await
    }

    /// Creates a room where anyone may write call memberships, inviting `invite`.
    pub async fn create_call_room(&self, invite: &[String]) -> Result<String, String> {
        let v = self
            .post(
                "/createRoom",
                json!({"preset": "public_chat", "invite": invite,
                       "power_level_content_override": {"events": {"org.matrix.msc3401.call.member": 0}}}),
                "createRoom",
            )
            .await?;
        Ok(v["room_id"].as_str().unwrap_or_default().to_owned())
    }

    /// Joins `room`.
    pub async fn join(&self, room: &str) -> Result<(), String> {
        self.post(&format!("/join/{}", enc(room)), json!({}), "join")
            .await
            .map(|_| ())
    }

    /// Whether `user` is joined to `room`.
    pub async fn is_joined(&self, room: &str, user: &str) -> bool {
        let Ok(v) = call(
            self.http
                .get(self.url(&format!("/rooms/{}/joined_members", enc(room))))
                .bearer_auth(&self.token),
            "joined_members",
        )
        .await
        else {
            return false;
        };
        v["joined"].get(user).is_some()
    }

    /// Writes a state event.
    pub async fn put_state(
        &self,
        room: &str,
        kind: &str,
        key: &str,
        content: Value,
    ) -> Result<(), String> {
        self.put(
            &format!("/rooms/{}/state/{}/{}", enc(room), enc(kind), enc(key)),
            content,
            "state",
        )
        .await
        .map(|_| ())
    }

    /// Sends one plain to-device message.
    pub async fn send_to_device(
        &self,
        kind: &str,
        user: &str,
        device: &str,
        content: Value,
    ) -> Result<(), String> {
        self.put(
            &format!("/sendToDevice/{}/{}", enc(kind), txn()),
            json!({"messages": {user: {device: content}}}),
            "sendToDevice",
        )
        .await
        .map(|_| ())
    }

    /// Long-polls /sync for to-device events (room data filtered out) into `tx` until the
    /// receiver is dropped.
    pub fn sync_to_device(
        &self,
        tx: mpsc::UnboundedSender<(String, Value)>,
    ) -> tokio::task::JoinHandle<()> {
        let me = self.clone();
        tokio::spawn(async move {
            let filter = enc(
                r#"{"room":{"rooms":[]},"presence":{"not_types":["*"]},"account_data":{"not_types":["*"]}}"#,
            );
            let mut since: Option<String> = None;
            loop {
                let mut url = me.url(&format!("/sync?timeout=10000&filter={filter}"));
                if let Some(s) = &since {
                    url.push_str(&format!("&since={}", enc(s)));
                }
                match call(me.http.get(url).bearer_auth(&me.token), "sync").await {
                    Ok(v) => {
                        since = v["next_batch"].as_str().map(str::to_owned);
                        for e in v["to_device"]["events"].as_array().into_iter().flatten() {
                            let kind = e["type"].as_str().unwrap_or_default().to_owned();
                            if tx.send((kind, e["content"].clone())).is_err() {
                                return;
                            }
                        }
                    }
                    Err(_) => tokio::time::sleep(Duration::from_millis(500)).await,
                }
                if tx.is_closed() {
                    return;
                }
            }
        })
    }
}
