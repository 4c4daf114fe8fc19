//! Localized, notification-only emails: a text and an HTML part from one set of strings per
//! language (English and Italian; anything else falls back to English). Templates are askama:
//! compiled in, and the HTML one escapes every value, so ticket subjects, excerpts and names
//! written by users render as text, never as markup.

use askama::Template;
use chrono::{DateTime, Utc};
use tidings_domain::{Locale, TicketUpdate};
use tidings_notify::EmailKind;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lang {
    En,
    It,
}

impl Lang {
    /// `it`, `it-IT`, `it-CH` → Italian; everything else English.
    pub fn of(locale: &Locale) -> Self {
        match locale.as_str().split('-').next() {
            Some("it") => Lang::It,
            _ => Lang::En,
        }
    }
    fn tag(self) -> &'static str {
        match self {
            Lang::En => "en",
            Lang::It => "it",
        }
    }
}

/// What one email says, before it is put into templates.
pub struct Content<'a> {
    pub kind: EmailKind,
    pub lang: Lang,
    pub update: &'a TicketUpdate,
    /// Where the reader continues: the ticket page or the guest link.
    pub link: &'a str,
    /// The plaintext code, for `AccessCode` mails only.
    pub code: Option<(&'a str, DateTime<Utc>)>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rendered {
    pub subject: String,
    pub text: String,
    pub html: String,
}

/// Every value the two templates show; each template escapes as its format needs.
struct Fields<'a> {
    lang: &'a str,
    subject: &'a str,
    heading: &'a str,
    intro: &'a str,
    ticket_label: &'a str,
    ticket_number: i64,
    ticket_subject: &'a str,
    excerpt: &'a str,
    code: Option<&'a str>,
    code_note: &'a str,
    link: &'a str,
    cta: &'a str,
    footer: &'a str,
}

#[derive(Template)]
#[template(path = "email.html")]
struct Html<'a> {
    f: &'a Fields<'a>,
}

#[derive(Template)]
#[template(path = "email.txt")]
struct Text<'a> {
    f: &'a Fields<'a>,
}

/// The strings of one email, already localized and filled in.
struct Vars {
    subject: String,
    heading: String,
    intro: String,
    ticket_label: &'static str,
    excerpt: String,
    code_note: String,
    cta: &'static str,
    footer: &'static str,
}

