//! One file per provider in `shared/seeds`: a storm through the layer against that provider's
//! mock, the exact token request its document describes (checked with wiremock matchers), one
//! token call per expiry, rotation stored, and its own "dead refresh token" answer being terminal.

mod kroger;
mod whoop;
mod whoop_partner;
mod withings;
mod withings_signature;

use reqwest_token_refresh::testkit::MockProvider;
use wiremock::{Match, Request};

/// The token endpoint's requests, after checking there was exactly `expected` of them.
pub fn token_requests(provider: &MockProvider, expected: usize) -> Vec<Request> {
    let requests = provider.token_requests();
    assert_eq!(requests.len(), expected, "token requests");
    requests
}

/// Asserts that `request` satisfies every matcher, naming the first one that fails.
pub fn assert_matches(request: &Request, matchers: &[(&str, &dyn Match)]) {
    for (what, matcher) in matchers {
        assert!(matcher.matches(request), "token request does not match {what}: {request:?}");
    }
}

/// The request body's form fields.
pub fn form(request: &Request) -> Vec<(String, String)> {
    form_urlencoded::parse(&request.body).into_owned().collect()
}
