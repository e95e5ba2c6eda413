//! `upload-server check` through the real binary: an old-style env file (no service token,
//! no signing key, no public URL) is reported with exit 1; a complete one over a sound root
//! passes; unreadable sidecars fail it and files without sidecars are counted; nothing is
//! started and the root is not changed.

use std::path::Path;
use std::time::Duration;

use crate::helpers::run_args_to_exit;

/// Runs `upload-server check --env-file FILE [extra]`: (exit code, stdout).
async fn check(file: &Path, extra: &[&str]) -> (i32, String) {
    let mut args = vec!["check", "--env-file", file.to_str().unwrap()];
    args.extend_from_slice(extra);
    let (status, stdout, stderr) = run_args_to_exit(&[], &args, Duration::from_secs(20)).await;
    assert!(stderr.trim().is_empty(), "stderr: {stderr}");
    (status.code().unwrap_or(-1), stdout)
}

/// A root with one file the new service wrote and one the old service left without sidecar.
fn old_root(root: &Path) {
    let folder = root.join("storage/u1/docs");
    std::fs::create_dir_all(&folder).unwrap();
    std::fs::write(folder.join("0123abcd_new.txt"), b"new").unwrap();
    std::fs::write(
        folder.join("0123abcd_new.txt.meta"),
        br#"{"original_name":"new.txt","mime":"text/plain","user_id":"u1","size":3}"#,
    )
    .unwrap();
    std::fs::write(folder.join("legacy.pdf"), b"%PDF").unwrap();
}

#[tokio::test]
async fn an_old_style_env_file_is_reported_as_an_upgrade_hazard() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("uploads");
    old_root(&root);
    let env = dir.path().join("upload.env");
    // What the old service ran on: its defaults covered the token, key and URL.
    std::fs::write(
        &env,
        format!("PORT=5070\nUPLOAD_ROOT={}\nMAX_BODY_MB=1\n", root.display()),
    )
    .unwrap();

    let (code, out) = check(&env, &[]).await;

    assert_eq!(code, 1, "{out}");
    for var in [
        "AUTH_SERVICE_TOKEN",
        "UPLOAD_SIGNING_KEY",
        "PUBLIC_BASE_URL",
    ] {
        assert!(
            out.lines()
                .any(|l| l.starts_with("PROBLEM") && l.contains(&format!("{var} is not set"))),
            "{var} not reported: {out}"
        );
    }
    assert!(out.contains("1 files have no sidecar"), "{out}");
    assert!(out.contains("storage/u1/docs/legacy.pdf"), "{out}");
    assert!(out.contains("check FAILED: 3 problems"), "{out}");
    // A check only looks: no key made, no folders added, nothing listening.
    let mut made: Vec<String> = std::fs::read_dir(&root)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    made.sort();
    assert_eq!(made, ["storage"]);

    // Accepted knowingly, the same root passes with warnings.
    let (code, out) = check(&env, &["--accept-new-secrets"]).await;
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("accepted with --accept-new-secrets"), "{out}");
}

#[tokio::test]
async fn a_complete_env_file_and_a_sound_root_pass() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("uploads");
    old_root(&root);
    std::fs::remove_file(root.join("storage/u1/docs/legacy.pdf")).unwrap();
    let env = dir.path().join("upload.env");
    std::fs::write(
        &env,
        format!(
            "UPLOAD_ROOT={}\nMAX_BODY_MB=1\nAUTH_SERVICE_TOKEN=t0k3n\n\
             UPLOAD_SIGNING_KEY=0123456789abcdef0123456789abcdef\n\
             PUBLIC_BASE_URL=https://files.example.com\n",
            root.display()
        ),
    )
    .unwrap();

    let (code, out) = check(&env, &[]).await;

    assert_eq!(code, 0, "{out}");
    assert!(!out.contains("PROBLEM"), "{out}");
    assert!(out.contains("1 files"), "{out}");
    assert!(out.contains("UPLOAD_SIGNING_KEY usable"), "{out}");
    // The secrets are never printed.
    assert!(
        !out.contains("t0k3n") && !out.contains("0123456789abcdef"),
        "{out}"
    );
    assert!(!out.contains("comma-separated"), "{out}");

    // A token holding a comma is a list now: said, as a warning.
    let text = std::fs::read_to_string(&env).unwrap();
    std::fs::write(&env, text.replace("t0k3n", "t0k,3n")).unwrap();
    let (code, out) = check(&env, &[]).await;
    assert_eq!(code, 0, "{out}");
    assert!(
        out.lines()
            .any(|l| l.starts_with("WARN") && l.contains("2 comma-separated tokens")),
        "{out}"
    );
}

#[tokio::test]
async fn bad_sidecars_bad_settings_and_a_shared_signing_key_fail_the_check() {
    use std::os::unix::fs::PermissionsExt as _;
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("uploads");
    old_root(&root);
    std::fs::write(root.join("storage/u1/docs/legacy.pdf.meta"), b"{not json").unwrap();
    let key = root.join(".signing_key");
    std::fs::write(&key, "a".repeat(64)).unwrap();
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let env = dir.path().join("upload.env");
    std::fs::write(
        &env,
        format!(
            "UPLOAD_ROOT={}\nMAX_BODY_MB=1\nAUTH_SERVICE_TOKEN=t\nPUBLIC_BASE_URL=https://f.example\n",
            root.display()
        ),
    )
    .unwrap();

    let (code, out) = check(&env, &["--accept-new-secrets"]).await;

    assert_eq!(code, 1, "{out}");
    assert!(out.contains("1 sidecars cannot be read"), "{out}");
    assert!(out.contains("legacy.pdf.meta: not a JSON object"), "{out}");
    assert!(out.contains("mode 0644"), "{out}");

    // A value that does not parse is reported, naming the variable.
    std::fs::write(&env, "PORT=lots\n").unwrap();
    let (code, out) = check(&env, &["--accept-new-secrets"]).await;
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("PROBLEM    settings: PORT"), "{out}");
}
