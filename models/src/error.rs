//! Errors of the model library: engine errors plus configuration and state
//! errors, each naming what was wrong, where, and what would have been valid.

/// Result type of the model library.
pub type Result<T, E = ModelError> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// An op of the engine failed (shapes, backend, autodiff).
    #[error(transparent)]
    Core(#[from] mla_core::Error),

    /// A name (encoder, modality, optimizer, HGM mode, fusion...) that is not one of the valid ones.
    #[error("unknown {what} '{name}' (valid: {valid})")]
    UnknownName {
        what: &'static str,
        name: String,
        valid: String,
    },

    /// A malformed specification string (`--encoder image=cnn,audio=mlp`, ...).
    #[error("invalid {what} '{spec}': {why}")]
    BadSpec {
        what: &'static str,
        spec: String,
        why: String,
    },

    /// A model, optimizer or HGM configuration that cannot work.
    #[error("invalid configuration: {0}")]
    Config(String),

    /// An input whose shape does not fit the layer or encoder it is fed to.
    #[error("{what}: {why} (got shape {shape:?})")]
    BadInput {
        what: String,
        why: String,
        shape: Vec<usize>,
    },

    /// A parameter name that is not in the store.
    #[error("no parameter named '{name}' ({context})")]
    MissingParam { name: String, context: String },

    /// A tensor whose shape does not match the parameter or state entry it is meant for.
    #[error("{what} '{name}': expected shape {expected:?}, got {got:?}")]
    ShapeMismatch {
        what: &'static str,
        name: String,
        expected: Vec<usize>,
        got: Vec<usize>,
    },

    /// Checkpoint state (optimizer, HGM) that does not fit the current configuration.
    #[error("cannot load {what} state: {why}")]
    State { what: &'static str, why: String },

    /// Per-sample fusion given inconsistent inputs.
    #[error("fusion: {0}")]
    Fusion(String),
}

impl ModelError {
    pub(crate) fn unknown(what: &'static str, name: &str, valid: &[&str]) -> Self {
        ModelError::UnknownName {
            what,
            name: name.to_string(),
            valid: valid.join(", "),
        }
    }
    pub(crate) fn bad_spec(what: &'static str, spec: &str, why: impl Into<String>) -> Self {
        ModelError::BadSpec {
            what,
            spec: spec.to_string(),
            why: why.into(),
        }
    }
    pub(crate) fn state(what: &'static str, why: impl Into<String>) -> Self {
        ModelError::State {
            what,
            why: why.into(),
        }
    }
}
