//! Customers: the accounts, as admins manage them and as each customer sees itself.
//!
//! - `GET /v1/customers` (admin): every account, cursor-paged.
//! - `POST /v1/customers` (admin): a new account, verified, with the role given.
//! - `GET /v1/customers/me`: the caller's own account.
//! - `GET` / `PATCH /v1/customers/{id}`: an admin, or the customer itself; another
//!   customer's id is a `404`, as if it did not exist. A customer may change its name and
//!   password, not its role (`403`).
//! - A password change of one's own account needs the current password
//!   (`current_password`; wrong ones count against the login limit of the account's email);
//!   an admin resets another account's password without it. A change ends every other login
//!   of the account: their refresh tokens are revoked, and their access tokens stop working
//!   within the sessions' recheck interval ([`crate::auth::sessions`]). The login that made
//!   the change, when it is the account's own, goes on.
//! - `DELETE /v1/customers/{id}` (admin): soft: the account is disabled (it cannot log in and
//!   its refresh tokens are revoked); its orders stay. Access tokens already issued stay valid
//!   until they expire (15 minutes by default).

use std::sync::Arc;

use axum::{
    body::Body,
    extract::{rejection::PathRejection, rejection::QueryRejection, Path, Query, State},
    http::{header, HeaderMap, HeaderValue, StatusCode},
    response::{IntoResponse, Response},
    Json,
};
use orderflow_store::Account;
use serde::{Deserialize, Serialize};
use tracing::info;
use utoipa::{IntoParams, ToSchema};

use crate::problem::responses;
use crate::{
    auth::{
        password,
        routes::{
            email_problem, email_taken, name_problem, normalize_email, password_problem, role_of,
            too_many,
        },
        Caller, Role,
    },
    orders::{json_body, rfc3339},
    problem::{FieldError, Problem},
    ApiState,
};

/// Most customers on one page.
pub const MAX_PAGE: usize = 100;
/// Customers on a page when `limit` is not given.
pub const DEFAULT_PAGE: usize = 20;

/// An account as the API shows it (never its password hash).
#[derive(Debug, Serialize, ToSchema)]
pub struct AccountView {
    /// A UUIDv7: the `customer_id` of its orders.
    pub customer_id: String,
    pub name: String,
    pub email: String,
    pub role: Role,
    /// Whether the email was verified.
    pub verified: bool,
    /// A disabled (deleted) account cannot log in.
    pub disabled: bool,
    #[schema(format = DateTime)]
    pub created_at: String,
    #[schema(format = DateTime)]
    pub updated_at: String,
}

impl From<Account> for AccountView {
    fn from(a: Account) -> Self {
        AccountView {
            role: role_of(&a),
            customer_id: a.customer_id,
            name: a.name,
            email: a.email,
            verified: a.verified,
            disabled: a.disabled,
            created_at: rfc3339(a.created_at),
            updated_at: rfc3339(a.updated_at),
        }
    }
}

/// A page of customers.
#[derive(Debug, Serialize, ToSchema)]
pub struct CustomerPage {
    pub customers: Vec<AccountView>,
    /// Pass as `after` for the next page; absent on the last page.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next: Option<String>,
}

/// `GET /v1/customers`'s query.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct PageQuery {
    /// The `next` of the previous page.
    #[param(max_length = 128)]
    pub after: Option<String>,
    /// Customers per page, 1 to 100 (20 when absent).
    #[param(minimum = 1, maximum = 100)]
    pub limit: Option<i64>,
}

/// `POST /v1/customers`'s body.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateCustomerRequest {
    #[schema(
        example = "Grace Hopper",
        max_length = 100,
        pattern = "^[^\\u0000-\\u001f\\u007f-\\u009f]*[^\\s\\u0000-\\u001f\\u007f-\\u009f][^\\u0000-\\u001f\\u007f-\\u009f]*$"
    )]
    pub name: String,
    #[schema(
        example = "grace@example.com",
        max_length = 254,
        pattern = "^[^\\s@\\u0000-\\u001f\\u007f-\\u009f]+@[^\\s@.\\u0000-\\u001f\\u007f-\\u009f]+(\\.[^\\s@.\\u0000-\\u001f\\u007f-\\u009f]+)+$"
    )]
    pub email: String,
    #[schema(min_length = 8, max_length = 128)]
    pub password: String,
    /// `customer` when absent.
    #[serde(default)]
    pub role: Option<Role>,
}

