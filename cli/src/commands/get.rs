//! `deployctl get [STACK]` and `deployctl list`: stacks as a table, or as the API server
//! returns them (`-o json|yaml`), so scripts get the documented API objects unchanged.

use super::{print, Ctx};
use crate::args::{Output, OutputFormat};
use crate::describe::{self, opt_num};
use crate::error::CliError;
use crate::output::style::phase_color;
use crate::output::table::Cell;
use crate::output::{time, Style, Table};
use crate::stacks;
use deployctl_api::ProductionStack;
use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;

/// Arguments of `get`.
#[derive(Debug, clap::Args)]
pub struct GetArgs {
    /// The stack to show; all stacks of the namespace when omitted
    #[arg(value_name = "STACK")]
    pub stack: Option<String>,

    /// List stacks of every namespace
    #[arg(short = 'A', long, conflicts_with = "stack")]
    pub all_namespaces: bool,

    /// Only stacks whose labels match this selector (e.g. team=shop,tier!=batch)
    #[arg(short = 'l', long, value_name = "SELECTOR", conflicts_with = "stack")]
    pub selector: Option<String>,

    /// Output format: wide, json, yaml (the API objects unchanged), name, or
    /// jsonpath=TEMPLATE (kubectl's templates, e.g. jsonpath='{.status.phase}')
    #[arg(short = 'o', long, value_name = "FORMAT")]
    pub output: Option<Output>,
}

/// Arguments of `list`.
#[derive(Debug, clap::Args)]
pub struct ListArgs {
    /// List stacks of every namespace
    #[arg(short = 'A', long)]
    pub all_namespaces: bool,

    /// Only stacks whose labels match this selector (e.g. team=shop,tier!=batch)
    #[arg(short = 'l', long, value_name = "SELECTOR")]
    pub selector: Option<String>,

    /// Output format: wide, json, yaml (the API objects unchanged), name, or
    /// jsonpath=TEMPLATE (kubectl's templates, e.g. jsonpath='{.items[*].metadata.name}')
    #[arg(short = 'o', long, value_name = "FORMAT")]
    pub output: Option<Output>,
}

/// Runs `get`.
pub async fn run_get(args: GetArgs, ctx: &Ctx) -> Result<(), CliError> {
    let Some(name) = args.stack else {
        return run_list(
            ListArgs {
                all_namespaces: args.all_namespaces,
                selector: args.selector,
                output: args.output,
            },
            ctx,
        )
        .await;
    };
    let cluster = ctx.cluster().await?;
    let raw = stacks::get_raw(&cluster, &name).await?;
    let wide = match args.output {
        Some(Output::Format(OutputFormat::Json)) => return print(&to_json(&raw)),
        Some(Output::Format(OutputFormat::Yaml)) => return print(&to_yaml(&raw)?),
        Some(Output::Name) => return print(&names(std::slice::from_ref(&raw))),
        Some(Output::JsonPath(t)) => return print(&jsonpath(&t, &raw)?),
        Some(Output::Format(f)) => Some(f),
        None => None,
    };
    let stack: ProductionStack = serde_json::from_value(raw).map_err(|e| CliError::Api {
        action: format!("reading stack \"{name}\""),
        message: format!("the object does not match this deployctl's API: {e}"),
    })?;
    let opts = TableOptions {
        wide: wide == Some(OutputFormat::Wide),
        namespaces: false,
    };
    print(&table(&[stack], opts, Timestamp::now(), &ctx.style))
}

/// Runs `list`.
pub async fn run_list(args: ListArgs, ctx: &Ctx) -> Result<(), CliError> {
    let cluster = ctx.cluster().await?;
    let raw = stacks::list_raw(&cluster, args.all_namespaces, args.selector.as_deref()).await?;
    let wide = match args.output {
        Some(Output::Format(OutputFormat::Json)) => return print(&to_json(&raw)),
        Some(Output::Format(OutputFormat::Yaml)) => return print(&to_yaml(&raw)?),
        Some(Output::Name) => {
            let items = raw["items"].as_array().cloned().unwrap_or_default();
            return print(&names(&items));
        }
        Some(Output::JsonPath(t)) => return print(&jsonpath(&t, &raw)?),
        Some(Output::Format(f)) => Some(f),
        None => None,
    };
    let items = stacks::items(&raw);
    if items.is_empty() {
        // Like kubectl: the table's absence is explained on stderr, stdout stays empty for
        // scripts.
        if args.all_namespaces {
            eprintln!("No stacks found.");
        } else {
            eprintln!("No stacks found in namespace \"{}\".", cluster.namespace);
        }
        return Ok(());
    }
    let opts = TableOptions {
        wide: wide == Some(OutputFormat::Wide),
        namespaces: args.all_namespaces,
    };
    print(&table(&items, opts, Timestamp::now(), &ctx.style))
}

/// `-o name`: what kubectl prints, `<resource>.<group>/<name>`, one per line.
fn names(objects: &[serde_json::Value]) -> String {
    objects
        .iter()
        .filter_map(|o| o["metadata"]["name"].as_str())
        .map(|n| format!("productionstack.deployctl.dev/{n}\n"))
        .collect()
}

fn jsonpath(
    t: &crate::output::jsonpath::Template,
    v: &serde_json::Value,
) -> Result<String, CliError> {
    t.render(v).map_err(|e| CliError::Failed {
        message: format!("applying the jsonpath template: {e}"),
    })
}

fn to_json(v: &serde_json::Value) -> String {
    let mut s = serde_json::to_string_pretty(v).expect("JSON values serialize");
    s.push('\n');
    s
}

