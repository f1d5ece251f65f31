//! A container's environment and command line, resolved as a kubelet does: image
//! defaults, the `kubernetes` service variables, `envFrom`, `env` (values, downward API,
//! ConfigMap and Secret keys) with `$(VAR)` expansion, then `command`/`args` expanded
//! against the result. Pure: the ConfigMaps and Secrets come in as [`Lookups`].

use std::collections::{BTreeMap, BTreeSet, HashMap};

use k8s_openapi::api::core::v1::{Container, Pod};

use crate::quantity;

/// `PATH` inside containers of the executable map: the image's executable first.
pub(crate) const DEFAULT_PATH: &str =
    "/image/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// `PATH` for a pulled image whose config sets none (containerd's default).
pub(crate) const RUNTIME_DEFAULT_PATH: &str =
    "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// What the image contributes to the environment: its variables (including `PATH`) come
/// first and the container's win; `HOME` is set when neither sets it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ImageDefaults<'a> {
    pub(crate) env: &'a [(String, String)],
    pub(crate) home: &'a str,
}

/// ConfigMaps and Secrets of the pod's namespace, by name, as key → bytes. A name that is
/// absent was not found.
#[derive(Debug, Default, Clone)]
pub(crate) struct Lookups {
    pub(crate) config_maps: BTreeMap<String, BTreeMap<String, Vec<u8>>>,
    pub(crate) secrets: BTreeMap<String, BTreeMap<String, Vec<u8>>>,
}

/// What the downward API can expose besides the pod object itself.
#[derive(Debug, Clone)]
pub(crate) struct PodFacts {
    pub(crate) pod_ip: Option<String>,
    pub(crate) host_ip: String,
    /// Where pods reach the API server.
    pub(crate) api_host: String,
    pub(crate) api_port: u16,
}

/// Names of the ConfigMaps and Secrets a container's environment refers to.
pub(crate) fn referenced_objects(container: &Container) -> (BTreeSet<String>, BTreeSet<String>) {
    let mut cms = BTreeSet::new();
    let mut secrets = BTreeSet::new();
    for from in container.env_from.iter().flatten() {
        if let Some(r) = &from.config_map_ref {
            cms.insert(r.name.clone());
        }
        if let Some(r) = &from.secret_ref {
            secrets.insert(r.name.clone());
        }
    }
    for var in container.env.iter().flatten() {
        if let Some(src) = &var.value_from {
            if let Some(r) = &src.config_map_key_ref {
                cms.insert(r.name.clone());
            }
            if let Some(r) = &src.secret_key_ref {
                secrets.insert(r.name.clone());
            }
        }
    }
    (cms, secrets)
}

/// Expands `$(VAR)` references with `lookup`; `$$` is a literal `$`, and references to
/// unknown variables stay as written (Kubernetes' rules).
pub(crate) fn expand(input: &str, lookup: &dyn Fn(&str) -> Option<String>) -> String {
    let mut out = String::with_capacity(input.len());
    let mut rest = input;
    while let Some(pos) = rest.find('$') {
        out.push_str(&rest[..pos]);
        let after = &rest[pos + 1..];
        if let Some(tail) = after.strip_prefix('$') {
            out.push('$');
            rest = tail;
        } else if let Some(tail) = after.strip_prefix('(') {
            match tail.find(')') {
                Some(close) => {
                    let name = &tail[..close];
                    match lookup(name) {
                        Some(value) => out.push_str(&value),
                        None => {
                            out.push_str("$(");
                            out.push_str(name);
                            out.push(')');
                        }
                    }
                    rest = &tail[close + 1..];
                }
                None => {
                    out.push_str("$(");
                    rest = tail;
                }
            }
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    out
}

/// An ordered environment where setting a name again replaces its value in place.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct EnvList {
    vars: Vec<(String, String)>,
    index: HashMap<String, usize>,
}

impl EnvList {
    pub(crate) fn set(&mut self, name: &str, value: String) {
        match self.index.get(name) {
            Some(i) => self.vars[*i].1 = value,
            None => {
                self.index.insert(name.to_owned(), self.vars.len());
                self.vars.push((name.to_owned(), value));
            }
        }
    }

    pub(crate) fn get(&self, name: &str) -> Option<&str> {
        self.index.get(name).map(|i| self.vars[*i].1.as_str())
    }

    pub(crate) fn into_vec(self) -> Vec<(String, String)> {
        self.vars
    }
}

fn is_env_var_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || matches!(c, '-' | '.' | '_'))
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_'))
}

