//! Whether this process's CPU time is held to a quota by its cgroup (a
//! container's CPU limit: cgroup v2's `cpu.max`, v1's `cpu.cfs_quota_us`).
//!
//! Under a quota an idle worker must sleep at once: time spent looking at
//! epoll ([`super::idle`]) is taken from the quota, and a worker that uses it
//! up is stopped until the next period with requests waiting.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

/// How often the answer is read again, in [`super::clock`] milliseconds: a
/// process may be moved to another group, or its limit changed, while it runs.
const RECHECK_MS: u64 = 1_000;

static HELD: AtomicBool = AtomicBool::new(false);
/// When the next look is due (0: never looked).
static NEXT: AtomicU64 = AtomicU64::new(0);

/// Whether the process is held to a CPU quota, as last read; read again at
/// most once a second, by whichever worker asks first.
pub(crate) fn held() -> bool {
    let now = super::clock();
    let next = NEXT.load(Ordering::Relaxed);
    if now >= next
        && NEXT
            .compare_exchange(next, now + RECHECK_MS, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
    {
        HELD.store(read().unwrap_or(false), Ordering::Relaxed);
    }
    HELD.load(Ordering::Relaxed)
}

/// Reads the process's groups and their limits; `None` where the files are
/// not there or not as expected (no cgroup file system: no quota).
fn read() -> Option<bool> {
    let groups = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    let dirs = quota_dirs(&groups, &mounts);
    Some(dirs.iter().any(|(dir, file)| {
        std::fs::read_to_string(dir.join(file)).is_ok_and(|text| limits(file, &text))
    }))
}

/// The directories whose quota file holds for this process, with that file's
/// name: its cpu group and every group above it, up to the mount's root.
fn quota_dirs(groups: &str, mounts: &str) -> Vec<(PathBuf, &'static str)> {
    let mut dirs = Vec::new();
    for line in groups.lines() {
        let mut parts = line.splitn(3, ':');
        let (Some(id), Some(controllers), Some(path)) = (parts.next(), parts.next(), parts.next())
        else {
            continue;
        };
        let (fstype, file) = if id == "0" && controllers.is_empty() {
            ("cgroup2", "cpu.max")
        } else if controllers.split(',').any(|c| c == "cpu") {
            ("cgroup", "cpu.cfs_quota_us")
        } else {
            continue;
        };
        let Some((root, mount)) = mount_of(mounts, fstype) else {
            continue;
        };
        // Inside a container the mount's root is the group itself.
        let relative = path.strip_prefix(root).unwrap_or(path);
        let mut dir = mount.join(relative.trim_start_matches('/'));
        loop {
            dirs.push((dir.clone(), file));
            if dir == mount || !dir.pop() || !dir.starts_with(&mount) {
                break;
            }
        }
    }
    dirs
}

/// The root and mount point of the `fstype` file system (v1: the one with
/// the cpu controller) in `/proc/self/mountinfo`.
fn mount_of<'m>(mounts: &'m str, fstype: &str) -> Option<(&'m str, PathBuf)> {
    mounts.lines().find_map(|line| {
        let (left, right) = line.split_once(" - ")?;
        let mut fields = left.split(' ');
        let root = fields.nth(3)?;
        let point = fields.next()?;
        let mut right = right.split(' ');
        let kind = right.next()?;
        let options = right.nth(1).unwrap_or("");
        let cpu = fstype == "cgroup2" || options.split(',').any(|o| o == "cpu");
        (kind == fstype && cpu).then(|| (root, Path::new(point).to_path_buf()))
    })
}

/// Whether a quota file's `text` sets a limit: v2 `"max 100000"` does not,
/// `"50000 100000"` does; v1 `-1` does not, `50000` does.
fn limits(file: &str, text: &str) -> bool {
    let first = text.split_whitespace().next().unwrap_or("max");
    match file {
        "cpu.max" => first != "max",
        _ => first.parse::<i64>().is_ok_and(|q| q > 0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const V1_MOUNTS: &str = "\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu,cpuacct rw,relatime - cgroup cgroup rw,cpu,cpuacct
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory";

    const V2_MOUNTS: &str = "\
25 30 0:22 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:9 - cgroup2 cgroup2 rw,nsdelegate";

    /// The quota files' paths.
    fn files(dirs: &[(PathBuf, &str)]) -> Vec<String> {
        dirs.iter()
            .map(|(d, f)| format!("{}/{f}", d.display()))
            .collect()
    }

    #[test]
    fn a_v1_group_and_its_parents_are_looked_at() {
        let groups = "4:memory:/a\n2:cpu,cpuacct:/bench/gateway\n0::/";
        assert_eq!(
            files(&quota_dirs(groups, V1_MOUNTS)),
            [
                "/sys/fs/cgroup/cpu,cpuacct/bench/gateway/cpu.cfs_quota_us",
                "/sys/fs/cgroup/cpu,cpuacct/bench/cpu.cfs_quota_us",
                "/sys/fs/cgroup/cpu,cpuacct/cpu.cfs_quota_us",
            ]
        );
    }

    #[test]
    fn a_v2_group_inside_a_container_starts_at_the_mounts_root() {
        let mounts = V2_MOUNTS.replace(" / /sys", " /kubepods/pod1 /sys");
        assert_eq!(
            files(&quota_dirs("0::/kubepods/pod1/app", &mounts)),
            ["/sys/fs/cgroup/app/cpu.max", "/sys/fs/cgroup/cpu.max"]
        );
        assert_eq!(quota_dirs("0::/", V2_MOUNTS).len(), 1);
    }

    #[test]
    fn no_cpu_controller_no_directories() {
        assert!(quota_dirs("4:memory:/a\n1:name=systemd:/", V1_MOUNTS).is_empty());
        assert!(quota_dirs("garbage", V1_MOUNTS).is_empty());
        assert!(
            quota_dirs("0::/", V1_MOUNTS).is_empty(),
            "no cgroup2 mounted"
        );
    }

    #[test]
    fn quota_files_are_read_as_the_kernel_writes_them() {
        assert!(!limits("cpu.max", "max 100000\n"));
        assert!(limits("cpu.max", "50000 100000\n"));
        assert!(!limits("cpu.cfs_quota_us", "-1\n"));
        assert!(limits("cpu.cfs_quota_us", "5000\n"));
        assert!(!limits("cpu.cfs_quota_us", ""));
    }

    #[test]
    fn this_process_is_read_without_error() {
        // Whatever this machine's groups are, the files parse (or are absent).
        let _ = read();
        let _ = held();
    }
}
