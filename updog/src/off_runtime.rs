//! Lets the blocking API be called from async code.
//!
//! The HTTP transport is `reqwest`'s blocking client, which refuses to wait on a thread that is
//! inside a tokio runtime (a panic in tokio that never names updog). An agent should call the
//! blocking API through `spawn_blocking`, but one that calls it straight from an async task
//! gets a working call too: the operation then runs on a plain scoped thread, and the calling
//! thread waits for it (blocking that task's worker, as any blocking call would). Outside a
//! runtime nothing changes: the work runs right here.

use std::sync::mpsc;

use crate::progress::ProgressEvent;

/// Whether this thread is inside a tokio runtime (an async task, or a `spawn_blocking` thread,
/// where moving the work is harmless).
fn in_runtime() -> bool {
    tokio::runtime::Handle::try_current().is_ok()
}

/// Runs `work`, on a plain thread when this one is inside a tokio runtime.
pub(crate) fn run<T: Send>(work: impl FnOnce() -> T + Send) -> T {
    if !in_runtime() {
        return work();
    }
    std::thread::scope(|scope| {
        scope
            .spawn(work)
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    })
}

/// Like [`run`] for work that reports progress: `progress` need not be `Sync`, so when the work
/// moves to another thread its events come back over a channel and `progress` is called here,
/// on the caller's thread, in order.
pub(crate) fn run_with_progress<T: Send>(
    progress: &dyn Fn(&ProgressEvent),
    work: impl FnOnce(&dyn Fn(&ProgressEvent)) -> T + Send,
) -> T {
    if !in_runtime() {
        return work(progress);
    }
    let (events, received) = mpsc::channel::<ProgressEvent>();
    std::thread::scope(|scope| {
        let worker = scope.spawn(move || {
            let send = move |event: &ProgressEvent| {
                // The receiver lives until the worker ends; a send cannot fail before that.
                let _ = events.send(event.clone());
            };
            work(&send)
        });
        // Ends when the worker drops its sender, i.e. when the work is over.
        for event in received {
            progress(&event);
        }
        worker
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::RefCell;

    #[test]
    fn events_reach_a_non_sync_callback_in_order_from_inside_a_runtime() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let seen = RefCell::new(Vec::new()); // not Sync
        let out = runtime.block_on(async {
            run_with_progress(&|e| seen.borrow_mut().push(e.clone()), |progress| {
                assert!(!in_runtime(), "the work runs outside the runtime");
                progress(&ProgressEvent::LoadingMetadata);
                progress(&ProgressEvent::Flipped {
                    set: bootpart::SetId::B,
                });
                7
            })
        });
        assert_eq!(out, 7);
        assert_eq!(
            *seen.borrow(),
            vec![
                ProgressEvent::LoadingMetadata,
                ProgressEvent::Flipped {
                    set: bootpart::SetId::B
                }
            ]
        );
    }

    #[test]
    fn outside_a_runtime_the_work_stays_on_this_thread() {
        let here = std::thread::current().id();
        assert_eq!(run(|| std::thread::current().id()), here);
    }
}
