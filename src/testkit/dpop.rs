//! The mock's side of DPoP (RFC 9449; features `testkit` and `dpop`): the checks of §4.3 on
//! every proof the token endpoint and the API receive (one `DPoP` header, `typ`, `alg`, the
//! embedded public `jwk` and the signature by it, `htm` and `htu` against the request, `iat`
//! within a window, `ath` against the access token presented, a `jti` never seen before, the
//! server's nonce where it demands one), the nonces it issues and rotates (§8, §9), the binding
//! of tokens to the key's thumbprint (`cnf.jkt`, §6), and the API's DPoP answers (§7).
//!
//! What needs no state is checked before the lock ([`Shared::check_proof`]); the `jti` and the
//! nonce under it ([`State::spend_proof`](super::grants::State)).

use std::collections::HashSet;
use std::time::{Duration, SystemTime};

use http::{StatusCode, header};
use serde_json::json;
use wiremock::{Request, ResponseTemplate};

#[cfg(doc)]
use super::MockProviderBuilder;
use super::Shared;
use super::grants::State;
use super::wire::{OAuthError, Reply};
use crate::dpop::{DPOP_NONCE, PROOF_TYPE, ath, ec_thumbprint, htu};
use crate::jws;

/// How far ahead of the provider's clock a proof's `iat` may be: 60 seconds of clock skew.
pub(super) const PROOF_MAX_AHEAD: Duration = Duration::from_secs(60);
/// How old a proof may be by its `iat`: 5 minutes. Proofs are made for one request, just
/// before it; an old one is a replay whose `jti` a server may have forgotten (RFC 9449 §11.1).
pub(super) const PROOF_MAX_AGE: Duration = Duration::from_secs(5 * 60);

/// Where the mock demands a nonce; see [`MockProviderBuilder::dpop`].
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct DpopConfig {
    pub(super) nonce_at_token_endpoint: bool,
    pub(super) nonce_at_api: bool,
}

/// What the mock remembers of DPoP: every `jti` it saw, and its current nonce.
#[derive(Default)]
pub(super) struct DpopState {
    jtis: HashSet<String>,
    /// The nonce proofs must carry where one is demanded; made at the first demand.
    pub(super) nonce: Option<String>,
    serial: u64,
}

/// A proof that passed every check that needs no state.
pub(super) struct Proof {
    /// The thumbprint of its key: what tokens issued to it are bound to.
    pub(super) jkt: String,
    jti: String,
    nonce: Option<String>,
}

/// Why a proof was refused under the lock.
pub(super) enum Refused {
    /// Not a valid proof: `invalid_dpop_proof`, saying why.
    Invalid(&'static str),
    /// No nonce, or not the current one: `use_dpop_nonce`.
    UseNonce,
}

impl DpopState {
    /// Makes a new nonce the current one.
    pub(super) fn rotate(&mut self, prefix: &str, stats: &mut super::ProviderStats) -> String {
        self.serial += 1;
        let nonce = format!("nonce-{prefix}-{}", self.serial);
        self.nonce = Some(nonce.clone());
        stats.dpop_nonces_issued += 1;
        nonce
    }
}

impl State {
    /// Spends a proof's `jti` (a replay is refused, RFC 9449 §11.1) and, if `nonce_required`,
    /// checks its nonce is the current one, making the first nonce if there is none yet.
    pub(super) fn spend_proof(&mut self, proof: &Proof, nonce_required: bool, prefix: &str) -> Result<(), Refused> {
        if !self.dpop.jtis.insert(proof.jti.clone()) {
            self.stats.dpop_replays += 1;
            self.stats.dpop_proofs_rejected += 1;
            return Err(Refused::Invalid("the DPoP proof's jti was already used"));
        }
        self.stats.dpop_jtis += 1;
        if nonce_required {
            let current = match &self.dpop.nonce {
                Some(nonce) => nonce.clone(),
                None => self.dpop.rotate(prefix, &mut self.stats),
            };
            if proof.nonce.as_deref() != Some(current.as_str()) {
                self.stats.dpop_nonce_demands += 1;
                return Err(Refused::UseNonce);
            }
        }
        Ok(())
    }
}

impl Shared {
    /// Checks the request's `DPoP` proof, all but its `jti`'s novelty and its nonce: `Ok(None)`
    /// when it has none. `access_token` is the token the request presents to the API (its `ath`
    /// must match), `None` at the token endpoint (where an `ath` is refused).
    pub(super) fn check_proof(&self, request: &Request, access_token: Option<&str>) -> Result<Option<Proof>, String> {
        let mut values = request.headers.get_all("dpop").iter();
        let Some(value) = values.next() else { return Ok(None) };
        let checked = self.check_one_proof(request, value, values.next().is_some(), access_token);
        let mut state = self.state.lock();
        state.stats.dpop_proofs_checked += 1;
        if checked.is_err() {
            state.stats.dpop_proofs_rejected += 1;
        }
        checked.map(Some)
    }

