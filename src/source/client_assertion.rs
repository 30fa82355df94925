//! `private_key_jwt` client authentication (RFC 7523 §2.2, OpenID Connect Core §9): the signing
//! key ([`ClientAssertionKey`]), read from PEM, and the short-lived JWT it signs for each token
//! request in place of a client secret.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use p256::ecdsa::signature::{SignatureEncoding as _, Signer as _};
use p256::pkcs8::DecodePrivateKey as _;
use rsa::pkcs1::DecodeRsaPrivateKey as _;
use rsa::sha2::Sha256;
use rsa::traits::PublicKeyParts as _;
use serde_json::{Value, json};

use crate::error::RefreshError;
use crate::jws;

/// The `client_assertion_type` of a JWT client assertion (RFC 7523 §2.2).
pub const CLIENT_ASSERTION_TYPE: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";

/// How long a client assertion is valid, unless set otherwise: 60 seconds from its `iat` to its
/// `exp`. Each token request signs a new one, so it only has to outlive one request; a short life
/// limits what a captured assertion is worth.
pub const DEFAULT_CLIENT_ASSERTION_LIFETIME: Duration = Duration::from_secs(60);

/// The smallest RSA key accepted: 2048 bits, as RFC 7518 §3.3 requires for `RS256`.
const MIN_RSA_BITS: usize = 2048;

/// The JWS algorithm a [`ClientAssertionKey`] signs with (RFC 7518 §3.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum SigningAlgorithm {
    /// ECDSA on P-256 with SHA-256.
    Es256,
    /// RSASSA-PKCS1-v1_5 with SHA-256.
    Rs256,
}

impl SigningAlgorithm {
    /// The algorithm's JWS name, as in a JWT header's `alg`: `ES256`, `RS256`.
    pub fn as_str(self) -> &'static str {
        match self {
            SigningAlgorithm::Es256 => "ES256",
            SigningAlgorithm::Rs256 => "RS256",
        }
    }
}

impl fmt::Display for SigningAlgorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a PEM document could not be made into a [`ClientAssertionKey`]. No message quotes the key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ClientKeyError {
    /// The text is not a PEM document (no `-----BEGIN ...-----` line, or bad base64 inside).
    #[error("the key is not a PEM document: {0}")]
    NotPem(String),
    /// A PEM document of a kind this crate does not sign with: another curve than P-256, an RSA
    /// key shorter than 2048 bits, an encrypted key, a certificate or public key.
    #[error("unsupported key: {0}")]
    Unsupported(String),
    /// The document has a supported label but its contents do not parse as that kind of key.
    #[error("the {label} document does not hold a valid key: {reason}")]
    Malformed {
        /// The PEM label, such as `PRIVATE KEY`.
        label: String,
        /// What the parser said.
        reason: String,
    },
}

/// The private key a client signs its assertions with, for [`ClientAuth::PrivateKeyJwt`]
/// (feature `private-key-jwt`).
///
/// ES256 (P-256) and RS256 (RSA, 2048 bits or more) keys are read from PEM: PKCS#8
/// (`BEGIN PRIVATE KEY`), SEC1 (`BEGIN EC PRIVATE KEY`) or PKCS#1 (`BEGIN RSA PRIVATE KEY`).
/// The provider needs the public half: [`public_jwk`](Self::public_jwk) gives it as a JWK to
/// register (or to publish in the client's JWKS). Cloning shares the key; its `Debug` shows the
/// algorithm and key id, never the key.
///
/// ```
/// use reqwest_token_refresh::{ClientAssertionKey, ClientAuth, ClientCredentials, SigningAlgorithm};
///
/// # let pem = include_str!("../../tests/keys/es256.pem");
/// // let pem = std::fs::read_to_string("client-key.pem")?;
/// let key = ClientAssertionKey::from_pem(pem)?.with_key_id("2026-01");
/// assert_eq!(key.algorithm(), SigningAlgorithm::Es256);
/// assert_eq!(key.public_jwk()["kty"], "EC");
/// assert!(!format!("{key:?}").contains("PRIVATE"));
///
/// let grant = ClientCredentials::new("https://idp.example/oauth2/token")
///     .client_id("my-service")
///     .client_auth(ClientAuth::PrivateKeyJwt(key));
/// # Ok::<(), reqwest_token_refresh::ClientKeyError>(())
/// ```
///
/// [`ClientAuth::PrivateKeyJwt`]: crate::ClientAuth::PrivateKeyJwt
#[derive(Clone)]
pub struct ClientAssertionKey {
    key: Arc<Key>,
    key_id: Option<String>,
    lifetime: Duration,
}

