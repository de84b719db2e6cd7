//! `POST /v1/auth/register`, `/verify`, `/resend`, `/login`, `/refresh` and `/logout`.
//!
//! - Register creates an unverified `customer` account and emails a one-time 6-digit code
//!   (the `AccountVerificationRequested` event on `accounts.verification`, which the bridge
//!   sends: the file sink on `orderflow run`, SES in production). The code lives
//!   [`CODE_TTL`] and dies after 5 wrong tries; `/resend` issues a new one. Issuing a code is
//!   [`ops::send_verification_code`].
//! - Nothing tells whether an email has an account (no account enumeration): register
//!   answers the same `202` for a taken email, after the same argon2 work, and creates
//!   nothing (an unverified owner gets a new code); verify answers one and the same `403` for
//!   an unknown email, a wrong, expired or used-up code and an account verified already, and
//!   shows the account only for the right code; resend answers `202` whatever the email.
//! - An unverified account cannot log in: `403` naming the reason (given only with the right
//!   password, so it reveals nothing to a guesser). A disabled (deleted) account neither.
//! - Login answers a short-lived access JWT and a refresh token. A wrong email and a wrong
//!   password get the same `401`, after the same argon2 work.
//! - Register, verify, resend and login are rate-limited per email and per client IP
//!   ([`super::limit`], the client IP as [`super::proxy`] finds it): `429` with
//!   `Retry-After`. Verify's limit per email also bounds the codes a series of resends can
//!   have guessed.
//! - Refresh rotates: the presented token is used up and a new one (same family) comes back.
//!   Presenting a used token again is taken as theft: the whole family is revoked, and the
//!   holder of the newer token has to log in again. Logout revokes the family.
//!
//! [`CODE_TTL`]: ops::CODE_TTL

use std::{
    net::{IpAddr, SocketAddr},
    sync::Arc,
};

use axum::{
    extract::{ConnectInfo, Request, State},
    http::{request::Parts, StatusCode},
    response::{IntoResponse, Response},
    Json,
};
use orderflow_store::{Account, RefreshToken, RotateOutcome, VerifyOutcome};
use serde::{Deserialize, Serialize};
use tracing::{info, warn};
use utoipa::ToSchema;

use super::{limit::Limits, password, secrets, Role};
use crate::problem::responses;
use crate::{
    body::{json_body, JsonBody},
    customers::AccountView,
    ops,
    problem::{FieldError, Problem},
    ApiState,
};

/// `POST /v1/auth/register`'s body.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RegisterRequest {
    #[schema(
        example = "Ada Lovelace",
        max_length = 100,
        pattern = "^[^\\u0000-\\u001f\\u007f-\\u009f]*[^\\s\\u0000-\\u001f\\u007f-\\u009f][^\\u0000-\\u001f\\u007f-\\u009f]*$"
    )]
    pub name: String,
    /// Stored lowercase; unique.
    #[schema(
        example = "ada@example.com",
        max_length = 254,
        pattern = "^[^\\s@\\u0000-\\u001f\\u007f-\\u009f]+@[^\\s@.\\u0000-\\u001f\\u007f-\\u009f]+(\\.[^\\s@.\\u0000-\\u001f\\u007f-\\u009f]+)+$"
    )]
    pub email: String,
    /// 8 to 128 characters.
    #[schema(example = "correct horse battery", min_length = 8, max_length = 128)]
    pub password: String,
    /// The password again (`422` naming `confirm` when it differs).
    #[schema(example = "correct horse battery")]
    pub confirm: String,
}

/// `POST /v1/auth/verify`'s body.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct VerifyRequest {
    #[schema(
        example = "ada@example.com",
        max_length = 254,
        pattern = "^[^\\s@\\u0000-\\u001f\\u007f-\\u009f]+@[^\\s@.\\u0000-\\u001f\\u007f-\\u009f]+(\\.[^\\s@.\\u0000-\\u001f\\u007f-\\u009f]+)+$"
    )]
    pub email: String,
    /// The 6-digit code from the email.
    #[schema(example = "042137", pattern = "^[0-9]{6}$")]
    pub code: String,
}

