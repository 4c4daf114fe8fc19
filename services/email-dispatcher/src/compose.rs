//! A notification email in its wire form, built in one pass: the DATA block of RFC 5321
//! 4.1.1.4 (CRLF line ends, every line that starts with "." dot-stuffed, the end mark), ready
//! for a session to write.
//!
//! Every notification has the same shape: a few headers and a multipart/alternative of a text
//! and an HTML part. lettre's `Message` builds the same through a builder, a random boundary,
//! header maps and three copies of the body (encode, format, dot-stuff), which made building
//! messages the dispatcher's largest cost (docs/decisions/0004-own-mime-composer.md). Here
//! each body is copied once. Headers that carry
//! user text (To, Subject) and the sender still go through lettre's encoders (RFC 2047,
//! folding), so no input can add a header or a line.

use std::fmt::Write as _;

use chrono::{DateTime, Utc};
use lettre::message::header::{self, ContentTransferEncoding, Headers};
use lettre::message::{Body, Mailbox, Mailboxes};

use tidings_smtp::DataBlock;

/// One message, ready to send.
#[derive(Debug, Clone)]
pub struct OutgoingEmail {
    pub to: String,
    /// `<id@domain>`, derived from (event, recipient) so downstream systems can dedupe too.
    pub message_id: String,
    pub subject: String,
    pub text: String,
    pub html: String,
    /// Time-critical (access codes): uses connections of its own, never queued behind
    /// ordinary notifications.
    pub urgent: bool,
}

/// The `From:` line, encoded once for every message.
pub(crate) fn from_line(from: &Mailbox) -> String {
    let mut h = Headers::with_capacity(1);
    h.set(header::From::from(Mailboxes::from(from.clone())));
    h.to_string()
}

/// `e` as a DATA block for `to` (a parsed address). Bodies go as they are where the wire can
/// take them (see [`push_lines`]), else quoted-printable.
pub(crate) fn data_block(
    from_line: &str,
    to: &lettre::Address,
    e: &OutgoingEmail,
    eight_bit: bool,
    now: DateTime<Utc>,
) -> DataBlock {
    let mut out = String::with_capacity(1024 + e.text.len() + e.html.len());
    out.push_str(from_line);
    let mut h = Headers::with_capacity(2);
    h.set(header::To::from(Mailboxes::from(Mailbox::new(
        None,
        to.clone(),
    ))));
    h.set(header::Subject::from(e.subject.clone()));
    let _ = write!(out, "{h}");
    out.push_str("Message-ID: ");
    out.push_str(&e.message_id);
    out.push_str("\r\nDate: ");
    out.push_str(&now.to_rfc2822());
    // Notification-only: tell well-behaved auto-responders not to answer (RFC 3834).
    out.push_str("\r\nAuto-Submitted: auto-generated\r\nMIME-Version: 1.0\r\n");
    let boundary = boundary(&e.message_id);
    out.push_str("Content-Type: multipart/alternative;\r\n boundary=\"");
    out.push_str(&boundary);
    out.push_str("\"\r\n\r\n");
    for (kind, text) in [("plain", &e.text), ("html", &e.html)] {
        out.push_str("--");
        out.push_str(&boundary);
        out.push_str("\r\nContent-Type: text/");
        out.push_str(kind);
        out.push_str("; charset=utf-8\r\nContent-Transfer-Encoding: ");
        let start = out.len();
        let as_is = encoding_as_is(text, eight_bit).is_some_and(|encoding| {
            out.push_str(name(encoding));
            out.push_str("\r\n\r\n");
            push_lines(&mut out, text)
        });
        if !as_is {
            out.truncate(start);
            // Quoted-printable takes any text (lettre's own choice would send short ASCII
            // lines as they are, a boundary-like line too).
            let body =
                Body::new_with_encoding(text.to_owned(), ContentTransferEncoding::QuotedPrintable)
                    .unwrap_or_else(|raw| {
                        Body::new_with_encoding(raw, ContentTransferEncoding::Base64)
                            .expect("base64 takes any bytes")
                    });
            out.push_str(name(body.encoding()));
            out.push_str("\r\n\r\n");
            // Quoted-printable and base64 are ASCII, and neither has a line that starts
            // with "--=_".
            let fits = push_lines(&mut out, &String::from_utf8_lossy(body.as_ref()));
            debug_assert!(fits, "encoded text always goes on the wire");
        }
        out.push_str("\r\n");
    }
    out.push_str("--");
    out.push_str(&boundary);
    out.push_str("--\r\n");
    DataBlock::end(out)
}

