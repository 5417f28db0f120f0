//! The skeleton both daemons run in: their lifecycle phase, the signals that end or reload
//! them, and the reload requests of their admin listeners.
//!
//! ## Lifecycle
//! ```text
//! Starting --(everything started, listeners bound)--> Ready --(SIGTERM | SIGINT)--> Draining
//! ```
//! A [`Lifecycle`] only moves forward, and `/readyz` is 200 only in [`Phase::Ready`] (each
//! daemon adds its own conditions: a full buffer, a failing output).
//!
//! ## Signals
//! SIGTERM and SIGINT end [`Signals::serve_until_shutdown`], after which the daemon drains;
//! SIGHUP reloads the config file. Handlers are installed by [`Signals::install`]; before that
//! (while starting) the default dispositions apply and a signal ends the process at once.
//!
//! ## Reloads
//! A SIGHUP and a `POST /reload` take the same path: the daemon's main task runs its reload
//! function, one reload at a time, between signals. A request from the admin listener
//! ([`ReloadHandle::request`]) waits for the outcome: `Ok(message)` applied, `Err(message)`
//! rejected (the running config stays). Once the daemon drains, no request is answered.

use std::sync::atomic::{AtomicU8, Ordering};

use tokio::signal::unix::{signal, Signal, SignalKind};
use tokio::sync::{mpsc, oneshot};

/// Lifecycle phase, for `/readyz`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Phase {
    /// Recovering buffers, starting the parts, binding listeners.
    Starting = 0,
    /// Taking in and sending records.
    Ready = 1,
    /// Shutting down.
    Draining = 2,
}

/// The current [`Phase`], shared by the daemon's main task and its admin listener.
#[derive(Debug)]
pub struct Lifecycle(AtomicU8);

impl Default for Lifecycle {
    fn default() -> Self {
        Lifecycle(AtomicU8::new(Phase::Starting as u8))
    }
}

impl Lifecycle {
    /// A lifecycle in [`Phase::Starting`].
    pub fn new() -> Lifecycle {
        Lifecycle::default()
    }

    /// Moves to another phase.
    pub fn set(&self, phase: Phase) {
        self.0.store(phase as u8, Ordering::SeqCst);
    }

    /// The current phase.
    pub fn phase(&self) -> Phase {
        match self.0.load(Ordering::SeqCst) {
            0 => Phase::Starting,
            1 => Phase::Ready,
            _ => Phase::Draining,
        }
    }

    /// `Ok` in [`Phase::Ready`], otherwise why not (for `/readyz`).
    pub fn readiness(&self) -> Result<(), String> {
        match self.phase() {
            Phase::Starting => Err("starting".into()),
            Phase::Ready => Ok(()),
            Phase::Draining => Err("draining for shutdown".into()),
        }
    }
}

/// What a reload did: `Ok` applied (the message says what), `Err` rejected (and why).
pub type ReloadOutcome = Result<String, String>;

/// A reload request: where its outcome goes.
type ReloadRequest = oneshot::Sender<ReloadOutcome>;

/// How many admin requests may wait for the daemon's main task.
const PENDING_RELOADS: usize = 4;

/// The admin listener's end of the reload channel.
#[derive(Debug, Clone)]
pub struct ReloadHandle(mpsc::Sender<ReloadRequest>);

impl ReloadHandle {
    /// Asks the daemon to reload and waits for the outcome; `None` when it is shutting down.
    pub async fn request(&self) -> Option<ReloadOutcome> {
        let (tx, rx) = oneshot::channel();
        self.0.send(tx).await.ok()?;
        rx.await.ok()
    }
}

/// The daemon's end of the reload channel, served by [`Signals::serve_until_shutdown`].
#[derive(Debug)]
pub struct ReloadRequests(mpsc::Receiver<ReloadRequest>);

/// A reload channel: the handle for the admin listener, the requests for the main task.
pub fn reload_channel() -> (ReloadHandle, ReloadRequests) {
    let (tx, rx) = mpsc::channel(PENDING_RELOADS);
    (ReloadHandle(tx), ReloadRequests(rx))
}

/// The signals a daemon handles: TERM and INT (shutdown), HUP (reload).
#[derive(Debug)]
pub struct Signals {
    term: Signal,
    int: Signal,
    hup: Signal,
}

impl Signals {
    /// Installs the handlers.
    ///
    /// # Errors
    /// A handler cannot be installed.
    pub fn install() -> std::io::Result<Signals> {
        Ok(Signals {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
            hup: signal(SignalKind::hangup())?,
        })
    }

    /// Runs `reload` for every SIGHUP and every request, logging its outcome (and answering
    /// the request with it), until SIGTERM or SIGINT.
    pub async fn serve_until_shutdown(
        mut self,
        mut requests: ReloadRequests,
        mut reload: impl FnMut() -> ReloadOutcome,
    ) {
        let mut logged = || {
            let outcome = reload();
            match &outcome {
                Ok(msg) => tracing::info!("{msg}"),
                Err(msg) => tracing::error!("reload rejected: {msg}"),
            }
            outcome
        };
        loop {
            tokio::select! {
                _ = self.term.recv() => break,
                _ = self.int.recv() => break,
                _ = self.hup.recv() => {
                    let _ = logged();
                }
                Some(reply) = requests.0.recv() => {
                    let _ = reply.send(logged());
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;
    use std::sync::Arc;
    use std::time::Duration;

    #[test]
    fn lifecycle_is_ready_only_when_ready() {
        let life = Lifecycle::new();
        assert_eq!(life.phase(), Phase::Starting);
        assert_eq!(life.readiness(), Err("starting".into()));
        life.set(Phase::Ready);
        assert_eq!(life.readiness(), Ok(()));
        life.set(Phase::Draining);
        assert_eq!(life.phase(), Phase::Draining);
        assert_eq!(life.readiness(), Err("draining for shutdown".into()));
    }

    fn kill(sig: &str) {
        let pid = std::process::id().to_string();
        let status = std::process::Command::new("kill")
            .args([sig, &pid])
            .status()
            .unwrap();
        assert!(status.success());
    }

    #[tokio::test]
    async fn hup_and_requests_reload_until_term() {
        let signals = Signals::install().unwrap();
        let (handle, requests) = reload_channel();
        let reloads = Arc::new(AtomicUsize::new(0));
        let counted = Arc::clone(&reloads);
        let serving = tokio::spawn(signals.serve_until_shutdown(requests, move || {
            let n = counted.fetch_add(1, Ordering::SeqCst) + 1;
            if n.is_multiple_of(2) {
                Ok(format!("reload {n}"))
            } else {
                Err(format!("reload {n}"))
            }
        }));
        kill("-HUP");
        tokio::time::timeout(Duration::from_secs(10), async {
            while reloads.load(Ordering::SeqCst) == 0 {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await
        .expect("SIGHUP reloads");
        assert_eq!(handle.request().await, Some(Ok("reload 2".into())));
        assert_eq!(handle.request().await, Some(Err("reload 3".into())));
        kill("-TERM");
        tokio::time::timeout(Duration::from_secs(10), serving)
            .await
            .expect("SIGTERM ends the loop")
            .unwrap();
        assert_eq!(handle.request().await, None, "no answer once draining");
    }
}
