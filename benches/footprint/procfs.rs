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

/// utime + stime of a process from /proc/<pid>/stat, in clock ticks.
pub fn cpu_ticks(pid: u32) -> Result<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command name, which is in parentheses and may hold spaces.
    let after = text
        .rsplit_once(')')
        .map(|(_, rest)| rest)
        .ok_or("malformed /proc stat")?;
    let fields: Vec<&str> = after.split_whitespace().collect();
    // `after` starts at field 3 (state); utime and stime are fields 14 and 15.
    let utime: u64 = fields.get(11).ok_or("no utime")?.parse()?;
    let stime: u64 = fields.get(12).ok_or("no stime")?.parse()?;
    Ok(utime + stime)
}

pub fn tick() -> Duration {
    // SAFETY: sysconf has no preconditions.
    let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    Duration::from_secs_f64(1.0 / per_second.max(1) as f64)
}

/// CPU time of every waited-for child process, at microsecond resolution.
pub fn children_cpu() -> Duration {
    // SAFETY: getrusage writes into the zeroed struct we own.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut usage) };
    let micros = |t: libc::timeval| t.tv_sec as u64 * 1_000_000 + t.tv_usec as u64;
    Duration::from_micros(micros(usage.ru_utime) + micros(usage.ru_stime))
}

/// CPU time a thread has used, at nanosecond resolution.
pub fn thread_cpu(thread: libc::pthread_t) -> Result<Duration> {
    let mut clock: libc::clockid_t = 0;
    // SAFETY: the thread is alive (joined only after the last reading).
    let found = unsafe { libc::pthread_getcpuclockid(thread, &mut clock) };
    if found != 0 {
        return Err(format!("pthread_getcpuclockid failed: {found}").into());
    }
    let mut time = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock is a valid clock id and time is ours.
    if unsafe { libc::clock_gettime(clock, &mut time) } != 0 {
        return Err("clock_gettime failed".into());
    }
    Ok(Duration::new(time.tv_sec as u64, time.tv_nsec as u32))
}
