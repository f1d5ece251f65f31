//! Resolve (pure): the spec's components with every reference replaced by what it points
//! at now: a `templateFrom` by the referenced workload's pod template (kept, to say where
//! the template came from), and every ConfigMap and Secret reference by the immutable
//! per-revision copy of the object's content. The revision records these
//! resolved components, so a rollback brings back the config of its time even after the
//! user's objects changed. A component that references nothing resolves to itself, byte
//! for byte: existing stacks keep their revision hash.
//!
//! Reading the referenced objects and writing the copies is `configs`' job.

use deployctl_api::validation::{FieldError, InvalidSpec};
use deployctl_api::{labels, Component, ConfigKind, ConfigVersion, WorkloadKind};
use k8s_openapi::api::core::v1::{ConfigMap, PodSpec, PodTemplateSpec, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use k8s_openapi::ByteString;
use serde::Serialize;
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, BTreeSet};

/// Longest ConfigMap/Secret name (a DNS subdomain).
const MAX_NAME: usize = 253;
/// Hex digits of the content digest in a copy's name.
const HASH_LEN: usize = 10;

/// Which kinds of referenced objects are versioned (ConfigMaps always are).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Versioned {
    /// Secrets too (the controller then reads them; off, it reads no Secret at all).
    pub secrets: bool,
}

impl Default for Versioned {
    fn default() -> Self {
        Versioned { secrets: true }
    }
}

impl Versioned {
    fn covers(&self, kind: ConfigKind) -> bool {
        kind == ConfigKind::ConfigMap || self.secrets
    }
}

/// One place a pod template names a ConfigMap or Secret.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigRef {
    /// What it names.
    pub kind: ConfigKind,
    /// The object's name.
    pub name: String,
    /// `optional: true`: a missing object is not an error.
    pub optional: bool,
    /// Field path, e.g. `spec.components[0].template.spec.containers[0].env[2].valueFrom.configMapKeyRef`.
    pub path: String,
}

/// A referenced object as read from the API server.
#[derive(Clone, Debug)]
pub enum Source {
    /// A ConfigMap.
    ConfigMap(ConfigMap),
    /// A Secret.
    Secret(Secret),
}

/// Present referenced objects by kind and name (absent ones are simply not in the map).
pub type Sources = BTreeMap<(ConfigKind, String), Source>;

/// A workload a `templateFrom` references, as read.
#[derive(Clone, Debug, PartialEq)]
pub struct Referenced {
    /// Its pod template (`spec.template`).
    pub template: PodTemplateSpec,
    /// Its `spec.replicas` (1 when unset, as the API server defaults it).
    pub replicas: i32,
}

/// Present referenced workloads by kind and name.
pub type Workloads = BTreeMap<(WorkloadKind, String), Referenced>;

/// The workloads the components take their templates from.
pub fn templates_from(components: &[Component]) -> BTreeSet<(WorkloadKind, String)> {
    components
        .iter()
        .filter_map(|c| c.template_from.as_ref())
        .map(|f| (f.kind, f.name.clone()))
        .collect()
}

/// The components with each `templateFrom` filled in with the workload's template. A
/// missing workload refuses the spec (nothing is applied, nothing deleted).
pub fn fill_templates(
    components: &[Component],
    workloads: &Workloads,
) -> Result<Vec<Component>, InvalidSpec> {
    let mut missing = vec![];
    let out = components
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let mut c = c.clone();
            if let Some(from) = &c.template_from {
                match workloads.get(&(from.kind, from.name.clone())) {
                    Some(w) => c.template = w.template.clone(),
                    None => missing.push(FieldError {
                        path: format!("spec.components[{i}].templateFrom"),
                        message: format!(
                            "{} {} does not exist in the stack's namespace: create it or fix the name (deployctl resumes by itself once it exists; the running workload is left as it is)",
                            from.kind, from.name
                        ),
                    }),
                }
            }
            c
        })
        .collect();
    if missing.is_empty() {
        Ok(out)
    } else {
        Err(InvalidSpec(missing))
    }
}

/// What the revision records and what must exist before its pods start.
#[derive(Clone, Debug, Default)]
pub struct Resolved {
    /// The components, references pointing at the copies.
    pub components: Vec<Component>,
    /// Config versions per component (components with none are left out).
    pub configs: BTreeMap<String, Vec<ConfigVersion>>,
    /// The copies to create (or to own by one more revision), one per distinct content.
    pub copies: Vec<Copy>,
}

