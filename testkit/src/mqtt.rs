//! A private Mosquitto broker and a subscriber that records what it receives.

use super::{free_port, listening};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub struct Mosquitto {
    pub port: u16,
    dir: std::path::PathBuf,
    child: Option<Child>,
}

impl Mosquitto {
    pub fn start() -> Mosquitto {
        let dir = super::temp_dir("tollgate-mosquitto");
        let mut broker = Mosquitto {
            port: 0,
            dir,
            child: None,
        };
        // A port found free can be taken before the broker binds it: it then exits, and is
        // started again on another.
        for attempt in 1.. {
            broker.port = free_port();
            match broker.try_spawn() {
                Ok(()) => break,
                Err(status) if attempt < 5 => eprintln!("mosquitto exited ({status}); retrying"),
                Err(status) => panic!("mosquitto exited before listening: {status}"),
            }
        }
        broker
    }

    fn try_spawn(&mut self) -> Result<(), std::process::ExitStatus> {
        let config = self.dir.join("mosquitto.conf");
        let text = format!(
            "listener {} 127.0.0.1\nallow_anonymous true\npersistence false\n",
            self.port
        );
        std::fs::write(&config, text).unwrap();
        let binary = if std::path::Path::new("/usr/sbin/mosquitto").exists() {
            "/usr/sbin/mosquitto"
        } else {
            "mosquitto"
        };
        let mut child = Command::new(binary)
            .arg("-c")
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("mosquitto (apt-get install mosquitto)");
        listening("mosquitto", self.port, &mut child)?;
        self.child = Some(child);
        Ok(())
    }

    pub fn url(&self) -> String {
        format!("mqtt://127.0.0.1:{}", self.port)
    }

    pub fn addr(&self) -> std::net::SocketAddr {
        std::net::SocketAddr::from(([127, 0, 0, 1], self.port))
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A message as received: topic and JSON payload.
#[derive(Debug, Clone)]
pub struct Message {
    pub topic: String,
    pub payload: serde_json::Value,
}

/// Subscribes to `filter` on the broker at `port` and keeps every message.
pub struct Subscriber {
    pub messages: Arc<Mutex<Vec<Message>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Subscriber {
    /// Returns once the broker has acknowledged the subscription.
    pub async fn start(port: u16, filter: &str) -> Subscriber {
        let id = format!("test-{}", uuid::Uuid::now_v7().simple());
        let mut options = MqttOptions::new(id, "127.0.0.1", port);
        options.set_keep_alive(Duration::from_secs(30));
        options.set_max_packet_size(1 << 20, 1 << 20);
        let (client, mut eventloop) = AsyncClient::new(options, 64);
        client.subscribe(filter, QoS::AtLeastOnce).await.unwrap();
        let messages = Arc::new(Mutex::new(Vec::new()));
        let (subscribed_tx, subscribed) = tokio::sync::oneshot::channel();
        let kept = Arc::clone(&messages);
        let task = tokio::spawn(async move {
            let _client = client;
            let mut subscribed_tx = Some(subscribed_tx);
            loop {
                match eventloop.poll().await {
                    Ok(Event::Incoming(Packet::SubAck(_))) => {
                        if let Some(tx) = subscribed_tx.take() {
                            let _ = tx.send(());
                        }
                    }
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        let payload =
                            serde_json::from_slice(&p.payload).unwrap_or(serde_json::Value::Null);
                        kept.lock().unwrap().push(Message {
                            topic: p.topic.clone(),
                            payload,
                        });
                    }
                    Ok(_) => {}
                    Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
                }
            }
        });
        tokio::time::timeout(Duration::from_secs(10), subscribed)
            .await
            .expect("the broker acknowledges the subscription")
            .unwrap();
        Subscriber { messages, task }
    }

    pub fn on(&self, suffix: &str) -> Vec<Message> {
        self.messages
            .lock()
            .unwrap()
            .iter()
            .filter(|m| m.topic.ends_with(suffix))
            .cloned()
            .collect()
    }
}

impl Drop for Subscriber {
    fn drop(&mut self) {
        self.task.abort();
    }
}
