use super::*;

fn sources(policies: &str) -> PackSources {
    PackSources {
        schema: (
            "s.cedarschema".into(),
            "entity User;\nentity Doc;\naction \"read\" appliesTo { principal: User, resource: Doc };\n"
                .into(),
        ),
        policies: vec![("rules/p.cedar".into(), policies.into())],
        entities: None,
        source: "test".into(),
    }
}

#[test]
fn validation_error_names_file_line_and_cedar_message() {
    let err = PolicyPack::from_sources(sources(
        "@id(\"ok\") permit(principal, action, resource);\n\n@id(\"bad\")\npermit(principal is Usr, action, resource);\n",
    ))
    .unwrap_err();
    let problem = &err.problems[0];
    assert_eq!(problem.file.as_deref(), Some("rules/p.cedar"));
    assert_eq!(problem.line, Some(4));
    assert!(problem.message.contains("Usr"), "{problem}");
}

#[test]
fn parse_error_names_file_and_line() {
    let err = PolicyPack::from_sources(sources(
        "permit(principal, action, resource);\nforbid(principal,,);\n",
    ))
    .unwrap_err();
    assert_eq!(err.problems[0].file.as_deref(), Some("rules/p.cedar"));
    assert_eq!(err.problems[0].line, Some(2));
}

#[test]
fn duplicate_ids_and_misused_annotations_are_rejected() {
    let err = PolicyPack::from_sources(sources(
        "@id(\"a\") permit(principal, action, resource);\n@id(\"a\") permit(principal, action, resource);\n",
    ))
    .unwrap_err();
    assert!(err.to_string().contains("duplicate policy id `a`"), "{err}");

    let err = PolicyPack::from_sources(sources(
        "@step_up(\"ciba\") permit(principal, action, resource);\n",
    ))
    .unwrap_err();
    assert!(
        err.to_string().contains("only meaningful on a `forbid`"),
        "{err}"
    );

    let err = PolicyPack::from_sources(sources(
        "@step_up(\"sms\") forbid(principal, action, resource);\n",
    ))
    .unwrap_err();
    assert!(
        err.to_string().contains("unknown step-up method `sms`"),
        "{err}"
    );

    let err = PolicyPack::from_sources(sources(
        "@step_up(\"ciba\") @binding_message(\"{context.x}\") forbid(principal, action, resource);\n",
    ))
    .unwrap_err();
    assert!(err.to_string().contains("unknown placeholder"), "{err}");
}

#[test]
fn version_is_a_content_hash() {
    let a = PolicyPack::from_sources(sources("permit(principal, action, resource);")).unwrap();
    let b = PolicyPack::from_sources(sources("permit(principal, action, resource);")).unwrap();
    let c = PolicyPack::from_sources(sources("forbid(principal, action, resource);")).unwrap();
    assert_eq!(a.version(), b.version());
    assert_ne!(a.version(), c.version());
    assert!(a.version().starts_with("sha256:"));
    assert_eq!(c.stats().forbids, 1);
}

#[test]
fn load_dir_requires_exactly_one_schema() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("p.cedar"),
        "permit(principal, action, resource);",
    )
    .unwrap();
    let err = PolicyPack::load_dir(dir.path()).unwrap_err();
    assert!(err.to_string().contains("no schema"), "{err}");
    std::fs::write(dir.path().join("a.cedarschema"), "entity User;").unwrap();
    std::fs::write(dir.path().join("b.cedarschema"), "entity User;").unwrap();
    let err = PolicyPack::load_dir(dir.path()).unwrap_err();
    assert!(err.to_string().contains("exactly one schema"), "{err}");
}

#[test]
fn example_pack_loads_with_counts() {
    let dir = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../examples/hr");
    let pack = PolicyPack::load_dir(&dir).unwrap();
    let stats = pack.stats();
    assert_eq!(stats.policies, 7);
    assert_eq!(stats.permits, 2);
    assert_eq!(stats.forbids, 5);
    assert_eq!(stats.step_ups, 2);
    assert_eq!(stats.entities, 2);
    assert_eq!(
        pack.signals(&[
            "hr-offboard",
            "outside-declared-intent",
            "outside-declared-intent"
        ]),
        ["out_of_intent"]
    );
    assert!(
        pack.signals(&["no-such-policy", "deny-high-risk"])
            .is_empty()
    );
}

#[test]
fn signal_annotations_must_be_names() {
    for (annotation, ok) in [
        ("@signal(\"out_of_intent\")", true),
        ("@signal(\"\")", false),
        ("@signal(\"Out Of Intent\")", false),
        ("@signal(\"x\\nlog\")", false),
    ] {
        let policies = format!("@id(\"p\") {annotation} forbid(principal, action, resource);");
        let loaded = PolicyPack::from_sources(sources(&policies));
        assert_eq!(loaded.is_ok(), ok, "{annotation}");
        if let Err(e) = loaded {
            assert!(e.to_string().contains("`@signal`"), "{e}");
        }
    }
}
