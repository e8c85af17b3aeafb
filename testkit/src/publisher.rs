//! Publishing as a pipeline worker does: through the relay's own publishing code.

use std::time::Duration;

use bytes::Bytes;
use sse_relay::jetstream::EventStore;
use sse_relay::subject::{Subject, SubjectKey};
use tokio::time::{timeout, Instant};

use crate::{STREAM, WAIT};

pub struct Publisher {
    store: EventStore,
}

impl Publisher {
    /// Connects to `nats_url` (comma-separated URLs).
    pub async fn connect(nats_url: &str) -> Publisher {
        let urls: Vec<String> = nats_url.split(',').map(str::to_owned).collect();
        let client = timeout(WAIT, async_nats::connect(urls.as_slice()))
            .await
            .expect("connect in time")
            .expect("connect");
        Publisher {
            store: EventStore::new(client, STREAM),
        }
    }

    /// Publishes `payload` to `deploy.<id>` with event type `stage`; returns the sequence.
    pub async fn deploy(&self, id: &str, payload: &str) -> u64 {
        self.publish(&deployment(id), payload, None).await
    }

    pub async fn publish(&self, subject: &Subject, payload: &str, msg_id: Option<&str>) -> u64 {
        self.store
            .publish(
                subject,
                Some("stage"),
                msg_id,
                Bytes::from(payload.to_owned()),
            )
            .await
            .expect("publish")
            .sequence
    }

    /// Keeps retrying with the same message id until JetStream acknowledges (NATS may be down).
    pub async fn publish_until_acked(&self, subject: &Subject, payload: &str, msg_id: &str) -> u64 {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            match self
                .store
                .publish(
                    subject,
                    Some("stage"),
                    Some(msg_id),
                    Bytes::from(payload.to_owned()),
                )
                .await
            {
                Ok(ack) => return ack.sequence,
                Err(_) => {
                    assert!(Instant::now() < deadline, "publish never acknowledged");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }
}

/// `deploy.<id>`.
pub fn deployment(id: &str) -> Subject {
    Subject::deployment(SubjectKey::parse(id).expect("valid id"))
}

/// `pavilion.<id>`.
pub fn pavilion(id: &str) -> Subject {
    Subject::pavilion(SubjectKey::parse(id).expect("valid id"))
}
