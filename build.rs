//! Embeds the git commit the binary is built from (`upload_server_build_info` in /metrics):
//! `UPLOAD_SERVER_GIT_COMMIT` from the environment when set (a build from a tarball can say
//! it), else `git rev-parse`, else `unknown`.

use std::process::Command;

fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).output().ok()?;
    if !out.status.success() {
        return None;
    }
    let text = String::from_utf8(out.stdout).ok()?.trim().to_owned();
    (!text.is_empty()).then_some(text)
}

fn main() {
    println!("cargo:rerun-if-env-changed=UPLOAD_SERVER_GIT_COMMIT");
    // `sqlx::migrate!` embeds migrations/ (src/store/pg): a new or changed migration rebuilds.
    println!("cargo:rerun-if-changed=migrations");
    let commit = std::env::var("UPLOAD_SERVER_GIT_COMMIT")
        .ok()
        .filter(|c| !c.trim().is_empty())
        .or_else(|| {
            // Built again when HEAD moves (a commit, a checkout); works in a worktree too.
            for path in ["HEAD", "logs/HEAD"] {
                // A path that does not exist would run this script on every build.
                if let Some(p) = git(&["rev-parse", "--git-path", path])
                    .filter(|p| std::path::Path::new(p).exists())
                {
                    println!("cargo:rerun-if-changed={p}");
                }
            }
            git(&["rev-parse", "--short=12", "HEAD"])
        })
        .unwrap_or_else(|| "unknown".to_owned());
    println!("cargo:rustc-env=UPLOAD_SERVER_GIT_COMMIT={commit}");
}
