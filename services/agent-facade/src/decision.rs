//! Building the policy question from what Tether knows, not from what the
//! agent says: the principal and its delegating user from the verified
//! token, the resource's attributes from Tether's entity data, and the
//! context keys `now`, `network`, `session`, `risk` and `approval` set here
//! only. The agent may add other context keys; the policy schema checks
//! them.

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::{Map, Value, json};
use tether_proto::facade::v1 as pb;
use tether_proto::policy::v1 as policy_pb;
use tether_token::DelegatedClaims;

use crate::config::{ClockConfig, NetworkConfig, PolicyConfig};
use crate::error::FacadeError;

/// Context keys only Tether sets.
pub const RESERVED_CONTEXT_KEYS: &[&str] = &["now", "network", "session", "risk", "approval"];

const MAX_TYPE_BYTES: usize = 256;
const MAX_ID_BYTES: usize = 512;
const MAX_CONTEXT_BYTES: usize = 8 * 1024;

/// A checked entity uid from the agent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Uid {
    pub r#type: String,
    pub id: String,
}

impl Uid {
    /// Cedar uid form, `Type::"id"` (the id JSON-escaped as Cedar escapes
    /// string literals).
    pub fn cedar(&self) -> String {
        format!(
            "{}::{}",
            self.r#type,
            serde_json::to_string(&self.id).unwrap_or_default()
        )
    }

    fn json(&self) -> Value {
        json!({ "type": self.r#type, "id": self.id })
    }

    pub fn to_policy(&self) -> policy_pb::EntityUid {
        policy_pb::EntityUid {
            r#type: self.r#type.clone(),
            id: self.id.clone(),
        }
    }
}

fn valid_type_name(name: &str) -> bool {
    !name.is_empty()
        && name.split("::").all(|part| {
            let mut chars = part.chars();
            chars
                .next()
                .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
                && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
        })
}

/// Checks an `EntityUid` field of a request.
pub fn uid(field: &str, value: Option<&pb::EntityUid>) -> Result<Uid, FacadeError> {
    let Some(value) = value else {
        return Err(FacadeError::InvalidRequest(format!("missing `{field}`")));
    };
    if value.r#type.len() > MAX_TYPE_BYTES || !valid_type_name(&value.r#type) {
        return Err(FacadeError::InvalidRequest(format!(
            "`{field}.type` must be a Cedar type name of at most {MAX_TYPE_BYTES} bytes, e.g. `Hr::Employee`"
        )));
    }
    if value.id.is_empty() || value.id.len() > MAX_ID_BYTES {
        return Err(FacadeError::InvalidRequest(format!(
            "`{field}.id` must be 1 to {MAX_ID_BYTES} bytes"
        )));
    }
    if value.id.chars().any(char::is_control) {
        return Err(FacadeError::InvalidRequest(format!(
            "`{field}.id` contains control characters"
        )));
    }
    Ok(Uid {
        r#type: value.r#type.clone(),
        id: value.id.clone(),
    })
}

/// The agent's `context_json`: a JSON object without duplicate or reserved
/// keys (empty means `{}`).
pub fn agent_context(text: &str) -> Result<Map<String, Value>, FacadeError> {
    if text.is_empty() {
        return Ok(Map::new());
    }
    if text.len() > MAX_CONTEXT_BYTES {
        return Err(FacadeError::InvalidRequest(format!(
            "`context_json` is {} bytes, the limit is {MAX_CONTEXT_BYTES}",
            text.len()
        )));
    }
    tether_policy::reject_duplicate_keys(text)
        .map_err(|e| FacadeError::InvalidRequest(format!("`context_json`: {e}")))?;
    let Ok(Value::Object(map)) = serde_json::from_str::<Value>(text) else {
        return Err(FacadeError::InvalidRequest(
            "`context_json` must be a JSON object".into(),
        ));
    };
    if let Some(key) = map
        .keys()
        .find(|k| RESERVED_CONTEXT_KEYS.contains(&k.as_str()))
    {
        return Err(FacadeError::InvalidRequest(format!(
            "`context_json` key `{}` is reserved: Tether sets `now`, `network`, `session`, `risk` and `approval` itself",
            tether_runtime::clip(key)
        )));
    }
    Ok(map)
}

/// The caller's address: the connection's peer, or, from a trusted proxy,
/// the last address in its client-address header that is not itself a
/// trusted proxy.
pub fn caller_address(
    network: &NetworkConfig,
    peer: Option<IpAddr>,
    headers: &tonic::metadata::MetadataMap,
) -> Option<IpAddr> {
    let peer = peer?;
    let Some(header) = &network.client_address_header else {
        return Some(peer);
    };
    if !network.is_trusted_proxy(peer) {
        return Some(peer);
    }
    // A header that is missing, repeated or unreadable leaves the proxy as
    // the caller: never trust a value we cannot read unambiguously.
    let mut values = headers.get_all(header.as_str()).iter();
    let (Some(value), None) = (values.next(), values.next()) else {
        return Some(peer);
    };
    let Ok(text) = value.to_str() else {
        return Some(peer);
    };
    let mut hops: Vec<IpAddr> = Vec::new();
    for part in text.split(',') {
        match part.trim().parse::<IpAddr>() {
            Ok(ip) => hops.push(ip),
            Err(_) => return Some(peer),
        }
    }
    Some(
        hops.into_iter()
            .rev()
            .find(|ip| !network.is_trusted_proxy(*ip))
            .unwrap_or(peer),
    )
}

/// `context.now`: local hour and ISO weekday (1 = Monday) at the
/// configured offset, and Unix seconds.
pub fn now_context(clock: ClockConfig, now: SystemTime) -> Value {
    let unix = now
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0);
    let local = unix + i64::from(clock.utc_offset_minutes) * 60;
    let days = local.div_euclid(86_400);
    let hour = local.rem_euclid(86_400) / 3600;
    // 1970-01-01 was a Thursday (ISO weekday 4).
    let weekday = (days + 3).rem_euclid(7) + 1;
    json!({ "hour": hour, "weekday": weekday, "unix": unix })
}

