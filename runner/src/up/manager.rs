//! Makes the cluster match the project file and keeps it so: resolves every
//! intercept before changing anything, installs the agents that are missing,
//! opens one session per agent pod, registers the intercepts, brings the
//! `to_pod` ports here, writes the env files, and on a new version of the
//! file changes only what changed. It also restores lost sessions.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use tpr_schema::{Intercept, Project};

use crate::k8s::{self, AgentSpec, Cluster, K8sError, Resolved, RolloutOptions};
use crate::tunnel::Hello;

use super::UpError;
use super::event::{EndReason, Events, UpEvent, WorkloadRef};
use super::interrupt::StartGuard;
use super::link::Link;
use super::plan;
use super::progress::Display;
use super::state::{InterceptState, PodState, State, StatePaths};

/// `namespace/Kind/name`: one link (a session per agent pod) per workload.
type WorkloadId = String;

/// How often the linked workloads and their pods are read: new pods get
/// the intercepts, template changes by others are noticed.
const OBSERVE_EVERY: Duration = Duration::from_millis(500);

/// How often the intercepts' Services are read again: a Service whose
/// port went away or changed its targetPort is noticed.
const RESOLVE_EVERY: Duration = Duration::from_secs(5);

/// How often "still reconnecting" is said.
const RECONNECTING_EVERY: Duration = Duration::from_secs(5);

/// An http intercept: its ports are installed as http ports.
fn is_http(i: &Intercept) -> bool {
    matches!(i.mechanism, tpr_schema::Mechanism::Http(_))
}

fn workload_id(r: &Resolved) -> WorkloadId {
    format!(
        "{}/{}",
        r.workload
            .metadata()
            .namespace
            .as_deref()
            .unwrap_or_default(),
        r.workload.display()
    )
}

/// An intercept that is registered.
struct Active {
    intercept: Intercept,
    link: WorkloadId,
    /// One per port of the intercept.
    resolved: Vec<Resolved>,
    preview: Option<Preview>,
}

/// An intercept's preview link: where it goes and its token (a secret).
#[derive(Clone)]
struct Preview {
    plan: super::preview::PreviewPlan,
    token: String,
}

impl Preview {
    fn url(&self) -> String {
        self.plan.url(&self.token)
    }
}

/// An intercept to register: resolved, its preview found (read-only).
struct Planned {
    intercept: Intercept,
    resolved: Vec<Resolved>,
    preview: Option<Preview>,
}

/// The cluster side of a running `tpr up`.
pub struct Manager {
    cluster: Cluster,
    install_id: String,
    hello: Hello,
    project: Option<Project>,
    links: BTreeMap<WorkloadId, Link>,
    active: BTreeMap<String, Active>,
    /// The agent the project file asks for (what drift is measured against).
    agent: AgentSpec,
    last_observed: Option<Instant>,
    last_resolved: Option<Instant>,
    /// When "still reconnecting" was last said, per workload.
    reconnecting_said: BTreeMap<WorkloadId, Instant>,
    /// Ctrl-C during the start-up stops its waits and rollouts.
    guard: StartGuard,
    paths: StatePaths,
    project_file: std::path::PathBuf,
    events: Events,
    /// The copies of the pods' mounted files (`TELEPRESENCE_ROOT`).
    volumes: super::volumes::Mirrors,
    /// During the first `apply`: an intercept whose process has a
    /// readiness check is reported ACTIVE once the process is ready.
    hold_until_ready: bool,
    /// Those reports, by process.
    held: Vec<(String, UpEvent)>,
    /// While a rollout's old pods stop: the ACTIVE reports of intercepts
    /// already registered on its new pods, said once the old pods are gone.
    defer_active: Option<Vec<UpEvent>>,
}

impl Manager {
    pub fn new(
        cluster: Cluster,
        install_id: String,
        paths: StatePaths,
        project_file: std::path::PathBuf,
        events: Events,
    ) -> Self {
        let hello = Hello {
            install_id: install_id.clone(),
            label: super::install_id::session_label(),
        };
        Manager {
            cluster,
            install_id,
            hello,
            project: None,
            links: BTreeMap::new(),
            active: BTreeMap::new(),
            agent: AgentSpec::default(),
            last_observed: None,
            last_resolved: None,
            reconnecting_said: BTreeMap::new(),
            guard: StartGuard::none(),
            paths,
            project_file,
            events,
            volumes: Default::default(),
            hold_until_ready: false,
            held: Vec::new(),
            defer_active: None,
        }
    }

