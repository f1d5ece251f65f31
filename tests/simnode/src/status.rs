//! Pod status as a kubelet reports it, built from the pod worker's view of its
//! containers: phase (the kubelet's `getPhase` rules), the `Initialized`,
//! `ContainersReady` and `Ready` conditions (transition times kept while a condition does
//! not change), container states with `lastState`, restart counts, `ready`/`started`,
//! and the pod and host IPs. Pure: no clock, no API.

use k8s_openapi::api::core::v1::{
    ContainerState, ContainerStateRunning, ContainerStateTerminated, ContainerStateWaiting,
    ContainerStatus, PodCondition, PodIP, PodStatus,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;

/// A finished container run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Terminated {
    pub(crate) exit_code: i32,
    pub(crate) signal: Option<i32>,
    pub(crate) reason: String,
    pub(crate) message: Option<String>,
    pub(crate) started_at: Option<Timestamp>,
    pub(crate) finished_at: Timestamp,
    pub(crate) container_id: Option<String>,
}

/// A container's current state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum CState {
    Waiting {
        reason: String,
        message: Option<String>,
    },
    Running {
        started_at: Timestamp,
    },
    Terminated(Terminated),
}

/// What the worker knows about one container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ContainerView {
    pub(crate) name: String,
    pub(crate) image: String,
    pub(crate) image_id: String,
    pub(crate) container_id: Option<String>,
    pub(crate) state: CState,
    pub(crate) last_state: Option<Terminated>,
    pub(crate) ready: bool,
    pub(crate) started: bool,
    pub(crate) restart_count: i32,
}

/// `spec.restartPolicy`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RestartPolicy {
    Always,
    OnFailure,
    Never,
}

impl RestartPolicy {
    pub(crate) fn parse(s: Option<&str>) -> Self {
        match s {
            Some("Never") => Self::Never,
            Some("OnFailure") => Self::OnFailure,
            _ => Self::Always,
        }
    }

    /// Whether a container that exited with `exit_code` runs again.
    pub(crate) fn restarts(self, exit_code: i32) -> bool {
        match self {
            Self::Always => true,
            Self::OnFailure => exit_code != 0,
            Self::Never => false,
        }
    }
}

/// `status.phase`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Phase {
    Pending,
    Running,
    Succeeded,
    Failed,
}

impl Phase {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "Pending",
            Self::Running => "Running",
            Self::Succeeded => "Succeeded",
            Self::Failed => "Failed",
        }
    }

    pub(crate) fn is_terminal(self) -> bool {
        matches!(self, Self::Succeeded | Self::Failed)
    }

    pub(crate) fn parse(s: Option<&str>) -> Option<Self> {
        Some(match s? {
            "Pending" => Self::Pending,
            "Running" => Self::Running,
            "Succeeded" => Self::Succeeded,
            "Failed" => Self::Failed,
            _ => return None,
        })
    }
}

/// Everything the status is built from.
#[derive(Debug, Clone)]
pub(crate) struct PodView {
    pub(crate) init: Vec<ContainerView>,
    pub(crate) main: Vec<ContainerView>,
    pub(crate) restart_policy: RestartPolicy,
    pub(crate) pod_ip: Option<String>,
    pub(crate) host_ip: String,
    pub(crate) start_time: Timestamp,
    /// Whether every readiness gate's condition is `True`.
    pub(crate) gates_ready: bool,
}

fn last_exit(c: &ContainerView) -> Option<i32> {
    c.last_state.as_ref().map(|t| t.exit_code)
}

