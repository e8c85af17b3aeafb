//! A real OTLP/HTTP trace receiver for the tests: accepts `POST /v1/traces` (protobuf), decodes
//! it with the `opentelemetry-proto` types and keeps every span. Over plain HTTP, or over TLS
//! with a certificate from a CA made for the test (`Receiver::start_tls`).

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::extract::State;
use axum::routing::post;
use axum::Router;
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::common::v1::KeyValue;
use prost::Message;

/// One received span, flattened.
#[derive(Debug, Clone)]
pub struct ReceivedSpan {
    pub service: String,
    /// The resource's attributes (service.name, service.instance.id, ...).
    pub resource: Vec<(String, String)>,
    pub name: String,
    pub trace_id: String,
    pub span_id: String,
    pub parent_span_id: String,
    pub kind: i32,
    pub attributes: Vec<(String, String)>,
    pub links: Vec<(String, String)>,
}

impl ReceivedSpan {
    pub fn attr(&self, key: &str) -> Option<&str> {
        self.attributes
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

pub struct Receiver {
    pub addr: SocketAddr,
    spans: Arc<Mutex<Vec<ReceivedSpan>>>,
    pub requests: Arc<Mutex<usize>>,
    /// TLS only: the CA's certificate (PEM) and the handshakes that failed.
    tls: Option<Tls>,
}

struct Tls {
    ca_pem: String,
    failed_handshakes: tokio::sync::watch::Receiver<usize>,
}

fn value(kv: &KeyValue) -> String {
    match kv.value.as_ref().and_then(|v| v.value.as_ref()) {
        Some(Value::StringValue(s)) => s.clone(),
        Some(Value::IntValue(i)) => i.to_string(),
        Some(Value::DoubleValue(d)) => d.to_string(),
        Some(Value::BoolValue(b)) => b.to_string(),
        other => format!("{other:?}"),
    }
}

/// What the receiver has seen.
type Received = (Arc<Mutex<Vec<ReceivedSpan>>>, Arc<Mutex<usize>>);

async fn traces(State((spans, requests)): State<Received>, body: Bytes) -> Vec<u8> {
    *requests.lock().expect("lock") += 1;
    let request = ExportTraceServiceRequest::decode(body).expect("OTLP protobuf");
    let mut out = spans.lock().expect("lock");
    for resource_spans in request.resource_spans {
        let resource: Vec<(String, String)> = resource_spans
            .resource
            .iter()
            .flat_map(|r| r.attributes.iter())
            .map(|kv| (kv.key.clone(), value(kv)))
            .collect();
        let service = resource
            .iter()
            .find(|(k, _)| k == "service.name")
            .map(|(_, v)| v.clone())
            .unwrap_or_default();
        for scope in resource_spans.scope_spans {
            for span in scope.spans {
                out.push(ReceivedSpan {
                    service: service.clone(),
                    resource: resource.clone(),
                    name: span.name,
                    trace_id: hex(&span.trace_id),
                    span_id: hex(&span.span_id),
                    parent_span_id: hex(&span.parent_span_id),
                    kind: span.kind,
                    attributes: span
                        .attributes
                        .iter()
                        .map(|kv| (kv.key.clone(), value(kv)))
                        .collect(),
                    links: span
                        .links
                        .iter()
                        .map(|l| (hex(&l.trace_id), hex(&l.span_id)))
                        .collect(),
                });
            }
        }
    }
    ExportTraceServiceResponse::default().encode_to_vec()
}

/// The receiver's routes and what they record.
fn app() -> (Router, Received) {
    let spans = Arc::new(Mutex::new(Vec::new()));
    let requests = Arc::new(Mutex::new(0));
    let app = Router::new()
        .route("/v1/traces", post(traces))
        .fallback(|| async { "" })
        .with_state((spans.clone(), requests.clone()));
    (app, (spans, requests))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

impl Receiver {
    pub async fn start() -> Receiver {
        Self::start_on("127.0.0.1:0").await.expect("bind")
    }

    pub async fn start_on(addr: &str) -> std::io::Result<Receiver> {
        let (app, (spans, requests)) = app();
        let listener = tokio::net::TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        tokio::spawn(async move {
            axum::serve(listener, app).await.ok();
        });
        Ok(Receiver {
            addr,
            spans,
            requests,
            tls: None,
        })
    }

    /// A receiver on `https://localhost:<port>`, its certificate signed by a CA made here
    /// (`ca_pem`), counting the TLS handshakes that fail.
    pub async fn start_tls() -> Receiver {
        let ca_key = rcgen::KeyPair::generate().expect("CA key");
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("CA params");
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "sse-relay test CA");
        let ca_cert = ca_params.self_signed(&ca_key).expect("CA certificate");
        let issuer = rcgen::Issuer::new(ca_params, ca_key);
        let key = rcgen::KeyPair::generate().expect("key");
        let cert = rcgen::CertificateParams::new(vec!["localhost".to_owned()])
            .expect("params")
            .signed_by(&key, &issuer)
            .expect("certificate");
        let config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("TLS versions")
        .with_no_client_auth()
        .with_single_cert(
            vec![cert.der().clone()],
            rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
        )
        .expect("server TLS config");
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));

        let (app, (spans, requests)) = app();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("address");
        let (failed_tx, failed_handshakes) = tokio::sync::watch::channel(0);
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let (acceptor, app, failed_tx) = (acceptor.clone(), app.clone(), failed_tx.clone());
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        failed_tx.send_modify(|n| *n += 1);
                        return;
                    };
                    let service = hyper_util::service::TowerToHyperService::new(app);
                    hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(tls), service)
                        .await
                        .ok();
                });
            }
        });
        Receiver {
            addr,
            spans,
            requests,
            tls: Some(Tls {
                ca_pem: ca_cert.pem(),
                failed_handshakes,
            }),
        }
    }

    pub fn endpoint(&self) -> String {
        match self.tls {
            Some(_) => format!("https://localhost:{}", self.addr.port()),
            None => format!("http://{}", self.addr),
        }
    }

    /// The CA that signed a TLS receiver's certificate, as PEM.
    pub fn ca_pem(&self) -> &str {
        &self.tls.as_ref().expect("a TLS receiver").ca_pem
    }

    /// Waits (bounded) until at least `n` TLS handshakes have failed.
    pub async fn wait_for_failed_handshakes(&self, n: usize) {
        let mut failed = self
            .tls
            .as_ref()
            .expect("a TLS receiver")
            .failed_handshakes
            .clone();
        tokio::time::timeout(crate::support::WAIT, failed.wait_for(|&count| count >= n))
            .await
            .unwrap_or_else(|_| panic!("fewer than {n} failed TLS handshakes"))
            .expect("receiver running");
    }

    pub fn spans(&self) -> Vec<ReceivedSpan> {
        self.spans.lock().expect("lock").clone()
    }

    /// Waits (bounded) until a span satisfying `pred` has arrived.
    pub async fn wait_for(&self, what: &str, pred: impl Fn(&ReceivedSpan) -> bool) -> ReceivedSpan {
        let deadline = tokio::time::Instant::now() + crate::support::WAIT;
        loop {
            if let Some(span) = self.spans().into_iter().find(|s| pred(s)) {
                return span;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "no {what} span; received: {:#?}",
                self.spans()
                    .iter()
                    .map(|s| (&s.service, &s.name))
                    .collect::<Vec<_>>()
            );
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    }
}
