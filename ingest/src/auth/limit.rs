//! Rate limits of the auth routes: a keyed token bucket per email and per client IP, in
//! process, for login, register, verify and resend ([`AuthLimits`]). Each API instance limits
//! on its own (behind a load balancer with N instances, a client gets up to N times the
//! budget); that bounds password and code guessing, the emails an attacker can make us send,
//! and the CPU argon2 costs, which is what it is for. The client IP is the TCP peer's, or the
//! one `X-Forwarded-For` names when the peer is a trusted proxy ([`super::proxy`]).
//!
//! # Memory and cost
//! A [`Limiter`] keeps its buckets in two generations of maps. A key is looked up in the
//! current one, then in the previous one (and moved to the current one). Once per *window*
//! (the time an empty bucket takes to fill up again) the previous generation is dropped and
//! the current one becomes the previous: a key untouched for a whole window has a full bucket
//! again, so forgetting it changes nothing. Every check is O(1), and dropping a generation
//! costs O(1) per key it held, paid outside the lock. At most [`MAX_KEYS`] keys are kept per
//! generation: when the current one is full it turns over early (a flood of distinct keys can
//! then make the limiter forget buckets that were not full yet; the per-IP limit bounds how
//! fast one client can flood).

use std::{
    collections::HashMap,
    sync::Mutex,
    time::{Duration, Instant},
};

/// A bucket size and refill rate.
#[derive(Debug, Clone, Copy)]
pub struct Rate {
    /// Attempts allowed in a burst.
    pub burst: u32,
    /// One attempt comes back every `refill`.
    pub refill: Duration,
}

impl Rate {
    /// How long an empty bucket takes to fill up.
    fn window(&self) -> Duration {
        self.refill.max(Duration::from_millis(1)) * self.burst.max(1)
    }
}

/// Most keys one generation holds (a limiter holds at most twice as many).
pub const MAX_KEYS: usize = 100_000;

/// A bucket: tokens left at `at`.
type Bucket = (f64, Instant);

#[derive(Debug)]
struct Generations {
    current: HashMap<String, Bucket>,
    previous: HashMap<String, Bucket>,
    /// When `current` was started.
    since: Instant,
}

/// Keyed token buckets; idle keys are forgotten a window or two after their bucket is full.
#[derive(Debug)]
pub struct Limiter {
    rate: Rate,
    max_keys: usize,
    buckets: Mutex<Generations>,
}

impl Limiter {
    pub fn new(rate: Rate) -> Self {
        Self::with_max_keys(rate, MAX_KEYS)
    }

    fn with_max_keys(rate: Rate, max_keys: usize) -> Self {
        Limiter {
            rate,
            max_keys: max_keys.max(1),
            buckets: Mutex::new(Generations {
                current: HashMap::new(),
                previous: HashMap::new(),
                since: Instant::now(),
            }),
        }
    }

    /// Takes one attempt for `key`: `Ok` when allowed, else `Err(seconds to wait)`.
    pub fn check(&self, key: &str) -> Result<(), u32> {
        self.check_at(key, Instant::now())
    }

    fn check_at(&self, key: &str, now: Instant) -> Result<(), u32> {
        let burst = f64::from(self.rate.burst.max(1));
        let per_sec = 1.0 / self.rate.refill.as_secs_f64().max(1e-3);
        let window = self.rate.window();
        let mut dropped = None;
        let result = {
            let mut guard = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
            let g = &mut *guard;
            let elapsed = now.saturating_duration_since(g.since);
            if elapsed >= window * 2 {
                // Idle for two windows: every bucket is full again.
                dropped = Some((
                    std::mem::take(&mut g.current),
                    std::mem::take(&mut g.previous),
                ));
                g.since = now;
            } else if elapsed >= window
                || (g.current.len() >= self.max_keys && !g.current.contains_key(key))
            {
                let current = std::mem::take(&mut g.current);
                dropped = Some((std::mem::replace(&mut g.previous, current), HashMap::new()));
                g.since = now;
            }
            if !g.current.contains_key(key) {
                let carried = g.previous.remove(key).unwrap_or((burst, now));
                g.current.insert(key.to_string(), carried);
            }
            let Some((tokens, at)) = g.current.get_mut(key) else {
                return Ok(());
            };
            *tokens =
                (*tokens + now.saturating_duration_since(*at).as_secs_f64() * per_sec).min(burst);
            *at = now;
            if *tokens >= 1.0 {
                *tokens -= 1.0;
                Ok(())
            } else {
                Err(((1.0 - *tokens) / per_sec).ceil().max(1.0) as u32)
            }
        };
        // Freed after the lock is released.
        drop(dropped);
        result
    }

