//! One trace as a person reads it: the span tree across services, as a text
//! waterfall for the terminal and as a self-contained SVG picture.
//!
//! The tree follows parent span ids whatever process exported a span, so a
//! service's server span sits under the facade's client span that called
//! it. A span whose parent was not received (the agent's own span, or one
//! still in a batch) is shown at depth 0. Times are offsets from the
//! trace's first span; a child that starts before its parent (two
//! processes' clocks disagree) is drawn where its own clock puts it.
//!
//! Only the attributes in [`KEY_ATTRIBUTES`] are ever printed: the spans
//! hold no secret, and an allow-list keeps it so when someone adds one.
//! Every string is clipped and has its control characters escaped
//! ([`tether_runtime::clip`]); the SVG escapes it for XML as well.

use std::collections::HashMap;
use std::fmt::Write as _;

use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use opentelemetry_proto::tonic::trace::v1::status::StatusCode;
use tether_runtime::clip;

use crate::otlp::{Exported, to_hex};

/// The attributes a waterfall shows, in this order, as `label=value`:
/// who, what, the decision, the approval, the credential. Everything else a
/// span carries stays out.
pub const KEY_ATTRIBUTES: &[(&str, &str)] = &[
    ("session_id", "session"),
    ("agent", "agent"),
    ("user", "user"),
    ("action", "action"),
    ("resource", "resource"),
    ("profile", "profile"),
    ("decision", "decision"),
    ("policy_ids", "policies"),
    ("outcome", "outcome"),
    ("approval_state", "approval"),
    ("approval_ticket", "ticket"),
    ("ticket", "ticket"),
    ("lease_id", "lease"),
    ("granted_ttl_secs", "ttl"),
    ("rpc.grpc.status_code", "status"),
];

/// The attributes that name who a request is for: the same on every hop
/// of one request, so shown once, on the highest span that carries them.
pub const WHO: &[&str] = &["session", "agent", "user"];

/// Lines [`Trace::to_text`] writes before the first span's line.
pub const TEXT_HEADER_LINES: usize = 2;

/// Enum names as the spans carry them, and the prefix a reader can do
/// without (`DECISION_ALLOW` → `ALLOW`).
const ENUM_PREFIXES: &[(&str, &str)] = &[
    ("decision", "DECISION_"),
    ("approval_state", "APPROVAL_STATE_"),
    ("approval_state", "TICKET_STATE_"),
    ("outcome", "REQUEST_OUTCOME_"),
];

/// Deeper spans are drawn at this depth (a pathological trace must not
/// push its names off the page).
const MAX_INDENT: usize = 16;

/// One allow-listed attribute of a span, ready to show.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attribute {
    pub label: &'static str,
    pub value: String,
    /// Who the request is for ([`WHO`]) and an ancestor already shows
    /// the same `label=value`: the attribute column leaves it out, the SVG
    /// tooltip keeps it. What a hop decided or issued is always shown.
    pub inherited: bool,
}

/// One span, placed.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    pub depth: usize,
    pub service: String,
    /// The span's name, clipped, control characters escaped.
    pub name: String,
    pub kind: SpanKind,
    /// Nanoseconds from the trace's first span.
    pub start_ns: u64,
    pub duration_ns: u64,
    pub attributes: Vec<Attribute>,
    /// The span's status is ERROR.
    pub error: bool,
    /// It names a parent that is not in the trace.
    pub orphan: bool,
    /// It starts before its parent (clock skew between processes).
    pub before_parent: bool,
}

impl Row {
    /// The name a reader wants: `tether.policy.v1.PolicyDecision/Check` →
    /// `PolicyDecision/Check`, with `→ ` before an outgoing call.
    pub fn label(&self) -> String {
        let short = short_name(&self.name);
        if self.kind == SpanKind::Client {
            format!("→ {short}")
        } else {
            short.to_owned()
        }
    }

    /// The service without the `tether-` every service name starts with.
    pub fn service_label(&self) -> &str {
        short_service(&self.service)
    }

    fn shown_attributes(&self) -> impl Iterator<Item = &Attribute> {
        self.attributes.iter().filter(|a| !a.inherited)
    }
}

fn short_service(service: &str) -> &str {
    service.strip_prefix("tether-").unwrap_or(service)
}

fn short_name(name: &str) -> &str {
    match name.split_once('/') {
        Some((service, method)) if !name.contains(char::is_whitespace) && !method.contains('/') => {
            let tail = service.rsplit('.').next().unwrap_or(service);
            // `tail/method` is a suffix of `name`.
            &name[name.len() - tail.len() - 1 - method.len()..]
        }
        _ => name,
    }
}

