//! The segment blob store on `object_store`: a local directory (the default; a shared volume
//! in a cluster), S3 (`s3://bucket/prefix`, also S3-compatible stores through `aws_endpoint`)
//! or GCS (`gs://bucket/prefix`).
//!
//! A blob's URI is the store's location plus its key (`s3://bucket/prefix/<job>/000003.mkv`).
//! Only URIs under the store's own location are read or deleted: a queue message naming any
//! other file or bucket is refused, so a forged message cannot make a worker read
//! `/etc/shadow` or another tenant's bucket. Credentials come from the options and the usual
//! `AWS_*` / `GOOGLE_*` variables, and never appear in errors or logs.

use std::collections::BTreeMap;
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

use object_store::local::LocalFileSystem;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use vidx_core::BlobError;
use vidx_core::ports::{BlobEntry, BlobStore, BoxFuture};

/// Schemes a blob store may live on.
pub const SCHEMES: [&str; 4] = ["file", "s3", "gs", "memory"];

/// A [`BlobStore`] on `object_store`.
pub struct ObjectBlobStore {
    store: Arc<dyn ObjectStore>,
    /// The location without a trailing slash; every URI of this store starts with it and `/`.
    location: String,
    /// The prefix inside the store under which the keys live.
    prefix: ObjectPath,
    /// The canonical directory of a local store.
    local_root: Option<PathBuf>,
}

impl std::fmt::Debug for ObjectBlobStore {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("ObjectBlobStore")
            .field("location", &self.location)
            .finish_non_exhaustive()
    }
}

impl ObjectBlobStore {
    /// Open the store at `location`: a directory path (created if missing), `file:///dir`,
    /// `s3://bucket[/prefix]`, `gs://bucket[/prefix]` or `memory:///` (tests). `options` are
    /// `object_store` builder keys (`aws_region`, `aws_endpoint`, `aws_allow_http`,
    /// `google_service_account_path`, …) and win over the `AWS_*` / `GOOGLE_*` variables.
    pub fn open(location: &str, options: &BTreeMap<String, String>) -> Result<Self, BlobError> {
        let location = location.trim();
        if location.is_empty() {
            return Err(BlobError::Config("the blob store location is empty".into()));
        }
        match location.split_once("://") {
            None => Self::local(Path::new(location)),
            Some(("file", path)) => Self::local(Path::new(path)),
            Some((scheme, _)) => Self::remote(scheme, location, options),
        }
    }

    fn local(directory: &Path) -> Result<Self, BlobError> {
        let config = |error: std::io::Error| {
            BlobError::Config(format!("blob directory {}: {error}", directory.display()))
        };
        if !directory.is_absolute() {
            return Err(BlobError::Config(format!(
                "blob directory {} must be an absolute path",
                directory.display()
            )));
        }
        std::fs::create_dir_all(directory).map_err(config)?;
        let root = std::fs::canonicalize(directory).map_err(config)?;
        let store = LocalFileSystem::new_with_prefix(&root)
            .map_err(|error| BlobError::Config(error.to_string()))?;
        Ok(Self {
            store: Arc::new(store),
            location: format!("file://{}", root.display()),
            prefix: ObjectPath::default(),
            local_root: Some(root),
        })
    }

    fn remote(
        scheme: &str,
        location: &str,
        options: &BTreeMap<String, String>,
    ) -> Result<Self, BlobError> {
        if !SCHEMES.contains(&scheme) {
            return Err(BlobError::Config(format!(
                "blob store scheme `{scheme}` is not supported (use a directory, {})",
                SCHEMES.map(|scheme| format!("{scheme}://")).join(", ")
            )));
        }
        let url = url::Url::parse(location)
            .map_err(|error| BlobError::Config(format!("blob store `{location}`: {error}")))?;
        // The builders' own environment variables, then the configured options over them.
        let mut merged: BTreeMap<String, String> = std::env::vars()
            .filter(|(key, _)| key.starts_with("AWS_") || key.starts_with("GOOGLE_"))
            .map(|(key, value)| (key.to_ascii_lowercase(), value))
            .collect();
        merged.extend(options.clone());
        let (store, prefix) = object_store::parse_url_opts(&url, merged)
            .map_err(|error| BlobError::Config(format!("blob store `{location}`: {error}")))?;
        Ok(Self {
            store: Arc::from(store),
            location: location.trim_end_matches('/').to_string(),
            prefix,
            local_root: None,
        })
    }

