//! The mock's ledger of tokens, and how it decides a token call.
//!
//! Every authorization starts a token family, and the access and refresh tokens minted for it
//! stay tied to it. A refresh spends (rotates) the refresh token presented; presenting a spent one
//! again is reuse, which by default revokes the whole family (RFC 9700 §4.14.2), unless the
//! previous-token grace still covers it. The grant handlers here decide what a call gets;
//! [`dialect`](super::dialect) shapes the answer.

use std::collections::{HashMap, HashSet, VecDeque};
use std::time::{Duration, SystemTime};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as BASE64_URL;
use sha2::{Digest as _, Sha256};
use wiremock::Request;

#[cfg(doc)]
use super::MockProviderBuilder;
use super::wire::{OAuthError, Reply, token_params};
use super::{Config, Dialect, Fault, ProviderStats, Shared};

/// The longest a rotated refresh token stays usable under
/// [`MockProviderBuilder::previous_refresh_token_grace`]; Withings: "Old refresh_token: Expires 8
/// hours after new issuance or once the new access_token is used".
pub(super) const PREVIOUS_REFRESH_TOKEN_GRACE: Duration = Duration::from_secs(8 * 60 * 60);

#[derive(Default)]
pub(super) struct State {
    pub(super) stats: ProviderStats,
    /// Indexed by family number; a family is everything descended from one authorization.
    pub(super) families: Vec<Family>,
    pub(super) access: HashMap<String, AccessRecord>,
    refresh: HashMap<String, RefreshRecord>,
    pub(super) faults: VecDeque<Fault>,
    pub(super) token_requests: Vec<Request>,
    /// Faults for the revocation endpoint, answered before its next calls.
    pub(super) revocation_faults: VecDeque<Fault>,
    pub(super) revocation_requests: Vec<Request>,
    /// The `jti` of every client assertion accepted so far.
    pub(super) assertion_ids: HashSet<String>,
    /// Withings nonces issued and not yet used, with when they were issued.
    pub(super) nonces: HashMap<String, SystemTime>,
    /// Authorization codes the authorize endpoint issued, by code.
    codes: HashMap<String, CodeRecord>,
    /// The clients the registration endpoint registered.
    pub(super) registrations: super::registration::Registrations,
    /// The MCP server's sessions.
    pub(super) mcp: super::mcp::McpState,
    /// The client metadata documents fetched and found valid.
    pub(super) client_documents: super::client_metadata::Documents,
    serial: u64,
    /// DPoP's `jti`s and nonce.
    #[cfg(feature = "dpop")]
    pub(super) dpop: super::dpop::DpopState,
}

/// An authorization code, from the authorize endpoint to its one exchange.
struct CodeRecord {
    /// The client it was issued to: only that client may exchange it (RFC 6749 §4.1.3).
    client_id: Option<String>,
    redirect_uri: String,
    /// The PKCE `S256` challenge it was issued for.
    code_challenge: String,
    scope: Option<String>,
    issued_at: SystemTime,
    /// The family its exchange started: a second exchange revokes it (RFC 6749 §4.1.2).
    exchanged: Option<usize>,
}

/// What the authorize endpoint was asked, checked; see [`Shared::authorize`].
pub(super) struct Authorization {
    /// The `client_id` the request named, if any.
    pub(super) client_id: Option<String>,
    pub(super) redirect_uri: String,
    pub(super) code_challenge: String,
    pub(super) scope: Option<String>,
}

pub(super) struct Family {
    revoked: bool,
    scope: Option<String>,
}

pub(super) struct AccessRecord {
    family: usize,
    /// `None` when the lifetime overflows `SystemTime`: never expires by the clock.
    expires_at: Option<SystemTime>,
    /// Set by `expire_access_tokens` and `issue_expired_tokens`.
    pub(super) expired: bool,
    /// Revoked on its own at the revocation endpoint (its family's refresh token stays).
    revoked: bool,
    /// Under the grace, the refresh token this one was issued for: its grace ends when the API
    /// first accepts this access token, since the client evidently has the new pair.
    predecessor: Option<String>,
    /// The thumbprint of the DPoP key the token is bound to (`cnf.jkt`), if it is.
    #[cfg_attr(not(feature = "dpop"), allow(dead_code, reason = "read by the DPoP checks"))]
    pub(super) jkt: Option<String>,
}

