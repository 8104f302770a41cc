//! What every error a command can report carries besides its one-line message: a `hint:`
//! line saying what to do, and the process exit code ([`crate::exit`], docs/EXIT-CODES.md).
//! The binary prints `error: <message>` and `hint: <hint>` and exits with the code, so every
//! library error that implements this trait is reported the same way by every command.

/// An error a person can act on.
pub trait Hint: std::error::Error {
    /// One line saying what to do next.
    fn hint(&self) -> String;
    /// The exit code for this error; [`crate::exit::FAILURE`] unless bad input.
    fn exit_code(&self) -> i32 {
        crate::exit::FAILURE
    }
}
