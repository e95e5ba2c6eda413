//! Configuration (API.md §1) through the real binary: bad values stop it with one line naming
//! the variable; the env file and `UPLOAD_ENV_FILE`; the environment winning; no `$VAR`
//! expansion; secrets kept out of the output; the generated signing key; start-up failures
//! (address in use, read-only root) exiting 2; `--help` listing the settings table.

use std::os::unix::fs::PermissionsExt as _;
use std::time::{Duration, Instant};

use reqwest::StatusCode;

use crate::helpers::{
    client, keys, mount_tmpfs, run_args_to_exit, run_to_exit, start_server, Server,
};

const GENERATE: &str = "/v1/files/generate-token?user_id=u1&expires_hours=1";

/// Asserts the configuration was refused: non-zero exit, stderr one line naming `var`.
async fn assert_refused(env: &[(&str, &str)], var: &str) -> i32 {
    let started = Instant::now();
    let (status, _stdout, stderr) = run_to_exit(env, Duration::from_secs(10)).await;
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "took {:?} to refuse {var}",
        started.elapsed()
    );
    assert!(!status.success(), "{var}: exited with {status}");
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "{var}: stderr is not one line: {stderr:?}");
    assert!(lines[0].contains(var), "{var}: not named in {stderr:?}");
    status.code().unwrap_or(-1)
}

#[tokio::test]
async fn a_port_that_is_not_a_number_stops_the_server_with_code_2() {
    let root = tempfile::tempdir().unwrap();
    let code = assert_refused(
        &[
            ("PORT", "abc"),
            ("UPLOAD_ROOT", root.path().to_str().unwrap()),
        ],
        "PORT",
    )
    .await;
    assert_eq!(code, 2);
}

#[tokio::test]
async fn bad_values_stop_the_server_naming_the_variable() {
    use base64::Engine as _;
    let root = tempfile::tempdir().unwrap();
    let not_a_key = root.path().join("not-a-key.pem");
    std::fs::write(&not_a_key, "hello, I am not a key\n").unwrap();
    let garbage_pem =
        "-----BEGIN PUBLIC KEY-----\nZ2FyYmFnZSBnYXJiYWdlIGdhcmJhZ2U=\n-----END PUBLIC KEY-----\n";
    let garbage_b64 = base64::engine::general_purpose::STANDARD.encode(garbage_pem);
    let cases = [
        ("PORT", "99999"),
        ("JWT_PUBLIC_KEY_PATH", "/nonexistent/key.pem"),
        ("JWT_PUBLIC_KEY_PATH", not_a_key.to_str().unwrap()),
        ("AUTH_JWT_PUBLIC_KEY_BASE64", garbage_b64.as_str()),
        ("AUTH_JWT_PUBLIC_KEY_BASE64", "%%% not base64 %%%"),
        ("JWT_PRIVATE_KEY_PATH", "/nonexistent/key.pem"),
        ("MAX_BODY_MB", "lots"),
        ("PER_USER_QUOTA_GB", "-1"),
        ("AUTH_JWKS_URL", "ftp://keys.example/jwks.json"),
        ("TRUSTED_PROXIES", "10.0.0.0/8, nginx"),
    ];
    for (var, value) in cases {
        let env = [(var, value), ("UPLOAD_ROOT", root.path().to_str().unwrap())];
        let code = assert_refused(&env, var).await;
        assert_eq!(code, 2, "{var}={value}");
    }
}

/// A minimal env file for a server on `port` (0: any free port, which the server reports).
fn env_file_text(port: u16, root: &std::path::Path, token: &str) -> String {
    format!(
        "# upload.env, systemd EnvironmentFile style\n\
         PORT={port}\n\
         BIND_HOST=127.0.0.1\n\
         UPLOAD_ROOT={}\n\
         AUTH_SERVICE_TOKEN={token}\n\
         JWT_PRIVATE_KEY_PATH={}\n\
         UPLOAD_SIGNING_KEY=file-signing-key\n",
        root.display(),
        keys().main.private_path.display(),
    )
}

/// The status of `generate-token` with `token` on `server`.
async fn generate_with(server: &Server, token: &str) -> StatusCode {
    client()
        .post(server.url(GENERATE))
        .header("x-service-token", token)
        .send()
        .await
        .unwrap()
        .status()
}

#[tokio::test]
async fn the_env_file_option_configures_the_server() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("upload.env");
    std::fs::write(&file, env_file_text(0, dir.path(), "file-token")).unwrap();

    let mut server = start_server(&[], &["--env-file", file.to_str().unwrap()]).await;

    assert_eq!(generate_with(&server, "file-token").await, StatusCode::OK);
    assert_eq!(
        generate_with(&server, "other").await,
        StatusCode::UNAUTHORIZED
    );
    assert!(dir.path().join("storage").is_dir());
    server.stop().await;
}