enum Key {
    Es256(p256::ecdsa::SigningKey),
    Rs256(rsa::pkcs1v15::SigningKey<Sha256>),
}

impl fmt::Debug for ClientAssertionKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientAssertionKey")
            .field("algorithm", &self.algorithm())
            .field("key_id", &self.key_id)
            .field("lifetime", &self.lifetime)
            .field("key", &"[redacted]")
            .finish()
    }
}

/// Two keys are equal when they sign the same way: the same algorithm, public key, key id and
/// assertion lifetime (a private key is determined by nothing less than its public key).
impl PartialEq for ClientAssertionKey {
    fn eq(&self, other: &Self) -> bool {
        self.key_id == other.key_id && self.lifetime == other.lifetime && self.public_jwk() == other.public_jwk()
    }
}

impl Eq for ClientAssertionKey {}

impl ClientAssertionKey {
    /// Reads a P-256 or RSA private key from PEM: PKCS#8, SEC1 or PKCS#1.
    ///
    /// # Errors
    ///
    /// [`ClientKeyError::NotPem`] for text that is not PEM, [`ClientKeyError::Unsupported`] for a
    /// key this crate cannot sign with (another curve, RSA under 2048 bits, an encrypted key),
    /// [`ClientKeyError::Malformed`] for a document whose contents do not parse.
    pub fn from_pem(pem: &str) -> Result<Self, ClientKeyError> {
        let label = pem_label(pem)?;
        let malformed = |reason: String| ClientKeyError::Malformed { label: label.to_owned(), reason };
        let key = match label {
            "PRIVATE KEY" => match p256::ecdsa::SigningKey::from_pkcs8_pem(pem) {
                Ok(key) => Key::Es256(key),
                Err(ec) => match rsa::PrivateKey::from_pkcs8_pem(pem) {
                    Ok(key) => rsa_key(key)?,
                    Err(rsa) => return Err(unrecognised_pkcs8(pem, &ec.to_string(), &rsa.to_string())),
                },
            },
            "EC PRIVATE KEY" => {
                let secret = p256::SecretKey::from_sec1_pem(pem).map_err(|e| {
                    malformed(format!("not a P-256 key ({e}); only P-256 (ES256) EC keys are supported"))
                })?;
                Key::Es256(secret.into())
            }
            "RSA PRIVATE KEY" => rsa_key(rsa::PrivateKey::from_pkcs1_pem(pem).map_err(|e| malformed(e.to_string()))?)?,
            "ENCRYPTED PRIVATE KEY" => {
                return Err(ClientKeyError::Unsupported(
                    "an encrypted private key: decrypt it first (openssl pkcs8 -topk8 -nocrypt)".into(),
                ));
            }
            other => {
                return Err(ClientKeyError::Unsupported(format!(
                    "a {other:?} PEM document; expected PRIVATE KEY, EC PRIVATE KEY or RSA PRIVATE KEY"
                )));
            }
        };
        Ok(Self { key: Arc::new(key), key_id: None, lifetime: DEFAULT_CLIENT_ASSERTION_LIFETIME })
    }

    /// Names the key in each assertion's header (`kid`), so that a provider holding several of
    /// the client's keys knows which one to check the signature with.
    #[must_use = "returns the changed key; on its own the call changes nothing"]
    pub fn with_key_id(mut self, key_id: impl Into<String>) -> Self {
        self.key_id = Some(key_id.into());
        self
    }

    /// Sets how long each assertion is valid, from its `iat` to its `exp`; whole seconds, rounded
    /// down, at least one. Default: 60 seconds
    /// ([`DEFAULT_CLIENT_ASSERTION_LIFETIME`](crate::DEFAULT_CLIENT_ASSERTION_LIFETIME)).
    #[must_use = "returns the changed key; on its own the call changes nothing"]
    pub fn with_lifetime(mut self, lifetime: Duration) -> Self {
        self.lifetime = Duration::from_secs(lifetime.as_secs().max(1));
        self
    }

    /// The algorithm the key signs with.
    pub fn algorithm(&self) -> SigningAlgorithm {
        match *self.key {
            Key::Es256(_) => SigningAlgorithm::Es256,
            Key::Rs256(_) => SigningAlgorithm::Rs256,
        }
    }

