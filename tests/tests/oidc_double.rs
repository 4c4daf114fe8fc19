//! The OpenID Connect provider double refuses what a real provider refuses, so the portal's
//! sign-in tests cannot pass against a provider that accepts anything.

use std::time::Duration;

use base64::Engine;
use sha2::Digest;
use tidings_oidc_double::{AccessTokenKey, OidcDouble, Settings};

const REDIRECT: &str = "http://127.0.0.1:1/oidc/callback";

async fn double() -> OidcDouble {
    OidcDouble::start(
        "127.0.0.1:0".parse().unwrap(),
        Settings {
            client_id: "portal".into(),
            client_secret: "secret".into(),
            redirect_uris: vec![REDIRECT.into()],
            api_audience: "api".into(),
            access_token_key: AccessTokenKey::Rs256,
            token_ttl: Duration::from_secs(60),
        },
    )
    .await
    .unwrap()
}

fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

/// Signs in at the double with `challenge`; returns the code it redirects back with.
async fn code_for(d: &OidcDouble, challenge: &str) -> String {
    let form = [
        ("response_type", "code"),
        ("client_id", "portal"),
        ("redirect_uri", REDIRECT),
        ("scope", "openid email"),
        ("state", "s1"),
        ("nonce", "n1"),
        ("code_challenge", challenge),
        ("code_challenge_method", "S256"),
        ("sub", "ann"),
        ("email", "ann@example.com"),
        ("name", "Ann"),
        ("locale", "en"),
    ];
    let r = http()
        .post(format!("{}/authorize", d.issuer()))
        .form(&form)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 303);
    let location = r.headers()["location"].to_str().unwrap().to_owned();
    assert!(
        location.starts_with(REDIRECT) && location.ends_with("&state=s1"),
        "{location}"
    );
    location
        .split("code=")
        .nth(1)
        .unwrap()
        .split('&')
        .next()
        .unwrap()
        .to_owned()
}

async fn exchange(d: &OidcDouble, code: &str, verifier: &str, secret: &str) -> reqwest::Response {
    http()
        .post(format!("{}/token", d.issuer()))
        .basic_auth("portal", Some(secret))
        .form(&[
            ("grant_type", "authorization_code"),
            ("code", code),
            ("redirect_uri", REDIRECT),
            ("code_verifier", verifier),
        ])
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn a_code_needs_its_pkce_verifier_and_the_client_secret_and_works_once() {
    let d = double().await;
    let verifier = "v".repeat(50);
    let challenge = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .encode(sha2::Sha256::digest(verifier.as_bytes()));

    let code = code_for(&d, &challenge).await;
    let wrong = exchange(&d, &code, &"w".repeat(50), "secret").await;
    assert_eq!(wrong.status(), 400);
    assert!(wrong.text().await.unwrap().contains("invalid_grant"));
    // The code was used by that attempt.
    assert_eq!(exchange(&d, &code, &verifier, "secret").await.status(), 400);

    let code = code_for(&d, &challenge).await;
    assert_eq!(
        exchange(&d, &code, &verifier, "not-the-secret")
            .await
            .status(),
        401
    );
    let code = code_for(&d, &challenge).await;
    let ok = exchange(&d, &code, &verifier, "secret").await;
    assert_eq!(ok.status(), 200);
    let body: serde_json::Value = ok.json().await.unwrap();
    assert!(body["id_token"].as_str().unwrap().split('.').count() == 3);
    assert_eq!(body["token_type"], "Bearer");
    assert_eq!(
        exchange(&d, &code, &verifier, "secret").await.status(),
        400,
        "once"
    );
}

#[tokio::test]
async fn an_unregistered_redirect_or_a_request_without_pkce_is_refused_at_authorize() {
    let d = double().await;
    for query in [
        "response_type=code&client_id=portal&redirect_uri=http://evil.example/cb&scope=openid&code_challenge=xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx&code_challenge_method=S256",
        "response_type=code&client_id=portal&redirect_uri=http://127.0.0.1:1/oidc/callback&scope=openid",
        "response_type=code&client_id=other&redirect_uri=http://127.0.0.1:1/oidc/callback&scope=openid&code_challenge=xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx&code_challenge_method=S256",
    ] {
        let r = http()
            .get(format!("{}/authorize?{query}", d.issuer()))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 400, "{query}");
    }
    let discovery: serde_json::Value = http()
        .get(format!("{}/.well-known/openid-configuration", d.issuer()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(discovery["issuer"], d.issuer());
    assert_eq!(discovery["code_challenge_methods_supported"][0], "S256");
}
