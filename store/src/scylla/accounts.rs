//! Accounts on ScyllaDB: `store/migrations/scylla/0002_accounts.cql`.
//!
//! - **Unique emails**: the account row is written first, then its email is claimed with
//!   `INSERT … IF NOT EXISTS` on `accounts_by_email`; the loser deletes its account row. So an
//!   email row always names an existing account. (A crash between the two writes leaves an
//!   account row no email names: it can never log in, and shows in the admin listing only.)
//! - **Verification codes**: every try is a compare-and-set on `attempts`, so concurrent
//!   guesses are all counted; a match consumes the code (`DELETE … IF`) before the account is
//!   marked verified.
//! - **Refresh tokens**: rotation flips `used` with `IF used = false`, so of two concurrent
//!   exchanges of one token exactly one wins; the other is a reuse and revokes the family. A
//!   revoked family (`refresh_families.revoked`) refuses every token of it, whenever issued.
//! - **Expiry** (`0012_refresh_token_ttls.cql`): a token's row lives until the token expires
//!   (TTL); a family's row until its last token expires, each rotation extending it
//!   (`expires_at`, with its TTL). A revocation writes `revoked` with a TTL up to the family's
//!   expiry, then reads the expiry again and follows a rotation that extended it meanwhile; a
//!   rotation reads `revoked` after extending and, revoked, extends the revocation too: of the
//!   two, the later one to look sees the other's write, so no family outlives its revocation.
//! - **Verification emails** (`0009_secrets.cql`): the clear code the bridge is to email is one
//!   row of `verification_emails` by event id, with a TTL up to the code's expiry. Reads also
//!   check the expiry, so a record reads as gone from `expires_at` on whatever the TTL's
//!   rounding.

use scylla::{frame::types::Consistency, statement::prepared::PreparedStatement, value::CqlValue};

use super::*;
use super::{corrupt, raced, retry, ttl_until, Lwt, ScyllaStore};
use crate::AccountStore;
use crate::{account::*, Result, StoreError};

pub(super) struct AccountStatements {
    account_get: PreparedStatement,
    account_insert: PreparedStatement,
    account_delete: PreparedStatement,
    account_update: PreparedStatement,
    account_verify: PreparedStatement,
    account_first_page: PreparedStatement,
    account_page_after: PreparedStatement,
    email_get: PreparedStatement,
    email_claim: PreparedStatement,
    code_get: PreparedStatement,
    code_put: PreparedStatement,
    code_count: PreparedStatement,
    code_consume: PreparedStatement,
    code_drop: PreparedStatement,
    verification_email_put: PreparedStatement,
    verification_email_get: PreparedStatement,
    verification_email_delete: PreparedStatement,
    token_get: PreparedStatement,
    token_insert: PreparedStatement,
    token_use: PreparedStatement,
    family_get: PreparedStatement,
    family_insert: PreparedStatement,
    family_extend: PreparedStatement,
    family_revoke: PreparedStatement,
    families_of: PreparedStatement,
    marker_set: PreparedStatement,
}

const ACCOUNT_COLUMNS: &str =
    "customer_id, name, email, role, password_hash, verified, disabled, created_at, updated_at";

type AccountRow = (
    String,
    Option<String>,
    Option<String>,
    Option<String>,
    Option<String>,
    Option<bool>,
    Option<bool>,
    Option<i64>,
    Option<i64>,
);

fn account_of(row: AccountRow) -> Account {
    let (customer_id, name, email, role, password_hash, verified, disabled, created, updated) = row;
    Account {
        customer_id,
        name: name.unwrap_or_default(),
        email: email.unwrap_or_default(),
        role: role.unwrap_or_default(),
        password_hash: password_hash.unwrap_or_default(),
        verified: verified.unwrap_or(false),
        disabled: disabled.unwrap_or(false),
        created_at: created.unwrap_or(0),
        updated_at: updated.unwrap_or(0),
    }
}

type TokenRow = (Option<String>, Option<String>, Option<i64>, Option<bool>);

