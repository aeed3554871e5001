//! `sluice.v1.Admin`: what `sluicectl` calls.
//!
//! Apply and delete are compare-and-swap loops on the one configuration
//! key, so concurrent operators (or replicas) never lose each other's
//! changes and a set of documents lands atomically. Secrets are write-only:
//! connection passwords and API-key verifiers are blanked in every answer
//! and never logged; an empty password or verifier in an apply keeps the
//! stored one, so `get -o yaml | apply -f -` round-trips.

use std::collections::HashMap;
use std::sync::Arc;

use proto::resource::Spec;
use proto::Resource;
use tonic::{Request, Response, Status};

use super::config::{decode_config, encode_config, sort_resources, CONFIG_KEY, JWKS_PREFIX};
use super::nodes;
use super::Shared;
use crate::resources::{canonical_kind, validate_resource, validate_set};
use crate::store::StoreError;

/// How many times apply/delete retry a lost compare-and-swap race.
const CAS_ATTEMPTS: usize = 16;

/// How long an apply waits for its snapshot to reach this replica.
const APPLY_VISIBLE_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

pub struct AdminService {
    pub shared: Arc<Shared>,
}

pub fn store_status(e: StoreError) -> Status {
    match e {
        StoreError::Unavailable(m) => Status::unavailable(format!("store unavailable: {m}")),
        StoreError::InvalidArgument(m) => Status::invalid_argument(m),
        other => Status::internal(other.to_string()),
    }
}

/// A copy fit to show: secrets blanked.
pub fn redact(r: &Resource) -> Resource {
    let mut r = r.clone();
    match &mut r.spec {
        Some(Spec::Connection(c)) => c.password.clear(),
        Some(Spec::ApiKey(k)) => k.verifier.clear(),
        Some(Spec::IdentityProvider(p)) if !p.jwks_url.is_empty() => p.jwks_json.clear(),
        Some(Spec::MaskingProfile(m)) => {
            // The hash key is write-only, like a password.
            if let Ok(mut v) = serde_json::from_str::<serde_json::Value>(&m.json) {
                if let Some(o) = v.as_object_mut() {
                    o.remove("hash_key");
                }
                m.json = v.to_string();
            }
        }
        _ => {}
    }
    r
}

/// A MaskingProfile given without `hash_key` keeps the stored one.
fn keep_hash_key(new: &mut proto::MaskingProfileSpec, old: &proto::MaskingProfileSpec) {
    let (Ok(mut n), Ok(o)) = (
        serde_json::from_str::<serde_json::Value>(&new.json),
        serde_json::from_str::<serde_json::Value>(&old.json),
    ) else {
        return;
    };
    if let (Some(no), Some(key)) = (n.as_object_mut(), o.get("hash_key")) {
        if !no.contains_key("hash_key") {
            no.insert("hash_key".into(), key.clone());
        }
    }
    // One canonical form (sorted keys), so an unchanged profile compares equal.
    new.json = n.to_string();
}

fn normalize_json(m: &mut proto::MaskingProfileSpec) {
    if let Ok(v) = serde_json::from_str::<serde_json::Value>(&m.json) {
        m.json = v.to_string();
    }
}

/// The outcome of merging one document into the stored set.
struct Merge {
    action: &'static str,
    api_key: String,
}

/// Fill write-only fields left empty from the stored resource; generate an
/// API key for a new ApiKey without a verifier.
fn merge_one(incoming: &mut Resource, existing: Option<&Resource>) -> Merge {
    let mut api_key = String::new();
    match (&mut incoming.spec, existing.and_then(|e| e.spec.as_ref())) {
        (Some(Spec::Connection(c)), Some(Spec::Connection(old))) if c.password.is_empty() => {
            c.password.clone_from(&old.password);
        }
        (Some(Spec::ApiKey(k)), Some(Spec::ApiKey(old))) if k.verifier.is_empty() => {
            k.verifier.clone_from(&old.verifier);
        }
        (Some(Spec::MaskingProfile(m)), Some(Spec::MaskingProfile(old))) => {
            keep_hash_key(m, old);
        }
        (Some(Spec::MaskingProfile(m)), _) => normalize_json(m),
        (Some(Spec::ApiKey(k)), _) if k.verifier.is_empty() => {
            let key = dataplane::auth::scram::generate_api_key();
            k.verifier = dataplane::auth::scram::Verifier::generate(
                key.as_bytes(),
                dataplane::auth::scram::DEFAULT_ITERATIONS,
            )
            .to_string();
            api_key = key;
        }
        _ => {}
    }
    incoming.revision = 0;
    incoming.api_version = proto::API_VERSION.to_string();
    let action = match existing {
        None => "created",
        Some(e) if e == incoming => "unchanged",
        Some(_) => "configured",
    };
    Merge { action, api_key }
}