    /// The key id set with [`with_key_id`](Self::with_key_id).
    pub fn key_id(&self) -> Option<&str> {
        self.key_id.as_deref()
    }

    /// The public half as a JSON Web Key (RFC 7517, RFC 7518 §6): `kty`, `crv`, `x`, `y` for
    /// ES256, `kty`, `n`, `e` for RS256, with `use` `sig`, `alg` and the `kid` if set. This is
    /// what to register with the provider.
    pub fn public_jwk(&self) -> Value {
        let mut jwk = match &*self.key {
            Key::Es256(key) => jws::es256_public_jwk(key.verifying_key()),
            Key::Rs256(key) => {
                let public = rsa::PrivateKey::as_ref(key.as_ref());
                let n = public.n().to_be_bytes_trimmed_vartime();
                let e = public.e().to_be_bytes_trimmed_vartime();
                json!({"kty": "RSA", "n": URL_SAFE_NO_PAD.encode(n), "e": URL_SAFE_NO_PAD.encode(e)})
            }
        };
        jwk["use"] = "sig".into();
        jwk["alg"] = self.algorithm().as_str().into();
        if let Some(kid) = &self.key_id {
            jwk["kid"] = kid.as_str().into();
        }
        jwk
    }

    /// A signed client assertion for one token request: `iss` and `sub` the client id, `aud`
    /// the token endpoint, a random `jti`, `iat` now and `exp` one lifetime later.
    pub(crate) fn assertion(&self, client_id: &str, audience: &str, now: SystemTime) -> Result<String, RefreshError> {
        let jti = jws::random_id().map_err(RefreshError::other)?;
        let iat = now.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default().as_secs();
        let claims = json!({
            "iss": client_id,
            "sub": client_id,
            "aud": audience,
            "jti": jti,
            "iat": iat,
            "exp": iat.saturating_add(self.lifetime.as_secs()),
        });
        Ok(self.sign_jwt(&claims))
    }

    /// The signed JWT (RFC 7515 §7.1's compact form).
    fn sign_jwt(&self, claims: &Value) -> String {
        let mut header = json!({"alg": self.algorithm().as_str(), "typ": "JWT"});
        if let Some(kid) = &self.key_id {
            header["kid"] = kid.as_str().into();
        }
        let Ok(jwt) = jws::compact(&header, claims, |input| match &*self.key {
            Key::Es256(key) => jws::es256_sign(key, input),
            Key::Rs256(key) => Ok(key.sign(input).to_vec()),
        });
        jwt
    }
}

/// The label of the first `-----BEGIN <label>-----` line.
fn pem_label(pem: &str) -> Result<&str, ClientKeyError> {
    pem.lines()
        .find_map(|line| line.trim().strip_prefix("-----BEGIN ")?.strip_suffix("-----"))
        .ok_or_else(|| ClientKeyError::NotPem("no -----BEGIN ...----- line".into()))
}

fn rsa_key(key: rsa::PrivateKey) -> Result<Key, ClientKeyError> {
    let bits = key.size() * 8;
    if bits < MIN_RSA_BITS {
        return Err(ClientKeyError::Unsupported(format!(
            "a {bits}-bit RSA key; RS256 needs at least {MIN_RSA_BITS} bits (RFC 7518 §3.3)"
        )));
    }
    Ok(Key::Rs256(rsa::pkcs1v15::SigningKey::new(key)))
}

/// Why a PKCS#8 document is neither key: the algorithm it names, when its structure reads.
fn unrecognised_pkcs8(pem: &str, ec: &str, rsa: &str) -> ClientKeyError {
    use p256::pkcs8::der::Decode as _;
    let Ok((_, document)) = p256::pkcs8::SecretDocument::from_pem(pem) else {
        return ClientKeyError::NotPem("the base64 inside does not decode".into());
    };
    match p256::pkcs8::PrivateKeyInfoRef::from_der(document.as_bytes()) {
        Ok(info) => {
            let curve = info.algorithm.parameters_oid().map(|oid| format!(", parameters {oid}")).unwrap_or_default();
            ClientKeyError::Unsupported(format!(
                "a PKCS#8 key of algorithm {}{curve}; only P-256 (ES256) and RSA (RS256) are supported",
                info.algorithm.oid
            ))
        }
        Err(_) => ClientKeyError::Malformed {
            label: "PRIVATE KEY".into(),
            reason: format!("neither a P-256 key ({ec}) nor an RSA key ({rsa})"),
        },
    }
}

