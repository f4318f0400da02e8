//! Protocol errors as values. Each carries its AMQP reply code and RabbitMQ-style text
//! ("NOT_FOUND - no queue 'x' in vhost '/'"); whether it closes the channel or the whole
//! connection follows from the code, in one place: [`AmqpError::is_connection_error`].

use std::fmt;

/// AMQP 0-9-1 reply codes (spec §1.2 / RabbitMQ's rabbit_framing).
pub mod code {
    pub const REPLY_SUCCESS: u16 = 200;
    pub const CONTENT_TOO_LARGE: u16 = 311;
    pub const NO_ROUTE: u16 = 312;
    pub const NO_CONSUMERS: u16 = 313;
    pub const CONNECTION_FORCED: u16 = 320;
    pub const INVALID_PATH: u16 = 402;
    pub const ACCESS_REFUSED: u16 = 403;
    pub const NOT_FOUND: u16 = 404;
    pub const RESOURCE_LOCKED: u16 = 405;
    pub const PRECONDITION_FAILED: u16 = 406;
    pub const FRAME_ERROR: u16 = 501;
    pub const SYNTAX_ERROR: u16 = 502;
    pub const COMMAND_INVALID: u16 = 503;
    pub const CHANNEL_ERROR: u16 = 504;
    pub const UNEXPECTED_FRAME: u16 = 505;
    pub const RESOURCE_ERROR: u16 = 506;
    pub const NOT_ALLOWED: u16 = 530;
    pub const NOT_IMPLEMENTED: u16 = 540;
    pub const INTERNAL_ERROR: u16 = 541;

    pub fn name(code: u16) -> &'static str {
        match code {
            200 => "NORMAL",
            311 => "CONTENT_TOO_LARGE",
            312 => "NO_ROUTE",
            313 => "NO_CONSUMERS",
            320 => "CONNECTION_FORCED",
            402 => "INVALID_PATH",
            403 => "ACCESS_REFUSED",
            404 => "NOT_FOUND",
            405 => "RESOURCE_LOCKED",
            406 => "PRECONDITION_FAILED",
            501 => "FRAME_ERROR",
            502 => "SYNTAX_ERROR",
            503 => "COMMAND_INVALID",
            504 => "CHANNEL_ERROR",
            505 => "UNEXPECTED_FRAME",
            506 => "RESOURCE_ERROR",
            530 => "NOT_ALLOWED",
            540 => "NOT_IMPLEMENTED",
            541 => "INTERNAL_ERROR",
            _ => "UNKNOWN",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AmqpError {
    pub code: u16,
    /// Full reply text, already prefixed with the code's name as RabbitMQ does.
    pub text: String,
    /// The method that caused it (0, 0 when none).
    pub class_id: u16,
    pub method_id: u16,
}

pub type Result<T, E = AmqpError> = std::result::Result<T, E>;

impl AmqpError {
    pub fn new(code: u16, detail: impl fmt::Display) -> Self {
        AmqpError {
            code,
            text: format!("{} - {}", code::name(code), detail),
            class_id: 0,
            method_id: 0,
        }
    }

    /// Attach the offending method, as reported back in channel.close / connection.close.
    pub fn on(mut self, class_id: u16, method_id: u16) -> Self {
        if self.class_id == 0 {
            self.class_id = class_id;
            self.method_id = method_id;
        }
        self
    }

    /// Soft errors (3xx/4xx) close the channel; hard errors (5xx) close the connection.
    pub fn is_connection_error(&self) -> bool {
        self.code >= 500 || self.code == code::CONNECTION_FORCED || self.code == code::INVALID_PATH
    }

    pub fn access_refused(d: impl fmt::Display) -> Self {
        Self::new(code::ACCESS_REFUSED, d)
    }
    pub fn not_found(d: impl fmt::Display) -> Self {
        Self::new(code::NOT_FOUND, d)
    }
    pub fn resource_locked(d: impl fmt::Display) -> Self {
        Self::new(code::RESOURCE_LOCKED, d)
    }
    pub fn precondition_failed(d: impl fmt::Display) -> Self {
        Self::new(code::PRECONDITION_FAILED, d)
    }
    pub fn frame_error(d: impl fmt::Display) -> Self {
        Self::new(code::FRAME_ERROR, d)
    }
    pub fn syntax_error(d: impl fmt::Display) -> Self {
        Self::new(code::SYNTAX_ERROR, d)
    }
    pub fn command_invalid(d: impl fmt::Display) -> Self {
        Self::new(code::COMMAND_INVALID, d)
    }
    pub fn channel_error(d: impl fmt::Display) -> Self {
        Self::new(code::CHANNEL_ERROR, d)
    }
    pub fn unexpected_frame(d: impl fmt::Display) -> Self {
        Self::new(code::UNEXPECTED_FRAME, d)
    }
    pub fn not_allowed(d: impl fmt::Display) -> Self {
        Self::new(code::NOT_ALLOWED, d)
    }
    pub fn not_implemented(d: impl fmt::Display) -> Self {
        Self::new(code::NOT_IMPLEMENTED, d)
    }
    pub fn internal_error(d: impl fmt::Display) -> Self {
        Self::new(code::INTERNAL_ERROR, d)
    }
}

impl fmt::Display for AmqpError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.code, self.text)
    }
}

impl std::error::Error for AmqpError {}

/// RabbitMQ's resource naming in error texts: `queue 'q' in vhost '/'`.
pub fn rs(kind: &str, name: &str, vhost: &str) -> String {
    format!("{kind} '{name}' in vhost '{vhost}'")
}
