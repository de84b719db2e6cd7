//! Secrets kept off the topics: payment tokens and verification emails.

use super::*;

// Secrets kept off the topics: payment tokens and verification emails. Their times are the wall
// clock's (stores drop expired secrets by it).

/// A card order's token is written with the order, read back until it is deleted, its charge's
/// outcome recorded, or it expires, and left alone by a replay of the order's idempotency key;
/// deleting is idempotent.
pub(crate) async fn check_payment_tokens_live_with_their_order(store: Arc<dyn Store>) {
    let now = orderflow_schemas::now_millis();
    let customer = unique("customer");
    let token = |t: &str, expires_at: i64| PaymentToken {
        token: format!("tok_conformance_{t}"),
        expires_at,
    };
    let key = IdempotencyKey {
        key: unique("key"),
        fingerprint: "request-1".into(),
        expires_at: now + DAY_MS,
    };
    let card = order(&customer, now);
    assert_eq!(
        store
            .create_order(
                card.clone(),
                Some(key.clone()),
                Some(token("first", now + DAY_MS)),
                None,
            )
            .await
            .unwrap(),
        CreateOrder::Created
    );
    assert_eq!(
        store.get_payment_token(&card.order_id, now).await.unwrap(),
        Some(token("first", now + DAY_MS))
    );
    // Expired at its expiry, whatever is still stored.
    assert_eq!(
        store
            .get_payment_token(&card.order_id, now + DAY_MS)
            .await
            .unwrap(),
        None
    );
    // A replay of the key writes nothing: the first token stays.
    let replay = store
        .create_order(
            order(&customer, now + 1),
            Some(key),
            Some(token("second", now + DAY_MS)),
            None,
        )
        .await
        .unwrap();
    assert!(matches!(replay, CreateOrder::Existing(_)), "{replay:?}");
    assert_eq!(
        store.get_payment_token(&card.order_id, now).await.unwrap(),
        Some(token("first", now + DAY_MS))
    );
    // The read model does not show it.
    let record = store.get_order(&card.order_id).await.unwrap().unwrap();
    assert!(!format!("{record:?}").contains("tok_conformance"));
    assert!(!format!("{:?}", token("first", 0)).contains("tok_conformance"));

    // Deleted (the charge's outcome is recorded): gone, and deleting again is fine.
    store.delete_payment_token(&card.order_id).await.unwrap();
    assert_eq!(
        store.get_payment_token(&card.order_id, now).await.unwrap(),
        None
    );
    store.delete_payment_token(&card.order_id).await.unwrap();
    store.delete_payment_token(&new_id()).await.unwrap();

    // An order without a token (bank transfer) has none; one stored already expired reads as
    // gone; others' tokens are their own.
    let transfer = order(&customer, now);
    store
        .create_order(transfer.clone(), None, None, None)
        .await
        .unwrap();
    assert_eq!(
        store
            .get_payment_token(&transfer.order_id, now)
            .await
            .unwrap(),
        None
    );
    let stale = order(&customer, now);
    store
        .create_order(stale.clone(), None, Some(token("stale", now - 1)), None)
        .await
        .unwrap();
    assert_eq!(
        store.get_payment_token(&stale.order_id, now).await.unwrap(),
        None
    );
    let other = order(&customer, now);
    store
        .create_order(
            other.clone(),
            None,
            Some(token("other", now + DAY_MS)),
            None,
        )
        .await
        .unwrap();
    store.delete_payment_token(&stale.order_id).await.unwrap();
    assert_eq!(
        store.get_payment_token(&other.order_id, now).await.unwrap(),
        Some(token("other", now + DAY_MS))
    );

    // Recording the charge's outcome forgets the token it was kept for, and only that one.
    let charged = order(&customer, now);
    store
        .create_order(
            charged.clone(),
            None,
            Some(token("charged", now + DAY_MS)),
            None,
        )
        .await
        .unwrap();
    let outcome = payment(&charged.order_id, false, "ch_secrets");
    assert_eq!(
        store.record_payment(outcome.clone()).await.unwrap(),
        outcome
    );
    assert_eq!(
        store
            .get_payment_token(&charged.order_id, now)
            .await
            .unwrap(),
        None
    );
    assert_eq!(
        store.get_payment_token(&other.order_id, now).await.unwrap(),
        Some(token("other", now + DAY_MS))
    );
}

/// A verification email's code is kept by event id until it is deleted (sent) or expires;
/// a second put for the same event replaces it; deleting is idempotent.
pub(crate) async fn check_verification_emails_live_until_sent(store: Arc<dyn Store>) {
    let now = orderflow_schemas::now_millis();
    let email = |event_id: &str, code: &str, expires_at: i64| VerificationEmail {
        event_id: event_id.into(),
        code: code.into(),
        expires_at,
    };
    let first = unique("c1:verify");
    let second = unique("c1:verify");
    store
        .put_verification_email(email(&first, "123456", now + 900_000), None)
        .await
        .unwrap();
    store
        .put_verification_email(email(&second, "654321", now + 900_000), None)
        .await
        .unwrap();
    assert_eq!(
        store.get_verification_email(&first, now).await.unwrap(),
        Some(email(&first, "123456", now + 900_000))
    );
    assert_eq!(
        store
            .get_verification_email(&first, now + 900_000)
            .await
            .unwrap(),
        None
    );
    assert!(!format!("{:?}", email(&first, "123456", 0)).contains("123456"));

    store
        .put_verification_email(email(&first, "111111", now + 600_000), None)
        .await
        .unwrap();
    assert_eq!(
        store.get_verification_email(&first, now).await.unwrap(),
        Some(email(&first, "111111", now + 600_000))
    );

    store.delete_verification_email(&first).await.unwrap();
    assert_eq!(
        store.get_verification_email(&first, now).await.unwrap(),
        None
    );
    store.delete_verification_email(&first).await.unwrap();
    assert_eq!(
        store.get_verification_email(&second, now).await.unwrap(),
        Some(email(&second, "654321", now + 900_000))
    );
    assert_eq!(
        store
            .get_verification_email(&unique("c1:verify"), now)
            .await
            .unwrap(),
        None
    );

    let stale = unique("c1:verify");
    store
        .put_verification_email(email(&stale, "999999", now - 1), None)
        .await
        .unwrap();
    assert_eq!(
        store.get_verification_email(&stale, now).await.unwrap(),
        None
    );
}
