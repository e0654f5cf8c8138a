//! The in-process MQTT broker of the embedded default (`rumqttd`, from the project that
//! makes `rumqttc`): `mosquitto_sub -p 11883 -t 'tenant/#' -v` works against the quickstart.
//! It listens on `alerts.embedded_listen` (`TOLLGATE_MQTT_EMBEDDED_LISTEN`, default
//! `127.0.0.1:11883`, so it never fights a system broker on 1883), MQTT 3.1.1, no auth:
//! keep it on loopback.

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

/// Starts the broker on its own threads. While `listen` is taken — the process being
/// replaced in a graceful upgrade still holds it — it waits for the port, and the
/// publisher's reconnect finds whichever broker listens there.
pub fn start(listen: SocketAddr) -> std::io::Result<()> {
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
            if let Err(e) = Broker::new(config(listen)).start() {
                tracing::error!(error = %e, "embedded MQTT broker stopped");
            }
        })?;
    Ok(())
}
