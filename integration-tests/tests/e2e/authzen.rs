//! The OpenID AuthZEN Authorization API 1.0 on the real policy decision
//! point: HTTPS with mTLS on the gRPC listener, as the agent facade, an
//! operator, a caller the table refuses and a caller with no certificate.
//!
//! The request and response examples of the specification
//! (`authorization-api-1_0`: the information model, the Access Evaluation
//! and Access Evaluations APIs, and the HTTPS binding's examples) are written out by hand below,
//! answered by a small Cedar pack that gives the spec's `user`, `account`,
//! `todo`, `document` and `book` their meaning; the expected answers are the
//! spec's decisions with Tether's decision context (policy ids, reasons,
//! policy version).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test helpers outside #[test] functions"
)]

use reqwest::StatusCode;
use reqwest::header::HeaderMap;
use serde_json::{Value, json};
use tempfile::TempDir;
use tether_integration_tests::pdp::{PdpSandbox, uid};
use tether_integration_tests::pki::TestPki;
use tether_policy_decision::RequestLimits;
use tether_proto::policy::v1::{CheckRequest, CheckResponse, GetPolicySetRequest};

const SCHEMA: &str = r#"
entity user = { department?: String };
entity account;
entity todo;
entity document = { title?: String };
entity book = { library_record?: { title: String, isbn: String } };

type Ctx = {
  time?: String,
  action_properties?: { method?: String, period?: String },
};

action "can_read" appliesTo { principal: [user], resource: [account, todo, document], context: Ctx };
action "can_edit" appliesTo { principal: [user], resource: [document], context: Ctx };
action "read" appliesTo { principal: [user], resource: [document], context: Ctx };
action "extend-loan" appliesTo { principal: [user], resource: [book], context: Ctx };
action "delete" appliesTo { principal: [user], resource: [document], context: { approval?: { granted: Bool } } };
action "archive" appliesTo { principal: [user], resource: [document], context: { n: Long } };
"#;

const POLICIES: &str = r#"
// Alice reads what exists: a document the PDP does not know is not found.
@id("alice-can-read")
permit (principal == user::"alice@example.com", action == Action::"can_read", resource)
unless { resource is document && !(resource has title) };

// A `can_read` that is not an HTTP GET is no read.
@id("can-read-is-get-only")
forbid (principal, action == Action::"can_read", resource)
when { context has action_properties && context.action_properties has method
       && context.action_properties.method != "GET" };

// Subject properties: Sales reads accounts.
@id("sales-can-read-accounts")
permit (principal, action == Action::"can_read", resource is account)
when { principal has department && principal.department == "Sales" };

@id("alice-can-edit")
permit (principal == user::"alice@example.com", action == Action::"can_edit", resource);

@id("resource-search-is-read-only")
forbid (principal, action == Action::"can_edit", resource == document::"resource-search.md");

// The evaluations-semantics examples: documents 1 and 3, not 2.
@id("odd-documents")
permit (principal, action == Action::"read", resource)
when { resource == document::"1" || resource == document::"3" };

// Resource and action properties: the spec's book and loan extension.
@id("extend-authzen-in-action")
permit (principal, action == Action::"extend-loan", resource is book)
when { resource has library_record && resource.library_record.isbn == "978-0593383322"
       && context has action_properties && context.action_properties has period
       && context.action_properties.period == "2W" };

@id("alice-can-delete")
permit (principal == user::"alice@example.com", action == Action::"delete", resource);

@id("delete-needs-approval")
@step_up("ciba")
@binding_message("Delete {resource.id}?")
forbid (principal, action == Action::"delete", resource)
unless { context has approval && context.approval.granted };

@id("archive-all")
permit (principal, action == Action::"archive", resource);

// Overflows for any n but 0: an evaluation error, which must deny.
@id("archive-overflow")
forbid (principal, action == Action::"archive", resource)
when { context.n * 4611686018427387904 > 0 };
"#;

const ENTITIES: &str = r#"[
  {"uid": {"type": "document", "id": "boxcarring.md"}, "attrs": {"title": "Boxcarring"}, "parents": []},
  {"uid": {"type": "document", "id": "resource-search.md"}, "attrs": {"title": "Resource search"}, "parents": []}
]"#;

/// The spec's example request id.
const REQUEST_ID: &str = "bfe9eb29-ab87-4ca3-be83-a1d5d8305716";

fn pack() -> TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("spec.cedarschema"), SCHEMA).unwrap();
    std::fs::write(dir.path().join("spec.cedar"), POLICIES).unwrap();
    std::fs::write(dir.path().join("entities.json"), ENTITIES).unwrap();
    dir
}

/// A PDP serving the spec pack, with its policy version.
async fn start(limits: RequestLimits) -> (PdpSandbox, String, TempDir) {
    let dir = pack();
    let pdp = PdpSandbox::builder()
        .pack(dir.path())
        .limits(limits)
        .start()
        .await
        .unwrap();
    let version = pdp
        .client()
        .get_policy_set(GetPolicySetRequest {})
        .await
        .unwrap()
        .into_inner()
        .version;
    (pdp, version, dir)
}

/// An HTTPS client presenting `identity`'s certificate from the sandbox CA.
fn client_as(pki: &TestPki, identity: &str) -> reqwest::Client {
    builder_as(pki, identity).build().unwrap()
}

