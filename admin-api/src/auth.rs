//! Sign-up and log-in. Passwords are hashed with argon2id (the `argon2` crate's defaults:
//! 19 MiB, 2 passes, OWASP's recommendation); a failed login is one 401 whatever was wrong,
//! costs the same time whether the email exists or not, and after [`FREE_FAILURES`]
//! failures an account is locked for a time that doubles with each further failure, counted
//! across every control-plane replica when the ledger is Redis ([`Throttle`]).

use crate::extract::Body;
use crate::problem::{ApiResult, Problem, ProblemSchema};
use crate::records::UserDoc;
use crate::AdminState;
use argon2::password_hash::rand_core::OsRng;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};
use tollgate::auth::Role;
use tollgate::ledger::{Coordination, LoginOp, LoginPolicy};
use tollgate::store::{Documents, Kind, NewTenant, Store};
use tollgate::vocab::TenantStatus;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

/// `/auth/register` and `/auth/login`.
pub fn router() -> OpenApiRouter<AdminState> {
    OpenApiRouter::new()
        .routes(routes!(register))
        .routes(routes!(login))
}

pub const MIN_PASSWORD_CHARS: usize = 8;
pub const MAX_PASSWORD_CHARS: usize = 256;
pub const MAX_EMAIL_CHARS: usize = 254;
pub const MAX_NAME_CHARS: usize = 128;

/// Failed logins allowed per account within [`FAILURE_WINDOW`] before it is locked.
const FREE_FAILURES: u32 = 5;
const FAILURE_WINDOW: Duration = Duration::from_secs(15 * 60);
const FIRST_LOCK: Duration = Duration::from_secs(30);
const LONGEST_LOCK: Duration = Duration::from_secs(15 * 60);
const POLICY: LoginPolicy = LoginPolicy {
    free: FREE_FAILURES,
    window: FAILURE_WINDOW,
    first_lock: FIRST_LOCK,
    longest_lock: LONGEST_LOCK,
};

pub fn hash_password(password: &str) -> Result<String, String> {
    let salt = SaltString::generate(&mut OsRng);
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| e.to_string())
}

fn verify_password(password: &str, hash: &str) -> bool {
    PasswordHash::new(hash).is_ok_and(|h| {
        Argon2::default()
            .verify_password(password.as_bytes(), &h)
            .is_ok()
    })
}

/// A hash to verify against when the email is unknown, so both failures take as long.
fn decoy_hash() -> &'static str {
    static DECOY: OnceLock<String> = OnceLock::new();
    DECOY.get_or_init(|| hash_password("tollgate-decoy-password").unwrap_or_default())
}

pub fn normalize_email(email: &str) -> String {
    email.trim().to_lowercase()
}

/// A practical check (RFC 5321 lengths, one `@`, a dotted domain), not the full grammar.
pub fn check_email(email: &str) -> Result<(), Problem> {
    let bad = |why: &str| Err(Problem::invalid("email", why.to_owned()));
    if email.chars().count() > MAX_EMAIL_CHARS {
        return bad("at most 254 characters");
    }
    let Some((local, domain)) = email.split_once('@') else {
        return bad("not an email address");
    };
    let ok = !local.is_empty()
        && local.chars().count() <= 64
        && domain.contains('.')
        && !domain.starts_with('.')
        && !domain.ends_with('.')
        && !domain.contains('@')
        && !email.chars().any(|c| c.is_whitespace() || c.is_control());
    if ok {
        Ok(())
    } else {
        bad("not an email address")
    }
}

pub fn check_password(password: &str) -> Result<(), Problem> {
    let n = password.chars().count();
    if !(MIN_PASSWORD_CHARS..=MAX_PASSWORD_CHARS).contains(&n) {
        return Err(Problem::invalid(
            "password",
            format!("{MIN_PASSWORD_CHARS} to {MAX_PASSWORD_CHARS} characters"),
        ));
    }
    Ok(())
}