/// An immutable per-revision copy of a user's ConfigMap or Secret.
#[derive(Clone, Debug)]
pub struct Copy {
    /// The version it is.
    pub version: ConfigVersion,
    /// The object to create, without owner references.
    pub object: Source,
}

/// Every ConfigMap/Secret reference of the components, in spec order.
pub fn references(components: &[Component], versioned: Versioned) -> Vec<ConfigRef> {
    let mut out = vec![];
    for (i, c) in components.iter().enumerate() {
        let mut template = c.template.clone();
        if let Some(spec) = template.spec.as_mut() {
            let prefix = format!("spec.components[{i}].template.spec");
            visit(spec, &prefix, versioned, &mut |r, _| out.push(r));
        }
    }
    out
}

/// The distinct objects the components reference.
pub fn referenced(
    components: &[Component],
    versioned: Versioned,
) -> BTreeSet<(ConfigKind, String)> {
    references(components, versioned)
        .into_iter()
        .map(|r| (r.kind, r.name))
        .collect()
}

/// Resolves the components against the objects present now. A required reference to a
/// missing object refuses the whole spec, naming every such field; an optional one stays
/// as written.
pub fn resolve(
    stack: &str,
    components: &[Component],
    sources: &Sources,
    versioned: Versioned,
) -> Result<Resolved, InvalidSpec> {
    let mut missing = vec![];
    let mut resolved = Resolved::default();
    let mut copies: BTreeMap<String, Copy> = BTreeMap::new();
    for (i, c) in components.iter().enumerate() {
        let mut c = c.clone();
        let mut versions: BTreeSet<ConfigVersion> = BTreeSet::new();
        if let Some(spec) = c.template.spec.as_mut() {
            let prefix = format!("spec.components[{i}].template.spec");
            visit(spec, &prefix, versioned, &mut |r, name| {
                match sources.get(&(r.kind, r.name.clone())) {
                    Some(source) => {
                        let copy = copy_of(stack, source);
                        *name = copy.version.copy.clone();
                        versions.insert(copy.version.clone());
                        copies.entry(copy.version.copy.clone()).or_insert(copy);
                    }
                    None if r.optional => {}
                    None => missing.push(FieldError {
                        path: r.path,
                        message: format!(
                            "{} {} does not exist: create it, or mark the reference optional: true (deployctl resumes by itself once it exists)",
                            r.kind, r.name
                        ),
                    }),
                }
            });
        }
        if !versions.is_empty() {
            resolved
                .configs
                .insert(c.name.clone(), versions.into_iter().collect());
        }
        resolved.components.push(c);
    }
    if !missing.is_empty() {
        return Err(InvalidSpec(missing));
    }
    resolved.copies = copies.into_values().collect();
    Ok(resolved)
}