/// Tether's entity data: resources and their attributes, by Cedar uid.
#[derive(Debug, Default)]
pub struct EntityData {
    by_uid: HashMap<(String, String), Value>,
}

impl EntityData {
    /// Reads a Cedar JSON entities file (a list of `{uid, attrs, parents}`).
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        use anyhow::Context as _;
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading the entity data `{}`", path.display()))?;
        tether_policy::reject_duplicate_keys(&text)
            .map_err(|e| anyhow::anyhow!("entity data `{}`: {e}", path.display()))?;
        let list: Vec<Value> = serde_json::from_str(&text)
            .with_context(|| format!("entity data `{}` is not a JSON list", path.display()))?;
        let mut by_uid = HashMap::new();
        for entity in list {
            let key = entity
                .get("uid")
                .and_then(|u| Some((u.get("type")?.as_str()?, u.get("id")?.as_str()?)))
                .map(|(t, i)| (t.to_owned(), i.to_owned()))
                .with_context(|| format!("an entity in `{}` has no `uid`", path.display()))?;
            by_uid.insert(key, entity);
        }
        Ok(Self { by_uid })
    }

    /// How many entities were loaded.
    pub fn count(&self) -> usize {
        self.by_uid.len()
    }

    fn get(&self, uid: &Uid) -> Option<&Value> {
        self.by_uid.get(&(uid.r#type.clone(), uid.id.clone()))
    }
}

/// What a decision is asked about, with the facts only Tether supplies.
#[derive(Debug, Clone, Copy)]
pub struct Question<'a> {
    pub claims: &'a DelegatedClaims,
    pub action: &'a Uid,
    pub resource: &'a Uid,
    pub agent_context: &'a Map<String, Value>,
    pub caller: Option<IpAddr>,
    /// `context.risk`: from the monitoring (or the baseline when it is off).
    pub risk: &'a crate::monitoring::Risk,
    /// `context.approval` after an approval: (ticket id, approver).
    pub approval: Option<(&'a str, &'a str)>,
}

