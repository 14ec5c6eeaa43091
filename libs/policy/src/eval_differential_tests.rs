//! The direct path against Cedar's own, on generated packs and requests.
//!
//! Small grammars generate a schema (three entity types with `Bool`,
//! `Long`, `String`, set, record and entity-reference attributes, some
//! optional, some with `__`-prefixed names; a context; one or two actions),
//! strictly valid policies over those attributes (permits, forbids, step-ups
//! with binding messages, conditions that overflow or read a missing
//! entity), and requests whose entities and context are mostly well-formed
//! and sometimes not: `__entity`, `__extn` and `__expr` keys at any depth,
//! entities without `attrs` or `parents`, duplicate keys, numbers that are
//! not `Long`s, blank and Unicode-space text, deep nesting, tight limits.
//!
//! On every request the direct path either declines or answers exactly what
//! the general path (Cedar's parsers) answers: outcome, determining policy
//! ids (sorted), reasons and errors.

use std::sync::atomic::{AtomicUsize, Ordering};

use proptest::collection::vec;
use proptest::prelude::*;
use proptest::sample::select;
use proptest::test_runner::{Config, TestCaseError, TestRunner};

use super::*;
use crate::pack::PackSources;

/// Generated packs per run; each is asked several requests.
const CASES: u32 = 2_000;
/// Entity types `E0`, `E1`, `E2`.
const TYPES: usize = 3;
const IDS: &[&str] = &["0", "1"];

#[derive(Debug, Clone)]
enum Ty {
    Bool,
    Long,
    Str,
    Set(Box<Ty>),
    Record(Vec<Attr>),
    Entity(usize),
}

#[derive(Debug, Clone)]
struct Attr {
    name: &'static str,
    ty: Ty,
    optional: bool,
}

#[derive(Debug, Clone)]
struct Model {
    /// Each entity type's attributes.
    types: Vec<Vec<Attr>>,
    /// `(child, parent)` memberships the schema allows (child < parent).
    memberships: Vec<(usize, usize)>,
    context: Vec<Attr>,
    /// Each action's principal and resource type.
    actions: Vec<(usize, usize)>,
}

// ---------------------------------------------------------------- schema

fn name() -> BoxedStrategy<&'static str> {
    prop_oneof![
        8 => select(&["a", "b", "c", "n"][..]),
        1 => select(&["__x", "__extn", "__entity", "__expr"][..]),
    ]
    .boxed()
}

fn ty(depth: u32) -> BoxedStrategy<Ty> {
    let leaf = prop_oneof![
        3 => Just(Ty::Bool),
        3 => Just(Ty::Long),
        3 => Just(Ty::Str),
        2 => (0..TYPES).prop_map(Ty::Entity),
    ];
    if depth == 0 {
        return leaf.boxed();
    }
    prop_oneof![
        6 => leaf,
        2 => prop_oneof![
            Just(Ty::Long),
            Just(Ty::Str),
            Just(Ty::Bool),
            (0..TYPES).prop_map(Ty::Entity),
        ]
        .prop_map(|t| Ty::Set(Box::new(t))),
        2 => attrs(depth - 1, 0.05).prop_map(Ty::Record),
    ]
    .boxed()
}

/// Up to four attributes; with probability `extn`, one more named
/// `__extn`.
fn attrs(depth: u32, extn: f64) -> BoxedStrategy<Vec<Attr>> {
    (
        vec((name(), ty(depth), proptest::bool::weighted(0.3)), 0..4),
        proptest::option::weighted(extn, any::<bool>()),
    )
        .prop_map(|(list, extn)| {
            let mut out: Vec<Attr> = Vec::new();
            // Shaped like an extension escape: a value of this type is
            // `{"__extn": {"fn": …, "arg": …}}` inside its record.
            if let Some(optional) = extn {
                let string = |name| Attr {
                    name,
                    ty: Ty::Str,
                    optional: false,
                };
                out.push(Attr {
                    name: "__extn",
                    ty: Ty::Record(vec![string("fn"), string("arg")]),
                    optional,
                });
            }
            for (name, ty, optional) in list {
                if out.iter().all(|a| a.name != name) {
                    out.push(Attr { name, ty, optional });
                }
            }
            out
        })
        .boxed()
}

