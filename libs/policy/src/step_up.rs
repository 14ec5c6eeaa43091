//! Step-up policies: `forbid`s annotated `@step_up("ciba")` that an approval
//! by the human can lift, and the `@binding_message` shown on their phone.

use cedar_policy::{Effect, Policy};

/// Approval methods a `@step_up` annotation may name.
pub(crate) const METHODS: &[&str] = &["ciba"];

/// Longest binding message sent to a device, in characters.
pub(crate) const MAX_BINDING_MESSAGE_CHARS: usize = 100;

/// Placeholders a `@binding_message` template may use.
const PLACEHOLDERS: &[&str] = &[
    "principal.type",
    "principal.id",
    "action.id",
    "resource.type",
    "resource.id",
];

#[derive(Debug, Clone)]
pub(crate) struct StepUpPolicy {
    pub(crate) method: String,
    pub(crate) binding_message: Option<Template>,
}

/// A parsed `@binding_message` template.
#[derive(Debug, Clone)]
pub(crate) struct Template(Vec<Piece>);

#[derive(Debug, Clone)]
enum Piece {
    Text(String),
    Field(&'static str),
}

/// The values a template is filled from.
pub(crate) struct Fields<'a> {
    pub(crate) principal: (&'a str, &'a str),
    pub(crate) action: &'a str,
    pub(crate) resource: (&'a str, &'a str),
}

/// Reads a policy's step-up annotations. `Ok(None)` for an ordinary policy;
/// an error for a misuse (unknown method, step-up on a `permit`, a binding
/// message without step-up, an unknown placeholder).
pub(crate) fn parse_step_up(policy: &Policy) -> Result<Option<StepUpPolicy>, String> {
    let method = policy.annotation("step_up");
    let message = policy.annotation("binding_message");
    let Some(method) = method else {
        if message.is_some() {
            return Err("`@binding_message` needs `@step_up` on the same policy".into());
        }
        return Ok(None);
    };
    if policy.effect() != Effect::Forbid {
        return Err("`@step_up` is only meaningful on a `forbid` policy".into());
    }
    if !METHODS.contains(&method) {
        return Err(format!(
            "unknown step-up method `{method}`, expected one of: {}",
            METHODS.join(", ")
        ));
    }
    let binding_message = message.map(Template::parse).transpose()?;
    Ok(Some(StepUpPolicy {
        method: method.to_owned(),
        binding_message,
    }))
}

/// Longest `@signal` name.
const MAX_SIGNAL_BYTES: usize = 64;

/// Reads a policy's `@signal("name")`: a name of 1 to 64 lowercase ASCII
/// letters, digits and `_`, starting with a letter (it becomes a counter's
/// name and a log field, never free text).
pub(crate) fn parse_signal(policy: &Policy) -> Result<Option<String>, String> {
    let Some(name) = policy.annotation("signal") else {
        return Ok(None);
    };
    let valid = !name.is_empty()
        && name.len() <= MAX_SIGNAL_BYTES
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    if valid {
        Ok(Some(name.to_owned()))
    } else {
        Err(format!(
            "`@signal` must be 1 to {MAX_SIGNAL_BYTES} characters of a-z, 0-9 and `_`, starting with a letter"
        ))
    }
}

impl Template {
    fn parse(text: &str) -> Result<Self, String> {
        let mut pieces = Vec::new();
        let mut rest = text;
        while let Some(open) = rest.find('{') {
            if open > 0 {
                pieces.push(Piece::Text(rest[..open].to_owned()));
            }
            let after = &rest[open + 1..];
            let close = after
                .find('}')
                .ok_or_else(|| format!("unclosed `{{` in binding message `{text}`"))?;
            let name = after[..close].trim();
            let field = PLACEHOLDERS.iter().find(|p| **p == name).ok_or_else(|| {
                format!(
                    "unknown placeholder `{{{name}}}` in binding message, expected one of: {}",
                    PLACEHOLDERS.join(", ")
                )
            })?;
            pieces.push(Piece::Field(field));
            rest = &after[close + 1..];
        }
        if !rest.is_empty() {
            pieces.push(Piece::Text(rest.to_owned()));
        }
        Ok(Self(pieces))
    }

    /// Fills the template. Values come from the request (an agent chooses the
    /// resource id), so control characters are dropped and the result is cut
    /// to a length a phone can show.
    pub(crate) fn render(&self, fields: &Fields<'_>) -> String {
        let mut out = String::new();
        for piece in &self.0 {
            match piece {
                Piece::Text(text) => out.push_str(text),
                Piece::Field(name) => out.push_str(match *name {
                    "principal.type" => fields.principal.0,
                    "principal.id" => fields.principal.1,
                    "action.id" => fields.action,
                    "resource.type" => fields.resource.0,
                    _ => fields.resource.1,
                }),
            }
        }
        sanitize_binding_message(&out)
    }
}

/// Between the parts of a prompt for several step-up policies.
const PART_SEPARATOR: &str = " + ";