struct RefreshRecord {
    family: usize,
    status: RefreshStatus,
    /// The thumbprint of the DPoP key the token is bound to: a refresh must prove that key.
    jkt: Option<String>,
}

#[derive(Clone, Copy)]
enum RefreshStatus {
    /// Not rotated away (yet).
    Live,
    /// Rotated away at that time, but kept usable by the grace.
    Previous(SystemTime),
    /// Rotated away: presenting it again is reuse.
    Spent,
}

/// Why a refresh token was refused.
#[derive(Clone, Copy)]
enum Refusal {
    Unknown,
    Spent,
    Revoked,
    Injected,
    /// Bound to a DPoP key the request did not prove.
    OtherKey,
}

impl Refusal {
    fn description(self) -> &'static str {
        match self {
            Refusal::Unknown => "The refresh token is unknown",
            Refusal::Spent => "The refresh token was already used",
            Refusal::Revoked => "The refresh token was revoked",
            Refusal::Injected => "injected fault: the refresh token is invalid",
            Refusal::OtherKey => "The refresh token is bound to another DPoP key",
        }
    }

    fn into_error(self) -> OAuthError {
        OAuthError::new(400, "invalid_grant", self.description())
    }
}

/// What a token call presents that works once: client authentication checked before the lock,
/// whose single use is checked under it.
pub(super) enum OneTime {
    /// A client assertion's `jti`.
    #[cfg_attr(not(feature = "private-key-jwt"), allow(dead_code, reason = "made only by the assertion check"))]
    AssertionId(String),
    /// A Withings nonce.
    Nonce(String),
}

pub(super) struct Minted {
    pub(super) family: usize,
    pub(super) access: String,
    pub(super) refresh: Option<String>,
    pub(super) expires_at: Option<SystemTime>,
    /// The DPoP key's thumbprint the tokens are bound to, if they are.
    pub(super) jkt: Option<String>,
}

impl State {
    pub(super) fn new_family(&mut self, scope: Option<String>) -> usize {
        self.families.push(Family { revoked: false, scope });
        self.families.len() - 1
    }

    pub(super) fn mint(
        &mut self,
        config: &Config,
        family: usize,
        now: SystemTime,
        refresh: bool,
        expired: bool,
        jkt: Option<&str>,
    ) -> Minted {
        self.serial += 1;
        // Visible ASCII without spaces only: valid as an RFC 6750 §2.1 b64token.
        let name = format!("{}-{family}-{}", config.token_prefix, self.serial);
        let expires_at = if expired {
            Some(now.checked_sub(Duration::from_secs(1)).unwrap_or(now))
        } else {
            now.checked_add(config.access_token_lifetime)
        };
        let access = format!("at-{name}");
        let jkt = jkt.map(str::to_owned);
        let record = AccessRecord { family, expires_at, expired, revoked: false, predecessor: None, jkt: jkt.clone() };
        self.access.insert(access.clone(), record);
        let refresh = refresh.then(|| {
            let refresh = format!("rt-{name}");
            let record = RefreshRecord { family, status: RefreshStatus::Live, jkt: jkt.clone() };
            self.refresh.insert(refresh.clone(), record);
            refresh
        });
        Minted { family, access, refresh, expires_at, jkt }
    }

    pub(super) fn revoke(&mut self, family: usize) {
        if let Some(family) = self.families.get_mut(family).filter(|f| !f.revoked) {
            family.revoked = true;
            self.stats.families_revoked += 1;
        }
    }

    /// Revokes `token` at the revocation endpoint: a refresh token's whole family (RFC 7009 §2.1:
    /// its grant, and the access tokens issued with it), or one access token. Whether the token
    /// was one the provider issued and still honoured.
    pub(super) fn revoke_token(&mut self, token: &str) -> bool {
        if let Some(family) = self.refresh.get(token).map(|record| record.family) {
            let live = !self.family_revoked(family);
            self.revoke(family);
            return live;
        }
        let family_revoked = |state: &Self, family| state.family_revoked(family);
        match self.access.get(token).map(|record| (record.family, record.revoked)) {
            Some((family, false)) if !family_revoked(self, family) => {
                if let Some(record) = self.access.get_mut(token) {
                    record.revoked = true;
                }
                true
            }
            _ => false,
        }
    }

