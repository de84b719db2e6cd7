//! Accounts, verification codes, refresh tokens, markers.

use super::*;

// Accounts

pub(crate) fn account(email: &str) -> Account {
    Account {
        customer_id: new_id(),
        name: "Ada".into(),
        email: email.into(),
        role: "customer".into(),
        password_hash: "$argon2id$v=19$m=19456,t=2,p=1$c2FsdA$aGFzaA".into(),
        verified: false,
        disabled: false,
        created_at: T0,
        updated_at: T0,
    }
}

pub(crate) fn refresh(customer_id: &str, family_id: &str, expires_at: i64) -> RefreshToken {
    RefreshToken {
        token_hash: unique("token"),
        family_id: family_id.into(),
        customer_id: customer_id.into(),
        expires_at,
        used: false,
    }
}

/// Of many concurrent creates with one email exactly one wins, and the email finds it.
pub(crate) async fn check_account_emails_are_unique(store: Arc<dyn Store>) {
    let email = format!("{}@example.com", unique("u"));
    let barrier = Arc::new(Barrier::new(8));
    let handles = (0..8)
        .map(|_| {
            let (store, barrier, email) = (store.clone(), barrier.clone(), email.clone());
            tokio::spawn(async move {
                let a = account(&email);
                barrier.wait().await;
                (store.create_account(a.clone()).await.unwrap(), a)
            })
        })
        .collect();
    let results = join(handles).await;
    let winners: Vec<&Account> = results
        .iter()
        .filter(|(ok, _)| *ok)
        .map(|(_, a)| a)
        .collect();
    assert_eq!(winners.len(), 1, "exactly one create wins");
    let winner = winners[0];
    assert_eq!(
        store.get_account_by_email(&email).await.unwrap().as_ref(),
        Some(winner)
    );
    assert_eq!(
        store
            .get_account(&winner.customer_id)
            .await
            .unwrap()
            .as_ref(),
        Some(winner)
    );
    // The losers left nothing behind.
    for (_, loser) in results.iter().filter(|(ok, _)| !*ok) {
        assert_eq!(store.get_account(&loser.customer_id).await.unwrap(), None);
    }
    // Creating the winner again (a retry) is fine; another account with its email is not.
    assert!(store.create_account(winner.clone()).await.unwrap());
    assert!(!store.create_account(account(&email)).await.unwrap());
    assert_eq!(
        store
            .get_account_by_email("nobody@example.com")
            .await
            .unwrap(),
        None
    );
}

/// Updates keep the email and creation time; pages cover every account once.
pub(crate) async fn check_accounts_update_and_page(store: Arc<dyn Store>) {
    let prefix = unique("page");
    let mut mine = Vec::new();
    for i in 0..5 {
        let a = account(&format!("{prefix}-{i}@example.com"));
        assert!(store.create_account(a.clone()).await.unwrap());
        mine.push(a);
    }
    let changed = Account {
        name: "Grace".into(),
        role: "admin".into(),
        email: "ignored@example.com".into(),
        disabled: true,
        created_at: T0 + 5,
        updated_at: T0 + 10,
        ..mine[0].clone()
    };
    assert!(store.update_account(changed).await.unwrap());
    let read = store
        .get_account(&mine[0].customer_id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        read,
        Account {
            name: "Grace".into(),
            role: "admin".into(),
            disabled: true,
            updated_at: T0 + 10,
            ..mine[0].clone()
        }
    );
    assert!(!store
        .update_account(account("x@example.com"))
        .await
        .unwrap());

    let mut seen = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let page = store.list_accounts(after.as_deref(), 2).await.unwrap();
        assert!(page.len() <= 2);
        let Some(last) = page.last() else { break };
        after = Some(last.customer_id.clone());
        seen.extend(page.into_iter().map(|a| a.customer_id));
    }
    let unique_seen: BTreeSet<&String> = seen.iter().collect();
    assert_eq!(unique_seen.len(), seen.len(), "no account is listed twice");
    for a in &mine {
        assert!(seen.contains(&a.customer_id), "{} is listed", a.customer_id);
    }
    assert!(store.list_accounts(None, 0).await.unwrap().is_empty());
}

