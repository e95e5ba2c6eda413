//! The log format (issue 17): no colour codes when the output is not a terminal, JSON lines
//! with `target`, a request id echoed and logged, and refused credentials logged with their
//! reason but never the token.

use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::helpers::{
    client, header, keys, mint_with, now, rs256, start_server, As, Server, KID, PROBE,
    SERVICE_TOKEN,
};

async fn start(format: &str) -> (Server, tempfile::TempDir) {
    let root = tempfile::tempdir().unwrap();
    let server = start_server(
        &[
            ("PORT", "0"),
            ("UPLOAD_ROOT", root.path().to_str().unwrap()),
            ("AUTH_SERVICE_TOKEN", SERVICE_TOKEN),
            ("UPLOAD_SIGNING_KEY", "sign-1"),
            ("LOG_FORMAT", format),
            ("AUTH_JWT_AUDIENCE", "files"),
            ("AUTH_JWT_ISSUER", "https://auth.example"),
            (
                "JWT_PUBLIC_KEY_PATH",
                keys().main.public_path.to_str().unwrap(),
            ),
        ],
        &[],
    )
    .await;
    (server, root)
}

/// The JSON lines of the log (stdout), parsed; any other line fails the test.
fn json_lines(server: &Server) -> Vec<Value> {
    server
        .stdout()
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l:?}")))
        .collect()
}

/// Polls until the access line of `request_id` is written (after the body is sent).
async fn access_line(server: &Server, request_id: &str) -> Value {
    for _ in 0..100 {
        if let Some(l) = json_lines(server)
            .into_iter()
            .find(|l| l["target"] == "access" && l["request_id"] == request_id)
        {
            return l;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    panic!("no access line for {request_id}: {}", server.stdout());
}

#[tokio::test]
async fn request_ids_are_taken_or_made_echoed_and_logged() {
    let (mut server, _root) = start("json").await;
    let http = client();
    // nginx's $request_id: 32 hex digits.
    let given = "5f0c2a9e8b7d4c3a1f2e3d4c5b6a7980";
    let res = http
        .get(server.url("/healthz"))
        .header("x-request-id", given)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(header(&res, "x-request-id"), given);
    let line = access_line(&server, given).await;
    assert_eq!(line["path"], "/healthz");
    assert_eq!(line["status"], 200);

    // None given, or one that could break a log line: a fresh one is made.
    for bad in [None, Some("a b"), Some("x\"y"), Some(&*"x".repeat(129))] {
        let mut req = http.get(server.url("/healthz"));
        if let Some(v) = bad {
            req = req.header("x-request-id", v);
        }
        let res = req.send().await.unwrap();
        let id = header(&res, "x-request-id").to_owned();
        assert_eq!(id.len(), 32, "{bad:?} -> {id}");
        assert!(id.bytes().all(|b| b.is_ascii_hexdigit()), "{id}");
        access_line(&server, &id).await;
    }
    // Error answers carry it too, and lines logged while a request runs name it.
    let res = http
        .get(server.url(PROBE))
        .header("x-request-id", "req-42")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(header(&res, "x-request-id"), "req-42");
    access_line(&server, "req-42").await;
    server.stop().await;
}

#[tokio::test]
async fn json_lines_have_a_target_and_no_escape_codes() {
    let (mut server, _root) = start("json").await;
    let http = client();
    let res = http
        .post(server.url("/v1/files/upload?user_id=u1&filename=a.txt"))
        .as_service()
        .header("x-request-id", "up-1")
        .body("hello")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    access_line(&server, "up-1").await;
    let stdout = server.stdout();
    assert!(!stdout.contains('\u{1b}'), "{stdout}");
    let lines = json_lines(&server);
    assert!(lines.iter().all(|l| l["target"].is_string()), "{stdout}");
    let activity = lines
        .iter()
        .find(|l| l["target"] == "activity")
        .unwrap_or_else(|| panic!("no activity line: {stdout}"));
    // The activity line belongs to the request: its span carries the id.
    assert_eq!(activity["span"]["request_id"], "up-1", "{activity}");
    server.stop().await;
}

#[tokio::test]
async fn text_lines_have_no_escape_codes_when_not_on_a_terminal() {
    let (mut server, _root) = start("text").await;
    let res = client()
        .get(server.url("/healthz"))
        .header("x-request-id", "text-1")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    for _ in 0..100 {
        if server.stdout().contains("request_id=text-1") {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let stdout = server.stdout();
    assert!(stdout.contains("request_id=text-1"), "{stdout}");
    assert!(!stdout.contains('\u{1b}'), "{stdout}");
    assert!(!server.stderr().contains('\u{1b}'));
    server.stop().await;
}

#[tokio::test]
async fn a_refused_token_logs_why_but_not_the_token() {
    let (mut server, _root) = start("json").await;
    let http = client();
    let key = keys().main.encoding_key();
    let stranger = keys().other.encoding_key();
    let good = json!({ "user_id": "u1", "aud": "files", "iss": "https://auth.example" });
    let with = |extra: Value| {
        let mut c = good.clone();
        c["exp"] = json!(now() + 600);
        for (k, v) in extra.as_object().unwrap() {
            c[k] = v.clone();
        }
        c
    };
    let cases = [
        (
            "expired",
            mint_with(&rs256(KID), &with(json!({ "exp": now() - 600 })), &key),
        ),
        (
            "bad_signature",
            mint_with(&rs256(KID), &with(json!({})), &stranger),
        ),
        (
            "wrong_audience",
            mint_with(&rs256(KID), &with(json!({ "aud": "other" })), &key),
        ),
        (
            "wrong_issuer",
            mint_with(&rs256(KID), &with(json!({ "iss": "https://evil" })), &key),
        ),
        ("malformed", "not.a.jwt".to_owned()),
        (
            "no_user",
            mint_with(&rs256(KID), &with(json!({ "user_id": null })), &key),
        ),
    ];
    for (i, (reason, token)) in cases.iter().enumerate() {
        let id = format!("refused-{i}");
        let res = http
            .get(server.url(PROBE))
            .bearer(token)
            .header("x-request-id", &id)
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::UNAUTHORIZED, "{reason}");
        access_line(&server, &id).await;
        let lines = json_lines(&server);
        let line = lines
            .iter()
            .find(|l| l["target"] == "auth" && l["span"]["request_id"] == id.as_str())
            .unwrap_or_else(|| panic!("no auth line for {reason}: {}", server.stdout()));
        assert_eq!(line["reason"], *reason, "{line}");
        assert_eq!(line["level"], "INFO", "{line}");
    }
    let res = http
        .get(server.url(PROBE))
        .service_token("wrong-service-token")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
    let stdout = server.stdout();
    assert!(stdout.contains("\"reason\":\"service_token\""), "{stdout}");
    // No token, nor a piece of one, in the log.
    for (_, token) in &cases {
        for part in token.split('.').filter(|p| p.len() > 8) {
            assert!(!stdout.contains(part), "token text in the log: {stdout}");
        }
    }
    assert!(!stdout.contains("wrong-service-token"));
    server.stop().await;
}
