//! The CRDs' CEL rules (`x-kubernetes-validations`), checked without a 1.25+ API server.
//!
//! The rules are read from the generated YAML under `manifests/crds/` (which the crdgen
//! drift test keeps equal to the types) and evaluated with kube-cel, a CEL interpreter
//! with the Kubernetes libraries, field escaping and schema defaulting. Objects are given
//! to it as the API server would: null-valued fields are absent.
//!
//! - Every shipped stack passes every rule.
//! - Each spec of a table of invalid ones is refused by exactly the rule expected, and
//!   `validation.rs` refuses it too, at or under the same field, so the admission-time
//!   layer (1.25+) and the controller's layer (every version) never disagree.
//! - Every rule is exercised by that table, and its estimated worst-case cost stays within
//!   what the API server accepts (see `cost`).

use deployctl_api::validation::{validate, validate_operation, InvalidSpec};
use deployctl_api::{ProductionStack, StackOperation};
use kube_cel::{ErrorKind, Validator};
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::OnceLock;

fn repo_file(path: &str) -> String {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(path);
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("cannot read {}: {e}", p.display()))
}

fn yaml(text: &str) -> Value {
    serde_yaml_ng::from_str(text).unwrap_or_else(|e| panic!("YAML does not parse: {e}\n{text}"))
}

/// The `openAPIV3Schema` of a CRD under `manifests/crds/`, read once.
fn schema(file: &str) -> &'static Value {
    static SCHEMAS: OnceLock<BTreeMap<&'static str, Value>> = OnceLock::new();
    let schemas = SCHEMAS.get_or_init(|| {
        CRDS.iter()
            .map(|&f| {
                let crd = yaml(&repo_file(&format!("manifests/crds/{f}")));
                let schema = crd
                    .pointer("/spec/versions/0/schema/openAPIV3Schema")
                    .unwrap_or_else(|| panic!("{f} has no openAPIV3Schema"))
                    .clone();
                (f, schema)
            })
            .collect()
    });
    &schemas[file]
}

const CRDS: [&str; 3] = [
    "productionstacks.yaml",
    "stackoperations.yaml",
    "stacksnapshots.yaml",
];

/// One `x-kubernetes-validations` entry and where it sits: `spec.components[*]` for the
/// items of `spec.components`, "" for the root.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Rule {
    location: String,
    rule: String,
    message: String,
}

/// Every rule of a schema, with its location and the schemas from the root down to it.
fn rules_of<'a>(
    schema: &'a Value,
    location: &str,
    ancestors: &mut Vec<&'a Value>,
    out: &mut Vec<(Rule, Vec<&'a Value>)>,
) {
    ancestors.push(schema);
    for r in schema
        .get("x-kubernetes-validations")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let text = |k: &str| {
            r.get(k)
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string()
        };
        out.push((
            Rule {
                location: location.to_string(),
                rule: text("rule"),
                message: text("message"),
            },
            ancestors.clone(),
        ));
    }
    if let Some(props) = schema.get("properties").and_then(Value::as_object) {
        for (name, child) in props {
            let loc = if location.is_empty() {
                name.clone()
            } else {
                format!("{location}.{name}")
            };
            rules_of(child, &loc, ancestors, out);
        }
    }
    if let Some(items) = schema.get("items") {
        rules_of(items, &format!("{location}[*]"), ancestors, out);
    }
    ancestors.pop();
}

fn all_rules() -> Vec<Rule> {
    let mut rules = Vec::new();
    for file in CRDS {
        let mut found = Vec::new();
        rules_of(schema(file), "", &mut Vec::new(), &mut found);
        rules.extend(found.into_iter().map(|(r, _)| r));
    }
    rules
}

/// The location a concrete field path falls under: `spec.components[2]` is at
/// `spec.components[*]`.
fn location_of(field_path: &str) -> String {
    let mut out = String::new();
    let mut in_index = false;
    for ch in field_path.chars() {
        match ch {
            '[' => {
                in_index = true;
                out.push_str("[*]");
            }
            ']' => in_index = false,
            _ if in_index => {}
            _ => out.push(ch),
        }
    }
    out
}

/// Drops null-valued fields: the API server treats them as absent (`has()` is false and
/// no rule below them runs).
fn without_nulls(v: &Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(
            m.iter()
                .filter(|(_, v)| !v.is_null())
                .map(|(k, v)| (k.clone(), without_nulls(v)))
                .collect(),
        ),
        Value::Array(items) => Value::Array(items.iter().map(without_nulls).collect()),
        other => other.clone(),
    }
}

/// A rule that refused an object: (field path, message).
type Refusal = (String, String);

/// Evaluates every rule of `crd` against `object`, as the API server would on create.
fn cel_refusals(crd: &str, object: &Value) -> Vec<Refusal> {
    match Validator::new().validate(schema(crd), &without_nulls(object), None) {
        Ok(()) => Vec::new(),
        Err(errors) => errors
            .iter()
            .map(|e| {
                assert_eq!(
                    e.kind,
                    ErrorKind::ValidationFailure,
                    "rule {:?} at {} did not evaluate to true or false: {}",
                    e.rule,
                    e.field_path,
                    e.message
                );
                (e.field_path.clone(), e.message.clone())
            })
            .collect(),
    }
}

fn stack_errors(object: &Value) -> Result<(), InvalidSpec> {
    let stack: ProductionStack = serde_json::from_value(object.clone())
        .unwrap_or_else(|e| panic!("not a ProductionStack: {e}\n{object:#}"));
    let name = stack.metadata.name.clone().unwrap_or_default();
    validate(&name, &stack.spec).map(|_| ())
}

fn operation_errors(object: &Value) -> Result<(), InvalidSpec> {
    let op: StackOperation = serde_json::from_value(object.clone())
        .unwrap_or_else(|e| panic!("not a StackOperation: {e}\n{object:#}"));
    validate_operation(&op.spec)
}

