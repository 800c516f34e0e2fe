//! The model store: a directory every model path is resolved inside, the
//! digests already computed of its files, and uploads into it (see
//! [`write`] for how a write never leaves the store, [`quota`] for how
//! much it may hold).

use std::collections::HashMap;
use std::io::Read;
use std::path::{Component, Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::SystemTime;

use sha2::{Digest, Sha256};

use crate::config::StoreLimits;
use crate::error::Error;

pub mod quota;
pub mod write;

pub use write::{TEMP_PREFIX, Upload};

/// The model store.
#[derive(Debug, Clone)]
pub struct Store {
    root: PathBuf,
    /// sha256 of its files, computed once per content.
    pub digests: Arc<Digests>,
    /// Uploads in progress and the room they hold.
    pub inflight: Arc<quota::Inflight>,
}

/// One upload's header, as the store needs it.
#[derive(Debug, Clone)]
pub struct UploadSpec {
    /// Destination, relative to the store.
    pub path: String,
    /// Declared size, bytes.
    pub size: u64,
    /// Replace an existing file.
    pub overwrite: bool,
}

/// Digests already computed, by path, valid while size and modification
/// time are unchanged. One per store, held by it (not a process global).
#[derive(Debug, Default)]
pub struct Digests {
    known: Mutex<HashMap<PathBuf, (u64, SystemTime, String)>>,
}

/// A digest in lower-case hex.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

impl Digests {
    /// The file's sha256 in hex: from the cache while its size and
    /// modification time are unchanged, else read again.
    pub fn sha256(&self, path: &Path) -> Result<String, Error> {
        let fail = |what: &str, e: std::io::Error| match e.kind() {
            std::io::ErrorKind::NotFound => Error::NotFound(format!("{what}: {e}")),
            _ => Error::Internal(format!("{what}: {e}")),
        };
        let meta = std::fs::metadata(path).map_err(|e| fail("stat", e))?;
        let key = (meta.len(), meta.modified().map_err(|e| fail("stat", e))?);
        let lock = || self.known.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some((len, modified, sha)) = lock().get(path).cloned()
            && (len, modified) == key
        {
            return Ok(sha);
        }
        let mut f = std::fs::File::open(path).map_err(|e| fail("open", e))?;
        let mut h = Sha256::new();
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = f.read(&mut buf).map_err(|e| fail("read", e))?;
            if n == 0 {
                break;
            }
            h.update(&buf[..n]);
        }
        let sha = hex(&h.finalize());
        lock().insert(path.to_path_buf(), (key.0, key.1, sha.clone()));
        Ok(sha)
    }
}

impl Store {
    /// A store at `root` (created if missing).
    pub fn open(root: &Path) -> Result<Store, Error> {
        std::fs::create_dir_all(root)
            .map_err(|e| Error::Config(format!("model store {}: {e}", root.display())))?;
        let root = root
            .canonicalize()
            .map_err(|e| Error::Config(format!("model store {}: {e}", root.display())))?;
        Ok(Store {
            root,
            digests: Arc::default(),
            inflight: Arc::default(),
        })
    }

    /// Starts an upload: the path is checked (no `..`, not absolute, no
    /// link leading out of the store), the room reserved under `limits`
    /// (RESOURCE_EXHAUSTED naming the size and the limit, before anything
    /// is created), the missing directories created inside the checked
    /// ones, and the temporary file created exclusively. Blocking.
    pub fn begin_upload(&self, spec: &UploadSpec, limits: &StoreLimits) -> Result<Upload, Error> {
        let target = write::target(&spec.path)?;
        let reservation = quota::reserve(&self.inflight, &self.root, spec.size, limits)?;
        let mut dir = write::Dir::root(&self.root)?;
        for name in &target.dirs {
            dir = dir.enter(name, &self.root, &spec.path)?;
        }
        Upload::start(write::Begin {
            dir,
            name: target.name,
            relative: &spec.path,
            size: spec.size,
            overwrite: spec.overwrite,
            reservation,
        })
    }

    /// The store's directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The absolute path of an existing file named relative to the store.
    /// Absolute paths, `..` and symlinks that leave the store are
    /// INVALID_ARGUMENT; a missing file is NOT_FOUND.
    pub fn resolve(&self, relative: &str) -> Result<PathBuf, Error> {
        let joined = self.join(relative)?;
        let real = joined.canonicalize().map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => Error::NotFound(format!(
                "path {relative:?}: no such file in the model store"
            )),
            _ => Error::InvalidArgument(format!("path {relative:?}: {e}")),
        })?;
        if !real.starts_with(&self.root) {
            return Err(Error::InvalidArgument(format!(
                "path {relative:?} leaves the model store (it resolves outside {})",
                self.root.display()
            )));
        }
        if !real.is_file() {
            return Err(Error::InvalidArgument(format!(
                "path {relative:?} is not a file"
            )));
        }
        Ok(real)
    }

    /// Joins a relative path after refusing absolute paths and `..`.
    pub fn join(&self, relative: &str) -> Result<PathBuf, Error> {
        if relative.is_empty() {
            return Err(Error::InvalidArgument("path must not be empty".into()));
        }
        let p = Path::new(relative);
        for c in p.components() {
            match c {
                Component::Normal(_) | Component::CurDir => {}
                Component::ParentDir => {
                    return Err(Error::InvalidArgument(format!(
                        "path {relative:?} contains '..'; paths are relative to the model store"
                    )));
                }
                Component::RootDir | Component::Prefix(_) => {
                    return Err(Error::InvalidArgument(format!(
                        "path {relative:?} is absolute; paths are relative to the model store"
                    )));
                }
            }
        }
        Ok(self.root.join(p))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    mod upload;

    #[test]
    fn paths_stay_inside_the_store() {
        let dir = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("secret"), b"x").unwrap();
        std::fs::create_dir(dir.path().join("m")).unwrap();
        std::fs::write(dir.path().join("m/model.gguf"), b"GGUF").unwrap();
        std::os::unix::fs::symlink(outside.path().join("secret"), dir.path().join("escape"))
            .unwrap();
        let store = Store::open(dir.path()).unwrap();

        assert!(
            store
                .resolve("m/model.gguf")
                .unwrap()
                .ends_with("m/model.gguf")
        );
        for bad in ["../x", "m/../../x", "/etc/passwd", "escape", ""] {
            let e = store.resolve(bad).unwrap_err();
            assert!(matches!(e, Error::InvalidArgument(_)), "{bad}: {e}");
        }
        assert!(matches!(
            store.resolve("m/missing"),
            Err(Error::NotFound(_))
        ));
        assert!(matches!(store.resolve("m"), Err(Error::InvalidArgument(_))));
    }
}