fn model() -> BoxedStrategy<Model> {
    (
        vec(attrs(1, 0.05), TYPES),
        vec(any::<bool>(), 3),
        attrs(2, 0.15),
        vec((0..TYPES, 0..TYPES), 1..3),
    )
        .prop_map(|(types, member, context, actions)| Model {
            types,
            memberships: [(0, 1), (0, 2), (1, 2)]
                .into_iter()
                .zip(member)
                .filter_map(|(pair, keep)| keep.then_some(pair))
                .collect(),
            context,
            actions,
        })
        .boxed()
}

fn ty_text(ty: &Ty) -> String {
    match ty {
        Ty::Bool => "Bool".into(),
        Ty::Long => "Long".into(),
        Ty::Str => "String".into(),
        Ty::Set(inner) => format!("Set<{}>", ty_text(inner)),
        Ty::Record(attrs) => format!("{{ {} }}", attrs_text(attrs)),
        Ty::Entity(t) => format!("E{t}"),
    }
}

fn attrs_text(attrs: &[Attr]) -> String {
    attrs
        .iter()
        .map(|a| {
            let optional = if a.optional { "?" } else { "" };
            format!("{:?}{optional}: {}", a.name, ty_text(&a.ty))
        })
        .collect::<Vec<_>>()
        .join(", ")
}

fn schema_text(model: &Model) -> String {
    let mut out = String::new();
    for (t, attrs) in model.types.iter().enumerate() {
        let parents: Vec<String> = model
            .memberships
            .iter()
            .filter(|(child, _)| *child == t)
            .map(|(_, parent)| format!("E{parent}"))
            .collect();
        let within = if parents.is_empty() {
            String::new()
        } else {
            format!(" in [{}]", parents.join(", "))
        };
        out.push_str(&format!(
            "entity E{t}{within} = {{ {} }};\n",
            attrs_text(attrs)
        ));
    }
    let mut context = attrs_text(&model.context);
    if !context.is_empty() {
        context.push_str(", ");
    }
    out.push_str(&format!(
        "type Ctx = {{ {context}\"approval\"?: {{ \"granted\": Bool }} }};\n"
    ));
    for (a, (p, r)) in model.actions.iter().enumerate() {
        out.push_str(&format!(
            "action \"a{a}\" appliesTo {{ principal: E{p}, resource: E{r}, context: Ctx }};\n"
        ));
    }
    out
}

// -------------------------------------------------------------- policies

/// A Bool condition on the value of type `ty` at `path`.
fn on_value(path: String, ty: &Ty, model: &Model, hops: u32) -> BoxedStrategy<String> {
    match ty {
        Ty::Bool => Just(path).boxed(),
        Ty::Long => prop_oneof![
            3 => (-2i64..12).prop_map({
                let path = path.clone();
                move |k| format!("{path} > {k}")
            }),
            2 => (-2i64..12).prop_map({
                let path = path.clone();
                move |k| format!("{path} == {k}")
            }),
            // Overflows for most values: an evaluation error.
            1 => Just(format!("{path} * 4611686018427387904 > 0")),
        ]
        .boxed(),
        Ty::Str => prop_oneof![
            select(&["", "x", "abc"][..]).prop_map({
                let path = path.clone();
                move |s| format!("{path} == {s:?}")
            }),
            Just(format!("{path} like \"*b*\"")),
        ]
        .boxed(),
        Ty::Set(inner) => {
            let element = match &**inner {
                Ty::Long => "1".to_owned(),
                Ty::Str => "\"x\"".to_owned(),
                Ty::Bool => "true".to_owned(),
                Ty::Entity(t) => format!("E{t}::\"0\""),
                Ty::Set(_) | Ty::Record(_) => return Just(format!("{path}.isEmpty()")).boxed(),
            };
            prop_oneof![
                Just(format!("{path}.contains({element})")),
                Just(format!("{path}.isEmpty()")),
            ]
            .boxed()
        }
        Ty::Record(attrs) => on_attrs(path, attrs, model, hops),
        Ty::Entity(t) => {
            let same = format!("{path} == E{t}::\"0\"");
            let within = format!("{path} in E{t}::\"1\"");
            if hops == 0 {
                prop_oneof![Just(same), Just(within)].boxed()
            } else {
                // Reading the referenced entity: an error when the request
                // does not carry it.
                prop_oneof![
                    1 => Just(same),
                    1 => Just(within),
                    2 => on_attrs(path, &model.types[*t], model, hops - 1),
                ]
                .boxed()
            }
        }
    }
}