/// The kinds the table covers: CRD file and the controller's validation.
#[derive(Clone, Copy, Debug)]
enum Kind {
    Stack,
    Operation,
}

impl Kind {
    fn crd(self) -> &'static str {
        match self {
            Kind::Stack => "productionstacks.yaml",
            Kind::Operation => "stackoperations.yaml",
        }
    }

    /// What the controller's validation says of `object` as the API server stores it:
    /// nulls of nullable fields kept (serde reads them as absent), the others pruned.
    fn controller(self, object: &Value) -> Result<(), InvalidSpec> {
        let stored = without_nulls(object);
        match self {
            Kind::Stack => stack_errors(&stored),
            Kind::Operation => operation_errors(&stored),
        }
    }
}

#[test]
fn the_shipped_stacks_pass_every_rule() {
    for file in [
        "examples/demo-stack/stack.yaml",
        "examples/demo-stack/stack-good.yaml",
        "examples/demo-stack/stack-bad.yaml",
        "deploy/gitops/stack/productionstack.yaml",
    ] {
        let object = yaml(&repo_file(file));
        let refused = cel_refusals("productionstacks.yaml", &object);
        assert!(refused.is_empty(), "{file} is refused by CEL: {refused:?}");
        stack_errors(&object).unwrap_or_else(|e| panic!("{file} is refused by validation: {e}"));
    }
}

// ---------------------------------------------------------------------------------------
// Fixtures. A component that passes everything; cases change one thing.

const CONTAINER: &str =
    "{spec: {containers: [{name: app, image: x, volumeMounts: [{name: data, mountPath: /data}, {name: logs, mountPath: /logs}]}]}}";

/// A stack named `name` with these components (a YAML flow sequence body) and extra
/// top-level spec fields.
fn stack_named(name: &str, components: &str, extra: &str) -> Value {
    let components = components.replace("TEMPLATE", CONTAINER);
    yaml(&format!(
        "apiVersion: deployctl.dev/v1alpha1
kind: ProductionStack
metadata: {{name: {name}}}
spec:
  components: [{components}]
{extra}"
    ))
}

fn stack(components: &str) -> Value {
    stack_named("shop", components, "")
}

/// One component `db` with a claim `data` plus `fields` (a YAML flow mapping body).
fn db(fields: &str) -> Value {
    stack(&format!(
        "{{name: db, template: TEMPLATE, volumeClaims: [{{name: data, size: 1Gi}}], {fields}}}"
    ))
}

fn with_spec(extra: &str) -> Value {
    stack_named("shop", "{name: api, template: TEMPLATE}", extra)
}

fn operation(spec: &str) -> Value {
    yaml(&format!(
        "apiVersion: deployctl.dev/v1alpha1
kind: StackOperation
metadata: {{name: op}}
spec: {{stack: shop, {spec}}}"
    ))
}

/// Specs both layers accept: the edges next to the invalid cases below.
fn valid_cases() -> Vec<(&'static str, Kind, Value)> {
    use Kind::*;
    vec![
        ("plain", Stack, stack("{name: api, template: TEMPLATE}")),
        (
            "a template from an existing Deployment",
            Stack,
            stack("{name: web, templateFrom: {kind: Deployment, name: web}}"),
        ),
        (
            "canary steps of each kind on a Deployment",
            Stack,
            stack("{name: api, kind: Deployment, template: TEMPLATE, canary: {steps: [{setWeight: 1}, {pause: {duration: 1m}}, {analysis: {}}, {setWeight: 100}, {analysis: {duration: 30s}}, {pause: {}}]}}"),
        ),
        (
            "dependencies in any order",
            Stack,
            stack(
                "{name: api, dependsOn: [db, cache], template: TEMPLATE}, {name: cache, template: TEMPLATE}, {name: db, template: TEMPLATE}",
            ),
        ),
        (
            "a StatefulSet with a service and its data on a claim",
            Stack,
            db("kind: StatefulSet, service: {ports: [{port: 80}]}, data: {volume: data, path: db/current, method: Sqlite, database: app.db}"),
        ),
        (
            "Files data, live",
            Stack,
            db("data: {volume: data, consistency: Live}"),
        ),
        (
            "Exec data on a claim, run as a named container",
            Stack,
            db("data: {volume: data, method: Exec, exec: {dump: [demo-app, dump], restore: [demo-app, load], container: app}}"),
        ),
        (
            "Exec data over the network, without a volume",
            Stack,
            stack("{name: db, template: TEMPLATE, data: {method: Exec, exec: {dump: [pg_dump, app], restore: [pg_restore, -d, app]}}}"),
        ),
        (
            "a path with dots that are not '..'",
            Stack,
            db("data: {volume: data, path: ./a/..b/c.., method: Files}"),
        ),
        (
            "null fields are absent",
            Stack,
            db("service: null, data: null, dependsOn: null, gates: null"),
        ),
        (
            "one port needs no name",
            Stack,
            stack("{name: api, template: TEMPLATE, service: {ports: [{port: 80}]}}"),
        ),
        (
            "one port number on two protocols",
            Stack,
            stack(
                "{name: api, template: TEMPLATE, service: {ports: [{name: a, port: 53}, {name: b, port: 53, protocol: UDP}]}}",
            ),
        ),
        (
            "gates with one check each",
            Stack,
            stack(
                "{name: api, template: TEMPLATE, gates: [{name: ready, readiness: {}}, {name: smoke, http: {path: /}}]}",
            ),
        ),
        (
            "the longest names that fit",
            Stack,
            stack_named(
                &"s".repeat(11),
                &format!("{{name: {}, template: TEMPLATE}}", "c".repeat(40)),
                "",
            ),
        ),
        (
            "a progress deadline above zero",
            Stack,
            with_spec("  rollout: {progressDeadline: 0.5s}"),
        ),
        (
            "an s3 store with a relative prefix",
            Stack,
            with_spec(
                "  snapshots: {store: {s3: {endpoint: 'http://minio:9000', bucket: snaps, credentialsSecret: s3, prefix: team/shop/}}}",
            ),
        ),
        (
            "a filesystem store, s3 null",
            Stack,
            with_spec("  snapshots: {store: {filesystem: {}, s3: null}}"),
        ),
        (
            "quotas on either store, and retention that prunes to fit",
            Stack,
            with_spec(
                "  snapshots: {store: {filesystem: {quota: 20Gi}}, retention: {keepLast: 3, pruneToFit: true}}",
            ),
        ),
        (
            "an s3 store with a decimal quota",
            Stack,
            with_spec(
                "  snapshots: {store: {s3: {endpoint: 'http://minio:9000', bucket: snaps, credentialsSecret: s3, quota: 1.5T}}}",
            ),
        ),
        (
            "labels, annotations, a rolling update that may lose a pod, minReadySeconds",
            Stack,
            stack(
                "{name: api, template: TEMPLATE, metadata: {labels: {team: web, app.kubernetes.io/name: api}, annotations: {deployctl.dev.example/x: y}}, strategy: {rollingUpdate: {maxSurge: 0, maxUnavailable: 25%}}, minReadySeconds: 5, autoscaling: {hpa: true}}",
            ),
        ),
        (
            "Recreate",
            Stack,
            stack("{name: api, template: TEMPLATE, strategy: {type: Recreate}}"),
        ),
        (
            "a staged StatefulSet",
            Stack,
            stack(
                "{name: db, kind: StatefulSet, service: {ports: [{port: 80}]}, template: TEMPLATE, updateStrategy: {rollingUpdate: {partition: 1, maxUnavailable: 2}}}",
            ),
        ),
        ("rollback", Operation, operation("action: Rollback")),
        (
            "rollback to a revision",
            Operation,
            operation("action: Rollback, toRevision: 3"),
        ),
        (
            "restore a snapshot",
            Operation,
            operation("action: Restore, snapshot: shop-db-1"),
        ),
        ("pause", Operation, operation("action: Pause, toRevision: null")),
    ]
}