    /// Holds the first ACTIVE reports of intercepts whose process has a
    /// readiness check until [`process_ready`](Self::process_ready).
    pub fn hold_until_ready(&mut self, hold: bool) {
        self.hold_until_ready = hold;
    }

    /// A process passed its readiness check: the intercepts it serves are
    /// reported ACTIVE.
    pub fn process_ready(&mut self, process: &str) {
        let (now, rest): (Vec<_>, Vec<_>) = std::mem::take(&mut self.held)
            .into_iter()
            .partition(|(p, _)| p == process);
        self.held = rest;
        for (_, event) in now {
            self.events.emit(event);
        }
    }

    /// Ties the start-up's waits and rollouts to Ctrl-C.
    pub fn with_guard(mut self, guard: StartGuard) -> Self {
        self.guard = guard;
        self
    }

    pub fn install_id(&self) -> &str {
        &self.install_id
    }

    pub fn cluster(&self) -> &Cluster {
        &self.cluster
    }

    /// Makes the intercepts match `project`. Every intercept is resolved
    /// first: an error there changes nothing. Returns whether any intercept
    /// changed.
    pub async fn apply(&mut self, project: &Project) -> Result<bool, UpError> {
        if let Some(old) = &self.project
            && old.cluster != project.cluster
        {
            return Err(UpError::ClusterChanged);
        }
        let context_ns = self.cluster.default_namespace().to_owned();
        // 1. Resolve what is new or changed (read-only).
        let mut todo: Vec<Planned> = Vec::new();
        for intercept in &project.intercepts {
            if self
                .active
                .get(&intercept.name)
                .is_some_and(|a| a.intercept == *intercept)
            {
                continue;
            }
            let ns = plan::namespace_of(project, intercept, &context_ns);
            let mut resolved = Vec::new();
            for port in &intercept.ports {
                let target = plan::target(intercept, &ns, port.service_port.as_ref());
                resolved.push(
                    self.guard
                        .run(async { Ok(k8s::resolve(&self.cluster, &target).await?) })
                        .await?,
                );
            }
            // Where its preview goes, also before anything changes.
            let plan = self
                .guard
                .run(super::preview::plan(&self.cluster, intercept, &resolved[0]))
                .await?;
            let preview = match plan {
                Some(plan) => Some(Preview {
                    token: super::preview::token(&self.install_id, &intercept.name)?,
                    plan,
                }),
                None => None,
            };
            todo.push(Planned {
                intercept: intercept.clone(),
                resolved,
                preview,
            });
        }
        for p in &todo {
            if let Some(preview) = &p.preview {
                self.events.emit(preview.plan.event(&p.intercept.name));
            }
        }
        let leaving_any = self.active.keys().any(|n| project.intercept(n).is_none());
        let changed = !todo.is_empty() || leaving_any;
        // 2. End what left the file or changed.
        let wanted: BTreeSet<&str> = project.intercepts.iter().map(|i| i.name.as_str()).collect();
        let leaving: Vec<String> = self
            .active
            .keys()
            .filter(|n| {
                !wanted.contains(n.as_str()) || todo.iter().any(|p| &p.intercept.name == *n)
            })
            .cloned()
            .collect();
        for name in leaving {
            let gone = !wanted.contains(name.as_str());
            self.end(&name).await?;
            if gone {
                // Its processes are restarted by the reload, without its env.
                let processes = self
                    .processes_of(&name)
                    .into_iter()
                    .filter(|p| project.processes.iter().any(|q| &q.name == p))
                    .collect();
                self.events.emit(UpEvent::InterceptEnded {
                    name,
                    reason: EndReason::LeftFile,
                    detail: None,
                    processes,
                });
            }
        }
        // 3. Install and connect per workload, then register.
        let agent = plan::agent_spec(project);
        self.agent = agent.clone();
        let mut by_workload: BTreeMap<WorkloadId, Vec<Planned>> = BTreeMap::new();
        for planned in todo {
            let id = workload_id(&planned.resolved[0]);
            by_workload.entry(id).or_default().push(planned);
        }
        for (id, items) in by_workload {
            let workload = items[0].resolved[0].workload.clone();
            self.events.emit(UpEvent::Installing {
                workload: WorkloadRef::of(&workload),
            });
            let mut requests: Vec<_> = items
                .iter()
                .flat_map(|p| {
                    let http = is_http(&p.intercept);
                    p.resolved.iter().map(move |r| r.port_request(http))
                })
                .collect();
            requests.extend(self.active.values().filter(|a| a.link == id).flat_map(|a| {
                let http = is_http(&a.intercept);
                a.resolved.iter().map(move |r| r.port_request(http))
            }));
            let progress = Display::for_events(self.events);
            let started = Instant::now();
            self.guard.check()?;
            self.guard.leftover(Some(format!(
                "{} may be left mid-rollout with the agent; `tpr uninstall {} -n {}` restores it",
                workload.display(),
                workload.name(),
                workload.metadata().namespace.as_deref().unwrap_or_default()
            )));
            let rollout = RolloutOptions {
                cancel: self.guard.token(),
                ..RolloutOptions::default()
            };
            let new_pods_ready = rollout.new_pods_ready.clone();
            let cluster = self.cluster.clone();
            let install = k8s::install(&cluster, &workload, &requests, &agent, &rollout, &progress);
            tokio::pin!(install);
            // Once the new pods serve, the intercepts are registered on them
            // while the rollout waits for the old pods to go: traffic the
            // Service sends to the new pods reaches the workstation at once.
            // ACTIVE is still said once the old pods are gone.
            let early = tokio::select! {
                biased;
                outcome = &mut install => Some(outcome),
                () = new_pods_ready.cancelled() => None,
            };
            let (outcome, pending) = match early {
                Some(outcome) => (outcome, Some(items)),
                None => {
                    self.defer_active = Some(Vec::new());
                    let connected = self.connect(project, &id, &workload, items, true).await;
                    let outcome = install.await;
                    if let Err(e) = connected {
                        self.defer_active = None;
                        self.guard.leftover(None);
                        progress.finish();
                        outcome?;
                        return Err(e);
                    }
                    (outcome, None)
                }
            };
            self.guard.leftover(None);
            progress.finish();
            let deferred = self.defer_active.take();
            let outcome = outcome?;
            if outcome.changed {
                self.events.emit(UpEvent::Installed {
                    workload: WorkloadRef::of(&workload),
                    seconds: (started.elapsed().as_secs_f64() * 10.0).round() / 10.0,
                });
            }
            match pending {
                Some(items) => {
                    self.connect(project, &id, &workload, items, outcome.changed)
                        .await?
                }
                None => {
                    for event in deferred.unwrap_or_default() {
                        self.events.emit(event);
                    }
                }
            }
        }
        self.sync_to_pod().await?;
        // 4. Drop agents nothing intercepts any more (they stay installed).
        let used: BTreeSet<WorkloadId> = self.active.values().map(|a| a.link.clone()).collect();
        let idle: Vec<WorkloadId> = self
            .links
            .keys()
            .filter(|k| !used.contains(*k))
            .cloned()
            .collect();
        for id in idle {
            if let Some(link) = self.links.remove(&id) {
                link.close().await;
            }
        }
        self.project = Some(project.clone());
        // Copied before the processes start.
        self.sync_volumes().await?;
        self.write_env_files()?;
        self.write_state();
        Ok(changed)
    }