/// The spans of one trace, as a tree in display order (depth first,
/// siblings by start time).
#[derive(Debug, Clone)]
pub struct Trace {
    title: Option<String>,
    trace_id: String,
    rows: Vec<Row>,
    duration_ns: u64,
    services: Vec<String>,
}

impl Trace {
    /// Builds the tree from the spans of one trace (as
    /// [`crate::otlp::Collector::trace`] returns them, in any order). The
    /// trace id shown is the first span's.
    pub fn from_spans(spans: &[Exported]) -> Self {
        let trace_id = spans
            .first()
            .map(|s| to_hex(&s.span.trace_id))
            .unwrap_or_default();
        let origin = spans
            .iter()
            .map(|s| s.span.start_time_unix_nano)
            .min()
            .unwrap_or_default();
        let end = spans
            .iter()
            .map(|s| s.span.end_time_unix_nano.max(s.span.start_time_unix_nano))
            .max()
            .unwrap_or_default();

        // A span id exported twice: the first copy is the parent.
        let mut by_id: HashMap<&[u8], usize> = HashMap::new();
        for (i, s) in spans.iter().enumerate() {
            by_id.entry(s.span.span_id.as_slice()).or_insert(i);
        }
        let parent_of = |i: usize| -> Option<usize> {
            let parent = spans.get(i)?.span.parent_span_id.as_slice();
            by_id
                .get(parent)
                .copied()
                .filter(|&p| !parent.is_empty() && p != i)
        };
        let order = |i: &usize| {
            let s = &spans[*i].span;
            (s.start_time_unix_nano, s.name.clone(), s.span_id.clone())
        };
        let mut children: HashMap<usize, Vec<usize>> = HashMap::new();
        let mut roots = Vec::new();
        for i in 0..spans.len() {
            match parent_of(i) {
                Some(p) => children.entry(p).or_default().push(i),
                None => roots.push(i),
            }
        }
        for list in children.values_mut() {
            list.sort_by_key(order);
        }
        roots.sort_by_key(order);

        let mut rows = Vec::with_capacity(spans.len());
        let mut visited = vec![false; spans.len()];
        // What each visited span's ancestors (and itself) show.
        let mut shown: Vec<Vec<(&'static str, String)>> = vec![Vec::new(); spans.len()];
        let mut next_root = 0;
        loop {
            // Roots first; then whatever a parent cycle kept unreachable,
            // earliest first, so no span is ever dropped.
            let start = if let Some(&r) = roots.get(next_root) {
                next_root += 1;
                r
            } else {
                match (0..spans.len()).filter(|&i| !visited[i]).min_by_key(order) {
                    Some(i) => i,
                    None => break,
                }
            };
            let mut stack = vec![(start, 0usize, None::<usize>)];
            while let Some((i, depth, parent)) = stack.pop() {
                if visited[i] {
                    continue;
                }
                visited[i] = true;
                let exported = &spans[i];
                let s = &exported.span;
                let inherited_from = parent.map(|p| shown[p].clone()).unwrap_or_default();
                let attributes: Vec<Attribute> = key_attributes(exported)
                    .into_iter()
                    .map(|(label, value)| Attribute {
                        inherited: WHO.contains(&label)
                            && inherited_from
                                .iter()
                                .any(|(l, v)| *l == label && *v == value),
                        label,
                        value,
                    })
                    .collect();
                let mut mine = inherited_from;
                mine.extend(attributes.iter().map(|a| (a.label, a.value.clone())));
                shown[i] = mine;
                let start_ns = s.start_time_unix_nano.saturating_sub(origin);
                rows.push(Row {
                    depth,
                    service: clip(&exported.service),
                    name: clip(&s.name),
                    kind: s.kind(),
                    start_ns,
                    duration_ns: s.end_time_unix_nano.saturating_sub(s.start_time_unix_nano),
                    attributes,
                    error: s
                        .status
                        .as_ref()
                        .is_some_and(|st| st.code() == StatusCode::Error),
                    orphan: !s.parent_span_id.is_empty() && parent.is_none(),
                    before_parent: parent.is_some_and(|p| {
                        s.start_time_unix_nano < spans[p].span.start_time_unix_nano
                    }),
                });
                if let Some(kids) = children.get(&i) {
                    for &k in kids.iter().rev() {
                        stack.push((k, depth + 1, Some(i)));
                    }
                }
            }
        }

        let mut services: Vec<String> = Vec::new();
        for row in &rows {
            if !services.contains(&row.service) {
                services.push(row.service.clone());
            }
        }
        Self {
            title: None,
            trace_id,
            rows,
            duration_ns: end.saturating_sub(origin),
            services,
        }
    }

    /// A headline for both renderings (e.g. `Offboarding employee 1042`);
    /// by default the SVG is titled after the first span.
    pub fn with_title(mut self, title: &str) -> Self {
        self.title = Some(clip(title));
        self
    }

    /// Lowercase hex.
    pub fn trace_id(&self) -> &str {
        &self.trace_id
    }

    /// The spans in display order.
    pub fn rows(&self) -> &[Row] {
        &self.rows
    }

    pub fn len(&self) -> usize {
        self.rows.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// From the first span's start to the last span's end.
    pub fn duration_ns(&self) -> u64 {
        self.duration_ns
    }

    /// The services, in the order they first appear.
    pub fn services(&self) -> &[String] {
        &self.services
    }

    /// The text waterfall: [`TEXT_HEADER_LINES`] lines of header, then one
    /// line per span: start offset, duration, service, the span's name
    /// indented by depth, a bar `bar_width` characters wide (8 to 200)
    /// scaled to the trace's duration, and the key attributes an ancestor
    /// does not already show.
    pub fn to_text(&self, bar_width: usize) -> String {
        let bar_width = bar_width.clamp(8, 200);
        let services: usize = self.services.len();
        let mut out = self
            .title
            .as_ref()
            .map(|t| format!("{t} · "))
            .unwrap_or_default();
        let _ = writeln!(
            out,
            "trace {} · {} span{} · {} service{} · {}",
            if self.trace_id.is_empty() {
                "(none)"
            } else {
                &self.trace_id
            },
            self.rows.len(),
            if self.rows.len() == 1 { "" } else { "s" },
            services,
            if services == 1 { "" } else { "s" },
            format_duration(self.duration_ns),
        );
        let service_width = self
            .rows
            .iter()
            .map(|r| r.service_label().chars().count())
            .chain([7])
            .max()
            .unwrap_or(7);
        let labels: Vec<String> = self
            .rows
            .iter()
            .map(|r| format!("{}{}", "  ".repeat(r.depth.min(MAX_INDENT)), r.label()))
            .collect();
        let name_width = labels
            .iter()
            .map(|l| l.chars().count())
            .chain([13])
            .max()
            .unwrap_or(13);
        let total = format_duration(self.duration_ns);
        let axis = format!(
            "0{}{total}",
            " ".repeat(bar_width.saturating_sub(1 + total.chars().count()))
        );
        let _ = writeln!(
            out,
            "{:>9} {:>9}  {:<service_width$}  {:<name_width$}  {:<axis_width$}  key attributes",
            "start",
            "duration",
            "service",
            "span (→ call)",
            format!(" {axis} "),
            axis_width = bar_width + 2,
        );
        for (row, label) in self.rows.iter().zip(&labels) {
            let attributes: Vec<String> = row
                .shown_attributes()
                .map(|a| format!("{}={}", a.label, a.value))
                .collect();
            let mut notes = Vec::new();
            if row.error {
                notes.push("[error]");
            }
            if row.before_parent {
                notes.push("[starts before its parent: clock skew]");
            }
            let line = format!(
                "{:>9} {:>9}  {:<service_width$}  {:<name_width$}  │{}│  {} {}",
                format_duration(row.start_ns),
                format_duration(row.duration_ns),
                row.service_label(),
                label,
                self.text_bar(row, bar_width),
                attributes.join(" "),
                notes.join(" "),
            );
            out.push_str(line.trim_end());
            out.push('\n');
        }
        out
    }

    fn text_bar(&self, row: &Row, width: usize) -> String {
        let (from, to) = self.columns(row, width);
        let mut bar = String::with_capacity(width * 3);
        for column in 0..width {
            bar.push(if column < from || column >= to {
                ' '
            } else if row.duration_ns == 0 {
                '▏'
            } else {
                '█'
            });
        }
        bar
    }

    /// The first and one-past-last column of `row`'s bar: at least one
    /// column, never past `width`.
    fn columns(&self, row: &Row, width: usize) -> (usize, usize) {
        // In integers: a float's rounding would move a bar that ends exactly
        // on a column boundary one column on.
        let total = u128::from(self.duration_ns.max(1));
        let width_n = width as u128;
        let start = u128::from(row.start_ns);
        let end = start + u128::from(row.duration_ns);
        let from = usize::try_from(start * width_n / total)
            .unwrap_or(width)
            .min(width - 1);
        let to = usize::try_from((end * width_n).div_ceil(total))
            .unwrap_or(width)
            .clamp(from + 1, width);
        (from, to)
    }

    /// The SVG picture: one row per span, bars placed by start and scaled
    /// by duration on a time axis, a colour per service with a legend, each
    /// span's name and duration, its key attributes beside it, and every
    /// allow-listed attribute in the row's tooltip (`<title>`). One
    /// self-contained file, no script, no external reference.
    pub fn to_svg(&self) -> String {
        Svg::new(self).render()
    }
}

/// The allow-listed attributes of `span`, in [`KEY_ATTRIBUTES`] order, as
/// they are shown (`ALLOW` for `DECISION_ALLOW`, `600s` for a TTL; a gRPC
/// status only when it is not OK).
fn key_attributes(span: &Exported) -> Vec<(&'static str, String)> {
    let mut out: Vec<(&'static str, String)> = Vec::new();
    for &(key, label) in KEY_ATTRIBUTES {
        let Some(raw) = span.attr(key) else { continue };
        if raw.is_empty() {
            continue;
        }
        let value = match key {
            "granted_ttl_secs" => format!("{raw}s"),
            "rpc.grpc.status_code" => match raw.parse::<i32>() {
                Ok(0) => continue,
                Ok(code) => format!("{:?}", tonic::Code::from(code)),
                Err(_) => raw,
            },
            _ => ENUM_PREFIXES
                .iter()
                .filter(|(k, _)| *k == key)
                .find_map(|(_, prefix)| raw.strip_prefix(prefix))
                .map_or_else(|| raw.clone(), str::to_owned),
        };
        let value = clip(&value);
        // `ticket` and `approval_ticket` name the same thing.
        if !out.iter().any(|(l, v)| *l == label && *v == value) {
            out.push((label, value));
        }
    }
    out
}

/// `1.25 s`, `52.3 ms`, `0.42 ms`, `0 ms`.
pub fn format_duration(ns: u64) -> String {
    let ms = ns as f64 / 1e6;
    if ns == 0 {
        "0 ms".to_owned()
    } else if ms >= 1000.0 {
        format!("{:.2} s", ms / 1000.0)
    } else if ms >= 1.0 {
        format!("{ms:.1} ms")
    } else {
        format!("{ms:.2} ms")
    }
}

// ---------------------------------------------------------------------------
// The SVG.

/// Colour-blind-friendly and distinct on white (Tableau 10).
const PALETTE: &[&str] = &[
    "#4e79a7", "#f28e2b", "#59a14f", "#b07aa1", "#e15759", "#76b7b2", "#edc948", "#9c755f",
    "#ff9da7", "#bab0ac",
];
const MONO: &str = "'DejaVu Sans Mono', Menlo, Consolas, monospace";
const SANS: &str = "'DejaVu Sans', 'Helvetica Neue', Arial, sans-serif";
/// A monospace glyph's advance, per unit of font size.
const ADVANCE: f64 = 0.602;
const PAD: f64 = 24.0;
const ROW_HEIGHT: f64 = 26.0;
const LINE_HEIGHT: f64 = 15.0;
const BAR_HEIGHT: f64 = 14.0;
const LABEL_SIZE: f64 = 12.0;
const SMALL_SIZE: f64 = 11.0;
const INDENT: f64 = 16.0;
const TIMELINE_WIDTH: f64 = 600.0;
/// The attribute column wraps at this many characters.
const ATTRIBUTE_CHARS: usize = 76;
const TEXT: &str = "#1f2328";
const MUTED: &str = "#59636e";
const FAINT: &str = "#8c959f";
const GRID: &str = "#d8dee4";
const ERROR: &str = "#cf222e";

struct Svg<'a> {
    trace: &'a Trace,
    out: String,
    colours: HashMap<&'a str, &'static str>,
}

impl<'a> Svg<'a> {
    fn new(trace: &'a Trace) -> Self {
        let colours = trace
            .services
            .iter()
            .zip(PALETTE.iter().cycle())
            .map(|(s, c)| (s.as_str(), *c))
            .collect();
        Self {
            trace,
            out: String::new(),
            colours,
        }
    }

    fn colour(&self, service: &str) -> &'static str {
        self.colours.get(service).copied().unwrap_or(FAINT)
    }

    fn render(mut self) -> String {
        let trace = self.trace;
        let label_chars = trace
            .rows
            .iter()
            .map(|r| {
                r.depth.min(MAX_INDENT) as f64 * INDENT / (LABEL_SIZE * ADVANCE)
                    + r.label().chars().count() as f64
            })
            .fold(24.0, f64::max);
        let timeline_x = PAD + 14.0 + label_chars * LABEL_SIZE * ADVANCE + 20.0;
        let timeline_end = timeline_x + TIMELINE_WIDTH;
        let attribute_lines: Vec<Vec<Vec<&Attribute>>> = trace
            .rows
            .iter()
            .map(|r| wrap(r.shown_attributes()))
            .collect();
        let has_attributes = attribute_lines.iter().any(|l| !l.is_empty());
        let attributes_x = timeline_end + 28.0;
        let width = if has_attributes {
            attributes_x + ATTRIBUTE_CHARS as f64 * SMALL_SIZE * ADVANCE + PAD
        } else {
            timeline_end + 90.0
        };

        // Title, summary line, legend (wrapping when it is wider than the
        // picture).
        let title_y = PAD + 16.0;
        let summary_y = title_y + 22.0;
        let mut legend = Vec::new();
        let (mut x, mut y) = (PAD, summary_y + 24.0);
        for service in &trace.services {
            let item = 12.0 + 6.0 + short_service(service).chars().count() as f64 * 7.0 + 22.0;
            if x + item > width - PAD && x > PAD {
                x = PAD;
                y += 20.0;
            }
            legend.push((service.as_str(), x, y));
            x += item;
        }
        let axis_y = y + 34.0;
        let rows_y = axis_y + 10.0;
        let heights: Vec<f64> = attribute_lines
            .iter()
            .map(|l| ROW_HEIGHT + l.len().saturating_sub(1) as f64 * LINE_HEIGHT)
            .collect();
        let rows_end = rows_y + heights.iter().sum::<f64>();
        let height = rows_end + 44.0;

        let _ = write!(
            self.out,
            r##"<?xml version="1.0" encoding="UTF-8"?>
<svg xmlns="http://www.w3.org/2000/svg" width="{width:.0}" height="{height:.0}" viewBox="0 0 {width:.0} {height:.0}" font-family="{SANS}">
<rect width="100%" height="100%" fill="#ffffff"/>
"##
        );
        let title = match (&trace.title, trace.rows.first()) {
            (Some(title), _) => title.clone(),
            (None, Some(root)) => format!("Trace of {}", root.label()),
            (None, None) => "No spans received".to_owned(),
        };
        let _ = writeln!(
            self.out,
            r#"<text x="{PAD}" y="{title_y}" font-size="18" font-weight="bold" fill="{TEXT}">{}</text>"#,
            xml(&title)
        );
        let services = trace.services.len();
        let summary = format!(
            "{} span{} · {} service{} · {} · trace id {}",
            trace.rows.len(),
            if trace.rows.len() == 1 { "" } else { "s" },
            services,
            if services == 1 { "" } else { "s" },
            format_duration(trace.duration_ns),
            if trace.trace_id.is_empty() {
                "(none)"
            } else {
                &trace.trace_id
            },
        );
        let _ = writeln!(
            self.out,
            r#"<text x="{PAD}" y="{summary_y}" font-size="13" fill="{MUTED}">{}</text>"#,
            xml(&summary)
        );
        for (service, x, y) in legend {
            let _ = writeln!(
                self.out,
                r#"<rect x="{x:.1}" y="{:.1}" width="12" height="12" rx="3" fill="{}"/><text x="{:.1}" y="{y:.1}" font-size="12" fill="{TEXT}">{}</text>"#,
                y - 10.0,
                self.colour(service),
                x + 18.0,
                xml(short_service(service))
            );
        }

        // The time axis: a tick every 1, 2 or 5 × 10ⁿ ms, five to nine of them.
        let total = trace.duration_ns.max(1) as f64;
        let x_of = |ns: f64| timeline_x + (ns / total).clamp(0.0, 1.0) * TIMELINE_WIDTH;
        let step = tick_step(trace.duration_ns);
        let mut tick = 0.0;
        while tick <= trace.duration_ns as f64 + 0.5 {
            let x = x_of(tick);
            let _ = writeln!(
                self.out,
                r#"<line x1="{x:.1}" y1="{:.1}" x2="{x:.1}" y2="{rows_end:.1}" stroke="{GRID}" stroke-width="1"/><text x="{x:.1}" y="{:.1}" font-size="11" fill="{MUTED}" text-anchor="middle">{}</text>"#,
                axis_y - 4.0,
                axis_y - 10.0,
                xml(&format_tick(tick, step))
            );
            if step <= 0.0 {
                break;
            }
            tick += step;
        }

        let mut y = rows_y;
        for (i, (row, lines)) in trace.rows.iter().zip(&attribute_lines).enumerate() {
            let h = heights.get(i).copied().unwrap_or(ROW_HEIGHT);
            self.row(row, lines, i, y, h, width, timeline_x, x_of);
            y += h;
        }

        let _ = writeln!(
            self.out,
            r#"<text x="{PAD}" y="{:.1}" font-size="11" fill="{FAINT}">{}</text>"#,
            rows_end + 28.0,
            xml(
                "→ an outgoing call · times from the trace's first span · hover a row for all its key attributes"
            )
        );
        self.out.push_str("</svg>\n");
        self.out
    }

    #[expect(
        clippy::too_many_arguments,
        reason = "one row's geometry, computed once by the caller"
    )]
    fn row(
        &mut self,
        row: &Row,
        lines: &[Vec<&Attribute>],
        index: usize,
        y: f64,
        h: f64,
        width: f64,
        timeline_x: f64,
        x_of: impl Fn(f64) -> f64,
    ) {
        let colour = self.colour(&row.service);
        let _ = writeln!(self.out, "<g>");
        let _ = writeln!(self.out, "<title>{}</title>", xml(&tooltip(row)));
        let zebra = if index % 2 == 1 { "#f6f8fa" } else { "#ffffff" };
        let _ = writeln!(
            self.out,
            r#"<rect x="{:.1}" y="{y:.1}" width="{:.1}" height="{h:.1}" fill="{zebra}"/>"#,
            PAD / 2.0,
            width - PAD
        );
        let mid = y + ROW_HEIGHT / 2.0;
        let indent = PAD + row.depth.min(MAX_INDENT) as f64 * INDENT;
        let _ = writeln!(
            self.out,
            r#"<circle cx="{:.1}" cy="{mid:.1}" r="4" fill="{colour}"/><text x="{:.1}" y="{:.1}" font-family="{MONO}" font-size="{LABEL_SIZE}" fill="{}">{}</text>"#,
            indent + 4.0,
            indent + 14.0,
            mid + 4.0,
            if row.error { ERROR } else { TEXT },
            xml(&row.label())
        );

        // The bar, at least 2 px wide so that an instant is visible.
        let start = row.start_ns as f64;
        let x = x_of(start);
        let end = x_of(start + row.duration_ns as f64).max(x + 2.0);
        let stroke = if row.error {
            format!(r#" stroke="{ERROR}" stroke-width="2""#)
        } else {
            String::new()
        };
        let _ = writeln!(
            self.out,
            r#"<rect x="{x:.1}" y="{:.1}" width="{:.1}" height="{BAR_HEIGHT}" rx="3" fill="{colour}"{stroke}/>"#,
            mid - BAR_HEIGHT / 2.0,
            end - x
        );
        // The duration beside the bar, on the side where it fits.
        let text = format_duration(row.duration_ns);
        let text_width = text.chars().count() as f64 * SMALL_SIZE * ADVANCE;
        let (tx, anchor) = if end + 6.0 + text_width <= timeline_x + TIMELINE_WIDTH + 24.0 {
            (end + 6.0, "start")
        } else if x - 6.0 - text_width >= timeline_x {
            (x - 6.0, "end")
        } else {
            (end - 6.0, "end")
        };
        let fill = if anchor == "end" && tx > x {
            "#ffffff"
        } else {
            MUTED
        };
        let _ = writeln!(
            self.out,
            r#"<text x="{tx:.1}" y="{:.1}" font-size="{SMALL_SIZE}" fill="{fill}" text-anchor="{anchor}">{}</text>"#,
            mid + 4.0,
            xml(&text)
        );

        let attributes_x = timeline_x + TIMELINE_WIDTH + 28.0;
        for (n, line) in lines.iter().enumerate() {
            // `preserve`: the spaces between two attributes are content.
            let _ = write!(
                self.out,
                r#"<text x="{attributes_x:.1}" y="{:.1}" font-family="{MONO}" font-size="{SMALL_SIZE}" fill="{TEXT}" xml:space="preserve">"#,
                mid + 4.0 + n as f64 * LINE_HEIGHT
            );
            for (k, a) in line.iter().enumerate() {
                let _ = write!(
                    self.out,
                    r#"{}<tspan fill="{FAINT}">{}=</tspan>{}"#,
                    if k == 0 { "" } else { "  " },
                    xml(a.label),
                    xml(&a.value)
                );
            }
            self.out.push_str("</text>\n");
        }
        self.out.push_str("</g>\n");
    }
}