fn builder_as(pki: &TestPki, identity: &str) -> reqwest::ClientBuilder {
    let tls = pki.tls(identity).unwrap();
    let mut pem = std::fs::read(tls.cert_file.unwrap()).unwrap();
    pem.extend(std::fs::read(tls.key_file.unwrap()).unwrap());
    let ca = reqwest::Certificate::from_pem(pki.ca().ca_pem().as_bytes()).unwrap();
    reqwest::Client::builder()
        .tls_certs_only([ca])
        .identity(reqwest::Identity::from_pem(&pem).unwrap())
}

/// The facade's client and the PDP's base URL.
struct Pep {
    client: reqwest::Client,
    base: String,
}

/// One answer: status, headers, JSON body. Every answer is JSON.
struct Answer {
    status: StatusCode,
    headers: HeaderMap,
    body: Value,
}

impl Pep {
    fn new(pdp: &PdpSandbox, identity: &str) -> Self {
        Self {
            client: client_as(pdp.pki(), identity),
            base: format!("https://{}", pdp.addr()),
        }
    }

    async fn send(&self, request: reqwest::RequestBuilder) -> Answer {
        let response = request.send().await.unwrap();
        let status = response.status();
        let headers = response.headers().clone();
        assert_eq!(
            headers.get("content-type").map(|v| v.to_str().unwrap()),
            Some("application/json"),
            "every answer is JSON ({status})"
        );
        let text = response.text().await.unwrap();
        let body = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"));
        Answer {
            status,
            headers,
            body,
        }
    }

    /// POSTs `body` (written out as text, exactly as sent) to `path`.
    async fn post(&self, path: &str, body: &str) -> Answer {
        self.post_with(path, body, &[]).await
    }

    async fn post_with(&self, path: &str, body: &str, headers: &[(&str, &str)]) -> Answer {
        let mut request = self
            .client
            .post(format!("{}{path}", self.base))
            .header("content-type", "application/json")
            .body(body.to_owned());
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        self.send(request).await
    }

    async fn evaluate(&self, body: &str) -> Value {
        let answer = self.post("/access/v1/evaluation", body).await;
        assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
        answer.body
    }

    async fn evaluate_all(&self, body: &str) -> Value {
        let answer = self.post("/access/v1/evaluations", body).await;
        assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
        answer.body
    }
}

fn permitted(policy: &str, version: &str) -> Value {
    json!({
        "decision": true,
        "context": {
            "policy_ids": [policy],
            "reasons": [format!("permitted by `{policy}`")],
            "policy_version": version,
        },
    })
}

fn forbidden(policy: &str, version: &str) -> Value {
    json!({
        "decision": false,
        "context": {
            "policy_ids": [policy],
            "reasons": [format!("forbidden by `{policy}`")],
            "policy_version": version,
        },
    })
}

fn default_deny(version: &str) -> Value {
    json!({
        "decision": false,
        "context": {
            "policy_ids": [],
            "reasons": ["no policy permits this request (default deny)"],
            "policy_version": version,
        },
    })
}

fn error_body(status: u16, answer: &Answer, contains: &str) {
    assert_eq!(answer.status.as_u16(), status, "{}", answer.body);
    assert_eq!(
        answer.body["error"]["status"],
        json!(status),
        "{}",
        answer.body
    );
    let message = answer.body["error"]["message"].as_str().unwrap();
    assert!(message.contains(contains), "`{message}` lacks `{contains}`");
}

