//! jq expressions of workflow definitions, through the `jaq` crates (core,
//! standard library, JSON values): compiled once, run over a JSON context.
//!
//! A template is any JSON value. A string that is exactly `${{ expr }}` is
//! replaced by the expression's value (of any type); `${{ expr }}` inside a
//! longer string is replaced by the value's text (a string as it is, other
//! values as JSON).

use jaq_core::load::{Arena, File, Loader};
use jaq_core::{Compiler, Ctx, Vars, data, unwrap_valr};
use jaq_json::Val;
use serde_json::Value;

use crate::spec::FieldError;

const OPEN: &str = "${{";
const CLOSE: &str = "}}";

/// A compiled jq expression.
pub struct Expr {
    code: String,
    filter: jaq_core::Filter<data::JustLut<Val>>,
}

impl std::fmt::Debug for Expr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Expr").field(&self.code).finish()
    }
}

impl Expr {
    /// Compiles `code`; the error says what the parser or compiler found.
    pub fn compile(code: &str) -> Result<Expr, String> {
        let defs = jaq_core::defs()
            .chain(jaq_std::defs())
            .chain(jaq_json::defs());
        let funs = jaq_core::funs()
            .chain(jaq_std::funs())
            .chain(jaq_json::funs());
        let loader = Loader::new(defs);
        let arena = Arena::default();
        let modules = loader
            .load(&arena, File { code, path: () })
            .map_err(|errors| {
                let reasons: Vec<String> = errors
                    .into_iter()
                    .flat_map(|(_, e)| load_reasons(e))
                    .collect();
                format!(
                    "cannot parse the jq expression {code:?}: {}",
                    reasons.join("; ")
                )
            })?;
        let filter = Compiler::default()
            .with_funs(funs)
            .compile(modules)
            .map_err(|errors| {
                let reasons: Vec<String> = errors
                    .into_iter()
                    .flat_map(|(_, undefined)| undefined)
                    .map(|(name, kind)| format!("undefined {} `{name}`", kind.as_str()))
                    .collect();
                format!(
                    "cannot compile the jq expression {code:?}: {}",
                    reasons.join("; ")
                )
            })?;
        Ok(Expr {
            code: code.to_owned(),
            filter,
        })
    }

    /// Runs `code` over `context`, compiled once per thread: a workflow
    /// evaluates the same few expressions for every run of a node, and
    /// compiling (with jq's standard library) costs far more than running.
    pub fn eval_cached(code: &str, context: &Value) -> Result<Value, String> {
        use std::cell::RefCell;
        use std::collections::HashMap;
        use std::rc::Rc;
        /// Compiled expressions kept per thread; the cache starts over when full.
        const KEPT: usize = 512;
        thread_local! {
            static COMPILED: RefCell<HashMap<String, Rc<Expr>>> = RefCell::new(HashMap::new());
        }
        let found = COMPILED.with(|c| c.borrow().get(code).cloned());
        let expr = match found {
            Some(expr) => expr,
            None => {
                let expr = Rc::new(Expr::compile(code)?);
                COMPILED.with(|c| {
                    let mut c = c.borrow_mut();
                    if c.len() >= KEPT {
                        c.clear();
                    }
                    c.insert(code.to_owned(), expr.clone());
                });
                expr
            }
        };
        expr.eval(context)
    }

    /// The expression's first value over `context` (`null` if it yields
    /// none).
    pub fn eval(&self, context: &Value) -> Result<Value, String> {
        let bytes = serde_json::to_vec(context).expect("a JSON value always serialises");
        let input = jaq_json::read::parse_single(&bytes)
            .map_err(|e| format!("cannot read the context: {e}"))?;
        let ctx = Ctx::<data::JustLut<Val>>::new(&self.filter.lut, Vars::new([]));
        match self.filter.id.run((ctx, input)).map(unwrap_valr).next() {
            None => Ok(Value::Null),
            Some(Ok(value)) => serde_json::from_str(&value.to_string())
                .map_err(|e| format!("{:?} yields a value that is not JSON: {e}", self.code)),
            Some(Err(e)) => Err(format!("{:?} failed: {e}", self.code)),
        }
    }
}

