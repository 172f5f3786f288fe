//! The plugin's own failures, typed: which check refused what. The message names the path,
//! flag or parameter and what was expected; where such an error crosses into DataFusion it
//! becomes a [`DataFusionError`] with the operation as context ([`DlpError::context`]).

use datafusion::common::DataFusionError;

/// A failure of one of the plugin's checks.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DlpError {
    /// A path outside what this process may read or write: its data roots, writable roots
    /// or work directory.
    #[error("{0}")]
    Access(String),
    /// A request above one of this process's ceilings (`--max-*` flags).
    #[error("{0}")]
    Limit(String),
    /// Flags or configuration that cannot be used (a missing root, an unreadable file).
    #[error("{0}")]
    Config(String),
    /// Object storage that failed or refused a request (the message names the URL, never a
    /// credential).
    #[error("{0}")]
    Storage(String),
    /// A file, object or prefix that does not exist.
    #[error("{0}")]
    NotFound(String),
}

/// The plugin's results.
pub type Result<T, E = DlpError> = std::result::Result<T, E>;

impl DlpError {
    /// As a DataFusion error, with `context` (what was being done) in front.
    pub fn context(self, context: impl std::fmt::Display) -> DataFusionError {
        let message = format!("{context}: {self}");
        match self {
            Self::Access(_) | Self::Config(_) => DataFusionError::Plan(message),
            Self::Limit(_) => DataFusionError::ResourcesExhausted(message),
            Self::Storage(_) => DataFusionError::Execution(message),
            Self::NotFound(_) => DataFusionError::Plan(message),
        }
    }
}

impl From<DlpError> for DataFusionError {
    fn from(e: DlpError) -> Self {
        match e {
            DlpError::Access(m) | DlpError::Config(m) => DataFusionError::Plan(m),
            DlpError::Limit(m) => DataFusionError::ResourcesExhausted(m),
            DlpError::Storage(m) => DataFusionError::Execution(m),
            DlpError::NotFound(m) => DataFusionError::Plan(m),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn converts_with_context_and_keeps_the_message() {
        let e = DlpError::Access("'/etc/passwd' is outside the data roots (/data)".into());
        let d = e.clone().context("read_images");
        assert!(matches!(d, DataFusionError::Plan(_)));
        assert!(
            d.to_string()
                .contains("read_images: '/etc/passwd' is outside the data roots"),
            "{d}"
        );
        let d: DataFusionError = DlpError::Limit("batchSize 64 is above 16".into()).into();
        assert!(matches!(d, DataFusionError::ResourcesExhausted(_)), "{d}");
        assert_eq!(
            e.to_string(),
            "'/etc/passwd' is outside the data roots (/data)"
        );
    }
}
