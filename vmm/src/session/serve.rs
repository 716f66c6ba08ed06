//! The guest's requests (SNRQ, KORQ) as the session serves them: answered
//! now, or kept (bounded, for a bounded time) until the host has read the
//! guest kernel; every reply goes out on port 1 until the guest stops.

use std::time::{Duration, Instant};

use schedrig_wire::MsgTag;

use super::snapshots::{ScenarioAt, Snapshots};
use crate::devices::virtio::BulkWriter;
use crate::guest_error;
use crate::guest_errors::GuestErrors;
use crate::introspect::snapshot::SNAPSHOTS_MAX;
use crate::requests::{self, Server};

/// Requests kept while the host reads the guest kernel, and how long
/// each may wait for that.
const PENDING_MAX: usize = 16;
const PENDING_WAIT: Duration = Duration::from_secs(60);

/// What serves the guest's requests, and where replies go.
pub struct Requests {
    /// What answers SNRQ and KORQ, when the host can read the guest.
    pub server: Option<Server>,
    /// Requests that came before the guest kernel was read (bounded).
    pending: Vec<(Instant, MsgTag, Vec<u8>)>,
    /// Port 1 RX: answers to the guest's requests.
    replies: Option<BulkWriter>,
}

impl Requests {
    pub fn new(replies: BulkWriter) -> Self {
        Self {
            server: None,
            pending: Vec::new(),
            replies: Some(replies),
        }
    }

    /// Nothing more goes to the guest (it is stopping).
    pub fn stop_replies(&mut self) {
        self.replies = None;
    }

    pub fn has_pending(&self) -> bool {
        !self.pending.is_empty()
    }

    /// Answers one request now, or keeps it until the guest kernel is read.
    pub fn serve(
        &mut self,
        tag: MsgTag,
        payload: &[u8],
        since: Instant,
        snaps: &mut Snapshots,
        at: ScenarioAt,
        errors: &GuestErrors,
    ) {
        // Each CAPTURE freezes the guest and walks its tasks: past the cap
        // of kept snapshots a guest gets a refusal, not another freeze.
        if tag == MsgTag::SnapshotRequest && snaps.full() {
            let why = format!("{SNAPSHOTS_MAX} snapshots are kept already, the most one run keeps");
            if let (Some(reply), Some(w)) = (requests::refuse(tag, payload, &why), &self.replies) {
                let _ = w.send(&reply);
            }
            return;
        }
        let answer = requests::answer(tag, payload, self.server.as_ref());
        let frame = if answer.later {
            if since.elapsed() >= PENDING_WAIT {
                requests::refuse(
                    tag,
                    payload,
                    &format!(
                        "the host was still reading the guest kernel {PENDING_WAIT:?} after the request"
                    ),
                )
            } else if self.pending.len() < PENDING_MAX {
                self.pending.push((since, tag, payload.to_vec()));
                None
            } else {
                requests::refuse(
                    tag,
                    payload,
                    &format!(
                        "{PENDING_MAX} requests already wait for the host to read the guest kernel"
                    ),
                )
            }
        } else {
            answer.frame
        };
        if let Some(why) = &answer.refused {
            guest_error!(errors, Frame, "{why}");
        }
        if let Some(snap) = answer.snapshot {
            snaps.keep(snap, at);
        }
        if let (Some(reply), Some(w)) = (frame, &self.replies) {
            // Full means the guest is not reading its replies; dropping
            // this one cannot hurt the host.
            if let Err(e) = w.send(&reply) {
                guest_error!(errors, Frame, "reply to {tag} dropped: {e}");
            }
        }
    }

    /// Requests kept for later, tried again.
    pub fn serve_pending(&mut self, snaps: &mut Snapshots, at: ScenarioAt, errors: &GuestErrors) {
        for (since, tag, payload) in std::mem::take(&mut self.pending) {
            self.serve(tag, &payload, since, snaps, at, errors);
        }
    }
}
