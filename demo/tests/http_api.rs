//! The HTTP service in-process on 127.0.0.1 with an ephemeral port: CRUD, metrics, faults,
//! the proxy role, graceful shutdown and the crash timer.

mod common;

use std::time::{Duration, Instant};

use common::{client, eventually, get, wait_ready};
use demo_app::checksum::checksum_data_dir;
use demo_app::faults::Faults;
use demo_app::http::VersionInfo;
use demo_app::server::{RunError, ServeConfig, Server, EXIT_CRASH};
use serde_json::{json, Value};

async fn start(cfg: ServeConfig) -> (Server, String) {
    let server = Server::start(cfg).await.expect("server starts");
    let base = format!("http://{}", server.local_addr());
    (server, base)
}

#[tokio::test]
async fn crud_round_trip_on_each_version() {
    let http = client();
    for version in [1u32, 2, 3] {
        let dir = tempfile::tempdir().unwrap();
        let (server, base) = start(ServeConfig::local(dir.path(), version)).await;
        wait_ready(&http, &base).await;

        let info: VersionInfo = http
            .get(format!("{base}/version"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let schema = if version == 1 { 1 } else { 2 };
        assert_eq!(
            info,
            VersionInfo {
                version,
                schema_version: Some(schema),
                role: "store".into(),
                upstream: None
            }
        );

        let r = http
            .post(format!("{base}/api/items"))
            .json(&json!({"name": "apple", "price_cents": 1234}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201, "create on v{version}");
        let location = r.headers()["location"].to_str().unwrap().to_owned();
        let created: Value = r.json().await.unwrap();
        let id = created["id"].as_i64().unwrap();
        assert_eq!(location, format!("/api/items/{id}"));
        assert_eq!(created["name"], "apple");
        assert_eq!(created["price_cents"], 1234);
        if schema == 2 {
            assert_eq!(created["price"], "12.34 EUR");
        } else {
            assert!(created.get("price").is_none(), "{created}");
        }

        let got: Value = http
            .get(format!("{base}{location}"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(got, created);

        let r = http
            .put(format!("{base}{location}"))
            .json(&json!({"name": "pear", "price_cents": 5}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        let updated: Value = r.json().await.unwrap();
        assert_eq!(updated["name"], "pear");
        assert_eq!(updated["price_cents"], 5);

        let list: Vec<Value> = http
            .get(format!("{base}/api/items"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(list, vec![updated]);

        for bad in [
            json!({"name": "", "price_cents": 1}),
            json!({"name": "x", "price_cents": -1}),
            json!({"name": "x"}),
        ] {
            let r = http
                .post(format!("{base}/api/items"))
                .json(&bad)
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 400, "{bad}");
            let body: Value = r.json().await.unwrap();
            assert!(body["error"].is_string(), "{body}");
        }

        let r = http
            .delete(format!("{base}{location}"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 204);
        assert_eq!(
            get(&http, &format!("{base}{location}")).await.unwrap().0,
            404
        );
        let r = http
            .delete(format!("{base}{location}"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 404);

        server.stop().await.expect("clean stop");
    }
}

#[tokio::test]
async fn metrics_count_requests_by_route_template() {
    let http = client();
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = ServeConfig::local(dir.path(), 2);
    cfg.seed = 3;
    let (server, base) = start(cfg).await;
    wait_ready(&http, &base).await;

    for id in [1, 2, 99] {
        get(&http, &format!("{base}/api/items/{id}")).await.unwrap();
    }
    get(&http, &format!("{base}/no/such/path")).await.unwrap();
    let r = http.get(format!("{base}/metrics")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert!(
        r.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("application/openmetrics-text"),
        "{:?}",
        r.headers()
    );
    let text = r.text().await.unwrap();
    for want in [
        r#"http_requests_total{method="GET",path="/api/items/{id}",code="200"} 2"#,
        r#"http_requests_total{method="GET",path="/api/items/{id}",code="404"} 1"#,
        r#"http_requests_total{method="GET",path="unmatched",code="404"} 1"#,
        r#"http_request_duration_seconds_count{path="/api/items/{id}"} 3"#,
        r#"http_request_duration_seconds_bucket{le="+Inf",path="/api/items/{id}"} 3"#,
        r#"demo_app_version_info{version="2"} 1"#,
        "demo_items 3",
    ] {
        assert!(text.contains(want), "missing {want:?} in:\n{text}");
    }
    assert!(
        !text.contains("/api/items/1\""),
        "raw paths must not become labels:\n{text}"
    );
    server.stop().await.unwrap();
}

#[tokio::test]
async fn error_rate_one_fails_api_and_root_but_not_probes() {
    let http = client();
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = ServeConfig::local(dir.path(), 1);
    cfg.faults = Faults {
        error_rate: 1.0,
        ..Faults::default()
    };
    let (server, base) = start(cfg).await;
    wait_ready(&http, &base).await;

    for path in ["/", "/api/items", "/api/items/1"] {
        let (status, body) = get(&http, &format!("{base}{path}")).await.unwrap();
        assert_eq!(status, 500, "{path}: {body}");
        assert!(body.contains("injected fault"), "{path}: {body}");
    }
    for path in [
        "/healthz",
        "/readyz",
        "/metrics",
        "/version",
        "/admin/faults",
    ] {
        let (status, body) = get(&http, &format!("{base}{path}")).await.unwrap();
        assert_eq!(status, 200, "{path}: {body}");
    }
    let (_, metrics) = get(&http, &format!("{base}/metrics")).await.unwrap();
    assert!(
        metrics.contains(r#"http_requests_total{method="GET",path="/api/items",code="500"} 1"#),
        "{metrics}"
    );

    // Switched off at runtime.
    let r = http
        .post(format!("{base}/admin/faults"))
        .json(&json!({"error_rate": 0.0}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let faults: Faults = r.json().await.unwrap();
    assert_eq!(faults, Faults::default());
    assert_eq!(
        get(&http, &format!("{base}/api/items")).await.unwrap().0,
        200
    );

    // Out-of-range and unknown switches are refused and change nothing.
    for bad in [json!({"error_rate": 2.0}), json!({"eror_rate": 1.0})] {
        let r = http
            .post(format!("{base}/admin/faults"))
            .json(&bad)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 400, "{bad}");
    }
    let (_, body) = get(&http, &format!("{base}/admin/faults")).await.unwrap();
    assert_eq!(
        serde_json::from_str::<Faults>(&body).unwrap(),
        Faults::default()
    );
    server.stop().await.unwrap();
}

#[tokio::test]
async fn never_ready_keeps_readyz_503_until_switched_off() {
    let http = client();
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = ServeConfig::local(dir.path(), 2);
    cfg.faults.never_ready = true;
    let (server, base) = start(cfg).await;

    // Wait for the database so that only the fault can be what keeps it unready.
    let version_url = format!("{base}/version");
    let url = &version_url;
    let http_ref = &http;
    eventually("the database to open", || async move {
        let (_, body) = get(http_ref, url).await?;
        let info: VersionInfo = serde_json::from_str(&body).map_err(|e| e.to_string())?;
        info.schema_version.map(|_| ()).ok_or(body)
    })
    .await;
    let (status, body) = get(&http, &format!("{base}/readyz")).await.unwrap();
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("never_ready"), "{body}");
    assert_eq!(get(&http, &format!("{base}/healthz")).await.unwrap().0, 200);
    assert_eq!(
        get(&http, &format!("{base}/api/items")).await.unwrap().0,
        200
    );

    http.post(format!("{base}/admin/faults"))
        .json(&json!({"never_ready": false}))
        .send()
        .await
        .unwrap()
        .error_for_status()
        .unwrap();
    wait_ready(&http, &base).await;
    server.stop().await.unwrap();
}

#[tokio::test]
async fn latency_fault_slows_api_requests() {
    let http = client();
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = ServeConfig::local(dir.path(), 1);
    cfg.faults.latency_ms = 300;
    let (server, base) = start(cfg).await;
    wait_ready(&http, &base).await;
    let t = Instant::now();
    assert_eq!(
        get(&http, &format!("{base}/api/items")).await.unwrap().0,
        200
    );
    assert!(
        t.elapsed() >= Duration::from_millis(300),
        "{:?}",
        t.elapsed()
    );
    server.stop().await.unwrap();
}

#[tokio::test]
async fn proxy_role_forwards_api_and_follows_upstream_readiness() {
    let http = client();
    let dir = tempfile::tempdir().unwrap();
    let mut store_cfg = ServeConfig::local(dir.path(), 2);
    store_cfg.seed = 3;
    let (store, store_base) = start(store_cfg).await;

    let mut proxy_cfg = ServeConfig::local(dir.path().join("unused"), 2);
    proxy_cfg.upstream = Some(store_base.parse().unwrap());
    let (proxy, base) = start(proxy_cfg).await;
    wait_ready(&http, &base).await;

    let info: VersionInfo = http
        .get(format!("{base}/version"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(info.role, "proxy");
    assert_eq!(info.schema_version, None);
    assert_eq!(
        info.upstream.as_deref(),
        Some(format!("{store_base}/").as_str())
    );

    let list: Vec<Value> = http
        .get(format!("{base}/api/items"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(list.len(), 3);
    assert_eq!(list[0]["name"], "item-0001");

    let r = http
        .post(format!("{base}/api/items"))
        .json(&json!({"name": "via proxy", "price_cents": 250}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    assert_eq!(r.headers()["location"], "/api/items/4");
    let (status, body) = get(&http, &format!("{store_base}/api/items/4"))
        .await
        .unwrap();
    assert_eq!(status, 200);
    assert!(body.contains("2.50 EUR"), "{body}");
    assert_eq!(
        get(&http, &format!("{base}/api/items/77")).await.unwrap().0,
        404
    );
    assert!(
        !dir.path().join("unused").exists(),
        "the proxy must keep no data"
    );

    // The upstream going unready makes the proxy unready.
    http.post(format!("{store_base}/admin/faults"))
        .json(&json!({"never_ready": true}))
        .send()
        .await
        .unwrap()
        .error_for_status()
        .unwrap();
    let (status, body) = get(&http, &format!("{base}/readyz")).await.unwrap();
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("upstream"), "{body}");

    // And the upstream gone entirely is a 502 on the API.
    store.stop().await.unwrap();
    let (status, body) = get(&http, &format!("{base}/api/items")).await.unwrap();
    assert_eq!(status, 502, "{body}");
    proxy.stop().await.unwrap();
}

#[tokio::test]
async fn graceful_stop_finishes_in_flight_requests_and_closes_the_db() {
    let http = client();
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = ServeConfig::local(dir.path(), 2);
    cfg.seed = 2;
    // Long enough that the poll below cannot miss the request while it is in flight.
    cfg.faults.latency_ms = 3000;
    let (server, base) = start(cfg).await;
    wait_ready(&http, &base).await;

    let slow = tokio::spawn({
        let http = http.clone();
        let url = format!("{base}/api/items");
        async move { get(&http, &url).await }
    });
    // Stop only once the request is being served (it sleeps in the latency fault).
    let metrics_url = format!("{base}/metrics");
    let (http_ref, url) = (&http, &metrics_url);
    eventually("the slow request to be in flight", || async move {
        let (_, text) = get(http_ref, url).await?;
        text.contains(r#"http_requests_in_flight{path="/api/items"} 1"#)
            .then_some(())
            .ok_or(text)
    })
    .await;
    server.stop().await.expect("clean stop");
    let (status, body) = slow.await.unwrap().expect("in-flight request answered");
    assert_eq!(status, 200, "{body}");
    assert!(!dir.path().join("app.db-wal").exists(), "WAL left behind");
    checksum_data_dir(dir.path()).expect("database readable after stop");
}

#[tokio::test]
async fn crash_after_secs_ends_the_server_with_the_crash_code() {
    let http = client();
    let dir = tempfile::tempdir().unwrap();
    let (server, base) = start(ServeConfig::local(dir.path(), 1)).await;
    wait_ready(&http, &base).await;
    http.post(format!("{base}/admin/faults"))
        .json(&json!({"crash_after_secs": 0}))
        .send()
        .await
        .unwrap()
        .error_for_status()
        .unwrap();
    let err = tokio::time::timeout(common::DEADLINE, server.wait())
        .await
        .expect("crash within the deadline")
        .expect_err("a crash is an error");
    assert!(matches!(err, RunError::Crash), "{err:?}");
    assert_eq!(err.exit_code(), EXIT_CRASH);
}

#[tokio::test]
async fn a_proxy_release_migrates_its_upstreams_database_through_its_api() {
    let http = client();
    let dir = tempfile::tempdir().unwrap();
    let mut store_cfg = ServeConfig::local(dir.path(), 1);
    store_cfg.seed = 3;
    let (store, store_base) = start(store_cfg).await;
    wait_ready(&http, &store_base).await;
    let before = checksum_data_dir(dir.path()).unwrap();

    // api v2 runs its migrations against the shared database when it starts, and reports
    // ready only once they ran.
    let mut proxy_cfg = ServeConfig::local(dir.path().join("unused"), 2);
    proxy_cfg.upstream = Some(store_base.parse().unwrap());
    proxy_cfg.migrate_upstream = Some(2);
    let (proxy, base) = start(proxy_cfg).await;
    wait_ready(&http, &base).await;
    let info: VersionInfo = http
        .get(format!("{store_base}/version"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        (info.version, info.schema_version),
        (1, Some(2)),
        "db's code is unchanged, its schema is not"
    );
    let (status, body) = get(&http, &format!("{base}/api/items/1")).await.unwrap();
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("EUR"), "served in schema 2: {body}");
    proxy.stop().await.unwrap();
    store.stop().await.unwrap();
    assert_ne!(
        checksum_data_dir(dir.path()).unwrap(),
        before,
        "the data was migrated"
    );

    // The stable db release started again on that data refuses it: only a restore helps.
    let err = Server::start(ServeConfig::local(dir.path(), 1))
        .await
        .unwrap()
        .wait()
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("newer than schema version 1"),
        "{err}"
    );

    // A proxy cannot be migrated: it keeps no data.
    let mut p = ServeConfig::local(dir.path().join("unused"), 2);
    p.upstream = Some("http://127.0.0.1:9".parse().unwrap());
    let (proxy, base) = start(p).await;
    let r = http
        .post(format!("{base}/admin/migrate"))
        .json(&json!({"appVersion": 2}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    proxy.stop().await.unwrap();
}