/// The kubelet's phase rules.
pub(crate) fn phase(view: &PodView) -> Phase {
    let mut pending_init = 0;
    let mut failed_init = 0;
    for c in &view.init {
        match &c.state {
            CState::Running { .. } => pending_init += 1,
            CState::Terminated(t) => {
                if t.exit_code != 0 {
                    failed_init += 1;
                }
            }
            CState::Waiting { .. } => match last_exit(c) {
                Some(code) if code != 0 => failed_init += 1,
                Some(_) => {}
                None => pending_init += 1,
            },
        }
    }
    let (mut running, mut waiting, mut stopped, mut succeeded) = (0, 0, 0, 0);
    for c in &view.main {
        match &c.state {
            CState::Running { .. } => running += 1,
            CState::Terminated(t) => {
                stopped += 1;
                if t.exit_code == 0 {
                    succeeded += 1;
                }
            }
            CState::Waiting { .. } => {
                if c.last_state.is_some() {
                    stopped += 1;
                } else {
                    waiting += 1;
                }
            }
        }
    }
    if failed_init > 0 && view.restart_policy == RestartPolicy::Never {
        return Phase::Failed;
    }
    if pending_init > 0 || waiting > 0 {
        return Phase::Pending;
    }
    if running > 0 {
        return Phase::Running;
    }
    if stopped > 0 {
        return match view.restart_policy {
            RestartPolicy::Always => Phase::Running,
            _ if stopped == succeeded => Phase::Succeeded,
            RestartPolicy::Never => Phase::Failed,
            RestartPolicy::OnFailure => Phase::Running,
        };
    }
    Phase::Pending
}

fn time(t: Timestamp) -> Time {
    Time(t)
}

fn terminated(t: &Terminated) -> ContainerState {
    ContainerState {
        terminated: Some(ContainerStateTerminated {
            exit_code: t.exit_code,
            signal: t.signal,
            reason: Some(t.reason.clone()),
            message: t.message.clone(),
            started_at: t.started_at.map(time),
            finished_at: Some(time(t.finished_at)),
            container_id: t.container_id.clone(),
        }),
        ..Default::default()
    }
}

fn container_status(c: &ContainerView) -> ContainerStatus {
    let state = match &c.state {
        CState::Waiting { reason, message } => ContainerState {
            waiting: Some(ContainerStateWaiting {
                reason: Some(reason.clone()),
                message: message.clone(),
            }),
            ..Default::default()
        },
        CState::Running { started_at } => ContainerState {
            running: Some(ContainerStateRunning {
                started_at: Some(time(*started_at)),
            }),
            ..Default::default()
        },
        CState::Terminated(t) => terminated(t),
    };
    ContainerStatus {
        name: c.name.clone(),
        image: c.image.clone(),
        image_id: c.image_id.clone(),
        container_id: c.container_id.clone(),
        ready: c.ready,
        started: Some(c.started),
        restart_count: c.restart_count,
        state: Some(state),
        last_state: Some(c.last_state.as_ref().map(terminated).unwrap_or_default()),
        ..Default::default()
    }
}

fn condition(
    previous: &[PodCondition],
    type_: &str,
    ok: bool,
    reason: Option<String>,
    message: Option<String>,
    now: Timestamp,
) -> PodCondition {
    let status = if ok { "True" } else { "False" };
    let since = previous
        .iter()
        .find(|c| c.type_ == type_ && c.status == status)
        .and_then(|c| c.last_transition_time.clone())
        .unwrap_or(Time(now));
    PodCondition {
        type_: type_.into(),
        status: status.into(),
        last_transition_time: Some(since),
        reason,
        message,
        ..Default::default()
    }
}

fn names(list: &[&ContainerView]) -> String {
    format!(
        "[{}]",
        list.iter()
            .map(|c| c.name.as_str())
            .collect::<Vec<_>>()
            .join(" ")
    )
}

