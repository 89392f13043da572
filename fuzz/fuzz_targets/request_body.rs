//! Fuzzes what the HTTP API reads from request bodies, through
//! `runlog_engine::api::bodies::read`: the functions the routes themselves
//! call, up to the point where a route would act on what it read.
//!
//! The first byte of an input picks the route (modulo the number of
//! routes), the rest is the body; seeds are in `fuzz/seeds/request_body/`.
//! Properties checked:
//!
//! 1. Reading never panics, whatever the bytes.
//! 2. A body that is refused gets a client error (4xx) with a code and a
//!    detail, never a server error: bad input is the caller's problem, and
//!    a 5xx would page someone for it.
//! 3. The problem renders as an HTTP response.
//!
//! Run with `scripts/fuzz.sh SECONDS request_body`.

#![no_main]

use axum::response::IntoResponse;
use libfuzzer_sys::fuzz_target;
use runlog_engine::api::bodies::{self, Route};

fuzz_target!(|data: &[u8]| {
    let Some((&pick, body)) = data.split_first() else {
        return;
    };
    let route = Route::ALL[usize::from(pick) % Route::ALL.len()];
    if let Err(problem) = bodies::read(route, body) {
        let status = axum::http::StatusCode::from_u16(problem.status).expect("a real status");
        assert!(
            status.is_client_error(),
            "{route:?} answered {status} to a bad body: {problem:?}"
        );
        assert!(!problem.code.is_empty(), "{route:?}: a problem has a code");
        assert!(
            !problem.detail.is_empty(),
            "{route:?}: a problem has a detail"
        );
        let response = problem.into_response();
        assert_eq!(response.status(), status);
    }
});
