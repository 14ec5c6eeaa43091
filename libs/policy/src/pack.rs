//! Loading and strict validation of a policy pack.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use cedar_policy::{
    ActionConstraint, Effect, Entities, EntityTypeName, EntityUid, Policy, PolicyId, PolicySet,
    Schema, ValidationMode, Validator,
};
use miette::Diagnostic;
use sha2::{Digest, Sha256};

use crate::step_up::{StepUpPolicy, parse_signal, parse_step_up};

/// The files a pack is built from, by name and content.
#[derive(Debug, Clone)]
pub struct PackSources {
    /// `(file name, text)` of the schema; a name ending in `.json` is read as
    /// Cedar's JSON schema format, anything else as Cedar schema syntax.
    pub schema: (String, String),
    /// `(file name, text)` of each policy file, in a stable order.
    pub policies: Vec<(String, String)>,
    /// `(file name, text)` of the static entities (Cedar entities JSON).
    pub entities: Option<(String, String)>,
    /// Where the sources came from, for reporting.
    pub source: String,
}

/// One reason a pack was rejected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// The file at fault, when known.
    pub file: Option<String>,
    /// 1-based line in that file, when known.
    pub line: Option<usize>,
    /// Cedar's (or our) message.
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (&self.file, self.line) {
            (Some(file), Some(line)) => write!(f, "{file}:{line}: {}", self.message),
            (Some(file), None) => write!(f, "{file}: {}", self.message),
            _ => f.write_str(&self.message),
        }
    }
}

/// A pack that could not be loaded. Nothing of it is used.
#[derive(Debug, Clone, thiserror::Error)]
#[error("policy pack `{source_name}` rejected: {}", render_problems(.problems))]
pub struct LoadError {
    /// The directory or bundle that was being loaded.
    pub source_name: String,
    /// Every problem found (at least one).
    pub problems: Vec<Problem>,
}

fn render_problems(problems: &[Problem]) -> String {
    problems
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

impl LoadError {
    fn one(source_name: &str, file: Option<&str>, message: impl Into<String>) -> Self {
        Self {
            source_name: source_name.to_owned(),
            problems: vec![Problem {
                file: file.map(str::to_owned),
                line: None,
                message: message.into(),
            }],
        }
    }
}

/// Counts reported by `GetPolicySet`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PackStats {
    pub policies: usize,
    pub permits: usize,
    pub forbids: usize,
    pub step_ups: usize,
    pub entities: usize,
}

/// A validated, immutable policy pack, ready to evaluate requests.
#[derive(Debug)]
pub struct PolicyPack {
    pub(crate) schema: Schema,
    pub(crate) policies: PolicySet,
    /// Static entities plus the schema's action entities.
    pub(crate) entities: Entities,
    pub(crate) step_ups: HashMap<PolicyId, StepUpPolicy>,
    /// The `@signal("…")` annotation of each policy that has one: what a
    /// decision it determines tells the facade's risk monitoring (e.g.
    /// `out_of_intent`).
    pub(crate) signals: HashMap<PolicyId, String>,
    pub(crate) actions: HashSet<EntityUid>,
    /// For each action, only the policies whose action scope admits it
    /// (Cedar evaluates every policy it is given; a policy for another
    /// action can never apply, so it is left out).
    pub(crate) slices: HashMap<EntityUid, PolicySet>,
    pub(crate) entity_types: HashSet<EntityTypeName>,
    /// Declared type names (entity types and action types) by their text.
    pub(crate) type_names: HashMap<String, EntityTypeName>,
    version: String,
    stats: PackStats,
    source: String,
}

/// Largest file a pack may contain; a policy pack is text written by people.
const MAX_FILE_BYTES: u64 = 16 * 1024 * 1024;