impl AccountStatements {
    pub(super) async fn prepare(
        session: &scylla::client::session::Session,
        ks: &str,
    ) -> Result<Self> {
        let p = |cql: String, serial_read: bool| async move {
            let mut statement = session
                .prepare(cql.clone())
                .await
                .map_err(|e| StoreError::Unavailable(format!("cannot prepare `{cql}`: {e}")))?;
            statement.set_is_idempotent(true);
            statement.set_consistency(if serial_read {
                Consistency::LocalSerial
            } else {
                Consistency::LocalQuorum
            });
            Ok::<_, StoreError>(statement)
        };
        let c = ACCOUNT_COLUMNS;
        Ok(AccountStatements {
            account_get: p(format!("SELECT {c} FROM {ks}.accounts WHERE customer_id = ?"), false).await?,
            account_insert: p(format!("INSERT INTO {ks}.accounts ({c}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"), false).await?,
            account_delete: p(format!("DELETE FROM {ks}.accounts WHERE customer_id = ?"), false).await?,
            account_update: p(format!("UPDATE {ks}.accounts SET name = ?, role = ?, password_hash = ?, verified = ?, disabled = ?, updated_at = ? WHERE customer_id = ? IF EXISTS"), false).await?,
            account_verify: p(format!("UPDATE {ks}.accounts SET verified = true, updated_at = ? WHERE customer_id = ? IF EXISTS"), false).await?,
            account_first_page: p(format!("SELECT {c} FROM {ks}.accounts LIMIT ?"), false).await?,
            account_page_after: p(format!("SELECT {c} FROM {ks}.accounts WHERE token(customer_id) > token(?) LIMIT ?"), false).await?,
            email_get: p(format!("SELECT customer_id FROM {ks}.accounts_by_email WHERE email = ?"), true).await?,
            email_claim: p(format!("INSERT INTO {ks}.accounts_by_email (email, customer_id) VALUES (?, ?) IF NOT EXISTS"), false).await?,
            code_get: p(format!("SELECT code_hash, expires_at, attempts FROM {ks}.verification_codes WHERE customer_id = ?"), true).await?,
            code_put: p(format!("INSERT INTO {ks}.verification_codes (customer_id, code_hash, expires_at, attempts) VALUES (?, ?, ?, ?)"), false).await?,
            code_count: p(format!("UPDATE {ks}.verification_codes SET attempts = ? WHERE customer_id = ? IF code_hash = ? AND attempts = ?"), false).await?,
            code_consume: p(format!("DELETE FROM {ks}.verification_codes WHERE customer_id = ? IF code_hash = ? AND attempts = ?"), false).await?,
            code_drop: p(format!("DELETE FROM {ks}.verification_codes WHERE customer_id = ? IF code_hash = ?"), false).await?,
            verification_email_put: p(format!("INSERT INTO {ks}.verification_emails (event_id, code, expires_at) VALUES (?, ?, ?) USING TTL ?"), false).await?,
            verification_email_get: p(format!("SELECT code, expires_at FROM {ks}.verification_emails WHERE event_id = ?"), false).await?,
            verification_email_delete: p(format!("DELETE FROM {ks}.verification_emails WHERE event_id = ?"), false).await?,
            token_get: p(format!("SELECT family_id, customer_id, expires_at, used FROM {ks}.refresh_tokens WHERE token_hash = ?"), true).await?,
            token_insert: p(format!("INSERT INTO {ks}.refresh_tokens (token_hash, family_id, customer_id, expires_at, used) VALUES (?, ?, ?, ?, false) USING TTL ?"), false).await?,
            token_use: p(format!("UPDATE {ks}.refresh_tokens USING TTL ? SET used = true WHERE token_hash = ? IF used = false"), false).await?,
            family_get: p(format!("SELECT revoked, expires_at FROM {ks}.refresh_families WHERE customer_id = ? AND family_id = ?"), true).await?,
            family_insert: p(format!("INSERT INTO {ks}.refresh_families (customer_id, family_id, revoked, expires_at) VALUES (?, ?, false, ?) IF NOT EXISTS USING TTL ?"), false).await?,
            family_extend: p(format!("UPDATE {ks}.refresh_families USING TTL ? SET expires_at = ? WHERE customer_id = ? AND family_id = ?"), false).await?,
            family_revoke: p(format!("UPDATE {ks}.refresh_families USING TTL ? SET revoked = true WHERE customer_id = ? AND family_id = ?"), false).await?,
            families_of: p(format!("SELECT family_id FROM {ks}.refresh_families WHERE customer_id = ?"), false).await?,
            marker_set: p(format!("INSERT INTO {ks}.markers (name, at) VALUES (?, ?) IF NOT EXISTS"), false).await?,
        })
    }
}

