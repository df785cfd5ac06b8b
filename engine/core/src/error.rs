//! Every way a request can fail, carrying its HTTP meaning.
//!
//! A [`GatewayError`] is created where the failure is found, travels up with `?`, and is rendered
//! once, by the engine, as OpenAI's error body: `{"error":{"message","type","param","code"}}`.

use std::fmt;

/// The class of a failure: decides the HTTP status, OpenAI's `type`, and the metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// 400: malformed JSON, a missing or ill-typed field.
    InvalidRequest,
    /// 401: no key, or a key we do not know.
    Authentication,
    /// 403: the key may not do this.
    PermissionDenied,
    /// 404: unknown model or route.
    NotFound,
    /// 405: a known route with the wrong method.
    MethodNotAllowed,
    /// 409: the thing to create exists already (admin API).
    Conflict,
    /// 413: the body is larger than the configured limit.
    PayloadTooLarge,
    /// 429: a limit of ours or of the provider.
    RateLimited,
    /// 429 with OpenAI's `insufficient_quota` type: a spending budget is used up.
    InsufficientQuota,
    /// 502: every target failed with an error or a bad answer.
    BadGateway,
    /// 503: no target could be tried (all circuits open, all endpoints down).
    Unavailable,
    /// 504: every target timed out.
    GatewayTimeout,
    /// 500: a bug or an internal failure of ours.
    Internal,
}

impl ErrorKind {
    /// The HTTP status OpenAI uses for this class.
    pub fn status(self) -> u16 {
        match self {
            Self::InvalidRequest => 400,
            Self::Authentication => 401,
            Self::PermissionDenied => 403,
            Self::NotFound => 404,
            Self::MethodNotAllowed => 405,
            Self::Conflict => 409,
            Self::PayloadTooLarge => 413,
            Self::RateLimited | Self::InsufficientQuota => 429,
            Self::BadGateway => 502,
            Self::Unavailable => 503,
            Self::GatewayTimeout => 504,
            Self::Internal => 500,
        }
    }

    /// OpenAI's `error.type` for this class.
    pub fn openai_type(self) -> &'static str {
        match self {
            // OpenAI answers bad keys with `invalid_request_error` and a 401, so do we.
            Self::InvalidRequest
            | Self::Authentication
            | Self::NotFound
            | Self::MethodNotAllowed
            | Self::Conflict
            | Self::PayloadTooLarge => "invalid_request_error",
            Self::PermissionDenied => "permission_error",
            Self::RateLimited => "rate_limit_error",
            Self::InsufficientQuota => "insufficient_quota",
            Self::BadGateway | Self::Unavailable | Self::GatewayTimeout | Self::Internal => "api_error",
        }
    }

    /// The class of an HTTP error status (a provider's answer relayed to a client).
    pub fn from_status(status: u16) -> Self {
        match status {
            401 => Self::Authentication,
            403 => Self::PermissionDenied,
            404 => Self::NotFound,
            405 => Self::MethodNotAllowed,
            413 => Self::PayloadTooLarge,
            429 => Self::RateLimited,
            503 | 529 => Self::Unavailable,
            504 => Self::GatewayTimeout,
            500..=599 => Self::BadGateway,
            _ => Self::InvalidRequest,
        }
    }

    /// Anthropic's `error.type` for this class (answers on `/v1/messages`).
    pub fn anthropic_type(self) -> &'static str {
        match self {
            Self::InvalidRequest | Self::MethodNotAllowed | Self::Conflict => "invalid_request_error",
            Self::Authentication => "authentication_error",
            Self::PermissionDenied => "permission_error",
            Self::NotFound => "not_found_error",
            Self::PayloadTooLarge => "request_too_large",
            Self::RateLimited => "rate_limit_error",
            Self::InsufficientQuota => "billing_error",
            Self::Unavailable => "overloaded_error",
            Self::BadGateway | Self::GatewayTimeout | Self::Internal => "api_error",
        }
    }

    /// The label this class carries in metrics and logs.
    pub fn label(self) -> &'static str {
        match self {
            Self::InvalidRequest => "invalid_request",
            Self::Authentication => "authentication",
            Self::PermissionDenied => "permission_denied",
            Self::NotFound => "not_found",
            Self::MethodNotAllowed => "method_not_allowed",
            Self::Conflict => "conflict",
            Self::PayloadTooLarge => "payload_too_large",
            Self::RateLimited => "rate_limited",
            Self::InsufficientQuota => "insufficient_quota",
            Self::BadGateway => "bad_gateway",
            Self::Unavailable => "unavailable",
            Self::GatewayTimeout => "gateway_timeout",
            Self::Internal => "internal",
        }
    }
}