impl PolicyPack {
    /// Loads the pack in `dir`: exactly one schema, every `*.cedar` file
    /// (recursively, in path order) and an optional `entities.json`.
    pub fn load_dir(dir: &Path) -> Result<Self, LoadError> {
        let source = dir.display().to_string();
        let mut files = Vec::new();
        collect_files(dir, dir, &mut files)
            .map_err(|e| LoadError::one(&source, None, format!("cannot read directory: {e}")))?;
        files.sort();

        let mut schema = None;
        let mut policies = Vec::new();
        let mut entities = None;
        for rel in files {
            let name = rel.to_string_lossy().replace('\\', "/");
            let kind = if name.ends_with(".cedarschema") || name.ends_with(".cedarschema.json") {
                FileKind::Schema
            } else if name.ends_with(".cedar") {
                FileKind::Policy
            } else if name == "entities.json" {
                FileKind::Entities
            } else {
                continue;
            };
            let text =
                read_text(&dir.join(&rel)).map_err(|e| LoadError::one(&source, Some(&name), e))?;
            match kind {
                FileKind::Schema => {
                    if let Some((first, _)) = &schema {
                        return Err(LoadError::one(
                            &source,
                            Some(&name),
                            format!("a pack has exactly one schema, `{first}` is already one"),
                        ));
                    }
                    schema = Some((name, text));
                }
                FileKind::Policy => policies.push((name, text)),
                FileKind::Entities => entities = Some((name, text)),
            }
        }
        let schema = schema.ok_or_else(|| {
            LoadError::one(
                &source,
                None,
                "no schema (`*.cedarschema`) in the directory",
            )
        })?;
        Self::from_sources(PackSources {
            schema,
            policies,
            entities,
            source,
        })
    }

    /// Builds a pack from in-memory sources with the same checks as
    /// [`PolicyPack::load_dir`].
    pub fn from_sources(src: PackSources) -> Result<Self, LoadError> {
        let version = content_version(&src);
        let source = src.source.clone();
        let (schema_name, schema_text) = &src.schema;
        let schema = parse_schema(schema_name, schema_text).map_err(|problems| LoadError {
            source_name: source.clone(),
            problems,
        })?;

        let mut problems = Vec::new();
        let mut policies = PolicySet::new();
        // policy id -> (file, text) for error positions
        let mut origin: HashMap<PolicyId, (String, usize)> = HashMap::new();
        for (file, text) in &src.policies {
            let parsed = match PolicySet::from_str(text) {
                Ok(p) => p,
                Err(errs) => {
                    for err in errs.iter() {
                        problems.push(problem_at(file, text, err, err.to_string()));
                    }
                    continue;
                }
            };
            if parsed.templates().next().is_some() {
                problems.push(Problem {
                    file: Some(file.clone()),
                    line: None,
                    message: "policy templates are not supported in a pack".into(),
                });
            }
            for (index, policy) in parsed.policies().enumerate() {
                let id = policy
                    .annotation("id")
                    .map_or_else(|| format!("{file}#{index}"), str::to_owned);
                let id = PolicyId::new(&id);
                let line = policy_line(text, policy);
                if let Some((other, other_line)) = origin.get(&id) {
                    problems.push(Problem {
                        file: Some(file.clone()),
                        line,
                        message: format!(
                            "duplicate policy id `{id}` (also at {other}:{other_line})"
                        ),
                    });
                    continue;
                }
                origin.insert(id.clone(), (file.clone(), line.unwrap_or(0)));
                if let Err(e) = policies.add(policy.new_id(id)) {
                    problems.push(Problem {
                        file: Some(file.clone()),
                        line,
                        message: e.to_string(),
                    });
                }
            }
        }
        if !problems.is_empty() {
            return Err(LoadError {
                source_name: source,
                problems,
            });
        }

        let validation = Validator::new(schema.clone()).validate(&policies, ValidationMode::Strict);
        for err in validation.validation_errors() {
            let file_text = origin
                .get(err.policy_id())
                .and_then(|(file, _)| src.policies.iter().find(|(f, _)| f == file));
            match file_text {
                Some((file, text)) => {
                    problems.push(problem_at(file, text, err, diagnostic_message(err)));
                }
                None => problems.push(Problem {
                    file: None,
                    line: None,
                    message: format!("policy `{}`: {}", err.policy_id(), diagnostic_message(err)),
                }),
            }
        }

        let mut step_ups = HashMap::new();
        let mut signals = HashMap::new();
        let mut stats = PackStats::default();
        for policy in policies.policies() {
            stats.policies += 1;
            match policy.effect() {
                Effect::Permit => stats.permits += 1,
                Effect::Forbid => stats.forbids += 1,
            }
            let (file, line) = origin
                .get(policy.id())
                .map(|(f, l)| (Some(f.clone()), Some(*l)))
                .unwrap_or((None, None));
            match parse_signal(policy) {
                Ok(Some(signal)) => {
                    signals.insert(policy.id().clone(), signal);
                }
                Ok(None) => {}
                Err(message) => problems.push(Problem {
                    file: file.clone(),
                    line,
                    message: format!("policy `{}`: {message}", policy.id()),
                }),
            }
            match parse_step_up(policy) {
                Ok(Some(step_up)) => {
                    stats.step_ups += 1;
                    step_ups.insert(policy.id().clone(), step_up);
                }
                Ok(None) => {}
                Err(message) => problems.push(Problem {
                    file,
                    line,
                    message: format!("policy `{}`: {message}", policy.id()),
                }),
            }
        }

        let entities = match &src.entities {
            Some((file, text)) => Entities::from_json_str(text, Some(&schema)).map_err(|e| {
                vec![Problem {
                    file: Some(file.clone()),
                    line: None,
                    message: diagnostic_message(&e),
                }]
            }),
            None => Entities::from_json_value(serde_json::Value::Array(Vec::new()), Some(&schema))
                .map_err(|e| {
                    vec![Problem {
                        file: None,
                        line: None,
                        message: diagnostic_message(&e),
                    }]
                }),
        };
        let entities = match entities {
            Ok(entities) => entities,
            Err(mut more) => {
                problems.append(&mut more);
                Entities::empty()
            }
        };
        if !problems.is_empty() {
            return Err(LoadError {
                source_name: source,
                problems,
            });
        }
        stats.entities = entities
            .iter()
            .filter(|e| !is_action_type(e.uid().type_name()))
            .count();

        let actions: HashSet<EntityUid> = schema.actions().cloned().collect();
        let entity_types: HashSet<EntityTypeName> = schema.entity_types().cloned().collect();
        let type_names = entity_types
            .iter()
            .chain(actions.iter().map(EntityUid::type_name))
            .map(|t| (t.to_string(), t.clone()))
            .collect();
        let slices =
            slice_by_action(&policies, &actions, &entities).map_err(|message| LoadError {
                source_name: source.clone(),
                problems: vec![Problem {
                    file: None,
                    line: None,
                    message,
                }],
            })?;
        Ok(Self {
            actions,
            slices,
            type_names,
            entity_types,
            schema,
            policies,
            entities,
            step_ups,
            signals,
            version,
            stats,
            source,
        })
    }