/// A code verifies once; wrong tries are counted and kill it; an expired code is refused.
pub(crate) async fn check_verification_codes(store: Arc<dyn Store>) {
    let a = account(&format!("{}@example.com", unique("v")));
    store.create_account(a.clone()).await.unwrap();
    let id = a.customer_id.as_str();
    assert_eq!(
        store.check_verification(id, "h", T0).await.unwrap(),
        VerifyOutcome::NoCode
    );
    let code = VerificationCode {
        customer_id: id.into(),
        code_hash: "right".into(),
        expires_at: T0 + 1000,
        attempts: 0,
    };
    store.put_verification(code.clone()).await.unwrap();
    assert_eq!(
        store.check_verification(id, "wrong", T0).await.unwrap(),
        VerifyOutcome::Wrong {
            remaining: MAX_VERIFICATION_ATTEMPTS - 1
        }
    );
    assert_eq!(
        store.check_verification(id, "right", T0).await.unwrap(),
        VerifyOutcome::Verified
    );
    assert!(store.get_account(id).await.unwrap().unwrap().verified);
    // Used up.
    assert_eq!(
        store.check_verification(id, "right", T0).await.unwrap(),
        VerifyOutcome::NoCode
    );

    // Wrong tries kill a code, even the right one after.
    store.put_verification(code.clone()).await.unwrap();
    for i in 1..=MAX_VERIFICATION_ATTEMPTS {
        assert_eq!(
            store.check_verification(id, "wrong", T0).await.unwrap(),
            VerifyOutcome::Wrong {
                remaining: MAX_VERIFICATION_ATTEMPTS - i
            }
        );
    }
    assert_eq!(
        store.check_verification(id, "right", T0).await.unwrap(),
        VerifyOutcome::NoCode
    );

    // Expired.
    store.put_verification(code).await.unwrap();
    assert_eq!(
        store
            .check_verification(id, "right", T0 + 1000)
            .await
            .unwrap(),
        VerifyOutcome::Expired
    );
    assert_eq!(
        store.check_verification(id, "right", T0).await.unwrap(),
        VerifyOutcome::NoCode
    );
}

