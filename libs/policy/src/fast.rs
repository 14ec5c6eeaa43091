//! The hot path: JSON text straight to Cedar values for the explicit forms
//! (`bool`, `Long`, string, set, record, `{"__entity": …}`), without Cedar's
//! schema-directed JSON parser and without a `serde_json::Value` in between
//! (together several times the cost of the evaluation itself).
//!
//! INVARIANT: the fast path never decides anything on its own. What it
//! builds is validated against the schema by `Request::new` and
//! `Entities::add_entities`, and on any doubt (a `__`-prefixed key other
//! than a lone `__entity` escape, at any level; an implicit entity
//! reference; a number that is not a `Long`; `null`; an entity without
//! `attrs` or `parents`, or with `tags`; duplicate keys; a limit; a
//! validation failure) the caller takes the general path, Cedar's own
//! parser, which also writes the error message. Limits are counted as the
//! general path counts them: an `__entity` escape is the two objects it is.
//! `eval_differential_tests.rs` checks this against Cedar's own path on
//! generated schemas, policies and requests.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::str::FromStr as _;

use cedar_policy::{Entity, EntityId, EntityTypeName, EntityUid, RestrictedExpression};
use serde::de::{
    DeserializeSeed, Deserializer, Error as _, IgnoredAny, MapAccess, SeqAccess, Visitor,
};

/// Entity type names the schema declares, by their text.
pub(crate) type TypeNames = HashMap<String, EntityTypeName>;

/// Nesting depth of an entity's attributes accepted on the fast path.
const ENTITY_ATTR_DEPTH: usize = 32;

#[derive(Clone, Copy)]
struct Expr<'a> {
    depth_left: usize,
    types: &'a TypeNames,
}

impl<'de> DeserializeSeed<'de> for Expr<'_> {
    type Value = RestrictedExpression;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Expr<'_> {
    type Value = RestrictedExpression;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an explicit Cedar JSON value")
    }

    fn visit_bool<E: serde::de::Error>(self, v: bool) -> Result<Self::Value, E> {
        Ok(RestrictedExpression::new_bool(v))
    }

    fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Self::Value, E> {
        Ok(RestrictedExpression::new_long(v))
    }

    fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Self::Value, E> {
        i64::try_from(v)
            .map(RestrictedExpression::new_long)
            .map_err(|_| E::custom("not a Long"))
    }

    fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Self::Value, E> {
        Ok(RestrictedExpression::new_string(v.to_owned()))
    }

    fn visit_string<E: serde::de::Error>(self, v: String) -> Result<Self::Value, E> {
        Ok(RestrictedExpression::new_string(v))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let inner = self.nested().ok_or_else(|| A::Error::custom("too deep"))?;
        let mut items = Vec::new();
        while let Some(item) = seq.next_element_seed(inner)? {
            items.push(item);
        }
        Ok(RestrictedExpression::new_set(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let inner = self.nested().ok_or_else(|| A::Error::custom("too deep"))?;
        let mut fields = Vec::new();
        while let Some(key) = map.next_key::<String>()? {
            match key.as_str() {
                "__entity" if fields.is_empty() => {
                    // `{"__entity": {"type", "id"}}` is two objects deep,
                    // as the general path's depth limit counts it.
                    inner.nested().ok_or_else(|| A::Error::custom("too deep"))?;
                    let uid = map.next_value_seed(Uid(self.types))?;
                    if map.next_key::<IgnoredAny>()?.is_some() {
                        return Err(A::Error::custom("`__entity` stands alone"));
                    }
                    return Ok(RestrictedExpression::new_entity_uid(uid));
                }
                // `__extn`, `__expr`, and whatever Cedar reserves next.
                _ if is_reserved(&key) => return Err(reserved()),
                _ => {
                    let value = map.next_value_seed(inner)?;
                    fields.push((key, value));
                }
            }
        }
        RestrictedExpression::new_record(fields).map_err(A::Error::custom)
    }
}

/// Cedar's JSON formats give `__`-prefixed keys meanings of their own
/// (`__entity`, `__extn`, the removed `__expr`), including at the top level
/// of a context: the fast path reads none of them as plain keys.
fn is_reserved(key: &str) -> bool {
    key.starts_with("__")
}

fn reserved<E: serde::de::Error>() -> E {
    E::custom("`__` keys go the general way")
}

/// Blank JSON text, read as `{}` or `[]`. Only JSON's own whitespace (RFC
/// 8259: space, tab, line feed, carriage return) counts: text made of other
/// Unicode spaces is not JSON, and Cedar refuses it.
pub(crate) fn is_blank(text: &str) -> bool {
    text.bytes()
        .all(|b| matches!(b, b' ' | b'\t' | b'\n' | b'\r'))
}

impl Expr<'_> {
    fn nested(self) -> Option<Self> {
        Some(Self {
            depth_left: self.depth_left.checked_sub(1)?,
            types: self.types,
        })
    }
}

