//! Background work (checkpoints) on threads of a lower CPU priority than the write path.
//!
//! A checkpoint's encoding and writes take most of a core under load. On tokio's blocking
//! pool the kernel shared the cores fairly between them and the runtime's workers, one of
//! which runs apply: every entry's commands wait for apply, and apply waited whenever the
//! scheduler gave its core to a checkpoint. A checkpoint only has to keep up over seconds, so
//! its threads run at [`BACKGROUND_NICE`] and yield the core to the write path while both are
//! runnable. Dedicated threads, not the blocking pool's: an unprivileged process can lower a
//! thread's priority but not raise it back, and the pool's threads run other work too.

use std::sync::mpsc;
use std::sync::{Arc, Mutex, OnceLock};

/// The nice value of background threads (0 is the default; higher yields the core sooner).
pub const BACKGROUND_NICE: i32 = 5;

/// Background threads per process: checkpoints of different groups run side by side, and a
/// node has two cores in the smallest setup we size for.
const BACKGROUND_THREADS: usize = 2;

type Job = Box<dyn FnOnce() + Send>;

fn queue() -> &'static mpsc::Sender<Job> {
    static QUEUE: OnceLock<mpsc::Sender<Job>> = OnceLock::new();
    QUEUE.get_or_init(|| {
        let (sender, receiver) = mpsc::channel::<Job>();
        let receiver = Arc::new(Mutex::new(receiver));
        for number in 0..BACKGROUND_THREADS {
            let receiver = receiver.clone();
            std::thread::Builder::new()
                .name(format!("tally-background-{number}"))
                .spawn(move || {
                    lower_thread_priority(BACKGROUND_NICE);
                    loop {
                        let job = receiver.lock().expect("background queue lock poisoned").recv();
                        match job {
                            Ok(job) => job(),
                            Err(_) => return,
                        }
                    }
                })
                .expect("starting a background thread");
        }
        sender
    })
}

/// Runs `work` on a background thread and waits for its result. A panic in `work` is returned
/// as an error, as `spawn_blocking` returns it.
pub async fn run<T: Send + 'static>(work: impl FnOnce() -> T + Send + 'static) -> Result<T, BackgroundError> {
    let (reply, answer) = tokio::sync::oneshot::channel();
    let job: Job = Box::new(move || {
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(work));
        let _ = reply.send(result.map_err(|_| BackgroundError::Panicked));
    });
    queue().send(job).map_err(|_| BackgroundError::Stopped)?;
    answer.await.map_err(|_| BackgroundError::Stopped)?
}

#[derive(Debug, thiserror::Error)]
pub enum BackgroundError {
    #[error("background work panicked")]
    Panicked,
    #[error("the background threads stopped")]
    Stopped,
}

/// Sets the calling thread's nice value (on Linux `setpriority(PRIO_PROCESS, 0, ..)` applies to
/// the calling thread alone). Failure leaves the default priority, which is only slower.
#[allow(unsafe_code)] // One setpriority call with integer arguments.
fn lower_thread_priority(nice: i32) {
    #[cfg(target_os = "linux")]
    // SAFETY: setpriority changes only the calling thread's priority.
    unsafe {
        if libc::setpriority(libc::PRIO_PROCESS, 0, nice) != 0 {
            tracing::warn!(nice, "could not lower the priority of a background thread");
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = nice;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[allow(unsafe_code)] // One getpriority call with integer arguments.
    #[tokio::test]
    async fn work_runs_at_the_background_priority_and_a_panic_is_an_error() {
        let nice = run(|| unsafe { libc::getpriority(libc::PRIO_PROCESS, 0) }).await.unwrap();
        assert_eq!(nice, BACKGROUND_NICE);
        assert!(matches!(run(|| panic!("on purpose")).await, Err(BackgroundError::Panicked)));
        assert_eq!(run(|| 7).await.unwrap(), 7);
    }
}
