//! Policy test cases: a request and the decision a policy author expects,
//! in a format-neutral shape (the `tether` CLI reads them from YAML).

use serde::{Deserialize, Serialize};

use crate::eval::{Limits, Outcome, Query};
use crate::pack::PolicyPack;

/// An entity uid written as `{type: Employee, id: "1042"}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Uid {
    #[serde(rename = "type")]
    pub type_name: String,
    pub id: String,
}

/// The decision a case expects.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Expected {
    Allow,
    Deny,
    ApprovalRequired,
    /// The request is refused before evaluation (malformed, unknown type or
    /// action, over a limit). Also a deny, but a distinct one.
    Rejected,
}

/// One test case.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TestCase {
    pub name: String,
    pub principal: Uid,
    pub action: Uid,
    pub resource: Uid,
    /// Cedar context (a JSON object); absent means `{}`.
    #[serde(default)]
    pub context: Option<serde_json::Value>,
    /// Cedar entities (a JSON array); absent means `[]`.
    #[serde(default)]
    pub entities: Option<serde_json::Value>,
    pub expect: Expected,
    /// When present, the determining policy ids must be exactly these.
    #[serde(default)]
    pub expect_policies: Option<Vec<String>>,
    /// When present, the binding message of an approval must equal this.
    #[serde(default)]
    pub expect_binding_message: Option<String>,
}

/// A file of cases. Top-level keys starting with `x-` are free for YAML
/// anchors (shared contexts and entities); any other unknown key is an error.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CaseFile {
    pub cases: Vec<TestCase>,
    #[serde(flatten)]
    pub extensions: std::collections::BTreeMap<String, serde_json::Value>,
}

impl CaseFile {
    /// Rejects unknown top-level keys (a typo must not silently drop cases).
    pub fn check_keys(&self) -> Result<(), String> {
        match self.extensions.keys().find(|k| !k.starts_with("x-")) {
            Some(key) => Err(format!(
                "unknown top-level key `{key}` (expected `cases` or an `x-` extension)"
            )),
            None => Ok(()),
        }
    }
}

/// What one case produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaseResult {
    pub name: String,
    /// `None` when the case passed, otherwise why it failed.
    pub failure: Option<String>,
    /// Extra information for a passing case (why a request was rejected).
    pub detail: Option<String>,
}

impl CaseResult {
    fn with_detail(mut self, detail: &str) -> Self {
        self.detail = Some(detail.to_owned());
        self
    }
}

impl TestCase {
    /// The case's context and entities as JSON text.
    pub fn json(&self) -> (String, String) {
        let context = self
            .context
            .as_ref()
            .map(ToString::to_string)
            .unwrap_or_default();
        let entities = self
            .entities
            .as_ref()
            .map(ToString::to_string)
            .unwrap_or_default();
        (context, entities)
    }

    /// Compares an observed answer with the expectation.
    pub fn check(
        &self,
        observed: Expected,
        policy_ids: &[String],
        binding_message: &str,
    ) -> CaseResult {
        let mut problems = Vec::new();
        if observed != self.expect {
            problems.push(format!("expected {:?}, got {:?}", self.expect, observed));
        }
        if let Some(expected) = &self.expect_policies {
            let mut want = expected.clone();
            let mut got = policy_ids.to_vec();
            want.sort();
            got.sort();
            if want != got {
                problems.push(format!("expected policies {want:?}, got {got:?}"));
            }
        }
        if let Some(expected) = &self.expect_binding_message
            && expected != binding_message
        {
            problems.push(format!(
                "expected binding message {expected:?}, got {binding_message:?}"
            ));
        }
        CaseResult {
            name: self.name.clone(),
            failure: (!problems.is_empty()).then(|| problems.join("; ")),
            detail: None,
        }
    }

    /// Runs the case in process against `pack`.
    pub fn run(&self, pack: &PolicyPack, limits: &Limits) -> CaseResult {
        let (context, entities) = self.json();
        let query = Query {
            principal: (&self.principal.type_name, &self.principal.id),
            action: (&self.action.type_name, &self.action.id),
            resource: (&self.resource.type_name, &self.resource.id),
            context_json: &context,
            entities_json: &entities,
        };
        match pack.evaluate(&query, limits) {
            Ok(decision) => {
                let (observed, message) = match &decision.outcome {
                    Outcome::Allow => (Expected::Allow, String::new()),
                    Outcome::Deny => (Expected::Deny, String::new()),
                    Outcome::ApprovalRequired(s) => {
                        (Expected::ApprovalRequired, s.binding_message.clone())
                    }
                };
                self.check(observed, &decision.policy_ids, &message)
            }
            Err(e) if self.expect == Expected::Rejected => CaseResult {
                name: self.name.clone(),
                failure: None,
                detail: None,
            }
            .with_detail(&e.to_string()),
            Err(e) => CaseResult {
                name: self.name.clone(),
                failure: Some(format!("expected {:?}, request rejected: {e}", self.expect)),
                detail: None,
            },
        }
    }
}
