//! Checks of a `ProductionStack` spec that the OpenAPI schema cannot express (dependency
//! cycles, references to unknown components, duplicate names, conflicting ports, name
//! lengths, durations), run by the controller before it touches anything, and of a
//! `StackOperation` spec.
//!
//! API servers from 1.25 on refuse most of these earlier, at admission, through the CEL
//! rules (`x-kubernetes-validations`) on the types; older ones ignore the rules, so every
//! rule has its counterpart here, and `api/tests/cel_rules.rs` checks the two layers
//! refuse the same specs. What CEL cannot express cheaply (cycles, cron schedules, the pod
//! template's containers, volumes and port names) is checked here only.
//!
//! Pure: a function of the spec alone, so the CLI can run it too.

use crate::canary::{Canary, MAX_CANARY_STEPS};
use crate::data::{ComponentData, DataMethod, ExecData, SnapshotPolicy};
use crate::gates::{Gate, MAX_GATES};
use crate::operation::{OperationAction, StackOperationSpec};
use crate::stack::{
    child_name, Component, ProductionStackSpec, WorkloadKind, MAX_COMPONENTS, MAX_COMPONENT_NAME,
    MAX_DEPENDENCIES, MAX_PORTS, MAX_VOLUME_CLAIMS,
};
use crate::workload::{DeploymentStrategyType, MAX_OBJECT_METADATA, RESERVED_PREFIX};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

/// One problem in a spec, with the path of the field it is about.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FieldError {
    /// Path of the field, e.g. `spec.components[1].dependsOn[0]`.
    pub path: String,
    /// What is wrong and, where it helps, what to do.
    pub message: String,
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path, self.message)
    }
}

/// Every problem found in a spec.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub struct InvalidSpec(pub Vec<FieldError>);

impl fmt::Display for InvalidSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts: Vec<String> = self.0.iter().map(|e| e.to_string()).collect();
        f.write_str(&parts.join("; "))
    }
}

/// Longest object name we derive (`<stack>-<component>`): a Service name is a DNS-1035
/// label (63), and a StatefulSet's pods get a `controller-revision-hash` label made of
/// the name plus 11 characters, which must stay within 63.
const MAX_CHILD_NAME: usize = 52;
/// The schema's `maxItems` of `data.exec.dump` and `data.exec.restore`.
const MAX_EXEC_ARGS: usize = 64;

/// A validated spec: components in rollout (dependency) order.
#[derive(Clone, Debug, PartialEq)]
pub struct RolloutOrder(pub Vec<String>);

/// Validates `spec` for a stack named `stack_name`, returning the components in an order
/// that respects `dependsOn` (ties broken by their order in the spec).
pub fn validate(stack_name: &str, spec: &ProductionStackSpec) -> Result<RolloutOrder, InvalidSpec> {
    let mut errors = Vec::new();
    let mut err = |path: String, message: String| errors.push(FieldError { path, message });

    if spec.components.is_empty() {
        err(
            "spec.components".into(),
            "at least one component is required".into(),
        );
    }
    at_most(
        "spec.components",
        spec.components.len(),
        MAX_COMPONENTS,
        &mut err,
    );
    validate_gates("spec.gates", &spec.gates, &mut err);
    if let Some(n) = &spec.notifications {
        if n.secret_ref.name.is_empty() || n.secret_ref.name.len() > 253 {
            err(
                "spec.notifications.secretRef.name".into(),
                "must be the name of a Secret in the stack's namespace (1 to 253 characters)"
                    .into(),
            );
        }
        at_most("spec.notifications.events", n.events.len(), 16, &mut err);
    }

    let mut index_by_name: BTreeMap<&str, usize> = BTreeMap::new();
    for (i, c) in spec.components.iter().enumerate() {
        let path = format!("spec.components[{i}]");
        if let Some(first) = index_by_name.insert(&c.name, i) {
            err(
                format!("{path}.name"),
                format!(
                    "duplicate component name {:?} (also spec.components[{first}])",
                    c.name
                ),
            );
            index_by_name.insert(&c.name, first);
        }
        if c.name.len() > MAX_COMPONENT_NAME {
            err(
                format!("{path}.name"),
                format!("must be at most {MAX_COMPONENT_NAME} characters"),
            );
        }
        if !is_dns_label(&c.name) {
            err(
                format!("{path}.name"),
                format!(
                    "{:?} is not a DNS label: use lower case letters, digits and '-'",
                    c.name
                ),
            );
        }
        let child = child_name(stack_name, &c.name);
        if child.len() > MAX_CHILD_NAME {
            err(
                format!("{path}.name"),
                format!(
                    "object name {child:?} would be {} characters; stack name plus component name must stay within {MAX_CHILD_NAME}",
                    child.len()
                ),
            );
        }
        if c.replicas.is_some_and(|r| r < 0) {
            err(format!("{path}.replicas"), "must be 0 or more".into());
        }
        match &c.template_from {
            None => validate_component(&path, c, &mut err),
            Some(_) if c.template != Default::default() => err(
                format!("{path}.templateFrom"),
                "set exactly one of template and templateFrom: remove one".into(),
            ),
            // The template is checked once resolved, against what the workload holds.
            Some(from) => {
                if from.name.is_empty() || from.name.len() > 253 || !is_dns_subdomain(&from.name) {
                    err(
                        format!("{path}.templateFrom.name"),
                        format!(
                            "{:?} is not the name of a Deployment or StatefulSet",
                            from.name
                        ),
                    );
                } else if from.name == child {
                    // deployctl would manage it, then scale its own workload to zero.
                    err(
                        format!("{path}.templateFrom.name"),
                        format!("{child:?} is the workload deployctl creates for this component: reference the chart's own workload, or rename the component"),
                    );
                }
            }
        }
    }

    for (i, c) in spec.components.iter().enumerate() {
        at_most(
            &format!("spec.components[{i}].dependsOn"),
            c.depends_on.len(),
            MAX_DEPENDENCIES,
            &mut err,
        );
        let mut seen = BTreeSet::new();
        for (j, dep) in c.depends_on.iter().enumerate() {
            let path = format!("spec.components[{i}].dependsOn[{j}]");
            if dep == &c.name {
                err(path, format!("component {:?} depends on itself", c.name));
            } else if !index_by_name.contains_key(dep.as_str()) {
                let known: Vec<&str> = index_by_name.keys().copied().collect();
                err(
                    path,
                    format!(
                        "unknown component {dep:?}; known components: {}",
                        known.join(", ")
                    ),
                );
            } else if !seen.insert(dep) {
                err(path, format!("{dep:?} is listed twice"));
            }
        }
    }

    if let Some(d) = &spec.rollout.progress_deadline {
        match d.parse() {
            Ok(v) if v.is_zero() => err(
                "spec.rollout.progressDeadline".into(),
                "must be longer than 0s".into(),
            ),
            Ok(_) => {}
            Err(e) => err("spec.rollout.progressDeadline".into(), e.to_string()),
        }
    }

    if let Some(policy) = &spec.snapshots {
        validate_snapshot_policy(policy, &mut err);
    }

    let order = match topological_order(spec) {
        Ok(order) => order,
        Err(cycle) => {
            err(
                "spec.components".into(),
                format!(
                    "dependency cycle: {}; remove one of these dependsOn entries",
                    cycle.join(" -> ")
                ),
            );
            Vec::new()
        }
    };

    if errors.is_empty() {
        Ok(RolloutOrder(order))
    } else {
        Err(InvalidSpec(errors))
    }
}