#[test]
fn the_edges_of_each_rule_pass_both_layers() {
    for (name, kind, object) in valid_cases() {
        let refused = cel_refusals(kind.crd(), &object);
        assert!(refused.is_empty(), "{name}: refused by CEL: {refused:?}");
        kind.controller(&object)
            .unwrap_or_else(|e| panic!("{name}: refused by validation: {e}"));
    }
}

/// An invalid spec and who must refuse it.
struct Invalid {
    name: &'static str,
    kind: Kind,
    object: Value,
    /// The field path the one refusing rule reports (its schema location, made concrete).
    cel_path: &'static str,
    /// The start of that rule's message.
    cel_message: &'static str,
    /// A path `validation.rs` reports; at or under `cel_path`.
    controller_path: &'static str,
}

fn invalid_cases() -> Vec<Invalid> {
    use Kind::*;
    let case = |name, kind, object, cel_path, cel_message, controller_path| Invalid {
        name,
        kind,
        object,
        cel_path,
        cel_message,
        controller_path,
    };
    let c0 = "spec.components[0]";
    vec![
        case(
            "credentials in a Prometheus gate's headers",
            Stack,
            stack("{name: api, template: TEMPLATE, gates: [{name: slo, prometheus: {address: 'http://prom:9090', query: '1', condition: {operator: '<', value: 2}, headers: [{name: X-Scope-OrgID, value: shop}, {name: authorization, value: 'Bearer x'}]}}]}"),
            "spec.components[0].gates[0].prometheus.headers[1]",
            "credentials go in secretRef",
            "spec.components[0].gates[0].prometheus.headers[1].name",
        ),
        case(
            "credentials in a stack gate's headers",
            Stack,
            with_spec("  gates: [{name: slo, prometheus: {address: 'http://prom:9090', query: '1', condition: {operator: '<', value: 2}, headers: [{name: Authorization, value: 'Basic x'}]}}]"),
            "spec.gates[0].prometheus.headers[0]",
            "credentials go in secretRef",
            "spec.gates[0].prometheus.headers[0].name",
        ),
        case(
            "two components with one name",
            Stack,
            stack("{name: a, template: TEMPLATE}, {name: a, template: TEMPLATE}"),
            "spec.components",
            "component names must be unique",
            "spec.components[1].name",
        ),
        case(
            "a dependency on an unknown component",
            Stack,
            stack("{name: api, dependsOn: [search], template: TEMPLATE}"),
            "spec.components",
            "every dependsOn entry must be the name of a component",
            "spec.components[0].dependsOn[0]",
        ),
        case(
            "a component depending on itself",
            Stack,
            stack("{name: api, dependsOn: [api], template: TEMPLATE}"),
            c0,
            "a component cannot depend on itself",
            "spec.components[0].dependsOn[0]",
        ),
        case(
            "a dependency listed twice",
            Stack,
            stack(
                "{name: api, dependsOn: [db, db], template: TEMPLATE}, {name: db, template: TEMPLATE}",
            ),
            "spec.components[0].dependsOn",
            "dependsOn lists a component more than once",
            "spec.components[0].dependsOn[1]",
        ),
        case(
            "both template and templateFrom",
            Stack,
            stack("{name: web, template: TEMPLATE, templateFrom: {kind: Deployment, name: web}}"),
            c0,
            "a component takes its pod template from exactly one place",
            "spec.components[0].templateFrom",
        ),
        case(
            "neither template nor templateFrom",
            Stack,
            stack("{name: web}"),
            c0,
            "a component takes its pod template from exactly one place",
            "spec.components[0].template.spec.containers",
        ),
        case(
            "a label under deployctl.dev/ (the selector's)",
            Stack,
            stack("{name: api, template: TEMPLATE, metadata: {labels: {deployctl.dev/component: web}}}"),
            "spec.components[0].metadata.labels",
            "labels under deployctl.dev/ and app.kubernetes.io/managed-by are deployctl's own",
            "spec.components[0].metadata.labels[deployctl.dev/component]",
        ),
        case(
            "an annotation under deployctl.dev/",
            Stack,
            stack("{name: api, template: TEMPLATE, metadata: {annotations: {deployctl.dev/revision: '1'}}}"),
            "spec.components[0].metadata.annotations",
            "annotations under deployctl.dev/ are deployctl's own",
            "spec.components[0].metadata.annotations[deployctl.dev/revision]",
        ),
        case(
            "canary steps with an autoscaler",
            Stack,
            stack("{name: api, template: TEMPLATE, autoscaling: {hpa: true}, canary: {steps: [{setWeight: 50}]}}"),
            c0,
            "canary steps set the replica counts",
            "spec.components[0].autoscaling.hpa",
        ),
        case(
            "a Deployment strategy on a StatefulSet",
            Stack,
            stack("{name: db, kind: StatefulSet, service: {ports: [{port: 80}]}, template: TEMPLATE, strategy: {type: Recreate}}"),
            c0,
            "strategy is for a Deployment",
            "spec.components[0].strategy",
        ),
        case(
            "a StatefulSet update strategy on a Deployment",
            Stack,
            stack("{name: api, template: TEMPLATE, updateStrategy: {rollingUpdate: {partition: 1}}}"),
            c0,
            "updateStrategy is for a StatefulSet",
            "spec.components[0].updateStrategy",
        ),
        case(
            "a rolling update with Recreate",
            Stack,
            stack("{name: api, template: TEMPLATE, strategy: {type: Recreate, rollingUpdate: {maxSurge: 2}}}"),
            "spec.components[0].strategy",
            "rollingUpdate goes with type RollingUpdate",
            "spec.components[0].strategy.rollingUpdate",
        ),
        case(
            "maxSurge 0 with maxUnavailable left at 0",
            Stack,
            stack("{name: api, template: TEMPLATE, strategy: {rollingUpdate: {maxSurge: '0%'}}}"),
            "spec.components[0].strategy.rollingUpdate",
            "maxSurge and maxUnavailable cannot both be 0",
            "spec.components[0].strategy.rollingUpdate.maxSurge",
        ),
        case(
            "maxSurge and maxUnavailable both 0",
            Stack,
            stack("{name: api, template: TEMPLATE, strategy: {rollingUpdate: {maxSurge: 0, maxUnavailable: 0}}}"),
            "spec.components[0].strategy.rollingUpdate",
            "maxSurge and maxUnavailable cannot both be 0",
            "spec.components[0].strategy.rollingUpdate.maxSurge",
        ),
        case(
            "a StatefulSet without a service",
            Stack,
            stack("{name: db, kind: StatefulSet, template: TEMPLATE}"),
            c0,
            "a StatefulSet needs a service",
            "spec.components[0].service",
        ),
        case(
            "canary steps on a StatefulSet",
            Stack,
            stack("{name: db, kind: StatefulSet, service: {ports: [{port: 80}]}, template: TEMPLATE, canary: {steps: [{setWeight: 25}]}}"),
            c0,
            "canary steps need kind: Deployment",
            "spec.components[0].canary",
        ),
        case(
            "a canary step that sets a weight and pauses",
            Stack,
            stack("{name: api, template: TEMPLATE, canary: {steps: [{setWeight: 25}, {setWeight: 50, pause: {duration: 1m}}]}}"),
            "spec.components[0].canary.steps[1]",
            "a canary step sets exactly one of setWeight, pause and analysis",
            "spec.components[0].canary.steps[1]",
        ),
        case(
            "an empty canary step",
            Stack,
            stack("{name: api, template: TEMPLATE, canary: {steps: [{}]}}"),
            "spec.components[0].canary.steps[0]",
            "a canary step sets exactly one of setWeight, pause and analysis",
            "spec.components[0].canary.steps[0]",
        ),
        case(
            "data on a volume that is not a claim",
            Stack,
            db("data: {volume: logs}"),
            c0,
            "data.volume must be the name of one of this component's volumeClaims",
            "spec.components[0].data.volume",
        ),
        case(
            "data on a component with no claims",
            Stack,
            stack("{name: db, template: TEMPLATE, data: {volume: data}}"),
            c0,
            "data.volume must be the name of one of this component's volumeClaims",
            "spec.components[0].data.volume",
        ),
        case(
            "two claims with one name",
            Stack,
            stack(
                "{name: db, template: TEMPLATE, volumeClaims: [{name: data, size: 1Gi}, {name: data, size: 2Gi}]}",
            ),
            "spec.components[0].volumeClaims",
            "volume claim names must be unique",
            "spec.components[0].volumeClaims[1].name",
        ),
        case(
            "Sqlite without a database",
            Stack,
            db("data: {volume: data, method: Sqlite}"),
            "spec.components[0].data",
            "database is required with method Sqlite",
            "spec.components[0].data.database",
        ),
        case(
            "a database with method Files",
            Stack,
            db("data: {volume: data, database: app.db}"),
            "spec.components[0].data",
            "database is only used with method Sqlite",
            "spec.components[0].data.database",
        ),
        case(
            "a consistency with method Sqlite",
            Stack,
            db("data: {volume: data, method: Sqlite, database: app.db, consistency: Live}"),
            "spec.components[0].data",
            "consistency is only used with method Files",
            "spec.components[0].data.consistency",
        ),
        case(
            "Files data without a volume",
            Stack,
            db("data: {path: db}"),
            "spec.components[0].data",
            "volume is required with methods Files and Sqlite",
            "spec.components[0].data.volume",
        ),
        case(
            "Exec without exec",
            Stack,
            db("data: {volume: data, method: Exec}"),
            "spec.components[0].data",
            "exec is required with method Exec",
            "spec.components[0].data.exec",
        ),
        case(
            "exec with method Files",
            Stack,
            db("data: {volume: data, exec: {dump: [a], restore: [b]}}"),
            "spec.components[0].data",
            "exec is only used with method Exec",
            "spec.components[0].data.exec",
        ),
        case(
            "exec with method Sqlite",
            Stack,
            db("data: {volume: data, method: Sqlite, database: app.db, exec: {dump: [a], restore: [b]}}"),
            "spec.components[0].data",
            "exec is only used with method Exec",
            "spec.components[0].data.exec",
        ),
        case(
            "an empty dump command",
            Stack,
            db("data: {volume: data, method: Exec, exec: {dump: [], restore: [demo-app, load]}}"),
            "spec.components[0].data.exec",
            "dump must not be empty",
            "spec.components[0].data.exec.dump",
        ),
        case(
            "an empty restore command",
            Stack,
            db("data: {volume: data, method: Exec, exec: {dump: [demo-app, dump], restore: []}}"),
            "spec.components[0].data.exec",
            "restore must not be empty",
            "spec.components[0].data.exec.restore",
        ),
        case(
            "a consistency with method Exec",
            Stack,
            db("data: {method: Exec, consistency: Quiesce, exec: {dump: [a], restore: [b]}}"),
            "spec.components[0].data",
            "consistency is only used with method Files",
            "spec.components[0].data.consistency",
        ),
        case(
            "a database with method Exec",
            Stack,
            db("data: {method: Exec, database: app.db, exec: {dump: [a], restore: [b]}}"),
            "spec.components[0].data",
            "database is only used with method Sqlite",
            "spec.components[0].data.database",
        ),
        case(
            "a path with method Exec",
            Stack,
            db("data: {volume: data, method: Exec, path: db, exec: {dump: [a], restore: [b]}}"),
            "spec.components[0].data",
            "path is not used with method Exec",
            "spec.components[0].data.path",
        ),
        case(
            "Exec data on a volume that is not a claim",
            Stack,
            db("data: {volume: logs, method: Exec, exec: {dump: [a], restore: [b]}}"),
            c0,
            "data.volume must be the name of one of this component's volumeClaims",
            "spec.components[0].data.volume",
        ),
        case(
            "an absolute data path",
            Stack,
            db("data: {volume: data, path: /var/lib/db}"),
            "spec.components[0].data.path",
            "must be a relative path",
            "spec.components[0].data.path",
        ),
        case(
            "a data path out of the volume",
            Stack,
            db("data: {volume: data, path: db/../../etc}"),
            "spec.components[0].data.path",
            "must be a relative path",
            "spec.components[0].data.path",
        ),
        case(
            "a database out of the data path",
            Stack,
            db("data: {volume: data, method: Sqlite, database: ../app.db}"),
            "spec.components[0].data.database",
            "must be a relative path",
            "spec.components[0].data.database",
        ),
        case(
            "one port twice",
            Stack,
            stack(
                "{name: api, template: TEMPLATE, service: {ports: [{name: a, port: 80}, {name: b, port: 80}]}}",
            ),
            "spec.components[0].service.ports",
            "each port and protocol may appear once",
            "spec.components[0].service.ports[1].port",
        ),
        case(
            "one port twice, TCP by default and by name",
            Stack,
            stack(
                "{name: api, template: TEMPLATE, service: {ports: [{name: a, port: 80}, {name: b, port: 80, protocol: TCP}]}}",
            ),
            "spec.components[0].service.ports",
            "each port and protocol may appear once",
            "spec.components[0].service.ports[1].port",
        ),
        case(
            "two ports with one name",
            Stack,
            stack(
                "{name: api, template: TEMPLATE, service: {ports: [{name: web, port: 80}, {name: web, port: 443}]}}",
            ),
            "spec.components[0].service.ports",
            "port names must be unique",
            "spec.components[0].service.ports[1].name",
        ),
        case(
            "two ports, one without a name",
            Stack,
            stack(
                "{name: api, template: TEMPLATE, service: {ports: [{name: web, port: 80}, {port: 443}]}}",
            ),
            "spec.components[0].service.ports",
            "every port needs a name when there is more than one",
            "spec.components[0].service.ports[1].name",
        ),
        case(
            "a gate with no check",
            Stack,
            stack("{name: api, template: TEMPLATE, gates: [{name: ready}]}"),
            "spec.components[0].gates[0]",
            "a gate checks exactly one thing",
            "spec.components[0].gates[0]",
        ),
        case(
            "a gate with two checks",
            Stack,
            stack(
                "{name: api, template: TEMPLATE, gates: [{name: ready, readiness: {}, http: {path: /}}]}",
            ),
            "spec.components[0].gates[0]",
            "a gate checks exactly one thing",
            "spec.components[0].gates[0]",
        ),
        case(
            "two gates of a component with one name",
            Stack,
            stack(
                "{name: api, template: TEMPLATE, gates: [{name: ready, readiness: {}}, {name: ready, http: {path: /}}]}",
            ),
            "spec.components[0].gates",
            "gate names must be unique",
            "spec.components[0].gates[1].name",
        ),
        case(
            "two stack gates with one name",
            Stack,
            with_spec("  gates: [{name: ready, readiness: {}}, {name: ready, readiness: {}}]"),
            "spec.gates",
            "gate names must be unique",
            "spec.gates[1].name",
        ),
        case(
            "a stack gate with no check",
            Stack,
            with_spec("  gates: [{name: ready}]"),
            "spec.gates[0]",
            "a gate checks exactly one thing",
            "spec.gates[0]",
        ),
        case(
            "a zero progress deadline",
            Stack,
            with_spec("  rollout: {progressDeadline: 0m0.00s}"),
            "spec.rollout.progressDeadline",
            "progressDeadline must be longer than 0s",
            "spec.rollout.progressDeadline",
        ),
        case(
            "a store with both repositories",
            Stack,
            with_spec(
                "  snapshots: {store: {filesystem: {}, s3: {endpoint: 'http://minio:9000', bucket: snaps, credentialsSecret: s3}}}",
            ),
            "spec.snapshots.store",
            "set exactly one of filesystem or s3",
            "spec.snapshots.store",
        ),
        case(
            "a store with neither",
            Stack,
            with_spec("  snapshots: {store: {}}"),
            "spec.snapshots.store",
            "set exactly one of filesystem or s3",
            "spec.snapshots.store",
        ),
        case(
            "an s3 prefix out of the bucket's tree",
            Stack,
            with_spec(
                "  snapshots: {store: {s3: {endpoint: 'http://minio:9000', bucket: snaps, credentialsSecret: s3, prefix: /shop}}}",
            ),
            "spec.snapshots.store.s3.prefix",
            "must be a relative path",
            "spec.snapshots.store.s3.prefix",
        ),
        case(
            "object names longer than 52 characters",
            Stack,
            stack_named(
                &"s".repeat(12),
                &format!("{{name: {}, template: TEMPLATE}}", "c".repeat(40)),
                "",
            ),
            "",
            "metadata.name plus a component name must stay within 51 characters",
            "spec.components[0].name",
        ),
        case(
            "a restore without a snapshot",
            Operation,
            operation("action: Restore"),
            "spec",
            "snapshot is required with action Restore",
            "spec.snapshot",
        ),
        case(
            "a snapshot on a rollback",
            Operation,
            operation("action: Rollback, snapshot: shop-db-1"),
            "spec",
            "snapshot is only used with action Restore",
            "spec.snapshot",
        ),
        case(
            "a revision on a restore",
            Operation,
            operation("action: Restore, snapshot: shop-db-1, toRevision: 2"),
            "spec",
            "toRevision is only used with action Rollback",
            "spec.toRevision",
        ),
        case(
            "a revision on a pause",
            Operation,
            operation("action: Pause, toRevision: 2"),
            "spec",
            "toRevision is only used with action Rollback",
            "spec.toRevision",
        ),
    ]
}