/// A Bool condition on one of `attrs` of `path`, guarded by `has` when the
/// attribute is optional (strict validation requires it).
fn on_attrs(path: String, attrs: &[Attr], model: &Model, hops: u32) -> BoxedStrategy<String> {
    if attrs.is_empty() {
        return Just("true".to_owned()).boxed();
    }
    let choices: Vec<BoxedStrategy<String>> = attrs
        .iter()
        .map(|a| {
            let inner = format!("{path}[{:?}]", a.name);
            let guard = a.optional.then(|| format!("{path} has {:?}", a.name));
            on_value(inner, &a.ty, model, hops)
                .prop_map(move |atom| match &guard {
                    Some(guard) => format!("({guard} && {atom})"),
                    None => atom,
                })
                .boxed()
        })
        .collect();
    proptest::strategy::Union::new(choices).boxed()
}

fn condition(model: &Model, scope: Option<usize>, depth: u32) -> BoxedStrategy<String> {
    let mut atoms: Vec<(u32, BoxedStrategy<String>)> = vec![
        (
            1,
            select(&["true", "false"][..])
                .prop_map(str::to_owned)
                .boxed(),
        ),
        (3, on_attrs("context".into(), &model.context, model, 1)),
    ];
    if let Some(action) = scope {
        let (p, r) = model.actions[action];
        atoms.push((3, on_attrs("principal".into(), &model.types[p], model, 1)));
        atoms.push((3, on_attrs("resource".into(), &model.types[r], model, 1)));
        atoms.push((1, Just(format!("principal in E{p}::\"1\"")).boxed()));
    }
    let atom = proptest::strategy::Union::new_weighted(atoms).boxed();
    if depth == 0 {
        return atom;
    }
    let sub = || condition(model, scope, depth - 1);
    prop_oneof![
        4 => atom,
        1 => (sub(), sub()).prop_map(|(a, b)| format!("({a} && {b})")),
        1 => (sub(), sub()).prop_map(|(a, b)| format!("({a} || {b})")),
        1 => sub().prop_map(|a| format!("!({a})")),
    ]
    .boxed()
}

fn policy(model: &Model) -> BoxedStrategy<String> {
    let actions = model.actions.len();
    let model = model.clone();
    (
        0..3u8,
        proptest::option::weighted(0.8, 0..actions),
        any::<bool>(),
    )
        .prop_flat_map(move |(kind, scope, message)| {
            condition(&model, scope, 2).prop_map(move |cond| {
                let scope_text = match scope {
                    Some(a) => format!("action == Action::\"a{a}\""),
                    None => "action".to_owned(),
                };
                let head = format!("(principal, {scope_text}, resource)");
                match kind {
                    0 => format!("permit{head} when {{ {cond} }};"),
                    1 => format!("forbid{head} when {{ {cond} }};"),
                    _ => {
                        let message = if message {
                            "@binding_message(\"Do {action.id} to {resource.id}?\") "
                        } else {
                            ""
                        };
                        format!(
                            "@step_up(\"ciba\") {message}forbid{head} when {{ {cond} }} \
                             unless {{ context has \"approval\" && context[\"approval\"][\"granted\"] }};"
                        )
                    }
                }
            })
        })
        .boxed()
}

// ------------------------------------------------------------------ JSON

/// JSON as text, so that it can also be what no serializer writes
/// (repeated keys, numbers that are not `Long`s).
#[derive(Debug, Clone)]
enum J {
    Null,
    Bool(bool),
    Num(String),
    Str(String),
    Arr(Vec<J>),
    Obj(Vec<(String, J)>),
}

impl J {
    fn text(&self) -> String {
        let mut out = String::new();
        self.write(&mut out);
        out
    }

    fn write(&self, out: &mut String) {
        match self {
            J::Null => out.push_str("null"),
            J::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
            J::Num(n) => out.push_str(n),
            J::Str(s) => out.push_str(&serde_json::Value::from(s.as_str()).to_string()),
            J::Arr(items) => {
                out.push('[');
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    item.write(out);
                }
                out.push(']');
            }
            J::Obj(fields) => {
                out.push('{');
                for (i, (key, value)) in fields.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    out.push_str(&serde_json::Value::from(key.as_str()).to_string());
                    out.push(':');
                    value.write(out);
                }
                out.push('}');
            }
        }
    }
}