    /// Connects to the workload's agent pods (again, when `replaced`: the
    /// old session's pods are gone or going) and registers `items` on
    /// them, with the intercepts already on the workload.
    async fn connect(
        &mut self,
        project: &Project,
        id: &WorkloadId,
        workload: &k8s::Workload,
        items: Vec<Planned>,
        replaced: bool,
    ) -> Result<(), UpError> {
        if replaced && let Some(old) = self.links.remove(id) {
            old.close().await;
        }
        if !self.links.contains_key(id) {
            let link = self
                .guard
                .run(Link::open(
                    &self.cluster,
                    workload.clone(),
                    self.hello.clone(),
                ))
                .await?;
            self.links.insert(id.clone(), link);
            // Intercepts already on this workload move to the new session.
            let existing: Vec<String> = self
                .active
                .iter()
                .filter(|(_, a)| a.link == *id)
                .map(|(n, _)| n.clone())
                .collect();
            for name in existing {
                let a = self.active.remove(&name).expect("listed");
                let again = Planned {
                    intercept: a.intercept,
                    resolved: a.resolved,
                    preview: a.preview,
                };
                self.register(project, id, again, false).await?;
            }
        }
        for planned in items {
            self.register(project, id, planned, true).await?;
        }
        Ok(())
    }

    async fn register(
        &mut self,
        project: &Project,
        id: &WorkloadId,
        planned: Planned,
        print: bool,
    ) -> Result<(), UpError> {
        let Planned {
            intercept,
            resolved,
            preview,
        } = planned;
        let wait = plan::connection_wait(project, &intercept.name);
        let token = preview.as_ref().map(|p| p.plan.token(p.token.clone()));
        let link = self.links.get_mut(id).expect("connected");
        for (index, r) in resolved.iter().enumerate() {
            link.create(plan::intercept_spec(
                &intercept,
                index,
                r,
                &self.install_id,
                wait,
                token.as_ref(),
            ))
            .await?;
        }
        if print {
            let ids: Vec<String> = resolved
                .iter()
                .map(|r| r.service_port.identifier())
                .collect();
            let event = plan::active(
                &intercept,
                WorkloadRef::of(&resolved[0].workload),
                &ids,
                &self.install_id,
                &link.pod_names(),
                preview.as_ref().map(Preview::url),
            );
            // At the start, ACTIVE waits for the process that serves the
            // intercept to pass its readiness check (connections wait too).
            let holder = Some(project)
                .filter(|_| self.hold_until_ready)
                .and_then(|p| plan::ready_process(p, &intercept.name));
            match (holder, &mut self.defer_active) {
                (Some(process), _) => self.held.push((process, event)),
                (None, Some(deferred)) => deferred.push(event),
                (None, None) => self.events.emit(event),
            }
        }
        self.active.insert(
            intercept.name.clone(),
            Active {
                intercept,
                link: id.clone(),
                resolved,
                preview,
            },
        );
        Ok(())
    }

