//! What a run costs, from /proc: a process's CPU time and memory, and the
//! receive backlogs and drops of its sockets, sampled over a phase.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::report::{Report, round2};

/// CPU time and memory of a process, from /proc.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ProcSample {
    pub(crate) cpu: Duration,
    pub(crate) rss_kib: u64,
    peak_rss_kib: u64,
    pub(crate) at: Instant,
}

/// Clock ticks per second of /proc/PID/stat times (USER_HZ; 100 on Linux).
const USER_HZ: u64 = 100;

/// Samples process `pid` (or `self`); `None` if it cannot be read.
pub(crate) fn proc_sample(pid: &str) -> Option<ProcSample> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the parenthesised command name; utime and stime are the
    // 14th and 15th fields of the whole line.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kib = |key: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key)?.trim().strip_suffix("kB")?.trim().parse::<u64>().ok())
    };
    Some(ProcSample {
        cpu: Duration::from_millis((utime + stime) * 1000 / USER_HZ),
        rss_kib: kib("VmRSS:")?,
        peak_rss_kib: kib("VmHWM:")?,
        at: Instant::now(),
    })
}

/// The inodes of a process's sockets, from the links in /proc/PID/fd.
fn socket_inodes(pid: &str) -> HashSet<u64> {
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/fd")) else { return HashSet::new() };
    dir.filter_map(|e| {
        let link = std::fs::read_link(e.ok()?.path()).ok()?;
        link.to_str()?.strip_prefix("socket:[")?.strip_suffix(']')?.parse().ok()
    })
    .collect()
}

/// What the kernel holds for some sockets right now.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct SocketQueues {
    /// Bytes waiting in their receive queues (as the kernel accounts them).
    rx_bytes: u64,
    /// Datagrams dropped on arrival since each UDP socket was opened.
    drops: u64,
}

/// One of the kernel's socket tables, e.g. /proc/net/udp.
struct SocketTable {
    text: String,
    /// UDP tables end each line in a drop count; TCP tables do not.
    udp: bool,
}

/// The kernel's UDP socket tables for IPv4 and IPv6, and its TCP tables too
/// if asked (a TCP peer's run: they have a line per connection, so they
/// cost more to read).
fn socket_tables(tcp: bool) -> Vec<SocketTable> {
    let mut paths = vec![("/proc/net/udp", true), ("/proc/net/udp6", true)];
    if tcp {
        paths.extend([("/proc/net/tcp", false), ("/proc/net/tcp6", false)]);
    }
    paths
        .into_iter()
        .filter_map(|(p, udp)| Some(SocketTable { text: std::fs::read_to_string(p).ok()?, udp }))
        .collect()
}

/// Sums the receive queues (and, for UDP, drop counts) of the sockets with
/// these inodes, from the tables of the process's network namespace.
/// Columns: `sl local rem st tx_queue:rx_queue tr tm->when retrnsmt uid
/// timeout inode …`, queues in hex; a UDP line ends `ref pointer drops`.
/// A listening TCP socket's `rx_queue` is its accept backlog, not bytes, so
/// those lines are skipped. A TCP peer's tables have a line per connection:
/// no allocation per line.
fn socket_queues(tables: &[SocketTable], inodes: &HashSet<u64>) -> SocketQueues {
    /// TCP_LISTEN in the `st` column.
    const LISTEN: &str = "0A";
    let mut q = SocketQueues::default();
    for table in tables {
        for line in table.text.lines().skip(1) {
            let mut f = line.split_ascii_whitespace();
            let (Some(state), Some(queues), Some(inode)) = (f.nth(3), f.next(), f.nth(4)) else { continue };
            if !inode.parse::<u64>().is_ok_and(|i| inodes.contains(&i)) || (!table.udp && state == LISTEN) {
                continue;
            }
            let rx = queues.split_once(':').and_then(|(_, rx)| u64::from_str_radix(rx, 16).ok());
            q.rx_bytes += rx.unwrap_or(0);
            if table.udp {
                q.drops += f.nth(2).and_then(|d| d.parse::<u64>().ok()).unwrap_or(0);
            }
        }
    }
    q
}