fn obj(fields: &[(&str, J)]) -> J {
    J::Obj(
        fields
            .iter()
            .map(|(k, v)| ((*k).to_owned(), v.clone()))
            .collect(),
    )
}

fn s(text: &str) -> J {
    J::Str(text.to_owned())
}

fn uid_json(type_name: String, id: &str) -> J {
    obj(&[("type", J::Str(type_name)), ("id", s(id))])
}

/// A uid of a generated type (sometimes one the schema does not declare).
fn uid(types: usize) -> BoxedStrategy<J> {
    let type_name = prop_oneof![
        8 => (0..types).prop_map(|t| format!("E{t}")),
        1 => select(&["Nope", "Action"][..]).prop_map(str::to_owned),
    ];
    (type_name, select(IDS))
        .prop_map(|(t, id)| uid_json(t, id))
        .boxed()
}

/// Values Cedar refuses or reads in its own way.
fn odd_value() -> BoxedStrategy<J> {
    let u = || uid_json("E0".into(), "0");
    prop_oneof![
        Just(J::Null),
        select(
            &[
                "1.5",
                "1e2",
                "-0",
                "18446744073709551615",
                "9223372036854775808"
            ][..]
        )
        .prop_map(|n| J::Num(n.to_owned())),
        Just(obj(&[(
            "__extn",
            obj(&[("fn", s("decimal")), ("arg", s("1.5"))])
        )])),
        Just(obj(&[(
            "__extn",
            obj(&[("fn", s("unknown")), ("arg", s("x"))])
        )])),
        Just(obj(&[("__expr", s("1 == 1"))])),
        Just(obj(&[("__entity", u()), ("x", J::Num("1".into()))])),
        Just(obj(&[("x", J::Num("1".into())), ("__entity", u())])),
        Just(obj(&[("__entity", u())])),
        Just(obj(&[(
            "__entity",
            obj(&[("type", s("E0")), ("id", s("0")), ("x", s("y"))])
        )])),
        Just(obj(&[("k", J::Num("1".into())), ("k", J::Num("2".into()))])),
        (1usize..10).prop_map(|depth| {
            let mut value = J::Bool(true);
            for _ in 0..depth {
                value = obj(&[("d", value)]);
            }
            value
        }),
        Just(J::Arr(Vec::new())),
        Just(obj(&[])),
        Just(s("x")),
        any::<bool>().prop_map(J::Bool),
    ]
    .boxed()
}

/// A value of type `ty`, well-formed most of the time.
fn value(ty: &Ty, depth: u32) -> BoxedStrategy<J> {
    prop_oneof![40 => good_value(ty, depth), 1 => odd_value()].boxed()
}

fn good_value(ty: &Ty, depth: u32) -> BoxedStrategy<J> {
    match ty {
        Ty::Bool => any::<bool>().prop_map(J::Bool).boxed(),
        Ty::Long => prop_oneof![
            6 => -3i64..20,
            1 => Just(i64::MAX),
            1 => Just(i64::MIN),
            1 => Just(4_611_686_018_427_387_904),
        ]
        .prop_map(|n| J::Num(n.to_string()))
        .boxed(),
        Ty::Str => select(&["", "x", "abc", "a\"b\\", "é\u{a0}"][..])
            .prop_map(s)
            .boxed(),
        Ty::Set(inner) => vec(value(inner, depth), 0..3).prop_map(J::Arr).boxed(),
        Ty::Record(attrs) => record(attrs, depth),
        Ty::Entity(t) => (
            select(IDS),
            prop_oneof![
                8 => Just(0u8), // `{"__entity": uid}`
                1 => Just(1u8), // an implicit reference, `{"type", "id"}`
                1 => Just(2u8), // an escape naming another type
            ],
        )
            .prop_map({
                let t = *t;
                move |(id, form)| match form {
                    0 => obj(&[("__entity", uid_json(format!("E{t}"), id))]),
                    1 => uid_json(format!("E{t}"), id),
                    _ => obj(&[("__entity", uid_json(format!("E{}", (t + 1) % TYPES), id))]),
                }
            })
            .boxed(),
    }
}