    /// Content hash of the pack's files, `sha256:<hex>`.
    pub fn version(&self) -> &str {
        &self.version
    }

    /// The `@signal` annotations of `policy_ids` (the policies that
    /// determined a decision), in their order, each name once. Ids not in
    /// the pack and policies without the annotation add nothing.
    pub fn signals<S: AsRef<str>>(&self, policy_ids: &[S]) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        for id in policy_ids {
            if let Some(signal) = self.signals.get(&PolicyId::new(id.as_ref()))
                && !out.contains(signal)
            {
                out.push(signal.clone());
            }
        }
        out
    }

    /// Counts of policies and entities.
    pub fn stats(&self) -> PackStats {
        self.stats
    }

    /// Where the pack was loaded from.
    pub fn source(&self) -> &str {
        &self.source
    }
}

/// Per action, the policies whose action scope can admit it. `action in
/// [Group]` admits every action that is `Group` or a member of it (per the
/// schema's action hierarchy, in `entities`).
fn slice_by_action(
    policies: &PolicySet,
    actions: &HashSet<EntityUid>,
    entities: &Entities,
) -> Result<HashMap<EntityUid, PolicySet>, String> {
    let mut slices = HashMap::with_capacity(actions.len());
    for action in actions {
        let mut slice = PolicySet::new();
        for policy in policies.policies() {
            let admits = match policy.action_constraint() {
                ActionConstraint::Any => true,
                ActionConstraint::Eq(uid) => &uid == action,
                // `Entities::is_ancestor_of` is strict (an action is not its
                // own ancestor), while `action in [A]` holds for `A` itself.
                ActionConstraint::In(groups) => groups
                    .iter()
                    .any(|g| g == action || entities.is_ancestor_of(g, action)),
            };
            if admits {
                slice.add(policy.clone()).map_err(|e| e.to_string())?;
            }
        }
        slices.insert(action.clone(), slice);
    }
    Ok(slices)
}

