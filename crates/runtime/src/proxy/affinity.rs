//! Session affinity: requests with the same key (a cookie, a header or a
//! path segment) go to the same ready replica, the key's *owner*, until it
//! retires; a key without an owner gets one by the normal balance (least
//! in flight of two). While an owner retires, requests for its keys are
//! *held*, neither failed nor sent elsewhere, until it has exited (its
//! sessions stashed) or `handoff_timeout` has passed and it has no request
//! in flight; then the key gets a new owner. Two replicas never have
//! requests of one key in flight at once.
//!
//! The ownership table is an LRU bounded by `max_keys`, split in shards so
//! that requests of different keys seldom wait for one another. A service
//! without affinity has no table, and its requests never come here.

use std::hash::{BuildHasher, BuildHasherDefault, Hasher};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use lru::LruCache;
use tokio::time::Instant;

use crate::config::AffinityConfig;
use crate::event::ReplicaState;
use crate::proxy::balance::{self, NoPick, Pick};
use crate::supervisor::Supervisor;
use crate::supervisor::replica::Replica;

/// The response header saying how long a request was held for a handoff,
/// in milliseconds (only on requests that were held).
pub const HELD_HEADER: &str = "x-dropless-held-ms";

/// Shards of the ownership table (a power of two).
const SHARDS: usize = 16;

/// Where a request's session key is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeySpec {
    /// The value of this cookie.
    Cookie(String),
    /// The value of this header (lowercase name).
    Header(String),
    /// The path segment after this prefix (`path:/game/{id}` → `/game/`).
    Path(String),
}

impl KeySpec {
    /// Parses `cookie:NAME`, `header:NAME` or `path:/prefix/{id}`; the error
    /// names the spec and the forms accepted.
    pub fn parse(spec: &str) -> Result<Self, String> {
        let wrong = || {
            format!(
                "affinity {spec:?} is not a key spec: write \"cookie:NAME\", \"header:NAME\" or \"path:/prefix/{{id}}\""
            )
        };
        let (kind, rest) = spec.split_once(':').ok_or_else(wrong)?;
        let token = |s: &str| {
            !s.is_empty()
                && s.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
        };
        match kind {
            "cookie" if token(rest) => Ok(Self::Cookie(rest.to_string())),
            "header" if token(rest) => Ok(Self::Header(rest.to_ascii_lowercase())),
            "path" => match rest.strip_suffix("{id}") {
                Some(prefix) if prefix.starts_with('/') && !prefix.contains(['{', '}']) => {
                    Ok(Self::Path(prefix.to_string()))
                }
                _ => Err(wrong()),
            },
            _ => Err(wrong()),
        }
    }

    /// The key of a request with `path` (the query may follow) and
    /// `headers`; `None` when it has none (it is then balanced freely).
    pub fn key<'a>(
        &self,
        path: &'a str,
        mut headers: impl Iterator<Item = (&'a str, &'a [u8])>,
    ) -> Option<&'a [u8]> {
        let key = match self {
            Self::Path(prefix) => {
                let rest = path.strip_prefix(prefix.as_str())?;
                let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
                &rest.as_bytes()[..end]
            }
            Self::Header(name) => headers.find(|(n, _)| n.eq_ignore_ascii_case(name))?.1,
            Self::Cookie(name) => headers
                .filter(|(n, _)| n.eq_ignore_ascii_case("cookie"))
                .flat_map(|(_, v)| v.split(|&b| b == b';'))
                .find_map(|pair| {
                    let pair = pair.trim_ascii();
                    let eq = pair.iter().position(|&b| b == b'=')?;
                    (&pair[..eq] == name.as_bytes()).then(|| pair[eq + 1..].trim_ascii())
                })?,
        };
        (!key.is_empty()).then_some(key)
    }
}

/// The affinity of one service: its key spec and ownership table.
#[derive(Debug)]
pub struct Affinity {
    spec: KeySpec,
    handoff_timeout: Duration,
    hasher: std::hash::RandomState,
    shards: Box<[Mutex<Shard>]>,
    /// Keys one shard keeps.
    per_shard: usize,
}

/// One shard of the ownership table. Unbounded for the crate, bounded by
/// [`Affinity::assign`]: a bounded `LruCache` would allocate its whole
/// capacity up front.
type Shard = LruCache<u64, Entry, BuildHasherDefault<KeyHasher>>;

