//! The error a command reports: one lowercase line naming the thing, a `hint:` line saying
//! what to do, and an exit code (see docs/EXIT-CODES.md).
use outpost_core::{exit, Hint};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Bad input: flags, values, the operator's config. Nothing was changed.
    #[error("{message}")]
    Usage { message: String, hint: String },
    /// The operation failed.
    #[error("{message}")]
    Failed { message: String, hint: String },
    #[error(transparent)]
    Svc(#[from] outpost_systemd::SvcError),
    #[error(transparent)]
    Receipt(#[from] crate::receipt::ReceiptError),
    #[error(transparent)]
    Config(#[from] outpost_core::ConfigError),
    /// Any other library error, with the hint and exit code it chose ([`Hint`]).
    #[error("{message}")]
    Coded {
        message: String,
        hint: String,
        code: i32,
    },
}

impl Error {
    pub fn usage(message: impl Into<String>, hint: impl Into<String>) -> Error {
        Error::Usage {
            message: message.into(),
            hint: hint.into(),
        }
    }
    pub fn failed(message: impl Into<String>, hint: impl Into<String>) -> Error {
        Error::Failed {
            message: message.into(),
            hint: hint.into(),
        }
    }
    /// A library error that says itself what to do and how to exit ([`Hint`]).
    pub fn from_hint(e: &dyn Hint) -> Error {
        Error::Coded {
            message: e.to_string(),
            hint: e.hint(),
            code: e.exit_code(),
        }
    }
    /// An I/O error on `path` while doing `what`.
    pub fn io(what: &str, path: &std::path::Path, e: std::io::Error) -> Error {
        let hint = match e.kind() {
            std::io::ErrorKind::PermissionDenied => {
                "run the command with sudo, or use --user for a per-user install".to_string()
            }
            _ => "check the path and free disk space, then run the command again".to_string(),
        };
        let detail = e.to_string();
        // fs-err already names the path; avoid saying it twice.
        let message = if detail.contains(&path.display().to_string()) {
            format!("cannot {what}: {detail}")
        } else {
            format!("cannot {what} {}: {detail}", path.display())
        };
        Error::Failed { message, hint }
    }

    pub fn hint(&self) -> String {
        match self {
            Error::Usage { hint, .. } | Error::Failed { hint, .. } => hint.clone(),
            Error::Svc(e) => e.hint(),
            Error::Receipt(crate::receipt::ReceiptError::Untrusted(t)) => t.hint(),
            Error::Receipt(crate::receipt::ReceiptError::Read { source, .. })
                if source.kind() == std::io::ErrorKind::PermissionDenied =>
            {
                "this install belongs to root: run the command with sudo".into()
            }
            Error::Receipt(crate::receipt::ReceiptError::Foreign { .. }) => "the receipt was altered: check who wrote it, move it aside and re-run `sudo outpost install` to write a new one".into(),
            Error::Receipt(_) => "the receipt is outpost's record of what it installed; re-run `outpost install` to rewrite it".into(),
            Error::Config(e) => e.hint(),
            Error::Coded { hint, .. } => hint.clone(),
        }
    }

    pub fn exit_code(&self) -> i32 {
        match self {
            Error::Usage { .. } | Error::Config(_) => exit::USAGE,
            Error::Coded { code, .. } => *code,
            _ => exit::FAILURE,
        }
    }
}

/// A release error (`outpost_release::Error`) as a command's error; its exit code comes from
/// [`outpost_release::Error::exit_code`], the one place that decides it.
impl From<outpost_release::Error> for Error {
    fn from(e: outpost_release::Error) -> Error {
        let hint = e.hint();
        let usage = e.exit_code() == exit::USAGE;
        let message = match e {
            outpost_release::Error::Usage { message, .. } => message,
            e => e.to_string(),
        };
        if usage {
            Error::usage(message, hint)
        } else {
            Error::failed(message, hint)
        }
    }
}

impl Error {
    /// Prefix the message with what was being done (`cannot verify …: <error>`).
    pub fn context(self, what: &str) -> Error {
        match self {
            Error::Usage { message, hint } => Error::Usage {
                message: format!("{what}: {message}"),
                hint,
            },
            Error::Failed { message, hint } => Error::Failed {
                message: format!("{what}: {message}"),
                hint,
            },
            other => other,
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
