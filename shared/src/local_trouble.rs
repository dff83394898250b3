//! Telling this process's own shortage from a peer's failure: an error that
//! says we are out of descriptors, buffers, memory or local ports is not the
//! peer's fault, so it must not mark an instance unhealthy (discovery's checks)
//! or cool it down (the gateway's connects). Otherwise a flood of idle
//! sockets empties the fleet.

use std::io;

/// Whether `e` says this process is short of something, not that the peer is unwell.
pub fn is_local_trouble(e: &io::Error) -> bool {
    use nix::errno::Errno;
    e.raw_os_error().is_some_and(|n| {
        [
            Errno::EMFILE,
            Errno::ENFILE,
            Errno::ENOBUFS,
            Errno::ENOMEM,
            Errno::EADDRNOTAVAIL,
        ]
        .iter()
        .any(|x| *x as i32 == n)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn descriptor_and_port_shortages_are_ours_a_refusal_is_not() {
        assert!(is_local_trouble(&io::Error::from_raw_os_error(
            nix::errno::Errno::EMFILE as i32
        )));
        assert!(is_local_trouble(&io::Error::from_raw_os_error(
            nix::errno::Errno::EADDRNOTAVAIL as i32
        )));
        assert!(!is_local_trouble(&io::Error::from_raw_os_error(
            nix::errno::Errno::ECONNREFUSED as i32
        )));
        assert!(!is_local_trouble(&io::Error::from(io::ErrorKind::TimedOut)));
    }
}
