//! `deployctl history STACK`: the stack's revisions (its ControllerRevisions), what
//! changed in each compared with the one before, when, which is current, stable or held
//! back, and what became of them (the last rollback).

use super::{print, Ctx};
use crate::args::DataFormat;
use crate::describe;
use crate::error::{one_line, CliError};
use crate::output::table::Cell;
use crate::output::time::{age, ago};
use crate::output::{Color, Style, Table};
use crate::stacks::{self, Revision};
use deployctl_api::{Component, ProductionStack, ProductionStackStatus};
use k8s_openapi::jiff::Timestamp;
use serde::Serialize;
use serde_json::Value;
use std::collections::BTreeMap;

/// Arguments of `history`.
#[derive(Debug, clap::Args)]
pub struct HistoryArgs {
    /// The stack
    #[arg(value_name = "STACK")]
    pub stack: String,

    /// Print the history as JSON or YAML instead of a table
    #[arg(short = 'o', long, value_name = "FORMAT")]
    pub output: Option<DataFormat>,
}

/// Runs `history`.
pub async fn run(args: HistoryArgs, ctx: &Ctx) -> Result<(), CliError> {
    let cluster = ctx.cluster().await?;
    let stack = stacks::get(&cluster, &args.stack).await?;
    let revisions = stacks::revisions(&cluster, &stack).await?;
    let entries = entries(&stack, &revisions);
    match args.output {
        Some(DataFormat::Json) => {
            let mut s = serde_json::to_string_pretty(&entries).expect("history serializes");
            s.push('\n');
            print(&s)
        }
        Some(DataFormat::Yaml) => {
            print(
                &serde_yaml_ng::to_string(&entries).map_err(|e| CliError::Api {
                    action: "writing YAML".into(),
                    message: e.to_string(),
                })?,
            )
        }
        None => {
            if entries.is_empty() {
                eprintln!(
                    "Stack \"{}\" has no revisions yet (the controller records one when it \
                     first sees the stack).",
                    args.stack
                );
                return Ok(());
            }
            print(&render(&stack, &entries, Timestamp::now(), &ctx.style))
        }
    }
}

/// One line of history; also the documented shape of `history -o json|yaml`.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Entry {
    /// Revision number.
    pub revision: i64,
    /// Name of its ControllerRevision.
    pub name: String,
    /// Digest of its components.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hash: Option<String>,
    /// Stack generation that first produced it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub generation: Option<i64>,
    /// When it was recorded (RFC 3339).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub created: Option<String>,
    /// `current`, `stable`, `held back`, `running`, `rolling back`, `rollback target`,
    /// `rolled back`.
    pub marks: Vec<String>,
    /// What changed compared with the previous revision that still exists.
    pub changes: Vec<String>,
    /// The revision it is compared with.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub compared_with: Option<i64>,
    #[serde(skip)]
    created_time: Option<k8s_openapi::apimachinery::pkg::apis::meta::v1::Time>,
}

/// The history entries of a stack, oldest first.
pub fn entries(stack: &ProductionStack, revisions: &[Revision]) -> Vec<Entry> {
    let status = stack.status.clone().unwrap_or_default();
    let mut out = Vec::new();
    let mut previous: Option<&Revision> = None;
    for rev in revisions {
        let changes = match (
            &rev.components,
            previous.and_then(|p| p.components.as_ref()),
        ) {
            (None, _) => vec!["(revision data unreadable)".to_string()],
            (Some(cur), Some(prev)) => summarize(prev, cur),
            (Some(cur), None) => initial(cur, rev.number > 1 && previous.is_none()),
        };
        out.push(Entry {
            revision: rev.number,
            name: rev.name.clone(),
            hash: rev.hash.clone(),
            generation: rev.generation,
            created: rev.created.as_ref().map(|t| t.0.to_string()),
            marks: marks(rev.number, &status),
            changes,
            compared_with: previous.map(|p| p.number),
            created_time: rev.created.clone(),
        });
        previous = Some(rev);
    }
    out
}

