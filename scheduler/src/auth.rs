//! Who may use the scheduler: users with bcrypt password hashes (an htpasswd file made
//! with `htpasswd -B`, or `dlp-scheduler hash-password`), the bearer tokens a Flight
//! handshake hands out (absolute lifetime and idle timeout), and the throttling of failed
//! logins per client address and per user.
//!
//! Checking a password costs one bcrypt verification whether the user exists or not (an
//! unknown user is checked against a dummy hash of the same cost), runs off the async
//! threads, and is refused without any hashing once the caller's failure budget is spent.

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use async_trait::async_trait;
use ballista_flight_sql::{Authenticator, Identity};
use base64::Engine;
use rand::RngCore;
use tonic::Status;
use tonic::metadata::MetadataMap;

/// bcrypt cost of `hash-password` (htpasswd -B uses 5 by default; 12 is today's advice).
pub const DEFAULT_COST: u32 = 12;

/// Users and their bcrypt hashes.
pub struct Users {
    hashes: HashMap<String, String>,
    /// Verified against when the user is unknown: the same work as a wrong password.
    dummy: String,
}

impl std::fmt::Debug for Users {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Users")
            .field("users", &self.hashes.len())
            .finish()
    }
}

fn is_bcrypt(hash: &str) -> bool {
    let b = hash.as_bytes();
    hash.len() == 60
        && hash.starts_with("$2")
        && matches!(b[2], b'a' | b'b' | b'y')
        && b[3] == b'$'
        && b[4].is_ascii_digit()
        && b[5].is_ascii_digit()
        && b[6] == b'$'
}

impl Users {
    /// Reads a users file: `user:$2b$...` lines (htpasswd's bcrypt format); blank lines and
    /// `#` comments ignored.
    pub fn from_file(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read the users file {}", path.display()))?;
        Self::parse(&text).with_context(|| format!("invalid users file {}", path.display()))
    }

    /// Parses the users file's text. Plain-text passwords are refused (the line number
    /// is named, never the line).
    pub fn parse(text: &str) -> anyhow::Result<Self> {
        let mut hashes = HashMap::new();
        let mut cost = None;
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let Some((user, hash)) = line.split_once(':') else {
                anyhow::bail!("line {}: expected user:bcrypt-hash", n + 1);
            };
            if user.is_empty() {
                anyhow::bail!("line {}: empty user name", n + 1);
            }
            if !is_bcrypt(hash) {
                anyhow::bail!(
                    "line {}: user {user:?} has no bcrypt hash ($2b$..., $2y$... as \
                     `htpasswd -nB` writes); plain-text passwords are not accepted. Make \
                     a line with `dlp-scheduler hash-password --user {user}`",
                    n + 1
                );
            }
            cost = cost.or_else(|| hash[4..6].parse::<u32>().ok());
            if hashes.insert(user.to_string(), hash.to_string()).is_some() {
                anyhow::bail!("line {}: user {user:?} appears twice", n + 1);
            }
        }
        if hashes.is_empty() {
            anyhow::bail!(
                "no users (add user:hash lines, or start the scheduler with --allow-anonymous)"
            );
        }
        let dummy = bcrypt::hash("dlp-dummy-password", cost.unwrap_or(DEFAULT_COST))
            .context("cannot make the dummy hash")?;
        Ok(Self { hashes, dummy })
    }

    /// Whether `password` is `user`'s: one bcrypt verification either way.
    pub fn verify(&self, user: &str, password: &str) -> bool {
        let (hash, known) = match self.hashes.get(user) {
            Some(h) => (h.as_str(), true),
            None => (self.dummy.as_str(), false),
        };
        let ok = bcrypt::verify(password, hash).unwrap_or(false);
        known && ok
    }
}

/// A line of a users file for `user` with `password` hashed at `cost`.
pub fn users_line(user: &str, password: &str, cost: u32) -> anyhow::Result<String> {
    if user.is_empty() || user.contains(':') || user.chars().any(char::is_whitespace) {
        anyhow::bail!("--user: a user name is non-empty, without ':' or whitespace");
    }
    if password.is_empty() {
        anyhow::bail!("the password is empty");
    }
    Ok(format!("{user}:{}", bcrypt::hash(password, cost)?))
}