/// `POST /v1/auth/resend`'s body.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ResendRequest {
    #[schema(
        example = "ada@example.com",
        max_length = 254,
        pattern = "^[^\\s@\\u0000-\\u001f\\u007f-\\u009f]+@[^\\s@.\\u0000-\\u001f\\u007f-\\u009f]+(\\.[^\\s@.\\u0000-\\u001f\\u007f-\\u009f]+)+$"
    )]
    pub email: String,
}

/// `POST /v1/auth/login`'s body.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LoginRequest {
    #[schema(example = "user@example.com", min_length = 1, max_length = 254)]
    pub email: String,
    #[schema(example = "user123", min_length = 1, max_length = 128)]
    pub password: String,
}

/// `POST /v1/auth/refresh`'s and `POST /v1/auth/logout`'s body.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RefreshRequest {
    #[schema(min_length = 1, max_length = 512)]
    pub refresh_token: String,
}

/// A token pair.
#[derive(Debug, Serialize, ToSchema)]
pub struct TokenResponse {
    /// An HS256 JWT: send it as `Authorization: Bearer <access_token>`.
    pub access_token: String,
    /// Always `Bearer`.
    #[schema(example = "Bearer")]
    pub token_type: &'static str,
    /// Seconds the access token is valid.
    #[schema(example = 900)]
    pub expires_in: u64,
    /// Exchange it at `POST /v1/auth/refresh` for a new pair (once: it is used up then).
    pub refresh_token: String,
    /// Seconds the refresh token is valid.
    #[schema(example = 2592000)]
    pub refresh_expires_in: u64,
}

/// `202` of `POST /v1/auth/resend`.
#[derive(Debug, Serialize, ToSchema)]
pub struct Resent {
    /// Always `sent if the account exists and is not verified`.
    pub status: &'static str,
}

/// `202` of `POST /v1/auth/register`: the same whether the email was free or taken.
#[derive(Debug, Serialize, ToSchema)]
pub struct Registered {
    /// Always `REGISTERED_STATUS`.
    #[schema(example = "check your email for the verification code (POST /v1/auth/verify)")]
    pub status: &'static str,
}

/// What `POST /v1/auth/register` answers, new account or not.
pub const REGISTERED_STATUS: &str =
    "check your email for the verification code (POST /v1/auth/verify)";

fn now_ms() -> i64 {
    orderflow_schemas::now_millis()
}

/// An email as stored: trimmed and lowercase.
pub fn normalize_email(email: &str) -> String {
    email.trim().to_lowercase()
}

/// Why an email is not acceptable, if it is not: `local@domain.tld`, no whitespace or control
/// characters, every domain label non-empty (the schema's `pattern` says the same).
pub fn email_problem(email: &str) -> Option<&'static str> {
    if email.is_empty() {
        return Some("must not be empty");
    }
    if email.chars().count() > 254 {
        return Some("is too long");
    }
    let shape = "must be an email address such as ada@example.com";
    let Some((local, domain)) = email.split_once('@') else {
        return Some(shape);
    };
    let bad_char = |c: char| c.is_whitespace() || c.is_control() || c == '@';
    if local.is_empty()
        || local.chars().any(bad_char)
        || domain.chars().any(bad_char)
        || domain.split('.').count() < 2
        || domain.split('.').any(str::is_empty)
    {
        return Some(shape);
    }
    None
}

/// Why a name is not acceptable, if it is not.
pub fn name_problem(name: &str) -> Option<String> {
    crate::problem::text_problem(name, 100)
}

/// Why a new password is not acceptable, if it is not.
pub fn password_problem(password: &str) -> Option<String> {
    let n = password.chars().count();
    if n < password::MIN_PASSWORD {
        Some(format!(
            "must be at least {} characters",
            password::MIN_PASSWORD
        ))
    } else if n > password::MAX_PASSWORD {
        Some(format!(
            "must be at most {} characters",
            password::MAX_PASSWORD
        ))
    } else {
        None
    }
}

