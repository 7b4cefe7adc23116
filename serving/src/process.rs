//! What this process itself holds: its resident memory, for status and metrics (a
//! growing RSS beside a small speed state is the first sign of an unbounded cache).

/// The process's resident set size in bytes (`VmRSS` of `/proc/self/status`); `None`
/// where the kernel does not report it (not Linux).
pub fn resident_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    vm_rss(&status)
}

/// `VmRSS` of a `/proc/<pid>/status` text, in bytes.
fn vm_rss(status: &str) -> Option<u64> {
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kib * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_vm_rss_in_bytes() {
        let status = "Name:\ttributary\nVmPeak:\t  900 kB\nVmRSS:\t   12345 kB\nThreads:\t4\n";
        assert_eq!(vm_rss(status), Some(12345 * 1024));
        assert_eq!(vm_rss("Name:\tx\n"), None);
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn memory_the_process_touches_shows_in_its_resident_size() {
        let before = resident_bytes().expect("Linux reports VmRSS");
        let held = vec![7u8; 64 << 20];
        let after = resident_bytes().unwrap();
        assert!(
            after >= before + (48 << 20),
            "64 MiB written, RSS {before} -> {after}"
        );
        assert_eq!(
            held.iter().map(|&b| u64::from(b)).sum::<u64>(),
            7 * (64 << 20)
        );
    }
}
