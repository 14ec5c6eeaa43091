//! The `binding_message` shown on the user's device: a sentence a human can
//! check, plus a short random confirmation code that the agent's own UI
//! shows too, so the user can match the prompt on the phone to the request
//! on the screen (number matching, against push fatigue).

use aws_lc_rs::rand::{SecureRandom as _, SystemRandom};
// The PDP's own sanitizer: one function, so the two services cannot drift.
use tether_policy::sanitize_binding_message as sanitize;

use super::error::CibaError;

/// Where the sentence comes from.
#[derive(Debug, Clone, Copy)]
pub enum Sentence<'a> {
    /// The policy's `@binding_message` as the PDP rendered it (e.g.
    /// "Offboard employee 1042?"). Sanitized again here: it reaches this
    /// service through the agent facade.
    Policy(&'a str),
    /// Built from the request when the policy has no `@binding_message`:
    /// the agent, and the action and resource in Cedar uid form
    /// (`Hr::Action::"offboard"`, `Hr::Employee::"1042"`).
    Describe {
        agent: &'a str,
        action: &'a str,
        resource: &'a str,
    },
}

/// Six decimal digits from the operating system's random generator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfirmationCode(String);

impl ConfirmationCode {
    pub fn generate() -> Result<Self, CibaError> {
        // 4_294_000_000 is the largest multiple of 10^6 below 2^32: drawing
        // again above it keeps every code equally likely.
        const LIMIT: u32 = 4_294_000_000;
        let rng = SystemRandom::new();
        loop {
            let mut bytes = [0u8; 4];
            rng.fill(&mut bytes)
                .map_err(|_| CibaError::Internal("the system random generator failed".into()))?;
            let n = u32::from_le_bytes(bytes);
            if n < LIMIT {
                return Ok(Self(format!("{:06}", n % 1_000_000)));
            }
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for ConfirmationCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// The message sent as CIBA `binding_message`, with its code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BindingMessage {
    text: String,
    code: ConfirmationCode,
}

impl BindingMessage {
    /// Sanitizes the sentence as the PDP does and appends a fresh code,
    /// shortening the sentence (never dropping it, never the code) so the
    /// whole message is at most `max_chars` characters.
    pub fn build(sentence: Sentence<'_>, max_chars: usize) -> Result<Self, CibaError> {
        let sentence = match sentence {
            Sentence::Policy(text) => sanitize(text),
            Sentence::Describe {
                agent,
                action,
                resource,
            } => sanitize(&describe(agent, action, resource)),
        };
        if sentence.is_empty() {
            return Err(CibaError::InvalidRequest(
                "the binding message is empty once control and invisible characters are removed"
                    .into(),
            ));
        }
        let code = ConfirmationCode::generate()?;
        let text = with_code(&sentence, &code, max_chars)?;
        Ok(Self { text, code })
    }

    /// The whole message, as sent to the IdP and shown on the device.
    pub fn text(&self) -> &str {
        &self.text
    }

    /// The code the agent's UI shows next to the request.
    pub fn code(&self) -> &ConfirmationCode {
        &self.code
    }
}

/// `"<sentence> Code: <code>"`, the sentence cut with `…` when needed.
fn with_code(
    sentence: &str,
    code: &ConfirmationCode,
    max_chars: usize,
) -> Result<String, CibaError> {
    let suffix = format!(" Code: {code}");
    let room = max_chars.saturating_sub(suffix.chars().count());
    if room < 2 {
        return Err(CibaError::InvalidRequest(format!(
            "a binding message of at most {max_chars} characters has no room for a sentence"
        )));
    }
    let mut out: String = if sentence.chars().count() <= room {
        sentence.to_owned()
    } else {
        let mut cut: String = sentence.chars().take(room - 1).collect();
        cut.truncate(cut.trim_end().len());
        cut.push('…');
        cut
    };
    out.push_str(&suffix);
    Ok(out)
}

/// "Allow hr-assistant to offboard Employee 1042?"
fn describe(agent: &str, action: &str, resource: &str) -> String {
    let (_, action_id) = cedar_uid(action);
    let (resource_type, resource_id) = cedar_uid(resource);
    match resource_type {
        Some(ty) => format!("Allow {agent} to {action_id} {ty} {resource_id}?"),
        None => format!("Allow {agent} to {action_id} {resource_id}?"),
    }
}

/// `Ns::Type::"id"` → (`Type`, `id`); anything else is taken as it is.
fn cedar_uid(text: &str) -> (Option<&str>, String) {
    if let Some(start) = text.find("::\"")
        && text.ends_with('"')
        && text.len() >= start + 4
    {
        let ty = text[..start].rsplit("::").next().filter(|t| !t.is_empty());
        let id = text[start + 3..text.len() - 1]
            .replace("\\\"", "\"")
            .replace("\\\\", "\\");
        return (ty, id);
    }
    (None, text.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn code(text: &str) -> ConfirmationCode {
        ConfirmationCode(text.into())
    }

    #[test]
    fn the_pdp_sanitizer_is_reached_and_behaves_as_in_the_pdp() {
        // The cases of libs/policy's own step_up tests.
        assert_eq!(sanitize("Offboard 10\n42\u{1b}[2J?"), "Offboard 10 42 [2J?");
        assert_eq!(
            sanitize("Offboard 1042\u{202E}evorppa\u{200B}?"),
            "Offboard 1042evorppa?"
        );
        let long = sanitize(&"x".repeat(500));
        assert_eq!(long.chars().count(), 100);
        assert!(long.ends_with('…'));
        assert_eq!(sanitize("  a \t b  "), "a b");
        assert_eq!(sanitize("\u{200B}\u{2066}"), "");
        // Text that looks like Cedar syntax is only text.
        assert_eq!(sanitize(r#"x" } permit("#), r#"x" } permit("#);
    }

    #[test]
    fn the_code_is_appended_and_always_fits() {
        let c = code("012345");
        assert_eq!(
            with_code("Offboard employee 1042?", &c, 100).unwrap(),
            "Offboard employee 1042? Code: 012345"
        );
        let long = "word ".repeat(40);
        let out = with_code(long.trim(), &c, 64).unwrap();
        assert!(out.chars().count() <= 64, "{out}");
        assert!(!out.contains(" …"), "no space before the ellipsis: {out}");
        assert!(out.ends_with("… Code: 012345"), "{out}");
        assert!(out.starts_with("word word"));
        let exact = "y".repeat(100 - 13);
        assert_eq!(
            with_code(&exact, &c, 100).unwrap(),
            format!("{exact} Code: 012345")
        );
        let over = "y".repeat(100 - 12);
        let out = with_code(&over, &c, 100).unwrap();
        assert_eq!(out.chars().count(), 100);
        assert!(out.contains("…"));
        assert!(with_code("x", &c, 14).is_err(), "no room for a sentence");
    }

    #[test]
    fn build_sanitizes_shortens_and_returns_the_code() {
        let m = BindingMessage::build(Sentence::Policy("Offboard\u{202E} employee\n1042?"), 100)
            .unwrap();
        assert_eq!(
            m.text(),
            format!("Offboard employee 1042? Code: {}", m.code())
        );
        assert_eq!(m.code().as_str().len(), 6);
        assert!(m.code().as_str().bytes().all(|b| b.is_ascii_digit()));
        let m = BindingMessage::build(Sentence::Policy(&"é".repeat(300)), 40).unwrap();
        assert_eq!(m.text().chars().count(), 40);
        assert!(m.text().ends_with(&format!("… Code: {}", m.code())));
        let empty = BindingMessage::build(Sentence::Policy("\u{200B}\n"), 100);
        assert!(matches!(empty, Err(CibaError::InvalidRequest(_))));
    }

    #[test]
    fn described_from_agent_action_and_resource() {
        let m = BindingMessage::build(
            Sentence::Describe {
                agent: "hr-assistant",
                action: r#"Hr::Action::"offboard""#,
                resource: r#"Hr::Employee::"10\"42""#,
            },
            100,
        )
        .unwrap();
        assert_eq!(
            m.text(),
            format!(
                "Allow hr-assistant to offboard Employee 10\"42? Code: {}",
                m.code()
            )
        );
        assert_eq!(
            describe("bot\u{202E}", "read", "doc-7"),
            "Allow bot\u{202E} to read doc-7?",
            "sanitized by build, not here"
        );
    }

    #[test]
    fn codes_are_six_digits_and_vary() {
        let codes: std::collections::HashSet<String> = (0..50)
            .map(|_| ConfirmationCode::generate().unwrap().0)
            .collect();
        assert!(codes.len() > 40);
        assert!(codes.iter().all(|c| c.len() == 6));
    }
}
