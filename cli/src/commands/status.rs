//! `deployctl status STACK`: one screen that tells the story of a stack: where it is and
//! why, every component with its gates, the rollout step in progress and for how long,
//! the rollback in progress and the last one, with the data snapshots taken before the
//! rollout and restored by the rollback. `--watch` keeps it live.

use super::{print, Ctx};
use crate::describe::{self, opt_num};
use crate::error::{one_line, CliError};
use crate::output::style::phase_color;
use crate::output::table::Cell;
use crate::output::time::{ago, human, since};
use crate::output::{Color, Style, Table};
use crate::stacks;
use crate::watch::{self, ObjectWatch, Seen};
use deployctl_api::{DataRestore, GatePhase, GateStatus, MeasurementOutcome, ProductionStack};
use k8s_openapi::jiff::Timestamp;
use kube::{Api, ResourceExt};
use std::io::IsTerminal;
use std::time::Duration;

/// Arguments of `status`.
#[derive(Debug, clap::Args)]
pub struct StatusArgs {
    /// The stack
    #[arg(value_name = "STACK")]
    pub stack: String,

    /// Keep the screen up to date until interrupted (Ctrl-C); off a terminal, print a new
    /// block for every change
    #[arg(short = 'w', long)]
    pub watch: bool,
}

/// Runs `status`.
pub async fn run(args: StatusArgs, ctx: &Ctx) -> Result<(), CliError> {
    let cluster = ctx.cluster().await?;
    let stack = stacks::get(&cluster, &args.stack).await?;
    if !args.watch {
        let mut text = render(&stack, Timestamp::now(), &ctx.style);
        // The config versions live in the revisions; the screen is still worth having
        // without them.
        match stacks::revisions(&cluster, &stack).await {
            Ok(revisions) => text.push_str(&config_section(&stack, &revisions)),
            Err(e) => eprintln!(
                "note: config versions are not shown: {}",
                e.to_string().lines().next().unwrap_or_default()
            ),
        }
        return print(&text);
    }
    let no_color = ctx.global.no_color;
    let terminal = std::io::stdout().is_terminal();
    let api: Api<ProductionStack> = Api::namespaced(cluster.client.clone(), &cluster.namespace);
    let mut watch = ObjectWatch::new(api, &args.stack, cluster.request_timeout);
    let mut current = stack;
    let mut problem: Option<String> = None;
    let mut last_block = String::new();
    let mut ticker = tokio::time::interval(Duration::from_secs(1));
    loop {
        if terminal {
            // Redrawn every second too, so the "for 42s" timings move.
            let style = Style::for_stdout(no_color);
            let mut screen = String::from("\x1b[H\x1b[2J");
            screen.push_str(&render(&current, Timestamp::now(), &style));
            screen.push_str(&style.paint(
                &format!(
                    "\nwatching {} (Ctrl-C to stop){}\n",
                    args.stack,
                    problem
                        .as_deref()
                        .map(|p| format!("; watch interrupted, retrying: {p}"))
                        .unwrap_or_default()
                ),
                Color::Dim,
            ));
            print(&screen)?;
        } else {
            // Off a terminal a block per change: a re-render with only time moving on
            // would be noise in a log.
            let block = render(&current, Timestamp::now(), &ctx.style);
            let key = change_key(&current);
            if key != last_block {
                print(&format!("{block}\n"))?;
                last_block = key;
            }
        }
        tokio::select! {
            _ = tokio::signal::ctrl_c() => return Ok(()),
            _ = ticker.tick(), if terminal => {}
            next = watch.next() => match next {
                Ok(Seen::Changed(s)) => {
                    current = s;
                    problem = None;
                }
                Ok(Seen::Deleted) => {
                    eprintln!("stack \"{}\" was deleted", args.stack);
                    return Ok(());
                }
                Err(e) => {
                    let message = watch::fatal(e, &cluster, stacks::STACKS, &format!("stack \"{}\"", args.stack))?;
                    if !terminal {
                        eprintln!("watch interrupted, retrying: {message}");
                    }
                    problem = Some(message);
                }
            },
        }
    }
}