/// Whether `path` is `base` or a field under it.
fn at_or_under(path: &str, base: &str) -> bool {
    base.is_empty()
        || path == base
        || path
            .strip_prefix(base)
            .is_some_and(|rest| rest.starts_with('.') || rest.starts_with('['))
}

#[test]
fn each_invalid_spec_is_refused_by_its_rule_and_by_validation() {
    let mut failures = Vec::new();
    for case in invalid_cases() {
        let refused = cel_refusals(case.kind.crd(), &case.object);
        let expected = refused.len() == 1
            && refused[0].0 == case.cel_path
            && refused[0].1.starts_with(case.cel_message);
        if !expected {
            failures.push(format!(
                "{}: expected CEL to refuse it once, at {:?} with {:?}..., but it said {refused:?}",
                case.name, case.cel_path, case.cel_message
            ));
        }
        assert!(
            at_or_under(case.controller_path, case.cel_path),
            "{}: the table is wrong: {} is not under {}",
            case.name,
            case.controller_path,
            case.cel_path
        );
        match case.kind.controller(&case.object) {
            Ok(()) => failures.push(format!(
                "{}: CEL refuses it but validation.rs accepts it",
                case.name
            )),
            Err(e) => {
                let paths: Vec<&str> = e.0.iter().map(|f| f.path.as_str()).collect();
                if !paths.contains(&case.controller_path) {
                    failures.push(format!(
                        "{}: expected validation.rs to refuse {}, but it said: {e}",
                        case.name, case.controller_path
                    ));
                }
                for p in &paths {
                    if !at_or_under(p, case.cel_path) {
                        failures.push(format!(
                            "{}: validation.rs also refuses {p}, which no CEL rule refused: {e}",
                            case.name
                        ));
                    }
                }
            }
        }
    }
    assert!(failures.is_empty(), "\n{}", failures.join("\n"));
}

