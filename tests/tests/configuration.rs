//! docs/configuration.md cannot drift from the code: each service's table, with the table of
//! variables the ticket service and the dispatchers all read, lists exactly the variables its configuration loader looks
//! up, and the CLI's table exactly the variables the CLI names.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};

use tidings_config::Env;

const DOC: &str = include_str!("../../docs/configuration.md");

/// Read by the log filter when logging starts, not by a configuration loader.
const OUTSIDE_THE_LOADER: &[&str] = &["RUST_LOG"];

/// The variables in the first column of the table under `## {section}`.
fn documented(section: &str) -> BTreeSet<String> {
    let heading = format!("## {section}");
    let body = DOC
        .split("\n## ")
        .find(|s| format!("## {s}").starts_with(&format!("{heading}\n")))
        .unwrap_or_else(|| panic!("docs/configuration.md has a section {heading:?}"));
    body.lines()
        .filter_map(|l| l.strip_prefix("| `"))
        .filter_map(|l| l.split('`').next())
        .map(str::to_owned)
        .collect()
}

/// The variables `load` looks up, over an empty environment and over one that selects the
/// branches an empty one does not take (public-key JWTs).
fn looked_up(load: impl Fn(Env<Box<dyn Fn(&str) -> Option<String>>>)) -> BTreeSet<String> {
    let seen = Arc::new(Mutex::new(BTreeSet::new()));
    for set in [vec![], vec![("TIDINGS_JWT_ALGORITHM", "RS256")]] {
        let seen = seen.clone();
        load(Env::with_lookup(Box::new(move |key: &str| {
            seen.lock().unwrap().insert(key.to_owned());
            set.iter()
                .find(|(k, _)| *k == key)
                .map(|(_, v)| v.to_string())
        })));
    }
    Arc::try_unwrap(seen).unwrap().into_inner().unwrap()
}

fn check(service: &str, read: BTreeSet<String>) {
    check_tables(
        service,
        Some("Shared by the ticket service and the dispatchers"),
        read,
    );
}

fn check_tables(service: &str, shared: Option<&str>, read: BTreeSet<String>) {
    let shared = shared.map(documented).unwrap_or_default();
    let own = documented(service);
    let both: Vec<_> = shared.intersection(&own).collect();
    assert!(
        both.is_empty(),
        "{service}: {both:?} are in the shared table and in the service's"
    );
    let listed: BTreeSet<String> = shared
        .union(&own)
        .filter(|v| !OUTSIDE_THE_LOADER.contains(&v.as_str()))
        .cloned()
        .collect();
    let undocumented: Vec<_> = read.difference(&listed).collect();
    let unread: Vec<_> = listed.difference(&read).collect();
    assert!(
        undocumented.is_empty() && unread.is_empty(),
        "docs/configuration.md, {service}: read but not documented {undocumented:?}; \
         documented but not read {unread:?}"
    );
}

#[test]
fn the_ticket_service_table_lists_what_the_ticket_service_reads() {
    check(
        "Ticket service",
        looked_up(|env| drop(ticket_service::config::Config::load(env))),
    );
}

#[test]
fn the_email_dispatcher_table_lists_what_the_email_dispatcher_reads() {
    check(
        "Email dispatcher",
        looked_up(|env| drop(email_dispatcher::Config::load(env))),
    );
}

#[test]
fn the_push_dispatcher_table_lists_what_the_push_dispatcher_reads() {
    check(
        "Push dispatcher",
        looked_up(|env| drop(push_dispatcher::Config::load(env))),
    );
}

#[test]
fn the_portal_table_lists_what_the_portal_reads() {
    // The portal reads no database or broker: its table stands alone.
    check_tables(
        "Portal",
        None,
        looked_up(|env| drop(portal::Config::load(env))),
    );
}

#[test]
fn a_variable_every_service_reads_is_in_the_shared_table() {
    let reads = [
        looked_up(|env| drop(ticket_service::config::Config::load(env))),
        looked_up(|env| drop(email_dispatcher::Config::load(env))),
        looked_up(|env| drop(push_dispatcher::Config::load(env))),
    ];
    let everywhere: BTreeSet<&String> = reads[0]
        .iter()
        .filter(|v| reads[1].contains(*v) && reads[2].contains(*v))
        .collect();
    let shared = documented("Shared by the ticket service and the dispatchers");
    let elsewhere: Vec<_> = everywhere
        .iter()
        .filter(|v| !shared.contains(**v))
        .collect();
    assert!(
        elsewhere.is_empty(),
        "read by every service but not in the shared table: {elsewhere:?}"
    );
}

#[test]
fn the_cli_table_lists_the_variables_the_cli_names() {
    let source = include_str!("../../crates/cli/src/main.rs");
    let named: BTreeSet<String> = source
        .split('"')
        .skip(1)
        .step_by(2)
        .filter(|s| {
            s.starts_with("TIDINGS_")
                && s.chars()
                    .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_')
        })
        .map(str::to_owned)
        .collect();
    assert_eq!(documented("CLI"), named, "docs/configuration.md, CLI");
}
