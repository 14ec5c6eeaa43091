//! The human-readable log format, safe against forged lines.
//!
//! Log lines echo what callers sent: token types, issuers, client ids,
//! error text built from them. tracing-subscriber's default text format
//! writes `%`-formatted fields and messages as they are, so a value holding
//! `\n` followed by a made-up line shows up as a second log line that
//! Tether never wrote, and an ESC sequence can rewrite a terminal.
//! [`EscapingFields`] formats every field value and message through
//! [`escape_control`] first: CR, LF, every other control character, and
//! the Unicode line, paragraph and bidi-override characters that log
//! viewers treat as breaks or reorderings, become visible escapes (`\n`,
//! `\u{1b}`). One event is then one line, whatever its values hold.
//! (The JSON format escapes control characters itself.)

use std::fmt::{self, Write as _};

use tracing::field::{Field, Visit};
use tracing_subscriber::field::{RecordFields, VisitFmt, VisitOutput};
use tracing_subscriber::fmt::FormatFields;
use tracing_subscriber::fmt::format::{DefaultVisitor, Writer};

/// Whether `c` must not appear raw in a text log line.
fn needs_escape(c: char) -> bool {
    c.is_control()
        // LINE SEPARATOR, PARAGRAPH SEPARATOR: line breaks to many viewers.
        || matches!(c, '\u{2028}' | '\u{2029}')
        // Bidi embeddings, overrides and isolates: reorder what is shown.
        || matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

/// Writes `text` to `out` with every character [`needs_escape`] names
/// replaced by its Rust escape (`\n`, `\r`, `\u{1b}`, `\u{2028}`).
pub fn escape_control(out: &mut impl fmt::Write, text: &str) -> fmt::Result {
    let mut rest = text;
    while let Some(at) = rest.find(needs_escape) {
        out.write_str(&rest[..at])?;
        let c = rest[at..].chars().next().unwrap_or_default();
        for e in c.escape_default() {
            out.write_char(e)?;
        }
        rest = &rest[at + c.len_utf8()..];
    }
    out.write_str(rest)
}

/// A `fmt::Write` that escapes what passes through it.
struct EscapingWriter<'a, 'b>(&'a mut fmt::Formatter<'b>);

impl fmt::Write for EscapingWriter<'_, '_> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        escape_control(self.0, s)
    }
}

/// A value whose `Debug` output is the inner value's, escaped.
struct Escaped<'a>(&'a dyn fmt::Debug);

impl fmt::Debug for Escaped<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(EscapingWriter(f), "{:?}", self.0)
    }
}

/// tracing-subscriber's default field formatting (`name=value`, styled
/// names on a terminal) with every value and message escaped.
#[derive(Debug, Clone, Copy, Default)]
pub struct EscapingFields;

impl<'writer> FormatFields<'writer> for EscapingFields {
    fn format_fields<R: RecordFields>(&self, writer: Writer<'writer>, fields: R) -> fmt::Result {
        let mut visitor = EscapingVisitor(DefaultVisitor::new(writer, true));
        fields.record(&mut visitor);
        visitor.0.finish()
    }
}

/// Hands every value to the default visitor wrapped in [`Escaped`]. The
/// default visitor's own `record_str` and `record_error` call its
/// `record_debug` directly, so both are re-implemented here to keep their
/// values inside the wrapper.
struct EscapingVisitor<'a>(DefaultVisitor<'a>);

impl Visit for EscapingVisitor<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.record_debug(field, &format_args!("{value}"));
        } else {
            self.record_debug(field, &value);
        }
    }

    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        let mut text = value.to_string();
        let mut source = value.source();
        while let Some(cause) = source {
            // Cannot fail: writing to a String.
            let _ = write!(text, ": {cause}");
            source = cause.source();
        }
        self.record_debug(field, &format_args!("{text}"));
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.0.record_debug(field, &Escaped(value));
    }
}

