//! What a file is, by its bytes (magic numbers, with `infer`), never by its name: the types
//! support asks for (screenshots, documents, logs) and nothing else.

/// An accepted type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    Png,
    Jpeg,
    Gif,
    Webp,
    Heic,
    Pdf,
    /// Plain UTF-8 text (txt, csv, log).
    Text,
}

impl Kind {
    pub fn mime(self) -> &'static str {
        match self {
            Kind::Png => "image/png",
            Kind::Jpeg => "image/jpeg",
            Kind::Gif => "image/gif",
            Kind::Webp => "image/webp",
            Kind::Heic => "image/heic",
            Kind::Pdf => "application/pdf",
            Kind::Text => "text/plain; charset=utf-8",
        }
    }

    /// The kind a stored MIME type names (as `mime` wrote it).
    pub fn from_mime(mime: &str) -> Option<Self> {
        [
            Kind::Png,
            Kind::Jpeg,
            Kind::Gif,
            Kind::Webp,
            Kind::Heic,
            Kind::Pdf,
            Kind::Text,
        ]
        .into_iter()
        .find(|k| k.mime() == mime)
    }

    /// Whether a client's declared type is this kind (or claims nothing).
    pub fn agrees_with(self, declared: &str) -> bool {
        let declared = declared
            .split(';')
            .next()
            .unwrap_or_default()
            .trim()
            .to_ascii_lowercase();
        match declared.as_str() {
            "" | "application/octet-stream" => true,
            "image/png" => self == Kind::Png,
            "image/jpeg" | "image/jpg" | "image/pjpeg" => self == Kind::Jpeg,
            "image/gif" => self == Kind::Gif,
            "image/webp" => self == Kind::Webp,
            "image/heic" | "image/heif" | "image/heic-sequence" | "image/heif-sequence" => {
                self == Kind::Heic
            }
            "application/pdf" => self == Kind::Pdf,
            "text/plain" | "text/csv" | "text/x-log" | "text/tab-separated-values" => {
                self == Kind::Text
            }
            _ => false,
        }
    }
}

/// The kind of a file from its first bytes (`complete` when they are the whole file, so a
/// UTF-8 sequence cut at the end is an error, not a chunk boundary). The error names what was
/// found instead.
pub fn sniff(head: &[u8], complete: bool) -> Result<Kind, String> {
    if let Some(found) = infer::get(head) {
        return match found.mime_type() {
            "image/png" => Ok(Kind::Png),
            "image/jpeg" => Ok(Kind::Jpeg),
            "image/gif" => Ok(Kind::Gif),
            "image/webp" => Ok(Kind::Webp),
            "image/heif" | "image/heic" => Ok(Kind::Heic),
            "application/pdf" => Ok(Kind::Pdf),
            other => Err(other.to_owned()),
        };
    }
    let mut check = TextCheck::default();
    if check.feed(head) && (!complete || check.finish()) {
        Ok(Kind::Text)
    } else {
        Err("binary data".to_owned())
    }
}

/// Checks that a stream of chunks is text: valid UTF-8 across chunk boundaries, and no
/// control characters but tab, line feed, carriage return and form feed.
#[derive(Debug, Default)]
pub struct TextCheck {
    /// The start of a UTF-8 sequence the previous chunk ended in.
    carry: Vec<u8>,
}

impl TextCheck {
    /// False as soon as the bytes cannot be text.
    pub fn feed(&mut self, bytes: &[u8]) -> bool {
        let mut joined;
        let bytes = if self.carry.is_empty() {
            bytes
        } else {
            joined = std::mem::take(&mut self.carry);
            joined.extend_from_slice(bytes);
            &joined[..]
        };
        let (valid, rest) = match std::str::from_utf8(bytes) {
            Ok(s) => (s, &[][..]),
            Err(e) if e.error_len().is_none() => {
                // Cut in the middle of a sequence: keep its start for the next chunk.
                let (valid, rest) = bytes.split_at(e.valid_up_to());
                (std::str::from_utf8(valid).unwrap_or_default(), rest)
            }
            Err(_) => return false,
        };
        if valid
            .chars()
            .any(|c| c.is_control() && !matches!(c, '\t' | '\n' | '\r' | '\u{c}'))
        {
            return false;
        }
        self.carry = rest.to_vec();
        true
    }

