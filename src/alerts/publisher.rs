//! The MQTT publisher: bounded queues in front of a `rumqttc` client whose event loop a
//! background service polls continuously, reconnecting with backoff. Warnings (QoS 1) are
//! rare: each wakes the publisher, is written to `notifications` as `pending`, and becomes
//! `delivered` when the broker acknowledges it; while the broker is away warnings wait in
//! the queue and the client's channel and go out on its return. Credit-success notices
//! (QoS 0) come with every charge: they are collected without waking anyone and published
//! in bursts every [`CREDIT_BATCH_INTERVAL`] (a wake-up per request cost the gateway ~10 %
//! of its throughput on two cores); with the in-process broker a burst goes through its
//! in-memory link (see `broker`), not the socket.

use super::broker::Local;
use super::{AlertSink, CreditSuccess, Warning};
use crate::metrics::{ALERTS_DROPPED, ALERTS_PUBLISHED};
use crate::store::{Doc, Documents, Kind};
use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS, Transport};
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::mpsc;

/// Requests the MQTT client buffers between our queue and the wire.
const CLIENT_CHANNEL: usize = 4096;

/// How often collected credit-success notices are published.
pub const CREDIT_BATCH_INTERVAL: Duration = Duration::from_millis(20);
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
const LONGEST_BACKOFF: Duration = Duration::from_secs(5);

/// A broker to publish to, from `mqtt[s]://[user[:password]@]host[:port]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MqttTarget {
    pub host: String,
    pub port: u16,
    pub username: Option<String>,
    pub password: Option<String>,
    pub tls: bool,
}

impl MqttTarget {
    pub fn parse(url: &str) -> Result<MqttTarget, String> {
        let (tls, rest) = if let Some(rest) = url.strip_prefix("mqtts://") {
            (true, rest)
        } else if let Some(rest) = url.strip_prefix("mqtt://") {
            (false, rest)
        } else {
            return Err("must start with mqtt:// or mqtts://".into());
        };
        let rest = rest.trim_end_matches('/');
        let (credentials, address) = match rest.rsplit_once('@') {
            Some((credentials, address)) => (Some(credentials), address),
            None => (None, rest),
        };
        let (username, password) = match credentials {
            Some(c) => match c.split_once(':') {
                Some((u, p)) => (Some(u.to_owned()), Some(p.to_owned())),
                None => (Some(c.to_owned()), None),
            },
            None => (None, None),
        };
        let default_port = if tls { 8883 } else { 1883 };
        let (host, port) = match address.rsplit_once(':') {
            Some((host, port)) => (
                host,
                port.parse().map_err(|_| format!("bad port `{port}`"))?,
            ),
            None => (address, default_port),
        };
        if host.is_empty() || address.contains('/') {
            return Err("needs a host: mqtt://host:port".into());
        }
        Ok(MqttTarget {
            host: host.to_owned(),
            port,
            username,
            password,
            tls,
        })
    }
}

enum Outgoing {
    Warning(Warning),
}

/// Credit-success notices waiting for the next burst, at most `capacity`.
struct CreditQueue {
    notices: Mutex<Vec<CreditSuccess>>,
    capacity: usize,
}

impl CreditQueue {
    fn push(&self, notice: CreditSuccess) -> bool {
        let mut notices = self.notices.lock().unwrap_or_else(|p| p.into_inner());
        if notices.len() >= self.capacity {
            return false;
        }
        notices.push(notice);
        true
    }

    fn take(&self) -> Vec<CreditSuccess> {
        std::mem::take(&mut *self.notices.lock().unwrap_or_else(|p| p.into_inner()))
    }
}

/// The gateway's handle: queues alerts without waiting.
pub struct Alerts {
    warnings: mpsc::Sender<Outgoing>,
    credits: Arc<CreditQueue>,
    /// Publish one credit-success notice in this many (0: none).
    credit_every: u64,
    credits_seen: AtomicU64,
}

impl Alerts {
    /// `credit_sample` is the fraction of charges that get a credit-success notice;
    /// `local` is the in-process broker's link, when `target` is that broker.
    pub fn new(
        queue_capacity: usize,
        credit_sample: f64,
        target: MqttTarget,
        local: Option<Local>,
        store: Arc<dyn Documents>,
    ) -> (Alerts, AlertPublisher) {
        let (warnings, warnings_rx) = mpsc::channel(queue_capacity.max(1));
        let credits = Arc::new(CreditQueue {
            notices: Mutex::new(Vec::new()),
            capacity: queue_capacity.max(1),
        });
        let credit_every = if credit_sample <= 0.0 {
            0
        } else {
            (1.0 / credit_sample.min(1.0)).round() as u64
        };
        let publisher = AlertPublisher {
            queues: Mutex::new(Some((warnings_rx, local))),
            credits: Arc::clone(&credits),
            target,
            store,
        };
        let alerts = Alerts {
            warnings,
            credits,
            credit_every,
            credits_seen: AtomicU64::new(0),
        };
        (alerts, publisher)
    }
}