/// A failure with everything needed to answer the client the way OpenAI would.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GatewayError {
    pub kind: ErrorKind,
    /// A sentence for a person: what went wrong and, where useful, what to do.
    pub message: String,
    /// The request field at fault, when there is one (`messages`, `model`, ...).
    pub param: Option<String>,
    /// A machine-readable code (`invalid_api_key`, `model_not_found`, ...).
    pub code: Option<&'static str>,
    /// Seconds the client should wait before retrying (429, 503), sent as `Retry-After`.
    pub retry_after: Option<u64>,
}

impl GatewayError {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self { kind, message: message.into(), param: None, code: None, retry_after: None }
    }

    pub fn invalid_request(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::InvalidRequest, message)
    }

    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Internal, message)
    }

    pub fn with_param(mut self, param: impl Into<String>) -> Self {
        self.param = Some(param.into());
        self
    }

    pub fn with_code(mut self, code: &'static str) -> Self {
        self.code = Some(code);
        self
    }

    pub fn with_retry_after(mut self, seconds: u64) -> Self {
        self.retry_after = Some(seconds);
        self
    }

    pub fn status(&self) -> u16 {
        self.kind.status()
    }

    /// OpenAI's error body, as JSON bytes.
    pub fn to_json(&self) -> Vec<u8> {
        let body = serde_json::json!({
            "error": {
                "message": self.message,
                "type": self.kind.openai_type(),
                "param": self.param,
                "code": self.code,
            }
        });
        body.to_string().into_bytes()
    }
}

impl GatewayError {
    /// Anthropic's error body, for clients of `/v1/messages`:
    /// `{"type":"error","error":{"type","message"}}`.
    pub fn to_anthropic_json(&self) -> Vec<u8> {
        serde_json::json!({"type": "error", "error": {"type": self.kind.anthropic_type(), "message": self.message}})
            .to_string()
            .into_bytes()
    }
}

impl fmt::Display for GatewayError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({}): {}", self.kind.label(), self.status(), self.message)
    }
}

impl std::error::Error for GatewayError {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_body_has_the_four_openai_fields() {
        let e = GatewayError::invalid_request("bad").with_param("messages").with_code("x");
        let v: serde_json::Value = serde_json::from_slice(&e.to_json()).unwrap();
        assert_eq!(v["error"]["message"], "bad");
        assert_eq!(v["error"]["type"], "invalid_request_error");
        assert_eq!(v["error"]["param"], "messages");
        assert_eq!(v["error"]["code"], "x");
        let e = GatewayError::new(ErrorKind::from_status(529), "down");
        let v: serde_json::Value = serde_json::from_slice(&e.to_json()).unwrap();
        assert!(v["error"]["param"].is_null());
        assert_eq!(e.status(), 503);
        let v: serde_json::Value = serde_json::from_slice(&e.to_anthropic_json()).unwrap();
        assert_eq!(v["type"], "error");
        assert_eq!(v["error"]["type"], "overloaded_error");
        assert_eq!(ErrorKind::from_status(401).anthropic_type(), "authentication_error");
        assert_eq!(ErrorKind::from_status(422), ErrorKind::InvalidRequest);
    }
}
