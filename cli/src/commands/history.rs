//! `deployctl history STACK`: the stack's revisions (its ControllerRevisions), what
//! changed in each compared with the one before, when, which is current, stable or held
//! back, and what became of them (the last rollback); and the snapshots of each revision's
//! data taken before a rollout moved the stack on from it (what a rollback to it restores).

use super::{print, Ctx};
use crate::args::DataFormat;
use crate::describe;
use crate::error::{one_line, CliError};
use crate::output::style::phase_color;
use crate::output::table::Cell;
use crate::output::time::{age, ago};
use crate::output::{Color, Style, Table};
use crate::stack_snapshots;
use crate::stacks::{self, Revision};
use deployctl_api::{
    Component, ConfigVersion, ProductionStack, ProductionStackStatus, SnapshotReason,
    StackSnapshot, StackSnapshotStatus,
};
use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;
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
    let snapshots = match stack_snapshots::of_stack(&cluster, &args.stack).await {
        Ok(s) => s,
        // An installation without snapshots: nothing to show.
        Err(CliError::ApiNotInstalled { .. }) => Vec::new(),
        // The history is still worth having without them.
        Err(e) => {
            let first = e.to_string().lines().next().unwrap_or_default().to_string();
            eprintln!("note: snapshots are not shown: {first}");
            Vec::new()
        }
    };
    let entries = entries(&stack, &revisions, &snapshots);
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
    /// The snapshots taken before a rollout (reason `BeforeRollout`) that hold this
    /// revision's data, oldest first: what a rollback to it restores.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub snapshots: Vec<SnapshotEntry>,
    /// The ConfigMaps and Secrets each component reads at this revision: the user's
    /// object, its per-revision copy and the content digest (never the content).
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub configs: BTreeMap<String, Vec<ConfigVersion>>,
    #[serde(skip)]
    created_time: Option<k8s_openapi::apimachinery::pkg::apis::meta::v1::Time>,
}

/// A pre-rollout snapshot in the history.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SnapshotEntry {
    /// Name of the StackSnapshot.
    pub name: String,
    /// Whose data.
    pub component: String,
    /// `Pending`, `Running`, `Completed` or `Failed`.
    pub phase: String,
    /// SHA-256 identity in the repository, once complete.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub digest: Option<String>,
    /// Bytes of data, once complete.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub size_bytes: Option<i64>,
    /// `Verified` or `Corrupt`, once verified.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub verification: Option<String>,
    /// When it was taken (RFC 3339).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub created: Option<String>,
    /// What the stack did with it, as far as its status still tells: taken before the
    /// rollout in progress, restored by the rollback in progress or the last one.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
    #[serde(skip)]
    status: Option<StackSnapshotStatus>,
    #[serde(skip)]
    created_time: Option<k8s_openapi::apimachinery::pkg::apis::meta::v1::Time>,
}

/// The pre-rollout snapshots holding revision `n`'s data, oldest first.
fn snapshot_entries(
    n: i64,
    snapshots: &[StackSnapshot],
    status: &ProductionStackStatus,
) -> Vec<SnapshotEntry> {
    let mut out: Vec<SnapshotEntry> = snapshots
        .iter()
        .filter(|s| s.spec.reason == SnapshotReason::BeforeRollout)
        .filter(|s| stack_snapshots::data_revision(s) == Some(n))
        .map(|s| {
            let name = s.name_any();
            let st = s.status.clone();
            SnapshotEntry {
                notes: snapshot_notes(&name, status),
                name,
                component: s.spec.component.clone(),
                phase: stack_snapshots::phase(s).to_string(),
                digest: st.as_ref().and_then(|st| st.digest.clone()),
                size_bytes: st.as_ref().and_then(|st| st.size_bytes),
                verification: st
                    .as_ref()
                    .and_then(|st| st.verification)
                    .map(|v| format!("{v:?}")),
                created: s
                    .metadata
                    .creation_timestamp
                    .as_ref()
                    .map(|t| t.0.to_string()),
                status: st,
                created_time: s.metadata.creation_timestamp.clone(),
            }
        })
        .collect();
    out.sort_by_key(|e| {
        (
            e.created_time.as_ref().map(|t| t.0.as_second()),
            e.name.clone(),
        )
    });
    out
}