    /// The key of a URI of this store, checked: under the location, relative, no `..`.
    fn key_of<'a>(&self, uri: &'a str) -> Result<&'a str, BlobError> {
        let refused = |reason: &str| BlobError::Refused {
            uri: uri.to_string(),
            reason: reason.to_string(),
        };
        let key = uri
            .strip_prefix(self.location.as_str())
            .and_then(|rest| rest.strip_prefix('/'))
            .ok_or_else(|| refused(&format!("not under the blob store {}", self.location)))?;
        check_key(key).map_err(|reason| refused(&reason))?;
        Ok(key)
    }

    fn object_path(&self, key: &str) -> Result<ObjectPath, BlobError> {
        let relative = ObjectPath::parse(key).map_err(|error| BlobError::Refused {
            uri: key.to_string(),
            reason: error.to_string(),
        })?;
        Ok(self.prefix.parts().chain(relative.parts()).collect())
    }

    /// The canonical file of a URI of a local store, which must stay inside its root.
    fn local_file(&self, root: &Path, uri: &str) -> Result<PathBuf, BlobError> {
        // `file://` URIs may name the spool through another spelling of the same directory
        // (a symlink): resolve, then require the root.
        let path = uri
            .strip_prefix("file://")
            .map(PathBuf::from)
            .ok_or_else(|| BlobError::Refused {
                uri: uri.to_string(),
                reason: format!("not under the blob store {}", self.location),
            })?;
        if path.components().any(|part| part == Component::ParentDir) || !path.is_absolute() {
            return Err(BlobError::Refused {
                uri: uri.to_string(),
                reason: "a blob path must be absolute, without `..`".into(),
            });
        }
        let canonical = match std::fs::canonicalize(&path) {
            Ok(canonical) => canonical,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
                return Err(if path.starts_with(root) {
                    BlobError::NotFound(uri.to_string())
                } else {
                    BlobError::Refused {
                        uri: uri.to_string(),
                        reason: format!("not under the blob store {}", self.location),
                    }
                });
            }
            Err(error) => return Err(BlobError::Unavailable(format!("{uri}: {error}"))),
        };
        if !canonical.starts_with(root) || !canonical.is_file() {
            return Err(BlobError::Refused {
                uri: uri.to_string(),
                reason: format!("not a file under the blob store {}", self.location),
            });
        }
        Ok(canonical)
    }
}

/// A blob key: relative, `/`-separated, no empty, `.` or `..` parts.
pub fn check_key(key: &str) -> Result<(), String> {
    if key.is_empty() || key.starts_with('/') {
        return Err("a blob key must be a relative path".into());
    }
    if key
        .split('/')
        .any(|part| part.is_empty() || part == "." || part == "..")
    {
        return Err("a blob key must not contain empty, `.` or `..` parts".into());
    }
    Ok(())
}

fn object_error(uri: &str, error: object_store::Error) -> BlobError {
    match error {
        object_store::Error::NotFound { .. } => BlobError::NotFound(uri.to_string()),
        // Transport, throttling, permissions: worth a retry, and never the segment's fault.
        other => BlobError::Unavailable(format!("{uri}: {other}")),
    }
}

impl BlobStore for ObjectBlobStore {
    fn location(&self) -> &str {
        &self.location
    }

    fn put<'a>(&'a self, key: &'a str, bytes: Vec<u8>) -> BoxFuture<'a, Result<String, BlobError>> {
        Box::pin(async move {
            check_key(key).map_err(|reason| BlobError::Refused {
                uri: key.to_string(),
                reason,
            })?;
            let uri = format!("{}/{key}", self.location);
            let path = self.object_path(key)?;
            self.store
                .put(&path, PutPayload::from(bytes))
                .await
                .map_err(|error| object_error(&uri, error))?;
            Ok(uri)
        })
    }