enum FileKind {
    Schema,
    Policy,
    Entities,
}

fn is_action_type(name: &cedar_policy::EntityTypeName) -> bool {
    name.basename() == "Action"
}

fn collect_files(root: &Path, dir: &Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let path = entry.path();
        let name = entry.file_name();
        // Kubernetes ConfigMap mounts keep the real files in `..data/` and
        // timestamped `..2024_...` directories: skip hidden entries, follow the
        // top-level symlinks.
        if name.to_string_lossy().starts_with('.') {
            continue;
        }
        let meta = std::fs::metadata(&path)?;
        if meta.is_dir() {
            collect_files(root, &path, out)?;
        } else if meta.is_file()
            && let Ok(rel) = path.strip_prefix(root)
        {
            out.push(rel.to_path_buf());
        }
    }
    Ok(())
}

fn read_text(path: &Path) -> Result<String, String> {
    let meta = std::fs::metadata(path).map_err(|e| format!("cannot read: {e}"))?;
    if meta.len() > MAX_FILE_BYTES {
        return Err(format!(
            "file is {} bytes, the limit is {MAX_FILE_BYTES}",
            meta.len()
        ));
    }
    std::fs::read_to_string(path).map_err(|e| format!("cannot read: {e}"))
}

fn parse_schema(name: &str, text: &str) -> Result<Schema, Vec<Problem>> {
    if name.ends_with(".json") {
        Schema::from_json_str(text)
            .map_err(|e| vec![problem_at(name, text, &e, diagnostic_message(&e))])
    } else {
        Schema::from_cedarschema_str(text)
            .map(|(schema, _warnings)| schema)
            .map_err(|e| vec![problem_at(name, text, &e, diagnostic_message(&e))])
    }
}

/// The whole chain of messages of a diagnostic, which is where Cedar puts
/// the useful part ("unrecognized entity type `Foo`", "did you mean `Bar`?").
fn diagnostic_message(err: &(dyn Diagnostic + 'static)) -> String {
    let mut message = err.to_string();
    let mut source = std::error::Error::source(err);
    while let Some(cause) = source {
        let text = cause.to_string();
        if !message.contains(&text) {
            message.push_str(": ");
            message.push_str(&text);
        }
        source = cause.source();
    }
    if let Some(help) = err.help() {
        message.push_str(" (");
        message.push_str(&help.to_string());
        message.push(')');
    }
    message
}

fn problem_at(file: &str, text: &str, err: &dyn Diagnostic, message: String) -> Problem {
    let offset = err
        .labels()
        .and_then(|mut labels| labels.next())
        .map(|label| label.offset());
    Problem {
        file: Some(file.to_owned()),
        line: offset.map(|o| line_of(text, o)),
        message,
    }
}

fn policy_line(text: &str, policy: &Policy) -> Option<usize> {
    // The policy's own text is a slice of the file; find where it starts.
    let own = policy.to_string();
    let head: String = own.chars().take(40).collect();
    text.find(head.trim()).map(|offset| line_of(text, offset))
}

fn line_of(text: &str, offset: usize) -> usize {
    let end = offset.min(text.len());
    text.as_bytes()[..end]
        .iter()
        .filter(|b| **b == b'\n')
        .count()
        + 1
}

fn content_version(src: &PackSources) -> String {
    let mut hasher = Sha256::new();
    let mut feed = |name: &str, text: &str| {
        hasher.update((name.len() as u64).to_be_bytes());
        hasher.update(name.as_bytes());
        hasher.update((text.len() as u64).to_be_bytes());
        hasher.update(text.as_bytes());
    };
    feed(&src.schema.0, &src.schema.1);
    for (name, text) in &src.policies {
        feed(name, text);
    }
    if let Some((name, text)) = &src.entities {
        feed(name, text);
    }
    format!("sha256:{}", hex::encode(hasher.finalize()))
}

#[cfg(test)]
#[path = "pack_tests.rs"]
mod tests;