#[test]
fn every_rule_has_an_invalid_case() {
    let mut hit = BTreeSet::new();
    for case in invalid_cases() {
        for (path, message) in cel_refusals(case.kind.crd(), &case.object) {
            hit.insert((location_of(&path), message));
        }
    }
    let missing: Vec<String> = all_rules()
        .into_iter()
        .filter(|r| !hit.contains(&(r.location.clone(), r.message.clone())))
        .map(|r| format!("{} {:?}: {}", r.location, r.rule, r.message))
        .collect();
    assert!(
        missing.is_empty(),
        "rules no invalid case exercises; add one to invalid_cases():\n{}",
        missing.join("\n")
    );
}

#[test]
fn every_rule_names_what_to_do() {
    for r in all_rules() {
        assert!(
            r.message.contains(':') || r.message.contains('('),
            "{} {:?}: the message {:?} should say what to do",
            r.location,
            r.rule,
            r.message
        );
    }
}

// ---------------------------------------------------------------------------------------
// Cost. On a CRD write the API server estimates, from the schema's maxItems and
// maxLength, the worst-case cost of each rule times the number of times it can run (the
// maxItems of every list above it), and refuses the CRD when one rule exceeds 10,000,000
// or all together exceed 100,000,000 (apiextensions' StaticEstimatedCostLimit and
// StaticEstimatedCRDCostLimit). An unbounded list or string under a rule blows either.
// This re-creates cel-go's estimate closely enough to keep each rule under half the limit.

