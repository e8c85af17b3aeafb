//! Batched direct gets: a page of one subject's stored events, read without a consumer.

use std::time::Duration;

use sse_relay::jetstream::{DirectPage, EventStore};

use crate::support::*;

fn seqs(page: &DirectPage) -> Vec<u64> {
    page.events.iter().map(|e| e.seq).collect()
}

async fn store(nats: &Nats, stream: &str) -> EventStore {
    let client = tokio::time::timeout(WAIT, async_nats::connect(nats.url()))
        .await
        .expect("connect in time")
        .expect("connect");
    EventStore::new(client, stream)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pages_one_subject_in_order_without_a_consumer() {
    let nats = Nats::start().await;
    let _relay = Relay::start(&nats.url(), &[]).await;
    let js = nats.jetstream().await;
    let consumers_before = nats.consumer_count(&js).await;
    let publisher = Publisher::connect(&nats.url()).await;

    // d-1's events interleaved with another deployment's and a pavilion's.
    let mut wanted = Vec::new();
    let mut noise = Vec::new();
    for i in 0..10 {
        let body = format!(r#"{{"i":{i}}}"#);
        wanted.push((publisher.deploy("d-1", &body).await, body));
        noise.push(publisher.deploy("d-2", r#"{"noise":true}"#).await);
        publisher
            .publish(&pavilion("p"), r#"{"pavilion":true}"#, None)
            .await;
    }
    let pavilion_last = publisher
        .publish(&pavilion("p"), r#"{"pavilion":"last"}"#, None)
        .await;
    let wanted_seqs: Vec<u64> = wanted.iter().map(|(seq, _)| *seq).collect();
    let last = *wanted_seqs.last().expect("published");
    let store = store(&nats, STREAM).await;

    // From the middle (a sequence of another subject): the rest of d-1, nothing else.
    let start = wanted_seqs[3] - 1;
    let page = store
        .direct_batch("deploy.d-1", start, 100)
        .await
        .expect("direct batch");
    assert_eq!(seqs(&page), wanted_seqs[3..]);
    assert_eq!(page.pending, 0);
    for (event, (seq, body)) in page.events.iter().zip(&wanted[3..]) {
        assert_eq!(event.seq, *seq);
        assert_eq!(event.subject.as_str(), "deploy.d-1");
        assert_eq!(event.payload, body.as_bytes());
        assert_eq!(event.event_type(), "stage");
        let age = time::OffsetDateTime::now_utc() - event.published;
        assert!(
            age >= time::Duration::ZERO - time::Duration::seconds(5)
                && age < time::Duration::minutes(1),
            "stored just now: {}",
            event.published
        );
        // Only the message's own headers: the direct get's are removed.
        let headers = event.headers.as_ref().expect("headers");
        assert!(headers.get("Nats-Sequence").is_none());
        assert!(headers.get("Nats-Num-Pending").is_none());
    }
    // A start on a d-1 sequence includes it.
    let page = store
        .direct_batch("deploy.d-1", wanted_seqs[3], 100)
        .await
        .expect("direct batch");
    assert_eq!(seqs(&page), wanted_seqs[3..]);

    // Smaller batches: `pending` counts the rest, and the next call continues exactly.
    let mut paged = Vec::new();
    let mut pendings = Vec::new();
    let mut from = 0;
    loop {
        let page = store
            .direct_batch("deploy.d-1", from, 4)
            .await
            .expect("direct batch");
        assert!(page.events.len() <= 4);
        pendings.push(page.pending);
        let Some(tail) = page.events.last() else {
            break;
        };
        from = tail.seq + 1;
        paged.extend(seqs(&page));
        if page.pending == 0 {
            break;
        }
        assert!(pendings.len() < 10, "paging must end");
    }
    assert_eq!(paged, wanted_seqs);
    assert_eq!(pendings, vec![6, 2, 0]);

    // Past the end, and a subject with no messages: empty pages.
    let page = store
        .direct_batch("deploy.d-1", last + 1, 10)
        .await
        .expect("direct batch past the end");
    assert!(page.events.is_empty());
    assert_eq!(page.pending, 0);
    let page = store
        .direct_batch("deploy.nothing-here", 1, 10)
        .await
        .expect("direct batch of an empty subject");
    assert!(page.events.is_empty());
    assert_eq!(page.pending, 0);

    // The last sequence of a subject.
    assert_eq!(
        store.direct_last_seq("deploy.d-1").await.expect("last"),
        last
    );
    assert_eq!(
        store.direct_last_seq("deploy.d-2").await.expect("last"),
        *noise.last().expect("noise")
    );
    assert_eq!(
        store.direct_last_seq("pavilion.p").await.expect("last"),
        pavilion_last
    );
    assert_eq!(
        store
            .direct_last_seq("deploy.nothing-here")
            .await
            .expect("last of an empty subject"),
        0
    );

    // A wildcard: both deployments, ascending, no pavilion.
    let page = store
        .direct_batch("deploy.*", 0, 1000)
        .await
        .expect("wildcard batch");
    let mut all_deploys: Vec<u64> = wanted_seqs.iter().chain(&noise).copied().collect();
    all_deploys.sort_unstable();
    assert_eq!(seqs(&page), all_deploys);
    assert!(page.events.iter().all(|e| e.subject.starts_with("deploy.")));
    let page = store
        .direct_batch("deploy.*", wanted_seqs[5], 3)
        .await
        .expect("wildcard batch");
    let rest: Vec<u64> = all_deploys
        .iter()
        .copied()
        .filter(|s| *s >= wanted_seqs[5])
        .collect();
    assert_eq!(seqs(&page), rest[..3]);
    assert_eq!(page.pending, (rest.len() - 3) as u64);

    // A batch of 0 asks for one.
    let page = store
        .direct_batch("deploy.d-1", 0, 0)
        .await
        .expect("direct batch");
    assert_eq!(seqs(&page), wanted_seqs[..1]);
    assert_eq!(page.pending, 9);

    assert_eq!(
        nats.consumer_count(&js).await,
        consumers_before,
        "direct gets create no consumer"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_stream_is_an_error_not_a_hang() {
    let nats = Nats::start().await;
    let store = store(&nats, "NO_SUCH_STREAM").await;
    let started = tokio::time::Instant::now();
    assert!(store.direct_batch("deploy.d-1", 1, 10).await.is_err());
    assert!(store.direct_last_seq("deploy.d-1").await.is_err());
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "no responders answer at once, before the API timeout"
    );
}
