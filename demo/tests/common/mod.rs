//! Helpers shared by the integration tests: an HTTP client and polling with deadlines.

#![allow(dead_code)] // each test binary uses a different subset

use std::future::Future;
use std::time::Duration;

use tokio::time::{sleep, Instant};

/// How long anything in these tests may take to become true.
pub const DEADLINE: Duration = Duration::from_secs(20);

/// An HTTP client (installs the ring provider reqwest needs).
pub fn client() -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .expect("http client")
}

/// Polls `check` until it returns `Some`, failing with `what` and the last observation
/// once [`DEADLINE`] has passed.
pub async fn eventually<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, String>>,
{
    let deadline = Instant::now() + DEADLINE;
    let mut delay = Duration::from_millis(10);
    loop {
        match check().await {
            Ok(v) => return v,
            Err(last) if Instant::now() >= deadline => {
                panic!("timed out after {DEADLINE:?} waiting for {what}; last saw: {last}")
            }
            Err(_) => {
                sleep(delay).await;
                delay = (delay * 2).min(Duration::from_millis(200));
            }
        }
    }
}

/// GET `url` and return (status, body).
pub async fn get(client: &reqwest::Client, url: &str) -> Result<(u16, String), String> {
    let r = client.get(url).send().await.map_err(|e| e.to_string())?;
    let status = r.status().as_u16();
    Ok((status, r.text().await.map_err(|e| e.to_string())?))
}

/// Waits until `base/readyz` answers 200.
pub async fn wait_ready(client: &reqwest::Client, base: &str) {
    let url = format!("{base}/readyz");
    eventually(&format!("{url} to answer 200"), || async {
        match get(client, &url).await? {
            (200, _) => Ok(()),
            (s, body) => Err(format!("{s} {body}")),
        }
    })
    .await
}