/// How long tokens live.
#[derive(Debug, Clone, Copy)]
pub struct TokenPolicy {
    /// From the handshake on, whatever the use.
    pub lifetime: Duration,
    /// Without use.
    pub idle: Duration,
}

impl Default for TokenPolicy {
    fn default() -> Self {
        Self {
            lifetime: Duration::from_secs(12 * 3600),
            idle: Duration::from_secs(3600),
        }
    }
}

struct Session {
    user: String,
    created: Instant,
    last: Instant,
}

/// Bearer tokens -> users.
pub struct Tokens {
    policy: TokenPolicy,
    sessions: Mutex<HashMap<String, Session>>,
}

impl Tokens {
    /// An empty store.
    pub fn new(policy: TokenPolicy) -> Self {
        Self {
            policy,
            sessions: Mutex::new(HashMap::new()),
        }
    }

    fn live(&self, s: &Session, now: Instant) -> bool {
        now.duration_since(s.created) < self.policy.lifetime
            && now.duration_since(s.last) < self.policy.idle
    }

    /// Records a token handed out to `user`.
    pub fn insert(&self, token: &str, user: &str) {
        let now = Instant::now();
        let mut sessions = self.sessions.lock().unwrap();
        sessions.retain(|_, s| self.live(s, now));
        sessions.insert(
            token.to_string(),
            Session {
                user: user.to_string(),
                created: now,
                last: now,
            },
        );
    }

    /// A new token for `user`, minted by the scheduler itself (pipeline jobs act for their
    /// user through it).
    pub fn mint(&self, user: &str) -> String {
        let mut bytes = [0u8; 32];
        rand::rng().fill_bytes(&mut bytes);
        let token = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
        self.insert(&token, user);
        token
    }

    /// The user of a live token (its idle clock restarts).
    pub fn user(&self, token: &str) -> Option<String> {
        let now = Instant::now();
        let mut sessions = self.sessions.lock().unwrap();
        let s = sessions.get_mut(token)?;
        if !self.live(s, now) {
            sessions.remove(token);
            return None;
        }
        s.last = now;
        Some(s.user.clone())
    }

    /// Forgets a token.
    pub fn revoke(&self, token: &str) {
        self.sessions.lock().unwrap().remove(token);
    }
}

/// A token bucket of failures: `burst` at once, then one per `every`.
#[derive(Debug, Clone, Copy)]
struct Bucket {
    level: f64,
    at: Instant,
}

/// Failed-login budgets per client address and per user name.
#[derive(Debug, Clone, Copy)]
pub struct ThrottlePolicy {
    /// Failures a client address may have at once...
    pub peer_burst: f64,
    /// ...then one more per this many seconds.
    pub peer_every: f64,
    /// Failures on one user name (from any address) at once...
    pub user_burst: f64,
    /// ...then one more per this many seconds.
    pub user_every: f64,
}

impl Default for ThrottlePolicy {
    fn default() -> Self {
        Self {
            peer_burst: 5.0,
            peer_every: 2.0,
            user_burst: 30.0,
            user_every: 2.0,
        }
    }
}

/// Slows down password guessing: a caller whose budget is spent is refused at once, with
/// no password check (and no hashing work) until the budget refills.
pub struct Throttle {
    policy: ThrottlePolicy,
    peers: Mutex<HashMap<IpAddr, Bucket>>,
    users: Mutex<HashMap<String, Bucket>>,
}

fn refill(b: &mut Bucket, burst: f64, every: f64, now: Instant) {
    b.level = (b.level + now.duration_since(b.at).as_secs_f64() / every).min(burst);
    b.at = now;
}

impl Throttle {
    /// Throttling with `policy`.
    pub fn new(policy: ThrottlePolicy) -> Self {
        Self {
            policy,
            peers: Mutex::new(HashMap::new()),
            users: Mutex::new(HashMap::new()),
        }
    }

    /// Seconds until `peer` / `user` may try again, if their budget is spent.
    pub fn wait(&self, peer: Option<IpAddr>, user: &str) -> Option<f64> {
        let now = Instant::now();
        let p = self.policy;
        if let Some(ip) = peer
            && let Some(b) = self.peers.lock().unwrap().get_mut(&ip)
        {
            refill(b, p.peer_burst, p.peer_every, now);
            if b.level < 1.0 {
                return Some((1.0 - b.level) * p.peer_every);
            }
        }
        if let Some(b) = self.users.lock().unwrap().get_mut(user) {
            refill(b, p.user_burst, p.user_every, now);
            if b.level < 1.0 {
                return Some((1.0 - b.level) * p.user_every);
            }
        }
        None
    }