/// The attributes as lines of at most [`ATTRIBUTE_CHARS`] characters (a
/// longer single attribute gets a line of its own).
fn wrap<'a>(attributes: impl Iterator<Item = &'a Attribute>) -> Vec<Vec<&'a Attribute>> {
    let mut lines: Vec<Vec<&Attribute>> = Vec::new();
    let mut used = 0;
    for a in attributes {
        let len = a.label.chars().count() + 1 + a.value.chars().count();
        match lines.last_mut() {
            Some(line) if used + 2 + len <= ATTRIBUTE_CHARS => {
                line.push(a);
                used += 2 + len;
            }
            _ => {
                lines.push(vec![a]);
                used = len;
            }
        }
    }
    lines
}

fn tooltip(row: &Row) -> String {
    let mut text = format!(
        "{} · {}\nstarts at {} · takes {}",
        row.service,
        row.name,
        format_duration(row.start_ns),
        format_duration(row.duration_ns)
    );
    for a in &row.attributes {
        let _ = write!(text, "\n{}={}", a.label, a.value);
    }
    if row.error {
        text.push_str("\nstatus: ERROR");
    }
    if row.orphan {
        text.push_str("\nits parent span is not in this trace (e.g. the agent's own span)");
    }
    if row.before_parent {
        text.push_str("\nstarts before its parent: the two processes' clocks disagree");
    }
    text
}

