//! Personal overrides: `telepresence.local.toml` over `telepresence.toml`.
//!
//! Rules (also in README and telepresence.toml.example):
//! - tables merge key by key, recursively (`[cluster]`, `[agent]`,
//!   `http.headers`, a process's `env`...);
//! - `[[intercept]]` entries are matched by intercept name (an explicit
//!   `name`, else the name computed from `workload` and `namespace`; a local
//!   entry with only `workload` matches the team intercepts of that
//!   workload), `[[process]]` entries by `name` (a process without one is
//!   named after its `env_from`, else "main"); a local entry that matches
//!   nothing is added;
//! - scalars and plain lists (`port`, `to_pod`, `command`, `watch`...) are
//!   replaced as a whole.
//!
//! Values keep the span of the file they came from, so a problem in an
//! override is reported in `telepresence.local.toml`.

use crate::names::intercept_name;
use crate::raw::{
    Map, RawAgent, RawCluster, RawEnv, RawFile, RawHttp, RawIntercept, RawNetwork, RawPreview,
    RawPreviewIngress, RawProcess, RawQuantities, RawReady, RawResources, RawVolumes,
};
use crate::source::Sp;

/// Overlays `over` on `self`.
trait Merge {
    fn merge(&mut self, over: Self);
}

impl<T> Merge for Option<Sp<T>> {
    fn merge(&mut self, over: Self) {
        if over.is_some() {
            *self = over;
        }
    }
}

macro_rules! merge_struct {
    ($ty:ty { $($field:ident),+ }) => {
        impl Merge for $ty {
            fn merge(&mut self, over: Self) {
                $(self.$field.merge(over.$field);)+
            }
        }
    };
}

/// Optional sub-tables merge key by key.
fn merge_table<T: Merge>(base: &mut Option<T>, over: Option<T>) {
    match (base.as_mut(), over) {
        (Some(b), Some(o)) => b.merge(o),
        (None, Some(o)) => *base = Some(o),
        (_, None) => {}
    }
}

fn merge_map(base: &mut Map, over: Map) {
    match (base.as_mut(), over) {
        (Some(b), Some(o)) => {
            for (k, v) in o.value {
                // Remove first: BTreeMap::insert would keep the team key's span.
                b.value.remove(&k);
                b.value.insert(k, v);
            }
        }
        (None, Some(o)) => *base = Some(o),
        (_, None) => {}
    }
}

merge_struct!(RawCluster { context, namespace });
merge_struct!(RawQuantities { cpu, memory });
merge_struct!(RawVolumes {
    enabled,
    dir,
    include,
    exclude,
    max_size
});
merge_struct!(RawPreviewIngress {
    host,
    port,
    tls,
    l5
});
merge_struct!(RawEnv {
    file,
    format,
    include,
    exclude
});

impl Merge for RawNetwork {
    fn merge(&mut self, over: Self) {
        self.outbound.merge(over.outbound);
        self.cluster_subnets.merge(over.cluster_subnets);
    }
}

impl Merge for RawAgent {
    fn merge(&mut self, over: Self) {
        self.image.merge(over.image);
        self.pull_policy.merge(over.pull_policy);
        self.port.merge(over.port);
        merge_table(&mut self.resources, over.resources);
    }
}

impl Merge for RawResources {
    fn merge(&mut self, over: Self) {
        merge_table(&mut self.requests, over.requests);
        merge_table(&mut self.limits, over.limits);
    }
}

impl Merge for RawPreview {
    fn merge(&mut self, over: Self) {
        if over.span.is_some() {
            self.span = over.span;
        }
        self.enabled.merge(over.enabled);
        self.path.merge(over.path);
        merge_table(&mut self.ingress, over.ingress);
    }
}

impl Merge for RawHttp {
    fn merge(&mut self, over: Self) {
        merge_map(&mut self.headers, over.headers);
        self.path_prefix.merge(over.path_prefix);
        self.id_header.merge(over.id_header);
    }
}

impl Merge for RawIntercept {
    fn merge(&mut self, over: Self) {
        self.name.merge(over.name);
        self.workload.merge(over.workload);
        self.rejected.extend(over.rejected);
        self.kind.merge(over.kind);
        self.namespace.merge(over.namespace);
        self.port.merge(over.port);
        self.service.merge(over.service);
        self.mechanism.merge(over.mechanism);
        merge_table(&mut self.http, over.http);
        self.to_pod.merge(over.to_pod);
        merge_table(&mut self.env, over.env);
        merge_table(&mut self.volumes, over.volumes);
        merge_table(&mut self.preview, over.preview);
    }
}

impl Merge for RawProcess {
    fn merge(&mut self, over: Self) {
        self.name.merge(over.name);
        self.command.merge(over.command);
        self.workdir.merge(over.workdir);
        self.rejected.extend(over.rejected);
        self.env_from.merge(over.env_from);
        merge_map(&mut self.env, over.env);
        self.watch.merge(over.watch);
        self.ignore.merge(over.ignore);
        self.debounce_ms.merge(over.debounce_ms);
        self.stop_signal.merge(over.stop_signal);
        self.stop_timeout_s.merge(over.stop_timeout_s);
        self.on_exit.merge(over.on_exit);
        self.connection_wait_ms.merge(over.connection_wait_ms);
        merge_table(&mut self.ready, over.ready);
    }
}

impl Merge for RawReady {
    fn merge(&mut self, over: Self) {
        self.port.merge(over.port);
        self.path.merge(over.path);
    }
}

/// The team file with the local file's overrides applied.
pub fn merge(mut team: RawFile, local: RawFile) -> RawFile {
    team.format_version.merge(local.format_version);
    merge_table(&mut team.cluster, local.cluster);
    merge_table(&mut team.agent, local.agent);
    merge_table(&mut team.network, local.network);
    for over in local.intercept {
        match team
            .intercept
            .iter_mut()
            .find(|i| overrides_intercept(&over, i))
        {
            Some(base) => base.merge(over),
            None => team.intercept.push(over),
        }
    }
    for over in local.process {
        let key = process_name(&over);
        match team.process.iter_mut().find(|p| process_name(p) == key) {
            Some(base) => base.merge(over),
            None => team.process.push(over),
        }
    }
    team
}

fn text(s: &Option<Sp<String>>) -> Option<&str> {
    s.as_ref().map(|s| s.value.as_str())
}

/// The intercept's name as the file defines it (see [`intercept_name`]).
pub(crate) fn raw_intercept_name(i: &RawIntercept) -> Option<String> {
    match (text(&i.name), text(&i.workload)) {
        (Some(name), _) => Some(name.to_owned()),
        (None, Some(w)) => Some(intercept_name(None, w, text(&i.namespace))),
        (None, None) => None,
    }
}

fn overrides_intercept(over: &RawIntercept, base: &RawIntercept) -> bool {
    match (text(&over.name), text(&over.workload)) {
        (Some(_), _) => raw_intercept_name(over) == raw_intercept_name(base),
        (None, Some(w)) => {
            text(&base.workload) == Some(w)
                && (over.namespace.is_none() || text(&over.namespace) == text(&base.namespace))
        }
        (None, None) => false,
    }
}

/// The process's name as the file defines it: `name`, else `env_from`, else "main".
pub(crate) fn process_name(p: &RawProcess) -> String {
    text(&p.name)
        .or(text(&p.env_from))
        .unwrap_or("main")
        .to_owned()
}
