//! Intercept port mappings: `"8080"`, `"8080:http"`, `"8080:80"` or `8080`.

use std::borrow::Cow;
use std::fmt;

use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::{Serialize, Serializer};

use crate::names::port_name_problem;

/// Which Service port an intercept takes: by name or by number.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(untagged)]
pub enum PortId {
    Name(String),
    Number(u16),
}

impl fmt::Display for PortId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Name(n) => f.write_str(n),
            Self::Number(n) => n.fmt(f),
        }
    }
}

/// One intercepted port: where it arrives on this machine, and which Service
/// port it is (absent: the workload's only Service port).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PortMapping {
    pub local: u16,
    pub service_port: Option<PortId>,
}

impl fmt::Display for PortMapping {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.service_port {
            Some(id) => write!(f, "{}:{id}", self.local),
            None => write!(f, "{}", self.local),
        }
    }
}

// In the file and in `tpr config` a mapping is the string the user writes.
impl Serialize for PortMapping {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl JsonSchema for PortMapping {
    fn schema_name() -> Cow<'static, str> {
        "PortMapping".into()
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "description": "LOCAL or LOCAL:SERVICE_PORT: the local port, and the Service port's name or number.",
            "anyOf": [
                { "type": "integer", "minimum": 1, "maximum": 65535 },
                { "type": "string", "pattern": "^[0-9]+(:([0-9]+|[a-z0-9]([a-z0-9-]*[a-z0-9])?))?$",
                  "examples": ["8080", "8080:http", "8080:80"] }
            ]
        })
    }
}

/// Why a port number is out of range, as (value) when it is.
pub fn port_number(value: i64) -> Result<u16, i64> {
    match u16::try_from(value) {
        Ok(p) if p > 0 => Ok(p),
        _ => Err(value),
    }
}

/// What is wrong with a port mapping string.
#[derive(Debug, PartialEq, Eq)]
pub enum PortSpecError {
    /// A port number outside 1..=65535.
    OutOfRange(i64),
    /// Anything else, with the reason.
    Malformed(String),
}

impl std::str::FromStr for PortMapping {
    type Err = PortSpecError;

    fn from_str(spec: &str) -> Result<Self, PortSpecError> {
        let (local, service) = match spec.split_once(':') {
            Some((l, s)) => (l, Some(s)),
            None => (spec, None),
        };
        let local = parse_number(local, "the local port")?;
        let service_port = match service {
            None => None,
            Some("") => return Err(PortSpecError::Malformed("nothing after ':'".into())),
            Some(s) if s.bytes().all(|b| b.is_ascii_digit()) => {
                Some(PortId::Number(parse_number(s, "the service port")?))
            }
            Some(s) => match port_name_problem(s) {
                None => Some(PortId::Name(s.to_owned())),
                Some(reason) => {
                    return Err(PortSpecError::Malformed(format!(
                        "service port `{s}`: {reason}"
                    )));
                }
            },
        };
        Ok(Self {
            local,
            service_port,
        })
    }
}

fn parse_number(text: &str, what: &str) -> Result<u16, PortSpecError> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return Err(PortSpecError::Malformed(format!(
            "{what} must be a number, found `{text}`"
        )));
    }
    let value: i64 = text.parse().unwrap_or(i64::MAX);
    port_number(value).map_err(PortSpecError::OutOfRange)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<PortMapping, PortSpecError> {
        s.parse()
    }

    #[test]
    fn mappings() {
        assert_eq!(
            parse("8080").unwrap(),
            PortMapping {
                local: 8080,
                service_port: None
            }
        );
        assert_eq!(
            parse("8080:http").unwrap(),
            PortMapping {
                local: 8080,
                service_port: Some(PortId::Name("http".into()))
            }
        );
        assert_eq!(
            parse("8080:80").unwrap().service_port,
            Some(PortId::Number(80))
        );
        assert_eq!(parse("8080:80").unwrap().to_string(), "8080:80");
        assert_eq!(parse("0"), Err(PortSpecError::OutOfRange(0)));
        assert_eq!(parse("8080:70000"), Err(PortSpecError::OutOfRange(70000)));
        assert!(matches!(parse("http"), Err(PortSpecError::Malformed(_))));
        assert!(matches!(parse("8080:"), Err(PortSpecError::Malformed(_))));
        assert!(matches!(
            parse("8080:HTTP"),
            Err(PortSpecError::Malformed(_))
        ));
        assert!(matches!(
            parse("99999999999999999999999"),
            Err(PortSpecError::OutOfRange(_))
        ));
    }
}