fn validate_component(path: &str, c: &Component, err: &mut impl FnMut(String, String)) {
    let pod = c.template.spec.as_ref();
    let containers = pod.map(|p| p.containers.as_slice()).unwrap_or_default();
    if containers.is_empty() {
        err(
            format!("{path}.template.spec.containers"),
            "at least one container is required".into(),
        );
    }
    let mut container_names = BTreeSet::new();
    for (k, ctr) in containers.iter().enumerate() {
        if !container_names.insert(ctr.name.as_str()) {
            err(
                format!("{path}.template.spec.containers[{k}].name"),
                format!("duplicate container name {:?}", ctr.name),
            );
        }
    }

    let named_container_ports: BTreeSet<&str> = containers
        .iter()
        .flat_map(|ctr| ctr.ports.iter().flatten())
        .filter_map(|p| p.name.as_deref())
        .collect();

    validate_gates(&format!("{path}.gates"), &c.gates, err);
    if let Some(canary) = &c.canary {
        validate_canary(path, c.kind, canary, err);
        if c.autoscaling.as_ref().is_some_and(|a| a.hpa) {
            err(
                format!("{path}.autoscaling.hpa"),
                "canary steps set the replica counts of the stable and canary Deployments, so an HPA cannot manage them: remove canary or autoscaling.hpa".into(),
            );
        }
    }
    at_most(
        &format!("{path}.volumeClaims"),
        c.volume_claims.len(),
        MAX_VOLUME_CLAIMS,
        err,
    );
    if let Some(svc) = &c.service {
        at_most(
            &format!("{path}.service.ports"),
            svc.ports.len(),
            MAX_PORTS,
            err,
        );
        let mut by_port: BTreeMap<(i32, &str), usize> = BTreeMap::new();
        let mut by_name: BTreeMap<&str, usize> = BTreeMap::new();
        for (k, p) in svc.ports.iter().enumerate() {
            let ppath = format!("{path}.service.ports[{k}]");
            let proto = p.protocol.unwrap_or_default().as_str();
            if let Some(first) = by_port.insert((p.port, proto), k) {
                err(
                    format!("{ppath}.port"),
                    format!(
                        "port {}/{proto} conflicts with {path}.service.ports[{first}]",
                        p.port
                    ),
                );
            }
            match &p.name {
                Some(name) => {
                    if let Some(first) = by_name.insert(name, k) {
                        err(
                            format!("{ppath}.name"),
                            format!(
                                "port name {name:?} conflicts with {path}.service.ports[{first}]"
                            ),
                        );
                    }
                }
                None if svc.ports.len() > 1 => err(
                    format!("{ppath}.name"),
                    "a name is required when the service has more than one port".into(),
                ),
                None => {}
            }
            if !(1..=65535).contains(&p.port) {
                err(
                    format!("{ppath}.port"),
                    "must be between 1 and 65535".into(),
                );
            }
            if let Some(IntOrString::String(target)) = &p.target_port {
                if !named_container_ports.contains(target.as_str()) {
                    err(
                        format!("{ppath}.targetPort"),
                        format!(
                            "no container port is named {target:?}; name it in template.spec.containers[].ports or use a number"
                        ),
                    );
                }
            }
            if let Some(IntOrString::Int(n)) = &p.target_port {
                if !(1..=65535).contains(n) {
                    err(
                        format!("{ppath}.targetPort"),
                        "must be between 1 and 65535".into(),
                    );
                }
            }
        }
    }

    let template_volumes: BTreeSet<&str> = pod
        .and_then(|p| p.volumes.as_ref())
        .map(|vs| vs.iter().map(|v| v.name.as_str()).collect())
        .unwrap_or_default();
    let mounted: BTreeSet<&str> = containers
        .iter()
        .flat_map(|ctr| ctr.volume_mounts.iter().flatten())
        .map(|m| m.name.as_str())
        .collect();
    let mut claim_names = BTreeSet::new();
    for (k, vc) in c.volume_claims.iter().enumerate() {
        let vpath = format!("{path}.volumeClaims[{k}]");
        if !claim_names.insert(vc.name.as_str()) {
            err(
                format!("{vpath}.name"),
                format!("duplicate volume claim {:?}", vc.name),
            );
        }
        if template_volumes.contains(vc.name.as_str()) {
            err(
                format!("{vpath}.name"),
                format!(
                    "{:?} is also declared in template.spec.volumes; remove it there, deployctl adds the volume",
                    vc.name
                ),
            );
        }
        if !mounted.contains(vc.name.as_str()) {
            err(
                format!("{vpath}.name"),
                format!(
                    "no container mounts {:?}; add a volumeMounts entry with this name",
                    vc.name
                ),
            );
        }
        if vc.size.0.trim().is_empty() {
            err(
                format!("{vpath}.size"),
                "a size such as 1Gi is required".into(),
            );
        }
    }
    if let Some(data) = &c.data {
        validate_data(path, c, data, &claim_names, err);
    }
    if c.kind == WorkloadKind::StatefulSet && c.service.is_none() {
        // A StatefulSet needs a governing Service name; we give it the component's Service.
        err(
            format!("{path}.service"),
            "a StatefulSet component needs a service (its pods get stable names through it)".into(),
        );
    }
    validate_workload_shape(path, c, err);
}

