//! A private Kafka-compatible broker (tansu, memory storage) for tests that stop and start
//! the broker. It listens on a fixed loopback port for its lifetime so clients can reconnect;
//! a restarted broker is empty, as the README says.

use std::process::Stdio;
use std::time::Duration;

use tokio::process::{Child, Command};

pub struct Broker {
    port: u16,
    child: Option<Child>,
}

fn tansu_bin() -> String {
    std::env::var("TANSU_BIN").unwrap_or_else(|_| "tansu".into())
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

impl Broker {
    pub async fn start() -> Self {
        let mut b = Broker {
            port: free_port(),
            child: None,
        };
        b.resume().await;
        b
    }

    pub fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Starts (again) on the same port and waits until it accepts connections.
    pub async fn resume(&mut self) {
        assert!(self.child.is_none(), "broker already running");
        let url = format!("tcp://127.0.0.1:{}", self.port);
        let child = Command::new(tansu_bin())
            .args([
                "broker",
                "--listener-url",
                &url,
                "--advertised-listener-url",
                &url,
                "--storage-engine",
                "memory://tansu/",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("tansu is installed (make deps) or TANSU_BIN points at it");
        self.child = Some(child);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        while tokio::net::TcpStream::connect(("127.0.0.1", self.port))
            .await
            .is_err()
        {
            assert!(
                tokio::time::Instant::now() < deadline,
                "tansu did not start on port {}",
                self.port
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Kills the broker (like a crash; its memory storage is lost).
    pub async fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill().await;
            let _ = c.wait().await;
        }
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        if let Some(c) = self.child.as_mut() {
            let _ = c.start_kill();
        }
    }
}