/// `{"type": …, "id": …}`.
#[derive(Clone, Copy)]
struct Uid<'a>(&'a TypeNames);

impl<'de> DeserializeSeed<'de> for Uid<'_> {
    type Value = EntityUid;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for Uid<'_> {
    type Value = EntityUid;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an entity uid")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let (mut type_name, mut id) = (None, None);
        while let Some(key) = map.next_key::<String>()? {
            match key.as_str() {
                "type" if type_name.is_none() => type_name = Some(map.next_value::<String>()?),
                "id" if id.is_none() => id = Some(map.next_value::<String>()?),
                _ => return Err(A::Error::custom("unexpected key in an entity uid")),
            }
        }
        let (Some(type_name), Some(id)) = (type_name, id) else {
            return Err(A::Error::custom("an entity uid has `type` and `id`"));
        };
        let type_name = match self.0.get(&type_name) {
            Some(known) => known.clone(),
            None => EntityTypeName::from_str(&type_name).map_err(A::Error::custom)?,
        };
        Ok(EntityUid::from_type_name_and_id(
            type_name,
            EntityId::new(id),
        ))
    }
}

/// Top-level context object → its fields, nested at most `max_depth`.
struct ContextFields<'a>(Expr<'a>);

impl<'de> Visitor<'de> for ContextFields<'_> {
    type Value = Vec<(String, RestrictedExpression)>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a context object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let inner = self
            .0
            .nested()
            .ok_or_else(|| A::Error::custom("too deep"))?;
        let mut fields = Vec::new();
        while let Some(key) = map.next_key::<String>()? {
            if is_reserved(&key) {
                return Err(reserved());
            }
            let value = map.next_value_seed(inner)?;
            fields.push((key, value));
        }
        Ok(fields)
    }
}

/// The context's fields, when the text is an object in explicit forms
/// nested at most `max_depth` deep.
pub(crate) fn context(
    text: &str,
    max_depth: usize,
    types: &TypeNames,
) -> Option<Vec<(String, RestrictedExpression)>> {
    // Blank is `{}`, one level deep like any object: a depth limit of 0
    // refuses both.
    let text = if is_blank(text) { "{}" } else { text };
    let mut de = serde_json::Deserializer::from_str(text);
    let fields = de
        .deserialize_map(ContextFields(Expr {
            depth_left: max_depth,
            types,
        }))
        .ok()?;
    de.end().ok()?;
    Some(fields)
}

struct EntityVisitor<'a>(&'a TypeNames);

impl<'de> DeserializeSeed<'de> for EntityVisitor<'_> {
    type Value = Entity;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for EntityVisitor<'_> {
    type Value = Entity;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a Cedar entity")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let expr = Expr {
            depth_left: ENTITY_ATTR_DEPTH,
            types: self.0,
        };
        let (mut uid, mut attrs, mut parents) = (None, None, None);
        while let Some(key) = map.next_key::<String>()? {
            match key.as_str() {
                "uid" if uid.is_none() => uid = Some(map.next_value_seed(Uid(self.0))?),
                "attrs" if attrs.is_none() => attrs = Some(map.next_value_seed(Attrs(expr))?),
                "parents" if parents.is_none() => {
                    parents = Some(map.next_value_seed(Parents(self.0))?)
                }
                // `tags` and anything else: the general path.
                _ => return Err(A::Error::custom("not on the fast path")),
            }
        }
        // Cedar's entity format requires all three, empty or not.
        let (Some(uid), Some(attrs), Some(parents)) = (uid, attrs, parents) else {
            return Err(A::Error::custom(
                "an entity has `uid`, `attrs` and `parents`",
            ));
        };
        Entity::new(uid, attrs, parents).map_err(A::Error::custom)
    }
}

