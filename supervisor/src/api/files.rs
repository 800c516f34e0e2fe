//! The model store's file operations: list, download, upload, delete.
//!
//! Uploads go to a temporary file beside the destination (see
//! `store::write`); only after the size and sha256 check out is it fsynced
//! and renamed into place, so an interrupted or corrupted upload leaves
//! nothing and never replaces a good file. The declared size is checked
//! against the store's quotas before anything is created.

use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::pin::Pin;

use sha2::{Digest, Sha256};
use sidecar_proto::v1::{
    FileChunk, FileInfo, GetFileRequest, ListFilesRequest, PutFileRequest, put_file_request,
};
use tokio_stream::{Stream, StreamExt};
use tonic::{Status, Streaming};

use crate::error::Error;
use crate::registry::Registry;
use crate::store::{Digests, TEMP_PREFIX, UploadSpec, hex};

const DEFAULT_CHUNK: usize = 1 << 20;
const MAX_CHUNK: usize = 4 << 20;

fn io(what: &str, e: std::io::Error) -> Error {
    match e.kind() {
        std::io::ErrorKind::NotFound => Error::NotFound(format!("{what}: {e}")),
        std::io::ErrorKind::StorageFull => Error::ResourceExhausted(format!("{what}: {e}")),
        _ => Error::Internal(format!("{what}: {e}")),
    }
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, Error> + Send + 'static,
) -> Result<T, Error> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Error::Internal(format!("file task: {e}")))?
}

/// Ids of the loaded models that use `file`.
fn users_of(registry: &Registry, file: &Path) -> Vec<String> {
    used_files(registry)
        .into_iter()
        .filter(|(p, _)| p == file)
        .map(|(_, id)| id)
        .collect()
}

/// Store-relative files that loaded models use (their model files and a
/// VISION model's companion models), with their model ids.
fn used_files(registry: &Registry) -> Vec<(PathBuf, String)> {
    registry
        .list()
        .into_iter()
        .flat_map(|h| {
            let companions = h.spec.vision.pipeline.roles().map(|(_, p)| p.to_owned());
            std::iter::once(h.spec.path.clone())
                .chain(companions)
                .filter(|p| !p.is_empty())
                .filter_map(|p| registry.store.resolve(&p).ok())
                .map(|p| (p, h.spec.id.clone()))
                .collect::<Vec<_>>()
        })
        .collect()
}

fn info(
    root: &Path,
    path: &Path,
    used: &[(PathBuf, String)],
    digests: Option<&Digests>,
) -> Result<FileInfo, Error> {
    let meta = std::fs::metadata(path).map_err(|e| io("stat", e))?;
    let mut out = info_of(root, path, &meta, used);
    if let Some(d) = digests {
        out.sha256 = d.sha256(path)?;
    }
    Ok(out)
}

/// A file's info from its metadata, without its digest.
fn info_of(
    root: &Path,
    path: &Path,
    meta: &std::fs::Metadata,
    used: &[(PathBuf, String)],
) -> FileInfo {
    let modified = meta
        .modified()
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_millis() as i64);
    FileInfo {
        path: path
            .strip_prefix(root)
            .unwrap_or(path)
            .to_string_lossy()
            .into_owned(),
        size_bytes: meta.len(),
        modified_unix_ms: modified,
        sha256: String::new(),
        used_by: used
            .iter()
            .filter(|(p, _)| p == path)
            .map(|(_, id)| id.clone())
            .collect(),
    }
}

/// ListFiles.
pub async fn list(registry: &Registry, req: &ListFilesRequest) -> Result<Vec<FileInfo>, Error> {
    let root = registry.store.root().to_path_buf();
    let dir = if req.prefix.is_empty() {
        root.clone()
    } else {
        let d = registry.store.join(&req.prefix)?;
        let real = d
            .canonicalize()
            .map_err(|e| io(&format!("prefix {:?}", req.prefix), e))?;
        if !real.starts_with(&root) {
            return Err(Error::InvalidArgument(format!(
                "prefix {:?} leaves the model store",
                req.prefix
            )));
        }
        if !real.is_dir() {
            return Err(Error::NotFound(format!(
                "prefix {:?} is not a directory",
                req.prefix
            )));
        }
        real
    };
    let used = used_files(registry);
    let recursive = req.recursive;
    let digests = req.with_sha256.then(|| registry.store.digests.clone());
    blocking(move || {
        let mut out = Vec::new();
        let mut dirs = vec![dir];
        while let Some(d) = dirs.pop() {
            for entry in std::fs::read_dir(&d).map_err(|e| io("list", e))?.flatten() {
                let path = entry.path();
                let name = entry.file_name();
                if name.to_string_lossy().starts_with(TEMP_PREFIX) {
                    continue;
                }
                let Ok(real) = path.canonicalize() else {
                    continue;
                };
                if !real.starts_with(&root) {
                    continue;
                }
                if real.is_dir() {
                    if recursive {
                        dirs.push(path);
                    }
                } else if real.is_file() {
                    out.push(info(&root, &path, &used, digests.as_deref())?);
                }
            }
        }
        out.sort_by(|a, b| a.path.cmp(&b.path));
        Ok(out)
    })
    .await
}

type Chunks = Pin<Box<dyn Stream<Item = Result<FileChunk, Status>> + Send>>;

