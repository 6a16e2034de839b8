//! Many calls on one long-lived gRPC stream to one node, answered one by one: the sending end
//! ([`CallStream`]) and the receiving end's answer packing ([`pack_answers`]). Used by the Raft
//! transport (every group's AppendEntries to a peer, `AppendEntriesStream`) and by the node API
//! (a gateway's calls to a node, `NodeApi.CallStream`).
//!
//! A unary gRPC call opens an HTTP/2 stream with headers, a body and trailers each way, and the
//! receiver starts a task for it. On the stream a call costs a data frame, and the calls that
//! queue while a frame is written travel in the next frame together (one socket write instead
//! of one per call).
//!
//! The stream opens on the first call and again on the first call after it failed; a failure
//! answers every call waiting on the stream with the failure's status (which the caller treats
//! like a failed unary call). A caller that stops waiting (its timeout) leaves its answer to be
//! dropped when it arrives.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::{mpsc, oneshot};
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;
use tonic::{Code, Status};

use crate::cluster_token::ClusterToken;

/// Messages packed into one frame at most, so that one frame never holds up the answers to
/// the others for long.
const CALLS_PER_FRAME_MAX: usize = 64;
/// Frames handed to the stream and not yet written; beyond it the sender waits, and the
/// messages queued meanwhile go out in fewer, fuller frames.
const FRAMES_QUEUED_MAX: usize = 16;

/// The reply payload of a call, or the status the receiving node refused it with.
pub type Answer = Result<Vec<u8>, Status>;

/// The messages of one kind of call stream: how calls are framed, how answers are read, and
/// the gRPC method that opens the stream.
pub trait StreamProtocol: Send + Sync + 'static {
    /// One call's request, as the caller hands it over.
    type Request: Send + 'static;
    /// A frame of calls (`call_id`s chosen by the sender, unique on the stream).
    type CallFrame: Send + 'static;
    /// A frame of answers.
    type AnswerFrame: Send + 'static;
    /// Names the stream in failure messages ("the Raft stream", "the node API stream").
    const NAME: &'static str;

    fn call_frame(calls: Vec<(u64, Self::Request)>) -> Self::CallFrame;
    /// The frame's answers: call id, then the reply payload or the status the call failed with.
    fn answers(frame: Self::AnswerFrame) -> Vec<(u64, Answer)>;
    /// Calls the streaming method with `request` (whose body is the frames to write).
    fn open(
        channel: Channel,
        request: tonic::Request<ReceiverStream<Self::CallFrame>>,
    ) -> Opening<Self::AnswerFrame>;
}

/// The call that opens a stream, resolving to its answers.
pub type Opening<F> = Pin<Box<dyn Future<Output = Result<tonic::Streaming<F>, Status>> + Send>>;

/// An answer as the wire carries it: the payload when `status_code` is 0 (OK), otherwise the
/// status a unary call would have failed with.
pub fn answer_from_wire(status_code: i32, status_message: String, payload: Vec<u8>) -> Answer {
    if status_code == Code::Ok as i32 {
        Ok(payload)
    } else {
        Err(Status::new(Code::from_i32(status_code), status_message))
    }
}

struct Outgoing<R> {
    request: R,
    answer: oneshot::Sender<Answer>,
}

/// The stream of calls to one node; cheap to share, stops when the last handle is dropped.
pub struct CallStream<P: StreamProtocol> {
    outgoing: mpsc::UnboundedSender<Outgoing<P::Request>>,
    /// Cleared when the peer answered that it has no such method (an older version).
    peer_has_streams: AtomicBool,
}

impl<P: StreamProtocol> CallStream<P> {
    /// Starts the sending task (on the current runtime); the stream opens on first use.
    pub fn start(channel: Channel, cluster_token: Option<ClusterToken>) -> Self {
        let (outgoing, queued) = mpsc::unbounded_channel();
        tokio::spawn(send_frames::<P>(channel, cluster_token, queued));
        CallStream { outgoing, peer_has_streams: AtomicBool::new(true) }
    }

    /// False once the peer answered that it does not serve the stream's method.
    pub fn peer_has_streams(&self) -> bool {
        self.peer_has_streams.load(Ordering::Relaxed)
    }

    pub fn peer_has_no_streams(&self) {
        self.peer_has_streams.store(false, Ordering::Relaxed);
    }

    /// Sends `request` on the stream and waits for its answer. The caller bounds the wait.
    pub async fn call(&self, request: P::Request) -> Answer {
        let (answer, answered) = oneshot::channel();
        self.outgoing
            .send(Outgoing { request, answer })
            .map_err(|_| Status::unavailable(format!("{} to the peer has stopped", P::NAME)))?;
        answered.await.unwrap_or_else(|_| Err(Status::unavailable(format!("{} to the peer closed", P::NAME))))
    }
}

/// One opened stream: the frames to write, and the calls written and not answered yet. Only
/// the sending task holds the frames: when it drops them (the link stopped), the stream ends.
struct Session<F> {
    frames: mpsc::Sender<F>,
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
        let mut waiting = self.0.lock().expect("call stream waiting lock poisoned");
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

    fn answer(&self, call_id: u64, answer: Answer) {
        let waiting = self.0.lock().expect("call stream waiting lock poisoned").answers.remove(&call_id);
        if let Some(waiting) = waiting {
            let _ = waiting.send(answer);
        }
    }

