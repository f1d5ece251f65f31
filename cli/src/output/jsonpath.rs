//! `-o jsonpath=TEMPLATE`, as kubectl reads it: text with JSONPath expressions in braces
//! (`{.status.phase}`, `{.items[*].metadata.name}`, `{.items[?(@.status.phase=="Healthy")].metadata.name}`),
//! `{range EXPR}...{end}` to repeat a part for each match, and quoted text in braces
//! (`{"\n"}`). The expressions themselves are evaluated by `jsonpath-rust`; this module
//! owns only kubectl's template layer. A field that is missing prints nothing, as kubectl
//! does by default.

use jsonpath_rust::JsonPath;
use serde_json::Value;

/// A parsed template.
#[derive(Clone, Debug, PartialEq)]
pub struct Template(Vec<Node>);

#[derive(Clone, Debug, PartialEq)]
enum Node {
    Text(String),
    Expr(String),
    Range(String, Vec<Node>),
}

impl std::str::FromStr for Template {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let mut tokens = tokenize(s)?.into_iter();
        let nodes = parse(&mut tokens, false)?;
        Ok(Template(nodes))
    }
}

enum Token {
    Text(String),
    Brace(String),
}

fn tokenize(s: &str) -> Result<Vec<Token>, String> {
    let mut out = Vec::new();
    let mut rest = s;
    while let Some(start) = rest.find('{') {
        if start > 0 {
            out.push(Token::Text(rest[..start].to_string()));
        }
        let inner = &rest[start + 1..];
        let end = closing_brace(inner)
            .ok_or_else(|| format!("unclosed {{ in jsonpath template {s:?}"))?;
        out.push(Token::Brace(inner[..end].trim().to_string()));
        rest = &inner[end + 1..];
    }
    if !rest.is_empty() {
        out.push(Token::Text(rest.to_string()));
    }
    Ok(out)
}

/// The `}` that closes an expression, skipping those inside quotes (`{"}"}`).
fn closing_brace(s: &str) -> Option<usize> {
    let mut quote: Option<char> = None;
    let mut escaped = false;
    for (i, c) in s.char_indices() {
        match (quote, c) {
            (Some(_), '\\') if !escaped => {
                escaped = true;
                continue;
            }
            (Some(q), c) if c == q && !escaped => quote = None,
            (None, '"' | '\'') => quote = Some(c),
            (None, '}') => return Some(i),
            _ => {}
        }
        escaped = false;
    }
    None
}

fn parse(tokens: &mut impl Iterator<Item = Token>, in_range: bool) -> Result<Vec<Node>, String> {
    let mut nodes = Vec::new();
    while let Some(t) = tokens.next() {
        match t {
            Token::Text(t) => nodes.push(Node::Text(t)),
            Token::Brace(b) if b == "end" => {
                return if in_range {
                    Ok(nodes)
                } else {
                    Err("{end} without a {range ...}".into())
                };
            }
            Token::Brace(b) => {
                if let Some(expr) = b.strip_prefix("range ") {
                    let body = parse(tokens, true)?;
                    nodes.push(Node::Range(path(expr.trim())?, body));
                } else if let Some(text) = quoted(&b) {
                    nodes.push(Node::Text(text));
                } else {
                    nodes.push(Node::Expr(path(&b)?));
                }
            }
        }
    }
    if in_range {
        Err("{range ...} without its {end}".into())
    } else {
        Ok(nodes)
    }
}

/// `"text"` or `'text'` with `\n`, `\t`, `\\` and the quote escaped.
fn quoted(b: &str) -> Option<String> {
    let q = b.chars().next()?;
    if !(q == '"' || q == '\'') || b.len() < 2 || !b.ends_with(q) {
        return None;
    }
    let mut out = String::new();
    let mut chars = b[1..b.len() - 1].chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            match chars.next() {
                Some('n') => out.push('\n'),
                Some('t') => out.push('\t'),
                Some('r') => out.push('\r'),
                Some(o) => out.push(o),
                None => out.push('\\'),
            }
        } else {
            out.push(c);
        }
    }
    Some(out)
}