fn boolean(lwt: &Lwt, name: &str) -> Option<bool> {
    match lwt.value(name) {
        Some(CqlValue::Boolean(b)) => Some(*b),
        _ => None,
    }
}

impl ScyllaStore {
    fn a(&self) -> &AccountStatements {
        &self.accounts
    }

    pub(super) async fn create_account_impl(&self, account: &Account) -> Result<bool> {
        retry("create_account", || async {
            let a = account;
            self.run(
                &self.a().account_insert,
                (
                    a.customer_id.as_str(),
                    a.name.as_str(),
                    a.email.as_str(),
                    a.role.as_str(),
                    a.password_hash.as_str(),
                    a.verified,
                    a.disabled,
                    a.created_at,
                    a.updated_at,
                ),
            )
            .await?;
            let claim = self
                .lwt(
                    &self.a().email_claim,
                    (a.email.as_str(), a.customer_id.as_str()),
                )
                .await?;
            if claim.applied {
                return Ok(true);
            }
            match claim.text("customer_id") {
                // Our own claim, from an earlier attempt whose answer was lost.
                Some(owner) if owner == a.customer_id => Ok(true),
                Some(_) => {
                    self.run(&self.a().account_delete, (a.customer_id.as_str(),))
                        .await?;
                    Ok(false)
                }
                None => Err(raced()),
            }
        })
        .await
    }

    pub(super) async fn get_account_impl(&self, customer_id: &str) -> Result<Option<Account>> {
        Ok(self
            .first::<AccountRow>(&self.a().account_get, (customer_id,))
            .await?
            .map(account_of))
    }

    pub(super) async fn get_account_by_email_impl(&self, email: &str) -> Result<Option<Account>> {
        let Some((Some(id),)) = self
            .first::<(Option<String>,)>(&self.a().email_get, (email,))
            .await?
        else {
            return Ok(None);
        };
        self.get_account_impl(&id).await
    }

    pub(super) async fn update_account_impl(&self, a: &Account) -> Result<bool> {
        retry("update_account", || async {
            let lwt = self
                .lwt(
                    &self.a().account_update,
                    (
                        a.name.as_str(),
                        a.role.as_str(),
                        a.password_hash.as_str(),
                        a.verified,
                        a.disabled,
                        a.updated_at,
                        a.customer_id.as_str(),
                    ),
                )
                .await?;
            Ok(lwt.applied)
        })
        .await
    }

