//! The sending end of `AppendEntriesStream`: one long-lived stream per peer node carries the
//! AppendEntries of every group this node leads toward it.
//!
//! A unary gRPC call opens an HTTP/2 stream with headers, a body and trailers each way, and the
//! receiver starts a task for it; with a few dozen groups on a node, each entry's replication
//! and the commit index that follows it cost two such calls per follower. On the stream a
//! message costs a data frame, and the messages of several groups that queue while a frame is
//! written travel in the next frame together (one socket write instead of one per group).
//!
//! The link opens its stream on the first call and again on the first call after the stream
//! failed; a failure answers every call waiting on the stream with the failure's status (which
//! openraft treats like a failed unary call: it retries). A caller that stops waiting (its
//! timeout) leaves its answer to be dropped when it arrives.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use tally_proto::internal::raft_transport_client::RaftTransportClient;
use tally_proto::internal::{RaftAnswer, RaftAnswerBatch, RaftCall, RaftCallBatch, RaftRequest};
use tokio::sync::{mpsc, oneshot};
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;
use tonic::{Code, Status};

use crate::cluster_token::ClusterToken;
use crate::network::RAFT_MESSAGE_BYTES_MAX;

/// Messages packed into one frame at most, so that one frame never holds up the answers to
/// the others for long.
const CALLS_PER_FRAME_MAX: usize = 64;
/// Frames handed to the stream and not yet written; beyond it the sender waits, and the
/// messages queued meanwhile go out in fewer, fuller frames.
const FRAMES_QUEUED_MAX: usize = 16;

/// The reply payload of a call, or the status the receiving node refused it with.
pub(crate) type Answer = Result<Vec<u8>, Status>;

struct Outgoing {
    request: RaftRequest,
    answer: oneshot::Sender<Answer>,
}

/// A peer's stream of AppendEntries; cheap to share, stops when the last handle is dropped.
pub(crate) struct PeerLink {
    outgoing: mpsc::UnboundedSender<Outgoing>,
    /// Cleared when the peer answered that it has no such method (an older version).
    peer_has_streams: AtomicBool,
}

impl PeerLink {
    /// Starts the link's sending task (on the current runtime); the stream opens on first use.
    pub(crate) fn start(channel: Channel, cluster_token: Option<ClusterToken>) -> PeerLink {
        let (outgoing, queued) = mpsc::unbounded_channel();
        tokio::spawn(send_frames(channel, cluster_token, queued));
        PeerLink { outgoing, peer_has_streams: AtomicBool::new(true) }
    }

    /// False once the peer answered that it does not serve `AppendEntriesStream`.
    pub(crate) fn peer_has_streams(&self) -> bool {
        self.peer_has_streams.load(Ordering::Relaxed)
    }

    pub(crate) fn peer_has_no_streams(&self) {
        self.peer_has_streams.store(false, Ordering::Relaxed);
    }

    /// Sends `request` on the stream and waits for its answer. The caller bounds the wait.
    pub(crate) async fn call(&self, request: RaftRequest) -> Answer {
        let (answer, answered) = oneshot::channel();
        self.outgoing
            .send(Outgoing { request, answer })
            .map_err(|_| Status::unavailable("the Raft stream to the peer has stopped"))?;
        answered.await.unwrap_or_else(|_| Err(Status::unavailable("the Raft stream to the peer closed")))
    }
}

/// One opened stream: the frames to write, and the calls written and not answered yet. Only
/// the sending task holds the frames: when it drops them (the link stopped), the stream ends.
struct Session {
    frames: mpsc::Sender<RaftCallBatch>,
    waiting: Arc<WaitingCalls>,
}

#[derive(Default)]
struct WaitingCalls(Mutex<Waiting>);

#[derive(Default)]
struct Waiting {
    /// Set once the stream failed or ended: no call may wait on it any more.
    closed: bool,
    answers: HashMap<u64, oneshot::Sender<Answer>>,
}

type CallAnswers = Vec<(u64, oneshot::Sender<Answer>)>;

impl WaitingCalls {
    /// Registers the calls of a frame; gives them back if the stream closed meanwhile.
    fn register(&self, calls: CallAnswers) -> Result<(), CallAnswers> {
        let mut waiting = self.0.lock().expect("Raft stream waiting lock poisoned");
        if waiting.closed {
            return Err(calls);
        }
        // Answers that nobody waits for any more (their caller timed out) and that the peer
        // never sent (a group that went away mid-call) are dropped here, not kept forever.
        if waiting.answers.len() > 4 * CALLS_PER_FRAME_MAX {
            waiting.answers.retain(|_, answer| !answer.is_closed());
        }
        waiting.answers.extend(calls);
        Ok(())
    }

