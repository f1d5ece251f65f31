//! `deployctl diff STACK REV1 REV2`: a unified diff of the two revisions' component specs
//! as YAML, one component at a time, so a change reads as "what happened to api".

use super::{print, Ctx};
use crate::error::CliError;
use crate::output::{Color, Style};
use crate::stacks::{self, Revision};
use deployctl_api::Component;
use kube::ResourceExt;
use similar::{ChangeTag, TextDiff};

/// Arguments of `diff`.
#[derive(Debug, clap::Args)]
pub struct DiffArgs {
    /// The stack
    #[arg(value_name = "STACK")]
    pub stack: String,

    /// The older revision
    #[arg(value_name = "REV1")]
    pub from: i64,

    /// The newer revision
    #[arg(value_name = "REV2")]
    pub to: i64,
}

/// Runs `diff`.
pub async fn run(args: DiffArgs, ctx: &Ctx) -> Result<(), CliError> {
    let cluster = ctx.cluster().await?;
    let stack = stacks::get(&cluster, &args.stack).await?;
    let revisions = stacks::revisions(&cluster, &stack).await?;
    let find = |n: i64| -> Result<&Revision, CliError> {
        revisions
            .iter()
            .find(|r| r.number == n)
            .ok_or_else(|| CliError::RevisionNotFound {
                stack: stack.name_any(),
                revision: n,
                available: revisions.iter().map(|r| r.number).collect(),
            })
    };
    let (a, b) = (find(args.from)?, find(args.to)?);
    let components = |r: &Revision| {
        r.components.clone().ok_or_else(|| CliError::Api {
            action: format!("reading revision {} of stack \"{}\"", r.number, args.stack),
            message: format!("ControllerRevision {} has no readable components", r.name),
        })
    };
    let text = render(
        (a.number, &components(a)?),
        (b.number, &components(b)?),
        &ctx.style,
    );
    print(&text)
}

fn yaml(c: &Component) -> String {
    serde_yaml_ng::to_string(c).expect("components serialize")
}

/// The diff, component by component: those of `to` in order, then those only in `from`.
pub fn render(from: (i64, &[Component]), to: (i64, &[Component]), style: &Style) -> String {
    let (na, a) = from;
    let (nb, b) = to;
    let mut names: Vec<&str> = b.iter().map(|c| c.name.as_str()).collect();
    names.extend(
        a.iter()
            .map(|c| c.name.as_str())
            .filter(|n| !b.iter().any(|c| c.name == *n)),
    );
    let mut out = String::new();
    let mut unchanged = Vec::new();
    for name in names {
        let old = a.iter().find(|c| c.name == name);
        let new = b.iter().find(|c| c.name == name);
        if old == new {
            unchanged.push(name);
            continue;
        }
        let (ta, tb) = (
            old.map(yaml).unwrap_or_default(),
            new.map(yaml).unwrap_or_default(),
        );
        let what = match (old, new) {
            (None, _) => "added",
            (_, None) => "removed",
            _ => "changed",
        };
        if !out.is_empty() {
            out.push('\n');
        }
        out.push_str(&style.paint(&format!("component {name} {what}"), Color::Bold));
        out.push('\n');
        let diff = TextDiff::from_lines(&ta, &tb);
        let header_a = format!("{name} (revision {na})");
        let header_b = format!("{name} (revision {nb})");
        let unified = diff
            .unified_diff()
            .context_radius(3)
            .header(
                if old.is_some() {
                    &header_a
                } else {
                    "/dev/null"
                },
                if new.is_some() {
                    &header_b
                } else {
                    "/dev/null"
                },
            )
            .to_string();
        for line in unified.lines() {
            let color = if line.starts_with("+++") || line.starts_with("---") {
                Some(Color::Bold)
            } else if line.starts_with('+') {
                Some(Color::Green)
            } else if line.starts_with('-') {
                Some(Color::Red)
            } else if line.starts_with("@@") {
                Some(Color::Dim)
            } else {
                None
            };
            match color {
                Some(c) => out.push_str(&style.paint(line, c)),
                None => out.push_str(line),
            }
            out.push('\n');
        }
        debug_assert!(diff.iter_all_changes().any(|c| c.tag() != ChangeTag::Equal));
    }
    if out.is_empty() {
        return format!("revisions {na} and {nb} have the same components\n");
    }
    if !unchanged.is_empty() {
        out.push_str(&format!("\nunchanged: {}\n", unchanged.join(", ")));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn comps(yaml: &str) -> Vec<Component> {
        serde_yaml_ng::from_str(yaml).unwrap()
    }

    #[test]
    fn diff_by_component_with_added_and_removed() {
        let a = comps(
            "
- {name: db, template: {spec: {containers: [{name: app, image: 'deployctl.dev/demo-app:v1'}]}}}
- {name: api, replicas: 2, dependsOn: [db], template: {spec: {containers: [{name: app, image: 'deployctl.dev/demo-app:v1'}]}}}
- {name: worker, template: {spec: {containers: [{name: app, image: 'w:1'}]}}}
",
        );
        let b = comps(
            "
- {name: db, template: {spec: {containers: [{name: app, image: 'deployctl.dev/demo-app:v1'}]}}}
- {name: api, replicas: 2, dependsOn: [db], template: {spec: {containers: [{name: app, image: 'deployctl.dev/demo-app:v2'}]}}}
- {name: cache, template: {spec: {containers: [{name: app, image: 'redis:7'}]}}}
",
        );
        let out = render((1, &a), (2, &b), &Style::PLAIN);
        insta::assert_snapshot!(out);
        assert!(
            out.contains(
                "-    - image: deployctl.dev/demo-app:v1\n+    - image: deployctl.dev/demo-app:v2\n"
            ),
            "{out}"
        );
    }

    #[test]
    fn identical_revisions_say_so() {
        let a = comps("[{name: db, template: {spec: {containers: [{name: app, image: 'x:1'}]}}}]");
        assert_eq!(
            render((1, &a), (3, &a), &Style::PLAIN),
            "revisions 1 and 3 have the same components\n"
        );
    }

    #[test]
    fn colours_mark_added_and_removed_lines() {
        let a = comps("[{name: db, template: {spec: {containers: [{name: app, image: 'x:1'}]}}}]");
        let b = comps("[{name: db, template: {spec: {containers: [{name: app, image: 'x:2'}]}}}]");
        let out = render(
            (1, &a),
            (2, &b),
            &Style {
                color: true,
                width: None,
            },
        );
        assert!(out.contains("\x1b[31m-    - image: x:1\x1b[0m"), "{out}");
        assert!(out.contains("\x1b[32m+    - image: x:2\x1b[0m"), "{out}");
    }
}