/// A downward-API `fieldRef` of `pod`.
pub(crate) fn field_ref(pod: &Pod, facts: &PodFacts, path: &str) -> Result<String, String> {
    let meta = &pod.metadata;
    let spec = pod.spec.as_ref();
    let keyed = |prefix: &str, map: Option<&BTreeMap<String, String>>| -> Option<String> {
        let key = path
            .strip_prefix(prefix)?
            .strip_prefix("['")?
            .strip_suffix("']")?;
        Some(map.and_then(|m| m.get(key)).cloned().unwrap_or_default())
    };
    let value = match path {
        "metadata.name" => meta.name.clone().unwrap_or_default(),
        "metadata.namespace" => meta.namespace.clone().unwrap_or_default(),
        "metadata.uid" => meta.uid.clone().unwrap_or_default(),
        "spec.nodeName" => spec.and_then(|s| s.node_name.clone()).unwrap_or_default(),
        "spec.serviceAccountName" => spec
            .and_then(|s| s.service_account_name.clone())
            .unwrap_or_else(|| "default".into()),
        "status.podIP" | "status.podIPs" => facts.pod_ip.clone().unwrap_or_default(),
        "status.hostIP" | "status.hostIPs" => facts.host_ip.clone(),
        "metadata.labels" => format_map(meta.labels.as_ref()),
        "metadata.annotations" => format_map(meta.annotations.as_ref()),
        _ => keyed("metadata.labels", meta.labels.as_ref())
            .or_else(|| keyed("metadata.annotations", meta.annotations.as_ref()))
            .ok_or_else(|| format!("unsupported fieldRef fieldPath {path:?}"))?,
    };
    Ok(value)
}

/// `key="value"` lines, sorted, as the downward API writes labels and annotations.
pub(crate) fn format_map(map: Option<&BTreeMap<String, String>>) -> String {
    map.into_iter()
        .flatten()
        .map(|(k, v)| format!("{k}={v:?}"))
        .collect::<Vec<_>>()
        .join("\n")
}

fn not_found(kind: &str, name: &str) -> String {
    format!("{kind} \"{name}\" not found")
}

/// A container's environment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ContainerEnv {
    /// What the process gets: the image's variables, then the container's.
    pub(crate) vars: Vec<(String, String)>,
    /// What `$(VAR)` in `command`, `args` and `subPathExpr` may name: the container's own
    /// variables and the service variables, as on a kubelet (not the image's).
    pub(crate) referenceable: Vec<(String, String)>,
}