/// The one prompt for an approval that lifts every policy in `policies`
/// (sorted by id): each policy's rendered `@binding_message`, or its id
/// when it has none, each text once. The user approves all of them with one
/// answer, so all of them are named; when they do not fit in 100
/// characters, the longest parts are shortened alike rather than the last
/// ones dropped. Empty when no policy has a `@binding_message`: the caller
/// then describes the request itself.
pub(crate) fn prompt(policies: &[(&str, &StepUpPolicy)], fields: &Fields<'_>) -> String {
    if policies.iter().all(|(_, p)| p.binding_message.is_none()) {
        return String::new();
    }
    let mut parts: Vec<String> = Vec::with_capacity(policies.len());
    for (id, policy) in policies {
        let part = match &policy.binding_message {
            Some(template) => template.render(fields),
            None => sanitize_binding_message(id),
        };
        if !part.is_empty() && !parts.contains(&part) {
            parts.push(part);
        }
    }
    let separators = PART_SEPARATOR.len() * parts.len().saturating_sub(1);
    let cap = fair_share(&parts, MAX_BINDING_MESSAGE_CHARS.saturating_sub(separators));
    let joined = parts
        .iter()
        .map(|part| shorten(part, cap))
        .collect::<Vec<_>>()
        .join(PART_SEPARATOR);
    // More parts than fit even at one character each: cut at the end.
    sanitize_binding_message(&joined)
}

/// The largest length every part may keep so that all of them fit in
/// `budget` characters, parts shorter than that keeping all of theirs (at
/// least 1).
fn fair_share(parts: &[String], budget: usize) -> usize {
    let mut lengths: Vec<usize> = parts.iter().map(|p| p.chars().count()).collect();
    lengths.sort_unstable();
    let mut left = budget;
    for (index, length) in lengths.iter().enumerate() {
        let share = left / (lengths.len() - index);
        if *length > share {
            return share.max(1);
        }
        left -= length;
    }
    usize::MAX
}

/// `text` cut to `max` characters, the last one `…` when cut.
fn shorten(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        return text.to_owned();
    }
    let mut cut: String = text.chars().take(max.saturating_sub(1)).collect();
    cut.push('…');
    cut
}

/// Unicode format characters that can reorder or hide text on a phone
/// screen (bidi overrides and isolates, zero-width characters, soft hyphen).
fn is_invisible_format(c: char) -> bool {
    matches!(
        c,
        '\u{00AD}' | '\u{061C}' | '\u{180E}' | '\u{200B}'..='\u{200F}' | '\u{202A}'..='\u{202E}'
            | '\u{2060}'..='\u{2064}' | '\u{2066}'..='\u{206F}' | '\u{FEFF}'
    )
}

/// The one sanitizer for text shown on a user's device: control
/// characters become spaces, bidi controls and invisible format characters
/// are dropped, whitespace is collapsed, and the text is cut to 100
/// characters with `…`. The PDP applies it to rendered `@binding_message`
/// templates; the CIBA orchestrator applies it again to what it sends.
pub fn sanitize_binding_message(text: &str) -> String {
    let clean: String = text
        .chars()
        .filter(|c| !is_invisible_format(*c))
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    let collapsed = clean.split_whitespace().collect::<Vec<_>>().join(" ");
    if collapsed.chars().count() <= MAX_BINDING_MESSAGE_CHARS {
        return collapsed;
    }
    let mut cut: String = collapsed
        .chars()
        .take(MAX_BINDING_MESSAGE_CHARS - 1)
        .collect();
    cut.push('…');
    cut
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields<'a>(resource_id: &'a str) -> Fields<'a> {
        Fields {
            principal: ("Agent", "hr-assistant"),
            action: "offboard",
            resource: ("Employee", resource_id),
        }
    }

    #[test]
    fn renders_placeholders() {
        let t = Template::parse("Offboard employee {resource.id} for {principal.id}?").unwrap();
        assert_eq!(
            t.render(&fields("1042")),
            "Offboard employee 1042 for hr-assistant?"
        );
    }

    #[test]
    fn rejects_unknown_placeholder_and_unclosed_brace() {
        assert!(
            Template::parse("Hi {context.secret}")
                .unwrap_err()
                .contains("unknown placeholder")
        );
        assert!(
            Template::parse("Hi {resource.id")
                .unwrap_err()
                .contains("unclosed")
        );
    }

    #[test]
    fn strips_control_characters_and_truncates() {
        let t = Template::parse("Offboard {resource.id}?").unwrap();
        assert_eq!(t.render(&fields("10\n42\u{1b}[2J")), "Offboard 10 42 [2J?");
        // A right-to-left override cannot turn "Offboard 1042" into text
        // that reads differently on the phone.
        assert_eq!(
            t.render(&fields("1042\u{202E}evorppa\u{200B}")),
            "Offboard 1042evorppa?"
        );
        let long = "x".repeat(500);
        let rendered = t.render(&fields(&long));
        assert_eq!(rendered.chars().count(), MAX_BINDING_MESSAGE_CHARS);
        assert!(rendered.ends_with('…'));
    }
}
