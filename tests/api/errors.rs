//! The error shape (API.md §6): every error is JSON `{"detail": ...}`, whoever produced it
//! (the router, a body limit, an extractor).

use reqwest::{Method, StatusCode};
use serde_json::json;

use crate::helpers::{expect, send, spawn_app, spawn_app_with, As};

#[tokio::test]
async fn an_unknown_path_is_a_json_404() {
    let app = spawn_app().await;
    for path in ["/no/such/path", "/v2/files/init", "/healthz/extra"] {
        expect(
            app.get(path),
            StatusCode::NOT_FOUND,
            json!({ "detail": "Not Found" }),
        )
        .await;
    }
    // Authentication does not change that.
    expect(
        app.post("/v1/nothing").as_service(),
        StatusCode::NOT_FOUND,
        json!({ "detail": "Not Found" }),
    )
    .await;
}

#[tokio::test]
async fn a_wrong_method_is_a_json_405_with_allow() {
    let app = spawn_app().await;
    for (method, path) in [
        (Method::DELETE, "/healthz"),
        (Method::POST, "/healthz"),
        (Method::GET, "/v1/files/generate-token"),
    ] {
        let res = app.request(method.clone(), path).send().await.unwrap();
        let allow = res
            .headers()
            .get("allow")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let (status, body) = crate::helpers::json_of(res).await;
        assert_eq!(
            (status, body),
            (
                StatusCode::METHOD_NOT_ALLOWED,
                json!({ "detail": "Method Not Allowed" })
            ),
            "{method} {path}"
        );
        let allow = allow.unwrap_or_else(|| panic!("{method} {path}: no Allow header"));
        assert!(!allow.is_empty(), "{method} {path}: empty Allow");
    }
}

#[tokio::test]
async fn a_body_over_max_body_mb_is_a_json_413() {
    let app = spawn_app_with(&[("MAX_BODY_MB", "1")]).await;
    let body = vec![b'x'; 2 * 1024 * 1024];

    let (status, json) = send(
        app.post("/v1/files/generate-token?user_id=u1")
            .as_service()
            .header("content-type", "application/octet-stream")
            .body(body),
    )
    .await;

    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{json}");
    assert!(
        json["detail"].as_str().is_some_and(|d| !d.is_empty()),
        "{json}"
    );
    assert_eq!(json.as_object().unwrap().len(), 1, "{json}");
}

#[tokio::test]
async fn a_bad_query_value_is_a_fastapi_style_422() {
    let app = spawn_app().await;

    let (status, body) = send(
        app.post("/v1/files/generate-token?user_id=u1&expires_hours=abc")
            .as_service(),
    )
    .await;

    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert_eq!(body.as_object().unwrap().len(), 1, "{body}");
    let items = body["detail"]
        .as_array()
        .unwrap_or_else(|| panic!("detail is not a list: {body}"));
    assert!(!items.is_empty(), "{body}");
    for item in items {
        assert!(item["msg"].is_string(), "{item}");
        assert!(item["type"].is_string(), "{item}");
        assert!(item["loc"].is_array(), "{item}");
    }
    assert_eq!(items[0]["loc"], json!(["query", "expires_hours"]), "{body}");
}

#[tokio::test]
async fn auth_errors_are_json_with_a_challenge() {
    let app = spawn_app().await;
    let res = app
        .post("/v1/files/generate-token?user_id=u1")
        .send()
        .await
        .unwrap();
    // RFC 9110 §11.6.1: a 401 carries a challenge.
    assert!(res.headers().contains_key("www-authenticate"));
    let (status, body) = crate::helpers::json_of(res).await;
    assert_eq!(
        (status, body),
        (
            StatusCode::UNAUTHORIZED,
            json!({ "detail": "Authentication required" })
        )
    );
}

/// Regression: the DELETE-only catch-all `/v1/files/{*key}` matched every path under
/// `/v1/files/`, so `GET /v1/files/anything` answered 405 as if it were an operation.
#[tokio::test]
async fn a_path_under_v1_files_that_is_no_operation_is_a_json_404() {
    let app = spawn_app().await;
    for (method, path) in [
        (Method::GET, "/v1/files/anything"),
        (Method::GET, "/v1/files/a/b/c.txt"),
        (Method::POST, "/v1/files/nothing"),
        (Method::PUT, "/v1/files/storage"),
        (Method::GET, "/v1/files/storage/u1/.hidden"),
    ] {
        expect(
            app.request(method.clone(), path).as_service(),
            StatusCode::NOT_FOUND,
            json!({ "detail": "Not Found" }),
        )
        .await;
    }
    // A file key is an operation (DELETE): other methods on it are 405, with Allow.
    for key in [
        "storage/u1/00000000_a.txt",
        "storage%2Fu1%2Fdocs%2F00000000_a.txt",
    ] {
        let res = app
            .get(&format!("/v1/files/{key}"))
            .as_service()
            .send()
            .await
            .unwrap();
        assert_eq!(res.headers()["allow"], "DELETE", "{key}");
        let (status, body) = crate::helpers::json_of(res).await;
        assert_eq!(
            (status, body),
            (
                StatusCode::METHOD_NOT_ALLOWED,
                json!({ "detail": "Method Not Allowed" })
            ),
            "{key}"
        );
    }
    // DELETE still reaches its handler, whatever the path.
    let (status, _) = send(
        app.request(Method::DELETE, "/v1/files/anything")
            .as_service(),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
}
