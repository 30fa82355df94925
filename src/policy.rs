//! Policy: the layer's decisions that depend on nothing but their inputs. Which refresh errors are
//! terminal (and whose fault they are) or transient, how long to back off after a failure, how
//! long a cool-down has left on two clocks, how long a token rejected soon after it was fetched
//! holds back the next refresh. Pure functions over [`Policy`], the configuration the builder
//! decides.

use std::time::{Duration, SystemTime};

use http::StatusCode;

use crate::error::RefreshError;

/// How long before expiry a token is refreshed proactively, unless set otherwise: 30 seconds.
pub const DEFAULT_REFRESH_SKEW: Duration = Duration::from_secs(30);

/// The first cool-down after a failed refresh, unless set otherwise: 500 milliseconds. It doubles
/// with each consecutive failure.
pub const DEFAULT_MIN_BACKOFF: Duration = Duration::from_millis(500);

/// The longest cool-down the backoff grows to, unless set otherwise: 30 seconds.
pub const DEFAULT_MAX_BACKOFF: Duration = Duration::from_secs(30);

/// The longest `Retry-After` honoured, unless set otherwise: 15 minutes. Longer asks are cut to
/// this, so a broken header cannot stop refreshes for days.
pub const DEFAULT_MAX_RETRY_AFTER: Duration = Duration::from_secs(15 * 60);

/// How long one refresh may take from start to answer, unless set otherwise: 45 seconds, the
/// token call's default timeout ([`DEFAULT_TOKEN_TIMEOUT`](crate::DEFAULT_TOKEN_TIMEOUT), 30
/// seconds) plus 15 seconds for the store's lock, read and save. A token source that never
/// answers ends there.
pub const DEFAULT_FLIGHT_DEADLINE: Duration = Duration::from_secs(45);

/// How soon after it was fetched a token may be rejected before the layer stops believing a new
/// one would help, unless set otherwise: 30 seconds. Doubles with each such rejection in a row,
/// up to 10 minutes.
pub const DEFAULT_MIN_REFRESH_INTERVAL: Duration = Duration::from_secs(30);

/// How often a key whose grant is dead looks in the store for tokens another process saved,
/// unless set otherwise: 5 seconds.
pub const DEFAULT_TERMINAL_RECHECK: Duration = Duration::from_secs(5);

/// OAuth error codes from a refresh that mean the user must authorize again.
const USER_TERMINAL_ERRORS: &[&str] = &["invalid_grant"];

/// OAuth error codes from a refresh that mean the client's own credentials or registration are
/// wrong: no user can fix them.
const CLIENT_TERMINAL_ERRORS: &[&str] = &["invalid_client", "unauthorized_client"];

/// Error codes that, even on a 400, say "try again later".
const RETRYABLE_ERRORS: &[&str] = &["temporarily_unavailable", "server_error", "slow_down"];

/// The longest hold-back after tokens rejected right after they were fetched (10 minutes).
const MAX_REFRESH_INTERVAL: Duration = Duration::from_secs(10 * 60);

/// Whose problem a dead grant is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Whose {
    /// The user's grant is dead (`invalid_grant`): they must authorize again.
    User,
    /// The client is refused (`invalid_client`, `unauthorized_client`): its configuration is wrong.
    Client,
}

/// What a failed refresh means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// The grant cannot be refreshed again; fail fast until new tokens are installed.
    Terminal(Whose),
    /// It may pass; cool down, then try again.
    Transient,
}

/// The configuration the decisions are made with; the builder holds it and the cache reads it.
#[derive(Debug, Clone)]
pub(crate) struct Policy {
    pub(crate) skew: Duration,
    pub(crate) min_backoff: Duration,
    pub(crate) max_backoff: Duration,
    pub(crate) max_retry_after: Duration,
    pub(crate) flight_deadline: Duration,
    pub(crate) min_refresh_interval: Duration,
    pub(crate) terminal_recheck: Duration,
    /// Codes added by the user that mean "the user must authorize again".
    pub(crate) terminal_errors: Vec<String>,
}

