//! Token revocation (RFC 7009): the call to a grant's revocation endpoint, through the grant's own
//! client and authenticated like its token calls. What the layer does around it (the store's lock,
//! the removal, the key's terminal state) is in `cache/persist.rs`.

use std::time::Instant;

use http::header::ACCEPT;
use tracing::Instrument as _;

use super::endpoint::{CappedAnswer, ClientProof, TokenEndpoint, with_body};
use super::{BodyEncoding, ClientAuth, response};
use crate::error::RefreshError;
use crate::token::TokenSet;

/// RFC 7009 §2.1's hint for a refresh token: revoking it revokes its grant, so the server
/// SHOULD revoke the access tokens issued with it too.
const REFRESH_TOKEN_HINT: &str = "refresh_token";
/// The hint for an access token, revoked when a set has no refresh token (a client-credentials
/// grant's).
const ACCESS_TOKEN_HINT: &str = "access_token";

impl TokenEndpoint {
    /// Revokes `tokens` at the revocation endpoint: the refresh token if the set has one, else
    /// the access token, with its `token_type_hint`. RFC 7009 §2.2: a 200 means revoked, also
    /// for a token the server already held invalid (any 2xx is taken so); any other answer is
    /// a [`RefreshError::Protocol`] (`unsupported_token_type`, a 503 with `Retry-After`, ...).
    /// The call is bounded like a token call (the grant's timeout, the answer capped), and an
    /// error has every secret either holds redacted.
    pub(crate) async fn revoke(&self, tokens: &TokenSet) -> Result<(), RefreshError> {
        // Authenticated like the set's refreshes: as its registered client, when it has one.
        self.for_client(Some(tokens))?.revoke_as_configured(tokens).await
    }

    /// [`revoke`](Self::revoke) with this endpoint's own client authentication.
    async fn revoke_as_configured(&self, tokens: &TokenSet) -> Result<(), RefreshError> {
        let Some(revocation_url) = &self.revocation_url else {
            return Err(RefreshError::Config(
                "the grant has no revocation endpoint: set `revocation_url`, or build the grant from the server's metadata"
                    .into(),
            ));
        };
        if matches!(self.client_auth, ClientAuth::WithingsSignature(_)) {
            // The signature signs a token call's `action`: there is nothing to sign a revocation
            // with, and Withings documents no RFC 7009 endpoint.
            return Err(RefreshError::Config("Withings' signed calls cannot revoke tokens (RFC 7009)".into()));
        }
        let (token, hint) = match tokens.refresh_token() {
            Some(refresh_token) => (refresh_token.secret(), REFRESH_TOKEN_HINT),
            None => (tokens.access_token().secret(), ACCESS_TOKEN_HINT),
        };
        // The URL without user info or query, which could hold a credential.
        let endpoint = reqwest::Url::parse(revocation_url)
            .map(|url| format!("{}{}", url.origin().ascii_serialization(), url.path()))
            .unwrap_or_default();
        let span = tracing::info_span!(
            "token_revocation",
            endpoint = %endpoint,
            token_type_hint = hint,
            status = tracing::field::Empty,
            duration_ms = tracing::field::Empty,
        );
        let started = Instant::now();
        let mut proof_secrets = Vec::new();
        let answer = async {
            let proof = self.client_proof().await?;
            proof_secrets = proof.secrets();
            self.revoke_unredacted(revocation_url, token, hint, &proof).await
        }
        .instrument(span.clone())
        .await;
        span.record("duration_ms", u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX));
        answer.map_err(|mut err| {
            let mut secrets = self.secrets(&[("token", token)], Some(tokens));
            secrets.extend(proof_secrets);
            err.redact(&secrets.iter().map(String::as_str).collect::<Vec<_>>());
            err
        })
    }

    /// The call itself: `token=..&token_type_hint=..`, always form-encoded (RFC 7009 §2.1, also
    /// for a grant whose token calls are JSON), with the client's authentication. The grant's
    /// extra parameters are its token calls' (`action=requesttoken`) and are not sent.
    async fn revoke_unredacted(
        &self,
        revocation_url: &str,
        token: &str,
        hint: &str,
        proof: &ClientProof,
    ) -> Result<(), RefreshError> {
        let url = reqwest::Url::parse(revocation_url)
            .map_err(|e| RefreshError::Config(format!("the revocation URL {revocation_url:?} does not parse: {e}")))?;
        let mut fields = vec![("token", token), ("token_type_hint", hint)];
        let request = self.request(http::Method::POST, url)?.header(ACCEPT, "application/json");
        let request = self.authenticate(request, &mut fields, proof)?;
        let request = with_body(request, &fields, BodyEncoding::Form);
        let CappedAnswer { status, headers, body, .. } = self.send_capped(request).await?;
        tracing::Span::current().record("status", status.as_u16());
        if status.is_success() {
            return Ok(());
        }
        // A cut body is judged by its status and `Retry-After` like a token call's error.
        Err(response::parse_failure(status, &headers, &body, self.now()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_grant_without_a_revocation_endpoint_says_so_and_sends_nothing() {
        let endpoint = TokenEndpoint::new("http://127.0.0.1:9/token");
        let err = endpoint.revoke(&TokenSet::new("at-1234").with_refresh_token("rt-1234")).await.unwrap_err();
        assert!(matches!(&err, RefreshError::Config(reason) if reason.contains("revocation_url")), "{err}");
    }

    #[test]
    fn the_hints_are_rfc_7009s() {
        assert_eq!((REFRESH_TOKEN_HINT, ACCESS_TOKEN_HINT), ("refresh_token", "access_token"));
    }
}