mod cost {
    use kube_cel::cel::common::ast::{Expr, LiteralValue};
    use kube_cel::cel::{IdedExpr, Program};
    use serde_json::Value;
    use std::collections::HashMap;

    /// Per rule, per cel-go's `StaticEstimatedCostLimit`.
    pub const RULE_LIMIT: f64 = 10_000_000.0;
    /// For the whole CRD, per `StaticEstimatedCRDCostLimit`.
    pub const CRD_LIMIT: f64 = 100_000_000.0;

    static MAP_KEY: std::sync::LazyLock<Value> =
        std::sync::LazyLock::new(|| serde_json::json!({"type": "string"}));

    /// What an expression is, as far as cost goes.
    #[derive(Clone, Debug)]
    enum Ty<'a> {
        /// A value of the object, with its schema.
        Schema(&'a Value),
        /// A string literal of this many bytes.
        Literal(usize),
        /// Anything else (numbers, booleans, the root's metadata).
        Other,
    }

    /// Largest size in bytes (strings) or items (lists), as the API server estimates it.
    fn size(ty: &Ty<'_>) -> f64 {
        match ty {
            Ty::Schema(s) => {
                let bound = if s.get("type").and_then(Value::as_str) == Some("array") {
                    s.get("maxItems").and_then(Value::as_f64)
                } else if s.get("additionalProperties").is_some() {
                    // A map: a comprehension runs over its keys.
                    s.get("maxProperties").and_then(Value::as_f64)
                } else if s.get("type").and_then(Value::as_str) == Some("string") {
                    // Up to four bytes a character.
                    s.get("maxLength").and_then(Value::as_f64).map(|n| n * 4.0)
                } else {
                    Some(0.0)
                };
                // Unbounded: the API server guesses from the request size, which no
                // budget survives; kept infinite so the rule fails the check below.
                bound.unwrap_or(f64::INFINITY)
            }
            Ty::Literal(n) => *n as f64,
            Ty::Other => 0.0,
        }
    }