/// The table's keys are already hashes (random with a per-process seed):
/// they are their own hash.
#[derive(Debug, Default)]
struct KeyHasher(u64);

impl Hasher for KeyHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(b);
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

/// The owner of one key.
#[derive(Debug)]
struct Entry {
    owner: Arc<Replica>,
    /// When the owner was first found retiring: the hold ends
    /// `handoff_timeout` after it.
    retiring_since: Option<Instant>,
    /// The previous owner, when the key moved on a timeout while it still
    /// ran: a stash put for this key is late until it is gone.
    late: Option<Arc<Replica>>,
}

impl Affinity {
    /// The affinity `config` describes (its key spec already validated).
    pub fn new(config: &AffinityConfig) -> Result<Self, String> {
        Ok(Self {
            spec: KeySpec::parse(&config.key)?,
            handoff_timeout: config.handoff_timeout,
            hasher: std::hash::RandomState::new(),
            shards: (0..SHARDS)
                .map(|_| Mutex::new(LruCache::unbounded_with_hasher(Default::default())))
                .collect(),
            per_shard: config.max_keys.div_ceil(SHARDS).max(1),
        })
    }

    /// Its key spec.
    pub fn spec(&self) -> &KeySpec {
        &self.spec
    }

    /// The table's name for `key` (the key's bytes, as the request or the
    /// stash carries them).
    pub fn hash(&self, key: &[u8]) -> u64 {
        self.hasher.hash_one(key)
    }

    /// The key of a request with `path` and `headers`, hashed.
    pub fn key_of<'a>(
        &self,
        path: &'a str,
        headers: impl Iterator<Item = (&'a str, &'a [u8])>,
    ) -> Option<u64> {
        self.spec.key(path, headers).map(|k| self.hash(k))
    }

    /// The key of a whole HTTP/1.1 request head, hashed.
    pub fn key_of_head(&self, head: &[u8]) -> Option<u64> {
        // Uninitialised: no 100 empty headers written before each parse.
        let mut headers = [const { std::mem::MaybeUninit::<httparse::Header<'_>>::uninit() }; 100];
        let mut req = httparse::Request::new(&mut []);
        req.parse_with_uninit_headers(head, &mut headers).ok()?;
        let path = req.path?;
        self.key_of(path, req.headers.iter().map(|h| (h.name, h.value)))
    }

    /// Whether a stash put for `key` comes too late: the key moved to a new
    /// owner on a handoff timeout while its previous owner, the one that
    /// would put it, still runs.
    pub fn put_is_late(&self, key: &[u8]) -> bool {
        let hash = self.hash(key);
        let mut shard = self.shard(hash);
        let Some(entry) = shard.peek_mut(&hash) else {
            return false;
        };
        match &entry.late {
            Some(previous) if !previous.state().is_terminal() => true,
            Some(_) => {
                entry.late = None;
                false
            }
            None => false,
        }
    }

    /// Picks the owner of `key` in `service`: the owner while it is ready;
    /// after a hold while it retires; a new owner (by [`balance::pick`],
    /// not in `tried`) when it has none. The pick says how long it was held.
    pub async fn pick(
        &self,
        service: &Supervisor,
        key: u64,
        tried: &[Arc<Replica>],
        deadline: Instant,
    ) -> Result<Pick, NoPick> {
        let mut held = Duration::ZERO;
        let mut looked_again = false;
        loop {
            let owner = self.owner(key);
            if let Some(owner) = &owner {
                // The owner failed this request (refused it, say): a dead
                // process is marked so within moments, and its keys move
                // then; a live one gets the request again.
                if !looked_again && tried.iter().any(|t| Arc::ptr_eq(t, owner)) {
                    looked_again = true;
                    let mut state = owner.watch_state();
                    let _ = tokio::time::timeout(
                        balance::RETRY_SAME_AFTER,
                        state.wait_for(|s| *s != ReplicaState::Ready),
                    )
                    .await;
                }
                if owner.is_member()
                    && let Some(pick) = Pick::begin(Arc::clone(owner), held)
                {
                    return Ok(pick);
                }
                if !owner.state().is_terminal() && owner.state() != ReplicaState::Starting {
                    let until = self.retiring_since(key, owner) + self.handoff_timeout;
                    if !(Instant::now() >= until && owner.in_flight() == 0) {
                        let start = Instant::now();
                        hold(owner, until, service.config().retire.drain_timeout).await;
                        held += start.elapsed();
                        continue;
                    }
                }
            }
            // No owner, or the owner is gone (or timed out and idle).
            let mut pick = balance::pick(service, tried, deadline.max(Instant::now())).await?;
            if self.assign(key, owner.as_ref(), &pick.replica) {
                pick.held = held;
                return Ok(pick);
            }
            // Another request gave the key an owner first: follow it.
        }
    }

    fn shard(&self, hash: u64) -> std::sync::MutexGuard<'_, Shard> {
        // The high bits: the low ones pick the bucket inside the shard.
        self.shards[(hash >> 60) as usize & (SHARDS - 1)]
            .lock()
            .expect("affinity lock")
    }

    /// The owner of `key` (marking it recently used).
    fn owner(&self, key: u64) -> Option<Arc<Replica>> {
        self.shard(key).get(&key).map(|e| Arc::clone(&e.owner))
    }

    /// When `owner` of `key` was first found retiring (now, the first time).
    fn retiring_since(&self, key: u64, owner: &Arc<Replica>) -> Instant {
        let mut shard = self.shard(key);
        match shard.peek_mut(&key) {
            Some(e) if Arc::ptr_eq(&e.owner, owner) => {
                *e.retiring_since.get_or_insert_with(Instant::now)
            }
            _ => Instant::now(),
        }
    }

    /// Makes `next` the owner of `key` if its owner is still `previous`;
    /// returns whether it did.
    fn assign(&self, key: u64, previous: Option<&Arc<Replica>>, next: &Arc<Replica>) -> bool {
        let mut shard = self.shard(key);
        let current = shard.peek(&key).map(|e| &e.owner);
        let unchanged = match (current, previous) {
            (None, None) => true,
            (Some(c), Some(p)) => Arc::ptr_eq(c, p),
            _ => false,
        };
        if !unchanged {
            return false;
        }
        let late = previous
            .filter(|p| !p.state().is_terminal())
            .map(Arc::clone);
        if previous.is_none() && shard.len() >= self.per_shard {
            shard.pop_lru();
        }
        shard.put(
            key,
            Entry {
                owner: Arc::clone(next),
                retiring_since: None,
                late,
            },
        );
        true
    }
}

