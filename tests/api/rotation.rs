//! Secret rotation without downtime (issue 17): several service tokens at once, signed URLs
//! of the previous signing key, and `SIGHUP` reloading the env file while a download runs.

use std::time::{Duration, Instant};

use futures_util::StreamExt as _;
use reqwest::StatusCode;
use serde_json::json;

use crate::helpers::{
    accepted, client, expect, keys, launch, now, pattern, send, sha_hex, spawn_app_with, As,
    Server, PROBE,
};

#[tokio::test]
async fn two_service_tokens_both_work_and_nothing_else_does() {
    let app = spawn_app_with(&[("AUTH_SERVICE_TOKEN", "token-new, token-old")]).await;
    for token in ["token-new", "token-old"] {
        let (s, b) = send(app.get(PROBE).service_token(token)).await;
        assert_eq!((s, b), accepted(), "{token}");
    }
    for token in [
        "token-new, token-old",
        "token-ne",
        "token-old2",
        "",
        "token-new,",
    ] {
        expect(
            app.get(PROBE).service_token(token),
            StatusCode::UNAUTHORIZED,
            json!({ "detail": "Invalid service token" }),
        )
        .await;
    }
}

#[tokio::test]
async fn a_url_signed_with_the_previous_key_still_verifies() {
    let app = spawn_app_with(&[
        ("UPLOAD_SIGNING_KEY", "key-2026-12"),
        ("UPLOAD_SIGNING_KEY_PREVIOUS", "key-2026-11"),
    ])
    .await;
    let data = pattern(3000, 1);
    let done = app
        .as_service()
        .acting_for("u1")
        .upload_file("a.bin", None, &data)
        .await;
    let key = done["key"].as_str().unwrap();
    let exp = now() + 600;
    use upload_server::signer::{signed_url, Disposition};
    // Signed before the rotation, with what is now the previous key.
    let old = signed_url(&app.base, b"key-2026-11", key, exp, Disposition::Inline);
    let res = app.http.get(&old).send().await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(res.bytes().await.unwrap().as_ref(), data.as_slice());
    // New URLs are signed with the new key.
    let (s, b) = send(
        app.as_service()
            .get(&format!("/v1/files/signed-url?key={key}&ttl=600")),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    let url = b["url"].as_str().unwrap();
    let sig = url.rsplit("sig=").next().unwrap();
    let exp_new: i64 = b["expires_at"].as_i64().unwrap();
    assert_eq!(
        sig,
        upload_server::signer::sign(b"key-2026-12", key, exp_new, Disposition::Inline)
    );
    assert_eq!(
        app.http.get(url).send().await.unwrap().status(),
        StatusCode::OK
    );
    // A key that is neither still fails.
    let stranger = signed_url(&app.base, b"key-2026-10", key, exp, Disposition::Inline);
    expect(
        app.http.get(&stranger),
        StatusCode::FORBIDDEN,
        json!({ "detail": "Invalid or expired signature" }),
    )
    .await;

    // Without UPLOAD_SIGNING_KEY_PREVIOUS the old URL is refused.
    let after = spawn_app_with(&[("UPLOAD_SIGNING_KEY", "key-2026-12")]).await;
    let old = signed_url(&after.base, b"key-2026-11", key, exp, Disposition::Inline);
    expect(
        after.http.get(&old),
        StatusCode::FORBIDDEN,
        json!({ "detail": "Invalid or expired signature" }),
    )
    .await;
}

fn write_env(path: &std::path::Path, root: &std::path::Path, token: &str) {
    let public = keys().main.public_path.to_str().unwrap().to_owned();
    std::fs::write(
        path,
        format!(
            "PORT=0\nUPLOAD_ROOT={}\nAUTH_SERVICE_TOKEN={token}\nUPLOAD_SIGNING_KEY=sign-1\n\
             JWT_PUBLIC_KEY_PATH={public}\n",
            root.display()
        ),
    )
    .unwrap();
}

fn hangup(server: &Server) {
    let status = std::process::Command::new("kill")
        .args(["-HUP", &server.pid().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

/// Waits until the server's log holds `text` `times` times.
async fn wait_for_log(server: &Server, text: &str, times: usize) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let log = format!("{}{}", server.stdout(), server.stderr());
        if log.matches(text).count() >= times {
            return;
        }
        assert!(Instant::now() < deadline, "no {text:?} in the log: {log}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn probe(server: &Server, token: &str) -> StatusCode {
    client()
        .get(server.url(PROBE))
        .service_token(token)
        .send()
        .await
        .unwrap()
        .status()
}

/// As systemd runs it: the env file named with `--env-file` and its pairs also in the
/// environment (`EnvironmentFile=`). After `SIGHUP` the file's new token works, the old one
/// is refused, and a download that started before the reload ends whole.
#[tokio::test]
async fn sighup_reloads_the_env_file_and_a_download_in_flight_survives() {
    let root = tempfile::tempdir().unwrap();
    let etc = tempfile::tempdir().unwrap();
    let env_file = etc.path().join("upload.env");
    write_env(&env_file, root.path(), "token-old");
    let root_s = root.path().to_str().unwrap().to_owned();
    let mut server = launch(
        &[
            ("PORT", "0"),
            ("UPLOAD_ROOT", &root_s),
            ("AUTH_SERVICE_TOKEN", "token-old"),
            ("UPLOAD_SIGNING_KEY", "sign-1"),
        ],
        &["--env-file", env_file.to_str().unwrap()],
    );
    server.wait_ready().await;
    let http = client();

    // A file large enough that its download outlasts the socket buffers.
    let data = pattern(24 << 20, 3);
    let res = http
        .post(server.url("/v1/files/upload?user_id=u1&filename=big.bin"))
        .service_token("token-old")
        .body(data.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let key = res.json::<serde_json::Value>().await.unwrap()["files"][0]["key"]
        .as_str()
        .unwrap()
        .to_owned();
    let mut download = http
        .get(server.url(&format!("/{key}")))
        .send()
        .await
        .unwrap();
    assert_eq!(download.status(), StatusCode::OK);
    let mut body = Vec::new();
    let first = download.chunk().await.unwrap().unwrap();
    body.extend_from_slice(&first);
    assert!(body.len() < data.len());

    // Rotate: the new token in the file, then SIGHUP.
    write_env(&env_file, root.path(), "token-new");
    hangup(&server);
    wait_for_log(&server, "reloaded the secrets", 1).await;
    assert_eq!(probe(&server, "token-new").await, StatusCode::NOT_FOUND);
    assert_eq!(probe(&server, "token-old").await, StatusCode::UNAUTHORIZED);

    // A file that does not parse: the secrets in use stay, and the log says why.
    std::fs::write(&env_file, "AUTH_SERVICE_TOKEN=a,,b\n").unwrap();
    hangup(&server);
    wait_for_log(&server, "reload failed", 1).await;
    let log = server.stdout();
    assert!(log.contains("token 2 of 3 is empty"), "{log}");
    assert_eq!(probe(&server, "token-new").await, StatusCode::NOT_FOUND);

    // The download started before both reloads ends whole.
    let mut stream = download.bytes_stream();
    while let Some(chunk) = stream.next().await {
        body.extend_from_slice(&chunk.unwrap());
    }
    assert_eq!(body.len(), data.len());
    assert_eq!(sha_hex(&body), sha_hex(&data));
    // Still the same process.
    assert!(server.child.try_wait().unwrap().is_none());
    server.stop().await;
}