/// Why an apply that would grow the configuration past
/// [`proto::MAX_CONFIG_BYTES`] is refused: every node gets the whole
/// configuration in one message.
fn too_large(bytes: usize) -> String {
    format!(
        "the configuration would be {bytes} bytes, more than the {} MiB a control plane \
         stores and sends to nodes in one snapshot; nothing was changed",
        proto::MAX_CONFIG_BYTES >> 20
    )
}

fn doc_error(i: usize, r: &Resource, field: &str, msg: &str) -> Status {
    Status::invalid_argument(format!(
        "document {} ({} {}): {field}: {msg}",
        i + 1,
        r.kind,
        r.name
    ))
}

#[tonic::async_trait]
impl proto::admin_server::Admin for AdminService {
    async fn apply(
        &self,
        req: Request<proto::ApplyRequest>,
    ) -> Result<Response<proto::ApplyResponse>, Status> {
        let req = req.into_inner();
        if req.resources.is_empty() {
            return Err(Status::invalid_argument("no documents to apply"));
        }
        let mut seen = std::collections::HashSet::new();
        for (i, r) in req.resources.iter().enumerate() {
            if !proto::KINDS.contains(&r.kind.as_str()) {
                return Err(doc_error(i, r, "kind", "unknown kind"));
            }
            if !r.api_version.is_empty() && r.api_version != proto::API_VERSION {
                return Err(doc_error(
                    i,
                    r,
                    "apiVersion",
                    &format!("must be {}", proto::API_VERSION),
                ));
            }
            if let Err((field, msg)) = validate_resource(r) {
                return Err(doc_error(i, r, &field, &msg));
            }
            if !seen.insert((r.kind.clone(), r.name.clone())) {
                return Err(doc_error(i, r, "metadata.name", "given twice in one apply"));
            }
        }
        let store = &self.shared.store;
        // JWKS URLs are fetched before anything is written, so a provider
        // whose keys cannot be fetched is refused at apply.
        let mut jwks_docs = Vec::new();
        for (i, r) in req.resources.iter().enumerate() {
            if let Some(Spec::IdentityProvider(p)) = &r.spec {
                if !p.jwks_url.is_empty() && !req.dry_run {
                    let jwks = super::jwks::fetch(&p.jwks_url)
                        .await
                        .map_err(|e| doc_error(i, r, "spec.jwksUrl", &e))?;
                    super::jwks::check(r, p, &jwks)
                        .map_err(|e| doc_error(i, r, "spec.jwksUrl", &e))?;
                    jwks_docs.push((format!("{JWKS_PREFIX}{}", r.name), jwks));
                }
            }
        }
        let mut jwks_written = false;
        for _ in 0..CAS_ATTEMPTS {
            let kv = store.get(CONFIG_KEY).await.map_err(store_status)?;
            let mod_rev = kv.as_ref().map_or(0, |kv| kv.mod_revision);
            let mut current = decode_config(kv.as_ref()).map_err(Status::internal)?;
            let index: HashMap<(String, String), usize> = current
                .iter()
                .enumerate()
                .map(|(i, r)| ((r.kind.clone(), r.name.clone()), i))
                .collect();
            let mut results = Vec::with_capacity(req.resources.len());
            let mut changed = false;
            for r in &req.resources {
                let mut r = r.clone();
                let at = index.get(&(r.kind.clone(), r.name.clone())).copied();
                let m = merge_one(&mut r, at.map(|i| &current[i]));
                changed |= m.action != "unchanged";
                results.push(proto::ApplyResult {
                    kind: r.kind.clone(),
                    name: r.name.clone(),
                    action: m.action.to_string(),
                    api_key: m.api_key,
                });
                match at {
                    Some(i) => current[i] = r,
                    None => current.push(r),
                }
            }
            sort_resources(&mut current);
            if let Err(e) = validate_set(&current) {
                return Err(Status::invalid_argument(e.to_string()));
            }
            let encoded = encode_config(&current);
            if encoded.len() > proto::MAX_CONFIG_BYTES {
                return Err(Status::invalid_argument(too_large(encoded.len())));
            }
            // The fetched keys are written only once the whole set is known
            // to be valid: they take effect on their own (a new snapshot
            // version), so a refused apply must not write them.
            if !jwks_written {
                for (key, jwks) in &jwks_docs {
                    let same = store
                        .get(key)
                        .await
                        .map_err(store_status)?
                        .is_some_and(|kv| kv.value == jwks.as_bytes());
                    if !same {
                        store
                            .put(key, jwks.clone().into_bytes(), None)
                            .await
                            .map_err(store_status)?;
                    }
                }
                jwks_written = true;
            }
            if req.dry_run || !changed {
                if req.dry_run {
                    for r in &mut results {
                        r.api_key.clear();
                    }
                }
                let version = self.shared.latest_version();
                return Ok(Response::new(proto::ApplyResponse { results, version }));
            }
            match store
                .txn_put_if_mod_revision(CONFIG_KEY, encoded, mod_rev)
                .await
                .map_err(store_status)?
            {
                Some(version) => {
                    for r in &results {
                        tracing::info!(kind = %r.kind, name = %r.name, action = %r.action, version, "applied");
                    }
                    // Read your own write: answer once this replica's
                    // snapshot holds it (its store watch brings it, a moment
                    // later), so that `version`, `nodes` or `get` asked of
                    // it next show the change. Bounded: a slow watch does
                    // not hold the apply.
                    let mut current = self.shared.current.subscribe();
                    let _ = tokio::time::timeout(
                        APPLY_VISIBLE_WAIT,
                        current.wait_for(|c| c.as_ref().is_some_and(|c| c.version >= version)),
                    )
                    .await;
                    return Ok(Response::new(proto::ApplyResponse { results, version }));
                }
                None => continue, // someone else wrote in between: redo on theirs
            }
        }
        Err(Status::aborted(
            "the configuration kept changing under this apply; try again",
        ))
    }