    /// `tpr preview rotate NAME`: registers the intercept again with the
    /// token now in the store (the old link stops routing here). Returns
    /// the new link.
    pub async fn rotate_preview(&mut self, name: &str) -> Result<String, UpError> {
        let Some(a) = self.active.get(name) else {
            return Err(UpError::UnknownIntercept {
                name: name.into(),
                known: self.active.keys().cloned().collect(),
            });
        };
        let Some(preview) = &a.preview else {
            return Err(UpError::NoPreview { name: name.into() });
        };
        let preview = Preview {
            plan: preview.plan.clone(),
            token: super::preview::token(&self.install_id, name)?,
        };
        let not_connected = || UpError::NotConnected { pod: name.into() };
        let link = self.links.get_mut(&a.link).ok_or_else(not_connected)?;
        // What is registered for the first port, with the new token.
        let mut spec = link
            .intercepts
            .get(&plan::agent_name(&a.intercept, 0))
            .cloned()
            .ok_or_else(not_connected)?;
        spec.preview = Some(preview.plan.token(preview.token.clone()));
        let created = link.create(spec.clone()).await;
        if created.is_err() {
            // A pod that failed dropped its session (the agent ended its
            // intercepts): when it is back, the new token is registered,
            // never the old one.
            link.intercepts.insert(spec.name.clone(), spec);
        }
        let url = preview.url();
        self.active.get_mut(name).expect("looked up above").preview = Some(preview);
        self.write_state();
        created?;
        self.events.emit(UpEvent::PreviewRotated {
            name: name.to_owned(),
            preview_url: url.clone(),
        });
        Ok(url)
    }

    /// The `to_pod` listeners of every link: the union of its intercepts'.
    async fn sync_to_pod(&mut self) -> Result<(), UpError> {
        for (id, link) in self.links.iter_mut() {
            let mut ports: Vec<u16> = self
                .active
                .values()
                .filter(|a| &a.link == id)
                .flat_map(|a| a.intercept.to_pod.iter().copied())
                .collect();
            ports.sort_unstable();
            ports.dedup();
            if link.to_pod_ports() == ports {
                continue;
            }
            link.set_to_pod(&ports).await?;
            if !ports.is_empty() {
                self.events.emit(UpEvent::ToPodListening {
                    workload: WorkloadRef::of(&link.workload),
                    ports,
                });
            }
        }
        Ok(())
    }

