//! Whether a failed send can succeed later: decided here, in [`is_retriable`], for every sink.
//! A retriable failure leaves the event's offset unstored and the consume loop tries again with
//! exponential backoff and jitter ([`orderflow_kafka::BACKOFF`]); anything else goes to the
//! bridge's dead-letter topic with the reason.

use std::fmt::Display;

use crate::SinkError;

/// What went wrong, as far as retrying goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cause<'a> {
    /// No answer: connection refused or reset, DNS, TLS, timeout.
    Transport,
    /// The request could not be built from this event (too large, invalid field).
    Request,
    /// The client could not make the call at all (no credentials could be loaded, no region):
    /// an operator's fix, not the event's.
    Client,
    /// An answer with this HTTP status, and the service's error code when it sent one.
    Response { status: u16, code: Option<&'a str> },
    /// One entry of a batch failed: its error code, and whether the service blames the sender.
    BatchEntry { code: &'a str, sender_fault: bool },
}

/// Error codes that mean "not now" whatever the status: throttling, and conditions of the
/// account or environment that an operator fixes (dead-lettering every event meanwhile would
/// lose the stream's order for nothing).
const RETRIABLE_CODES: &[&str] = &[
    "Throttling",
    "ThrottlingException",
    "ThrottledException",
    "RequestThrottled",
    "RequestThrottledException",
    "TooManyRequestsException",
    "ProvisionedThroughputExceededException",
    "SlowDown",
    "RequestLimitExceeded",
    "LimitExceededException",
    "ServiceUnavailable",
    "InternalError",
    "InternalFailure",
    "RequestTimeout",
    "RequestTimeoutException",
    "KMS.ThrottlingException",
    // SQS: the queue is missing (deleted, not provisioned yet): retried until it exists.
    "AWS.SimpleQueueService.NonExistentQueue",
    "QueueDoesNotExist",
    // SES: sending is paused for the account.
    "SendingPausedException",
    "AccountSuspendedException",
    // Credentials expired mid-run: the provider refreshes them.
    "ExpiredToken",
    "ExpiredTokenException",
    "RequestExpired",
];

/// The one decision: retry or give up.
pub fn is_retriable(cause: Cause<'_>) -> bool {
    match cause {
        Cause::Transport | Cause::Client => true,
        Cause::Request => false,
        Cause::Response { status, code } => {
            code.is_some_and(|c| RETRIABLE_CODES.contains(&c))
                // Credentials or permissions: fixed by an operator, not by the event.
                || status == 401
                || status == 403
                || status == 408
                || status == 429
                || status >= 500
        }
        Cause::BatchEntry { code, sender_fault } => {
            !sender_fault || RETRIABLE_CODES.contains(&code)
        }
    }
}

/// The [`SinkError`] for a failure.
pub fn sink_error(cause: Cause<'_>, message: impl Display) -> SinkError {
    if is_retriable(cause) {
        SinkError::Retriable(message.to_string())
    } else {
        SinkError::Rejected(message.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn throttling_server_errors_and_no_answer_are_retried() {
        assert!(is_retriable(Cause::Transport));
        for status in [401, 403, 408, 429, 500, 502, 503, 504] {
            assert!(
                is_retriable(Cause::Response { status, code: None }),
                "{status}"
            );
        }
        assert!(is_retriable(Cause::Response {
            status: 400,
            code: Some("ThrottlingException")
        }));
        assert!(is_retriable(Cause::Response {
            status: 400,
            code: Some("AWS.SimpleQueueService.NonExistentQueue")
        }));
        assert!(is_retriable(Cause::BatchEntry {
            code: "InternalError",
            sender_fault: false
        }));
    }

    #[test]
    fn bad_requests_and_sender_faults_are_final() {
        assert!(!is_retriable(Cause::Request));
        for status in [400, 404, 413, 422] {
            assert!(
                !is_retriable(Cause::Response { status, code: None }),
                "{status}"
            );
        }
        assert!(!is_retriable(Cause::Response {
            status: 400,
            code: Some("MessageRejected")
        }));
        assert!(!is_retriable(Cause::BatchEntry {
            code: "InvalidParameterValue",
            sender_fault: true
        }));
        assert_eq!(
            sink_error(Cause::Request, "too large"),
            SinkError::Rejected("too large".into())
        );
    }
}