impl Default for Policy {
    fn default() -> Self {
        Self {
            skew: DEFAULT_REFRESH_SKEW,
            min_backoff: DEFAULT_MIN_BACKOFF,
            max_backoff: DEFAULT_MAX_BACKOFF,
            max_retry_after: DEFAULT_MAX_RETRY_AFTER,
            flight_deadline: DEFAULT_FLIGHT_DEADLINE,
            min_refresh_interval: DEFAULT_MIN_REFRESH_INTERVAL,
            terminal_recheck: DEFAULT_TERMINAL_RECHECK,
            terminal_errors: Vec::new(),
        }
    }
}

impl Policy {
    /// Whether a failed refresh is terminal, and whose fault it is.
    pub(crate) fn verdict(&self, error: &RefreshError) -> Verdict {
        match error {
            RefreshError::NoRefreshToken | RefreshError::Revoked => Verdict::Terminal(Whose::User),
            // A registration whose secret expired is refused before any call: the client must
            // register again, which no user can do by logging in with the old one.
            RefreshError::RegistrationExpired { .. } => Verdict::Terminal(Whose::Client),
            RefreshError::Protocol { status, error, .. } => {
                if let Some(code) = error.as_ref().map(|e| e.error.as_str()) {
                    if CLIENT_TERMINAL_ERRORS.contains(&code) {
                        return Verdict::Terminal(Whose::Client);
                    }
                    if USER_TERMINAL_ERRORS.contains(&code) || self.terminal_errors.iter().any(|t| t == code) {
                        return Verdict::Terminal(Whose::User);
                    }
                    if RETRYABLE_ERRORS.contains(&code) {
                        return Verdict::Transient;
                    }
                }
                // Any other 400/401 from a token request means the request itself is refused
                // (Kroger answers a spent refresh token with a plain-text 400): retrying the same
                // grant cannot succeed, and retrying it in a loop is what revokes token families.
                if *status == StatusCode::BAD_REQUEST || *status == StatusCode::UNAUTHORIZED {
                    Verdict::Terminal(Whose::User)
                } else {
                    Verdict::Transient
                }
            }
            // A bound refresh token without its key is as dead as a revoked one; a server that
            // will not bind tokens is the configuration's fault, and says so on every call.
            #[cfg(feature = "dpop")]
            RefreshError::Dpop(crate::dpop::DpopError::KeyLost) => Verdict::Terminal(Whose::User),
            #[cfg(feature = "dpop")]
            RefreshError::Dpop(crate::dpop::DpopError::NotBound { .. }) => Verdict::Terminal(Whose::Client),
            _ => Verdict::Transient,
        }
    }

    /// The cool-down after the `failures`-th failure in a row: the backoff doubles from the
    /// minimum up to the maximum, and a server's `Retry-After` (capped) wins when longer.
    pub(crate) fn cool_down(&self, failures: u32, asked: Option<Duration>) -> Duration {
        let exponent = failures.saturating_sub(1).min(30);
        let backoff = self.min_backoff.saturating_mul(1 << exponent).min(self.max_backoff);
        backoff.max(self.capped_retry_after(asked).unwrap_or_default())
    }

    /// A server's `Retry-After` as the layer keeps it: cut to the configured maximum.
    pub(crate) fn capped_retry_after(&self, asked: Option<Duration>) -> Option<Duration> {
        asked.map(|asked| asked.min(self.max_retry_after))
    }

    /// The hold-back after the `rejections`-th token in a row rejected soon after it was fetched.
    pub(crate) fn refresh_interval(&self, rejections: u32) -> Duration {
        let exponent = rejections.saturating_sub(1).min(30);
        self.min_refresh_interval.saturating_mul(1 << exponent).min(MAX_REFRESH_INTERVAL.max(self.min_refresh_interval))
    }
}