    pub(super) async fn list_accounts_impl(
        &self,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<Account>> {
        let limit = i32::try_from(limit).unwrap_or(i32::MAX);
        if limit == 0 {
            return Ok(Vec::new());
        }
        let rows: Vec<AccountRow> = match after {
            Some(after) => {
                self.rows(&self.a().account_page_after, (after, limit))
                    .await?
            }
            None => self.rows(&self.a().account_first_page, (limit,)).await?,
        };
        Ok(rows.into_iter().map(account_of).collect())
    }

    pub(super) async fn put_verification_impl(&self, code: &VerificationCode) -> Result<()> {
        let attempts = i32::try_from(code.attempts).unwrap_or(i32::MAX);
        self.run(
            &self.a().code_put,
            (
                code.customer_id.as_str(),
                code.code_hash.as_str(),
                code.expires_at,
                attempts,
            ),
        )
        .await
        .map(|_| ())
    }

    async fn check_verification_once(
        &self,
        customer_id: &str,
        code_hash: &str,
        now: i64,
    ) -> Result<VerifyOutcome> {
        let Some((Some(stored), expires_at, attempts)) = self
            .first::<(Option<String>, Option<i64>, Option<i32>)>(&self.a().code_get, (customer_id,))
            .await?
        else {
            return Ok(VerifyOutcome::NoCode);
        };
        let attempts = attempts.unwrap_or(0);
        let max = i32::try_from(MAX_VERIFICATION_ATTEMPTS).unwrap_or(i32::MAX);
        if attempts >= max {
            self.lwt(&self.a().code_drop, (customer_id, stored.as_str()))
                .await?;
            return Ok(VerifyOutcome::NoCode);
        }
        if expires_at.unwrap_or(0) <= now {
            self.lwt(&self.a().code_drop, (customer_id, stored.as_str()))
                .await?;
            return Ok(VerifyOutcome::Expired);
        }
        if stored != code_hash {
            let next = attempts + 1;
            let lwt = if next >= max {
                self.lwt(
                    &self.a().code_consume,
                    (customer_id, stored.as_str(), attempts),
                )
                .await?
            } else {
                self.lwt(
                    &self.a().code_count,
                    (next, customer_id, stored.as_str(), attempts),
                )
                .await?
            };
            if !lwt.applied {
                return Err(raced());
            }
            return Ok(VerifyOutcome::Wrong {
                remaining: u32::try_from(max - next).unwrap_or(0),
            });
        }
        let consumed = self
            .lwt(
                &self.a().code_consume,
                (customer_id, stored.as_str(), attempts),
            )
            .await?;
        if !consumed.applied {
            return Err(raced());
        }
        retry("verify_account", || async {
            self.lwt(&self.a().account_verify, (now, customer_id))
                .await
                .map(|_| ())
        })
        .await?;
        Ok(VerifyOutcome::Verified)
    }

    pub(super) async fn check_verification_impl(
        &self,
        customer_id: &str,
        code_hash: &str,
        now: i64,
    ) -> Result<VerifyOutcome> {
        retry("check_verification", || {
            self.check_verification_once(customer_id, code_hash, now)
        })
        .await
    }

    pub(super) async fn put_verification_email_impl(
        &self,
        email: &VerificationEmail,
    ) -> Result<()> {
        let ttl = ttl_until(email.expires_at, orderflow_schemas::now_millis());
        self.run(
            &self.a().verification_email_put,
            (
                email.event_id.as_str(),
                email.code.as_str(),
                email.expires_at,
                ttl,
            ),
        )
        .await
        .map(|_| ())
    }

    pub(super) async fn get_verification_email_impl(
        &self,
        event_id: &str,
        now: i64,
    ) -> Result<Option<VerificationEmail>> {
        let row = self
            .first::<(Option<String>, Option<i64>)>(&self.a().verification_email_get, (event_id,))
            .await?;
        Ok(match row {
            Some((Some(code), Some(expires_at))) if expires_at > now => Some(VerificationEmail {
                event_id: event_id.to_string(),
                code,
                expires_at,
            }),
            _ => None,
        })
    }

    pub(super) async fn delete_verification_email_impl(&self, event_id: &str) -> Result<()> {
        self.run(&self.a().verification_email_delete, (event_id,))
            .await
            .map(|_| ())
    }

    pub(super) async fn create_refresh_token_impl(&self, t: &RefreshToken) -> Result<()> {
        retry("create_refresh_token", || async {
            let ttl = ttl_until(t.expires_at, now_millis());
            self.lwt(
                &self.a().family_insert,
                (
                    t.customer_id.as_str(),
                    t.family_id.as_str(),
                    t.expires_at,
                    ttl,
                ),
            )
            .await?;
            self.run(
                &self.a().token_insert,
                (
                    t.token_hash.as_str(),
                    t.family_id.as_str(),
                    t.customer_id.as_str(),
                    t.expires_at,
                    ttl,
                ),
            )
            .await
            .map(|_| ())
        })
        .await
    }

    /// The family's row: whether it is revoked and when its last token expires (`None` for a
    /// row written before families expired); `None` when there is no such family.
    async fn family(
        &self,
        customer_id: &str,
        family_id: &str,
    ) -> Result<Option<(bool, Option<i64>)>> {
        Ok(self
            .first::<(Option<bool>, Option<i64>)>(&self.a().family_get, (customer_id, family_id))
            .await?
            .map(|(revoked, expires_at)| (revoked.unwrap_or(false), expires_at)))
    }

    pub(super) async fn family_revoked(&self, customer_id: &str, family_id: &str) -> Result<bool> {
        Ok(self
            .family(customer_id, family_id)
            .await?
            // A family never stored (or expired) is no login: nothing may use it.
            .is_none_or(|(revoked, _)| revoked))
    }

    /// Revokes the family until it expires, following a rotation that extends it meanwhile;
    /// a family that is gone (expired) is revoked already.
    async fn revoke_family(&self, customer_id: &str, family_id: &str) -> Result<()> {
        let Some((_, mut expires_at)) = self.family(customer_id, family_id).await? else {
            return Ok(());
        };
        loop {
            // A row from before families expired: revoked for good, as it was written.
            let ttl = expires_at.map_or(0, |at| ttl_until(at, now_millis()));
            self.run(&self.a().family_revoke, (ttl, customer_id, family_id))
                .await?;
            let Some((_, now_expires_at)) = self.family(customer_id, family_id).await? else {
                return Ok(());
            };
            if expires_at.is_none() || now_expires_at <= expires_at {
                return Ok(());
            }
            expires_at = now_expires_at;
        }
    }

    async fn rotate_once(
        &self,
        presented: &str,
        next_hash: &str,
        next_expires_at: i64,
        now: i64,
    ) -> Result<RotateOutcome> {
        let Some((Some(family_id), Some(customer_id), expires_at, used)) = self
            .first::<TokenRow>(&self.a().token_get, (presented,))
            .await?
        else {
            return Ok(RotateOutcome::Unknown);
        };
        if self.family_revoked(&customer_id, &family_id).await? {
            return Ok(RotateOutcome::Revoked);
        }
        if used.unwrap_or(false) {
            self.revoke_family(&customer_id, &family_id).await?;
            return Ok(RotateOutcome::Reused);
        }
        if expires_at.unwrap_or(0) <= now {
            return Ok(RotateOutcome::Expired);
        }
        // The successor first: nobody knows it until the exchange below wins.
        let next_ttl = ttl_until(next_expires_at, now);
        self.run(
            &self.a().token_insert,
            (
                next_hash,
                family_id.as_str(),
                customer_id.as_str(),
                next_expires_at,
                next_ttl,
            ),
        )
        .await?;
        let presented_ttl = ttl_until(expires_at.unwrap_or(0), now);
        let exchange = self
            .lwt(&self.a().token_use, (presented_ttl, presented))
            .await?;
        if exchange.applied {
            // The family lives as long as its newest token; then, a revocation that raced
            // this is made to last as long (see the module's notes).
            self.run(
                &self.a().family_extend,
                (
                    next_ttl,
                    next_expires_at,
                    customer_id.as_str(),
                    family_id.as_str(),
                ),
            )
            .await?;
            if self.family_revoked(&customer_id, &family_id).await? {
                self.revoke_family(&customer_id, &family_id).await?;
                return Ok(RotateOutcome::Revoked);
            }
            return Ok(RotateOutcome::Rotated {
                customer_id,
                family_id,
            });
        }
        match boolean(&exchange, "used") {
            // Someone exchanged it first: a reuse.
            Some(true) => {
                self.revoke_family(&customer_id, &family_id).await?;
                Ok(RotateOutcome::Reused)
            }
            _ => Err(corrupt(format!("refresh token {presented} has no `used`"))),
        }
    }

    pub(super) async fn rotate_refresh_token_impl(
        &self,
        presented: &str,
        next_hash: &str,
        next_expires_at: i64,
        now: i64,
    ) -> Result<RotateOutcome> {
        // Not retried: a lost answer of an exchange that won would make the retry a "reuse".
        self.rotate_once(presented, next_hash, next_expires_at, now)
            .await
    }

    pub(super) async fn revoke_refresh_family_impl(&self, token_hash: &str) -> Result<bool> {
        let Some((Some(family_id), Some(customer_id), _, _)) = self
            .first::<TokenRow>(&self.a().token_get, (token_hash,))
            .await?
        else {
            return Ok(false);
        };
        retry("revoke_refresh_family", || {
            self.revoke_family(&customer_id, &family_id)
        })
        .await?;
        Ok(true)
    }

    pub(super) async fn revoke_customer_refresh_tokens_impl(
        &self,
        customer_id: &str,
        keep: Option<&str>,
    ) -> Result<()> {
        let families: Vec<(String,)> = self.rows(&self.a().families_of, (customer_id,)).await?;
        for (family_id,) in families {
            if keep == Some(family_id.as_str()) {
                continue;
            }
            retry("revoke_customer_refresh_tokens", || {
                self.revoke_family(customer_id, &family_id)
            })
            .await?;
        }
        Ok(())
    }

    pub(super) async fn set_marker_impl(&self, name: &str, at: i64) -> Result<bool> {
        let lwt = self.lwt(&self.a().marker_set, (name, at)).await?;
        Ok(lwt.applied)
    }
}

#[async_trait]
impl AccountStore for ScyllaStore {
    async fn create_account(&self, account: Account) -> Result<bool> {
        self.create_account_impl(&account).await
    }