/// `PATCH /v1/customers/{id}`'s body: the fields to change.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateCustomerRequest {
    #[serde(default)]
    #[schema(
        max_length = 100,
        pattern = "^[^\\u0000-\\u001f\\u007f-\\u009f]*[^\\s\\u0000-\\u001f\\u007f-\\u009f][^\\u0000-\\u001f\\u007f-\\u009f]*$"
    )]
    pub name: Option<String>,
    /// The new password. Changing it ends the account's other logins.
    #[serde(default)]
    #[schema(min_length = 8, max_length = 128)]
    pub password: Option<String>,
    /// The password now: required with `password` when changing one's own (an admin
    /// resetting another account's password goes without); ignored otherwise.
    #[serde(default)]
    #[schema(max_length = 128)]
    pub current_password: Option<String>,
    /// Admins only.
    #[serde(default)]
    pub role: Option<Role>,
}

fn no_customer(id: &str) -> Problem {
    Problem::not_found(format!("no customer {id}"))
}

/// The account `id` if the caller may see it; `404` otherwise (missing or someone else's).
async fn visible(state: &ApiState, caller: &Caller, id: &str) -> Result<Account, Problem> {
    if !caller.may_access(id) {
        return Err(no_customer(id));
    }
    state
        .store
        .get_account(id)
        .await?
        .ok_or_else(|| no_customer(id))
}

/// `GET /v1/customers`.
#[utoipa::path(
    get,
    path = "/v1/customers",
    operation_id = "list_customers",
    tag = "customers",
    summary = "List customers (admin)",
    description = "Every account, disabled ones included, in a stable order, a page at a time: \
        pass the page's `next` as `after` for the next one.",
    params(PageQuery),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "A page.", body = CustomerPage),
        (status = 400, description = "The query is malformed.", body = Problem,
         content_type = "application/problem+json"),
        responses::Unauthorized,
        responses::Forbidden,
        (status = 422, description = "`limit` is out of range.", body = Problem,
         content_type = "application/problem+json"),
        responses::Unavailable,
    ),
)]
pub async fn list(
    State(state): State<Arc<ApiState>>,
    caller: Caller,
    query: Result<Query<PageQuery>, QueryRejection>,
) -> Result<Json<CustomerPage>, Problem> {
    caller.require_admin()?;
    let Query(query) = query.map_err(|e| {
        Problem::field(
            StatusCode::BAD_REQUEST,
            "invalid-query",
            "Invalid query",
            "query",
            e.body_text(),
        )
    })?;
    let limit = match query.limit {
        None => DEFAULT_PAGE,
        Some(n) if (1..=MAX_PAGE as i64).contains(&n) => n as usize,
        Some(_) => {
            return Err(Problem::invalid(vec![FieldError {
                field: "query:limit".into(),
                message: format!("must be 1 to {MAX_PAGE}"),
            }]))
        }
    };
    if query
        .after
        .as_ref()
        .is_some_and(|a| a.chars().count() > 128)
    {
        return Err(Problem::invalid(vec![FieldError {
            field: "query:after".into(),
            message: "is too long".into(),
        }]));
    }
    let accounts = state
        .store
        .list_accounts(query.after.as_deref(), limit)
        .await?;
    let next = (accounts.len() == limit)
        .then(|| accounts.last().map(|a| a.customer_id.clone()))
        .flatten();
    Ok(Json(CustomerPage {
        customers: accounts.into_iter().map(AccountView::from).collect(),
        next,
    }))
}

/// `POST /v1/customers`.
#[utoipa::path(
    post,
    path = "/v1/customers",
    operation_id = "create_customer",
    tag = "customers",
    summary = "Create a customer (admin)",
    description = "A verified account with the role given (`customer` by default).",
    request_body(content = CreateCustomerRequest, content_type = "application/json"),
    security(("bearer" = [])),
    responses(
        (status = 201, description = "Created.", body = AccountView,
         headers(("Location" = String, description = "`/v1/customers/{customer_id}`."))),
        (status = 400, description = "The body is not JSON.", body = Problem,
         content_type = "application/problem+json"),
        responses::Unauthorized,
        responses::Forbidden,
        (status = 409, description = "The email is in use.", body = Problem,
         content_type = "application/problem+json"),
        responses::BodyTooLarge,
        responses::NotJson,
        (status = 422, description = "Fields are missing or invalid.", body = Problem,
         content_type = "application/problem+json"),
        responses::Unavailable,
    ),
)]
pub async fn create(
    State(state): State<Arc<ApiState>>,
    caller: Caller,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, Problem> {
    caller.require_admin()?;
    let req: CreateCustomerRequest = json_body(&headers, body).await?;
    let mut errors = Vec::new();
    if let Some(m) = name_problem(&req.name) {
        errors.push(FieldError {
            field: "name".into(),
            message: m,
        });
    }
    if let Some(m) = email_problem(&req.email) {
        errors.push(FieldError {
            field: "email".into(),
            message: m.into(),
        });
    }
    if let Some(m) = password_problem(&req.password) {
        errors.push(FieldError {
            field: "password".into(),
            message: m,
        });
    }
    if !errors.is_empty() {
        return Err(Problem::invalid(errors));
    }
    let account = new_account(
        &req.name,
        &req.email,
        req.role.unwrap_or(Role::Customer),
        req.password,
    )
    .await?;
    if !state.store.create_account(account.clone()).await? {
        return Err(email_taken());
    }
    info!(customer_id = %account.customer_id, by = %caller.customer_id, "Customer created.");
    let mut response = (
        StatusCode::CREATED,
        Json(AccountView::from(account.clone())),
    )
        .into_response();
    if let Ok(location) = HeaderValue::from_str(&format!("/v1/customers/{}", account.customer_id)) {
        response.headers_mut().insert(header::LOCATION, location);
    }
    Ok(response)
}

/// A verified account, its password hashed (seeding and admins).
pub async fn new_account(
    name: &str,
    email: &str,
    role: Role,
    password: String,
) -> Result<Account, Problem> {
    let password_hash = password::hash(password).await.map_err(|e| {
        Problem::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "Internal error",
            e,
        )
    })?;
    let now = orderflow_schemas::now_millis();
    Ok(Account {
        customer_id: uuid::Uuid::now_v7().to_string(),
        name: name.trim().to_string(),
        email: normalize_email(email),
        role: role.as_str().to_string(),
        password_hash,
        verified: true,
        disabled: false,
        created_at: now,
        updated_at: now,
    })
}