fn vars(c: &Content<'_>) -> Vars {
    use EmailKind::*;
    let n = c.update.ticket_number.get();
    let who = if c.update.actor_name.is_empty() {
        match c.lang {
            Lang::En => "The support team".to_owned(),
            Lang::It => "Il team di assistenza".to_owned(),
        }
    } else {
        c.update.actor_name.clone()
    };
    let excerpt = match &c.update.change {
        tidings_domain::Change::ReplyAdded { excerpt, .. }
        | tidings_domain::Change::InfoRequested { excerpt }
        | tidings_domain::Change::Opened { excerpt } => excerpt.clone(),
        tidings_domain::Change::Resolved { note_excerpt } => note_excerpt.clone(),
        _ => String::new(),
    };
    let (subject, heading, intro) = match (c.lang, c.kind) {
        (Lang::En, TicketReceived) => (
            format!("We received your support request {n}"),
            "We received your request".to_owned(),
            "Thanks for contacting us. Your ticket is open and the support team will answer it there.".to_owned(),
        ),
        (Lang::It, TicketReceived) => (
            format!("Abbiamo ricevuto la tua richiesta di assistenza {n}"),
            "Abbiamo ricevuto la tua richiesta".to_owned(),
            "Grazie per averci contattato. Il tuo ticket è aperto e il team di assistenza ti risponderà lì.".to_owned(),
        ),
        (Lang::En, AgentReplied) => (
            format!("Your support ticket {n} has been updated"),
            "There is a new reply to your ticket".to_owned(),
            format!("{who} replied to your support ticket."),
        ),
        (Lang::It, AgentReplied) => (
            format!("Il tuo ticket di assistenza {n} è stato aggiornato"),
            "C'è una nuova risposta al tuo ticket".to_owned(),
            format!("{who} ha risposto al tuo ticket di assistenza."),
        ),
        (Lang::En, InfoRequested) => (
            format!("We need more information for your support ticket {n}"),
            "We need a few more details".to_owned(),
            format!("{who} asked for more information to complete your request. Please answer in the ticket."),
        ),
        (Lang::It, InfoRequested) => (
            format!("Ci servono altre informazioni per il tuo ticket di assistenza {n}"),
            "Ci servono alcuni dettagli in più".to_owned(),
            format!("{who} ha chiesto altre informazioni per completare la tua richiesta. Rispondi nel ticket."),
        ),
        (Lang::En, Resolved) => (
            format!("Your support ticket {n} has been resolved"),
            "Your ticket has been resolved".to_owned(),
            "The support team marked your ticket as resolved. If something is still not right, reply in the same ticket and it reopens.".to_owned(),
        ),
        (Lang::It, Resolved) => (
            format!("Il tuo ticket di assistenza {n} è stato risolto"),
            "Il tuo ticket è stato risolto".to_owned(),
            "Il team di assistenza ha segnato il tuo ticket come risolto. Se qualcosa non va ancora, rispondi nello stesso ticket e verrà riaperto.".to_owned(),
        ),
        (Lang::En, AccessCode) => (
            format!("Your verification code for support ticket {n}"),
            "Your verification code".to_owned(),
            "Enter this code on the ticket page to read and answer your ticket.".to_owned(),
        ),
        (Lang::It, AccessCode) => (
            format!("Il tuo codice di verifica per il ticket di assistenza {n}"),
            "Il tuo codice di verifica".to_owned(),
            "Inserisci questo codice nella pagina del ticket per leggerlo e rispondere.".to_owned(),
        ),
        (Lang::En, FreshLink) => (
            format!("A new link to your support ticket {n}"),
            "Here is a new link to your ticket".to_owned(),
            "You asked for a new link because the previous one had expired. If you did not ask for it, you can ignore this email.".to_owned(),
        ),
        (Lang::It, FreshLink) => (
            format!("Un nuovo link al tuo ticket di assistenza {n}"),
            "Ecco un nuovo link al tuo ticket".to_owned(),
            "Hai chiesto un nuovo link perché il precedente era scaduto. Se non l'hai chiesto, puoi ignorare questa email.".to_owned(),
        ),
    };
    let code_note = match (c.lang, c.code) {
        (_, None) => String::new(),
        (Lang::En, Some((_, exp))) => format!(
            "It expires at {} UTC. If you did not ask for it, you can ignore this email.",
            exp.format("%H:%M")
        ),
        (Lang::It, Some((_, exp))) => format!(
            "Scade alle {} UTC. Se non l'hai richiesto, puoi ignorare questa email.",
            exp.format("%H:%M")
        ),
    };
    let (ticket_label, cta, footer) = match c.lang {
        Lang::En => (
            "Ticket",
            if matches!(c.kind, AccessCode | FreshLink) {
                "Open the ticket"
            } else {
                "Read the full answer and reply"
            },
            "This is an automatic notification: replies to this email are not read. Open the ticket to read the full conversation and to answer.",
        ),
        Lang::It => (
            "Ticket",
            if matches!(c.kind, AccessCode | FreshLink) {
                "Apri il ticket"
            } else {
                "Leggi la risposta completa e rispondi"
            },
            "Questa è una notifica automatica: le risposte a questa email non vengono lette. Apri il ticket per leggere tutta la conversazione e rispondere.",
        ),
    };
    Vars {
        subject,
        heading,
        intro,
        ticket_label,
        excerpt,
        code_note,
        cta,
        footer,
    }
}

