//! Sign-in sessions of the management UI: a team API key is exchanged once
//! for a random session id, which the browser keeps in an HttpOnly cookie,
//! and a CSRF token that the UI's scripts send back in a header with every
//! change. Kept in memory only, hashed (a leaked memory dump names no
//! usable session): a restart of `serve` signs everyone out.

use crate::store::keys;
use crate::store::Team;
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The cookie that holds the session id.
pub const COOKIE: &str = "oz_session";
/// A session ends this long after sign-in.
pub const LIFETIME: Duration = Duration::from_secs(12 * 3600);
/// More live sessions than this and the oldest are dropped (bounded memory
/// however often someone signs in).
const MAX_SESSIONS: usize = 10_000;

/// A signed-in browser.
#[derive(Debug, Clone)]
pub struct Session {
    pub team: Team,
    /// Sent by the UI in `X-CSRF-Token` with every change.
    pub csrf_token: String,
    started: Instant,
}

#[derive(Default)]
pub struct Sessions {
    /// SHA-256 of the session id → session.
    by_hash: Mutex<HashMap<String, Session>>,
}

impl Sessions {
    /// Starts a session for `team`: (the session id for the cookie, the session).
    pub fn start(&self, team: Team) -> std::io::Result<(String, Session)> {
        let id = keys::random_token()?;
        let session = Session {
            team,
            csrf_token: keys::random_token()?,
            started: Instant::now(),
        };
        let mut map = self.lock();
        map.retain(|_, s| s.started.elapsed() < LIFETIME);
        while map.len() >= MAX_SESSIONS {
            let oldest = map
                .iter()
                .min_by_key(|(_, s)| s.started)
                .map(|(k, _)| k.clone())
                .expect("not empty");
            map.remove(&oldest);
        }
        map.insert(keys::hash(&id), session.clone());
        Ok((id, session))
    }

    /// The live session with this id.
    pub fn get(&self, id: &str) -> Option<Session> {
        let hash = keys::hash(id);
        let mut map = self.lock();
        match map.get(&hash) {
            Some(s) if s.started.elapsed() < LIFETIME => Some(s.clone()),
            Some(_) => {
                map.remove(&hash);
                None
            }
            None => None,
        }
    }

    pub fn end(&self, id: &str) {
        self.lock().remove(&keys::hash(id));
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Session>> {
        self.by_hash.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The value of cookie `name` in a `Cookie` request header (RFC 6265:
/// `a=b; c=d`).
pub fn cookie_value<'a>(header: &'a str, name: &str) -> Option<&'a str> {
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
        let (id, session) = s.start(team.clone()).unwrap();
        assert_ne!(id, session.csrf_token);
        assert_eq!(s.get(&id).unwrap().team, team);
        assert!(s.get(&session.csrf_token).is_none());
        s.end(&id);
        assert!(s.get(&id).is_none());
    }

    #[test]
    fn cookies_are_read_from_the_header() {
        let h = "a=1; oz_session=abc; b=2";
        assert_eq!(cookie_value(h, COOKIE), Some("abc"));
        assert_eq!(cookie_value("x_oz_session=no", COOKIE), None);
    }
}
