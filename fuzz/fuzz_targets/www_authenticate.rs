//! `WWW-Authenticate` lines (separated by `\n`), then a NUL and a 401's body: the challenge parser
//! and the 401 classifier must never panic, must agree with each other, and a challenge written
//! out again must read back the same. See `reqwest_token_refresh::fuzzing::check_www_authenticate`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| reqwest_token_refresh::fuzzing::check_www_authenticate(data));
