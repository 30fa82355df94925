//! [`DpopKey`]: the ES256 key a client proves possession of (RFC 9449 §4), its public JWK and
//! RFC 7638 thumbprint, and its form in a store: a private JWK (RFC 7518 §6.2.2) whose private
//! member is a secret newtype.

use std::fmt;
use std::sync::Arc;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use p256::elliptic_curve::Generate as _;
use p256::pkcs8::DecodePrivateKey as _;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::Value;
use sha2::{Digest as _, Sha256};

use super::DpopError;
use crate::jws;

/// The JWS algorithm of every DPoP proof this crate signs: ECDSA on P-256 with SHA-256.
pub(crate) const DPOP_ALGORITHM: &str = "ES256";

/// Why a [`DpopKey`] could not be made. No message quotes the key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DpopKeyError {
    /// The PEM document is not a PKCS#8 P-256 private key (`-----BEGIN PRIVATE KEY-----`).
    #[error("not a PKCS#8 P-256 private key: {0}")]
    Pem(String),
    /// The system's random number generator failed, so no key could be generated.
    #[error("no random bytes for a DPoP key: {0}")]
    Random(String),
    /// The signer refused the key (a P-256 key it cannot use).
    #[error("the key cannot sign proofs: {0}")]
    Unusable(String),
}

/// The private key a client proves possession of with DPoP (RFC 9449; feature `dpop`): ES256,
/// on P-256.
///
/// Tokens issued to a DPoP request are bound to this key (the server records its thumbprint,
/// [`thumbprint`](Self::thumbprint), as `cnf.jkt`): each request that uses them must carry a
/// proof signed with it, and so must each refresh of a bound refresh token. That is why the key
/// travels with the tokens: [`TokenSet::dpop_key`](crate::TokenSet::dpop_key), saved with them by
/// every store. Cloning shares the key; its `Debug` shows the thumbprint, never the key.
///
/// ```
/// use reqwest_token_refresh::DpopKey;
///
/// let key = DpopKey::generate()?;
/// assert_eq!(key.public_jwk()["kty"], "EC");
/// assert!(key.public_jwk().get("d").is_none(), "the public half only");
/// assert_eq!(key.thumbprint().len(), 43);
/// assert!(format!("{key:?}").contains("[redacted]"));
/// # Ok::<(), reqwest_token_refresh::DpopKeyError>(())
/// ```
#[derive(Clone)]
pub struct DpopKey {
    inner: Arc<Inner>,
}

struct Inner {
    signing: p256::ecdsa::SigningKey,
    /// The same key, for ring's signer: what signs each proof. ring's P-256 signing is about ten
    /// times faster than p256's (`benches/happy_path.rs`), and a DPoP client signs a proof for
    /// every request.
    signer: ring::signature::EcdsaKeyPair,
    /// `{"kty","crv","x","y"}`, made once: every proof's header carries it.
    public_jwk: Value,
    /// The RFC 7638 thumbprint of `public_jwk`.
    thumbprint: String,
}

impl DpopKey {
    /// A new random key, from the system's random number generator.
    ///
    /// # Errors
    ///
    /// [`DpopKeyError::Random`] if the system's random number generator fails.
    pub fn generate() -> Result<Self, DpopKeyError> {
        let signing = p256::ecdsa::SigningKey::try_generate().map_err(|e| DpopKeyError::Random(e.to_string()))?;
        Self::from_signing_key(signing)
    }

    /// Reads a P-256 private key from a PKCS#8 PEM document (`-----BEGIN PRIVATE KEY-----`, as
    /// `openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256` writes it).
    ///
    /// # Errors
    ///
    /// [`DpopKeyError::Pem`] for anything else: not PEM, another curve or algorithm, an
    /// encrypted key.
    pub fn from_pkcs8_pem(pem: &str) -> Result<Self, DpopKeyError> {
        let signing = p256::ecdsa::SigningKey::from_pkcs8_pem(pem).map_err(|e| DpopKeyError::Pem(e.to_string()))?;
        Self::from_signing_key(signing)
    }

    fn from_signing_key(signing: p256::ecdsa::SigningKey) -> Result<Self, DpopKeyError> {
        let public_jwk = jws::es256_public_jwk(signing.verifying_key());
        let thumbprint = ec_thumbprint(&public_jwk);
        let public = signing.verifying_key().to_sec1_point(false);
        let signer = ring::signature::EcdsaKeyPair::from_private_key_and_public_key(
            &ring::signature::ECDSA_P256_SHA256_FIXED_SIGNING,
            &signing.to_bytes(),
            public.as_bytes(),
            &ring::rand::SystemRandom::new(),
        )
        .map_err(|e| DpopKeyError::Unusable(e.to_string()))?;
        Ok(Self { inner: Arc::new(Inner { signing, signer, public_jwk, thumbprint }) })
    }