#[tokio::test]
async fn the_specification_examples_are_answered() {
    let (pdp, v, _dir) = start(RequestLimits::default()).await;
    let pep = Pep::new(&pdp, "agent-facade");

    // Access Evaluation API, "Example Request".
    let answer = pep
        .evaluate(
            r#"{
  "subject": {
    "type": "user",
    "id": "alice@example.com"
  },
  "resource": {
    "type": "account",
    "id": "123"
  },
  "action": {
    "name": "can_read",
    "properties": {
      "method": "GET"
    }
  },
  "context": {
    "time": "1985-10-26T01:22-07:00"
  }
}"#,
        )
        .await;
    assert_eq!(answer, permitted("alice-can-read", &v));

    // The same request with another method: the action's properties reach
    // the policy (as `context.action_properties`).
    let answer = pep
        .evaluate(
            r#"{"subject": {"type": "user", "id": "alice@example.com"},
                "resource": {"type": "account", "id": "123"},
                "action": {"name": "can_read", "properties": {"method": "DELETE"}}}"#,
        )
        .await;
    assert_eq!(answer, forbidden("can-read-is-get-only", &v));

    // HTTPS binding, the Access Evaluation example, with its X-Request-ID.
    let answer = pep
        .post_with(
            "/access/v1/evaluation",
            r#"{
  "subject": {
    "type": "user",
    "id": "alice@example.com"
  },
  "resource": {
    "type": "todo",
    "id": "1"
  },
  "action": {
    "name": "can_read"
  },
  "context": {
    "time": "1985-10-26T01:22-07:00"
  }
}"#,
            &[("X-Request-ID", REQUEST_ID)],
        )
        .await;
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(answer.headers["x-request-id"], REQUEST_ID);
    assert_eq!(answer.headers["cache-control"], "no-store");
    assert_eq!(answer.body, permitted("alice-can-read", &v));

    // Information model, a subject with a `department` property (Bob, so that only the
    // property can be why he may read).
    let bob = |department: &str| {
        format!(
            r#"{{"subject": {{"type": "user", "id": "bob@example.com", "properties": {{"department": "{department}"}}}},
                "resource": {{"type": "account", "id": "123"}},
                "action": {{"name": "can_read"}}}}"#
        )
    };
    assert_eq!(
        pep.evaluate(&bob("Sales")).await,
        permitted("sales-can-read-accounts", &v)
    );
    assert_eq!(pep.evaluate(&bob("Engineering")).await, default_deny(&v));

    // Information model: the book with its `library_record`, and the loan
    // extension with its `period`.
    let loan = |period: &str| {
        format!(
            r#"{{"subject": {{"type": "user", "id": "alice@example.com"}},
                "resource": {{
                  "type": "book",
                  "id": "123",
                  "properties": {{
                    "library_record":{{
                      "title": "AuthZEN in Action",
                      "isbn": "978-0593383322"
                    }}
                  }}
                }},
                "action": {{
                  "name": "extend-loan",
                  "properties": {{
                    "period": "{period}"
                  }}
                }}}}"#
        )
    };
    assert_eq!(
        pep.evaluate(&loan("2W")).await,
        permitted("extend-authzen-in-action", &v)
    );
    assert_eq!(pep.evaluate(&loan("6W")).await, default_deny(&v));

    // Access Evaluations API, three requests with no default values.
    let three = pep
        .evaluate_all(
            r#"{
  "evaluations": [
    {
      "subject": {
        "type": "user",
        "id": "alice@example.com"
      },
      "action": {
        "name": "can_read"
      },
      "resource": {
        "type": "document",
        "id": "boxcarring.md"
      },
      "context": {
        "time": "2024-05-31T15:22-07:00"
      }
    },
    {
      "subject": {
        "type": "user",
        "id": "alice@example.com"
      },
      "action": {
        "name": "can_read"
      },
      "resource": {
        "type": "document",
        "id": "subject-search.md"
      },
      "context": {
        "time": "2024-05-31T15:22-07:00"
      }
    },
    {
      "subject": {
        "type": "user",
        "id": "alice@example.com"
      },
      "action": {
        "name": "can_read"
      },
      "resource": {
        "type": "document",
        "id": "resource-search.md"
      },
      "context": {
        "time": "2024-05-31T15:22-07:00"
      }
    }
  ]
}"#,
        )
        .await;
    let expected = json!({"evaluations": [
        permitted("alice-can-read", &v),
        default_deny(&v),
        permitted("alice-can-read", &v),
    ]});
    assert_eq!(three, expected);

    // "Default values": the same three with a default subject and context.
    let defaults = pep
        .evaluate_all(
            r#"{
  "subject": {
    "type": "user",
    "id": "alice@example.com"
  },
  "context": {
    "time": "2024-05-31T15:22-07:00"
  },
  "evaluations": [
    {
      "action": {
        "name": "can_read"
      },
      "resource": {
        "type": "document",
        "id": "boxcarring.md"
      }
    },
    {
      "action": {
        "name": "can_read"
      },
      "resource": {
        "type": "document",
        "id": "subject-search.md"
      }
    },
    {
      "action": {
        "name": "can_read"
      },
      "resource": {
        "type": "document",
        "id": "resource-search.md"
      }
    }
  ]
}"#,
        )
        .await;
    assert_eq!(defaults, expected);

    // HTTPS binding, the Access Evaluations example: a default action that
    // the third evaluation overrides. The spec's answers are true, false
    // (resource not found) and false; here the second document is unknown
    // to the PDP and the third is read-only.
    let answer = pep
        .post_with(
            "/access/v1/evaluations",
            r#"{
  "subject": {
    "type": "user",
    "id": "alice@example.com"
  },
  "context": {
    "time": "2024-05-31T15:22-07:00"
  },
  "action": {
    "name": "can_read"
  },
  "evaluations": [
    {
      "resource": {
        "type": "document",
        "id": "boxcarring.md"
      }
    },
    {
      "resource": {
        "type": "document",
        "id": "subject-search.md"
      }
    },
    {
      "action": {
        "name": "can_edit"
      },
      "resource": {
        "type": "document",
        "id": "resource-search.md"
      }
    }
  ]
}"#,
            &[("X-Request-ID", REQUEST_ID)],
        )
        .await;
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(answer.headers["x-request-id"], REQUEST_ID);
    assert_eq!(
        answer.body,
        json!({"evaluations": [
            permitted("alice-can-read", &v),
            default_deny(&v),
            forbidden("resource-search-is-read-only", &v),
        ]})
    );

    // Unknown members are ignored ("JSON Serialization"), anywhere in the
    // envelope.
    let answer = pep
        .evaluate(
            r#"{"subject": {"type": "user", "id": "alice@example.com", "display_name": "Alice"},
                "resource": {"type": "todo", "id": "1", "owner": "alice"},
                "action": {"name": "can_read", "verb": "GET"},
                "request_signature": {"alg": "none"},
                "version": 2}"#,
        )
        .await;
    assert_eq!(answer, permitted("alice-can-read", &v));
}

