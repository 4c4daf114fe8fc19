//! The portal's two languages. A page is in the customer's language: the guest's ticket
//! locale (or, signed in, the account's), else the browser's `Accept-Language`, else English.
//! Every string a page shows is here, so a page cannot be half translated.

use axum::http::HeaderMap;
use axum::http::header::ACCEPT_LANGUAGE;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lang {
    En,
    It,
}

impl Lang {
    /// `it`, `it-IT`, `it-CH` → Italian; `en…` → English; anything else: none.
    pub fn of_locale(locale: &str) -> Option<Self> {
        match locale
            .trim()
            .split(['-', '_'])
            .next()?
            .to_ascii_lowercase()
            .as_str()
        {
            "it" => Some(Lang::It),
            "en" => Some(Lang::En),
            _ => None,
        }
    }

    /// The first language of `Accept-Language` we speak, by quality (RFC 9110 §12.5.4).
    pub fn of_headers(headers: &HeaderMap) -> Option<Self> {
        let raw = headers.get(ACCEPT_LANGUAGE)?.to_str().ok()?;
        let mut ranges: Vec<(f32, Lang)> = raw
            .split(',')
            .filter_map(|range| {
                let mut parts = range.split(';');
                let lang = Lang::of_locale(parts.next()?)?;
                let q = parts
                    .find_map(|p| p.trim().strip_prefix("q="))
                    .map_or(Some(1.0), |q| q.trim().parse().ok())?;
                (q > 0.0).then_some((q, lang))
            })
            .collect();
        // Stable: equal qualities keep the header's order.
        ranges.sort_by(|a, b| b.0.total_cmp(&a.0));
        ranges.first().map(|(_, lang)| *lang)
    }

    /// The page language: the customer's locale if we speak it, then the browser's, then
    /// English.
    pub fn choose(locale: Option<&str>, headers: &HeaderMap) -> Self {
        locale
            .and_then(Lang::of_locale)
            .or_else(|| Lang::of_headers(headers))
            .unwrap_or(Lang::En)
    }

    pub fn texts(self) -> &'static Texts {
        match self {
            Lang::En => &EN,
            Lang::It => &IT,
        }
    }
}

/// Every string of every page in one language.
pub struct Texts {
    pub lang: &'static str,
    pub skip_to_content: &'static str,
    pub home_title: &'static str,
    pub home_intro: &'static str,
    pub submit_request: &'static str,
    pub ticket: &'static str,
    pub verify_title: &'static str,
    pub verify_intro: &'static str,
    pub send_code: &'static str,
    pub send_new_code: &'static str,
    pub code_label: &'static str,
    pub code_hint: &'static str,
    pub verify: &'static str,
    pub status_open: &'static str,
    pub status_awaiting: &'static str,
    pub status_resolved: &'static str,
    pub info_requested_banner: &'static str,
    pub conversation: &'static str,
    pub you: &'static str,
    pub support: &'static str,
    pub system: &'static str,
    pub reply_label: &'static str,
    pub reply_reopens: &'static str,
    pub send: &'static str,
    pub sign_out: &'static str,
    pub signed_out_title: &'static str,
    pub signed_out_body: &'static str,
    pub no_link_title: &'static str,
    pub no_link_body: &'static str,
    pub dead_link_title: &'static str,
    pub link_expired_body: &'static str,
    pub link_invalid_body: &'static str,
    pub email_fresh_link: &'static str,
    pub fresh_link_sent_title: &'static str,
    pub fresh_link_sent_body: &'static str,
    pub new_ticket_title: &'static str,
    pub subject_label: &'static str,
    pub description_label: &'static str,
    pub email_label: &'static str,
    pub language_label: &'static str,
    pub honeypot_label: &'static str,
    pub check_email_title: &'static str,
    pub check_email_body: &'static str,
    pub error_title: &'static str,
    pub form_expired: &'static str,
    pub unavailable: &'static str,
    pub not_found: &'static str,
    pub code_not_six_digits: &'static str,
    pub code_expired: &'static str,
    pub code_attempts_exhausted: &'static str,
    pub reply_empty: &'static str,
    pub subject_empty: &'static str,
    pub email_invalid: &'static str,
    pub too_long: &'static str,
    pub back_home: &'static str,
    pub fix_below: &'static str,
    pub sign_in: &'static str,
    pub my_tickets: &'static str,
    pub new_ticket: &'static str,
    pub no_tickets: &'static str,
    pub older_tickets: &'static str,
    pub newest_tickets: &'static str,
    pub last_activity: &'static str,
    pub sign_in_unavailable: &'static str,
    pub sign_in_failed: &'static str,
    pub reply_invalid: &'static str,
    pub reply_conflict: &'static str,
    pub reply_later: &'static str,
    pub session_ended_guest: &'static str,
    pub session_ended_customer: &'static str,
    pub sign_in_again: &'static str,
    pub your_unsent_reply: &'static str,
}