    fn check_one_proof(
        &self,
        request: &Request,
        value: &http::HeaderValue,
        repeated: bool,
        access_token: Option<&str>,
    ) -> Result<Proof, String> {
        if repeated {
            return Err("more than one DPoP header".into());
        }
        let text = value.to_str().map_err(|_| "the DPoP header is not visible ASCII".to_owned())?;
        let parsed = jws::parse(text.trim()).map_err(str::to_owned)?;
        if parsed.header["typ"].as_str() != Some(PROOF_TYPE) {
            return Err(format!("the proof's typ must be {PROOF_TYPE}"));
        }
        if parsed.header["alg"].as_str() != Some("ES256") {
            return Err("the proof's alg must be ES256, the one this server supports".into());
        }
        let jwk = &parsed.header["jwk"];
        if jwk.get("d").is_some() {
            return Err("the proof's jwk holds a private key".into());
        }
        let key = jws::es256_key_from_jwk(jwk).map_err(|why| format!("the proof's jwk: {why}"))?;
        if !jws::es256_verifies(&key, parsed.signing_input.as_bytes(), &parsed.signature) {
            return Err("the proof's signature does not verify with its jwk".into());
        }
        let claims = &parsed.claims;
        if claims["htm"].as_str() != Some(request.method.as_str()) {
            return Err(format!("the proof's htm is not {}", request.method));
        }
        let target = self.target_of(request);
        let htu_ok = claims["htu"]
            .as_str()
            .and_then(|claimed| url::Url::parse(claimed).ok())
            .is_some_and(|claimed| htu(&claimed) == target);
        if !htu_ok {
            return Err(format!("the proof's htu is not {target}"));
        }
        let now = self.config.clock.now();
        let iat = claims["iat"].as_u64().ok_or("the proof has no numeric iat")?;
        let iat =
            SystemTime::UNIX_EPOCH.checked_add(Duration::from_secs(iat)).ok_or("the proof's iat is out of range")?;
        if iat.duration_since(now).is_ok_and(|ahead| ahead > PROOF_MAX_AHEAD) {
            return Err("the proof's iat is in the future".into());
        }
        if now.duration_since(iat).is_ok_and(|age| age > PROOF_MAX_AGE) {
            return Err("the proof is too old".into());
        }
        match (access_token, claims["ath"].as_str()) {
            (Some(token), Some(claimed)) if claimed == ath(token) => {}
            (Some(_), Some(_)) => return Err("the proof's ath is not the hash of the access token".into()),
            (Some(_), None) => return Err("the proof has no ath for the access token".into()),
            (None, Some(_)) => return Err("a token request's proof has no ath".into()),
            (None, None) => {}
        }
        let jti = match claims["jti"].as_str() {
            Some(jti) if !jti.is_empty() => jti.to_owned(),
            _ => return Err("the proof has no jti".into()),
        };
        let nonce = claims["nonce"].as_str().map(str::to_owned);
        Ok(Proof { jkt: ec_thumbprint(jwk), jti, nonce })
    }

    /// The URL the client sent `request` to, without query and fragment, as its `htu` must be:
    /// the host it named (`Host`), else the server's own address, and the path. (wiremock's
    /// `Request::url` has a placeholder host.)
    fn target_of(&self, request: &Request) -> String {
        let host = request.headers.get(header::HOST).and_then(|host| host.to_str().ok());
        let base = match host {
            Some(host) => format!("http://{host}"),
            None => self.config.issuer.clone(),
        };
        match url::Url::parse(&base).and_then(|base| base.join(request.url.path())) {
            Ok(url) => htu(&url),
            Err(_) => htu(&request.url),
        }
    }