#[tokio::test]
async fn evaluations_semantics_as_the_specification_shows_them() {
    let (pdp, v, _dir) = start(RequestLimits::default()).await;
    let pep = Pep::new(&pdp, "agent-facade");
    // "Evaluations semantics": `read` for documents 1, 2 and 3 under each.
    let read_three = |semantic: &str| {
        format!(
            r#"{{
  "subject": {{
    "type": "user",
    "id": "alice@example.com"
  }},
  "action": {{
    "name": "read"
  }},
  "options": {{
    "evaluations_semantic": "{semantic}"
  }},
  "evaluations": [
    {{
      "resource": {{
        "type": "document",
        "id": "1"
      }}
    }},
    {{
      "resource": {{
        "type": "document",
        "id": "2"
      }}
    }},
    {{
      "resource": {{
        "type": "document",
        "id": "3"
      }}
    }}
  ]
}}"#
        )
    };
    let t = permitted("odd-documents", &v);
    let f = default_deny(&v);
    assert_eq!(
        pep.evaluate_all(&read_three("execute_all")).await,
        json!({"evaluations": [t, f, t]})
    );
    assert_eq!(
        pep.evaluate_all(&read_three("deny_on_first_deny")).await,
        json!({"evaluations": [t, f]})
    );
    assert_eq!(
        pep.evaluate_all(&read_three("permit_on_first_permit"))
            .await,
        json!({"evaluations": [t]})
    );

    // Without options, and with the spec's unknown `another_option`, every
    // evaluation runs.
    let plain = read_three("execute_all").replace(
        r#""evaluations_semantic": "execute_all""#,
        r#""another_option": "value""#,
    );
    assert_eq!(
        pep.evaluate_all(&plain).await,
        json!({"evaluations": [t, f, t]})
    );

    // Short circuits look at each answer in order: 2, 1, 3.
    let order = |semantic: &str| {
        format!(
            r#"{{"subject": {{"type": "user", "id": "alice@example.com"}},
                "action": {{"name": "read"}},
                "options": {{"evaluations_semantic": "{semantic}"}},
                "evaluations": [
                  {{"resource": {{"type": "document", "id": "2"}}}},
                  {{"resource": {{"type": "document", "id": "1"}}}},
                  {{"resource": {{"type": "document", "id": "3"}}}}
                ]}}"#
        )
    };
    assert_eq!(
        pep.evaluate_all(&order("permit_on_first_permit")).await,
        json!({"evaluations": [f, t]})
    );
    assert_eq!(
        pep.evaluate_all(&order("deny_on_first_deny")).await,
        json!({"evaluations": [f]})
    );

    // An evaluation that cannot be evaluated is a denial (with its error)
    // and stops deny_on_first_deny too.
    let answer = pep
        .evaluate_all(
            r#"{"subject": {"type": "user", "id": "alice@example.com"},
                "options": {"evaluations_semantic": "deny_on_first_deny"},
                "evaluations": [
                  {"action": {"name": "read"}, "resource": {"type": "document", "id": "1"}},
                  {"action": {"name": "launch"}, "resource": {"type": "document", "id": "1"}},
                  {"action": {"name": "read"}, "resource": {"type": "document", "id": "3"}}
                ]}"#,
        )
        .await;
    assert_eq!(answer["evaluations"].as_array().unwrap().len(), 2);
    assert_eq!(answer["evaluations"][0], t);
    assert_eq!(
        answer["evaluations"][1],
        json!({"decision": false, "context": {
            "error": {"status": 400, "message": "unknown action `Action::\"launch\"`, not declared in the schema"},
            "policy_version": v,
        }})
    );

    // A semantic the spec does not define is refused, not guessed.
    let answer = pep
        .post("/access/v1/evaluations", &read_three("majority"))
        .await;
    error_body(400, &answer, "`options.evaluations_semantic` must be");
}

#[tokio::test]
async fn batch_defaults_overrides_and_item_errors() {
    let (pdp, v, _dir) = start(RequestLimits::default()).await;
    let pep = Pep::new(&pdp, "agent-facade");
    // Defaults for subject, action and context; the second evaluation
    // replaces the context (an HTTP method other than GET), the third the
    // subject, the fourth has an action the pack does not know.
    let answer = pep
        .evaluate_all(
            r#"{"subject": {"type": "user", "id": "alice@example.com"},
                "action": {"name": "can_read", "properties": {"method": "GET"}},
                "context": {"time": "2024-05-31T15:22-07:00"},
                "evaluations": [
                  {"resource": {"type": "account", "id": "1"}},
                  {"resource": {"type": "account", "id": "1"},
                   "action": {"name": "can_read", "properties": {"method": "PUT"}}},
                  {"resource": {"type": "account", "id": "1"},
                   "subject": {"type": "user", "id": "mallory@example.com"}},
                  {"resource": {"type": "account", "id": "1"}, "action": {"name": "can_fly"}},
                  {"resource": {"type": "account", "id": "1"}, "context": {"time": 1985}}
                ]}"#,
        )
        .await;
    let items = answer["evaluations"].as_array().unwrap();
    assert_eq!(items.len(), 5, "{answer}");
    assert_eq!(items[0], permitted("alice-can-read", &v));
    assert_eq!(items[1], forbidden("can-read-is-get-only", &v));
    assert_eq!(items[2], default_deny(&v));
    assert_eq!(items[3]["decision"], json!(false));
    assert_eq!(items[3]["context"]["error"]["status"], json!(400));
    assert_eq!(
        items[3]["context"]["error"]["message"],
        json!("unknown action `Action::\"can_fly\"`, not declared in the schema")
    );
    assert_eq!(items[4]["decision"], json!(false));
    assert_eq!(items[4]["context"]["error"]["status"], json!(400));
    assert!(
        items[4]["context"]["error"]["message"]
            .as_str()
            .unwrap()
            .contains("is not valid for `Action::\"can_read\"`"),
        "{}",
        items[4]
    );

    // An empty or absent `evaluations` is a single evaluation, answered as one.
    for body in [
        r#"{"subject": {"type": "user", "id": "alice@example.com"}, "action": {"name": "can_read"},
            "resource": {"type": "todo", "id": "1"}, "evaluations": []}"#,
        r#"{"subject": {"type": "user", "id": "alice@example.com"}, "action": {"name": "can_read"},
            "resource": {"type": "todo", "id": "1"}}"#,
    ] {
        assert_eq!(
            pep.evaluate_all(body).await,
            permitted("alice-can-read", &v)
        );
    }
    // ... and without a subject it is refused like one.
    let answer = pep
        .post(
            "/access/v1/evaluations",
            r#"{"action": {"name": "can_read"}, "resource": {"type": "todo", "id": "1"}, "evaluations": []}"#,
        )
        .await;
    error_body(400, &answer, "`subject` is required");

    // A member neither in the evaluation nor at the top level refuses the
    // whole request before anything is evaluated.
    let answer = pep
        .post(
            "/access/v1/evaluations",
            r#"{"action": {"name": "can_read"},
                "evaluations": [
                  {"subject": {"type": "user", "id": "alice@example.com"}, "resource": {"type": "todo", "id": "1"}},
                  {"resource": {"type": "todo", "id": "2"}}
                ]}"#,
        )
        .await;
    error_body(
        400,
        &answer,
        "`evaluations[1].subject` is required: give it in the evaluation or at the top level",
    );
    for (body, message) in [
        (
            r#"{"subject": {"type": "user", "id": "a"}, "action": {"name": "read"}, "evaluations": {"resource": {}}}"#,
            "`evaluations` must be an array",
        ),
        (
            r#"{"subject": {"type": "user", "id": "a"}, "action": {"name": "read"}, "evaluations": ["doc"]}"#,
            "`evaluations[0]` must be an object",
        ),
        (
            r#"{"subject": {"type": "user", "id": "a"}, "action": {"name": "read"}, "evaluations": [{"resource": {"type": "document"}}]}"#,
            "`evaluations[0].resource.id` is required",
        ),
    ] {
        let answer = pep.post("/access/v1/evaluations", body).await;
        error_body(400, &answer, message);
    }
}

