//! Facts about this host and its processes that runtimes use to tell a live
//! owner from a dead one: process start times (so a recycled pid is not
//! mistaken for the original), the host's identity, random ids.

/// True when `pid` runs and started at `start` (clock ticks since boot), so a
/// recycled pid is not mistaken for the original owner.
pub fn process_alive(pid: u32, start: &str) -> bool {
    match process_start_time(pid) {
        Some(s) => s == start,
        None => false,
    }
}

pub fn process_start_time(pid: u32) -> Option<String> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may contain spaces and parentheses: fields are counted
    // after its closing parenthesis. starttime is field 22; after ") " comes field 3.
    let rest = &stat[stat.rfind(')')? + 2..];
    rest.split_whitespace().nth(19).map(str::to_string)
}

pub fn host_identity() -> String {
    let machine = read_trimmed("/etc/machine-id").unwrap_or_default();
    let hostname = read_trimmed("/proc/sys/kernel/hostname").unwrap_or_default();
    format!("{machine}/{hostname}")
}

pub fn read_trimmed(path: &str) -> Option<String> {
    std::fs::read_to_string(path)
        .ok()
        .map(|s| s.trim().to_string())
}

/// 128 random bits as hex, from the kernel's CSPRNG when readable.
pub fn random_id() -> String {
    use std::io::Read;
    let mut buf = [0u8; 16];
    let ok = std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut buf))
        .is_ok();
    if !ok {
        for b in &mut buf {
            *b = fastrand::u8(..);
        }
    }
    hex::encode(buf)
}
