//! Kroger: client credentials in HTTP Basic, single-use refresh tokens, a 401
//! `{"error":"invalid_token"}` from the API, and a plain-text 400 for a spent refresh token.
//!
//! Runs against the crate's mock of Kroger: `cargo run --example kroger`.
//!
//! In production, three things change:
//!
//! ```text
//! let grant = providers::kroger(client_id, client_secret);      // https://api.kroger.com/v1/connect/oauth2/token
//! let tokens = /* from your authorization-code flow, or your store */;
//! let url = "https://api.kroger.com/v1/cart";                   // the API you call
//! ```
//!
//! and you would add `.store(..)` so that a rotated refresh token survives a restart.

mod common;

use reqwest_token_refresh::testkit::{MOCK_CLIENT_ID, MOCK_CLIENT_SECRET, MockProvider};
use reqwest_token_refresh::{Error, TokenRefresh, providers};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let provider = MockProvider::kroger().await;
    // The preset, pointed at the mock's token endpoint and API (it knows Kroger's own).
    let grant = providers::kroger(MOCK_CLIENT_ID, MOCK_CLIENT_SECRET)
        .token_url(provider.token_url())
        .api_origin(provider.uri());
    let first = provider.issue_tokens();
    let auth = TokenRefresh::builder(grant).initial_tokens(first.clone()).build()?;
    let client = reqwest_middleware::ClientBuilder::new(reqwest::Client::new()).with(auth.clone()).build();
    let url = provider.api_url("v1/cart");

    provider.expire_access_tokens();
    let failed = common::storm_and_report("kroger, token expired", &client, &auth, &provider, &url, 200).await;
    let rotated = auth.tokens().and_then(|t| t.refresh_token().cloned());
    println!("refresh token rotated: {}", rotated.as_ref() != first.refresh_token());

    // The user revokes the app: the refresh token is dead, and Kroger says so with a plain 400.
    provider.revoke_all();
    provider.expire_access_tokens();
    match client.get(&url).send().await {
        Err(err) => match Error::from_middleware(&err) {
            Some(Error::ReauthorizationRequired { reason, .. }) => println!("dead refresh token -> {reason}"),
            other => return Err(format!("expected re-authorization, got {other:?}").into()),
        },
        Ok(response) => return Err(format!("expected re-authorization, got {}", response.status()).into()),
    }
    // After the user logs in again, new tokens bring the layer back.
    auth.set_tokens(provider.issue_tokens()).await?;
    println!("after set_tokens: {}", client.get(&url).send().await?.status());
    if failed != 0 || provider.stats().token_calls != 2 {
        return Err("expected one refresh for the storm and one refused refresh".into());
    }
    Ok(())
}
