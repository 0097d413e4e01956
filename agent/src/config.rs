//! The agent's settings, read from its environment (docs/agent-contract.md).
//! Parsing takes the variables as a list, so tests never touch the process
//! environment.

use std::collections::BTreeMap;

/// Default gRPC port, bound to 127.0.0.1.
pub const DEFAULT_GRPC_PORT: u16 = 9900;
/// Default prefix of the app container's copied environment.
pub const DEFAULT_ENV_PREFIX: &str = "TPR_APP_";

/// A bad setting; the agent exits with 64 and this message.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A port variable is not a number in 1..=65535.
    #[error("{var}={value:?} is not a port (1-65535)")]
    BadPort { var: &'static str, value: String },
    /// A `a=b` list entry is malformed.
    #[error("{var}: entry {entry:?} is not `<port>=<port>` (expected e.g. `{example}`)")]
    BadPair {
        var: &'static str,
        entry: String,
        example: &'static str,
    },
    /// The same port appears twice on the left of a list.
    #[error("{var}: port {port} appears twice")]
    Duplicate { var: &'static str, port: u16 },
    /// A required list is empty.
    #[error("{var} is empty: nothing to do (expected e.g. `{example}`)")]
    Empty {
        var: &'static str,
        example: &'static str,
    },
}

/// One forwarded port: the agent listens on `agent_port` (all interfaces)
/// and relays to the app on 127.0.0.1:`app_port`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Forward {
    pub agent_port: u16,
    pub app_port: u16,
    /// Serve HTTP connections request by request even while no intercept
    /// holds the port (`<agent>=<app>/http`): a pooled keep-alive connection
    /// opened before a personal intercept must still reach it.
    pub http: bool,
}

/// Settings of the running agent.
#[derive(Debug, Clone)]
pub struct Config {
    pub grpc_port: u16,
    pub forwards: Vec<Forward>,
    pub env_prefix: String,
    /// `<namespace>/<pod>` when known, for messages.
    pub pod: String,
    /// The whole environment, from which the app's is reported.
    pub env: BTreeMap<String, String>,
}