pub fn check_name(field: &str, name: &str) -> Result<(), Problem> {
    let n = name.chars().count();
    if n == 0 || n > MAX_NAME_CHARS || name.trim().is_empty() || name.chars().any(char::is_control)
    {
        return Err(Problem::invalid(
            field,
            format!("1 to {MAX_NAME_CHARS} characters, no control characters"),
        ));
    }
    Ok(())
}

/// Failed logins per account: counted in the ledger when it is shared (Redis: every
/// control-plane replica sees the same count, so N replicas do not give N times the
/// guesses), else, or while the ledger cannot answer, in this process.
pub struct Throttle {
    ledger: Arc<dyn Coordination>,
    local: LocalThrottle,
}

impl Throttle {
    pub fn new(ledger: Arc<dyn Coordination>) -> Throttle {
        Throttle {
            ledger,
            local: LocalThrottle::default(),
        }
    }

    /// Applies `op` to the shared count; `None` when there is none to use right now.
    async fn shared(&self, email: &str, op: LoginOp) -> Option<Duration> {
        match self.ledger.login_attempts(email, op, &POLICY).await {
            Ok(locked) => locked,
            Err(e) => {
                tracing::warn!(error = %e, "login throttle: the ledger did not answer; counting in this process");
                None
            }
        }
    }

    /// Seconds until `email` may try again, if it is locked.
    async fn locked(&self, email: &str) -> Option<u64> {
        match self.shared(email, LoginOp::Check).await {
            Some(locked) if locked.is_zero() => None,
            Some(locked) => Some(locked.as_secs().max(1)),
            None => self.local.locked(email),
        }
    }

    async fn failed(&self, email: &str) {
        if self.shared(email, LoginOp::Fail).await.is_none() {
            self.local.failed(email);
        }
    }

    async fn succeeded(&self, email: &str) {
        self.shared(email, LoginOp::Reset).await;
        self.local.succeeded(email);
    }
}

/// This process's count of failed logins per account.
#[derive(Default)]
struct LocalThrottle {
    accounts: Mutex<HashMap<String, Failures>>,
}

struct Failures {
    count: u32,
    first: Instant,
    locked_until: Option<Instant>,
}

impl LocalThrottle {
    fn locked(&self, email: &str) -> Option<u64> {
        let accounts = self.accounts.lock().unwrap_or_else(|p| p.into_inner());
        let until = accounts.get(email)?.locked_until?;
        let left = until.checked_duration_since(Instant::now())?;
        Some(left.as_secs().max(1))
    }

    fn failed(&self, email: &str) {
        let now = Instant::now();
        let mut accounts = self.accounts.lock().unwrap_or_else(|p| p.into_inner());
        if accounts.len() > 100_000 {
            accounts.retain(|_, f| now.duration_since(f.first) < FAILURE_WINDOW);
        }
        let failures = accounts.entry(email.to_owned()).or_insert(Failures {
            count: 0,
            first: now,
            locked_until: None,
        });
        if now.duration_since(failures.first) > FAILURE_WINDOW && failures.locked_until.is_none() {
            failures.count = 0;
            failures.first = now;
        }
        failures.count += 1;
        if failures.count >= FREE_FAILURES {
            let doublings = (failures.count - FREE_FAILURES).min(10);
            let lock = (FIRST_LOCK * 2u32.pow(doublings)).min(LONGEST_LOCK);
            failures.locked_until = Some(now + lock);
        }
    }

