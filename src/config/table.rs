//! The one table of settings: name, default and meaning of every variable. `--help` prints
//! it, README's settings table is a copy of [`markdown_table`] (a test keeps them equal), and
//! only the names listed here reach the parser (see `Settings::from_sources`).
//!
//! Adding a setting: a row here (README's table then fails its test until the row is pasted
//! there too), a field in `Raw` and its parsing in `Settings::validate` (`mod.rs`), and a
//! line in `upload.env.template` (also tested).

/// One setting as documented.
#[derive(Debug, Clone, Copy)]
pub struct Setting {
    /// The environment variable.
    pub name: &'static str,
    /// Its default, as Markdown (`unset` when there is none).
    pub default: &'static str,
    /// What it does, as Markdown.
    pub meaning: &'static str,
}

/// Every setting, in README's order.
pub const SETTINGS: &[Setting] = &[
    Setting {
        name: "PORT",
        default: "`5070`",
        meaning: "listen port; `0` = any free port (the address taken is written to stderr at start as `upload-server: listening on ADDRESS`; set `PUBLIC_BASE_URL` then)",
    },
    Setting {
        name: "BIND_HOST",
        default: "`127.0.0.1`",
        meaning: "listen address",
    },
    Setting {
        name: "UPLOAD_ROOT",
        default: "`/data/uploads`",
        meaning: "data root; created if missing",
    },
    Setting {
        name: "PUBLIC_BASE_URL",
        default: "`http://{BIND_HOST}:{PORT}`",
        meaning: "origin used in returned URLs",
    },
    Setting {
        name: "AUTH_SERVICE_TOKEN",
        default: "unset",
        meaning: "shared secret(s) for `X-Service-Token`: one token, or several separated by commas while a token is rotated (each is accepted; none may be empty); unset = service auth off. Reloaded on `SIGHUP`",
    },
    Setting {
        name: "UPLOAD_SIGNING_KEY",
        default: "unset",
        meaning: "HMAC key for signed URLs; unset = a random key generated once into `UPLOAD_ROOT/.signing_key` (mode 0600). Reloaded on `SIGHUP`",
    },
    Setting {
        name: "UPLOAD_SIGNING_KEY_PREVIOUS",
        default: "unset",
        meaning: "the signing key before the current one: URLs it signed still verify, no new URL is signed with it. Reloaded on `SIGHUP`",
    },
    Setting {
        name: "SIGNED_URL_TTL_DEFAULT",
        default: "`3600`",
        meaning: "seconds",
    },
    Setting {
        name: "MAX_BODY_MB",
        default: "`5120`",
        meaning: "largest request body and largest file, MiB",
    },
    Setting {
        name: "PER_USER_QUOTA_GB",
        default: "`500`",
        meaning: "per-user quota in GiB; decimals allowed",
    },
    Setting {
        name: "AUTH_JWT_PUBLIC_KEY_BASE64",
        default: "unset",
        meaning: "base64 of a PEM public key for user JWTs (wrapped base64 is fine)",
    },
    Setting {
        name: "JWT_PUBLIC_KEY_PATH",
        default: "unset",
        meaning: "PEM public key file (takes precedence over the base64 one)",
    },
    Setting {
        name: "AUTH_JWKS_URL",
        default: "unset",
        meaning: "JWKS document to take keys from, by `kid`; cached, refetched on an unknown `kid`",
    },
    Setting {
        name: "AUTH_JWKS_MIN_REFETCH_SECS",
        default: "`10`",
        meaning: "least time between two JWKS fetches caused by unknown `kid`s",
    },
    Setting {
        name: "AUTH_JWT_ALG",
        default: "`RS256`",
        meaning: "the only algorithm accepted (RS*, PS*, ES256/384, EdDSA; HMAC is refused)",
    },
    Setting {
        name: "AUTH_JWT_ISSUER",
        default: "unset",
        meaning: "required `iss` of user JWTs, checked when set",
    },
    Setting {
        name: "AUTH_JWT_AUDIENCE",
        default: "unset",
        meaning: "required `aud` of user JWTs, checked when set",
    },
    Setting {
        name: "JWKS_KID",
        default: "`streamline-rsa-1`",
        meaning: "`kid` published at `/.well-known/jwks.json` and put in generated tokens",
    },
    Setting {
        name: "JWT_PRIVATE_KEY_PATH",
        default: "unset",
        meaning: "PEM private key for `/v1/files/generate-token`",
    },
    Setting {
        name: "UPLOAD_SESSION_TTL_HOURS",
        default: "`24`",
        meaning: "unfinished uploads older than this are removed (decimals allowed)",
    },
    Setting {
        name: "BATCH_TOKEN_TTL",
        default: "`3600`",
        meaning: "seconds a batch-download token lives",
    },
    Setting {
        name: "CORS_ALLOW_ORIGINS",
        default: "`*`",
        meaning: "comma-separated origins; credentials are allowed for listed origins only, and only they (besides `PUBLIC_BASE_URL`'s) may make cookie-authenticated writes (see [Security](#security))",
    },
    Setting {
        name: "ACCEL_REDIRECT_PREFIX",
        default: "unset",
        meaning: "hand file bodies to nginx with `X-Accel-Redirect` under this internal prefix",
    },
    Setting {
        name: "LOG_FORMAT",
        default: "`text`",
        meaning: "`json` for one JSON object per log line",
    },
    Setting {
        name: "REQUEST_BODY_TIMEOUT_SECS",
        default: "`60`",
        meaning: "a request body that sends nothing for this long is cut off (408), leaving nothing behind",
    },
    Setting {
        name: "REQUEST_BODY_MIN_RATE",
        default: "`1024`",
        meaning: "bytes per second a request body must average over each window, else it is cut off (408 `Request body too slow`), leaving nothing behind; `0` turns the rule off. Only time spent waiting for the client counts, and a body that ends within its first window is never judged",
    },
    Setting {
        name: "REQUEST_BODY_RATE_WINDOW_SECS",
        default: "`30`",
        meaning: "the window of `REQUEST_BODY_MIN_RATE` (the default asks for 30 KiB in every 30 s of waiting)",
    },
    Setting {
        name: "REQUEST_HEADER_TIMEOUT_SECS",
        default: "`30`",
        meaning: "a request head (request line and headers) must arrive within this time, counted from the connection's start or, on a kept-alive connection, from the first byte of the next request; else the connection is closed",
    },
    Setting {
        name: "KEEPALIVE_TIMEOUT_SECS",
        default: "`75`",
        meaning: "a kept-alive connection idle this long after a response is closed (keep it above nginx's upstream `keepalive_timeout`, 60 s by default, so nginx closes pooled connections first)",
    },
    Setting {
        name: "TRUSTED_PROXIES",
        default: "`127.0.0.1/32,::1/128`",
        meaning: "comma-separated IP addresses and CIDR networks of reverse proxies whose `X-Real-IP` / `X-Forwarded-For` name the client in the access log; any other peer is logged by its own address (see [Security](#security))",
    },
    Setting {
        name: "SIDECAR_CACHE_SECS",
        default: "`10`",
        meaning: "a sidecar read to serve a file is trusted this long before it is read again, so a sidecar edited by hand is served within this time; `0` = read it on every request",
    },
    Setting {
        name: "RESPONSE_STALL_TIMEOUT_SECS",
        default: "`60`",
        meaning: "a response the client takes no byte of for this long is ended and its connection closed, freeing its file, ZIP task and buffers (a slow reader that keeps taking bytes is never cut)",
    },
    Setting {
        name: "MAX_CONNECTIONS",
        default: "from `ulimit -n`",
        meaning: "most connections open at once; past it a new connection gets `503` `{\"detail\": ...}` with `Connection: close`. Unset: (descriptor limit − 128) / 2, at most 10000 (each connection may hold a socket and a file)",
    },
    Setting {
        name: "RUST_LOG",
        default: "`info`",
        meaning: "log filter (`tracing` syntax, e.g. `info,access=warn`)",
    },
    Setting {
        name: "METRICS_ALLOW_LOCAL",
        default: "`0`",
        meaning: "`1` lets a client on a loopback address scrape `/metrics` without the service token, unless its request came through a proxy (`X-Real-IP`, `X-Forwarded-For` or `Forwarded` present)",
    },
    Setting {
        name: "UPLOAD_PAGE",
        default: "`1`",
        meaning: "`0` turns off the upload page at `/upload` (Uppy, tus; 404 then)",
    },
    Setting {
        name: "STORAGE_BACKEND",
        default: "`fs`",
        meaning: "`fs`: files, sidecars, sessions and quotas under `UPLOAD_ROOT` (one machine); `s3`: bytes and sidecars in an S3-compatible bucket, catalog, quotas, sessions and tokens in PostgreSQL, for any number of instances (needs `S3_BUCKET` and `DATABASE_URL`)",
    },
    Setting {
        name: "S3_ENDPOINT",
        default: "unset",
        meaning: "`s3`: the S3 API's URL (MinIO, Garage, Ceph, R2, ...); unset = AWS S3 in `S3_REGION`",
    },
    Setting {
        name: "S3_BUCKET",
        default: "unset",
        meaning: "`s3`: the bucket (it must exist); required",
    },
    Setting {
        name: "S3_REGION",
        default: "`us-east-1`",
        meaning: "`s3`: the region the requests are signed for (Garage: `garage`)",
    },
    Setting {
        name: "S3_ACCESS_KEY_ID",
        default: "unset",
        meaning: "`s3`: access key; unset = the AWS chain (`AWS_ACCESS_KEY_ID`, web identity, instance metadata)",
    },
    Setting {
        name: "S3_SECRET_ACCESS_KEY",
        default: "unset",
        meaning: "`s3`: its secret (never logged); set with `S3_ACCESS_KEY_ID`",
    },
    Setting {
        name: "S3_PREFIX",
        default: "empty",
        meaning: "`s3`: a prefix before every object key (`tenant-a` puts `storage/u1/f.jpg` at `tenant-a/storage/u1/f.jpg`)",
    },
    Setting {
        name: "S3_PATH_STYLE",
        default: "`1` with `S3_ENDPOINT`, else `0`",
        meaning: "`s3`: `1` = path-style URLs (`endpoint/bucket/key`), `0` = virtual-hosted (`bucket.endpoint/key`)",
    },
    Setting {
        name: "S3_PRESIGN_READS",
        default: "`0`",
        meaning: "`s3`: `1` = public and signed reads answer `302` to a presigned object URL valid 5 minutes (the bucket's endpoint must be reachable by clients) instead of streaming through the server",
    },
    Setting {
        name: "DATABASE_URL",
        default: "unset",
        meaning: "`s3`: PostgreSQL URL (`postgres://user:password@host/db`), migrated at start; required",
    },
    Setting {
        name: "DATABASE_POOL_SIZE",
        default: "`10`",
        meaning: "`s3`: PostgreSQL connections each instance keeps at most",
    },
];