/// What makes a new block worth printing off a terminal: the spec generation and the
/// status.
fn change_key(stack: &ProductionStack) -> String {
    format!(
        "{:?}/{}",
        stack.metadata.generation,
        serde_json::to_string(&stack.status).unwrap_or_default()
    )
}

/// The ConfigMaps and Secrets the current revision's components read (and the stable
/// revision's when it differs, as after a rollback): names and digests only.
pub fn config_section(stack: &ProductionStack, revisions: &[stacks::Revision]) -> String {
    let status = stack.status.clone().unwrap_or_default();
    let mut shown = vec![];
    let mut out = String::new();
    for (n, what) in [
        (status.current_revision, "current"),
        (status.stable_revision, "stable"),
    ] {
        let Some(n) = n else { continue };
        if shown.contains(&n) {
            continue;
        }
        shown.push(n);
        let Some(rev) = revisions.iter().find(|r| r.number == n) else {
            continue;
        };
        if rev.configs.is_empty() {
            continue;
        }
        let label = if status.current_revision == status.stable_revision {
            "current, stable".to_string()
        } else {
            what.to_string()
        };
        out.push_str(&format!("\nConfig of revision {n} ({label}):\n"));
        for (component, versions) in &rev.configs {
            let list: Vec<String> = versions
                .iter()
                .map(|v| format!("{} {}", v.kind, super::history::config_label(v)))
                .collect();
            out.push_str(&format!("  {component}: {}\n", list.join(", ")));
        }
    }
    out
}

/// Width of the labels of the header lines.
const LABEL: usize = 15;

fn kv(out: &mut String, label: &str, value: &str) {
    out.push_str(&format!("{:<LABEL$}{value}\n", format!("{label}:")));
}