/// What the stack's status says about the snapshot `name`.
fn snapshot_notes(name: &str, status: &ProductionStackStatus) -> Vec<String> {
    let mut notes = Vec::new();
    if let Some(r) = &status.rollout {
        if r.snapshots.iter().any(|s| s.snapshot == name) {
            notes.push(format!(
                "taken before the rollout of revision {} (in progress)",
                r.revision
            ));
        }
    }
    if let Some(rb) = &status.rollback {
        if rb.restores.iter().any(|s| s.snapshot == name) {
            notes.push(format!(
                "being restored (rollback {} → {})",
                rb.from_revision, rb.to_revision
            ));
        }
    }
    if let Some(r) = &status.last_rollback {
        if r.restores.iter().any(|s| s.snapshot == name) {
            if r.from_revision != r.to_revision {
                notes.push(format!(
                    "taken before the rollout of revision {}; restored when it rolled back",
                    r.from_revision
                ));
            } else {
                notes.push(match &r.operation {
                    Some(op) => format!("restored by operation {op}"),
                    None => "restored".to_string(),
                });
            }
        }
    }
    notes
}

/// The history entries of a stack, oldest first, with the pre-rollout snapshots of each
/// revision's data.
pub fn entries(
    stack: &ProductionStack,
    revisions: &[Revision],
    snapshots: &[StackSnapshot],
) -> Vec<Entry> {
    let status = stack.status.clone().unwrap_or_default();
    let mut out = Vec::new();
    let mut previous: Option<&Revision> = None;
    for rev in revisions {
        // Compared as written: a config change shows as one, not as a renamed reference.
        let mut changes = match (rev.unresolved(), previous.and_then(|p| p.unresolved())) {
            (None, _) => vec!["(revision data unreadable)".to_string()],
            (Some(cur), Some(prev)) => summarize(&prev, &cur),
            (Some(cur), None) => initial(&cur, rev.number > 1 && previous.is_none()),
        };
        let mut config = template_sources(previous, rev);
        config.extend(config_changes(previous.map(|p| &p.configs), &rev.configs));
        if !config.is_empty() && changes == ["no change in components (order only)"] {
            changes.clear();
        }
        changes.extend(config);
        out.push(Entry {
            revision: rev.number,
            name: rev.name.clone(),
            hash: rev.hash.clone(),
            generation: rev.generation,
            created: rev.created.as_ref().map(|t| t.0.to_string()),
            marks: marks(rev.number, &status),
            changes,
            compared_with: previous.map(|p| p.number),
            snapshots: snapshot_entries(rev.number, snapshots, &status),
            configs: rev.configs.clone(),
            created_time: rev.created.clone(),
        });
        previous = Some(rev);
    }
    out
}

/// Components whose `templateFrom` is new in this revision: where their template came from.
fn template_sources(previous: Option<&Revision>, rev: &Revision) -> Vec<String> {
    let Some(cur) = &rev.components else {
        return vec![];
    };
    let before = previous.and_then(|p| p.components.as_ref());
    cur.iter()
        .filter_map(|c| {
            let f = c.template_from.as_ref()?;
            let same = before
                .and_then(|b| b.iter().find(|p| p.name == c.name))
                .is_some_and(|p| p.template_from.as_ref() == Some(f));
            (!same).then(|| format!("{}: template from {} {}", c.name, f.kind, f.name))
        })
        .collect()
}

/// Short form of a config version: `settings@3f2a1b7c`.
pub fn config_label(v: &ConfigVersion) -> String {
    let short: String = v.hash.chars().take(8).collect();
    format!("{}@{short}", v.name)
}