/// GetFile.
pub async fn get(registry: &Registry, req: GetFileRequest) -> Result<Chunks, Error> {
    let path = registry.store.resolve(&req.path)?;
    let root = registry.store.root().to_path_buf();
    let used = used_files(registry);
    let chunk = match req.chunk_size as usize {
        0 => DEFAULT_CHUNK,
        n if n > MAX_CHUNK => {
            return Err(Error::InvalidArgument(format!(
                "chunk_size {n} exceeds the limit of {MAX_CHUNK}"
            )));
        }
        n => n,
    };
    let file_info = {
        let path = path.clone();
        let digests = registry.store.digests.clone();
        blocking(move || info(&root, &path, &used, Some(&digests))).await?
    };
    let size = file_info.size_bytes;
    if req.offset > size {
        return Err(Error::InvalidArgument(format!(
            "offset {} is past the end of the {size} byte file",
            req.offset
        )));
    }
    let end = if req.length == 0 {
        size
    } else {
        size.min(req.offset.saturating_add(req.length))
    };
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let offset = req.offset;
    tokio::task::spawn_blocking(move || {
        let send = |c: Result<FileChunk, Status>| tx.blocking_send(c).is_ok();
        let mut f = match std::fs::File::open(&path)
            .and_then(|mut f| f.seek(SeekFrom::Start(offset)).map(|_| f))
        {
            Ok(f) => f,
            Err(e) => {
                send(Err(io("open", e).into()));
                return;
            }
        };
        let mut at = offset;
        let mut first = Some(file_info);
        loop {
            let n = ((end - at) as usize).min(chunk);
            let mut data = vec![0u8; n];
            if let Err(e) = f.read_exact(&mut data) {
                send(Err(io("read", e).into()));
                return;
            }
            let msg = FileChunk {
                offset: at,
                data: data.into(),
                file: first.take(),
            };
            if !send(Ok(msg)) {
                return;
            }
            at += n as u64;
            if at >= end {
                return;
            }
        }
    });
    Ok(Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx)))
}

/// PutFile.
pub async fn put(
    registry: &Registry,
    mut stream: Streaming<PutFileRequest>,
) -> Result<FileInfo, Error> {
    let header = match stream.next().await {
        Some(Ok(PutFileRequest {
            msg: Some(put_file_request::Msg::Header(h)),
        })) => h,
        Some(Ok(_)) | None => {
            return Err(Error::InvalidArgument(
                "the first message must be the header".into(),
            ));
        }
        Some(Err(s)) => return Err(Error::Cancelled(format!("upload stream: {}", s.message()))),
    };
    let want_sha = header.sha256.to_ascii_lowercase();
    if want_sha.len() != 64 || !want_sha.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(Error::InvalidArgument(format!(
            "sha256 {:?} is not 64 hex digits",
            header.sha256
        )));
    }
    let spec = UploadSpec {
        path: header.path.clone(),
        size: header.size_bytes,
        overwrite: header.overwrite,
    };
    let store = registry.store.clone();
    let limits = registry.shared().config.store.clone();
    // Dropping `upload` (any error below, or the call's future when the
    // client goes away) removes its temporary file.
    let mut upload = blocking(move || store.begin_upload(&spec, &limits)).await?;
    if upload.replaces() {
        let users = users_of(registry, &upload.dest());
        if !users.is_empty() {
            return Err(Error::FailedPrecondition(format!(
                "{:?} is used by loaded model(s) {}; unload them first",
                header.path,
                users.join(", ")
            )));
        }
    }
    let mut hasher = Sha256::new();
    while let Some(msg) = stream.next().await {
        let msg =
            msg.map_err(|s| Error::Cancelled(format!("upload interrupted: {}", s.message())))?;
        let chunk = match msg.msg {
            Some(put_file_request::Msg::Chunk(c)) => c,
            _ => {
                return Err(Error::InvalidArgument(
                    "only chunks may follow the header".into(),
                ));
            }
        };
        hasher.update(&chunk);
        upload = blocking(move || upload.write(&chunk).map(|()| upload)).await?;
    }
    if upload.written() != header.size_bytes {
        return Err(Error::InvalidArgument(format!(
            "{} bytes arrived, the header announced {} (size_bytes)",
            upload.written(),
            header.size_bytes
        )));
    }
    let got_sha = hex(&hasher.finalize());
    if got_sha != want_sha {
        return Err(Error::InvalidArgument(format!(
            "sha256 mismatch: the header says {want_sha}, the bytes hash to {got_sha}"
        )));
    }
    let relative = header.path.clone();
    let (dest, meta) = blocking(move || upload.publish(&relative)).await?;
    let root = registry.store.root().to_path_buf();
    let mut out = info_of(&root, &dest, &meta, &used_files(registry));
    out.sha256 = got_sha;
    Ok(out)
}

/// DeleteFile.
pub async fn delete(registry: &Registry, path: &str) -> Result<(), Error> {
    let real = registry.store.resolve(path)?;
    let users = users_of(registry, &real);
    if !users.is_empty() {
        return Err(Error::FailedPrecondition(format!(
            "{path:?} is used by loaded model(s) {}; unload them first",
            users.join(", ")
        )));
    }
    std::fs::remove_file(&real).map_err(|e| io("delete", e))
}