/// Whether `name` is one of [`SETTINGS`].
pub fn is_setting(name: &str) -> bool {
    SETTINGS.iter().any(|s| s.name == name)
}

/// README's settings table, header included, one row a line.
pub fn markdown_table() -> String {
    let mut out = String::from("| variable | default | meaning |\n|---|---|---|\n");
    for s in SETTINGS {
        out.push_str(&format!(
            "| `{}` | {} | {} |\n",
            s.name, s.default, s.meaning
        ));
    }
    out
}

/// The settings for `--help`: each name with its default, then its meaning as plain text.
pub fn help_text() -> String {
    let width = SETTINGS.iter().map(|s| s.name.len()).max().unwrap_or(0);
    let mut out = String::new();
    for s in SETTINGS {
        out.push_str(&format!(
            "  {:width$}  default: {}\n",
            s.name,
            plain(s.default)
        ));
        out.push_str(&format!("  {:width$}  {}\n", "", plain(s.meaning)));
    }
    out
}

/// Markdown to plain text: no backticks, `[text](#anchor)` becomes `text`.
fn plain(md: &str) -> String {
    let mut out = String::with_capacity(md.len());
    let mut rest = md;
    while let Some(open) = rest.find('[') {
        let after = &rest[open + 1..];
        match after.find("](").and_then(|mid| {
            after[mid + 2..]
                .find(')')
                .map(|close| (mid, mid + 2 + close))
        }) {
            Some((mid, close)) => {
                out.push_str(&rest[..open]);
                out.push_str(&after[..mid]);
                rest = &after[close + 1..];
            }
            None => {
                out.push_str(&rest[..=open]);
                rest = after;
            }
        }
    }
    out.push_str(rest);
    out.replace('`', "")
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn repo_file(name: &str) -> String {
        std::fs::read_to_string(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(name))
            .unwrap()
    }

    #[test]
    fn readme_settings_table_is_the_code_table() {
        let readme = repo_file("README.md");
        let start = "<!-- settings table: generated from src/config/table.rs -->\n";
        let from = readme
            .find(start)
            .expect("README lost its settings-table marker")
            + start.len();
        let table: String = readme[from..]
            .lines()
            .take_while(|l| l.starts_with('|'))
            .map(|l| format!("{l}\n"))
            .collect();
        let expected = markdown_table();
        assert!(
            table == expected,
            "README's settings table differs from src/config/table.rs; paste this:\n{expected}"
        );
    }

    #[test]
    fn the_env_template_mentions_every_setting() {
        let template = repo_file("upload.env.template");
        for s in SETTINGS {
            let set = format!("\n{}=", s.name);
            let commented = format!("\n#{}=", s.name);
            assert!(
                template.contains(&set) || template.contains(&commented),
                "upload.env.template lacks {}",
                s.name
            );
        }
    }

    #[test]
    fn help_is_plain_text() {
        let help = help_text();
        assert!(!help.contains('`'));
        assert!(help.contains("see Security)"), "{help}");
        assert!(help.contains("PORT"));
        assert_eq!(plain("a [b](#c) d [e"), "a b d [e");
    }
}
