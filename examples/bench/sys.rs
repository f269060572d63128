//! What the benchmarks read from the operating system: CPU time and RSS
//! from `/proc`, and a description of the machine for the JSON results.

use std::time::Instant;

use serde::Serialize;

/// Clock ticks per second, the unit of the CPU times in `/proc/<pid>/stat`.
fn clock_ticks() -> f64 {
    // SAFETY: sysconf only reads a configuration value.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if ticks > 0 { ticks as f64 } else { 100.0 }
}

/// User plus system CPU seconds used by process `pid` (this process when
/// `None`), or `None` where `/proc` is unreadable.
pub fn cpu_seconds(pid: Option<u32>) -> Option<f64> {
    let path = match pid {
        Some(pid) => format!("/proc/{pid}/stat"),
        None => "/proc/self/stat".to_owned(),
    };
    let stat = std::fs::read_to_string(path).ok()?;
    // The fields after the parenthesised command name; utime and stime are
    // the 14th and 15th fields of the whole line.
    let rest = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) / clock_ticks())
}

/// User plus system CPU seconds used by thread `tid` of this process.
pub fn thread_cpu_seconds(tid: i64) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/self/task/{tid}/stat")).ok()?;
    let rest = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) / clock_ticks())
}

/// CPU seconds used by this process's threads whose name starts with
/// `prefix` (Linux truncates thread names to 15 bytes).
pub fn threads_cpu_seconds(prefix: &str) -> Option<f64> {
    let mut total = 0.0;
    for entry in std::fs::read_dir("/proc/self/task").ok()?.flatten() {
        let Some(tid) = entry
            .file_name()
            .to_str()
            .and_then(|t| t.parse::<i64>().ok())
        else {
            continue;
        };
        let comm = std::fs::read_to_string(entry.path().join("comm")).unwrap_or_default();
        if comm.trim_end().starts_with(prefix) {
            total += thread_cpu_seconds(tid).unwrap_or(0.0);
        }
    }
    Some(total)
}

/// The id of the calling thread.
pub fn thread_id() -> i64 {
    // SAFETY: gettid has no preconditions.
    i64::from(unsafe { libc::gettid() })
}

/// Resident set size of this process in bytes.
pub fn rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// CPU use of one process over a window, as a percentage of one core.
#[derive(Debug, Clone, Copy)]
pub struct CpuMeter {
    pid: Option<u32>,
    cpu: Option<f64>,
    at: Instant,
}

impl CpuMeter {
    /// Starts measuring process `pid` (this process when `None`).
    pub fn start(pid: Option<u32>) -> Self {
        Self {
            pid,
            cpu: cpu_seconds(pid),
            at: Instant::now(),
        }
    }

    /// CPU seconds used since the start.
    pub fn seconds(&self) -> Option<f64> {
        Some(cpu_seconds(self.pid)? - self.cpu?)
    }

    /// Percent of one core used since the start (200 = both of two cores).
    pub fn percent(&self) -> Option<f64> {
        let wall = self.at.elapsed().as_secs_f64().max(1e-9);
        Some(self.seconds()? / wall * 100.0)
    }
}

/// Busy and total jiffies of the whole machine, from `/proc/stat`.
fn machine_jiffies() -> Option<(u64, u64)> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let line = stat.lines().find(|l| l.starts_with("cpu "))?;
    let fields: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|f| f.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal (guest time is in user).
    let total: u64 = fields.iter().take(8).sum();
    let idle = fields.get(3)? + fields.get(4).copied().unwrap_or(0);
    Some((total - idle, total))
}

/// CPU use of the whole machine over a window.
#[derive(Debug, Clone, Copy)]
pub struct MachineMeter {
    start: Option<(u64, u64)>,
}

impl MachineMeter {
    pub fn start() -> Self {
        Self {
            start: machine_jiffies(),
        }
    }

    /// Busy share of all cores since the start, as percent of one core
    /// (200 = both of two cores busy); time stolen by the hypervisor counts
    /// as busy.
    pub fn percent(&self) -> Option<f64> {
        let (busy0, total0) = self.start?;
        let (busy1, total1) = machine_jiffies()?;
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
        let total = total1.saturating_sub(total0).max(1) as f64;
        Some(busy1.saturating_sub(busy0) as f64 / total * 100.0 * cores)
    }
}

/// The machine a run happened on.
#[derive(Debug, Clone, Serialize)]
pub struct Machine {
    /// Logical CPUs this process may use.
    pub cores: usize,
    /// Total memory, GiB.
    pub memory_gib: f64,
    /// CPU model name.
    pub cpu: String,
    /// Kernel release.
    pub kernel: String,
    /// 1-minute load average when the run started (other work on the machine).
    pub load_average_at_start: f64,
}

