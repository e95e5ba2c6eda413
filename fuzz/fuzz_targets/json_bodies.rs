//! The JSON request bodies (API.md §3.1, §4.4, §4.5, §6) through the real app:
//! `POST /v1/files/init`, `/complete`, `/part`, `/signed-url` and `/batch-download` with
//! fuzzed bodies, as a service, a user (JWT), another user, a forged JWT or nobody.
//!
//! Input: the path on the first line, then header lines (`as: service|user|other|forged|none`
//! picks the caller, default `service`; `Content-Type` defaults to JSON), an empty line, the
//! body. In the body, `{SESSION}` is a fresh upload session of `u1` (file `a.txt`, 5 bytes,
//! folder `f`, part 0 `hello` received), `{EMPTY}` one of 0 bytes, `{SESSION2}` one of `u2`;
//! `{KEY0}`... are stored files (`Harness::expand`).
//!
//! Invariants: never a 5xx; every error is JSON `{"detail": ...}`; a 200 has the shape the
//! contract gives, and what it made is the caller's (a user's files and sessions are its
//! own; a signed URL verifies for the key asked); a failed request leaves nothing behind,
//! and once what a success made is removed, `UPLOAD_ROOT` is as it was, with no quota
//! reservation left.
#![no_main]

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use axum::http::{header, HeaderValue, Method};
use bytes::Bytes;
use fuzz_support::{harness, Harness, HttpInput, BASE, SERVICE_TOKEN, SIGNING_KEY};
use libfuzzer_sys::fuzz_target;
use serde_json::{Map, Value};
use upload_server::signer::{self, Disposition};
use upload_server::store::key::{ClientFileName, FolderPath, Key, UserId};
use upload_server::store::sessions::{FileSpec, PartNumber, Session, SessionId, UploadMode};

const ENDPOINTS: &[&str] = &[
    "/v1/files/init",
    "/v1/files/complete",
    "/v1/files/part",
    "/v1/files/signed-url",
    "/v1/files/batch-download",
];

/// Every file under the root, except the quota ledgers (one per user id ever named, by
/// design) and empty folders.
fn tree(root: &Path) -> BTreeSet<PathBuf> {
    let mut out = BTreeSet::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let p = e.path();
            if p == root.join(".quota") {
                continue;
            }
            match e.file_type() {
                Ok(t) if t.is_dir() => stack.push(p),
                _ => {
                    out.insert(p.strip_prefix(root).unwrap_or(&p).to_path_buf());
                }
            }
        }
    }
    out
}

fn baseline(h: &Harness) -> &'static BTreeSet<PathBuf> {
    static B: OnceLock<BTreeSet<PathBuf>> = OnceLock::new();
    B.get_or_init(|| {
        // A batch records the CRC-32 of files that lack one (API.md §4.5), writing a sidecar
        // for a file without: by design, so done once before the baseline is taken.
        let keys: Vec<&str> = h.files.iter().map(|f| f.key.as_str()).collect();
        let req = axum::http::Request::post("/v1/files/batch-download")
            .header("x-service-token", SERVICE_TOKEN)
            .header(header::CONTENT_TYPE, "application/json")
            .body(axum::body::Body::from(
                serde_json::json!({ "keys": keys }).to_string(),
            ))
            .expect("batch request");
        let res = h.send(req);
        assert!(res.status.is_success(), "baseline batch: {}", res.status);
        let v: Value = serde_json::from_slice(&res.body).expect("batch JSON");
        let token = v["token"].as_str().expect("token");
        let _ = std::fs::remove_file(h.root.join(".batch").join(format!("{token}.json")));
        tree(&h.root)
    })
}

fn session_ids(root: &Path) -> Vec<SessionId> {
    std::fs::read_dir(root.join(".parts"))
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| SessionId::parse(e.file_name().to_str()?).ok())
        // A folder planted for the Range targets (no session.json): not a session.
        .filter(|id| id.to_string() != "00000000-0000-4000-8000-000000000000")
        .collect()
}

