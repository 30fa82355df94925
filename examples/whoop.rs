//! WHOOP (user OAuth): the client id and secret in the form body, `scope=offline` (without it
//! WHOOP returns no new refresh token), and a bare 401 from the API when the token has expired.
//!
//! Runs against the crate's mock of WHOOP: `cargo run --example whoop`.
//!
//! In production, three things change:
//!
//! ```text
//! let grant = providers::whoop(client_id, client_secret);   // https://api.prod.whoop.com/oauth/oauth2/token
//! let tokens = /* from your authorization-code flow (asked with the `offline` scope) */;
//! let url = "https://api.prod.whoop.com/developer/v2/recovery";
//! ```

use reqwest_token_refresh::testkit::{MOCK_CLIENT_ID, MOCK_CLIENT_SECRET, MockProvider};
use reqwest_token_refresh::{TokenKey, TokenRefresh, providers};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let provider = MockProvider::whoop().await;
    // The preset, pointed at the mock's token endpoint and API (it knows WHOOP's own).
    let grant =
        providers::whoop(MOCK_CLIENT_ID, MOCK_CLIENT_SECRET).token_url(provider.token_url()).api_origin(provider.uri());
    // A service that syncs many members' data holds one token set per member.
    let auth = TokenRefresh::builder(grant).build()?;
    let members = [TokenKey::new("member-1"), TokenKey::new("member-2"), TokenKey::new("member-3")];
    for member in &members {
        auth.set_tokens_for(member, provider.issue_tokens()).await?;
    }
    let client = reqwest_middleware::ClientBuilder::new(reqwest::Client::new()).with(auth.clone()).build();
    let url = provider.api_url("developer/v2/recovery");

    provider.expire_access_tokens();
    let requests =
        members.iter().cycle().take(300).map(|member| client.get(&url).with_extension(member.clone()).send());
    let statuses = futures::future::join_all(requests).await;
    let ok = statuses.iter().filter(|r| r.as_ref().is_ok_and(|r| r.status() == 200)).count();
    println!(
        "whoop: 300 requests for 3 members, all with expired tokens -> {ok} OK, {} token calls (one per member)",
        provider.stats().token_calls
    );
    if ok != 300 || provider.stats().token_calls != 3 {
        return Err("expected one token call per member and no failures".into());
    }
    Ok(())
}