/// The config of a revision compared with the one before (all of it for the first).
fn config_changes(
    prev: Option<&BTreeMap<String, Vec<ConfigVersion>>>,
    cur: &BTreeMap<String, Vec<ConfigVersion>>,
) -> Vec<String> {
    let mut out = Vec::new();
    for (component, versions) in cur {
        let before = prev.and_then(|p| p.get(component));
        let mut changed = Vec::new();
        for v in versions {
            let old = before.and_then(|b| b.iter().find(|o| o.kind == v.kind && o.name == v.name));
            match old {
                Some(o) if o.hash == v.hash => {}
                Some(o) => changed.push(format!(
                    "{} {} → {}",
                    v.kind,
                    config_label(o),
                    v.hash.chars().take(8).collect::<String>()
                )),
                None => changed.push(format!("{} {}", v.kind, config_label(v))),
            }
        }
        if !changed.is_empty() {
            out.push(format!("{component}: config {}", changed.join(", ")));
        }
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
        if rb.from_revision == rb.to_revision {
            // A Restore operation: the revision stays, its data comes back.
            if rb.to_revision == n {
                m.push("restoring data".to_string());
            }
        } else {
            if rb.from_revision == n {
                m.push("rolling back".to_string());
            }
            if rb.to_revision == n {
                m.push("rollback target".to_string());
            }
        }
    }
    if let Some(r) = &status.last_rollback {
        if r.from_revision == r.to_revision {
            if r.to_revision == n && !r.restores.is_empty() {
                m.push("data restored".to_string());
            }
        } else if r.from_revision == n {
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
        // How this revision rolls the component out, when its pods change.
        if let Some(k) = &c.canary {
            let (mut a, mut b) = (p.clone(), c.clone());
            (a.canary, b.canary) = (None, None);
            if a != b {
                out.push(format!("{}: canary steps {}", c.name, k.summary()));
            }
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
    out.push_str(&snapshots_table(entries, now, style));
    let status = stack.status.clone().unwrap_or_default();
    if let Some(rb) = &status.rollback {
        out.push_str(&format!(
            "\nRolling back {} since {}: {}\n",
            describe::rollback_span(rb.from_revision, rb.to_revision),
            ago(&rb.started_at, now),
            one_line(&rb.reason)
        ));
    }
    if let Some(r) = &status.last_rollback {
        out.push_str(&format!(
            "\nLast rollback: {}, {}, took {} ({}): {}\n",
            describe::rollback_span(r.from_revision, r.to_revision),
            ago(&r.completed_at, now),
            deployctl_api::duration::human(std::time::Duration::from_secs_f64(
                r.duration_seconds.max(0.0)
            )),
            describe::rollback_cause(r.operation.as_deref(), r.trigger),
            one_line(&r.reason)
        ));
        if !r.restores.is_empty() {
            let restored: Vec<String> = r.restores.iter().map(describe::restore_summary).collect();
            out.push_str(&format!("Data restored: {}\n", restored.join("; ")));
        }
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

/// The pre-rollout snapshots of every revision, under the table.
fn snapshots_table(entries: &[Entry], now: Timestamp, style: &Style) -> String {
    if entries.iter().all(|e| e.snapshots.is_empty()) {
        return String::new();
    }
    let mut t = Table::new([
        "REVISION",
        "SNAPSHOT",
        "COMPONENT",
        "PHASE",
        "SIZE",
        "DIGEST",
        "VERIFIED",
        "AGE",
        "NOTE",
    ])
    .flex("NOTE")
    .indent(2);
    for e in entries {
        for s in &e.snapshots {
            let st = s.status.as_ref();
            let verified = stack_snapshots::verification(st, now);
            let verified_color = verified.split(' ').next().and_then(phase_color);
            t.row([
                Cell::from(e.revision.to_string()),
                s.name.as_str().into(),
                s.component.as_str().into(),
                Cell::colored(s.phase.as_str(), phase_color(&s.phase)),
                stack_snapshots::size(st).into(),
                stack_snapshots::short_digest(st).into(),
                Cell::colored(verified, verified_color),
                age(s.created_time.as_ref(), now).into(),
                s.notes.join("; ").into(),
            ]);
        }
    }
    format!(
        "\nSnapshots taken before rollouts, under the revision whose data they hold:\n{}",
        t.render(style)
    )
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
    fn a_revision_rolled_out_by_canary_lists_its_steps() {
        let canary = "canary: {steps: [{setWeight: 25}, {analysis: {}}, {setWeight: 50}, {pause: {duration: 1m}}]}";
        let prev = comps(&format!("[{{name: api, template: {{spec: {{containers: [{{name: a, image: 'r/api:1'}}]}}}}, {canary}}}]"));
        let cur = comps(&format!("[{{name: api, template: {{spec: {{containers: [{{name: a, image: 'r/api:2'}}]}}}}, {canary}}}]"));
        assert_eq!(
            summarize(&prev, &cur),
            vec![
                "api: r/api:1 → 2",
                "api: canary steps setWeight 25%, analysis, setWeight 50%, pause 1m"
            ]
        );
        // Steps alone changed: no pod rolls, so no steps to list.
        let steps_only = comps("[{name: api, template: {spec: {containers: [{name: a, image: 'r/api:1'}]}}, canary: {steps: [{setWeight: 10}]}}]");
        assert_eq!(summarize(&prev, &steps_only), vec!["api: canary changed"]);
    }

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
            configs: BTreeMap::new(),
        }
    }

    #[test]
    fn the_referenced_workload_is_named() {
        let yaml = "[{name: web, templateFrom: {kind: Deployment, name: web}, template: {spec: {containers: [{name: app, image: 'x:1'}]}}}]";
        let e = entries(
            &rolled_back(),
            &[
                revision(1, yaml, "2024-05-01T09:00:00Z"),
                revision(2, &yaml.replace("x:1", "x:2"), "2024-05-01T10:00:00Z"),
            ],
            &[],
        );
        assert_eq!(
            e[0].changes,
            vec!["components: web (x:1)", "web: template from Deployment web"]
        );
        assert_eq!(e[1].changes, vec!["web: x:1 → 2"]);
    }

    #[test]
    fn a_config_change_reads_as_one() {
        let v = |hash: &str| ConfigVersion {
            kind: deployctl_api::ConfigKind::ConfigMap,
            name: "settings".into(),
            copy: format!("settings-{hash}"),
            hash: hash.into(),
        };
        let tpl = |copy: &str| {
            format!("[{{name: api, template: {{spec: {{containers: [{{name: app, image: 'x:1', envFrom: [{{configMapRef: {{name: {copy}}}}}]}}]}}}}}}]")
        };
        let mut r1 = revision(1, &tpl("settings-aaaaaaaaaa"), "2024-05-01T09:00:00Z");
        r1.configs.insert("api".into(), vec![v("aaaaaaaaaa")]);
        let mut r2 = revision(2, &tpl("settings-bbbbbbbbbb"), "2024-05-01T10:00:00Z");
        r2.configs.insert("api".into(), vec![v("bbbbbbbbbb")]);
        let e = entries(&rolled_back(), &[r1, r2], &[]);
        assert_eq!(
            e[0].changes,
            vec![
                "components: api (x:1)",
                "api: config ConfigMap settings@aaaaaaaa"
            ]
        );
        assert_eq!(
            e[1].changes,
            vec!["api: config ConfigMap settings@aaaaaaaa → bbbbbbbb"]
        );
        let json = serde_json::to_value(&e[1]).unwrap();
        assert_eq!(json["configs"]["api"][0]["copy"], "settings-bbbbbbbbbb");
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
        let e = entries(&stack, &revs, &[]);
        assert_eq!(e[0].changes[0], "components (older revisions pruned): db (deployctl.dev/demo-app:v1), api (deployctl.dev/demo-app:v1)");
        assert_eq!(e[1].marks, vec!["stable"]);
        assert_eq!(e[2].marks, vec!["current", "held back", "rolled back to 3"]);
        let out = render(&stack, &e, now(), &Style::PLAIN);
        insta::assert_snapshot!(out);
    }

    #[test]
    fn a_restore_marks_its_revision_data_restored_not_rolled_back() {
        let mut status = healthy().status.unwrap();
        status.last_rollback = Some(deployctl_api::RollbackRecord {
            from_revision: 2,
            to_revision: 2,
            reason: "restore of snapshot shop-db-m1 into component db requested".into(),
            started_at: k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                "2024-05-01T11:50:00Z".parse().unwrap(),
            ),
            completed_at: k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                "2024-05-01T11:50:20Z".parse().unwrap(),
            ),
            duration_seconds: 20.0,
            within_deadline: true,
            operation: Some("shop-restore-abcde".into()),
            trigger: deployctl_api::RollbackTrigger::Operation,
            restores: vec![deployctl_api::DataRestore {
                component: "db".into(),
                snapshot: "shop-db-m1".into(),
                phase: deployctl_api::RestorePhase::Restored,
                job: None,
                message: None,
            }],
        });
        assert_eq!(marks(2, &status), ["current", "stable", "data restored"]);
        let mut stack = healthy();
        stack.status = Some(status);
        let revs = vec![revision(2, V1, "2024-05-01T09:00:00Z")];
        let out = render(&stack, &entries(&stack, &revs, &[]), now(), &Style::PLAIN);
        assert!(
            out.contains(
                "\nLast rollback: revision 2 (data only), 9m40s ago, took 20.0s (operation \
                 shop-restore-abcde): restore of snapshot shop-db-m1 into component db \
                 requested\nData restored: snapshot shop-db-m1 into db\n"
            ),
            "{out}"
        );
    }

    fn snapshot(name: &str, created: &str, status: &str, reason: &str) -> StackSnapshot {
        serde_yaml_ng::from_str(&format!(
            "apiVersion: deployctl.dev/v1alpha1
kind: StackSnapshot
metadata: {{name: {name}, namespace: prod, creationTimestamp: '{created}'}}
spec: {{stack: shop, component: db, reason: {reason}}}
status: {status}
"
        ))
        .unwrap()
    }

    #[test]
    fn pre_rollout_snapshots_are_listed_under_the_revision_whose_data_they_hold() {
        let mut stack = rolled_back();
        stack
            .status
            .as_mut()
            .unwrap()
            .last_rollback
            .as_mut()
            .unwrap()
            .restores = vec![deployctl_api::DataRestore {
            component: "db".into(),
            snapshot: "shop-db-r3-1714564000".into(),
            phase: deployctl_api::RestorePhase::Restored,
            job: None,
            message: None,
        }];
        let digest = "c".repeat(64);
        let snaps = vec![
            snapshot(
                "shop-db-r3-1714564000",
                "2024-05-01T11:46:40Z",
                &format!("{{phase: Completed, revision: 3, digest: '{digest}', sizeBytes: 40960, lastVerifiedAt: '2024-05-01T11:55:00Z', verification: Verified}}"),
                "BeforeRollout",
            ),
            // Failed before its Job recorded the revision: the name says 3.
            snapshot(
                "shop-db-r3-1714560000",
                "2024-05-01T10:40:00Z",
                "{phase: Failed, message: the store is full}",
                "BeforeRollout",
            ),
            // Taken by hand: in `snapshot list`, not in the history.
            snapshot(
                "shop-db-m1714564100",
                "2024-05-01T11:48:20Z",
                "{phase: Completed, revision: 3}",
                "Manual",
            ),
            // Of a revision pruned from the history: not shown.
            snapshot(
                "shop-db-r1-1714400000",
                "2024-04-29T14:13:20Z",
                "{phase: Completed, revision: 1}",
                "BeforeRollout",
            ),
        ];
        let revs = vec![
            revision(2, V1, "2024-05-01T09:00:00Z"),
            revision(
                3,
                V1.replace("- {name: db", "- {name: db, replicas: 2")
                    .as_str(),
                "2024-05-01T10:00:00Z",
            ),
        ];
        let e = entries(&stack, &revs, &snaps);
        assert!(e[0].snapshots.is_empty());
        let names: Vec<&str> = e[1].snapshots.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["shop-db-r3-1714560000", "shop-db-r3-1714564000"]);
        assert_eq!(
            e[1].snapshots[1].notes,
            ["taken before the rollout of revision 4; restored when it rolled back"]
        );
        let json = serde_json::to_value(&e[1]).unwrap();
        assert_eq!(json["snapshots"][1]["digest"], digest);
        assert_eq!(json["snapshots"][1]["sizeBytes"], 40960);
        assert_eq!(json["snapshots"][1]["verification"], "Verified");
        assert!(serde_json::to_value(&e[0])
            .unwrap()
            .get("snapshots")
            .is_none());
        let out = render(&stack, &e, now(), &Style::PLAIN);
        insta::assert_snapshot!(out);
    }
}
