//! Cross-site requests with the `auth_token` cookie (issue 16 item 6): a write authenticated
//! by the cookie must come from this service's origin or a listed CORS origin; Bearer and
//! service callers, and safe methods, are not affected.

use reqwest::{Method, RequestBuilder, StatusCode};
use serde_json::{json, Value};
use upload_server::auth::CROSS_SITE_REFUSED;

use crate::helpers::*;

const EVIL: &str = "https://evil.example";
const UPLOAD: &str = "/v1/files/upload?filename=note.txt";

fn refused() -> Value {
    json!({ "detail": CROSS_SITE_REFUSED })
}

/// A one-request upload of a few bytes.
fn upload(app: &TestApp) -> RequestBuilder {
    app.post(UPLOAD).body("hello")
}

/// Sends, expecting a stored upload.
async fn expect_uploaded(req: RequestBuilder) {
    let (status, body) = send(req).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(body["files"][0]["key"].is_string(), "{body}");
}

fn stored(app: &TestApp) -> Vec<String> {
    files_under(&app.root.path().join("storage"))
}

#[tokio::test]
async fn cookie_writes_from_a_foreign_origin_are_refused() {
    let app = spawn_app().await;
    let t = app.user_token("u1");
    // The service's own host under another scheme or port is another origin; so is `null`.
    let own_port = app.base.rsplit(':').next().unwrap();
    let other_port = format!("http://127.0.0.1:{}", own_port.parse::<u16>().unwrap() ^ 1);
    let other_scheme = app.base.replacen("http://", "https://", 1);
    for origin in [EVIL, "null", other_port.as_str(), other_scheme.as_str()] {
        expect(
            upload(&app).cookie(&t).header("origin", origin),
            StatusCode::FORBIDDEN,
            refused(),
        )
        .await;
    }
    expect(
        app.post("/v1/files/part")
            .cookie(&t)
            .header("origin", EVIL)
            .json(&json!({})),
        StatusCode::FORBIDDEN,
        refused(),
    )
    .await;
    let part = format!("/v1/files/part/{}/0", PROBE.rsplit('/').next().unwrap());
    expect(
        app.request(Method::PUT, &part)
            .cookie(&t)
            .header("origin", EVIL)
            .body("x"),
        StatusCode::FORBIDDEN,
        refused(),
    )
    .await;
    expect(
        app.request(Method::DELETE, PROBE)
            .cookie(&t)
            .header("origin", EVIL),
        StatusCode::FORBIDDEN,
        refused(),
    )
    .await;
    assert_eq!(stored(&app), Vec::<String>::new());
    // Without the Origin, as curl sends it, the cookie still works.
    let (status, body) = send(app.request(Method::DELETE, PROBE).cookie(&t)).await;
    assert_eq!((status, body), accepted());
    expect_uploaded(upload(&app).cookie(&t)).await;
}

#[tokio::test]
async fn cookie_writes_from_another_site_without_an_origin_are_refused() {
    let app = spawn_app().await;
    let t = app.user_token("u1");
    // `same-site` is a sibling subdomain: another application, not this one.
    for site in ["cross-site", "same-site"] {
        expect(
            upload(&app).cookie(&t).header("sec-fetch-site", site),
            StatusCode::FORBIDDEN,
            refused(),
        )
        .await;
    }
    assert_eq!(stored(&app), Vec::<String>::new());
    for site in ["same-origin", "none"] {
        expect_uploaded(upload(&app).cookie(&t).header("sec-fetch-site", site)).await;
    }
}

#[tokio::test]
async fn cookie_writes_from_our_own_or_a_listed_origin_are_accepted() {
    let app = spawn_app_with(&[(
        "CORS_ALLOW_ORIGINS",
        "https://app.example, https://admin.example:8443",
    )])
    .await;
    let t = app.user_token("u1");
    let own = app.base.clone();
    expect_uploaded(
        upload(&app)
            .cookie(&t)
            .header("origin", own.as_str())
            .header("sec-fetch-site", "same-origin"),
    )
    .await;
    // Origins compare by scheme, host and port: case and a default port do not matter.
    for origin in [
        "https://app.example",
        "https://APP.example:443",
        "https://admin.example:8443",
    ] {
        expect_uploaded(
            upload(&app)
                .cookie(&t)
                .header("origin", origin)
                .header("sec-fetch-site", "cross-site"),
        )
        .await;
    }
    for origin in [EVIL, "https://admin.example", "http://app.example"] {
        expect(
            upload(&app)
                .cookie(&t)
                .header("origin", origin)
                .header("sec-fetch-site", "cross-site"),
            StatusCode::FORBIDDEN,
            refused(),
        )
        .await;
    }
}

#[tokio::test]
async fn a_wildcard_cors_setting_trusts_no_foreign_origin() {
    let app = spawn_app_with(&[("CORS_ALLOW_ORIGINS", "*")]).await;
    let t = app.user_token("u1");
    expect(
        upload(&app)
            .cookie(&t)
            .header("origin", "https://app.example"),
        StatusCode::FORBIDDEN,
        refused(),
    )
    .await;
    expect_uploaded(upload(&app).cookie(&t).header("origin", app.base.as_str())).await;
}

#[tokio::test]
async fn only_cookie_authenticated_writes_are_checked() {
    let app = spawn_app().await;
    let t = app.user_token("u1");
    let cross = |req: RequestBuilder| {
        req.header("origin", EVIL)
            .header("sec-fetch-site", "cross-site")
    };
    // The same request, told apart only by how the caller authenticates.
    expect(
        cross(upload(&app).cookie(&t)),
        StatusCode::FORBIDDEN,
        refused(),
    )
    .await;
    expect_uploaded(cross(upload(&app).bearer(&t))).await;
    // A Bearer header wins over the cookie, as it always did.
    expect_uploaded(cross(upload(&app).cookie(&t).bearer(&t))).await;
    expect_uploaded(cross(
        app.post("/v1/files/upload?filename=note.txt&user_id=u2")
            .as_service()
            .cookie(&t)
            .body("hello"),
    ))
    .await;
    let (status, body) = send(cross(app.request(Method::DELETE, PROBE).bearer(&t))).await;
    assert_eq!((status, body), accepted());
    // Reading with the cookie from anywhere is CORS's business, not this check's.
    let (status, body) = send(cross(app.get("/v1/files/all").cookie(&t))).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, body) = send(cross(app.get(PROBE).cookie(&t))).await;
    assert_eq!((status, body), accepted());
}
