//! Signed-in customers in the portal: OpenID Connect sign-in through the provider double
//! (authorization code + PKCE), "My tickets", the ticket page their emails link to, replies
//! and new tickets — with the ticket service accepting the provider's RS256 access tokens,
//! as a deployment wires them.

use tidings_proto::ticket::v1::*;
use tidings_tests::mail::unique;
use tidings_tests::portal::*;
use tidings_tests::*;

#[tokio::test]
async fn a_customer_signs_in_opens_a_ticket_reads_the_answer_and_replies() {
    let s = sign_in_stack().await;
    let v = Visitor::new(&s.portal);
    let email = format!("{}@example.org", unique("ann"));
    let sub = unique("ann");
    let home = v.get("/").await;
    home.assert_contains(r#"href="/sign-in""#);

    // My tickets asks for a sign-in, and the provider's form brings the customer back.
    let mine = v
        .sign_in_from("/tickets", &customer_identity(&sub, &email, "en"))
        .await;
    assert_eq!(mine.status, 200, "{}", mine.body);
    mine.assert_contains("My tickets");
    mine.assert_contains("You have no tickets yet.");
    mine.assert_contains("Sign out");

    // A new ticket, then its page.
    let form = v.get("/tickets/new").await;
    assert!(
        !form.body.contains(r#"name="email""#),
        "a customer's address is their account's"
    );
    let opened = v
        .post(
            "/tickets/new",
            &[
                ("csrf", &form.hidden("csrf")),
                ("request_id", &form.hidden("request_id")),
                ("subject", "Card declined"),
                ("body", "My card was declined\ntwice today."),
            ],
        )
        .await;
    assert_eq!(opened.status, 303, "{}", opened.body);
    let ticket_path = opened.location().unwrap().to_owned();
    assert!(ticket_path.starts_with("/tickets/"), "{ticket_path}");
    let id = ticket_path.rsplit('/').next().unwrap().to_owned();
    let page = v.follow(&opened).await;
    page.assert_contains("Card declined");
    page.assert_contains("My card was declined\ntwice today.");
    page.assert_contains(">You<");

    // The ticket service sees the provider's identity: the ticket is the customer's.
    let agent = s.agent_token("giulia", "Giulia");
    let got = s
        .app
        .tickets()
        .await
        .get_ticket(authed(
            &agent,
            GetTicketRequest {
                ticket_id: id.clone(),
            },
        ))
        .await
        .expect("an agent reads it with the provider's token")
        .into_inner()
        .ticket
        .unwrap();
    assert_eq!(got.requester_account_id, sub);
    assert_eq!(got.requester_email, email);

    // Support answers; the customer's email links to this page.
    reply_as(&s.app, &agent, &id, "Which card, please?").await;
    let mail = mail_starting(&email, "Your support ticket", 1).await;
    assert!(
        mail.text()
            .contains(&format!("{}{ticket_path}", s.portal.base)),
        "{}",
        mail.text()
    );
    let page = v.get(&ticket_path).await;
    page.assert_contains("Support · Giulia");
    page.assert_contains("Which card, please?");

    // A reply, shown after the redirect.
    let posted = v
        .post(
            &format!("{ticket_path}/reply"),
            &[
                ("csrf", &page.hidden("csrf")),
                ("request_id", &page.hidden("request_id")),
                ("body", "The Visa ending 4242."),
            ],
        )
        .await;
    assert_eq!(posted.status, 303);
    assert_eq!(
        posted.location(),
        Some(format!("{ticket_path}#latest").as_str())
    );
    v.get(&ticket_path)
        .await
        .assert_contains("The Visa ending 4242.");

    // Resolved: the badge on My tickets, and the reply box says a reply reopens it.
    s.app
        .tickets()
        .await
        .resolve_ticket(authed(
            &agent,
            ResolveTicketRequest {
                request_id: rid(),
                ticket_id: id.clone(),
                note: "Fixed.".into(),
            },
        ))
        .await
        .unwrap();
    v.get("/tickets").await.assert_contains("Resolved");
    v.get(&ticket_path)
        .await
        .assert_contains("Sending a reply will reopen it.");

    // Signed out: the pages ask for a sign-in again.
    let out = v.post("/sign-out", &[("csrf", &page.hidden("csrf"))]).await;
    assert_eq!(out.status, 303);
    // A reply posted from a page left open: 401, a way to sign in, and the text kept.
    let late = v
        .post(
            &format!("{ticket_path}/reply"),
            &[("csrf", &page.hidden("csrf")), ("body", "one more thing")],
        )
        .await;
    assert_eq!(late.status, 401);
    late.assert_contains("Sign in again");
    late.assert_contains(&format!(r#"href="/sign-in?return_to={ticket_path}""#));
    late.assert_contains(">one more thing</textarea>");
    let again = v.get(&ticket_path).await;
    assert_eq!(again.status, 303);
    assert!(
        again
            .location()
            .unwrap()
            .starts_with("/sign-in?return_to=/tickets/")
    );
}

#[tokio::test]
async fn an_emailed_link_leads_through_the_sign_in_back_to_that_ticket_and_not_to_anothers() {
    let s = sign_in_stack().await;
    let ann = customer_identity(
        &unique("ann"),
        &format!("{}@example.org", unique("ann")),
        "it",
    );
    let bob = customer_identity(
        &unique("bob"),
        &format!("{}@example.org", unique("bob")),
        "en",
    );
    let token = |who: &tidings_oidc_double::Identity| s.oidc.access_token(who);
    let anns = open_as(&s.app, &token(&ann), "Ticket di Ann")
        .await
        .ticket_id;
    let bobs = open_as(&s.app, &token(&bob), "Bob's ticket")
        .await
        .ticket_id;

    // Ann follows the link to her ticket while signed out: sign-in, then that very page,
    // in her language (Italian, from her token), whatever the browser prefers.
    let v = Visitor::with_language(&s.portal, "en");
    let page = v.sign_in_from(&format!("/tickets/{anns}"), &ann).await;
    assert_eq!(page.status, 200, "{}", page.body);
    page.assert_contains("Ticket di Ann");
    page.assert_contains(r#"<html lang="it">"#);
    page.assert_contains("Aperto");

    // Bob's ticket is not found for her, exactly like an unknown one.
    let foreign = v.get(&format!("/tickets/{bobs}")).await;
    assert_eq!(foreign.status, 404);
    assert!(!foreign.body.contains("Bob's ticket"));
    let unknown = v.get(&format!("/tickets/{}", uuid::Uuid::new_v4())).await;
    assert_eq!(unknown.status, 404);
    assert_eq!(foreign.body, unknown.body);
    // Nor can she reply to it.
    let csrf = v.csrf().await;
    let posted = v
        .post(
            &format!("/tickets/{bobs}/reply"),
            &[("csrf", &csrf), ("body", "not mine")],
        )
        .await;
    assert_eq!(posted.status, 404);
    let replies = s
        .app
        .count("SELECT count(*) FROM events WHERE event_type = 'ReplyAdded'")
        .await;
    assert_eq!(replies, 0);
}

#[tokio::test]
async fn my_tickets_shows_newest_activity_first_twenty_a_page() {
    let s = sign_in_stack().await;
    let who = customer_identity(
        &unique("many"),
        &format!("{}@example.org", unique("many")),
        "en",
    );
    let token = s.oidc.access_token(&who);
    let mut ids = vec![];
    for i in 0..23 {
        ids.push(
            open_as(&s.app, &token, &format!("Ticket number {i:02}"))
                .await
                .ticket_id,
        );
        s.app.clock.advance(chrono::Duration::seconds(1));
    }
    // The oldest one gets new activity: it moves to the top.
    reply_as(&s.app, &token, &ids[0], "still there?").await;

    let v = Visitor::new(&s.portal);
    let first = v.sign_in_from("/tickets", &who).await;
    let order: Vec<usize> = first
        .body
        .match_indices("Ticket number ")
        .map(|(at, m)| first.body[at + m.len()..at + m.len() + 2].parse().unwrap())
        .collect();
    assert_eq!(order.len(), 20);
    assert_eq!(order[0], 0, "the ticket with the newest activity first");
    assert_eq!(&order[1..4], &[22, 21, 20]);
    let older = first
        .body
        .split(r#"href="/tickets?page="#)
        .nth(1)
        .expect("an older page");
    let next = older.split('"').next().unwrap();
    let second = v.get(&format!("/tickets?page={next}")).await;
    assert_eq!(second.status, 200);
    let rest: Vec<&str> = second.body.matches("Ticket number ").collect();
    assert_eq!(rest.len(), 3);
    second.assert_contains("Newest tickets");
    assert!(!second.body.contains("Older tickets"));
}

#[tokio::test]
async fn a_callback_without_its_sign_in_or_with_another_state_signs_nobody_in() {
    let s = sign_in_stack().await;
    let v = Visitor::new(&s.portal);
    // No sign-in under way in this browser.
    let stray = v.get("/oidc/callback?code=abc&state=xyz").await;
    assert_eq!(stray.status, 400);
    stray.assert_contains("Signing in did not complete");
    // A sign-in under way, answered with another state (a forged or crossed callback).
    let started = v.get("/sign-in").await;
    assert_eq!(started.status, 303);
    let crossed = v.get("/oidc/callback?code=abc&state=not-the-one").await;
    assert_eq!(crossed.status, 400);
    // Nobody is signed in.
    assert_eq!(v.get("/tickets").await.status, 303);
    // A return target elsewhere is never followed: the customer lands on My tickets.
    let w = Visitor::new(&s.portal);
    let who = customer_identity(&unique("r"), &format!("{}@example.org", unique("r")), "en");
    for target in ["https://evil.example/", "//evil.example/x"] {
        let to_provider = w.get(&format!("/sign-in?return_to={target}")).await;
        let back = w.sign_in_at_provider(&to_provider, &who).await;
        assert_eq!(back.status, 303);
        assert_eq!(back.location(), Some("/tickets"), "{target}");
    }
}