    /// An ES256 signature of `input` in JWS's fixed-size `r || s` form, by ring's signer with a
    /// nonce from the system's random number generator.
    pub(crate) fn sign(&self, input: &[u8]) -> Result<Vec<u8>, DpopError> {
        let signature = self
            .inner
            .signer
            .sign(&ring::rand::SystemRandom::new(), input)
            .map_err(|_| DpopError::Proof("the system's random number generator failed".into()))?;
        Ok(signature.as_ref().to_vec())
    }

    /// The public half as a JWK (RFC 7518 §6.2.1): `kty` `EC`, `crv` `P-256`, `x`, `y`. This is
    /// what each proof's header carries.
    pub fn public_jwk(&self) -> &Value {
        &self.inner.public_jwk
    }

    /// The key's JWK SHA-256 thumbprint (RFC 7638), base64url: the `jkt` a server binds tokens
    /// to (`cnf.jkt`, RFC 9449 §6) and `dpop_jkt` in an authorization request (§10).
    pub fn thumbprint(&self) -> &str {
        &self.inner.thumbprint
    }

    /// The JWS algorithm it signs proofs with: `ES256`.
    pub fn algorithm(&self) -> &'static str {
        DPOP_ALGORITHM
    }

    #[cfg(test)]
    pub(crate) fn signing_key(&self) -> &p256::ecdsa::SigningKey {
        &self.inner.signing
    }
}

impl fmt::Debug for DpopKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DpopKey")
            .field("algorithm", &DPOP_ALGORITHM)
            .field("thumbprint", &self.thumbprint())
            .field("key", &"[redacted]")
            .finish()
    }
}

/// Two keys are equal when their public keys are, which is when their private keys are.
impl PartialEq for DpopKey {
    fn eq(&self, other: &Self) -> bool {
        self.thumbprint() == other.thumbprint()
    }
}

impl Eq for DpopKey {}

/// The JWK thumbprint (RFC 7638 §3) of a key given by its required members, names and string
/// values: those members in lexicographic order of their names, as JSON without whitespace,
/// hashed with SHA-256, base64url. The caller names the members its key type requires
/// (§3.2: `crv`, `kty`, `x`, `y` for EC; `e`, `kty`, `n` for RSA).
pub(crate) fn jwk_thumbprint(required: &[(&str, &str)]) -> String {
    let mut members = required.to_vec();
    // RFC 7638 §3.3: sorted by the Unicode code points of the names; for UTF-8, byte order.
    members.sort_by(|a, b| a.0.cmp(b.0));
    let body: Vec<String> =
        members.iter().map(|(name, value)| format!("{}:{}", Value::from(*name), Value::from(*value))).collect();
    let canonical = format!("{{{}}}", body.join(","));
    URL_SAFE_NO_PAD.encode(Sha256::digest(canonical.as_bytes()))
}

/// The thumbprint of an EC public JWK (its `crv`, `kty`, `x` and `y`), as made by
/// [`jws::es256_public_jwk`]; a member that is missing counts as empty, which no real key has.
pub(crate) fn ec_thumbprint(jwk: &Value) -> String {
    let member = |name: &str| jwk[name].as_str().unwrap_or_default().to_owned();
    let (crv, kty, x, y) = (member("crv"), member("kty"), member("x"), member("y"));
    jwk_thumbprint(&[("crv", &crv), ("kty", &kty), ("x", &x), ("y", &y)])
}

/// The private scalar `d`, base64url, as a store holds it. Its `Debug` prints `[redacted]`.
#[derive(Serialize, Deserialize)]
#[serde(transparent)]
struct PrivateScalar(String);

impl fmt::Debug for PrivateScalar {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PrivateScalar([redacted])")
    }
}

/// A key as a store holds it: the private JWK (RFC 7518 §6.2.2.1).
#[derive(Debug, Serialize, Deserialize)]
struct StoredKey {
    kty: String,
    crv: String,
    x: String,
    y: String,
    d: PrivateScalar,
}

