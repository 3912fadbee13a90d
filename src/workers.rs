//! Session threads (`listen.workers`).
//!
//! Client sessions run on a few threads of their own, each with a
//! single-threaded runtime: a session, the connect tasks it starts and the
//! shared upstream connections its thread's sessions use
//! ([`crate::upstream::shared`]) all run on one thread, so a request and
//! its reply cross no thread. The accept loop (on the main runtime, with
//! the admin API, repair and the control tasks) hands each accepted socket
//! to the next worker in turn.
//!
//! Measured (README, Performance): with a multi-threaded runtime every
//! unpipelined request woke tasks across threads, about half again
//! twemproxy's CPU per request; with sessions and their shared connection
//! on one thread, cutover's CPU per request is twemproxy's.

use std::cell::Cell;
use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::runtime::{Builder, Handle};
use tokio::sync::oneshot;

thread_local! {
    /// This thread's place among the workers (None off them).
    static INDEX: Cell<Option<usize>> = const { Cell::new(None) };
}

/// The worker this code runs on; 0 off the workers (tests, tools).
pub fn current() -> usize {
    INDEX.with(Cell::get).unwrap_or(0)
}

/// The session threads. Dropping this stops them (after the accept loop
/// has let the sessions drain): their unfinished tasks are dropped.
#[derive(Debug)]
pub struct Workers {
    handles: Vec<Handle>,
    next: AtomicUsize,
    _stop: Vec<oneshot::Sender<()>>,
}

impl Workers {
    /// Starts `n` (at least one) session threads.
    pub fn start(n: usize) -> std::io::Result<Workers> {
        let mut handles = Vec::new();
        let mut stops = Vec::new();
        for i in 0..n.max(1) {
            let rt = Builder::new_current_thread().enable_all().build()?;
            handles.push(rt.handle().clone());
            let (stop, stopped) = oneshot::channel::<()>();
            stops.push(stop);
            std::thread::Builder::new()
                .name(format!("cutover-worker-{i}"))
                .spawn(move || {
                    INDEX.with(|c| c.set(Some(i)));
                    rt.block_on(async {
                        let _ = stopped.await;
                    });
                })?;
        }
        Ok(Workers {
            handles,
            next: AtomicUsize::new(0),
            _stop: stops,
        })
    }

    /// Runs `task` on the next worker in turn.
    pub fn spawn<F>(&self, task: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.handles.len();
        self.handles[i].spawn(task);
    }

    /// How many there are.
    pub fn len(&self) -> usize {
        self.handles.len()
    }

    pub fn is_empty(&self) -> bool {
        self.handles.is_empty()
    }
}

/// The default number of workers: one per core.
pub fn default_count() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}
