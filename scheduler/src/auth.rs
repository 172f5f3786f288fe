//! Flight SQL authentication: HTTP Basic credentials checked in the Flight handshake
//! against a users file (`user:password` per line, from a Kubernetes Secret), which mints
//! the bearer token of a private session. Requests without a valid token are rejected
//! with `UNAUTHENTICATED` by the Flight SQL service.

use std::collections::HashMap;
use std::path::Path;

use anyhow::Context;
use async_trait::async_trait;
use ballista_flight_sql::{Authenticator, Identity};
use base64::Engine;
use sha2::{Digest, Sha256};
use tonic::Status;
use tonic::metadata::MetadataMap;

/// Users and (hashed) passwords.
pub struct BasicAuthenticator {
    users: HashMap<String, [u8; 32]>,
}

impl std::fmt::Debug for BasicAuthenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BasicAuthenticator")
            .field("users", &self.users.len())
            .finish()
    }
}

fn digest(s: &str) -> [u8; 32] {
    Sha256::digest(s.as_bytes()).into()
}

impl BasicAuthenticator {
    /// Reads a users file: `user:password` lines; blank lines and `#` comments ignored.
    pub fn from_file(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read the Flight SQL users file {}", path.display()))?;
        Self::parse(&text).with_context(|| format!("invalid users file {}", path.display()))
    }

    /// Parses the users file's text.
    pub fn parse(text: &str) -> anyhow::Result<Self> {
        let mut users = HashMap::new();
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let Some((user, password)) = line.split_once(':') else {
                anyhow::bail!("line {}: expected user:password", n + 1);
            };
            if user.is_empty() || password.is_empty() {
                anyhow::bail!("line {}: empty user or password", n + 1);
            }
            if users.insert(user.to_string(), digest(password)).is_some() {
                anyhow::bail!("line {}: user {user:?} appears twice", n + 1);
            }
        }
        if users.is_empty() {
            anyhow::bail!(
                "no users (add user:password lines, or start the scheduler with --allow-anonymous)"
            );
        }
        Ok(Self { users })
    }

    fn check(&self, user: &str, password: &str) -> bool {
        // Compare digests in constant time: no early exit on the first differing byte.
        self.users.get(user).is_some_and(|want| {
            want.iter()
                .zip(digest(password))
                .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                == 0
        })
    }
}

#[async_trait]
impl Authenticator for BasicAuthenticator {
    async fn authenticate(&self, headers: &MetadataMap) -> Result<Identity, Status> {
        let value = headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| {
                Status::unauthenticated("credentials required: HTTP Basic user and password")
            })?;
        let encoded = value
            .strip_prefix("Basic ")
            .or_else(|| value.strip_prefix("basic "))
            .ok_or_else(|| Status::unauthenticated("expected HTTP Basic credentials"))?;
        // With or without padding: Arrow's Go client (ADBC) sends it unpadded.
        let decoded = base64::engine::general_purpose::STANDARD_NO_PAD
            .decode(encoded.trim().trim_end_matches('='))
            .ok()
            .and_then(|b| String::from_utf8(b).ok())
            .ok_or_else(|| Status::unauthenticated("malformed Basic credentials"))?;
        let (user, password) = decoded
            .split_once(':')
            .ok_or_else(|| Status::unauthenticated("malformed Basic credentials"))?;
        if self.check(user, password) {
            tracing::info!(user, "flight-sql: authenticated");
            Ok(Identity::user(user))
        } else {
            tracing::warn!(user, "flight-sql: rejected credentials");
            Err(Status::unauthenticated("invalid user or password"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn basic(user: &str, password: &str) -> MetadataMap {
        let mut m = MetadataMap::new();
        let token = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
        m.insert("authorization", format!("Basic {token}").parse().unwrap());
        m
    }

    #[tokio::test]
    async fn checks_basic_credentials() {
        let auth =
            BasicAuthenticator::parse("# team\nalice:s3cret:with:colons\n\nbob:pw\n").unwrap();
        assert_eq!(
            auth.authenticate(&basic("alice", "s3cret:with:colons"))
                .await
                .unwrap(),
            Identity::user("alice")
        );
        for (u, p) in [("alice", "wrong"), ("carol", "pw"), ("bob", "")] {
            let e = auth.authenticate(&basic(u, p)).await.unwrap_err();
            assert_eq!(e.code(), tonic::Code::Unauthenticated, "{u}");
        }
        let e = auth.authenticate(&MetadataMap::new()).await.unwrap_err();
        assert_eq!(e.code(), tonic::Code::Unauthenticated);
        assert!(!auth.allows_anonymous());
    }

    #[test]
    fn bad_users_files_say_which_line() {
        assert!(
            BasicAuthenticator::parse("")
                .unwrap_err()
                .to_string()
                .contains("no users")
        );
        let e = BasicAuthenticator::parse("ok:1\nnocolon\n").unwrap_err();
        assert!(e.to_string().contains("line 2"), "{e}");
        let e = BasicAuthenticator::parse("a:1\na:2\n").unwrap_err();
        assert!(e.to_string().contains("twice"), "{e}");
    }
}
