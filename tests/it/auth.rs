//! Accounts and auth through the real `orderflow run`: register, verify with the
//! code the bridge wrote to the file sink, log in, order, download the invoice PDF, rotate and reuse
//! refresh tokens, log out; the seeded accounts; customers' access to each other; every bad
//! input named by field; rate limits (by the client IP a trusted proxy names); register and
//! verify telling nothing about other accounts; password changes; expired and tampered
//! tokens; and `orderflow ingest` refusing the development secret.

use crate::common;

use std::process::Command;

use common::Pipeline;
use orderflow_ingest::auth::{Claims, Role, TokenKeys, ISSUER};
use reqwest::{Response, StatusCode};
use serde_json::{json, Value};

async fn post(p: &Pipeline, path: &str, body: Value) -> Response {
    p.anonymous
        .post(p.url(path))
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .await
        .unwrap()
}

async fn call(
    p: &Pipeline,
    method: &str,
    path: &str,
    token: &str,
    body: Option<Value>,
) -> Response {
    let mut request = p
        .client
        .request(method.parse().unwrap(), p.url(path))
        .bearer_auth(token);
    if let Some(body) = body {
        request = request
            .header("content-type", "application/json")
            .body(body.to_string());
    }
    request.send().await.unwrap()
}

/// The problem document of a response, after checking its status and media type.
async fn problem(response: Response, status: u16) -> Value {
    assert_eq!(response.status().as_u16(), status);
    assert_eq!(
        response.headers()["content-type"],
        "application/problem+json"
    );
    response.json().await.unwrap()
}

fn fields(problem: &Value) -> Vec<String> {
    problem["errors"]
        .as_array()
        .map(|e| {
            e.iter()
                .map(|f| f["field"].as_str().unwrap().to_string())
                .collect()
        })
        .unwrap_or_default()
}

async fn login(p: &Pipeline, email: &str, password: &str) -> Response {
    post(
        p,
        "/v1/auth/login",
        json!({"email": email, "password": password}),
    )
    .await
}

/// Logs in; the token pair.
async fn tokens(p: &Pipeline, email: &str, password: &str) -> Value {
    let response = login(p, email, password).await;
    assert_eq!(response.status(), StatusCode::OK, "login {email}");
    let v: Value = response.json().await.unwrap();
    assert_eq!(v["token_type"], "Bearer");
    assert_eq!(v["expires_in"], 900);
    v
}

fn access(pair: &Value) -> String {
    pair["access_token"].as_str().unwrap().to_string()
}

