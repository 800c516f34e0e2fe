//! Turning a stream of token pieces into text a client may see: complete
//! UTF-8 characters only, and nothing that could still become a stop string.

/// Decodes UTF-8 that arrives split at arbitrary byte boundaries. Bytes of
/// an incomplete character wait for the next piece; invalid bytes become
/// U+FFFD.
#[derive(Debug, Default)]
pub struct Utf8Stream {
    pending: Vec<u8>,
}

impl Utf8Stream {
    /// Adds a piece; returns the text completed by it.
    pub fn push(&mut self, bytes: &[u8]) -> String {
        self.pending.extend_from_slice(bytes);
        let mut out = String::new();
        loop {
            match std::str::from_utf8(&self.pending) {
                Ok(s) => {
                    out.push_str(s);
                    self.pending.clear();
                    return out;
                }
                Err(e) => {
                    let valid = e.valid_up_to();
                    // The prefix up to `valid_up_to` is valid UTF-8.
                    out.push_str(std::str::from_utf8(&self.pending[..valid]).unwrap_or_default());
                    match e.error_len() {
                        // Invalid bytes: replace them and go on.
                        Some(bad) => {
                            out.push(char::REPLACEMENT_CHARACTER);
                            self.pending.drain(..valid + bad);
                        }
                        // An incomplete character at the end: keep it.
                        None => {
                            self.pending.drain(..valid);
                            return out;
                        }
                    }
                }
            }
        }
    }

    /// What is left at the end: an incomplete character becomes U+FFFD.
    pub fn finish(&mut self) -> String {
        let out = if self.pending.is_empty() {
            String::new()
        } else {
            String::from_utf8_lossy(&self.pending).into_owned()
        };
        self.pending.clear();
        out
    }
}

/// Holds back text that may be the start of a stop string, and finds stop
/// strings across piece boundaries.
#[derive(Debug)]
pub struct StopFilter {
    stops: Vec<String>,
    held: String,
}

/// What the filter let through.
#[derive(Debug, PartialEq, Eq)]
pub enum Filtered {
    /// Text safe to emit (may be empty).
    Text(String),
    /// A stop string matched; the text before it is safe to emit.
    Stopped(String),
}

impl StopFilter {
    /// A filter for these stop strings (empty ones are ignored).
    pub fn new(stops: &[String]) -> Self {
        StopFilter {
            stops: stops.iter().filter(|s| !s.is_empty()).cloned().collect(),
            held: String::new(),
        }
    }

    /// Adds decoded text. While `may_stop` is false (`min_tokens` not
    /// reached) a stop string in it is text: it goes out, and only a tail
    /// that may still become a stop string is held.
    pub fn push(&mut self, text: &str, may_stop: bool) -> Filtered {
        self.held.push_str(text);
        if let Some(at) = self
            .stops
            .iter()
            .filter_map(|s| self.held.find(s.as_str()))
            .min()
            .filter(|_| may_stop)
        {
            let before = self.held[..at].to_owned();
            self.held.clear();
            return Filtered::Stopped(before);
        }
        // Keep the longest tail that is a proper prefix of some stop string.
        let keep = |held: &str| {
            self.stops
                .iter()
                .map(|s| longest_suffix_prefix(held, s))
                .max()
                .unwrap_or(0)
        };
        let mut cut = self.held.len() - keep(&self.held);
        if !may_stop {
            // A stop string completed before `min_tokens` is text: it must
            // not stay held as the start of a longer one (`END` of `ENDX`)
            // and fire once armed. Release through its end, and hold only
            // what may still begin a stop string after it.
            while let Some(end) = self
                .stops
                .iter()
                .filter_map(|s| {
                    self.held[cut..]
                        .find(s.as_str())
                        .map(|at| cut + at + s.len())
                })
                .max()
            {
                cut = end + (self.held.len() - end - keep(&self.held[end..]));
            }
        }
        let out = self.held[..cut].to_owned();
        self.held.drain(..cut);
        Filtered::Text(out)
    }