/// The full environment of `container`. Errors carry the message a kubelet shows with
/// `CreateContainerConfigError`.
pub(crate) fn container_env(
    pod: &Pod,
    container: &Container,
    image: &str,
    defaults: &ImageDefaults<'_>,
    facts: &PodFacts,
    lookups: &Lookups,
) -> Result<ContainerEnv, String> {
    let namespace = pod.metadata.namespace.as_deref().unwrap_or("default");
    let mut env = EnvList::default();
    for (name, value) in defaults.env {
        env.set(name, value.clone());
    }
    let hostname = pod
        .spec
        .as_ref()
        .and_then(|s| s.hostname.clone())
        .or_else(|| pod.metadata.name.clone())
        .unwrap_or_default();
    env.set("HOSTNAME", hostname);
    // Referenceable by $(VAR): the service variables and everything defined below.
    let mut defined = EnvList::default();
    let port = facts.api_port.to_string();
    for (name, value) in [
        ("KUBERNETES_SERVICE_HOST", facts.api_host.clone()),
        ("KUBERNETES_SERVICE_PORT", port.clone()),
        ("KUBERNETES_SERVICE_PORT_HTTPS", port.clone()),
        (
            "KUBERNETES_PORT",
            format!("tcp://{}:{port}", facts.api_host),
        ),
    ] {
        defined.set(name, value);
    }
    for from in container.env_from.iter().flatten() {
        let prefix = from.prefix.as_deref().unwrap_or("");
        let (data, optional, kind, name) = if let Some(r) = &from.config_map_ref {
            (
                lookups.config_maps.get(&r.name),
                r.optional.unwrap_or(false),
                "configmap",
                &r.name,
            )
        } else if let Some(r) = &from.secret_ref {
            (
                lookups.secrets.get(&r.name),
                r.optional.unwrap_or(false),
                "secret",
                &r.name,
            )
        } else {
            continue;
        };
        match data {
            Some(data) => {
                for (key, value) in data {
                    let var = format!("{prefix}{key}");
                    // A kubelet skips invalid names (with an event), it does not fail.
                    if is_env_var_name(&var) {
                        defined.set(&var, String::from_utf8_lossy(value).into_owned());
                    }
                }
            }
            None if optional => {}
            None => return Err(not_found(kind, name)),
        }
    }
    for var in container.env.iter().flatten() {
        let value = match &var.value_from {
            None => {
                let raw = var.value.clone().unwrap_or_default();
                expand(&raw, &|n| defined.get(n).map(str::to_owned))
            }
            Some(src) => {
                if let Some(f) = &src.field_ref {
                    field_ref(pod, facts, &f.field_path)?
                } else if let Some(r) = &src.resource_field_ref {
                    quantity::resource_field_value(container, r)?
                } else if let Some(r) = &src.config_map_key_ref {
                    match lookups.config_maps.get(&r.name) {
                        Some(data) => match data.get(&r.key) {
                            Some(v) => String::from_utf8_lossy(v).into_owned(),
                            None if r.optional == Some(true) => continue,
                            None => {
                                return Err(format!(
                                    "couldn't find key {} in ConfigMap {namespace}/{}",
                                    r.key, r.name
                                ))
                            }
                        },
                        None if r.optional == Some(true) => continue,
                        None => return Err(not_found("configmap", &r.name)),
                    }
                } else if let Some(r) = &src.secret_key_ref {
                    match lookups.secrets.get(&r.name) {
                        Some(data) => match data.get(&r.key) {
                            Some(v) => String::from_utf8_lossy(v).into_owned(),
                            None if r.optional == Some(true) => continue,
                            None => {
                                return Err(format!(
                                    "couldn't find key {} in Secret {namespace}/{}",
                                    r.key, r.name
                                ))
                            }
                        },
                        None if r.optional == Some(true) => continue,
                        None => return Err(not_found("secret", &r.name)),
                    }
                } else {
                    return Err(format!("env {}: unsupported valueFrom", var.name));
                }
            }
        };
        defined.set(&var.name, value);
    }
    let referenceable = defined.into_vec();
    for (name, value) in &referenceable {
        env.set(name, value.clone());
    }
    if env.get("HOME").is_none() {
        env.set("HOME", defaults.home.to_owned());
    }
    env.set("SIMNODE_IMAGE", image.to_owned());
    // exec(2) cannot pass NUL bytes.
    let vars = env
        .into_vec()
        .into_iter()
        .map(|(k, v)| (k, v.replace('\0', "")))
        .collect();
    Ok(ContainerEnv {
        vars,
        referenceable,
    })
}

