//! The metrics to alert on (issue 17): build and process information, the disk, what is
//! stored, quota rejections, SHA-256 mismatches, auth failures by reason, expired sessions
//! swept and JWKS fetch errors, each present after traffic; and who may scrape.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::json;

use crate::docs::{parse_metrics, scrape_until, value, Sample};
use crate::helpers::{
    expect, mint_with, now, rs256, send, spawn_app, spawn_app_with, As, SERVICE_TOKEN,
};

fn has(samples: &[Sample], name: &str) -> bool {
    samples.iter().any(|(n, _, _)| n == name)
}

#[tokio::test]
async fn every_alerting_metric_is_there_after_traffic() {
    // Quota: 0.00001 GiB = 10737 bytes. Sessions expire after ~1 s and are swept each second.
    // The JWKS URL is a closed port: every fetch fails.
    let app = spawn_app_with(&[
        ("PER_USER_QUOTA_GB", "0.00001"),
        ("UPLOAD_SESSION_TTL_HOURS", "0.0003"),
        ("AUTH_JWKS_URL", "http://127.0.0.1:9/jwks.json"),
        ("AUTH_JWKS_MIN_REFETCH_SECS", "0"),
    ])
    .await;
    let svc = app.as_service().acting_for("u1");
    // Stored: one file of 1000 bytes.
    svc.upload_file("a.bin", None, &[7u8; 1000]).await;
    // A SHA-256 mismatch.
    let (s, b) = send(
        svc.post("/v1/files/upload?user_id=u1&filename=b.bin")
            .header("x-content-sha256", "00".repeat(32))
            .body(vec![1u8; 10]),
    )
    .await;
    assert_eq!(
        (s, b),
        (
            StatusCode::BAD_REQUEST,
            json!({ "detail": "SHA256 mismatch" })
        )
    );
    // A quota rejection.
    let (s, _) = send(
        svc.post("/v1/files/upload?user_id=u1&filename=c.bin")
            .body(vec![1u8; 20_000]),
    )
    .await;
    assert_eq!(s, StatusCode::PAYLOAD_TOO_LARGE);
    // Auth failures: a bad signature, an expired token, a wrong service token. The unknown
    // kid makes the JWKS be fetched (and fail) before the static key is tried.
    let stranger = app.keys.other.encoding_key();
    let bad_sig = mint_with(
        &rs256("kid-x"),
        &json!({ "user_id": "u1", "exp": now() + 60 }),
        &stranger,
    );
    let expired = app.mint(json!({ "user_id": "u1", "exp": now() - 600 }));
    for req in [
        app.get("/v1/files/all").bearer(&bad_sig),
        app.get("/v1/files/all").bearer(&expired),
        app.get("/v1/files/all").service_token("nope"),
    ] {
        assert_eq!(req.send().await.unwrap().status(), StatusCode::UNAUTHORIZED);
    }
    // A session that expires and is swept.
    svc.init(json!([{ "name": "late.bin", "size": 10 }]), "single", None)
        .await;
    tokio::time::sleep(Duration::from_millis(3500)).await;

    let samples = scrape_until(&app, |s| {
        value(s, "upload_server_expired_sessions_swept_total", &[]) >= 1.0
            && value(s, "upload_server_quota_rejections_total", &[]) >= 1.0
    })
    .await;
    let v = |name: &str| value(&samples, name, &[]);
    let build = samples
        .iter()
        .find(|(n, _, _)| n == "upload_server_build_info")
        .unwrap();
    assert_eq!(build.1["version"], env!("CARGO_PKG_VERSION"));
    assert!(!build.1["commit"].is_empty());
    assert_eq!(build.2, 1.0);
    assert!(v("process_resident_memory_bytes") > 1e6);
    assert!(v("process_open_fds") > 3.0);
    assert!(v("process_max_fds") >= v("process_open_fds"));
    assert!((v("process_start_time_seconds") - now() as f64).abs() < 600.0);
    assert!(v("upload_server_disk_total_bytes") > 0.0);
    assert!(v("upload_server_disk_free_bytes") > 0.0);
    assert!(v("upload_server_disk_total_bytes") >= v("upload_server_disk_free_bytes"));
    assert!(has(&samples, "upload_server_disk_inodes_total"));
    assert!(has(&samples, "upload_server_disk_inodes_free"));
    assert_eq!(v("upload_server_stored_bytes"), 1000.0);
    assert_eq!(v("upload_server_stored_files"), 1.0);
    assert_eq!(v("upload_server_quota_rejections_total"), 1.0);
    assert_eq!(v("upload_server_sha256_mismatches_total"), 1.0);
    assert!(v("upload_server_expired_sessions_swept_total") >= 1.0);
    assert!(v("upload_server_jwks_fetch_errors_total") >= 1.0);
    let auth = |reason: &str| {
        value(
            &samples,
            "upload_server_auth_failures_total",
            &[("reason", reason)],
        )
    };
    assert_eq!(auth("bad_signature"), 1.0);
    assert_eq!(auth("expired"), 1.0);
    assert_eq!(auth("service_token"), 1.0);
    // Every reason is a series from the start, so rate() sees the first failure.
    assert!(samples
        .iter()
        .any(|(n, l, v)| n == "upload_server_auth_failures_total"
            && l["reason"] == "wrong_audience"
            && *v == 0.0));
}

