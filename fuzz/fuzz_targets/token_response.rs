//! A status byte, an optional `Retry-After` value ended by a NUL, then a token endpoint's body:
//! the token and error response parsers must never panic, must only accept usable tokens, and an
//! excerpt must stay under its cap and show no secret. See
//! `reqwest_token_refresh::fuzzing::check_token_response`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| reqwest_token_refresh::fuzzing::check_token_response(data));