/// Derived from the Message-ID: unique per event and recipient, and minted after the text
/// was written, so no one can put it in a body. All the same, a body with a line that could
/// start a delimiter of this shape ("--=_") is never sent as is (see [`push_lines`]):
/// encoded, it cannot hold one.
fn boundary(message_id: &str) -> String {
    let id = message_id
        .trim_matches(['<', '>'])
        .split('@')
        .next()
        .unwrap_or_default();
    format!("{BOUNDARY_PREFIX}{id}")
}

const BOUNDARY_PREFIX: &str = "=_tidings_";

/// How `text` would go on the wire unencoded: 7bit, or 8bit where the server offers
/// 8BITMIME. Quoted-printable is the largest single cost of building a message, so text goes
/// as is wherever [`push_lines`] can take it.
fn encoding_as_is(text: &str, eight_bit: bool) -> Option<ContentTransferEncoding> {
    if text.is_ascii() {
        Some(ContentTransferEncoding::SevenBit)
    } else if eight_bit {
        Some(ContentTransferEncoding::EightBit)
    } else {
        None
    }
}

/// Appends `text`'s lines with CRLF between them, each that starts with "." dot-stuffed (RFC
/// 5321 4.5.2), in one pass. Returns false, having appended part of it, for text that may not
/// go unencoded: a line over RFC 5322's 998 octets, a bare CR or a NUL (RFC 2045 2.7, 2.8),
/// or a line that looks like one of our MIME boundaries.
fn push_lines(out: &mut String, text: &str) -> bool {
    let mut lines = text.split('\n').peekable();
    while let Some(line) = lines.next() {
        let line = line.strip_suffix('\r').unwrap_or(line);
        if line.len() > 998
            || line.bytes().any(|b| b == b'\r' || b == 0)
            || line
                .strip_prefix("--")
                .is_some_and(|l| l.starts_with(BOUNDARY_PREFIX))
        {
            return false;
        }
        if line.starts_with('.') {
            out.push('.');
        }
        out.push_str(line);
        if lines.peek().is_some() {
            out.push_str("\r\n");
        }
    }
    true
}