impl Serialize for DpopKey {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let member = |name: &str| self.inner.public_jwk[name].as_str().unwrap_or_default().to_owned();
        StoredKey {
            kty: member("kty"),
            crv: member("crv"),
            x: member("x"),
            y: member("y"),
            d: PrivateScalar(URL_SAFE_NO_PAD.encode(self.inner.signing.to_bytes())),
        }
        .serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for DpopKey {
    /// Reads a stored key, checking that `d` is a P-256 scalar and that `x` and `y` are its
    /// public key: a store that mixed up two keys must not make proofs the server cannot match.
    /// No error quotes the key.
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        use serde::de::Error as _;
        let stored = StoredKey::deserialize(deserializer)?;
        if stored.kty != "EC" || stored.crv != "P-256" {
            return Err(D::Error::custom("a stored DPoP key must be an EC P-256 JWK"));
        }
        let scalar = URL_SAFE_NO_PAD
            .decode(&stored.d.0)
            .map_err(|_| D::Error::custom("a stored DPoP key's \"d\" is not base64url"))?;
        let signing = p256::ecdsa::SigningKey::from_slice(&scalar)
            .map_err(|_| D::Error::custom("a stored DPoP key's \"d\" is not a P-256 private key"))?;
        let key = Self::from_signing_key(signing).map_err(D::Error::custom)?;
        if key.inner.public_jwk["x"] != stored.x.as_str() || key.inner.public_jwk["y"] != stored.y.as_str() {
            return Err(D::Error::custom("a stored DPoP key's \"x\" and \"y\" are not the public key of its \"d\""));
        }
        Ok(key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ES256: &str = include_str!("../../tests/keys/es256.pem");

    #[test]
    fn the_thumbprint_is_rfc_7638s_for_its_rsa_example_key() {
        // RFC 7638 §3.1: the JWK of RFC 7517 Appendix A.1's RSA key (its `alg` and `kid` are not
        // required members and do not count) and the thumbprint the RFC gives for it.
        let n = "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJECPebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw";
        assert_eq!(
            jwk_thumbprint(&[("kty", "RSA"), ("n", n), ("e", "AQAB")]),
            "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs"
        );
        // The order members are given in does not matter: they are sorted.
        assert_eq!(
            jwk_thumbprint(&[("n", n), ("e", "AQAB"), ("kty", "RSA")]),
            "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs"
        );
    }

    #[test]
    fn an_ec_thumbprint_hashes_the_four_required_members_in_order() {
        let key = DpopKey::from_pkcs8_pem(ES256).unwrap();
        let jwk = key.public_jwk();
        let canonical = format!(
            r#"{{"crv":"P-256","kty":"EC","x":"{}","y":"{}"}}"#,
            jwk["x"].as_str().unwrap(),
            jwk["y"].as_str().unwrap()
        );
        assert_eq!(key.thumbprint(), URL_SAFE_NO_PAD.encode(Sha256::digest(canonical.as_bytes())));
    }

    #[test]
    fn debug_shows_the_thumbprint_and_nothing_of_the_key() {
        let key = DpopKey::from_pkcs8_pem(ES256).unwrap();
        let shown = format!("{key:?} {key:#?}");
        assert!(shown.contains(key.thumbprint()) && shown.contains("[redacted]"), "{shown}");
        let d = URL_SAFE_NO_PAD.encode(key.signing_key().to_bytes());
        assert!(!shown.contains(&d), "{shown}");
        for line in ES256.lines().filter(|line| !line.starts_with("-----")) {
            assert!(!shown.contains(line), "{shown}");
        }
        assert_eq!(format!("{:?}", PrivateScalar(d.clone())), "PrivateScalar([redacted])");
    }

    #[test]
    fn a_stored_key_reads_back_as_the_same_key() {
        let key = DpopKey::generate().unwrap();
        let json = serde_json::to_value(&key).unwrap();
        assert_eq!(json["kty"], "EC");
        assert_eq!(json["x"], key.public_jwk()["x"]);
        assert_eq!(json["d"].as_str().unwrap().len(), 43, "32 bytes");
        let back: DpopKey = serde_json::from_value(json).unwrap();
        assert_eq!(back, key);
        assert_eq!(back.signing_key().to_bytes(), key.signing_key().to_bytes());
    }

    #[test]
    fn a_stored_key_whose_parts_disagree_is_refused_without_quoting_it() {
        let (a, b) = (DpopKey::generate().unwrap(), DpopKey::generate().unwrap());
        let mut mixed = serde_json::to_value(&a).unwrap();
        mixed["x"] = serde_json::to_value(&b).unwrap()["x"].clone();
        let d = mixed["d"].as_str().unwrap().to_owned();
        let err = serde_json::from_value::<DpopKey>(mixed).unwrap_err().to_string();
        assert!(err.contains("not the public key") && !err.contains(&d), "{err}");
        let mut garbled = serde_json::to_value(&a).unwrap();
        garbled["d"] = "AAAA".into();
        assert!(serde_json::from_value::<DpopKey>(garbled).is_err());
        let mut rsa = serde_json::to_value(&a).unwrap();
        rsa["kty"] = "RSA".into();
        assert!(serde_json::from_value::<DpopKey>(rsa).is_err());
    }

    #[test]
    fn generated_keys_differ_and_pem_keys_read_the_same_each_time() {
        assert_ne!(DpopKey::generate().unwrap(), DpopKey::generate().unwrap());
        assert_eq!(DpopKey::from_pkcs8_pem(ES256).unwrap(), DpopKey::from_pkcs8_pem(ES256).unwrap());
        assert!(matches!(DpopKey::from_pkcs8_pem("not a key"), Err(DpopKeyError::Pem(_))));
        let p384 = include_str!("../../tests/keys/p384.pem");
        assert!(matches!(DpopKey::from_pkcs8_pem(p384), Err(DpopKeyError::Pem(_))));
    }
}
