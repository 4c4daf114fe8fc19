//! `tidings-preload`: writes N ticket events onto a topic, as the ticket service would publish
//! them, for the dispatcher benchmarks: agent replies on a mix of signed-in customers' (en/it)
//! and guests' tickets, one record per event, keyed by ticket.

use std::time::Duration;

use chrono::Utc;
use clap::Parser;
use prost::Message as _;
use rdkafka::ClientConfig;
use rdkafka::producer::{FutureProducer, FutureRecord};
use tidings_domain::{
    AccountId, Actor, Body, DisplayName, Email, Locale, Requester, Subject, Ticket, TicketEvent,
    TicketId, TicketNumber, TicketStatus,
};

#[derive(Parser)]
struct Args {
    #[arg(long, env = "KAFKA_BROKERS")]
    brokers: String,
    #[arg(long)]
    topic: String,
    #[arg(long, default_value_t = 50_000)]
    count: usize,
    /// Distinct tickets the events are spread over.
    #[arg(long, default_value_t = 5_000)]
    tickets: usize,
    /// Every n-th ticket belongs to a guest (email with a guest link); 0 for none.
    #[arg(long, default_value_t = 4)]
    guest_every: usize,
    #[arg(long, default_value_t = 6)]
    partitions: i32,
    /// Email domain of the recipients.
    #[arg(long, default_value = "example.com")]
    domain: String,
}

const BODY: &str = "Thanks for your patience. We checked the withdrawal you mentioned and it is waiting for a \
network confirmation on our side. It should complete within the next hour; if it does not, reply here with \
the transaction id and a screenshot of the history page and we will escalate it to the payments team.";

fn ticket(i: usize, args: &Args) -> Ticket {
    let now = Utc::now();
    let email = Email::parse(&format!("load-{i}@{}", args.domain)).expect("valid address");
    let locale =
        Locale::parse(if i.is_multiple_of(2) { "it" } else { "en" }).expect("valid locale");
    let requester = if args.guest_every > 0 && i.is_multiple_of(args.guest_every) {
        Requester::Guest { email, locale }
    } else {
        Requester::Customer {
            account_id: AccountId::parse(&format!("load-{i}")).expect("valid id"),
            email,
            locale,
            display_name: DisplayName::parse("Load Customer").ok(),
        }
    };
    Ticket {
        id: TicketId::new(),
        number: TicketNumber::parse(100_000 + i as i64).expect("valid number"),
        requester,
        subject: Subject::parse("Withdrawal pending").expect("valid subject"),
        status: TicketStatus::Open,
        created_at: now,
        last_activity_at: now,
        messages: vec![],
        version: 1,
        pending_code: None,
        last_code_requested_at: None,
        last_link_requested_at: None,
        guest_day: Default::default(),
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &args.brokers)
        .set("linger.ms", "20")
        .set("enable.idempotence", "true")
        .create()?;
    let admin: rdkafka::admin::AdminClient<_> = ClientConfig::new()
        .set("bootstrap.servers", &args.brokers)
        .create()?;
    let topic = rdkafka::admin::NewTopic::new(
        &args.topic,
        args.partitions,
        rdkafka::admin::TopicReplication::Fixed(1),
    );
    admin
        .create_topics([&topic], &rdkafka::admin::AdminOptions::new())
        .await?;
    let tickets: Vec<Ticket> = (0..args.tickets.max(1)).map(|i| ticket(i, &args)).collect();
    let agent = Actor::Agent {
        account_id: AccountId::parse("giulia")?,
        display_name: DisplayName::parse("Giulia").ok(),
    };
    let body = Body::parse(BODY)?;
    let now = Utc::now();
    let mut done = 0;
    while done < args.count {
        let batch: Vec<(String, Vec<u8>)> = (done..(done + 2_000).min(args.count))
            .map(|i| {
                let t = &tickets[i % tickets.len()];
                let sequence = 2 + (i / tickets.len()) as u64;
                let event = TicketEvent::ReplyAdded { body: body.clone() };
                let wire = tidings_proto::event_to_wire(
                    uuid::Uuid::now_v7(),
                    t,
                    sequence,
                    now,
                    &agent,
                    &event,
                );
                (t.id.to_string(), wire.encode_to_vec())
            })
            .collect();
        let sends = batch.iter().map(|(key, value)| {
            producer.send(
                FutureRecord::to(&args.topic).key(key).payload(value),
                Duration::from_secs(30),
            )
        });
        for r in futures::future::join_all(sends).await {
            r.map_err(|(e, _)| e)?;
        }
        done += batch.len();
    }
    println!("preloaded={} topic={}", args.count, args.topic);
    Ok(())
}