/// `GET /v1/customers/me`.
#[utoipa::path(
    get,
    path = "/v1/customers/me",
    operation_id = "get_me",
    tag = "customers",
    summary = "Read your own account",
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The caller's account.", body = AccountView),
        responses::Unauthorized,
        (status = 404, description = "The account is gone.", body = Problem,
         content_type = "application/problem+json"),
        responses::Unavailable,
    ),
)]
pub async fn me(
    State(state): State<Arc<ApiState>>,
    caller: Caller,
) -> Result<Json<AccountView>, Problem> {
    let id = caller.customer_id.clone();
    Ok(Json(visible(&state, &caller, &id).await?.into()))
}

/// `GET /v1/customers/{id}`.
#[utoipa::path(
    get,
    path = "/v1/customers/{id}",
    operation_id = "get_customer",
    tag = "customers",
    summary = "Read a customer",
    description = "An admin reads any; a customer only itself (another id is a `404`).",
    params(("id" = String, Path, description = "The customer id.")),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The account.", body = AccountView),
        (status = 400, description = "The id is not UTF-8 once percent-decoded.", body = Problem,
         content_type = "application/problem+json"),
        responses::Unauthorized,
        (status = 404, description = "No such customer (or not yours).", body = Problem,
         content_type = "application/problem+json"),
        responses::Unavailable,
    ),
)]
pub async fn get(
    State(state): State<Arc<ApiState>>,
    caller: Caller,
    id: Result<Path<String>, PathRejection>,
) -> Result<Json<AccountView>, Problem> {
    let id = crate::problem::path("id", id)?;
    Ok(Json(visible(&state, &caller, &id).await?.into()))
}

