//! How the binary fails: every error becomes a [`Failure`] that carries its
//! exit code (2 for what the caller asked wrongly, 1 for the rest).

use std::process::ExitCode;

use token_sweeper::auth::AuthError;

/// A failure at the binary's edge, with the exit code it maps to.
pub enum Failure {
    /// Exit 2.
    Usage(anyhow::Error),
    /// Exit 1.
    Runtime(anyhow::Error),
}

impl Failure {
    /// Prints the failure on stderr; returns its exit code.
    pub fn exit(self) -> ExitCode {
        eprintln!("token-sweeper: {self}");
        match self {
            Self::Usage(_) => ExitCode::from(2),
            Self::Runtime(_) => ExitCode::from(1),
        }
    }
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (Self::Usage(e) | Self::Runtime(e)) = self;
        e.fmt(f)
    }
}

/// Turns any error into a [`Failure`] of the kind the caller names: the one
/// way the binary wraps errors.
pub trait OrFail<T> {
    /// Exit 1 on error.
    fn or_runtime(self) -> Result<T, Failure>;
    /// Exit 2 on error.
    fn or_usage(self) -> Result<T, Failure>;
}

impl<T, E: Into<anyhow::Error>> OrFail<T> for Result<T, E> {
    fn or_runtime(self) -> Result<T, Failure> {
        self.map_err(|e| Failure::Runtime(e.into()))
    }

    fn or_usage(self) -> Result<T, Failure> {
        self.map_err(|e| Failure::Usage(e.into()))
    }
}

/// Exit 2 for what the caller asked wrongly (settings, arguments), 1 for the
/// rest: Redis trouble and refused tokens.
pub fn auth_failure(e: AuthError) -> Failure {
    match e {
        AuthError::KeyMaterial { .. }
        | AuthError::OutOfRange { .. }
        | AuthError::EmptyUser
        | AuthError::ReservedClaim(_) => Failure::Usage(e.into()),
        _ => Failure::Runtime(e.into()),
    }
}