    fn items<'a>(ty: &Ty<'a>, rule: &str) -> Ty<'a> {
        match ty {
            // A map's keys: strings the schema cannot bound (the API server assumes the
            // request size), so only rules whose cost does not grow with them pass.
            Ty::Schema(s) if s.get("additionalProperties").is_some() => Ty::Schema(&MAP_KEY),
            Ty::Schema(s) => Ty::Schema(
                s.get("items")
                    .unwrap_or_else(|| panic!("{rule:?} iterates over a non-list: {s}")),
            ),
            _ => panic!("{rule:?} iterates over a value with no schema"),
        }
    }

    struct Estimator<'a> {
        rule: &'a str,
        vars: HashMap<String, Ty<'a>>,
    }

    impl<'a> Estimator<'a> {
        fn est(&mut self, e: &IdedExpr) -> (f64, Ty<'a>) {
            let rule = self.rule;
            match &e.expr {
                Expr::Literal(LiteralValue::String(s)) => (0.0, Ty::Literal(s.len())),
                Expr::Literal(_) => (0.0, Ty::Other),
                Expr::Ident(name) => (1.0, self.vars.get(name).cloned().unwrap_or(Ty::Other)),
                Expr::Select(sel) => {
                    let (c, ty) = self.est(&sel.operand);
                    let field = match ty {
                        Ty::Schema(s) => s
                            .pointer(&format!("/properties/{}", sel.field))
                            .map(Ty::Schema)
                            .unwrap_or(Ty::Other),
                        _ => Ty::Other,
                    };
                    (c + 1.0, if sel.test { Ty::Other } else { field })
                }
                Expr::List(list) => {
                    let c: f64 = list.elements.iter().map(|x| self.est(x).0).sum();
                    (10.0 + c, Ty::Other)
                }
                Expr::Comprehension(comp) => {
                    let (range_cost, range) = self.est(&comp.iter_range);
                    let n = size(&range);
                    let saved = self.vars.insert(comp.iter_var.clone(), items(&range, rule));
                    self.vars.insert(comp.accu_var.clone(), Ty::Other);
                    let per_item = self.est(&comp.loop_cond).0 + self.est(&comp.loop_step).0;
                    let fixed = self.est(&comp.accu_init).0 + self.est(&comp.result).0;
                    match saved {
                        Some(ty) => self.vars.insert(comp.iter_var.clone(), ty),
                        None => self.vars.remove(&comp.iter_var),
                    };
                    (range_cost + fixed + n * per_item, Ty::Other)
                }
                Expr::Call(call) => {
                    let target = call.target.as_deref().map(|t| self.est(t));
                    let args: Vec<(f64, Ty<'a>)> = call.args.iter().map(|a| self.est(a)).collect();
                    let arg_cost: f64 = target
                        .iter()
                        .chain(args.iter())
                        .map(|(c, _)| c)
                        .sum::<f64>();
                    let traverse = |n: f64| (0.1 * n).ceil();
                    match call.func_name.as_str() {
                        "_&&_" | "_||_" => (arg_cost, Ty::Other),
                        "_?_:_" => {
                            let (a, b) = (&args[1], &args[2]);
                            let ty = if size(&a.1) >= size(&b.1) {
                                a.1.clone()
                            } else {
                                b.1.clone()
                            };
                            (args[0].0 + a.0.max(b.0), ty)
                        }
                        "_==_" | "_!=_" | "_<_" | "_<=_" | "_>_" | "_>=_" => {
                            let smaller = size(&args[0].1).min(size(&args[1].1));
                            (arg_cost + 1.0 + traverse(smaller), Ty::Other)
                        }
                        "@in" => {
                            let n = size(&args[1].1);
                            let elem = size(&items(&args[1].1, rule));
                            (arg_cost + n * (1.0 + traverse(elem)), Ty::Other)
                        }
                        "startsWith" | "endsWith" => {
                            (arg_cost + 1.0 + traverse(size(&args[0].1)), Ty::Other)
                        }
                        "matches" => {
                            let (_, t) = target.as_ref().expect("matches has a target");
                            let text = traverse(size(t) + 1.0);
                            let regex = (0.25 * size(&args[0].1)).ceil();
                            (arg_cost + text * regex, Ty::Other)
                        }
                        // A conversion of an int-or-string: as long as the string.
                        "string" => (arg_cost + 1.0, args[0].1.clone()),
                        "size" | "!_" | "-_" | "_+_" | "_-_" | "@not_strictly_false" => {
                            (arg_cost + 1.0, Ty::Other)
                        }
                        other => panic!("{rule:?}: no cost model for {other}; add one"),
                    }
                }
                other => panic!("{rule:?}: no cost model for {other:?}"),
            }
        }
    }

    /// Estimated cost of one evaluation of `rule` with `self` of schema `at`.
    pub fn of(rule: &str, at: &Value) -> f64 {
        let program = Program::compile(rule).unwrap_or_else(|e| panic!("{rule:?}: {e}"));
        let mut e = Estimator {
            rule,
            vars: HashMap::from([("self".to_string(), Ty::Schema(at))]),
        };
        e.est(program.expression()).0
    }

    /// How many times a rule can run: the maxItems of every list above it.
    pub fn cardinality(ancestors: &[&Value]) -> f64 {
        // The last schema is the rule's own; only lists strictly above it multiply.
        ancestors[..ancestors.len() - 1]
            .iter()
            .filter(|s| s.get("type").and_then(Value::as_str) == Some("array"))
            .map(|s| {
                s.get("maxItems")
                    .and_then(Value::as_f64)
                    .unwrap_or(f64::INFINITY)
            })
            .product()
    }
}

