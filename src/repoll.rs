//! A future polled again at once when it wakes itself while being polled, instead of being
//! handed back to the scheduler.
//!
//! Hyper answers a request inside its connection's task and passes the request body to the
//! handler through a channel whose two ends live in that same task: taking the body wakes the
//! sender, and handing it over wakes the receiver, each time the very task being polled. Tokio
//! treats a task woken during its own poll as one that yields: it queues it behind the others
//! and wakes another worker thread to come and steal it. For every request with a body that
//! cost a futex wake-up, two context switches on the other thread, and often the connection
//! moving to the other core, only to run the same task again.
//!
//! [`Repolled`] polls its future again instead, up to [`REPOLLS`] times in a row; past that it
//! yields as before. One re-poll covers a request body: both of its wakes land in the same poll.
//! A yield that wakes at once counts as waking itself, so hyper's own (after 16 rounds of its
//! connection loop) now comes after up to `REPOLLS` times 16 rounds; a connection still holds a
//! worker thread for a bounded time. Tokio's own yields (`yield_now`, a spent cooperative
//! budget) wake the task after its poll has returned, and reach it as before, as do wakes from
//! anywhere else: the socket, the database, timers, other tasks.

use std::{
    future::Future,
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicU8, Ordering},
    },
    task::{Context, Poll, Wake, Waker},
};

use futures_util::task::AtomicWaker;

/// Polls in a row at most, before a future that keeps waking itself is yielded to the scheduler.
pub const REPOLLS: usize = 2;

/// Set while the future is being polled.
const POLLING: u8 = 1;
/// Set by a wake that came while the future was being polled.
const WOKEN: u8 = 2;

pin_project_lite::pin_project! {
    /// `inner`, re-polled at once when it wakes itself during a poll.
    pub struct Repolled<F> {
        #[pin]
        inner: F,
        shared: Arc<Shared>,
        waker: Waker,
    }
}

/// What the waker handed to the inner future shares with [`Repolled`].
struct Shared {
    state: AtomicU8,
    /// The task polling [`Repolled`].
    task: AtomicWaker,
}

impl Wake for Shared {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        // While the future is being polled, the poll in progress sees the wake and polls again;
        // otherwise the task is woken.
        if self.state.fetch_or(WOKEN, Ordering::AcqRel) & POLLING == 0 {
            self.task.wake();
        }
    }
}

impl<F> Repolled<F> {
    pub fn new(inner: F) -> Self {
        let shared = Arc::new(Shared {
            state: AtomicU8::new(0),
            task: AtomicWaker::new(),
        });
        Self {
            inner,
            waker: Waker::from(shared.clone()),
            shared,
        }
    }

    /// The wrapped future.
    pub fn inner(self: Pin<&mut Self>) -> Pin<&mut F> {
        self.project().inner
    }
}

