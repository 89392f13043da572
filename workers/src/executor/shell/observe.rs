//! Reading output lines: progress by regex or JSON field, extracted output
//! fields, and the tail of stderr for the error message.

use std::collections::{BTreeMap, VecDeque};

use regex::Regex;
use runlog_events::TaskError;
use runlog_events::event::{LogStream, Progress};
use serde_json::Value;

use super::input::{Extract, ProgressPattern, invalid};
use crate::handler::Context;

/// Stderr lines quoted in the error of a failed program.
const STDERR_TAIL_LINES: usize = 3;
/// Longest stderr line quoted in an error.
const STDERR_TAIL_LINE_CHARS: usize = 300;
/// Output fields the executor writes; extractors may not use these names.
const RESERVED_FIELDS: [&str; 5] = [
    "exit_code",
    "stdout",
    "stderr",
    "stdout_truncated_bytes",
    "stderr_truncated_bytes",
];

/// A field of a JSON line: a JSON pointer.
#[derive(Debug, Clone)]
struct Field(String);

impl Field {
    /// `/a/b` is a pointer; anything else names a top-level field.
    fn new(spec: &str, what: &str) -> Result<Self, TaskError> {
        if spec.is_empty() {
            return Err(invalid(format!(
                "{what} must name a field (`percent_done`) or be a JSON pointer (`/stats/done`)"
            )));
        }
        if spec.starts_with('/') {
            Ok(Field(spec.to_owned()))
        } else {
            Ok(Field(format!(
                "/{}",
                spec.replace('~', "~0").replace('/', "~1")
            )))
        }
    }

    fn get<'v>(&self, json: &'v Value) -> Option<&'v Value> {
        json.pointer(&self.0)
    }
}

/// Compiled progress pattern.
#[derive(Debug, Clone)]
enum ProgressParser {
    Regex(Regex),
    Json {
        percent: Field,
        scale: f64,
        message: Option<Field>,
        counters: Vec<(String, Field)>,
    },
}

impl ProgressParser {
    fn new(pattern: &ProgressPattern) -> Result<Self, TaskError> {
        match pattern {
            ProgressPattern::Regex(source) => {
                let regex = compile(source, "`progress.regex`")?;
                if !regex.capture_names().any(|n| n == Some("percent")) {
                    return Err(invalid(
                        "`progress.regex` needs a named group `percent`, like `(?P<percent>[0-9.]+)%`",
                    ));
                }
                Ok(ProgressParser::Regex(regex))
            }
            ProgressPattern::Json(json) => {
                if !json.scale.is_finite() || json.scale <= 0.0 {
                    return Err(invalid("`progress.json.scale` must be a positive number"));
                }
                Ok(ProgressParser::Json {
                    percent: Field::new(&json.percent_field, "`progress.json.percent_field`")?,
                    scale: json.scale,
                    message: json
                        .message_field
                        .as_deref()
                        .map(|f| Field::new(f, "`progress.json.message_field`"))
                        .transpose()?,
                    counters: json
                        .counters
                        .iter()
                        .map(|(name, f)| {
                            Ok((
                                name.clone(),
                                Field::new(f, &format!("`progress.json.counters.{name}`"))?,
                            ))
                        })
                        .collect::<Result<_, TaskError>>()?,
                })
            }
        }
    }

    fn parse(&self, line: &str, json: Option<&Value>) -> Option<Progress> {
        match self {
            ProgressParser::Regex(regex) => {
                let captures = regex.captures(line)?;
                let percent: f32 = captures.name("percent")?.as_str().trim().parse().ok()?;
                let counters = regex
                    .capture_names()
                    .flatten()
                    .filter(|n| !matches!(*n, "percent" | "message"))
                    .filter_map(|n| Some((n.to_owned(), captures.name(n)?.as_str().parse().ok()?)))
                    .collect();
                Some(Progress {
                    percent: Some(clamp_percent(percent)?),
                    message: captures.name("message").map(|m| m.as_str().to_owned()),
                    counters,
                })
            }
            ProgressParser::Json {
                percent,
                scale,
                message,
                counters,
            } => {
                let json = json?;
                let percent = percent.get(json)?.as_f64()? * scale;
                let message = message.as_ref().and_then(|f| f.get(json)).map(|m| match m {
                    Value::String(s) => s.clone(),
                    other => other.to_string(),
                });
                let counters = counters
                    .iter()
                    .filter_map(|(name, f)| Some((name.clone(), f.get(json)?.as_u64()?)))
                    .collect();
                Some(Progress {
                    percent: Some(clamp_percent(percent as f32)?),
                    message,
                    counters,
                })
            }
        }
    }
}

fn clamp_percent(percent: f32) -> Option<f32> {
    percent.is_finite().then(|| percent.clamp(0.0, 100.0))
}

fn compile(source: &str, what: &str) -> Result<Regex, TaskError> {
    Regex::new(source).map_err(|e| invalid(format!("{what} is not a valid regex: {e}")))
}

