//! Reading the small files the config names and the supervisor re-reads
//! while it runs (the tokens file, TLS certificates and keys): a path an
//! operator or a mounted Secret controls may be swapped for a FIFO (an
//! open would block the reader forever) or `/dev/zero` (a read would never
//! end), so each is opened without blocking, must be a regular file, and
//! is read up to a cap.

use std::io::Read;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

/// The bytes of the regular file at `path`, at most `cap`; the reason
/// otherwise ("cannot read: …", "is not a regular file", "is larger than
/// N bytes"), without the path (the caller names it).
pub fn read(path: &Path, cap: u64) -> Result<Vec<u8>, String> {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(path)
        .map_err(|e| format!("cannot read: {e}"))?;
    let meta = file.metadata().map_err(|e| format!("cannot read: {e}"))?;
    if !meta.is_file() {
        return Err("is not a regular file".into());
    }
    let mut bytes = Vec::new();
    file.take(cap + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| format!("cannot read: {e}"))?;
    if bytes.len() as u64 > cap {
        return Err(format!("is larger than {cap} bytes"));
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fifos_devices_and_big_files_are_refused_at_once() {
        let dir = tempfile::tempdir().expect("dir");
        let fifo = dir.path().join("fifo");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).expect("fifo");
        let started = std::time::Instant::now();
        assert_eq!(read(&fifo, 10).unwrap_err(), "is not a regular file");
        assert!(started.elapsed() < std::time::Duration::from_secs(1));
        assert_eq!(
            read(Path::new("/dev/zero"), 10).unwrap_err(),
            "is not a regular file"
        );
        let big = dir.path().join("big");
        std::fs::write(&big, [b'x'; 11]).expect("write");
        assert_eq!(read(&big, 10).unwrap_err(), "is larger than 10 bytes");
        assert_eq!(read(&big, 11).expect("fits"), [b'x'; 11]);
        assert!(
            read(&dir.path().join("none"), 10)
                .unwrap_err()
                .starts_with("cannot read: ")
        );
    }
}
