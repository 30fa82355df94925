//! The WHOOP Partner API: the client-credentials grant as a JSON body, no refresh token, and a
//! bare 401 when the token has expired: the layer simply fetches a new token, once.
//!
//! Runs against the crate's mock of the Partner API: `cargo run --example whoop_partner`.
//!
//! In production, two things change:
//!
//! ```text
//! let source = providers::whoop_partner(client_id, client_secret); // https://api.prod.whoop.com/developer/v2/partner/token
//! let url = "https://api.prod.whoop.com/developer/v2/partner/...";
//! ```

mod common;

use reqwest_token_refresh::testkit::{MOCK_CLIENT_ID, MOCK_CLIENT_SECRET, MockProvider};
use reqwest_token_refresh::{TokenRefresh, providers};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let provider = MockProvider::whoop_partner().await;
    // The preset, pointed at the mock's token endpoint and API (it knows WHOOP's own).
    let source = providers::whoop_partner(MOCK_CLIENT_ID, MOCK_CLIENT_SECRET)
        .token_url(provider.token_url())
        .api_origin(provider.uri());
    // No initial tokens: the first request fetches one.
    let auth = TokenRefresh::builder(source).build()?;
    let client = reqwest_middleware::ClientBuilder::new(reqwest::Client::new()).with(auth.clone()).build();
    let url = provider.api_url("developer/v2/partner/members");

    let first = common::storm_and_report("whoop partner, no token yet", &client, &auth, &provider, &url, 200).await;
    provider.expire_access_tokens();
    let second = common::storm_and_report("whoop partner, token expired", &client, &auth, &provider, &url, 200).await;
    if first + second != 0 || provider.stats().token_calls != 2 {
        return Err("expected one token call per storm and no failures".into());
    }
    Ok(())
}