    fn family_revoked(&self, family: usize) -> bool {
        self.families.get(family).is_none_or(|f| f.revoked)
    }

    fn refuse(&mut self, refusal: Refusal) -> Refusal {
        self.stats.invalid_grants += 1;
        refusal
    }

    /// Exchanges the refresh token `presented` for new tokens, rotating it if `rotate`; `jkt` is
    /// the DPoP key the request proved, which a bound refresh token must be bound to.
    fn exchange(
        &mut self,
        config: &Config,
        presented: &str,
        rotate: bool,
        now: SystemTime,
        jkt: Option<&str>,
    ) -> Result<Minted, Refusal> {
        let Some(record) = self.refresh.get(presented) else {
            return Err(self.refuse(Refusal::Unknown));
        };
        let (family, status) = (record.family, record.status);
        let bound_elsewhere = record.jkt.is_some() && record.jkt.as_deref() != jkt;
        let in_grace = match status {
            RefreshStatus::Live => false,
            RefreshStatus::Previous(rotated_at)
                if rotated_at.checked_add(PREVIOUS_REFRESH_TOKEN_GRACE).is_none_or(|end| now < end) =>
            {
                true
            }
            RefreshStatus::Previous(_) | RefreshStatus::Spent => {
                // RFC 9700 §4.14.2: a spent token presented again means it leaked or the client
                // raced itself; the provider cannot tell which, so the whole family goes.
                self.stats.reuse_detected += 1;
                if config.reuse_revokes_family {
                    self.revoke(family);
                }
                return Err(self.refuse(Refusal::Spent));
            }
        };
        if self.family_revoked(family) {
            return Err(self.refuse(Refusal::Revoked));
        }
        if bound_elsewhere {
            // RFC 9449 §5: a bound refresh token is worth nothing without its key.
            return Err(self.refuse(Refusal::OtherKey));
        }
        let grace = config.previous_refresh_token_grace;
        if let Some(record) = self.refresh.get_mut(presented).filter(|_| rotate) {
            record.status = match (grace, status) {
                (false, _) => RefreshStatus::Spent,
                // The grace runs from the first rotation: re-presenting does not extend it.
                (true, RefreshStatus::Previous(rotated_at)) => RefreshStatus::Previous(rotated_at),
                (true, _) => RefreshStatus::Previous(now),
            };
        }
        if in_grace {
            self.stats.grace_refreshes += 1;
        }
        let minted = self.mint(config, family, now, rotate, false, jkt);
        if let Some(record) = self.access.get_mut(&minted.access).filter(|_| rotate && grace) {
            record.predecessor = Some(presented.to_owned());
        }
        self.stats.tokens_issued += 1;
        Ok(minted)
    }

    /// Lets `token` through the API, or says why not; the first accepted use of an access token
    /// ends its predecessor's grace.
    pub(super) fn admit(&mut self, token: &str, now: SystemTime) -> Result<(), &'static str> {
        let Some(record) = self.access.get(token) else {
            return Err("The access token is unknown");
        };
        if record.revoked || self.family_revoked(record.family) {
            return Err("The access token was revoked");
        }
        if record.expired || record.expires_at.is_some_and(|at| now >= at) {
            return Err("The access token is invalid or has expired");
        }
        let predecessor = self.access.get_mut(token).and_then(|record| record.predecessor.take());
        let in_grace = predecessor.and_then(|predecessor| self.refresh.get_mut(&predecessor));
        if let Some(record) = in_grace.filter(|record| matches!(record.status, RefreshStatus::Previous(_))) {
            record.status = RefreshStatus::Spent;
        }
        Ok(())
    }
}

