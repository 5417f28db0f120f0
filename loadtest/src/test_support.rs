//! What the unit tests need from the environment, as scripts/test.sh provides it: the Python
//! interpreter with `msgpack` (`LOGFERRY_PYTHON`) and the Tansu Kafka broker (`LOGFERRY_TANSU`).

/// The value of the first of `vars` that is set. When none is: panics under CI (which must run
/// every test) if `required_in_ci`, else prints why the test is skipped and returns `None`.
pub fn env_tool(vars: &[&str], required_in_ci: bool) -> Option<String> {
    for v in vars {
        if let Ok(s) = std::env::var(v) {
            if !s.is_empty() {
                return Some(s);
            }
        }
    }
    if required_in_ci && std::env::var_os("CI").is_some() {
        panic!("none of {vars:?} is set but CI is: run the tests through scripts/test.sh");
    }
    eprintln!("skipping: none of {vars:?} is set (run scripts/test.sh)");
    None
}

/// The Python interpreter with `msgpack` installed.
pub fn python() -> Option<String> {
    env_tool(&["LOGFERRY_PYTHON"], true)
}

/// A Tansu broker (`$LOGFERRY_TANSU`, the binary scripts/test.sh installs) on a free port with
/// memory storage, killed on drop; `None` (the test skips) when the variable is unset outside CI.
#[cfg(feature = "kafka")]
#[derive(Debug)]
pub struct Broker {
    child: std::process::Child,
    pub addr: String,
}

#[cfg(feature = "kafka")]
impl Broker {
    pub fn start() -> Option<Self> {
        let bin = env_tool(&["LOGFERRY_TANSU"], true)?;
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let addr = format!("127.0.0.1:{port}");
        let url = format!("tcp://{addr}");
        let child = std::process::Command::new(&bin)
            .args([
                "broker",
                "--listener-url",
                &url,
                "--advertised-listener-url",
                &url,
            ])
            .args(["--storage-engine", "memory://tansu/"])
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("starting {bin}: {e}"));
        let broker = Self { child, addr };
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while std::net::TcpStream::connect(&broker.addr).is_err() {
            assert!(
                std::time::Instant::now() < deadline,
                "Tansu did not listen on {}",
                broker.addr
            );
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        Some(broker)
    }
}

#[cfg(feature = "kafka")]
impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
