//! Polling two halves of one exchange in one task without waking the task.
//!
//! The tunnel's sender drives an HTTP/1.1 connection and the request that
//! waits on it in the same task, so one half (the connection, having read
//! the answer) wakes the other (the request's answer channel) while the task
//! is being polled. Tokio takes a task woken during its own poll for one
//! that yields: it goes to the back of the run queue and another worker is
//! woken to take it, which on every request costs a thread wake-up and moves
//! the request to another CPU. A [`Coalescer`] gives the halves a waker that,
//! woken while they are being polled, has them polled again at once instead;
//! a wake from anywhere else wakes the task as usual.

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Wake, Waker};

/// Not being polled.
const IDLE: u8 = 0;
/// Being polled; not woken since the poll began.
const POLLING: u8 = 1;
/// Being polled, and woken since the poll began: poll once more.
const POLLING_WOKEN: u8 = 2;

/// How many times in a row one poll goes again on a wake of its own before
/// it hands the task back to the runtime (which then counts it as a yield),
/// so that halves waking each other forever cannot hold a worker.
const MAX_AGAIN: usize = 32;

/// The waker the halves are polled with, and the task's own waker behind it.
pub struct Coalescer {
    state: AtomicU8,
    task: Mutex<Option<Waker>>,
}

impl Wake for Coalescer {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        let claimed = self.state.compare_exchange(
            POLLING,
            POLLING_WOKEN,
            Ordering::AcqRel,
            Ordering::Acquire,
        );
        match claimed {
            // The poll under way sees it and goes again.
            Ok(_) => {}
            Err(POLLING_WOKEN) => {}
            Err(_) => {
                let task = self.task.lock().unwrap_or_else(|p| p.into_inner()).clone();
                if let Some(task) = task {
                    task.wake();
                }
            }
        }
    }
}

impl Coalescer {
    pub fn new() -> Arc<Self> {
        Arc::new(Self {
            state: AtomicU8::new(IDLE),
            task: Mutex::new(None),
        })
    }

    /// Polls `f` with this coalescer's waker until it is ready or has not
    /// been woken during its last poll. `f` must be all that the waker is
    /// given to: a wake during the poll is not passed on to `cx`.
    pub fn poll<T>(
        self: &Arc<Self>,
        cx: &mut Context<'_>,
        mut f: impl FnMut(&mut Context<'_>) -> Poll<T>,
    ) -> Poll<T> {
        {
            let mut task = self.task.lock().unwrap_or_else(|p| p.into_inner());
            if !task.as_ref().is_some_and(|t| t.will_wake(cx.waker())) {
                *task = Some(cx.waker().clone());
            }
        }
        let waker = Waker::from(self.clone());
        let mut inner = Context::from_waker(&waker);
        for _ in 0..MAX_AGAIN {
            self.state.store(POLLING, Ordering::Release);
            let polled = f(&mut inner);
            let ended = self.state.swap(IDLE, Ordering::AcqRel);
            if polled.is_ready() {
                return polled;
            }
            if ended != POLLING_WOKEN {
                return Poll::Pending;
            }
        }
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    struct Count(AtomicUsize);
    impl Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    #[test]
    fn a_wake_during_the_poll_polls_again_and_one_after_wakes_the_task() {
        let count = Arc::new(Count(AtomicUsize::new(0)));
        let task = Waker::from(count.clone());
        let mut cx = Context::from_waker(&task);
        let c = Coalescer::new();

        // Woken by itself on the first poll: polled again, the task not woken.
        let mut polls = 0;
        let r = c.poll(&mut cx, |cx| {
            polls += 1;
            if polls == 1 {
                cx.waker().wake_by_ref();
                Poll::Pending
            } else {
                Poll::Ready(polls)
            }
        });
        assert_eq!(r, Poll::Ready(2));
        assert_eq!(count.0.load(Ordering::SeqCst), 0);

        // Pending with its waker kept: a wake after the poll wakes the task.
        let mut kept = None;
        let r: Poll<()> = c.poll(&mut cx, |cx| {
            kept = Some(cx.waker().clone());
            Poll::Pending
        });
        assert!(r.is_pending());
        kept.unwrap().wake();
        assert_eq!(count.0.load(Ordering::SeqCst), 1);

        // Waking itself on every poll: given back to the runtime, once.
        let mut polls = 0;
        let r: Poll<()> = c.poll(&mut cx, |cx| {
            polls += 1;
            cx.waker().wake_by_ref();
            Poll::Pending
        });
        assert!(r.is_pending());
        assert_eq!(polls, MAX_AGAIN);
        assert_eq!(count.0.load(Ordering::SeqCst), 2);
    }
}
