//! Bearer tokens: looked up by their hash in the store; scopes `read` ⊂ `operate` ⊂ `admin`,
//! and `audit` held by `admin` or given on its own.

use axum::http::{header, HeaderMap};

use super::problem::Problem;
use super::AppState;
use crate::store::{Scope, TokenHash, TokenRecord};

/// Longer presented tokens are refused unhashed (a real one is 48 characters).
const MAX_TOKEN_LEN: usize = 512;

/// Whether `held` grants `needed`.
pub fn grants(held: &[Scope], needed: Scope) -> bool {
    held.iter().any(|&h| {
        h == needed
            || match needed {
                Scope::Read => matches!(h, Scope::Operate | Scope::Admin),
                Scope::Operate => h == Scope::Admin,
                Scope::Audit => h == Scope::Admin,
                Scope::Admin => false,
            }
    })
}

/// The token of the request, if it grants `needed`: 401 without a valid one, 403 when its
/// scopes fall short.
pub async fn authorize(
    state: &AppState,
    headers: &HeaderMap,
    needed: Scope,
) -> Result<TokenRecord, Problem> {
    let token = state
        .store
        .find_token(&presented_hash(headers)?)
        .await?
        .ok_or_else(|| Problem::unauthorized("the token is unknown or revoked"))?;
    if !grants(&token.scopes, needed) {
        return Err(forbidden(&token, needed));
    }
    Ok(token)
}

/// The hash of the bearer token a request presents (401 without one).
pub fn presented_hash(headers: &HeaderMap) -> Result<TokenHash, Problem> {
    let presented = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            let (scheme, rest) = v.split_once(' ')?;
            scheme.eq_ignore_ascii_case("bearer").then(|| rest.trim())
        })
        .filter(|t| !t.is_empty() && t.len() <= MAX_TOKEN_LEN)
        .ok_or_else(|| Problem::unauthorized("an Authorization: Bearer token is required"))?;
    Ok(TokenHash::of(presented))
}

/// 403 for a token that lacks `needed`.
pub fn forbidden(token: &TokenRecord, needed: Scope) -> Problem {
    Problem::forbidden(format!(
        "token {} lacks the {} scope",
        token.name,
        needed.as_str()
    ))
    .by_token(token.name.as_str())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scopes_nest() {
        use Scope::*;
        assert!(grants(&[Read], Read));
        assert!(!grants(&[Read], Operate));
        assert!(grants(&[Operate], Read));
        assert!(!grants(&[Operate], Admin));
        assert!(grants(&[Admin], Read));
        assert!(grants(&[Admin], Operate));
        assert!(grants(&[Admin], Audit));
        assert!(grants(&[Audit], Audit));
        assert!(!grants(&[Audit], Read));
        assert!(!grants(&[Read, Operate], Audit));
        assert!(!grants(&[], Read));
    }
}
