//! JWKS documents of `IdentityProvider`s given by URL: fetched at apply
//! (a provider whose keys cannot be fetched is refused) and refreshed
//! periodically; a changed document is written to `config/jwks/<name>`,
//! which makes a new snapshot version.

use std::sync::Arc;
use std::time::Duration;

use proto::resource::Spec;
use proto::{IdentityProviderSpec, Resource};

use super::config::{decode_config, CONFIG_KEY, JWKS_PREFIX};
use crate::store::Store;

const MAX_JWKS_BYTES: usize = 1 << 20;

fn client() -> Result<reqwest::Client, String> {
    let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| e.to_string())?
    .with_root_certificates({
        let mut roots = rustls::RootCertStore::empty();
        for c in rustls_native_certs::load_native_certs().certs {
            let _ = roots.add(c);
        }
        roots
    })
    .with_no_client_auth();
    reqwest::Client::builder()
        .use_preconfigured_tls(tls)
        .timeout(Duration::from_secs(5))
        .connect_timeout(Duration::from_secs(3))
        .build()
        .map_err(|e| e.to_string())
}

/// GET the document (5 s timeout, 1 MiB at most).
pub async fn fetch(url: &str) -> Result<String, String> {
    let resp = client()?
        .get(url)
        .send()
        .await
        .map_err(|e| format!("cannot fetch {url}: {e}"))?;
    if !resp.status().is_success() {
        return Err(format!("{url} answered {}", resp.status()));
    }
    let body = resp
        .bytes()
        .await
        .map_err(|e| format!("reading {url}: {e}"))?;
    if body.len() > MAX_JWKS_BYTES {
        return Err(format!("{url}: document larger than 1 MiB"));
    }
    String::from_utf8(body.to_vec()).map_err(|_| format!("{url}: not UTF-8"))
}

/// The fetched document must be a usable JWKS for this provider.
pub fn check(r: &Resource, p: &IdentityProviderSpec, jwks: &str) -> Result<(), String> {
    let claim = if p.identity_claim.is_empty() {
        "sub"
    } else {
        &p.identity_claim
    };
    dataplane::auth::jwt::JwtIssuer::new(
        &r.name,
        &p.issuer,
        &p.audience,
        claim,
        p.leeway_seconds,
        jwks,
    )
    .map(|_| ())
}

/// Refresh every provider's JWKS every `every`. Every replica runs this;
/// writes happen only when the document changed.
pub async fn refresh_loop(store: Arc<dyn Store>, every: Duration) {
    loop {
        tokio::time::sleep(every).await;
        let Ok(kv) = store.get(CONFIG_KEY).await else {
            continue;
        };
        let Ok(resources) = decode_config(kv.as_ref()) else {
            continue;
        };
        for r in &resources {
            let Some(Spec::IdentityProvider(p)) = &r.spec else {
                continue;
            };
            if p.jwks_url.is_empty() {
                continue;
            }
            let doc = match fetch(&p.jwks_url)
                .await
                .and_then(|d| check(r, p, &d).map(|_| d))
            {
                Ok(d) => d,
                Err(e) => {
                    tracing::warn!(provider = %r.name, "JWKS refresh failed, keeping the last document: {e}");
                    continue;
                }
            };
            let key = format!("{JWKS_PREFIX}{}", r.name);
            let same = matches!(store.get(&key).await, Ok(Some(kv)) if kv.value == doc.as_bytes());
            if !same {
                match store.put(&key, doc.into_bytes(), None).await {
                    Ok(rev) => tracing::info!(provider = %r.name, version = rev, "JWKS changed"),
                    Err(e) => {
                        tracing::warn!(provider = %r.name, "cannot store refreshed JWKS: {e}")
                    }
                }
            }
        }
    }
}