fn field(field: &str, message: impl Into<String>) -> FieldError {
    FieldError {
        field: field.to_string(),
        message: message.into(),
    }
}

pub(crate) fn internal(e: impl std::fmt::Display) -> Problem {
    warn!(error = %e, "Auth failed internally.");
    Problem::new(
        StatusCode::INTERNAL_SERVER_ERROR,
        "internal",
        "Internal error",
        "the request could not be completed",
    )
}

/// `POST /v1/auth/register`.
#[utoipa::path(
    post,
    path = "/v1/auth/register",
    tag = "auth",
    summary = "Create an account",
    description = "Creates an unverified `customer` account and emails it a one-time 6-digit \
        code; `POST /v1/auth/verify` with it before logging in. The answer is the same `202` \
        when the email already has an account, so that it tells nobody which emails are \
        registered: then nothing is created and the password is not used (if that account is \
        not verified yet, its owner is sent a new code). Limited per email (3, then one per \
        10 minutes) and per client IP (10, then one per minute), by each API instance on its \
        own.",
    request_body(content = RegisterRequest, content_type = "application/json"),
    responses(
        (status = 202, description = "Registered, or the email had an account already: a \
            code is on its way if there is anything to verify.", body = Registered),
        (status = 400, description = "The body is not JSON.", body = Problem,
         content_type = "application/problem+json"),
        responses::BodyTooLarge,
        responses::NotJson,
        (status = 422, description = "Fields are missing or invalid (`confirm` when it does \
            not match `password`).", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "Too many attempts; wait.", body = Problem,
         content_type = "application/problem+json",
         headers(("Retry-After" = u32, description = "Seconds to wait."))),
        responses::Unavailable,
    ),
)]
pub async fn register(
    State(state): State<Arc<ApiState>>,
    request: Request,
) -> Result<Response, Problem> {
    let (parts, body) = request.into_parts();
    let req: RegisterRequest = json_body(&parts.headers, body).await?;
    let mut errors = Vec::new();
    if let Some(m) = name_problem(&req.name) {
        errors.push(field("name", m));
    }
    if let Some(m) = email_problem(&req.email) {
        errors.push(field("email", m));
    }
    if let Some(m) = password_problem(&req.password) {
        errors.push(field("password", m));
    }
    if req.confirm != req.password {
        errors.push(field("confirm", "must match password"));
    }
    if !errors.is_empty() {
        return Err(Problem::invalid(errors));
    }
    let email = normalize_email(&req.email);
    limit(
        &state.auth_limits.register,
        &email,
        client_ip(&state, &parts),
    )?;
    // Hashed whether or not the email is taken, so that both take as long.
    let password_hash = password::hash(req.password).await.map_err(internal)?;
    let registered = || {
        (
            StatusCode::ACCEPTED,
            Json(Registered {
                status: REGISTERED_STATUS,
            }),
        )
            .into_response()
    };
    if let Some(existing) = state.store.get_account_by_email(&email).await? {
        taken(&state, &existing).await?;
        return Ok(registered());
    }
    let now = now_ms();
    let account = Account {
        customer_id: uuid::Uuid::now_v7().to_string(),
        name: req.name.trim().to_string(),
        email,
        role: Role::Customer.as_str().to_string(),
        password_hash,
        verified: false,
        disabled: false,
        created_at: now,
        updated_at: now,
    };
    if !state.store.create_account(account.clone()).await? {
        // Taken meanwhile by a concurrent registration.
        if let Some(existing) = state.store.get_account_by_email(&account.email).await? {
            taken(&state, &existing).await?;
        }
        return Ok(registered());
    }
    info!(customer_id = %account.customer_id, "Account registered.");
    ops::send_verification_code(&state, &account).await?;
    Ok(registered())
}

