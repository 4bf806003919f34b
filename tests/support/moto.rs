//! Starts moto's server (`moto_server`) as a child process on a free loopback port for
//! one test, and kills it when dropped.
//!
//! Use from a test file with `#[path = "support/moto.rs"] mod moto;`.
//! The binary comes from `SPOT_GUARD_MOTO_SERVER` or `target/moto-venv/bin/moto_server`,
//! which `scripts/moto-venv.sh` (run by `scripts/test.sh`) installs.

use std::io::Read as _;
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const START_TIMEOUT: Duration = Duration::from_secs(60);

pub struct Moto {
    child: Child,
    url: String,
    log: tempfile::NamedTempFile,
}

impl Moto {
    /// Panics with what to do when moto is not installed or does not come up.
    pub async fn start() -> Moto {
        let binary = moto_binary();
        assert!(
            binary.is_file(),
            "moto_server not found at {}: run scripts/test.sh (or scripts/moto-venv.sh) to install it, \
             or point SPOT_GUARD_MOTO_SERVER at a moto_server binary",
            binary.display()
        );
        let port = free_port();
        let log = tempfile::NamedTempFile::new().expect("create moto log file");
        let child = Command::new(&binary)
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::from(log.reopen().expect("reopen moto log")))
            .stderr(Stdio::from(log.reopen().expect("reopen moto log")))
            .spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}", binary.display()));
        let mut moto = Moto {
            child,
            url: format!("http://127.0.0.1:{port}"),
            log,
        };
        moto.wait_until_listening(port).await;
        moto
    }

    /// "http://127.0.0.1:PORT"
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Forgets every resource, as a fresh server would.
    pub async fn reset(&self) {
        spot_guard::tls::ensure_crypto_provider();
        let response = reqwest::Client::new()
            .post(format!("{}/moto-api/reset", self.url))
            .send()
            .await
            .expect("POST /moto-api/reset");
        assert!(
            response.status().is_success(),
            "moto reset answered {}",
            response.status()
        );
    }

    async fn wait_until_listening(&mut self, port: u16) {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "moto_server exited with {status} before listening:\n{}",
                    self.log_text()
                );
            }
            if TcpStream::connect((Ipv4Addr::LOCALHOST, port)).is_ok() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "moto_server did not listen on port {port} within {START_TIMEOUT:?}:\n{}",
                self.log_text()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    fn log_text(&self) -> String {
        let mut text = String::new();
        let _ = self
            .log
            .reopen()
            .map(|mut file| file.read_to_string(&mut text));
        text
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn moto_binary() -> PathBuf {
    std::env::var_os("SPOT_GUARD_MOTO_SERVER")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/moto-venv/bin/moto_server")
        })
}

/// A port that was free a moment ago; moto binds it itself right after.
fn free_port() -> u16 {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind a free port");
    listener.local_addr().expect("local address").port()
}