/// A fresh session of `user` for a file of `data.len()` bytes, `data` received as part 0.
fn make_session(h: &Harness, user: &str, data: &'static [u8]) -> String {
    let store = &h.state.store;
    h.block_on(async {
        let user = UserId::parse(user).expect("user");
        let spec = FileSpec {
            name: ClientFileName::parse("a.txt").expect("name"),
            size: data.len() as u64,
            mime: Some("text/plain".to_owned()),
        };
        let info = store
            .create_sessions(
                &user,
                UploadMode::Single,
                vec![spec],
                FolderPath::sanitize("f"),
                Map::new(),
            )
            .await
            .expect("a session")
            .remove(0);
        if !data.is_empty() {
            let zero = PartNumber::new(0).expect("part 0");
            let mut part = store.begin_part(&info, zero).await.expect("a part");
            part.write(Bytes::from_static(data))
                .await
                .expect("part bytes");
            store.commit_part(&info, zero, part).await.expect("commit");
        }
        info.upload_id.to_string()
    })
}

fn abort_all(h: &Harness) {
    let store = &h.state.store;
    for id in session_ids(&h.root) {
        h.block_on(async {
            let info: Option<Session> = store.session(&id).await.ok();
            match info {
                Some(info) => store.abort(&info).await.expect("abort"),
                None => panic!("a session folder left that is not a live session: {id}"),
            }
        });
    }
}

/// Checks a 200 answer and undoes what it made.
fn check_success(h: &Harness, path: &str, caller: Option<&str>, body: &[u8], sent: &[u8]) {
    let v: Value = serde_json::from_slice(body).expect("a 200 body is JSON");
    let store = &h.state.store;
    let own = |user: &str| {
        if let Some(c) = caller {
            assert_eq!(user, c, "a user acted on another user's behalf");
        }
    };
    match path {
        "/v1/files/init" => {
            let id = v["uploadId"].as_str().expect("uploadId");
            let mut ids = vec![id.to_owned()];
            if let Some(list) = v["uploads"].as_array() {
                assert!(!list.is_empty());
                assert_eq!(list[0]["uploadId"], id, "uploadId is the first one's");
                ids.extend(
                    list.iter()
                        .filter_map(|u| u["uploadId"].as_str().map(str::to_owned)),
                );
            }
            for id in ids {
                let sid = SessionId::parse(&id).expect("a session id");
                let info = h.block_on(store.session(&sid)).expect("the session exists");
                own(info.user_id.as_str());
            }
        }
        "/v1/files/complete" => {
            let key = Key::parse(v["key"].as_str().expect("key")).expect("a valid key");
            own(key.owner().as_str());
            let entry = h.block_on(store.entry(&key)).expect("the file exists");
            assert_eq!(v["size"].as_u64(), Some(entry.size), "size");
            h.block_on(store.delete(&key)).expect("delete");
            // Folders made for it go too (the app keeps them; the fuzzer would pile them up).
            let mut dir = h.root.join(key.relative_path());
            while dir.pop() && dir != h.root.join("storage") {
                if std::fs::remove_dir(&dir).is_err() {
                    break;
                }
            }
        }
        "/v1/files/part" => {
            assert_eq!(v["status"], "success");
        }
        "/v1/files/signed-url" => {
            let url = v["url"].as_str().expect("url");
            assert_eq!(v["signed_url"].as_str(), Some(url));
            let rest = url
                .strip_prefix(&format!("{BASE}/get/"))
                .expect("a /get/ URL");
            let (enc, query) = rest.split_once('?').expect("a query");
            let key = signer::decode_key(enc).expect("a decodable key");
            let parsed = Key::parse(&key).expect("a valid key");
            own(parsed.owner().as_str());
            let q = fuzz_support::query_values;
            let exp: i64 = q(query, "exp")[0].parse().expect("exp");
            let sig = &q(query, "sig")[0];
            let d = match q(query, "disposition").first().map(String::as_str) {
                Some("attachment") => Disposition::Attachment,
                None => Disposition::Inline,
                Some(other) => panic!("disposition {other:?}"),
            };
            assert_eq!(v["disposition"], d.as_str());
            assert!(signer::verify(SIGNING_KEY.as_bytes(), &key, exp, d, sig));
            let sent: Value = serde_json::from_slice(sent).unwrap_or(Value::Null);
            let asked = sent
                .get("key")
                .filter(|k| !k.is_null())
                .or_else(|| sent.get("file_key"))
                .and_then(Value::as_str)
                .unwrap_or("");
            assert_eq!(
                Key::parse(asked).ok().map(|k| k.to_string()),
                Some(key.clone()),
                "signed another key than asked"
            );
        }
        "/v1/files/batch-download" => {
            let token = v["token"].as_str().expect("token");
            let _ = std::fs::remove_file(h.root.join(".batch").join(format!("{token}.json")));
        }
        _ => unreachable!(),
    }
}