impl AlertSink for Alerts {
    fn warning(&self, warning: Warning) {
        if self.warnings.try_send(Outgoing::Warning(warning)).is_err() {
            ALERTS_DROPPED.with_label_values(&["warning"]).inc();
        }
    }

    fn wants_credit_success(&self) -> bool {
        self.credit_every != 0
            && self.credits_seen.fetch_add(1, Ordering::Relaxed) % self.credit_every == 0
    }

    fn credit_success(&self, notice: CreditSuccess) {
        if !self.credits.push(notice) {
            ALERTS_DROPPED.with_label_values(&["credit-success"]).inc();
        }
    }
}

/// QoS 1 publishes on their way: notification documents waiting for their packet id (in
/// publish order), then for the broker's PUBACK.
#[derive(Default)]
struct Deliveries {
    unsent: VecDeque<Doc>,
    in_flight: HashMap<u16, Doc>,
}

pub struct AlertPublisher {
    /// Taken by the service when it starts: the warnings' queue and the local link.
    queues: Mutex<Option<(mpsc::Receiver<Outgoing>, Option<Local>)>>,
    credits: Arc<CreditQueue>,
    target: MqttTarget,
    store: Arc<dyn Documents>,
}

fn notification(warning: &Warning, topic: &str) -> Doc {
    let mut doc = match serde_json::to_value(warning) {
        Ok(serde_json::Value::Object(doc)) => doc,
        _ => Doc::new(),
    };
    doc.insert("id".into(), uuid::Uuid::now_v7().to_string().into());
    doc.insert("topic".into(), topic.into());
    doc.insert("delivery".into(), "pending".into());
    doc.insert("delivered_at".into(), serde_json::Value::Null);
    doc
}

impl AlertPublisher {
    fn options(&self) -> MqttOptions {
        let client_id = format!("tollgate-{}", uuid::Uuid::now_v7().simple());
        let mut options = MqttOptions::new(client_id, &self.target.host, self.target.port);
        options.set_keep_alive(Duration::from_secs(15));
        if let Some(user) = &self.target.username {
            options.set_credentials(user, self.target.password.as_deref().unwrap_or(""));
        }
        if self.target.tls {
            // The ring provider, as the rest of the process uses (one per process).
            let _ = rustls::crypto::ring::default_provider().install_default();
            options.set_transport(Transport::tls_with_default_config());
        }
        options
    }

    /// Takes warnings off their queue as they come, and credit-success notices in bursts,
    /// and hands them to the client.
    async fn feed(
        client: AsyncClient,
        mut warnings: mpsc::Receiver<Outgoing>,
        mut local: Option<Local>,
        credits: Arc<CreditQueue>,
        deliveries: Arc<Mutex<Deliveries>>,
        store: Arc<dyn Documents>,
    ) {
        let mut burst = tokio::time::interval(CREDIT_BATCH_INTERVAL);
        burst.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let next = tokio::select! {
                biased;
                w = warnings.recv() => match w {
                    Some(w) => w,
                    None => return,
                },
                _ = burst.tick() => {
                    let notices = credits.take().into_iter().map(|notice| {
                        let topic = format!("tenant/{}/credit-success", notice.tenant_id);
                        (topic, serde_json::to_vec(&notice).unwrap_or_default())
                    });
                    let published = ALERTS_PUBLISHED.with_label_values(&["credit-success"]);
                    match local.as_mut() {
                        Some(local) => published.inc_by(local.publish_all(notices.collect()) as u64),
                        None => {
                            for (topic, payload) in notices {
                                match client.try_publish(topic, QoS::AtMostOnce, false, payload) {
                                    Ok(()) => published.inc(),
                                    Err(_) => ALERTS_DROPPED.with_label_values(&["credit-success"]).inc(),
                                }
                            }
                        }
                    }
                    continue;
                }
            };
            match next {
                Outgoing::Warning(warning) => {
                    let topic = format!("tenant/{}/warning", warning.tenant_id);
                    let doc = notification(&warning, &topic);
                    if let Err(e) = store.insert_doc(Kind::Notifications, &doc).await {
                        tracing::warn!(error = %e, "notification not stored");
                    }
                    let payload = serde_json::to_vec(&warning).unwrap_or_default();
                    deliveries
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .unsent
                        .push_back(doc);
                    if client
                        .publish(topic, QoS::AtLeastOnce, false, payload)
                        .await
                        .is_err()
                    {
                        return;
                    }
                    ALERTS_PUBLISHED.with_label_values(&["warning"]).inc();
                }
            }
        }
    }

    fn on_event(&self, event: Event, deliveries: &Mutex<Deliveries>) {
        let mut d = deliveries.lock().unwrap_or_else(|p| p.into_inner());
        match event {
            // A resend after a reconnect reuses its packet id: only a new id takes the
            // next document.
            Event::Outgoing(rumqttc::Outgoing::Publish(pkid))
                if pkid != 0 && !d.in_flight.contains_key(&pkid) =>
            {
                if let Some(doc) = d.unsent.pop_front() {
                    d.in_flight.insert(pkid, doc);
                }
            }
            Event::Incoming(Packet::PubAck(ack)) => {
                if let Some(mut doc) = d.in_flight.remove(&ack.pkid) {
                    doc.insert("delivery".into(), "delivered".into());
                    doc.insert("delivered_at".into(), super::rfc3339_now().into());
                    let store = Arc::clone(&self.store);
                    tokio::spawn(async move {
                        if let Err(e) = store.replace_doc(Kind::Notifications, &doc).await {
                            tracing::warn!(error = %e, "notification delivery not recorded");
                        }
                    });
                }
            }
            Event::Incoming(Packet::ConnAck(_)) => {
                tracing::info!(host = %self.target.host, port = self.target.port, "connected to the MQTT broker");
            }
            _ => {}
        }
    }
}