    /// Ends one intercept (its agent stays installed).
    pub async fn end(&mut self, name: &str) -> Result<(), UpError> {
        let Some(a) = self.active.remove(name) else {
            return Err(UpError::UnknownIntercept {
                name: name.into(),
                known: self.active.keys().cloned().collect(),
            });
        };
        if let Some(link) = self.links.get_mut(&a.link) {
            for index in 0..a.intercept.ports.len() {
                link.remove(&plan::agent_name(&a.intercept, index)).await?;
            }
        }
        let used = self.active.values().any(|x| x.link == a.link);
        if !used && let Some(link) = self.links.remove(&a.link) {
            link.close().await;
        }
        self.sync_to_pod().await?;
        let _ = self.sync_volumes().await;
        self.write_state();
        Ok(())
    }

    /// The copies of the mounted files of the active intercepts, each read
    /// from the pod its environment comes from.
    async fn sync_volumes(&mut self) -> Result<(), UpError> {
        let Some(project) = &self.project else {
            return Ok(());
        };
        let wants = self
            .active
            .values()
            .filter_map(|a| {
                let root = super::volumes::root_of(project, &a.intercept)?;
                Some(super::volumes::Want {
                    intercept: a.intercept.name.clone(),
                    root,
                    settings: a.intercept.volumes.clone(),
                    source: self.links.get(&a.link).and_then(|l| l.env_source()),
                })
            })
            .collect();
        self.volumes.sync(wants, self.events).await
    }

    /// `tpr leave NAME`: ends the intercept until the next `tpr up`. The
    /// processes that ran with its environment are named in the event; the
    /// caller restarts them without it.
    pub async fn leave(&mut self, name: &str) -> Result<(), UpError> {
        self.end(name).await?;
        self.events.emit(UpEvent::InterceptEnded {
            name: name.to_owned(),
            reason: EndReason::Leave,
            detail: None,
            processes: self.processes_of(name),
        });
        Ok(())
    }

    /// The processes of the current file that take `intercept`'s env.
    fn processes_of(&self, intercept: &str) -> Vec<String> {
        self.project
            .iter()
            .flat_map(|p| &p.processes)
            .filter(|p| p.env_from.as_deref() == Some(intercept))
            .map(|p| p.name.clone())
            .collect()
    }

    /// The imported environment of an intercept (unfiltered).
    pub fn env_of(&self, name: &str) -> Option<&BTreeMap<String, String>> {
        let a = self.active.get(name)?;
        self.links.get(&a.link).map(|l| &l.env)
    }

    /// Every active intercept's environment, by intercept name.
    pub fn envs(&self) -> BTreeMap<String, BTreeMap<String, String>> {
        self.active
            .keys()
            .filter_map(|n| Some((n.clone(), self.env_of(n)?.clone())))
            .collect()
    }

    /// Writes each intercept's env file (mode 0600) when its content changed.
    fn write_env_files(&self) -> Result<(), UpError> {
        for a in self.active.values() {
            let Some(env) = self.env_of(&a.intercept.name) else {
                continue;
            };
            super::env_export::export(&a.intercept, env, self.events)?;
        }
        Ok(())
    }