    async fn get(
        &self,
        req: Request<proto::GetRequest>,
    ) -> Result<Response<proto::GetResponse>, Status> {
        let req = req.into_inner();
        let kind = if req.kind.is_empty() || req.kind == "all" {
            None
        } else {
            Some(canonical_kind(&req.kind).ok_or_else(|| {
                Status::invalid_argument(format!(
                    "unknown kind `{}`: one of {}",
                    req.kind,
                    proto::KINDS.join(", ")
                ))
            })?)
        };
        let kv = self
            .shared
            .store
            .get(CONFIG_KEY)
            .await
            .map_err(store_status)?;
        let resources: Vec<Resource> = decode_config(kv.as_ref())
            .map_err(Status::internal)?
            .iter()
            .filter(|r| kind.is_none_or(|k| r.kind == k))
            .filter(|r| req.name.is_empty() || r.name == req.name)
            .map(redact)
            .collect();
        if !req.name.is_empty() && resources.is_empty() {
            return Err(Status::not_found(format!(
                "{} `{}` not found",
                kind.unwrap_or("resource"),
                req.name
            )));
        }
        Ok(Response::new(proto::GetResponse { resources }))
    }

    async fn delete(
        &self,
        req: Request<proto::DeleteRequest>,
    ) -> Result<Response<proto::DeleteResponse>, Status> {
        let req = req.into_inner();
        let kind = canonical_kind(&req.kind)
            .ok_or_else(|| Status::invalid_argument(format!("unknown kind `{}`", req.kind)))?;
        let store = &self.shared.store;
        for _ in 0..CAS_ATTEMPTS {
            let kv = store.get(CONFIG_KEY).await.map_err(store_status)?;
            let mod_rev = kv.as_ref().map_or(0, |kv| kv.mod_revision);
            let mut current = decode_config(kv.as_ref()).map_err(Status::internal)?;
            let before = current.len();
            current.retain(|r| !(r.kind == kind && r.name == req.name));
            if current.len() == before {
                return Err(Status::not_found(format!(
                    "{kind} `{}` not found",
                    req.name
                )));
            }
            if let Err(e) = validate_set(&current) {
                return Err(Status::failed_precondition(format!(
                    "cannot delete {kind} `{}`: {e}",
                    req.name
                )));
            }
            if let Some(version) = store
                .txn_put_if_mod_revision(CONFIG_KEY, encode_config(&current), mod_rev)
                .await
                .map_err(store_status)?
            {
                if kind == "IdentityProvider" {
                    let _ = store.delete(&format!("{JWKS_PREFIX}{}", req.name)).await;
                }
                tracing::info!(kind, name = %req.name, version, "deleted");
                return Ok(Response::new(proto::DeleteResponse {
                    deleted: true,
                    version,
                }));
            }
        }
        Err(Status::aborted(
            "the configuration kept changing under this delete; try again",
        ))
    }

