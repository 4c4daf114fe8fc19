//! A private Kafka-compatible broker (tansu) for tests that stop and start the broker. It
//! listens on a fixed loopback port for its lifetime so clients can reconnect. With memory
//! storage a restarted broker is empty (topics, records and committed offsets are gone, as
//! when a Kafka cluster loses a topic or a group); with SQLite storage it comes back with
//! everything it had acknowledged.

use std::process::Stdio;
use std::time::Duration;

use tokio::process::{Child, Command};

use crate::free_port;

pub struct Broker {
    port: u16,
    storage: String,
    /// Where a durable broker keeps its SQLite file; removed with the broker.
    dir: Option<std::path::PathBuf>,
    child: Option<Child>,
}

fn tansu_bin() -> String {
    std::env::var("TANSU_BIN").unwrap_or_else(|_| "tansu".into())
}

impl Broker {
    /// A broker that forgets everything when it stops.
    pub async fn start() -> Self {
        Self::launch("memory://tansu/".into(), None).await
    }

    /// A broker that keeps its topics and the groups' offsets across restarts.
    pub async fn start_durable() -> Self {
        let dir = std::env::temp_dir().join(format!("tidings-broker-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).expect("broker directory");
        // tansu reads the path relative to its working directory, the broker's directory.
        let storage = "sqlite://tansu.db".to_owned();
        Self::launch(storage, Some(dir)).await
    }

    async fn launch(storage: String, dir: Option<std::path::PathBuf>) -> Self {
        let mut b = Broker {
            port: free_port(),
            storage,
            dir,
            child: None,
        };
        b.resume().await;
        b
    }

    /// Where a durable broker writes its log (and keeps its data).
    pub fn dir(&self) -> Option<&std::path::Path> {
        self.dir.as_deref()
    }

    pub fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Starts (again) on the same port and waits until it accepts connections.
    pub async fn resume(&mut self) {
        assert!(self.child.is_none(), "broker already running");
        let url = format!("tcp://127.0.0.1:{}", self.port);
        let mut command = Command::new(tansu_bin());
        let (stdout, stderr) = match &self.dir {
            Some(dir) => {
                command
                    .current_dir(dir)
                    .env("RUST_LOG", "warn,tansu_broker::coordinator=info");
                let log = std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(dir.join("tansu.log"))
                    .expect("broker log");
                (log.try_clone().expect("broker log").into(), log.into())
            }
            None => (Stdio::null(), Stdio::null()),
        };
        let child = command
            .args([
                "broker",
                "--listener-url",
                &url,
                "--advertised-listener-url",
                &url,
                "--storage-engine",
                &self.storage,
            ])
            .stdout(stdout)
            .stderr(stderr)
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

    /// Kills the broker (SIGKILL, like a crash; memory storage is lost, SQLite storage keeps
    /// what was acknowledged).
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
        // A failing test keeps the durable broker's data and log for a look.
        if let Some(dir) = &self.dir
            && !std::thread::panicking()
        {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}
