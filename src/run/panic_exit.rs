//! A panic anywhere in the agent ends the process, naming the core task that panicked:
//! one path for builds that unwind (the tests) and the shipped one that aborts.

use std::sync::Mutex;

use tracing::error;

/// The running core tasks by id, for the panic hook (a few entries per agent).
static TASK_NAMES: Mutex<Vec<(tokio::task::Id, &'static str)>> = Mutex::new(Vec::new());

/// Makes any panic end the process with exit code 1 after one error line naming the core
/// task that panicked and the panic's message, as [`super::supervise`] names a task that
/// ended. The same path whether the build unwinds (tests) or aborts (the shipped `ship`
/// profile): the hook runs before either. Queued events and webhook posts are not
/// flushed; Kubernetes restarts the agent. The default hook runs too, so `RUST_BACKTRACE`
/// works as before (docs/PERFORMANCE.md says what the stripped binary prints).
pub(super) fn exit_on_panic() {
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        // try_lock: the panicking thread may hold the registry (never while panicking
        // today, but a deadlock here would keep a dead agent running).
        let task = tokio::task::try_id().and_then(|current| {
            TASK_NAMES.try_lock().ok().and_then(|names| {
                names
                    .iter()
                    .find(|(id, _)| *id == current)
                    .map(|(_, name)| *name)
            })
        });
        let message = info.payload_as_str().unwrap_or("(no message)");
        let place = info
            .location()
            .map(|at| format!(" at {}:{}", at.file(), at.line()))
            .unwrap_or_default();
        let task = match task {
            Some(name) => format!("the {name}"),
            // The monitor's polls run on a thread of their own, outside any task.
            None if std::thread::current().name() == Some(crate::monitor::POLL_THREAD_NAME) => {
                format!(
                    "the IMDS monitor's {} thread",
                    crate::monitor::POLL_THREAD_NAME
                )
            }
            None => "agent".to_owned(),
        };
        error!("{task} panicked{place}: {message}: exiting so that Kubernetes restarts the agent");
        default_hook(info);
        std::process::exit(1);
    }));
}

pub(super) fn name_task(id: tokio::task::Id, name: &'static str) {
    if let Ok(mut names) = TASK_NAMES.lock() {
        names.push((id, name));
    }
}

pub(super) fn forget_task(id: tokio::task::Id) {
    if let Ok(mut names) = TASK_NAMES.lock() {
        names.retain(|(named, _)| *named != id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::run::{core_task, how_it_ended};

    /// Set in the child process of the test below.
    const PANIC_CHILD: &str = "SPOT_GUARD_TEST_PANIC_CHILD";

    /// This test binary, run again as a child, installs the hook `run` installs and panics
    /// in a core task; the child must exit 1 with the task and the message in its log.
    #[test]
    fn a_panicked_task_ends_the_process_naming_the_task_and_its_message() {
        if std::env::var_os(PANIC_CHILD).is_some() {
            crate::logging::init("info", false).expect("logging");
            exit_on_panic();
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            let outcome = runtime.block_on(async {
                let mut task = core_task("IMDS monitor", false, async {
                    let items: Vec<u32> = Vec::new();
                    // A real panic, as a bad index in a task would raise.
                    let _ = items.get(3).copied().expect("the fourth item");
                    Ok::<(), std::convert::Infallible>(())
                });
                how_it_ended((&mut task.handle).await)
            });
            println!("the process survived the panic: {outcome}");
            return;
        }
        let output = std::process::Command::new(std::env::current_exe().expect("test binary"))
            .args([
                "--exact",
                "run::panic_exit::tests::a_panicked_task_ends_the_process_naming_the_task_and_its_message",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(PANIC_CHILD, "1")
            .output()
            .expect("child runs");
        let log = String::from_utf8_lossy(&output.stdout);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(1), "{log}\n{stderr}");
        let line = log
            .lines()
            .find(|line| line.contains("panicked"))
            .unwrap_or_else(|| panic!("no panic line in the log:\n{log}"));
        assert!(line.contains("ERROR"), "{line}");
        assert!(
            line.contains("the IMDS monitor panicked at src/run/panic_exit.rs:"),
            "{line}"
        );
        assert!(line.contains("the fourth item"), "{line}");
        assert!(!log.contains("survived"), "{log}");
    }
}