    async fn list_nodes(
        &self,
        _req: Request<proto::ListNodesRequest>,
    ) -> Result<Response<proto::ListNodesResponse>, Status> {
        let latest = self.shared.latest_version();
        let mut nodes = nodes::list(&*self.shared.store)
            .await
            .map_err(store_status)?;
        for n in &mut nodes {
            n.latest_version = latest;
        }
        Ok(Response::new(proto::ListNodesResponse {
            nodes,
            latest_version: latest,
        }))
    }

    async fn version(
        &self,
        _req: Request<proto::VersionRequest>,
    ) -> Result<Response<proto::VersionResponse>, Status> {
        Ok(Response::new(proto::VersionResponse {
            build: env!("CARGO_PKG_VERSION").to_string(),
            snapshot_version: self.shared.latest_version(),
            store: self.shared.store_kind.to_string(),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conn(pw: &str) -> Resource {
        Resource {
            api_version: proto::API_VERSION.into(),
            kind: "Connection".into(),
            name: "orders".into(),
            spec: Some(Spec::Connection(proto::ConnectionSpec {
                host: "db".into(),
                port: 5432,
                database: "orders".into(),
                user: "gw".into(),
                password: pw.into(),
                auth: "auto".into(),
                masking_profile: String::new(),
                tls: None,
            })),
            revision: 0,
        }
    }

    #[test]
    fn empty_password_keeps_the_stored_one() {
        let old = conn("s3cret");
        let mut new = conn("");
        let m = merge_one(&mut new, Some(&old));
        assert_eq!(m.action, "unchanged");
        assert_eq!(new, old);
        let mut changed = conn("other");
        assert_eq!(merge_one(&mut changed, Some(&old)).action, "configured");
        assert_eq!(merge_one(&mut conn("x"), None).action, "created");
    }

    #[test]
    fn new_api_key_is_generated_once_and_kept() {
        let mk = || Resource {
            api_version: proto::API_VERSION.into(),
            kind: "ApiKey".into(),
            name: "k".into(),
            spec: Some(Spec::ApiKey(proto::ApiKeySpec {
                identity: "agent".into(),
                verifier: String::new(),
                groups: vec![],
            })),
            revision: 0,
        };
        let mut first = mk();
        let m = merge_one(&mut first, None);
        assert_eq!(m.action, "created");
        assert!(m.api_key.starts_with("sk_"));
        let Some(Spec::ApiKey(k)) = &first.spec else {
            unreachable!()
        };
        let v = dataplane::auth::scram::Verifier::parse(&k.verifier).unwrap();
        assert!(v.matches_password(m.api_key.as_bytes()));
        let mut again = mk();
        let m2 = merge_one(&mut again, Some(&first));
        assert_eq!(m2.action, "unchanged");
        assert!(m2.api_key.is_empty());
    }

    #[test]
    fn redaction_blanks_secrets() {
        let r = redact(&conn("s3cret"));
        let Some(Spec::Connection(c)) = r.spec else {
            unreachable!()
        };
        assert!(c.password.is_empty());
    }

    #[test]
    fn kinds_are_forgiving() {
        assert_eq!(canonical_kind("Policies"), Some("Policy"));
        assert_eq!(canonical_kind("idp"), Some("IdentityProvider"));
        assert_eq!(canonical_kind("apikeys"), Some("ApiKey"));
        assert_eq!(canonical_kind("tables"), None);
    }
}