#[async_trait]
impl BackgroundService for AlertPublisher {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let Some((warnings, local)) = self.queues.lock().unwrap_or_else(|p| p.into_inner()).take()
        else {
            return;
        };
        let (client, mut eventloop) = AsyncClient::new(self.options(), CLIENT_CHANNEL);
        let deliveries = Arc::new(Mutex::new(Deliveries::default()));
        let feeder = tokio::spawn(AlertPublisher::feed(
            client.clone(),
            warnings,
            local,
            Arc::clone(&self.credits),
            Arc::clone(&deliveries),
            Arc::clone(&self.store),
        ));
        let mut backoff = FIRST_BACKOFF;
        let mut down_since: Option<std::time::Instant> = None;
        loop {
            let polled = tokio::select! {
                _ = shutdown.changed() => break,
                polled = eventloop.poll() => polled,
            };
            match polled {
                Ok(event) => {
                    if down_since.take().is_some() {
                        backoff = FIRST_BACKOFF;
                    }
                    self.on_event(event, &deliveries);
                }
                Err(e) => {
                    if down_since.is_none() {
                        tracing::warn!(error = %e, host = %self.target.host, port = self.target.port, "MQTT broker unreachable; alerts wait in the queue");
                        down_since = Some(std::time::Instant::now());
                    }
                    tokio::select! {
                        _ = shutdown.changed() => break,
                        _ = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(LONGEST_BACKOFF);
                }
            }
        }
        feeder.abort();
        let _ = client.try_disconnect();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_broker_urls() {
        let t = MqttTarget::parse("mqtt://127.0.0.1:1884").unwrap();
        assert_eq!((t.host.as_str(), t.port, t.tls), ("127.0.0.1", 1884, false));
        let t = MqttTarget::parse("mqtts://alice:s3cr:et@emqx.example.com").unwrap();
        assert_eq!(
            (t.host.as_str(), t.port, t.tls),
            ("emqx.example.com", 8883, true)
        );
        assert_eq!(
            (t.username.as_deref(), t.password.as_deref()),
            (Some("alice"), Some("s3cr:et"))
        );
        let t = MqttTarget::parse("mqtt://broker/").unwrap();
        assert_eq!((t.host.as_str(), t.port), ("broker", 1883));
        for bad in [
            "http://x",
            "mqtt://",
            "mqtt://h:port",
            "mqtt://h:1/x",
            "broker:1883",
        ] {
            assert!(MqttTarget::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn levels_serialize_as_the_spec_says() {
        use super::super::Level;
        let w = Warning {
            tenant_id: "t".into(),
            level: Level::Exhausted,
            balance: 0,
            threshold: 100,
            timestamp: "2026-01-01T00:00:00.000Z".into(),
        };
        let json = serde_json::to_value(&w).unwrap();
        assert_eq!(json["level"], "exhausted");
        let mut fields: Vec<_> = json.as_object().unwrap().keys().cloned().collect();
        fields.sort();
        assert_eq!(
            fields,
            ["balance", "level", "tenant_id", "threshold", "timestamp"]
        );
    }
}