/// A registration for the email of an existing account: its owner gets a new code if it is
/// still to be verified; nothing else changes.
async fn taken(state: &ApiState, existing: &Account) -> Result<(), Problem> {
    info!(customer_id = %existing.customer_id, "Registration for an email in use.");
    if !existing.verified && !existing.disabled {
        ops::send_verification_code(state, existing).await?;
    }
    Ok(())
}

pub(crate) fn email_taken() -> Problem {
    let mut p = Problem::conflict(
        "email-taken",
        "Email in use",
        "email: an account with this email exists",
    );
    p.errors
        .push(field("email", "an account with this email exists"));
    p
}

/// `POST /v1/auth/verify`.
#[utoipa::path(
    post,
    path = "/v1/auth/verify",
    tag = "auth",
    summary = "Verify an account's email",
    description = "Checks the emailed code. A code works once, for 15 minutes, and dies after \
        5 wrong tries; `POST /v1/auth/resend` sends a new one. Every failure is the same `403` \
        naming `code`, whether the email is unknown, the code wrong, expired or used up, or \
        the account verified already: the account is shown for the right code only. Limited \
        per email (10 tries, then one per minute, however many codes were sent) and per client \
        IP (30, then one per 10 s), by each API instance on its own.",
    request_body(content = VerifyRequest, content_type = "application/json"),
    responses(
        (status = 200, description = "Verified.", body = AccountView),
        (status = 400, description = "The body is not JSON.", body = Problem,
         content_type = "application/problem+json"),
        responses::BodyTooLarge,
        responses::NotJson,
        (status = 403, description = "The code is wrong, expired or used up, the email \
            unknown, or the account verified already: one answer for all (`code`).",
         body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "A field is invalid.", body = Problem,
         content_type = "application/problem+json"),
        (status = 429, description = "Too many attempts; wait.", body = Problem,
         content_type = "application/problem+json",
         headers(("Retry-After" = u32, description = "Seconds to wait."))),
        responses::Unavailable,
    ),
)]
pub async fn verify(
    State(state): State<Arc<ApiState>>,
    request: Request,
) -> Result<Json<AccountView>, Problem> {
    let (parts, body) = request.into_parts();
    let req: VerifyRequest = json_body(&parts.headers, body).await?;
    let mut errors = Vec::new();
    if let Some(m) = email_problem(&req.email) {
        errors.push(field("email", m));
    }
    let code = req.code.as_str();
    if code.len() != 6 || !code.chars().all(|c| c.is_ascii_digit()) {
        errors.push(field("code", "must be the 6 digits from the email"));
    }
    if !errors.is_empty() {
        return Err(Problem::invalid(errors));
    }
    let email = normalize_email(&req.email);
    limit(&state.auth_limits.verify, &email, client_ip(&state, &parts))?;
    // A well-formed code that does not verify is a 403 naming `code`: the request is valid,
    // the proof is not. One answer for every reason, so that it tells nothing about the
    // account (whether there is one, whether it is verified, how many tries its code has).
    let wrong = || {
        Problem::field(
            StatusCode::FORBIDDEN,
            "verification-failed",
            "Verification failed",
            "code",
            "is wrong, expired or used up: check the latest email, or ask for a new code \
             (POST /v1/auth/resend)",
        )
    };
    let Some(account) = state.store.get_account_by_email(&email).await? else {
        return Err(wrong());
    };
    if account.verified {
        return Err(wrong());
    }
    let outcome = state
        .store
        .check_verification(
            &account.customer_id,
            &secrets::code_digest(&account.customer_id, code),
            now_ms(),
        )
        .await?;
    match outcome {
        VerifyOutcome::Verified => {
            info!(customer_id = %account.customer_id, "Account verified.");
            Ok(Json(
                Account {
                    verified: true,
                    ..account
                }
                .into(),
            ))
        }
        VerifyOutcome::Wrong { .. } | VerifyOutcome::Expired | VerifyOutcome::NoCode => {
            Err(wrong())
        }
    }
}

