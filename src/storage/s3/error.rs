//! Classifying S3 failures into the storage error kinds, and describing them on one line.
//!
//! Invariant: a missing bucket is never `NotFound` (which would read as "object absent" and end a recovery).

use std::fmt;

use aws_credential_types::provider::error::CredentialsError;
use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_s3::operation::RequestId;

/// How a failure should be reported.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Class {
    NotFound,
    PreconditionFailed,
    PermissionDenied,
    InvalidRange,
    /// No source of the AWS credential chain had credentials: a configuration problem, not retried.
    NoCredentials,
    Transient,
    Other,
}

/// Classify a service response by HTTP status and S3 error code.
pub(super) fn classify(status: u16, code: Option<&str>) -> Class {
    const TRANSIENT_CODES: &[&str] = &[
        "SlowDown",
        "Throttling",
        "ThrottlingException",
        "RequestLimitExceeded",
        "RequestTimeout",
        "RequestTimeTooSkewed",
        "ExpiredToken",
        "InternalError",
        "ServiceUnavailable",
        "OperationAborted",
    ];
    match (status, code) {
        // Never let a missing or misnamed bucket read as "object absent".
        (_, Some("NoSuchBucket")) => Class::Other,
        (412, _) | (_, Some("PreconditionFailed")) => Class::PreconditionFailed,
        (404, _) | (_, Some("NoSuchKey")) => Class::NotFound,
        (403, _) | (_, Some("AccessDenied")) => Class::PermissionDenied,
        (416, _) | (_, Some("InvalidRange")) => Class::InvalidRange,
        // The service does not implement the request (an S3-compatible store lacking an operation): retrying
        // cannot help (RFC 9110, 15.6.2 501 Not Implemented; 505 HTTP Version Not Supported).
        (501 | 505, _) | (_, Some("NotImplemented")) => Class::Other,
        (409 | 429 | 500..=599, _) => Class::Transient,
        (_, Some(c)) if TRANSIENT_CODES.contains(&c) => Class::Transient,
        _ => Class::Other,
    }
}

/// Classify an SDK error and describe it on one line, with its underlying cause.
pub(super) fn describe<E>(err: &SdkError<E>) -> (Class, String)
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
{
    match err {
        SdkError::ServiceError(se) => {
            let status = se.raw().status().as_u16();
            let code = se.err().code();
            let mut message = format!("HTTP {status}");
            if let Some(code) = code {
                message.push(' ');
                message.push_str(code);
            }
            match se.err().message().filter(|m| !m.is_empty()) {
                Some(text) => {
                    message.push_str(": ");
                    message.push_str(text);
                }
                // No S3 error document (e.g. a HEAD, or a reply the SDK could not read): say what the SDK saw.
                None if code.is_none() => {
                    message.push_str(": ");
                    message.push_str(&cause_chain(se.err()));
                }
                None => {}
            }
            if let Some(id) = err.request_id() {
                message.push_str(&format!(" (request id {id})"));
            }
            (classify(status, code), one_line(message))
        }
        SdkError::DispatchFailure(d) if d.is_user() => (Class::Other, cause_chain(err)),
        // Resolving credentials happens before the request is sent: "no source had any" fails the same way every
        // time, so it is not retried; nor is an instance metadata service that answers but refuses (HTTP 4xx, e.g.
        // 403 "IMDS is disabled"), the last source of the chain. Other dispatch failures (connection refused or
        // reset, DNS, TLS, a credential provider that timed out or answered 5xx) are transient. (An unreachable
        // IMDS is already "not loaded" in aws-config.)
        SdkError::DispatchFailure(_) => match credentials_error(err) {
            Some(CredentialsError::CredentialsNotLoaded(_)) => (Class::NoCredentials, cause_chain(err)),
            Some(CredentialsError::ProviderError(_)) if provider_refused(err) => {
                (Class::NoCredentials, cause_chain(err))
            }
            Some(CredentialsError::InvalidConfiguration(_)) => (Class::Other, cause_chain(err)),
            _ => (Class::Transient, cause_chain(err)),
        },
        // Timeouts, truncated responses.
        SdkError::TimeoutError(_) | SdkError::ResponseError(_) => (Class::Transient, cause_chain(err)),
        _ => (Class::Other, cause_chain(err)),
    }
}

/// Whether a credential provider answered with a refusal that retrying cannot change:
/// - the instance metadata service: an HTTP 4xx to the credentials request, or any answer to the IMDSv2 token
///   request that aws-config turns into a `TokenError` (400, 403 "IMDS is disabled or the caller has
///   insufficient permissions", or a malformed token); aws-config `src/imds/client/token.rs`,
///   `src/imds/credentials.rs`;
/// - the ECS/container provider: an HTTP 4xx, which aws-config reports only as text, `Non-success status from
///   HTTP credential provider: StatusCode(403)` (`src/http_credential_provider.rs`; a wording it no longer uses
///   falls back to transient).
///
/// Timeouts, connection failures and 5xx carry none of these, and stay transient.
fn provider_refused(err: &(dyn std::error::Error + 'static)) -> bool {
    use aws_config::imds::client::error::{ImdsError, TokenError};
    const HTTP_PROVIDER_4XX: &str = "Non-success status from HTTP credential provider: StatusCode(4";
    let mut next = Some(err);
    while let Some(e) = next {
        if e.downcast_ref::<TokenError>().is_some() || e.to_string().starts_with(HTTP_PROVIDER_4XX) {
            return true;
        }
        if let Some(ImdsError::ErrorResponse(r)) = e.downcast_ref::<ImdsError>() {
            return (400..500).contains(&r.response().status().as_u16());
        }
        next = e.source();
    }
    false
}

/// The credential provider's error in `err`'s chain of sources, if resolving credentials is what failed.
fn credentials_error<'a>(err: &'a (dyn std::error::Error + 'static)) -> Option<&'a CredentialsError> {
    let mut next = Some(err);
    while let Some(e) = next {
        if let Some(c) = e.downcast_ref::<CredentialsError>() {
            return Some(c);
        }
        next = e.source();
    }
    None
}

/// An error and its sources on one line, e.g. `dispatch failure: io error: client error (Connect): tcp connect
/// error: Connection refused (os error 111)`.
pub(super) fn cause_chain(err: &dyn std::error::Error) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut next = Some(err);
    while let Some(e) = next {
        let text = e.to_string();
        // Skip a layer that only repeats what the one above it already said.
        if !text.is_empty() && !parts.last().is_some_and(|above| above.contains(&text)) {
            parts.push(text);
        }
        next = e.source();
    }
    one_line(parts.join(": "))
}

pub(super) fn one_line(message: impl fmt::Display) -> String {
    message.to_string().split_whitespace().collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Issue 7: a container credential endpoint that answers 4xx is a refusal; 5xx and timeouts are not.
    #[test]
    fn issue_7_container_provider_4xx_is_a_refusal() {
        let says = |text: &str| CredentialsError::provider_error(text.to_owned());
        let refused = says("Non-success status from HTTP credential provider: StatusCode(403)");
        assert!(provider_refused(&refused));
        for transient in [
            says("Non-success status from HTTP credential provider: StatusCode(503)"),
            CredentialsError::provider_timed_out(std::time::Duration::from_secs(5)),
        ] {
            assert!(!provider_refused(&transient), "{transient:?}");
        }
    }
}