    /// The state other tpr commands read.
    pub fn state(&self) -> State {
        let intercepts =
            self.active
                .values()
                .map(|a| {
                    let link = self.links.get(&a.link);
                    let mut pods: Vec<PodState> = link
                        .iter()
                        .flat_map(|l| l.pod_names())
                        .map(|name| PodState {
                            name,
                            state: "ACTIVE".into(),
                            detail: None,
                        })
                        .collect();
                    pods.extend(link.iter().flat_map(|l| l.pending()).map(|(name, why)| {
                        PodState {
                            name: name.clone(),
                            state: "CONNECTING".into(),
                            detail: Some(why.clone()),
                        }
                    }));
                    InterceptState {
                        name: a.intercept.name.clone(),
                        workload: a.resolved[0].workload.display(),
                        namespace: a.resolved[0]
                            .workload
                            .metadata()
                            .namespace
                            .clone()
                            .unwrap_or_default(),
                        pod: link.and_then(|l| l.pod_names().into_iter().next()),
                        state: match link {
                            Some(l) if l.connected() && l.pending().is_empty() => "ACTIVE".into(),
                            Some(l) if l.connected() => format!(
                                "PARTIAL ({} of {} ready pods route here)",
                                l.pod_names().len(),
                                l.pod_names().len() + l.pending().len()
                            ),
                            _ => "RECONNECTING".into(),
                        },
                        pods,
                        ports: a
                            .intercept
                            .ports
                            .iter()
                            .zip(&a.resolved)
                            .map(|(p, r)| {
                                format!("127.0.0.1:{} <- {}", p.local, r.service_port.identifier())
                            })
                            .collect(),
                        mechanism: match a.intercept.mechanism {
                            tpr_schema::Mechanism::Tcp => "tcp".into(),
                            tpr_schema::Mechanism::Http(_) => "http".into(),
                        },
                        volumes: self.volumes.root(&a.intercept.name),
                        preview_url: a.preview.as_ref().map(Preview::url),
                    }
                })
                .collect();
        State {
            pid: std::process::id(),
            project: super::state::project_key(&self.project_file),
            context: self.cluster.context().to_owned(),
            cluster_url: self.cluster.url().to_owned(),
            install_id: self.install_id.clone(),
            intercepts,
        }
    }

    fn write_state(&self) {
        if let Err(e) = self.paths.write(&self.state()) {
            self.events.emit(UpEvent::Warning {
                message: e.to_string(),
            });
        }
    }

    /// Notices lost sessions, follows the workloads' pods (every ready pod
    /// routes) and mends templates that others changed. Returns true when
    /// an environment may have changed.
    pub async fn check_links(&mut self) -> bool {
        let mut changed = false;
        for link in self.links.values_mut() {
            for (pod, reason) in link.take_lost(self.events) {
                changed = true;
                let workload = WorkloadRef::of(&link.workload);
                self.events.emit(if link.connected() {
                    UpEvent::PodLeft {
                        workload,
                        pod,
                        reason,
                        pods: link.pod_names().len(),
                    }
                } else {
                    UpEvent::ConnectionLost {
                        workload,
                        pod,
                        reason,
                    }
                });
            }
        }
        let mut env_changed = false;
        if self
            .last_observed
            .is_none_or(|t| t.elapsed() >= OBSERVE_EVERY)
        {
            self.last_observed = Some(Instant::now());
            let ids: Vec<WorkloadId> = self.links.keys().cloned().collect();
            for id in ids {
                let (state, env) = self.observe(&id).await;
                changed |= state;
                env_changed |= env;
            }
        }
        if self
            .last_resolved
            .is_none_or(|t| t.elapsed() >= RESOLVE_EVERY)
        {
            self.last_resolved = Some(Instant::now());
            env_changed |= self.check_services().await;
        }
        // A copy whose pod left follows the new one.
        if let Err(e) = self.sync_volumes().await {
            self.events.emit(UpEvent::Warning {
                message: e.to_string(),
            });
        }
        if changed || env_changed {
            self.write_state();
        }
        if env_changed && let Err(e) = self.write_env_files() {
            self.events.emit(UpEvent::Warning {
                message: e.to_string(),
            });
        }
        env_changed
    }