    /// Spends one failure of `peer` and `user`.
    pub fn failed(&self, peer: Option<IpAddr>, user: &str) {
        let now = Instant::now();
        let p = self.policy;
        if let Some(ip) = peer {
            spend(&self.peers, ip, p.peer_burst, p.peer_every, now);
        }
        spend(
            &self.users,
            user.to_string(),
            p.user_burst,
            p.user_every,
            now,
        );
    }
}

/// Takes one failure from `key`'s bucket (full at first); buckets untouched for an hour
/// are forgotten once the map is large.
fn spend<K: std::hash::Hash + Eq>(
    buckets: &Mutex<HashMap<K, Bucket>>,
    key: K,
    burst: f64,
    every: f64,
    now: Instant,
) {
    let mut buckets = buckets.lock().unwrap();
    if buckets.len() > 100_000 {
        buckets.retain(|_, b| now.duration_since(b.at).as_secs_f64() < 3600.0);
    }
    let b = buckets.entry(key).or_insert(Bucket {
        level: burst,
        at: now,
    });
    refill(b, burst, every, now);
    b.level -= 1.0;
}

/// Everything the scheduler checks credentials with.
pub struct Auth {
    /// `None`: anonymous access (`--allow-anonymous`, no users file).
    pub users: Option<Arc<Users>>,
    /// Users who may use the REST API.
    pub admins: Vec<String>,
    /// Bearer tokens.
    pub tokens: Tokens,
    /// Failed-login budgets.
    pub throttle: Throttle,
    /// The cluster secret of the scheduler and its executors.
    pub cluster: Option<dlp_plugin::credentials::ClusterSecret>,
    /// bcrypt checks running at once: a flood of logins from many addresses and names
    /// waits here instead of taking every core.
    pub checks: tokio::sync::Semaphore,
}

/// bcrypt checks at once (each takes a core for a fraction of a second at cost 12).
pub const CONCURRENT_CHECKS: usize = 2;

/// HTTP Basic credentials of a request.
pub fn basic_credentials(headers: &MetadataMap) -> Result<(String, String), Status> {
    let value = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .ok_or_else(|| {
            Status::unauthenticated("credentials required: HTTP Basic user and password")
        })?;
    basic_from_header(value)
}

/// Parses an `Authorization: Basic ...` value.
pub fn basic_from_header(value: &str) -> Result<(String, String), Status> {
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
    Ok((user.to_string(), password.to_string()))
}

impl Auth {
    /// Whether requests without credentials are let in.
    pub fn anonymous(&self) -> bool {
        self.users.is_none()
    }

    /// Checks a user's password, throttled per `peer` and user; the user on success.
    pub async fn login(
        &self,
        peer: Option<IpAddr>,
        user: &str,
        password: &str,
    ) -> Result<String, Status> {
        let Some(users) = self.users.clone() else {
            return Ok(user.to_string());
        };
        if let Some(wait) = self.throttle.wait(peer, user) {
            tracing::warn!(user, ?peer, "login refused: too many failed attempts");
            return Err(Status::resource_exhausted(format!(
                "too many failed logins; try again in {:.0} s",
                wait.ceil()
            )));
        }
        let (u, p) = (user.to_string(), password.to_string());
        let _permit = self
            .checks
            .acquire()
            .await
            .map_err(|e| Status::internal(format!("password check failed: {e}")))?;
        let ok = tokio::task::spawn_blocking(move || users.verify(&u, &p))
            .await
            .map_err(|e| Status::internal(format!("password check failed: {e}")))?;
        if ok {
            tracing::info!(user, "authenticated");
            Ok(user.to_string())
        } else {
            self.throttle.failed(peer, user);
            tracing::warn!(user, ?peer, "rejected credentials");
            Err(Status::unauthenticated("invalid user or password"))
        }
    }
}

/// The identity the gate established for a request; handed to Ballista's Flight SQL
/// service, which mints the session token (the gate checked the password already).
#[derive(Debug)]
pub struct GateAuthenticator {
    /// Whether anonymous access is allowed.
    pub anonymous: bool,
}