/// How long a cool-down of `length`, started at `started_wall` by the wall clock and `elapsed`
/// ago by the monotonic clock, has left at `now` by the wall clock. The wall clock decides while it
/// moves forward (tests drive it with a manual clock; a forward step ends the cool-down early,
/// which only makes the layer try sooner). Once it reads earlier than the start, it was stepped
/// back, and the monotonic reading decides: a clock set back a day cannot stretch a 2 s cool-down
/// to a day.
pub(crate) fn remaining(length: Duration, started_wall: SystemTime, elapsed: Duration, now: SystemTime) -> Duration {
    match now.duration_since(started_wall) {
        Ok(passed) => length.saturating_sub(passed),
        Err(_) => length.saturating_sub(elapsed),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::OAuthError;

    fn protocol(status: u16, code: Option<&str>) -> RefreshError {
        RefreshError::Protocol {
            status: StatusCode::from_u16(status).unwrap(),
            error: code.map(|code| Box::new(OAuthError::new(code))),
            retry_after: None,
            body: String::new(),
        }
    }

    #[test]
    fn the_defaults_are_what_their_docs_say() {
        assert_eq!(DEFAULT_REFRESH_SKEW, Duration::from_secs(30));
        assert_eq!(DEFAULT_MIN_BACKOFF, Duration::from_millis(500));
        assert_eq!(DEFAULT_MAX_BACKOFF, Duration::from_secs(30));
        assert_eq!(DEFAULT_MAX_RETRY_AFTER, Duration::from_secs(900), "15 minutes");
        assert_eq!(DEFAULT_FLIGHT_DEADLINE, Duration::from_secs(45));
        assert_eq!(DEFAULT_MIN_REFRESH_INTERVAL, Duration::from_secs(30));
        assert_eq!(DEFAULT_TERMINAL_RECHECK, Duration::from_secs(5));
        assert_eq!(MAX_REFRESH_INTERVAL, Duration::from_secs(600), "10 minutes");
    }

    #[cfg(feature = "dpop")]
    #[test]
    fn a_lost_dpop_key_is_the_users_end_an_unbound_token_the_clients_and_a_failed_proof_passes() {
        use crate::dpop::DpopError;
        let policy = Policy::default();
        assert_eq!(policy.verdict(&RefreshError::Dpop(DpopError::KeyLost)), Verdict::Terminal(Whose::User));
        let unbound = RefreshError::Dpop(DpopError::NotBound { token_type: Some("Bearer".into()) });
        assert_eq!(policy.verdict(&unbound), Verdict::Terminal(Whose::Client));
        assert_eq!(policy.verdict(&RefreshError::Dpop(DpopError::Proof("rng".into()))), Verdict::Transient);
    }

    #[test]
    fn invalid_grant_is_the_users_and_invalid_client_the_clients() {
        let policy = Policy::default();
        assert_eq!(policy.verdict(&protocol(400, Some("invalid_grant"))), Verdict::Terminal(Whose::User));
        assert_eq!(policy.verdict(&protocol(401, Some("invalid_client"))), Verdict::Terminal(Whose::Client));
        assert_eq!(policy.verdict(&protocol(400, Some("unauthorized_client"))), Verdict::Terminal(Whose::Client));
        assert_eq!(policy.verdict(&RefreshError::NoRefreshToken), Verdict::Terminal(Whose::User));
        assert_eq!(policy.verdict(&RefreshError::Revoked), Verdict::Terminal(Whose::User));
        let expired = RefreshError::RegistrationExpired { client_id: "c".into(), expired_at: SystemTime::UNIX_EPOCH };
        assert_eq!(
            policy.verdict(&expired),
            Verdict::Terminal(Whose::Client),
            "an expired registration is the client's"
        );
    }

    #[test]
    fn a_plain_400_or_401_is_terminal_and_retryable_codes_are_not() {
        let policy = Policy::default();
        assert_eq!(policy.verdict(&protocol(400, None)), Verdict::Terminal(Whose::User));
        assert_eq!(policy.verdict(&protocol(401, None)), Verdict::Terminal(Whose::User));
        assert_eq!(policy.verdict(&protocol(400, Some("temporarily_unavailable"))), Verdict::Transient);
        assert_eq!(policy.verdict(&protocol(400, Some("slow_down"))), Verdict::Transient);
        assert_eq!(policy.verdict(&protocol(400, Some("server_error"))), Verdict::Transient);
        assert_eq!(policy.verdict(&protocol(503, None)), Verdict::Transient);
        assert_eq!(policy.verdict(&protocol(429, Some("invalid_request"))), Verdict::Transient);
        assert_eq!(policy.verdict(&RefreshError::Aborted), Verdict::Transient);
    }

    #[test]
    fn codes_added_by_the_user_are_terminal_even_on_a_5xx() {
        let policy = Policy { terminal_errors: vec!["refresh_token_not_found".into()], ..Policy::default() };
        assert_eq!(policy.verdict(&protocol(500, Some("refresh_token_not_found"))), Verdict::Terminal(Whose::User));
        assert_eq!(Policy::default().verdict(&protocol(500, Some("refresh_token_not_found"))), Verdict::Transient);
    }

    #[test]
    fn backoff_doubles_to_its_cap_and_retry_after_wins_when_longer_but_capped() {
        let policy = Policy {
            min_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_millis(1000),
            max_retry_after: Duration::from_secs(60),
            ..Policy::default()
        };
        let ms = Duration::from_millis;
        assert_eq!(policy.cool_down(1, None), ms(100));
        assert_eq!(policy.cool_down(2, None), ms(200));
        assert_eq!(policy.cool_down(3, None), ms(400));
        assert_eq!(policy.cool_down(5, None), ms(1000));
        assert_eq!(policy.cool_down(u32::MAX, None), ms(1000));
        assert_eq!(policy.cool_down(1, Some(ms(50))), ms(100));
        assert_eq!(policy.cool_down(1, Some(ms(5000))), ms(5000));
        assert_eq!(policy.cool_down(1, Some(Duration::from_secs(600))), Duration::from_secs(60));
        assert_eq!(policy.capped_retry_after(Some(Duration::MAX)), Some(Duration::from_secs(60)));
    }

    #[test]
    fn extreme_durations_saturate() {
        let policy = Policy {
            min_backoff: Duration::MAX,
            max_backoff: Duration::MAX,
            min_refresh_interval: Duration::MAX,
            ..Policy::default()
        };
        assert_eq!(policy.cool_down(40, None), Duration::MAX);
        assert_eq!(policy.refresh_interval(40), Duration::MAX);
    }

    #[test]
    fn the_refresh_hold_back_doubles_up_to_ten_minutes() {
        let policy = Policy::default();
        assert_eq!(policy.refresh_interval(1), Duration::from_secs(30));
        assert_eq!(policy.refresh_interval(2), Duration::from_secs(60));
        assert_eq!(policy.refresh_interval(5), Duration::from_secs(480));
        assert_eq!(policy.refresh_interval(6), Duration::from_secs(600));
        assert_eq!(policy.refresh_interval(60), Duration::from_secs(600));
    }

    #[test]
    fn a_cool_down_follows_the_wall_clock_forward_and_the_monotonic_clock_after_a_step_back() {
        let start = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let s = Duration::from_secs;
        assert_eq!(remaining(s(10), start, s(0), start), s(10));
        assert_eq!(remaining(s(10), start, s(0), start + s(4)), s(6), "the wall clock moved on");
        assert_eq!(remaining(s(10), start, s(1), start + s(4)), s(6), "forward, the wall clock decides");
        assert_eq!(remaining(s(10), start, s(2), start - s(86_400)), s(8), "stepped back a day");
        assert_eq!(remaining(s(2), start, s(0), start - s(86_400)), s(2), "never more than its length");
        assert_eq!(remaining(s(2), start, s(3), start - s(1)), s(0), "ends by the monotonic clock");
        assert_eq!(remaining(s(10), start, s(0), start + s(86_400)), s(0));
    }
}