fuzz_target!(|data: &[u8]| {
    let h = harness();
    let base = baseline(h);
    let Some(mut input) = HttpInput::parse(h, data) else {
        return;
    };
    let path = input.target.trim().to_owned();
    if !ENDPOINTS.contains(&path.as_str()) {
        return;
    }
    let caller = input
        .headers
        .iter()
        .find(|(n, _)| n == "as")
        .and_then(|(_, v)| v.to_str().ok())
        .unwrap_or("service")
        .trim()
        .to_owned();
    input.headers.retain(|(n, _)| n != "as");
    let (auth, acting): (Option<(&str, String)>, Option<&str>) = match caller.as_str() {
        "user" => (
            Some(("authorization", format!("Bearer {}", h.user_token))),
            Some("u1"),
        ),
        "other" => (
            Some(("authorization", format!("Bearer {}", h.other_token))),
            Some("u2"),
        ),
        "forged" => (
            Some(("authorization", format!("Bearer {}", h.forged_token))),
            None,
        ),
        "cookie" => (
            Some(("cookie", format!("auth_token={}", h.user_token))),
            Some("u1"),
        ),
        "none" => (None, None),
        "badservice" => (Some(("x-service-token", "wrong".to_owned())), None),
        _ => (Some(("x-service-token", SERVICE_TOKEN.to_owned())), None),
    };
    if let Some((name, value)) = auth {
        if let Ok(v) = HeaderValue::from_str(&value) {
            input.headers.push((name.parse().expect("header name"), v));
        }
    }
    if !input.headers.iter().any(|(n, _)| n == header::CONTENT_TYPE) {
        input.headers.push((
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        ));
    }
    // Per-iteration sessions.
    if let Ok(text) = std::str::from_utf8(&input.body) {
        if text.contains("{SESSION}") || text.contains("{EMPTY}") || text.contains("{SESSION2}") {
            let mut text = text.to_owned();
            for (ph, user, bytes) in [
                ("{SESSION}", "u1", &b"hello"[..]),
                ("{EMPTY}", "u1", &b""[..]),
                ("{SESSION2}", "u2", &b"hello"[..]),
            ] {
                if text.contains(ph) {
                    text = text.replace(ph, &make_session(h, user, bytes));
                }
            }
            input.body = text.into_bytes();
        }
    }
    let Some(req) = input.request(Method::POST, &path) else {
        abort_all(h);
        return;
    };
    let res = h.send(req);
    fuzz_support::trace(|| {
        format!(
            "{path} as {caller}: {} {}",
            res.status,
            String::from_utf8_lossy(&res.body[..res.body.len().min(160)])
        )
    });
    assert!(
        !res.status.is_server_error(),
        "{path}: {} {:?}",
        res.status,
        String::from_utf8_lossy(&res.body)
    );
    if res.status.is_success() {
        check_success(h, &path, acting, &res.body, &input.body);
    } else {
        res.assert_json_error(&Method::POST);
    }
    abort_all(h);
    let now = tree(&h.root);
    if &now != base {
        let extra: Vec<_> = now.difference(base).collect();
        let gone: Vec<_> = base.difference(&now).collect();
        panic!(
            "{path} ({}) left the root changed: new {extra:?}, gone {gone:?}",
            res.status
        );
    }
    for user in ["u1", "u2"] {
        let u = UserId::parse(user).expect("user");
        let (_, reserved) = h.block_on(h.state.store.usage(&u)).expect("usage");
        assert_eq!(reserved, 0, "{path}: {user} still has bytes reserved");
    }
});