/// Five to nine ticks: 1, 2 or 5 × 10ⁿ nanoseconds apart.
fn tick_step(total_ns: u64) -> f64 {
    let raw = total_ns.max(1) as f64 / 8.0;
    let magnitude = 10f64.powi(raw.log10().floor() as i32);
    [1.0, 2.0, 5.0, 10.0]
        .iter()
        .map(|m| m * magnitude)
        .find(|s| *s >= raw)
        .unwrap_or(10.0 * magnitude)
        .max(1.0)
}

/// A tick's label, with as many decimals as the step needs.
fn format_tick(ns: f64, step: f64) -> String {
    let ms = ns / 1e6;
    let step_ms = step / 1e6;
    let decimals = if step_ms >= 1.0 {
        0
    } else {
        ((-step_ms.log10().floor()) as usize).min(3)
    };
    format!("{ms:.decimals$} ms")
}

/// `text` for XML content or an attribute value: the five special
/// characters as entities, characters XML 1.0 forbids (even escaped) as
/// U+FFFD.
pub fn xml(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            c if xml_char(c) => out.push(c),
            _ => out.push('\u{fffd}'),
        }
    }
    out
}

/// A character XML 1.0 allows in a document.
fn xml_char(c: char) -> bool {
    matches!(c, '\t' | '\n' | '\r' | '\u{20}'..='\u{d7ff}' | '\u{e000}'..='\u{fffd}' | '\u{10000}'..)
}