    /// Reads one linked workload and its pods: a deleted workload ends its
    /// intercepts, a template without the agent as installed is mended, and
    /// the sessions follow the ready pods. Returns (state changed, env
    /// changed).
    async fn observe(&mut self, id: &WorkloadId) -> (bool, bool) {
        let Some(link) = self.links.get(id) else {
            return (false, false);
        };
        let found = match k8s::agent_pods(&self.cluster, &link.workload).await {
            Ok(found) => found,
            Err(K8sError::WorkloadNotFound { .. }) => {
                let why = format!("{} was deleted", link.workload.display());
                self.end_link(id, EndReason::WorkloadDeleted, why).await;
                return (true, true);
            }
            Err(e) => {
                self.say_reconnecting(id, e.to_string());
                return (false, false);
            }
        };
        match k8s::check_drift(&found.workload, &self.agent) {
            Ok(None) => {}
            Ok(Some(drift)) => {
                self.events.emit(UpEvent::TemplateDrift {
                    workload: WorkloadRef::of(&found.workload),
                    change: drift.to_string(),
                });
                // The mended rollout's pods are followed on the next look.
                return (true, self.mend(id, &found.workload).await);
            }
            Err(e) => self.events.emit(UpEvent::Warning {
                message: e.to_string(),
            }),
        }
        let link = self.links.get_mut(id).expect("looked up above");
        let env_before = link.env.clone();
        let followed = match link.follow(&self.cluster, &found.pods).await {
            Ok(f) => f,
            Err(e) => {
                self.events.emit(UpEvent::Warning {
                    message: e.to_string(),
                });
                return (false, false);
            }
        };
        let workload = WorkloadRef::of(&link.workload);
        let count = link.pod_names().len();
        for pod in &followed.left {
            self.events.emit(if count > 0 {
                UpEvent::PodLeft {
                    workload: workload.clone(),
                    pod: pod.clone(),
                    reason: "the pod is gone or no longer ready".into(),
                    pods: count,
                }
            } else {
                UpEvent::ConnectionLost {
                    workload: workload.clone(),
                    pod: pod.clone(),
                    reason: "the pod is gone or no longer ready".into(),
                }
            });
        }
        if followed.restored {
            self.reconnecting_said.remove(id);
            self.events.emit(UpEvent::ConnectionRestored {
                workload: workload.clone(),
                pod: link.pod_names().join(", "),
                intercepts: link.intercepts.len(),
            });
        } else {
            for pod in &followed.joined {
                self.events.emit(UpEvent::PodJoined {
                    workload: workload.clone(),
                    pod: pod.clone(),
                    pods: count,
                });
            }
        }
        for (pod, error) in &followed.failed {
            self.events.emit(UpEvent::PodPending {
                workload: workload.clone(),
                pod: pod.clone(),
                error: error.clone(),
            });
        }
        let link = &self.links[id];
        let env_changed = link.env != env_before;
        if !link.connected() {
            let why = match found.total {
                0 => "waiting for a ready agent pod".to_owned(),
                n => format!("waiting for a ready agent pod ({n} pods, none ready with the agent)"),
            };
            self.say_reconnecting(id, why);
        }
        let state_changed =
            !followed.left.is_empty() || !followed.joined.is_empty() || !followed.failed.is_empty();
        (state_changed, env_changed)
    }

    /// Resolves every intercept again: one whose Service or port is gone
    /// ends with the reason; one whose port now leads elsewhere (a new
    /// targetPort) is registered again through [`apply`](Self::apply).
    /// Returns whether an environment changed.
    async fn check_services(&mut self) -> bool {
        let Some(project) = self.project.clone() else {
            return false;
        };
        let context_ns = self.cluster.default_namespace().to_owned();
        let mut moved = false;
        let mut ended = false;
        let names: Vec<String> = self.active.keys().cloned().collect();
        for name in names {
            let (Some(a), Some(intercept)) = (self.active.get(&name), project.intercept(&name))
            else {
                continue;
            };
            let ns = plan::namespace_of(&project, intercept, &context_ns);
            let mut now = Vec::new();
            let mut gone = None;
            for port in &intercept.ports {
                let target = plan::target(intercept, &ns, port.service_port.as_ref());
                match k8s::resolve(&self.cluster, &target).await {
                    Ok(r) => now.push(r),
                    // The Service no longer leads to this port.
                    Err(
                        e @ (K8sError::NoService { .. }
                        | K8sError::ServiceNotFound { .. }
                        | K8sError::ServiceWithoutSelector { .. }
                        | K8sError::ServiceDoesNotSelect { .. }
                        | K8sError::ServiceWithoutPorts { .. }
                        | K8sError::AmbiguousService { .. }
                        | K8sError::AmbiguousPort { .. }
                        | K8sError::PortNotFound { .. }
                        | K8sError::TargetPortNotFound { .. }),
                    ) => {
                        gone = Some(e.to_string());
                        break;
                    }
                    // A deleted workload is the observer's to report; a
                    // failed request is tried again next time.
                    Err(_) => break,
                }
            }
            if let Some(why) = gone {
                let a = self.active.remove(&name).expect("listed");
                if let Some(link) = self.links.get_mut(&a.link) {
                    for index in 0..a.intercept.ports.len() {
                        let _ = link.remove(&plan::agent_name(&a.intercept, index)).await;
                    }
                }
                self.events.emit(UpEvent::InterceptEnded {
                    processes: self.processes_of(&name),
                    name,
                    reason: EndReason::ServiceChanged,
                    detail: Some(why),
                });
                ended = true;
                continue;
            }
            let http = is_http(&a.intercept);
            let same = now.len() == a.resolved.len()
                && now.iter().zip(&a.resolved).all(|(n, o)| {
                    n.service_port == o.service_port && n.port_request(http) == o.port_request(http)
                });
            if now.len() == intercept.ports.len() && !same {
                self.events.emit(UpEvent::Warning {
                    message: format!(
                        "the Service of intercept {name} now targets another port: registering it again"
                    ),
                });
                // `apply` re-resolves what is not active: drop it first.
                if self.end(&name).await.is_ok() {
                    moved = true;
                }
            }
        }
        if moved && let Err(e) = self.apply(&project).await {
            self.events.emit(UpEvent::ReconcileFailed {
                error: e.to_string(),
            });
        }
        moved || ended
    }

