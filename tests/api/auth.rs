//! Authentication (API.md §2) and the token endpoints (API.md §5): service tokens, user JWTs
//! by header or cookie, the attacks on JWT verification, issuer and audience, user ids,
//! minting, the published JWKS and keys taken from a remote JWKS.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::helpers::{
    accepted, b64url, expect, keys, mint_with, now, rs256, send, spawn_app, spawn_app_with, As,
    KID, PROBE, SERVICE_TOKEN,
};

const GENERATE: &str = "/v1/files/generate-token?user_id=u1&expires_hours=1";
/// The token the old service fell back to when none was configured.
const OLD_DEFAULT_TOKEN: &str = "ee6d52ece4fa6c4c8836820d2eb7feeb6c78cbf2e2661ef76c9f5a805fc16340";

fn invalid_token() -> Value {
    json!({ "detail": "Invalid token" })
}

#[tokio::test]
async fn a_service_token_is_accepted() {
    let app = spawn_app().await;
    let (status, body) = send(app.get(PROBE).as_service()).await;
    assert_eq!((status, body), accepted());
}

#[tokio::test]
async fn a_service_token_mints_a_working_user_token() {
    let app = spawn_app().await;

    let (status, body) = send(app.post(GENERATE).as_service()).await;

    assert_eq!(status, StatusCode::OK, "{body}");
    let token = body["token"].as_str().unwrap().to_owned();
    assert_eq!(
        body,
        json!({ "token": token, "user_id": "u1", "expires_in": 3600, "token_type": "Bearer" })
    );
    let header = jsonwebtoken::decode_header(&token).unwrap();
    assert_eq!(header.alg, Algorithm::RS256);
    assert_eq!(header.kid.as_deref(), Some(KID));
    let key = DecodingKey::from_rsa_pem(app.keys.main.public_pem.as_bytes()).unwrap();
    let claims = jsonwebtoken::decode::<Value>(&token, &key, &Validation::new(Algorithm::RS256))
        .unwrap()
        .claims;
    assert_eq!(claims["sub"], "u1");
    let exp = claims["exp"].as_i64().unwrap();
    assert!((exp - (now() + 3600)).abs() <= 5, "exp {exp}");
    // The minted token is a user token of this very service.
    let (status, body) = send(app.get(PROBE).bearer(&token)).await;
    assert_eq!((status, body), accepted());
}

#[tokio::test]
async fn a_wrong_service_token_is_refused() {
    let app = spawn_app().await;
    let refused = json!({ "detail": "Invalid service token" });
    for token in ["wrong-token", "test-service-token-but-longer", "x"] {
        expect(
            app.get(PROBE).service_token(token),
            StatusCode::UNAUTHORIZED,
            refused.clone(),
        )
        .await;
        expect(
            app.post(GENERATE).service_token(token),
            StatusCode::UNAUTHORIZED,
            refused.clone(),
        )
        .await;
    }
}

#[tokio::test]
async fn without_a_configured_token_service_auth_is_off() {
    let app = spawn_app_with(&[("AUTH_SERVICE_TOKEN", "")]).await;
    let refused = json!({ "detail": "Invalid service token" });
    for token in [OLD_DEFAULT_TOKEN, "", SERVICE_TOKEN] {
        expect(
            app.get(PROBE).service_token(token),
            StatusCode::UNAUTHORIZED,
            refused.clone(),
        )
        .await;
        expect(
            app.post(GENERATE).service_token(token),
            StatusCode::UNAUTHORIZED,
            refused.clone(),
        )
        .await;
    }
}

#[tokio::test]
async fn nothing_presented_is_refused() {
    let app = spawn_app().await;
    let required = json!({ "detail": "Authentication required" });
    expect(app.get(PROBE), StatusCode::UNAUTHORIZED, required.clone()).await;
    expect(
        app.post(GENERATE),
        StatusCode::UNAUTHORIZED,
        required.clone(),
    )
    .await;
    // A scheme other than Bearer, or an empty cookie, is nothing.
    expect(
        app.get(PROBE).basic_auth("u1", Some("pw")),
        StatusCode::UNAUTHORIZED,
        required.clone(),
    )
    .await;
    expect(
        app.get(PROBE).header("cookie", "auth_token="),
        StatusCode::UNAUTHORIZED,
        required,
    )
    .await;
}

#[tokio::test]
async fn a_valid_jwt_is_accepted_by_header_and_by_cookie() {
    let app = spawn_app().await;
    let token = app.user_token("u1");
    assert_eq!(send(app.get(PROBE).bearer(&token)).await, accepted());
    assert_eq!(send(app.get(PROBE).cookie(&token)).await, accepted());
}

