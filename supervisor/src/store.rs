//! The model store: a directory every model path is resolved inside.

use std::path::{Component, Path, PathBuf};

use crate::error::Error;

/// The model store.
#[derive(Debug, Clone)]
pub struct Store {
    root: PathBuf,
}

impl Store {
    /// A store at `root` (created if missing).
    pub fn open(root: &Path) -> Result<Store, Error> {
        std::fs::create_dir_all(root)
            .map_err(|e| Error::Config(format!("model store {}: {e}", root.display())))?;
        let root = root
            .canonicalize()
            .map_err(|e| Error::Config(format!("model store {}: {e}", root.display())))?;
        Ok(Store { root })
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
