//! The admin API answers every error with the one problem document of
//! [`tollgate::problem`] (`application/problem+json`, `field` naming the part of the request
//! at fault). Here: the admin API's own failures turned into one, and the document's shape
//! as the OpenAPI document shows it.

pub use tollgate::problem::Problem;

pub type ApiResult<T> = Result<T, Problem>;

/// The shape of every error body ([`Problem`]), for the OpenAPI document.
#[derive(utoipa::ToSchema)]
#[schema(as = Problem)]
#[allow(dead_code)] // described, never built: the body is Problem::body
pub struct ProblemSchema {
    /// `urn:tollgate:problem:<kind>`.
    #[schema(rename = "type", example = "urn:tollgate:problem:invalid-field")]
    kind: String,
    title: String,
    status: u16,
    detail: String,
    /// The request field at fault (`endpoints[1].credits`), when one is.
    field: Option<String>,
}

impl From<crate::billing::BillingError> for Problem {
    fn from(e: crate::billing::BillingError) -> Problem {
        use crate::billing::BillingError;
        match e {
            BillingError::OutOfRange { field, .. } => Problem::invalid(field, e.to_string()),
            BillingError::KeyReused => Problem::new(
                422,
                "idempotency-key-reused",
                "Idempotency-Key reused",
                e.to_string(),
            )
            .with_field("Idempotency-Key"),
            BillingError::Invalid { field, detail } => Problem::invalid(field, detail),
            BillingError::Conflict { field, detail } => Problem::conflict(field, detail),
            BillingError::Pending(cause) => Problem::pending("ledger", cause),
            BillingError::Store(e) => e.into(),
        }
    }
}