    async fn get_account(&self, customer_id: &str) -> Result<Option<Account>> {
        self.get_account_impl(customer_id).await
    }

    async fn get_account_by_email(&self, email: &str) -> Result<Option<Account>> {
        self.get_account_by_email_impl(email).await
    }

    async fn update_account(&self, account: Account) -> Result<bool> {
        self.update_account_impl(&account).await
    }

    async fn list_accounts(&self, after: Option<&str>, limit: usize) -> Result<Vec<Account>> {
        self.list_accounts_impl(after, limit).await
    }

    async fn put_verification(&self, code: VerificationCode) -> Result<()> {
        self.put_verification_impl(&code).await
    }

    async fn put_verification_email(
        &self,
        email: VerificationEmail,
        announce: Option<crate::OutboxEvent>,
    ) -> Result<()> {
        let Some(event) = announce else {
            return retry("put_verification_email", || {
                self.put_verification_email_impl(&email)
            })
            .await;
        };
        // The event's intent first, confirmed by the email's record ([`super::outbox`]).
        let announce = self.announce_whole(&event, &email.event_id)?;
        retry("put_verification_email", || {
            announce.decide(self.put_verification_email_impl(&email))
        })
        .await
    }

    async fn get_verification_email(
        &self,
        event_id: &str,
        now: i64,
    ) -> Result<Option<VerificationEmail>> {
        retry("get_verification_email", || {
            self.get_verification_email_impl(event_id, now)
        })
        .await
    }

