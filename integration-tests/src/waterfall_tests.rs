use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;
use opentelemetry_proto::tonic::common::v1::{AnyValue as Any, KeyValue};
use opentelemetry_proto::tonic::trace::v1::{Span, Status};

use super::*;

const MS: u64 = 1_000_000;
/// Some unix time in nanoseconds, so that offsets are not the raw times.
const T0: u64 = 1_795_000_000_000_000_000;

/// A span of trace `7…7`: id `id`, parent `parent`, from `start` ms for
/// `duration` ms after [`T0`].
fn span(
    service: &str,
    id: u8,
    parent: Option<u8>,
    name: &str,
    start: u64,
    duration: u64,
) -> Exported {
    Exported {
        service: service.to_owned(),
        span: Span {
            trace_id: vec![7; 16],
            span_id: vec![id; 8],
            parent_span_id: parent.map(|p| vec![p; 8]).unwrap_or_default(),
            name: name.to_owned(),
            start_time_unix_nano: T0 + start * MS,
            end_time_unix_nano: T0 + (start + duration) * MS,
            ..Default::default()
        },
    }
}

fn with(mut exported: Exported, attributes: &[(&str, &str)]) -> Exported {
    for (key, value) in attributes {
        exported.span.attributes.push(KeyValue {
            key: (*key).to_owned(),
            value: Some(Any {
                value: Some(AnyValue::StringValue((*value).to_owned())),
            }),
            ..Default::default()
        });
    }
    exported
}

fn kind(mut exported: Exported, kind: SpanKind) -> Exported {
    exported.span.kind = kind as i32;
    exported
}

/// One AcquireCredential as the services export it: the facade's server
/// span, its handler, a client call to the PDP and the PDP's server and
/// handler spans, then a call to the issuer. Shuffled, as batches arrive.
fn request() -> Vec<Exported> {
    let facade = "tether-agent-facade";
    let pdp = "tether-policy-decision";
    let issuer = "tether-credential-issuer";
    vec![
        with(
            span(issuer, 7, Some(6), "credentials.issue", 12, 6),
            &[
                ("session_id", "s_1"),
                ("lease_id", "database/creds/hr/abc"),
                ("granted_ttl_secs", "600"),
            ],
        ),
        kind(
            span(
                facade,
                1,
                Some(99),
                "tether.facade.v1.AgentGateway/AcquireCredential",
                0,
                20,
            ),
            SpanKind::Server,
        ),
        with(
            span(pdp, 5, Some(4), "pdp.check", 4, 2),
            &[
                ("decision", "DECISION_ALLOW"),
                ("policy_ids", "hr-read"),
                ("code.filepath", "x.rs"),
            ],
        ),
        kind(
            span(
                pdp,
                4,
                Some(3),
                "tether.policy.v1.PolicyDecision/Check",
                3,
                4,
            ),
            SpanKind::Server,
        ),
        kind(
            span(
                facade,
                3,
                Some(2),
                "tether.policy.v1.PolicyDecision/Check",
                2,
                6,
            ),
            SpanKind::Client,
        ),
        with(
            span(facade, 2, Some(1), "facade.acquire_credential", 1, 18),
            &[
                ("session_id", "s_1"),
                ("agent", "hr-assistant"),
                ("user", "alice"),
                ("decision", "DECISION_ALLOW"),
                ("approval_state", "APPROVAL_STATE_APPROVED"),
            ],
        ),
        kind(
            span(
                facade,
                6,
                Some(2),
                "tether.credentials.v1.CredentialIssuer/Issue",
                10,
                9,
            ),
            SpanKind::Client,
        ),
    ]
}

fn shape(trace: &Trace) -> Vec<(usize, &str, &str)> {
    trace
        .rows()
        .iter()
        .map(|r| (r.depth, r.service_label(), r.name.as_str()))
        .collect()
}

