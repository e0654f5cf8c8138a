//! The OpenAPI document, finished once the routes have described themselves: the answers
//! every operation shares are added here, in one place, rather than repeated on each
//! handler, so the document says what the server really does (checked by
//! `scripts/api-check.sh`, which runs schemathesis against it).
//!
//! - every error is `application/problem+json` with the [`Problem`](crate::problem::ProblemSchema)
//!   schema;
//! - an operation behind the bearer token may answer `401`, and an `/admin/*` one `403`;
//! - an operation with a JSON body may answer `400` (not JSON), `413` (too large), `415`
//!   (not `application/json`) and `422` (a field refused, named in `field`); one with query
//!   parameters `422`;
//! - every operation may answer `503` when a backend (store, ledger) does not answer;
//! - operation ids are unique (a handler's name, prefixed by its tag where two share it).

use std::collections::HashMap;
use utoipa::openapi::content::ContentBuilder;
use utoipa::openapi::path::{Operation, ParameterIn};
use utoipa::openapi::response::{Response, ResponseBuilder};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{OpenApi, Ref, RefOr};

const PROBLEM_JSON: &str = tollgate::problem::CONTENT_TYPE;

/// Finishes `api` (see the module's note).
pub fn finish(api: &mut OpenApi) {
    api.info.title = "Tollgate admin API".into();
    api.info.version = env!("CARGO_PKG_VERSION").into();
    api.info.description = Some("The control plane of Tollgate (docs/ADMIN-API.md).".into());
    let components = api.components.get_or_insert_with(Default::default);
    components.add_security_scheme(
        "bearer",
        SecurityScheme::Http(
            HttpBuilder::new()
                .scheme(HttpAuthScheme::Bearer)
                .bearer_format("JWT")
                .build(),
        ),
    );
    let mut names: HashMap<String, usize> = HashMap::new();
    for item in api.paths.paths.values() {
        for operation in operations(item) {
            if let Some(id) = &operation.operation_id {
                *names.entry(id.clone()).or_default() += 1;
            }
        }
    }
    for (path, item) in api.paths.paths.iter_mut() {
        let admin_only = path.starts_with("/admin/");
        for operation in operations_mut(item) {
            shared_answers(operation, admin_only);
            if let (Some(id), Some(tag)) = (
                &operation.operation_id,
                operation.tags.as_ref().and_then(|t| t.first()),
            ) {
                if names.get(id).copied().unwrap_or(0) > 1 {
                    operation.operation_id = Some(format!("{tag}_{id}"));
                }
            }
        }
    }
}

fn shared_answers(operation: &mut Operation, admin_only: bool) {
    let responses = &mut operation.responses.responses;
    // What the handlers declared as errors: the problem document's media type.
    for (status, response) in responses.iter_mut() {
        let error = status.parse::<u16>().is_ok_and(|s| s >= 400);
        if let (true, RefOr::T(response)) = (error, response) {
            if let Some(content) = response.content.shift_remove("application/json") {
                response.content.insert(PROBLEM_JSON.to_owned(), content);
            }
        }
    }
    let mut add = |status: &str, description: &str| {
        responses
            .entry(status.to_owned())
            .or_insert_with(|| RefOr::T(problem(description)));
    };
    let secured = operation.security.as_ref().is_some_and(|s| !s.is_empty());
    if secured {
        add(
            "401",
            "No valid bearer token (missing, malformed, expired or revoked)",
        );
        if admin_only {
            add("403", "The token's role is not `admin`");
        }
    }
    if operation.request_body.is_some() {
        add("400", "The body is not JSON");
        add("413", "The body is larger than 64 KiB");
        add("415", "The body is not sent as `application/json`");
        add(
            "422",
            "A field is missing, unknown or not acceptable (named in `field`)",
        );
    }
    let has_query = operation.parameters.as_ref().is_some_and(|ps| {
        ps.iter()
            .any(|p| matches!(p.parameter_in, ParameterIn::Query))
    });
    if has_query {
        add(
            "422",
            "A query parameter is not acceptable (named in `field`)",
        );
    }
    add(
        "503",
        "A backend (store or ledger) did not answer; retry shortly",
    );
}

fn problem(description: &str) -> Response {
    ResponseBuilder::new()
        .description(description)
        .content(
            PROBLEM_JSON,
            ContentBuilder::new()
                .schema(Some(Ref::from_schema_name("Problem")))
                .build(),
        )
        .build()
}

fn operations(item: &utoipa::openapi::PathItem) -> impl Iterator<Item = &Operation> {
    [
        &item.get,
        &item.put,
        &item.post,
        &item.delete,
        &item.patch,
        &item.head,
        &item.options,
        &item.trace,
    ]
    .into_iter()
    .flatten()
}

fn operations_mut(item: &mut utoipa::openapi::PathItem) -> impl Iterator<Item = &mut Operation> {
    [
        &mut item.get,
        &mut item.put,
        &mut item.post,
        &mut item.delete,
        &mut item.patch,
        &mut item.head,
        &mut item.options,
        &mut item.trace,
    ]
    .into_iter()
    .flatten()
}