pub fn render(c: &Content<'_>) -> Result<Rendered, askama::Error> {
    let v = vars(c);
    let code = c.code.map(|(code, _)| code);
    let f = Fields {
        lang: c.lang.tag(),
        subject: &v.subject,
        heading: &v.heading,
        intro: &v.intro,
        ticket_label: v.ticket_label,
        ticket_number: c.update.ticket_number.get(),
        ticket_subject: &c.update.subject,
        excerpt: &v.excerpt,
        code,
        code_note: &v.code_note,
        link: c.link,
        cta: v.cta,
        footer: v.footer,
    };
    let html = Html { f: &f }.render()?;
    let text = Text { f: &f }.render()?;
    Ok(Rendered {
        subject: v.subject,
        text,
        html,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use tidings_domain::{ActorKind, Change, Email, Requester, TicketId, TicketNumber};

    fn update(subject: &str, excerpt: &str) -> TicketUpdate {
        TicketUpdate {
            event_id: uuid::Uuid::now_v7(),
            ticket_id: TicketId::new(),
            ticket_number: TicketNumber::parse(12345).unwrap(),
            sequence: 2,
            occurred_at: Utc::now(),
            requester: Requester::Guest {
                email: Email::parse("g@example.com").unwrap(),
                locale: Locale::parse("it").unwrap(),
            },
            actor: ActorKind::Agent,
            actor_name: "Giulia <b>".into(),
            subject: subject.into(),
            change: Change::ReplyAdded {
                author: ActorKind::Agent,
                excerpt: excerpt.into(),
            },
        }
    }

    fn content<'a>(u: &'a TicketUpdate, lang: Lang, kind: EmailKind) -> Content<'a> {
        Content {
            kind,
            lang,
            update: u,
            link: "https://help.example.com/t/1?link=a&b",
            code: None,
        }
    }

    #[test]
    fn italian_and_english_subjects_name_the_ticket_number() {
        let u = update("Prelievo bloccato", "Ciao");
        let it = render(&content(&u, Lang::It, EmailKind::AgentReplied)).unwrap();
        assert_eq!(
            it.subject,
            "Il tuo ticket di assistenza 12345 è stato aggiornato"
        );
        assert!(it.text.contains("non vengono lette"), "{}", it.text);
        let en = render(&content(&u, Lang::En, EmailKind::Resolved)).unwrap();
        assert_eq!(en.subject, "Your support ticket 12345 has been resolved");
        assert!(en.text.contains("replies to this email are not read"));
    }

    #[test]
    fn user_text_is_escaped_in_html() {
        let u = update("<script>alert(1)</script>", "<img src=x onerror=alert(1)>");
        let r = render(&content(&u, Lang::En, EmailKind::AgentReplied)).unwrap();
        assert!(!r.html.contains("<script>"), "{}", r.html);
        assert!(!r.html.contains("<img"), "{}", r.html);
        assert!(r.html.contains("&#60;script&#62;alert(1)"), "{}", r.html);
        assert!(r.html.contains("Giulia &#60;b&#62;"), "{}", r.html);
        // The link survives as an attribute with its & escaped.
        assert!(
            r.html
                .contains("href=\"https://help.example.com/t/1?link=a&#38;b\""),
            "{}",
            r.html
        );
        // The text part is plain text: no escaping needed, nothing interpreted.
        assert!(r.text.contains("<script>alert(1)</script>"));
    }

    #[test]
    fn unknown_locales_fall_back_to_english() {
        assert_eq!(Lang::of(&Locale::parse("de").unwrap()), Lang::En);
        assert_eq!(Lang::of(&Locale::parse("it-CH").unwrap()), Lang::It);
    }

    #[test]
    fn the_code_email_shows_the_code_and_its_expiry() {
        let u = update("Login", "");
        let exp = DateTime::parse_from_rfc3339("2026-11-25T10:40:00Z")
            .unwrap()
            .with_timezone(&Utc);
        let r = render(&Content {
            code: Some(("042137", exp)),
            ..content(&u, Lang::En, EmailKind::AccessCode)
        })
        .unwrap();
        assert!(r.text.contains("042137") && r.html.contains("042137"));
        assert!(r.text.contains("expires at 10:40 UTC"), "{}", r.text);
    }
}
