//! Time comes into the cores as an argument: the shell reads the host clock
//! (`get_current_time`), tests pass a fixed instant.

/// Seconds since the Unix epoch, UTC.
pub type UnixSeconds = u64;

pub trait Clock {
    fn now(&self) -> UnixSeconds;
}

/// A clock that always reads the same instant, for tests and for a single request's
/// evaluation (read the host clock once, evaluate everything against that instant).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FixedClock(pub UnixSeconds);

impl Clock for FixedClock {
    fn now(&self) -> UnixSeconds {
        self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fixed_clock_reads_its_instant() {
        assert_eq!(FixedClock(1_700_000_000).now(), 1_700_000_000);
    }
}