/// Checks that `text` is a well-formed XML document of the kind
/// [`Trace::to_svg`] writes: an optional declaration, comments, elements
/// with quoted attributes (no duplicates), text and attribute values whose
/// `&` start a valid entity or character reference, nothing XML forbids,
/// one root. No XML parser is in the dependency tree; this is what the
/// tests check the pictures with. No DTD, CDATA or processing instruction
/// is accepted.
pub fn check_xml(text: &str) -> Result<(), String> {
    let mut rest = text;
    if let Some(after) = rest.strip_prefix("<?xml ") {
        let end = after.find("?>").ok_or("unterminated XML declaration")?;
        rest = &after[end + 2..];
    }
    let mut open: Vec<&str> = Vec::new();
    let mut seen_root = false;
    loop {
        let (content, next) = match rest.find('<') {
            Some(i) => rest.split_at(i),
            None => (rest, ""),
        };
        check_chars(content)?;
        if content.contains("]]>") {
            return Err("`]]>` in text".into());
        }
        if open.is_empty() && !content.trim().is_empty() {
            return Err(format!(
                "text outside the root element: `{}`",
                clip(content)
            ));
        }
        if next.is_empty() {
            break;
        }
        if let Some(after) = next.strip_prefix("<!--") {
            let end = after.find("-->").ok_or("unterminated comment")?;
            if after[..end].contains("--") || after[..end].ends_with('-') {
                return Err("`--` inside a comment".into());
            }
            check_raw_chars(&after[..end])?;
            rest = &after[end + 3..];
            continue;
        }
        if let Some(after) = next.strip_prefix("</") {
            let end = after.find('>').ok_or("unterminated end tag")?;
            let name = after[..end].trim_end();
            match open.pop() {
                Some(expected) if expected == name => {}
                Some(expected) => {
                    return Err(format!("`</{}>` closes `<{expected}>`", clip(name)));
                }
                None => return Err(format!("`</{}>` closes nothing", clip(name))),
            }
            rest = &after[end + 1..];
            continue;
        }
        if next.starts_with("<!") || next.starts_with("<?") {
            return Err("a DTD, CDATA section or processing instruction".into());
        }
        // A start tag.
        if open.is_empty() && seen_root {
            return Err("a second root element".into());
        }
        seen_root = true;
        let after = &next[1..];
        let name_len = name_length(after);
        if name_len == 0 {
            return Err(format!("`<` not starting a tag: `{}`", clip(next)));
        }
        let name = &after[..name_len];
        let mut tag = &after[name_len..];
        let mut attributes: Vec<&str> = Vec::new();
        loop {
            let trimmed = tag.trim_start_matches([' ', '\t', '\n', '\r']);
            let spaced = trimmed.len() != tag.len();
            tag = trimmed;
            if let Some(after) = tag.strip_prefix("/>") {
                rest = after;
                break;
            }
            if let Some(after) = tag.strip_prefix('>') {
                open.push(name);
                rest = after;
                break;
            }
            if !spaced {
                return Err(format!("no space before an attribute in `<{name}>`"));
            }
            let key_len = name_length(tag);
            if key_len == 0 {
                return Err(format!("a malformed attribute in `<{name}>`"));
            }
            let key = &tag[..key_len];
            if attributes.contains(&key) {
                return Err(format!("attribute `{key}` twice in `<{name}>`"));
            }
            attributes.push(key);
            let value = tag[key_len..]
                .trim_start()
                .strip_prefix('=')
                .ok_or_else(|| format!("attribute `{key}` without a value"))?
                .trim_start();
            let quote = value
                .chars()
                .next()
                .filter(|q| *q == '"' || *q == '\'')
                .ok_or_else(|| format!("attribute `{key}` not quoted"))?;
            let body = &value[1..];
            let end = body
                .find(quote)
                .ok_or_else(|| format!("attribute `{key}` not closed"))?;
            if body[..end].contains('<') {
                return Err(format!("`<` in the value of `{key}`"));
            }
            check_chars(&body[..end])?;
            tag = &body[end + 1..];
        }
    }
    if let Some(unclosed) = open.last() {
        return Err(format!("`<{unclosed}>` is never closed"));
    }
    if !seen_root {
        return Err("no root element".into());
    }
    Ok(())
}