impl Texts {
    pub fn code_sent(&self, masked: &str, minutes: i64) -> String {
        match self.lang {
            "it" => format!(
                "Abbiamo inviato un codice di 6 cifre a {masked}; scade tra {minutes} minuti."
            ),
            _ => format!("We sent a 6-digit code to {masked}; it expires in {minutes} minutes."),
        }
    }

    pub fn code_rejected(&self, attempts_left: &str) -> String {
        match self.lang {
            "it" => format!("Il codice non è corretto. Tentativi rimasti: {attempts_left}."),
            _ => format!("That code is not correct. Attempts left: {attempts_left}."),
        }
    }

    pub fn wait_seconds(&self, secs: u64) -> String {
        match self.lang {
            "it" => format!("Hai già richiesto un codice. Attendi {secs} s e riprova."),
            _ => format!("A code was sent moments ago. Wait {secs} s, then try again."),
        }
    }

    pub fn locked(&self, secs: u64) -> String {
        let hours = secs.div_ceil(3600);
        match self.lang {
            "it" => format!(
                "Troppi tentativi su questo ticket oggi. Riprova domani (tra circa {hours} ore)."
            ),
            _ => format!(
                "Too many attempts on this ticket today. Try again tomorrow (in about {hours} hours)."
            ),
        }
    }

    pub fn slow_down(&self, secs: u64) -> String {
        let minutes = secs.div_ceil(60);
        match self.lang {
            "it" => format!("Troppe richieste dalla tua rete. Riprova tra {minutes} minuti."),
            _ => format!("Too many requests from your network. Try again in {minutes} minutes."),
        }
    }

    pub fn ticket_number(&self, number: i64) -> String {
        format!("{} #{number}", self.ticket)
    }

    pub fn support_agent(&self, name: &str) -> String {
        if name.is_empty() {
            self.support.to_owned()
        } else {
            format!("{} · {name}", self.support)
        }
    }
}

