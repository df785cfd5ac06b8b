//! References to secrets in configuration: `env:NAME` or `file:PATH`, never the secret itself.

use std::fmt;

/// A resolved secret. Its `Debug` and `Display` never show the value.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Resolves a reference. `env:NAME` reads an environment variable, `file:PATH` reads a file
    /// (trailing newline trimmed). Anything else is refused, so a pasted key cannot sneak into config.
    pub fn resolve(reference: &str) -> Result<Self, String> {
        if let Some(name) = reference.strip_prefix("env:") {
            return match std::env::var(name) {
                Ok(v) if !v.is_empty() => Ok(Self(v)),
                Ok(_) => Err(format!("environment variable {name} is empty")),
                Err(_) => Err(format!("environment variable {name} is not set")),
            };
        }
        if let Some(path) = reference.strip_prefix("file:") {
            return match std::fs::read_to_string(path) {
                Ok(v) if !v.trim().is_empty() => Ok(Self(v.trim_end_matches(['\n', '\r']).to_owned())),
                Ok(_) => Err(format!("secret file {path} is empty")),
                Err(e) => Err(format!("cannot read secret file {path}: {e}")),
            };
        }
        Err("expected a secret reference `env:NAME` or `file:PATH`, not a literal value".to_owned())
    }

    /// A literal written in the configuration: only for local demos (the embedded default's demo
    /// key and admin token); the caller decides where that is acceptable.
    pub fn demo(literal: &str) -> Self {
        Self(literal.to_owned())
    }

    /// A value read from a secret store (Vault) at run time.
    pub fn fetched(value: &str) -> Self {
        Self(value.to_owned())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

/// A secret that may change while the gateway runs (a provider key refreshed from Vault): readers
/// take the current value per use; its `Debug` never shows it.
#[derive(Clone)]
pub struct LiveSecret(std::sync::Arc<std::sync::RwLock<std::sync::Arc<str>>>);

impl LiveSecret {
    pub fn new(secret: Secret) -> Self {
        Self(std::sync::Arc::new(std::sync::RwLock::new(secret.0.into())))
    }

    /// The current value.
    pub fn get(&self) -> std::sync::Arc<str> {
        self.0.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Replaces the value; `true` when it changed.
    pub fn set(&self, secret: Secret) -> bool {
        let mut current = self.0.write().unwrap_or_else(|p| p.into_inner());
        if *current.as_ref() == *secret.0 {
            return false;
        }
        *current = secret.0.into();
        true
    }
}

impl fmt::Debug for LiveSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("LiveSecret(***)")
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn literals_are_refused_and_debug_hides_values() {
        assert!(Secret::resolve("sk-live-123").is_err());
        let dir = std::env::temp_dir().join(format!("sluice-secret-{}", std::process::id()));
        std::fs::write(&dir, "abc\n").unwrap();
        let s = Secret::resolve(&format!("file:{}", dir.display())).unwrap();
        assert_eq!(s.expose(), "abc");
        assert_eq!(format!("{s:?}"), "Secret(***)");
        std::fs::remove_file(dir).unwrap();
        assert!(Secret::resolve("env:SLUICE_SURELY_UNSET_VAR").is_err());
    }
}