    /// Marks the stream closed and answers every waiting call with `status`.
    fn close(&self, status: &Status) {
        let answers = {
            let mut waiting = self.0.lock().expect("call stream waiting lock poisoned");
            waiting.closed = true;
            std::mem::take(&mut waiting.answers)
        };
        for (_, answer) in answers {
            let _ = answer.send(Err(Status::new(status.code(), status.message().to_string())));
        }
    }

    fn is_closed(&self) -> bool {
        self.0.lock().expect("call stream waiting lock poisoned").closed
    }
}

async fn send_frames<P: StreamProtocol>(
    channel: Channel,
    cluster_token: Option<ClusterToken>,
    mut queued: mpsc::UnboundedReceiver<Outgoing<P::Request>>,
) {
    let mut session: Option<Session<P::CallFrame>> = None;
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
            calls.push((next_call_id, request));
            answers.push((next_call_id, answer));
        }
        // At most two tries: a stream found closed is replaced once, and a new stream is only
        // closed already if opening it failed, which answers the calls with that failure.
        for _ in 0..2 {
            if session.as_ref().is_none_or(|current| current.waiting.is_closed()) {
                session = Some(open::<P>(&channel, cluster_token.as_ref()));
            }
            let current = session.as_ref().expect("a session was opened above");
            match current.waiting.register(answers) {
                Ok(()) => {
                    answers = Vec::new();
                    if current.frames.send(P::call_frame(calls)).await.is_err() {
                        // The stream's body is gone: it failed, and its receiving task answers
                        // the calls just registered when it sees the failure.
                        current.waiting.close(&Status::unavailable(format!("{} to the peer broke", P::NAME)));
                    }
                    break;
                }
                Err(returned) => answers = returned,
            }
        }
        for (_, answer) in answers {
            let _ =
                answer.send(Err(Status::unavailable(format!("{} to the peer could not be opened", P::NAME))));
        }
    }
}

/// `first` and what else is queued now, up to `max` in all: one frame's worth.
pub fn take_queued<T>(first: T, queued: &mut mpsc::UnboundedReceiver<T>, max: usize) -> Vec<T> {
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
fn open<P: StreamProtocol>(channel: &Channel, cluster_token: Option<&ClusterToken>) -> Session<P::CallFrame> {
    let (frames, to_write) = mpsc::channel(FRAMES_QUEUED_MAX);
    let session = Session { frames, waiting: Arc::default() };
    let mut request = tonic::Request::new(ReceiverStream::new(to_write));
    if let Some(token) = cluster_token {
        token.attach(&mut request);
    }
    let opening = P::open(channel.clone(), request);
    let receiving = Arc::clone(&session.waiting);
    tokio::spawn(async move {
        let ended = match opening.await {
            Ok(answers) => receive_answers::<P>(answers, &receiving).await,
            Err(status) => status,
        };
        receiving.close(&ended);
    });
    session
}

async fn receive_answers<P: StreamProtocol>(
    mut answers: tonic::Streaming<P::AnswerFrame>,
    waiting: &WaitingCalls,
) -> Status {
    loop {
        match answers.message().await {
            Ok(Some(frame)) => {
                for (call_id, answer) in P::answers(frame) {
                    waiting.answer(call_id, answer);
                }
            }
            Ok(None) => return Status::unavailable(format!("the peer ended {}", P::NAME)),
            Err(status) => return status,
        }
    }
}

/// The receiving end: hands each frame of calls to `handle` until the stream ends, a frame does
/// not decode or the connection breaks (the sender then fails its waiting calls and opens
/// another stream), or `closed` resolves (the node stops serving: dropping the stream's body
/// lets the server's drain finish).
pub async fn for_each_frame<F>(
    mut frames: tonic::Streaming<F>,
    closed: impl Future<Output = ()>,
    mut handle: impl FnMut(F),
) {
    tokio::pin!(closed);
    loop {
        let frame = tokio::select! {
            frame = frames.message() => frame,
            () = &mut closed => return,
        };
        let Ok(Some(frame)) = frame else { return };
        handle(frame);
    }
}

/// Answers packed into one frame at most, on the receiving end.
const ANSWERS_PER_FRAME_MAX: usize = 64;
/// Frames of answers handed to the stream and not yet written.
pub const ANSWER_FRAMES_QUEUED_MAX: usize = 16;

/// The receiving end: packs the answers that are ready together into frames (`frame` makes one
/// of them), until every sender of answers is gone or `closed` resolves (the node stops
/// serving: ending the stream lets the server's drain finish, and the peer answers its waiting
/// calls as failed).
pub async fn pack_answers<A, F>(
    mut answers: mpsc::UnboundedReceiver<A>,
    frames: mpsc::Sender<Result<F, Status>>,
    frame: impl Fn(Vec<A>) -> F,
    closed: impl Future<Output = ()>,
) {
    tokio::pin!(closed);
    loop {
        let first = tokio::select! {
            first = answers.recv() => first,
            () = &mut closed => None,
        };
        let Some(first) = first else { return };
        let batch = take_queued(first, &mut answers, ANSWERS_PER_FRAME_MAX);
        if frames.send(Ok(frame(batch))).await.is_err() {
            return;
        }
    }
}