#[tokio::test]
async fn step_up_and_evaluation_errors_are_never_true() {
    let (pdp, v, _dir) = start(RequestLimits::default()).await;
    let pep = Pep::new(&pdp, "agent-facade");
    let delete = |context: &str| {
        format!(
            r#"{{"subject": {{"type": "user", "id": "alice@example.com"}},
                "action": {{"name": "delete"}},
                "resource": {{"type": "document", "id": "boxcarring.md"}},
                "context": {context}}}"#
        )
    };
    assert_eq!(
        pep.evaluate(&delete("{}")).await,
        json!({"decision": false, "context": {
            "policy_ids": ["delete-needs-approval"],
            "reasons": ["`delete-needs-approval` requires the user's approval"],
            "step_up": {
                "method": "ciba",
                "binding_message": "Delete boxcarring.md?",
                "policy_ids": ["delete-needs-approval"],
            },
            "policy_version": v,
        }})
    );
    assert_eq!(
        pep.evaluate(&delete(r#"{"approval": {"granted": true}}"#))
            .await,
        permitted("alice-can-delete", &v)
    );

    let archive = |n: i64| {
        format!(
            r#"{{"subject": {{"type": "user", "id": "alice@example.com"}},
                "action": {{"name": "archive"}},
                "resource": {{"type": "document", "id": "boxcarring.md"}},
                "context": {{"n": {n}}}}}"#
        )
    };
    assert_eq!(
        pep.evaluate(&archive(0)).await,
        permitted("archive-all", &v)
    );
    // Cedar skips a policy that errors, which would allow: Tether denies.
    let answer = pep.evaluate(&archive(3)).await;
    assert_eq!(answer["decision"], json!(false), "{answer}");
    assert_eq!(answer["context"]["policy_ids"], json!(["archive-overflow"]));
    assert_eq!(
        answer["context"]["errors"][0]["policy_id"],
        json!("archive-overflow")
    );
    assert!(
        answer["context"]["reasons"][0]
            .as_str()
            .unwrap()
            .contains("an evaluation error is a deny")
    );
    assert_eq!(answer["context"]["policy_version"], json!(v));
}