/// Walks every ConfigMap/Secret reference of a pod spec, letting `f` rewrite the name.
fn visit(
    spec: &mut PodSpec,
    prefix: &str,
    versioned: Versioned,
    f: &mut impl FnMut(ConfigRef, &mut String),
) {
    let mut call = |kind, name: &mut String, optional: Option<bool>, path: String| {
        if !versioned.covers(kind) {
            return;
        }
        let r = ConfigRef {
            kind,
            name: name.clone(),
            optional: optional.unwrap_or(false),
            path,
        };
        f(r, name);
    };
    let lists = [
        ("containers", spec.containers.iter_mut().collect::<Vec<_>>()),
        (
            "initContainers",
            spec.init_containers
                .iter_mut()
                .flatten()
                .collect::<Vec<_>>(),
        ),
    ];
    for (list, containers) in lists {
        for (ci, container) in containers.into_iter().enumerate() {
            let at = format!("{prefix}.{list}[{ci}]");
            for (ei, env) in container.env.iter_mut().flatten().enumerate() {
                let Some(from) = env.value_from.as_mut() else {
                    continue;
                };
                if let Some(s) = from.config_map_key_ref.as_mut() {
                    let path = format!("{at}.env[{ei}].valueFrom.configMapKeyRef");
                    call(ConfigKind::ConfigMap, &mut s.name, s.optional, path);
                }
                if let Some(s) = from.secret_key_ref.as_mut() {
                    let path = format!("{at}.env[{ei}].valueFrom.secretKeyRef");
                    call(ConfigKind::Secret, &mut s.name, s.optional, path);
                }
            }
            for (ei, from) in container.env_from.iter_mut().flatten().enumerate() {
                if let Some(s) = from.config_map_ref.as_mut() {
                    let path = format!("{at}.envFrom[{ei}].configMapRef");
                    call(ConfigKind::ConfigMap, &mut s.name, s.optional, path);
                }
                if let Some(s) = from.secret_ref.as_mut() {
                    let path = format!("{at}.envFrom[{ei}].secretRef");
                    call(ConfigKind::Secret, &mut s.name, s.optional, path);
                }
            }
        }
    }
    for (vi, volume) in spec.volumes.iter_mut().flatten().enumerate() {
        let at = format!("{prefix}.volumes[{vi}]");
        if let Some(s) = volume.config_map.as_mut() {
            call(
                ConfigKind::ConfigMap,
                &mut s.name,
                s.optional,
                format!("{at}.configMap"),
            );
        }
        if let Some(s) = volume.secret.as_mut() {
            if let Some(name) = s.secret_name.as_mut() {
                call(ConfigKind::Secret, name, s.optional, format!("{at}.secret"));
            }
        }
        if let Some(p) = volume.projected.as_mut() {
            for (si, source) in p.sources.iter_mut().flatten().enumerate() {
                if let Some(s) = source.config_map.as_mut() {
                    let path = format!("{at}.projected.sources[{si}].configMap");
                    call(ConfigKind::ConfigMap, &mut s.name, s.optional, path);
                }
                if let Some(s) = source.secret.as_mut() {
                    let path = format!("{at}.projected.sources[{si}].secret");
                    call(ConfigKind::Secret, &mut s.name, s.optional, path);
                }
            }
        }
    }
}

/// What a digest covers: the content only (BTreeMaps serialize with sorted keys), so the
/// same content always maps to the same copy.
#[derive(Serialize)]
struct Content<'a> {
    kind: ConfigKind,
    #[serde(skip_serializing_if = "Option::is_none")]
    type_: Option<&'a str>,
    data: BTreeMap<&'a str, &'a [u8]>,
    binary_data: BTreeMap<&'a str, &'a [u8]>,
    /// For Secrets: the source's uid, so a digest of a short secret cannot be found by
    /// trying candidate values without read access to the Secret itself.
    #[serde(skip_serializing_if = "Option::is_none")]
    salt: Option<&'a str>,
}

/// Digest of a source's content.
pub fn content_hash(source: &Source) -> String {
    let content = match source {
        Source::ConfigMap(cm) => Content {
            kind: ConfigKind::ConfigMap,
            type_: None,
            data: cm
                .data
                .iter()
                .flatten()
                .map(|(k, v)| (k.as_str(), v.as_bytes()))
                .collect(),
            binary_data: bytes(cm.binary_data.as_ref()),
            salt: None,
        },
        Source::Secret(s) => Content {
            kind: ConfigKind::Secret,
            type_: s.type_.as_deref(),
            data: bytes(s.data.as_ref()),
            binary_data: BTreeMap::new(),
            salt: Some(s.metadata.uid.as_deref().unwrap_or("")),
        },
    };
    let mut h = hex::encode(Sha256::digest(
        serde_json::to_vec(&content).expect("content serializes"),
    ));
    h.truncate(HASH_LEN);
    h
}

fn bytes(m: Option<&BTreeMap<String, ByteString>>) -> BTreeMap<&str, &[u8]> {
    m.iter()
        .flat_map(|m| m.iter())
        .map(|(k, v)| (k.as_str(), v.0.as_slice()))
        .collect()
}

/// Name of the copy of `name` with content digest `hash`.
pub fn copy_name(name: &str, hash: &str) -> String {
    let room = MAX_NAME - HASH_LEN - 1;
    let base = if name.len() > room {
        name[..room].trim_end_matches(['-', '.'])
    } else {
        name
    };
    format!("{base}-{hash}")
}