    /// Text still held at the end (no stop string matched).
    pub fn finish(&mut self) -> String {
        std::mem::take(&mut self.held)
    }
}

/// Length in bytes of the longest suffix of `text` that is a proper prefix
/// of `stop`, on character boundaries.
fn longest_suffix_prefix(text: &str, stop: &str) -> usize {
    let max = text.len().min(stop.len().saturating_sub(1));
    (1..=max)
        .rev()
        .find(|&n| {
            text.is_char_boundary(text.len() - n)
                && stop.is_char_boundary(n)
                && stop.starts_with(&text[text.len() - n..])
        })
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    impl StopFilter {
        fn push_t(&mut self, text: &str) -> Filtered {
            self.push(text, true)
        }
    }

    #[test]
    fn an_emoji_split_over_pieces_is_emitted_whole() {
        let mut d = Utf8Stream::default();
        let bytes = "a😀b".as_bytes();
        let mut out = String::new();
        for b in bytes {
            let piece = d.push(&[*b]);
            assert!(piece.chars().all(|c| c != char::REPLACEMENT_CHARACTER));
            out.push_str(&piece);
        }
        assert_eq!(out, "a😀b");
        assert_eq!(d.finish(), "");
    }

    #[test]
    fn invalid_and_truncated_bytes_become_replacement_characters() {
        let mut d = Utf8Stream::default();
        assert_eq!(d.push(&[b'x', 0xFF, b'y']), "x\u{FFFD}y");
        assert_eq!(d.push(&[0xF0, 0x9F]), "");
        assert_eq!(d.finish(), "\u{FFFD}");
    }

    #[test]
    fn stop_strings_match_across_pieces_and_are_never_emitted() {
        let mut f = StopFilter::new(&["</end>".into()]);
        assert_eq!(f.push_t("hello <"), Filtered::Text("hello ".into()));
        assert_eq!(f.push_t("/en"), Filtered::Text(String::new()));
        assert_eq!(f.push_t("d> tail"), Filtered::Stopped(String::new()));
        let mut f = StopFilter::new(&["\n\n".into()]);
        assert_eq!(f.push_t("a\n"), Filtered::Text("a".into()));
        assert_eq!(f.push_t("b"), Filtered::Text("\nb".into()));
        assert_eq!(f.finish(), "");
    }

    #[test]
    fn a_stop_string_before_min_tokens_is_text() {
        let mut f = StopFilter::new(&["END".into()]);
        assert_eq!(
            f.push("a END b E", false),
            Filtered::Text("a END b ".into())
        );
        // Armed now: the held "E" completes a stop string.
        assert_eq!(f.push("ND c", true), Filtered::Stopped(String::new()));
    }

    #[test]
    fn a_stop_completed_before_min_tokens_never_fires_later() {
        // "END" is complete and also the start of "ENDX": held, it would
        // stop the call at the next token once armed.
        let mut f = StopFilter::new(&["END".into(), "ENDX".into()]);
        assert_eq!(f.push("a END", false), Filtered::Text("a END".into()));
        assert_eq!(f.push(" b", true), Filtered::Text(" b".into()));
        // What may begin a new stop string after a released one is still
        // held ("EN" of a next "END"), and goes out when it does not.
        let mut f = StopFilter::new(&["ENDEN".into(), "END".into()]);
        assert_eq!(f.push("x ENDEN", false), Filtered::Text("x END".into()));
        assert_eq!(f.push(" y", true), Filtered::Text("EN y".into()));
        let mut f = StopFilter::new(&["ABAB".into(), "AB".into()]);
        assert_eq!(f.push("AB A", false), Filtered::Text("AB ".into()));
        assert_eq!(f.push("BAB", true), Filtered::Stopped(String::new()));
    }

    #[test]
    fn held_text_comes_out_at_the_end() {
        let mut f = StopFilter::new(&["STOP".into()]);
        assert_eq!(f.push_t("ST"), Filtered::Text(String::new()));
        assert_eq!(f.finish(), "ST");
    }
}
