//! A future polled only when it has been woken, beside others in one task.
//!
//! A task that waits on several futures at once (`tokio::select!`) polls every one of them
//! whenever any of them wakes it. A connection's task waits for its connection, for the
//! server's stop signal and for its header timeout; the connection wakes it several times per
//! request, and every such wake polled the other two as well. Polling a waiting watch receiver
//! locks the mutex of its `Notify`, which the stop signal shares among all connections, so
//! every poll of every connection touched one lock from both worker threads.
//!
//! [`Gated`] hands its future a waker of its own and polls it again only after that waker has
//! fired: a wake from anything else in the task costs one atomic swap.

use std::{
    future::Future,
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    task::{Context, Poll, Wake, Waker},
};

use futures_util::task::AtomicWaker;

pin_project_lite::pin_project! {
    /// `inner`, polled on its first poll and after each of its own wakes.
    pub struct Gated<F> {
        #[pin]
        inner: F,
        gate: Arc<Gate>,
        waker: Waker,
    }
}

struct Gate {
    /// Set by the inner future's waker; taken by the poll that polls the inner future.
    woken: AtomicBool,
    /// The task polling [`Gated`].
    task: AtomicWaker,
}

impl Wake for Gate {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.woken.store(true, Ordering::Release);
        self.task.wake();
    }
}

impl<F> Gated<F> {
    pub fn new(inner: F) -> Self {
        let gate = Arc::new(Gate {
            // The first poll polls the future.
            woken: AtomicBool::new(true),
            task: AtomicWaker::new(),
        });
        Self {
            inner,
            waker: Waker::from(gate.clone()),
            gate,
        }
    }
}

impl<F: Future> Future for Gated<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = self.project();
        // Registered before the flag is read: a wake after the read reaches the task.
        this.gate.task.register(cx.waker());
        if !this.gate.woken.swap(false, Ordering::AcqRel) {
            return Poll::Pending;
        }
        this.inner.poll(&mut Context::from_waker(this.waker))
    }
}

#[cfg(test)]
mod tests {
    use std::{
        sync::atomic::AtomicUsize,
        task::{Wake, Waker},
    };

    use super::*;

    /// Counts its polls and stays pending; hands out the waker it was polled with.
    struct Counted {
        polls: Arc<AtomicUsize>,
        waker: InnerWaker,
    }

    impl Future for Counted {
        type Output = ();

        fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
            self.polls.fetch_add(1, Ordering::SeqCst);
            *self.waker.lock().unwrap() = Some(cx.waker().clone());
            Poll::Pending
        }
    }

    struct Task(AtomicUsize);

    impl Wake for Task {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    type InnerWaker = Arc<std::sync::Mutex<Option<Waker>>>;

    /// A gated [`Counted`], its poll count, and the waker it was last polled with.
    fn counted() -> (Pin<Box<Gated<Counted>>>, Arc<AtomicUsize>, InnerWaker) {
        let polls = Arc::new(AtomicUsize::new(0));
        let inner_waker = InnerWaker::default();
        let gated = Box::pin(Gated::new(Counted {
            polls: polls.clone(),
            waker: inner_waker.clone(),
        }));
        (gated, polls, inner_waker)
    }

    #[test]
    fn polled_first_then_only_after_its_own_wake() {
        let (mut gated, polls, inner_waker) = counted();
        let task = Arc::new(Task(AtomicUsize::new(0)));
        let waker = Waker::from(task.clone());
        let mut cx = Context::from_waker(&waker);

        assert!(gated.as_mut().poll(&mut cx).is_pending());
        assert_eq!(polls.load(Ordering::SeqCst), 1, "the first poll polls it");
        for _ in 0..3 {
            assert!(gated.as_mut().poll(&mut cx).is_pending());
        }
        assert_eq!(
            polls.load(Ordering::SeqCst),
            1,
            "others' wakes do not poll it"
        );

        inner_waker.lock().unwrap().take().unwrap().wake();
        assert_eq!(task.0.load(Ordering::SeqCst), 1, "its wake wakes the task");
        assert!(gated.as_mut().poll(&mut cx).is_pending());
        assert_eq!(
            polls.load(Ordering::SeqCst),
            2,
            "and the next poll polls it"
        );
        assert!(gated.as_mut().poll(&mut cx).is_pending());
        assert_eq!(polls.load(Ordering::SeqCst), 2, "once");
    }

    #[test]
    fn a_wake_reaches_the_task_that_polled_last() {
        let (mut gated, _, inner_waker) = counted();
        let first = Arc::new(Task(AtomicUsize::new(0)));
        let second = Arc::new(Task(AtomicUsize::new(0)));
        let first_waker = Waker::from(first.clone());
        let second_waker = Waker::from(second.clone());
        assert!(
            gated
                .as_mut()
                .poll(&mut Context::from_waker(&first_waker))
                .is_pending()
        );
        assert!(
            gated
                .as_mut()
                .poll(&mut Context::from_waker(&second_waker))
                .is_pending()
        );
        inner_waker.lock().unwrap().take().unwrap().wake();
        assert_eq!(first.0.load(Ordering::SeqCst), 0);
        assert_eq!(second.0.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn a_gated_watch_sees_the_change_it_waits_for() {
        let (send, mut receive) = tokio::sync::watch::channel(false);
        let waiting =
            tokio::spawn(async move { Gated::new(receive.wait_for(|stop| *stop)).await.is_ok() });
        tokio::task::yield_now().await;
        send.send_replace(true);
        assert!(
            tokio::time::timeout(std::time::Duration::from_secs(10), waiting)
                .await
                .expect("the change wakes the gated future")
                .unwrap()
        );
    }
}