#[tokio::test]
async fn older_prometheus_can_scrape_with_an_authorization_header() {
    let app = spawn_app().await;
    for scheme in ["Bearer", "ServiceToken", "servicetoken"] {
        let res = app
            .get("/metrics")
            .header("authorization", format!("{scheme} {SERVICE_TOKEN}"))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::OK, "{scheme}");
        assert!(!parse_metrics(&res.text().await.unwrap()).is_empty());
    }
    expect(
        app.get("/metrics")
            .header("authorization", "ServiceToken nope"),
        StatusCode::UNAUTHORIZED,
        json!({ "detail": "Authentication required" }),
    )
    .await;
    // Without METRICS_ALLOW_LOCAL a loopback client still needs the token.
    expect(
        app.get("/metrics"),
        StatusCode::UNAUTHORIZED,
        json!({ "detail": "Authentication required" }),
    )
    .await;
}

#[tokio::test]
async fn metrics_allow_local_lets_an_unproxied_loopback_client_scrape() {
    let app = spawn_app_with(&[("METRICS_ALLOW_LOCAL", "1")]).await;
    let res = app.get("/metrics").send().await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    // Through nginx (which adds X-Real-IP / X-Forwarded-For) the token is still needed.
    for (name, value) in [
        ("x-real-ip", "203.0.113.9"),
        ("x-forwarded-for", "203.0.113.9"),
    ] {
        expect(
            app.get("/metrics").header(name, value),
            StatusCode::UNAUTHORIZED,
            json!({ "detail": "Authentication required" }),
        )
        .await;
    }
    let res = app
        .get("/metrics")
        .header("x-real-ip", "203.0.113.9")
        .as_service()
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
}

#[tokio::test]
async fn a_kid_no_key_has_is_counted_as_unknown_kid() {
    // Keys only from a JWKS that cannot be fetched.
    let app = spawn_app_with(&[
        ("JWT_PUBLIC_KEY_PATH", ""),
        ("JWT_PRIVATE_KEY_PATH", ""),
        ("AUTH_JWKS_URL", "http://127.0.0.1:9/jwks.json"),
    ])
    .await;
    let token = app.mint(json!({ "user_id": "u1", "exp": now() + 60 }));
    let res = app
        .get("/v1/files/all")
        .bearer(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
    let samples = scrape_until(&app, |s| {
        value(
            s,
            "upload_server_auth_failures_total",
            &[("reason", "unknown_kid")],
        ) >= 1.0
    })
    .await;
    assert_eq!(
        value(
            &samples,
            "upload_server_auth_failures_total",
            &[("reason", "unknown_kid")]
        ),
        1.0
    );
    assert!(value(&samples, "upload_server_jwks_fetch_errors_total", &[]) >= 1.0);
}
