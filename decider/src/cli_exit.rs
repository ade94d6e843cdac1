//! Exit codes of `vigil-decider`'s commands, so scripts can tell "no such
//! node" from "the decider is down" from "you typed it wrong".

use tonic::Code;

pub const OK: i32 = 0;
/// Anything else that failed (the message says what).
pub const FAILURE: i32 = 1;
/// Usage or configuration: a bad flag, URL or config file (clap's own code
/// for usage errors is 2 as well).
pub const USAGE: i32 = 2;
/// The node or incident named does not exist.
pub const NOT_FOUND: i32 = 3;
/// The decider could not be reached (or is shutting down).
pub const UNREACHABLE: i32 = 4;
/// The decider refused the caller: operator token missing or wrong.
pub const REFUSED: i32 = 5;
/// Nothing to act on: e.g. no incident waits for a power-off confirmation.
pub const NOTHING_TO_DO: i32 = 6;

/// For `--help`.
pub const HELP: &str = "Exit codes: 0 ok; 1 failure; 2 usage or configuration; \
3 not found (node, incident); 4 decider unreachable; \
5 refused (operator token missing or wrong); \
6 nothing to act on (no incident waits for confirmation).";

/// A gRPC call that failed, keeping its status code for the exit code.
#[derive(Debug, thiserror::Error)]
#[error("{what}: {}", status.message())]
pub struct RpcError {
    pub what: String,
    pub status: tonic::Status,
}

/// `map_err` helper: `call.await.map_err(rpc("GetNode compute1"))?`.
pub fn rpc(what: impl Into<String>) -> impl FnOnce(tonic::Status) -> anyhow::Error {
    let what = what.into();
    move |status| anyhow::Error::new(RpcError { what, status })
}

/// A mistake in what the user typed.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Usage(pub String);

/// The exit code for an error, from the first cause that says.
pub fn code_for(e: &anyhow::Error) -> i32 {
    for cause in e.chain() {
        if cause.is::<Usage>() {
            return USAGE;
        }
        if let Some(r) = cause.downcast_ref::<RpcError>() {
            return code_for_status(&r.status);
        }
        if let Some(s) = cause.downcast_ref::<tonic::Status>() {
            return code_for_status(s);
        }
        if cause.is::<tonic::transport::Error>() {
            return UNREACHABLE;
        }
        if let Some(vigil_recovery::journal::JournalError::NotFound(_)) =
            cause.downcast_ref::<vigil_recovery::journal::JournalError>()
        {
            return NOT_FOUND;
        }
    }
    FAILURE
}

fn code_for_status(s: &tonic::Status) -> i32 {
    match s.code() {
        Code::NotFound => NOT_FOUND,
        Code::Unavailable => UNREACHABLE,
        Code::Unauthenticated | Code::PermissionDenied => REFUSED,
        Code::FailedPrecondition => NOTHING_TO_DO,
        Code::InvalidArgument => USAGE,
        _ => FAILURE,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_map_to_distinct_codes() {
        let e = |c: Code| rpc("X")(tonic::Status::new(c, "m"));
        assert_eq!(code_for(&e(Code::NotFound)), NOT_FOUND);
        assert_eq!(code_for(&e(Code::Unavailable)), UNREACHABLE);
        assert_eq!(code_for(&e(Code::Unauthenticated)), REFUSED);
        assert_eq!(code_for(&e(Code::FailedPrecondition)), NOTHING_TO_DO);
        assert_eq!(code_for(&e(Code::Internal)), FAILURE);
        assert_eq!(
            code_for(&anyhow::Error::new(Usage("bad".into())).context("while x")),
            USAGE
        );
        assert_eq!(code_for(&anyhow::anyhow!("other")), FAILURE);
        assert_eq!(e(Code::NotFound).to_string(), "X: m");
    }
}
