//! The OpenAPI 3.1 document, generated from the code: each handler's
//! `#[utoipa::path]` annotation names its method, path, parameters, body and
//! answers, and `utoipa_axum::routes!` registers the handler and its path
//! together, so a route cannot exist without its entry or the reverse.
//! [`finish`] adds what every authenticated route shares: the security
//! schemes and the error answers of the HTTP layer.

use axum::Extension;
use axum::body::Bytes;
use axum::http::header::CONTENT_TYPE;
use axum::response::{IntoResponse, Response};
use utoipa::openapi::schema::{ObjectBuilder, Schema, Type};
use utoipa::openapi::security::{ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{ContentBuilder, OpenApi, Ref, RefOr, ResponseBuilder};
use utoipa::{Modify, OpenApi as _, PartialSchema, ToSchema};

use super::errors::{ApiCode, ErrorBody};

/// The serialised document, built once with the router.
#[derive(Debug, Clone)]
pub struct Document(pub Bytes);

#[derive(utoipa::OpenApi)]
#[openapi(
    info(
        title = "roomcast admin API",
        description = "Acts on one roomcast node's rooms: publish, recall, room state and history, \
                       moderation, opening and closing rooms, crediting gift balances, running live quizzes, draining the node. Authenticate with an \
                       admin JWT (`Authorization: Bearer`, signed by the connection-token key, role \
                       `admin`) or the node's API key (`X-Api-Key`). Errors are \
                       `{\"error\": {\"code\", \"message\"}}` with a stable code."
    ),
    modifiers(&SecuritySchemes),
    security(("admin_jwt" = []), ("api_key" = [])),
    tags(
        (name = "rooms", description = "Rooms on this node: list, state, history, open and close"),
        (name = "messages", description = "Publishing into a room and recalling"),
        (name = "moderation", description = "Mutes, bans and kicks, in a room or on the whole node"),
        (name = "gifts", description = "Users' gift balances"),
        (name = "quiz", description = "Live quizzes: create, start and reveal questions, end"),
        (name = "node", description = "The node itself"),
        (name = "meta", description = "This document"),
    )
)]
struct ApiDoc;

struct SecuritySchemes;

impl Modify for SecuritySchemes {
    fn modify(&self, doc: &mut OpenApi) {
        let components = doc.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "admin_jwt",
            SecurityScheme::Http(
                HttpBuilder::new().scheme(HttpAuthScheme::Bearer).bearer_format("JWT").build(),
            ),
        );
        components.add_security_scheme(
            "api_key",
            SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::new("X-Api-Key"))),
        );
    }
}

/// The document before any path is added: info, security, tags.
pub(super) fn base() -> OpenApi {
    ApiDoc::openapi()
}

/// The public path: it needs no credentials and reads no body.
const PUBLIC_PATH: &str = "/openapi.json";

/// Adds the answers every authenticated operation may give (400, 401, 403,
/// 422, 500) and those of every operation with a body (413, 415), each an
/// [`ErrorBody`], unless the operation already documents that status.
pub(super) fn finish(doc: &mut OpenApi) {
    let components = doc.components.get_or_insert_with(Default::default);
    let mut schemas = vec![(ErrorBody::name().into_owned(), ErrorBody::schema())];
    ErrorBody::schemas(&mut schemas);
    components.schemas.extend(schemas);
    // The one list of codes, as an enum with each code's status.
    if let Some(RefOr::T(Schema::Object(detail))) = components.schemas.get_mut("ErrorDetail") {
        let code = ObjectBuilder::new()
            .schema_type(Type::String)
            .description(Some(format!(
                "Stable code, with the HTTP status it always comes with: {}.",
                ApiCode::listing()
            )))
            .enum_values(Some(ApiCode::ALL.map(ApiCode::as_str)));
        detail.properties.insert("code".into(), RefOr::T(Schema::Object(code.build())));
    }
    let error = |description: &str| {
        RefOr::T(
            ResponseBuilder::new()
                .description(description)
                .content(
                    "application/json",
                    ContentBuilder::new().schema(Some(Ref::from_schema_name(ErrorBody::name()))).build(),
                )
                .build(),
        )
    };
    let common = [
        ("400", "Malformed JSON, query or path (`BAD_REQUEST`), or an invalid room id (`INVALID_ROOM`)"),
        ("401", "No credentials, a wrong API key or an invalid token (`UNAUTHORIZED`, `TOKEN_EXPIRED`)"),
        ("403", "A valid token whose role is not admin (`FORBIDDEN`)"),
        (
            "422",
            "Well-formed input with wrong or unknown fields or values (`INVALID_REQUEST`, `MESSAGE_TOO_LONG`)",
        ),
        ("500", "The node failed (`INTERNAL`)"),
    ];
    let with_body = [
        ("413", "The body is larger than `admin.max_body_bytes` (`PAYLOAD_TOO_LARGE`)"),
        ("415", "The body is not JSON (`UNSUPPORTED_MEDIA_TYPE`)"),
    ];
    for (path, item) in doc.paths.paths.iter_mut() {
        if path == PUBLIC_PATH {
            continue;
        }
        let ops = [&mut item.get, &mut item.put, &mut item.post, &mut item.delete, &mut item.patch];
        for op in ops.into_iter().flatten() {
            let extra = if op.request_body.is_some() { &with_body[..] } else { &[][..] };
            for (status, description) in common.iter().chain(extra) {
                op.responses.responses.entry((*status).to_string()).or_insert_with(|| error(description));
            }
        }
    }
}

/// This document, OpenAPI 3.1, generated from the handlers.
#[utoipa::path(
    get,
    path = "/openapi.json",
    tag = "meta",
    security(()),
    responses((status = 200, description = "The OpenAPI 3.1 document of this API", content_type = "application/json"))
)]
pub(super) async fn document(Extension(doc): Extension<Document>) -> Response {
    ([(CONTENT_TYPE, "application/json")], doc.0).into_response()
}