/// What a revision is to the stack now.
fn marks(n: i64, status: &ProductionStackStatus) -> Vec<String> {
    let mut m = Vec::new();
    if status.current_revision == Some(n) {
        m.push("current".to_string());
    }
    if status.stable_revision == Some(n) {
        m.push("stable".to_string());
    }
    if let Some(h) = &status.hold {
        if h.held_back == n {
            m.push("held back".to_string());
        }
        if h.revision == n && status.stable_revision != Some(n) {
            m.push("running".to_string());
        }
    }
    if let Some(rb) = &status.rollback {
        if rb.from_revision == n {
            m.push("rolling back".to_string());
        }
        if rb.to_revision == n {
            m.push("rollback target".to_string());
        }
    }
    if let Some(r) = &status.last_rollback {
        if r.from_revision == n {
            m.push(format!("rolled back to {}", r.to_revision));
        }
    }
    m
}

/// The changes of the first revision we know: its components and images.
fn initial(components: &[Component], older_pruned: bool) -> Vec<String> {
    let list: Vec<String> = components
        .iter()
        .map(|c| match images(c).into_values().next() {
            Some(image) if images(c).len() == 1 => format!("{} ({image})", c.name),
            _ => c.name.clone(),
        })
        .collect();
    let prefix = if older_pruned {
        "components (older revisions pruned)"
    } else {
        "components"
    };
    vec![format!("{prefix}: {}", list.join(", "))]
}

/// Images of a component's containers (init containers too), by container name.
fn images(c: &Component) -> BTreeMap<String, String> {
    let Some(spec) = &c.template.spec else {
        return BTreeMap::new();
    };
    spec.init_containers
        .iter()
        .flatten()
        .chain(&spec.containers)
        .map(|k| (k.name.clone(), k.image.clone().unwrap_or_default()))
        .collect()
}

/// `deployctl.dev/demo-app:v1 → v2` when only the tag changed, else both in full.
fn image_change(old: &str, new: &str) -> String {
    let split = |s: &str| -> Option<(String, String)> {
        let (repo, rest) = match s.rsplit_once('@') {
            Some((r, d)) => (r.to_string(), format!("@{d}")),
            None => {
                let slash = s.rfind('/').map(|i| i + 1).unwrap_or(0);
                let colon = s[slash..].rfind(':')? + slash;
                (s[..colon].to_string(), s[colon + 1..].to_string())
            }
        };
        Some((repo, rest))
    };
    match (split(old), split(new)) {
        (Some((ra, ta)), Some((rb, tb))) if ra == rb => {
            format!("{ra}:{ta} → {tb}").replace(":@", "@")
        }
        _ => format!("{old} → {new}"),
    }
}

/// What changed from `prev` to `cur`: components added and removed, images, replicas,
/// and the names of other fields that differ.
pub fn summarize(prev: &[Component], cur: &[Component]) -> Vec<String> {
    let mut out = Vec::new();
    for c in cur {
        let Some(p) = prev.iter().find(|p| p.name == c.name) else {
            let imgs: Vec<String> = images(c).into_values().collect();
            out.push(format!("added {} ({})", c.name, imgs.join(", ")));
            continue;
        };
        if p == c {
            continue;
        }
        let (old_images, new_images) = (images(p), images(c));
        let single = old_images.len() == 1 && new_images.len() == 1;
        for (container, image) in &new_images {
            match old_images.get(container) {
                Some(old) if old != image => {
                    let who = if single {
                        c.name.clone()
                    } else {
                        format!("{}/{container}", c.name)
                    };
                    out.push(format!("{who}: {}", image_change(old, image)));
                }
                _ => {}
            }
        }
        if p.replicas() != c.replicas() {
            out.push(format!(
                "{}: replicas {} → {}",
                c.name,
                p.replicas(),
                c.replicas()
            ));
        }
        let others = other_fields(p, c);
        if !others.is_empty() {
            out.push(format!("{}: {} changed", c.name, others.join(", ")));
        }
    }
    for p in prev {
        if !cur.iter().any(|c| c.name == p.name) {
            out.push(format!("removed {}", p.name));
        }
    }
    if out.is_empty() {
        out.push("no change in components (order only)".to_string());
    }
    out
}

