//! Debounce with a quiet period and a maximum wait: a burst of changes ends
//! when nothing happened for `quiet`, or at the latest `max_wait` after its
//! first change, so that a steady stream of writes cannot postpone a restart
//! forever.

use std::path::PathBuf;
use std::time::{Duration, Instant};

#[derive(Debug)]
pub struct Debounce {
    quiet: Duration,
    max_wait: Duration,
    first: Option<Instant>,
    last: Option<Instant>,
    paths: Vec<PathBuf>,
}

impl Debounce {
    pub fn new(quiet: Duration, max_wait: Duration) -> Self {
        Debounce {
            quiet,
            max_wait: max_wait.max(quiet),
            first: None,
            last: None,
            paths: Vec::new(),
        }
    }

    /// Records a relevant change seen at `now`.
    pub fn push(&mut self, now: Instant, path: PathBuf) {
        self.first.get_or_insert(now);
        self.last = Some(now);
        if !self.paths.contains(&path) {
            self.paths.push(path);
        }
    }

    /// When the pending burst is due, if one is pending.
    pub fn deadline(&self) -> Option<Instant> {
        let (first, last) = (self.first?, self.last?);
        Some((last + self.quiet).min(first + self.max_wait))
    }

    /// The burst's paths if it is due at `now`, resetting for the next one.
    pub fn take_due(&mut self, now: Instant) -> Option<Vec<PathBuf>> {
        if self.deadline()? > now {
            return None;
        }
        self.first = None;
        self.last = None;
        Some(std::mem::take(&mut self.paths))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn fires_after_the_quiet_period() {
        let t0 = Instant::now();
        let mut d = Debounce::new(50 * MS, 1000 * MS);
        assert_eq!(d.deadline(), None);
        d.push(t0, "a".into());
        d.push(t0 + 30 * MS, "b".into());
        d.push(t0 + 31 * MS, "a".into());
        assert_eq!(d.deadline(), Some(t0 + 81 * MS));
        assert_eq!(d.take_due(t0 + 80 * MS), None);
        assert_eq!(d.take_due(t0 + 81 * MS), Some(vec!["a".into(), "b".into()]));
        assert_eq!(d.deadline(), None);
    }

    #[test]
    fn a_stream_of_changes_fires_at_max_wait() {
        let t0 = Instant::now();
        let mut d = Debounce::new(50 * MS, 200 * MS);
        for i in 0..100 {
            d.push(t0 + i * 10 * MS, "a".into());
            if t0 + i * 10 * MS >= t0 + 200 * MS {
                break;
            }
        }
        assert_eq!(d.deadline(), Some(t0 + 200 * MS));
        assert!(d.take_due(t0 + 200 * MS).is_some());
    }

    #[test]
    fn max_wait_is_never_below_the_quiet_period() {
        let t0 = Instant::now();
        let mut d = Debounce::new(50 * MS, 10 * MS);
        d.push(t0, "a".into());
        assert_eq!(d.deadline(), Some(t0 + 50 * MS));
    }
}