/// Compiled extractor.
#[derive(Debug, Clone)]
enum Extractor {
    Regex(Regex),
    Json(Field),
}

impl Extractor {
    fn extract(&self, line: &str, json: Option<&Value>) -> Option<Value> {
        match self {
            Extractor::Regex(regex) => {
                let captures = regex.captures(line)?;
                let value = captures
                    .name("value")
                    .or_else(|| captures.get(1))
                    .or_else(|| captures.get(0))?;
                Some(Value::String(value.as_str().to_owned()))
            }
            Extractor::Json(field) => field.get(json?).cloned(),
        }
    }
}

/// Reads progress and fields from output lines, and keeps the last lines
/// of stderr for the error message.
#[derive(Debug, Clone)]
pub(in crate::executor) struct Observer {
    progress: Option<ProgressParser>,
    extractors: Vec<(String, Extractor)>,
    /// The fields extracted so far, by name.
    pub(in crate::executor) extracted: serde_json::Map<String, Value>,
    reads_json: bool,
    /// The last lines of stderr, for the error of a failed program.
    pub(in crate::executor) stderr_tail: VecDeque<String>,
}

impl Observer {
    pub(in crate::executor) fn new(
        progress: Option<&ProgressPattern>,
        extract: &BTreeMap<String, Extract>,
    ) -> Result<Self, TaskError> {
        let progress = progress.map(ProgressParser::new).transpose()?;
        let extractors = extract
            .iter()
            .map(|(name, how)| {
                if RESERVED_FIELDS.contains(&name.as_str()) {
                    return Err(invalid(format!(
                        "`extract.{name}` would overwrite an output field of the executor: \
                         choose another name"
                    )));
                }
                let extractor = match how {
                    Extract::Regex(source) => {
                        Extractor::Regex(compile(source, &format!("`extract.{name}`"))?)
                    }
                    Extract::Json(field) => {
                        Extractor::Json(Field::new(field, &format!("`extract.{name}.json`"))?)
                    }
                };
                Ok((name.clone(), extractor))
            })
            .collect::<Result<Vec<_>, TaskError>>()?;
        let reads_json = matches!(progress, Some(ProgressParser::Json { .. }))
            || extractors
                .iter()
                .any(|(_, e)| matches!(e, Extractor::Json(_)));
        Ok(Observer {
            progress,
            extractors,
            extracted: serde_json::Map::new(),
            reads_json,
            stderr_tail: VecDeque::new(),
        })
    }

    /// Logs one line and reads it.
    pub(in crate::executor) fn line(&mut self, ctx: &Context, stream: LogStream, line: String) {
        if stream == LogStream::Stderr && !line.trim().is_empty() {
            if self.stderr_tail.len() == STDERR_TAIL_LINES {
                self.stderr_tail.pop_front();
            }
            self.stderr_tail
                .push_back(line.chars().take(STDERR_TAIL_LINE_CHARS).collect());
        }
        let json = if self.reads_json && line.trim_start().starts_with('{') {
            serde_json::from_str::<Value>(&line).ok()
        } else {
            None
        };
        if let Some(progress) = self
            .progress
            .as_ref()
            .and_then(|p| p.parse(&line, json.as_ref()))
        {
            ctx.report(progress);
        }
        for (name, extractor) in &self.extractors {
            if let Some(value) = extractor.extract(&line, json.as_ref()) {
                self.extracted.insert(name.clone(), value);
            }
        }
        ctx.log(stream, line);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::executor::shell::JsonProgress;
    use serde_json::json;

    #[test]
    fn regex_progress_reads_percent_message_and_counters() {
        let parser = ProgressParser::new(&ProgressPattern::Regex(
            r"(?P<percent>[0-9.]+)% (?P<files>\d+) files (?P<message>.*)".into(),
        ))
        .unwrap();
        let progress = parser.parse("42.5% 7 files copying a.txt", None).unwrap();
        assert_eq!(progress.percent, Some(42.5));
        assert_eq!(progress.message.as_deref(), Some("copying a.txt"));
        assert_eq!(progress.counters["files"], 7);
        assert!(parser.parse("no progress here", None).is_none());
        let over = parser.parse("250% 1 files x", None).unwrap();
        assert_eq!(over.percent, Some(100.0));
    }

    #[test]
    fn json_progress_scales_and_reads_fields() {
        let parser = ProgressParser::new(&ProgressPattern::Json(JsonProgress {
            percent_field: "percent_done".into(),
            scale: 100.0,
            message_field: Some("message_type".into()),
            counters: [("files".to_owned(), "/files_done".to_owned())].into(),
        }))
        .unwrap();
        let line = json!({"message_type": "status", "percent_done": 0.25, "files_done": 3});
        let progress = parser.parse("", Some(&line)).unwrap();
        assert_eq!(progress.percent, Some(25.0));
        assert_eq!(progress.message.as_deref(), Some("status"));
        assert_eq!(progress.counters["files"], 3);
        assert!(
            parser
                .parse("", Some(&json!({"message_type": "summary"})))
                .is_none()
        );
    }
}