pub static EN: Texts = Texts {
    lang: "en",
    skip_to_content: "Skip to content",
    home_title: "How can we help?",
    home_intro: "Tell us what happened and we will answer by email. Every email links back to your ticket here.",
    submit_request: "Submit a request",
    ticket: "Ticket",
    verify_title: "Verify your email",
    verify_intro: "To open this ticket, confirm that you can read the email sent to",
    send_code: "Send code",
    send_new_code: "Send a new code",
    code_label: "6-digit code",
    code_hint: "Check your inbox for the code we just sent.",
    verify: "Verify",
    status_open: "Open",
    status_awaiting: "Awaiting your reply",
    status_resolved: "Resolved",
    info_requested_banner: "Our support team asked you for more information. Please reply below.",
    conversation: "Conversation",
    you: "You",
    support: "Support",
    system: "Tidings",
    reply_label: "Your reply",
    reply_reopens: "This ticket is resolved. Sending a reply will reopen it.",
    send: "Send",
    sign_out: "Sign out",
    signed_out_title: "You are signed out",
    signed_out_body: "To see your ticket again, open the link in your latest notification email.",
    no_link_title: "Open the link from your email",
    no_link_body: "To see this ticket, open the link in your latest notification email about it.",
    dead_link_title: "This link can no longer be used",
    link_expired_body: "This link has expired. We can email a fresh link to the address the ticket was filed with.",
    link_invalid_body: "This link is not valid. If it came from one of our emails, we can send a fresh one to the address the ticket was filed with.",
    email_fresh_link: "Email me a fresh link",
    fresh_link_sent_title: "Check your email",
    fresh_link_sent_body: "If the link was ours, a fresh one is on its way to the address the ticket was filed with.",
    new_ticket_title: "Submit a request",
    subject_label: "Subject",
    description_label: "Description",
    email_label: "Your email address",
    language_label: "Language for our replies",
    honeypot_label: "Leave this field empty",
    check_email_title: "Check your email",
    check_email_body: "We received your request. The confirmation we just emailed you has a link to follow your ticket.",
    error_title: "Something went wrong",
    form_expired: "This form has expired. Reload the page and try again.",
    unavailable: "The service is unavailable right now. Try again in a minute.",
    not_found: "There is nothing here.",
    code_not_six_digits: "Enter the 6 digits from the email.",
    code_expired: "That code has expired or was never sent. Request a new code.",
    code_attempts_exhausted: "Too many wrong codes. Request a new code.",
    reply_empty: "Write a reply before sending.",
    subject_empty: "Enter a subject.",
    email_invalid: "Enter a valid email address, like name@example.com.",
    too_long: "This is too long.",
    back_home: "Back to the start",
    fix_below: "Please correct the field marked below.",
    sign_in: "Sign in",
    my_tickets: "My tickets",
    new_ticket: "New ticket",
    no_tickets: "You have no tickets yet.",
    older_tickets: "Older tickets",
    newest_tickets: "Newest tickets",
    last_activity: "Last activity",
    sign_in_unavailable: "Signing in is not possible right now. Try again in a minute, or follow the link in your latest email.",
    sign_in_failed: "Signing in did not complete. Please try again.",
    reply_invalid: "This reply cannot be sent as it is: remove control characters and try again.",
    reply_conflict: "The ticket changed while you were writing, or this form was already sent. Check the conversation and send your reply again.",
    reply_later: "Too many replies in a short time. Wait a minute and send it again.",
    session_ended_guest: "Your access to this ticket has ended. Open the link in your latest notification email to verify your address again.",
    session_ended_customer: "You are no longer signed in. Sign in again and send your reply once more.",
    sign_in_again: "Sign in again",
    your_unsent_reply: "Your reply, not sent (copy it to send it later)",
};