#[test]
fn the_tree_follows_parent_ids_across_services_in_start_order() {
    let trace = Trace::from_spans(&request());
    assert_eq!(
        shape(&trace),
        [
            (
                0,
                "agent-facade",
                "tether.facade.v1.AgentGateway/AcquireCredential"
            ),
            (1, "agent-facade", "facade.acquire_credential"),
            (2, "agent-facade", "tether.policy.v1.PolicyDecision/Check"),
            (
                3,
                "policy-decision",
                "tether.policy.v1.PolicyDecision/Check"
            ),
            (4, "policy-decision", "pdp.check"),
            (
                2,
                "agent-facade",
                "tether.credentials.v1.CredentialIssuer/Issue"
            ),
            (3, "credential-issuer", "credentials.issue"),
        ]
    );
    assert_eq!(trace.trace_id(), "07070707070707070707070707070707");
    assert_eq!(trace.duration_ns(), 20 * MS);
    assert_eq!(
        trace.services(),
        [
            "tether-agent-facade",
            "tether-policy-decision",
            "tether-credential-issuer"
        ]
    );
    let rows = trace.rows();
    assert_eq!(rows[2].start_ns, 2 * MS);
    assert_eq!(rows[2].duration_ns, 6 * MS);
    assert_eq!(rows[2].label(), "→ PolicyDecision/Check");
    assert_eq!(rows[3].label(), "PolicyDecision/Check");
    // The facade's server span names the agent's span, never exported.
    assert!(rows[0].orphan);
    assert!(rows.iter().skip(1).all(|r| !r.orphan && !r.before_parent));

    // The same spans in another order give the same picture.
    let mut reversed = request();
    reversed.reverse();
    let again = Trace::from_spans(&reversed);
    assert_eq!(again.to_text(40), trace.to_text(40));
    assert_eq!(again.to_svg(), trace.to_svg());
}

#[test]
fn only_allow_listed_attributes_are_shown_and_who_is_not_repeated() {
    let mut spans = request();
    spans.push(with(
        span("tether-agent-facade", 8, Some(2), "leaky", 19, 0),
        &[
            ("authorization", "Bearer eyJsecret"),
            ("password", "hunter2-secret"),
            ("token", "tok-secret"),
            ("session_id", "s_1"),
        ],
    ));
    let trace = Trace::from_spans(&spans);
    let attrs = |name: &str| -> Vec<(&str, &str, bool)> {
        trace
            .rows()
            .iter()
            .find(|r| r.name == name)
            .unwrap()
            .attributes
            .iter()
            .map(|a| (a.label, a.value.as_str(), a.inherited))
            .collect()
    };
    assert_eq!(
        attrs("facade.acquire_credential"),
        [
            ("session", "s_1", false),
            ("agent", "hr-assistant", false),
            ("user", "alice", false),
            ("decision", "ALLOW", false),
            ("approval", "APPROVED", false),
        ]
    );
    // What a hop decided is shown even when its caller says the same;
    // code.filepath never.
    assert_eq!(
        attrs("pdp.check"),
        [("decision", "ALLOW", false), ("policies", "hr-read", false)]
    );
    assert_eq!(
        attrs("credentials.issue"),
        [
            ("session", "s_1", true),
            ("lease", "database/creds/hr/abc", false),
            ("ttl", "600s", false)
        ]
    );
    assert_eq!(attrs("leaky"), [("session", "s_1", true)]);

    let text = trace.to_text(40);
    let svg = trace.to_svg();
    for output in [&text, &svg] {
        assert!(!output.contains("secret"), "{output}");
        assert!(!output.contains("code.filepath"), "{output}");
    }
    let line = |name: &str| text.lines().find(|l| l.contains(name)).unwrap().to_owned();
    assert!(
        line("facade.acquire_credential").ends_with(
            "session=s_1 agent=hr-assistant user=alice decision=ALLOW approval=APPROVED"
        )
    );
    assert!(
        line("pdp.check").ends_with("│  decision=ALLOW policies=hr-read"),
        "{text}"
    );
    assert!(
        line("credentials.issue").ends_with("│  lease=database/creds/hr/abc ttl=600s"),
        "{text}"
    );
    // The tooltip keeps what an ancestor shows.
    assert!(
        svg.contains("lease=database/creds/hr/abc\nttl=600s"),
        "{svg}"
    );
    assert!(
        svg.contains("credentials.issue\nstarts at 12.0 ms · takes 6.0 ms\nsession=s_1"),
        "{svg}"
    );
}

