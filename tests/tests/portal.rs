//! The customer portal over HTTP, as a browser sees it (cookies kept, redirects visible),
//! against the real ticket service, email dispatcher, broker, Postgres and MailDev.

use tidings_proto::ticket::v1::*;
use tidings_tests::mail::unique;
use tidings_tests::portal::*;
use tidings_tests::*;

/// Submits "Submit a request" as a guest; returns the link from the confirmation mail.
async fn guest_request(v: &Visitor, email: &str, subject: &str, language: &str) -> String {
    let form = v.get("/requests/new").await;
    assert_eq!(form.status, 200);
    let csrf = form.hidden("csrf");
    let request_id = form.hidden("request_id");
    let sent = v
        .post(
            "/requests/new",
            &[
                ("csrf", &csrf),
                ("request_id", &request_id),
                ("subject", subject),
                (
                    "body",
                    "My withdrawal is stuck.\nTransaction 0xabc, 10:42 UTC.",
                ),
                ("email", email),
                ("language", language),
                ("website", ""),
            ],
        )
        .await;
    assert_eq!(sent.status, 303, "{}", sent.body);
    let check = v.follow(&sent).await;
    check.assert_contains("Check your email");
    let first = mail_starting(email, "", 1).await;
    link_in(&first)
}

/// From the emailed link to a verified session; returns the clean ticket address.
async fn verify(v: &Visitor, link: &str, email: &str) -> String {
    let moved = v.get(link).await;
    assert_eq!(moved.status, 303);
    let clean = moved.location().expect("redirect").to_owned();
    let page = v.get(&clean).await;
    let csrf = page.hidden("csrf");
    let id = clean.rsplit('/').next().unwrap().to_owned();
    let sent = v
        .post(&format!("/guest/tickets/{id}/code"), &[("csrf", &csrf)])
        .await;
    assert_eq!(sent.status, 303, "{}", sent.body);
    let code = code_in(&mail_starting(email, "", 2).await);
    let verified = v
        .post(
            &format!("/guest/tickets/{id}/verify"),
            &[("csrf", &csrf), ("code", &code)],
        )
        .await;
    assert_eq!(verified.status, 303, "{}", verified.body);
    clean
}