/// kubectl's expression as RFC 9535 JSONPath: the leading `$` is optional there, and `@`
/// stands for the current item of a range.
fn path(expr: &str) -> Result<String, String> {
    let p = if expr == "@" || expr == "$" {
        "$".to_string()
    } else if let Some(rest) = expr.strip_prefix('@') {
        format!("${rest}")
    } else if expr.starts_with('$') {
        expr.to_string()
    } else if expr.starts_with('.') || expr.starts_with('[') {
        format!("${expr}")
    } else {
        return Err(format!(
            "{{{expr}}} is not a JSONPath expression: start it with . (e.g. {{.status.phase}}), or quote text (e.g. {{\"\\n\"}})"
        ));
    };
    // Parse once now, so a bad template fails before anything is requested.
    Value::Null
        .query(&p)
        .map_err(|e| format!("{{{expr}}}: {e}"))?;
    Ok(p)
}

impl Template {
    /// The template applied to `value`.
    pub fn render(&self, value: &Value) -> Result<String, String> {
        let mut out = String::new();
        render(&self.0, value, &mut out)?;
        Ok(out)
    }
}

fn render(nodes: &[Node], value: &Value, out: &mut String) -> Result<(), String> {
    for n in nodes {
        match n {
            Node::Text(t) => out.push_str(t),
            Node::Expr(p) => {
                let found = value.query(p).map_err(|e| e.to_string())?;
                let parts: Vec<String> = found.into_iter().map(text).collect();
                out.push_str(&parts.join(" "));
            }
            Node::Range(p, body) => {
                let found = value.query(p).map_err(|e| e.to_string())?;
                // `{range .items[*]}` iterates the matches; `{range .items}` (one array)
                // iterates its elements, as kubectl does.
                let items: Vec<&Value> = match found.as_slice() {
                    [Value::Array(a)] => a.iter().collect(),
                    _ => found,
                };
                for item in items {
                    render(body, item, out)?;
                }
            }
        }
    }
    Ok(())
}

/// A value as kubectl prints it: strings bare, everything else as JSON.
fn text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn render(t: &str, v: &Value) -> String {
        t.parse::<Template>().unwrap().render(v).unwrap()
    }

    #[test]
    fn templates_read_as_kubectl_reads_them() {
        let list = json!({"kind": "List", "items": [
            {"metadata": {"name": "shop"}, "status": {"phase": "Healthy", "stableRevision": 3}},
            {"metadata": {"name": "blog"}, "status": {"phase": "RolledBack", "stableRevision": 1}},
        ]});
        assert_eq!(render("{.items[*].metadata.name}", &list), "shop blog");
        assert_eq!(render("{.items[0].status.stableRevision}", &list), "3");
        assert_eq!(
            render(
                r#"{range .items[*]}{.metadata.name}={.status.phase}{"\n"}{end}"#,
                &list
            ),
            "shop=Healthy\nblog=RolledBack\n"
        );
        assert_eq!(
            render(
                r#"{.items[?(@.status.phase=="RolledBack")].metadata.name}"#,
                &list
            ),
            "blog"
        );
        assert_eq!(
            render("phase: {$.items[1].status.phase}.", &list),
            "phase: RolledBack."
        );
        assert_eq!(
            render("{.items[0].status}", &list),
            r#"{"phase":"Healthy","stableRevision":3}"#
        );
        assert_eq!(
            render("[{.items[5].metadata.name}]", &list),
            "[]",
            "missing prints nothing"
        );
        assert_eq!(
            render("{range .items}{@.metadata.name};{end}", &list),
            "shop;blog;"
        );
    }

    #[test]
    fn bad_templates_say_what_is_wrong() {
        for (t, says) in [
            ("{.status.phase", "unclosed"),
            ("{range .items[*]}{.x}", "without its {end}"),
            ("{end}", "without a {range"),
            ("{status.phase}", "start it with ."),
        ] {
            let err = t.parse::<Template>().unwrap_err();
            assert!(err.contains(says), "{t}: {err}");
        }
    }
}
