//! The wall clock both sides read, as a value: the real one on nodes and keyservers, a
//! hand-set one in tests, so a test can move a month forward without waiting a month.
//! Certificate checks in TLS read the same clock ([`TlsTime`]), so a test's keyserver and
//! agent agree on what is valid.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// Unix seconds now.
#[derive(Clone)]
pub struct Clock(Arc<dyn Fn() -> u64 + Send + Sync>);

impl Clock {
    /// The system's wall clock.
    pub fn system() -> Clock {
        Clock(Arc::new(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0)
        }))
    }

    /// A clock that reads `time` (tests set it).
    pub fn manual(time: Arc<AtomicU64>) -> Clock {
        Clock(Arc::new(move || time.load(Ordering::SeqCst)))
    }

    /// Unix seconds now.
    pub fn now(&self) -> u64 {
        (self.0)()
    }
}

impl std::fmt::Debug for Clock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Clock({})", self.now())
    }
}

impl Default for Clock {
    fn default() -> Clock {
        Clock::system()
    }
}

/// A [`Clock`] as rustls' time source.
#[cfg(feature = "tls")]
#[derive(Debug)]
pub struct TlsTime(pub Clock);

#[cfg(feature = "tls")]
impl rustls::time_provider::TimeProvider for TlsTime {
    fn current_time(&self) -> Option<rustls::pki_types::UnixTime> {
        Some(rustls::pki_types::UnixTime::since_unix_epoch(
            std::time::Duration::from_secs(self.0.now()),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_manual_clock_reads_what_the_test_sets() {
        let t = Arc::new(AtomicU64::new(1_000));
        let c = Clock::manual(t.clone());
        assert_eq!(c.now(), 1_000);
        t.store(2_000_000, Ordering::SeqCst);
        assert_eq!(c.clone().now(), 2_000_000);
        assert!(Clock::system().now() > 1_700_000_000);
    }
}
