//! The mock's side of OAuth Client ID Metadata Documents, served once
//! [`MockProviderBuilder::client_id_metadata_documents`] turns them on: a `client_id` that is a
//! URL is fetched over HTTP, checked, and remembered as a registered public client.
//!
//! The responders are synchronous, and wiremock runs each server on a thread of its own, so a
//! fetch runs on a fresh thread with its own runtime, bounded in time ([`FETCH_TIMEOUT`]) and
//! size ([`MAX_DOCUMENT_BYTES`]); the provider answers nothing else meanwhile, as a server that
//! fetches synchronously would not. A document the provider serves itself would wait for the
//! timeout: serve documents from another server.

use std::collections::HashMap;
use std::time::Duration;

use http::header::ACCEPT;
use serde_json::Value;

#[cfg(doc)]
use super::MockProviderBuilder;
use super::Shared;
use super::wire::OAuthError;
use crate::source::client_metadata::{check_client_id, check_document};

/// How long one fetch of a document may take, from connecting to its last byte: 5 seconds.
pub(super) const FETCH_TIMEOUT: Duration = Duration::from_secs(5);
/// The largest document read: 5 KiB, the draft's recommended maximum (§6.6).
pub(super) const MAX_DOCUMENT_BYTES: usize = 5 * 1024;

/// The documents fetched and found valid, by `client_id`: their redirect URIs. Invalid
/// documents and failed fetches are not kept (§4.4 of the draft), so the next request fetches
/// again.
#[derive(Default)]
pub(super) struct Documents {
    redirect_uris: HashMap<String, Vec<String>>,
}

impl Shared {
    /// Whether `client_id` names a client by its metadata document's URL: the mock reads
    /// documents, and the id is an `http` or `https` URL.
    pub(super) fn is_document_client(&self, client_id: &str) -> bool {
        self.config.client_id_metadata_documents
            && ["https://", "http://"]
                .iter()
                .any(|scheme| client_id.get(..scheme.len()).is_some_and(|prefix| prefix.eq_ignore_ascii_case(scheme)))
    }

    /// The redirect URIs of the client whose document is at `client_id`, from the cache or
    /// fetched now; why not, as the authorization endpoint tells the user.
    pub(super) fn document_redirect_uris(&self, client_id: &str) -> Result<Vec<String>, String> {
        if let Some(uris) = self.state.lock().client_documents.redirect_uris.get(client_id) {
            return Ok(uris.clone());
        }
        check_client_id(client_id)
            .map_err(|reason| format!("the client_id is not a client identifier URL: {reason}"))?;
        self.state.lock().stats.client_metadata_fetches += 1;
        let document = fetch(client_id.to_owned())?;
        let uris = check_document(&document, client_id)?;
        // The mock checks no client keys from a document: it takes public clients only.
        if document.get("token_endpoint_auth_method").and_then(Value::as_str) != Some("none") {
            return Err("the client metadata document's token_endpoint_auth_method must be none".into());
        }
        self.state.lock().client_documents.redirect_uris.insert(client_id.to_owned(), uris.clone());
        Ok(uris)
    }

    /// Checks a token or revocation call from `client_id`, a document client: known from an
    /// authorization request, and public (`none`: no secret, no HTTP Basic).
    pub(super) fn check_document_client(&self, client_id: &str, sent_a_secret: bool) -> Result<(), OAuthError> {
        if sent_a_secret {
            return Err(OAuthError::invalid_client(
                "a client metadata document's client is public: it sends no secret",
            ));
        }
        match self.state.lock().client_documents.redirect_uris.contains_key(client_id) {
            true => Ok(()),
            false => Err(OAuthError::invalid_client("unknown client: its metadata document was never fetched")),
        }
    }
}

/// Fetches the document at `url`: an answer other than `200`, a body over
/// [`MAX_DOCUMENT_BYTES`], one that is not JSON, or no answer within [`FETCH_TIMEOUT`] is the
/// reason it is refused.
fn fetch(url: String) -> Result<Value, String> {
    let fetching = std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| format!("no runtime to fetch the client metadata document: {e}"))?;
        let fetched = runtime.block_on(async move {
            let client = reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .timeout(FETCH_TIMEOUT)
                .build()
                .map_err(|e| format!("no client to fetch the client metadata document: {e}"))?;
            let unreachable = |e: reqwest::Error| format!("the client metadata document could not be fetched: {e}");
            let mut answer = client.get(&url).header(ACCEPT, "application/json").send().await.map_err(unreachable)?;
            if answer.status() != http::StatusCode::OK {
                return Err(format!("the client metadata document's URL answered {}", answer.status()));
            }
            let mut body = Vec::new();
            while let Some(chunk) = answer.chunk().await.map_err(unreachable)? {
                if body.len() + chunk.len() > MAX_DOCUMENT_BYTES {
                    return Err(format!("the client metadata document is larger than {MAX_DOCUMENT_BYTES} bytes"));
                }
                body.extend_from_slice(&chunk);
            }
            serde_json::from_slice(&body).map_err(|_| "the client metadata document is not JSON".to_owned())
        });
        // A name lookup still running (a resolver that hangs past the timeout) is a blocking
        // task, which dropping the runtime would wait for: it is left behind instead.
        runtime.shutdown_background();
        fetched
    });
    fetching.join().unwrap_or_else(|_| Err("fetching the client metadata document failed".into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bounds_are_what_their_docs_say() {
        assert_eq!(FETCH_TIMEOUT, Duration::from_secs(5));
        assert_eq!(MAX_DOCUMENT_BYTES, 5120);
    }
}
