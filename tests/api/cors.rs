//! CORS from `CORS_ALLOW_ORIGINS` (issue: foundation): any origin without credentials by
//! default; listed origins with credentials, others refused.

use reqwest::{Method, StatusCode};

use crate::helpers::*;

async fn preflight(app: &TestApp, origin: &str) -> reqwest::Response {
    app.request(Method::OPTIONS, "/v1/files/all")
        .header("origin", origin)
        .header("access-control-request-method", "GET")
        .header(
            "access-control-request-headers",
            "authorization,x-service-token",
        )
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn any_origin_by_default_without_credentials() {
    let app = spawn_app().await;
    let res = preflight(&app, "https://anywhere.example").await;
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(header_opt(&res, "access-control-allow-origin"), Some("*"));
    assert_eq!(header_opt(&res, "access-control-allow-credentials"), None);
    let res = app
        .get("/healthz")
        .header("origin", "https://anywhere.example")
        .send()
        .await
        .unwrap();
    assert_eq!(header_opt(&res, "access-control-allow-origin"), Some("*"));
}

#[tokio::test]
async fn listed_origins_get_credentials_others_nothing() {
    let app = spawn_app_with(&[(
        "CORS_ALLOW_ORIGINS",
        "https://app.example, https://admin.example",
    )])
    .await;
    let res = preflight(&app, "https://admin.example").await;
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(
        header_opt(&res, "access-control-allow-origin"),
        Some("https://admin.example")
    );
    assert_eq!(
        header_opt(&res, "access-control-allow-credentials"),
        Some("true")
    );
    let allowed = header_opt(&res, "access-control-allow-headers")
        .unwrap_or("")
        .to_ascii_lowercase();
    assert!(
        allowed.contains("x-service-token") && allowed.contains("authorization"),
        "{allowed}"
    );
    let res = preflight(&app, "https://evil.example").await;
    assert_eq!(header_opt(&res, "access-control-allow-origin"), None);
    // A credentialed GET from a listed origin (the auth_token cookie is sent by browsers).
    let t = app.user_token("u1");
    let res = app
        .get("/v1/files/all")
        .header("origin", "https://app.example")
        .cookie(&t)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(
        header_opt(&res, "access-control-allow-origin"),
        Some("https://app.example")
    );
    assert_eq!(
        header_opt(&res, "access-control-allow-credentials"),
        Some("true")
    );
}
