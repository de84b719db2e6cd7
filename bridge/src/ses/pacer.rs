//! A token bucket: SES sends no rate-limit headers, so the sink paces itself to the account's
//! MaxSendRate, and a burst of orders waits here instead of being throttled by SES.

use std::time::{Duration, Instant};

use tokio::sync::Mutex;

/// `rate` tokens per second, holding at most `burst`.
#[derive(Debug)]
pub struct TokenBucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    /// A full bucket; the burst is one second's worth (at least one token).
    pub fn new(rate: f64, now: Instant) -> Self {
        let burst = rate.max(1.0);
        TokenBucket {
            rate,
            burst,
            tokens: burst,
            last: now,
        }
    }

    /// Takes a token at `now`, or says how long until one is there.
    pub fn take(&mut self, now: Instant) -> Result<(), Duration> {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        self.last = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - self.tokens) / self.rate))
        }
    }

    pub fn rate(&self) -> f64 {
        self.rate
    }
}

/// A [`TokenBucket`] shared by concurrent senders.
#[derive(Debug)]
pub struct Pacer(Mutex<TokenBucket>);

impl Pacer {
    pub fn new(rate: f64) -> Self {
        Pacer(Mutex::new(TokenBucket::new(rate, Instant::now())))
    }

    /// Waits for a token.
    pub async fn wait(&self) {
        loop {
            let wait = match self.0.lock().await.take(Instant::now()) {
                Ok(()) => return,
                Err(wait) => wait,
            };
            tokio::time::sleep(wait).await;
        }
    }

    pub async fn rate(&self) -> f64 {
        self.0.lock().await.rate()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_bucket_gives_its_burst_then_one_token_per_interval() {
        let start = Instant::now();
        let mut bucket = TokenBucket::new(2.0, start);
        assert!(bucket.take(start).is_ok());
        assert!(bucket.take(start).is_ok());
        // Empty: the next token comes in half a second.
        let wait = bucket.take(start).unwrap_err();
        assert!(wait > Duration::from_millis(490) && wait <= Duration::from_millis(500));
        assert!(bucket.take(start + Duration::from_millis(500)).is_ok());
        assert!(bucket.take(start + Duration::from_millis(500)).is_err());
    }

    #[test]
    fn an_idle_bucket_fills_only_up_to_its_burst() {
        let start = Instant::now();
        let mut bucket = TokenBucket::new(1.0, start);
        let later = start + Duration::from_secs(60);
        assert!(bucket.take(later).is_ok());
        assert!(bucket.take(later).is_err());
    }

    #[test]
    fn a_slow_rate_still_sends_one_at_a_time() {
        let start = Instant::now();
        let mut bucket = TokenBucket::new(0.5, start);
        assert!(bucket.take(start).is_ok());
        let wait = bucket.take(start).unwrap_err();
        assert!(wait > Duration::from_millis(1990) && wait <= Duration::from_secs(2));
    }
}