fn load_reasons(e: jaq_core::load::Error<&str>) -> Vec<String> {
    use jaq_core::load::Error;
    match e {
        Error::Io(errors) => errors.into_iter().map(|(_, reason)| reason).collect(),
        Error::Lex(errors) => errors
            .into_iter()
            .map(|(expect, at)| found(expect.as_str(), at))
            .collect(),
        Error::Parse(errors) => errors
            .into_iter()
            .map(|(expect, at)| found(expect.as_str(), at))
            .collect(),
    }
}

fn found(expected: &str, at: &str) -> String {
    if at.is_empty() {
        format!("expected {expected} at the end")
    } else {
        let at: String = at.chars().take(20).collect();
        format!("expected {expected} at {at:?}")
    }
}

/// The expressions of a template string, in order (`None` for an opening
/// `${{` that never closes).
fn expressions(text: &str) -> Vec<Option<&str>> {
    let mut found = Vec::new();
    let mut rest = text;
    while let Some(start) = rest.find(OPEN) {
        let after = &rest[start + OPEN.len()..];
        match after.find(CLOSE) {
            Some(end) => {
                found.push(Some(after[..end].trim()));
                rest = &after[end + CLOSE.len()..];
            }
            None => {
                found.push(None);
                break;
            }
        }
    }
    found
}

/// Every problem of the expressions in `template`, with the path of the
/// string that holds each (`path` is the template's own).
pub fn check_template(template: &Value, path: &str) -> Vec<FieldError> {
    let mut errors = Vec::new();
    walk(template, path, &mut |at, text| {
        for code in expressions(text) {
            let problem = match code {
                None => Some(format!("{OPEN} without its closing {CLOSE}")),
                Some("") => Some(format!("an empty {OPEN} {CLOSE}")),
                Some(code) => Expr::compile(code).err(),
            };
            if let Some(reason) = problem {
                errors.push(FieldError {
                    field: at.to_owned(),
                    reason,
                });
            }
        }
    });
    errors
}

fn walk(value: &Value, path: &str, each: &mut impl FnMut(&str, &str)) {
    match value {
        Value::String(text) => each(path, text),
        Value::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                walk(item, &format!("{path}[{i}]"), each);
            }
        }
        Value::Object(map) => {
            for (key, item) in map {
                walk(item, &format!("{path}.{key}"), each);
            }
        }
        _ => {}
    }
}

/// `template` with its expressions replaced by their values over
/// `context`.
pub fn render(template: &Value, context: &Value) -> Result<Value, String> {
    Ok(match template {
        Value::String(text) => render_string(text, context)?,
        Value::Array(items) => Value::Array(
            items
                .iter()
                .map(|item| render(item, context))
                .collect::<Result<_, _>>()?,
        ),
        Value::Object(map) => Value::Object(
            map.iter()
                .map(|(k, v)| Ok((k.clone(), render(v, context)?)))
                .collect::<Result<_, String>>()?,
        ),
        other => other.clone(),
    })
}

fn render_string(text: &str, context: &Value) -> Result<Value, String> {
    let trimmed = text.trim();
    if let Some(inner) = trimmed
        .strip_prefix(OPEN)
        .and_then(|t| t.strip_suffix(CLOSE))
        && !inner.contains(OPEN)
    {
        return Expr::eval_cached(inner.trim(), context);
    }
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find(OPEN) {
        out.push_str(&rest[..start]);
        let after = &rest[start + OPEN.len()..];
        let end = after
            .find(CLOSE)
            .ok_or_else(|| format!("{OPEN} without its closing {CLOSE}"))?;
        match Expr::eval_cached(after[..end].trim(), context)? {
            Value::String(s) => out.push_str(&s),
            other => out.push_str(&other.to_string()),
        }
        rest = &after[end + CLOSE.len()..];
    }
    out.push_str(rest);
    Ok(Value::String(out))
}
