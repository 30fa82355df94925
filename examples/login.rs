//! From the first login to a re-login: the authorization-code flow with PKCE, a storm after the
//! access token expired (one token call), a revoked grant, and the user logging in again.
//!
//! Runs against the crate's mock of Kroger, whose authorization endpoint approves at once:
//! `cargo run --example login`. Exits non-zero when any step does not turn out as printed.
//!
//! In production the grant is `providers::kroger(client_id, client_secret)` as it is, the
//! redirect URI is a route of your service, `pending` waits in the user's session between
//! `login.start()` and the callback, and the callback URL is what the user's browser brings back.

use reqwest_token_refresh::testkit::{MOCK_CLIENT_ID, MOCK_CLIENT_SECRET, MockProvider};
use reqwest_token_refresh::{Error, MemoryStore, TokenKey, TokenRefresh, TokenStore, providers};

const REDIRECT_URI: &str = "https://app.example/kroger/callback";

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let provider = MockProvider::kroger().await;
    // The preset, pointed at the mock's token endpoint, authorize URL and API.
    let grant = providers::kroger(MOCK_CLIENT_ID, MOCK_CLIENT_SECRET)
        .token_url(provider.token_url())
        .authorize_url(provider.authorize_url())
        .api_origin(provider.uri());
    let login = grant.login(REDIRECT_URI)?.scope("cart.basic:write");
    let store = MemoryStore::new();
    let auth = TokenRefresh::builder(grant).store(store.clone()).build()?;
    let client = reqwest_middleware::ClientBuilder::new(reqwest::Client::new()).with(auth.clone()).build();
    let user = TokenKey::new("shopper-1");
    let url = provider.api_url("v1/cart");

    // 1. The login: send the user to the authorize URL, take the callback, install the tokens.
    let (authorize, pending) = login.start()?;
    println!("login: send the user to {}", authorize.as_str().split('?').next().unwrap_or_default());
    let callback = provider.approve(&authorize).await;
    let tokens = login.exchange(&pending, &callback).await?;
    auth.set_tokens_for(&user, tokens.clone()).await?;
    let saved = store.load(&user).await?.map(|stored| stored.tokens);
    println!("login: code exchanged with PKCE, tokens saved before use: {}", saved.as_ref() == Some(&tokens));
    if saved.as_ref() != Some(&tokens) {
        return Err("the login's tokens are not in the store".into());
    }

    // 2. An hour later: the access token has expired and 200 requests hit the 401 at once.
    provider.expire_access_tokens();
    let calls_before = provider.stats().token_calls;
    let failed = storm(&client, &url, &user, 200).await;
    let storm_calls = provider.stats().token_calls - calls_before;
    println!("storm after expiry: 200 requests, {} OK, token calls: {storm_calls}", 200 - failed);
    if failed != 0 || storm_calls != 1 {
        return Err("expected every request to succeed behind one token call".into());
    }

    // 3. The user revokes the app: the next refresh is refused, and the layer says why.
    provider.revoke_all();
    provider.expire_access_tokens();
    match client.get(&url).with_extension(user.clone()).send().await {
        Err(err) => match Error::from_middleware(&err) {
            Some(Error::ReauthorizationRequired { reason, .. }) => {
                println!("revoked: re-authorization required ({reason})")
            }
            other => return Err(format!("expected re-authorization, got {other:?}").into()),
        },
        Ok(response) => return Err(format!("expected re-authorization, got {}", response.status()).into()),
    }

    // 4. The user logs in again: a new login, a new code, the same key.
    let (authorize, pending) = login.start()?;
    let callback = provider.approve(&authorize).await;
    auth.set_tokens_for(&user, login.exchange(&pending, &callback).await?).await?;
    let status = client.get(&url).with_extension(user.clone()).send().await?.status();
    println!(
        "re-login: {status}; logins: {}, token calls in all: {}",
        provider.stats().authorizations,
        provider.stats().token_calls
    );
    if status != 200 || provider.stats().authorizations != 2 {
        return Err("expected the re-login to bring the user back".into());
    }
    Ok(())
}

/// `n` concurrent GETs of `url` as `user`; how many failed.
async fn storm(client: &reqwest_middleware::ClientWithMiddleware, url: &str, user: &TokenKey, n: usize) -> usize {
    let requests = (0..n).map(|_| async {
        let sent = client.get(url).with_extension(user.clone()).send().await;
        sent.is_ok_and(|response| response.status() == 200)
    });
    futures::future::join_all(requests).await.into_iter().filter(|ok| !ok).count()
}