/// Top-level fields (and pod template fields, as `template.x`) that differ besides
/// images and replicas, which are reported on their own.
fn other_fields(a: &Component, b: &Component) -> Vec<String> {
    let normalize = |c: &Component| -> Value {
        let mut c = c.clone();
        c.replicas = None;
        if let Some(spec) = c.template.spec.as_mut() {
            for k in spec
                .containers
                .iter_mut()
                .chain(spec.init_containers.iter_mut().flatten())
            {
                k.image = None;
            }
        }
        serde_json::to_value(c).expect("components serialize")
    };
    let (va, vb) = (normalize(a), normalize(b));
    let mut fields = Vec::new();
    let keys = |v: &Value| -> Vec<String> {
        v.as_object()
            .map(|o| o.keys().cloned().collect())
            .unwrap_or_default()
    };
    let mut all = keys(&va);
    all.extend(keys(&vb));
    all.sort();
    all.dedup();
    for k in all {
        if va.get(&k) == vb.get(&k) {
            continue;
        }
        if k == "template" {
            // Say which part of the pod template, which is what people look for.
            let sub = |v: &Value, part: &str| v.get("template").and_then(|t| t.get(part)).cloned();
            for part in ["metadata", "spec"] {
                if sub(&va, part) != sub(&vb, part) {
                    let detail = if part == "spec" {
                        let ta = sub(&va, "spec").unwrap_or(Value::Null);
                        let tb = sub(&vb, "spec").unwrap_or(Value::Null);
                        let mut inner: Vec<String> = keys(&ta)
                            .into_iter()
                            .chain(keys(&tb))
                            .filter(|f| ta.get(f) != tb.get(f))
                            .collect();
                        inner.sort();
                        inner.dedup();
                        inner
                            .into_iter()
                            .map(|f| format!("template.spec.{f}"))
                            .collect()
                    } else {
                        vec!["template.metadata".to_string()]
                    };
                    fields.extend(detail);
                }
            }
        } else {
            fields.push(k);
        }
    }
    fields
}

