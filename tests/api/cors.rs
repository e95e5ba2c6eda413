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

/// What tus and the draft need from CORS, in both modes: the preflight allows PATCH, HEAD
/// and DELETE and names every requested header, `Authorization` included (the Fetch
/// standard keeps it out of `Access-Control-Allow-Headers: *`, so with any origin the names
/// are echoed too, still without credentials); responses expose the protocols' headers and
/// the stored file's key and URL. (Browsers doing it: tests/api/cross_origin.rs.)
#[tokio::test]
async fn tus_and_draft_headers_are_allowed_and_exposed_in_both_modes() {
    let requested = "authorization,content-type,tus-resumable,upload-length,upload-metadata,\
                     upload-offset,upload-complete,upload-draft-interop-version,upload-concat,\
                     upload-checksum,x-http-method-override";
    for (env, origin, credentials) in [
        ("", "https://anywhere.example", None),
        ("https://app.example", "https://app.example", Some("true")),
    ] {
        let app = spawn_app_with(&[("CORS_ALLOW_ORIGINS", env)]).await;
        for (path, method) in [
            ("/v1/files/tus/", "POST"),
            (
                "/v1/files/tus/0b7e0c6e-1f0a-4d5e-9f3e-2a1b3c4d5e6f",
                "PATCH",
            ),
            ("/v1/files/resumable/x", "HEAD"),
            ("/v1/files/resumable/x", "DELETE"),
        ] {
            let res = app
                .request(Method::OPTIONS, path)
                .header("origin", origin)
                .header("access-control-request-method", method)
                .header("access-control-request-headers", requested)
                .send()
                .await
                .unwrap();
            assert_eq!(res.status(), StatusCode::OK, "{env:?} {method} {path}");
            let allowed = header_opt(&res, "access-control-allow-headers").unwrap_or("");
            assert_ne!(allowed, "*", "{env:?}");
            let allowed: Vec<String> = allowed
                .split(',')
                .map(|h| h.trim().to_ascii_lowercase())
                .collect();
            for h in requested.split(',') {
                assert!(
                    allowed.iter().any(|a| a == h),
                    "{env:?}: {h} not in {allowed:?}"
                );
            }
            let methods = header_opt(&res, "access-control-allow-methods").unwrap_or("");
            assert!(methods.contains(method), "{env:?}: {methods}");
            assert_eq!(
                header_opt(&res, "access-control-allow-credentials"),
                credentials,
                "{env:?}"
            );
        }
        let res = app
            .request(
                Method::HEAD,
                "/v1/files/tus/0b7e0c6e-1f0a-4d5e-9f3e-2a1b3c4d5e6f",
            )
            .header("origin", origin)
            .header("tus-resumable", "1.0.0")
            .send()
            .await
            .unwrap();
        let exposed: Vec<String> = header_opt(&res, "access-control-expose-headers")
            .unwrap_or("")
            .split(',')
            .map(|h| h.trim().to_ascii_lowercase())
            .collect();
        for h in [
            "location",
            "upload-offset",
            "upload-length",
            "upload-expires",
            "upload-metadata",
            "upload-concat",
            "upload-complete",
            "upload-limit",
            "upload-draft-interop-version",
            "tus-resumable",
            "tus-version",
            "tus-extension",
            "tus-max-size",
            "tus-checksum-algorithm",
            "x-upload-key",
            "x-upload-url",
        ] {
            assert!(
                exposed.iter().any(|e| e == h),
                "{env:?}: {h} not in {exposed:?}"
            );
        }
    }
}