// A token call, decided: injected faults first, then the grant against the ledger.
impl Shared {
    /// Handles a token call: the reply, `true` when the answer is to be lost, and the DPoP
    /// nonce the answer carries, if the mock has one.
    pub(super) fn token_call(&self, request: &Request) -> (Reply, bool, Option<String>) {
        // What needs no state is decided before taking the lock.
        let checked = token_params(request, self.config.dialect).and_then(|params| {
            self.check_action(&params)?;
            let jti = self.authenticate_client(request, &params)?;
            Ok((params, jti))
        });
        #[cfg(feature = "dpop")]
        let proof = self.config.dpop.map(|_| self.check_proof(request, None));
        let resources = super::resource::token_resources(request);
        let now = self.config.clock.now();

        let mut state = self.state.lock();
        state.stats.token_calls += 1;
        if matches!(&checked, Err(error) if error.code == "invalid_client") {
            state.stats.invalid_clients += 1;
        }
        Shared::count_resources(&mut state, &resources);
        state.token_requests.push(request.clone());
        let lost = match state.faults.pop_front() {
            None => false,
            Some(Fault::LoseAnswer) => {
                state.stats.answers_lost += 1;
                true
            }
            Some(Fault::InvalidGrant) => {
                let refusal = state.refuse(Refusal::Injected);
                return (self.error_reply(refusal.into_error()), false, None);
            }
            Some(fault) => return (Reply::fault(fault), false, None),
        };
        let spent = checked.and_then(|(params, once)| match once {
            // A client assertion works once (RFC 7523 §3, item 7): a replayed one is refused.
            Some(OneTime::AssertionId(jti)) => match state.assertion_ids.insert(jti) {
                true => Ok(params),
                false => Err(OAuthError::new(400, "invalid_client", "the client assertion's jti was already used")),
            },
            Some(OneTime::Nonce(nonce)) => state.spend_nonce(&nonce, now).map(|()| params),
            None => Ok(params),
        });
        // RFC 8707 §2: a request for another resource is refused before the grant is looked at.
        let spent = spent.and_then(|params| self.check_target(&mut state, &resources).map(|()| params));
        #[cfg(feature = "dpop")]
        let bound = |state: &mut State| self.token_request_binding(state, proof);
        #[cfg(not(feature = "dpop"))]
        let bound = |_: &mut State| Ok::<Option<String>, Reply>(None);
        let reply = match spent {
            Ok(params) => match bound(&mut state) {
                Ok(jkt) => {
                    // Who the call says it is: HTTP Basic's id, else `client_id` in the body.
                    let basic = super::wire::basic_credentials(&request.headers).ok().flatten();
                    let client = basic.map(|(id, _)| id).or_else(|| params.get("client_id").cloned());
                    self.grant(&mut state, &params, now, jkt.as_deref(), client.as_deref())
                }
                Err(reply) => reply,
            },
            Err(error) => self.error_reply(error),
        };
        #[cfg(feature = "dpop")]
        let nonce = state.dpop.nonce.clone();
        #[cfg(not(feature = "dpop"))]
        let nonce = None;
        (reply, lost, nonce)
    }

    /// Decides a grant; `jkt` is the DPoP key the request proved, to bind the tokens to, and
    /// `client` the client id it named.
    fn grant(
        &self,
        state: &mut State,
        params: &HashMap<String, String>,
        now: SystemTime,
        jkt: Option<&str>,
        client: Option<&str>,
    ) -> Reply {
        let supported = self.config.dialect.grant_types();
        match params.get("grant_type").map(String::as_str) {
            None => self.error_reply(OAuthError::invalid_request("grant_type is missing")),
            Some(grant_type) if !supported.contains(&grant_type) => {
                let description = format!("supported grant types: {}", supported.join(", "));
                self.error_reply(OAuthError::new(400, "unsupported_grant_type", description))
            }
            Some("refresh_token") => self.refresh_grant(state, params, now, jkt),
            Some("authorization_code") => self.code_grant(state, params, now, jkt, client),
            Some(_) => self.client_credentials_grant(state, params, now, jkt),
        }
    }

    fn client_credentials_grant(
        &self,
        state: &mut State,
        params: &HashMap<String, String>,
        now: SystemTime,
        jkt: Option<&str>,
    ) -> Reply {
        let scope = params.get("scope").cloned();
        if self.config.dialect == Dialect::WhoopPartner && scope.is_none() {
            return self.error_reply(OAuthError::invalid_request("scope is missing"));
        }
        let family = state.new_family(scope.clone());
        let minted = state.mint(&self.config, family, now, false, false, jkt);
        state.stats.tokens_issued += 1;
        self.tokens_reply(&minted, scope)
    }

