//! Bearer-token authentication. Every token speaks for one tenant; the tenant is put into
//! the request's extensions and every handler confines its work to it (searches get it as a
//! server-side filter, jobs are only visible to their tenant). Without configured tokens the
//! server is open and every request is the default tenant's.

use std::sync::Arc;
use std::time::SystemTime;

use subtle::ConstantTimeEq;
use tonic::metadata::MetadataMap;
use tonic::{Request, Status};
use vidx_config::TokenConfig;

/// The tenant a request acts for, as established by [`Authenticator`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tenant(pub String);

struct Entry {
    tenant: String,
    token: Vec<u8>,
    expires_at: Option<SystemTime>,
}

/// Checks `authorization: Bearer <token>` against the configured tokens.
pub struct Authenticator {
    entries: Vec<Entry>,
    open_tenant: String,
}

impl std::fmt::Debug for Authenticator {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the tokens.
        formatter
            .debug_struct("Authenticator")
            .field("tokens", &self.entries.len())
            .finish_non_exhaustive()
    }
}

impl Authenticator {
    /// `tokens` empty: no authentication, every request is `default_tenant`'s.
    pub fn new(tokens: &[TokenConfig], default_tenant: &str) -> Result<Self, String> {
        let entries = tokens
            .iter()
            .map(|token| {
                let expires_at = if token.expires_at.is_empty() {
                    None
                } else {
                    Some(
                        humantime::parse_rfc3339_weak(&token.expires_at).map_err(|error| {
                            format!("token of tenant {}: expires_at: {error}", token.tenant)
                        })?,
                    )
                };
                Ok(Entry {
                    tenant: token.tenant.clone(),
                    token: token.token.as_bytes().to_vec(),
                    expires_at,
                })
            })
            .collect::<Result<Vec<_>, String>>()?;
        Ok(Self {
            entries,
            open_tenant: default_tenant.to_string(),
        })
    }

    pub fn is_open(&self) -> bool {
        self.entries.is_empty()
    }

    /// The tenant of a request, or `UNAUTHENTICATED` naming what is wrong (never the token).
    pub fn authenticate(&self, metadata: &MetadataMap) -> Result<Tenant, Status> {
        if self.is_open() {
            return Ok(Tenant(self.open_tenant.clone()));
        }
        let header = metadata
            .get("authorization")
            .ok_or_else(|| Status::unauthenticated("missing `authorization: Bearer <token>`"))?;
        let presented = header
            .to_str()
            .ok()
            .and_then(|value| {
                value
                    .strip_prefix("Bearer ")
                    .or_else(|| value.strip_prefix("bearer "))
            })
            .map(str::trim)
            .ok_or_else(|| Status::unauthenticated("authorization is not a bearer token"))?;
        // Compare against every entry, without stopping at the first match, so the time
        // taken does not tell which entry (or which prefix) matched.
        let mut matched: Option<&Entry> = None;
        for entry in &self.entries {
            if bool::from(entry.token.as_slice().ct_eq(presented.as_bytes())) {
                matched = Some(entry);
            }
        }
        let entry = matched.ok_or_else(|| Status::unauthenticated("unknown token"))?;
        if entry
            .expires_at
            .is_some_and(|expires_at| SystemTime::now() >= expires_at)
        {
            return Err(Status::unauthenticated("token expired"));
        }
        Ok(Tenant(entry.tenant.clone()))
    }
}

/// A tonic interceptor: authenticate, then hand the tenant to the handler.
pub fn interceptor(
    authenticator: Arc<Authenticator>,
) -> impl FnMut(Request<()>) -> Result<Request<()>, Status> + Clone + Send + Sync + 'static {
    move |mut request: Request<()>| {
        let tenant = authenticator.authenticate(request.metadata())?;
        request.extensions_mut().insert(tenant);
        Ok(request)
    }
}

/// The tenant the interceptor established for `request`.
pub fn tenant_of<T>(request: &Request<T>) -> Result<String, Status> {
    request
        .extensions()
        .get::<Tenant>()
        .map(|tenant| tenant.0.clone())
        .ok_or_else(|| Status::internal("request reached a handler without authentication"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn metadata(value: Option<&str>) -> MetadataMap {
        let mut metadata = MetadataMap::new();
        if let Some(value) = value {
            metadata.insert(
                "authorization",
                value.parse().expect("ascii header in test"),
            );
        }
        metadata
    }

    #[test]
    fn tokens_map_to_tenants_and_expire() {
        let tokens = vec![
            TokenConfig {
                tenant: "acme".into(),
                token: "acme-token-0123456789".into(),
                expires_at: String::new(),
            },
            TokenConfig {
                tenant: "old".into(),
                token: "old-token-0123456789".into(),
                expires_at: "2001-01-01T00:00:00Z".into(),
            },
        ];
        let auth = Authenticator::new(&tokens, "default").expect("valid tokens");
        assert_eq!(
            auth.authenticate(&metadata(Some("Bearer acme-token-0123456789")))
                .expect("valid token"),
            Tenant("acme".into())
        );
        for (header, message) in [
            (None, "missing"),
            (Some("Basic abc"), "bearer"),
            (Some("Bearer acme-token-012345678"), "unknown"),
            (Some("Bearer old-token-0123456789"), "expired"),
        ] {
            let status = auth.authenticate(&metadata(header)).expect_err("refused");
            assert_eq!(status.code(), tonic::Code::Unauthenticated);
            assert!(status.message().contains(message), "{}", status.message());
            assert!(!status.message().contains("0123456789"));
        }
        let open = Authenticator::new(&[], "default").expect("no tokens");
        assert_eq!(
            open.authenticate(&metadata(None)).expect("open server"),
            Tenant("default".into())
        );
    }
}