/// `POST /v1/auth/resend`.
#[utoipa::path(
    post,
    path = "/v1/auth/resend",
    tag = "auth",
    summary = "Send a new verification code",
    description = "Emails a new code (the earlier one stops working) if the account exists \
        and is not verified; answers the same either way. Limited per email (3, then one per \
        5 minutes) and per client IP (10, then one per minute), by each API instance on its \
        own.",
    request_body(content = ResendRequest, content_type = "application/json"),
    responses(
        (status = 202, description = "Sent, if there was anything to send.", body = Resent),
        (status = 400, description = "The body is not JSON.", body = Problem,
         content_type = "application/problem+json"),
        responses::BodyTooLarge,
        responses::NotJson,
        (status = 422, description = "`email` is invalid.", body = Problem,
         content_type = "application/problem+json"),
        (status = 429, description = "Too many attempts; wait.", body = Problem,
         content_type = "application/problem+json",
         headers(("Retry-After" = u32, description = "Seconds to wait."))),
        responses::Unavailable,
    ),
)]
pub async fn resend(
    State(state): State<Arc<ApiState>>,
    request: Request,
) -> Result<Response, Problem> {
    let (parts, body) = request.into_parts();
    let req: ResendRequest = json_body(&parts.headers, body).await?;
    if let Some(m) = email_problem(&req.email) {
        return Err(Problem::invalid(vec![field("email", m)]));
    }
    let email = normalize_email(&req.email);
    limit(&state.auth_limits.resend, &email, client_ip(&state, &parts))?;
    if let Some(account) = state.store.get_account_by_email(&email).await? {
        if !account.verified && !account.disabled {
            ops::send_verification_code(&state, &account).await?;
        }
    }
    Ok((
        StatusCode::ACCEPTED,
        Json(Resent {
            status: "sent if the account exists and is not verified",
        }),
    )
        .into_response())
}

/// The client's IP: the TCP peer's, or from `X-Forwarded-For` when the peer is a trusted
/// proxy ([`super::proxy`]). None when the server was not told its peers (in-process calls).
pub(crate) fn client_ip(state: &ApiState, parts: &Parts) -> Option<IpAddr> {
    let peer = parts.extensions.get::<ConnectInfo<SocketAddr>>()?.0.ip();
    Some(state.auth.trusted_proxies.client_ip(peer, &parts.headers))
}

/// The `429` of an empty bucket.
pub(crate) fn too_many(seconds: u32) -> Problem {
    Problem::too_many_requests(
        format!("too many attempts; try again in {seconds} s"),
        seconds,
    )
}

/// Takes one attempt from the client IP's and the email's buckets of a route.
fn limit(limits: &Limits, email: &str, ip: Option<IpAddr>) -> Result<(), Problem> {
    limits.check(email, ip).map_err(too_many)
}

/// A new token pair for the account; the refresh token starts a new family.
async fn issue(state: &ApiState, account: &Account) -> Result<TokenResponse, Problem> {
    let refresh_token = secrets::refresh_token().map_err(internal)?;
    let now = now_ms();
    let family_id = uuid::Uuid::now_v7().to_string();
    state
        .store
        .create_refresh_token(RefreshToken {
            token_hash: secrets::digest(&refresh_token),
            family_id: family_id.clone(),
            customer_id: account.customer_id.clone(),
            expires_at: now + state.auth.refresh_ttl.as_millis() as i64,
            used: false,
        })
        .await?;
    Ok(pair(state, account, &family_id, refresh_token, now))
}

/// The token pair of a login (`family_id`): the access token names it.
fn pair(
    state: &ApiState,
    account: &Account,
    family_id: &str,
    refresh_token: String,
    now_ms: i64,
) -> TokenResponse {
    let role = role_of(account);
    TokenResponse {
        access_token: state.auth.session_token(
            &account.customer_id,
            role,
            family_id,
            now_ms / 1000,
        ),
        token_type: "Bearer",
        expires_in: state.auth.access_ttl.as_secs(),
        refresh_token,
        refresh_expires_in: state.auth.refresh_ttl.as_secs(),
    }
}