    fn refresh_grant(
        &self,
        state: &mut State,
        params: &HashMap<String, String>,
        now: SystemTime,
        jkt: Option<&str>,
    ) -> Reply {
        let dialect = self.config.dialect;
        let Some(presented) = params.get("refresh_token") else {
            return self.error_reply(match dialect {
                // "Missing/Invalid Refresh Token": Kroger answers both alike.
                Dialect::Kroger => OAuthError::new(400, "invalid_grant", "refresh_token is missing"),
                _ => OAuthError::invalid_request("refresh_token is missing"),
            });
        };
        // WHOOP: "The offline scope allows your app the receive a refresh token".
        let offline =
            || params.get("scope").is_some_and(|scope| scope.split_ascii_whitespace().any(|s| s == "offline"));
        let rotate = self.config.rotate_refresh_tokens && (dialect != Dialect::Whoop || offline());
        match state.exchange(&self.config, presented, rotate, now, jkt) {
            Ok(minted) => {
                let granted = state.families.get(minted.family).and_then(|f| f.scope.clone());
                self.tokens_reply(&minted, params.get("scope").cloned().or(granted))
            }
            Err(refusal) => self.error_reply(refusal.into_error()),
        }
    }

    /// Issues a code for an approved authorization; the user approves at once.
    pub(super) fn authorize(&self, authorization: Authorization) -> String {
        let mut state = self.state.lock();
        state.serial += 1;
        let code = format!("code-{}-{}", self.config.token_prefix, state.serial);
        state.stats.authorizations += 1;
        let record = CodeRecord {
            client_id: authorization.client_id,
            redirect_uri: authorization.redirect_uri,
            code_challenge: authorization.code_challenge,
            scope: authorization.scope.or_else(|| self.config.dialect.granted_scope().map(str::to_owned)),
            issued_at: self.config.clock.now(),
            exchanged: None,
        };
        state.codes.insert(code.clone(), record);
        code
    }

    /// The authorization-code grant with PKCE (RFC 6749 §4.1.3, RFC 7636 §4.6): the code once,
    /// for the redirect URI it was issued to, with the verifier of its challenge, within its
    /// lifetime, by the client it was issued to when both name one.
    fn code_grant(
        &self,
        state: &mut State,
        params: &HashMap<String, String>,
        now: SystemTime,
        jkt: Option<&str>,
        client: Option<&str>,
    ) -> Reply {
        let refuse = |state: &mut State, description: &str| {
            state.stats.invalid_grants += 1;
            self.error_reply(OAuthError::new(400, "invalid_grant", description))
        };
        let Some(code) = params.get("code") else {
            return self.error_reply(OAuthError::invalid_request("code is missing"));
        };
        let Some(record) = state.codes.get_mut(code) else {
            return refuse(state, "The authorization code is unknown");
        };
        if let Some(family) = record.exchanged {
            // A code presented twice was intercepted, or the client raced itself: what it
            // granted goes too.
            state.revoke(family);
            return refuse(state, "The authorization code was already used");
        }
        let lifetime = self.config.dialect.code_lifetime();
        if record.issued_at.checked_add(lifetime).is_some_and(|end| now >= end) {
            return refuse(state, "The authorization code has expired");
        }
        if let (Some(issued_to), Some(client)) = (record.client_id.as_deref(), client)
            && issued_to != client
        {
            return refuse(state, "The authorization code was issued to another client");
        }
        if params.get("redirect_uri") != Some(&record.redirect_uri) {
            return refuse(state, "redirect_uri is not the one the code was issued to");
        }
        let verified = params.get("code_verifier").is_some_and(|verifier| {
            let challenge = BASE64_URL.encode(Sha256::digest(verifier.as_bytes()));
            challenge == record.code_challenge
        });
        if !verified {
            return refuse(state, "code_verifier does not match the code_challenge");
        }
        let scope = record.scope.clone();
        let family = state.new_family(scope.clone());
        if let Some(record) = state.codes.get_mut(code) {
            record.exchanged = Some(family);
        }
        let with_refresh = self.config.dialect != Dialect::Whoop
            || scope.as_deref().is_some_and(|s| s.split_ascii_whitespace().any(|s| s == "offline"));
        let minted = state.mint(&self.config, family, now, with_refresh, false, jkt);
        state.stats.tokens_issued += 1;
        self.tokens_reply(&minted, scope)
    }
}