pub static IT: Texts = Texts {
    lang: "it",
    skip_to_content: "Vai al contenuto",
    home_title: "Come possiamo aiutarti?",
    home_intro: "Raccontaci cosa è successo: ti risponderemo via email. Ogni email rimanda al tuo ticket qui.",
    submit_request: "Invia una richiesta",
    ticket: "Ticket",
    verify_title: "Verifica la tua email",
    verify_intro: "Per aprire questo ticket, conferma di poter leggere l'email inviata a",
    send_code: "Invia codice",
    send_new_code: "Invia un nuovo codice",
    code_label: "Codice di 6 cifre",
    code_hint: "Controlla la posta: ti abbiamo appena inviato il codice.",
    verify: "Verifica",
    status_open: "Aperto",
    status_awaiting: "In attesa di una tua risposta",
    status_resolved: "Risolto",
    info_requested_banner: "Il nostro team di assistenza ti ha chiesto altre informazioni. Rispondi qui sotto.",
    conversation: "Conversazione",
    you: "Tu",
    support: "Assistenza",
    system: "Tidings",
    reply_label: "La tua risposta",
    reply_reopens: "Questo ticket è risolto. Se rispondi verrà riaperto.",
    send: "Invia",
    sign_out: "Esci",
    signed_out_title: "Sei uscito",
    signed_out_body: "Per rivedere il tuo ticket, apri il link nell'ultima email di notifica.",
    no_link_title: "Apri il link dalla tua email",
    no_link_body: "Per vedere questo ticket, apri il link nell'ultima email di notifica che lo riguarda.",
    dead_link_title: "Questo link non è più utilizzabile",
    link_expired_body: "Questo link è scaduto. Possiamo inviare un nuovo link all'indirizzo con cui è stato aperto il ticket.",
    link_invalid_body: "Questo link non è valido. Se viene da una delle nostre email, possiamo inviarne uno nuovo all'indirizzo con cui è stato aperto il ticket.",
    email_fresh_link: "Inviami un nuovo link",
    fresh_link_sent_title: "Controlla la tua email",
    fresh_link_sent_body: "Se il link era nostro, un nuovo link sta arrivando all'indirizzo con cui è stato aperto il ticket.",
    new_ticket_title: "Invia una richiesta",
    subject_label: "Oggetto",
    description_label: "Descrizione",
    email_label: "Il tuo indirizzo email",
    language_label: "Lingua delle nostre risposte",
    honeypot_label: "Lascia vuoto questo campo",
    check_email_title: "Controlla la tua email",
    check_email_body: "Abbiamo ricevuto la tua richiesta. L'email di conferma che ti abbiamo appena inviato contiene un link per seguire il ticket.",
    error_title: "Qualcosa è andato storto",
    form_expired: "Questo modulo è scaduto. Ricarica la pagina e riprova.",
    unavailable: "Il servizio non è disponibile in questo momento. Riprova tra un minuto.",
    not_found: "Qui non c'è niente.",
    code_not_six_digits: "Inserisci le 6 cifre ricevute via email.",
    code_expired: "Il codice è scaduto o non è mai stato inviato. Richiedi un nuovo codice.",
    code_attempts_exhausted: "Troppi codici errati. Richiedi un nuovo codice.",
    reply_empty: "Scrivi una risposta prima di inviare.",
    subject_empty: "Inserisci un oggetto.",
    email_invalid: "Inserisci un indirizzo email valido, come nome@example.com.",
    too_long: "Il testo è troppo lungo.",
    back_home: "Torna all'inizio",
    fix_below: "Correggi il campo indicato qui sotto.",
    sign_in: "Accedi",
    my_tickets: "I miei ticket",
    new_ticket: "Nuovo ticket",
    no_tickets: "Non hai ancora nessun ticket.",
    older_tickets: "Ticket meno recenti",
    newest_tickets: "Ticket più recenti",
    last_activity: "Ultima attività",
    sign_in_unavailable: "In questo momento non è possibile accedere. Riprova tra un minuto, oppure apri il link nell'ultima email.",
    sign_in_failed: "L'accesso non è stato completato. Riprova.",
    reply_invalid: "Questa risposta non può essere inviata così: rimuovi i caratteri di controllo e riprova.",
    reply_conflict: "Il ticket è cambiato mentre scrivevi, oppure questo modulo era già stato inviato. Controlla la conversazione e invia di nuovo la risposta.",
    reply_later: "Troppe risposte in poco tempo. Attendi un minuto e inviala di nuovo.",
    session_ended_guest: "Il tuo accesso a questo ticket è terminato. Apri il link nell'ultima email di notifica per verificare di nuovo il tuo indirizzo.",
    session_ended_customer: "Non sei più connesso. Accedi di nuovo e invia ancora la tua risposta.",
    sign_in_again: "Accedi di nuovo",
    your_unsent_reply: "La tua risposta, non inviata (copiala per inviarla più tardi)",
};

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn accept(raw: &'static str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(ACCEPT_LANGUAGE, HeaderValue::from_static(raw));
        h
    }

    #[test]
    fn the_ticket_locale_wins_over_the_browser() {
        // Given an Italian guest ticket and an English browser, then the page is Italian.
        assert_eq!(Lang::choose(Some("it-IT"), &accept("en-GB,en")), Lang::It);
        // Given a locale we do not speak, then the browser decides.
        assert_eq!(Lang::choose(Some("de"), &accept("it;q=0.9")), Lang::It);
    }

    #[test]
    fn accept_language_is_read_by_quality() {
        // Given ranges with qualities, then the best one we speak is chosen.
        assert_eq!(
            Lang::of_headers(&accept("fr, it;q=0.5, en;q=0.8")),
            Some(Lang::En)
        );
        assert_eq!(Lang::of_headers(&accept("de, it-CH;q=0.3")), Some(Lang::It));
        assert_eq!(
            Lang::of_headers(&accept("en;q=0, it;q=0.1")),
            Some(Lang::It)
        );
        assert_eq!(Lang::of_headers(&accept("de, fr")), None);
        // Given nothing usable, then English.
        assert_eq!(Lang::choose(None, &HeaderMap::new()), Lang::En);
    }
}
