//! Why the single flight and shared stores exist (RFC 9700 §4.14.2).
//!
//! A provider that rotates refresh tokens and detects reuse revokes the whole token family when a
//! spent refresh token comes back. Two copies of a service that refresh the same grant on their
//! own — two replicas, or two layers in one process with separate stores — therefore log the
//! user out everywhere at once. The first test shows that failure on purpose; the second shows
//! that sharing a store (with its lock) prevents it.

use reqwest_token_refresh::testkit::MockProvider;
use reqwest_token_refresh::{Error, MemoryStore};

use crate::helpers::{client_with, count, layer, storm};

#[tokio::test]
async fn two_layers_refreshing_one_grant_on_their_own_get_the_whole_family_revoked() {
    let provider = MockProvider::start().await;
    let tokens = provider.issue_tokens();
    provider.expire_access_tokens();
    // Two independent layers, each with its own in-memory store, holding the same grant.
    let replica_a = layer(&provider, tokens.clone()).build().unwrap();
    let replica_b = layer(&provider, tokens).build().unwrap();
    let url = provider.api_url("me");

    assert_eq!(client_with(&replica_a).get(&url).send().await.unwrap().status(), 200, "A refreshes first");
    let err = client_with(&replica_b).get(&url).send().await.unwrap_err();
    assert!(Error::from_middleware(&err).unwrap().is_reauthorization_required(), "B spent a rotated token");

    let stats = provider.stats();
    assert_eq!(stats.reuse_detected, 1);
    assert_eq!(stats.families_revoked, 1);

    // The revocation took A's fresh tokens with it: A is logged out too.
    let err = client_with(&replica_a).get(&url).send().await.unwrap_err();
    assert!(Error::from_middleware(&err).unwrap().is_reauthorization_required());
    assert!(replica_a.state().is_reauthorization_required() && replica_b.state().is_reauthorization_required());
}

#[tokio::test]
async fn two_layers_sharing_a_store_refresh_once_and_both_keep_working() {
    let provider = MockProvider::start().await;
    let tokens = provider.issue_tokens();
    provider.expire_access_tokens();
    let store = MemoryStore::new();
    let replica_a = layer(&provider, tokens.clone()).store(store.clone()).build().unwrap();
    let replica_b = layer(&provider, tokens).store(store).build().unwrap();
    let url = provider.api_url("me");

    let (client_a, client_b) = (client_with(&replica_a), client_with(&replica_b));
    let (a, b) = tokio::join!(storm(&client_a, &url, 100, None), storm(&client_b, &url, 100, None));

    assert_eq!(count(&a, 200) + count(&b, 200), 200);
    assert_eq!(provider.stats().token_calls, 1, "one refresh between the two layers");
    assert_eq!(provider.stats().reuse_detected, 0);
    assert_eq!(replica_a.stats().adopted + replica_b.stats().adopted, 1, "the second layer adopted the first's tokens");
}