impl Machine {
    /// Reads the description from `/proc`; unknown parts are left empty.
    pub fn describe() -> Self {
        let read = |path: &str| std::fs::read_to_string(path).unwrap_or_default();
        let memory_kib: f64 = read("/proc/meminfo")
            .lines()
            .find(|l| l.starts_with("MemTotal:"))
            .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
            .unwrap_or(0.0);
        let cpu = read("/proc/cpuinfo")
            .lines()
            .find(|l| l.starts_with("model name"))
            .and_then(|l| l.split_once(':'))
            .map(|(_, v)| v.trim().to_owned())
            .unwrap_or_default();
        Self {
            cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
            memory_gib: memory_kib / 1024.0 / 1024.0,
            cpu,
            kernel: read("/proc/sys/kernel/osrelease").trim().to_owned(),
            load_average_at_start: read("/proc/loadavg")
                .split_whitespace()
                .next()
                .and_then(|v| v.parse().ok())
                .unwrap_or(0.0),
        }
    }

    /// One line for tables: "2 cores, 23.4 GiB, <cpu>".
    pub fn line(&self) -> String {
        format!(
            "{} cores, {:.0} GiB, {}, Linux {} (load average {:.2} at start)",
            self.cores, self.memory_gib, self.cpu, self.kernel, self.load_average_at_start
        )
    }
}

/// The commit the benchmark was built from, if git knows it.
pub fn git_commit() -> Option<String> {
    let out = std::process::Command::new("git")
        .args(["rev-parse", "--short", "HEAD"])
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// Parses a CPU list as `taskset -c` takes it: `0`, `0,1`, `0-3,6`.
pub fn parse_cpus(text: &str) -> anyhow::Result<Vec<usize>> {
    let mut cpus = Vec::new();
    for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let number = |n: &str| {
            n.trim()
                .parse::<usize>()
                .map_err(|_| anyhow::anyhow!("{text:?} is not a CPU list like 0 or 0,1 or 0-3"))
        };
        match part.split_once('-') {
            Some((from, to)) => cpus.extend(number(from)?..=number(to)?),
            None => cpus.push(number(part)?),
        }
    }
    cpus.sort_unstable();
    cpus.dedup();
    if cpus.is_empty() {
        anyhow::bail!("{text:?} names no CPU");
    }
    if let Some(&too_high) = cpus.iter().find(|&&c| c >= libc::CPU_SETSIZE as usize) {
        anyhow::bail!("CPU {too_high} is out of range");
    }
    Ok(cpus)
}

/// Makes the process `command` starts run only on `cpus` (its threads
/// inherit the mask, and `available_parallelism` in it counts them).
pub fn pin_command(command: &mut std::process::Command, cpus: &[usize]) {
    use std::os::unix::process::CommandExt;
    let cpus = cpus.to_vec();
    // SAFETY: between fork and exec the closure only fills a cpu_set_t on
    // the stack and makes one system call; it allocates nothing and takes
    // no lock.
    unsafe {
        command.pre_exec(move || {
            let mut set: libc::cpu_set_t = std::mem::zeroed();
            for &cpu in &cpus {
                libc::CPU_SET(cpu, &mut set);
            }
            if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// Makes the process `command` starts run at scheduling priority `nice`
/// (-20 to 19; below 0 needs root): with other work on the same CPUs, a
/// low value keeps the measured process from sharing its CPU evenly with it.
/// The process gets a session of its own, and with it a scheduler
/// autogroup whose nice value is set too: with autogroups on (the kernel's
/// `sched_autogroup_enabled`), a process's own nice value only weighs
/// against the processes of its own session.
pub fn nice_command(command: &mut std::process::Command, nice: i32) {
    use std::os::unix::process::CommandExt;
    // Formatted before the fork: the closure must not allocate.
    let text = nice.to_string().into_bytes();
    // SAFETY: between fork and exec the closure only makes system calls
    // (setsid, open, write, close, setpriority) on data prepared before
    // the fork; it allocates nothing and takes no lock.
    unsafe {
        command.pre_exec(move || {
            if libc::setsid() < 0 {
                return Err(std::io::Error::last_os_error());
            }
            // Best effort: absent without autogroup support.
            let fd = libc::open(c"/proc/self/autogroup".as_ptr(), libc::O_WRONLY);
            if fd >= 0 {
                let _ = libc::write(fd, text.as_ptr().cast(), text.len());
                libc::close(fd);
            }
            if libc::setpriority(libc::PRIO_PROCESS, 0, nice) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// A CPU list for tables: `0`, `0,1`, or `any`.
pub fn cpus_label(cpus: Option<&[usize]>) -> String {
    match cpus {
        None => "any".to_owned(),
        Some(cpus) => cpus
            .iter()
            .map(usize::to_string)
            .collect::<Vec<_>>()
            .join(","),
    }
}
