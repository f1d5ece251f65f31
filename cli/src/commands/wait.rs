//! `deployctl wait STACK --for ...`: for pipelines. Exits 0 once the stack is healthy,
//! rolled back, ready or in a phase; 3 on timeout and 4 when it rolled back instead of
//! becoming healthy, each with a one-line reason. Only a status that describes the
//! current spec (`observedGeneration == generation`) counts, so a stale one never
//! satisfies it.

use super::Ctx;
use crate::args::Timeout;
use crate::cluster::Cluster;
use crate::describe;
use crate::error::{one_line, CliError};
use crate::output::progress::Progress;
use crate::stacks;
use crate::watch::{self, Ended, Step};
use deployctl_api::{ProductionStack, StackPhase};
use kube::{Api, ResourceExt};
use std::str::FromStr;

/// Arguments of `wait`.
#[derive(Debug, clap::Args)]
#[command(after_help = "Exit codes:
  0  the stack reached the condition (on a status of its current generation)
  1  error, or the stack can no longer get there (Invalid, deleted)
  3  timed out; the message says where the stack is
  4  waiting for healthy or ready, the stack rolled back instead

Example (a pipeline step after applying a new spec):
  deployctl wait shop --for healthy --timeout 10m")]
pub struct WaitArgs {
    /// The stack
    #[arg(value_name = "STACK")]
    pub stack: String,

    /// What to wait for: healthy, rolled-back, ready (the Ready condition), or
    /// phase=PHASE (e.g. phase=Paused)
    #[arg(long = "for", value_name = "CONDITION")]
    pub condition: Condition,

    /// Give up after this long (e.g. 90s, 5m, 1h) and exit 3
    #[arg(long, value_name = "DURATION", default_value = "5m")]
    pub timeout: Timeout,
}

/// What to wait for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Condition {
    /// Phase `Healthy`.
    Healthy,
    /// Phase `RolledBack`.
    RolledBack,
    /// Condition `Ready` is `True`.
    Ready,
    /// Any phase.
    Phase(StackPhase),
}

impl FromStr for Condition {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "healthy" => Ok(Condition::Healthy),
            "rolled-back" => Ok(Condition::RolledBack),
            "ready" => Ok(Condition::Ready),
            other => {
                let Some(phase) = other.strip_prefix("phase=") else {
                    return Err("expected healthy, rolled-back, ready or phase=PHASE".to_string());
                };
                StackPhase::ALL
                    .iter()
                    .find(|p| p.as_str().eq_ignore_ascii_case(phase))
                    .map(|p| Condition::Phase(*p))
                    .ok_or_else(|| {
                        let all: Vec<&str> = StackPhase::ALL.iter().map(|p| p.as_str()).collect();
                        format!("unknown phase {phase:?}; phases are {}", all.join(", "))
                    })
            }
        }
    }
}

impl std::fmt::Display for Condition {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Condition::Healthy => f.write_str("healthy"),
            Condition::RolledBack => f.write_str("rolled back"),
            Condition::Ready => f.write_str("ready"),
            Condition::Phase(p) => write!(f, "in phase {p}"),
        }
    }
}

/// Judges one version of the stack against the condition.
pub fn evaluate(stack: &ProductionStack, condition: &Condition) -> Step<()> {
    if !describe::is_current(stack) {
        return Step::Continue;
    }
    let name = stack.name_any();
    let status = stack.status.clone().unwrap_or_default();
    let phase = status.phase;
    let reached = match condition {
        Condition::Healthy => phase == Some(StackPhase::Healthy),
        Condition::RolledBack => phase == Some(StackPhase::RolledBack),
        Condition::Ready => {
            let generation = stack.metadata.generation;
            status
                .condition(deployctl_api::conditions::READY)
                .is_some_and(|c| {
                    c.status == "True"
                        && (c.observed_generation.is_none() || c.observed_generation == generation)
                })
        }
        Condition::Phase(p) => phase == Some(*p),
    };
    if reached {
        return Step::Done(());
    }
    let wants_health = matches!(condition, Condition::Healthy | Condition::Ready);
    match phase {
        Some(StackPhase::RolledBack) if wants_health => Step::Fail(rolled_back_error(stack)),
        // No way out of these without a person changing the spec (which would make the
        // status stale again) or the stack going away.
        Some(StackPhase::Invalid) => Step::Fail(CliError::Hopeless {
            message: format!(
                "stack \"{name}\" is Invalid and will not become {condition}: {}; fix the \
                 spec",
                status.message.as_deref().map(one_line).unwrap_or_default()
            ),
        }),
        Some(StackPhase::Terminating) => Step::Fail(CliError::Hopeless {
            message: format!("stack \"{name}\" is being deleted"),
        }),
        _ => Step::Continue,
    }
}

/// The exit-4 error: which rollback, and why.
pub fn rolled_back_error(stack: &ProductionStack) -> CliError {
    let status = stack.status.clone().unwrap_or_default();
    let detail = match &status.last_rollback {
        Some(r) => format!(
            " from revision {} to {}: {}",
            r.from_revision,
            r.to_revision,
            one_line(&r.reason)
        ),
        None => status
            .message
            .as_deref()
            .map(|m| format!(": {}", one_line(m)))
            .unwrap_or_default(),
    };
    CliError::RolledBack {
        message: format!("stack \"{}\" rolled back{detail}", stack.name_any()),
    }
}