/// A component's object metadata, strategy of its kind and `minReadySeconds`.
fn validate_workload_shape(path: &str, c: &Component, err: &mut impl FnMut(String, String)) {
    if let Some(meta) = &c.metadata {
        for (field, map, also) in [
            ("labels", &meta.labels, Some(crate::labels::MANAGED_BY)),
            ("annotations", &meta.annotations, None),
        ] {
            at_most(
                &format!("{path}.metadata.{field}"),
                map.len(),
                MAX_OBJECT_METADATA,
                err,
            );
            for key in map.keys() {
                if key.starts_with(RESERVED_PREFIX) || Some(key.as_str()) == also {
                    err(
                        format!("{path}.metadata.{field}[{key}]"),
                        format!("{key:?} is deployctl's own (the selector labels are under {RESERVED_PREFIX}): use another key"),
                    );
                }
            }
        }
    }
    if let Some(strategy) = &c.strategy {
        if c.kind == WorkloadKind::StatefulSet {
            err(
                format!("{path}.strategy"),
                "strategy is for a Deployment: a StatefulSet takes updateStrategy".into(),
            );
        }
        let recreate = strategy.type_ == Some(DeploymentStrategyType::Recreate);
        if let Some(ru) = &strategy.rolling_update {
            let rpath = format!("{path}.strategy.rollingUpdate");
            if recreate {
                err(
                    rpath.clone(),
                    "rollingUpdate goes with type RollingUpdate, not Recreate".into(),
                );
            }
            let surge = count_or_percent(&format!("{rpath}.maxSurge"), ru.max_surge.as_ref(), err);
            let unavailable = count_or_percent(
                &format!("{rpath}.maxUnavailable"),
                ru.max_unavailable.as_ref(),
                err,
            );
            // Defaults: maxSurge 1, maxUnavailable 0.
            if surge == Some(0) && unavailable.unwrap_or(0) == 0 {
                err(
                    format!("{rpath}.maxSurge"),
                    "maxSurge and maxUnavailable cannot both be 0 (maxUnavailable defaults to 0): the rollout could never replace a pod".into(),
                );
            }
        }
    }
    if let Some(update) = &c.update_strategy {
        if c.kind != WorkloadKind::StatefulSet {
            err(
                format!("{path}.updateStrategy"),
                "updateStrategy is for a StatefulSet: a Deployment takes strategy".into(),
            );
        }
        if let Some(ru) = &update.rolling_update {
            let rpath = format!("{path}.updateStrategy.rollingUpdate");
            if ru.partition.is_some_and(|p| !(0..=10000).contains(&p)) {
                err(
                    format!("{rpath}.partition"),
                    "must be between 0 and 10000".into(),
                );
            }
            let mpath = format!("{rpath}.maxUnavailable");
            if count_or_percent(&mpath, ru.max_unavailable.as_ref(), err) == Some(0) {
                err(mpath, "must be at least 1 (or 1%)".into());
            }
        }
    }
    if c.min_ready_seconds
        .is_some_and(|s| !(0..=86400).contains(&s))
    {
        err(
            format!("{path}.minReadySeconds"),
            "must be between 0 and 86400".into(),
        );
    }
}

/// The number in a count or percentage (`3`, `25%`), refusing anything else. None when
/// unset or refused.
fn count_or_percent(
    path: &str,
    v: Option<&IntOrString>,
    err: &mut impl FnMut(String, String),
) -> Option<i64> {
    let bad = |err: &mut dyn FnMut(String, String)| {
        err(
            path.to_string(),
            "must be a number of pods (0 or more) or a percentage such as 25%".into(),
        )
    };
    match v? {
        IntOrString::Int(n) if *n >= 0 => Some(i64::from(*n)),
        IntOrString::String(s) => match s
            .strip_suffix('%')
            .filter(|n| !n.is_empty() && n.len() <= 7 && n.bytes().all(|b| b.is_ascii_digit()))
        {
            Some(n) => n.parse().ok(),
            None => {
                bad(err);
                None
            }
        },
        IntOrString::Int(_) => {
            bad(err);
            None
        }
    }
}

