//! Signals, turned into the one way the process stops: the root
//! [`CancellationToken`], cancelled by the first SIGTERM/SIGINT (Ctrl-C for
//! a one-shot sweep); the second exits at once. SIGHUP and SIGUSR1 become
//! the daemon's other [`Control`]s.
//!
//! The tasks that read the signals never wait on what they stop: once
//! stopping has begun the daemon reads no more controls, and a task blocked
//! on a full channel would never see the second stop signal.

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use token_sweeper::daemon::Control;

/// SIGTERM/SIGINT: cancel `stop` (a second one exits at once); SIGHUP:
/// reload; SIGUSR1: sweep now.
///
/// Reloads and sweeps are handed over when the daemon takes them, several
/// of one kind in the meantime counting as one (one reload reads the file
/// as it is by then; one extra sweep does what any number would). After a
/// stop they are dropped: the daemon would not read them.
pub fn forward_signals(
    controls: mpsc::Sender<Control>,
    stop: CancellationToken,
) -> std::io::Result<()> {
    use futures_util::StreamExt;
    use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM, SIGUSR1};

    let mut signals = signal_hook_tokio::Signals::new([SIGTERM, SIGINT, SIGHUP, SIGUSR1])?;
    tokio::spawn(async move {
        let mut pending = PendingControls::default();
        let mut daemon_gone = false;
        loop {
            tokio::select! {
                signal = signals.next() => match signal {
                    Some(SIGHUP | SIGUSR1) if stop.is_cancelled() => {}
                    Some(SIGHUP) => pending.reload = true,
                    Some(SIGUSR1) => pending.sweep_now = true,
                    Some(_) if stop.is_cancelled() => {
                        eprintln!("token-sweeper: second stop signal, exiting now");
                        std::process::exit(1);
                    }
                    Some(_) => {
                        stop.cancel();
                        pending = PendingControls::default();
                    }
                    None => return,
                },
                permit = controls.reserve(), if !daemon_gone && pending.any() => match permit {
                    Ok(permit) => {
                        if let Some(control) = pending.take() {
                            permit.send(control);
                        }
                    }
                    // Keep reading signals: a second stop must still exit.
                    Err(_) => daemon_gone = true,
                },
            }
        }
    });
    Ok(())
}

/// Controls asked for by signals and not yet taken by the daemon.
#[derive(Default)]
struct PendingControls {
    reload: bool,
    sweep_now: bool,
}

impl PendingControls {
    fn any(&self) -> bool {
        self.reload || self.sweep_now
    }

    /// The next control to hand over: a reload first, so that a sweep asked
    /// for with it runs the new settings.
    fn take(&mut self) -> Option<Control> {
        if std::mem::take(&mut self.reload) {
            Some(Control::Reload)
        } else {
            std::mem::take(&mut self.sweep_now).then_some(Control::SweepNow)
        }
    }
}

/// Watches Ctrl-C and SIGTERM from now on: the first cancels `stop`, so the
/// sweep stops sending, finishes what is in flight and prints its report;
/// the second exits at once, after `on_quit`.
///
/// SIGTERM as well as Ctrl-C, because a one-shot sweep is also run by a
/// Kubernetes Job, a systemd timer or `timeout`, which stop it with SIGTERM:
/// it then says what it did instead of vanishing mid-pipeline.
///
/// The watching runs in a task of its own: the sweep looks at `stop` only
/// between SCAN pages, and a sweep stuck on a batch must still quit on the
/// second signal. Without a signal handler, `stop` is never cancelled.
pub fn watch_interrupts(stop: CancellationToken, on_quit: impl FnOnce() + Send + 'static) {
    use tokio::signal::unix::{signal, SignalKind};
    tokio::spawn(async move {
        let mut term = match signal(SignalKind::terminate()) {
            Ok(term) => Some(term),
            Err(e) => {
                tracing::warn!(error = %e, "cannot watch SIGTERM; only Ctrl-C stops the sweep gently");
                None
            }
        };
        let mut interrupt = async || {
            tokio::select! {
                Ok(()) = tokio::signal::ctrl_c() => true,
                Some(()) = async { term.as_mut()?.recv().await } => true,
                else => false,
            }
        };
        if !interrupt().await {
            return;
        }
        eprintln!(
            "token-sweeper: interrupted, finishing the batches in flight (Ctrl-C or SIGTERM again to quit now)"
        );
        stop.cancel();
        let _ = interrupt().await;
        on_quit();
        std::process::exit(1);
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reload_is_handed_over_before_a_sweep_and_repeats_count_once() {
        let mut pending = PendingControls::default();
        assert!(!pending.any());
        pending.sweep_now = true;
        pending.reload = true;
        pending.reload = true;
        assert!(matches!(pending.take(), Some(Control::Reload)));
        assert!(matches!(pending.take(), Some(Control::SweepNow)));
        assert!(pending.take().is_none());
        assert!(!pending.any());
    }
}