impl Question<'_> {
    /// The PDP request: principal `Agent::"<act.sub>"` whose `delegator` is
    /// the user with the token's attributes and groups, the resource entity
    /// from Tether's data (when it has one), and the context.
    pub fn check_request(
        &self,
        policy: &PolicyConfig,
        network: &NetworkConfig,
        clock: ClockConfig,
        entities: &EntityData,
        request_id: &str,
    ) -> policy_pb::CheckRequest {
        let claims = self.claims;
        let principal = Uid {
            r#type: policy.agent_type.clone(),
            id: claims.act.sub.clone(),
        };
        let user = Uid {
            r#type: policy.user_type.clone(),
            id: claims.sub.clone(),
        };
        let mut user_attrs = Map::new();
        for name in &policy.user_attributes {
            let value = claims.user.get(name).and_then(Value::as_str).unwrap_or("");
            user_attrs.insert(name.clone(), Value::String(value.to_owned()));
        }
        let groups: Vec<Value> = claims
            .user
            .get("groups")
            .and_then(Value::as_array)
            .map(|gs| {
                gs.iter()
                    .filter_map(Value::as_str)
                    .map(|g| json!({ "type": policy.group_type, "id": g }))
                    .collect()
            })
            .unwrap_or_default();
        let mut list = vec![
            json!({
                "uid": principal.json(),
                "attrs": { "delegator": { "__entity": user.json() } },
                "parents": [],
            }),
            json!({ "uid": user.json(), "attrs": user_attrs, "parents": groups }),
        ];
        if let Some(resource) = entities.get(self.resource) {
            list.push(resource.clone());
        }

        let now = SystemTime::now();
        let (zone, trusted) = self
            .caller
            .map_or(("unknown", false), |ip| network.classify(ip));
        let intent = claims
            .authorization_details
            .as_ref()
            .map(Value::to_string)
            .unwrap_or_default();
        let unix = now
            .duration_since(UNIX_EPOCH)
            .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
            .unwrap_or(0);
        let mut context = self.agent_context.clone();
        context.insert("now".into(), now_context(clock, now));
        context.insert(
            "network".into(),
            json!({
                "ip": self.caller.map(|ip| ip.to_string()).unwrap_or_default(),
                "trusted": trusted,
                "zone": zone,
            }),
        );
        context.insert(
            "session".into(),
            json!({
                "id": claims.sid,
                // INVARIANT: from the token's `iat`: the age of the
                // credential the agent presents, never a claim of the agent.
                "age_seconds": unix.saturating_sub(claims.iat).max(0),
                "intent": intent,
                "in_intent": intent_covers(
                    claims.authorization_details.as_ref(),
                    self.action,
                    self.resource,
                ),
            }),
        );
        context.insert("risk".into(), self.risk.to_context());
        if let Some((ticket, approver)) = self.approval {
            context.insert(
                "approval".into(),
                json!({ "granted": true, "ticket": ticket, "approver": approver }),
            );
        }
        policy_pb::CheckRequest {
            principal: Some(principal.to_policy()),
            action: Some(self.action.to_policy()),
            resource: Some(self.resource.to_policy()),
            context_json: Value::Object(context).to_string(),
            entities_json: Value::Array(list).to_string(),
            request_id: request_id.to_owned(),
        }
    }
}