#[cfg(test)]
mod tests {
    use p256::ecdsa::signature::Verifier as _;

    use super::*;

    const ES256: &str = include_str!("../../tests/keys/es256.pem");
    const ES256_SEC1: &str = include_str!("../../tests/keys/es256-sec1.pem");
    const RS256: &str = include_str!("../../tests/keys/rs256.pem");
    const RS256_PKCS1: &str = include_str!("../../tests/keys/rs256-pkcs1.pem");
    const P384: &str = include_str!("../../tests/keys/p384.pem");
    const RSA_1024: &str = include_str!("../../tests/keys/rsa1024.pem");

    fn decode(part: &str) -> Vec<u8> {
        URL_SAFE_NO_PAD.decode(part).unwrap()
    }

    #[test]
    fn the_default_lifetime_is_what_its_docs_say() {
        assert_eq!(DEFAULT_CLIENT_ASSERTION_LIFETIME, Duration::from_secs(60));
    }

    #[test]
    fn every_pem_form_is_read_and_the_same_key_reads_the_same_from_each() {
        let es = ClientAssertionKey::from_pem(ES256).unwrap();
        let es_sec1 = ClientAssertionKey::from_pem(ES256_SEC1).unwrap();
        assert_eq!(es.algorithm(), SigningAlgorithm::Es256);
        assert_eq!(es, es_sec1, "PKCS#8 and SEC1 of one key");
        let rs = ClientAssertionKey::from_pem(RS256).unwrap();
        let rs_pkcs1 = ClientAssertionKey::from_pem(RS256_PKCS1).unwrap();
        assert_eq!(rs.algorithm(), SigningAlgorithm::Rs256);
        assert_eq!(rs, rs_pkcs1, "PKCS#8 and PKCS#1 of one key");
        assert_ne!(es, rs);
        assert_ne!(es.clone(), es.with_key_id("k"));
    }

    #[test]
    fn keys_it_cannot_sign_with_are_refused_with_the_reason() {
        let p384 = ClientAssertionKey::from_pem(P384).unwrap_err();
        assert!(matches!(&p384, ClientKeyError::Unsupported(reason) if reason.contains("1.3.132.0.34")), "{p384}");
        let small = ClientAssertionKey::from_pem(RSA_1024).unwrap_err();
        assert!(matches!(&small, ClientKeyError::Unsupported(reason) if reason.contains("1024-bit")), "{small}");
        let encrypted = "-----BEGIN ENCRYPTED PRIVATE KEY-----\nMIIB\n-----END ENCRYPTED PRIVATE KEY-----\n";
        assert!(matches!(ClientAssertionKey::from_pem(encrypted), Err(ClientKeyError::Unsupported(_))));
        let certificate = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n";
        assert!(matches!(ClientAssertionKey::from_pem(certificate), Err(ClientKeyError::Unsupported(_))));
        assert!(matches!(ClientAssertionKey::from_pem("not a key"), Err(ClientKeyError::NotPem(_))));
        let garbled = "-----BEGIN EC PRIVATE KEY-----\nAAAA\n-----END EC PRIVATE KEY-----\n";
        assert!(matches!(ClientAssertionKey::from_pem(garbled), Err(ClientKeyError::Malformed { .. })));
    }

    #[test]
    fn an_error_never_quotes_the_key() {
        // A PKCS#1 body under a SEC1 label: malformed, and the message must not echo the base64.
        let mislabelled = RS256_PKCS1.replace("RSA PRIVATE KEY", "EC PRIVATE KEY");
        let err = ClientAssertionKey::from_pem(&mislabelled).unwrap_err();
        let body_line = RS256_PKCS1.lines().nth(1).unwrap();
        assert!(!err.to_string().contains(body_line) && !format!("{err:?}").contains(body_line), "{err}");
    }

    #[test]
    fn debug_shows_the_algorithm_and_key_id_and_nothing_of_the_key() {
        for pem in [ES256, RS256] {
            let key = ClientAssertionKey::from_pem(pem).unwrap().with_key_id("kid-1");
            let shown = format!("{key:?} {key:#?}");
            assert!(shown.contains("kid-1") && shown.contains("[redacted]"), "{shown}");
            for line in pem.lines().filter(|line| !line.starts_with("-----")) {
                assert!(!shown.contains(line), "{shown}");
            }
        }
    }

