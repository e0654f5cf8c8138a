//! The in-process MQTT broker of the embedded default (`rumqttd`, from the project that
//! makes `rumqttc`): `mosquitto_sub -p 11883 -t 'tenant/#' -v` works against the quickstart.
//! It listens on `alerts.embedded_listen` (`TOLLGATE_MQTT_EMBEDDED_LISTEN`, default
//! `127.0.0.1:11883`, so it never fights a system broker on 1883), MQTT 3.1.1, no auth:
//! keep it on loopback.
//!
//! The publisher hands credit-success notices (QoS 0, one per charge) to this broker's
//! router through an in-process link ([`Local`]): no socket write, no MQTT encoding and no
//! broker-side read per notice, and one router wake-up per burst. Warnings (QoS 1, whose
//! delivery is recorded when the broker acknowledges them) still go over loopback MQTT.

use rumqttd::local::{LinkRx, LinkTx};
use rumqttd::protocol::{Packet, Publish};
use rumqttd::{Broker, Config, ConnectionSettings, RouterConfig, ServerSettings};
use std::collections::HashMap;
use std::net::SocketAddr;

fn config(listen: SocketAddr) -> Config {
    let connections = ConnectionSettings {
        connection_timeout_ms: 60_000,
        max_payload_size: 64 * 1024,
        max_inflight_count: 500,
        auth: None,
        external_auth: None,
        dynamic_filters: true,
    };
    let server = ServerSettings {
        name: "tollgate-v4".into(),
        listen,
        tls: None,
        next_connection_delay_ms: 1,
        connections,
    };
    Config {
        id: 0,
        router: RouterConfig {
            max_connections: 10_000,
            max_outgoing_packet_count: 1_000,
            max_segment_size: 16 * 1024 * 1024,
            max_segment_count: 10,
            ..RouterConfig::default()
        },
        v4: Some(HashMap::from([("tollgate".to_owned(), server)])),
        ..Config::default()
    }
}

/// How often a broker whose port is taken tries again.
const RETRY: std::time::Duration = std::time::Duration::from_secs(1);

/// The publisher's in-process link to the broker's router.
pub struct Local {
    tx: LinkTx,
    /// Kept open: the router takes a dropped receiver for a disconnected client. Nothing
    /// arrives on it (the link subscribes to nothing, and QoS 0 is not acknowledged).
    _rx: LinkRx,
}

impl Local {
    /// Hands every `(topic, payload)` to the router and wakes it once; returns how many.
    pub fn publish_all(&mut self, notices: Vec<(String, Vec<u8>)>) -> usize {
        let count = notices.len();
        let mut notices = notices.into_iter();
        let Some((last_topic, last_payload)) = notices.next_back() else {
            return 0;
        };
        {
            let mut buffer = self.tx.buffer();
            for (topic, payload) in notices {
                buffer.push_back(Packet::Publish(
                    Publish::new(topic.into_bytes(), payload, false),
                    None,
                ));
            }
        }
        // The last one wakes the router, which drains the whole buffer. A full router
        // channel only delays the wake-up to the next burst: the packets stay buffered.
        if let Err(e) = self.tx.try_publish(last_topic, last_payload) {
            tracing::debug!(error = %e, "embedded broker busy; notices go with the next burst");
        }
        count
    }
}

/// Starts the broker on its own threads and returns the publisher's link to it. While
/// `listen` is taken — the process being replaced in a graceful upgrade still holds it —
/// it waits for the port, and the publisher's reconnect finds whichever broker listens
/// there (credit-success notices sent through the link meanwhile reach the new broker's
/// subscribers only: none until it listens; they are QoS 0, at most once).
pub fn start(listen: SocketAddr) -> std::io::Result<Local> {
    let mut broker = Broker::new(config(listen));
    let (tx, rx) = broker
        .link("tollgate-notices")
        .map_err(std::io::Error::other)?;
    std::thread::Builder::new()
        .name("mqtt-broker".into())
        .spawn(move || {
            // rumqttd binds on a thread of its own and only logs a failure: check first.
            let mut warned = false;
            while let Err(e) = std::net::TcpListener::bind(listen) {
                if !warned {
                    tracing::warn!(%listen, error = %e, "embedded MQTT broker waits for its port");
                    warned = true;
                }
                std::thread::sleep(RETRY);
            }
            tracing::info!(%listen, "embedded MQTT broker listening");
            if let Err(e) = broker.start() {
                tracing::error!(error = %e, "embedded MQTT broker stopped");
            }
        })?;
    Ok(Local { tx, _rx: rx })
}
