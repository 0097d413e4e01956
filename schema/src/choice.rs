//! The fixed sets of names the file accepts (mechanism, env format, ...).

use std::borrow::Cow;
use std::fmt;

use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::{Serialize, Serializer};

/// An enum written in the file as one of a fixed set of strings.
pub trait Choice: Sized + Copy + 'static {
    /// The key's name in messages, e.g. "mechanism".
    const WHAT: &'static str;
    /// Every accepted spelling, in the order the docs list them.
    const NAMES: &'static [&'static str];
    fn from_name(name: &str) -> Option<Self>;
    fn name(self) -> &'static str;
}

macro_rules! choice {
    ($(#[$doc:meta])* $what:literal pub enum $ty:ident { $($(#[$vdoc:meta])* $variant:ident = $name:literal,)+ }) => {
        $(#[$doc])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        pub enum $ty { $($(#[$vdoc])* $variant,)+ }

        impl Choice for $ty {
            const WHAT: &'static str = $what;
            const NAMES: &'static [&'static str] = &[$($name),+];
            fn from_name(name: &str) -> Option<Self> {
                match name { $($name => Some(Self::$variant),)+ _ => None }
            }
            fn name(self) -> &'static str {
                match self { $(Self::$variant => $name,)+ }
            }
        }

        impl fmt::Display for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.name())
            }
        }

        impl Serialize for $ty {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(self.name())
            }
        }

        impl JsonSchema for $ty {
            fn schema_name() -> Cow<'static, str> {
                stringify!($ty).into()
            }
            fn json_schema(_: &mut SchemaGenerator) -> Schema {
                json_schema!({ "type": "string", "enum": Self::NAMES })
            }
        }
    };
}

choice! {
    /// The kind of a workload; detected from the cluster when not given.
    "workload kind" pub enum WorkloadKind {
        Deployment = "Deployment",
        ReplicaSet = "ReplicaSet",
        StatefulSet = "StatefulSet",
    }
}

choice! {
    /// How traffic is selected: all of it (`tcp`) or matching HTTP requests.
    "mechanism" pub enum MechanismKind {
        Tcp = "tcp",
        Http = "http",
    }
}

choice! {
    /// How the exported environment is written.
    "env format" pub enum EnvFormat {
        /// `KEY="value"` lines, as read by dotenv libraries.
        Dotenv = "dotenv",
        /// `KEY='value'` lines for `. file` in a POSIX shell.
        Sh = "sh",
        /// `export KEY='value'` lines.
        ShExport = "sh-export",
        /// One JSON object.
        Json = "json",
        /// `KEY=value` lines without quoting (`docker --env-file`, compose).
        Compose = "compose",
    }
}

choice! {
    /// When Kubernetes pulls the agent image.
    "pull policy" pub enum PullPolicy {
        Always = "Always",
        IfNotPresent = "IfNotPresent",
        Never = "Never",
    }
}

choice! {
    /// The signal that asks the local process to stop.
    "stop signal" pub enum StopSignal {
        Term = "SIGTERM",
        Int = "SIGINT",
        Quit = "SIGQUIT",
        Hup = "SIGHUP",
        Kill = "SIGKILL",
        Usr1 = "SIGUSR1",
        Usr2 = "SIGUSR2",
    }
}

choice! {
    /// What happens when the local process exits on its own.
    "on_exit policy" pub enum OnExit {
        /// Wait for the next file change, then start it again.
        Wait = "wait",
        /// Start it again at once (with a growing delay if it keeps failing).
        Restart = "restart",
        /// Stop `tpr up`, restoring the cluster.
        Stop = "stop",
    }
}

impl EnvFormat {
    /// The format a file name implies: `.json`, `.sh`, else dotenv
    /// (`.env`, `.env.orders`, ...).
    pub fn for_file(path: &std::path::Path) -> Self {
        match path.extension().and_then(|e| e.to_str()) {
            Some("json") => Self::Json,
            Some("sh") => Self::Sh,
            _ => Self::Dotenv,
        }
    }
}