    /// True when nothing is left over: the text did not end inside a sequence.
    pub fn finish(&self) -> bool {
        self.carry.is_empty()
    }
}

/// A file name fit to show: no directories, no control characters, at most 255 bytes, never
/// empty. It is only ever displayed; storage keys are ids.
pub fn clean_file_name(raw: &str) -> String {
    let base = raw.rsplit(['/', '\\']).next().unwrap_or_default();
    let cleaned: String = base
        .chars()
        .filter(|c| {
            !c.is_control() && !matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
        })
        .collect();
    let cleaned = cleaned.trim().trim_start_matches('.').trim();
    let mut out = String::new();
    for c in cleaned.chars() {
        if out.len() + c.len_utf8() > 255 {
            break;
        }
        out.push(c);
    }
    if out.is_empty() {
        "attachment".to_owned()
    } else {
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PNG: &[u8] = b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR";
    const JPEG: &[u8] = b"\xff\xd8\xff\xe0\0\x10JFIF\0";
    const PDF: &[u8] = b"%PDF-1.7\n";
    /// An ELF header (64 bytes: `infer` reads past the magic number).
    const ELF: &[u8] = b"\x7fELF\x02\x01\x01\0\0\0\0\0\0\0\0\0\x02\0\x3e\0\x01\0\0\0\0\0\0\0\0\0\0\0\x40\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\x40\0\x38\0\0\0\0\0\0\0\0\0";

    #[test]
    fn the_bytes_decide_the_type() {
        // Given the first bytes of files, then their kinds, whatever they are called.
        assert_eq!(sniff(PNG, false), Ok(Kind::Png));
        assert_eq!(sniff(JPEG, false), Ok(Kind::Jpeg));
        assert_eq!(sniff(PDF, false), Ok(Kind::Pdf));
        assert_eq!(sniff(b"GIF89a\x01\0", false), Ok(Kind::Gif));
        assert_eq!(
            sniff("tx,amount\n0xabc,12.50 €\n".as_bytes(), true),
            Ok(Kind::Text)
        );
        // An executable, and binary noise, are refused.
        assert_eq!(sniff(ELF, false), Err("application/x-executable".into()));
        assert_eq!(sniff(b"\0\x01\x02\x03", true), Err("binary data".into()));
    }

    #[test]
    fn a_declared_type_must_agree_with_the_bytes() {
        // Given a PNG, then "image/png" and no claim agree; "text/plain" does not.
        assert!(Kind::Png.agrees_with("image/png"));
        assert!(Kind::Png.agrees_with(""));
        assert!(Kind::Png.agrees_with("application/octet-stream"));
        assert!(!Kind::Png.agrees_with("text/plain"));
        assert!(Kind::Text.agrees_with("text/csv; charset=utf-8"));
        assert!(!Kind::Text.agrees_with("image/png"));
        assert!(!Kind::Pdf.agrees_with("application/x-msdownload"));
    }

    #[test]
    fn text_is_checked_across_chunk_boundaries() {
        // Given "€" (3 bytes) split over two chunks, then it is text.
        let euro = "€".as_bytes();
        let mut check = TextCheck::default();
        assert!(check.feed(&[b'a', euro[0]]));
        assert!(!check.finish(), "the sequence is not complete yet");
        assert!(check.feed(&euro[1..]));
        assert!(check.finish());
        // Given a NUL or an invalid byte in a later chunk, then it is not.
        let mut check = TextCheck::default();
        assert!(check.feed(b"fine\n"));
        assert!(!check.feed(b"then \0 binary"));
        let mut check = TextCheck::default();
        assert!(!check.feed(b"\xff\xfe"));
    }

    #[test]
    fn file_names_lose_paths_controls_and_excess() {
        assert_eq!(clean_file_name("../../etc/passwd"), "passwd");
        assert_eq!(
            clean_file_name("C:\\Users\\ann\\screen shot.png"),
            "screen shot.png"
        );
        assert_eq!(clean_file_name("evil\u{202e}gnp.exe"), "evilgnp.exe");
        assert_eq!(clean_file_name("a\r\nb.txt"), "ab.txt");
        assert_eq!(clean_file_name("..."), "attachment");
        assert_eq!(clean_file_name(""), "attachment");
        let long = format!("{}.png", "é".repeat(300));
        let cleaned = clean_file_name(&long);
        assert!(cleaned.len() <= 255 && cleaned.starts_with('é'));
    }
}