#[test]
fn the_text_has_one_line_per_span_with_bars_scaled_to_the_trace() {
    let trace = Trace::from_spans(&request());
    let text = trace.to_text(20);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), TEXT_HEADER_LINES + trace.len(), "{text}");
    assert!(
        lines[0]
            .starts_with("trace 07070707070707070707070707070707 · 7 spans · 3 services · 20.0 ms"),
        "{text}"
    );
    let bar = |line: &str| -> String {
        let from = line.find('│').unwrap();
        let rest = &line[from + '│'.len_utf8()..];
        rest[..rest.find('│').unwrap()].to_owned()
    };
    // 20 ms over 20 columns: one column per millisecond.
    let bars: Vec<String> = lines[TEXT_HEADER_LINES..].iter().map(|l| bar(l)).collect();
    assert_eq!(bars[0], "█".repeat(20));
    assert_eq!(bars[2], format!("  {}{}", "█".repeat(6), " ".repeat(12)));
    assert_eq!(
        bars[6],
        format!("{}{}{}", " ".repeat(12), "█".repeat(6), " ".repeat(2))
    );
    for (line, row) in lines[TEXT_HEADER_LINES..].iter().zip(trace.rows()) {
        assert!(
            line.contains(&format!("{}{}", "  ".repeat(row.depth), row.label())),
            "{line}"
        );
        assert_eq!(bar(line).chars().count(), 20, "{line}");
    }
    assert!(
        lines[3].starts_with("   1.0 ms   18.0 ms  agent-facade"),
        "{text}"
    );
}

#[test]
fn a_title_heads_both_renderings() {
    let trace = Trace::from_spans(&request()).with_title("Offboarding <1042>");
    let text = trace.to_text(20);
    assert!(
        text.starts_with("Offboarding <1042> · trace 0707"),
        "{text}"
    );
    assert_eq!(text.lines().count(), TEXT_HEADER_LINES + trace.len());
    let svg = trace.to_svg();
    assert!(svg.contains(">Offboarding &lt;1042&gt;</text>"), "{svg}");
    check_xml(&svg).unwrap();
    // Without one, the SVG is titled after the first span.
    assert!(
        Trace::from_spans(&request())
            .to_svg()
            .contains(">Trace of AgentGateway/AcquireCredential</text>")
    );
}

#[test]
fn orphans_are_roots_and_keep_their_children() {
    let spans = vec![
        span("a", 1, None, "root", 0, 10),
        span("b", 2, Some(42), "orphan", 5, 3),
        span("b", 3, Some(2), "child of orphan", 6, 1),
    ];
    let trace = Trace::from_spans(&spans);
    assert_eq!(
        shape(&trace),
        [
            (0, "a", "root"),
            (0, "b", "orphan"),
            (1, "b", "child of orphan")
        ]
    );
    let rows = trace.rows();
    assert!(!rows[0].orphan && rows[1].orphan && !rows[2].orphan);
    assert!(
        trace
            .to_svg()
            .contains("its parent span is not in this trace")
    );
}

#[test]
fn a_parent_cycle_and_duplicate_ids_drop_no_span() {
    let spans = vec![
        span("a", 1, Some(2), "one", 0, 5),
        span("a", 2, Some(1), "two", 1, 5),
        span("a", 3, Some(3), "its own parent", 2, 1),
        span("a", 3, None, "same id again", 3, 1),
    ];
    let trace = Trace::from_spans(&spans);
    let mut names: Vec<&str> = trace.rows().iter().map(|r| r.name.as_str()).collect();
    names.sort_unstable();
    assert_eq!(names, ["its own parent", "one", "same id again", "two"]);
    assert_eq!(trace.to_text(30).lines().count(), TEXT_HEADER_LINES + 4);
    check_xml(&trace.to_svg()).unwrap();
}