/// The account's role; anything unknown is the least one.
pub fn role_of(account: &Account) -> Role {
    if account.role == Role::Admin.as_str() {
        Role::Admin
    } else {
        Role::Customer
    }
}

fn bad_credentials() -> Problem {
    Problem::unauthorized("wrong email or password")
}

/// `POST /v1/auth/login`.
#[utoipa::path(
    post,
    path = "/v1/auth/login",
    tag = "auth",
    summary = "Log in",
    description = "Answers an access token (a JWT, 15 minutes by default) and a refresh token \
        (30 days by default, one use). A wrong email and a wrong password get the same `401`. \
        Attempts are limited per email (10, then one per 30 s) and per client IP (50, then one \
        per 6 s), by each API instance on its own.",
    request_body(content = LoginRequest, content_type = "application/json"),
    responses(
        (status = 200, description = "Logged in.", body = TokenResponse),
        (status = 400, description = "The body is not JSON.", body = Problem,
         content_type = "application/problem+json"),
        (status = 401, description = "Wrong email or password.", body = Problem,
         content_type = "application/problem+json"),
        (status = 403, description = "The account is not verified yet, or disabled.",
         body = Problem, content_type = "application/problem+json"),
        responses::BodyTooLarge,
        responses::NotJson,
        (status = 422, description = "A field is missing or empty.", body = Problem,
         content_type = "application/problem+json"),
        (status = 429, description = "Too many attempts; wait.", body = Problem,
         content_type = "application/problem+json",
         headers(("Retry-After" = u32, description = "Seconds to wait."))),
        responses::Unavailable,
    ),
)]
pub async fn login(
    State(state): State<Arc<ApiState>>,
    request: Request,
) -> Result<Json<TokenResponse>, Problem> {
    let (parts, body) = request.into_parts();
    let req: LoginRequest = json_body(&parts.headers, body).await?;
    let mut errors = Vec::new();
    if req.email.is_empty() {
        errors.push(field("email", "must not be empty"));
    } else if req.email.chars().count() > 254 {
        errors.push(field("email", "is too long"));
    }
    if req.password.is_empty() {
        errors.push(field("password", "must not be empty"));
    } else if req.password.chars().count() > password::MAX_PASSWORD {
        errors.push(field("password", "is too long"));
    }
    if !errors.is_empty() {
        return Err(Problem::invalid(errors));
    }
    let email = normalize_email(&req.email);
    limit(&state.auth_limits.login, &email, client_ip(&state, &parts))?;
    let account = state.store.get_account_by_email(&email).await?;
    let hash = account.as_ref().map(|a| a.password_hash.clone());
    if !password::verify(req.password, hash).await {
        return Err(bad_credentials());
    }
    let Some(account) = account else {
        return Err(bad_credentials());
    };
    if account.disabled {
        return Err(Problem::forbidden("this account is disabled"));
    }
    if !account.verified {
        return Err(Problem::forbidden(
            "this account's email is not verified yet: POST /v1/auth/verify with the emailed \
             code (POST /v1/auth/resend for a new one)",
        ));
    }
    info!(customer_id = %account.customer_id, "Logged in.");
    Ok(Json(issue(&state, &account).await?))
}

fn refresh_field(req: &RefreshRequest) -> Result<(), Problem> {
    let t = req.refresh_token.as_str();
    if t.is_empty() {
        return Err(Problem::invalid(vec![field(
            "refresh_token",
            "must not be empty",
        )]));
    }
    if t.chars().count() > 512 {
        return Err(Problem::invalid(vec![field(
            "refresh_token",
            "is too long",
        )]));
    }
    Ok(())
}