/// The whole status screen.
pub fn render(stack: &ProductionStack, now: Timestamp, style: &Style) -> String {
    let mut out = String::new();
    let status = stack.status.clone().unwrap_or_default();
    let phase = describe::phase(stack);
    kv(&mut out, "Stack", &stack.name_any());
    kv(
        &mut out,
        "Namespace",
        &stack.namespace().unwrap_or_default(),
    );
    let phase_text = style.paint(&phase, phase_color(&phase).unwrap_or(Color::Bold));
    kv(&mut out, "Phase", &phase_text);
    if let Some(m) = status.message.as_deref().filter(|m| !m.is_empty()) {
        kv(&mut out, "Message", &one_line(m));
    }
    if stack.status.is_none() {
        kv(
            &mut out,
            "Status",
            "none yet: the controller has not reported on this stack (is it running?)",
        );
    }
    kv(
        &mut out,
        "Revisions",
        &format!(
            "current {}, stable {}",
            opt_num(status.current_revision),
            opt_num(status.stable_revision)
        ),
    );
    let generation = match (stack.metadata.generation, status.observed_generation) {
        (Some(g), Some(o)) if g == o => format!("{g} (observed)"),
        (Some(g), o) => style.paint(
            &format!(
                "{g} (controller has observed {}: this status may be stale)",
                opt_num(o)
            ),
            Color::Yellow,
        ),
        (None, _) => "-".into(),
    };
    kv(&mut out, "Generation", &generation);
    if let Some(ready) = &status.ready_components {
        kv(&mut out, "Ready", &format!("{ready} components"));
    }
    if !status.conditions.is_empty() {
        let conds: Vec<String> = status
            .conditions
            .iter()
            .map(|c| {
                // Ready and SnapshotsVerified are good news when True; Reconciling and
                // Stalled are the abnormal ones.
                let positive = matches!(
                    c.type_.as_str(),
                    "Ready" | deployctl_api::conditions::SNAPSHOTS_VERIFIED
                );
                let good = positive == (c.status == "True");
                let text = format!("{}={} ({})", c.type_, c.status, c.reason);
                style.paint(&text, if good { Color::Green } else { Color::Yellow })
            })
            .collect();
        kv(&mut out, "Conditions", &conds.join(", "));
    }
    if let Some(c) = status
        .condition(deployctl_api::conditions::SNAPSHOTS_VERIFIED)
        .filter(|c| c.status == "False")
    {
        kv(
            &mut out,
            "Verification",
            &style.paint(&one_line(&c.message), Color::Red),
        );
    }
    if let Some(repo) = &status.snapshot_repository {
        let line = crate::stack_snapshots::repository_line(repo, now);
        let color = if crate::stack_snapshots::repository_tight(repo) {
            Color::Yellow
        } else {
            Color::Dim
        };
        kv(&mut out, "Store", &style.paint(&line, color));
    }
    if let Some(r) = &status.rollout {
        let mut line = format!("revision {}", r.revision);
        if let Some(from) = r.from_revision {
            line.push_str(&format!(" from {from}"));
        }
        line.push_str(&format!(
            ", running for {}",
            human(since(&r.started_at, now))
        ));
        if let Some(c) = &r.component {
            line.push_str(&format!("; component {c}"));
            if let Some(step) = r.step {
                line.push_str(&format!(": {step:?}"));
                if let Some(a) = &r.analysis_started_at {
                    line.push_str(&format!(" for {}", human(since(a, now))));
                }
            }
            if let Some(t) = &r.component_started_at {
                line.push_str(&format!(" (applied {})", ago(t, now)));
            }
        } else if let Some(step) = r.step {
            line.push_str(&format!("; {step:?}"));
            if let Some(a) = &r.analysis_started_at {
                line.push_str(&format!(" for {}", human(since(a, now))));
            }
        }
        if r.promoted {
            line.push_str("; promoted: remaining analysis skipped");
        }
        kv(&mut out, "Rollout", &line);
        if !r.snapshots.is_empty() {
            let taken: Vec<String> = r
                .snapshots
                .iter()
                .map(|s| format!("{} ({})", s.snapshot, s.component))
                .collect();
            kv(
                &mut out,
                "Snapshots",
                &format!("taken before this rollout: {}", taken.join(", ")),
            );
        }
        if let Some(f) = &r.failure {
            kv(&mut out, "Failure", &style.paint(&one_line(f), Color::Red));
        }
    }
    if let Some(p) = &status.manual_pause {
        let mut line = format!("paused {}", ago(&p.at, now));
        if let Some(who) = &p.requested_by {
            line.push_str(&format!(" by {who}"));
        }
        line.push_str(&format!(" (operation {})", p.operation));
        if let Some(reason) = &p.reason {
            line.push_str(&format!(": {}", one_line(reason)));
        }
        kv(&mut out, "Paused", &style.paint(&line, Color::Yellow));
    }
    if let Some(rb) = &status.rollback {
        let mut line = format!(
            "{} in progress for {}",
            describe::rollback_span(rb.from_revision, rb.to_revision),
            human(since(&rb.started_at, now))
        );
        if let Some(c) = &rb.component {
            line.push_str(&format!(", component {c}"));
        }
        line.push_str(&format!(
            " ({})",
            describe::rollback_cause(rb.operation.as_deref(), rb.trigger)
        ));
        line.push_str(&format!(": {}", one_line(&rb.reason)));
        kv(&mut out, "Rollback", &style.paint(&line, Color::Yellow));
        restores(&mut out, "Data restore", &rb.restores, style);
    }
    if let Some(h) = &status.hold {
        kv(
            &mut out,
            "Holding",
            &format!(
                "revision {}; revision {} is held back until the spec changes or a retry: {}",
                h.revision,
                h.held_back,
                one_line(&h.reason)
            ),
        );
    }
    if let Some(r) = &status.last_rollback {
        let deadline = stack.spec.rollout.rollback_deadline();
        let within = if r.within_deadline {
            format!("within the {deadline} deadline")
        } else {
            style.paint(&format!("missed the {deadline} deadline"), Color::Red)
        };
        let by = describe::rollback_cause(r.operation.as_deref(), r.trigger);
        kv(
            &mut out,
            "Last rollback",
            &format!(
                "{}, {}, took {} ({within}; {by}): {}",
                describe::rollback_span(r.from_revision, r.to_revision),
                ago(&r.completed_at, now),
                deployctl_api::duration::human(Duration::from_secs_f64(
                    r.duration_seconds.max(0.0)
                )),
                one_line(&r.reason)
            ),
        );
        restores(&mut out, "Data restored", &r.restores, style);
    }

    if !status.components.is_empty() {
        out.push_str("\nComponents:\n");
        let mut t = Table::new(["NAME", "REVISION", "PHASE", "READY", "UPDATED", "MESSAGE"])
            .flex("MESSAGE")
            .indent(2);
        for c in &status.components {
            let phase = c.phase.as_str();
            t.row([
                Cell::from(c.name.as_str()),
                opt_num(c.revision).into(),
                Cell::colored(phase, phase_color(phase)),
                format!("{}/{}", c.ready_replicas, c.replicas).into(),
                c.updated_replicas.to_string().into(),
                component_message(c).into(),
            ]);
        }
        out.push_str(&t.render(style));
        for c in status.components.iter().filter(|c| !c.gates.is_empty()) {
            out.push_str(&format!("\nGates of {}:\n", c.name));
            out.push_str(&gates_table(&c.gates, now, style));
        }
    } else if !stack.spec.components.is_empty() {
        let names: Vec<&str> = stack
            .spec
            .components
            .iter()
            .map(|c| c.name.as_str())
            .collect();
        out.push_str(&format!(
            "\nComponents:    {} (no status reported yet)\n",
            names.join(", ")
        ));
    }
    let adopted: Vec<String> = stack
        .spec
        .components
        .iter()
        .filter_map(|c| {
            let f = c.template_from.as_ref()?;
            Some(format!(
                "  {}: {} {} (its template, recorded per revision; deployctl scales it to 0 once {} serves)\n",
                c.name, f.kind, f.name, c.name
            ))
        })
        .collect();
    if !adopted.is_empty() {
        out.push_str("\nTemplates from:\n");
        out.push_str(&adopted.concat());
    }
    if !status.gates.is_empty() {
        out.push_str("\nStack gates:\n");
        out.push_str(&gates_table(&status.gates, now, style));
    }
    out
}