/// Rotation hands on the family; a reuse, a logout or disabling the account revokes it.
pub(crate) async fn check_refresh_tokens_rotate_and_revoke(store: Arc<dyn Store>) {
    // Refresh tokens expire by the store's own clock (pruned as tokens are written, or a
    // TTL), so their times are from now.
    let t0 = orderflow_schemas::now_millis();
    let customer = new_id();
    let family = new_id();
    let first = refresh(&customer, &family, t0 + DAY_MS);
    store.create_refresh_token(first.clone()).await.unwrap();
    let second = unique("token");
    assert_eq!(
        store
            .rotate_refresh_token(&first.token_hash, &second, t0 + DAY_MS, t0)
            .await
            .unwrap(),
        RotateOutcome::Rotated {
            customer_id: customer.clone(),
            family_id: family.clone(),
        }
    );
    assert!(!store
        .refresh_family_revoked(&customer, &family)
        .await
        .unwrap());
    // The first token again: a reuse, which revokes the family, the second token too.
    assert_eq!(
        store
            .rotate_refresh_token(&first.token_hash, &unique("token"), t0 + DAY_MS, t0)
            .await
            .unwrap(),
        RotateOutcome::Reused
    );
    assert!(store
        .refresh_family_revoked(&customer, &family)
        .await
        .unwrap());
    assert!(
        store
            .refresh_family_revoked(&customer, &new_id())
            .await
            .unwrap(),
        "a family never stored is no login: revoked"
    );
    assert!(
        store
            .refresh_family_revoked(&new_id(), &family)
            .await
            .unwrap(),
        "a family is another customer's login: revoked for this one"
    );
    assert_eq!(
        store
            .rotate_refresh_token(&second, &unique("token"), t0 + DAY_MS, t0)
            .await
            .unwrap(),
        RotateOutcome::Revoked
    );
    assert_eq!(
        store
            .rotate_refresh_token("no-such-token", &unique("token"), t0 + DAY_MS, t0)
            .await
            .unwrap(),
        RotateOutcome::Unknown
    );

    // Logout revokes the family of the token it is given.
    let login = refresh(&customer, &new_id(), t0 + DAY_MS);
    store.create_refresh_token(login.clone()).await.unwrap();
    assert!(store
        .revoke_refresh_family(&login.token_hash)
        .await
        .unwrap());
    assert!(!store.revoke_refresh_family("no-such-token").await.unwrap());
    assert_eq!(
        store
            .rotate_refresh_token(&login.token_hash, &unique("token"), t0 + DAY_MS, t0)
            .await
            .unwrap(),
        RotateOutcome::Revoked
    );

    // Expired.
    let old = refresh(&customer, &new_id(), t0 + 60_000);
    store.create_refresh_token(old.clone()).await.unwrap();
    assert_eq!(
        store
            .rotate_refresh_token(&old.token_hash, &unique("token"), t0 + DAY_MS, t0 + 60_000)
            .await
            .unwrap(),
        RotateOutcome::Expired
    );

    // Disabling the account revokes every family of it, and only its.
    let (a, b) = (
        refresh(&customer, &new_id(), t0 + DAY_MS),
        refresh(&customer, &new_id(), t0 + DAY_MS),
    );
    let other = refresh(&new_id(), &new_id(), t0 + DAY_MS);
    for t in [&a, &b, &other] {
        store.create_refresh_token(t.clone()).await.unwrap();
    }
    store
        .revoke_customer_refresh_tokens(&customer, None)
        .await
        .unwrap();
    for t in [&a, &b] {
        assert!(store
            .refresh_family_revoked(&customer, &t.family_id)
            .await
            .unwrap());
        assert_eq!(
            store
                .rotate_refresh_token(&t.token_hash, &unique("token"), t0 + DAY_MS, t0)
                .await
                .unwrap(),
            RotateOutcome::Revoked
        );
    }
    assert!(matches!(
        store
            .rotate_refresh_token(&other.token_hash, &unique("token"), t0 + DAY_MS, t0)
            .await
            .unwrap(),
        RotateOutcome::Rotated { .. }
    ));

    // A password change revokes every family of the account but the login that made it.
    let (kept, ended) = (
        refresh(&customer, &new_id(), t0 + DAY_MS),
        refresh(&customer, &new_id(), t0 + DAY_MS),
    );
    for t in [&kept, &ended] {
        store.create_refresh_token(t.clone()).await.unwrap();
    }
    store
        .revoke_customer_refresh_tokens(&customer, Some(&kept.family_id))
        .await
        .unwrap();
    assert!(store
        .refresh_family_revoked(&customer, &ended.family_id)
        .await
        .unwrap());
    assert!(!store
        .refresh_family_revoked(&customer, &kept.family_id)
        .await
        .unwrap());
    assert!(matches!(
        store
            .rotate_refresh_token(&kept.token_hash, &unique("token"), t0 + DAY_MS, t0)
            .await
            .unwrap(),
        RotateOutcome::Rotated { .. }
    ));
}

/// Of concurrent exchanges of one token, exactly one gets a new token.
pub(crate) async fn check_a_refresh_token_rotates_once(store: Arc<dyn Store>) {
    // Refresh tokens expire by the store's own clock (pruned as tokens are written, or a
    // TTL), so their times are from now.
    let t0 = orderflow_schemas::now_millis();
    let token = refresh(&new_id(), &new_id(), t0 + DAY_MS);
    store.create_refresh_token(token.clone()).await.unwrap();
    let barrier = Arc::new(Barrier::new(6));
    let handles = (0..6)
        .map(|_| {
            let (store, barrier, hash) = (store.clone(), barrier.clone(), token.token_hash.clone());
            tokio::spawn(async move {
                barrier.wait().await;
                store
                    .rotate_refresh_token(&hash, &unique("token"), t0 + DAY_MS, t0)
                    .await
                    .unwrap()
            })
        })
        .collect();
    let outcomes = join(handles).await;
    let rotated = outcomes
        .iter()
        .filter(|o| matches!(o, RotateOutcome::Rotated { .. }))
        .count();
    assert_eq!(rotated, 1, "{outcomes:?}");
    assert!(outcomes.iter().all(|o| matches!(
        o,
        RotateOutcome::Rotated { .. } | RotateOutcome::Reused | RotateOutcome::Revoked
    )));
}

pub(crate) async fn check_markers_are_set_once(store: Arc<dyn Store>) {
    let name = unique("marker");
    assert!(store.set_marker(&name, T0).await.unwrap());
    assert!(!store.set_marker(&name, T0 + 1).await.unwrap());
}
