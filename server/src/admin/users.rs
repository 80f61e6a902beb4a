//! Users' gift balances: crediting, and reading a balance.
//!
//! A credit is journaled and synced by the embedded ledger before it is
//! answered, so an answered credit survives a restart. A credit is not
//! idempotent: a caller that retries one it did not see answered may credit
//! twice.

use std::time::SystemTime;

use axum::Json;
use axum::extract::State;
use roomcast_protocol::unix_ms;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::AdminState;
use super::errors::{ApiCode, ApiError, ApiResult, JsonBody, PathParams, user_id};
use crate::gifts::LedgerError;

/// Most one credit may add: a guard against a typo of a few extra digits.
pub const MAX_CREDIT: u64 = 1_000_000_000_000;

/// A credit to apply.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreditRequest {
    /// Currency units to add, 1 to 10^12.
    #[schema(minimum = 1, maximum = 1_000_000_000_000_u64)]
    pub amount: u64,
}

/// A user's balance after a credit.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Balance {
    pub user: String,
    pub balance: u64,
}

/// Credits a user's gift balance (the embedded ledger's journal in the
/// node's data directory).
#[utoipa::path(
    post,
    path = "/v1/users/{user}/credit",
    tag = "gifts",
    params(("user" = String, Path, description = "User id (the token's `sub`)")),
    request_body(content = CreditRequest),
    responses(
        (status = 200, description = "Credited; the new balance", body = Balance),
        (status = 409, description = "Balances are kept by the platform's backend (`LEDGER_REMOTE`): the node has a webhook ledger", body = super::errors::ErrorBody),
        (status = 503, description = "The ledger could not record it (`LEDGER_UNAVAILABLE`)", body = super::errors::ErrorBody)
    )
)]
pub(super) async fn credit(
    State(state): State<AdminState>,
    PathParams(user): PathParams<String>,
    JsonBody(req): JsonBody<CreditRequest>,
) -> ApiResult<Json<Balance>> {
    let user = user_id(&user)?;
    if req.amount == 0 || req.amount > MAX_CREDIT {
        return Err(ApiError::invalid(format!("amount must be 1 to {MAX_CREDIT}")));
    }
    let balance = state.gifts.ledger.credit(user, req.amount, unix_ms(SystemTime::now())).await.map_err(
        |e| match e {
            LedgerError::Remote => ApiError::new(ApiCode::LedgerRemote, e.to_string()),
            e => ApiError::new(ApiCode::LedgerUnavailable, e.to_string()),
        },
    )?;
    Ok(Json(Balance { user: user.to_string(), balance }))
}