/// Internal header carrying the user the handshake authenticated (set by the scheduler
/// itself; the gate strips it from every incoming request).
pub const IDENTITY_HEADER: &str = "x-dlp-authenticated-user";

#[async_trait]
impl Authenticator for GateAuthenticator {
    async fn authenticate(&self, headers: &MetadataMap) -> Result<Identity, Status> {
        match headers.get(IDENTITY_HEADER).and_then(|v| v.to_str().ok()) {
            Some(user) => Ok(Identity::user(user)),
            None if self.anonymous => Ok(Identity::anonymous()),
            None => Err(Status::unauthenticated(
                "credentials required: HTTP Basic user and password",
            )),
        }
    }

    fn allows_anonymous(&self) -> bool {
        self.anonymous
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn users() -> Users {
        // cost 4: the fastest bcrypt, for tests
        let text = format!(
            "# team\n{}\n\n{}\n",
            users_line("alice", "s3cret:with:colons", 4).unwrap(),
            users_line("bob", "pw", 4).unwrap()
        );
        Users::parse(&text).unwrap()
    }

    #[test]
    fn checks_bcrypt_hashes() {
        let u = users();
        assert!(u.verify("alice", "s3cret:with:colons"));
        assert!(u.verify("bob", "pw"));
        for (user, pw) in [("alice", "wrong"), ("carol", "pw"), ("bob", "")] {
            assert!(!u.verify(user, pw), "{user}");
        }
        // htpasswd -nbB -C 5 alice change-me
        let u =
            Users::parse("alice:$2y$05$dC6AA1ygowpTofNtHwwOruzWXOW.bTRoH5b48V3O5URoNXk/XkR/K\n")
                .unwrap();
        assert!(u.verify("alice", "change-me"));
        assert!(!u.verify("alice", "change-me!"));
    }

    #[test]
    fn bad_users_files_say_which_line_and_never_echo_it() {
        assert!(
            Users::parse("")
                .unwrap_err()
                .to_string()
                .contains("no users")
        );
        let e = Users::parse("alice:plaintextpassword\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("line 1") && e.contains("bcrypt"), "{e}");
        assert!(!e.contains("plaintextpassword"), "{e}");
        let e = Users::parse("nocolon\n").unwrap_err();
        assert!(e.to_string().contains("line 1"), "{e}");
        let line = users_line("a", "x", 4).unwrap();
        let e = Users::parse(&format!("{line}\n{line}\n")).unwrap_err();
        assert!(e.to_string().contains("twice"), "{e}");
        assert!(users_line("a:b", "x", 4).is_err());
    }

    #[test]
    fn tokens_expire_when_idle_and_at_their_lifetime() {
        let t = Tokens::new(TokenPolicy {
            lifetime: Duration::from_millis(300),
            idle: Duration::from_millis(120),
        });
        let a = t.mint("alice");
        assert_eq!(t.user(&a).as_deref(), Some("alice"));
        std::thread::sleep(Duration::from_millis(80));
        assert!(t.user(&a).is_some(), "used within the idle time");
        std::thread::sleep(Duration::from_millis(80));
        assert!(t.user(&a).is_some());
        std::thread::sleep(Duration::from_millis(150));
        assert!(t.user(&a).is_none(), "past its lifetime although in use");
        let b = t.mint("bob");
        std::thread::sleep(Duration::from_millis(150));
        assert!(t.user(&b).is_none(), "idle too long");
        assert!(t.user("forged").is_none());
    }

    #[test]
    fn throttling_is_per_peer_first() {
        let t = Throttle::new(ThrottlePolicy {
            peer_burst: 3.0,
            peer_every: 100.0,
            user_burst: 10.0,
            user_every: 100.0,
        });
        let (a, b): (IpAddr, IpAddr) = ("10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap());
        for _ in 0..3 {
            assert!(t.wait(Some(a), "alice").is_none());
            t.failed(Some(a), "alice");
        }
        assert!(
            t.wait(Some(a), "alice").is_some(),
            "peer a spent its budget"
        );
        assert!(t.wait(Some(a), "bob").is_some(), "for every user");
        assert!(
            t.wait(Some(b), "alice").is_none(),
            "another client still may"
        );
        for _ in 0..7 {
            t.failed(Some(b), "alice");
        }
        assert!(
            t.wait(Some("10.0.0.3".parse().unwrap()), "alice").is_some(),
            "user budget"
        );
    }
}