struct Attrs<'a>(Expr<'a>);

impl<'de> DeserializeSeed<'de> for Attrs<'_> {
    type Value = HashMap<String, RestrictedExpression>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for Attrs<'_> {
    type Value = HashMap<String, RestrictedExpression>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("entity attributes")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut attrs = HashMap::new();
        while let Some(key) = map.next_key::<String>()? {
            if is_reserved(&key) {
                return Err(reserved());
            }
            let value = map.next_value_seed(self.0)?;
            if attrs.insert(key, value).is_some() {
                return Err(A::Error::custom("duplicate attribute"));
            }
        }
        Ok(attrs)
    }
}

struct Parents<'a>(&'a TypeNames);

impl<'de> DeserializeSeed<'de> for Parents<'_> {
    type Value = HashSet<EntityUid>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_seq(self)
    }
}

impl<'de> Visitor<'de> for Parents<'_> {
    type Value = HashSet<EntityUid>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a list of parent uids")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let mut parents = HashSet::new();
        while let Some(uid) = seq.next_element_seed(Uid(self.0))? {
            parents.insert(uid);
        }
        Ok(parents)
    }
}

struct EntityList<'a> {
    types: &'a TypeNames,
    max: usize,
}

impl<'de> Visitor<'de> for EntityList<'_> {
    type Value = Vec<Entity>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a list of entities")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let mut out = Vec::new();
        while let Some(entity) = seq.next_element_seed(EntityVisitor(self.types))? {
            if out.len() == self.max {
                return Err(A::Error::custom("over the limit"));
            }
            out.push(entity);
        }
        Ok(out)
    }
}

/// The request entities, when the text is an array of at most `max`
/// entities in explicit forms.
pub(crate) fn entities(text: &str, max: usize, types: &TypeNames) -> Option<Vec<Entity>> {
    if is_blank(text) {
        return Some(Vec::new());
    }
    let mut de = serde_json::Deserializer::from_str(text);
    let list = de.deserialize_seq(EntityList { types, max }).ok()?;
    de.end().ok()?;
    Some(list)
}

/// Refuses JSON text in which an object repeats a key. `serde_json::Value`
/// keeps the last occurrence, which would let `{"approval":{"granted":false},
/// "approval":{"granted":true}}` mean something other than what a component
/// reading the first occurrence saw; Cedar's own parser refuses duplicates,
/// and so does the general path, before anything is evaluated.
pub fn reject_duplicate_keys(text: &str) -> Result<(), String> {
    #[derive(Clone, Copy)]
    struct NoDuplicates;

    impl<'de> DeserializeSeed<'de> for NoDuplicates {
        type Value = ();
        fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
            d.deserialize_any(self)
        }
    }

    impl<'de> Visitor<'de> for NoDuplicates {
        type Value = ();

        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("JSON")
        }

        fn visit_bool<E>(self, _: bool) -> Result<(), E> {
            Ok(())
        }
        fn visit_i64<E>(self, _: i64) -> Result<(), E> {
            Ok(())
        }
        fn visit_u64<E>(self, _: u64) -> Result<(), E> {
            Ok(())
        }
        fn visit_f64<E>(self, _: f64) -> Result<(), E> {
            Ok(())
        }
        fn visit_str<E>(self, _: &str) -> Result<(), E> {
            Ok(())
        }
        fn visit_unit<E>(self) -> Result<(), E> {
            Ok(())
        }

        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
            while seq.next_element_seed(self)?.is_some() {}
            Ok(())
        }

        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
            let mut seen = HashSet::new();
            while let Some(key) = map.next_key::<String>()? {
                if !seen.insert(key.clone()) {
                    return Err(A::Error::custom(format!(
                        "duplicate key `{}`",
                        tether_runtime::clip(&key)
                    )));
                }
                map.next_value_seed(self)?;
            }
            Ok(())
        }
    }

    let mut de = serde_json::Deserializer::from_str(text);
    NoDuplicates
        .deserialize(&mut de)
        .map_err(|e| e.to_string())?;
    de.end().map_err(|e| e.to_string())
}