/// The immutable copy of a source: same data, binary data and type.
pub fn copy_of(stack: &str, source: &Source) -> Copy {
    let hash = content_hash(source);
    let (kind, name, ns) = match source {
        Source::ConfigMap(o) => (
            ConfigKind::ConfigMap,
            &o.metadata.name,
            &o.metadata.namespace,
        ),
        Source::Secret(o) => (ConfigKind::Secret, &o.metadata.name, &o.metadata.namespace),
    };
    let name = name.clone().unwrap_or_default();
    let copy = copy_name(&name, &hash);
    let metadata = ObjectMeta {
        name: Some(copy.clone()),
        namespace: ns.clone(),
        labels: Some(BTreeMap::from([
            (labels::STACK.to_string(), stack.to_string()),
            (
                labels::MANAGED_BY.to_string(),
                labels::MANAGED_BY_VALUE.to_string(),
            ),
            (
                deployctl_api::config::SOURCE_LABEL.to_string(),
                name.chars().take(63).collect(),
            ),
        ])),
        ..Default::default()
    };
    let object = match source {
        Source::ConfigMap(cm) => Source::ConfigMap(ConfigMap {
            metadata,
            data: cm.data.clone(),
            binary_data: cm.binary_data.clone(),
            immutable: Some(true),
        }),
        Source::Secret(s) => Source::Secret(Secret {
            metadata,
            data: s.data.clone(),
            type_: s.type_.clone(),
            immutable: Some(true),
            string_data: None,
        }),
    };
    Copy {
        version: ConfigVersion {
            kind,
            name,
            copy,
            hash,
        },
        object,
    }
}