#[test]
fn a_child_that_starts_before_its_parent_is_drawn_where_its_clock_puts_it() {
    // The callee's clock runs 3 ms behind: its server span starts before
    // the client span that called it.
    let spans = vec![
        kind(span("caller", 1, None, "svc/Call", 5, 10), SpanKind::Client),
        kind(
            span("callee", 2, Some(1), "svc/Call", 2, 8),
            SpanKind::Server,
        ),
    ];
    let trace = Trace::from_spans(&spans);
    let rows = trace.rows();
    assert_eq!(
        shape(&trace),
        [(0, "caller", "svc/Call"), (1, "callee", "svc/Call")]
    );
    assert_eq!((rows[0].start_ns, rows[1].start_ns), (3 * MS, 0));
    assert!(rows[1].before_parent);
    assert_eq!(trace.duration_ns(), 13 * MS);
    let text = trace.to_text(13);
    assert!(
        text.contains("[starts before its parent: clock skew]"),
        "{text}"
    );
    check_xml(&trace.to_svg()).unwrap();
}

#[test]
fn a_span_that_ends_before_it_starts_lasts_zero() {
    let mut backwards = span("a", 1, None, "backwards", 5, 0);
    backwards.span.end_time_unix_nano = T0;
    let trace = Trace::from_spans(&[backwards]);
    assert_eq!(trace.rows()[0].duration_ns, 0);
    assert_eq!(trace.duration_ns(), 0);
    check_xml(&trace.to_svg()).unwrap();
}

