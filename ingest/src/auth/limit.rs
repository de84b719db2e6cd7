//! Login rate limiting: a keyed token bucket per email and per client IP, in process. Each API
//! instance limits on its own (behind a load balancer with N instances, a client gets up to N
//! times the budget); that bounds password guessing and the CPU argon2 costs, which is what it
//! is for. The client IP is the TCP peer's: `X-Forwarded-For` is not trusted.

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

/// Keyed token buckets. Idle keys are forgotten once their bucket is full again.
#[derive(Debug)]
pub struct Limiter {
    rate: Rate,
    buckets: Mutex<HashMap<String, (f64, Instant)>>,
}

/// Most keys kept before full buckets are swept.
const SWEEP_AT: usize = 10_000;

impl Limiter {
    pub fn new(rate: Rate) -> Self {
        Limiter {
            rate,
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Takes one attempt for `key`: `Ok` when allowed, else `Err(seconds to wait)`.
    pub fn check(&self, key: &str) -> Result<(), u32> {
        self.check_at(key, Instant::now())
    }

    fn check_at(&self, key: &str, now: Instant) -> Result<(), u32> {
        let burst = f64::from(self.rate.burst.max(1));
        let per_sec = 1.0 / self.rate.refill.as_secs_f64().max(1e-3);
        let mut buckets = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        if buckets.len() >= SWEEP_AT {
            buckets.retain(|_, (tokens, at)| {
                *tokens + now.saturating_duration_since(*at).as_secs_f64() * per_sec < burst
            });
        }
        let (tokens, at) = buckets.entry(key.to_string()).or_insert((burst, now));
        *tokens = (*tokens + now.saturating_duration_since(*at).as_secs_f64() * per_sec).min(burst);
        *at = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            Ok(())
        } else {
            Err(((1.0 - *tokens) / per_sec).ceil().max(1.0) as u32)
        }
    }
}

/// The login limits: per email and per client IP.
#[derive(Debug)]
pub struct LoginLimits {
    pub per_email: Limiter,
    pub per_ip: Limiter,
}

impl LoginLimits {
    /// 10 attempts per email, then one per 30 s; 50 per IP, then one per 6 s.
    pub const PER_EMAIL: Rate = Rate {
        burst: 10,
        refill: Duration::from_secs(30),
    };
    pub const PER_IP: Rate = Rate {
        burst: 50,
        refill: Duration::from_secs(6),
    };
}

impl Default for LoginLimits {
    fn default() -> Self {
        LoginLimits {
            per_email: Limiter::new(Self::PER_EMAIL),
            per_ip: Limiter::new(Self::PER_IP),
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
}
