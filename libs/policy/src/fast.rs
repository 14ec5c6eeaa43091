//! A fast path from parsed JSON to Cedar values for the explicit forms
//! (`bool`, `Long`, string, set, record, `{"__entity": …}`), skipping Cedar's
//! schema-directed JSON parser, which costs several times more per request.
//!
//! INVARIANT: the fast path never decides anything on its own. What it
//! builds is validated against the schema by `Request::new` and
//! `Entities::add_entities`, and on any doubt (an `__extn`, an implicit
//! entity reference, a number that is not a `Long`, `null`, entity tags, a
//! validation failure) the caller falls back to Cedar's JSON parser, which
//! also produces the error message.

use std::collections::{HashMap, HashSet};
use std::str::FromStr as _;

use cedar_policy::{Context, Entity, EntityId, EntityTypeName, EntityUid, RestrictedExpression};
use serde_json::{Map, Value};

fn uid(json: &Value) -> Option<EntityUid> {
    let map = json.as_object()?;
    let map = match map.get("__entity") {
        Some(inner) => inner.as_object()?,
        None => map,
    };
    if map.len() != 2 {
        return None;
    }
    let type_name = EntityTypeName::from_str(map.get("type")?.as_str()?).ok()?;
    Some(EntityUid::from_type_name_and_id(
        type_name,
        EntityId::new(map.get("id")?.as_str()?),
    ))
}

fn value(json: &Value) -> Option<RestrictedExpression> {
    Some(match json {
        Value::Bool(b) => RestrictedExpression::new_bool(*b),
        Value::Number(n) => RestrictedExpression::new_long(n.as_i64()?),
        Value::String(s) => RestrictedExpression::new_string(s.clone()),
        Value::Array(items) => {
            RestrictedExpression::new_set(items.iter().map(value).collect::<Option<Vec<_>>>()?)
        }
        Value::Object(map) => {
            if map.contains_key("__extn") {
                return None;
            }
            if let Some(entity) = map.get("__entity") {
                if map.len() != 1 {
                    return None;
                }
                return Some(RestrictedExpression::new_entity_uid(uid(entity)?));
            }
            RestrictedExpression::new_record(fields(map)?).ok()?
        }
        Value::Null => return None,
    })
}

fn fields(map: &Map<String, Value>) -> Option<Vec<(String, RestrictedExpression)>> {
    map.iter()
        .map(|(k, v)| Some((k.clone(), value(v)?)))
        .collect()
}

/// The context, when it only uses explicit forms.
pub(crate) fn context(json: &Value) -> Option<Context> {
    Context::from_pairs(fields(json.as_object()?)?).ok()
}

/// The request entities, when they only use explicit forms.
pub(crate) fn entities(json: &[Value]) -> Option<Vec<Entity>> {
    json.iter()
        .map(|item| {
            let map = item.as_object()?;
            if map
                .keys()
                .any(|k| !matches!(k.as_str(), "uid" | "attrs" | "parents"))
            {
                return None;
            }
            let attrs: HashMap<String, RestrictedExpression> = match map.get("attrs") {
                Some(Value::Object(attrs)) => fields(attrs)?.into_iter().collect(),
                None => HashMap::new(),
                Some(_) => return None,
            };
            let parents: HashSet<EntityUid> = match map.get("parents") {
                Some(Value::Array(parents)) => parents.iter().map(uid).collect::<Option<_>>()?,
                None => HashSet::new(),
                Some(_) => return None,
            };
            Entity::new(uid(map.get("uid")?)?, attrs, parents).ok()
        })
        .collect()
}