/// A component's message, after its canary when one runs (`canary 25% (step 2/4): 1 new,
/// 3 stable`) and who owns its replica count when an HPA does (READY then counts against
/// the HPA's number, not the spec's).
fn component_message(c: &deployctl_api::ComponentStatus) -> String {
    let mut parts = Vec::new();
    if let Some(k) = &c.canary {
        let step = if k.step > k.steps {
            "steps done".to_string()
        } else {
            format!("step {}/{}", k.step, k.steps)
        };
        parts.push(format!(
            "canary {}% ({step}): {} new, {} stable",
            k.weight, k.canary_replicas, k.stable_replicas
        ));
    }
    if let Some(hpa) = &c.autoscaled_by {
        parts.push(format!("autoscaled by {hpa}"));
    }
    let message = c.message.as_deref().map(one_line).unwrap_or_default();
    if !message.is_empty() {
        parts.push(message);
    }
    parts.join("; ")
}

/// Which snapshot is (being) restored into which component, each coloured by its phase.
fn restores(out: &mut String, label: &str, restores: &[DataRestore], style: &Style) {
    if restores.is_empty() {
        return;
    }
    let text: Vec<String> = restores
        .iter()
        .map(|r| style.paint(&describe::restore_summary(r), describe::restore_color(r)))
        .collect();
    kv(out, label, &text.join("; "));
}

