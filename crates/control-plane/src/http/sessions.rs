//! Sign-in sessions of the management UI: a team API key is exchanged once
//! for a random session id, which the browser keeps in an HttpOnly cookie,
//! and a CSRF token that the UI's scripts send back in a header with every
//! change. Kept in memory only, hashed (a leaked memory dump names no
//! usable session): a restart of `serve` signs everyone out. A session
//! ends at sign-out, after an idle timeout, after an absolute lifetime, or
//! when its team signs in more than its cap (its least recently used
//! session goes); one team's sign-ins never end another's.

use crate::store::keys;
use crate::store::Team;
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The cookie that holds the session id.
pub(crate) const COOKIE: &str = "oz_session";
/// `--session-lifetime`'s default: a session ends this long after sign-in,
/// however active.
pub(crate) const DEFAULT_LIFETIME: Duration = Duration::from_secs(12 * 3600);
/// `--session-idle-timeout`'s default: a session unused this long ends.
pub(crate) const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(3600);
/// `--max-sessions-per-team`'s default. Past it, a sign-in ends that same
/// team's least recently used session: one team's sign-ins never end
/// another's.
pub const DEFAULT_MAX_PER_TEAM: usize = 1_000;

/// How long sessions last, and how many a team may have.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub lifetime: Duration,
    pub idle_timeout: Duration,
    pub max_per_team: usize,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            lifetime: DEFAULT_LIFETIME,
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
            max_per_team: DEFAULT_MAX_PER_TEAM,
        }
    }
}

/// A signed-in browser.
#[derive(Debug, Clone)]
pub(crate) struct Session {
    pub team: Team,
    /// Sent by the UI in `X-CSRF-Token` with every change.
    pub csrf_token: String,
    /// The stored hash of the key it signed in with: revoking or expiring
    /// that key ends the session.
    pub key_hash: String,
    started: Instant,
    last_used: Instant,
}

/// The live sessions, each team's apart.
#[derive(Default)]
pub(crate) struct Sessions {
    limits: Limits,
    /// Team id → SHA-256 of the session id → session.
    by_team: Mutex<HashMap<i64, HashMap<String, Session>>>,
}

impl Sessions {
    pub(crate) fn new(limits: Limits) -> Sessions {
        Sessions {
            limits: Limits {
                max_per_team: limits.max_per_team.max(1),
                ..limits
            },
            by_team: Mutex::default(),
        }
    }

    pub(crate) fn limits(&self) -> Limits {
        self.limits
    }

    fn live(&self, s: &Session, now: Instant) -> bool {
        now.duration_since(s.started) < self.limits.lifetime
            && now.duration_since(s.last_used) < self.limits.idle_timeout
    }

    /// Starts a session for `team`, signed in with the key whose stored
    /// hash is `key_hash`: (the session id for the cookie, the session).
    pub(crate) fn start(&self, team: Team, key_hash: &str) -> std::io::Result<(String, Session)> {
        let id = keys::random_token()?;
        let now = Instant::now();
        let session = Session {
            team,
            csrf_token: keys::random_token()?,
            key_hash: key_hash.to_string(),
            started: now,
            last_used: now,
        };
        let mut teams = self.lock();
        let mine = teams.entry(session.team.id).or_default();
        mine.retain(|_, s| self.live(s, now));
        while mine.len() >= self.limits.max_per_team {
            let oldest = mine
                .iter()
                .min_by_key(|(_, s)| s.last_used)
                .map(|(k, _)| k.clone())
                .expect("not empty");
            mine.remove(&oldest);
        }
        mine.insert(keys::hash(&id), session.clone());
        Ok((id, session))
    }

    /// The live session with this id (its use keeps it from idling out).
    pub(crate) fn get(&self, id: &str) -> Option<Session> {
        let hash = keys::hash(id);
        let now = Instant::now();
        let mut teams = self.lock();
        let (team, found) = teams
            .iter_mut()
            .find_map(|(team, m)| m.get_mut(&hash).map(|s| (*team, s)))?;
        if self.live(found, now) {
            found.last_used = now;
            return Some(found.clone());
        }
        if let Some(m) = teams.get_mut(&team) {
            m.remove(&hash);
        }
        None
    }

    pub(crate) fn end(&self, id: &str) {
        let hash = keys::hash(id);
        for m in self.lock().values_mut() {
            m.remove(&hash);
        }
    }

    /// Live sessions of `team_id`.
    #[cfg(test)]
    pub(crate) fn count(&self, team_id: i64) -> usize {
        let now = Instant::now();
        self.lock()
            .get(&team_id)
            .map_or(0, |m| m.values().filter(|s| self.live(s, now)).count())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<i64, HashMap<String, Session>>> {
        self.by_team.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The value of cookie `name` in a `Cookie` request header (RFC 6265:
/// `a=b; c=d`).
pub(crate) fn cookie_value<'a>(header: &'a str, name: &str) -> Option<&'a str> {
    header.split(';').find_map(|pair| {
        let (k, v) = pair.trim().split_once('=')?;
        (k == name).then_some(v.trim_matches('"'))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sessions_are_found_by_id_only_and_end() {
        let s = Sessions::default();
        let team = Team {
            id: 1,
            name: "t".into(),
        };
        let (id, session) = s.start(team.clone(), "h").unwrap();
        assert_ne!(id, session.csrf_token);
        assert_eq!(s.get(&id).unwrap().team, team);
        assert!(s.get(&session.csrf_token).is_none());
        s.end(&id);
        assert!(s.get(&id).is_none());
    }

    #[test]
    fn one_team_at_its_cap_ends_only_its_own_sessions() {
        let s = Sessions::new(Limits {
            max_per_team: 3,
            ..Limits::default()
        });
        let team = |id| Team {
            id,
            name: format!("t{id}"),
        };
        let (b, _) = s.start(team(2), "hb").unwrap();
        for _ in 0..10 {
            s.start(team(1), "ha").unwrap();
        }
        assert_eq!(s.count(1), 3);
        assert!(
            s.get(&b).is_some(),
            "team 2's session survives team 1's sign-ins"
        );
    }

    #[test]
    fn cookies_are_read_from_the_header() {
        let h = "a=1; oz_session=abc; b=2";
        assert_eq!(cookie_value(h, COOKIE), Some("abc"));
        assert_eq!(cookie_value("x_oz_session=no", COOKIE), None);
    }
}