#[test]
fn a_single_zero_duration_span_still_has_a_bar() {
    let trace = Trace::from_spans(&[span("tether-pdp", 1, None, "instant", 3, 0)]);
    assert_eq!(trace.duration_ns(), 0);
    let text = trace.to_text(10);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), TEXT_HEADER_LINES + 1, "{text}");
    assert!(lines[0].contains("1 span · 1 service · 0 ms"), "{text}");
    assert!(lines[2].contains("│▏         │"), "{text}");
    let svg = trace.to_svg();
    check_xml(&svg).unwrap();
    // A 2 px bar, one tick.
    assert!(svg.contains(r#"width="2.0" height="14""#), "{svg}");
    assert_eq!(svg.matches("<line ").count(), 1, "{svg}");
}

#[test]
fn no_spans_give_a_header_and_an_empty_picture() {
    let trace = Trace::from_spans(&[]);
    assert!(trace.is_empty());
    assert_eq!(trace.to_text(40).lines().count(), TEXT_HEADER_LINES);
    let svg = trace.to_svg();
    check_xml(&svg).unwrap();
    assert!(svg.contains(">No spans received</text>"), "{svg}");
}

#[test]
fn names_and_attributes_are_escaped_for_xml_and_control_characters_for_terminals() {
    let spans = vec![
        with(
            span("svc <&>\"'", 1, None, "a<b>&\"c'd", 0, 4),
            &[
                ("resource", "Employee::\"<script>&amp;\""),
                ("action", "x\u{1b}[2J\u{7}\r\ny"),
            ],
        ),
        span("svc", 2, Some(1), "]]> \u{fffe} \u{0}", 1, 1),
    ];
    let trace = Trace::from_spans(&spans);
    let svg = trace.to_svg();
    check_xml(&svg).unwrap();
    assert!(!svg.contains("<script>") && !svg.contains("a<b>"), "{svg}");
    assert!(svg.contains("a&lt;b&gt;&amp;&quot;c&apos;d"), "{svg}");
    assert!(
        svg.contains("Employee::&quot;&lt;script&gt;&amp;amp;&quot;"),
        "{svg}"
    );
    assert!(svg.contains("svc &lt;&amp;&gt;&quot;&apos;"), "{svg}");
    assert!(svg.contains("]]&gt; \u{fffd}"), "{svg}");

    // The terminal gets the characters as they are, but no escape
    // sequence, bell or line break.
    let text = trace.to_text(20);
    assert_eq!(text.lines().count(), TEXT_HEADER_LINES + 2, "{text}");
    assert!(!text.contains('\u{1b}') && !text.contains('\u{7}') && !text.contains('\r'));
    assert!(text.contains(r"action=x\u{1b}[2J\u{7}\r\ny"), "{text}");
    assert!(text.contains("a<b>&\"c'd"), "{text}");
}

#[test]
fn a_long_name_or_value_is_clipped() {
    let long = "n".repeat(500);
    let trace = Trace::from_spans(&[with(span("svc", 1, None, &long, 0, 1), &[("user", &long)])]);
    let row = &trace.rows()[0];
    assert_eq!(row.name.chars().count(), 65);
    assert_eq!(row.attributes[0].value.chars().count(), 65);
    assert!(trace.to_text(40).lines().all(|l| l.chars().count() < 300));
}

#[test]
fn errors_and_grpc_status_codes_are_shown() {
    let mut refused = kind(span("svc", 1, None, "pkg.Svc/Do", 0, 2), SpanKind::Server);
    refused.span.status = Some(Status {
        message: String::new(),
        code: StatusCode::Error as i32,
    });
    refused.span.attributes.push(KeyValue {
        key: "rpc.grpc.status_code".into(),
        value: Some(Any {
            value: Some(AnyValue::IntValue(14)),
        }),
        ..Default::default()
    });
    let mut ok = kind(
        span("svc", 2, Some(1), "pkg.Svc/Ok", 0, 1),
        SpanKind::Client,
    );
    ok.span.attributes.push(KeyValue {
        key: "rpc.grpc.status_code".into(),
        value: Some(Any {
            value: Some(AnyValue::IntValue(0)),
        }),
        ..Default::default()
    });
    let trace = Trace::from_spans(&[refused, ok]);
    let text = trace.to_text(20);
    assert!(text.contains("status=Unavailable [error]"), "{text}");
    assert!(!text.contains("status=Ok"), "{text}");
    let svg = trace.to_svg();
    assert!(svg.contains(r##"stroke="#cf222e""##), "{svg}");
}

#[test]
fn durations_read_naturally() {
    assert_eq!(format_duration(0), "0 ms");
    assert_eq!(format_duration(420_000), "0.42 ms");
    assert_eq!(format_duration(52_345_000), "52.3 ms");
    assert_eq!(format_duration(1_250_000_000), "1.25 s");
    assert_eq!(format_tick(0.0, 5.0 * MS as f64), "0 ms");
    assert_eq!(format_tick(2.5 * MS as f64, 0.5 * MS as f64), "2.5 ms");
    assert_eq!(tick_step(60 * MS), 10.0 * MS as f64);
    assert_eq!(tick_step(7 * MS), MS as f64);
    assert_eq!(tick_step(14 * MS), 2.0 * MS as f64);
    assert_eq!(tick_step(131 * MS), 20.0 * MS as f64);
}

#[test]
fn the_xml_check_accepts_what_is_well_formed_and_nothing_else() {
    check_xml(r#"<?xml version="1.0"?><a x="1" y='&lt;'><!-- c --><b/>t &amp; &#x41;&#65;</a>"#)
        .unwrap();
    for bad in [
        "",
        "<a>",
        "<a></b>",
        "</a>",
        "<a/><b/>",
        "text<a/>",
        "<a>&</a>",
        "<a>&nbsp;</a>",
        "<a>&#0;</a>",
        "<a>&#x;</a>",
        "<a x=1/>",
        "<a x=\"1\"y=\"2\"/>",
        "<a x=\"1\" x=\"2\"/>",
        "<a x=\"<\"/>",
        "<a x=\"1/>",
        "<a>\u{1}</a>",
        "<a>]]></a>",
        "<a><!-- a -- b --></a>",
        "<a><![CDATA[x]]></a>",
        "<!DOCTYPE a><a/>",
        "<a>< b</a>",
    ] {
        assert!(check_xml(bad).is_err(), "accepted {bad:?}");
    }
}