/// A table of gates: phase, counts, the last measurements as marks (oldest first) with
/// the age of the newest, and the message.
fn gates_table(gates: &[GateStatus], now: Timestamp, style: &Style) -> String {
    let mut t = Table::new(["GATE", "PHASE", "OK", "FAILED", "ERRORS", "LAST", "MESSAGE"])
        .flex("MESSAGE")
        .indent(2);
    for g in gates {
        let phase = g.phase.as_str();
        let marks: String = g
            .measurements
            .iter()
            .rev()
            .take(5)
            .rev()
            .map(|m| match m.outcome {
                MeasurementOutcome::Success => '✓',
                MeasurementOutcome::Failure => '✗',
                MeasurementOutcome::Error => '!',
            })
            .collect();
        let last = match g.measurements.last() {
            Some(m) => {
                let mut s = format!("{marks} {}", ago(&m.at, now));
                if let Some(v) = m.value {
                    s.push_str(&format!(" ({v})"));
                }
                s
            }
            None => "-".into(),
        };
        // The gate's own verdict first; the newest measurement's detail says what it saw.
        let mut message: Vec<String> = vec![];
        if let Some(m) = g.message.as_deref().filter(|m| !m.is_empty()) {
            message.push(one_line(m));
        }
        if let Some(m) = g
            .measurements
            .last()
            .and_then(|m| m.message.as_deref())
            .filter(|m| !m.is_empty())
        {
            message.push(format!("last: {}", one_line(m)));
        }
        let color = match g.phase {
            GatePhase::Failed | GatePhase::Inconclusive => Some(Color::Red),
            _ => None,
        };
        t.row([
            Cell::from(g.name.as_str()),
            Cell::colored(phase, phase_color(phase)),
            g.successes.to_string().into(),
            g.failures.to_string().into(),
            g.errors.to_string().into(),
            last.into(),
            Cell::colored(message.join("; "), color),
        ]);
    }
    t.render(style)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::describe::fixtures::*;

    #[test]
    fn a_component_from_an_existing_workload_names_it() {
        let mut stack = progressing();
        assert!(!render(&stack, now(), &Style::PLAIN).contains("Templates from:"));
        stack.spec.components[0].template_from = Some(deployctl_api::TemplateFrom {
            kind: deployctl_api::WorkloadKind::Deployment,
            name: "web".into(),
        });
        let name = stack.spec.components[0].name.clone();
        let out = render(&stack, now(), &Style::PLAIN);
        assert!(
            out.contains(&format!("Templates from:\n  {name}: Deployment web (")),
            "{out}"
        );
    }

    #[test]
    fn config_versions_of_the_current_and_the_stable_revision() {
        let stack = rolled_back();
        let st = stack.status.clone().unwrap();
        let (cur, stable) = (st.current_revision.unwrap(), st.stable_revision.unwrap());
        assert_ne!(cur, stable);
        let rev = |n: i64, hash: &str| stacks::Revision {
            number: n,
            name: format!("shop-{n}"),
            hash: None,
            generation: None,
            created: None,
            components: Some(vec![]),
            configs: [(
                "api".to_string(),
                vec![deployctl_api::ConfigVersion {
                    kind: deployctl_api::ConfigKind::Secret,
                    name: "creds".into(),
                    copy: format!("creds-{hash}"),
                    hash: hash.into(),
                }],
            )]
            .into(),
        };
        let out = config_section(&stack, &[rev(stable, "1111111111"), rev(cur, "2222222222")]);
        assert_eq!(
            out,
            format!(
                "\nConfig of revision {cur} (current):\n  api: Secret creds@22222222\n\nConfig of revision {stable} (stable):\n  api: Secret creds@11111111\n"
            )
        );
        assert_eq!(config_section(&stack, &[]), "", "nothing without config");
    }

    #[test]
    fn the_story_of_a_rollout_in_progress() {
        let out = render(&progressing(), now(), &Style::PLAIN);
        insta::assert_snapshot!(out);
    }

    #[test]
    fn a_canary_shows_its_weight_and_step() {
        let mut s = progressing();
        let st = s.status.as_mut().unwrap();
        let api = st.components.iter_mut().last().unwrap();
        api.canary = Some(deployctl_api::CanaryStatus {
            step: 2,
            steps: 4,
            weight: 25,
            revision: 3,
            canary_replicas: 1,
            stable_replicas: 3,
        });
        api.message = Some("analysing http".into());
        // Canary steps set the replicas themselves: never with an autoscaler.
        api.autoscaled_by = None;
        let out = render(&s, now(), &Style::PLAIN);
        assert!(
            out.contains("canary 25% (step 2/4): 1 new, 3 stable; analysing http"),
            "{out}"
        );
        insta::assert_snapshot!(out);
    }

    #[test]
    fn a_rolled_back_stack_shows_the_hold_and_the_missed_deadline() {
        let out = render(&rolled_back(), now(), &Style::PLAIN);
        insta::assert_snapshot!(out);
    }

    #[test]
    fn a_rollback_names_the_snapshots_it_restores_and_the_last_one_restored() {
        let out = render(
            &crate::describe::data_fixtures::rolling_back_with_data(),
            now(),
            &Style::PLAIN,
        );
        insta::assert_snapshot!(out);
    }

    #[test]
    fn the_snapshot_store_shows_use_room_quota_and_the_next_rollouts_estimate() {
        let out = render(
            &crate::describe::data_fixtures::stalled_for_room(),
            now(),
            &Style::PLAIN,
        );
        let line = out
            .lines()
            .find(|l| l.starts_with("Store:"))
            .unwrap_or_else(|| panic!("no store line in\n{out}"));
        assert_eq!(
            line,
            "Store:         4.5 GiB used, 512 MiB left (quota 5.0 GiB; 7.0 GiB free on the claim of 10 GiB); \
             next rollout adds about 600 MiB (not counting search); measured 3m ago by snapshot Job shop-db-snap-1a2b3c4d-0"
        );
        assert!(
            out.contains("Conditions:    Stalled=True (SnapshotStoreFull)"),
            "{out}"
        );
        // Coloured as a warning: the next rollout does not fit.
        let style = Style {
            color: true,
            width: None,
        };
        let coloured = render(
            &crate::describe::data_fixtures::stalled_for_room(),
            now(),
            &style,
        );
        let yellow = style.paint("4.5 GiB used", Color::Yellow);
        assert!(
            coloured.contains(&yellow[..yellow.len() - 4]),
            "{coloured:?}"
        );
    }

    #[test]
    fn a_rollout_names_its_pre_rollout_snapshots() {
        let out = render(
            &crate::describe::data_fixtures::snapshotting(),
            now(),
            &Style::PLAIN,
        );
        assert!(
            out.contains("Rollout:       revision 5 from 4, running for 10s; Snapshotting\n"),
            "{out}"
        );
        assert!(
            out.contains("Snapshots:     taken before this rollout: shop-db-r4-1714564790 (db)\n"),
            "{out}"
        );
    }

    #[test]
    fn a_stack_without_status_says_so() {
        let mut s = healthy();
        s.status = None;
        let out = render(&s, now(), &Style::PLAIN);
        assert!(out.contains("Phase:         Unknown\n"), "{out}");
        assert!(out.contains("the controller has not reported"), "{out}");
        assert!(
            out.contains("Components:    db (no status reported yet)"),
            "{out}"
        );
    }

    #[test]
    fn a_stale_status_is_flagged() {
        let mut s = healthy();
        s.metadata.generation = Some(3);
        let out = render(&s, now(), &Style::PLAIN);
        assert!(
            out.contains("Generation:    3 (controller has observed 2: this status may be stale)"),
            "{out}"
        );
    }

    #[test]
    fn the_status_fits_the_width() {
        let style = Style {
            color: false,
            width: Some(80),
        };
        let out = render(&progressing(), now(), &style);
        for line in out.lines().filter(|l| l.starts_with("  ")) {
            assert!(
                unicode_width::UnicodeWidthStr::width(line) <= 80,
                "too wide: {line}"
            );
        }
    }

    #[test]
    fn changes_are_keyed_on_generation_and_status_only() {
        let a = progressing();
        let mut b = a.clone();
        b.metadata.resource_version = Some("99".into());
        assert_eq!(change_key(&a), change_key(&b));
        b.status.as_mut().unwrap().message = Some("other".into());
        assert_ne!(change_key(&a), change_key(&b));
    }
}
