//! Header names and values built for `http` header maps directly: names known at compile time are
//! never parsed per request (Pingora's `insert_header` parses every name anew), and a bad name or
//! value is a Pingora error rather than a panic.

use http::header::{HeaderName, HeaderValue};
use pingora::ErrorType::InvalidHTTPHeader;
use pingora::OrErr;

pub static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// A header name given at run time (configuration, plugins).
pub fn name(name: &str) -> pingora::Result<HeaderName> {
    HeaderName::from_bytes(name.as_bytes()).or_err(InvalidHTTPHeader, "invalid header name")
}

pub fn value(v: &str) -> pingora::Result<HeaderValue> {
    HeaderValue::from_str(v).or_err(InvalidHTTPHeader, "invalid header value")
}
