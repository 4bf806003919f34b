//! What the kernel says a process or thread used: /proc, getrusage, thread CPU clocks.

use std::time::Duration;

use crate::Result;

/// A `kB` field of /proc/<pid>/status (VmRSS, VmHWM …), in KiB.
pub fn status_kib(pid: u32, field: &str) -> Result<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let line = text
        .lines()
        .find(|line| line.starts_with(&format!("{field}:")))
        .ok_or_else(|| format!("{field} missing from /proc/{pid}/status"))?;
    let value = line
        .split_whitespace()
        .nth(1)
        .ok_or_else(|| format!("no value in {line:?}"))?;
    Ok(value.parse()?)
}

/// Resident memory split as /proc/<pid>/smaps_rollup gives it: (Rss, Anonymous) in KiB;
/// the rest of Rss is file-backed (the binary's own code and data, mapped from disk).
pub fn rss_split_kib(pid: u32) -> Result<(u64, u64)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup"))?;
    let field = |name: &str| -> Result<u64> {
        let line = text
            .lines()
            .find(|line| line.starts_with(&format!("{name}:")))
            .ok_or_else(|| format!("{name} missing from /proc/{pid}/smaps_rollup"))?;
        Ok(line
            .split_whitespace()
            .nth(1)
            .ok_or_else(|| format!("no value in {line:?}"))?
            .parse()?)
    };
    Ok((field("Rss")?, field("Anonymous")?))
}

/// CPU time of a child process, every thread, at nanosecond resolution. /proc's 10 ms
/// ticks were ±0.17 ms per poll over a two-minute window of 60 polls.
pub fn process_cpu(pid: u32) -> Result<Duration> {
    let mut clock: libc::clockid_t = 0;
    // SAFETY: plain out-parameter; the child is alive until stop_child.
    let found = unsafe { libc::clock_getcpuclockid(i32::try_from(pid)?, &mut clock) };
    if found != 0 {
        return Err(format!("clock_getcpuclockid({pid}) failed: {found}").into());
    }
    let mut time = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `time` is ours to write.
    if unsafe { libc::clock_gettime(clock, &mut time) } != 0 {
        return Err(format!("clock_gettime for process {pid} failed").into());
    }
    Ok(Duration::new(
        u64::try_from(time.tv_sec)?,
        u32::try_from(time.tv_nsec)?,
    ))
}

/// CPU time of every waited-for child process, at microsecond resolution.
pub fn children_cpu() -> Duration {
    // SAFETY: getrusage writes into the zeroed struct we own.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut usage) };
    let micros = |t: libc::timeval| t.tv_sec as u64 * 1_000_000 + t.tv_usec as u64;
    Duration::from_micros(micros(usage.ru_utime) + micros(usage.ru_stime))
}

/// CPU time of this process's thread `tid`, at nanosecond resolution: Linux's
/// per-thread CPU clock, whose id is built as glibc's `pthread_getcpuclockid` builds it
/// (the thread may have been started by code that does not hand out its handle).
pub fn tid_cpu(tid: libc::pid_t) -> Result<Duration> {
    clock_time((!tid << 3) | 6)
}

/// CPU time the calling thread has used, at nanosecond resolution.
pub fn this_thread_cpu() -> Result<Duration> {
    clock_time(libc::CLOCK_THREAD_CPUTIME_ID)
}

fn clock_time(clock: libc::clockid_t) -> Result<Duration> {
    let mut time = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: time is ours; an invalid clock id is an error return, not UB.
    if unsafe { libc::clock_gettime(clock, &mut time) } != 0 {
        return Err(format!("clock_gettime({clock}) failed").into());
    }
    Ok(Duration::new(time.tv_sec as u64, time.tv_nsec as u32))
}

/// The id of this process's thread named `name` (its `comm`), if one runs.
pub fn thread_named(name: &str) -> Result<Option<libc::pid_t>> {
    for entry in std::fs::read_dir("/proc/self/task")? {
        let entry = entry?;
        let Ok(comm) = std::fs::read_to_string(entry.path().join("comm")) else {
            continue; // the thread ended meanwhile
        };
        if comm.trim_end() == name {
            return Ok(entry.file_name().to_str().and_then(|tid| tid.parse().ok()));
        }
    }
    Ok(None)
}