    /// The key a token request proves, checked and spent under the lock: `Ok(Some(jkt))` for
    /// tokens to bind to it, `Ok(None)` when the mock does no DPoP, a reply for a refusal.
    pub(super) fn token_request_binding(
        &self,
        state: &mut State,
        checked: Option<Result<Option<Proof>, String>>,
    ) -> Result<Option<String>, Reply> {
        let Some(dpop) = self.config.dpop else { return Ok(None) };
        let invalid = |description: String| self.error_reply(OAuthError::new(400, "invalid_dpop_proof", description));
        let proof = match checked {
            None | Some(Ok(None)) => return Err(invalid("a DPoP proof is required".into())),
            Some(Err(why)) => return Err(invalid(why)),
            Some(Ok(Some(proof))) => proof,
        };
        match state.spend_proof(&proof, dpop.nonce_at_token_endpoint, &self.config.token_prefix) {
            Ok(()) => Ok(Some(proof.jkt)),
            Err(Refused::Invalid(why)) => Err(invalid(why.into())),
            Err(Refused::UseNonce) => Err(self.error_reply(OAuthError::new(
                400,
                "use_dpop_nonce",
                "Authorization server requires nonce in DPoP proof",
            ))),
        }
    }

    /// The API's answer to a request in DPoP mode: `None` for a plain bearer request with an
    /// unbound token, which the usual path answers.
    pub(super) fn dpop_api_answer(&self, request: &Request) -> Option<ResponseTemplate> {
        let dpop = self.config.dpop?;
        let (scheme, token) = request
            .headers
            .get(header::AUTHORIZATION)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.split_once(' '))
            .map(|(scheme, token)| (scheme.to_ascii_lowercase(), token.trim().to_owned()))?;
        let now = self.config.clock.now();
        if scheme == "bearer" {
            let mut state = self.state.lock();
            let bound = state.access.get(&token).is_some_and(|record| record.jkt.is_some());
            if !bound {
                return None;
            }
            // RFC 9449 §7.2: a bound token is not a bearer token.
            state.stats.api_calls += 1;
            state.stats.api_unauthorized += 1;
            let nonce = state.dpop.nonce.clone();
            return Some(dpop_challenge(
                "invalid_token",
                "The access token is DPoP-bound: send it with a DPoP proof",
                nonce,
            ));
        }
        if scheme != "dpop" {
            return None;
        }
        let checked = self.check_proof(request, Some(&token));
        let mut state = self.state.lock();
        state.stats.api_calls += 1;
        let verdict = match checked {
            Ok(None) => Err(("invalid_dpop_proof", "A DPoP proof is required".to_owned())),
            Err(why) => Err(("invalid_dpop_proof", why)),
            Ok(Some(proof)) => match state.spend_proof(&proof, dpop.nonce_at_api, &self.config.token_prefix) {
                Err(Refused::Invalid(why)) => Err(("invalid_dpop_proof", why.to_owned())),
                Err(Refused::UseNonce) => {
                    Err(("use_dpop_nonce", "Resource server requires nonce in DPoP proof".to_owned()))
                }
                Ok(()) => match state.access.get(&token).map(|record| record.jkt.clone()) {
                    Some(Some(jkt)) if jkt == proof.jkt => {
                        state.admit(&token, now).map_err(|why| ("invalid_token", why.to_owned()))
                    }
                    Some(Some(_)) => Err(("invalid_token", "The access token is bound to another DPoP key".to_owned())),
                    Some(None) => Err(("invalid_token", "The access token is not DPoP-bound".to_owned())),
                    None => Err(("invalid_token", "The access token is unknown".to_owned())),
                },
            },
        };
        match &verdict {
            Ok(()) => state.stats.api_ok += 1,
            Err(_) => state.stats.api_unauthorized += 1,
        }
        let nonce = state.dpop.nonce.clone();
        drop(state);
        Some(match verdict {
            Ok(()) => with_nonce(ResponseTemplate::new(200).set_body_json(json!({"ok": true})), nonce),
            Err((code, description)) => dpop_challenge(code, &description, nonce),
        })
    }
}

/// A 401 with `WWW-Authenticate: DPoP error=..., error_description=...` (RFC 9449 §7.1), the
/// nonce, and the same in a JSON body.
fn dpop_challenge(code: &str, description: &str, nonce: Option<String>) -> ResponseTemplate {
    // The descriptions are the mock's own texts, without quotes or backslashes.
    let challenge = format!("DPoP algs=\"ES256\", error=\"{code}\", error_description=\"{description}\"");
    let template = ResponseTemplate::new(StatusCode::UNAUTHORIZED)
        .insert_header(header::WWW_AUTHENTICATE, challenge.as_str())
        .set_body_json(json!({"error": code, "error_description": description}));
    with_nonce(template, nonce)
}

/// Adds `DPoP-Nonce` when the mock has a nonce.
pub(super) fn with_nonce(template: ResponseTemplate, nonce: Option<String>) -> ResponseTemplate {
    match nonce {
        Some(nonce) => template.insert_header(DPOP_NONCE, nonce.as_str()),
        None => template,
    }
}