/// A component's `data`: the claim it names, the fields each method uses, and for `Exec`
/// the commands and the container they run as.
fn validate_data(
    path: &str,
    c: &Component,
    data: &ComponentData,
    claim_names: &BTreeSet<&str>,
    err: &mut impl FnMut(String, String),
) {
    let dpath = format!("{path}.data");
    match &data.volume {
        Some(volume) if !claim_names.contains(volume.as_str()) => err(
            format!("{dpath}.volume"),
            format!(
                "{volume:?} is not one of this component's volumeClaims; the data must be on a volume claim deployctl manages"
            ),
        ),
        Some(_) => {}
        None if data.method != DataMethod::Exec => err(
            format!("{dpath}.volume"),
            format!(
                "required with method {}: the volumeClaims entry that holds the data",
                data.method.as_str()
            ),
        ),
        None => {}
    }
    if let Some(p) = &data.path {
        if data.method == DataMethod::Exec {
            err(
                format!("{dpath}.path"),
                "not used with method Exec (the commands run with the container's own mounts); remove it".into(),
            );
        } else if let Err(m) = relative_path(p) {
            err(format!("{dpath}.path"), m);
        }
    }
    match (data.method, &data.database) {
        (DataMethod::Sqlite, None) => err(
            format!("{dpath}.database"),
            "required with method Sqlite: the database file, relative to path".into(),
        ),
        (DataMethod::Sqlite, Some(db)) => {
            if let Err(m) = relative_path(db) {
                err(format!("{dpath}.database"), m);
            }
        }
        (DataMethod::Files | DataMethod::Exec, Some(_)) => err(
            format!("{dpath}.database"),
            "only used with method Sqlite; remove it or set method: Sqlite".into(),
        ),
        (DataMethod::Files | DataMethod::Exec, None) => {}
    }
    if data.method != DataMethod::Files && data.consistency.is_some() {
        err(
            format!("{dpath}.consistency"),
            format!(
                "only used with method Files (a {} copy is always taken live)",
                data.method.as_str()
            ),
        );
    }
    match (&data.exec, data.method) {
        (None, DataMethod::Exec) => err(
            format!("{dpath}.exec"),
            "required with method Exec: set exec.dump and exec.restore".into(),
        ),
        (Some(_), DataMethod::Files | DataMethod::Sqlite) => err(
            format!("{dpath}.exec"),
            "only used with method Exec; remove it or set method: Exec".into(),
        ),
        (Some(exec), DataMethod::Exec) => validate_exec(&dpath, c, data, exec, err),
        (None, _) => {}
    }
}

