//! What the layer tells the service as it happens, for a hook that does async work (mark a user
//! "must reconnect" in a database, page an operator): [`TokenEvent`] and the hook's type.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use crate::error::{RefreshError, StoreError};
use crate::key::TokenKey;
use crate::token::TokenSet;

/// Something that happened to a key's tokens; given to the
/// [`on_event`](crate::TokenRefreshBuilder::on_event) hook. Its `Debug` shows no secret.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum TokenEvent {
    /// New tokens were fetched (or adopted from the store) and are in use.
    Refreshed {
        /// Whose tokens.
        key: TokenKey,
        /// The new tokens.
        tokens: TokenSet,
    },
    /// The key's grant is dead: its user must authorize again.
    ReauthorizationRequired {
        /// Whose grant.
        key: TokenKey,
        /// What the token endpoint said.
        reason: RefreshError,
    },
    /// The token endpoint refuses the client itself (`invalid_client`, `unauthorized_client`).
    ClientRejected {
        /// The key whose refresh found it out.
        key: TokenKey,
        /// What the token endpoint said.
        reason: RefreshError,
    },
    /// The store failed to read or save the key's tokens.
    StoreFailed {
        /// Whose tokens.
        key: TokenKey,
        /// What failed.
        error: StoreError,
    },
}

/// The async hook, boxed.
pub(crate) type EventHook = Arc<dyn Fn(TokenEvent) -> Pin<Box<dyn Future<Output = ()> + Send>> + Send + Sync>;