#[tokio::test]
async fn an_expired_jwt_is_refused() {
    let app = spawn_app().await;
    let token = app.mint(json!({ "user_id": "u1", "exp": now() - 3600 }));
    expect(
        app.get(PROBE).bearer(&token),
        StatusCode::UNAUTHORIZED,
        invalid_token(),
    )
    .await;
    expect(
        app.get(PROBE).cookie(&token),
        StatusCode::UNAUTHORIZED,
        invalid_token(),
    )
    .await;
}

#[tokio::test]
async fn a_jwt_without_exp_is_refused() {
    let app = spawn_app().await;
    let token = app.mint(json!({ "user_id": "u1" }));
    expect(
        app.get(PROBE).bearer(&token),
        StatusCode::UNAUTHORIZED,
        invalid_token(),
    )
    .await;
}

#[tokio::test]
async fn an_unsigned_alg_none_jwt_is_refused() {
    let app = spawn_app().await;
    let claims = json!({ "user_id": "u1", "exp": now() + 3600 }).to_string();
    for header in [
        r#"{"alg":"none","typ":"JWT"}"#.to_owned(),
        format!(r#"{{"alg":"none","typ":"JWT","kid":"{KID}"}}"#),
    ] {
        let token = format!(
            "{}.{}.",
            b64url(header.as_bytes()),
            b64url(claims.as_bytes())
        );
        expect(
            app.get(PROBE).bearer(&token),
            StatusCode::UNAUTHORIZED,
            invalid_token(),
        )
        .await;
    }
}

#[tokio::test]
async fn an_hmac_jwt_keyed_with_the_public_key_is_refused() {
    let app = spawn_app().await;
    let claims = json!({ "user_id": "u1", "exp": now() + 3600 });
    let secret = EncodingKey::from_secret(app.keys.main.public_pem.as_bytes()).unwrap();
    for alg in [Algorithm::HS256, Algorithm::HS512] {
        let mut header = Header::new(alg);
        header.kid = Some(KID.to_owned());
        let token = mint_with(&header, &claims, &secret);
        expect(
            app.get(PROBE).bearer(&token),
            StatusCode::UNAUTHORIZED,
            invalid_token(),
        )
        .await;
    }
}

#[tokio::test]
async fn a_jwt_signed_by_another_key_is_refused() {
    let app = spawn_app().await;
    let claims = json!({ "user_id": "u1", "exp": now() + 3600 });
    let token = mint_with(&rs256(KID), &claims, &app.keys.other.encoding_key());
    expect(
        app.get(PROBE).bearer(&token),
        StatusCode::UNAUTHORIZED,
        invalid_token(),
    )
    .await;
    // A well-signed token altered afterwards is refused too.
    let good = app.user_token("u1");
    let mut parts: Vec<&str> = good.split('.').collect();
    let forged = b64url(
        json!({ "user_id": "u2", "exp": now() + 3600 })
            .to_string()
            .as_bytes(),
    );
    parts[1] = &forged;
    let tampered = parts.join(".");
    expect(
        app.get(PROBE).bearer(&tampered),
        StatusCode::UNAUTHORIZED,
        invalid_token(),
    )
    .await;
    // Garbage is refused, not a 500.
    expect(
        app.get(PROBE).bearer("not.a.jwt"),
        StatusCode::UNAUTHORIZED,
        invalid_token(),
    )
    .await;
}

#[tokio::test]
async fn issuer_and_audience_are_checked_when_configured() {
    let app = spawn_app_with(&[
        ("AUTH_JWT_ISSUER", "https://auth.example"),
        ("AUTH_JWT_AUDIENCE", "upload-server"),
    ])
    .await;
    let exp = now() + 3600;
    let right = app.mint(json!({
        "user_id": "u1", "exp": exp, "iss": "https://auth.example", "aud": "upload-server"
    }));
    assert_eq!(send(app.get(PROBE).bearer(&right)).await, accepted());
    for (what, claims) in [
        (
            "wrong iss",
            json!({"user_id": "u1", "exp": exp, "iss": "https://evil.example", "aud": "upload-server"}),
        ),
        (
            "wrong aud",
            json!({"user_id": "u1", "exp": exp, "iss": "https://auth.example", "aud": "other-service"}),
        ),
        (
            "no iss",
            json!({"user_id": "u1", "exp": exp, "aud": "upload-server"}),
        ),
        (
            "no aud",
            json!({"user_id": "u1", "exp": exp, "iss": "https://auth.example"}),
        ),
    ] {
        let token = app.mint(claims);
        let (status, body) = send(app.get(PROBE).bearer(&token)).await;
        assert_eq!(
            (status, body),
            (StatusCode::UNAUTHORIZED, invalid_token()),
            "{what}"
        );
    }
    // Tokens this service mints carry the configured issuer and audience.
    let (status, body) = send(app.post(GENERATE).as_service()).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let minted = body["token"].as_str().unwrap();
    assert_eq!(send(app.get(PROBE).bearer(minted)).await, accepted());
}

#[tokio::test]
async fn without_configured_issuer_and_audience_any_are_accepted() {
    let app = spawn_app().await;
    let token = app.mint(json!({
        "user_id": "u1", "exp": now() + 3600, "iss": "https://anyone.example", "aud": "anything"
    }));
    assert_eq!(send(app.get(PROBE).bearer(&token)).await, accepted());
}

#[tokio::test]
async fn the_user_id_is_the_user_id_claim_else_sub() {
    let app = spawn_app().await;
    let exp = now() + 3600;
    // `user_id` wins: an unusable `sub` beside it does not matter...
    let token = app.mint(json!({ "user_id": "u1", "sub": "../x", "exp": exp }));
    assert_eq!(send(app.get(PROBE).bearer(&token)).await, accepted());
    // ...and an unusable `user_id` is not rescued by a good `sub`.
    let token = app.mint(json!({ "user_id": "../x", "sub": "u1", "exp": exp }));
    let (status, body) = send(app.get(PROBE).bearer(&token)).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    // `sub` alone names the user; e-mail addresses are fine.
    let token = app.mint(json!({ "sub": "alice@example.com", "exp": exp }));
    assert_eq!(send(app.get(PROBE).bearer(&token)).await, accepted());
    // Neither: nobody.
    let token = app.mint(json!({ "exp": exp }));
    expect(
        app.get(PROBE).bearer(&token),
        StatusCode::UNAUTHORIZED,
        invalid_token(),
    )
    .await;
}

fn assert_invalid_user_id(status: StatusCode, body: &Value, what: &str) {
    assert_eq!(status, StatusCode::BAD_REQUEST, "{what}: {body}");
    let detail = body["detail"].as_str().unwrap_or_default();
    assert!(detail.starts_with("Invalid user id"), "{what}: {body}");
    assert_eq!(body.as_object().unwrap().len(), 1, "{what}: {body}");
}

#[tokio::test]
async fn unsafe_user_ids_are_refused() {
    let app = spawn_app().await;
    for bad in ["a/b", "..", ".", "../etc", "a\\b", "a\u{1}b"] {
        let token = app.user_token(bad);
        let (status, body) = send(app.get(PROBE).bearer(&token)).await;
        assert_invalid_user_id(status, &body, &format!("JWT user_id {bad:?}"));
        let token = app.mint(json!({ "sub": bad, "exp": now() + 3600 }));
        let (status, body) = send(app.get(PROBE).bearer(&token)).await;
        assert_invalid_user_id(status, &body, &format!("JWT sub {bad:?}"));
    }
    for bad in ["a%2Fb", "..", ".", "..%2Fetc"] {
        let path = format!("/v1/files/generate-token?user_id={bad}&expires_hours=1");
        let (status, body) = send(app.post(&path).as_service()).await;
        assert_invalid_user_id(status, &body, &format!("generate-token user_id {bad:?}"));
    }
}

#[tokio::test]
async fn generate_token_is_for_services_only() {
    let app = spawn_app().await;
    let token = app.user_token("u1");
    for req in [
        app.post(GENERATE).bearer(&token),
        app.post(GENERATE).cookie(&token),
    ] {
        let (status, body) = send(req).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
        assert!(body["detail"].is_string(), "{body}");
    }
}

#[tokio::test]
async fn generate_token_without_a_private_key_is_unavailable() {
    let app = spawn_app_with(&[("JWT_PRIVATE_KEY_PATH", "")]).await;
    let (status, body) = send(app.post(GENERATE).as_service()).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert!(body["detail"].is_string(), "{body}");
    // Auth still comes first.
    let (status, _) = send(app.post(GENERATE)).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn the_jwks_publishes_the_public_key() {
    let app = spawn_app().await;

    let (status, body) = send(app.get("/.well-known/jwks.json")).await;

    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body, json!({ "keys": [app.keys.main.jwk(KID)] }));
    assert_eq!(body["keys"][0]["e"], "AQAB");
    // A verifier that knows only the published JWK accepts this service's tokens.
    let jwk: jsonwebtoken::jwk::Jwk = serde_json::from_value(body["keys"][0].clone()).unwrap();
    let key = DecodingKey::from_jwk(&jwk).unwrap();
    let (_, minted) = send(app.post(GENERATE).as_service()).await;
    let token = minted["token"].as_str().unwrap();
    let data =
        jsonwebtoken::decode::<Value>(token, &key, &Validation::new(Algorithm::RS256)).unwrap();
    assert_eq!(data.claims["user_id"], "u1");
}

#[tokio::test]
async fn the_jwks_kid_is_configurable() {
    let app = spawn_app_with(&[("JWKS_KID", "rotation-7")]).await;
    let (_, body) = send(app.get("/.well-known/jwks.json")).await;
    assert_eq!(body["keys"][0]["kid"], "rotation-7");
    let (_, minted) = send(app.post(GENERATE).as_service()).await;
    let header = jsonwebtoken::decode_header(minted["token"].as_str().unwrap()).unwrap();
    assert_eq!(header.kid.as_deref(), Some("rotation-7"));
}

#[tokio::test]
async fn the_jwks_without_a_public_key_is_unavailable() {
    let app = spawn_app_with(&[("JWT_PUBLIC_KEY_PATH", "")]).await;
    let (status, body) = send(app.get("/.well-known/jwks.json")).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert!(body["detail"].is_string(), "{body}");
}

/// A JWKS endpoint whose key set a test can swap, counting fetches.
struct JwksServer {
    url: String,
    set: Arc<Mutex<Value>>,
    fetches: Arc<AtomicUsize>,
}

impl JwksServer {
    async fn start(set: Value) -> Self {
        let set = Arc::new(Mutex::new(set));
        let fetches = Arc::new(AtomicUsize::new(0));
        let (s, f) = (set.clone(), fetches.clone());
        let router = axum::Router::new().route(
            "/jwks.json",
            axum::routing::get(move || {
                let (s, f) = (s.clone(), f.clone());
                async move {
                    f.fetch_add(1, Ordering::SeqCst);
                    let doc = s.lock().unwrap().clone();
                    axum::Json(doc)
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/jwks.json", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, router).await });
        Self { url, set, fetches }
    }

    fn fetches(&self) -> usize {
        self.fetches.load(Ordering::SeqCst)
    }

    fn publish(&self, set: Value) {
        *self.set.lock().unwrap() = set;
    }
}

#[tokio::test]
async fn keys_come_from_a_remote_jwks_and_rotate() {
    let keys = keys();
    let jwks = JwksServer::start(json!({ "keys": [keys.main.jwk("kid1")] })).await;
    let app = spawn_app_with(&[
        ("AUTH_JWKS_URL", jwks.url.as_str()),
        ("JWT_PUBLIC_KEY_PATH", ""),
        ("AUTH_JWKS_MIN_REFETCH_SECS", "1"),
    ])
    .await;
    let claims = json!({ "user_id": "u1", "exp": now() + 3600 });

    // Arrange: a token of the published key.
    let kid1 = mint_with(&rs256("kid1"), &claims, &keys.main.encoding_key());
    assert_eq!(send(app.get(PROBE).bearer(&kid1)).await, accepted());
    assert_eq!(send(app.get(PROBE).bearer(&kid1)).await, accepted());
    assert!(
        (1..=2).contains(&jwks.fetches()),
        "fetches: {}",
        jwks.fetches()
    );
    // A token of the right kid signed by another key is still refused.
    let forged = mint_with(&rs256("kid1"), &claims, &keys.other.encoding_key());
    expect(
        app.get(PROBE).bearer(&forged),
        StatusCode::UNAUTHORIZED,
        invalid_token(),
    )
    .await;

    // Act: rotation publishes a second key; a token naming it makes the service refetch.
    jwks.publish(json!({ "keys": [keys.main.jwk("kid1"), keys.other.jwk("kid2")] }));
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let kid2 = mint_with(&rs256("kid2"), &claims, &keys.other.encoding_key());
    assert_eq!(send(app.get(PROBE).bearer(&kid2)).await, accepted());
    assert_eq!(send(app.get(PROBE).bearer(&kid1)).await, accepted());

    // Unknown kids cannot turn the service into a flood of fetches.
    let before = jwks.fetches();
    for i in 0..20 {
        let kid = format!("random-{i}-{}", uuid::Uuid::new_v4());
        let token = mint_with(&rs256(&kid), &claims, &keys.other.encoding_key());
        expect(
            app.get(PROBE).bearer(&token),
            StatusCode::UNAUTHORIZED,
            invalid_token(),
        )
        .await;
    }
    let grown = jwks.fetches() - before;
    assert!(grown <= 2, "20 unknown kids caused {grown} JWKS fetches");
}