/// `PATCH /v1/customers/{id}`.
#[utoipa::path(
    patch,
    path = "/v1/customers/{id}",
    operation_id = "update_customer",
    tag = "customers",
    summary = "Change a customer",
    description = "Name and password, by an admin or the customer itself; the role, by an \
        admin only (`403` for a customer). Changing one's own password needs the current one \
        (`current_password`: `422` when missing, `403` when wrong; wrong ones count against \
        the login limit of the account's email, `429`); an admin resets another account's \
        password without it. A password change ends every other login of the account: their \
        refresh tokens are revoked at once and their access tokens are refused within 2 s. \
        The login that made the change goes on when it is the account's own (its tokens stay \
        valid, nothing new is issued); an admin's reset ends all of the account's logins.",
    params(("id" = String, Path, description = "The customer id.")),
    request_body(content = UpdateCustomerRequest, content_type = "application/json"),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The account as changed.", body = AccountView),
        (status = 400, description = "The body is not JSON.", body = Problem,
         content_type = "application/problem+json"),
        responses::Unauthorized,
        (status = 403, description = "A customer tried to change a role, or \
            `current_password` is wrong.", body = Problem,
         content_type = "application/problem+json"),
        (status = 404, description = "No such customer (or not yours).", body = Problem,
         content_type = "application/problem+json"),
        responses::BodyTooLarge,
        responses::NotJson,
        (status = 422, description = "Fields are invalid, or `current_password` is missing.",
         body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "Too many wrong current passwords; wait.", body = Problem,
         content_type = "application/problem+json",
         headers(("Retry-After" = u32, description = "Seconds to wait."))),
        responses::Unavailable,
    ),
)]
pub async fn update(
    State(state): State<Arc<ApiState>>,
    caller: Caller,
    id: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<AccountView>, Problem> {
    let id = crate::problem::path("id", id)?;
    let mut account = visible(&state, &caller, &id).await?;
    let req: UpdateCustomerRequest = json_body(&headers, body).await?;
    let mut errors = Vec::new();
    if let Some(m) = req.name.as_deref().and_then(name_problem) {
        errors.push(FieldError {
            field: "name".into(),
            message: m,
        });
    }
    if let Some(m) = req.password.as_deref().and_then(password_problem) {
        errors.push(FieldError {
            field: "password".into(),
            message: m,
        });
    }
    // One's own password is changed with the current one; an admin resets others' without.
    let own = caller.customer_id == account.customer_id;
    let current = match (&req.password, own, req.current_password.as_deref()) {
        (_, _, Some(c)) if c.chars().count() > password::MAX_PASSWORD => {
            errors.push(FieldError {
                field: "current_password".into(),
                message: "is too long".into(),
            });
            None
        }
        (Some(_), true, None | Some("")) => {
            errors.push(FieldError {
                field: "current_password".into(),
                message: "is required to change your own password".into(),
            });
            None
        }
        (Some(_), true, Some(c)) => Some(c.to_string()),
        _ => None,
    };
    if !errors.is_empty() {
        return Err(Problem::invalid(errors));
    }
    if let Some(role) = req.role {
        if role != role_of(&account) {
            caller
                .require_admin()
                .map_err(|_| Problem::forbidden("only an admin may change a role"))?;
            account.role = role.as_str().to_string();
        }
    }
    if let Some(current) = current {
        state
            .auth_limits
            .login
            .per_email
            .check(&account.email)
            .map_err(too_many)?;
        if !password::verify(current, Some(account.password_hash.clone())).await {
            return Err(Problem::field(
                StatusCode::FORBIDDEN,
                "wrong-password",
                "Wrong password",
                "current_password",
                "is not the account's password",
            ));
        }
    }
    if let Some(name) = req.name {
        account.name = name.trim().to_string();
    }
    let password_changed = req.password.is_some();
    if let Some(password) = req.password {
        account.password_hash = password::hash(password).await.map_err(|e| {
            Problem::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "Internal error",
                e,
            )
        })?;
    }
    account.updated_at = orderflow_schemas::now_millis().max(account.updated_at);
    if !state.store.update_account(account.clone()).await? {
        return Err(no_customer(&id));
    }
    if password_changed {
        // Every other login ends; the caller's own goes on when it changed its own password.
        let keep = if own {
            caller.session_id.as_deref()
        } else {
            None
        };
        state
            .store
            .revoke_customer_refresh_tokens(&id, keep)
            .await?;
        info!(customer_id = %id, by = %caller.customer_id, "Password changed; other logins ended.");
    }
    Ok(Json(account.into()))
}

/// `DELETE /v1/customers/{id}`.
#[utoipa::path(
    delete,
    path = "/v1/customers/{id}",
    operation_id = "delete_customer",
    tag = "customers",
    summary = "Disable a customer (admin)",
    description = "Soft: the account is disabled, cannot log in, and its refresh tokens are \
        revoked; its orders stay. Deleting a disabled account again is a `204` too.",
    params(("id" = String, Path, description = "The customer id.")),
    security(("bearer" = [])),
    responses(
        (status = 204, description = "Disabled."),
        (status = 400, description = "The id is not UTF-8 once percent-decoded.", body = Problem,
         content_type = "application/problem+json"),
        responses::Unauthorized,
        (status = 403, description = "Not an admin (deleting yourself).", body = Problem,
         content_type = "application/problem+json"),
        (status = 404, description = "No such customer (or not yours).", body = Problem,
         content_type = "application/problem+json"),
        responses::Unavailable,
    ),
)]
pub async fn delete(
    State(state): State<Arc<ApiState>>,
    caller: Caller,
    id: Result<Path<String>, PathRejection>,
) -> Result<StatusCode, Problem> {
    let id = crate::problem::path("id", id)?;
    let mut account = visible(&state, &caller, &id).await?;
    caller.require_admin()?;
    if !account.disabled {
        account.disabled = true;
        account.updated_at = orderflow_schemas::now_millis().max(account.updated_at);
        state.store.update_account(account).await?;
    }
    // Also on a repeat: a crash between the two steps is mended by deleting again.
    state
        .store
        .revoke_customer_refresh_tokens(&id, None)
        .await?;
    info!(customer_id = %id, by = %caller.customer_id, "Customer disabled.");
    Ok(StatusCode::NO_CONTENT)
}
