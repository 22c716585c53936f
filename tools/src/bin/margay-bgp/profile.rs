//! Where a speaker's time and memory go, as one JSON object: the phases of
//! the route pipeline (decode → RIB → FIB queue → kernel) from the
//! speaker's and the FIB writer's counters, the RIB's structures by kind,
//! and the process's heap and RSS. `margay-bgp` puts it in its status file
//! (`profile`); the load benchmark prints it next to its figures.

use bgp::driver::SpeakerStats;
use bgp::rib::memory::{RibMemory, Usage};
use serde_json::{Value, json};

use node_agent::dataplane::fib::FibStats;

/// The process's malloc heap: bytes in use and bytes held from the system.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Heap {
    /// Allocated and not freed (small blocks and mmap'd ones).
    pub in_use: usize,
    /// Held from the system (the main arena and mmap'd blocks).
    pub held: usize,
}

/// The heap as glibc's malloc sees it now.
#[allow(unsafe_code)]
pub fn heap() -> Heap {
    // SAFETY: mallinfo2 only reads the allocator's statistics.
    let m = unsafe { libc::mallinfo2() };
    Heap {
        in_use: m.uordblks + m.hblkhd,
        held: m.arena + m.hblkhd,
    }
}

/// (current, peak) resident set in bytes, from /proc/self/status.
pub fn rss() -> Option<(usize, usize)> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let kb = |key: &str| -> Option<usize> {
        s.lines()
            .find_map(|l| l.strip_prefix(key))?
            .split_whitespace()
            .next()?
            .parse::<usize>()
            .ok()
            .map(|k| k * 1024)
    };
    Some((kb("VmRSS:")?, kb("VmHWM:")?))
}

fn usage(u: &Usage) -> Value {
    json!({"count": u.count, "slots": u.slots, "bytes": u.bytes})
}

/// The breakdown: seconds per phase, counts, bytes by kind (the RIB's and
/// the heap's as last measured, when given).
pub fn json(speaker: &SpeakerStats, fib: &FibStats, quiet: Option<(&RibMemory, Heap)>) -> Value {
    let (rss, hwm) = rss().unwrap_or((0, 0));
    let (rib, h) = (quiet.map(|q| q.0), quiet.map(|q| q.1));
    json!({
        "time": {
            "decode_s": speaker.decode.as_secs_f64(),
            "messages": speaker.messages,
            "wait_rib_queue_s": speaker.to_rib_wait.as_secs_f64(),
            "rib_s": speaker.rib.as_secs_f64(),
            "export_s": speaker.export.as_secs_f64(),
            "wait_fib_queue_s": speaker.to_fib_wait.as_secs_f64(),
            "fib_changes": speaker.fib_changes,
            "fib_s": fib.total.as_secs_f64(),
            "fib_kernel_s": fib.kernel.as_secs_f64(),
            "fib_batches": fib.batches,
            "fib_routes": fib.routes,
        },
        "memory": {
            "rss": rss,
            "rss_peak": hwm,
            "heap_in_use": h.map(|h| h.in_use),
            "heap_held": h.map(|h| h.held),
            "rib": rib.map(|m| json!({
                "total": m.total(),
                "v4": usage(&m.v4),
                "v6": usage(&m.v6),
                "multi": usage(&m.multi),
                "intern_table": usage(&m.intern_table),
                "attrs": usage(&m.attrs),
                "adj_out": usage(&m.adj_out),
            })),
        },
    })
}