#[test]
fn every_rule_is_cheap_enough_for_the_api_server() {
    let mut report = Vec::new();
    for file in CRDS {
        let mut found = Vec::new();
        rules_of(schema(file), "", &mut Vec::new(), &mut found);
        let mut total = 0.0;
        for (r, ancestors) in &found {
            let at = ancestors.last().expect("a rule has its schema");
            let once = cost::of(&r.rule, at);
            let times = cost::cardinality(ancestors);
            let worst = once * times;
            total += worst;
            report.push(format!(
                "{worst:>12.0} = {once:>8.0} x {times:>5.0}  {} {}",
                if r.location.is_empty() {
                    "<root>"
                } else {
                    &r.location
                },
                r.rule
            ));
            assert!(
                worst <= cost::RULE_LIMIT / 2.0,
                "{} {:?} is estimated at {worst} (limit {}); add or lower the maxItems/maxLength of what it reads and of the lists above it",
                r.location,
                r.rule,
                cost::RULE_LIMIT
            );
        }
        assert!(
            total <= cost::CRD_LIMIT / 2.0,
            "the rules of {file} are estimated at {total} together (limit {})",
            cost::CRD_LIMIT
        );
        report.push(format!("{total:>12.0}  all rules of {file}"));
    }
    // `cargo test -p deployctl-api --test cel_rules -- --nocapture` shows the estimates.
    println!("{}", report.join("\n"));
}

// ---------------------------------------------------------------------------------------
// The same tables on a real API server.

/// Every invalid case is refused by the harness's API server (Kubernetes 1.37, server-side
/// dry run, so nothing is stored) with its rule's message, naming the field the rule sits
/// on; every valid case is accepted. What the offline evaluation above says is what a
/// user's `kubectl apply` meets.
#[tokio::test]
async fn a_real_api_server_refuses_each_invalid_case_with_its_rule_and_accepts_the_valid_ones() {
    use kube::api::{Api, DynamicObject, PostParams};
    use kube::discovery::ApiResource;
    let env = deployctl_harness::shared();
    let client = deployctl_harness::crds::install_crds(env).await;
    let ns = env.namespace("cel").await;
    let resource = |kind: Kind| {
        let (k, plural) = match kind {
            Kind::Stack => ("ProductionStack", "productionstacks"),
            Kind::Operation => ("StackOperation", "stackoperations"),
        };
        ApiResource {
            group: "deployctl.dev".into(),
            version: "v1alpha1".into(),
            api_version: "deployctl.dev/v1alpha1".into(),
            kind: k.into(),
            plural: plural.into(),
        }
    };
    let dry_run = PostParams {
        dry_run: true,
        ..Default::default()
    };
    let create = |kind: Kind, object: &Value| {
        let api: Api<DynamicObject> =
            Api::namespaced_with(client.clone(), ns.name(), &resource(kind));
        let object: DynamicObject = serde_json::from_value(object.clone()).unwrap();
        let dry_run = dry_run.clone();
        async move { api.create(&dry_run, &object).await }
    };
    let mut failures = Vec::new();
    for case in invalid_cases() {
        match create(case.kind, &case.object).await {
            Ok(_) => failures.push(format!("{}: the API server accepted it", case.name)),
            Err(kube::Error::Api(s)) => {
                let fields: Vec<String> = s
                    .details
                    .iter()
                    .flat_map(|d| &d.causes)
                    .map(|c| c.field.clone())
                    .collect();
                // The server names the rule's field as CEL paths are written there
                // (`spec.components[0]`), or the list it sits under.
                let field_named = fields
                    .iter()
                    .any(|f| at_or_under(f, case.cel_path) || at_or_under(case.cel_path, f));
                if s.code != 422 || !s.message.contains(case.cel_message) || !field_named {
                    failures.push(format!(
                        "{}: expected 422 with {:?} at {}, got {} {:?} at {fields:?}",
                        case.name, case.cel_message, case.cel_path, s.code, s.message
                    ));
                }
            }
            Err(e) => failures.push(format!("{}: {e}", case.name)),
        }
    }
    for (name, kind, object) in valid_cases() {
        if let Err(e) = create(kind, &object).await {
            failures.push(format!("valid case {name}: the API server refused it: {e}"));
        }
    }
    assert!(failures.is_empty(), "\n{}", failures.join("\n"));
}