/// The length in bytes of the XML name at the start of `text` (ASCII
/// names only, which is all an SVG needs).
fn name_length(text: &str) -> usize {
    let mut len = 0;
    for (i, c) in text.char_indices() {
        let ok = c.is_ascii_alphabetic()
            || c == '_'
            || c == ':'
            || (i > 0 && (c.is_ascii_digit() || c == '-' || c == '.'));
        if !ok {
            break;
        }
        len = i + c.len_utf8();
    }
    len
}

/// Text or an attribute value: only XML characters, and every `&` a
/// valid reference.
fn check_chars(text: &str) -> Result<(), String> {
    check_raw_chars(text)?;
    let mut rest = text;
    while let Some(i) = rest.find('&') {
        let after = &rest[i + 1..];
        let end = after
            .find(';')
            .ok_or_else(|| format!("a bare `&` in `{}`", clip(text)))?;
        let entity = &after[..end];
        let valid = match entity {
            "amp" | "lt" | "gt" | "quot" | "apos" => true,
            _ => {
                let code = if let Some(hex) = entity.strip_prefix("#x") {
                    (!hex.is_empty() && hex.bytes().all(|b| b.is_ascii_hexdigit()))
                        .then(|| u32::from_str_radix(hex, 16).ok())
                        .flatten()
                } else if let Some(dec) = entity.strip_prefix('#') {
                    (!dec.is_empty() && dec.bytes().all(|b| b.is_ascii_digit()))
                        .then(|| dec.parse::<u32>().ok())
                        .flatten()
                } else {
                    None
                };
                code.and_then(char::from_u32).is_some_and(xml_char)
            }
        };
        if !valid {
            return Err(format!("an invalid reference `&{}`", clip(entity)));
        }
        rest = &after[end + 1..];
    }
    Ok(())
}

fn check_raw_chars(text: &str) -> Result<(), String> {
    match text.chars().find(|c| !xml_char(*c)) {
        Some(c) => Err(format!(
            "character U+{:04X}, which XML forbids",
            u32::from(c)
        )),
        None => Ok(()),
    }
}

#[cfg(test)]
#[path = "waterfall_tests.rs"]
mod tests;