    fn answer(&self, answer: RaftAnswer) {
        let waiting =
            self.0.lock().expect("Raft stream waiting lock poisoned").answers.remove(&answer.call_id);
        let Some(waiting) = waiting else { return };
        let result = if answer.status_code == Code::Ok as i32 {
            Ok(answer.payload)
        } else {
            Err(Status::new(Code::from_i32(answer.status_code), answer.status_message))
        };
        let _ = waiting.send(result);
    }

    /// Marks the stream closed and answers every waiting call with `status`.
    fn close(&self, status: &Status) {
        let answers = {
            let mut waiting = self.0.lock().expect("Raft stream waiting lock poisoned");
            waiting.closed = true;
            std::mem::take(&mut waiting.answers)
        };
        for (_, answer) in answers {
            let _ = answer.send(Err(Status::new(status.code(), status.message().to_string())));
        }
    }

    fn is_closed(&self) -> bool {
        self.0.lock().expect("Raft stream waiting lock poisoned").closed
    }
}

async fn send_frames(
    channel: Channel,
    cluster_token: Option<ClusterToken>,
    mut queued: mpsc::UnboundedReceiver<Outgoing>,
) {
    let mut session: Option<Session> = None;
    let mut next_call_id: u64 = 0;
    while let Some(first) = queued.recv().await {
        let mut outgoing = take_queued(first, &mut queued, CALLS_PER_FRAME_MAX);
        // A caller that gave up (its timeout passed while it queued) needs no frame.
        outgoing.retain(|call| !call.answer.is_closed());
        if outgoing.is_empty() {
            continue;
        }
        let mut calls = Vec::with_capacity(outgoing.len());
        let mut answers = Vec::with_capacity(outgoing.len());
        for Outgoing { request, answer } in outgoing {
            next_call_id += 1;
            calls.push(RaftCall { call_id: next_call_id, request: Some(request) });
            answers.push((next_call_id, answer));
        }
        // At most two tries: a stream found closed is replaced once, and a new stream is only
        // closed already if opening it failed, which answers the calls with that failure.
        for _ in 0..2 {
            if session.as_ref().is_none_or(|current| current.waiting.is_closed()) {
                session = Some(open(&channel, cluster_token.as_ref()));
            }
            let current = session.as_ref().expect("a session was opened above");
            match current.waiting.register(answers) {
                Ok(()) => {
                    answers = Vec::new();
                    if current.frames.send(RaftCallBatch { calls }).await.is_err() {
                        // The stream's body is gone: it failed, and its receiving task answers
                        // the calls just registered when it sees the failure.
                        current.waiting.close(&Status::unavailable("the Raft stream to the peer broke"));
                    }
                    break;
                }
                Err(returned) => answers = returned,
            }
        }
        for (_, answer) in answers {
            let _ = answer.send(Err(Status::unavailable("the Raft stream to the peer could not be opened")));
        }
    }
}

/// `first` and what else is queued now, up to `max` in all: one frame's worth.
pub(crate) fn take_queued<T>(first: T, queued: &mut mpsc::UnboundedReceiver<T>, max: usize) -> Vec<T> {
    let mut batch = vec![first];
    while batch.len() < max {
        match queued.try_recv() {
            Ok(more) => batch.push(more),
            Err(_) => break,
        }
    }
    batch
}

/// Opens a stream: its frames are written as they are queued, and a task receives the answers
/// until the stream ends, then closes the session with the reason.
fn open(channel: &Channel, cluster_token: Option<&ClusterToken>) -> Session {
    let (frames, to_write) = mpsc::channel(FRAMES_QUEUED_MAX);
    let session = Session { frames, waiting: Arc::default() };
    let mut request = tonic::Request::new(ReceiverStream::new(to_write));
    if let Some(token) = cluster_token {
        token.attach(&mut request);
    }
    let mut client = RaftTransportClient::new(channel.clone())
        .max_decoding_message_size(RAFT_MESSAGE_BYTES_MAX)
        .max_encoding_message_size(RAFT_MESSAGE_BYTES_MAX);
    let receiving = Arc::clone(&session.waiting);
    tokio::spawn(async move {
        let ended = match client.append_entries_stream(request).await {
            Ok(response) => receive_answers(response.into_inner(), &receiving).await,
            Err(status) => status,
        };
        receiving.close(&ended);
    });
    session
}

async fn receive_answers(mut answers: tonic::Streaming<RaftAnswerBatch>, waiting: &WaitingCalls) -> Status {
    loop {
        match answers.message().await {
            Ok(Some(batch)) => {
                for answer in batch.answers {
                    waiting.answer(answer);
                }
            }
            Ok(None) => return Status::unavailable("the peer ended the Raft stream"),
            Err(status) => return status,
        }
    }
}