    #[test]
    fn an_es256_assertion_has_the_claims_and_verifies_with_the_public_key() {
        let key = ClientAssertionKey::from_pem(ES256).unwrap().with_key_id("k1");
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let jwt = key.assertion("client-7", "https://idp.example/token", now).unwrap();
        let parts: Vec<&str> = jwt.split('.').collect();
        assert_eq!(parts.len(), 3);
        let header: Value = serde_json::from_slice(&decode(parts[0])).unwrap();
        assert_eq!(header, json!({"alg": "ES256", "typ": "JWT", "kid": "k1"}));
        let claims: Value = serde_json::from_slice(&decode(parts[1])).unwrap();
        assert_eq!(claims["iss"], "client-7");
        assert_eq!(claims["sub"], "client-7");
        assert_eq!(claims["aud"], "https://idp.example/token");
        assert_eq!(claims["iat"], 1_700_000_000);
        assert_eq!(claims["exp"], 1_700_000_060);
        assert_eq!(claims["jti"].as_str().unwrap().len(), 22);

        let Key::Es256(signing) = &*key.key else { unreachable!() };
        let signature = p256::ecdsa::Signature::from_slice(&decode(parts[2])).unwrap();
        let input = format!("{}.{}", parts[0], parts[1]);
        signing.verifying_key().verify(input.as_bytes(), &signature).unwrap();
        assert!(signing.verifying_key().verify(b"something else", &signature).is_err());
    }

    #[test]
    fn an_rs256_assertion_verifies_with_the_public_key() {
        let key = ClientAssertionKey::from_pem(RS256_PKCS1).unwrap();
        let jwt = key.assertion("c", "https://idp.example/token", SystemTime::now()).unwrap();
        let (input, signature) = jwt.rsplit_once('.').unwrap();
        let Key::Rs256(signing) = &*key.key else { unreachable!() };
        let public = rsa::PrivateKey::as_ref(signing.as_ref()).clone();
        let verifying = rsa::pkcs1v15::VerifyingKey::<Sha256>::new(public);
        let signature = rsa::pkcs1v15::Signature::try_from(decode(signature).as_slice()).unwrap();
        verifying.verify(input.as_bytes(), &signature).unwrap();
        let header: Value = serde_json::from_slice(&decode(input.split('.').next().unwrap())).unwrap();
        assert_eq!(header, json!({"alg": "RS256", "typ": "JWT"}));
    }

    #[test]
    fn every_assertion_has_its_own_jti() {
        let key = ClientAssertionKey::from_pem(ES256).unwrap();
        let jti = |jwt: String| {
            let claims: Value = serde_json::from_slice(&decode(jwt.split('.').nth(1).unwrap())).unwrap();
            claims["jti"].as_str().unwrap().to_owned()
        };
        let now = SystemTime::now();
        let (a, b) = (key.assertion("c", "a", now).unwrap(), key.assertion("c", "a", now).unwrap());
        assert_ne!(jti(a), jti(b));
    }

    #[test]
    fn the_public_jwk_has_the_standard_members() {
        let es = ClientAssertionKey::from_pem(ES256).unwrap().with_key_id("k");
        let jwk = es.public_jwk();
        assert_eq!(
            (jwk["kty"].as_str(), jwk["crv"].as_str(), jwk["alg"].as_str()),
            (Some("EC"), Some("P-256"), Some("ES256"))
        );
        assert_eq!(jwk["x"].as_str().unwrap().len(), 43, "32 bytes");
        assert_eq!(jwk["y"].as_str().unwrap().len(), 43);
        assert!(jwk.get("d").is_none(), "no private member");
        let rs = ClientAssertionKey::from_pem(RS256).unwrap().public_jwk();
        assert_eq!(rs["e"], "AQAB", "65537");
        assert_eq!(decode(rs["n"].as_str().unwrap()).len(), 256, "2048 bits");
        assert!(rs.get("d").is_none() && rs.get("p").is_none());
    }

    #[test]
    fn a_lifetime_is_whole_seconds_and_never_zero() {
        let key = ClientAssertionKey::from_pem(ES256).unwrap();
        assert_eq!(key.clone().with_lifetime(Duration::from_millis(1_500)).lifetime, Duration::from_secs(1));
        assert_eq!(key.with_lifetime(Duration::ZERO).lifetime, Duration::from_secs(1));
    }
}