/// The status to write. `previous` are the conditions last written (their transition
/// times are kept while the status stays); conditions owned by others (`PodScheduled`,
/// readiness gates) are left out, for the strategic merge patch to keep.
pub(crate) fn build(view: &PodView, previous: &[PodCondition], now: Timestamp) -> PodStatus {
    let phase = phase(view);
    let completed = phase == Phase::Succeeded;
    let incomplete_init: Vec<&ContainerView> = view
        .init
        .iter()
        .filter(|c| !matches!(&c.state, CState::Terminated(t) if t.exit_code == 0))
        .collect();
    let initialized = incomplete_init.is_empty() || completed;
    let unready: Vec<&ContainerView> = view.main.iter().filter(|c| !c.ready).collect();
    let containers_ready = unready.is_empty() && !completed;
    let ready = containers_ready && view.gates_ready;
    let not_ready_reason = |gates: bool| {
        if completed {
            (Some("PodCompleted".to_owned()), None)
        } else if !unready.is_empty() {
            (
                Some("ContainersNotReady".to_owned()),
                Some(format!(
                    "containers with unready status: {}",
                    names(&unready)
                )),
            )
        } else if gates {
            (
                Some("ReadinessGatesNotReady".to_owned()),
                Some("the pod's readiness gates are not all True".to_owned()),
            )
        } else {
            (None, None)
        }
    };
    let (init_reason, init_message) = if initialized {
        (completed.then(|| "PodCompleted".to_owned()), None)
    } else {
        (
            Some("ContainersNotInitialized".to_owned()),
            Some(format!(
                "containers with incomplete status: {}",
                names(&incomplete_init)
            )),
        )
    };
    let (cr_reason, cr_message) = if containers_ready {
        (None, None)
    } else {
        not_ready_reason(false)
    };
    let (r_reason, r_message) = if ready {
        (None, None)
    } else {
        not_ready_reason(true)
    };
    let conditions = vec![
        condition(
            previous,
            "Initialized",
            initialized,
            init_reason,
            init_message,
            now,
        ),
        condition(previous, "Ready", ready, r_reason, r_message, now),
        condition(
            previous,
            "ContainersReady",
            containers_ready,
            cr_reason,
            cr_message,
            now,
        ),
    ];
    PodStatus {
        phase: Some(phase.as_str().into()),
        conditions: Some(conditions),
        host_ip: Some(view.host_ip.clone()),
        pod_ip: view.pod_ip.clone(),
        pod_ips: view
            .pod_ip
            .as_ref()
            .map(|ip| vec![PodIP { ip: ip.clone() }]),
        start_time: Some(time(view.start_time)),
        init_container_statuses: (!view.init.is_empty())
            .then(|| view.init.iter().map(container_status).collect()),
        container_statuses: Some(view.main.iter().map(container_status).collect()),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(secs: i64) -> Timestamp {
        Timestamp::from_second(1_700_000_000 + secs).expect("ts")
    }

    fn c(name: &str, state: CState) -> ContainerView {
        ContainerView {
            name: name.into(),
            image: "i".into(),
            image_id: "id".into(),
            container_id: None,
            state,
            last_state: None,
            ready: false,
            started: false,
            restart_count: 0,
        }
    }

    fn waiting(reason: &str) -> CState {
        CState::Waiting {
            reason: reason.into(),
            message: None,
        }
    }

    fn exited(code: i32) -> Terminated {
        Terminated {
            exit_code: code,
            signal: None,
            reason: if code == 0 { "Completed" } else { "Error" }.into(),
            message: None,
            started_at: Some(ts(0)),
            finished_at: ts(1),
            container_id: None,
        }
    }

    fn view(init: Vec<ContainerView>, main: Vec<ContainerView>, policy: RestartPolicy) -> PodView {
        PodView {
            init,
            main,
            restart_policy: policy,
            pod_ip: Some("10.244.1.2".into()),
            host_ip: "10.244.1.1".into(),
            start_time: ts(0),
            gates_ready: true,
        }
    }

    #[test]
    fn phases_follow_the_kubelet() {
        use RestartPolicy::*;
        let running = || c("a", CState::Running { started_at: ts(0) });
        assert_eq!(
            phase(&view(
                vec![],
                vec![c("a", waiting("ContainerCreating"))],
                Always
            )),
            Phase::Pending
        );
        assert_eq!(
            phase(&view(vec![], vec![running()], Always)),
            Phase::Running
        );
        assert_eq!(
            phase(&view(
                vec![c("i", CState::Running { started_at: ts(0) })],
                vec![c("a", waiting("PodInitializing"))],
                Always
            )),
            Phase::Pending
        );
        assert_eq!(
            phase(&view(
                vec![],
                vec![c("a", CState::Terminated(exited(0)))],
                Never
            )),
            Phase::Succeeded
        );
        assert_eq!(
            phase(&view(
                vec![],
                vec![c("a", CState::Terminated(exited(3)))],
                Never
            )),
            Phase::Failed
        );
        assert_eq!(
            phase(&view(
                vec![],
                vec![c("a", CState::Terminated(exited(3)))],
                OnFailure
            )),
            Phase::Running
        );
        assert_eq!(
            phase(&view(
                vec![],
                vec![c("a", CState::Terminated(exited(0)))],
                OnFailure
            )),
            Phase::Succeeded
        );
        let mut crashing = c("a", waiting("CrashLoopBackOff"));
        crashing.last_state = Some(exited(1));
        assert_eq!(phase(&view(vec![], vec![crashing], Always)), Phase::Running);
        assert_eq!(
            phase(&view(
                vec![c("i", CState::Terminated(exited(2)))],
                vec![c("a", waiting("PodInitializing"))],
                Never
            )),
            Phase::Failed
        );
        let mut init_backoff = c("i", waiting("CrashLoopBackOff"));
        init_backoff.last_state = Some(exited(2));
        assert_eq!(
            phase(&view(
                vec![init_backoff],
                vec![c("a", waiting("PodInitializing"))],
                Always
            )),
            Phase::Pending
        );
    }

    #[test]
    fn conditions_and_container_statuses() {
        let mut app = c("app", CState::Running { started_at: ts(5) });
        app.started = true;
        app.restart_count = 2;
        app.last_state = Some(exited(137));
        let init = c("init", CState::Terminated(exited(0)));
        let v = view(vec![init], vec![app.clone()], RestartPolicy::Always);
        let status = build(&v, &[], ts(10));
        assert_eq!(status.phase.as_deref(), Some("Running"));
        let conds = status.conditions.clone().expect("conditions");
        let get = |t: &str| conds.iter().find(|c| c.type_ == t).expect(t).clone();
        assert_eq!(get("Initialized").status, "True");
        assert_eq!(get("Ready").status, "False");
        assert_eq!(get("Ready").reason.as_deref(), Some("ContainersNotReady"));
        assert_eq!(
            get("ContainersReady").message.as_deref(),
            Some("containers with unready status: [app]")
        );
        let cs = &status.container_statuses.as_ref().expect("statuses")[0];
        assert_eq!(cs.restart_count, 2);
        assert_eq!(cs.started, Some(true));
        assert_eq!(
            cs.last_state
                .as_ref()
                .and_then(|s| s.terminated.as_ref())
                .map(|t| t.exit_code),
            Some(137)
        );
        assert_eq!(
            status.pod_ips.as_ref().map(|v| v[0].ip.as_str()),
            Some("10.244.1.2")
        );
        assert!(status.init_container_statuses.is_some());

        // Becoming ready moves Ready's transition time; Initialized keeps its own.
        app.ready = true;
        let v2 = view(
            vec![c("init", CState::Terminated(exited(0)))],
            vec![app],
            RestartPolicy::Always,
        );
        let later = build(&v2, &conds, ts(20));
        let conds2 = later.conditions.expect("conditions");
        let get2 = |t: &str| conds2.iter().find(|c| c.type_ == t).expect(t).clone();
        assert_eq!(get2("Ready").status, "True");
        assert_eq!(get2("Ready").last_transition_time, Some(Time(ts(20))));
        assert_eq!(get2("Initialized").last_transition_time, Some(Time(ts(10))));
    }

    #[test]
    fn completed_pods_are_not_ready() {
        let mut done = c("job", CState::Terminated(exited(0)));
        done.ready = false;
        let status = build(&view(vec![], vec![done], RestartPolicy::Never), &[], ts(3));
        assert_eq!(status.phase.as_deref(), Some("Succeeded"));
        let ready = status
            .conditions
            .expect("conditions")
            .into_iter()
            .find(|c| c.type_ == "Ready")
            .expect("ready");
        assert_eq!(
            (ready.status.as_str(), ready.reason.as_deref()),
            ("False", Some("PodCompleted"))
        );
    }

    #[test]
    fn readiness_gates_hold_ready_back() {
        let mut app = c("app", CState::Running { started_at: ts(0) });
        app.ready = true;
        let mut v = view(vec![], vec![app], RestartPolicy::Always);
        v.gates_ready = false;
        let conds = build(&v, &[], ts(1)).conditions.expect("conditions");
        let get = |t: &str| conds.iter().find(|c| c.type_ == t).expect(t).status.clone();
        assert_eq!(get("ContainersReady"), "True");
        assert_eq!(get("Ready"), "False");
    }

    #[test]
    fn restart_policies() {
        assert!(RestartPolicy::Always.restarts(0));
        assert!(RestartPolicy::OnFailure.restarts(1));
        assert!(!RestartPolicy::OnFailure.restarts(0));
        assert!(!RestartPolicy::Never.restarts(1));
        assert_eq!(RestartPolicy::parse(None), RestartPolicy::Always);
    }
}