/// The exit-3 error.
pub fn timed_out(
    name: &str,
    timeout: &Timeout,
    what: &str,
    last: Option<&ProductionStack>,
) -> CliError {
    let state = last
        .map(describe::state)
        .unwrap_or_else(|| "not seen".to_string());
    CliError::TimedOut {
        message: format!(
            "timed out after {timeout} waiting for stack \"{name}\" to be {what}; it is {state}"
        ),
    }
}

/// Waits on `stack` (already read) until `check` is done, with a spinner; shared with
/// the operation commands' `--wait`.
pub async fn wait_stack(
    cluster: &Cluster,
    stack: ProductionStack,
    timeout: &Timeout,
    what: &str,
    deadline: tokio::time::Instant,
    mut check: impl FnMut(&ProductionStack) -> Step<()>,
) -> Result<ProductionStack, CliError> {
    let name = stack.name_any();
    let progress = Progress::start(format!(
        "waiting for stack {name} to be {what}: {}",
        describe::state(&stack)
    ));
    let api: Api<ProductionStack> = Api::namespaced(cluster.client.clone(), &cluster.namespace);
    let mut last_seen = stack.clone();
    let result = watch::until(
        cluster,
        api,
        stacks::STACKS,
        &name,
        Some(stack),
        deadline,
        |s: &ProductionStack| {
            progress.set(format!(
                "waiting for stack {name} to be {what}: {}",
                describe::state(s)
            ));
            last_seen = s.clone();
            check(s)
        },
        |problem| progress.set(format!("watch interrupted, retrying: {problem}")),
    )
    .await;
    progress.finish();
    match result? {
        Ok(()) => Ok(last_seen),
        Err(Ended::TimedOut(last)) => Err(timed_out(&name, timeout, what, last.as_ref())),
        Err(Ended::Deleted(_)) => Err(CliError::Hopeless {
            message: format!("stack \"{name}\" was deleted while waiting for it to be {what}"),
        }),
    }
}

/// Runs `wait`.
pub async fn run(args: WaitArgs, ctx: &Ctx) -> Result<(), CliError> {
    let deadline = tokio::time::Instant::now() + args.timeout.duration;
    let cluster = ctx.cluster().await?;
    let stack = stacks::get(&cluster, &args.stack).await?;
    let what = args.condition.to_string();
    let condition = args.condition.clone();
    let done = wait_stack(&cluster, stack, &args.timeout, &what, deadline, |s| {
        evaluate(s, &condition)
    })
    .await?;
    // Pipelines log this; the exit code is what they act on.
    super::print(&format!(
        "stack \"{}\" is {what}: {}\n",
        args.stack,
        describe::state(&done)
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::describe::fixtures::*;

    fn done(s: Step<()>) -> bool {
        matches!(s, Step::Done(()))
    }

    #[test]
    fn conditions_parse() {
        assert_eq!("healthy".parse::<Condition>().unwrap(), Condition::Healthy);
        assert_eq!(
            "phase=paused".parse::<Condition>().unwrap(),
            Condition::Phase(StackPhase::Paused)
        );
        assert!("phase=Nope"
            .parse::<Condition>()
            .unwrap_err()
            .contains("phases are Progressing"));
        assert!("green".parse::<Condition>().is_err());
    }

    #[test]
    fn healthy_is_reached_only_on_a_current_status() {
        let s = healthy();
        assert!(done(evaluate(&s, &Condition::Healthy)));
        let mut stale = s.clone();
        stale.metadata.generation = Some(3);
        assert!(matches!(
            evaluate(&stale, &Condition::Healthy),
            Step::Continue
        ));
    }

    #[test]
    fn a_rollback_ends_a_wait_for_health_with_exit_4() {
        match evaluate(&rolled_back(), &Condition::Healthy) {
            Step::Fail(e) => {
                assert_eq!(e.exit_code(), 4);
                assert_eq!(
                    e.to_string(),
                    "stack \"shop\" rolled back from revision 4 to 3: gate http-ok failed"
                );
            }
            other => panic!("expected a failure, got {other:?}"),
        }
        assert!(done(evaluate(&rolled_back(), &Condition::RolledBack)));
    }

    #[test]
    fn invalid_stacks_fail_fast() {
        let mut s = healthy();
        let st = s.status.as_mut().unwrap();
        st.phase = Some(StackPhase::Invalid);
        st.message = Some("spec.components[1].dependsOn: unknown component \"dbb\"".into());
        match evaluate(&s, &Condition::Healthy) {
            Step::Fail(e) => {
                assert_eq!(e.exit_code(), 1);
                assert!(e.to_string().contains("unknown component"), "{e}");
            }
            other => panic!("expected a failure, got {other:?}"),
        }
    }

    #[test]
    fn ready_reads_the_condition() {
        let mut s = progressing();
        assert!(matches!(evaluate(&s, &Condition::Ready), Step::Continue));
        let st = s.status.as_mut().unwrap();
        st.conditions[0].status = "True".into();
        assert!(done(evaluate(&s, &Condition::Ready)));
        assert!(done(evaluate(
            &s,
            &Condition::Phase(StackPhase::Progressing)
        )));
    }

    #[test]
    fn the_timeout_message_says_where_the_stack_is() {
        let t: Timeout = "5m".parse().unwrap();
        let e = timed_out("shop", &t, "healthy", Some(&progressing()));
        assert_eq!(e.exit_code(), 3);
        assert_eq!(
            e.to_string(),
            "timed out after 5m waiting for stack \"shop\" to be healthy; it is Progressing: \
             rolling out revision 4: component api"
        );
    }
}