/// The receive backlog (largest and mean) and the drops of the generator's
/// sockets and of the server's, sampled every 100 ms over a phase (every
/// second for a TCP peer). A burst of packets queues for a moment; a
/// generator whose queues stay full is the bottleneck, and the latency it
/// measures is then its own.
#[derive(Debug, Default, Clone, Copy)]
struct Backlog {
    samples: u64,
    own_sum_rx: u64,
    own_max_rx: u64,
    own_drops: (u64, u64),
    server_max_rx: u64,
    server_drops: (u64, u64),
}

struct BacklogWatch {
    seen: Arc<std::sync::Mutex<Backlog>>,
    task: tokio::task::JoinHandle<()>,
    /// The server is a TCP peer: no UDP drop counts to report.
    tcp: bool,
}

impl BacklogWatch {
    const EVERY: Duration = Duration::from_millis(100);

    fn start(server_pid: Option<String>, tcp: bool) -> Self {
        let seen = Arc::new(std::sync::Mutex::new(Backlog::default()));
        let shared = seen.clone();
        let task = tokio::spawn(async move {
            let mut first = true;
            // A TCP table has a line per connection: read it less often.
            let every = if tcp { Self::EVERY * 10 } else { Self::EVERY };
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
            loop {
                tick.tick().await;
                let tables = socket_tables(tcp);
                let own = socket_queues(&tables, &socket_inodes("self"));
                let server = server_pid.as_deref().map(|p| socket_queues(&tables, &socket_inodes(p)));
                let Ok(mut b) = shared.lock() else { return };
                if first {
                    b.own_drops.0 = own.drops;
                    b.server_drops.0 = server.map_or(0, |s| s.drops);
                    first = false;
                }
                b.samples += 1;
                b.own_sum_rx += own.rx_bytes;
                b.own_max_rx = b.own_max_rx.max(own.rx_bytes);
                b.own_drops.1 = own.drops;
                if let Some(s) = server {
                    b.server_max_rx = b.server_max_rx.max(s.rx_bytes);
                    b.server_drops.1 = s.drops;
                }
            }
        });
        Self { seen, task, tcp }
    }

    fn finish(self, report: &mut Report, server: bool) {
        self.task.abort();
        let Ok(b) = self.seen.lock().map(|b| *b) else { return };
        let kib = |bytes: u64| round2(bytes as f64 / 1024.0);
        let own_mean = b.own_sum_rx / b.samples.max(1);
        report.add("generator_rx_backlog_mean_kib", kib(own_mean));
        report.add("generator_rx_backlog_max_kib", kib(b.own_max_rx));
        if !self.tcp {
            report.add("generator_udp_drops", b.own_drops.1.saturating_sub(b.own_drops.0));
        }
        if server {
            report.add("server_rx_backlog_max_kib", kib(b.server_max_rx));
            if !self.tcp {
                report.add("server_udp_drops", b.server_drops.1.saturating_sub(b.server_drops.0));
            }
        }
        if own_mean >= GENERATOR_BEHIND_BYTES {
            report.warn(format!(
                "the generator fell behind: its sockets held {:.1} MiB unread on average (up to {:.1} MiB), so the latency measured here is partly its own",
                own_mean as f64 / (1 << 20) as f64,
                b.own_max_rx as f64 / (1 << 20) as f64
            ));
        }
    }
}

/// A mean receive backlog past which the generator, not the server, sets
/// the latency: a MiB of queued packets is tens of milliseconds of its work,
/// all the time.
const GENERATOR_BEHIND_BYTES: u64 = 1 << 20;

/// CPU and memory of the server (and of this process) over a phase, and the
/// sockets' backlogs.
pub(crate) struct Usage {
    pid: Option<String>,
    pub(crate) server: Option<ProcSample>,
    own: Option<ProcSample>,
    backlog: BacklogWatch,
}

impl Usage {
    /// Starts measuring the server `pid` (if known) and this process;
    /// `tcp` if the server is a TCP peer.
    pub(crate) fn start(pid: Option<&str>, tcp: bool) -> Self {
        let pid = pid.map(str::to_string);
        Self {
            server: pid.as_deref().and_then(proc_sample),
            own: proc_sample("self"),
            backlog: BacklogWatch::start(pid.clone(), tcp),
            pid,
        }
    }

