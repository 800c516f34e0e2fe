//! Watching a READY worker: its exit, its heartbeats and control frames,
//! and the commands that stop it (kill, evict, restart, unload).

use std::time::Instant;

use ipc::Kind;
use prost::Message;
use sidecar_proto::worker::{Heartbeat, WorkerError};
use tokio::sync::oneshot;

use super::super::process::{self, Exit};
use super::super::{Command, Conn};
use super::{Actor, Ended};
use crate::clock::now_ms;
use crate::lifecycle::{KillReason, State};

impl Actor {
    pub(super) async fn supervise_admitted(&mut self, conn: Conn) -> Ended {
        let ended = self.supervise(conn).await;
        self.release_memory();
        ended
    }

    /// Watches a READY worker until it dies or the model is unloaded.
    async fn supervise(&mut self, mut conn: Conn) -> Ended {
        let timeout = self.config().workers.heartbeat_timeout;
        let grace = self.config().workers.kill_grace;
        let mut last_beat = Instant::now();
        loop {
            let beat_due = tokio::time::sleep_until((last_beat + timeout).into());
            tokio::select! {
                changed = conn.exit.changed() => {
                    let exit = conn.exit.borrow().unwrap_or(Exit { pid: conn.pid, code: None, signal: None });
                    if changed.is_err() || conn.exit.borrow().is_some() {
                        return Ended::Died { exit, reason: KillReason::Crash, ours: false };
                    }
                }
                frame = conn.chan.recv_control() => match frame {
                    Ok(f) if f.kind == Kind::Heartbeat => {
                        last_beat = Instant::now();
                        if let Ok(hb) = Heartbeat::decode(f.payload) {
                            self.status.send_modify(|s| {
                                s.memory = hb.memory;
                                s.heartbeat_unix_ms = now_ms();
                                s.tokens_generated = hb.tokens_generated;
                                s.worker_requests = hb.requests;
                            });
                        }
                    }
                    Ok(f) if f.kind == Kind::Error => {
                        let msg = WorkerError::decode(f.payload).map(|e| e.message).unwrap_or_default();
                        tracing::warn!(model = %self.spec.id, pid = conn.pid, "worker error: {msg}");
                    }
                    Ok(_) => {}
                    Err(e) => {
                        // The channel closed (the process is exiting), or
                        // the worker broke its rules (`protocol`). A SIGKILL
                        // in its exit is ours only if the kill path sent it.
                        let reason = KillReason::of_channel(&e);
                        if reason == KillReason::Protocol {
                            tracing::warn!(model = %self.spec.id, pid = conn.pid, "worker broke the channel protocol: {e}");
                            self.status.send_modify(|s| s.kill_note = Some((conn.pid, reason, e.to_string())));
                            self.conn.send_replace(None);
                        }
                        let (exit, ours) = process::stop_worker(conn.pid, &mut conn.exit, reason, grace).await;
                        return Ended::Died { exit, reason, ours };
                    }
                },
                () = beat_due => {
                    tracing::warn!(model = %self.spec.id, pid = conn.pid, "no heartbeat for {timeout:?}");
                    self.conn.send_replace(None);
                    let exit = process::kill_worker(conn.pid, &mut conn.exit, KillReason::Unhealthy, grace).await;
                    return Ended::Died { exit, reason: KillReason::Unhealthy, ours: true };
                }
                cmd = self.cmds.recv() => match cmd {
                    // Already dead: it died on its own, whatever the kill was for.
                    Some(Command::Kill { pid, .. }) if pid == conn.pid && conn.exit.borrow().is_some() => {
                        let exit = conn.exit.borrow().unwrap_or(Exit { pid, code: None, signal: None });
                        return Ended::Died { exit, reason: KillReason::Crash, ours: false };
                    }
                    Some(Command::Kill { pid, reason, note }) if pid == conn.pid => {
                        self.status.send_modify(|s| s.kill_note = Some((pid, reason, note)));
                        self.conn.send_replace(None);
                        let exit = process::kill_worker(conn.pid, &mut conn.exit, reason, grace).await;
                        return Ended::Died { exit, reason, ours: true };
                    }
                    Some(Command::Evict { note, done }) => {
                        self.conn.send_replace(None);
                        self.set(State::Unloading, |s| s.last_error = note.clone());
                        process::kill_worker(conn.pid, &mut conn.exit, KillReason::Requested, grace).await;
                        return Ended::Evicted { note, done };
                    }
                    Some(Command::Restart) => {
                        self.conn.send_replace(None);
                        let exit = process::kill_worker(conn.pid, &mut conn.exit, KillReason::Requested, grace).await;
                        self.recent.clear();
                        return Ended::Died { exit, reason: KillReason::Requested, ours: true };
                    }
                    Some(Command::Unload { reason, done }) => {
                        self.conn.send_replace(None);
                        self.set(State::Unloading, |_| {});
                        process::kill_worker(conn.pid, &mut conn.exit, reason, grace).await;
                        return Ended::Unloaded(done);
                    }
                    Some(_) => {}
                    None => {
                        process::kill_worker(conn.pid, &mut conn.exit, KillReason::Shutdown, grace).await;
                        let (done, _) = oneshot::channel();
                        return Ended::Unloaded(done);
                    }
                },
            }
        }
    }
}