    fn put_file<'a>(
        &'a self,
        key: &'a str,
        path: &'a Path,
    ) -> BoxFuture<'a, Result<String, BlobError>> {
        Box::pin(async move {
            let Some(root) = &self.local_root else {
                return vidx_core::ports::upload_file(self, key, path).await;
            };
            check_key(key).map_err(|reason| BlobError::Refused {
                uri: key.to_string(),
                reason,
            })?;
            let target = root.join(key);
            let unavailable = |error: std::io::Error| {
                BlobError::Unavailable(format!("{}: {error}", target.display()))
            };
            if let Some(parent) = target.parent() {
                std::fs::create_dir_all(parent).map_err(unavailable)?;
            }
            // A rename within one filesystem; across filesystems, a copy.
            if std::fs::rename(path, &target).is_err() {
                std::fs::copy(path, &target).map_err(unavailable)?;
                let _ = std::fs::remove_file(path);
            }
            Ok(format!("{}/{key}", self.location))
        })
    }

    fn get<'a>(&'a self, uri: &'a str) -> BoxFuture<'a, Result<Vec<u8>, BlobError>> {
        Box::pin(async move {
            if let Some(root) = &self.local_root {
                let file = self.local_file(root, uri)?;
                return std::fs::read(&file)
                    .map_err(|error| BlobError::Unavailable(format!("{uri}: {error}")));
            }
            let path = self.object_path(self.key_of(uri)?)?;
            let result = self
                .store
                .get(&path)
                .await
                .map_err(|error| object_error(uri, error))?;
            let bytes = result
                .bytes()
                .await
                .map_err(|error| object_error(uri, error))?;
            Ok(bytes.to_vec())
        })
    }

    fn delete<'a>(&'a self, uri: &'a str) -> BoxFuture<'a, Result<(), BlobError>> {
        Box::pin(async move {
            if let Some(root) = &self.local_root {
                let file = match self.local_file(root, uri) {
                    Ok(file) => file,
                    Err(BlobError::NotFound(_)) => return Ok(()),
                    Err(error) => return Err(error),
                };
                return match std::fs::remove_file(&file) {
                    Ok(()) => Ok(()),
                    Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(()),
                    Err(error) => Err(BlobError::Unavailable(format!("{uri}: {error}"))),
                };
            }
            let path = self.object_path(self.key_of(uri)?)?;
            match self.store.delete(&path).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
                Err(error) => Err(object_error(uri, error)),
            }
        })
    }

    fn list<'a>(&'a self, prefix: &'a str) -> BoxFuture<'a, Result<Vec<BlobEntry>, BlobError>> {
        Box::pin(async move {
            use tokio_stream::StreamExt;
            let trimmed = prefix.trim_end_matches('/');
            check_key(trimmed).map_err(|reason| BlobError::Refused {
                uri: prefix.to_string(),
                reason,
            })?;
            let path = self.object_path(trimmed)?;
            let below = self.prefix.parts().count();
            let mut listing = self.store.list(Some(&path));
            let mut entries = Vec::new();
            while let Some(meta) = listing.next().await {
                let meta = match meta {
                    Ok(meta) => meta,
                    Err(object_store::Error::NotFound { .. }) => break,
                    Err(error) => return Err(object_error(prefix, error)),
                };
                let key = meta
                    .location
                    .parts()
                    .skip(below)
                    .map(|part| part.as_ref().to_string())
                    .collect::<Vec<_>>()
                    .join("/");
                entries.push(BlobEntry {
                    uri: format!("{}/{key}", self.location),
                    key,
                    bytes: meta.size,
                    modified_ms: u64::try_from(meta.last_modified.timestamp_millis()).unwrap_or(0),
                });
            }
            Ok(entries)
        })
    }

    fn local_path(&self, uri: &str) -> Result<Option<PathBuf>, BlobError> {
        match &self.local_root {
            Some(root) => self.local_file(root, uri).map(Some),
            None => {
                self.key_of(uri)?;
                Ok(None)
            }
        }
    }
}
