//! Withings: `action=requesttoken` and the credentials in the form body, answers wrapped in a
//! `{"status":0,"body":{...}}` envelope (always HTTP 200, errors in `status`), and a new refresh
//! token on every refresh that must replace the old one. Its data API answers an expired access
//! token with HTTP 200 and `"status":401` too: the preset carries
//! `providers::withings_token_rejected`, which tells the layer so.
//!
//! Runs against the crate's mock of Withings: `cargo run --example withings`.
//!
//! In production, three things change:
//!
//! ```text
//! let grant = providers::withings(client_id, client_secret);   // https://wbsapi.withings.net/v2/oauth2
//! let tokens = /* from your authorization-code flow, or your store */;
//! let url = "https://wbsapi.withings.net/measure";
//! ```
//!
//! and you would add `.store(..)`: Withings keeps the old refresh token valid only until the new
//! access token is used, so a rotated token that is not saved is lost for good.

mod common;

use reqwest_token_refresh::testkit::{MOCK_CLIENT_ID, MOCK_CLIENT_SECRET, MockProvider};
use reqwest_token_refresh::{Error, MemoryStore, TokenKey, TokenRefresh, TokenStore, providers};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let provider = MockProvider::withings().await;
    // The preset, pointed at the mock's token endpoint and API (it knows Withings' own, and how
    // its API rejects a token).
    let grant = providers::withings(MOCK_CLIENT_ID, MOCK_CLIENT_SECRET)
        .token_url(provider.token_url())
        .api_origin(provider.uri());
    let store = MemoryStore::new();
    let first = provider.issue_tokens();
    let auth = TokenRefresh::builder(grant).initial_tokens(first.clone()).store(store.clone()).build()?;
    let client = reqwest_middleware::ClientBuilder::new(reqwest::Client::new()).with(auth.clone()).build();
    let url = provider.api_url("measure");

    provider.expire_access_tokens();
    let failed = common::storm_and_report("withings, token expired", &client, &auth, &provider, &url, 200).await;
    let stored = store.load(&TokenKey::default()).await?.ok_or("nothing stored")?.tokens;
    println!(
        "rotated refresh token saved: {}; Withings' extra fields kept: userid = {}",
        stored.refresh_token() != first.refresh_token(),
        stored.extra().get("userid").map(ToString::to_string).unwrap_or_default(),
    );

    provider.revoke_all();
    provider.expire_access_tokens();
    let err = client.get(&url).send().await.err().ok_or("expected an error")?;
    match Error::from_middleware(&err) {
        Some(Error::ReauthorizationRequired { reason, .. }) => println!("dead refresh token -> {reason}"),
        other => return Err(format!("expected re-authorization, got {other:?}").into()),
    }
    // Withings answers a rejected token with HTTP 200 too: count the answers that carried data.
    if failed != 0 || provider.stats().api_ok != 200 || provider.stats().token_calls != 2 {
        return Err("expected one refresh for the storm and one refused refresh".into());
    }
    Ok(())
}
