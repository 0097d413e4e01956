//! Applying a new set of specs (a project file edit or an update from the
//! caller): only what changed changes.

use std::collections::BTreeMap;

use super::{AfterStop, ReloadCause, Session, SessionEvent, Slot, check_names};
use crate::supervise::ProcessSpec;

impl<R, E> Session<R, E>
where
    R: FnMut() -> Result<Vec<ProcessSpec>, String>,
    E: FnMut(&SessionEvent),
{
    /// Applies new specs: only what changed changes. Watchers are built
    /// first, so a failure leaves the running state untouched.
    pub(super) fn reconcile(&mut self, specs: Vec<ProcessSpec>, cause: ReloadCause) {
        if self.shutdown.is_some() {
            return;
        }
        if let Err(err) = check_names(&specs) {
            self.emit(SessionEvent::ReloadFailed {
                error: err.to_string(),
            });
            return;
        }
        let mut new_watchers = BTreeMap::new();
        for spec in &specs {
            let rebuild = match self.slots.get(&spec.name) {
                Some(slot) => slot.spec.watch_changed(spec),
                None => true,
            };
            if rebuild {
                match self.watcher_for(spec) {
                    Ok(watcher) => {
                        new_watchers.insert(spec.name.clone(), watcher);
                    }
                    Err(err) => {
                        self.emit(SessionEvent::ReloadFailed {
                            error: format!("process {}: {err}", spec.name),
                        });
                        return;
                    }
                }
            }
        }
        let (mut started, mut restarted, mut stopped) = (Vec::new(), Vec::new(), Vec::new());
        let keep: Vec<&str> = specs.iter().map(|s| s.name.as_str()).collect();
        let gone: Vec<String> = self
            .slots
            .keys()
            .filter(|name| !keep.contains(&name.as_str()))
            .cloned()
            .collect();
        for name in gone {
            stopped.push(name.clone());
            let running = self.slots.get(&name).is_some_and(|s| s.running.is_some());
            if running {
                if let Some(slot) = self.slots.get_mut(&name) {
                    slot.watcher = None;
                }
                self.stop(&name, AfterStop::Remove);
            } else {
                self.slots.remove(&name);
            }
        }
        for spec in specs {
            let name = spec.name.clone();
            let new_watcher = new_watchers.remove(&name);
            match self.slots.get_mut(&name) {
                None => {
                    let (watch_id, watcher) = new_watcher.unwrap_or((0, None));
                    self.slots.insert(
                        name.clone(),
                        Slot {
                            spec,
                            run_id: 0,
                            watch_id,
                            watcher,
                            running: None,
                            next: None,
                            after_stop: None,
                            attempts: 0,
                        },
                    );
                    started.push(name.clone());
                    self.spawn(&name);
                }
                Some(slot) => {
                    let restart = slot.spec.needs_restart(&spec);
                    if let Some((watch_id, watcher)) = new_watcher {
                        slot.watch_id = watch_id;
                        slot.watcher = watcher;
                    }
                    slot.spec = spec;
                    if restart {
                        // Prepared with the old spec.
                        slot.next = None;
                        restarted.push(name.clone());
                        slot.attempts = 0;
                        if slot.running.is_some() {
                            self.stop(&name, AfterStop::Restart);
                        } else {
                            self.spawn(&name);
                        }
                    }
                }
            }
        }
        // An update that changes nothing (e.g. the env of an intercept no
        // process uses) is not worth a line.
        let quiet = cause == ReloadCause::Update
            && started.is_empty()
            && restarted.is_empty()
            && stopped.is_empty();
        if quiet {
            return;
        }
        self.emit(SessionEvent::Reloaded {
            cause,
            started,
            restarted,
            stopped,
        });
    }
}
