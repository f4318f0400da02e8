//! warrenctl's side of the control socket, and the wire types the broker answers with:
//! one JSON [`Request`] per line, one JSON [`Response`] line back, over a Unix domain
//! socket in the data directory (mode 0600: being able to open it is the credential).
//! The broker's `control` module serves the same types; this crate links nothing else
//! of the broker, so warrenctl stays a small program.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// The socket's file name inside the data directory.
pub const SOCKET_NAME: &str = "warren.sock";

pub fn socket_path(data_dir: &Path) -> PathBuf {
    data_dir.join(SOCKET_NAME)
}

/// One command, as rabbitmqctl would take it: name, positional arguments, `-p` vhost,
/// and `--flag[=value]` options.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Request {
    pub command: String,
    #[serde(default)]
    pub args: Vec<String>,
    #[serde(default)]
    pub vhost: Option<String>,
    #[serde(default)]
    pub flags: std::collections::BTreeMap<String, String>,
    /// A document sent along (import_definitions).
    #[serde(default)]
    pub body: Option<serde_json::Value>,
}

/// The answer: an error with rabbitmqctl's exit code, or data.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Response {
    /// 0 on success; otherwise rabbitmqctl's exit code for this failure.
    pub exit_code: u8,
    /// The error, or a success message to print ("Success").
    #[serde(default)]
    pub message: Option<String>,
    /// Table results: column names and rows of values.
    #[serde(default)]
    pub columns: Vec<String>,
    #[serde(default)]
    pub rows: Vec<Vec<serde_json::Value>>,
    /// Document results (export_definitions, status).
    #[serde(default)]
    pub document: Option<serde_json::Value>,
}

impl Response {
    pub fn error(exit_code: u8, message: impl Into<String>) -> Response {
        Response {
            exit_code,
            message: Some(message.into()),
            ..Default::default()
        }
    }

    pub fn message(message: impl Into<String>) -> Response {
        Response {
            message: Some(message.into()),
            ..Default::default()
        }
    }

    pub fn table(columns: Vec<String>, rows: Vec<Vec<serde_json::Value>>) -> Response {
        Response {
            columns,
            rows,
            ..Default::default()
        }
    }
}