/// An object for `attrs`: optional attributes sometimes left out, a
/// required one rarely, and sometimes a key the type does not have.
fn record(attrs: &[Attr], depth: u32) -> BoxedStrategy<J> {
    let fields: Vec<BoxedStrategy<Option<(String, J)>>> = attrs
        .iter()
        .map(|a| {
            let keep = if a.optional { 0.6 } else { 0.98 };
            let name = a.name.to_owned();
            proptest::option::weighted(keep, value(&a.ty, depth))
                .prop_map(move |v| v.map(|v| (name.clone(), v)))
                .boxed()
        })
        .collect();
    let extra = proptest::option::weighted(
        0.03,
        (
            select(&["zz", "__x", "__extn", "__entity", "__expr"][..]),
            odd_value(),
        ),
    );
    (fields, extra)
        .prop_map(|(fields, extra)| {
            let mut fields: Vec<(String, J)> = fields.into_iter().flatten().collect();
            if let Some((key, value)) = extra {
                fields.push((key.to_owned(), value));
            }
            J::Obj(fields)
        })
        .boxed()
}

fn entity(model: &Model) -> BoxedStrategy<J> {
    let model = model.clone();
    (0..TYPES, select(IDS))
        .prop_flat_map(move |(t, id)| {
            let allowed: Vec<String> = model
                .memberships
                .iter()
                .filter(|(child, _)| *child == t)
                .map(|(_, parent)| format!("E{parent}"))
                .collect();
            // Mostly parents the schema allows, sometimes any uid.
            let usual = if allowed.is_empty() {
                Just(Vec::new()).boxed()
            } else {
                vec(
                    (select(allowed), select(IDS)).prop_map(|(t, id)| uid_json(t, id)),
                    0..3,
                )
                .boxed()
            };
            let parents = prop_oneof![30 => usual, 1 => vec(uid(TYPES), 1..2)].prop_map(J::Arr);
            (
                record(&model.types[t], 0),
                parents,
                // 0: well-formed; 1: no `attrs`; 2: no `parents`; 3: `tags`;
                // 4: the uid in implicit form is fine, but a repeated key is not.
                prop_oneof![
                    120 => Just(0u8),
                    1 => Just(1u8),
                    1 => Just(2u8),
                    1 => Just(3u8),
                    1 => Just(4u8),
                ],
            )
                .prop_map(move |(attrs, parents, shape)| {
                    let uid = uid_json(format!("E{t}"), id);
                    match shape {
                        1 => obj(&[("uid", uid), ("parents", parents)]),
                        2 => obj(&[("uid", uid), ("attrs", attrs)]),
                        3 => obj(&[
                            ("uid", uid),
                            ("attrs", attrs),
                            ("parents", parents),
                            ("tags", obj(&[])),
                        ]),
                        4 => obj(&[
                            ("uid", uid.clone()),
                            ("attrs", attrs),
                            ("parents", parents),
                            ("uid", uid),
                        ]),
                        _ => obj(&[("uid", uid), ("attrs", attrs), ("parents", parents)]),
                    }
                })
        })
        .boxed()
}

/// The entities with one of each uid, unless `repeat`.
fn distinct(list: Vec<J>, repeat: bool) -> Vec<J> {
    if repeat {
        return list;
    }
    let mut seen = Vec::new();
    let mut out = Vec::new();
    for entity in list {
        let uid = match &entity {
            J::Obj(fields) => fields
                .iter()
                .find(|(k, _)| k == "uid")
                .map(|(_, v)| v.text()),
            _ => None,
        };
        if !seen.contains(&uid) {
            seen.push(uid);
            out.push(entity);
        }
    }
    out
}

/// Text that is not a well-formed context or entity list, or is blank.
fn odd_text() -> BoxedStrategy<String> {
    select(
        &[
            "",
            " \n\t\r",
            "\u{a0}",
            "\u{2028}",
            "\u{3000}",
            " \u{85}",
            "\u{feff}{}",
            "{}",
            "[]",
            "null",
            "{} {}",
            "[null]",
            r#"{"__extn":{"fn":"ip","arg":"10.0.0.1"}}"#,
            r#"{"__extn":{"fn":"unknown","arg":"x"}}"#,
            r#"{"__entity":{"type":"E0","id":"0"}}"#,
            r#"{"__expr":"true"}"#,
        ][..],
    )
    .prop_map(str::to_owned)
    .boxed()
}

