//! Who is on the other end of an accepted Unix-socket connection: SO_PEERCRED's uid and pid, and, when the
//! pid is not visible here (the peer is in another PID namespace: a pod without `shareProcessNamespace`),
//! the peer's pidfd inode, which names the process just as well on a pidfs kernel (Linux 6.9+).

use crate::identity::Peer;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use tokio::net::UnixStream;

/// `PID_FS_MAGIC` (linux/magic.h): a pidfd on this filesystem has an inode unique to its process. On older
/// kernels pidfds are anonymous inodes that all share one number, so they name nothing.
const PID_FS_MAGIC: i64 = 0x5049_4446;

pub fn unix_peer(stream: &UnixStream) -> Peer {
    let cred = stream.peer_cred().ok();
    let pid = cred.and_then(|c| c.pid());
    let process_ino = match pid {
        Some(p) if p > 0 => None,
        _ => peer_pidfd_inode(stream.as_raw_fd()),
    };
    Peer::Unix { uid: cred.map(|c| c.uid()), pid, process_ino }
}

/// The inode of the peer's pidfd (SO_PEERPIDFD), if the kernel has both that option and pidfs.
fn peer_pidfd_inode(fd: RawFd) -> Option<u64> {
    let mut pidfd: libc::c_int = -1;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: `pidfd` and `len` are valid for writes of the sizes given; `fd` is a live socket.
    let rc =
        unsafe { libc::getsockopt(fd, libc::SOL_SOCKET, libc::SO_PEERPIDFD, (&raw mut pidfd).cast(), &raw mut len) };
    if rc != 0 || pidfd < 0 {
        return None;
    }
    // SAFETY: the kernel just gave us this descriptor; it is ours to close.
    let pidfd = unsafe { OwnedFd::from_raw_fd(pidfd) };
    // SAFETY: zeroed statfs/stat are valid out-parameters for fstatfs/fstat on a live descriptor.
    let mut fs: libc::statfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::fstatfs(pidfd.as_raw_fd(), &mut fs) } != 0 || fs.f_type as i64 != PID_FS_MAGIC {
        return None;
    }
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    if unsafe { libc::fstat(pidfd.as_raw_fd(), &mut st) } != 0 {
        return None;
    }
    Some(st.st_ino)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_visible_peer_is_named_by_its_pid() {
        let (a, _b) = UnixStream::pair().unwrap();
        match unix_peer(&a) {
            Peer::Unix { uid, pid, process_ino } => {
                assert_eq!(pid, Some(std::process::id() as i32));
                assert_eq!(uid, Some(unsafe { libc::geteuid() }));
                assert_eq!(process_ino, None, "the pid suffices");
            }
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn the_pidfd_inode_is_the_same_for_one_process_when_the_kernel_has_pidfs() {
        let (a, _b) = UnixStream::pair().unwrap();
        let (c, _d) = UnixStream::pair().unwrap();
        let (x, y) = (peer_pidfd_inode(a.as_raw_fd()), peer_pidfd_inode(c.as_raw_fd()));
        assert_eq!(x, y, "one process, one inode");
        let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
        let mut v = release.trim().split(['.', '-']).map(|p| p.parse::<u32>().unwrap_or(0));
        let (major, minor) = (v.next().unwrap_or(0), v.next().unwrap_or(0));
        if (major, minor) >= (6, 9) {
            assert!(x.is_some(), "kernel {release} has SO_PEERPIDFD and pidfs");
        }
    }
}