impl Config {
    pub fn from_vars(
        vars: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, ConfigError> {
        let env: BTreeMap<String, String> = vars.into_iter().collect();
        let get = |k: &str| {
            env.get(k)
                .map(String::as_str)
                .filter(|v| !v.trim().is_empty())
        };
        let grpc_port = match get("TPR_AGENT_GRPC_PORT") {
            Some(v) => port("TPR_AGENT_GRPC_PORT", v)?,
            None => DEFAULT_GRPC_PORT,
        };
        let forwards = forwards(get("TPR_AGENT_FORWARDS").unwrap_or(""))?;
        let env_prefix = get("TPR_AGENT_ENV_PREFIX")
            .unwrap_or(DEFAULT_ENV_PREFIX)
            .to_owned();
        let pod = match (get("TPR_AGENT_NAMESPACE"), get("TPR_AGENT_POD_NAME")) {
            (Some(ns), Some(name)) => format!("{ns}/{name}"),
            (None, Some(name)) => name.to_owned(),
            _ => "local".to_owned(),
        };
        Ok(Config {
            grpc_port,
            forwards,
            env_prefix,
            pod,
            env,
        })
    }
}

/// `TPR_AGENT_REDIRECTS` of `tpr-agent init`: `(app_port, agent_port)`.
pub fn redirects(
    vars: impl IntoIterator<Item = (String, String)>,
) -> Result<Vec<(u16, u16)>, ConfigError> {
    const VAR: &str = "TPR_AGENT_REDIRECTS";
    let value = vars
        .into_iter()
        .find(|(k, _)| k == VAR)
        .map(|(_, v)| v)
        .unwrap_or_default();
    let list = pairs(VAR, &value)?;
    if list.is_empty() {
        return Err(ConfigError::Empty {
            var: VAR,
            example: "8080=9901",
        });
    }
    Ok(list)
}

/// The agent's gRPC port for `tpr-agent ready`.
pub fn grpc_port(vars: impl IntoIterator<Item = (String, String)>) -> Result<u16, ConfigError> {
    match vars.into_iter().find(|(k, _)| k == "TPR_AGENT_GRPC_PORT") {
        Some((_, v)) if !v.trim().is_empty() => port("TPR_AGENT_GRPC_PORT", &v),
        _ => Ok(DEFAULT_GRPC_PORT),
    }
}

fn port(var: &'static str, value: &str) -> Result<u16, ConfigError> {
    match value.trim().parse::<u16>() {
        Ok(p) if p != 0 => Ok(p),
        _ => Err(ConfigError::BadPort {
            var,
            value: value.to_owned(),
        }),
    }
}

/// `TPR_AGENT_FORWARDS`: `<agentPort>=<appPort>[/http]`, comma separated.
fn forwards(value: &str) -> Result<Vec<Forward>, ConfigError> {
    const VAR: &str = "TPR_AGENT_FORWARDS";
    let mut out: Vec<Forward> = Vec::new();
    for entry in entries(value) {
        let (ports, http) = match entry.strip_suffix("/http") {
            Some(ports) => (ports, true),
            None => (entry, false),
        };
        let (agent_port, app_port) = pair(VAR, entry, ports, "9901=8080,9902=8081/http")?;
        if out.iter().any(|f| f.agent_port == agent_port) {
            return Err(ConfigError::Duplicate {
                var: VAR,
                port: agent_port,
            });
        }
        out.push(Forward {
            agent_port,
            app_port,
            http,
        });
    }
    Ok(out)
}

fn pairs(var: &'static str, value: &str) -> Result<Vec<(u16, u16)>, ConfigError> {
    let mut out: Vec<(u16, u16)> = Vec::new();
    for entry in entries(value) {
        let (l, r) = pair(var, entry, entry, "8080=9901")?;
        if out.iter().any(|(seen, _)| *seen == l) {
            return Err(ConfigError::Duplicate { var, port: l });
        }
        out.push((l, r));
    }
    Ok(out)
}

fn entries(value: &str) -> impl Iterator<Item = &str> {
    value.split(',').map(str::trim).filter(|e| !e.is_empty())
}

/// `<port>=<port>` of a list `entry` (`ports` is the entry without options).
fn pair(
    var: &'static str,
    entry: &str,
    ports: &str,
    example: &'static str,
) -> Result<(u16, u16), ConfigError> {
    let bad = || ConfigError::BadPair {
        var,
        entry: entry.to_owned(),
        example,
    };
    let (l, r) = ports.split_once('=').ok_or_else(bad)?;
    Ok((
        port(var, l).map_err(|_| bad())?,
        port(var, r).map_err(|_| bad())?,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn defaults_and_forwards() {
        let c = Config::from_vars(vars(&[("TPR_AGENT_FORWARDS", "9901=8080, 9902=8081/http")]))
            .unwrap();
        assert_eq!(c.grpc_port, 9900);
        assert_eq!(c.env_prefix, "TPR_APP_");
        assert_eq!(
            c.forwards,
            vec![
                Forward {
                    agent_port: 9901,
                    app_port: 8080,
                    http: false,
                },
                Forward {
                    agent_port: 9902,
                    app_port: 8081,
                    http: true,
                }
            ]
        );
    }

    #[test]
    fn bad_values_name_the_variable() {
        let e = Config::from_vars(vars(&[("TPR_AGENT_FORWARDS", "9901:8080")])).unwrap_err();
        assert!(e.to_string().contains("TPR_AGENT_FORWARDS"), "{e}");
        let e = Config::from_vars(vars(&[("TPR_AGENT_GRPC_PORT", "70000")])).unwrap_err();
        assert!(e.to_string().contains("TPR_AGENT_GRPC_PORT"), "{e}");
        let e = Config::from_vars(vars(&[("TPR_AGENT_FORWARDS", "1=2,1=3/http")])).unwrap_err();
        assert!(matches!(e, ConfigError::Duplicate { port: 1, .. }));
        let e = Config::from_vars(vars(&[("TPR_AGENT_FORWARDS", "9901=8080/tcp")])).unwrap_err();
        assert!(e.to_string().contains("\"9901=8080/tcp\""), "{e}");
        assert!(redirects(vars(&[("TPR_AGENT_REDIRECTS", "80=9901/http")])).is_err());
        assert!(redirects(vars(&[])).is_err());
        assert_eq!(
            redirects(vars(&[("TPR_AGENT_REDIRECTS", "80=9901")])).unwrap(),
            vec![(80, 9901)]
        );
    }
}