#[tokio::test]
async fn the_http_decision_is_the_grpc_decision() {
    let (pdp, _v, _dir) = start(RequestLimits::default()).await;
    let pep = Pep::new(&pdp, "agent-facade");
    let cases: Vec<(&str, CheckRequest)> = vec![
        (
            r#"{"subject": {"type": "user", "id": "alice@example.com"}, "action": {"name": "can_read", "properties": {"method": "GET"}},
                "resource": {"type": "account", "id": "123"}, "context": {"time": "1985-10-26T01:22-07:00"}}"#,
            CheckRequest {
                principal: uid("user", "alice@example.com"),
                action: uid("Action", "can_read"),
                resource: uid("account", "123"),
                context_json: r#"{"time": "1985-10-26T01:22-07:00", "action_properties": {"method": "GET"}}"#.into(),
                ..Default::default()
            },
        ),
        (
            r#"{"subject": {"type": "user", "id": "alice@example.com"}, "action": {"name": "can_read", "properties": {"method": "POST"}},
                "resource": {"type": "account", "id": "123"}}"#,
            CheckRequest {
                principal: uid("user", "alice@example.com"),
                action: uid("Action", "can_read"),
                resource: uid("account", "123"),
                context_json: r#"{"action_properties": {"method": "POST"}}"#.into(),
                ..Default::default()
            },
        ),
        (
            r#"{"subject": {"type": "user", "id": "bob@example.com", "properties": {"department": "Sales"}},
                "action": {"name": "can_read"}, "resource": {"type": "account", "id": "9"}}"#,
            CheckRequest {
                principal: uid("user", "bob@example.com"),
                action: uid("Action", "can_read"),
                resource: uid("account", "9"),
                entities_json: r#"[{"uid": {"type": "user", "id": "bob@example.com"}, "attrs": {"department": "Sales"}, "parents": []}]"#.into(),
                ..Default::default()
            },
        ),
        (
            r#"{"subject": {"type": "user", "id": "alice@example.com"}, "action": {"name": "can_read"},
                "resource": {"type": "document", "id": "nowhere.md"}}"#,
            CheckRequest {
                principal: uid("user", "alice@example.com"),
                action: uid("Action", "can_read"),
                resource: uid("document", "nowhere.md"),
                ..Default::default()
            },
        ),
        (
            r#"{"subject": {"type": "user", "id": "alice@example.com"}, "action": {"name": "delete"},
                "resource": {"type": "document", "id": "1"}}"#,
            CheckRequest {
                principal: uid("user", "alice@example.com"),
                action: uid("Action", "delete"),
                resource: uid("document", "1"),
                ..Default::default()
            },
        ),
        (
            r#"{"subject": {"type": "user", "id": "alice@example.com"}, "action": {"name": "archive"},
                "resource": {"type": "document", "id": "1"}, "context": {"n": 5}}"#,
            CheckRequest {
                principal: uid("user", "alice@example.com"),
                action: uid("Action", "archive"),
                resource: uid("document", "1"),
                context_json: r#"{"n": 5}"#.into(),
                ..Default::default()
            },
        ),
    ];
    for (body, grpc) in cases {
        let http = pep.evaluate(body).await;
        let grpc: CheckResponse = pdp.client().check(grpc).await.unwrap().into_inner();
        let context = &http["context"];
        assert_eq!(
            http["decision"],
            json!(grpc.decision() == tether_proto::policy::v1::Decision::Allow),
            "{body}"
        );
        assert_eq!(context["policy_ids"], json!(grpc.policy_ids), "{body}");
        assert_eq!(context["reasons"], json!(grpc.reasons), "{body}");
        assert_eq!(context["policy_version"], json!(grpc.policy_version));
        let errors: Vec<Value> = grpc
            .errors
            .iter()
            .map(|e| json!({"policy_id": e.policy_id, "message": e.message}))
            .collect();
        assert_eq!(
            context.get("errors").cloned().unwrap_or(json!([])),
            json!(errors),
            "{body}"
        );
        let step_up = grpc.step_up.as_ref().map(|s| {
            json!({"method": s.method, "binding_message": s.binding_message, "policy_ids": s.policy_ids})
        });
        assert_eq!(context.get("step_up").cloned(), step_up, "{body}");
    }
    // The same refusal on both sides too.
    let answer = pep
        .post(
            "/access/v1/evaluation",
            r#"{"subject": {"type": "user", "id": "alice@example.com"}, "action": {"name": "launch"},
                "resource": {"type": "document", "id": "1"}}"#,
        )
        .await;
    let status = pdp
        .client()
        .check(CheckRequest {
            principal: uid("user", "alice@example.com"),
            action: uid("Action", "launch"),
            resource: uid("document", "1"),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    error_body(400, &answer, status.message());
}

#[tokio::test]
async fn metadata_names_the_endpoints_served() {
    let (pdp, _v, _dir) = start(RequestLimits::default()).await;
    let pep = Pep::new(&pdp, "agent-facade");
    let base = format!("https://{}", pdp.addr());
    let answer = pep
        .send(
            pep.client
                .get(format!("{base}/.well-known/authzen-configuration"))
                .header("X-Request-ID", "meta-1"),
        )
        .await;
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(answer.headers["x-request-id"], "meta-1");
    assert_eq!(answer.headers["cache-control"], "max-age=300");
    // No search endpoint: the PDP does not serve one, so none is named.
    assert_eq!(
        answer.body,
        json!({
            "policy_decision_point": base,
            "access_evaluation_endpoint": format!("{base}/access/v1/evaluation"),
            "access_evaluations_endpoint": format!("{base}/access/v1/evaluations"),
        })
    );
    // An operator may read it too; over HTTP/1.1 as well as HTTP/2.
    let admin = Pep {
        client: builder_as(pdp.pki(), "admin").http1_only().build().unwrap(),
        base: base.clone(),
    };
    let answer = admin
        .send(
            admin
                .client
                .get(format!("{base}/.well-known/authzen-configuration")),
        )
        .await;
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(answer.body["policy_decision_point"], json!(base));
    let answer = admin
        .post(
            "/access/v1/evaluation",
            r#"{"subject": {"type": "user", "id": "alice@example.com"}, "action": {"name": "can_read"},
                "resource": {"type": "todo", "id": "1"}}"#,
        )
        .await;
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(answer.body["decision"], json!(true));
}

#[tokio::test]
async fn callers_the_table_does_not_allow_are_refused() {
    let (pdp, _v, _dir) = start(RequestLimits::default()).await;
    let base = format!("https://{}", pdp.addr());
    let body = r#"{"subject": {"type": "user", "id": "alice@example.com"}, "action": {"name": "can_read"},
                   "resource": {"type": "todo", "id": "1"}}"#;
    let paths = [
        ("POST", "/access/v1/evaluation"),
        ("POST", "/access/v1/evaluations"),
        ("GET", "/.well-known/authzen-configuration"),
    ];

    // No client certificate: the handshake completes (health probes need
    // that), the request does not.
    let anonymous = Pep {
        client: pdp.pki().https_client().unwrap(),
        base: base.clone(),
    };
    // A certificate from the same CA, for a service the table does not name.
    let issuer = Pep::new(&pdp, "credential-issuer");
    for (pep, status, message) in [
        (
            &anonymous,
            401,
            "needs a client certificate from a trusted CA",
        ),
        (
            &issuer,
            403,
            "`spiffe://tether.test/tether/credential-issuer` may not call",
        ),
    ] {
        for (method, path) in paths {
            let request = pep
                .client
                .request(method.parse().unwrap(), format!("{base}{path}"))
                .header("content-type", "application/json")
                .header("X-Request-ID", "who-am-i")
                .body(body);
            let answer = pep.send(request).await;
            error_body(status, &answer, message);
            assert_eq!(answer.headers["x-request-id"], "who-am-i");
            assert!(!answer.headers.contains_key("www-authenticate"));
        }
    }
}