/// Waits while `owner` hands its sessions off: until it is gone, or `until`
/// has passed and it has no request in flight (at most `drain` more).
async fn hold(owner: &Replica, until: Instant, drain: Duration) {
    let mut state = owner.watch_state();
    let gone = state.wait_for(|s| s.is_terminal());
    let timed_out = async {
        tokio::time::sleep_until(until).await;
        owner.wait_idle(drain).await;
    };
    tokio::select! {
        _ = gone => {}
        () = timed_out => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key<'a>(spec: &str, path: &'a str, headers: &'a [(&'a str, &'a str)]) -> Option<&'a str> {
        let spec = KeySpec::parse(spec).unwrap();
        spec.key(path, headers.iter().map(|(n, v)| (*n, v.as_bytes())))
            .map(|k| std::str::from_utf8(k).unwrap())
    }

    #[test]
    fn keys_come_from_cookies_headers_and_paths() {
        let h = [("Cookie", "a=1; sid=abc ;b=2"), ("X-Session", "s1")];
        assert_eq!(key("cookie:sid", "/", &h), Some("abc"));
        assert_eq!(key("cookie:si", "/", &h), None);
        assert_eq!(key("header:x-session", "/", &h), Some("s1"));
        assert_eq!(key("header:X-Session", "/", &h), Some("s1"));
        assert_eq!(key("path:/game/{id}", "/game/42/move?x=1", &[]), Some("42"));
        assert_eq!(key("path:/game/{id}", "/game/42", &[]), Some("42"));
        assert_eq!(key("path:/game/{id}", "/game/", &[]), None);
        assert_eq!(key("path:/game/{id}", "/other/42", &[]), None);
        for bad in [
            "query:x",
            "cookie:",
            "path:game/{id}",
            "path:/a/{id}/b",
            "sid",
        ] {
            let err = KeySpec::parse(bad).unwrap_err();
            assert!(err.contains(bad), "{err}");
        }
    }

    fn replica(name: &str) -> Arc<Replica> {
        use crate::supervisor::replica::{OnChange, ReplicaParts};
        let replica = Replica::new(ReplicaParts {
            name: name.into(),
            service: "web".into(),
            generation: 1,
            addr: "127.0.0.1:9".parse().unwrap(),
            process: None,
            log: None,
            events: crate::event::Events::new(16),
            on_change: OnChange(Arc::new(|| {})),
            pool_idle_timeout: Duration::from_secs(30),
            probe_failures: Arc::default(),
        });
        replica.set_member(true);
        replica.set_state(ReplicaState::Ready, None);
        replica
    }

    #[tokio::test]
    async fn a_key_has_one_owner_and_the_table_is_bounded() {
        let config = AffinityConfig {
            max_keys: 32,
            ..AffinityConfig::new("header:x-s")
        };
        let affinity = Affinity::new(&config).unwrap();
        let (a, b) = (replica("web-1"), replica("web-2"));
        assert!(affinity.assign(1, None, &a));
        // A second first request found no owner either: it follows the first.
        assert!(!affinity.assign(1, None, &b));
        assert!(Arc::ptr_eq(&affinity.owner(1).unwrap(), &a));
        // A move is from the owner it replaces, once.
        assert!(affinity.assign(1, Some(&a), &b));
        assert!(!affinity.assign(1, Some(&a), &a));
        // `a` still runs: a put for the key is late until it is gone.
        let key = b"k";
        let hash = affinity.hash(key);
        assert!(affinity.assign(hash, None, &a));
        assert!(affinity.assign(hash, Some(&a), &b));
        assert!(affinity.put_is_late(key));
        a.set_state(ReplicaState::Exited, None);
        assert!(!affinity.put_is_late(key));
        for k in 0..1000 {
            affinity.assign(k, None, &b);
        }
        let kept: usize = affinity
            .shards
            .iter()
            .map(|s| s.lock().unwrap().len())
            .sum();
        assert!(kept <= 32, "{kept} keys kept");
    }

    /// The cost of affinity per request: the key found in a request head
    /// and its owner looked up. `cargo test -p dropless-runtime --lib
    /// affinity_cost -- --ignored --nocapture` (the dev profile: an upper
    /// bound).
    #[tokio::test]
    #[ignore = "a measurement, not a test"]
    async fn affinity_cost() {
        let affinity = Affinity::new(&AffinityConfig::new("cookie:sid")).unwrap();
        let owner = replica("web-1");
        let heads: Vec<Vec<u8>> = (0..10_000)
            .map(|k| {
                format!(
                    "GET /game/{k}/move HTTP/1.1\r\nhost: game.test\r\nuser-agent: load\r\naccept: */*\r\ncookie: theme=dark; sid=s{k}\r\n\r\n"
                )
                .into_bytes()
            })
            .collect();
        for head in &heads {
            let key = affinity.key_of_head(head).unwrap();
            affinity.assign(key, None, &owner);
        }
        // CPU time of this thread: the machine may be busy with others.
        let cpu = || {
            let usage =
                nix::sys::resource::getrusage(nix::sys::resource::UsageWho::RUSAGE_THREAD).unwrap();
            let micros = |t: nix::sys::time::TimeVal| {
                Duration::from_secs(t.tv_sec() as u64) + Duration::from_micros(t.tv_usec() as u64)
            };
            micros(usage.user_time()) + micros(usage.system_time())
        };
        let rounds = 100;
        let n = rounds * heads.len() as u32;
        let start = cpu();
        for _ in 0..rounds {
            for head in &heads {
                let key = affinity.key_of_head(head).unwrap();
                std::hint::black_box(affinity.owner(key));
            }
        }
        let whole = (cpu() - start) / n;
        let start = cpu();
        for _ in 0..rounds {
            for head in &heads {
                std::hint::black_box(affinity.key_of_head(head));
            }
        }
        let parse = (cpu() - start) / n;
        println!("affinity per request: {whole:?} CPU, of which the key from the head {parse:?}");
    }

    #[test]
    fn a_whole_head_gives_the_same_key_as_its_parts() {
        let affinity = Affinity::new(&AffinityConfig::new("cookie:sid")).unwrap();
        let head = b"GET /x HTTP/1.1\r\nhost: h\r\ncookie: sid=abc\r\n\r\n";
        assert_eq!(affinity.key_of_head(head), Some(affinity.hash(b"abc")));
        assert_eq!(affinity.key_of_head(b"GET /x HTTP/1.1\r\n\r\n"), None);
    }
}
