//! Region names and object keys: what a client may name, checked before
//! anything is opened.

use crate::error::Error;

/// Longest region name, bytes.
pub const MAX_NAME: usize = 64;
/// Longest object key after its leading `/`, bytes (NAME_MAX).
pub const MAX_KEY: usize = 255;

/// A client's string as a message may show it: quoted when at most
/// [`MAX_NAME`] bytes, else only its length (a message never echoes a
/// long input).
pub fn shown(s: &str) -> String {
    if s.len() <= MAX_NAME {
        format!("{s:?}")
    } else {
        format!("of {} bytes", s.len())
    }
}

/// A region name: 1..=64 bytes of `[A-Za-z0-9._-]`.
pub fn check_name(field: &str, name: &str) -> Result<(), Error> {
    if name.is_empty() || name.len() > MAX_NAME {
        return Err(Error::InvalidArgument(format!(
            "{field} {} is {} bytes; 1..={MAX_NAME} are allowed",
            shown(name),
            name.len()
        )));
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
    {
        return Err(Error::InvalidArgument(format!(
            "{field} {} holds {c:?}; only [A-Za-z0-9._-] are allowed",
            shown(name)
        )));
    }
    Ok(())
}

/// An object key as `shm_open` takes it: `/` then 1..=255 bytes with no
/// other `/`, no NUL, not `.` or `..`. Returns the file name (the key
/// without its slash).
pub fn check_key(key: &str) -> Result<&str, Error> {
    let Some(file) = key.strip_prefix('/') else {
        return Err(Error::InvalidArgument(format!(
            "key {} must start with \"/\" (a shm_open name such as \"/my-region\")",
            shown(key)
        )));
    };
    if file.is_empty() || file.len() > MAX_KEY {
        return Err(Error::InvalidArgument(format!(
            "key {} has {} bytes after its \"/\"; 1..={MAX_KEY} are allowed",
            shown(key),
            file.len()
        )));
    }
    if file.contains('/') {
        return Err(Error::InvalidArgument(format!(
            "key {} holds a \"/\" past its first byte; a key names one object of the shared-memory directory",
            shown(key)
        )));
    }
    if file.contains('\0') {
        return Err(Error::InvalidArgument(format!(
            "key {} holds a NUL byte",
            shown(key)
        )));
    }
    if file == "." || file == ".." {
        return Err(Error::InvalidArgument(format!(
            "key {} names a directory, not an object",
            shown(key)
        )));
    }
    Ok(file)
}

/// The end of the window `offset..offset + byte_size`, checked: `what`
/// names the window in messages.
pub fn window_end(what: &str, offset: u64, byte_size: u64) -> Result<u64, Error> {
    if byte_size == 0 {
        return Err(Error::InvalidArgument(format!(
            "{what}: byte_size 0; at least 1 byte is needed"
        )));
    }
    offset.checked_add(byte_size).ok_or_else(|| {
        Error::InvalidArgument(format!(
            "{what}: offset {offset} + byte_size {byte_size} overflows (more than {} bytes)",
            u64::MAX
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn keys_are_one_object_of_the_directory() {
        assert_eq!(check_key("/a.b-c_1").expect("valid"), "a.b-c_1");
        for bad in ["", "a", "/", "/a/b", "/..", "/.", "/a\0b", "//a"] {
            assert!(
                matches!(check_key(bad), Err(Error::InvalidArgument(_))),
                "{bad:?}"
            );
        }
        let long = format!("/{}", "k".repeat(300));
        let Err(Error::InvalidArgument(m)) = check_key(&long) else {
            panic!("300 bytes accepted");
        };
        assert!(
            m.contains("of 301 bytes") && m.contains("300 bytes") && m.contains("1..=255"),
            "{m}"
        );
        assert!(!m.contains("kkkk"), "a long key is not echoed: {m}");
        assert!(check_key(&format!("/{}", "k".repeat(255))).is_ok());
    }

    #[test]
    fn names_are_short_and_plain() {
        assert!(check_name("name", "in-0.a_B").is_ok());
        assert!(check_name("name", "").is_err());
        assert!(check_name("name", &"n".repeat(65)).is_err());
        assert!(check_name("name", &"n".repeat(64)).is_ok());
        let Err(Error::InvalidArgument(m)) = check_name("name", "a b") else {
            panic!("a space accepted");
        };
        assert!(m.contains("name \"a b\"") && m.contains("' '"), "{m}");
    }

    #[test]
    fn windows_at_the_limits_of_u64() {
        assert_eq!(window_end("w", 0, u64::MAX).expect("fits"), u64::MAX);
        assert_eq!(window_end("w", u64::MAX - 1, 1).expect("fits"), u64::MAX);
        let Err(Error::InvalidArgument(m)) = window_end("w", 1, u64::MAX) else {
            panic!("overflow accepted");
        };
        assert!(
            m.contains("offset 1 + byte_size 18446744073709551615 overflows"),
            "{m}"
        );
        assert!(window_end("w", 5, 0).is_err());
    }

    proptest! {
        #[test]
        fn a_valid_key_never_leaves_the_directory(s in "\\PC{0,300}") {
            if let Ok(file) = check_key(&s) {
                prop_assert!(!file.contains('/') && !file.contains('\0'));
                prop_assert!(file != "." && file != "..");
                prop_assert!((1..=MAX_KEY).contains(&file.len()));
            }
        }

        #[test]
        fn a_valid_name_is_plain_ascii(s in "\\PC{0,80}") {
            if check_name("name", &s).is_ok() {
                prop_assert!((1..=MAX_NAME).contains(&s.len()));
                prop_assert!(s.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b)));
            }
        }

        #[test]
        fn messages_never_echo_long_input(s in "[a-z/]{65,400}") {
            let m = match (check_key(&s), check_name("name", &s)) {
                (_, Err(e)) => e.to_string(),
                _ => unreachable!("a name over 64 bytes is refused"),
            };
            prop_assert!(!m.contains(&s));
            if let Err(e) = check_key(&s) {
                prop_assert!(!e.to_string().contains(&s));
            }
        }

        #[test]
        fn window_ends_never_wrap(o in any::<u64>(), b in 1..=u64::MAX) {
            match window_end("w", o, b) {
                Ok(end) => prop_assert!(end >= o && end - o == b),
                Err(_) => prop_assert!(o.checked_add(b).is_none()),
            }
        }
    }
}
