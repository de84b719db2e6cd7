//! [`AccountStore`] on redb.

use super::*;
use crate::AccountStore;

#[async_trait]
impl AccountStore for EmbeddedStore {
    async fn create_account(&self, account: Account) -> Result<bool> {
        self.write(move |txn| {
            let mut emails = txn.open_table(ACCOUNT_EMAILS).map_err(unavailable)?;
            let owner = emails
                .get(account.email.as_str())
                .map_err(unavailable)?
                .map(|g| g.value().to_string());
            match owner {
                Some(owner) => return Ok(owner == account.customer_id),
                None => {
                    emails
                        .insert(account.email.as_str(), account.customer_id.as_str())
                        .map_err(unavailable)?;
                }
            }
            drop(emails);
            put_json(txn, ACCOUNTS, &account.customer_id, &account)?;
            Ok(true)
        })
        .await
    }

    async fn get_account(&self, customer_id: &str) -> Result<Option<Account>> {
        let txn = self.read()?;
        let table = txn.open_table(ACCOUNTS).map_err(unavailable)?;
        get_json(&table, "account", customer_id)
    }

    async fn get_account_by_email(&self, email: &str) -> Result<Option<Account>> {
        let txn = self.read()?;
        let emails = txn.open_table(ACCOUNT_EMAILS).map_err(unavailable)?;
        let Some(id) = emails
            .get(email)
            .map_err(unavailable)?
            .map(|g| g.value().to_string())
        else {
            return Ok(None);
        };
        let table = txn.open_table(ACCOUNTS).map_err(unavailable)?;
        get_json(&table, "account", &id)
    }

    async fn update_account(&self, account: Account) -> Result<bool> {
        self.write(move |txn| {
            let table = txn.open_table(ACCOUNTS).map_err(unavailable)?;
            let Some(existing) = get_json::<Account, _>(&*table, "account", &account.customer_id)?
            else {
                return Ok(false);
            };
            drop(table);
            let updated = Account {
                email: existing.email,
                created_at: existing.created_at,
                ..account.clone()
            };
            put_json(txn, ACCOUNTS, &updated.customer_id, &updated)?;
            Ok(true)
        })
        .await
    }

    async fn list_accounts(&self, after: Option<&str>, limit: usize) -> Result<Vec<Account>> {
        let txn = self.read()?;
        let table = txn.open_table(ACCOUNTS).map_err(unavailable)?;
        let range = match after {
            Some(after) => {
                table.range::<&str>((std::ops::Bound::Excluded(after), std::ops::Bound::Unbounded))
            }
            None => table.range::<&str>(..),
        }
        .map_err(unavailable)?;
        let mut out = Vec::new();
        for entry in range.take(limit) {
            let (_, v) = entry.map_err(unavailable)?;
            out.push(from_bytes("account", v.value())?);
        }
        Ok(out)
    }

    async fn put_verification(&self, code: VerificationCode) -> Result<()> {
        self.write(move |txn| put_json(txn, VERIFICATIONS, &code.customer_id, &code))
            .await
    }

    async fn put_verification_email(
        &self,
        email: VerificationEmail,
        announce: Option<OutboxEvent>,
    ) -> Result<()> {
        self.write(move |txn| {
            VERIFICATION_EMAILS.purge(txn, orderflow_schemas::now_millis(), PURGE_BATCH)?;
            VERIFICATION_EMAILS.put(txn, &email.event_id, &email, email.expires_at)?;
            match &announce {
                Some(event) => queue_in(txn, event),
                None => Ok(()),
            }
        })
        .await
    }

    async fn get_verification_email(
        &self,
        event_id: &str,
        now: i64,
    ) -> Result<Option<VerificationEmail>> {
        VERIFICATION_EMAILS.get(&self.read()?, event_id, now)
    }

    async fn delete_verification_email(&self, event_id: &str) -> Result<()> {
        let event_id = event_id.to_string();
        self.write(move |txn| VERIFICATION_EMAILS.remove(txn, &event_id))
            .await
    }

    async fn check_verification(
        &self,
        customer_id: &str,
        code_hash: &str,
        now: i64,
    ) -> Result<VerifyOutcome> {
        let (customer_id, code_hash) = (customer_id.to_string(), code_hash.to_string());
        self.write(move |txn| check_verification_in(txn, &customer_id, &code_hash, now))
            .await
    }

    async fn create_refresh_token(&self, token: RefreshToken) -> Result<()> {
        self.write(move |txn| {
            let now = orderflow_schemas::now_millis();
            REFRESH_TOKENS.purge(txn, now, PURGE_BATCH)?;
            purge_families_in(txn, now, PURGE_BATCH)?;
            REFRESH_TOKENS.put(txn, &token.token_hash, &token, token.expires_at)?;
            let key = compound(&token.customer_id, &token.family_id);
            let mut families = txn.open_table(REFRESH_FAMILIES).map_err(unavailable)?;
            if families.get(key.as_str()).map_err(unavailable)?.is_none() {
                families.insert(key.as_str(), false).map_err(unavailable)?;
            }
            drop(families);
            extend_family_in(txn, &key, token.expires_at)
        })
        .await
    }

    async fn rotate_refresh_token(
        &self,
        presented: &str,
        next_hash: &str,
        next_expires_at: i64,
        now: i64,
    ) -> Result<RotateOutcome> {
        let (presented, next_hash) = (presented.to_string(), next_hash.to_string());
        self.write(move |txn| rotate_in(txn, &presented, &next_hash, next_expires_at, now))
            .await
    }

    async fn revoke_refresh_family(&self, token_hash: &str) -> Result<bool> {
        let token_hash = token_hash.to_string();
        self.write(move |txn| {
            let table = txn
                .open_table(REFRESH_TOKENS.records)
                .map_err(unavailable)?;
            let Some(token) = get_json::<RefreshToken, _>(&*table, "refresh token", &token_hash)?
            else {
                return Ok(false);
            };
            drop(table);
            revoke_family_in(txn, &token.customer_id, &token.family_id)?;
            Ok(true)
        })
        .await
    }

    async fn revoke_customer_refresh_tokens(
        &self,
        customer_id: &str,
        keep: Option<&str>,
    ) -> Result<()> {
        let customer_id = customer_id.to_string();
        let keep = keep.map(str::to_string);
        self.write(move |txn| {
            let table = txn.open_table(REFRESH_FAMILIES).map_err(unavailable)?;
            let (start, end) = (compound(&customer_id, ""), format!("{customer_id}\u{1}"));
            let mut families = Vec::new();
            for entry in table
                .range(start.as_str()..end.as_str())
                .map_err(unavailable)?
            {
                let (key, _) = entry.map_err(unavailable)?;
                if let Some((_, family)) = key.value().split_once('\u{0}') {
                    if keep.as_deref() != Some(family) {
                        families.push(family.to_string());
                    }
                }
            }
            drop(table);
            for family in &families {
                revoke_family_in(txn, &customer_id, family)?;
            }
            Ok(())
        })
        .await
    }

    async fn refresh_family_revoked(&self, customer_id: &str, family_id: &str) -> Result<bool> {
        let txn = self.read()?;
        let table = txn.open_table(REFRESH_FAMILIES).map_err(unavailable)?;
        revoked_in(&table, customer_id, family_id)
    }
}