/// Whether the session's declared intent (the verified token's RFC 9396
/// `authorization_details`, fixed at StartSession) covers `action` on
/// `resource`: some entry lists the action's id in `actions` and, when it
/// names an `identifier`, that is the resource as `<type>/<id>` (the type
/// compared without regard to ASCII case: `employee/1042` is
/// `Employee::"1042"`). An entry without `actions` covers nothing; one
/// without `identifier` covers the action on every resource. No intent, or
/// one that is not a list, covers nothing: policies read it as
/// `context.session.in_intent`.
fn intent_covers(details: Option<&Value>, action: &Uid, resource: &Uid) -> bool {
    let Some(Value::Array(entries)) = details else {
        return false;
    };
    entries.iter().any(|entry| {
        let names_action = entry
            .get("actions")
            .and_then(Value::as_array)
            .is_some_and(|actions| actions.iter().any(|a| a.as_str() == Some(&action.id)));
        let names_resource = match entry.get("identifier") {
            None => true,
            Some(Value::String(identifier)) => {
                identifier.split_once('/').is_some_and(|(r#type, id)| {
                    r#type.eq_ignore_ascii_case(&resource.r#type) && id == resource.id
                })
            }
            Some(_) => false,
        };
        names_action && names_resource
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uids_are_checked() {
        let ok = pb::EntityUid {
            r#type: "Hr::Employee".into(),
            id: "1042".into(),
        };
        assert_eq!(
            uid("resource", Some(&ok)).unwrap().cedar(),
            r#"Hr::Employee::"1042""#
        );
        for (t, id) in [
            ("", "1"),
            ("Hr::", "1"),
            ("1Bad", "1"),
            ("Hr Employee", "1"),
            ("Employee", ""),
            ("Employee", "a\nb"),
        ] {
            let bad = pb::EntityUid {
                r#type: t.into(),
                id: id.into(),
            };
            assert!(uid("resource", Some(&bad)).is_err(), "{t:?} {id:?}");
        }
        assert!(uid("resource", None).is_err());
        let quoted = Uid {
            r#type: "E".into(),
            id: "a\"b".into(),
        };
        assert_eq!(quoted.cedar(), r#"E::"a\"b""#);
    }

    #[test]
    fn the_declared_intent_covers_only_what_it_names() {
        let act = |id: &str| Uid {
            r#type: "Action".into(),
            id: id.into(),
        };
        let employee = |id: &str| Uid {
            r#type: "Employee".into(),
            id: id.into(),
        };
        let intent = json!([
            {"type": "hr_record_access", "actions": ["read", "offboard"], "identifier": "employee/1042"},
            {"type": "directory", "actions": ["list"]},
        ]);
        let covers = |a: &str, r: &str| intent_covers(Some(&intent), &act(a), &employee(r));
        assert!(covers("read", "1042"));
        assert!(covers("offboard", "1042"));
        assert!(covers("list", "7"), "no identifier: every resource");
        assert!(!covers("read", "1043"), "another employee");
        assert!(!covers("update_salary", "1042"), "an action not declared");
        assert!(!covers("read", "1042/x"));
        let other_type = Uid {
            r#type: "Payroll".into(),
            id: "1042".into(),
        };
        assert!(!intent_covers(Some(&intent), &act("read"), &other_type));
        for absent in [
            None,
            Some(json!({"actions": ["read"]})),
            Some(json!([{"identifier": "employee/1042"}])),
            Some(json!([{"actions": "read"}])),
            Some(json!([{"actions": ["read"], "identifier": 1042}])),
            Some(json!("read")),
        ] {
            assert!(
                !intent_covers(absent.as_ref(), &act("read"), &employee("1042")),
                "{absent:?}"
            );
        }
    }

    #[test]
    fn reserved_and_duplicate_context_keys_are_refused() {
        assert!(agent_context("").unwrap().is_empty());
        assert!(agent_context(r#"{"ticket_ref":"x"}"#).is_ok());
        for bad in [
            r#"{"approval":{"granted":true}}"#,
            r#"{"network":{}}"#,
            r#"{"a":1,"a":2}"#,
            "[]",
            "not json",
        ] {
            assert!(
                matches!(agent_context(bad), Err(FacadeError::InvalidRequest(_))),
                "{bad}"
            );
        }
    }

    #[test]
    fn weekday_and_hour_follow_the_offset() {
        // 2026-12-07 is a Monday; 08:30 UTC.
        let t = UNIX_EPOCH + std::time::Duration::from_secs(1_796_632_200);
        let utc = now_context(ClockConfig::default(), t);
        assert_eq!(
            (utc["weekday"].as_i64(), utc["hour"].as_i64()),
            (Some(1), Some(8))
        );
        let behind = now_context(
            ClockConfig {
                utc_offset_minutes: -600,
            },
            t,
        );
        assert_eq!(
            (behind["weekday"].as_i64(), behind["hour"].as_i64()),
            (Some(7), Some(22))
        );
    }

    #[test]
    fn a_proxy_header_is_believed_only_from_a_trusted_proxy() {
        let network = NetworkConfig {
            trusted_proxies: vec!["10.0.0.0/8".parse().unwrap()],
            client_address_header: Some("x-forwarded-for".into()),
            zones: vec![],
        };
        let mut headers = tonic::metadata::MetadataMap::new();
        headers.insert("x-forwarded-for", "203.0.113.7, 10.0.0.2".parse().unwrap());
        let from_proxy = caller_address(&network, Some("10.0.0.1".parse().unwrap()), &headers);
        assert_eq!(from_proxy, Some("203.0.113.7".parse().unwrap()));
        let direct = caller_address(&network, Some("198.51.100.1".parse().unwrap()), &headers);
        assert_eq!(direct, Some("198.51.100.1".parse().unwrap()));
        let mut garbled = tonic::metadata::MetadataMap::new();
        garbled.insert("x-forwarded-for", "10.1.1.1, not-an-ip".parse().unwrap());
        let proxy: IpAddr = "10.0.0.1".parse().unwrap();
        assert_eq!(caller_address(&network, Some(proxy), &garbled), Some(proxy));
    }
}