    fn succeeded(&self, email: &str) {
        let mut accounts = self.accounts.lock().unwrap_or_else(|p| p.into_inner());
        accounts.remove(email);
    }
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Register {
    /// At most 254 characters: a local part of 1 to 64, `@`, a domain with a dot inside.
    #[schema(
        example = "ada@example.com",
        max_length = 254,
        pattern = r"^[^\s@\u0000-\u001F\u007F-\u009F]{1,64}@[^\s@.\u0000-\u001F\u007F-\u009F][^\s@\u0000-\u001F\u007F-\u009F]*\.[^\s@\u0000-\u001F\u007F-\u009F]*[^\s@.\u0000-\u001F\u007F-\u009F]$"
    )]
    email: String,
    /// 8 to 256 characters.
    #[schema(min_length = 8, max_length = 256)]
    password: String,
    /// The new tenant's display name.
    #[schema(
        min_length = 1,
        max_length = 128,
        pattern = r"^[^\u0000-\u001F\u007F-\u009F]*[^\s\u0000-\u001F\u007F-\u009F][^\u0000-\u001F\u007F-\u009F]*$"
    )]
    tenant_name: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Registered {
    user_id: String,
    tenant_id: String,
    email: String,
    role: String,
}

fn new_id(prefix: &str) -> String {
    use rand::Rng;
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    let mut rng = rand::thread_rng();
    let tail: String = (0..12)
        .map(|_| char::from(ALPHABET[rng.gen_range(0..ALPHABET.len())]))
        .collect();
    format!("{prefix}_{tail}")
}

/// Creates a tenant (with `admin.signup_credits`) and its first user, role `user`.
#[utoipa::path(post, path = "/auth/register", tag = "auth", request_body = Register,
    responses((status = 201, body = Registered), (status = 409, body = ProblemSchema), (status = 422, body = ProblemSchema)))]
pub async fn register(
    State(state): State<AdminState>,
    Body(body): Body<Register>,
) -> ApiResult<(StatusCode, Json<Registered>)> {
    if !state.settings.registration {
        return Err(Problem::new(
            403,
            "registration-closed",
            "Forbidden",
            "self-registration is closed; ask an administrator",
        ));
    }
    check_email(&body.email)?;
    let email = normalize_email(&body.email);
    check_password(&body.password)?;
    check_name("tenant_name", &body.tenant_name)?;
    if state
        .docs
        .find_doc(Kind::Users, "email", &email)
        .await?
        .is_some()
    {
        return Err(Problem::conflict(
            "email",
            "this email is already registered",
        ));
    }
    let password = body.password;
    let hash = tokio::task::spawn_blocking(move || hash_password(&password))
        .await
        .map_err(|e| Problem::unavailable("password hasher", e))?
        .map_err(|e| Problem::unavailable("password hasher", e))?;
    let tenant_id = new_id("t");
    let tenant = NewTenant {
        id: &tenant_id,
        name: body.tenant_name.trim(),
        status: TenantStatus::Active,
        initial_credits: state.settings.signup_credits,
        actor: "signup",
    };
    state.store.ensure_tenant(&tenant).await?;
    let user = UserDoc {
        id: new_id("u"),
        email: email.clone(),
        password_hash: hash,
        tenant_id: tenant_id.clone(),
        role: Role::User,
        disabled: false,
        created_at_ms: crate::time::now_ms(),
        last_login_at_ms: None,
        tokens_valid_after_ms: None,
    };
    if !state.docs.insert_doc(Kind::Users, &user.to_doc()).await? {
        return Err(Problem::conflict(
            "email",
            "this email is already registered",
        ));
    }
    state.catalog_changed().await;
    tracing::info!(user_id = %user.id, %tenant_id, "registered");
    Ok((
        StatusCode::CREATED,
        Json(Registered {
            user_id: user.id,
            tenant_id,
            email,
            role: "user".into(),
        }),
    ))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Login {
    pub(crate) email: String,
    pub(crate) password: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct TokenResponse {
    pub(crate) access_token: String,
    #[schema(example = "Bearer")]
    token_type: &'static str,
    /// Seconds until the token expires.
    pub(crate) expires_in: u64,
}

/// Exchanges email and password for a bearer token (the gateway accepts it too).
#[utoipa::path(post, path = "/auth/login", tag = "auth", request_body = Login,
    responses((status = 200, body = TokenResponse), (status = 401, body = ProblemSchema), (status = 429, body = ProblemSchema)))]