/// The argv of `container`: its `command` and `args`, each with `$(VAR)` expanded against
/// `env` (the container's referenceable variables), combined with the image's `entrypoint` and `cmd` by Kubernetes' rules (see
/// [`crate::image::argv`]).
pub(crate) fn command_line(
    container: &Container,
    entrypoint: &[String],
    cmd: &[String],
    env: &[(String, String)],
) -> Result<Vec<String>, String> {
    let lookup = |name: &str| {
        env.iter()
            .rev()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
    };
    let expand_all = |v: &Option<Vec<String>>| -> Vec<String> {
        v.iter().flatten().map(|a| expand(a, &lookup)).collect()
    };
    crate::image::argv(
        &expand_all(&container.command),
        &expand_all(&container.args),
        entrypoint,
        cmd,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod_and_container(yaml_container: serde_json::Value) -> (Pod, Container) {
        let pod: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "web-1", "namespace": "ns1", "uid": "u-1",
                         "labels": {"app": "web", "tier": "front"}},
            "spec": {"nodeName": "simnode-0", "containers": [yaml_container.clone()]}
        }))
        .expect("pod");
        let c: Container = serde_json::from_value(yaml_container).expect("container");
        (pod, c)
    }

    const EXE_ENV: &[(&str, &str)] = &[("PATH", DEFAULT_PATH)];

    fn exe_defaults() -> ImageDefaults<'static> {
        static ENV: std::sync::OnceLock<Vec<(String, String)>> = std::sync::OnceLock::new();
        ImageDefaults {
            env: ENV.get_or_init(|| {
                EXE_ENV
                    .iter()
                    .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                    .collect()
            }),
            home: "/root",
        }
    }

    #[test]
    fn image_env_comes_first_and_the_container_wins() {
        let (pod, c) = pod_and_container(serde_json::json!({
            "name": "app", "image": "i",
            "env": [{"name": "GREETING", "value": "from the pod"}, {"name": "X", "value": "$(LANG)"}]
        }));
        let image_env: Vec<(String, String)> = [
            ("PATH", "/app/bin:/usr/bin"),
            ("GREETING", "from the image"),
            ("LANG", "C.UTF-8"),
        ]
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
        let defaults = ImageDefaults {
            env: &image_env,
            home: "/home/app",
        };
        let all = container_env(&pod, &c, "i", &defaults, &facts(), &lookups()).expect("env");
        let env = all.vars;
        assert_eq!(get(&env, "PATH"), Some("/app/bin:/usr/bin"));
        assert_eq!(get(&env, "GREETING"), Some("from the pod"));
        assert_eq!(get(&env, "LANG"), Some("C.UTF-8"));
        assert_eq!(get(&env, "HOME"), Some("/home/app"));
        // $(VAR) refers to the container's variables only, as on a kubelet.
        assert_eq!(get(&env, "X"), Some("$(LANG)"));
        assert_eq!(get(&all.referenceable, "LANG"), None);
        assert_eq!(get(&all.referenceable, "GREETING"), Some("from the pod"));
        assert_eq!(env[0].0, "PATH", "image variables come first");
    }

    fn facts() -> PodFacts {
        PodFacts {
            pod_ip: Some("10.244.3.2".into()),
            host_ip: "10.244.3.1".into(),
            api_host: "10.96.0.1".into(),
            api_port: 4443,
        }
    }

    fn lookups() -> Lookups {
        let mut l = Lookups::default();
        l.config_maps.insert(
            "cfg".into(),
            [
                ("MODE".to_owned(), b"fast".to_vec()),
                ("bad key".to_owned(), b"x".to_vec()),
            ]
            .into(),
        );
        l.secrets.insert(
            "sec".into(),
            [("password".to_owned(), b"hunter2".to_vec())].into(),
        );
        l
    }

    fn get<'a>(env: &'a [(String, String)], name: &str) -> Option<&'a str> {
        env.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }

    #[test]
    fn expansion_follows_kubernetes_rules() {
        let lookup = |n: &str| (n == "A").then(|| "1".to_owned());
        assert_eq!(expand("x$(A)y", &lookup), "x1y");
        assert_eq!(expand("$(B)", &lookup), "$(B)");
        assert_eq!(expand("$$(A)", &lookup), "$(A)");
        assert_eq!(expand("$$", &lookup), "$");
        assert_eq!(expand("cost $5", &lookup), "cost $5");
        assert_eq!(expand("$(A", &lookup), "$(A");
        assert_eq!(expand("$(A)$(A)", &lookup), "11");
    }

    #[test]
    fn resolves_every_source() {
        let (pod, c) = pod_and_container(serde_json::json!({
            "name": "app", "image": "deployctl.dev/demo-app:v1",
            "envFrom": [{"configMapRef": {"name": "cfg"}, "prefix": "CFG_"}],
            "env": [
                {"name": "PLAIN", "value": "p"},
                {"name": "REF", "value": "$(PLAIN)-$(CFG_MODE)-$(MISSING)"},
                {"name": "POD", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
                {"name": "NS", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
                {"name": "UID", "valueFrom": {"fieldRef": {"fieldPath": "metadata.uid"}}},
                {"name": "IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
                {"name": "NODE", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}},
                {"name": "APP", "valueFrom": {"fieldRef": {"fieldPath": "metadata.labels['app']"}}},
                {"name": "PW", "valueFrom": {"secretKeyRef": {"name": "sec", "key": "password"}}},
                {"name": "OPT", "valueFrom": {"secretKeyRef": {"name": "nope", "key": "k", "optional": true}}},
                {"name": "PATH", "value": "/custom"}
            ],
            "command": ["/bin/sh", "-c"],
            "args": ["echo $(POD) $$(POD)"]
        }));
        let env = container_env(
            &pod,
            &c,
            "deployctl.dev/demo-app:v1",
            &exe_defaults(),
            &facts(),
            &lookups(),
        )
        .expect("env")
        .vars;
        assert_eq!(get(&env, "REF"), Some("p-fast-$(MISSING)"));
        assert_eq!(get(&env, "CFG_MODE"), Some("fast"));
        assert_eq!(get(&env, "CFG_bad key"), None);
        assert_eq!(get(&env, "POD"), Some("web-1"));
        assert_eq!(get(&env, "NS"), Some("ns1"));
        assert_eq!(get(&env, "UID"), Some("u-1"));
        assert_eq!(get(&env, "IP"), Some("10.244.3.2"));
        assert_eq!(get(&env, "NODE"), Some("simnode-0"));
        assert_eq!(get(&env, "APP"), Some("web"));
        assert_eq!(get(&env, "PW"), Some("hunter2"));
        assert_eq!(get(&env, "OPT"), None);
        assert_eq!(get(&env, "PATH"), Some("/custom"));
        assert_eq!(get(&env, "HOSTNAME"), Some("web-1"));
        assert_eq!(get(&env, "KUBERNETES_SERVICE_HOST"), Some("10.96.0.1"));
        assert_eq!(get(&env, "KUBERNETES_SERVICE_PORT"), Some("4443"));
        assert_eq!(
            get(&env, "SIMNODE_IMAGE"),
            Some("deployctl.dev/demo-app:v1")
        );
        assert_eq!(
            command_line(&c, &["/image/bin/demo-app".into()], &[], &env).unwrap(),
            ["/bin/sh", "-c", "echo web-1 $(POD)"]
        );
        let (cms, secrets) = referenced_objects(&c);
        assert_eq!(cms.into_iter().collect::<Vec<_>>(), ["cfg"]);
        assert_eq!(secrets.into_iter().collect::<Vec<_>>(), ["nope", "sec"]);
    }

    #[test]
    fn missing_objects_are_config_errors() {
        let (pod, c) = pod_and_container(serde_json::json!({
            "name": "app", "image": "i",
            "env": [{"name": "X", "valueFrom": {"configMapKeyRef": {"name": "gone", "key": "k"}}}]
        }));
        assert_eq!(
            container_env(&pod, &c, "i", &exe_defaults(), &facts(), &lookups()).map(|e| e.vars),
            Err("configmap \"gone\" not found".into())
        );
        let (pod, c) = pod_and_container(serde_json::json!({
            "name": "app", "image": "i",
            "env": [{"name": "X", "valueFrom": {"secretKeyRef": {"name": "sec", "key": "k"}}}]
        }));
        assert_eq!(
            container_env(&pod, &c, "i", &exe_defaults(), &facts(), &lookups()).map(|e| e.vars),
            Err("couldn't find key k in Secret ns1/sec".into())
        );
        let (pod, c) = pod_and_container(serde_json::json!({
            "name": "app", "image": "i", "envFrom": [{"secretRef": {"name": "gone"}}]
        }));
        assert!(container_env(&pod, &c, "i", &exe_defaults(), &facts(), &lookups()).is_err());
    }

    #[test]
    fn default_entrypoint_takes_args() {
        let (_, c) = pod_and_container(serde_json::json!({
            "name": "app", "image": "i", "args": ["--listen", "0.0.0.0:$(PORT)"]
        }));
        let env = vec![("PORT".to_owned(), "9090".to_owned())];
        assert_eq!(
            command_line(
                &c,
                &["/image/bin/demo-app".into()],
                &["ignored".into()],
                &env
            )
            .unwrap(),
            ["/image/bin/demo-app", "--listen", "0.0.0.0:9090"]
        );
    }

    #[test]
    fn labels_are_formatted_like_the_downward_api() {
        let labels: BTreeMap<String, String> = [
            ("b".to_owned(), "2".to_owned()),
            ("a".to_owned(), "x\"y".to_owned()),
        ]
        .into();
        assert_eq!(format_map(Some(&labels)), "a=\"x\\\"y\"\nb=\"2\"");
    }
}