    /// "Still reconnecting", at most every few seconds per workload.
    fn say_reconnecting(&mut self, id: &WorkloadId, error: String) {
        let Some(link) = self.links.get(id) else {
            return;
        };
        let Some(since) = link.lost_since else {
            return;
        };
        let due = self
            .reconnecting_said
            .get(id)
            .is_none_or(|t| t.elapsed() >= RECONNECTING_EVERY);
        if due && since.elapsed() >= RECONNECTING_EVERY {
            self.reconnecting_said.insert(id.clone(), Instant::now());
            self.events.emit(UpEvent::Reconnecting {
                workload: WorkloadRef::of(&link.workload),
                seconds: since.elapsed().as_secs(),
                error,
            });
        }
    }

    /// Re-applies the agent on top of a template someone else changed; when
    /// that fails, the workload's intercepts end with the reason. Returns
    /// whether an environment changed.
    async fn mend(&mut self, id: &WorkloadId, workload: &k8s::Workload) -> bool {
        let requests: Vec<_> = self
            .active
            .values()
            .filter(|a| &a.link == id)
            .flat_map(|a| {
                let http = is_http(&a.intercept);
                a.resolved.iter().map(move |r| r.port_request(http))
            })
            .collect();
        self.events.emit(UpEvent::Installing {
            workload: WorkloadRef::of(workload),
        });
        let progress = Display::for_events(self.events);
        let started = Instant::now();
        let outcome = k8s::install(
            &self.cluster,
            workload,
            &requests,
            &self.agent,
            &RolloutOptions::default(),
            &progress,
        )
        .await;
        progress.finish();
        match outcome {
            Ok(outcome) => {
                if outcome.changed {
                    self.events.emit(UpEvent::Installed {
                        workload: WorkloadRef::of(workload),
                        seconds: (started.elapsed().as_secs_f64() * 10.0).round() / 10.0,
                    });
                }
                false
            }
            Err(e) => {
                let why = format!("the agent could not be put back: {e}");
                self.end_link(id, EndReason::AgentLost, why).await;
                true
            }
        }
    }

    /// Ends every intercept of a workload for a reason of the cluster's.
    async fn end_link(&mut self, id: &WorkloadId, reason: EndReason, detail: String) {
        let names: Vec<String> = self
            .active
            .iter()
            .filter(|(_, a)| &a.link == id)
            .map(|(n, _)| n.clone())
            .collect();
        for name in names {
            self.active.remove(&name);
            self.events.emit(UpEvent::InterceptEnded {
                processes: self.processes_of(&name),
                name,
                reason,
                detail: Some(detail.clone()),
            });
        }
        if let Some(link) = self.links.remove(id) {
            link.close().await;
        }
        self.reconnecting_said.remove(id);
    }

    /// Each active intercept's agent for outbound (`crate::outbound`): the
    /// pod its environment comes from, and its channel.
    pub fn egress_channels(&self) -> BTreeMap<String, (String, tonic::transport::Channel)> {
        self.active
            .iter()
            .filter_map(|(name, a)| Some((name.clone(), self.links.get(&a.link)?.env_source()?)))
            .collect()
    }

    /// Ends every session and removes the state.
    pub async fn shutdown(&mut self) {
        self.volumes.stop();
        self.active.clear();
        for (_, link) in std::mem::take(&mut self.links) {
            link.close().await;
        }
        self.paths.remove();
    }
}