    /// Adds the phase's figures; `deliveries` divides the server's CPU time.
    pub(crate) fn finish(self, report: &mut Report, deliveries: Option<u64>) {
        let secs = |a: &ProcSample, b: &ProcSample| b.at.duration_since(a.at).as_secs_f64().max(1e-9);
        if let (Some(a), Some(b)) = (self.server, self.pid.as_deref().and_then(proc_sample)) {
            let cpu = b.cpu.saturating_sub(a.cpu);
            report.add("server_cpu_s", round2(cpu.as_secs_f64()));
            report.add("server_cpu_pct", round2(100.0 * cpu.as_secs_f64() / secs(&a, &b)));
            if let Some(d) = deliveries.filter(|d| *d > 0) {
                report.add("server_cpu_us_per_delivery", round2(cpu.as_secs_f64() * 1e6 / d as f64));
            }
            report.add("server_rss_mib", round2(b.rss_kib as f64 / 1024.0));
            report.add("server_peak_rss_mib", round2(b.peak_rss_kib as f64 / 1024.0));
        }
        if let (Some(a), Some(b)) = (self.own, proc_sample("self")) {
            let cpu = b.cpu.saturating_sub(a.cpu);
            report.add("generator_cpu_pct", round2(100.0 * cpu.as_secs_f64() / secs(&a, &b)));
        }
        self.backlog.finish(report, self.pid.is_some());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two sockets of ours and one of another process, in the kernel's
    /// /proc/net/udp format (`udp4_format_sock`).
    const UDP: &str = "   sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode ref pointer drops
 1042: 0100007F:1151 00000000:0000 07 00000000:00012000 00:00000000 00000000     0        0 5551 2 0000000000000000 3
 1043: 00000000:A1B2 00000000:0000 07 00000000:00000800 00:00000000 00000000     0        0 5552 2 0000000000000000 0
 1044: 00000000:A1B3 00000000:0000 07 00000000:00fff000 00:00000000 00000000     0        0 9999 2 0000000000000000 7
";

    #[test]
    fn socket_queues_sum_the_backlog_and_drops_of_the_given_sockets_only() {
        let tables = vec![SocketTable { text: UDP.to_string(), udp: true }];
        let set = |i: &[u64]| i.iter().copied().collect::<HashSet<u64>>();
        let q = socket_queues(&tables, &set(&[5551, 5552]));
        assert_eq!(q, SocketQueues { rx_bytes: 0x12000 + 0x800, drops: 3 });
        assert_eq!(socket_queues(&tables, &set(&[9999])), SocketQueues { rx_bytes: 0xfff000, drops: 7 });
        assert_eq!(socket_queues(&tables, &set(&[1])), SocketQueues::default());
        // The same lines read as a TCP table: the last column is not a drop
        // count, and a listening socket (state 0A) has no byte backlog.
        let tcp = vec![SocketTable { text: UDP.to_string(), udp: false }];
        assert_eq!(socket_queues(&tcp, &set(&[5551])), SocketQueues { rx_bytes: 0x12000, drops: 0 });
        let listen = vec![SocketTable { text: UDP.replace(" 07 ", " 0A "), udp: false }];
        assert_eq!(socket_queues(&listen, &set(&[5551])), SocketQueues::default());
    }

    #[test]
    fn this_process_finds_its_own_udp_socket_and_its_backlog() {
        let socket = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
        let sender = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
        let inodes = socket_inodes("self");
        assert!(inodes.len() >= 2, "two sockets, found inodes {inodes:?}");
        let empty = socket_queues(&socket_tables(false), &inodes).rx_bytes;
        for _ in 0..10 {
            sender.send_to(&[7u8; 1000], socket.local_addr().expect("addr")).expect("send");
        }
        // Loopback delivers before send_to returns.
        let full = socket_queues(&socket_tables(false), &inodes).rx_bytes;
        assert!(full >= empty + 10 * 1000, "backlog grew from {empty} to {full}");
    }
}