    /// Keys held (both generations).
    #[cfg(test)]
    fn len(&self) -> usize {
        let g = self.buckets.lock().unwrap();
        g.current.len() + g.previous.len()
    }
}

/// The limits of one route: per email and per client IP.
#[derive(Debug)]
pub struct Limits {
    pub per_email: Limiter,
    pub per_ip: Limiter,
}

impl Limits {
    pub fn new(per_email: Rate, per_ip: Rate) -> Self {
        Limits {
            per_email: Limiter::new(per_email),
            per_ip: Limiter::new(per_ip),
        }
    }

    /// Takes one attempt from the client IP's bucket (when known) and the email's: `Err`
    /// (seconds to wait) when either is empty.
    pub fn check(&self, email: &str, ip: Option<std::net::IpAddr>) -> Result<(), u32> {
        if let Some(ip) = ip {
            self.per_ip.check(&ip.to_string())?;
        }
        self.per_email.check(email)
    }
}

/// The limits of the auth routes. Each route has buckets of its own.
#[derive(Debug)]
pub struct AuthLimits {
    /// `POST /v1/auth/login`, and the current password a password change checks.
    pub login: Limits,
    pub register: Limits,
    pub verify: Limits,
    pub resend: Limits,
}

const fn rate(burst: u32, refill_secs: u64) -> Rate {
    Rate {
        burst,
        refill: Duration::from_secs(refill_secs),
    }
}

impl AuthLimits {
    /// Login: 10 attempts per email, then one per 30 s; 50 per IP, then one per 6 s.
    pub const LOGIN: (Rate, Rate) = (rate(10, 30), rate(50, 6));
    /// Register: 3 per email, then one per 10 minutes; 10 per IP, then one per minute.
    pub const REGISTER: (Rate, Rate) = (rate(3, 600), rate(10, 60));
    /// Verify: 10 codes tried per email, then one per minute (so that resends, each with a
    /// fresh code, cannot buy unlimited guesses); 30 per IP, then one per 10 s.
    pub const VERIFY: (Rate, Rate) = (rate(10, 60), rate(30, 10));
    /// Resend: 3 per email, then one per 5 minutes; 10 per IP, then one per minute.
    pub const RESEND: (Rate, Rate) = (rate(3, 300), rate(10, 60));
}

impl Default for AuthLimits {
    fn default() -> Self {
        let limits = |(email, ip): (Rate, Rate)| Limits::new(email, ip);
        AuthLimits {
            login: limits(Self::LOGIN),
            register: limits(Self::REGISTER),
            verify: limits(Self::VERIFY),
            resend: limits(Self::RESEND),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bucket_empties_then_refills() {
        let limiter = Limiter::new(Rate {
            burst: 2,
            refill: Duration::from_secs(10),
        });
        let t0 = Instant::now();
        assert!(limiter.check_at("a", t0).is_ok());
        assert!(limiter.check_at("a", t0).is_ok());
        assert_eq!(limiter.check_at("a", t0), Err(10));
        assert!(limiter.check_at("b", t0).is_ok(), "keys are apart");
        assert_eq!(limiter.check_at("a", t0 + Duration::from_secs(4)), Err(6));
        assert!(limiter.check_at("a", t0 + Duration::from_secs(10)).is_ok());
    }

    #[test]
    fn a_bucket_survives_the_turn_of_a_generation() {
        // Window: 2 × 10 s. The key is emptied late in one window and checked early in the
        // next: it is carried over, not forgotten.
        let limiter = Limiter::new(Rate {
            burst: 2,
            refill: Duration::from_secs(10),
        });
        let t0 = Instant::now();
        assert!(limiter.check_at("other", t0).is_ok());
        let late = t0 + Duration::from_secs(19);
        assert!(limiter.check_at("a", late).is_ok());
        assert!(limiter.check_at("a", late).is_ok());
        assert_eq!(
            limiter.check_at("a", t0 + Duration::from_secs(21)),
            Err(8),
            "still nearly empty after the turn"
        );
        // Two whole idle windows later everything is forgotten: the buckets were full again.
        assert!(limiter.check_at("a", t0 + Duration::from_secs(100)).is_ok());
        assert_eq!(limiter.len(), 1);
    }

    #[test]
    fn memory_stays_bounded_under_a_flood_of_keys() {
        let limiter = Limiter::with_max_keys(
            Rate {
                burst: 1,
                refill: Duration::from_secs(3600),
            },
            100,
        );
        let t0 = Instant::now();
        for i in 0..10_000 {
            assert!(limiter.check_at(&format!("k{i}"), t0).is_ok());
            assert!(limiter.len() <= 200, "{} keys at {i}", limiter.len());
        }
        // A key held in the latest generation is still limited.
        assert!(limiter.check_at("k9999", t0).is_err());
    }
}