impl<F: Future> Future for Repolled<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let mut this = self.project();
        this.shared.task.register(cx.waker());
        let mut inner_cx = Context::from_waker(this.waker);
        for _ in 0..REPOLLS {
            this.shared.state.store(POLLING, Ordering::Release);
            if let Poll::Ready(output) = this.inner.as_mut().poll(&mut inner_cx) {
                this.shared.state.store(0, Ordering::Release);
                return Poll::Ready(output);
            }
            // A wake after this swap finds the future not being polled and wakes the task.
            if this.shared.state.swap(0, Ordering::AcqRel) & WOKEN == 0 {
                return Poll::Pending;
            }
        }
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;

    use super::*;

    /// Counts the wakes that reach the task.
    struct Count(AtomicUsize);

    impl Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Wakes itself `times` times while polled, then finishes.
    struct WakesItself {
        times: usize,
        polls: usize,
    }

    impl Future for WakesItself {
        type Output = usize;

        fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<usize> {
            self.polls += 1;
            if self.polls > self.times {
                return Poll::Ready(self.polls);
            }
            cx.waker().wake_by_ref();
            Poll::Pending
        }
    }

    fn task() -> (Arc<Count>, Waker) {
        let count = Arc::new(Count(AtomicUsize::new(0)));
        (count.clone(), Waker::from(count))
    }

    /// Polls `future` inside [`Repolled`] once, for a task that must not be woken by it.
    fn poll_once_without_waking<F: Future>(future: F) -> Poll<F::Output> {
        let (count, waker) = task();
        let mut future = std::pin::pin!(Repolled::new(future));
        let polled = future.as_mut().poll(&mut Context::from_waker(&waker));
        assert_eq!(count.0.load(Ordering::Relaxed), 0, "the task was woken");
        polled
    }

    #[test]
    fn a_future_that_wakes_itself_is_polled_again_without_waking_the_task() {
        // As many self-wakes as one poll absorbs, each followed by a poll of its own.
        let future = WakesItself {
            times: REPOLLS - 1,
            polls: 0,
        };
        assert_eq!(poll_once_without_waking(future), Poll::Ready(REPOLLS));
    }

    #[test]
    fn past_the_limit_it_yields_to_the_task() {
        let (count, waker) = task();
        // `REPOLLS` polls that each wake: the last of them may not be followed by another.
        let future = WakesItself {
            times: REPOLLS,
            polls: 0,
        };
        let mut future = std::pin::pin!(Repolled::new(future));
        let mut cx = Context::from_waker(&waker);
        assert_eq!(future.as_mut().poll(&mut cx), Poll::Pending);
        assert_eq!(
            count.0.load(Ordering::Relaxed),
            1,
            "yielded: the task is woken"
        );
        assert_eq!(future.as_mut().poll(&mut cx), Poll::Ready(REPOLLS + 1));
    }

    /// Woken once from another thread while it is being polled, then done.
    struct WokenFromElsewhereWhilePolled {
        polls: usize,
    }

    impl Future for WokenFromElsewhereWhilePolled {
        type Output = usize;

        fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<usize> {
            self.polls += 1;
            if self.polls > 1 {
                return Poll::Ready(self.polls);
            }
            let waker = cx.waker().clone();
            std::thread::spawn(move || waker.wake()).join().unwrap();
            Poll::Pending
        }
    }

    #[test]
    fn a_wake_from_another_thread_during_the_poll_is_a_repoll() {
        let future = WokenFromElsewhereWhilePolled { polls: 0 };
        assert_eq!(poll_once_without_waking(future), Poll::Ready(2));
    }

    #[test]
    fn a_wake_reaches_the_task_that_polled_last() {
        let (first, first_waker) = task();
        let (second, second_waker) = task();
        let (sender, receiver) = tokio::sync::oneshot::channel::<u8>();
        let mut future = std::pin::pin!(Repolled::new(receiver));
        let mut cx = Context::from_waker(&first_waker);
        assert!(future.as_mut().poll(&mut cx).is_pending());
        // Polled next by another task, as a future may be between polls.
        let mut cx = Context::from_waker(&second_waker);
        assert!(future.as_mut().poll(&mut cx).is_pending());
        sender.send(7).unwrap();
        assert_eq!(first.0.load(Ordering::Relaxed), 0);
        assert_eq!(
            second.0.load(Ordering::Relaxed),
            1,
            "the last task's waker is woken"
        );
    }

    #[test]
    fn a_wake_from_elsewhere_reaches_the_task() {
        let (count, waker) = task();
        let (sender, receiver) = tokio::sync::oneshot::channel::<u8>();
        let mut future = std::pin::pin!(Repolled::new(receiver));
        let mut cx = Context::from_waker(&waker);
        assert!(future.as_mut().poll(&mut cx).is_pending());
        std::thread::spawn(move || sender.send(7))
            .join()
            .unwrap()
            .unwrap();
        assert_eq!(count.0.load(Ordering::Relaxed), 1, "the send woke the task");
        assert!(matches!(future.as_mut().poll(&mut cx), Poll::Ready(Ok(7))));
    }
}