/// The history table, and the last rollback's reason under it.
pub fn render(stack: &ProductionStack, entries: &[Entry], now: Timestamp, style: &Style) -> String {
    let mut t = Table::new(["REVISION", "AGE", "GENERATION", "STATUS", "CHANGES"]).flex("CHANGES");
    for e in entries {
        let status = if e.marks.is_empty() {
            "-".to_string()
        } else {
            e.marks.join(", ")
        };
        let color = if e
            .marks
            .iter()
            .any(|m| m.starts_with("rolled back") || m == "held back")
        {
            Some(Color::Red)
        } else if e.marks.iter().any(|m| m == "stable") {
            Some(Color::Green)
        } else {
            None
        };
        let mut changes = e.changes.join("; ");
        if let Some(w) = e.compared_with.filter(|w| *w != e.revision - 1) {
            changes = format!("(vs {w}) {changes}");
        }
        t.row([
            Cell::from(e.revision.to_string()),
            age(e.created_time.as_ref(), now).into(),
            describe::opt_num(e.generation).into(),
            Cell::colored(status, color),
            changes.into(),
        ]);
    }
    let mut out = t.render(style);
    let status = stack.status.clone().unwrap_or_default();
    if let Some(rb) = &status.rollback {
        out.push_str(&format!(
            "\nRolling back {} → {} since {}: {}\n",
            rb.from_revision,
            rb.to_revision,
            ago(&rb.started_at, now),
            one_line(&rb.reason)
        ));
    }
    if let Some(r) = &status.last_rollback {
        out.push_str(&format!(
            "\nLast rollback: {} → {}, {}, took {} ({}): {}\n",
            r.from_revision,
            r.to_revision,
            ago(&r.completed_at, now),
            deployctl_api::duration::human(std::time::Duration::from_secs_f64(
                r.duration_seconds.max(0.0)
            )),
            describe::rollback_cause(r.operation.as_deref(), r.trigger),
            one_line(&r.reason)
        ));
    }
    if let Some(h) = &status.hold {
        out.push_str(&format!(
            "Revision {} is held back: run `deployctl retry {}` or change the spec to roll \
             out again.\n",
            h.held_back,
            kube::ResourceExt::name_any(stack)
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::describe::fixtures::*;

    fn comps(yaml: &str) -> Vec<Component> {
        serde_yaml_ng::from_str(yaml).unwrap()
    }

    const V1: &str = "
- {name: db, template: {spec: {containers: [{name: app, image: 'deployctl.dev/demo-app:v1'}]}}}
- {name: api, dependsOn: [db], template: {spec: {containers: [{name: app, image: 'deployctl.dev/demo-app:v1'}]}}}
";

    #[test]
    fn an_image_change_shows_the_tag_only() {
        let v2 = V1.replace(
            "{name: api, dependsOn: [db], template: {spec: {containers: [{name: app, image: 'deployctl.dev/demo-app:v1'}]}}}",
            "{name: api, dependsOn: [db], template: {spec: {containers: [{name: app, image: 'deployctl.dev/demo-app:v2'}]}}}",
        );
        assert_eq!(
            summarize(&comps(V1), &comps(&v2)),
            vec!["api: deployctl.dev/demo-app:v1 → v2"]
        );
    }

    #[test]
    fn added_removed_replicas_and_other_fields() {
        let next = "
- {name: db, replicas: 3, template: {spec: {containers: [{name: app, image: 'deployctl.dev/demo-app:v1', env: [{name: A, value: b}]}]}}}
- {name: cache, template: {spec: {containers: [{name: app, image: 'redis:7'}]}}}
";
        assert_eq!(
            summarize(&comps(V1), &comps(next)),
            vec![
                "db: replicas 1 → 3",
                "db: template.spec.containers changed",
                "added cache (redis:7)",
                "removed api",
            ]
        );
    }

    #[test]
    fn image_changes_between_registries_and_digests() {
        assert_eq!(image_change("a/b:1", "c/b:1"), "a/b:1 → c/b:1");
        assert_eq!(
            image_change("localhost:5000/b:1", "localhost:5000/b:2"),
            "localhost:5000/b:1 → 2"
        );
        assert_eq!(image_change("b", "b:2"), "b → b:2");
        assert_eq!(
            image_change("b@sha256:aa", "b@sha256:bb"),
            "b@sha256:aa → @sha256:bb"
        );
    }

    #[test]
    fn several_containers_are_named() {
        let a = "[{name: api, template: {spec: {containers: [{name: app, image: 'x:1'}, {name: proxy, image: 'p:1'}]}}}]";
        let b = "[{name: api, dependsOn: [db], template: {spec: {containers: [{name: app, image: 'x:2'}, {name: proxy, image: 'p:1'}]}}}]";
        assert_eq!(
            summarize(&comps(a), &comps(b)),
            vec!["api/app: x:1 → 2", "api: dependsOn changed"]
        );
    }

    fn revision(n: i64, yaml: &str, created: &str) -> Revision {
        Revision {
            number: n,
            name: format!("shop-{n}"),
            hash: Some(format!("h{n}")),
            generation: Some(n),
            created: Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                created.parse().unwrap(),
            )),
            components: Some(comps(yaml)),
        }
    }

    #[test]
    fn history_marks_current_stable_held_back_and_rolled_back() {
        let stack = rolled_back();
        let v4 = V1.replace("demo-app:v1'}]}}}\n", "demo-app:v4'}]}}}\n");
        let revs = vec![
            revision(2, V1, "2024-05-01T09:00:00Z"),
            revision(
                3,
                V1.replace("- {name: db", "- {name: db, replicas: 2")
                    .as_str(),
                "2024-05-01T10:00:00Z",
            ),
            revision(4, &v4, "2024-05-01T11:45:00Z"),
        ];
        let e = entries(&stack, &revs);
        assert_eq!(e[0].changes[0], "components (older revisions pruned): db (deployctl.dev/demo-app:v1), api (deployctl.dev/demo-app:v1)");
        assert_eq!(e[1].marks, vec!["stable"]);
        assert_eq!(e[2].marks, vec!["current", "held back", "rolled back to 3"]);
        let out = render(&stack, &e, now(), &Style::PLAIN);
        insta::assert_snapshot!(out);
    }
}