#[derive(Debug, Clone)]
struct Request {
    action: usize,
    principal: (String, &'static str),
    resource: (String, &'static str),
    context: String,
    entities: String,
    limits: Limits,
}

fn request(model: &Model) -> BoxedStrategy<Request> {
    let model = model.clone();
    (0..model.actions.len())
        .prop_flat_map(move |action| {
            let (p, r) = model.actions[action];
            let type_of = move |usual: usize| {
                prop_oneof![
                    20 => Just(format!("E{usual}")),
                    1 => (0..TYPES).prop_map(|t| format!("E{t}")),
                ]
            };
            let context = prop_oneof![
                20 => record(&model.context, 1).prop_map(|j| j.text()),
                // Approved, so that step-ups are lifted too.
                2 => record(&model.context, 1).prop_map(|j| match j {
                    J::Obj(mut fields) => {
                        fields.retain(|(k, _)| k != "approval");
                        fields.push(("approval".into(), obj(&[("granted", J::Bool(true))])));
                        J::Obj(fields).text()
                    }
                    other => other.text(),
                }),
                2 => odd_text(),
                // An extension escape as the whole context.
                1 => (select(&["ip", "decimal", "unknown"][..]), select(&["x", "10.0.0.1", "1.5"][..]))
                    .prop_map(|(f, arg)| {
                        obj(&[("__extn", obj(&[("fn", s(f)), ("arg", s(arg))]))]).text()
                    }),
                // The context as a whole inside a reserved key, at the top.
                1 => (select(&["__extn", "__entity", "__x"][..]), record(&model.context, 1))
                    .prop_map(|(key, j)| match j {
                        J::Obj(mut fields) => {
                            fields.insert(0, (key.to_owned(), obj(&[("fn", s("ip")), ("arg", s("1.2.3.4"))])));
                            J::Obj(fields).text()
                        }
                        other => other.text(),
                    }),
            ];
            let entities = prop_oneof![
                20 => (vec(entity(&model), 0..5), proptest::bool::weighted(0.05))
                    .prop_map(|(list, repeat)| J::Arr(distinct(list, repeat)).text()),
                1 => odd_text(),
            ];
            let limits = (
                prop_oneof![
                    1 => Just(0usize),
                    1 => Just(1),
                    1 => Just(2),
                    2 => Just(3),
                    40 => Just(8),
                ],
                prop_oneof![1 => Just(0usize), 1 => Just(2), 20 => Just(16)],
                prop_oneof![1 => Just(200usize), 20 => Just(256 * 1024)],
            )
                .prop_map(|(depth, entities, bytes)| Limits {
                    max_context_depth: depth,
                    max_entities: entities,
                    max_json_bytes: bytes,
                });
            (
                Just(action),
                (type_of(p), select(IDS)),
                (type_of(r), select(IDS)),
                context,
                entities,
                limits,
            )
                .prop_map(
                    |(action, principal, resource, context, entities, limits)| Request {
                        action,
                        principal,
                        resource,
                        context,
                        entities,
                        limits,
                    },
                )
        })
        .boxed()
}

#[derive(Debug, Clone)]
struct Case {
    schema: String,
    policies: Vec<String>,
    requests: Vec<Request>,
}

fn case() -> BoxedStrategy<Case> {
    model()
        .prop_flat_map(|model| {
            (
                Just(schema_text(&model)),
                vec(policy(&model), 1..6),
                vec(request(&model), 1..8),
            )
        })
        .prop_map(|(schema, policies, requests)| Case {
            schema,
            policies,
            requests,
        })
        .boxed()
}

// ------------------------------------------------------------------ test

#[derive(Default)]
struct Counts {
    packs: AtomicUsize,
    rejected_packs: AtomicUsize,
    requests: AtomicUsize,
    direct: AtomicUsize,
    refused: AtomicUsize,
    allow: AtomicUsize,
    deny: AtomicUsize,
    approval: AtomicUsize,
    errors: AtomicUsize,
}

fn bump(counter: &AtomicUsize) {
    counter.fetch_add(1, Ordering::Relaxed);
}

fn check(case: &Case, counts: &Counts) -> Result<(), TestCaseError> {
    bump(&counts.packs);
    let policies = case
        .policies
        .iter()
        .enumerate()
        .map(|(i, p)| format!("@id(\"p{i}\") {p}"))
        .collect::<Vec<_>>()
        .join("\n");
    let pack = match PolicyPack::from_sources(PackSources {
        schema: ("g.cedarschema".into(), case.schema.clone()),
        policies: vec![("g.cedar".into(), policies)],
        entities: None,
        source: "generated".into(),
    }) {
        Ok(pack) => pack,
        Err(_) => {
            bump(&counts.rejected_packs);
            return Ok(());
        }
    };
    for r in &case.requests {
        let action = format!("a{}", r.action);
        let q = Query {
            principal: (&r.principal.0, r.principal.1),
            action: ("Action", &action),
            resource: (&r.resource.0, r.resource.1),
            context_json: &r.context,
            entities_json: &r.entities,
        };
        bump(&counts.requests);
        let Ok((principal, action, resource)) = pack.checked_uids(&q, &r.limits) else {
            bump(&counts.refused);
            continue;
        };
        let uids = (&principal, &action, &resource);
        let general = pack.evaluate_general(&q, &r.limits, uids);
        // Cedar's own parsers, straight on the text: what they refuse, both
        // paths refuse (blank text, which Tether reads as `{}` and `[]`,
        // is JSON whitespace only).
        let json_blank = |text: &str| text.bytes().all(|b| b" \t\n\r".contains(&b));
        let cedar_refuses = (!json_blank(&r.context)
            && Context::from_json_str(&r.context, Some((&pack.schema, &action))).is_err())
            || (!json_blank(&r.entities)
                && Entities::from_json_str(&r.entities, Some(&pack.schema)).is_err());
        if cedar_refuses {
            prop_assert!(
                general.is_err(),
                "Cedar refuses what the general path accepted\ncontext: {:?}\nentities: {:?}",
                r.context,
                r.entities
            );
        }
        let direct = pack.evaluate_direct(&q, &r.limits, uids);
        if let Some(direct) = direct {
            bump(&counts.direct);
            prop_assert_eq!(
                Ok(direct),
                general.clone(),
                "the direct path answered differently\ncontext: {:?}\nentities: {:?}\nlimits: {:?}",
                r.context,
                r.entities,
                r.limits
            );
        }
        match &general {
            Err(_) => bump(&counts.refused),
            Ok(d) => {
                prop_assert!(d.policy_ids.is_sorted(), "{:?}", d.policy_ids);
                if !d.errors.is_empty() {
                    bump(&counts.errors);
                }
                match d.outcome {
                    Outcome::Allow => bump(&counts.allow),
                    Outcome::Deny => bump(&counts.deny),
                    Outcome::ApprovalRequired(_) => bump(&counts.approval),
                }
            }
        }
    }
    Ok(())
}

#[test]
fn the_direct_path_declines_or_agrees_with_cedar_on_generated_requests() {
    let mut runner = TestRunner::new(Config {
        cases: CASES,
        // No regression files in the tree; a failure prints its case.
        failure_persistence: None,
        ..Config::default()
    });
    let counts = Counts::default();
    let result = runner.run(&case(), |case| check(&case, &counts));
    if let Err(err) = result {
        panic!("{err}");
    }

    // Not vacuous: the packs load, and both paths saw every kind of answer.
    let get = |c: &AtomicUsize| c.load(Ordering::Relaxed);
    let (packs, requests) = (get(&counts.packs), get(&counts.requests));
    let summary = format!(
        "{packs} packs ({} rejected), {requests} requests: {} answered by the direct path, \
         {} refused, {} allow, {} deny, {} approval required, {} with evaluation errors",
        get(&counts.rejected_packs),
        get(&counts.direct),
        get(&counts.refused),
        get(&counts.allow),
        get(&counts.deny),
        get(&counts.approval),
        get(&counts.errors),
    );
    println!("{summary}");
    assert!(get(&counts.rejected_packs) * 20 <= packs, "{summary}");
    assert!(get(&counts.direct) * 8 >= requests, "{summary}");
    assert!(get(&counts.refused) * 10 >= requests, "{summary}");
    for kind in [
        &counts.allow,
        &counts.deny,
        &counts.approval,
        &counts.errors,
    ] {
        assert!(get(kind) * 100 >= requests, "{summary}");
    }
}
