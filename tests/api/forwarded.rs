//! The client address in the access log (issue 16 item 8): forwarding headers are believed
//! only from `TRUSTED_PROXIES` (loopback by default), and then only what the proxy wrote:
//! `X-Real-IP`, else the right-most `X-Forwarded-For` entry that is not a trusted proxy.

use std::net::{IpAddr, Ipv4Addr};

use serde_json::Value;

use crate::helpers::{client, start_server};

/// The `client` of the JSON access line for `path`.
fn logged_client(log: &str, path: &str) -> String {
    log.lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find(|v| v["path"] == path)
        .and_then(|v| v["client"].as_str().map(str::to_owned))
        .unwrap_or_else(|| panic!("no access line for {path}: {log}"))
}

#[tokio::test]
async fn the_logged_client_is_not_what_the_client_claims() {
    let root = tempfile::tempdir().unwrap();
    let mut server = start_server(
        &[
            ("UPLOAD_ROOT", root.path().to_str().unwrap()),
            ("PORT", "0"),
            ("LOG_FORMAT", "json"),
            ("RUST_LOG", "info"),
        ],
        &[],
    )
    .await;
    let direct = client();
    // Another loopback address: a peer that is not in the default TRUSTED_PROXIES.
    let stranger = reqwest::Client::builder()
        .local_address(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2)))
        .build()
        .unwrap();

    stranger
        .get(server.url("/untrusted-peer"))
        .header("x-forwarded-for", "203.0.113.7")
        .header("x-real-ip", "203.0.113.8")
        .send()
        .await
        .unwrap();
    // From a trusted proxy: what nginx writes ($proxy_add_x_forwarded_for appends the
    // address it saw to whatever the client sent).
    direct
        .get(server.url("/proxied-forwarded-for"))
        .header("x-forwarded-for", "203.0.113.7, 198.51.100.9")
        .send()
        .await
        .unwrap();
    direct
        .get(server.url("/proxied-real-ip"))
        .header("x-forwarded-for", "203.0.113.7, 198.51.100.20")
        .header("x-real-ip", "198.51.100.20")
        .send()
        .await
        .unwrap();
    direct
        .get(server.url("/proxied-nothing"))
        .send()
        .await
        .unwrap();
    server.stop().await;

    let log = server.stdout();
    assert_eq!(logged_client(&log, "/untrusted-peer"), "127.0.0.2");
    assert_eq!(
        logged_client(&log, "/proxied-forwarded-for"),
        "198.51.100.9"
    );
    assert_eq!(logged_client(&log, "/proxied-real-ip"), "198.51.100.20");
    assert_eq!(logged_client(&log, "/proxied-nothing"), "127.0.0.1");
}
