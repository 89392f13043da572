//! jq expressions of workflow definitions, through the `jaq` crates (core,
//! standard library, JSON values): compiled once, run over a JSON context.
//!
//! A template is any JSON value. A string that is exactly `${{ expr }}` is
//! replaced by the expression's value (of any type); `${{ expr }}` inside a
//! longer string is replaced by the value's text (a string as it is, other
//! values as JSON).

use jaq_core::load::{Arena, File, Loader};
use jaq_core::{Compiler, Ctx, Vars, data};
use jaq_json::Val;
use serde_json::Value;

use crate::spec::FieldError;

/// Filters of jq's standard library that a workflow expression may not
/// use, with why: they reach out of the expression into the engine's
/// process. The expression runs inside the engine, so `env` would read its
/// environment (and so its credentials), `debug` and `stderr` would write
/// to its standard error, `input` would read its standard input, and `halt`
/// would end the engine itself.
const REFUSED: [(&str, &str); 7] = [
    ("env", "it would read the engine's environment"),
    ("debug", "it would write to the engine's standard error"),
    ("stderr", "it would write to the engine's standard error"),
    ("input", "it would read the engine's standard input"),
    ("inputs", "it would read the engine's standard input"),
    ("halt", "it would stop the engine"),
    ("halt_error", "it would stop the engine"),
];

/// The native filters behind [`REFUSED`], left out of the compiler.
const REFUSED_NATIVES: [&str; 6] = [
    "env",
    "debug_empty",
    "stderr_empty",
    "input",
    "inputs",
    "halt",
];

/// The standard library's definitions behind [`REFUSED`], left out too.
const REFUSED_DEFS: [&str; 4] = ["debug", "stderr", "halt", "halt_error"];

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

/// The longest expression, in bytes. jaq parses, compiles and runs by
/// recursion, so the stack an expression needs grows with its size: on a
/// 2 MiB thread (tokio's, where the engine checks and runs workflows) a
/// release build overflowed at about 2,000 items of a flat chain (`1,1,…`,
/// `.|.|…`) and at 1,024 nested brackets, and a stack overflow aborts the
/// whole process. 1 KiB keeps both under half of that.
pub const MAX_EXPR_BYTES: usize = 1024;

/// The deepest nesting of brackets (`(`, `[`, `{`, and `\(` in strings).
pub const MAX_EXPR_DEPTH: usize = 64;

/// Refuses an expression longer or deeper than the limits, before jaq sees it.
fn within_limits(code: &str) -> Result<(), String> {
    if code.len() > MAX_EXPR_BYTES {
        return Err(format!(
            "a jq expression is at most {MAX_EXPR_BYTES} bytes, this one is {}: \
             move the work into a transform node or a task",
            code.len()
        ));
    }
    let (mut depth, mut deepest) = (0usize, 0usize);
    for b in code.bytes() {
        match b {
            b'(' | b'[' | b'{' => {
                depth += 1;
                deepest = deepest.max(depth);
            }
            b')' | b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    if deepest > MAX_EXPR_DEPTH {
        return Err(format!(
            "a jq expression nests brackets at most {MAX_EXPR_DEPTH} deep, this one {deepest}"
        ));
    }
    Ok(())
}

impl Expr {
    /// Compiles `code`; the error says what the parser or compiler found,
    /// or which limit ([`MAX_EXPR_BYTES`], [`MAX_EXPR_DEPTH`]) it broke.
    pub fn compile(code: &str) -> Result<Expr, String> {
        within_limits(code)?;
        let defs = jaq_core::defs()
            .chain(jaq_std::defs())
            .chain(jaq_json::defs())
            .filter(|def| !REFUSED_DEFS.contains(&def.name));
        let funs = jaq_core::funs()
            .chain(jaq_std::funs())
            .chain(jaq_json::funs())
            .filter(|(name, ..)| !REFUSED_NATIVES.contains(name));
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
                    .map(|(name, kind)| {
                        match REFUSED.iter().find(|(refused, _)| *refused == name) {
                            Some((_, why)) => {
                                format!("`{name}` is not available in workflow expressions: {why}")
                            }
                            None => format!("undefined {} `{name}`", kind.as_str()),
                        }
                    })
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
        // Not `jaq_core::unwrap_valr`: it exits the process on `halt`.
        match self.filter.id.run((ctx, input)).next() {
            None => Ok(Value::Null),
            Some(Ok(value)) => serde_json::from_str(&value.to_string())
                .map_err(|e| format!("{:?} yields a value that is not JSON: {e}", self.code)),
            Some(Err(exn)) => match exn.get_err() {
                Ok(e) => Err(format!("{:?} failed: {e}", self.code)),
                Err(_) => Err(format!("{:?} stopped without a value", self.code)),
            },
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