async fn refresh(p: &Pipeline, token: &Value) -> Response {
    post(p, "/v1/auth/refresh", json!({"refresh_token": token})).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn accounts_register_verify_log_in_refresh_and_log_out() {
    let dir = tempfile::tempdir().unwrap();
    let p = Pipeline::start(dir.path());

    // Every bad input of register, named by field.
    let bad = post(
        &p,
        "/v1/auth/register",
        json!({"name": " ", "email": "not-an-email", "password": "short", "confirm": "other"}),
    )
    .await;
    let bad = problem(bad, 422).await;
    assert_eq!(fields(&bad), ["name", "email", "password", "confirm"]);
    let bad = problem(
        post(
            &p,
            "/v1/auth/register",
            json!({"name": "Ada", "email": "a@example.com"}),
        )
        .await,
        422,
    )
    .await;
    assert_eq!(fields(&bad), ["password"]);
    let bad = problem(
        post(
            &p,
            "/v1/auth/register",
            json!({"name": "Ada", "email": "a@example.com", "password": "password1",
                   "confirm": "password2"}),
        )
        .await,
        422,
    )
    .await;
    assert_eq!(fields(&bad), ["confirm"]);
    let malformed = p
        .client
        .post(p.url("/v1/auth/register"))
        .header("content-type", "application/json")
        .body("{\"name\": ")
        .send()
        .await
        .unwrap();
    assert_eq!(fields(&problem(malformed, 400).await).len(), 1);
    let not_json = p
        .client
        .post(p.url("/v1/auth/login"))
        .body("email=x")
        .send()
        .await
        .unwrap();
    assert_eq!(
        fields(&problem(not_json, 415).await),
        ["header:Content-Type"]
    );

    // Register: 202, a code on its way; the account is unverified, its email lowercase.
    let created = post(
        &p,
        "/v1/auth/register",
        json!({"name": "Ada Lovelace", "email": "Ada@Example.com",
               "password": "correct horse", "confirm": "correct horse"}),
    )
    .await;
    assert_eq!(created.status(), StatusCode::ACCEPTED);
    let created: Value = created.json().await.unwrap();
    assert!(
        created["status"]
            .as_str()
            .unwrap()
            .contains("verification code"),
        "{created}"
    );
    let ada = p.account_id("ada@example.com").await;
    let account: Value = p
        .client
        .get(p.url(&format!("/v1/customers/{ada}")))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(account["role"], "customer");
    assert_eq!(account["verified"], false);
    assert!(account.get("password_hash").is_none());

    // Unverified: the right password is refused with a reason; a wrong one is the usual 401.
    let refused = problem(login(&p, "ada@example.com", "correct horse").await, 403).await;
    assert!(
        refused["detail"].as_str().unwrap().contains("not verified"),
        "{refused}"
    );
    problem(login(&p, "ada@example.com", "wrong horse").await, 401).await;

    // Verify with the code the bridge wrote to the file sink (a wrong code first).
    let code = p.emailed_code(&ada, 0).await;
    let wrong = if code == "000000" { "000001" } else { "000000" };
    let wrong = problem(
        post(
            &p,
            "/v1/auth/verify",
            json!({"email": "ada@example.com", "code": wrong}),
        )
        .await,
        403,
    )
    .await;
    assert_eq!(fields(&wrong), ["code"]);
    let bad = problem(
        post(
            &p,
            "/v1/auth/verify",
            json!({"email": "nope", "code": "12ab"}),
        )
        .await,
        422,
    )
    .await;
    assert_eq!(fields(&bad), ["email", "code"]);
    let verified = post(
        &p,
        "/v1/auth/verify",
        json!({"email": "ada@example.com", "code": code}),
    )
    .await;
    assert_eq!(verified.status(), StatusCode::OK);
    assert_eq!(verified.json::<Value>().await.unwrap()["verified"], true);

    // Log in and use the access token.
    let first = tokens(&p, "ADA@example.com", "correct horse").await;
    let me = call(&p, "GET", "/v1/customers/me", &access(&first), None).await;
    assert_eq!(me.status(), StatusCode::OK);
    assert_eq!(
        me.json::<Value>().await.unwrap()["customer_id"],
        ada.as_str()
    );

    // Order as Ada (the order is hers without naming her), follow it to its invoice, and
    // download the invoice PDF: it carries the order's total.
    let placed = p
        .anonymous
        .post(p.url("/v1/orders"))
        .bearer_auth(access(&first))
        .json(&json!({
            "items": [{"sku": "MUG-001", "quantity": 2}],
            "shipping_address": {"name": "Ada Lovelace", "line1": "12 St James's Sq",
                                 "city": "London", "postal_code": "SW1Y 4JH", "country": "GB"},
            "payment": {"method": "card", "token": "tok_visa"}
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(placed.status(), StatusCode::ACCEPTED);
    let order_id = placed.json::<Value>().await.unwrap()["order_id"]
        .as_str()
        .unwrap()
        .to_string();
    let order = p.wait_for_status(&order_id, "invoiced").await;
    assert_eq!(order["customer_id"], ada.as_str());
    // 2 × 12.50 = 25.00, 20 % tax 5.00: 30.00.
    assert_eq!(order["total_cents"], 3000);
    let pdf = call(
        &p,
        "GET",
        &format!("/v1/orders/{order_id}/invoice"),
        &access(&first),
        None,
    )
    .await;
    assert_eq!(pdf.status(), StatusCode::OK);
    assert_eq!(pdf.headers()["content-type"], "application/pdf");
    let pdf = pdf.bytes().await.unwrap();
    assert!(pdf.starts_with(b"%PDF-"), "a PDF");
    let texts = orderflow_processors::invoicing::pdf::texts(&pdf);
    let has = |text: &str| texts.iter().any(|t| t == text);
    assert!(has("30.00 EUR"), "the total is in the PDF: {texts:?}");
    assert!(has(order["invoice_number"].as_str().unwrap()));

    // Refresh rotates: the old token is refused afterwards, and presenting it again (a reuse)
    // revokes the whole family, the new token included.
    let second = refresh(&p, &first["refresh_token"]).await;
    assert_eq!(second.status(), StatusCode::OK);
    let second: Value = second.json().await.unwrap();
    assert_ne!(second["refresh_token"], first["refresh_token"]);
    let me = call(&p, "GET", "/v1/customers/me", &access(&second), None).await;
    assert_eq!(me.status(), StatusCode::OK);
    let reused = problem(refresh(&p, &first["refresh_token"]).await, 401).await;
    assert!(
        reused["detail"].as_str().unwrap().contains("used already"),
        "{reused}"
    );
    problem(refresh(&p, &second["refresh_token"]).await, 401).await;

    // The refresh token's reuse ended that login: its access tokens stop working too (within
    // the sessions' recheck interval).
    let ended = |access: String| {
        let p = &p;
        async move {
            common::poll_until(
                "the access token of an ended login to be refused",
                std::time::Duration::from_secs(10),
                std::time::Duration::from_millis(100),
                || async {
                    call(p, "GET", "/v1/customers/me", &access, None)
                        .await
                        .status()
                },
                |status| *status == StatusCode::UNAUTHORIZED,
            )
            .await
        }
    };
    ended(access(&second)).await;

    // Logout: the refresh token no longer works, nor (shortly) its access token; another
    // login of the same account goes on.
    let third = tokens(&p, "ada@example.com", "correct horse").await;
    let other_login = tokens(&p, "ada@example.com", "correct horse").await;
    let me = call(&p, "GET", "/v1/customers/me", &access(&third), None).await;
    assert_eq!(me.status(), StatusCode::OK);
    let out = post(
        &p,
        "/v1/auth/logout",
        json!({"refresh_token": third["refresh_token"]}),
    )
    .await;
    assert_eq!(out.status(), StatusCode::NO_CONTENT);
    problem(refresh(&p, &third["refresh_token"]).await, 401).await;
    ended(access(&third)).await;
    let still = call(&p, "GET", "/v1/customers/me", &access(&other_login), None).await;
    assert_eq!(
        still.status(),
        StatusCode::OK,
        "another login is not logged out"
    );
    assert_eq!(
        fields(
            &problem(
                post(&p, "/v1/auth/refresh", json!({"refresh_token": ""})).await,
                422
            )
            .await
        ),
        ["refresh_token"]
    );

    // Wrong password and unknown email: the same answer.
    let a = problem(login(&p, "ada@example.com", "not the password").await, 401).await;
    let b = problem(
        login(&p, "nobody@example.com", "not the password").await,
        401,
    )
    .await;
    assert_eq!(a, b);
    assert_eq!(
        fields(&problem(login(&p, "", "").await, 422).await),
        ["email", "password"]
    );
    assert!(p.stop().success());
}

async fn register(p: &Pipeline, email: &str, password: &str) -> Response {
    post(
        p,
        "/v1/auth/register",
        json!({"name": "Someone", "email": email, "password": password, "confirm": password}),
    )
    .await
}

async fn verify(p: &Pipeline, email: &str, code: &str) -> Response {
    post(p, "/v1/auth/verify", json!({"email": email, "code": code})).await
}

async fn resend(p: &Pipeline, email: &str) -> Response {
    post(p, "/v1/auth/resend", json!({"email": email})).await
}

/// A 6-digit code that is not `code`.
fn not(code: &str) -> &'static str {
    if code == "000000" {
        "000001"
    } else {
        "000000"
    }
}

/// Waits until `access` is refused (its login ended), within the sessions' recheck interval.
async fn until_refused(p: &Pipeline, access: &str) {
    common::poll_until(
        "the access token of an ended login to be refused",
        std::time::Duration::from_secs(10),
        std::time::Duration::from_millis(100),
        || async {
            call(p, "GET", "/v1/customers/me", access, None)
                .await
                .status()
        },
        |status| *status == StatusCode::UNAUTHORIZED,
    )
    .await;
}

/// The `Retry-After` of a 429, after checking it is one.
async fn retry_after(response: Response) -> u32 {
    let seconds: u32 = response.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    problem(response, 429).await;
    seconds
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn register_verify_and_resend_tell_nothing_about_accounts_and_are_limited() {
    let dir = tempfile::tempdir().unwrap();
    let p = Pipeline::start(dir.path());

    // A new email and a taken one (the seeded user's, verified) get the same answer; the taken
    // one creates no second account and leaves the password as it was.
    let new = register(&p, "eve@example.com", "eve-password").await;
    assert_eq!(new.status(), StatusCode::ACCEPTED);
    let new: Value = new.json().await.unwrap();
    let taken = register(&p, "User@example.com", "attacker-password").await;
    assert_eq!(taken.status(), StatusCode::ACCEPTED);
    assert_eq!(taken.json::<Value>().await.unwrap(), new);
    p.account_id("user@example.com").await;
    problem(
        login(&p, "user@example.com", "attacker-password").await,
        401,
    )
    .await;
    tokens(&p, "user@example.com", "user123").await;

    // Registering an unverified email again: the same answer, still one account, and its
    // owner gets a new code (the earlier one stops working).
    let again = register(&p, "eve@example.com", "other-password").await;
    assert_eq!(again.status(), StatusCode::ACCEPTED);
    assert_eq!(again.json::<Value>().await.unwrap(), new);
    let eve = p.account_id("eve@example.com").await;
    let code = p.emailed_code(&eve, 1).await;

    // Verify: an unknown email, a wrong code and an account verified already get one and the
    // same answer, naming `code`, with nothing of the account.
    let unknown = problem(verify(&p, "nobody@example.com", "123456").await, 403).await;
    let wrong = problem(verify(&p, "eve@example.com", not(&code)).await, 403).await;
    let verified_already = problem(verify(&p, "user@example.com", "123456").await, 403).await;
    assert_eq!(fields(&wrong), ["code"]);
    assert_eq!(unknown, wrong);
    assert_eq!(verified_already, wrong);
    // The right code verifies and shows the account; once verified, even that code gets the
    // same 403.
    let verified = verify(&p, "eve@example.com", &code).await;
    assert_eq!(verified.status(), StatusCode::OK);
    let verified: Value = verified.json().await.unwrap();
    assert_eq!(
        (
            verified["customer_id"].as_str(),
            verified["verified"].as_bool()
        ),
        (Some(eve.as_str()), Some(true))
    );
    assert_eq!(
        problem(verify(&p, "eve@example.com", &code).await, 403).await,
        wrong
    );
    // The second registration did not change the password.
    tokens(&p, "eve@example.com", "eve-password").await;

    // Resend: 3 per email, then 429 with Retry-After.
    for _ in 0..3 {
        assert_eq!(
            resend(&p, "limited@example.com").await.status(),
            StatusCode::ACCEPTED
        );
    }
    assert!(retry_after(resend(&p, "limited@example.com").await).await >= 1);
    // Register: 3 per email (taken or not), then 429.
    for _ in 0..3 {
        assert_eq!(
            register(&p, "often@example.com", "often-password")
                .await
                .status(),
            StatusCode::ACCEPTED
        );
    }
    assert!(retry_after(register(&p, "often@example.com", "often-password").await).await >= 1);

    // Verify: 10 tries per email, however many codes were sent. A code dies after 5 wrong
    // tries and a resend brings a new one, but not new tries: after 10, even the right code
    // is a 429.
    assert_eq!(
        register(&p, "guess@example.com", "guess-password")
            .await
            .status(),
        StatusCode::ACCEPTED
    );
    let guess = p.account_id("guess@example.com").await;
    let first = p.emailed_code(&guess, 0).await;
    for _ in 0..5 {
        problem(verify(&p, "guess@example.com", not(&first)).await, 403).await;
    }
    assert_eq!(
        resend(&p, "guess@example.com").await.status(),
        StatusCode::ACCEPTED
    );
    let second = p.emailed_code(&guess, 1).await;
    for _ in 0..5 {
        problem(verify(&p, "guess@example.com", not(&second)).await, 403).await;
    }
    assert!(retry_after(verify(&p, "guess@example.com", &second).await).await >= 1);
    assert!(p.stop().success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_ip_limits_take_x_forwarded_for_from_trusted_proxies_only() {
    async fn resend_from(p: &Pipeline, email: &str, forwarded_for: &str) -> StatusCode {
        p.anonymous
            .post(p.url("/v1/auth/resend"))
            .header("content-type", "application/json")
            .header("x-forwarded-for", forwarded_for)
            .body(json!({ "email": email }).to_string())
            .send()
            .await
            .unwrap()
            .status()
    }
    // Resends are limited to 10 per client IP, then one per minute. Each request below is
    // for an email of its own, so that only the per-IP limit can answer 429.

    // The peer (127.0.0.1) is not a trusted proxy: the header is ignored, every request
    // counts against 127.0.0.1 whatever client it names.
    let dir = tempfile::tempdir().unwrap();
    let p = Pipeline::start_with(dir.path(), &["--trusted-proxies", "10.0.0.0/8"]);
    let mut statuses = Vec::new();
    for i in 0..11 {
        statuses
            .push(resend_from(&p, &format!("a{i}@example.com"), &format!("203.0.113.{i}")).await);
    }
    assert_eq!(statuses[..10], [StatusCode::ACCEPTED; 10]);
    assert_eq!(statuses[10], StatusCode::TOO_MANY_REQUESTS);
    assert!(p.stop().success());

    // Behind a trusted proxy (set by the environment): each client it names has a bucket of
    // its own, the rightmost untrusted hop; what a client puts left of it does not help.
    let dir = tempfile::tempdir().unwrap();
    let p = Pipeline::start_with_env(
        dir.path(),
        &[],
        &[("ORDERFLOW_TRUSTED_PROXIES", "127.0.0.1, ::1")],
    );
    for i in 0..15 {
        assert_eq!(
            resend_from(&p, &format!("b{i}@example.com"), &format!("203.0.113.{i}")).await,
            StatusCode::ACCEPTED
        );
    }
    for i in 0..10 {
        assert_eq!(
            resend_from(
                &p,
                &format!("c{i}@example.com"),
                &format!("6.6.6.{i}, 198.51.100.1")
            )
            .await,
            StatusCode::ACCEPTED
        );
    }
    assert_eq!(
        resend_from(&p, "c10@example.com", "6.6.6.10, 198.51.100.1").await,
        StatusCode::TOO_MANY_REQUESTS
    );
    assert_eq!(
        resend_from(&p, "d@example.com", "198.51.100.2").await,
        StatusCode::ACCEPTED
    );
    assert!(p.stop().success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_password_change_needs_the_current_password_and_ends_the_other_logins() {
    let dir = tempfile::tempdir().unwrap();
    let p = Pipeline::start(dir.path());
    let path = format!("/v1/customers/{}", p.account_id("user@example.com").await);
    let here = tokens(&p, "user@example.com", "user123").await;
    let elsewhere = tokens(&p, "user@example.com", "user123").await;
    let change = |body: Value| {
        let (p, path, token) = (&p, path.clone(), access(&here));
        async move { call(p, "PATCH", &path, &token, Some(body)).await }
    };

    // Without the current password, or with a wrong one: refused, naming `current_password`.
    let missing = problem(change(json!({"password": "new-password-1"})).await, 422).await;
    assert_eq!(fields(&missing), ["current_password"]);
    let wrong = problem(
        change(json!({"password": "new-password-1", "current_password": "not-it"})).await,
        403,
    )
    .await;
    assert_eq!(fields(&wrong), ["current_password"]);
    problem(login(&p, "user@example.com", "new-password-1").await, 401).await;

    // With it: changed. The other login ends (its refresh token at once, its access token
    // within the recheck interval); the one that made the change goes on.
    let changed =
        change(json!({"password": "new-password-1", "current_password": "user123"})).await;
    assert_eq!(changed.status(), StatusCode::OK);
    problem(refresh(&p, &elsewhere["refresh_token"]).await, 401).await;
    until_refused(&p, &access(&elsewhere)).await;
    let me = call(&p, "GET", "/v1/customers/me", &access(&here), None).await;
    assert_eq!(me.status(), StatusCode::OK);
    let here = refresh(&p, &here["refresh_token"]).await;
    assert_eq!(here.status(), StatusCode::OK);
    let here: Value = here.json().await.unwrap();
    problem(login(&p, "user@example.com", "user123").await, 401).await;

    // An admin resets it without the current password: every login of the account ends.
    let admin = access(&tokens(&p, "admin@example.com", "admin123").await);
    let reset = call(
        &p,
        "PATCH",
        &path,
        &admin,
        Some(json!({"password": "reset-password-1"})),
    )
    .await;
    assert_eq!(reset.status(), StatusCode::OK);
    problem(refresh(&p, &here["refresh_token"]).await, 401).await;
    until_refused(&p, &access(&here)).await;
    tokens(&p, "user@example.com", "reset-password-1").await;
    assert!(p.stop().success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_first_start_seeds_demo_orders_for_the_demo_user_once() {
    let dir = tempfile::tempdir().unwrap();
    let p = Pipeline::start_with(dir.path(), &["--sample-orders", "true"]);
    let user = access(&tokens(&p, "user@example.com", "user123").await);
    // Three settle; the bank transfer waits, validated, for an admin to record it.
    let settled = |orders: &Vec<Value>| {
        orders.len() == 4
            && orders.iter().all(|o| {
                ["invoiced", "payment_failed", "rejected"].contains(&o["status"].as_str().unwrap())
                    || (o["payment_method"] == "bank_transfer" && o["status"] == "validated")
            })
    };
    let orders = common::poll_until(
        "the sample orders to settle",
        std::time::Duration::from_secs(30),
        std::time::Duration::from_millis(200),
        || async {
            let list: Value = call(&p, "GET", "/v1/orders", &user, None)
                .await
                .json()
                .await
                .unwrap();
            list["orders"].as_array().cloned().unwrap_or_default()
        },
        settled,
    )
    .await;
    assert!(orders.iter().any(|o| o["status"] == "invoiced"));
    assert!(p.stop().success());

    // Not on a restart: first start only.
    let p = Pipeline::start_with(dir.path(), &["--sample-orders", "true"]);
    let user = access(&tokens(&p, "user@example.com", "user123").await);
    tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    let list: Value = call(&p, "GET", "/v1/orders", &user, None)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(list["orders"].as_array().unwrap().len(), 4);
    assert!(p.stop().success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn customers_see_themselves_admins_see_all_and_tokens_are_checked() {
    let dir = tempfile::tempdir().unwrap();
    let p = Pipeline::start(dir.path());

    // The seeded accounts log in.
    let admin = access(&tokens(&p, "admin@example.com", "admin123").await);
    let user_pair = tokens(&p, "user@example.com", "user123").await;
    let user = access(&user_pair);

    // The admin creates a customer (verified), who logs in at once.
    let created = call(
        &p,
        "POST",
        "/v1/customers",
        &admin,
        Some(json!({"name": "Grace", "email": "grace@example.com", "password": "hopper123"})),
    )
    .await;
    assert_eq!(created.status(), StatusCode::CREATED);
    let grace: Value = created.json().await.unwrap();
    let grace_id = grace["customer_id"].as_str().unwrap().to_string();
    assert_eq!(grace["verified"], true);
    let grace_pair = tokens(&p, "grace@example.com", "hopper123").await;
    let grace_token = access(&grace_pair);
    let bad = problem(
        call(
            &p,
            "POST",
            "/v1/customers",
            &admin,
            Some(json!({"name": "", "email": "x",
            "password": "1", "role": "king"})),
        )
        .await,
        422,
    )
    .await;
    assert_eq!(
        fields(&bad),
        ["role"],
        "an unknown role is refused first: {bad}"
    );

    // The user may not see, change or delete Grace: 404, as if she did not exist.
    let path = format!("/v1/customers/{grace_id}");
    problem(call(&p, "GET", &path, &user, None).await, 404).await;
    problem(
        call(&p, "PATCH", &path, &user, Some(json!({"name": "Mallory"}))).await,
        404,
    )
    .await;
    problem(call(&p, "DELETE", &path, &user, None).await, 404).await;
    // Nor list customers (403), nor anything without a token (401).
    problem(call(&p, "GET", "/v1/customers", &user, None).await, 403).await;
    let anonymous = p
        .anonymous
        .get(p.url("/v1/customers/me"))
        .send()
        .await
        .unwrap();
    assert!(anonymous.headers().contains_key("www-authenticate"));
    problem(anonymous, 401).await;

    // Grace reads and renames herself, but may not make herself an admin.
    let me = call(&p, "GET", &path, &grace_token, None).await;
    assert_eq!(me.status(), StatusCode::OK);
    let renamed = call(
        &p,
        "PATCH",
        &path,
        &grace_token,
        Some(json!({"name": "Grace H."})),
    )
    .await;
    assert_eq!(renamed.json::<Value>().await.unwrap()["name"], "Grace H.");
    problem(
        call(
            &p,
            "PATCH",
            &path,
            &grace_token,
            Some(json!({"role": "admin"})),
        )
        .await,
        403,
    )
    .await;
    let bad = problem(
        call(
            &p,
            "PATCH",
            &path,
            &grace_token,
            Some(json!({"password": "short", "current_password": "hopper123"})),
        )
        .await,
        422,
    )
    .await;
    assert_eq!(fields(&bad), ["password"]);
    problem(call(&p, "DELETE", &path, &grace_token, None).await, 403).await;

    // The admin lists everyone, a page at a time.
    let mut seen = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let query = match &after {
            Some(a) => format!("/v1/customers?limit=2&after={a}"),
            None => "/v1/customers?limit=2".to_string(),
        };
        let page: Value = call(&p, "GET", &query, &admin, None)
            .await
            .json()
            .await
            .unwrap();
        for c in page["customers"].as_array().unwrap() {
            seen.push(c["email"].as_str().unwrap().to_string());
        }
        match page["next"].as_str() {
            Some(next) => after = Some(next.to_string()),
            None => break,
        }
    }
    seen.sort();
    assert_eq!(
        seen,
        ["admin@example.com", "grace@example.com", "user@example.com"]
    );
    let bad = problem(
        call(&p, "GET", "/v1/customers?limit=0", &admin, None).await,
        422,
    )
    .await;
    assert_eq!(fields(&bad), ["query:limit"]);

    // Deleting disables: no login, no refresh; the account is still there for the admin.
    let deleted = call(&p, "DELETE", &path, &admin, None).await;
    assert_eq!(deleted.status(), StatusCode::NO_CONTENT);
    problem(login(&p, "grace@example.com", "hopper123").await, 403).await;
    problem(refresh(&p, &grace_pair["refresh_token"]).await, 401).await;
    // Her access token stops working too, within the sessions' recheck interval.
    common::poll_until(
        "a disabled account's access token to be refused",
        std::time::Duration::from_secs(10),
        std::time::Duration::from_millis(100),
        || async {
            call(&p, "GET", "/v1/customers/me", &grace_token, None)
                .await
                .status()
        },
        |status| *status == StatusCode::UNAUTHORIZED,
    )
    .await;
    let read: Value = call(&p, "GET", &path, &admin, None)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(read["disabled"], true);

    // Expired and tampered tokens: 401 with a Bearer challenge.
    let keys = p.token_keys().keys;
    let expired = keys.sign(&Claims {
        sub: grace_id.clone(),
        role: Role::Admin,
        iat: 1_000,
        exp: 2_000,
        iss: ISSUER.into(),
        sid: None,
    });
    let response = call(&p, "GET", "/v1/customers", &expired, None).await;
    let challenge = response.headers()["www-authenticate"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(challenge.starts_with("Bearer"), "{challenge}");
    assert!(problem(response, 401).await["detail"]
        .as_str()
        .unwrap()
        .contains("expired"));
    let mut parts: Vec<String> = user.split('.').map(String::from).collect();
    let forged = TokenKeys::new(b"someone else's secret, 32 bytes+").sign(&Claims {
        sub: "x".into(),
        role: Role::Admin,
        iat: 0,
        exp: i64::MAX / 2,
        iss: ISSUER.into(),
        sid: None,
    });
    parts[1] = forged.split('.').nth(1).unwrap().to_string();
    let tampered = parts.join(".");
    let response = call(&p, "GET", "/v1/customers", &tampered, None).await;
    assert!(response.headers().contains_key("www-authenticate"));
    problem(response, 401).await;

    // Signed with the pipeline's own secret, for its real admin, but naming no login (so no
    // logout could ever end it), or a login that never was: 401 too.
    let now = orderflow_schemas::now_millis() / 1000;
    for sid in [None, Some("no-such-login".to_string())] {
        let minted = keys.sign(&Claims {
            sub: p.admin.id.clone(),
            role: Role::Admin,
            iat: now,
            exp: now + 600,
            iss: ISSUER.into(),
            sid: sid.clone(),
        });
        let response = call(&p, "GET", "/v1/customers", &minted, None).await;
        let detail = problem(response, 401).await["detail"].to_string();
        assert!(detail.contains("log in"), "{sid:?}: {detail}");
    }

    // Login attempts are limited per email: 10 (one was the user's login above), then 429 with
    // Retry-After, even for the right password.
    let mut attempts = 1;
    let limited = loop {
        let response = login(&p, "user@example.com", "guess").await;
        if response.status() == StatusCode::TOO_MANY_REQUESTS {
            break response;
        }
        problem(response, 401).await;
        attempts += 1;
        assert!(attempts <= 11, "no 429 after {attempts} attempts");
    };
    assert!(attempts >= 10, "429 after only {attempts} attempts");
    problem(login(&p, "user@example.com", "user123").await, 429).await;
    let retry_after: u32 = limited.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(retry_after >= 1, "{retry_after}");
    problem(limited, 429).await;
    assert!(p.stop().success());
}

/// The development secret earlier versions built in (and so published).
const PUBLISHED_SECRET: &str = "orderflow-development-secret-do-not-use-in-production";

/// `orderflow ingest` will not start with a published secret, nor a short one, nor without one.
#[test]
fn ingest_refuses_the_development_secret() {
    let dir = tempfile::tempdir().unwrap();
    let start = |secret: Option<&str>| {
        let mut command = Command::new(env!("CARGO_BIN_EXE_orderflow"));
        command
            .args([
                "ingest",
                "--http",
                "127.0.0.1:0",
                "--brokers",
                "127.0.0.1:9",
            ])
            .arg("--data-dir")
            .arg(dir.path())
            .env_clear()
            .env("RUST_LOG", "error");
        if let Some(secret) = secret {
            command.env("ORDERFLOW_JWT_SECRET", secret);
        }
        command.output().expect("orderflow runs")
    };
    for (secret, says) in [
        (Some(PUBLISHED_SECRET), "published"),
        (None, "ORDERFLOW_JWT_SECRET"),
        (Some("too-short"), "at least 32 bytes"),
    ] {
        let out = start(secret);
        assert!(!out.status.success(), "{secret:?} is refused");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(says), "{secret:?}: {stderr}");
    }
}

/// `orderflow seed` loads the demo accounts, catalogue and orders once: a second run changes
/// nothing. (Against a running pipeline's broker, with a store of its own.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seeding_twice_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let p = Pipeline::start(dir.path());
    let store = tempfile::tempdir().unwrap();
    let (bootstrap, store_dir) = (p.bootstrap.clone(), store.path().to_path_buf());
    let seed = move || {
        let out = Command::new(env!("CARGO_BIN_EXE_orderflow"))
            .args(["seed", "--brokers", &bootstrap])
            .arg("--data-dir")
            .arg(&store_dir)
            .env("RUST_LOG", "error")
            .output()
            .expect("orderflow seed runs");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).to_string()
    };
    let first = tokio::task::spawn_blocking(seed.clone()).await.unwrap();
    assert!(
        first.contains("Seeded: 2 accounts, 6 products, 4 orders new."),
        "{first}"
    );
    let second = tokio::task::spawn_blocking(seed).await.unwrap();
    assert!(
        second.contains("Seeded: 0 accounts, 0 products, 0 orders new."),
        "{second}"
    );
    assert!(p.stop().success());
}

/// `orderflow run` reachable from other hosts (the API on 0.0.0.0) is not a development setup:
/// no demo accounts with their published passwords, no token but those of its own logins; the
/// first admin comes from `--admin-email` / `--admin-password`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pipeline_reachable_from_other_hosts_has_no_demo_accounts() {
    let dir = tempfile::tempdir().unwrap();
    let p = Pipeline::start_with(
        dir.path(),
        &[
            "--http",
            "0.0.0.0:0",
            "--admin-email",
            "boss@shop.example",
            "--admin-password",
            "a long admin password",
        ],
    );
    for (email, password) in [
        ("admin@example.com", "admin123"),
        ("user@example.com", "user123"),
    ] {
        problem(login(&p, email, password).await, 401).await;
    }
    // An admin token signed with the secret earlier versions published: refused.
    let now = orderflow_schemas::now_millis() / 1000;
    let forged = TokenKeys::new(PUBLISHED_SECRET.as_bytes()).sign(&Claims {
        sub: p.admin.id.clone(),
        role: Role::Admin,
        iat: now,
        exp: now + 600,
        iss: ISSUER.into(),
        sid: None,
    });
    problem(call(&p, "GET", "/v1/customers", &forged, None).await, 401).await;
    // The configured admin is the only account.
    let response = call(&p, "GET", "/v1/customers", p.admin.token(), None).await;
    assert_eq!(response.status(), StatusCode::OK);
    let page: Value = response.json().await.unwrap();
    let emails: Vec<&str> = page["customers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["email"].as_str().unwrap())
        .collect();
    assert_eq!(emails, ["boss@shop.example"]);
    // The secret it signs with was generated for this data dir, readable by its owner only.
    let secret = dir.path().join("jwt-secret");
    let mode =
        std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&secret).unwrap().permissions());
    assert_eq!(mode & 0o077, 0, "{mode:o}");
    assert!(p.stop().success());
}

/// The embedded broker has no authentication: `orderflow run` will not open it to other hosts.
#[test]
fn the_embedded_broker_stays_on_loopback() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_orderflow"))
        .args([
            "run",
            "--http",
            "127.0.0.1:0",
            "--kafka-listen",
            "0.0.0.0:0",
        ])
        .arg("--data-dir")
        .arg(dir.path())
        .env("RUST_LOG", "error")
        .output()
        .expect("orderflow runs");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("loopback") && stderr.contains("--brokers"),
        "{stderr}"
    );
}