pub async fn login(
    State(state): State<AdminState>,
    Body(body): Body<Login>,
) -> ApiResult<Json<TokenResponse>> {
    let (token, _) = sign_in(&state, body).await?;
    Ok(Json(token))
}

/// Checks email and password (the account lock included) and mints the user's token: the
/// one way in, for `/auth/login` and the console's sign-in alike.
pub(crate) async fn sign_in(
    state: &AdminState,
    body: Login,
) -> ApiResult<(TokenResponse, UserDoc)> {
    let email = normalize_email(&body.email);
    if let Some(retry_after) = state.throttle.locked(&email).await {
        return Err(Problem::too_many_attempts(retry_after));
    }
    let user = match state.docs.find_doc(Kind::Users, "email", &email).await? {
        Some(doc) => Some(UserDoc::from_doc(doc)?),
        None => None,
    };
    let hash = user
        .as_ref()
        .map_or_else(|| decoy_hash().to_owned(), |u| u.password_hash.clone());
    let password = body.password;
    let matches = tokio::task::spawn_blocking(move || verify_password(&password, &hash))
        .await
        .map_err(|e| Problem::unavailable("password hasher", e))?;
    let Some(user) = user.filter(|u| matches && !u.disabled) else {
        state.throttle.failed(&email).await;
        return Err(Problem::unauthorized("invalid email or password"));
    };
    state.throttle.succeeded(&email).await;
    // Only this field: a whole-document write would undo an operator's change (disabled,
    // role, tenant) made while the password was being checked.
    let mut seen = tollgate::store::Doc::new();
    seen.insert("last_login_at_ms".into(), crate::time::now_ms().into());
    if let Err(e) = state.docs.update_doc(Kind::Users, &user.id, &seen).await {
        tracing::warn!(user_id = %user.id, error = %e, "last_login_at not recorded");
    }
    // The token states the user as they are now, not as read before the password check:
    // a change made meanwhile is in it, or (made after this read) voids it by time.
    let Some(user) = crate::records::user(&*state.docs, &user.id)
        .await?
        .filter(|u| !u.disabled)
    else {
        return Err(Problem::unauthorized("invalid email or password"));
    };
    let ttl = state.settings.token_ttl_secs;
    let token = tollgate::auth::mint(&state.auth, &user.tenant_id, &user.id, user.role, ttl)
        .map_err(|e| Problem::unavailable("token signer", e))?;
    let token = TokenResponse {
        access_token: token,
        token_type: "Bearer",
        expires_in: ttl,
    };
    Ok((token, user))
}

/// `tollgate create-admin`: the first admin, never through self-registration. Creates the
/// operators' tenant (0 credits) when it does not exist.
pub async fn create_admin(
    store: &dyn Store,
    docs: &dyn Documents,
    email: &str,
    password: &str,
    tenant_id: &str,
) -> Result<String, String> {
    check_email(email).map_err(|e| format!("--email: {}", e.detail))?;
    let email = normalize_email(email);
    check_password(password).map_err(|e| format!("password: {}", e.detail))?;
    if !tollgate::vocab::is_valid_tenant_id(tenant_id) {
        return Err("--tenant: 1 to 64 characters of A-Z a-z 0-9 _ . -".into());
    }
    let tenant = NewTenant {
        id: tenant_id,
        name: "Operators",
        status: TenantStatus::Active,
        initial_credits: 0,
        actor: "create-admin",
    };
    store
        .ensure_tenant(&tenant)
        .await
        .map_err(|e| e.to_string())?;
    let user = UserDoc {
        id: new_id("u"),
        email,
        password_hash: hash_password(password)?,
        tenant_id: tenant_id.to_owned(),
        role: Role::Admin,
        disabled: false,
        created_at_ms: crate::time::now_ms(),
        last_login_at_ms: None,
        tokens_valid_after_ms: None,
    };
    if !docs
        .insert_doc(Kind::Users, &user.to_doc())
        .await
        .map_err(|e| e.to_string())?
    {
        return Err("a user with this email exists".into());
    }
    Ok(user.id)
}