#[tokio::test]
async fn bad_requests_are_refused_with_the_right_status() {
    let limits = RequestLimits {
        max_request_bytes: 64 * 1024,
        max_batch_size: 4,
        ..RequestLimits::default()
    };
    let (pdp, v, _dir) = start(limits).await;
    let pep = Pep::new(&pdp, "agent-facade");
    let eval = "/access/v1/evaluation";
    let good = r#"{"subject": {"type": "user", "id": "alice@example.com"}, "action": {"name": "can_read"}, "resource": {"type": "todo", "id": "1"}}"#;
    let with = |subject: &str, action: &str, resource: &str| {
        format!(r#"{{"subject": {subject}, "action": {action}, "resource": {resource}}}"#)
    };
    let alice = r#"{"type": "user", "id": "alice@example.com"}"#;
    let read = r#"{"name": "can_read"}"#;
    let todo = r#"{"type": "todo", "id": "1"}"#;
    let mut deep = "1".to_owned();
    for _ in 0..20 {
        deep = format!(r#"{{"x": {deep}}}"#);
    }

    let cases: Vec<(&str, String, u16, &str)> = vec![
        (
            "malformed JSON",
            r#"{"subject": {"type": "user""#.into(),
            400,
            "the body is not valid JSON",
        ),
        (
            "not an object",
            format!("[{good}]"),
            400,
            "the body must be a JSON object",
        ),
        (
            "empty body",
            String::new(),
            400,
            "the body is not valid JSON",
        ),
        (
            "trailing garbage",
            format!("{good} {{}}"),
            400,
            "the body is not valid JSON",
        ),
        (
            "missing subject",
            format!(r#"{{"action": {read}, "resource": {todo}}}"#),
            400,
            "`subject` is required",
        ),
        (
            "missing action",
            format!(r#"{{"subject": {alice}, "resource": {todo}}}"#),
            400,
            "`action` is required",
        ),
        (
            "missing resource",
            format!(r#"{{"subject": {alice}, "action": {read}}}"#),
            400,
            "`resource` is required",
        ),
        (
            "null subject",
            format!(r#"{{"subject": null, "action": {read}, "resource": {todo}}}"#),
            400,
            "`subject` is required",
        ),
        (
            "missing subject id",
            with(r#"{"type": "user"}"#, read, todo),
            400,
            "`subject.id` is required",
        ),
        (
            "numeric id",
            with(r#"{"type": "user", "id": 42}"#, read, todo),
            400,
            "`subject.id` must be a string",
        ),
        (
            "missing action name",
            with(alice, "{}", todo),
            400,
            "`action.name` is required",
        ),
        (
            "empty subject id",
            with(r#"{"type": "user", "id": ""}"#, read, todo),
            400,
            "principal id is required",
        ),
        (
            "empty subject type",
            with(r#"{"type": "", "id": "alice@example.com"}"#, read, todo),
            400,
            "principal type is required",
        ),
        (
            "empty resource id",
            with(alice, read, r#"{"type": "todo", "id": ""}"#),
            400,
            "resource id is required",
        ),
        (
            "empty action name",
            with(alice, r#"{"name": ""}"#, todo),
            400,
            "action id is required",
        ),
        (
            "raw control character",
            with(alice, read, "{\"type\": \"todo\", \"id\": \"1\u{7}\"}"),
            400,
            "the body is not valid JSON",
        ),
        (
            "escaped control character in an id",
            with(
                r#"{"type": "user", "id": "alice@example.com\u000a"}"#,
                read,
                todo,
            ),
            400,
            "`principal` contains a control character",
        ),
        (
            "escaped control character in an action",
            with(alice, r#"{"name": "can_read\u0000"}"#, todo),
            400,
            "`action` contains a control character",
        ),
        (
            "repeated top-level key",
            format!(
                r#"{{"subject": {alice}, "subject": {{"type": "user", "id": "mallory"}}, "action": {read}, "resource": {todo}}}"#
            ),
            400,
            "the body is not valid JSON",
        ),
        (
            "repeated nested key",
            with(
                r#"{"type": "user", "id": "mallory", "id": "alice@example.com"}"#,
                read,
                todo,
            ),
            400,
            "the body is not valid JSON",
        ),
        (
            "repeated context key",
            format!(
                r#"{{"subject": {alice}, "action": {read}, "resource": {todo}, "context": {{"time": "a", "time": "b"}}}}"#
            ),
            400,
            "the body is not valid JSON",
        ),
        (
            "unknown action",
            with(alice, r#"{"name": "launch"}"#, todo),
            400,
            "unknown action `Action::\"launch\"`, not declared in the schema",
        ),
        (
            "unknown subject type",
            with(r#"{"type": "robot", "id": "r2"}"#, read, todo),
            400,
            "unknown principal entity type `robot`",
        ),
        (
            "malformed type",
            with(r#"{"type": "user::\"x\"", "id": "r2"}"#, read, todo),
            400,
            "not a valid Cedar type name",
        ),
        (
            "property the schema does not declare",
            with(
                r#"{"type": "user", "id": "bob", "properties": {"shoe_size": 44}}"#,
                read,
                todo,
            ),
            400,
            "invalid entities",
        ),
        (
            "property of the wrong type",
            with(
                r#"{"type": "user", "id": "bob", "properties": {"department": 7}}"#,
                read,
                todo,
            ),
            400,
            "invalid entities",
        ),
        (
            "properties not an object",
            with(
                r#"{"type": "user", "id": "bob", "properties": ["Sales"]}"#,
                read,
                todo,
            ),
            400,
            "`subject.properties` must be an object",
        ),
        (
            "context against the schema",
            format!(
                r#"{{"subject": {alice}, "action": {read}, "resource": {todo}, "context": {{"time": 1985}}}}"#
            ),
            400,
            "is not valid for `Action::\"can_read\"`",
        ),
        (
            "context not an object",
            format!(
                r#"{{"subject": {alice}, "action": {read}, "resource": {todo}, "context": "now"}}"#
            ),
            400,
            "`context` must be an object",
        ),
        (
            "context too deep",
            format!(
                r#"{{"subject": {alice}, "action": {read}, "resource": {todo}, "context": {deep}}}"#
            ),
            400,
            "nested 20 levels deep",
        ),
        (
            "action properties and their context key",
            format!(
                r#"{{"subject": {alice}, "action": {{"name": "can_read", "properties": {{"method": "GET"}}}}, "resource": {todo}, "context": {{"action_properties": {{"method": "PUT"}}}}}}"#
            ),
            400,
            "`context.action_properties` is where `action.properties` go",
        ),
        (
            "oversized body",
            format!(
                r#"{{"subject": {alice}, "action": {read}, "resource": {todo}, "context": {{"time": "{}"}}}}"#,
                "x".repeat(70 * 1024)
            ),
            413,
            "the body is over the limit of 65536 bytes",
        ),
    ];
    for (name, body, status, message) in &cases {
        let answer = pep
            .post_with(eval, body, &[("X-Request-ID", "bad-1")])
            .await;
        assert_eq!(answer.status.as_u16(), *status, "{name}: {}", answer.body);
        error_body(*status, &answer, message);
        assert_eq!(answer.headers["x-request-id"], "bad-1", "{name}");
    }

    // Headers: a request id over the gRPC limit, or two of them.
    let answer = pep
        .post_with(eval, good, &[("X-Request-ID", "r".repeat(129).as_str())])
        .await;
    error_body(400, &answer, "request_id is 129 bytes, the limit is 128");
    let answer = pep
        .send(
            pep.client
                .post(format!("{}{eval}", pep.base))
                .header("content-type", "application/json")
                .header("X-Request-ID", "one")
                .header("X-Request-ID", "two")
                .body(good),
        )
        .await;
    error_body(400, &answer, "more than one `X-Request-ID`");
    assert!(!answer.headers.contains_key("x-request-id"));

    // Content type: 415 unless the body says it is JSON.
    for content_type in [
        Some("text/plain"),
        Some("application/x-www-form-urlencoded"),
        None,
    ] {
        let mut request = pep.client.post(format!("{}{eval}", pep.base)).body(good);
        if let Some(content_type) = content_type {
            request = request.header("content-type", content_type);
        }
        let answer = pep.send(request).await;
        error_body(415, &answer, "the body must be `application/json`");
    }
    let answer = pep
        .send(
            pep.client
                .post(format!("{}{eval}", pep.base))
                .header("content-type", "application/json; charset=utf-8")
                .body(good),
        )
        .await;
    assert_eq!(answer.status, StatusCode::OK);

    // Method: 405 naming the one that works.
    for (method, path, allow) in [
        ("GET", eval, "POST"),
        ("PUT", "/access/v1/evaluations", "POST"),
        ("DELETE", eval, "POST"),
        ("POST", "/.well-known/authzen-configuration", "GET, HEAD"),
    ] {
        let answer = pep
            .send(
                pep.client
                    .request(method.parse().unwrap(), format!("{}{path}", pep.base))
                    .header("content-type", "application/json")
                    .body(good),
            )
            .await;
        error_body(405, &answer, "this endpoint takes");
        assert_eq!(answer.headers["allow"], allow, "{method} {path}");
    }

    // A batch over `max_batch_size` is refused as a whole.
    let five = format!(
        r#"{{"subject": {alice}, "action": {read}, "evaluations": [{}]}}"#,
        vec![format!(r#"{{"resource": {todo}}}"#); 5].join(",")
    );
    let answer = pep.post("/access/v1/evaluations", &five).await;
    error_body(413, &answer, "batch has 5 requests, the limit is 4");
    // Each batch item is held to `max_request_bytes`, as a BatchCheck item.
    let big = format!(
        r#"{{"subject": {alice}, "action": {read}, "evaluations": [{{"resource": {todo}}}, {{"resource": {todo}, "context": {{"time": "{}"}}}}]}}"#,
        "x".repeat(70 * 1024)
    );
    let answer = pep.evaluate_all(&big).await;
    assert_eq!(answer["evaluations"][0], permitted("alice-can-read", &v));
    assert_eq!(answer["evaluations"][1]["decision"], json!(false));
    assert_eq!(
        answer["evaluations"][1]["context"]["error"]["status"],
        json!(413)
    );

    // Nothing above disturbed the PDP.
    assert_eq!(pep.evaluate(good).await, permitted("alice-can-read", &v));
}