    async fn delete_verification_email(&self, event_id: &str) -> Result<()> {
        retry("delete_verification_email", || {
            self.delete_verification_email_impl(event_id)
        })
        .await
    }

    async fn check_verification(
        &self,
        customer_id: &str,
        code_hash: &str,
        now: i64,
    ) -> Result<VerifyOutcome> {
        self.check_verification_impl(customer_id, code_hash, now)
            .await
    }

    async fn create_refresh_token(&self, token: RefreshToken) -> Result<()> {
        self.create_refresh_token_impl(&token).await
    }

    async fn rotate_refresh_token(
        &self,
        presented: &str,
        next_hash: &str,
        next_expires_at: i64,
        now: i64,
    ) -> Result<RotateOutcome> {
        self.rotate_refresh_token_impl(presented, next_hash, next_expires_at, now)
            .await
    }

    async fn revoke_refresh_family(&self, token_hash: &str) -> Result<bool> {
        self.revoke_refresh_family_impl(token_hash).await
    }

    async fn revoke_customer_refresh_tokens(
        &self,
        customer_id: &str,
        keep: Option<&str>,
    ) -> Result<()> {
        self.revoke_customer_refresh_tokens_impl(customer_id, keep)
            .await
    }

    async fn refresh_family_revoked(&self, customer_id: &str, family_id: &str) -> Result<bool> {
        retry("refresh_family_revoked", || {
            self.family_revoked(customer_id, family_id)
        })
        .await
    }
}