/// `POST /v1/auth/refresh`.
#[utoipa::path(
    post,
    path = "/v1/auth/refresh",
    tag = "auth",
    summary = "Exchange a refresh token for a new pair",
    description = "The refresh token is used up; the answer has a new one. Presenting a used \
        refresh token again revokes every token descended from the same login.",
    request_body(content = RefreshRequest, content_type = "application/json"),
    responses(
        (status = 200, description = "A new pair.", body = TokenResponse),
        (status = 400, description = "The body is not JSON.", body = Problem,
         content_type = "application/problem+json"),
        (status = 401, description = "The refresh token is unknown, used, expired or revoked.",
         body = Problem, content_type = "application/problem+json"),
        responses::BodyTooLarge,
        responses::NotJson,
        (status = 422, description = "`refresh_token` is missing or empty.", body = Problem,
         content_type = "application/problem+json"),
        responses::Unavailable,
    ),
)]
pub async fn refresh(
    State(state): State<Arc<ApiState>>,
    JsonBody(req): JsonBody<RefreshRequest>,
) -> Result<Json<TokenResponse>, Problem> {
    refresh_field(&req)?;
    let presented = secrets::digest(&req.refresh_token);
    let next = secrets::refresh_token().map_err(internal)?;
    let now = now_ms();
    let outcome = state
        .store
        .rotate_refresh_token(
            &presented,
            &secrets::digest(&next),
            now + state.auth.refresh_ttl.as_millis() as i64,
            now,
        )
        .await?;
    let (customer_id, family_id) = match outcome {
        RotateOutcome::Rotated {
            customer_id,
            family_id,
        } => (customer_id, family_id),
        RotateOutcome::Reused => {
            warn!("A used refresh token was presented again; its family is revoked.");
            return Err(Problem::unauthorized(
                "this refresh token was used already; every token of its login is revoked now: \
                 log in again",
            ));
        }
        RotateOutcome::Revoked => {
            return Err(Problem::unauthorized(
                "this refresh token is revoked: log in again",
            ))
        }
        RotateOutcome::Expired => {
            return Err(Problem::unauthorized(
                "this refresh token has expired: log in again",
            ))
        }
        RotateOutcome::Unknown => {
            return Err(Problem::unauthorized("this refresh token is not known"))
        }
    };
    let account = state.store.get_account(&customer_id).await?;
    match account {
        Some(account) if !account.disabled => {
            Ok(Json(pair(&state, &account, &family_id, next, now)))
        }
        _ => {
            state
                .store
                .revoke_refresh_family(&secrets::digest(&next))
                .await?;
            Err(Problem::unauthorized("this account is disabled"))
        }
    }
}

/// `POST /v1/auth/logout`.
#[utoipa::path(
    post,
    path = "/v1/auth/logout",
    tag = "auth",
    summary = "Log out",
    description = "Revokes the refresh token and every token of the same login. Answers `204` \
        for an unknown token too. Access tokens already issued stay valid until they expire.",
    request_body(content = RefreshRequest, content_type = "application/json"),
    responses(
        (status = 204, description = "Logged out."),
        (status = 400, description = "The body is not JSON.", body = Problem,
         content_type = "application/problem+json"),
        responses::BodyTooLarge,
        responses::NotJson,
        (status = 422, description = "`refresh_token` is missing or empty.", body = Problem,
         content_type = "application/problem+json"),
        responses::Unavailable,
    ),
)]
pub async fn logout(
    State(state): State<Arc<ApiState>>,
    JsonBody(req): JsonBody<RefreshRequest>,
) -> Result<StatusCode, Problem> {
    refresh_field(&req)?;
    state
        .store
        .revoke_refresh_family(&secrets::digest(&req.refresh_token))
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn emails_are_checked_and_normalised() {
        assert_eq!(email_problem("ada@example.com"), None);
        assert_eq!(normalize_email("  Ada@Example.COM "), "ada@example.com");
        for bad in [
            "",
            "ada",
            "ada@",
            "@example.com",
            "ada@example",
            "a b@example.com",
            "ada@@example.com",
            "ada@example.com.",
        ] {
            assert!(email_problem(bad).is_some(), "{bad:?}");
        }
        assert!(password_problem("1234567").is_some());
        assert!(password_problem("12345678").is_none());
        assert!(name_problem(" ").is_some());
    }
}
