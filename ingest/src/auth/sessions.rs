//! Whether the login behind an access token is still live.
//!
//! An access token from `POST /v1/auth/login` or `/refresh` names its login (`sid`: the refresh
//! token family). A logout, a reused refresh token, a disabled account or a password change
//! (every login of the account but the one that made it) revokes the family in the store;
//! [`crate::auth::Caller`] asks [`Sessions::ended`] and refuses the token with 401. The answer
//! is kept for [`Sessions::RECHECK`], so an active login costs one store read per that interval
//! and instance, and an ended one is refused everywhere within it.

use std::time::Duration;

use moka::future::Cache;
use orderflow_store::{Store, StoreError};

/// The logins this instance looked up lately: (customer id, family id) → ended.
#[derive(Clone)]
pub struct Sessions {
    ended: Cache<(String, String), bool>,
}

impl Default for Sessions {
    fn default() -> Self {
        Sessions {
            ended: Cache::builder()
                .max_capacity(100_000)
                .time_to_live(Self::RECHECK)
                .build(),
        }
    }
}

impl std::fmt::Debug for Sessions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sessions")
            .field("cached", &self.ended.entry_count())
            .finish()
    }
}

impl Sessions {
    /// How long an answer is kept: the longest a token works on after its login ended.
    pub const RECHECK: Duration = Duration::from_secs(2);

    /// Whether the login `session_id` of `customer_id` has ended.
    pub async fn ended(
        &self,
        store: &dyn Store,
        customer_id: &str,
        session_id: &str,
    ) -> Result<bool, StoreError> {
        let key = (customer_id.to_string(), session_id.to_string());
        if let Some(ended) = self.ended.get(&key).await {
            return Ok(ended);
        }
        let ended = store
            .refresh_family_revoked(customer_id, session_id)
            .await?;
        self.ended.insert(key, ended).await;
        Ok(ended)
    }
}