/// `data.exec`: both commands given, and the container they run as exists and mounts the
/// data's claim.
fn validate_exec(
    dpath: &str,
    c: &Component,
    data: &ComponentData,
    exec: &ExecData,
    err: &mut impl FnMut(String, String),
) {
    let epath = format!("{dpath}.exec");
    for (field, argv) in [("dump", &exec.dump), ("restore", &exec.restore)] {
        if argv.is_empty() {
            err(
                format!("{epath}.{field}"),
                "must not be empty: the program and its arguments".into(),
            );
        }
        at_most(&format!("{epath}.{field}"), argv.len(), MAX_EXEC_ARGS, err);
        if argv.first().is_some_and(|p| p.trim().is_empty()) {
            err(
                format!("{epath}.{field}[0]"),
                "the program must not be blank".into(),
            );
        }
    }
    let containers = c
        .template
        .spec
        .as_ref()
        .map(|s| s.containers.as_slice())
        .unwrap_or_default();
    let container = match &exec.container {
        Some(name) => {
            let found = containers.iter().find(|k| &k.name == name);
            if found.is_none() {
                err(
                    format!("{epath}.container"),
                    format!(
                        "{name:?} is not a container of this component's template; name one of: {}",
                        containers
                            .iter()
                            .map(|k| k.name.as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                );
            }
            found
        }
        None => containers.first(),
    };
    if let (Some(k), Some(volume)) = (container, &data.volume) {
        let mounts = k.volume_mounts.iter().flatten().any(|m| &m.name == volume);
        if !mounts {
            err(
                format!("{dpath}.volume"),
                format!(
                    "container {:?} does not mount {volume:?}, so the commands could not see it; add a volumeMounts entry or remove volume",
                    k.name
                ),
            );
        }
    }
}

/// A list of gates (a component's or the stack's): bounded, names unique, one check each.
fn validate_gates(path: &str, gates: &[Gate], err: &mut impl FnMut(String, String)) {
    at_most(path, gates.len(), MAX_GATES, err);
    let mut by_name: BTreeMap<&str, usize> = BTreeMap::new();
    for (k, g) in gates.iter().enumerate() {
        let gpath = format!("{path}[{k}]");
        if let Some(first) = by_name.insert(&g.name, k) {
            err(
                format!("{gpath}.name"),
                format!("duplicate gate name {:?} (also {path}[{first}])", g.name),
            );
            by_name.insert(&g.name, first);
        }
        let checks = [
            g.readiness.is_some(),
            g.http.is_some(),
            g.error_rate.is_some(),
            g.prometheus.is_some(),
            g.job.is_some(),
        ];
        if let Some(p) = &g.prometheus {
            if let Err(e) = crate::gates::render_query(&p.query, None) {
                err(format!("{gpath}.prometheus.query"), e);
            }
            at_most(
                &format!("{gpath}.prometheus.headers"),
                p.headers.len(),
                16,
                err,
            );
            for (h, header) in p.headers.iter().enumerate() {
                if header.name.eq_ignore_ascii_case("authorization") {
                    err(
                        format!("{gpath}.prometheus.headers[{h}].name"),
                        "credentials go in secretRef (key token, or username and password), not in headers: remove the Authorization header".into(),
                    );
                }
            }
        }
        if checks.iter().filter(|&&set| set).count() != 1 {
            err(
                gpath,
                "set exactly one of readiness, http, errorRate, prometheus or job".into(),
            );
        }
    }
}

/// The schema's `maxItems`, checked here too for the CLI's offline check and for stacks
/// stored before a bound was added or lowered.
/// A component's `canary`: Deployments only, and each step one of its three kinds with
/// values in range (the schema and CEL rules say the same for clusters that check them).
fn validate_canary(
    path: &str,
    kind: WorkloadKind,
    canary: &Canary,
    err: &mut impl FnMut(String, String),
) {
    let cpath = format!("{path}.canary");
    if kind != WorkloadKind::Deployment {
        err(
            cpath.clone(),
            "canary steps need kind: Deployment (a StatefulSet cannot run two templates side by side): remove canary or use kind: Deployment".into(),
        );
    }
    if canary.steps.is_empty() {
        err(
            format!("{cpath}.steps"),
            "at least one step is required".into(),
        );
    }
    at_most(
        &format!("{cpath}.steps"),
        canary.steps.len(),
        MAX_CANARY_STEPS,
        err,
    );
    for (k, step) in canary.steps.iter().enumerate() {
        let spath = format!("{cpath}.steps[{k}]");
        let set = [
            step.set_weight.is_some(),
            step.pause.is_some(),
            step.analysis.is_some(),
        ]
        .iter()
        .filter(|s| **s)
        .count();
        if set != 1 {
            err(
                spath.clone(),
                format!("sets {set} of setWeight, pause and analysis; a step sets exactly one: split it into several steps"),
            );
        }
        if let Some(w) = step.set_weight {
            if !(1..=100).contains(&w) {
                err(
                    format!("{spath}.setWeight"),
                    format!("is {w}; must be between 1 and 100"),
                );
            }
        }
        let durations = [
            (
                "pause",
                step.pause.as_ref().and_then(|p| p.duration.as_ref()),
            ),
            (
                "analysis",
                step.analysis.as_ref().and_then(|a| a.duration.as_ref()),
            ),
        ];
        for (field, d) in durations {
            if let Some(Err(e)) = d.map(|d| d.parse()) {
                err(format!("{spath}.{field}.duration"), e.to_string());
            }
        }
    }
}

fn at_most(path: &str, len: usize, max: usize, err: &mut impl FnMut(String, String)) {
    if len > max {
        err(
            path.to_string(),
            format!("has {len} entries; at most {max} are allowed"),
        );
    }
}

/// Validates a `StackOperation` spec: the fields that go with one action only.
pub fn validate_operation(spec: &StackOperationSpec) -> Result<(), InvalidSpec> {
    let mut errors = Vec::new();
    let mut err = |path: &str, message: &str| {
        errors.push(FieldError {
            path: path.into(),
            message: message.into(),
        })
    };
    match (spec.action, &spec.snapshot) {
        (OperationAction::Restore, None) => err(
            "spec.snapshot",
            "required with action Restore: the StackSnapshot to restore",
        ),
        (OperationAction::Restore, Some(_)) | (_, None) => {}
        (_, Some(_)) => err("spec.snapshot", "only used with action Restore; remove it"),
    }
    if spec.to_revision.is_some() && spec.action != OperationAction::Rollback {
        err(
            "spec.toRevision",
            "only used with action Rollback; remove it",
        );
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(InvalidSpec(errors))
    }
}

fn validate_snapshot_policy(policy: &SnapshotPolicy, err: &mut impl FnMut(String, String)) {
    if let Some(store) = &policy.store {
        match (&store.filesystem, &store.s3) {
            (Some(_), Some(_)) => err(
                "spec.snapshots.store".into(),
                "set either filesystem or s3, not both".into(),
            ),
            (None, None) => err(
                "spec.snapshots.store".into(),
                "set filesystem or s3 (or remove store for the default filesystem repository)"
                    .into(),
            ),
            _ => {}
        }
        let quotas = [
            (
                "filesystem",
                store.filesystem.as_ref().and_then(|f| f.quota.as_ref()),
            ),
            ("s3", store.s3.as_ref().and_then(|s| s.quota.as_ref())),
        ];
        for (kind, quota) in quotas {
            let Some(q) = quota else { continue };
            let path = format!("spec.snapshots.store.{kind}.quota");
            match crate::data::parse_bytes(q) {
                Ok(0) => err(
                    path,
                    "must be more than 0 bytes: give the most the repository may take, e.g. 20Gi (or remove it)".into(),
                ),
                Ok(_) => {}
                Err(e) => err(path, e),
            }
        }
        if let Some(s3) = &store.s3 {
            if let Some(prefix) = &s3.prefix {
                if prefix.starts_with('/') || prefix.split('/').any(|p| p == "..") {
                    err(
                        "spec.snapshots.store.s3.prefix".into(),
                        "must be relative, without '..' segments".into(),
                    );
                }
            }
        }
    }
    for (field, value) in [
        ("schedule", &policy.schedule),
        ("verifySchedule", &policy.verify_schedule),
    ] {
        if let Some(v) = value {
            if let Err(e) = crate::data::parse_schedule(v) {
                err(format!("spec.snapshots.{field}"), e);
            }
        }
    }
}

/// A path inside a volume: relative, no `..`.
fn relative_path(p: &str) -> Result<(), String> {
    if p.starts_with('/') {
        return Err(format!("{p:?} must be relative to the volume's root"));
    }
    if p.split('/').any(|s| s == "..") {
        return Err(format!("{p:?} must not contain '..'"));
    }
    Ok(())
}

/// Kahn's algorithm with ties broken by spec order, so the rollout order is stable and
/// predictable for the person who wrote the spec. On a cycle, returns one cycle's names.
fn topological_order(spec: &ProductionStackSpec) -> Result<Vec<String>, Vec<String>> {
    let names: Vec<&str> = spec.components.iter().map(|c| c.name.as_str()).collect();
    let index: BTreeMap<&str, usize> = names.iter().enumerate().map(|(i, n)| (*n, i)).collect();
    let n = names.len();
    let mut indegree = vec![0usize; n];
    let mut dependents: Vec<Vec<usize>> = vec![Vec::new(); n];
    for (i, c) in spec.components.iter().enumerate() {
        let deps: BTreeSet<usize> = c
            .depends_on
            .iter()
            .filter_map(|d| index.get(d.as_str()).copied())
            .filter(|&d| d != i)
            .collect();
        indegree[i] = deps.len();
        for d in deps {
            dependents[d].push(i);
        }
    }
    let mut ready: BTreeSet<usize> = (0..n).filter(|&i| indegree[i] == 0).collect();
    let mut order = Vec::with_capacity(n);
    while let Some(&i) = ready.iter().next() {
        ready.remove(&i);
        order.push(names[i].to_string());
        for &d in &dependents[i] {
            indegree[d] -= 1;
            if indegree[d] == 0 {
                ready.insert(d);
            }
        }
    }
    if order.len() == n {
        return Ok(order);
    }
    // Walk dependencies from a node left with indegree > 0 until a node repeats.
    let start = (0..n).find(|&i| indegree[i] > 0).unwrap_or(0);
    let mut path = vec![start];
    let mut cur = start;
    loop {
        let next = spec.components[cur]
            .depends_on
            .iter()
            .filter_map(|d| index.get(d.as_str()).copied())
            .find(|&d| indegree[d] > 0 && d != cur);
        let Some(next) = next else { break };
        if let Some(pos) = path.iter().position(|&p| p == next) {
            let mut cycle: Vec<String> =
                path[pos..].iter().map(|&p| names[p].to_string()).collect();
            cycle.push(names[next].to_string());
            return Err(cycle);
        }
        path.push(next);
        cur = next;
    }
    Err(path.iter().map(|&p| names[p].to_string()).collect())
}

/// A DNS subdomain: DNS labels joined by dots (what object names are).
fn is_dns_subdomain(s: &str) -> bool {
    s.split('.').all(is_dns_label)
}

fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(yaml: &str) -> ProductionStackSpec {
        serde_yaml_ng::from_str(yaml).expect("test fixture parses")
    }

    const CONTAINER: &str = "{spec: {containers: [{name: app, image: x}]}}";

    fn three(deps_api: &str, deps_db: &str) -> ProductionStackSpec {
        spec(&format!(
            "components:
- {{name: api, dependsOn: {deps_api}, template: {CONTAINER}}}
- {{name: cache, template: {CONTAINER}}}
- {{name: db, dependsOn: {deps_db}, template: {CONTAINER}}}
"
        ))
    }

    fn paths(e: InvalidSpec) -> Vec<String> {
        e.0.into_iter().map(|e| e.path).collect()
    }

    #[test]
    fn canary_steps_are_refused_at_their_field() {
        let with = |fields: &str| {
            spec(&format!(
                "components: [{{name: a, template: {CONTAINER}, {fields}}}]"
            ))
        };
        assert!(validate(
            "shop",
            &with("canary: {steps: [{setWeight: 25}, {analysis: {}}, {pause: {duration: 1m}}]}")
        )
        .is_ok());
        let e = validate(
            "shop",
            &with("canary: {steps: [{setWeight: 25}, {setWeight: 0}, {pause: {duration: soon}}]}"),
        )
        .unwrap_err();
        assert_eq!(
            paths(e),
            vec![
                "spec.components[0].canary.steps[1].setWeight",
                "spec.components[0].canary.steps[2].pause.duration"
            ]
        );
        let e = validate(
            "shop",
            &with("kind: StatefulSet, service: {ports: [{port: 80}]}, canary: {steps: [{setWeight: 25}]}"),
        )
        .unwrap_err();
        assert_eq!(paths(e), vec!["spec.components[0].canary"]);
        let e = validate("shop", &with("canary: {steps: []}")).unwrap_err();
        assert_eq!(paths(e), vec!["spec.components[0].canary.steps"]);
    }

    #[test]
    fn notifications_are_refused_at_their_fields() {
        let ok = spec(&format!(
            "components: [{{name: a, template: {CONTAINER}}}]\nnotifications: {{secretRef: {{name: hook}}, events: [RolloutStarted], format: Slack}}"
        ));
        assert!(validate("shop", &ok).is_ok());
        let n = ok.notifications.as_ref().unwrap();
        assert!(n.wants(crate::NotificationEvent::RolloutStarted));
        assert!(!n.wants(crate::NotificationEvent::RollbackDone));
        let mut bad = ok.clone();
        let n = bad.notifications.as_mut().unwrap();
        n.secret_ref.name.clear();
        n.events = vec![crate::NotificationEvent::RolloutStarted; 17];
        assert_eq!(
            paths(validate("shop", &bad).unwrap_err()),
            vec![
                "spec.notifications.secretRef.name",
                "spec.notifications.events"
            ]
        );
    }

    #[test]
    fn a_store_quota_must_be_a_positive_quantity_and_is_refused_at_its_field() {
        let with_store = |store: &str| {
            spec(&format!(
                "components: [{{name: a, template: {CONTAINER}}}]\nsnapshots: {{store: {store}}}"
            ))
        };
        assert!(validate("shop", &with_store("{filesystem: {quota: 20Gi}}")).is_ok());
        assert!(validate(
            "shop",
            &with_store(
                "{s3: {endpoint: 'http://s3', bucket: bkt, credentialsSecret: c, quota: 1.5T}}"
            )
        )
        .is_ok());
        let e = validate("shop", &with_store("{filesystem: {quota: '0Gi'}}")).unwrap_err();
        assert_eq!(
            paths(e.clone()),
            vec!["spec.snapshots.store.filesystem.quota"]
        );
        assert!(e.to_string().contains("more than 0 bytes"), "{e}");
        let e = validate(
            "shop",
            &with_store(
                "{s3: {endpoint: 'http://s3', bucket: bkt, credentialsSecret: c, quota: 20GB}}",
            ),
        )
        .unwrap_err();
        assert_eq!(paths(e.clone()), vec!["spec.snapshots.store.s3.quota"]);
        assert!(e.to_string().contains("unknown suffix \"GB\""), "{e}");
        let e = validate("shop", &with_store("{filesystem: {quota: 9Ei}}")).unwrap_err();
        assert!(e.to_string().contains("too large"), "{e}");
    }

    #[test]
    fn orders_by_dependencies_then_spec_order() {
        let order = validate("shop", &three("[db, cache]", "[]")).unwrap();
        assert_eq!(order.0, vec!["cache", "db", "api"]);
    }

    #[test]
    fn refuses_a_cycle_and_names_it() {
        let e = validate("shop", &three("[db]", "[api]")).unwrap_err();
        assert_eq!(paths(e.clone()), vec!["spec.components"]);
        let msg = e.to_string();
        assert!(msg.contains("dependency cycle"), "{msg}");
        assert!(msg.contains("api") && msg.contains("db"), "{msg}");
    }

    #[test]
    fn refuses_unknown_self_and_repeated_dependencies() {
        let e = validate("shop", &three("[search]", "[db]")).unwrap_err();
        let p = paths(e.clone());
        assert!(
            p.contains(&"spec.components[0].dependsOn[0]".to_string()),
            "{p:?}"
        );
        assert!(
            p.contains(&"spec.components[2].dependsOn[0]".to_string()),
            "{p:?}"
        );
        assert!(e.to_string().contains("unknown component \"search\""));
        assert!(e.to_string().contains("depends on itself"));
        let e = validate("shop", &three("[db, db]", "[]")).unwrap_err();
        assert_eq!(paths(e), vec!["spec.components[0].dependsOn[1]"]);
    }

    #[test]
    fn refuses_duplicate_components() {
        let s = spec(&format!(
            "components: [{{name: a, template: {CONTAINER}}}, {{name: a, template: {CONTAINER}}}]"
        ));
        let e = validate("shop", &s).unwrap_err();
        assert_eq!(paths(e.clone()), vec!["spec.components[1].name"]);
        assert!(e.to_string().contains("also spec.components[0]"));
    }

    #[test]
    fn refuses_conflicting_ports() {
        let s = spec(&format!(
            "components:
- name: api
  template: {CONTAINER}
  service: {{ports: [{{name: http, port: 80}}, {{name: http, port: 80}}, {{port: 81}}]}}"
        ));
        let p = paths(validate("shop", &s).unwrap_err());
        assert!(
            p.contains(&"spec.components[0].service.ports[1].port".into()),
            "{p:?}"
        );
        assert!(
            p.contains(&"spec.components[0].service.ports[1].name".into()),
            "{p:?}"
        );
        assert!(
            p.contains(&"spec.components[0].service.ports[2].name".into()),
            "{p:?}"
        );
    }

    #[test]
    fn exec_commands_run_as_an_existing_container_that_mounts_the_data() {
        let exec = |fields: &str| {
            spec(&format!(
                "components:
- name: db
  template: {{spec: {{containers: [{{name: app, image: x, volumeMounts: [{{name: data, mountPath: /data}}]}}, {{name: side, image: y}}]}}}}
  volumeClaims: [{{name: data, size: 1Gi}}]
  data: {{method: Exec, exec: {{dump: [demo-app, dump], restore: [demo-app, load]{fields}}}}}"
            ))
        };
        assert!(validate("shop", &exec("")).is_ok());
        assert!(validate("shop", &exec(", container: app")).is_ok());
        let e = validate("shop", &exec(", container: nope")).unwrap_err();
        assert_eq!(
            paths(e.clone()),
            vec!["spec.components[0].data.exec.container"]
        );
        assert!(e.to_string().contains("app, side"), "{e}");

        let mut s = exec(", container: side");
        s.components[0].data.as_mut().unwrap().volume = Some("data".into());
        let e = validate("shop", &s).unwrap_err();
        assert_eq!(paths(e.clone()), vec!["spec.components[0].data.volume"]);
        assert!(e.to_string().contains("does not mount"), "{e}");

        let mut s = exec("");
        s.components[0]
            .data
            .as_mut()
            .unwrap()
            .exec
            .as_mut()
            .unwrap()
            .dump = vec![" ".into()];
        let e = validate("shop", &s).unwrap_err();
        assert_eq!(paths(e), vec!["spec.components[0].data.exec.dump[0]"]);
    }

    #[test]
    fn refuses_unknown_named_target_port() {
        let s = spec(
            "components:
- name: api
  template: {spec: {containers: [{name: app, image: x, ports: [{name: web, containerPort: 8080}]}]}}
  service: {ports: [{port: 80, targetPort: http}]}",
        );
        let e = validate("shop", &s).unwrap_err();
        assert_eq!(
            paths(e),
            vec!["spec.components[0].service.ports[0].targetPort"]
        );
    }

    #[test]
    fn refuses_bad_durations_and_long_names() {
        let mut s = three("[]", "[]");
        s.rollout.progress_deadline = Some("10 minutes".into());
        let e = validate("shop", &s).unwrap_err();
        assert_eq!(paths(e), vec!["spec.rollout.progressDeadline"]);
        let long = "x".repeat(50);
        let e = validate(&long, &three("[]", "[]")).unwrap_err();
        assert_eq!(e.0.len(), 3);
        assert!(e.to_string().contains("must stay within 52"));
    }

    #[test]
    fn checks_volume_claims_against_the_template() {
        let s = spec(
            "components:
- name: db
  kind: StatefulSet
  service: {ports: [{port: 8080}]}
  template: {spec: {containers: [{name: app, image: x, volumeMounts: [{name: data, mountPath: /data}]}]}}
  volumeClaims: [{name: data, size: 1Gi}, {name: logs, size: 1Gi}]",
        );
        let e = validate("shop", &s).unwrap_err();
        assert_eq!(
            paths(e.clone()),
            vec!["spec.components[0].volumeClaims[1].name"]
        );
        assert!(e.to_string().contains("no container mounts \"logs\""));
    }

    #[test]
    fn refuses_more_than_the_schema_allows() {
        let many: Vec<String> = (0..=MAX_COMPONENTS)
            .map(|i| format!("{{name: c{i}, template: {CONTAINER}}}"))
            .collect();
        let s = spec(&format!("components: [{}]", many.join(", ")));
        assert_eq!(
            paths(validate("shop", &s).unwrap_err()),
            vec!["spec.components"]
        );
        let long = "c".repeat(MAX_COMPONENT_NAME + 1);
        let s = spec(&format!(
            "components: [{{name: {long}, template: {CONTAINER}}}]"
        ));
        assert_eq!(
            paths(validate("s", &s).unwrap_err()),
            vec!["spec.components[0].name"]
        );
    }

    #[test]
    fn gates_check_one_thing_under_their_own_name() {
        let s = spec(&format!(
            "components:
- name: api
  template: {CONTAINER}
  gates: [{{name: a, readiness: {{}}}}, {{name: a, readiness: {{}}, http: {{}}}}, {{name: b}}]
gates: [{{name: a, readiness: {{}}}}]"
        ));
        assert_eq!(
            paths(validate("shop", &s).unwrap_err()),
            vec![
                "spec.components[0].gates[1].name",
                "spec.components[0].gates[1]",
                "spec.components[0].gates[2]",
            ]
        );
    }

    #[test]
    fn operation_fields_go_with_their_action() {
        let op = |yaml: &str| -> StackOperationSpec {
            serde_yaml_ng::from_str(yaml).expect("test fixture parses")
        };
        let refused = |yaml: &str| paths(validate_operation(&op(yaml)).unwrap_err());
        assert!(validate_operation(&op("{stack: s, action: Rollback, toRevision: 2}")).is_ok());
        assert!(validate_operation(&op("{stack: s, action: Restore, snapshot: x}")).is_ok());
        assert_eq!(
            refused("{stack: s, action: Restore}"),
            vec!["spec.snapshot"]
        );
        assert_eq!(
            refused("{stack: s, action: Abort, snapshot: x, toRevision: 1}"),
            vec!["spec.snapshot", "spec.toRevision"]
        );
    }

    #[test]
    fn template_from_is_exclusive_and_never_deployctls_own_workload() {
        let ok = spec("components: [{name: api, templateFrom: {kind: Deployment, name: web}}]");
        assert!(
            validate("shop", &ok).is_ok(),
            "the template is checked once resolved"
        );
        let both = spec(&format!(
            "components: [{{name: api, template: {CONTAINER}, templateFrom: {{kind: Deployment, name: web}}}}]"
        ));
        assert_eq!(
            paths(validate("shop", &both).unwrap_err()),
            vec!["spec.components[0].templateFrom"]
        );
        let own =
            spec("components: [{name: api, templateFrom: {kind: Deployment, name: shop-api}}]");
        assert_eq!(
            paths(validate("shop", &own).unwrap_err()),
            vec!["spec.components[0].templateFrom.name"]
        );
    }

    #[test]
    fn strategy_fields_go_with_their_kind_and_refuse_what_cannot_roll() {
        let errs = paths(
            validate(
                "shop",
                &spec(
                    "components:
- name: api
  metadata: {labels: {team: a, deployctl.dev/component: x}, annotations: {deployctl.dev/revision: '1', note: ok}}
  strategy: {rollingUpdate: {maxSurge: 0, maxUnavailable: '0%'}}
  updateStrategy: {rollingUpdate: {partition: 1}}
  minReadySeconds: -1
  template: {spec: {containers: [{name: a, image: x}]}}
- name: db
  kind: StatefulSet
  service: {ports: [{port: 80}]}
  strategy: {type: Recreate, rollingUpdate: {maxSurge: ten}}
  updateStrategy: {rollingUpdate: {maxUnavailable: 0}}
  template: {spec: {containers: [{name: a, image: x}]}}",
                ),
            )
            .unwrap_err(),
        );
        assert_eq!(
            paths_sorted(errs),
            vec![
                "spec.components[0].metadata.annotations[deployctl.dev/revision]",
                "spec.components[0].metadata.labels[deployctl.dev/component]",
                "spec.components[0].minReadySeconds",
                "spec.components[0].strategy.rollingUpdate.maxSurge",
                "spec.components[0].updateStrategy",
                "spec.components[1].strategy",
                "spec.components[1].strategy.rollingUpdate",
                "spec.components[1].strategy.rollingUpdate.maxSurge",
                "spec.components[1].updateStrategy.rollingUpdate.maxUnavailable",
            ]
        );
        // maxSurge 0 is fine when pods may go first; percentages are counts too.
        validate(
            "shop",
            &spec(
                "components:
- name: api
  strategy: {rollingUpdate: {maxSurge: 0, maxUnavailable: 25%}}
  minReadySeconds: 10
  template: {spec: {containers: [{name: a, image: x}]}}",
            ),
        )
        .unwrap();
    }

    fn paths_sorted(mut p: Vec<String>) -> Vec<String> {
        p.sort();
        p
    }

    #[test]
    fn statefulset_needs_a_service() {
        let s = spec(&format!(
            "components: [{{name: db, kind: StatefulSet, template: {CONTAINER}}}]"
        ));
        assert_eq!(
            paths(validate("shop", &s).unwrap_err()),
            vec!["spec.components[0].service"]
        );
    }
}

#[cfg(test)]
mod example_tests {
    use crate::ProductionStack;

    #[test]
    fn the_shipped_examples_are_valid() {
        for (name, yaml) in [
            (
                "stack.yaml",
                include_str!("../../examples/demo-stack/stack.yaml"),
            ),
            (
                "stack-good.yaml",
                include_str!("../../examples/demo-stack/stack-good.yaml"),
            ),
            (
                "stack-bad.yaml",
                include_str!("../../examples/demo-stack/stack-bad.yaml"),
            ),
        ] {
            let s: ProductionStack = serde_yaml_ng::from_str(yaml)
                .unwrap_or_else(|e| panic!("examples/demo-stack/{name} does not parse: {e}"));
            super::validate("shop", &s.spec)
                .unwrap_or_else(|e| panic!("examples/demo-stack/{name} is invalid: {e}"));
        }
    }
}
