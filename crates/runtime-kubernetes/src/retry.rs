//! Retrying the requests whose failure leaves their effect unknown.
//!
//! kube-rs's client retries 429, 503 and 504 itself (a request the server
//! did not carry out). A 500, a connection reset or a timeout is not
//! retried there: the request may have been carried out. The runtime
//! retries those itself where a repeat is safe because the next answer
//! tells what happened (a Job's create: 409 AlreadyExists is then its own
//! Job, adopted; a claim: the holder read back says who won).

use oz_foundation::backoff::ExponentialBackoff;
use std::time::Duration;
use tokio::time::Instant;

/// The first wait between attempts; doubled after each, up to [`MAX_DELAY`].
const FIRST_DELAY: Duration = Duration::from_millis(250);
const MAX_DELAY: Duration = Duration::from_secs(8);

/// Whether `e` may go away on a repeat: a 5xx (or a 429 kube-rs gave up
/// on) from the API server, or no answer at all (connection refused or
/// reset, a timeout: `Service`/`HyperError`). A 4xx other than 429 is the
/// request's own fault and is not repeated.
pub fn is_transient(e: &kube::Error) -> bool {
    match e {
        kube::Error::Api(status) => status.code == 429 || status.code >= 500,
        kube::Error::Service(_) | kube::Error::HyperError(_) => true,
        _ => false,
    }
}

/// Waits growing from 250 ms, doubling up to 8 s, for at most a total
/// time from its creation.
#[derive(Debug)]
pub struct Backoff {
    delays: ExponentialBackoff,
    deadline: Instant,
}

impl Backoff {
    /// Retries for at most `within` from now.
    pub fn new(within: Duration) -> Backoff {
        Backoff {
            delays: ExponentialBackoff::new(FIRST_DELAY, MAX_DELAY, 0.0),
            deadline: Instant::now() + within,
        }
    }

    /// The next wait, or `None` when it would end past the deadline.
    pub fn next_delay(&mut self) -> Option<Duration> {
        let mut ahead = self.delays.clone();
        let delay = ahead.next_delay();
        if Instant::now() + delay > self.deadline {
            return None;
        }
        self.delays = ahead;
        Some(delay)
    }

    /// Sleeps the next wait; false (at once) when the time is up.
    pub async fn wait(&mut self) -> bool {
        match self.next_delay() {
            Some(d) => {
                tokio::time::sleep(d).await;
                true
            }
            None => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::core::Status;

    fn api(code: u16) -> kube::Error {
        kube::Error::Api(Status::failure("x", "y").with_code(code).boxed())
    }

    #[test]
    fn server_errors_and_lost_answers_are_transient_client_errors_are_not() {
        for code in [429, 500, 502, 503, 504] {
            assert!(is_transient(&api(code)), "{code}");
        }
        for code in [400, 403, 404, 409, 422] {
            assert!(!is_transient(&api(code)), "{code}");
        }
        let timeout: Box<dyn std::error::Error + Send + Sync> = "request timed out".into();
        assert!(is_transient(&kube::Error::Service(timeout)));
        assert!(!is_transient(&kube::Error::LinesCodecMaxLineLengthExceeded));
    }

    #[test]
    fn delays_double_up_to_the_cap_and_stop_at_the_deadline() {
        let mut b = Backoff::new(Duration::from_secs(3600));
        let delays: Vec<u64> = (0..8)
            .map(|_| b.next_delay().unwrap().as_millis() as u64)
            .collect();
        assert_eq!(delays, [250, 500, 1000, 2000, 4000, 8000, 8000, 8000]);
        let mut b = Backoff::new(Duration::from_millis(800));
        assert_eq!(b.next_delay(), Some(Duration::from_millis(250)));
        assert_eq!(b.next_delay(), Some(Duration::from_millis(500)));
        assert_eq!(b.next_delay(), None, "a 1 s wait would end past the 800 ms");
    }
}