#[tokio::test]
async fn upload_env_file_works_like_the_option() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("upload.env");
    std::fs::write(&file, env_file_text(0, dir.path(), "file-token")).unwrap();

    let mut server = start_server(&[("UPLOAD_ENV_FILE", file.to_str().unwrap())], &[]).await;

    assert_eq!(generate_with(&server, "file-token").await, StatusCode::OK);
    server.stop().await;
}

#[tokio::test]
async fn the_process_environment_wins_over_the_file() {
    let dir = tempfile::tempdir().unwrap();
    // The file names a port this test holds: a server that took it would fail to listen.
    let held = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let file_port = held.local_addr().unwrap().port();
    let file = dir.path().join("upload.env");
    std::fs::write(&file, env_file_text(file_port, dir.path(), "file-token")).unwrap();

    let mut server = start_server(
        &[("PORT", "0"), ("AUTH_SERVICE_TOKEN", "env-token")],
        &["--env-file", file.to_str().unwrap()],
    )
    .await;
    assert_ne!(server.port(), file_port);

    assert_eq!(generate_with(&server, "env-token").await, StatusCode::OK);
    assert_eq!(
        generate_with(&server, "file-token").await,
        StatusCode::UNAUTHORIZED
    );
    server.stop().await;
    drop(held);
}

#[tokio::test]
async fn env_file_values_are_not_expanded() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("upload.env");
    let text = env_file_text(0, dir.path(), "ab$HOME");
    std::fs::write(&file, text).unwrap();

    let mut server = start_server(
        &[("HOME", "/home/tester")],
        &["--env-file", file.to_str().unwrap()],
    )
    .await;

    assert_eq!(generate_with(&server, "ab$HOME").await, StatusCode::OK);
    for expanded in ["ab/home/tester", "ab"] {
        assert_eq!(
            generate_with(&server, expanded).await,
            StatusCode::UNAUTHORIZED,
            "{expanded}"
        );
    }
    server.stop().await;
}

#[tokio::test]
async fn secrets_never_reach_the_output() {
    let dir = tempfile::tempdir().unwrap();
    let service_token = "svc-secret-7c1e0b9a44d2";
    let signing_key = "sign-secret-93f7aa01c5e8";
    let wrong_token = "typo-secret-51d0be77";
    let mut server = start_server(
        &[
            ("PORT", "0"),
            ("UPLOAD_ROOT", dir.path().to_str().unwrap()),
            ("AUTH_SERVICE_TOKEN", service_token),
            ("UPLOAD_SIGNING_KEY", signing_key),
            (
                "JWT_PRIVATE_KEY_PATH",
                keys().main.private_path.to_str().unwrap(),
            ),
            (
                "JWT_PUBLIC_KEY_PATH",
                keys().main.public_path.to_str().unwrap(),
            ),
            ("RUST_LOG", "debug"),
        ],
        &[],
    )
    .await;
    let http = client();

    let res = http
        .post(server.url(GENERATE))
        .header("x-service-token", service_token)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let body: serde_json::Value = res.json().await.unwrap();
    let jwt = body["token"].as_str().unwrap().to_owned();
    let res = http
        .post(server.url(GENERATE))
        .header("x-service-token", wrong_token)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
    for req in [
        http.get(server.url("/.well-known/jwks.json"))
            .bearer_auth(&jwt),
        http.get(server.url("/nowhere"))
            .header("cookie", format!("auth_token={jwt}")),
        http.post(server.url(GENERATE)).bearer_auth(&jwt),
    ] {
        req.send().await.unwrap();
    }
    server.stop().await;

    let output = format!("{}\n{}", server.stdout(), server.stderr());
    assert!(
        output.contains("generate-token"),
        "no access lines to check: {output}"
    );
    let private_key_line = keys().main.private_pem.lines().nth(1).unwrap().to_owned();
    for (what, secret) in [
        ("service token", service_token),
        ("signing key", signing_key),
        ("presented wrong token", wrong_token),
        ("user JWT", jwt.as_str()),
        ("private key", private_key_line.as_str()),
    ] {
        assert!(!output.contains(secret), "the {what} is in the output");
    }
}