fn name(encoding: ContentTransferEncoding) -> &'static str {
    match encoding {
        ContentTransferEncoding::SevenBit => "7bit",
        ContentTransferEncoding::EightBit => "8bit",
        ContentTransferEncoding::QuotedPrintable => "quoted-printable",
        ContentTransferEncoding::Base64 => "base64",
        ContentTransferEncoding::Binary => "binary",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn email(subject: &str, text: &str, html: &str) -> OutgoingEmail {
        OutgoingEmail {
            to: "ada@example.com".into(),
            message_id: "<0b7e5c2a-1111-5222-8333-944445555666@tidings.example>".into(),
            subject: subject.into(),
            text: text.into(),
            html: html.into(),
            urgent: false,
        }
    }

    fn block(e: &OutgoingEmail, eight_bit: bool) -> String {
        let from: Mailbox = "Tidings <no-reply@tidings.example>".parse().unwrap();
        let to: lettre::Address = e.to.parse().unwrap();
        let now = DateTime::parse_from_rfc3339("2026-11-25T14:05:09Z")
            .unwrap()
            .with_timezone(&Utc);
        data_block(&from_line(&from), &to, e, eight_bit, now)
            .as_str()
            .to_owned()
    }

    /// Undoes the DATA framing: what the server stores.
    fn message(block: &str) -> String {
        let body = block.strip_suffix(".\r\n").expect("ends with the end mark");
        body.split("\r\n")
            .map(|l| l.strip_prefix('.').unwrap_or(l))
            .collect::<Vec<_>>()
            .join("\r\n")
    }

    #[test]
    fn a_notification_is_a_multipart_alternative_with_its_headers_and_the_end_mark() {
        // Given an email with ASCII text, HTML and subject
        let e = email("Your ticket 12345 was updated", "Hi\nSee it", "<p>Hi</p>");
        // When it is composed for a server with 8BITMIME
        let b = block(&e, true);
        // Then the headers, both parts as they are (7bit) and the end mark are there
        let boundary = "=_tidings_0b7e5c2a-1111-5222-8333-944445555666";
        assert_eq!(
            b,
            format!(
                "From: Tidings <no-reply@tidings.example>\r\n\
                 To: ada@example.com\r\n\
                 Subject: Your ticket 12345 was updated\r\n\
                 Message-ID: <0b7e5c2a-1111-5222-8333-944445555666@tidings.example>\r\n\
                 Date: Wed, 25 Nov 2026 14:05:09 +0000\r\n\
                 Auto-Submitted: auto-generated\r\n\
                 MIME-Version: 1.0\r\n\
                 Content-Type: multipart/alternative;\r\n boundary=\"{boundary}\"\r\n\
                 \r\n\
                 --{boundary}\r\n\
                 Content-Type: text/plain; charset=utf-8\r\n\
                 Content-Transfer-Encoding: 7bit\r\n\
                 \r\n\
                 Hi\r\nSee it\r\n\
                 --{boundary}\r\n\
                 Content-Type: text/html; charset=utf-8\r\n\
                 Content-Transfer-Encoding: 7bit\r\n\
                 \r\n\
                 <p>Hi</p>\r\n\
                 --{boundary}--\r\n\
                 .\r\n"
            )
        );
    }

    #[test]
    fn user_text_in_the_subject_is_encoded_and_cannot_add_a_header() {
        // Given a subject with a CRLF header trick and non-ASCII text
        let e = email("è\r\nBcc: eve@example.com", "x", "x");
        // When composed
        let m = message(&block(&e, true));
        let headers = m.split("\r\n\r\n").next().unwrap();
        // Then no line of the header block is a Bcc, and the subject is RFC 2047-encoded ASCII
        assert!(headers.lines().all(|l| !l.starts_with("Bcc")), "{headers}");
        let subject = headers.lines().find(|l| l.starts_with("Subject:")).unwrap();
        assert!(
            subject.is_ascii() && subject.contains("=?utf-8?"),
            "{subject}"
        );
    }

    #[test]
    fn lines_that_start_with_a_dot_are_stuffed_and_the_server_gets_them_back() {
        // Given text whose lines start with dots (one is a lone dot: the end mark itself)
        let e = email("s", ".x\n.\n..y\nz.", "<p>.</p>");
        // When composed
        let b = block(&e, false);
        // Then each such line gets one more dot, and undoing the framing restores them
        assert!(b.contains("\r\n..x\r\n..\r\n...y\r\nz.\r\n"), "{b}");
        assert!(message(&b).contains("\r\n.x\r\n.\r\n..y\r\nz.\r\n"));
        assert_eq!(b.matches("\r\n.\r\n").count(), 1, "one end mark");
    }

    #[test]
    fn text_goes_as_is_where_the_wire_can_take_it_and_encoded_where_not() {
        // Given ASCII text with LF and CRLF line ends and a 200-character line: 7bit as is
        let long = "x".repeat(200);
        let text = format!("Hello\nsecond line\r\n{long}\n");
        for eight_bit in [false, true] {
            assert_eq!(
                as_is(&text, eight_bit),
                Some(ContentTransferEncoding::SevenBit)
            );
        }
        let b = block(&email("s", &text, "h"), false);
        assert!(b.contains(&format!("\r\n\r\nHello\r\nsecond line\r\n{long}\r\n\r\n--")));
        // Non-ASCII text goes as 8bit only where the server offers it
        let it = "Il tuo ticket è stato aggiornato";
        assert_eq!(as_is(it, true), Some(ContentTransferEncoding::EightBit));
        assert!(block(&email("s", it, "h"), true).contains(it));
        let b = block(&email("s", it, "h"), false);
        assert!(b.is_ascii() && b.contains("quoted-printable"), "{b}");
        // A bare CR, a NUL or a line over 998 octets is never sent as is
        for bad in ["a\rb", "a\0b", &"y".repeat(999)] {
            assert_eq!(as_is(bad, true), None, "{bad:?}");
        }
        let b = block(&email("s", &"y".repeat(999), "h"), true);
        assert!(b.lines().all(|l| l.len() <= 78), "encoded lines are short");
    }

    #[test]
    fn a_body_with_a_line_like_a_boundary_is_encoded() {
        // Given text with a line that starts like one of our delimiters
        let e = email(
            "s",
            "hi\n--=_tidings_0b7e5c2a-1111-5222-8333-944445555666\nBcc: x",
            "h",
        );
        assert_eq!(as_is(&e.text, true), None);
        // When composed, then it is quoted-printable: no line of it can end the part
        let b = block(&e, true);
        assert!(b.contains("quoted-printable"), "{b}");
        assert_eq!(b.matches("\r\n--=_tidings_").count(), 3, "{b}");
    }

    /// How `text` goes out when the wire can take it as is.
    fn as_is(text: &str, eight_bit: bool) -> Option<ContentTransferEncoding> {
        let encoding = encoding_as_is(text, eight_bit)?;
        push_lines(&mut String::new(), text).then_some(encoding)
    }

    proptest::proptest! {
        /// Whatever the subject and bodies hold (user text: ticket subjects, replies), the
        /// DATA block has one end mark, CRLF line ends only, lines within SMTP's 998 octets,
        /// exactly our headers and exactly our three part delimiters.
        #[test]
        fn any_text_makes_one_well_framed_message_with_only_our_headers(
            subject in "\\PC{0,300}|[\\x00-\\x7f]{0,300}",
            text in "\\PC{0,2000}|[\\x00-\\x7f]{0,2000}",
            html in "\\PC{0,500}",
            eight_bit in proptest::bool::ANY,
        ) {
            let b = block(&email(&subject, &text, &html), eight_bit);
            proptest::prop_assert!(b.ends_with("\r\n.\r\n"));
            proptest::prop_assert_eq!(b.matches("\r\n.\r\n").count(), 1);
            let unframed = b.replace("\r\n", "");
            proptest::prop_assert!(!unframed.contains(['\r', '\n']), "a bare CR or LF");
            proptest::prop_assert!(b.split("\r\n").all(|l| l.len() <= 998), "a line over 998 octets");
            let m = message(&b);
            let (headers, _) = m.split_once("\r\n\r\n").expect("a header block");
            let ours = [
                "From:", "To:", "Subject:", "Message-ID:", "Date:", "Auto-Submitted:",
                "MIME-Version:", "Content-Type:",
            ];
            for line in headers.split("\r\n") {
                proptest::prop_assert!(
                    line.starts_with([' ', '\t']) || ours.iter().any(|h| line.starts_with(h)),
                    "a header that is not ours: {line:?}"
                );
            }
            let delimiters = m
                .split("\r\n")
                .filter(|l| l.starts_with("--=_tidings_"))
                .count();
            proptest::prop_assert_eq!(delimiters, 3);
        }
    }
}