/// Owner references a copy should have: the ones it has plus `revision`'s (never a
/// controller reference: several revisions share a copy, and the garbage collector
/// deletes it once the last of them is gone). None when it has it already.
pub fn with_owner(
    existing: &[OwnerReference],
    revision: &OwnerReference,
) -> Option<Vec<OwnerReference>> {
    if existing.iter().any(|o| o.uid == revision.uid) {
        return None;
    }
    let mut out = existing.to_vec();
    out.push(OwnerReference {
        controller: None,
        block_owner_deletion: None,
        ..revision.clone()
    });
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const V: Versioned = Versioned { secrets: true };

    fn components(yaml: &str) -> Vec<Component> {
        serde_yaml_ng::from_str(yaml).unwrap()
    }

    fn cm(name: &str, value: &str) -> Source {
        Source::ConfigMap(ConfigMap {
            metadata: ObjectMeta {
                name: Some(name.into()),
                namespace: Some("ns".into()),
                uid: Some(format!("uid-{name}")),
                ..Default::default()
            },
            data: Some(BTreeMap::from([("LEVEL".into(), value.into())])),
            ..Default::default()
        })
    }

    fn secret(name: &str, value: &str) -> Source {
        Source::Secret(Secret {
            metadata: ObjectMeta {
                name: Some(name.into()),
                namespace: Some("ns".into()),
                uid: Some(format!("uid-{name}")),
                ..Default::default()
            },
            data: Some(BTreeMap::from([(
                "password".into(),
                ByteString(value.as_bytes().to_vec()),
            )])),
            type_: Some("Opaque".into()),
            ..Default::default()
        })
    }

    const ALL_KINDS: &str = r#"
- name: web
  template:
    spec:
      initContainers:
        - name: init
          image: x
          envFrom: [{secretRef: {name: db}}]
      containers:
        - name: app
          image: x
          env:
            - {name: A, value: "1"}
            - {name: B, valueFrom: {secretKeyRef: {name: db, key: password}}}
            - {name: C, valueFrom: {configMapKeyRef: {name: settings, key: LEVEL}}}
          envFrom: [{configMapRef: {name: settings}}]
      volumes:
        - {name: v1, configMap: {name: files}}
        - {name: v2, secret: {secretName: db}}
        - name: v3
          projected:
            sources: [{configMap: {name: settings}}, {secret: {name: tls, optional: true}}]
"#;

    fn sources(list: Vec<Source>) -> Sources {
        list.into_iter()
            .map(|s| {
                let key = match &s {
                    Source::ConfigMap(o) => {
                        (ConfigKind::ConfigMap, o.metadata.name.clone().unwrap())
                    }
                    Source::Secret(o) => (ConfigKind::Secret, o.metadata.name.clone().unwrap()),
                };
                (key, s)
            })
            .collect()
    }

    #[test]
    fn finds_every_kind_of_reference_with_its_path() {
        let refs = references(&components(ALL_KINDS), V);
        let paths: Vec<(&str, &str)> = refs
            .iter()
            .map(|r| (r.name.as_str(), r.path.as_str()))
            .collect();
        let p = "spec.components[0].template.spec";
        assert_eq!(
            paths,
            vec![
                (
                    "db",
                    &*format!("{p}.containers[0].env[1].valueFrom.secretKeyRef")
                ),
                (
                    "settings",
                    &*format!("{p}.containers[0].env[2].valueFrom.configMapKeyRef")
                ),
                (
                    "settings",
                    &*format!("{p}.containers[0].envFrom[0].configMapRef")
                ),
                (
                    "db",
                    &*format!("{p}.initContainers[0].envFrom[0].secretRef")
                ),
                ("files", &*format!("{p}.volumes[0].configMap")),
                ("db", &*format!("{p}.volumes[1].secret")),
                (
                    "settings",
                    &*format!("{p}.volumes[2].projected.sources[0].configMap")
                ),
                (
                    "tls",
                    &*format!("{p}.volumes[2].projected.sources[1].secret")
                ),
            ]
        );
        assert!(refs.iter().find(|r| r.name == "tls").unwrap().optional);
        assert_eq!(referenced(&components(ALL_KINDS), V).len(), 4);
    }

    #[test]
    fn components_without_references_resolve_to_themselves_byte_for_byte() {
        let spec = components("[{name: api, template: {spec: {containers: [{name: a, image: 'x:1', env: [{name: A, value: '1'}]}]}}}]");
        let r = resolve("s", &spec, &Sources::new(), V).unwrap();
        assert_eq!(
            serde_json::to_vec(&r.components).unwrap(),
            serde_json::to_vec(&spec).unwrap()
        );
        assert!(r.configs.is_empty() && r.copies.is_empty());
    }

    #[test]
    fn references_point_at_content_addressed_copies() {
        let spec = components(ALL_KINDS);
        let found = sources(vec![
            cm("settings", "info"),
            cm("files", "x"),
            secret("db", "hunter2"),
        ]);
        let r = resolve("s", &spec, &found, V).unwrap();
        let names = referenced(&r.components, V);
        let h = content_hash(&found[&(ConfigKind::ConfigMap, "settings".into())]);
        assert!(names.contains(&(ConfigKind::ConfigMap, format!("settings-{h}"))));
        // The optional missing Secret stays as written.
        assert!(names.contains(&(ConfigKind::Secret, "tls".into())));
        assert_eq!(r.copies.len(), 3, "one copy per distinct object");
        assert_eq!(r.configs["web"].len(), 3);
        for c in &r.copies {
            match &c.object {
                Source::ConfigMap(o) => assert_eq!(o.immutable, Some(true)),
                Source::Secret(o) => {
                    assert_eq!(o.immutable, Some(true));
                    assert_eq!(o.type_.as_deref(), Some("Opaque"));
                }
            }
        }
        // The user's spec is untouched.
        assert_eq!(spec, components(ALL_KINDS));
        // Same content, same copy; new content, new copy; the revision hash follows.
        let again = resolve("s", &spec, &found, V).unwrap();
        assert_eq!(again.components, r.components);
        let mut changed = found.clone();
        changed.insert(
            (ConfigKind::ConfigMap, "settings".into()),
            cm("settings", "debug"),
        );
        let other = resolve("s", &spec, &changed, V).unwrap();
        assert_ne!(
            crate::reconcile::revisions::revision_hash(&other.components),
            crate::reconcile::revisions::revision_hash(&r.components)
        );
    }

    #[test]
    fn a_missing_required_object_names_every_field_that_needs_it() {
        let spec = components(ALL_KINDS);
        let found = sources(vec![cm("files", "x"), secret("db", "p")]);
        let err = resolve("s", &spec, &found, V).unwrap_err();
        let paths: Vec<&str> = err.0.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(
            paths,
            vec![
                "spec.components[0].template.spec.containers[0].env[2].valueFrom.configMapKeyRef",
                "spec.components[0].template.spec.containers[0].envFrom[0].configMapRef",
                "spec.components[0].template.spec.volumes[2].projected.sources[0].configMap",
            ]
        );
        assert!(err
            .to_string()
            .contains("ConfigMap settings does not exist"));
    }

    #[test]
    fn secret_versions_carry_no_content() {
        let c = copy_of("s", &secret("db", "hunter2-distinctive"));
        let recorded = serde_json::to_string(&c.version).unwrap();
        assert!(!recorded.contains("hunter2"));
        assert!(!recorded.contains(&base64_of("hunter2-distinctive")));
        // A different uid (another Secret of the same content) is another digest.
        let mut other = secret("db", "hunter2-distinctive");
        if let Source::Secret(s) = &mut other {
            s.metadata.uid = Some("another".into());
        }
        assert_ne!(content_hash(&other), c.version.hash);
    }

    fn base64_of(s: &str) -> String {
        serde_json::to_value(ByteString(s.as_bytes().to_vec()))
            .unwrap()
            .as_str()
            .unwrap()
            .to_string()
    }

    #[test]
    fn copies_are_owned_by_every_revision_that_uses_them() {
        let rev = |uid: &str| OwnerReference {
            api_version: "apps/v1".into(),
            kind: "ControllerRevision".into(),
            name: format!("r-{uid}"),
            uid: uid.into(),
            controller: Some(true),
            block_owner_deletion: Some(true),
        };
        let first = with_owner(&[], &rev("1")).unwrap();
        assert_eq!(first.len(), 1);
        assert_eq!(first[0].controller, None, "shared: never a controller ref");
        assert!(with_owner(&first, &rev("1")).is_none(), "already owned");
        let both = with_owner(&first, &rev("2")).unwrap();
        assert_eq!(
            both.iter().map(|o| o.uid.as_str()).collect::<Vec<_>>(),
            vec!["1", "2"]
        );
    }

    #[test]
    fn secrets_left_as_written_when_not_versioned() {
        let spec = components(ALL_KINDS);
        let off = Versioned { secrets: false };
        assert!(references(&spec, off)
            .iter()
            .all(|r| r.kind == ConfigKind::ConfigMap));
        // No Secret read, none missing, none rewritten.
        let found = sources(vec![cm("settings", "info"), cm("files", "x")]);
        let r = resolve("s", &spec, &found, off).unwrap();
        let names = referenced(&r.components, V);
        assert!(names.contains(&(ConfigKind::Secret, "db".into())));
        assert!(r
            .copies
            .iter()
            .all(|c| c.version.kind == ConfigKind::ConfigMap));
    }

    #[test]
    fn template_from_is_filled_in_and_kept() {
        let spec = components("[{name: web, templateFrom: {kind: Deployment, name: web}}]");
        let tpl: PodTemplateSpec = serde_yaml_ng::from_str(
            "{spec: {containers: [{name: app, image: 'x:1', envFrom: [{configMapRef: {name: settings}}]}]}}",
        )
        .unwrap();
        let workloads = Workloads::from([(
            (WorkloadKind::Deployment, "web".to_string()),
            Referenced {
                template: tpl.clone(),
                replicas: 3,
            },
        )]);
        assert_eq!(templates_from(&spec).len(), 1);
        let filled = fill_templates(&spec, &workloads).unwrap();
        assert_eq!(filled[0].template, tpl);
        assert!(
            filled[0].template_from.is_some(),
            "kept to show where it came from"
        );
        // Config resolution applies to the referenced template too.
        let r = resolve("s", &filled, &sources(vec![cm("settings", "x")]), V).unwrap();
        assert_eq!(r.configs["web"][0].name, "settings");
        // A missing workload refuses, naming the field.
        let err = fill_templates(&spec, &Workloads::new()).unwrap_err();
        assert_eq!(err.0[0].path, "spec.components[0].templateFrom");
        assert!(err.0[0].message.contains("Deployment web does not exist"));
    }

    #[test]
    fn long_names_still_fit() {
        let n = "a".repeat(250);
        assert_eq!(copy_name(&n, "0123456789").len(), MAX_NAME);
        assert_eq!(copy_name("app", "0123456789"), "app-0123456789");
    }
}