fn to_yaml(v: &serde_json::Value) -> Result<String, CliError> {
    serde_yaml_ng::to_string(v).map_err(|e| CliError::Api {
        action: "writing YAML".into(),
        message: e.to_string(),
    })
}

/// Which columns the table has.
#[derive(Clone, Copy, Debug, Default)]
pub struct TableOptions {
    /// `-o wide`: rollout step, hold and generations too.
    pub wide: bool,
    /// `-A`: a NAMESPACE column first.
    pub namespaces: bool,
}

/// The stacks table: NAME, PHASE, REVISION (current), STABLE, READY, LAST ROLLBACK, AGE,
/// MESSAGE (truncated to fit the width).
pub fn table(
    stacks: &[ProductionStack],
    opts: TableOptions,
    now: Timestamp,
    style: &Style,
) -> String {
    let mut headers = vec![];
    if opts.namespaces {
        headers.push("NAMESPACE");
    }
    headers.extend([
        "NAME",
        "PHASE",
        "REVISION",
        "STABLE",
        "READY",
        "LAST ROLLBACK",
        "AGE",
    ]);
    if opts.wide {
        headers.extend(["ROLLOUT", "HOLD", "GENERATION"]);
    }
    headers.push("MESSAGE");
    let mut t = Table::new(headers).flex("MESSAGE");
    for s in stacks {
        let status = s.status.clone().unwrap_or_default();
        let phase = describe::phase(s);
        let mut row: Vec<Cell> = vec![];
        if opts.namespaces {
            row.push(s.namespace().unwrap_or_default().into());
        }
        row.push(s.name_any().into());
        row.push(Cell::colored(phase.clone(), phase_color(&phase)));
        row.push(opt_num(status.current_revision).into());
        row.push(opt_num(status.stable_revision).into());
        row.push(
            status
                .ready_components
                .clone()
                .unwrap_or_else(|| "-".into())
                .into(),
        );
        row.push(
            status
                .last_rollback
                .as_ref()
                .map(|r| describe::rollback_short(r, now))
                .unwrap_or_else(|| "-".into())
                .into(),
        );
        row.push(time::age(s.metadata.creation_timestamp.as_ref(), now).into());
        if opts.wide {
            row.push(rollout_short(&status).into());
            row.push(
                status
                    .hold
                    .as_ref()
                    .map(|h| format!("{} (holds back {})", h.revision, h.held_back))
                    .unwrap_or_else(|| "-".into())
                    .into(),
            );
            row.push(
                format!(
                    "{}/{}",
                    opt_num(status.observed_generation),
                    opt_num(s.metadata.generation)
                )
                .into(),
            );
        }
        let message = status
            .message
            .as_deref()
            .map(crate::error::one_line)
            .unwrap_or_default();
        row.push(message.into());
        t.row(row);
    }
    t.render(style)
}

/// `4: api Analysing`, or `rollback 4→3: db`, or `restore 3: db`, or `-`.
fn rollout_short(status: &deployctl_api::ProductionStackStatus) -> String {
    if let Some(rb) = &status.rollback {
        let mut s = if rb.from_revision == rb.to_revision {
            format!("restore {}", rb.to_revision)
        } else {
            format!("rollback {}→{}", rb.from_revision, rb.to_revision)
        };
        if let Some(c) = &rb.component {
            s.push_str(&format!(": {c}"));
        }
        return s;
    }
    let Some(r) = &status.rollout else {
        return "-".into();
    };
    let mut s = r.revision.to_string();
    if let Some(c) = &r.component {
        s.push_str(&format!(": {c}"));
    }
    if let Some(step) = r.step {
        s.push_str(&format!(" {step:?}"));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::describe::fixtures::*;

    fn plain(width: Option<usize>) -> Style {
        Style {
            color: false,
            width,
        }
    }

    #[test]
    fn the_table_shows_revisions_readiness_and_the_last_rollback() {
        let out = table(
            &[progressing(), healthy()],
            TableOptions::default(),
            now(),
            &plain(None),
        );
        let expected = "\
NAME   PHASE         REVISION   STABLE   READY   LAST ROLLBACK   AGE   MESSAGE
shop   Progressing   4          3        1/2     3→2 118m ago    24h   rolling out revision 4: component api
shop   Healthy       2          2        1/1     -               60m   every component is Available on revision 2
";
        assert_eq!(out, expected);
    }

    #[test]
    fn the_message_is_truncated_to_the_terminal_width() {
        let out = table(
            &[progressing(), healthy()],
            TableOptions::default(),
            now(),
            &plain(Some(100)),
        );
        for line in out.lines() {
            assert!(
                unicode_width::UnicodeWidthStr::width(line) <= 100,
                "too wide: {line}"
            );
        }
        assert!(out.contains("every component is Available…"), "{out}");
    }

    #[test]
    fn wide_and_all_namespaces_add_columns() {
        let out = table(
            &[progressing(), rolled_back()],
            TableOptions {
                wide: true,
                namespaces: true,
            },
            now(),
            &plain(None),
        );
        let header = out.lines().next().unwrap();
        assert!(header.starts_with("NAMESPACE   NAME"), "{header}");
        assert!(header.contains("ROLLOUT"));
        assert!(out.contains("4: api Analysing"), "{out}");
        assert!(out.contains("3 (holds back 4)"), "{out}");
        assert!(out.contains("7/7"), "{out}");
    }

    #[test]
    fn a_stack_without_status_shows_unknown() {
        let mut s = healthy();
        s.status = None;
        let out = table(&[s], TableOptions::default(), now(), &plain(None));
        assert!(
            out.lines()
                .nth(1)
                .unwrap()
                .starts_with("shop   Unknown   -"),
            "{out}"
        );
    }
}