#[tokio::test]
async fn a_signing_key_is_generated_once_and_kept_private() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("uploads");
    let root_s = root.to_str().unwrap();
    let env = [
        ("PORT", "0"),
        ("UPLOAD_ROOT", root_s),
        ("AUTH_SERVICE_TOKEN", "t"),
    ];
    let start = || start_server(&env, &[]);
    let key_path = root.join(".signing_key");

    let mut first = start().await;
    let meta = std::fs::metadata(&key_path).expect("no UPLOAD_ROOT/.signing_key");
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    let key = std::fs::read_to_string(&key_path).unwrap();
    assert!(key.trim().len() >= 32, "a short key: {} chars", key.len());
    first.stop().await;
    let output = format!("{}{}", first.stdout(), first.stderr());
    assert!(
        output.contains("UPLOAD_SIGNING_KEY"),
        "no warning about the generated key: {output}"
    );
    assert!(!output.contains(key.trim()), "the generated key was logged");

    let mut second = start().await;
    assert_eq!(std::fs::read_to_string(&key_path).unwrap(), key);
    assert_eq!(
        std::fs::metadata(&key_path).unwrap().permissions().mode() & 0o777,
        0o600
    );
    second.stop().await;
}

#[tokio::test]
async fn start_up_failures_exit_2_naming_the_setting() {
    let root = tempfile::tempdir().unwrap();
    let root_s = root.path().to_str().unwrap();
    // A port in use.
    let held = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = held.local_addr().unwrap().port().to_string();
    let code = assert_refused(&[("PORT", port.as_str()), ("UPLOAD_ROOT", root_s)], "PORT").await;
    assert_eq!(code, 2, "port in use");
    drop(held);
    // A port out of range, and an address this host does not have (TEST-NET-3).
    for (var, value) in [("PORT", "70000"), ("BIND_HOST", "203.0.113.9")] {
        let env = [(var, value), ("UPLOAD_ROOT", root_s), ("PORT", "0")];
        let env = if var == "PORT" { &env[..2] } else { &env[..] };
        assert_eq!(assert_refused(env, var).await, 2, "{var}={value}");
    }
    // A root that cannot be made (its parent is a file): refused even when run as root.
    let file = root.path().join("a-file");
    std::fs::write(&file, b"x").unwrap();
    let under_file = file.join("uploads");
    let env = [("PORT", "0"), ("UPLOAD_ROOT", under_file.to_str().unwrap())];
    assert_eq!(
        assert_refused(&env, "UPLOAD_ROOT").await,
        2,
        "root under a file"
    );
}

#[tokio::test]
async fn a_read_only_root_exits_2_naming_upload_root() {
    let dir = tempfile::tempdir().unwrap();
    let Some(tmpfs) = mount_tmpfs(
        dir.path(),
        "1m",
        "a_read_only_root_exits_2_naming_upload_root",
    ) else {
        return;
    };
    // The folders exist already (an earlier start) and the signing key is set: only the
    // write probe can notice.
    for d in ["storage", ".parts/.staging", ".quota"] {
        std::fs::create_dir_all(dir.path().join(d)).unwrap();
    }
    tmpfs.remount("ro");
    let env = [
        ("PORT", "0"),
        ("UPLOAD_ROOT", dir.path().to_str().unwrap()),
        ("UPLOAD_SIGNING_KEY", "k"),
    ];
    let code = assert_refused(&env, "UPLOAD_ROOT").await;
    assert_eq!(code, 2);
}

#[tokio::test]
async fn help_lists_every_setting_with_its_default() {
    let (status, stdout, _) = run_args_to_exit(&[], &["--help"], Duration::from_secs(10)).await;
    assert!(status.success());
    for s in upload_server::config::SETTINGS {
        let line = stdout
            .lines()
            .find(|l| l.trim_start().starts_with(&format!("{} ", s.name)))
            .unwrap_or_else(|| panic!("--help does not list {}: {stdout}", s.name));
        assert!(
            line.contains(&format!("default: {}", s.default.replace('`', ""))),
            "{line}"
        );
    }
}

#[tokio::test]
async fn an_unset_public_base_url_on_a_public_address_is_warned_about_once() {
    let root = tempfile::tempdir().unwrap();
    let root_s = root.path().to_str().unwrap();
    let base = [
        ("PORT", "0"),
        ("UPLOAD_ROOT", root_s),
        ("UPLOAD_SIGNING_KEY", "k"),
    ];
    let warned = |out: &str| {
        out.lines()
            .filter(|l| l.contains("PUBLIC_BASE_URL is not set"))
            .count()
    };
    let mut wide = start_server(
        &[base.as_slice(), &[("BIND_HOST", "0.0.0.0")]].concat(),
        &[],
    )
    .await;
    wide.stop().await;
    assert_eq!(warned(&wide.stdout()), 1, "{}", wide.stdout());

    let mut local = start_server(&base, &[]).await;
    local.stop().await;
    assert_eq!(warned(&local.stdout()), 0, "{}", local.stdout());
    let with_url = [
        ("PUBLIC_BASE_URL", "https://files.example.com"),
        ("BIND_HOST", "0.0.0.0"),
    ];
    let mut set = start_server(&[base.as_slice(), &with_url].concat(), &[]).await;
    set.stop().await;
    assert_eq!(warned(&set.stdout()), 0, "{}", set.stdout());
}