impl VisitOutput<fmt::Result> for EscapingVisitor<'_> {
    fn finish(self) -> fmt::Result {
        self.0.finish()
    }
}

impl VisitFmt for EscapingVisitor<'_> {
    fn writer(&mut self) -> &mut dyn fmt::Write {
        self.0.writer()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex, PoisonError};

    use tracing_subscriber::layer::SubscriberExt as _;

    use super::*;

    fn escaped(text: &str) -> String {
        let mut out = String::new();
        escape_control(&mut out, text).unwrap();
        out
    }

    #[test]
    fn control_characters_become_visible_escapes() {
        assert_eq!(escaped("plain text, üñí"), "plain text, üñí");
        assert_eq!(escaped("a\nb\rc\x1b[2Jd"), r"a\nb\rc\u{1b}[2Jd");
        assert_eq!(escaped("\t\0\x7f\u{85}"), r"\t\u{0}\u{7f}\u{85}");
        assert_eq!(escaped("x\u{2028}y\u{202e}z"), r"x\u{2028}y\u{202e}z");
        assert_eq!(escaped(""), "");
    }

    #[derive(Clone, Default)]
    struct Capture(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Capture {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .extend_from_slice(buf);
            Ok(buf.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[derive(Debug)]
    struct Outer(std::io::Error);

    impl fmt::Display for Outer {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("outer\nINFO forged: outer")
        }
    }

    impl std::error::Error for Outer {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            Some(&self.0)
        }
    }

    /// What the text format prints for one event carrying hostile values
    /// in a message, a `%` field, a `?` field, a string field, an error
    /// with a hostile source, and a span field.
    fn logged(ansi: bool) -> String {
        let capture = Capture::default();
        let writer = capture.clone();
        let subscriber = tracing_subscriber::registry()
            .with(crate::telemetry::text_layer(move || writer.clone(), ansi));
        tracing::subscriber::with_default(subscriber, || {
            let hostile = "x\n2026-01-01T00:00:00Z  INFO forged: admin logged in\r\x1b[2J";
            let span = tracing::info_span!("request", client = %hostile);
            let _entered = span.enter();
            let error = Outer(std::io::Error::other("inner\nforged"));
            tracing::info!(
                token_type = %hostile,
                issuer = ?hostile,
                plain = hostile,
                error = &error as &(dyn std::error::Error + 'static),
                "refused: {hostile}"
            );
        });
        let bytes = capture
            .0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        String::from_utf8(bytes).unwrap()
    }

    #[test]
    fn one_event_is_one_line_whatever_its_values_hold() {
        let text = logged(false);
        assert_eq!(text.matches('\n').count(), 1, "{text}");
        assert!(text.ends_with('\n'), "the line still ends: {text}");
        assert!(!text.contains('\r') && !text.contains('\x1b'), "{text}");
        assert!(
            !text
                .lines()
                .any(|l| l.contains("forged") && !l.contains("refused"))
        );
        // Every value is there, escaped, not dropped.
        assert_eq!(text.matches(r"\nINFO forged").count(), 1, "{text}");
        assert_eq!(text.matches(r"\n2026-01-01T00:00:00Z").count(), 5, "{text}");
        assert!(text.contains(r"admin logged in\r\u{1b}[2J"), "{text}");
        assert!(
            text.contains(r"inner\nforged"),
            "the error's source: {text}"
        );
        assert!(
            text.contains("request{client=x\\n2026"),
            "span field: {text}"
        );
    }

    #[test]
    fn terminal_styling_is_kept_and_hostile_escapes_are_not() {
        let text = logged(true);
        assert_eq!(text.matches('\n').count(), 1, "{text}");
        assert!(!text.contains('\r'), "{text}");
        // The formatter's own styling (ESC[…m) remains; the value's ESC[2J
        // is shown escaped.
        assert!(text.contains("\x1b["), "{text}");
        assert!(!text.contains("\x1b[2J"), "{text}");
        assert!(text.contains(r"\u{1b}[2J"), "{text}");
    }
}