#[tokio::test]
async fn a_guest_goes_from_the_emailed_link_to_a_posted_reply() {
    let s = portal_stack().await;
    let v = Visitor::new(&s.portal);
    let email = format!("{}@example.org", unique("giulia"));
    let link = guest_request(&v, &email, "Withdrawal stuck", "en").await;
    assert!(link.starts_with(&s.portal.base), "{link}");
    let token = link
        .split("link=")
        .nth(1)
        .expect("token in the link")
        .to_owned();

    // The link moves its token into a cookie and redirects to a clean address.
    let moved = v.get(&link).await;
    assert_eq!(moved.status, 303);
    let clean = moved.location().unwrap().to_owned();
    assert!(
        !clean.contains("link=") && !clean.contains(&token),
        "{clean}"
    );
    let id = clean.rsplit('/').next().unwrap().to_owned();

    // "Verify your email": ticket number, the masked address, a button; no code sent yet.
    let page = v.get(&clean).await;
    assert_eq!(page.status, 200);
    page.assert_contains("Verify your email");
    let masked = format!("{}•••@example.org", &email[..1]);
    page.assert_contains(&masked);
    assert!(
        !page.body.contains(&email),
        "the full address is never shown"
    );
    assert!(!page.body.contains(&token), "the token is never on a page");
    assert_eq!(page.header("cache-control"), Some("no-store"));
    // Opening the link again (a mail scanner) sends nothing.
    v.get(&link).await;
    v.get(&clean).await;
    assert_eq!(shared_mail_count(&email).await, 1, "a GET sends no code");

    // "Send code" → the code form, the code by email.
    let csrf = page.hidden("csrf");
    let sent = v
        .post(&format!("/guest/tickets/{id}/code"), &[("csrf", &csrf)])
        .await;
    assert_eq!(sent.status, 303);
    assert_eq!(sent.location(), Some(clean.as_str()));
    let form = v.follow(&sent).await;
    form.assert_contains(&format!(
        "We sent a 6-digit code to {masked}; it expires in"
    ));
    form.assert_contains(r#"autocomplete="one-time-code""#);
    form.assert_contains(r#"inputmode="numeric""#);
    let code = code_in(&mail_starting(&email, "Your verification code", 1).await);
    // The code mail's link, opened again, keeps the code form: the code is on its way.
    let reopened = v.follow(&v.get(&link).await).await;
    reopened.assert_contains("We sent a 6-digit code to");
    // Not six digits: the field's message, nothing checked.
    let short = v
        .post(
            &format!("/guest/tickets/{id}/verify"),
            &[("csrf", &csrf), ("code", "12ab")],
        )
        .await;
    assert_eq!(short.status, 422);
    short.assert_contains("Enter the 6 digits from the email.");

    // A wrong code says how many attempts are left.
    let wrong = if code == "000000" { "111111" } else { "000000" };
    let rejected = v
        .post(
            &format!("/guest/tickets/{id}/verify"),
            &[("csrf", &csrf), ("code", wrong)],
        )
        .await;
    assert_eq!(rejected.status, 422);
    rejected.assert_contains("Attempts left: 4");
    rejected.assert_contains(r#"aria-describedby="code-hint code-error""#);

    // The right code opens the ticket page with its history.
    let verified = v
        .post(
            &format!("/guest/tickets/{id}/verify"),
            &[("csrf", &csrf), ("code", &code)],
        )
        .await;
    assert_eq!(verified.status, 303);
    let ticket = v.follow(&verified).await;
    assert_eq!(ticket.status, 200);
    ticket.assert_contains("Withdrawal stuck");
    ticket.assert_contains("My withdrawal is stuck.\nTransaction 0xabc, 10:42 UTC.");
    ticket.assert_contains(">You<");
    ticket.assert_contains("Open");
    assert_eq!(ticket.header("cache-control"), Some("no-store"));

    // Support asks for more: the banner and the agent's name show.
    let agent_token = agent("giulia");
    s.app
        .tickets()
        .await
        .request_info(authed(
            &agent_token,
            RequestInfoRequest {
                request_id: rid(),
                ticket_id: id.clone(),
                body: "Please send the transaction id.".into(),
            },
        ))
        .await
        .expect("agent asks");
    let ticket = v.get(&clean).await;
    ticket.assert_contains("Awaiting your reply");
    ticket.assert_contains("asked you for more information");
    ticket.assert_contains("Support · Giulia (support)");

    // A reply: post → redirect → get shows it.
    let csrf = ticket.hidden("csrf");
    let request_id = ticket.hidden("request_id");
    let posted = v
        .post(
            &format!("/guest/tickets/{id}/reply"),
            &[
                ("csrf", &csrf),
                ("request_id", &request_id),
                ("body", "It is 0xabc.\nThanks!"),
            ],
        )
        .await;
    assert_eq!(posted.status, 303, "{}", posted.body);
    assert_eq!(posted.location(), Some(format!("{clean}#latest").as_str()));
    let after = v.get(&clean).await;
    after.assert_contains("It is 0xabc.\nThanks!");
    // The same form posted twice (a double click) is one reply.
    v.post(
        &format!("/guest/tickets/{id}/reply"),
        &[
            ("csrf", &csrf),
            ("request_id", &request_id),
            ("body", "It is 0xabc.\nThanks!"),
        ],
    )
    .await;
    let got = s
        .app
        .tickets()
        .await
        .get_ticket(authed(
            &agent_token,
            GetTicketRequest {
                ticket_id: id.clone(),
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .ticket
        .unwrap();
    let replies = got
        .messages
        .iter()
        .filter(|m| m.body == "It is 0xabc.\nThanks!")
        .count();
    assert_eq!(replies, 1);
    assert_eq!(
        got.status,
        TicketStatus::Open as i32,
        "the reply answers the request"
    );

    // Sign out: the ticket is out of reach again.
    let signed_out = v.post("/guest/sign-out", &[("csrf", &csrf)]).await;
    assert_eq!(signed_out.status, 200);
    signed_out.assert_contains("You are signed out");
    let gone = v.get(&clean).await;
    assert_eq!(gone.status, 404);
    assert!(!gone.body.contains("Withdrawal stuck"));
}

async fn shared_mail_count(address: &str) -> usize {
    tidings_tests::mail::shared_maildev()
        .to(address)
        .await
        .len()
}

#[tokio::test]
async fn a_guest_of_one_ticket_cannot_see_another() {
    let s = portal_stack().await;
    let v = Visitor::new(&s.portal);
    let mine = format!("{}@example.org", unique("mine"));
    let link = guest_request(&v, &mine, "My own ticket", "en").await;
    let clean = verify(&v, &link, &mine).await;
    v.get(&clean).await.assert_contains("My own ticket");

    let other = Visitor::new(&s.portal);
    let theirs = format!("{}@example.org", unique("theirs"));
    let their_link = guest_request(&other, &theirs, "Somebody else's ticket", "en").await;
    let their_clean = other.get(&their_link).await.location().unwrap().to_owned();

    // With a session for my ticket, their ticket's address shows only "open your link".
    let page = v.get(&their_clean).await;
    assert_eq!(page.status, 404);
    page.assert_contains("Open the link from your email");
    assert!(!page.body.contains("Somebody else"));
    // Posting a reply there with my session writes nothing.
    let csrf = v.csrf().await;
    let their_id = their_clean.rsplit('/').next().unwrap();
    let posted = v
        .post(
            &format!("/guest/tickets/{their_id}/reply"),
            &[("csrf", &csrf), ("body", "not mine")],
        )
        .await;
    assert_eq!(posted.status, 401);
    posted.assert_contains("Your access to this ticket has ended");
    posted.assert_contains("not mine");
    // An unknown ticket id looks exactly like a foreign one.
    let unknown = v
        .get(&format!("/guest/tickets/{}", uuid::Uuid::new_v4()))
        .await;
    assert_eq!(unknown.status, 404);
    assert_eq!(unknown.body, page.body);
    let events = s
        .app
        .count("SELECT count(*) FROM events WHERE event_type = 'ReplyAdded'")
        .await;
    assert_eq!(events, 0);
}

#[tokio::test]
async fn every_value_is_escaped_and_every_response_carries_the_security_headers() {
    let s = portal_stack().await;
    let v = Visitor::new(&s.portal);
    let email = format!("{}@example.org", unique("xss"));
    let subject = "<script>alert(1)</script> & \"quotes\"";
    let link = guest_request(&v, &email, subject, "en").await;
    let clean = verify(&v, &link, &email).await;
    let id = clean.rsplit('/').next().unwrap().to_owned();
    let page = v.get(&clean).await;
    let csrf = page.hidden("csrf");
    for body in [
        "<img src=x onerror=alert(2)>",
        "<a href=\"javascript:alert(3)\">click</a>",
    ] {
        let posted = v
            .post(
                &format!("/guest/tickets/{id}/reply"),
                &[("csrf", &csrf), ("body", body)],
            )
            .await;
        assert_eq!(posted.status, 303);
    }
    let page = v.get(&clean).await;
    assert!(!page.body.contains("<script>alert"), "{}", page.body);
    assert!(!page.body.contains("<img src=x"));
    assert!(!page.body.contains("<a href=\"javascript"));
    page.assert_contains("&#60;script&#62;alert(1)&#60;/script&#62;");
    page.assert_contains("&#60;img src=x onerror=alert(2)&#62;");

    for path in [
        "/",
        "/requests/new",
        clean.as_str(),
        "/nowhere",
        "/static/portal.css",
    ] {
        let p = v.get(path).await;
        let csp = p.header("content-security-policy").expect("CSP");
        assert!(csp.contains("frame-ancestors 'none'"), "{path}: {csp}");
        assert!(csp.contains("script-src 'self'") && !csp.contains("unsafe-inline"));
        assert_eq!(
            p.header("x-content-type-options"),
            Some("nosniff"),
            "{path}"
        );
        assert_eq!(p.header("referrer-policy"), Some("no-referrer"), "{path}");
    }
}

#[tokio::test]
async fn bad_input_gets_the_form_again_with_the_fields_message_and_writes_nothing() {
    let s = portal_stack().await;
    let v = Visitor::new(&s.portal);
    let email = format!("{}@example.org", unique("bad"));
    let link = guest_request(&v, &email, "Valid ticket", "en").await;
    let clean = verify(&v, &link, &email).await;
    let id = clean.rsplit('/').next().unwrap().to_owned();
    let page = v.get(&clean).await;
    let csrf = page.hidden("csrf");
    let replies = || async {
        s.app
            .count("SELECT count(*) FROM events WHERE event_type = 'ReplyAdded'")
            .await
    };

    // An empty reply.
    let empty = v
        .post(
            &format!("/guest/tickets/{id}/reply"),
            &[("csrf", &csrf), ("body", "   \n ")],
        )
        .await;
    assert_eq!(empty.status, 422);
    empty.assert_contains("Write a reply before sending.");
    empty.assert_contains(r#"aria-invalid="true""#);
    // An oversize reply comes back in the box.
    let long = "x".repeat(20_001);
    let oversize = v
        .post(
            &format!("/guest/tickets/{id}/reply"),
            &[("csrf", &csrf), ("body", &long)],
        )
        .await;
    assert_eq!(oversize.status, 413);
    oversize.assert_contains("This is too long.");
    oversize.assert_contains(&long);
    // A missing or wrong CSRF token.
    for token in ["", "forged"] {
        let forged = v
            .post(
                &format!("/guest/tickets/{id}/reply"),
                &[("csrf", token), ("body", "hello")],
            )
            .await;
        assert_eq!(forged.status, 403);
        forged.assert_contains("This form has expired");
        forged.assert_contains(">hello</textarea>");
    }
    assert_eq!(replies().await, 0);

    // The new-ticket form: a bad address and an empty subject, each named.
    let form = v.get("/requests/new").await;
    let bad = v
        .post(
            "/requests/new",
            &[
                ("csrf", &form.hidden("csrf")),
                ("subject", " "),
                ("body", "text"),
                ("email", "not-an-address"),
                ("language", "en"),
            ],
        )
        .await;
    assert_eq!(bad.status, 422);
    bad.assert_contains("Enter a subject.");
    bad.assert_contains("Enter a valid email address");
    bad.assert_contains(r#"value="not-an-address""#);
    // A filled honeypot looks like success and opens nothing.
    let before = s
        .app
        .count("SELECT count(*) FROM events WHERE event_type = 'TicketOpened'")
        .await;
    let bot = v
        .post(
            "/requests/new",
            &[
                ("csrf", &form.hidden("csrf")),
                ("subject", "Buy now"),
                ("body", "spam"),
                ("email", "bot@example.org"),
                ("language", "en"),
                ("website", "http://spam.example"),
            ],
        )
        .await;
    assert_eq!(bot.status, 303);
    let after = s
        .app
        .count("SELECT count(*) FROM events WHERE event_type = 'TicketOpened'")
        .await;
    assert_eq!(after, before);
}

#[tokio::test]
async fn a_dead_link_offers_a_fresh_one_and_answers_the_same_for_a_forged_link() {
    let s = portal_stack().await;
    let v = Visitor::new(&s.portal);
    let email = format!("{}@example.org", unique("expired"));
    let link = guest_request(&v, &email, "Old ticket", "en").await;
    let id = link
        .split("/guest/tickets/")
        .nth(1)
        .unwrap()
        .split('?')
        .next()
        .unwrap()
        .to_owned();
    let ticket = tidings_domain::TicketId::parse(&id).unwrap();
    let expired = keyring().mint_link(
        ticket,
        &tidings_domain::Email::parse(&email).unwrap(),
        chrono::Utc::now() - chrono::Duration::days(31),
    );
    let forged = keyring().mint_link(
        ticket,
        &tidings_domain::Email::parse("someone-else@example.org").unwrap(),
        chrono::Utc::now(),
    );

    // Expired: 410, the offer, and a fresh link by email that works.
    let page = v
        .follow(&v.get(&format!("/guest/tickets/{id}?link={expired}")).await)
        .await;
    assert_eq!(page.status, 410);
    page.assert_contains("This link has expired");
    page.assert_contains("Email me a fresh link");
    let done = v
        .post(
            &format!("/guest/tickets/{id}/fresh-link"),
            &[("csrf", &page.hidden("csrf"))],
        )
        .await;
    assert_eq!(done.status, 200);
    done.assert_contains("a fresh one is on its way");
    let fresh = link_in(&mail_starting(&email, "A new link to your support ticket", 1).await);
    let works = v.follow(&v.get(&fresh).await).await;
    assert_eq!(works.status, 200);
    works.assert_contains("Verify your email");

    // Forged: the same offer, the same answer, and no mail.
    let other = Visitor::new(&s.portal);
    let page = other
        .follow(
            &other
                .get(&format!("/guest/tickets/{id}?link={forged}"))
                .await,
        )
        .await;
    assert_eq!(page.status, 404);
    page.assert_contains("Email me a fresh link");
    let same = other
        .post(
            &format!("/guest/tickets/{id}/fresh-link"),
            &[("csrf", &page.hidden("csrf"))],
        )
        .await;
    assert_eq!(same.status, 200);
    assert_eq!(same.body, done.body);
    let links = s
        .app
        .count("SELECT count(*) FROM events WHERE event_type = 'GuestLinkRequested'")
        .await;
    assert_eq!(links, 1, "only the real link's request is recorded");
}

#[tokio::test]
async fn an_italian_guest_reads_italian_pages_whatever_the_browser_says() {
    let s = portal_stack().await;
    let v = Visitor::with_language(&s.portal, "en-GB,en;q=0.9");
    let email = format!("{}@example.org", unique("rossi"));
    let link = guest_request(&v, &email, "Prelievo bloccato", "it").await;
    let page = v.follow(&v.get(&link).await).await;
    page.assert_contains(r#"<html lang="it">"#);
    page.assert_contains("Verifica la tua email");
    // With no ticket to go by, the browser's language decides.
    let it = Visitor::with_language(&s.portal, "it-IT,it;q=0.9,en;q=0.5");
    it.get("/").await.assert_contains("Come possiamo aiutarti?");
    Visitor::new(&s.portal)
        .get("/")
        .await
        .assert_contains(r#"<html lang="en">"#);
}

#[tokio::test]
async fn twenty_wrong_codes_lock_the_ticket_until_tomorrow_and_say_so() {
    let s = portal_stack().await;
    let v = Visitor::new(&s.portal);
    let email = format!("{}@example.org", unique("locked"));
    // An Italian ticket, an English browser: the lock is said in Italian.
    let link = guest_request(&v, &email, "Locked out", "it").await;
    let clean = v.get(&link).await.location().unwrap().to_owned();
    let id = clean.rsplit('/').next().unwrap().to_owned();
    let csrf = v.csrf().await;
    let mut last = None;
    for round in 1..=4 {
        if round > 1 {
            // One code a minute per ticket.
            s.app.clock.advance(chrono::Duration::seconds(61));
        }
        let sent = v
            .post(&format!("/guest/tickets/{id}/code"), &[("csrf", &csrf)])
            .await;
        assert_eq!(sent.status, 303, "round {round}: {}", sent.body);
        let code = code_in(&mail_starting(&email, "Il tuo codice di verifica", round).await);
        let wrong = if code == "000000" { "111111" } else { "000000" };
        for _ in 0..5 {
            last = Some(
                v.post(
                    &format!("/guest/tickets/{id}/verify"),
                    &[("csrf", &csrf), ("code", wrong)],
                )
                .await,
            );
        }
    }
    let locked = last.unwrap();
    assert_eq!(locked.status, 429, "{}", locked.body);
    locked.assert_contains("Troppi tentativi su questo ticket oggi. Riprova domani");
    assert!(locked.header("retry-after").is_some());
    // A new code is refused the same way, whatever the browser.
    s.app.clock.advance(chrono::Duration::seconds(61));
    let again = v
        .post(&format!("/guest/tickets/{id}/code"), &[("csrf", &csrf)])
        .await;
    assert_eq!(again.status, 429);
    again.assert_contains("Riprova domani");
    let locks = s
        .app
        .count("SELECT count(*) FROM events WHERE event_type = 'GuestAccessLocked'")
        .await;
    assert_eq!(locks, 1, "the lock is on the ticket's event stream");
}

#[tokio::test]
async fn a_client_over_the_portals_code_request_limit_gets_a_page_and_retry_after() {
    let app = spawn_app().await;
    let portal = spawn_portal(
        &app,
        vec![("TIDINGS_PORTAL_CODE_REQUESTS_PER_HOUR", "1".to_owned())],
    )
    .await;
    let v = Visitor::new(&portal);
    let email = format!("{}@example.org", unique("limited"));
    let opened = app
        .tickets()
        .await
        .open_ticket(OpenTicketRequest {
            request_id: rid(),
            subject: "Rate limited".into(),
            body: "text".into(),
            guest: Some(GuestRequester {
                email: email.clone(),
                locale: "en".into(),
            }),
        })
        .await
        .unwrap()
        .into_inner();
    let ticket = tidings_domain::TicketId::parse(&opened.ticket_id).unwrap();
    let link = keyring().mint_link(
        ticket,
        &tidings_domain::Email::parse(&email).unwrap(),
        chrono::Utc::now(),
    );
    let clean = v
        .get(&format!("/guest/tickets/{ticket}?link={link}"))
        .await
        .location()
        .unwrap()
        .to_owned();
    let csrf = v.csrf().await;
    let path = format!("{clean}/code");
    assert_eq!(v.post(&path, &[("csrf", &csrf)]).await.status, 303);
    let limited = v.post(&path, &[("csrf", &csrf)]).await;
    assert_eq!(limited.status, 429);
    limited.assert_contains("Too many requests from your network");
    let wait: u64 = limited.header("retry-after").unwrap().parse().unwrap();
    assert!(wait > 60, "an hour's bucket: {wait}");
    let codes = app
        .count("SELECT count(*) FROM events WHERE event_type = 'AccessCodeRequested'")
        .await;
    assert_eq!(codes, 1, "the limited request reached nothing");
}

#[tokio::test]
async fn a_second_code_within_the_minute_waits_and_an_expired_code_asks_for_a_new_one() {
    let s = portal_stack().await;
    let v = Visitor::new(&s.portal);
    let email = format!("{}@example.org", unique("slow"));
    let link = guest_request(&v, &email, "Slow guest", "en").await;
    let clean = v.get(&link).await.location().unwrap().to_owned();
    let id = clean.rsplit('/').next().unwrap().to_owned();
    let csrf = v.csrf().await;
    let send = format!("/guest/tickets/{id}/code");
    assert_eq!(v.post(&send, &[("csrf", &csrf)]).await.status, 303);
    // "Send a new code" at once: wait, and the code form stays.
    let again = v.post(&send, &[("csrf", &csrf)]).await;
    assert_eq!(again.status, 429);
    again.assert_contains("Wait ");
    again.assert_contains("We sent a 6-digit code to");
    assert!(again.header("retry-after").is_some());
    // Eleven minutes later the code has expired: say so, and offer a new one.
    let code = code_in(&mail_starting(&email, "Your verification code", 1).await);
    s.app.clock.advance(chrono::Duration::minutes(11));
    let late = v
        .post(
            &format!("/guest/tickets/{id}/verify"),
            &[("csrf", &csrf), ("code", &code)],
        )
        .await;
    assert_eq!(late.status, 410);
    late.assert_contains("That code has expired or was never sent. Request a new code.");
    late.assert_contains(">Send code</button>");
    assert!(
        !late.body.contains(r#"name="code""#),
        "no code form for a dead code"
    );
}

#[tokio::test]
async fn a_browser_keeps_the_guest_sessions_of_two_tickets_and_signs_out_of_both() {
    let s = portal_stack().await;
    let v = Visitor::new(&s.portal);
    let first = format!("{}@example.org", unique("first"));
    let second = format!("{}@example.org", unique("second"));
    let link_a = guest_request(&v, &first, "First ticket", "en").await;
    let a = verify(&v, &link_a, &first).await;
    let link_b = guest_request(&v, &second, "Second ticket", "en").await;
    let b = verify(&v, &link_b, &second).await;
    v.get(&a).await.assert_contains("First ticket");
    v.get(&b).await.assert_contains("Second ticket");
    let csrf = v.csrf().await;
    assert_eq!(
        v.post("/guest/sign-out", &[("csrf", &csrf)]).await.status,
        200
    );
    assert_eq!(v.get(&a).await.status, 404);
    assert_eq!(v.get(&b).await.status, 404);
}
